//! `GET /v3/oauth/authorize`, `POST /v3/oauth/resume`, `POST
//! /v3/oauth/token`, `/v3/oauth/revoke` and `/v3/oauth/introspect`, and the
//! server metadata at `GET /.well-known/oauth-authorization-server`, in
//! their documented and RFC 6749 / 7009 / 7662 / 8414 shapes. The token
//! endpoints and the metadata answer CORS for registered web origins.

use super::RestState;
use crate::kernel::error::Error;
use crate::oauth::AuthorizeError;
use crate::oauth::rules;
use crate::pb;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use secrecy::SecretString;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Escapes text for HTML element content and quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The `known` parameters of a query or form by name. A repeated known
/// parameter is an error (RFC 6749 §3.1: parameters must not be included
/// more than once); unknown ones are ignored, repeated or not, as the same
/// section says a server must.
fn single_values(
    pairs: Vec<(String, String)>,
    known: &[impl AsRef<str>],
) -> Result<HashMap<String, String>, String> {
    let mut values = HashMap::new();
    for (name, value) in pairs {
        if known.iter().any(|k| k.as_ref() == name) && values.insert(name.clone(), value).is_some()
        {
            return Err(name);
        }
    }
    Ok(values)
}

/// The query parameters `GET /v3/oauth/authorize` reads.
const AUTHORIZE_PARAMETERS: &[&str] = &[
    "client_id",
    "response_type",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "institution_id",
    "lang",
    "tag",
    "recipientId",
    "response_mode",
];

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"))
}

/// `400 {"<parameter>": ["message", …]}`, the documented shape.
fn parameter_errors(violations: &[crate::kernel::error::FieldViolation]) -> Response {
    let mut messages = BTreeMap::<String, Vec<String>>::new();
    for violation in violations {
        messages
            .entry(violation.path.clone())
            .or_default()
            .push(violation.message.clone());
    }
    let body = AuthorizeRefusal::Parameters(ParameterErrors(messages));
    no_store((StatusCode::BAD_REQUEST, Json(body)).into_response())
}

/// The JSON `400` of the authorize endpoint: the documented per-parameter
/// messages, or (for `Accept: application/json`) the OAuth error an
/// untrusted client or redirect URI gets instead of the error page.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(super) enum AuthorizeRefusal {
    Parameters(ParameterErrors),
    Client(super::OAuthErrorBody),
}

/// `{"<parameter>": ["message", …]}`: what is wrong with each parameter.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ParameterErrors(BTreeMap<String, Vec<String>>);

/// The end user's error page for an untrusted client or redirect URI, in
/// the request's language and the Link page's styles (same card, same
/// stylesheet, nothing else loaded).
fn error_page(headers: &HeaderMap, parameter: &str, message: &str, lang: &str) -> Response {
    let error = if parameter == "client_id" {
        "invalid_client"
    } else {
        "invalid_request"
    };
    if wants_json(headers) {
        return no_store(
            (
                StatusCode::BAD_REQUEST,
                Json(AuthorizeRefusal::Client(super::OAuthErrorBody {
                    error,
                    error_description: message.to_string(),
                    code: None,
                })),
            )
                .into_response(),
        );
    }
    // What the end user can act on, in their words (the JSON answer keeps
    // the technical message for developers).
    let (english, french) = match message {
        "The client_id is missing or unknown." => (
            "The app that sent you here is not registered with this service.",
            "L’application qui vous a envoyé ici n’est pas enregistrée auprès de ce service.",
        ),
        "The redirect_uri is required: this client registered several." => (
            "The app did not say where to send you back.",
            "L’application n’a pas indiqué où vous renvoyer.",
        ),
        _ => (
            "The app asked to send you back to an address it has not registered.",
            "L’application a demandé à vous renvoyer vers une adresse qu’elle n’a pas enregistrée.",
        ),
    };
    let message = if lang == "fr" { french } else { english };
    let (lang, title, heading, advice) = if lang == "fr" {
        (
            "fr",
            "Erreur d’autorisation",
            "Cette demande de connexion ne peut pas continuer",
            "Retournez dans l’application d’où vous venez et réessayez.",
        )
    } else {
        (
            "en",
            "Authorization error",
            "This sign-in request cannot continue",
            "Return to the app you came from and try again.",
        )
    };
    let page = format!(
        "<!doctype html>\n<html lang=\"{lang}\">\n<head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{title}</title><link rel=\"stylesheet\" href=\"/link/app.css\"></head>\n<body>\n\
         <main class=\"card\">\n<header class=\"brand\"><span class=\"logo\" aria-hidden=\"true\">◆</span> <span>linkd</span></header>\n\
         <h1>{heading}</h1>\n<p class=\"alert\" role=\"alert\">{}</p>\n<p class=\"muted\">{advice}</p>\n</main>\n</body>\n</html>\n",
        escape(message)
    );
    let mut response = (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'"),
    );
    no_store(response)
}

/// The documented `302` body: a form that resumes at the Link page,
/// submitted on load, with a Resume button for browsers without scripts.
fn redirect_form(resume: &str, fields: &[(&str, &str)]) -> String {
    let inputs: String = fields
        .iter()
        .map(|(name, value)| {
            format!(
                "    <input type=\"hidden\" name=\"{}\" value=\"{}\"/>\n",
                escape(name),
                escape(value)
            )
        })
        .collect();
    format!(
        "<html>\n<head>\n  <title>Submit Form</title>\n  <meta name=\"referrer\" content=\"no-referrer\" />\n  \
         <meta http-equiv=\"x-ua-compatible\" content=\"IE=edge\" />\n</head>\n\
         <body onload=\"javascript:document.forms[0].submit()\">\n  <noscript>\n    <p>\n      \
         <strong>Note:</strong> Since your browser does not support JavaScript, you must press the Resume button once to proceed.\n    \
         </p>\n  </noscript>\n  <form method=\"post\" action=\"{}\">\n{inputs}    \
         <noscript><input type=\"submit\" value=\"Resume\"/></noscript>\n  </form>\n</body>\n</html>\n",
        escape(resume)
    )
}

#[utoipa::path(get, operation_id = "Authorize", path = "/v3/oauth/authorize", tag = "oauth", params(
    ("response_type" = String, Query, description = "`code`; another value (or none) goes back to the redirect URI as `error=unsupported_response_type` / `invalid_request`"),
    ("client_id" = String, Query, description = "the client app's id (`app_…`); unknown or missing gives the error page, never a redirect"),
    ("redirect_uri" = Option<String>, Query, description = "one of the app's registered redirect URIs; may be left out when it registered exactly one"),
    ("scope" = Option<String>, Query, description = "space-separated scopes"),
    ("state" = Option<String>, Query, description = "returned byte for byte on the redirect"),
    ("code_challenge" = Option<String>, Query, description = "PKCE (RFC 7636) challenge"),
    ("code_challenge_method" = Option<String>, Query, description = "`S256` (`plain` is refused)"),
    ("institution_id" = Option<String>, Query, description = "an integration id: skips the provider choice"),
    ("lang" = Option<String>, Query, description = "`en` (the default) or `fr`"),
    ("tag" = Option<String>, Query, description = "your name for this request, for tracking"),
    ("recipientId" = Option<String>, Query, description = "the data recipient, when the app has several"),
    ("response_mode" = Option<String>, Query, description = "`query` (the default and only mode); another value goes back as `error=invalid_request`"),
    ("Accept" = Option<String>, Header, description = "`application/json` turns the error page into a JSON OAuth error"),
), responses((status = 302, description = "to the Link page, or back to the client with an error"), (status = 400, description = "a parameter is invalid or repeated (per-parameter messages), or the client or redirect URI is not trusted: then an error page, never a redirect (the OAuth error as JSON for `Accept: application/json`)", content((super::openapi::AuthorizeBadRequest = "application/json"), (String = "text/html")))))]
pub(super) async fn authorize(
    State(state): State<RestState>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let mut params = match single_values(pairs, AUTHORIZE_PARAMETERS) {
        Ok(params) => params,
        Err(name) => {
            return parameter_errors(&[crate::kernel::error::FieldViolation {
                message: format!("The field {name} must not be repeated."),
                path: name,
            }]);
        }
    };
    let mut take = |name: &str| params.remove(name);
    let req = pb::AuthorizeRequest {
        client_id: take("client_id").unwrap_or_default(),
        response_type: take("response_type").unwrap_or_default(),
        redirect_uri: take("redirect_uri"),
        scope: take("scope"),
        state: take("state"),
        code_challenge: take("code_challenge"),
        code_challenge_method: take("code_challenge_method"),
        institution_id: take("institution_id"),
        lang: take("lang"),
        tag: take("tag"),
        recipient_id: take("recipientId"),
        response_mode: take("response_mode"),
    };
    let form_fields = (
        req.client_id.clone(),
        req.response_type.clone(),
        req.scope.clone(),
        req.state.clone(),
        req.redirect_uri.clone(),
        // What the flow speaks: an empty `lang` is `en`, as the form says.
        crate::kernel::lang::parse_lang(req.lang.as_deref())
            .unwrap_or("en")
            .to_string(),
        req.institution_id.clone(),
    );
    match state.api.oauth.authorize(req).await {
        Ok(answer) => {
            let location = answer.location;
            let body = if answer.error.is_empty() {
                let reference = location.split("#token=").nth(1).unwrap_or_default();
                let (client_id, response_type, scope, st, redirect_uri, lang, institution) =
                    &form_fields;
                let mut fields = vec![("REF", reference), ("response_type", response_type)];
                for (name, value) in [
                    ("scope", scope),
                    ("state", st),
                    ("redirect_uri", redirect_uri),
                    ("provider_id", institution),
                ] {
                    if let Some(value) = value {
                        fields.push((name, value));
                    }
                }
                fields.push(("lang", lang));
                fields.push(("client_id", client_id));
                redirect_form("/v3/oauth/resume", &fields)
            } else {
                String::new()
            };
            let mut response = (
                StatusCode::FOUND,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                body,
            )
                .into_response();
            match HeaderValue::from_str(&location) {
                Ok(value) => {
                    response.headers_mut().insert(header::LOCATION, value);
                    no_store(response)
                }
                Err(_) => Error::internal(anyhow::anyhow!("unencodable Location")).into_response(),
            }
        }
        Err(AuthorizeError::Parameters(violations)) => parameter_errors(&violations),
        Err(AuthorizeError::UntrustedClient { parameter, message }) => {
            error_page(&headers, parameter, &message, &form_fields.5)
        }
        Err(AuthorizeError::Other(err)) => err.into_response(),
    }
}

/// The form of the `302` body: continues at the Link page. A redirect
/// after a form POST is `303 See Other`, so the browser follows with GET.
/// The form the `302` page posts.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // A schema only: the handler reads the form.
struct ResumeForm {
    /// The sign-in reference of the page's form.
    #[schema(rename = "REF", pattern = "^lft_[A-Za-z0-9_-]{1,123}$")]
    reference: String,
}

#[utoipa::path(post, operation_id = "ResumeAuthorization", path = "/v3/oauth/resume", tag = "oauth", request_body(content = ResumeForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "continues at the Link page")))]
pub(super) async fn resume(
    State(state): State<RestState>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Result<Response, Error> {
    let reference = form
        .get("REF")
        .filter(|r| {
            r.starts_with("lft_")
                && r.len() < 128
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
        .ok_or_else(|| Error::invalid("REF", "is not a sign-in reference"))?;
    let location = state.api.flows.link_page_url(reference)?;
    let mut response = StatusCode::SEE_OTHER.into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(Error::internal)?,
    );
    Ok(no_store(response))
}

/// A token request: a code exchange (RFC 6749 §4.1.3, with PKCE) or a
/// refresh (§6).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // A schema only: the handler reads the form.
struct TokenForm {
    /// `authorization_code` or `refresh_token`.
    grant_type: String,
    /// `authorization_code`: the code the authorization redirect carried.
    code: Option<String>,
    /// `authorization_code`: the `redirect_uri` of the authorization
    /// request, when it had one.
    redirect_uri: Option<String>,
    /// The client app's id (`app_…`), unless HTTP Basic carries it.
    client_id: Option<String>,
    /// A confidential client's secret, unless HTTP Basic carries it.
    client_secret: Option<String>,
    /// `authorization_code`: PKCE (RFC 7636), required when the
    /// authorization request had a `code_challenge`.
    code_verifier: Option<String>,
    /// `refresh_token`: the refresh token (`lrt_…`), single-use.
    refresh_token: Option<String>,
    /// `refresh_token`: space-separated scopes, each one the grant has;
    /// omitted: all of them.
    scope: Option<String>,
}

/// Issued tokens (RFC 6749 §5.1).
#[derive(serde::Serialize, utoipa::ToSchema)]
struct TokenResponse {
    access_token: String,
    /// `Bearer`.
    token_type: String,
    /// Seconds.
    expires_in: i64,
    /// Space-separated.
    scope: String,
    /// The connection the token may use (`conn_…`).
    connection_id: String,
    /// Single-use: the next refresh returns a new one. Absent when the
    /// client app has refresh tokens turned off.
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

/// HTTP Basic client credentials (RFC 6749 §2.3.1: both parts
/// form-urlencoded before base64).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, SecretString)>, Error> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let invalid = || Error::oauth("invalid_client", "Malformed HTTP Basic credentials.");
    let value = value.to_str().map_err(|_| invalid())?;
    let Some(encoded) = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, rest)| rest.trim())
    else {
        return Err(invalid());
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| invalid())?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(invalid)?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), SecretString::from(unescape(secret)))))
}

/// A form-encoded request to a token endpoint, read: its known fields
/// (declared by `Form`'s schema, each at most once) and HTTP Basic
/// credentials.
struct TokenEndpointRequest {
    form: HashMap<String, String>,
    basic: Option<(String, SecretString)>,
}

impl TokenEndpointRequest {
    fn read<Form: utoipa::PartialSchema + 'static>(
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Self, Error> {
        if !super::body::is_form(headers) {
            return Err(Error::oauth(
                "invalid_request",
                "The body must be application/x-www-form-urlencoded.",
            ));
        }
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
        crate::api::gate::check_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|err| Error::oauth("invalid_request", err.to_string()))?;
        let form =
            single_values(pairs, super::body::declared_fields::<Form>()).map_err(|name| {
                Error::oauth("invalid_request", format!("{name} must not be repeated."))
            })?;
        Ok(TokenEndpointRequest {
            form,
            basic: basic_credentials(headers)?,
        })
    }

    fn take(&mut self, name: &str) -> Option<String> {
        self.form.remove(name)
    }
}

/// The client a token-endpoint request names (HTTP Basic user, else the
/// form's `client_id`), for CORS, before anything is parsed.
fn named_client(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    if let Ok(Some((id, _))) = basic_credentials(headers) {
        return Some(id);
    }
    url::form_urlencoded::parse(body)
        .find(|(name, _)| name == "client_id")
        .map(|(_, value)| value.into_owned())
}

/// The answer of a token endpoint, completed: `no-store`, the HTTP Basic
/// challenge when Basic credentials failed (RFC 6749 §5.2; a client that
/// sent its secret in the body gets none, as it never tried Basic), and
/// CORS for the client's registered web origins.
async fn token_endpoint_answer(
    state: &RestState,
    headers: &HeaderMap,
    body: &[u8],
    answer: Result<Response, Error>,
) -> Response {
    let mut response = no_store(answer.unwrap_or_else(IntoResponse::into_response));
    let tried_basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 6 && v[..6].eq_ignore_ascii_case("basic "));
    if response.status() == StatusCode::UNAUTHORIZED && tried_basic {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"linkd\""),
        );
    }
    let client = named_client(headers, body);
    cors(state, headers, client.as_deref(), response).await
}

/// Adds CORS headers (Fetch standard) when the request's `Origin` is a web
/// origin registered by `client_id`'s app (by any app when `None`).
async fn cors(
    state: &RestState,
    headers: &HeaderMap,
    client_id: Option<&str>,
    mut response: Response,
) -> Response {
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return response;
    };
    // A lookup failure only withholds CORS: the answer itself stands.
    let allowed = state
        .api
        .oauth
        .allows_origin(client_id, origin)
        .await
        .unwrap_or(false);
    if let (true, Ok(value)) = (allowed, HeaderValue::from_str(origin)) {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    response
}

#[utoipa::path(post, operation_id = "ExchangeCode", path = "/v3/oauth/token", tag = "oauth", request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded", description = "RFC 6749 §4.1.3 and §6; a confidential client authenticates with `client_id`/`client_secret` here or with HTTP Basic, a public one sends `client_id` alone"), params(("Origin" = Option<String>, Header, description = "a registered web origin of the client gets `Access-Control-Allow-Origin`")), responses((status = 200, body = TokenResponse), (status = 413, body = super::ErrorBody, description = "the body is over the size limit"), (status = 429, body = super::ErrorBody, description = "the client app is over its rate limit (`Retry-After`)"), (status = 503, body = super::ErrorBody, description = "the database cannot be reached (`Retry-After`)"), (status = "default", body = super::OAuthErrorBody, description = "RFC 6749 §5.2")))]
pub(super) async fn token(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let answer = async {
        let mut request = TokenEndpointRequest::read::<TokenForm>(&headers, &body)?;
        let req = pb::ExchangeCodeRequest {
            grant_type: request.take("grant_type").unwrap_or_default(),
            code: request.take("code").unwrap_or_default(),
            redirect_uri: request.take("redirect_uri"),
            client_id: request.take("client_id").unwrap_or_default(),
            client_secret: request.take("client_secret"),
            code_verifier: request.take("code_verifier"),
            refresh_token: request.take("refresh_token"),
            scope: request.take("scope"),
        };
        let issued = state.api.oauth.exchange_code(req, request.basic).await?;
        Ok(Json(TokenResponse {
            access_token: issued.access_token,
            token_type: issued.token_type,
            expires_in: issued.expires_in,
            scope: issued.scope,
            connection_id: issued.connection_id,
            refresh_token: Some(issued.refresh_token).filter(|t| !t.is_empty()),
        })
        .into_response())
    }
    .await;
    token_endpoint_answer(&state, &headers, &body, answer).await
}

/// A revocation (RFC 7009 §2.1) or introspection (RFC 7662 §2.1) request.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // A schema only: the handlers read the form.
struct TokenActionForm {
    /// The access token (`lat_…`) or refresh token (`lrt_…`).
    token: String,
    /// `access_token` or `refresh_token`; optional, an unknown value is
    /// ignored.
    token_type_hint: Option<String>,
    /// The client app's id (`app_…`), unless HTTP Basic carries it.
    client_id: Option<String>,
    /// A confidential client's secret, unless HTTP Basic carries it.
    client_secret: Option<String>,
}

/// The fields both token actions take, as their requests' common part.
fn token_action(
    request: &mut TokenEndpointRequest,
) -> (String, Option<String>, String, Option<String>) {
    (
        request.take("token").unwrap_or_default(),
        request.take("token_type_hint"),
        request.take("client_id").unwrap_or_default(),
        request.take("client_secret"),
    )
}

#[utoipa::path(post, operation_id = "RevokeToken", path = "/v3/oauth/revoke", tag = "oauth", request_body(content = TokenActionForm, content_type = "application/x-www-form-urlencoded", description = "RFC 7009 §2.1; client authentication as at the token endpoint"), params(("Origin" = Option<String>, Header, description = "a registered web origin of the client gets `Access-Control-Allow-Origin`")), responses((status = 200, description = "revoked, or there was nothing to revoke (an unknown, expired or revoked token); the body is empty"), (status = 429, body = super::ErrorBody, description = "the client app is over its rate limit (`Retry-After`)"), (status = 503, body = super::ErrorBody, description = "the database cannot be reached (`Retry-After`)"), (status = "default", body = super::OAuthErrorBody, description = "RFC 7009 §2.2.1: `invalid_request`, `invalid_client` (401), `unauthorized_client` (the token is another client's)")))]
pub(super) async fn revoke(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let answer = async {
        let mut request = TokenEndpointRequest::read::<TokenActionForm>(&headers, &body)?;
        let (token, token_type_hint, client_id, client_secret) = token_action(&mut request);
        let req = pb::RevokeTokenRequest {
            token,
            token_type_hint,
            client_id,
            client_secret,
        };
        state.api.oauth.revoke_token(req, request.basic).await?;
        Ok(StatusCode::OK.into_response())
    }
    .await;
    token_endpoint_answer(&state, &headers, &body, answer).await
}

/// What a token allows (RFC 7662 §2.2); only `active` when it is not live.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct IntrospectionResponse {
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    /// `Bearer` (an access token) or `refresh_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    /// Issue time, seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    /// The connection (`conn_…`): the token's subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    /// The connection the token reads (`conn_…`), as the token response
    /// names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
}

#[utoipa::path(post, operation_id = "IntrospectToken", path = "/v3/oauth/introspect", tag = "oauth", request_body(content = TokenActionForm, content_type = "application/x-www-form-urlencoded", description = "RFC 7662 §2.1; client authentication as at the token endpoint"), params(("Origin" = Option<String>, Header, description = "a registered web origin of the client gets `Access-Control-Allow-Origin`")), responses((status = 200, body = IntrospectionResponse), (status = 429, body = super::ErrorBody, description = "the client app is over its rate limit (`Retry-After`)"), (status = 503, body = super::ErrorBody, description = "the database cannot be reached (`Retry-After`)"), (status = "default", body = super::OAuthErrorBody, description = "`invalid_request`, `invalid_client` (401)")))]
pub(super) async fn introspect(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let answer = async {
        let mut request = TokenEndpointRequest::read::<TokenActionForm>(&headers, &body)?;
        let (token, token_type_hint, client_id, client_secret) = token_action(&mut request);
        let req = pb::IntrospectTokenRequest {
            token,
            token_type_hint,
            client_id,
            client_secret,
        };
        let found = state.api.oauth.introspect_token(req, request.basic).await?;
        let seconds = |t: Option<prost_types::Timestamp>| t.map(|t| t.seconds);
        let set = |s: String| Some(s).filter(|s| !s.is_empty());
        Ok(Json(IntrospectionResponse {
            active: found.active,
            scope: set(found.scope),
            client_id: set(found.client_id),
            token_type: set(found.token_type),
            exp: seconds(found.expire_time),
            iat: seconds(found.issue_time),
            sub: set(found.connection_id.clone()),
            connection_id: set(found.connection_id),
            iss: set(found.issuer),
        })
        .into_response())
    }
    .await;
    token_endpoint_answer(&state, &headers, &body, answer).await
}

/// The authorization server's metadata (RFC 8414 §2): what every endpoint
/// accepts, from the same constants the endpoints check.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ServerMetadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    revocation_endpoint: String,
    introspection_endpoint: String,
    response_types_supported: Vec<&'static str>,
    response_modes_supported: Vec<&'static str>,
    grant_types_supported: Vec<&'static str>,
    code_challenge_methods_supported: Vec<&'static str>,
    token_endpoint_auth_methods_supported: Vec<&'static str>,
    revocation_endpoint_auth_methods_supported: Vec<&'static str>,
    introspection_endpoint_auth_methods_supported: Vec<&'static str>,
    scopes_supported: Vec<&'static str>,
    ui_locales_supported: Vec<&'static str>,
    /// RFC 9207: every authorization response carries `iss`.
    authorization_response_iss_parameter_supported: bool,
    service_documentation: String,
}

#[utoipa::path(get, operation_id = "GetAuthorizationServerMetadata", path = "/.well-known/oauth-authorization-server", tag = "oauth", params(("Origin" = Option<String>, Header, description = "a web origin some client app registered gets `Access-Control-Allow-Origin`")), responses((status = 200, body = ServerMetadata, description = "RFC 8414 §3.2")))]
pub(super) async fn metadata(State(state): State<RestState>, headers: HeaderMap) -> Response {
    let issuer = state.api.oauth.issuer();
    let endpoint = |path: &str| format!("{issuer}{path}");
    let document = ServerMetadata {
        authorization_endpoint: endpoint("/v3/oauth/authorize"),
        token_endpoint: endpoint("/v3/oauth/token"),
        revocation_endpoint: endpoint("/v3/oauth/revoke"),
        introspection_endpoint: endpoint("/v3/oauth/introspect"),
        service_documentation: endpoint("/openapi.json"),
        response_types_supported: rules::RESPONSE_TYPES.to_vec(),
        response_modes_supported: rules::RESPONSE_MODES.to_vec(),
        grant_types_supported: rules::GRANT_TYPES.to_vec(),
        code_challenge_methods_supported: rules::PKCE_METHODS.to_vec(),
        token_endpoint_auth_methods_supported: rules::CLIENT_AUTH_METHODS.to_vec(),
        revocation_endpoint_auth_methods_supported: rules::CLIENT_AUTH_METHODS.to_vec(),
        introspection_endpoint_auth_methods_supported: rules::CLIENT_AUTH_METHODS.to_vec(),
        scopes_supported: rules::SCOPES.to_vec(),
        ui_locales_supported: crate::kernel::lang::LANGUAGES.to_vec(),
        authorization_response_iss_parameter_supported: true,
        issuer,
    };
    let mut response = Json(document).into_response();
    // Metadata changes only with a deployment's configuration.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    cors(&state, &headers, None, response).await
}

/// A CORS preflight (Fetch standard) of the token endpoints or the
/// metadata: allowed for an origin some client app registered. The actual
/// request is then checked against its own client's origins.
pub(super) async fn preflight(State(state): State<RestState>, headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let allowed_headers = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .is_some();
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    if allowed_headers {
        response_headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
    }
    response_headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    cors(&state, &headers, None, response).await
}
