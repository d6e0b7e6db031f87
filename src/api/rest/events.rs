//! `/v1/events`: the tenant's events with their deliveries, and
//! redeliveries; `/v1/client-apps/{id}/rotate-webhook-secret`.

use super::body::{Fields, NoFields, integer, list_query, read_object};
use super::{Authenticated, RestState};
use crate::events::{DeliveryStatus, parse_time};
use crate::kernel::error::Error;
use crate::kernel::validate::Violations;
use crate::kernel::views::{AttemptView, EventView, iso8601};
use crate::pb;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

/// Query parameters of `GET /v1/events`, camelCase and snake_case.
const LIST_PARAMS: [(&str, &str); 8] = [
    ("limit", "limit"),
    ("type", "type"),
    ("connectionId", "connection_id"),
    ("linkId", "link_id"),
    ("createdAfter", "created_after"),
    ("createdBefore", "created_before"),
    ("deliveryStatus", "delivery_status"),
    ("pageToken", "page_token"),
];

fn list_request(params: &[(String, String)]) -> Result<pb::ListEventsRequest, Error> {
    list_query(
        params,
        &LIST_PARAMS,
        |req: &mut pb::ListEventsRequest, name, value, v| {
            let time = |v: &mut Violations| match parse_time(name, value) {
                Ok(t) => Some(t),
                Err(err) => {
                    for issue in err.violations() {
                        v.add(issue.path.clone(), issue.message.clone());
                    }
                    None
                }
            };
            match name {
                "limit" => {
                    if let Some(n) = integer(v, name, value) {
                        req.limit = Some(n);
                    }
                }
                "type" => req.r#type = Some(value.to_string()),
                "connectionId" => req.connection_id = Some(value.to_string()),
                "linkId" => req.link_id = Some(value.to_string()),
                "createdAfter" => req.created_after = time(v),
                "createdBefore" => req.created_before = time(v),
                "deliveryStatus" => match DeliveryStatus::parse(value) {
                    Some(status) => req.set_delivery_status(status.to_proto()),
                    None => v.add(
                        "deliveryStatus",
                        format!("must be one of {}", DeliveryStatus::names()),
                    ),
                },
                _ => req.page_token = Some(value.to_string()),
            }
        },
    )
}

#[utoipa::path(get, operation_id = "ListEvents", path = "/v1/events", tag = "events", security(("api_key" = [])), params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "default 20"), ("type" = Option<String>, Query, max_length = 64, description = "an event type, such as `connection.created`"), ("connectionId" = inline(Option<super::openapi::EmptyOrConnectionId>), Query), ("linkId" = inline(Option<super::openapi::EmptyOrLinkId>), Query), ("createdAfter" = Option<String>, Query, format = DateTime), ("createdBefore" = Option<String>, Query, format = DateTime), ("deliveryStatus" = Option<crate::events::DeliveryStatus>, Query), ("pageToken" = Option<String>, Query, description = "the `nextPageToken` of the previous page, with the same filters")), responses((status = 200, body = EventPage)))]
pub(super) async fn list(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, Error> {
    let page = state
        .api
        .events
        .list_events(&caller, list_request(&params)?)
        .await?;
    Ok(Json(EventPage {
        events: page.events.iter().map(EventView::from).collect(),
        next_page_token: Some(page.next_page_token).filter(|t| !t.is_empty()),
    })
    .into_response())
}

/// One page of events, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct EventPage {
    events: Vec<EventView>,
    /// `null` on the last page.
    next_page_token: Option<String>,
}

/// An event and every delivery attempt of it.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct EventWithAttempts {
    event: Option<EventView>,
    attempts: Vec<AttemptView>,
}

/// An event queued for delivery again.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct QueuedEvent {
    event: Option<EventView>,
}

/// How many failed events were queued again.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct QueuedEvents {
    queued: i64,
}

/// The new signing secret, shown this once.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct RotatedSecret {
    /// `whsec_…`
    webhook_secret: String,
    /// Until when the old secret still signs beside the new one (ISO
    /// 8601); `null` when it stopped at once.
    previous_secret_expires_at: Option<String>,
}

#[utoipa::path(get, operation_id = "GetEvent", path = "/v1/events/{event_id}", tag = "events", security(("api_key" = [])), params(("event_id" = inline(crate::kernel::ids::EventId), Path)), responses((status = 200, body = EventWithAttempts)))]
pub(super) async fn get(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path(event_id): Path<String>,
) -> Result<Response, Error> {
    let found = state
        .api
        .events
        .get_event(&caller, pb::GetEventRequest { event_id })
        .await?;
    Ok(Json(EventWithAttempts {
        event: found.event.as_ref().map(EventView::from),
        attempts: found.attempts.iter().map(AttemptView::from).collect(),
    })
    .into_response())
}

/// Takes no fields: an empty body or `{}`.
#[utoipa::path(post, operation_id = "RedeliverEvent", path = "/v1/events/{event_id}/redeliver", tag = "events", security(("api_key" = [])), params(("event_id" = inline(crate::kernel::ids::EventId), Path)), responses((status = 200, body = QueuedEvent)))]
pub(super) async fn redeliver(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path(event_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    read_object::<NoFields, _>(&headers, &body, |_| ())?;
    let queued = state
        .api
        .events
        .redeliver_event(&caller, pb::RedeliverEventRequest { event_id })
        .await?;
    Ok(Json(QueuedEvent {
        event: queued.event.as_ref().map(EventView::from),
    })
    .into_response())
}

/// An optional ISO 8601 time field.
fn optional_time(fields: &mut Fields<'_>, name: &str) -> Option<prost_types::Timestamp> {
    let text = fields.string(name)?;
    match parse_time(name, &text) {
        Ok(time) => Some(time),
        Err(err) => {
            for violation in err.violations() {
                fields
                    .problems
                    .add(violation.path.clone(), violation.message.clone());
            }
            None
        }
    }
}

/// Which failed events to queue again: all, or those created in a window.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema only: the handler reads the body.
struct RedeliverFailedBody {
    #[schema(value_type = Option<String>, format = DateTime)]
    created_after: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    created_before: Option<String>,
}

#[utoipa::path(post, operation_id = "RedeliverFailedEvents", path = "/v1/events/redeliver-failed", tag = "events", security(("api_key" = [])), request_body(content = RedeliverFailedBody, content_type = "application/json"), responses((status = 200, body = QueuedEvents)))]
pub(super) async fn redeliver_failed(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let req = read_object::<RedeliverFailedBody, _>(&headers, &body, |f| {
        pb::RedeliverFailedEventsRequest {
            created_after: optional_time(f, "createdAfter"),
            created_before: optional_time(f, "createdBefore"),
        }
    })?;
    let queued = state
        .api
        .events
        .redeliver_failed_events(&caller, req)
        .await?;
    Ok(Json(QueuedEvents {
        queued: queued.queued,
    })
    .into_response())
}

/// How long the old secret still signs beside the new one.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema only: the handler reads the body.
struct RotateWebhookSecretBody {
    /// 0 (the old secret stops at once) to 604800 (7 days).
    #[schema(minimum = 0, maximum = 604800)]
    previous_secret_grace_seconds: Option<i64>,
}

#[utoipa::path(post, operation_id = "RotateWebhookSecret", path = "/v1/client-apps/{client_app_id}/rotate-webhook-secret", tag = "client apps", security(("api_key" = [])), params(("client_app_id" = inline(crate::kernel::ids::ClientAppId), Path)), request_body(content = RotateWebhookSecretBody, content_type = "application/json"), responses((status = 200, body = RotatedSecret)))]
pub(super) async fn rotate_webhook_secret(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path(client_app_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let grace = read_object::<RotateWebhookSecretBody, _>(&headers, &body, |f| {
        f.integer("previousSecretGraceSeconds", "must be an integer")
    })?;
    let rotated = state
        .api
        .client_apps
        .rotate_webhook_secret_for(
            &caller,
            pb::RotateWebhookSecretRequest {
                client_app_id,
                previous_secret_grace_seconds: grace,
            },
        )
        .await?;
    Ok(Json(RotatedSecret {
        webhook_secret: rotated.webhook_secret,
        previous_secret_expires_at: rotated.previous_secret_expires_at.as_ref().map(iso8601),
    })
    .into_response())
}
