//! Client authentication at the token, revocation and introspection
//! endpoints (RFC 6749 §2.3.1, RFC 8252 §8.4): a confidential client by its
//! secret, in HTTP Basic or the body (one of them); a public client by its
//! `client_id` alone, never with a secret.

use super::OAuth;
use crate::client_apps::store::{self as tenancy, OAuthClientRow};
use crate::kernel::error::{Error, Result};
use crate::kernel::ids::{ClientAppId, token_hash};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// How a request to the token endpoints identifies its client.
#[derive(Debug, Default)]
pub struct ClientAuth {
    /// HTTP Basic credentials (REST only): id and secret, form-decoded.
    pub basic: Option<(String, SecretString)>,
    /// `client_id` of the body or message (empty: not sent).
    pub client_id: String,
    /// `client_secret` of the body or message.
    pub client_secret: Option<SecretString>,
}

/// A client that proved who it is.
#[derive(Debug)]
pub(super) struct AuthenticatedClient {
    pub id: ClientAppId,
    pub registration: OAuthClientRow,
}

impl OAuth {
    /// Authenticates the client of a token-endpoint request and charges its
    /// rate limit. Every failure is `invalid_client` (`401`).
    pub(super) async fn authenticate_client(
        &self,
        auth: ClientAuth,
    ) -> Result<AuthenticatedClient> {
        let (client_id, secret) = match auth.basic {
            Some(_) if auth.client_secret.is_some() => {
                return Err(Error::oauth(
                    "invalid_request",
                    "Use one client authentication method, not both.",
                ));
            }
            Some((id, secret)) => {
                if !auth.client_id.is_empty() && auth.client_id != id {
                    return Err(Error::oauth(
                        "invalid_request",
                        "client_id differs from the authenticated client.",
                    ));
                }
                (id, Some(secret))
            }
            None => (auth.client_id, auth.client_secret),
        };
        // An empty secret is no secret (RFC 6749 §2.3.1 lets a client omit
        // it then): libraries send `client_secret=` or `id:` for public
        // clients.
        let secret = secret.filter(|s| !s.expose_secret().is_empty());
        if client_id.is_empty() {
            return Err(Error::oauth(
                "invalid_client",
                "Client authentication is required.",
            ));
        }
        let failed = || Error::oauth("invalid_client", "Client authentication failed.");
        let id = ClientAppId::parse(&client_id).ok_or_else(failed)?;
        let registration = tenancy::oauth_client(&self.db, id)
            .await?
            .ok_or_else(failed)?;
        let public = registration.is_public();
        match (public, secret) {
            (true, None) => {}
            (true, Some(_)) => {
                return Err(Error::oauth(
                    "invalid_client",
                    "This client is public (token_endpoint_auth_method none): send client_id without a secret.",
                ));
            }
            (false, None) => {
                return Err(Error::oauth(
                    "invalid_client",
                    "Client authentication is required.",
                ));
            }
            (false, Some(secret)) => {
                let presented = token_hash(secret.expose_secret());
                let stored = registration.client_secret_hash.as_deref().unwrap_or(&[]);
                let matches = stored.len() == presented.len()
                    && bool::from(presented.as_slice().ct_eq(stored));
                if !matches {
                    return Err(failed());
                }
            }
        }
        self.auth.limits().charge_client_app(id).await?;
        Ok(AuthenticatedClient { id, registration })
    }

    /// Whether a browser page at `origin` may read the answers of the token
    /// endpoints (CORS): registered as a web origin by `client_id`'s app,
    /// or, when no client is named (a preflight, the metadata), by any app.
    pub async fn allows_origin(&self, client_id: Option<&str>, origin: &str) -> Result<bool> {
        match client_id {
            Some(client_id) => {
                let Some(id) = ClientAppId::parse(client_id) else {
                    return Ok(false);
                };
                Ok(tenancy::oauth_client(&self.db, id)
                    .await?
                    .is_some_and(|c| c.oauth_web_origins.iter().any(|o| o == origin)))
            }
            None => tenancy::web_origin_registered(&self.db, origin).await,
        }
    }
}
