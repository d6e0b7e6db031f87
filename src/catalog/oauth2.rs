//! `auth: {"type": "oauth2", …}` in a catalog entry: an integration whose
//! end users connect through the provider's own OAuth 2.0 consent page
//! (authorization code grant, RFC 6749 §4.1) instead of a credentials form.
//! Parsed and checked at start-up like the rest of the entry.

use anyhow::{anyhow, bail};
use std::collections::BTreeMap;
use url::Url;

/// Parameters linkd itself sets on the authorization request; an entry's
/// `authorizationParams` may not override them.
const RESERVED_AUTHORIZATION_PARAMS: [&str; 7] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "scope",
    "code_challenge",
    "code_challenge_method",
];

/// How linkd authenticates to the provider's token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthentication {
    /// HTTP Basic with the client id and secret (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Body,
}

/// Where the token endpoint's JSON answer keeps each value: a field name,
/// or a dotted path for providers that nest it (`data.access_token`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenResponseFields {
    #[serde(default = "default_access_token")]
    pub access_token: String,
    #[serde(default = "default_refresh_token")]
    pub refresh_token: String,
    /// Seconds until the access token expires.
    #[serde(default = "default_expires_in")]
    pub expires_in: String,
    /// Granted scopes, separated like requested ones.
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Seconds until the refresh token expires, when the provider says.
    #[serde(default = "default_refresh_expires_in")]
    pub refresh_token_expires_in: String,
}

fn default_access_token() -> String {
    "access_token".into()
}
fn default_refresh_token() -> String {
    "refresh_token".into()
}
fn default_expires_in() -> String {
    "expires_in".into()
}
fn default_scope() -> String {
    "scope".into()
}
fn default_refresh_expires_in() -> String {
    "refresh_token_expires_in".into()
}

impl Default for TokenResponseFields {
    fn default() -> Self {
        TokenResponseFields {
            access_token: default_access_token(),
            refresh_token: default_refresh_token(),
            expires_in: default_expires_in(),
            scope: default_scope(),
            refresh_token_expires_in: default_refresh_expires_in(),
        }
    }
}

/// The scopes an app may request, and those requested when its OAuth
/// client does not choose.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scopes {
    #[serde(default)]
    pub default: Vec<String>,
    #[serde(default)]
    pub allowed: Vec<String>,
}

/// An OAuth 2.0 integration, checked.
#[derive(Debug, Clone)]
pub struct OAuth2Integration {
    pub authorization_url: Url,
    pub token_url: Url,
    /// RFC 7009 revocation endpoint, when the provider has one.
    pub revocation_url: Option<Url>,
    pub scopes: Scopes,
    /// Between scopes in the `scope` parameter (a space unless the provider
    /// wants another, e.g. `,`).
    pub scope_separator: String,
    /// Send a PKCE S256 challenge (RFC 7636) with the authorization request.
    pub pkce: bool,
    pub client_authentication: ClientAuthentication,
    /// Extra authorization request parameters (`access_type=offline`…).
    pub authorization_params: BTreeMap<String, String>,
    /// Base of the provider's API: the proxy and connectors reach only URLs
    /// below it.
    pub api_base_url: Url,
    /// Headers sent with every proxied call; `{clientId}` in a value is the
    /// app's OAuth client id (some APIs want it next to the token).
    pub api_headers: BTreeMap<String, String>,
    pub token_response: TokenResponseFields,
    /// Lifetime assumed for an access token when the provider does not
    /// give one; `None` means it does not expire until the API refuses it.
    pub default_expires_in: Option<u64>,
}

/// The file format of `auth`.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum AuthFile {
    #[serde(rename = "oauth2")]
    OAuth2(Box<OAuth2File>),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct OAuth2File {
    authorization_url: String,
    token_url: String,
    #[serde(default)]
    revocation_url: Option<String>,
    #[serde(default)]
    scopes: Scopes,
    #[serde(default = "space")]
    scope_separator: String,
    #[serde(default)]
    pkce: bool,
    client_authentication: ClientAuthentication,
    #[serde(default)]
    authorization_params: BTreeMap<String, String>,
    api_base_url: String,
    #[serde(default)]
    api_headers: BTreeMap<String, String>,
    #[serde(default)]
    token_response: TokenResponseFields,
    #[serde(default)]
    default_expires_in: Option<u64>,
}

fn space() -> String {
    " ".into()
}

/// Hosts for which plain `http` is accepted (a provider run by the tests or
/// by a developer on this machine).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// An endpoint URL: absolute, `https` (or `http` on loopback), no
/// fragment, no credentials.
fn endpoint(field: &str, value: &str) -> anyhow::Result<Url> {
    let url = Url::parse(value).map_err(|e| anyhow!("auth.{field}: not a URL ({e})"))?;
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && is_loopback(&url));
    if !scheme_ok || url.host().is_none() {
        bail!("auth.{field}: must be an https URL (http only on loopback)");
    }
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        bail!("auth.{field}: must not have a fragment or user information");
    }
    Ok(url)
}

fn valid_scope(scope: &str) -> bool {
    // RFC 6749 §3.3 scope-token: printable ASCII except space, `"` and `\`.
    !scope.is_empty()
        && scope.len() <= 200
        && scope
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

impl OAuth2File {
    pub(super) fn check(self) -> anyhow::Result<OAuth2Integration> {
        let authorization_url = endpoint("authorizationUrl", &self.authorization_url)?;
        let token_url = endpoint("tokenUrl", &self.token_url)?;
        let revocation_url = self
            .revocation_url
            .as_deref()
            .map(|u| endpoint("revocationUrl", u))
            .transpose()?;
        let mut api_base_url = endpoint("apiBaseUrl", &self.api_base_url)?;
        if api_base_url.query().is_some() {
            bail!("auth.apiBaseUrl: must not have a query");
        }
        // One spelling: no trailing slash, so `{base}/{path}` joins alike.
        let trimmed = api_base_url.path().trim_end_matches('/').to_string();
        api_base_url.set_path(&trimmed);
        for scope in self.scopes.default.iter().chain(&self.scopes.allowed) {
            if !valid_scope(scope) {
                bail!("auth.scopes: {scope:?} is not a valid scope");
            }
        }
        if let Some(missing) = self
            .scopes
            .default
            .iter()
            .find(|s| !self.scopes.allowed.contains(s))
        {
            bail!("auth.scopes: default scope {missing:?} is not in allowed");
        }
        if self.scope_separator.is_empty() || self.scope_separator.len() > 3 {
            bail!("auth.scopeSeparator: must be 1 to 3 characters");
        }
        if let Some(reserved) = self
            .authorization_params
            .keys()
            .find(|k| RESERVED_AUTHORIZATION_PARAMS.contains(&k.as_str()))
        {
            bail!("auth.authorizationParams: {reserved:?} is set by linkd");
        }
        for name in self.api_headers.keys() {
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || ["authorization", "host", "cookie", "content-length"].contains(&lower.as_str())
            {
                bail!("auth.apiHeaders: {name:?} cannot be set");
            }
        }
        let fields = &self.token_response;
        for path in [
            &fields.access_token,
            &fields.refresh_token,
            &fields.expires_in,
            &fields.scope,
            &fields.refresh_token_expires_in,
        ] {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                bail!("auth.tokenResponse: {path:?} is not a field path");
            }
        }
        if self.default_expires_in == Some(0) {
            bail!("auth.defaultExpiresIn: must be positive");
        }
        Ok(OAuth2Integration {
            authorization_url,
            token_url,
            revocation_url,
            scopes: self.scopes,
            scope_separator: self.scope_separator,
            pkce: self.pkce,
            client_authentication: self.client_authentication,
            authorization_params: self.authorization_params,
            api_base_url,
            api_headers: self.api_headers,
            token_response: self.token_response,
            default_expires_in: self.default_expires_in,
        })
    }
}

impl OAuth2Integration {
    /// Why `scopes` cannot be what an app requests, if it cannot.
    pub fn check_scopes(&self, scopes: &[String]) -> Result<(), String> {
        match scopes.iter().find(|s| !self.scopes.allowed.contains(s)) {
            Some(scope) => Err(format!(
                "{scope:?} is not a scope of this integration (allowed: {})",
                self.scopes.allowed.join(", ")
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(overrides: serde_json::Value) -> anyhow::Result<OAuth2Integration> {
        let mut value = serde_json::json!({
            "type": "oauth2",
            "authorizationUrl": "https://provider.example/authorize",
            "tokenUrl": "https://provider.example/token",
            "clientAuthentication": "basic",
            "apiBaseUrl": "https://api.provider.example/v1/",
            "scopes": {"default": ["read"], "allowed": ["read", "write"]},
        });
        for (k, v) in overrides.as_object().unwrap() {
            value[k] = v.clone();
        }
        let AuthFile::OAuth2(file) = serde_json::from_value(value)?;
        file.check()
    }

    #[test]
    fn a_good_entry_is_normalised() {
        let oauth = file(serde_json::json!({})).unwrap();
        assert_eq!(
            oauth.api_base_url.as_str(),
            "https://api.provider.example/v1"
        );
        assert_eq!(oauth.scope_separator, " ");
        assert_eq!(oauth.token_response.access_token, "access_token");
        assert!(oauth.check_scopes(&["write".into()]).is_ok());
        assert!(
            oauth
                .check_scopes(&["admin".into()])
                .unwrap_err()
                .contains("admin")
        );
    }

    #[test]
    fn problems_name_the_field() {
        for (overrides, expected) in [
            (
                serde_json::json!({"tokenUrl": "http://provider.example/token"}),
                "auth.tokenUrl",
            ),
            (
                serde_json::json!({"apiBaseUrl": "https://api.example/?x=1"}),
                "auth.apiBaseUrl",
            ),
            (
                serde_json::json!({"scopes": {"default": ["x"], "allowed": ["read"]}}),
                "default scope \"x\"",
            ),
            (
                serde_json::json!({"authorizationParams": {"redirect_uri": "https://evil"}}),
                "redirect_uri",
            ),
            (
                serde_json::json!({"apiHeaders": {"Authorization": "x"}}),
                "auth.apiHeaders",
            ),
            (
                serde_json::json!({"tokenResponse": {"accessToken": "data..token"}}),
                "auth.tokenResponse",
            ),
        ] {
            let err = format!("{:#}", file(overrides).unwrap_err());
            assert!(err.contains(expected), "{expected}: {err}");
        }
        assert!(
            file(serde_json::json!({"tokenUrl": "http://127.0.0.1:9/token"})).is_ok(),
            "http is fine on loopback"
        );
    }
}
