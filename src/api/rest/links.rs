//! `POST /v1/links` and `GET /v1/links/{linkId}` in the documented shapes
//! (camelCase, epoch milliseconds).

use super::body::{Fields, OperationBody, creating_request, declared_fields, operations_field};
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
use serde_json::Value;

/// A link intent: the integration and the operations to run once the end
/// user logs in.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema only: `create_link_request` reads the body.
struct CreateLinkBody {
    /// An integration of `GET /v1/providers`.
    #[schema(min_length = 1, max_length = 64)]
    integration_id: String,
    /// Operations the integration offers, each with its arguments.
    #[schema(min_items = 1)]
    operations: Vec<OperationBody>,
    /// Where `link.*` events for this link are also sent.
    #[schema(max_length = 2048, format = "uri")]
    webhook_url: Option<String>,
    /// Where the end user returns (an `https://` URL or an app scheme),
    /// with `linkId` appended.
    #[schema(max_length = 2048)]
    return_url: Option<String>,
    /// Your id for the end user.
    #[schema(max_length = 255)]
    external_user_id: Option<String>,
    /// Records a redacted step-by-step trace (`debugTrace`).
    debug: Option<bool>,
    /// Seconds until an unclaimed link expires: 1 to 2592000 (30 days);
    /// 7 days when left out.
    #[schema(minimum = 1, maximum = 2592000)]
    expires_in: Option<i64>,
}

/// The body as a `CreateLinkRequest`, plus the type problems found on the way.
fn create_link_request(
    object: &serde_json::Map<String, Value>,
) -> (pb::CreateLinkRequest, Violations) {
    let mut problems = Violations::new();
    let mut req = pb::CreateLinkRequest::default();
    let mut fields = Fields::new(object, "", &mut problems);
    fields.reject_unknown(declared_fields::<CreateLinkBody>());
    req.integration_id = fields.string("integrationId").unwrap_or_default();
    req.webhook_url = fields.string("webhookUrl");
    req.return_url = fields.string("returnUrl");
    req.external_user_id = fields.string("externalUserId");
    req.debug = fields.boolean("debug").unwrap_or_default();
    req.expires_in = fields.integer("expiresIn", "must be a positive integer");
    req.operations = operations_field(object, &mut problems);
    (req, problems)
}

fn epoch_ms(ts: &Option<prost_types::Timestamp>) -> Option<i64> {
    ts.as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// One operation a link or run asked for.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = OperationSummary)]
pub(super) struct OperationJson {
    resource: String,
    /// `read`, `create`, `update` or `delete`.
    action: String,
}

pub(super) fn operations_json(ops: &[pb::OperationSummary]) -> Vec<OperationJson> {
    ops.iter()
        .map(|op| OperationJson {
            resource: op.resource.clone(),
            action: super::enum_name(op.action().as_str_name()),
        })
        .collect()
}

/// A link just created: give `appClipUrl` (or the claim code) to the end user.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreatedLink {
    /// `lnk_…`
    link_id: String,
    /// Single-use code the app clip or Link page claims the link with.
    claim_code: String,
    integration_id: String,
    operations: Vec<OperationJson>,
    /// Always `pending` for a new link.
    status: &'static str,
    app_clip_url: String,
    /// Epoch milliseconds.
    expires_at: Option<i64>,
    /// Epoch milliseconds.
    created_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    return_url: Option<String>,
}

/// A link and, once finished, its result.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Link)]
struct LinkJson {
    link_id: String,
    integration_id: String,
    operations: Vec<OperationJson>,
    /// `pending`, `claimed`, `awaiting_2fa`, `processing`, `completed`, `failed`, `expired` or `cancelled`.
    status: String,
    debug: bool,
    /// Epoch milliseconds (as every time of a link).
    created_at: Option<i64>,
    expires_at: Option<i64>,
    claimed_at: Option<i64>,
    finished_at: Option<i64>,
    error_code: Option<String>,
    error_message: Option<String>,
    /// What the operations returned, by `resource.action`.
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    /// Only for a link created with `debug: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    debug_trace: Option<Vec<DebugStep>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    return_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_user_id: Option<String>,
}

/// One step of a debug link's trace.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct DebugStep {
    /// ISO 8601.
    at: Option<String>,
    event: String,
    #[schema(value_type = Option<Object>)]
    details: Option<Value>,
}

#[utoipa::path(post, operation_id = "CreateLink", path = "/v1/links", tag = "links", security(("api_key" = [])), params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "1 to 255 visible ASCII characters; replays of the same request within 24 h answer as the first did, another request under the same key is `422 IDEMPOTENCY_KEY_REUSED`")), request_body(content = CreateLinkBody, content_type = "application/json"), responses((status = 201, body = CreatedLink)))]
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
    let body = CreatedLink {
        operations: operations_json(&link.operations),
        expires_at: epoch_ms(&link.expires_at),
        created_at: epoch_ms(&link.created_at),
        return_url: (!link.return_url.is_empty()).then_some(link.return_url),
        link_id: link.link_id,
        claim_code: link.claim_code,
        integration_id: link.integration_id,
        status: "pending",
        app_clip_url: link.app_clip_url,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(get, operation_id = "GetLink", path = "/v1/links/{link_id}", tag = "links", security(("api_key" = [])), params(("link_id" = inline(crate::kernel::ids::LinkId), Path)), responses((status = 200, body = LinkJson)))]
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
    let body = LinkJson {
        status: super::enum_name(link.status().as_str_name()),
        operations: operations_json(&link.operations),
        created_at: epoch_ms(&link.created_at),
        expires_at: epoch_ms(&link.expires_at),
        claimed_at: epoch_ms(&link.claimed_at),
        finished_at: epoch_ms(&link.finished_at),
        result: link.result.as_ref().map(proto_json::from_struct),
        debug_trace: link.debug.then(|| {
            link.debug_trace
                .iter()
                .map(|step| DebugStep {
                    at: step.at.as_ref().map(super::iso8601),
                    event: step.event.clone(),
                    details: step.details.as_ref().map(proto_json::from_struct),
                })
                .collect()
        }),
        link_id: link.link_id,
        integration_id: link.integration_id,
        debug: link.debug,
        error_code: link.error_code,
        error_message: link.error_message,
        return_url: link.return_url,
        webhook_url: link.webhook_url,
        external_user_id: link.external_user_id,
    };
    Ok(Json(body).into_response())
}
