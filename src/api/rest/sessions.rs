//! `POST /v2/link/init`: starts a Link session (`{ url, expiresAt }`, ISO
//! 8601).

use super::body::{Fields, creating_request, declared_fields};
use super::openapi::{EmptyOrClientAppId, EmptyOrConnectionId};
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

/// A Link session for one end user; every field may be left out (`{}`).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema only: `init_request` reads the body.
struct InitLinkSessionBody {
    /// The key's own client app when left out.
    #[schema(inline, value_type = Option<EmptyOrClientAppId>)]
    client_app_id: Option<String>,
    /// One of the app's registered redirect URLs; the app's default when
    /// left out.
    #[schema(max_length = 2048)]
    redirect_url: Option<String>,
    /// Your id for the end user, returned on the connection.
    #[schema(max_length = 255)]
    client_reference_id: Option<String>,
    /// Re-links this connection (a well-formed id naming none makes a new
    /// one).
    #[schema(inline, value_type = Option<EmptyOrConnectionId>)]
    connection_id: Option<String>,
    geolocation: Option<GeolocationBody>,
    /// The Link page's language: `en` (the default) or `fr`.
    #[schema(pattern = "^([eE][nN]|[fF][rR])?$")]
    lang: Option<String>,
}

/// Where the end user is, to order the providers offered.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = GeolocationRequest)]
#[allow(dead_code)] // A schema only: `init_request` reads the body.
struct GeolocationBody {
    /// ISO 3166-1 alpha-2 (any case).
    #[schema(schema_with = country_code)]
    country: String,
    /// An ISO 3166-2 subdivision of the country, without the country
    /// prefix (`CA` for US-CA).
    #[schema(max_length = 3)]
    state: Option<String>,
}

/// Every ISO 3166-1 alpha-2 code linkd knows.
fn country_code() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(rust_iso3166::ALL.iter().map(|c| c.alpha2)))
        .build()
}

/// The body as an `InitLinkSessionRequest`, plus the type problems found.
fn init_request(
    object: &serde_json::Map<String, Value>,
) -> (pb::InitLinkSessionRequest, Violations) {
    let mut problems = Violations::new();
    let mut req = pb::InitLinkSessionRequest::default();
    let mut fields = Fields::new(object, "", &mut problems);
    fields.reject_unknown(declared_fields::<InitLinkSessionBody>());
    req.client_app_id = fields.string("clientAppId");
    req.redirect_url = fields.string("redirectUrl");
    req.client_reference_id = fields.string("clientReferenceId");
    req.connection_id = fields.string("connectionId");
    req.lang = fields.string("lang");
    match object.get("geolocation").filter(|v| !v.is_null()) {
        None => {}
        Some(Value::Object(geo)) => {
            let mut fields = Fields::new(geo, "geolocation.", &mut problems);
            fields.reject_unknown(declared_fields::<GeolocationBody>());
            req.geolocation = Some(pb::Geolocation {
                country: fields.string("country").unwrap_or_default(),
                state: fields.string("state"),
            });
        }
        Some(_) => problems.add("geolocation", "must be an object"),
    }
    (req, problems)
}

#[utoipa::path(post, operation_id = "InitLinkSession", path = "/v2/link/init", tag = "link sessions", security(("api_key" = [])), params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "1 to 255 visible ASCII characters; replays of the same request within 24 h answer as the first did, another request under the same key is `422 IDEMPOTENCY_KEY_REUSED`")), request_body(content = InitLinkSessionBody, content_type = "application/json"), responses((status = 200, body = LinkSession)))]
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
