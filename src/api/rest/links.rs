//! `POST /v1/links` and `GET /v1/links/{linkId}` in the documented shapes
//! (camelCase, epoch milliseconds).

use super::body::{Fields, creating_request, operations_field};
use super::{Authenticated, RestState};
use crate::kernel::error::Error;
use crate::kernel::proto_json;
use crate::kernel::validate::Violations;
use crate::links::link_request;
use crate::links::rules::NewLink;
use crate::pb;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The body as a `CreateLinkRequest`, plus the type problems found on the way.
fn create_link_request(
    object: &serde_json::Map<String, Value>,
) -> (pb::CreateLinkRequest, Violations) {
    let mut problems = Violations::new();
    let mut req = pb::CreateLinkRequest::default();
    let mut fields = Fields::new(object, "", &mut problems);
    fields.reject_unknown(&[
        "integrationId",
        "operations",
        "webhookUrl",
        "returnUrl",
        "externalUserId",
        "debug",
        "expiresIn",
    ]);
    req.integration_id = fields.string("integrationId").unwrap_or_default();
    req.webhook_url = fields.string("webhookUrl");
    req.return_url = fields.string("returnUrl");
    req.external_user_id = fields.string("externalUserId");
    req.debug = fields.boolean("debug").unwrap_or_default();
    req.expires_in = fields.integer("expiresIn", "must be a positive integer");
    req.operations = operations_field(object, &mut problems);
    (req, problems)
}

fn epoch_ms(ts: &Option<prost_types::Timestamp>) -> Value {
    ts.as_ref().map_or(Value::Null, |t| {
        json!(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
    })
}

fn operations_json(ops: &[pb::OperationSummary]) -> Value {
    ops.iter()
        .map(|op| json!({ "resource": op.resource, "action": super::enum_name(op.action().as_str_name()) }))
        .collect()
}

#[utoipa::path(post, operation_id = "CreateLink", path = "/v1/links", tag = "links", security(("api_key" = [])), params(("Idempotency-Key" = Option<String>, Header, description = "replays of the same request within 24 h answer as the first did")), request_body(content = Object, content_type = "application/json"), responses((status = 201, body = Object, description = "the link, with its claim code and app clip URL")))]
pub(super) async fn create_link(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let (req, key) = creating_request(&headers, &body, create_link_request, |req| {
        NewLink::parse(&link_request(req), state.api.links.catalog()).map(drop)
    })?;
    let link = state
        .api
        .links
        .create_link(&caller, req, key.as_deref())
        .await?;
    let mut body = json!({
        "linkId": link.link_id,
        "claimCode": link.claim_code,
        "integrationId": link.integration_id,
        "operations": operations_json(&link.operations),
        "status": "pending",
        "appClipUrl": link.app_clip_url,
        "expiresAt": epoch_ms(&link.expires_at),
        "createdAt": epoch_ms(&link.created_at),
    });
    if !link.return_url.is_empty() {
        body["returnUrl"] = json!(link.return_url);
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(get, operation_id = "GetLink", path = "/v1/links/{link_id}", tag = "links", security(("api_key" = [])), params(("link_id" = String, Path, description = "`lnk_…`")), responses((status = 200, body = Object, description = "the link and its result")))]
pub(super) async fn get_link(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path(link_id): Path<String>,
) -> Result<Response, Error> {
    let link = state
        .api
        .links
        .get_link(&caller, pb::GetLinkRequest { link_id })
        .await?
        .link
        .expect("get_link returns the link");
    let status = super::enum_name(link.status().as_str_name());
    let mut body = json!({
        "linkId": link.link_id,
        "integrationId": link.integration_id,
        "operations": operations_json(&link.operations),
        "status": status,
        "debug": link.debug,
        "createdAt": epoch_ms(&link.created_at),
        "expiresAt": epoch_ms(&link.expires_at),
        "claimedAt": epoch_ms(&link.claimed_at),
        "finishedAt": epoch_ms(&link.finished_at),
        "errorCode": link.error_code,
        "errorMessage": link.error_message,
        "result": link.result.as_ref().map(proto_json::from_struct),
    });
    if link.debug {
        body["debugTrace"] = link
            .debug_trace
            .iter()
            .map(|step| {
                json!({
                    "at": step.at.as_ref().map(super::iso8601),
                    "event": step.event,
                    "details": step.details.as_ref().map(proto_json::from_struct),
                })
            })
            .collect();
    }
    for (name, value) in [
        ("returnUrl", link.return_url),
        ("webhookUrl", link.webhook_url),
        ("externalUserId", link.external_user_id),
    ] {
        if let Some(value) = value {
            body[name] = json!(value);
        }
    }
    Ok(Json(body).into_response())
}
