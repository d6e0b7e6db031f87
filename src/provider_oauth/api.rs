//! Calls to an OAuth integration's own API for the proxy: which URLs a
//! client's path may reach (only below the entry's `apiBaseUrl`), which
//! headers pass each way, and the request itself with the connection's
//! access token. The client's own credentials never pass.

use super::{ProviderOAuth, Tokens, oauth_of};
use crate::catalog::Provider;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use url::Url;

/// Request headers never forwarded: linkd's own credentials (the client's
/// API key or token, in any of the places linkd reads one), cookies,
/// hop-by-hop and framing headers (RFC 9110 §7.6.1), and what would say who
/// the client is to the provider.
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "apikey",
    "x-api-key",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "forwarded",
    "x-real-ip",
    "idempotency-key",
];

/// Response headers never passed back: the provider's cookies (its session
/// is linkd's, not the client's), hop-by-hop and framing headers.
const DROPPED_RESPONSE_HEADERS: &[&str] = &[
    "set-cookie",
    "set-cookie2",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// Methods the proxy sends.
pub const METHODS: &[Method] = &[
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Whether the client's request header `name` goes to the provider.
pub fn forwards_request_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    !DROPPED_REQUEST_HEADERS.contains(&name)
        && !name.starts_with("x-forwarded-")
        && !name.starts_with("x-linkd-")
        && !name.starts_with("grpc-")
        && !name.starts_with("proxy-")
}

/// Whether the provider's response header `name` goes back to the client.
pub fn returns_response_header(name: &HeaderName) -> bool {
    !DROPPED_RESPONSE_HEADERS.contains(&name.as_str())
}

/// The URL `path` (percent-encoded, relative, as it appears in the client's
/// URL) and `query` (without `?`) name below `base`; why not otherwise.
/// Refused: dot segments, empty segments, backslashes, encoded slashes,
/// backslashes or dots (which a server may decode into a way out), control
/// characters and fragments. The joined URL is checked again after
/// parsing: same origin, below the base path.
pub fn api_url(base: &Url, path: &str, query: &str) -> Result<Url, &'static str> {
    if path.len() > 2048 || query.len() > 8192 {
        return Err("is too long");
    }
    let path = path.strip_prefix('/').unwrap_or(path);
    let lowered = path.to_ascii_lowercase();
    if path
        .chars()
        .any(|c| c.is_control() || c == '\\' || c == '#' || c == '?' || c == ' ')
        || ["%2f", "%5c", "%2e", "%00"]
            .iter()
            .any(|encoded| lowered.contains(encoded))
    {
        return Err("must be a plain relative path (no encoded slashes or dots, no backslashes)");
    }
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if *segment == "." || *segment == ".." {
            return Err("must not contain . or .. segments");
        }
        // `a//b`; a trailing slash is fine.
        if segment.is_empty() && i != last {
            return Err("must not contain empty segments");
        }
    }
    if query
        .chars()
        .any(|c| c.is_control() || c == '#' || c == ' ')
    {
        return Err("query must be percent-encoded");
    }
    let base_path = base.path().trim_end_matches('/');
    let mut url = base.clone();
    if path.is_empty() {
        url.set_path(if base_path.is_empty() { "/" } else { base_path });
    } else {
        url.set_path(&format!("{base_path}/{path}"));
    }
    url.set_query((!query.is_empty()).then_some(query));
    let below = url.path() == base_path
        || url.path() == "/" && base_path.is_empty()
        || url.path().starts_with(&format!("{base_path}/"));
    if url.origin() != base.origin() || !below || url.path().contains("/../") {
        return Err("must stay below the integration's API base URL");
    }
    Ok(url)
}

/// One request for the provider's API, as the client sent it.
#[derive(Debug)]
pub struct ApiRequest {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: axum::body::Bytes,
}

/// Why the provider's API gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the provider's API cannot be reached right now")]
    Unreachable,
    #[error("the provider's API did not answer in time")]
    TimedOut,
    #[error("the provider's API host resolves only to addresses linkd may not reach")]
    Refused,
}

impl ProviderOAuth {
    /// Sends `request` to `provider`'s API with `tokens`' access token and
    /// the entry's `apiHeaders` (`{clientId}` replaced by `client_id`). The
    /// answer is not read: its body streams from the returned response.
    pub async fn call_api(
        &self,
        provider: &Provider,
        client_id: Option<&str>,
        tokens: &Tokens,
        request: &ApiRequest,
    ) -> Result<reqwest::Response, ApiError> {
        let oauth = oauth_of(provider).map_err(|_| ApiError::Unreachable)?;
        if crate::kernel::ssrf::check_literal_host(&request.url, &self.settings.allow).is_err() {
            return Err(ApiError::Refused);
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            if forwards_request_header(name) {
                headers.append(name, value.clone());
            }
        }
        for (name, value) in &oauth.api_headers {
            let value = value.replace("{clientId}", client_id.unwrap_or_default());
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(name, value);
            }
        }
        let authorization =
            HeaderValue::from_str(&format!("{} {}", tokens.token_type, tokens.access_token))
                .map_err(|_| ApiError::Unreachable)?;
        headers.insert(http::header::AUTHORIZATION, authorization);
        let sent = self
            .http
            .request(request.method.clone(), request.url.clone())
            .headers(headers)
            .body(request.body.clone())
            .send()
            .await;
        sent.map_err(|err| {
            if err.is_timeout() {
                ApiError::TimedOut
            } else if crate::kernel::ssrf::caused_by_refusal(&err) {
                ApiError::Refused
            } else {
                ApiError::Unreachable
            }
        })
    }

    /// Whether calling `provider`'s API needs the app's client id.
    pub fn api_needs_client_id(provider: &Provider) -> bool {
        provider
            .oauth2
            .as_ref()
            .is_some_and(|o| o.api_headers.values().any(|v| v.contains("{clientId}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_cannot_leave_the_api_base() {
        let base = Url::parse("https://api.example.com/v1").unwrap();
        let ok = |path: &str, query: &str| api_url(&base, path, query).unwrap().to_string();
        assert_eq!(ok("users/me", ""), "https://api.example.com/v1/users/me");
        assert_eq!(
            ok("/users/me", "a=1&b=%20"),
            "https://api.example.com/v1/users/me?a=1&b=%20"
        );
        assert_eq!(ok("", ""), "https://api.example.com/v1");
        assert_eq!(ok("items/", ""), "https://api.example.com/v1/items/");
        assert_eq!(ok("caf%C3%A9", ""), "https://api.example.com/v1/caf%C3%A9");
        for escape in [
            "../admin",
            "users/../../admin",
            "./x",
            "%2e%2e/admin",
            "%2E%2E/admin",
            ".%2e/admin",
            "users%2f..%2f..%2fadmin",
            "..\\admin",
            "a\\b",
            "//evil.example/x",
            "a//b",
            "x#frag",
            "x?y=1",
            "a\u{0}b",
            "a%00b",
        ] {
            assert!(api_url(&base, escape, "").is_err(), "{escape}");
        }
        // Not a way to another host either: the path is never parsed as a URL.
        let joined = api_url(&base, "https:/evil.example", "").unwrap();
        assert_eq!(joined.host_str(), Some("api.example.com"));
        assert!(api_url(&base, "x", "a#b").is_err());
        let root = Url::parse("https://api.example.com/").unwrap();
        assert_eq!(
            api_url(&root, "v2/me", "").unwrap().as_str(),
            "https://api.example.com/v2/me"
        );
    }

    #[test]
    fn the_clients_credentials_and_cookies_never_pass() {
        for name in [
            "authorization",
            "apikey",
            "x-api-key",
            "cookie",
            "host",
            "x-forwarded-for",
            "grpc-timeout",
            "connection",
        ] {
            assert!(
                !forwards_request_header(&HeaderName::from_static(name)),
                "{name}"
            );
        }
        for name in [
            "accept",
            "content-type",
            "if-none-match",
            "notion-version",
            "x-request-id",
        ] {
            assert!(
                forwards_request_header(&HeaderName::from_static(name)),
                "{name}"
            );
        }
        assert!(!returns_response_header(&HeaderName::from_static(
            "set-cookie"
        )));
        assert!(returns_response_header(&HeaderName::from_static("etag")));
    }
}
