//! Token endpoint answers (RFC 6749 §5): reading the tokens out of the JSON
//! as the catalog entry says, and sorting failures into what the caller does
//! next. Nothing here ever formats a token or a response body.

use crate::catalog::oauth2::{OAuth2Integration, TokenResponseFields};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Duration;

/// Longest token accepted from a provider.
const MAX_TOKEN_LEN: usize = 16 * 1024;

pub use crate::connectors::oauth_session::OAuthTokens as Tokens;

/// Why a token endpoint call did not give tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `invalid_grant`: the code or refresh token is expired, revoked or
    /// already used. Retrying cannot help.
    #[error("the provider refused the grant (invalid_grant)")]
    InvalidGrant,
    /// Another OAuth error (`invalid_client`, `invalid_scope`…) or an answer
    /// that is not a token response: the integration or the app's client
    /// needs fixing; retrying soon will not help.
    #[error("the provider refused the token request ({0})")]
    Rejected(String),
    /// Network failure, time-out, 5xx or 429: worth retrying later, not
    /// before `retry_after` when the provider said.
    #[error("the provider's token endpoint is unavailable")]
    Unavailable { retry_after: Option<Duration> },
}

impl TokenError {
    /// The label of metrics and the `refresh_error` kept on a connection.
    pub fn code(&self) -> &str {
        match self {
            TokenError::InvalidGrant => "invalid_grant",
            TokenError::Rejected(code) => code,
            TokenError::Unavailable { .. } => "provider_unavailable",
        }
    }
}

/// An OAuth `error` code fit to keep and show: RFC 6749 error codes are
/// printable ASCII; anything else becomes `invalid_response`.
fn error_code(value: Option<&Value>) -> String {
    value
        .and_then(Value::as_str)
        .filter(|c| {
            !c.is_empty()
                && c.len() <= 64
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .map_or_else(|| "invalid_response".into(), str::to_string)
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn retry_after(value: Option<&http::HeaderValue>) -> Option<Duration> {
    let value = value?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&Utc) - Utc::now()).to_std().ok()
}

/// Sorts a token endpoint answer that is not a success.
pub fn failure(status: http::StatusCode, headers: &http::HeaderMap, body: &[u8]) -> TokenError {
    if status == http::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return TokenError::Unavailable {
            retry_after: retry_after(headers.get(http::header::RETRY_AFTER)),
        };
    }
    let json: Option<Value> = serde_json::from_slice(body).ok();
    match json.as_ref().and_then(|j| j.get("error")) {
        Some(Value::String(code)) if code == "invalid_grant" => TokenError::InvalidGrant,
        Some(code) => TokenError::Rejected(error_code(Some(code))),
        None => TokenError::Rejected(format!("http_{}", status.as_u16())),
    }
}

fn at_path<'a>(json: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(json, |value, key| value.get(key))
}

fn string_at(json: &Value, path: &str) -> Option<String> {
    at_path(json, path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Seconds as a JSON number or a numeric string (some providers send
/// `"3600"`).
fn seconds_at(json: &Value, path: &str) -> Option<u64> {
    match at_path(json, path)? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The tokens of a successful answer; `previous` fills what a refresh
/// answer may leave out (RFC 6749 §6: the refresh token when it is not
/// rotated, and the scope when unchanged).
pub fn parse(
    oauth: &OAuth2Integration,
    body: &[u8],
    previous: Option<&Tokens>,
) -> Result<Tokens, TokenError> {
    let malformed = || TokenError::Rejected("invalid_token_response".into());
    let json: Value = serde_json::from_slice(body).map_err(|_| malformed())?;
    let fields: &TokenResponseFields = &oauth.token_response;
    let access_token = string_at(&json, &fields.access_token).ok_or_else(malformed)?;
    let refresh_token = string_at(&json, &fields.refresh_token)
        .or_else(|| previous.and_then(|p| p.refresh_token.clone()));
    if access_token.len() > MAX_TOKEN_LEN
        || refresh_token
            .as_ref()
            .is_some_and(|t| t.len() > MAX_TOKEN_LEN)
    {
        return Err(malformed());
    }
    let now = Utc::now();
    let after = |secs: u64| now + chrono::Duration::seconds(secs.min(10 * 365 * 86_400) as i64);
    let expires_at = seconds_at(&json, &fields.expires_in)
        .or(oauth.default_expires_in)
        .map(after);
    let token_type = match string_at(&json, "token_type") {
        Some(t) if t.eq_ignore_ascii_case("bearer") => "Bearer".to_string(),
        Some(t) if t.len() <= 32 && t.bytes().all(|b| b.is_ascii_alphanumeric()) => t,
        _ => "Bearer".to_string(),
    };
    Ok(Tokens {
        access_token,
        token_type,
        refresh_token,
        scope: string_at(&json, &fields.scope).or_else(|| previous.and_then(|p| p.scope.clone())),
        expires_at,
        refresh_expires_at: seconds_at(&json, &fields.refresh_token_expires_in)
            .map(after)
            .or_else(|| previous.and_then(|p| p.refresh_expires_at)),
        obtained_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn integration(extra: Value) -> OAuth2Integration {
        let mut entry = serde_json::json!({
            "id": "acme", "name": "Acme", "category": "bank",
            "auth": {"type": "oauth2", "authorizationUrl": "https://a.example/auth",
                     "tokenUrl": "https://a.example/token", "clientAuthentication": "basic",
                     "apiBaseUrl": "https://a.example/api"},
            "capabilities": [{"resource": "accounts", "action": "read", "description": "d",
                "resultKey": "accounts", "resultDescription": "r", "arguments": {"type": "object"}}],
        });
        for (k, v) in extra.as_object().unwrap() {
            entry["auth"][k] = v.clone();
        }
        let catalog = crate::catalog::Catalog::builtin().unwrap();
        catalog
            .add_described(&entry)
            .unwrap()
            .oauth2
            .clone()
            .unwrap()
    }

    #[test]
    fn a_refresh_answer_keeps_what_it_leaves_out() {
        let oauth = integration(serde_json::json!({}));
        let first = parse(
            &oauth,
            br#"{"access_token":"a1","refresh_token":"r1","expires_in":"60","scope":"read","token_type":"bearer"}"#,
            None,
        )
        .unwrap();
        assert_eq!(first.token_type, "Bearer");
        assert!(first.expires_at.unwrap() > Utc::now() + chrono::Duration::seconds(50));
        let second = parse(
            &oauth,
            br#"{"access_token":"a2","expires_in":60}"#,
            Some(&first),
        )
        .unwrap();
        assert_eq!(second.refresh_token.as_deref(), Some("r1"));
        assert_eq!(second.scope.as_deref(), Some("read"));
        assert!(!format!("{second:?}").contains("a2"));
        assert_eq!(
            parse(&oauth, br#"{"token_type":"bearer"}"#, None).unwrap_err(),
            TokenError::Rejected("invalid_token_response".into())
        );
    }

    #[test]
    fn nested_fields_and_default_lifetimes() {
        let oauth = integration(serde_json::json!({
            "tokenResponse": {"accessToken": "data.token", "expiresIn": "data.ttl"},
            "defaultExpiresIn": 120,
        }));
        let tokens = parse(&oauth, br#"{"data":{"token":"t"}}"#, None).unwrap();
        assert_eq!(tokens.access_token, "t");
        let left = tokens.expires_at.unwrap() - Utc::now();
        assert!(left > chrono::Duration::seconds(100) && left <= chrono::Duration::seconds(120));
    }

    #[test]
    fn failures_are_sorted_by_what_helps() {
        let headers = http::HeaderMap::new();
        assert_eq!(
            failure(
                http::StatusCode::BAD_REQUEST,
                &headers,
                br#"{"error":"invalid_grant"}"#
            ),
            TokenError::InvalidGrant
        );
        assert_eq!(
            failure(
                http::StatusCode::UNAUTHORIZED,
                &headers,
                br#"{"error":"invalid_client"}"#
            ),
            TokenError::Rejected("invalid_client".into())
        );
        assert_eq!(
            failure(
                http::StatusCode::BAD_REQUEST,
                &headers,
                br#"{"error":"<script>"}"#
            ),
            TokenError::Rejected("invalid_response".into())
        );
        let mut limited = http::HeaderMap::new();
        limited.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            failure(http::StatusCode::TOO_MANY_REQUESTS, &limited, b""),
            TokenError::Unavailable {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            failure(http::StatusCode::BAD_GATEWAY, &headers, b"<html>"),
            TokenError::Unavailable { retry_after: None }
        );
    }
}
