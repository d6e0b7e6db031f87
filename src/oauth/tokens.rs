//! The token endpoint (RFC 6749 §4.1.3 code exchange, §6 refresh), token
//! revocation (RFC 7009) and introspection (RFC 7662).
//!
//! A redeemed code makes a grant; the grant's tokens are an access token
//! (`lat_…`) and, for clients that have them, a single-use refresh token
//! (`lrt_…`). A refresh retires the token presented and issues a new pair;
//! a retired refresh token presented again means two parties hold it, so
//! the grant is revoked (RFC 9700 §4.14.2). Every decision two requests
//! could race on is one conditional statement or a row lock.

use super::clients::AuthenticatedClient;
use super::rules::{
    self, ACCESS_TOKEN_PREFIX, REFRESH_TOKEN_PREFIX, Redemption, is_valid_pkce_value,
};
use super::store::{self, NewTokens};
use super::{ClientAuth, OAuth, given};
use crate::kernel::error::{Error, Result};
use crate::kernel::ids::{ConnectionId, random_token, token_hash};
use crate::kernel::time::timestamp;
use crate::pb;
use secrecy::SecretString;
use uuid::Uuid;

fn invalid_grant(why: &str) -> Error {
    Error::oauth("invalid_grant", why)
}

impl OAuth {
    /// The token endpoint: authenticates the client, then exchanges a code
    /// or a refresh token by `grant_type`.
    pub async fn exchange_code(
        &self,
        req: pb::ExchangeCodeRequest,
        basic: Option<(String, SecretString)>,
    ) -> Result<pb::ExchangeCodeResponse> {
        let client = self
            .authenticate_client(ClientAuth {
                basic,
                client_id: req.client_id.clone(),
                client_secret: req.client_secret.clone().map(SecretString::from),
            })
            .await?;
        match req.grant_type.as_str() {
            "" => Err(Error::oauth("invalid_request", "grant_type is required.")),
            "authorization_code" => self.redeem_code(&client, &req).await,
            "refresh_token" => self.refresh(&client, &req).await,
            _ => Err(Error::oauth(
                "unsupported_grant_type",
                format!(
                    "grant_type must be one of: {}.",
                    rules::GRANT_TYPES.join(", ")
                ),
            )),
        }
    }

    /// Redeems an authorization code (RFC 6749 §4.1.3). The code is locked
    /// while checked, so of concurrent redemptions exactly one succeeds; a
    /// redemption of a used code fails and revokes the grant the first one
    /// made.
    async fn redeem_code(
        &self,
        client: &AuthenticatedClient,
        req: &pb::ExchangeCodeRequest,
    ) -> Result<pb::ExchangeCodeResponse> {
        if req.code.is_empty() {
            return Err(Error::oauth("invalid_request", "code is required."));
        }
        if let Some(verifier) = &req.code_verifier
            && !is_valid_pkce_value(verifier)
        {
            return Err(Error::oauth(
                "invalid_request",
                "code_verifier must be 43 to 128 unreserved characters.",
            ));
        }
        let mut tx = self.db.begin().await?;
        let code = store::lock_code(&mut tx, &token_hash(&req.code))
            .await?
            .ok_or_else(|| invalid_grant("The code is invalid."))?;
        if code.client_app_id != client.id {
            return Err(invalid_grant("The code was issued to another client."));
        }
        if code.used {
            store::revoke_grant_of_code(&mut tx, code.id).await?;
            tx.commit().await?;
            self.replayed("authorization_code", client.id);
            return Err(invalid_grant(
                "The code was already used; tokens issued for it are revoked.",
            ));
        }
        if code.expired {
            return Err(invalid_grant("The code has expired."));
        }
        if client.registration.is_public() && code.code_challenge.is_none() {
            return Err(invalid_grant(
                "A public client's code must have been requested with PKCE.",
            ));
        }
        rules::check_redemption(
            &Redemption {
                redirect_uri: code.redirect_uri.as_deref(),
                effective_redirect_uri: &code.effective_redirect_uri,
                code_challenge: code.code_challenge.as_deref(),
            },
            given(&req.redirect_uri),
            req.code_verifier.as_deref(),
        )
        .map_err(invalid_grant)?;
        let live = crate::connections::store::exists(&mut *tx, code.connection_id).await?;
        if !live {
            return Err(invalid_grant("The connection no longer exists."));
        }
        let refresh_ttl = client
            .registration
            .oauth_refresh_tokens
            .then_some(self.settings.refresh_ttl);
        let grant_id = store::insert_grant(&mut tx, &code, refresh_ttl).await?;
        let issued = self
            .issue_tokens(&mut tx, grant_id, &code.scope, code.connection_id, client)
            .await?;
        store::mark_code_used(&mut tx, code.id).await?;
        tx.commit().await?;
        Ok(issued)
    }

    /// Exchanges a refresh token (RFC 6749 §6) for a new access token and
    /// a new refresh token. The token is retired by one conditional update,
    /// so of concurrent uses one wins; a use of a retired token revokes the
    /// grant.
    async fn refresh(
        &self,
        client: &AuthenticatedClient,
        req: &pb::ExchangeCodeRequest,
    ) -> Result<pb::ExchangeCodeResponse> {
        let token = given(&req.refresh_token)
            .ok_or_else(|| Error::oauth("invalid_request", "refresh_token is required."))?;
        if !client.registration.oauth_refresh_tokens {
            return Err(Error::oauth(
                "unauthorized_client",
                "This client does not use refresh tokens.",
            ));
        }
        let hash = token_hash(token);
        let mut tx = self.db.begin().await?;
        let Some(exchanged) = store::use_refresh_token(&mut tx, &hash, client.id).await? else {
            let replayed = store::find_token(&mut *tx, &hash)
                .await?
                .filter(|t| t.kind == "refresh" && t.client_app_id == client.id && t.used);
            if let Some(replayed) = replayed {
                store::revoke_grant(&mut *tx, replayed.grant_id).await?;
                tx.commit().await?;
                self.replayed("refresh_token", client.id);
                return Err(invalid_grant(
                    "The refresh token was already used; every token of its grant is revoked.",
                ));
            }
            return Err(invalid_grant(
                "The refresh token is invalid, expired or revoked.",
            ));
        };
        // A refused scope leaves the token unused: the transaction that
        // retired it rolls back.
        let scope = rules::narrow_scope(&exchanged.grant_scope, given(&req.scope))
            .map_err(|why| Error::oauth("invalid_scope", why))?;
        let issued = self
            .issue_tokens(
                &mut tx,
                exchanged.grant_id,
                &scope,
                exchanged.connection_id,
                client,
            )
            .await?;
        tx.commit().await?;
        Ok(issued)
    }

    /// Stores a fresh access token (and refresh token, when the client has
    /// them) for a grant and returns the only copies.
    async fn issue_tokens(
        &self,
        tx: &mut sqlx::PgConnection,
        grant_id: Uuid,
        scope: &str,
        connection_id: ConnectionId,
        client: &AuthenticatedClient,
    ) -> Result<pb::ExchangeCodeResponse> {
        let access_token = format!("{ACCESS_TOKEN_PREFIX}{}", random_token());
        let refresh_token = client
            .registration
            .oauth_refresh_tokens
            .then(|| format!("{REFRESH_TOKEN_PREFIX}{}", random_token()));
        let ttl = self.settings.token_ttl;
        store::insert_tokens(
            tx,
            &NewTokens {
                grant_id,
                scope,
                access_hash: &token_hash(&access_token),
                access_ttl: ttl,
                refresh_hash: refresh_token.as_deref().map(token_hash).as_deref(),
            },
        )
        .await?;
        Ok(pb::ExchangeCodeResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: ttl.as_secs() as i64,
            connection_id: connection_id.to_string(),
            scope: scope.to_string(),
            refresh_token: refresh_token.unwrap_or_default(),
        })
    }

    /// The authenticated client of a revocation or introspection request
    /// and the stored token it names, whoever's and whatever its state.
    async fn token_named(
        &self,
        client_id: String,
        client_secret: Option<String>,
        basic: Option<(String, SecretString)>,
        token: &str,
    ) -> Result<(AuthenticatedClient, Option<store::TokenRow>)> {
        let client = self
            .authenticate_client(ClientAuth {
                basic,
                client_id,
                client_secret: client_secret.map(SecretString::from),
            })
            .await?;
        if token.is_empty() {
            return Err(Error::oauth("invalid_request", "token is required."));
        }
        let found = store::find_token(&self.db, &token_hash(token)).await?;
        Ok((client, found))
    }

    /// Revokes a token (RFC 7009 §2): a refresh token ends its grant, an
    /// access token itself. Unknown or dead tokens are a success.
    pub async fn revoke_token(
        &self,
        req: pb::RevokeTokenRequest,
        basic: Option<(String, SecretString)>,
    ) -> Result<pb::RevokeTokenResponse> {
        let (client, found) = self
            .token_named(req.client_id, req.client_secret, basic, &req.token)
            .await?;
        if let Some(token) = found {
            if token.client_app_id != client.id {
                return Err(Error::oauth(
                    "unauthorized_client",
                    "The token was issued to another client.",
                ));
            }
            if token.kind == "refresh" {
                store::revoke_grant(&self.db, token.grant_id).await?;
            } else {
                store::revoke_token(&self.db, token.id).await?;
            }
        }
        Ok(pb::RevokeTokenResponse {})
    }

    /// What a token allows now (RFC 7662 §2.2); anything not live, or not
    /// the asking client's, is only `active: false`.
    pub async fn introspect_token(
        &self,
        req: pb::IntrospectTokenRequest,
        basic: Option<(String, SecretString)>,
    ) -> Result<pb::IntrospectTokenResponse> {
        let (client, found) = self
            .token_named(req.client_id, req.client_secret, basic, &req.token)
            .await?;
        let token = found.filter(|t| t.active && t.client_app_id == client.id);
        let Some(token) = token else {
            return Ok(pb::IntrospectTokenResponse::default());
        };
        Ok(pb::IntrospectTokenResponse {
            active: true,
            scope: token.scope,
            client_id: token.client_app_id.to_string(),
            token_type: if token.kind == "access" {
                "Bearer"
            } else {
                "refresh_token"
            }
            .into(),
            expire_time: Some(timestamp(token.expires_at)),
            issue_time: Some(timestamp(token.created_at)),
            connection_id: token.connection_id.to_string(),
            issuer: self.issuer(),
        })
    }
}
