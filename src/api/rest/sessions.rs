//! `POST /v2/link/init`: starts a Link session (`{ url, expiresAt }`, ISO
//! 8601).

use super::body::{Fields, creating_request};
use super::{Authenticated, RestState};
use crate::kernel::error::Error;
use crate::kernel::validate::Violations;
use crate::pb;
use crate::sessions::rules::NewSession;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// A started Link session.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct LinkSession {
    /// The Link page for the end user; the session token is in its fragment.
    url: String,
    /// ISO 8601; `LINKD_LINK_SESSION_TTL` after the call.
    expires_at: Option<String>,
}

/// The body as an `InitLinkSessionRequest`, plus the type problems found.
fn init_request(
    object: &serde_json::Map<String, Value>,
) -> (pb::InitLinkSessionRequest, Violations) {
    let mut problems = Violations::new();
    let mut req = pb::InitLinkSessionRequest::default();
    let mut fields = Fields::new(object, "", &mut problems);
    fields.reject_unknown(&[
        "clientAppId",
        "redirectUrl",
        "clientReferenceId",
        "connectionId",
        "geolocation",
        "lang",
    ]);
    req.client_app_id = fields.string("clientAppId");
    req.redirect_url = fields.string("redirectUrl");
    req.client_reference_id = fields.string("clientReferenceId");
    req.connection_id = fields.string("connectionId");
    req.lang = fields.string("lang");
    match object.get("geolocation").filter(|v| !v.is_null()) {
        None => {}
        Some(Value::Object(geo)) => {
            let mut fields = Fields::new(geo, "geolocation.", &mut problems);
            fields.reject_unknown(&["country", "state"]);
            req.geolocation = Some(pb::Geolocation {
                country: fields.string("country").unwrap_or_default(),
                state: fields.string("state"),
            });
        }
        Some(_) => problems.add("geolocation", "must be an object"),
    }
    (req, problems)
}

#[utoipa::path(post, operation_id = "InitLinkSession", path = "/v2/link/init", tag = "link sessions", security(("api_key" = [])), params(("Idempotency-Key" = Option<String>, Header, description = "replays of the same request within 24 h answer as the first did")), request_body(content = Object, content_type = "application/json"), responses((status = 200, body = LinkSession)))]
pub(super) async fn init(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let (req, key) = creating_request(&headers, &body, init_request, |req| {
        NewSession::parse(&crate::sessions::session_request(req)).map(drop)
    })?;
    let session = state
        .api
        .sessions
        .init_link_session(&caller, req, key.as_deref())
        .await?;
    Ok(Json(LinkSession {
        url: session.url,
        expires_at: session.expires_at.as_ref().map(super::iso8601),
    })
    .into_response())
}
