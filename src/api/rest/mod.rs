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
use axum::{Json, Router};
use serde::Serialize;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

mod body;
mod branding;
mod connections;
mod events;
mod flow;
mod links;
mod oauth;
pub mod openapi;
mod provider_oauth;
mod sessions;

#[derive(Clone)]
pub struct RestState {
    pub api: std::sync::Arc<Services>,
    pub health: Health,
}

/// The one REST error body (`Error` in the OpenAPI document).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// A sentence for people; match on `code`, never on this.
    error: String,
    #[schema(value_type = openapi::ErrorCode)]
    code: &'static str,
    /// Each invalid field (only with `VALIDATION_FAILED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    issues: Option<Vec<crate::kernel::error::FieldViolation>>,
}

/// An OAuth error (`OAuthError`): of the token, revocation and
/// introspection endpoints (RFC 6749 §5.2, RFC 7009 §2.2.1), or an access
/// token refused by a protected resource (RFC 6750 §3.1).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = OAuthError)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `invalid_grant`,
    /// `unauthorized_client`, `unsupported_grant_type`, `invalid_scope` or
    /// (a protected resource) `invalid_token`.
    pub(super) error: &'static str,
    pub(super) error_description: String,
    /// Only on a refused access token: `UNAUTHENTICATED`, so the body is
    /// also an `Error` for clients that read every `401` as one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<openapi::ErrorCode>)]
    pub(super) code: Option<&'static str>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.log();
        let (_, status, code) = self.classify();
        let retry_after = self.retry_after().map(|delay| {
            // Whole seconds (RFC 9110 §10.2.3), rounded up.
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            HeaderValue::from(seconds.max(1))
        });
        let body = match self {
            Error::Validation(issues) => ErrorBody {
                error: "Validation failed".into(),
                code,
                issues: Some(issues),
            },
            Error::OAuth { error, description } => {
                // RFC 6749 §5.2 body; token responses are never cached.
                let body = OAuthErrorBody {
                    error,
                    error_description: description,
                    code: (error == "invalid_token").then_some(Reason::Unauthenticated.as_str()),
                };
                let challenge = (error == "invalid_token")
                    .then(|| bearer_challenge(Some((error, &body.error_description))));
                let mut response = (status, Json(body)).into_response();
                let headers = response.headers_mut();
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
                // `invalid_client` gets the Basic challenge from the token
                // endpoints, only when the client tried Basic.
                if let Some(challenge) = challenge {
                    headers.insert(header::WWW_AUTHENTICATE, challenge);
                }
                return response;
            }
            other => ErrorBody {
                error: other.to_string(),
                code,
                issues: None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, bearer_challenge(None));
        }
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, seconds);
        }
        response
    }
}

/// The `Bearer` challenge of a `401` (RFC 6750 §3): with the error and its
/// description when a presented token was refused, bare when none was
/// presented.
fn bearer_challenge(error: Option<(&str, &str)>) -> HeaderValue {
    let value = match error {
        Some((error, description)) => {
            // A quoted-string may not hold `"` or `\` unescaped; the
            // descriptions are linkd's own sentences, kept to printable ASCII.
            let description: String = description
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .filter(|c| !matches!(c, '"' | '\\'))
                .collect();
            format!(
                "Bearer realm=\"linkd\", error=\"{error}\", error_description=\"{description}\""
            )
        }
        None => "Bearer realm=\"linkd\"".to_string(),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// Marks a response that carries a provider's answer (the proxy), passed on
/// as it is whatever its status.
#[derive(Clone, Copy)]
pub(crate) struct ProviderAnswer;

/// Axum and tower-http refuse some requests themselves (a method the path
/// lacks, a body over the limit, a form of another media type, a path or
/// query that does not parse) with a
/// bare text body; this gives those answers the one error shape. The text is
/// not passed on: it can quote what the caller sent.
async fn refusals_as_json(response: Response) -> Response {
    let body = match response.status() {
        StatusCode::METHOD_NOT_ALLOWED => ErrorBody {
            error: "this path does not take that method; see the Allow header".into(),
            code: Reason::MethodNotAllowed.as_str(),
            issues: None,
        },
        StatusCode::PAYLOAD_TOO_LARGE => ErrorBody {
            error: "the body is larger than this server accepts (LINKD_MAX_REQUEST_BYTES)".into(),
            code: Reason::PayloadTooLarge.as_str(),
            issues: None,
        },
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorBody {
            error: "the body's Content-Type is not one this endpoint reads".into(),
            code: Reason::UnsupportedMediaType.as_str(),
            issues: None,
        },
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => ErrorBody {
            error: "Validation failed".into(),
            code: Reason::ValidationFailed.as_str(),
            issues: Some(vec![crate::kernel::error::FieldViolation {
                path: String::new(),
                message: "the path or query string cannot be read".into(),
            }]),
        },
        _ => return response,
    };
    // Only the frameworks' own bare answers: linkd's JSON and HTML pages
    // (the OAuth error page) are already what they should be.
    let is_bare = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|ct| ct.as_bytes().starts_with(b"text/plain"));
    if !is_bare || response.extensions().get::<ProviderAnswer>().is_some() {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
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

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Branding)]
struct BrandingJson {
    display_name: Option<String>,
    accent_color: Option<String>,
    logo_url: Option<String>,
}

/// A client app: where its end users come back to and how its Link page looks.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ClientApp)]
struct ClientAppJson {
    id: String,
    name: String,
    #[schema(example = "sandbox")]
    environment: String,
    redirect_uris: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_url: Option<String>,
    created_at: String,
    access_token_handoff: bool,
    branding: BrandingJson,
    /// Absent when the server has client-app rate limits off.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimitJson>,
    oauth: OAuthRegistrationJson,
}

/// How a client app acts as an OAuth client (`linkd admin set-oauth-registration`).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ClientAppOAuth)]
struct OAuthRegistrationJson {
    /// `client_secret_basic` (confidential; `client_secret_post` works
    /// too) or `none` (public: client_id alone, PKCE required).
    token_endpoint_auth_method: String,
    refresh_tokens: bool,
    /// Origins allowed to call the token endpoints from a browser (CORS).
    web_origins: Vec<String>,
}

/// A client app's rate limit: a token bucket of `burst` refilled at `perSecond`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ClientAppRateLimit)]
struct RateLimitJson {
    per_second: f64,
    burst: u32,
    /// Set by an operator for this app (`linkd admin set-rate-limit`).
    custom: bool,
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
            rate_limit: app.rate_limit.map(|r| RateLimitJson {
                per_second: r.per_second,
                burst: r.burst,
                custom: r.custom,
            }),
            oauth: {
                let o = app.oauth.unwrap_or_default();
                OAuthRegistrationJson {
                    token_endpoint_auth_method: o.token_endpoint_auth_method,
                    refresh_tokens: o.refresh_tokens,
                    web_origins: o.web_origins,
                }
            },
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

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ClientAppList {
    client_apps: Vec<ClientAppJson>,
}

/// The tenant's client apps.
#[utoipa::path(get, operation_id = "ListClientApps", path = "/v1/client-apps", tag = "client apps",
    security(("api_key" = [])),
    responses((status = 200, body = ClientAppList)))]
async fn list_client_apps(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
) -> Result<Response, Error> {
    let apps = state.api.client_apps.list_client_apps(&caller).await?;
    let client_apps = apps.client_apps.into_iter().map(Into::into).collect();
    Ok(Json(ClientAppList { client_apps }).into_response())
}

/// One of the tenant's client apps.
#[utoipa::path(get, operation_id = "GetClientApp", path = "/v1/client-apps/{client_app_id}", tag = "client apps",
    params(("client_app_id" = inline(crate::kernel::ids::ClientAppId), Path)),
    security(("api_key" = [])),
    responses((status = 200, body = ClientAppJson)))]
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

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Capability)]
struct CapabilityJson {
    resource: String,
    action: String,
    description: String,
    /// JSON Schema of the operation's `arguments`.
    #[schema(value_type = Object)]
    arguments_schema: serde_json::Value,
    result_description: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Provider)]
struct ProviderJson {
    integration_id: String,
    name: String,
    category: String,
    capabilities: Vec<CapabilityJson>,
    login_method: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    oauth_scopes: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ProviderList {
    providers: Vec<ProviderJson>,
}

/// The integrations this deployment serves and what each can do.
#[utoipa::path(get, operation_id = "ListProviders", path = "/v1/providers", tag = "providers",
    params(("integrationId" = Option<String>, Query, description = "only this integration (also `integration_id`)")),
    security(("api_key" = [])),
    responses((status = 200, body = ProviderList)))]
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
    Ok(Json(ProviderList { providers }).into_response())
}

/// Prometheus text exposition.
#[utoipa::path(get, operation_id = "Metrics", path = "/metrics", tag = "operations",
    responses((status = 200, body = String, content_type = "text/plain; version=0.0.4")))]
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
#[utoipa::path(get, operation_id = "Healthz", path = "/healthz", tag = "operations",
    responses((status = 200, body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database is reachable and the server is not draining.
#[utoipa::path(get, operation_id = "Readyz", path = "/readyz", tag = "operations",
    responses(
        (status = 200, body = String, content_type = "text/plain"),
        (status = 503, body = String, content_type = "text/plain", description = "not ready: draining or no database"),
    ))]
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

/// This document (OpenAPI 3.1), also committed as `openapi.json`.
#[utoipa::path(get, operation_id = "GetOpenApiDocument", path = "/openapi.json", tag = "operations",
    responses((status = 200, body = Object, description = "OpenAPI 3.1")))]
async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::LazyLock<axum::body::Bytes> =
        std::sync::LazyLock::new(|| openapi::document_json(&openapi_document()).into());
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.clone(),
    )
        .into_response()
}

/// Every REST route with its documentation: `routes!` registers each handler
/// under the method and path of its `#[utoipa::path]`.
fn documented_routes() -> OpenApiRouter<RestState> {
    use utoipa_axum::routes;
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(sessions::init))
        .routes(routes!(links::create_link))
        .routes(routes!(links::get_link))
        .routes(routes!(connections::list))
        .routes(routes!(connections::get, connections::delete))
        .routes(routes!(
            connections::list_operation_runs,
            connections::execute_operations
        ))
        .routes(routes!(connections::access_token))
        .routes(routes!(connections::reset_sandbox_login))
        .routes(routes!(list_providers))
        .routes(routes!(list_client_apps))
        .routes(routes!(get_client_app))
        .routes(routes!(branding::set_branding))
        .routes(routes!(events::rotate_webhook_secret))
        .routes(routes!(provider_oauth::list_clients))
        .routes(routes!(
            provider_oauth::set_client,
            provider_oauth::delete_client
        ))
        .routes(routes!(events::list))
        .routes(routes!(events::redeliver_failed))
        .routes(routes!(events::get))
        .routes(routes!(events::redeliver))
        .routes(routes!(flow::claim))
        .routes(routes!(flow::get))
        .routes(routes!(flow::select_integration))
        .routes(routes!(flow::approve))
        .routes(routes!(flow::credentials))
        .routes(routes!(flow::second_factor))
        .routes(routes!(flow::cancel))
        .routes(routes!(flow::start_provider_authorization))
        .routes(routes!(flow::provider_callback))
        .routes(routes!(oauth::authorize))
        .routes(routes!(oauth::resume))
        .routes(routes!(oauth::token))
        .routes(routes!(oauth::revoke))
        .routes(routes!(oauth::introspect))
        .routes(routes!(oauth::metadata))
        .routes(routes!(branding::logo))
}

/// The OpenAPI document of every REST route (`/openapi.json`, `linkd openapi`).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut document = documented_routes().into_openapi();
    openapi::finish(&mut document);
    document
}

/// The proxy's route: the methods it forwards to providers.
fn proxied_methods() -> axum::routing::MethodRouter<RestState> {
    let forwarded = crate::provider_oauth::api::METHODS
        .iter()
        .map(|m| axum::routing::MethodFilter::try_from(m.clone()).expect("a standard method"))
        .reduce(axum::routing::MethodFilter::or)
        .expect("the proxy forwards some method");
    axum::routing::on(forwarded, connections::proxy)
}

/// Every REST route; bodies over `max_body_bytes` are refused with 413.
pub fn router(state: RestState, max_body_bytes: usize) -> Router {
    let (router, _) = documented_routes().split_for_parts();
    router
        // The proxy takes the methods it forwards and any path below it;
        // OpenAPI has no such template, so `ApiDoc` lists it as
        // `…/proxy/{path}`. Another method is a 405 with `Allow`.
        .route("/v2/connections/{connection_id}/proxy", proxied_methods())
        .route(
            "/v2/connections/{connection_id}/proxy/{*path}",
            proxied_methods(),
        )
        // CORS preflights of what browser apps call (the OpenAPI document
        // lists the requests themselves).
        .route("/v3/oauth/token", axum::routing::options(oauth::preflight))
        .route("/v3/oauth/revoke", axum::routing::options(oauth::preflight))
        .route(
            "/v3/oauth/introspect",
            axum::routing::options(oauth::preflight),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            axum::routing::options(oauth::preflight),
        )
        .layer(axum::middleware::from_fn(gate_query))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            max_body_bytes,
        ))
        .layer(axum::middleware::map_response(refusals_as_json))
        .with_state(state)
}
