//! `GET /v3/oauth/authorize`, `POST /v3/oauth/resume` and
//! `POST /v3/oauth/token` in their documented and RFC 6749 shapes.

use super::RestState;
use crate::kernel::error::Error;
use crate::oauth::{AuthorizeError, BasicCredentials};
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

/// A token request (RFC 6749 §4.1.3, with PKCE).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // A schema only: the handler reads the form.
struct TokenForm {
    /// `authorization_code`.
    grant_type: String,
    /// The code the authorization redirect carried.
    code: String,
    /// The `redirect_uri` of the authorization request, when it had one.
    redirect_uri: Option<String>,
    /// The client app's id (`app_…`), unless HTTP Basic carries it.
    client_id: Option<String>,
    client_secret: Option<String>,
    /// PKCE (RFC 7636): required when the authorization request had a
    /// `code_challenge`.
    code_verifier: Option<String>,
}

/// An issued access token (RFC 6749 §5.1).
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
}

/// HTTP Basic client credentials (RFC 6749 §2.3.1: both parts
/// form-urlencoded before base64).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<BasicCredentials>, Error> {
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
    Ok(Some(BasicCredentials {
        client_id: unescape(id),
        client_secret: SecretString::from(unescape(secret)),
    }))
}

#[utoipa::path(post, operation_id = "ExchangeCode", path = "/v3/oauth/token", tag = "oauth", request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded", description = "RFC 6749 §4.1.3; the client authenticates with `client_id`/`client_secret` here or with HTTP Basic"), responses((status = 200, body = TokenResponse), (status = 413, body = super::ErrorBody, description = "the body is over the size limit"), (status = 429, body = super::ErrorBody, description = "the client app is over its rate limit (`Retry-After`)"), (status = 503, body = super::ErrorBody, description = "the database cannot be reached (`Retry-After`)"), (status = "default", body = super::OAuthErrorBody, description = "RFC 6749 §5.2")))]
pub(super) async fn token(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return Err(Error::oauth(
            "invalid_request",
            "The body must be application/x-www-form-urlencoded.",
        ));
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    crate::api::gate::check_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|err| Error::oauth("invalid_request", err.to_string()))?;
    let mut form = single_values(pairs, super::body::declared_fields::<TokenForm>())
        .map_err(|name| Error::oauth("invalid_request", format!("{name} must not be repeated.")))?;
    let basic = basic_credentials(&headers)?;
    let mut take = |name: &str| form.remove(name);
    let req = pb::ExchangeCodeRequest {
        grant_type: take("grant_type").unwrap_or_default(),
        code: take("code").unwrap_or_default(),
        redirect_uri: take("redirect_uri"),
        client_id: take("client_id").unwrap_or_default(),
        client_secret: take("client_secret"),
        code_verifier: take("code_verifier"),
    };
    let issued = state.api.oauth.exchange_code(req, basic).await?;
    Ok(no_store(
        Json(TokenResponse {
            access_token: issued.access_token,
            token_type: issued.token_type,
            expires_in: issued.expires_in,
            scope: issued.scope,
            connection_id: issued.connection_id,
        })
        .into_response(),
    ))
}
