//! The HTTP/JSON shim: the same RPCs under the documented REST paths and
//! shapes. Handlers authenticate from headers, call [`Services`] exactly as the
//! gRPC services do, and render the documented JSON.

use crate::api::health::Health;
use crate::api::services::Services;
use crate::auth::{Caller, presented_key};
use crate::kernel::error::{Error, Reason};
use crate::kernel::proto_json;
pub(crate) use crate::kernel::views::{enum_name, iso8601};
use crate::pb;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

mod body;
mod branding;
mod connections;
mod events;
mod flow;
mod links;
mod oauth;
mod provider_oauth;
mod sessions;
use serde_json::json;

#[derive(Clone)]
pub struct RestState {
    pub api: std::sync::Arc<Services>,
    pub health: Health,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.log();
        let (_, status, reason) = self.classify();
        let body = match &self {
            Error::Validation(issues) => {
                json!({ "error": "Validation failed", "code": reason, "issues": issues })
            }
            Error::OAuth { error, description } => {
                // RFC 6749 §5.2 body; token responses are never cached.
                let mut response = (
                    status,
                    Json(json!({ "error": error, "error_description": description })),
                )
                    .into_response();
                let headers = response.headers_mut();
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
                if status == StatusCode::UNAUTHORIZED {
                    headers.insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"linkd\""),
                    );
                }
                return response;
            }
            other => json!({ "error": other.to_string(), "code": reason }),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Marks a response that carries a provider's answer (the proxy), passed on
/// as it is whatever its status.
#[derive(Clone, Copy)]
pub(crate) struct ProviderAnswer;

/// Axum and tower-http refuse some requests themselves (a method the path
/// lacks, a body over the limit, a path or query that does not parse) with a
/// bare text body; this gives those answers the one error shape. The text is
/// not passed on: it can quote what the caller sent.
async fn refusals_as_json(response: Response) -> Response {
    let (reason, message) = match response.status() {
        StatusCode::METHOD_NOT_ALLOWED => (
            Reason::MethodNotAllowed,
            "this path does not take that method; see the Allow header",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            Reason::PayloadTooLarge,
            "the body is larger than this server accepts (LINKD_MAX_REQUEST_BYTES)",
        ),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => (
            Reason::ValidationFailed,
            "the path or query string cannot be read",
        ),
        _ => return response,
    };
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/json"));
    if is_json || response.extensions().get::<ProviderAnswer>().is_some() {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = if reason == Reason::ValidationFailed {
        json!({ "error": "Validation failed", "code": reason.as_str(),
                "issues": [{ "path": "", "message": message }] })
    } else {
        json!({ "error": message, "code": reason.as_str() })
    };
    let (json_parts, json_body) = Json(body).into_response().into_parts();
    parts.headers.extend(json_parts.headers);
    Response::from_parts(parts, json_body)
}

/// The authenticated API-key caller of a REST request.
pub struct Authenticated(pub Caller);

impl FromRequestParts<RestState> for Authenticated {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &RestState,
    ) -> Result<Self, Self::Rejection> {
        let key = presented_key(&parts.headers);
        Ok(Authenticated(
            state.api.auth.authenticate(key.as_ref()).await?,
        ))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BrandingJson {
    display_name: Option<String>,
    accent_color: Option<String>,
    logo_url: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClientAppJson {
    id: String,
    name: String,
    environment: String,
    redirect_uris: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_url: Option<String>,
    created_at: String,
    access_token_handoff: bool,
    branding: BrandingJson,
}

impl From<pb::ClientApp> for ClientAppJson {
    fn from(app: pb::ClientApp) -> Self {
        ClientAppJson {
            environment: enum_name(app.environment().as_str_name()),
            id: app.id,
            name: app.name,
            redirect_uris: app.redirect_uris,
            webhook_url: app.webhook_url,
            created_at: app.created_at.as_ref().map(iso8601).unwrap_or_default(),
            access_token_handoff: app.access_token_handoff,
            branding: {
                let b = app.branding.unwrap_or_default();
                let given = |s: String| (!s.is_empty()).then_some(s);
                BrandingJson {
                    display_name: given(b.display_name),
                    accent_color: given(b.accent_color),
                    logo_url: given(b.logo_url),
                }
            },
        }
    }
}

async fn list_client_apps(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
) -> Result<Response, Error> {
    let apps = state.api.client_apps.list_client_apps(&caller).await?;
    let apps: Vec<ClientAppJson> = apps.client_apps.into_iter().map(Into::into).collect();
    Ok(Json(json!({ "clientApps": apps })).into_response())
}

async fn get_client_app(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path(client_app_id): Path<String>,
) -> Result<Response, Error> {
    let app = state
        .api
        .client_apps
        .get_client_app(&caller, pb::GetClientAppRequest { client_app_id })
        .await?
        .client_app
        .expect("get_client_app returns the app");
    Ok(Json(ClientAppJson::from(app)).into_response())
}

#[derive(serde::Deserialize)]
struct ListProvidersQuery {
    #[serde(alias = "integration_id", rename = "integrationId")]
    integration_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CapabilityJson {
    resource: String,
    action: String,
    description: String,
    arguments_schema: serde_json::Value,
    result_description: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProviderJson {
    integration_id: String,
    name: String,
    category: String,
    capabilities: Vec<CapabilityJson>,
    login_method: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    oauth_scopes: Vec<String>,
}

async fn list_providers(
    State(state): State<RestState>,
    Authenticated(_): Authenticated,
    Query(query): Query<ListProvidersQuery>,
) -> Result<Response, Error> {
    let providers = state.api.links.list_providers(pb::ListProvidersRequest {
        integration_id: query.integration_id,
    })?;
    let providers: Vec<ProviderJson> = providers
        .providers
        .into_iter()
        .map(|p| ProviderJson {
            category: enum_name(p.category().as_str_name()),
            login_method: enum_name(p.login_method().as_str_name()),
            oauth_scopes: p.oauth_scopes,
            integration_id: p.integration_id,
            name: p.name,
            capabilities: p
                .capabilities
                .into_iter()
                .map(|c| CapabilityJson {
                    action: enum_name(c.action().as_str_name()),
                    resource: c.resource,
                    description: c.description,
                    arguments_schema: c
                        .arguments_schema
                        .as_ref()
                        .map(proto_json::from_struct)
                        .unwrap_or_default(),
                    result_description: c.result_description,
                })
                .collect(),
        })
        .collect();
    Ok(Json(json!({ "providers": providers })).into_response())
}

/// Prometheus text exposition.
async fn metrics(State(state): State<RestState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.api.render_metrics(),
    )
        .into_response()
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database is reachable and the server is not draining.
async fn readyz(State(state): State<RestState>) -> Response {
    if state.health.is_serving() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// The input gate for every query string (see [`crate::api::gate`]): a NUL
/// can only arrive percent-encoded, so most requests skip the parse.
async fn gate_query(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(query) = request.uri().query().filter(|q| q.contains("%00")) {
        let pairs: Vec<_> = url::form_urlencoded::parse(query.as_bytes()).collect();
        let pairs = pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref()));
        if let Err(err) = crate::api::gate::check_pairs(pairs) {
            return err.into_response();
        }
    }
    next.run(request).await
}

/// Every REST route; bodies over `max_body_bytes` are refused with 413.
pub fn router(state: RestState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/client-apps", get(list_client_apps))
        .route("/v1/client-apps/{client_app_id}", get(get_client_app))
        .route(
            "/v1/client-apps/{client_app_id}/rotate-webhook-secret",
            axum::routing::post(events::rotate_webhook_secret),
        )
        .route(
            "/v1/client-apps/{client_app_id}/oauth-clients",
            get(provider_oauth::list_clients),
        )
        .route(
            "/v1/client-apps/{client_app_id}/oauth-clients/{integration_id}",
            axum::routing::put(provider_oauth::set_client).delete(provider_oauth::delete_client),
        )
        .route(
            "/v1/client-apps/{client_app_id}/branding",
            axum::routing::put(branding::set_branding),
        )
        .route("/link/brand/{client_app_id}/logo", get(branding::logo))
        .route("/v1/events", get(events::list))
        .route(
            "/v1/events/redeliver-failed",
            axum::routing::post(events::redeliver_failed),
        )
        .route("/v1/events/{event_id}", get(events::get))
        .route(
            "/v1/events/{event_id}/redeliver",
            axum::routing::post(events::redeliver),
        )
        .route("/v1/links", axum::routing::post(links::create_link))
        .route("/v1/links/{link_id}", get(links::get_link))
        .route("/v1/providers", get(list_providers))
        .route("/v2/link/init", axum::routing::post(sessions::init))
        .route("/v2/connections", get(connections::list))
        .route(
            "/v2/connections/{connection_id}",
            get(connections::get).delete(connections::delete),
        )
        .route(
            "/v2/sandbox/connections/{connection_id}/reset-login",
            axum::routing::post(connections::reset_sandbox_login),
        )
        .route(
            "/v2/connections/{connection_id}/operations",
            get(connections::list_operation_runs).post(connections::execute_operations),
        )
        .route(
            "/v2/connections/{connection_id}/access-token",
            get(connections::access_token),
        )
        .route(
            "/v2/connections/{connection_id}/proxy",
            axum::routing::any(connections::proxy),
        )
        .route(
            "/v2/connections/{connection_id}/proxy/{*path}",
            axum::routing::any(connections::proxy),
        )
        .route("/v3/oauth/authorize", get(oauth::authorize))
        .route("/v3/oauth/resume", axum::routing::post(oauth::resume))
        .route("/v3/oauth/token", axum::routing::post(oauth::token))
        .route("/v1/flow", get(flow::get))
        .route("/v1/flow/claim", axum::routing::post(flow::claim))
        .route(
            "/v1/flow/integration",
            axum::routing::post(flow::select_integration),
        )
        .route("/v1/flow/approve", axum::routing::post(flow::approve))
        .route(
            "/v1/flow/credentials",
            axum::routing::post(flow::credentials),
        )
        .route(
            "/v1/flow/second-factor",
            axum::routing::post(flow::second_factor),
        )
        .route("/v1/flow/cancel", axum::routing::post(flow::cancel))
        .route(
            "/v1/flow/oauth/start",
            axum::routing::post(flow::start_provider_authorization),
        )
        .route(
            &format!("/{}", crate::provider_oauth::CALLBACK_PATH),
            get(flow::provider_callback),
        )
        .layer(axum::middleware::from_fn(gate_query))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            max_body_bytes,
        ))
        .layer(axum::middleware::map_response(refusals_as_json))
        .with_state(state)
}
