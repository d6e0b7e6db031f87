//! `/v1/events`: the tenant's events with their deliveries, and
//! redeliveries; `/v1/client-apps/{id}/rotate-webhook-secret`.

use super::body::{Fields, integer, list_query, page_json, read_object};
use super::{Authenticated, RestState};
use crate::events::{DeliveryStatus, parse_time};
use crate::kernel::error::Error;
use crate::kernel::validate::Violations;
use crate::kernel::views::{attempt_json, event_json, iso8601};
use crate::pb;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

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

#[utoipa::path(get, operation_id = "ListEvents", path = "/v1/events", tag = "events", security(("api_key" = [])), params(("limit" = Option<u32>, Query), ("type" = Option<String>, Query), ("connectionId" = Option<String>, Query), ("linkId" = Option<String>, Query), ("createdAfter" = Option<String>, Query, description = "RFC 3339"), ("createdBefore" = Option<String>, Query, description = "RFC 3339"), ("deliveryStatus" = Option<String>, Query), ("pageToken" = Option<String>, Query)), responses((status = 200, body = Object, description = "`{events, nextPageToken}`")))]
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
    let events = page.events.iter().map(event_json).collect();
    Ok(Json(page_json("events", events, page.next_page_token)).into_response())
}

#[utoipa::path(get, operation_id = "GetEvent", path = "/v1/events/{event_id}", tag = "events", security(("api_key" = [])), params(("event_id" = String, Path, description = "`evt_…`")), responses((status = 200, body = Object, description = "`{event, attempts}`")))]
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
    let attempts: Vec<Value> = found.attempts.iter().map(attempt_json).collect();
    Ok(Json(json!({
        "event": found.event.as_ref().map(event_json),
        "attempts": attempts,
    }))
    .into_response())
}

/// Takes no fields: an empty body or `{}`.
#[utoipa::path(post, operation_id = "RedeliverEvent", path = "/v1/events/{event_id}/redeliver", tag = "events", security(("api_key" = [])), params(("event_id" = String, Path, description = "`evt_…`")), responses((status = 200, body = Object, description = "`{event}`, queued again")))]
pub(super) async fn redeliver(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path(event_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    read_object(&headers, &body, &[], |_| ())?;
    let queued = state
        .api
        .events
        .redeliver_event(&caller, pb::RedeliverEventRequest { event_id })
        .await?;
    Ok(Json(json!({ "event": queued.event.as_ref().map(event_json) })).into_response())
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

#[utoipa::path(post, operation_id = "RedeliverFailedEvents", path = "/v1/events/redeliver-failed", tag = "events", security(("api_key" = [])), request_body(content = Object, content_type = "application/json"), responses((status = 200, body = Object, description = "`{queued}`")))]
pub(super) async fn redeliver_failed(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let known = ["createdAfter", "createdBefore"];
    let req = read_object(&headers, &body, &known, |f| {
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
    Ok(Json(json!({ "queued": queued.queued })).into_response())
}

#[utoipa::path(post, operation_id = "RotateWebhookSecret", path = "/v1/client-apps/{client_app_id}/rotate-webhook-secret", tag = "client apps", security(("api_key" = [])), params(("client_app_id" = String, Path, description = "`app_…`")), request_body(content = Object, content_type = "application/json"), responses((status = 200, body = Object, description = "the new secret, shown once")))]
pub(super) async fn rotate_webhook_secret(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path(client_app_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let grace = read_object(&headers, &body, &["previousSecretGraceSeconds"], |f| {
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
    Ok(Json(json!({
        "webhookSecret": rotated.webhook_secret,
        "previousSecretExpiresAt": rotated.previous_secret_expires_at.as_ref().map(iso8601),
    }))
    .into_response())
}
