//! linkd as an OAuth 2.0 client of providers (catalog entries with
//! `auth.type` `oauth2`): each app's OAuth client at each provider (set by
//! the app, or the deployment's default), the authorization request the
//! Link page sends the end user to, and the provider's token endpoint
//! (code exchange, refresh, RFC 7009 revocation). Which flow or connection
//! the tokens belong to is for [`crate::flows`] and [`crate::connections`];
//! this concern never stores a token. Imports the kernel, the catalog,
//! auth and client apps.

pub mod api;
pub mod metrics;
pub mod store;
pub mod tokens;

use crate::auth::Caller;
use crate::catalog::oauth2::{ClientAuthentication, OAuth2Integration};
use crate::catalog::{Catalog, Provider};
use crate::kernel::crypto::{Cipher, Sealed};
use crate::kernel::error::{Error, Result};
use crate::kernel::ids::ClientAppId;
use crate::kernel::ssrf::Allowlist;
use crate::kernel::time::timestamp;
use crate::kernel::validate::Violations;
use crate::pb;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use metrics::OAuthMetrics;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
pub use tokens::{TokenError, Tokens};
use url::Url;

/// Path of the redirect URI registered at providers, under the public URL.
pub const CALLBACK_PATH: &str = "link/oauth/callback";
/// Longest client id or secret accepted.
pub const MAX_CLIENT_CREDENTIAL_LEN: usize = 512;
/// Most of a token endpoint answer that is read.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// An app's OAuth client at one provider. `Debug` hides the secret.
#[derive(Clone)]
pub struct ProviderClient {
    pub client_id: String,
    client_secret: SecretString,
    /// Scopes to request.
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// One entry of `LINKD_OAUTH_CLIENTS_FILE`: the deployment's OAuth client
/// for an integration, used by apps that set none.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DefaultClient {
    pub client_id: String,
    pub client_secret: SecretString,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

impl std::fmt::Debug for DefaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefaultClient")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Reads `LINKD_OAUTH_CLIENTS_FILE` (`{"<integration>": {"clientId",
/// "clientSecret", "scopes"?}}`) and checks every entry against the catalog.
pub fn load_default_clients(
    path: &std::path::Path,
    catalog: &Catalog,
) -> anyhow::Result<BTreeMap<String, DefaultClient>> {
    use anyhow::{Context, bail};
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading LINKD_OAUTH_CLIENTS_FILE {}", path.display()))?;
    let clients: BTreeMap<String, DefaultClient> = serde_json::from_str(&text)
        .with_context(|| format!("LINKD_OAUTH_CLIENTS_FILE {} is not valid", path.display()))?;
    for (integration, client) in &clients {
        let Some(oauth) = catalog.provider(integration).and_then(|p| p.oauth2.clone()) else {
            bail!(
                "LINKD_OAUTH_CLIENTS_FILE: {integration:?} is not an OAuth integration of the catalog"
            );
        };
        if client.client_id.is_empty() || client.client_secret.expose_secret().is_empty() {
            bail!(
                "LINKD_OAUTH_CLIENTS_FILE: {integration}: clientId and clientSecret are required"
            );
        }
        if let Some(scopes) = &client.scopes
            && let Err(problem) = oauth.check_scopes(scopes)
        {
            bail!("LINKD_OAUTH_CLIENTS_FILE: {integration}: {problem}");
        }
    }
    Ok(clients)
}

/// What the OAuth client side needs, from configuration.
#[derive(Debug, Clone)]
pub struct ProviderOAuthSettings {
    pub public_url: Url,
    /// Longest wait for one token endpoint call.
    pub timeout: Duration,
    /// Provider hosts opened past the SSRF guard (`LINKD_PROVIDER_ALLOW`).
    pub allow: Arc<Allowlist>,
    pub default_clients: BTreeMap<String, DefaultClient>,
    /// Largest answer of a provider's API the proxy passes on.
    pub max_api_response_bytes: u64,
}

/// A PKCE pair (RFC 7636): the verifier kept by linkd, the S256 challenge
/// sent with the authorization request.
pub struct Pkce {
    pub verifier: SecretString,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Self {
        let verifier = crate::kernel::ids::random_token();
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Pkce {
            verifier: verifier.into(),
            challenge,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

/// The OAuth client side of linkd.
#[derive(Debug, Clone)]
pub struct ProviderOAuth {
    db: crate::kernel::db::Db,
    cipher: Cipher,
    catalog: Arc<Catalog>,
    http: reqwest::Client,
    settings: Arc<ProviderOAuthSettings>,
    metrics: Arc<OAuthMetrics>,
}

/// The integration's OAuth settings, or the error for one that has none.
pub fn oauth_of(provider: &Provider) -> Result<&OAuth2Integration> {
    provider.oauth2.as_ref().ok_or_else(|| {
        Error::internal(anyhow::anyhow!(
            "{} is not an OAuth integration",
            provider.id
        ))
    })
}

impl ProviderOAuth {
    pub fn new(
        db: crate::kernel::db::Db,
        cipher: Cipher,
        catalog: Arc<Catalog>,
        settings: ProviderOAuthSettings,
    ) -> anyhow::Result<Self> {
        let http = crate::kernel::ssrf::guarded_client(settings.allow.clone(), settings.timeout)?
            .user_agent(concat!("linkd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ProviderOAuth {
            db,
            cipher,
            catalog,
            http,
            settings: Arc::new(settings),
            metrics: Arc::new(OAuthMetrics::default()),
        })
    }

    pub fn metrics(&self) -> &OAuthMetrics {
        &self.metrics
    }

    /// Largest answer of a provider's API the proxy passes on.
    pub fn max_api_response_bytes(&self) -> u64 {
        self.settings.max_api_response_bytes
    }

    /// Where providers send the end user back (`redirect_uri`).
    pub fn callback_url(&self) -> Url {
        self.settings
            .public_url
            .join(CALLBACK_PATH)
            .expect("the public URL is a base")
    }

    /// The OAuth client `app` uses at `provider`: its own, else the
    /// deployment's default; `None` when it has neither.
    pub async fn client(
        &self,
        app: ClientAppId,
        provider: &Provider,
    ) -> Result<Option<ProviderClient>> {
        let oauth = oauth_of(provider)?;
        let default_scopes = || oauth.scopes.default.clone();
        if let Some(row) = store::get(&self.db, app, &provider.id).await? {
            let secret = self
                .cipher
                .decrypt(
                    &row.secret_ciphertext,
                    Sealed::ProviderClientSecret {
                        app,
                        integration: &provider.id,
                    },
                )
                .map_err(Error::Internal)?;
            return Ok(Some(ProviderClient {
                client_id: row.client_id,
                client_secret: String::from_utf8(secret).map_err(Error::internal)?.into(),
                scopes: row.scopes.unwrap_or_else(default_scopes),
            }));
        }
        Ok(self
            .settings
            .default_clients
            .get(&provider.id)
            .map(|d| ProviderClient {
                client_id: d.client_id.clone(),
                client_secret: d.client_secret.clone(),
                scopes: d.scopes.clone().unwrap_or_else(default_scopes),
            }))
    }

    /// OAuth integrations `app` can connect to (it or the deployment has a
    /// client there).
    pub async fn usable_integrations(&self, app: ClientAppId) -> Result<Vec<String>> {
        let mut ids: Vec<String> = store::list(&self.db, app)
            .await?
            .into_iter()
            .map(|row| row.integration_id)
            .collect();
        ids.extend(self.settings.default_clients.keys().cloned());
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// The provider's authorization URL for one request (RFC 6749 §4.1.1).
    pub fn authorization_url(
        &self,
        provider: &Provider,
        client: &ProviderClient,
        state: &str,
        pkce: Option<&Pkce>,
    ) -> Result<Url> {
        let oauth = oauth_of(provider)?;
        let mut url = oauth.authorization_url.clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &client.client_id)
                .append_pair("redirect_uri", self.callback_url().as_str());
            if !client.scopes.is_empty() {
                query.append_pair("scope", &client.scopes.join(&oauth.scope_separator));
            }
            query.append_pair("state", state);
            if let Some(pkce) = pkce {
                query
                    .append_pair("code_challenge", &pkce.challenge)
                    .append_pair("code_challenge_method", "S256");
            }
            for (name, value) in &oauth.authorization_params {
                query.append_pair(name, value);
            }
        }
        Ok(url)
    }

    /// Exchanges an authorization code (RFC 6749 §4.1.3).
    pub async fn exchange_code(
        &self,
        provider: &Provider,
        client: &ProviderClient,
        code: &str,
        verifier: Option<&SecretString>,
    ) -> Result<Tokens, TokenError> {
        let oauth = oauth_of(provider).map_err(|_| TokenError::Rejected("not_oauth".into()))?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", self.callback_url().to_string()),
        ];
        if let Some(verifier) = verifier {
            form.push(("code_verifier", verifier.expose_secret().to_string()));
        }
        let body = self
            .token_request(
                provider,
                client,
                &oauth.token_url,
                "authorization_code",
                form,
            )
            .await;
        let tokens = body.and_then(|body| tokens::parse(oauth, &body, None));
        self.count(provider, "authorization_code", &tokens);
        tokens
    }

    /// Refreshes `previous` (RFC 6749 §6). A refresh token the provider did
    /// not rotate is kept.
    pub async fn refresh(
        &self,
        provider: &Provider,
        client: &ProviderClient,
        previous: &Tokens,
    ) -> Result<Tokens, TokenError> {
        let oauth = oauth_of(provider).map_err(|_| TokenError::Rejected("not_oauth".into()))?;
        let Some(refresh_token) = previous.refresh_token.as_deref() else {
            return Err(TokenError::InvalidGrant);
        };
        let form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", refresh_token.to_string()),
        ];
        let body = self
            .token_request(provider, client, &oauth.token_url, "refresh_token", form)
            .await;
        let tokens = body.and_then(|body| tokens::parse(oauth, &body, Some(previous)));
        self.count(provider, "refresh_token", &tokens);
        tokens
    }

    /// Revokes the grant at the provider (RFC 7009), when it has a
    /// revocation endpoint: the refresh token (which ends the grant at most
    /// providers), else the access token.
    pub async fn revoke(
        &self,
        provider: &Provider,
        client: &ProviderClient,
        tokens: &Tokens,
    ) -> Result<(), TokenError> {
        let Some(url) = provider
            .oauth2
            .as_ref()
            .and_then(|o| o.revocation_url.as_ref())
        else {
            return Ok(());
        };
        let (token, hint) = match &tokens.refresh_token {
            Some(refresh) => (refresh.clone(), "refresh_token"),
            None => (tokens.access_token.clone(), "access_token"),
        };
        let form = vec![("token", token), ("token_type_hint", hint.to_string())];
        let outcome = self
            .token_request(provider, client, url, "revoke", form)
            .await
            .map(drop);
        self.metrics.token_request(
            &provider.id,
            "revoke",
            outcome.as_ref().err().map_or("ok", TokenError::code),
        );
        outcome
    }

    fn count(
        &self,
        provider: &Provider,
        grant: &'static str,
        outcome: &Result<Tokens, TokenError>,
    ) {
        self.metrics.token_request(
            &provider.id,
            grant,
            outcome.as_ref().err().map_or("ok", TokenError::code),
        );
    }

    /// POSTs `form` with the client's authentication; the body of a 2xx.
    async fn token_request(
        &self,
        provider: &Provider,
        client: &ProviderClient,
        url: &Url,
        grant: &'static str,
        mut form: Vec<(&str, String)>,
    ) -> Result<Vec<u8>, TokenError> {
        let unavailable = TokenError::Unavailable { retry_after: None };
        let oauth = oauth_of(provider).map_err(|_| unavailable.clone())?;
        // A literal IP is never resolved, so the guard's resolver does not
        // see it.
        if let Err(refused) = crate::kernel::ssrf::check_literal_host(url, &self.settings.allow) {
            tracing::warn!(integration = %provider.id, grant, error = %refused, "provider token endpoint refused by the SSRF guard");
            return Err(unavailable);
        }
        let mut request = self
            .http
            .post(url.clone())
            .header(http::header::ACCEPT, "application/json");
        match oauth.client_authentication {
            ClientAuthentication::Basic => {
                // RFC 6749 §2.3.1: each part form-encoded before base64.
                let encode = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let pair = format!(
                    "{}:{}",
                    encode(&client.client_id),
                    encode(client.client_secret.expose_secret())
                );
                request = request.header(
                    http::header::AUTHORIZATION,
                    format!("Basic {}", STANDARD.encode(pair)),
                );
            }
            ClientAuthentication::Body => {
                form.push(("client_id", client.client_id.clone()));
                form.push((
                    "client_secret",
                    client.client_secret.expose_secret().to_string(),
                ));
            }
        }
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let response = request
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await;
        let mut response = match response {
            Ok(response) => response,
            Err(err) => {
                // The error names the host and the cause, never the body.
                tracing::warn!(integration = %provider.id, grant, error = %err.without_url(), "provider token endpoint unreachable");
                return Err(unavailable);
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_TOKEN_RESPONSE_BYTES => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => return Err(TokenError::Rejected("invalid_token_response".into())),
                Ok(None) => break,
                Err(_) => return Err(unavailable),
            }
        }
        if status.is_success() {
            Ok(body)
        } else {
            let failure = tokens::failure(status, &headers, &body);
            tracing::info!(integration = %provider.id, grant, status = status.as_u16(), error_code = failure.code(), "provider refused a token request");
            Err(failure)
        }
    }
}

// ---- the apps' OAuth clients (ClientAppService) -----------------------------

fn client_to_proto(
    integration_id: String,
    client_id: String,
    scopes: Vec<String>,
    updated_at: Option<chrono::DateTime<chrono::Utc>>,
) -> pb::ProviderOAuthClient {
    pb::ProviderOAuthClient {
        deployment_default: updated_at.is_none(),
        integration_id,
        client_id,
        scopes,
        updated_at: updated_at.map(timestamp),
    }
}

impl ProviderOAuth {
    /// The caller's app `id`, or `NOT_FOUND`.
    async fn callers_app(&self, caller: &Caller, id: &str) -> Result<ClientAppId> {
        let id = ClientAppId::from_request("clientAppId", id)?;
        crate::client_apps::store::get_client_app(&self.db, caller.tenant, id).await?;
        Ok(id)
    }

    fn oauth_integration(&self, v: &mut Violations, id: &str) -> Option<Arc<Provider>> {
        let provider = self.catalog.provider(id).filter(|p| p.oauth2.is_some());
        if provider.is_none() {
            v.add(
                "integrationId",
                "is not an OAuth integration of the catalog",
            );
        }
        provider
    }

    pub async fn set_client(
        &self,
        caller: &Caller,
        req: pb::SetProviderOAuthClientRequest,
    ) -> Result<pb::SetProviderOAuthClientResponse> {
        let app = self.callers_app(caller, &req.client_app_id).await?;
        let mut v = Violations::new();
        let provider = self.oauth_integration(&mut v, &req.integration_id);
        for (field, value) in [
            ("clientId", &req.client_id),
            ("clientSecret", &req.client_secret),
        ] {
            if value.is_empty() {
                v.add(field, "is required");
            } else if value.chars().count() > MAX_CLIENT_CREDENTIAL_LEN
                || value.chars().any(char::is_control)
            {
                v.add(
                    field,
                    format!("must be at most {MAX_CLIENT_CREDENTIAL_LEN} printable characters"),
                );
            }
        }
        if let Some(oauth) = provider.as_ref().and_then(|p| p.oauth2.as_ref()) {
            for (i, scope) in req.scopes.iter().enumerate() {
                if let Err(problem) = oauth.check_scopes(std::slice::from_ref(scope)) {
                    v.add(format!("scopes[{i}]"), problem);
                }
            }
        }
        v.finish()?;
        let sealed = self.cipher.encrypt(
            req.client_secret.as_bytes(),
            Sealed::ProviderClientSecret {
                app,
                integration: &req.integration_id,
            },
        );
        let scopes = (!req.scopes.is_empty()).then_some(req.scopes.as_slice());
        let row = store::upsert(
            &self.db,
            &store::NewClient {
                app,
                integration_id: &req.integration_id,
                client_id: &req.client_id,
                secret_ciphertext: &sealed,
                scopes,
            },
        )
        .await?;
        let default = || {
            provider
                .as_ref()
                .and_then(|p| p.oauth2.as_ref())
                .map(|o| o.scopes.default.clone())
                .unwrap_or_default()
        };
        Ok(pb::SetProviderOAuthClientResponse {
            oauth_client: Some(client_to_proto(
                row.integration_id,
                row.client_id,
                row.scopes.unwrap_or_else(default),
                Some(row.updated_at),
            )),
        })
    }

    pub async fn list_clients(
        &self,
        caller: &Caller,
        req: pb::ListProviderOAuthClientsRequest,
    ) -> Result<pb::ListProviderOAuthClientsResponse> {
        let app = self.callers_app(caller, &req.client_app_id).await?;
        let default_scopes = |id: &str| {
            self.catalog
                .provider(id)
                .and_then(|p| p.oauth2.as_ref().map(|o| o.scopes.default.clone()))
                .unwrap_or_default()
        };
        let mut clients: BTreeMap<String, pb::ProviderOAuthClient> = self
            .settings
            .default_clients
            .iter()
            .map(|(id, d)| {
                let scopes = d.scopes.clone().unwrap_or_else(|| default_scopes(id));
                (
                    id.clone(),
                    client_to_proto(id.clone(), d.client_id.clone(), scopes, None),
                )
            })
            .collect();
        for row in store::list(&self.db, app).await? {
            let scopes = row
                .scopes
                .unwrap_or_else(|| default_scopes(&row.integration_id));
            clients.insert(
                row.integration_id.clone(),
                client_to_proto(
                    row.integration_id,
                    row.client_id,
                    scopes,
                    Some(row.updated_at),
                ),
            );
        }
        Ok(pb::ListProviderOAuthClientsResponse {
            oauth_clients: clients.into_values().collect(),
        })
    }

    pub async fn delete_client(
        &self,
        caller: &Caller,
        req: pb::DeleteProviderOAuthClientRequest,
    ) -> Result<pb::DeleteProviderOAuthClientResponse> {
        let app = self.callers_app(caller, &req.client_app_id).await?;
        if !store::delete(&self.db, app, &req.integration_id).await? {
            return Err(Error::NotFound("OAuth client"));
        }
        Ok(pb::DeleteProviderOAuthClientResponse {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_s256_of_the_verifier() {
        let pkce = Pkce::new();
        let verifier = pkce.verifier.expose_secret();
        assert_eq!(verifier.len(), 43, "32 random bytes, base64url");
        assert_eq!(
            pkce.challenge,
            URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
        );
        assert_ne!(Pkce::new().challenge, pkce.challenge);
    }
}
