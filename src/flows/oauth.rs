//! The login step of an OAuth integration: instead of a credentials form,
//! the end user goes to the provider's consent page and comes back to
//! linkd's callback, which exchanges the code for tokens. The tokens then
//! take the place of a logged-in provider session, so everything after the
//! login (consent, the connection, operations, events) is the same as for a
//! credentials login.
//!
//! Each authorization request has its own `state` (256 random bits, stored
//! hashed, single-use: only the callback whose conditional `UPDATE` marks it
//! used goes on) and, when the provider supports it, a PKCE verifier that
//! never leaves linkd. The code exchange is an attempt like a login (see
//! `attempt.rs`), so it happens at most once per flow at a time and only
//! while the flow is still at its login.

use super::attempt::detached;
use super::{Finish, FlowRow, FlowStep, Flows, store, wrong_step};
use crate::catalog::Provider;
use crate::connectors::{LoginOutcome, ProviderSession};
use crate::kernel::crypto::Sealed;
use crate::kernel::error::{Error, Precondition, Reason, Result};
use crate::kernel::ids::{ClientAppId, random_token, token_hash};
use crate::pb;
use crate::provider_oauth::{Pkce, ProviderClient, TokenError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

crate::kernel::names::stored_names! {
    /// Where the provider's page opens (`flow_authorizations.display`).
    pub enum AuthorizationDisplay: pb::AuthorizationDisplay {
        Page = "page",
        Popup = "popup",
    }
}

/// The error code of a flow the provider refused (its `error` other than
/// `access_denied`, or a refused code exchange).
pub const AUTHORIZATION_FAILED: &str = "authorization_failed";
/// What the callback shows for a `state` it does not know or that was used.
pub const INVALID_STATE: &str = "invalid_state";
/// Longest `state` or `code` the callback reads.
const MAX_CALLBACK_PARAM: usize = 4096;

/// The query of a provider's redirect to the callback (RFC 6749 §4.1.2).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Callback {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
}

/// Where the callback sends the browser next.
#[derive(Debug, PartialEq, Eq)]
pub enum Landing {
    /// Back to the Link page, which shows where the flow is now.
    LinkPage(AuthorizationDisplay),
    /// Nothing was done: the state is unknown or already used.
    Refused(&'static str),
}

impl Flows {
    /// The app whose OAuth client a flow uses: a session's own app, or for
    /// a link the tenant's first app (the one `InitLinkSession` defaults to).
    async fn oauth_app(&self, flow: &FlowRow) -> Result<ClientAppId> {
        if let Some(id) = flow.client_app_id {
            return Ok(id);
        }
        crate::client_apps::store::list_client_apps(self.db(), flow.tenant())
            .await?
            .first()
            .map(|app| app.id)
            .ok_or(Error::NotFound("client app"))
    }

    /// The OAuth client of `flow`'s app at `provider`, or the error that
    /// says how to configure one.
    pub(crate) async fn oauth_client(
        &self,
        flow: &FlowRow,
        provider: &Provider,
    ) -> Result<ProviderClient> {
        let app = self.oauth_app(flow).await?;
        self.provider_oauth()
            .client(app, provider)
            .await?
            .ok_or_else(|| Error::FailedPrecondition {
                precondition: Precondition::WrongState,
                reason: Reason::OauthClientMissing,
                message: format!(
                    "the client app has no OAuth client for {}: set one with SetProviderOAuthClient",
                    provider.id
                ),
            })
    }

    /// `StartProviderAuthorization`.
    pub async fn start_provider_authorization(
        &self,
        token: Option<&SecretString>,
        req: pb::StartProviderAuthorizationRequest,
    ) -> Result<pb::StartProviderAuthorizationResponse> {
        let display = match req.display() {
            pb::AuthorizationDisplay::Unspecified => AuthorizationDisplay::Page,
            other => AuthorizationDisplay::from_proto(other)
                .ok_or_else(|| Error::invalid("display", "must be page or popup"))?,
        };
        let flow = self.flow_at(token, FlowStep::Login).await?;
        let provider = self.provider_of(&flow)?;
        let Some(oauth) = provider.oauth2.as_ref() else {
            return Err(wrong_step(
                "this integration logs in with credentials, not at the provider",
            ));
        };
        let client = self.oauth_client(&flow, &provider).await?;
        let state = random_token();
        let state_hash = token_hash(&state);
        let pkce = oauth.pkce.then(Pkce::new);
        let sealed = pkce.as_ref().map(|p| {
            self.cipher().encrypt(
                p.verifier.expose_secret().as_bytes(),
                Sealed::AuthorizationVerifier(&state_hash),
            )
        });
        let url =
            self.provider_oauth()
                .authorization_url(&provider, &client, &state, pkce.as_ref())?;
        store::insert_authorization(
            self.db(),
            &state_hash,
            flow.id,
            sealed.as_deref(),
            display.as_str(),
        )
        .await?;
        self.trace(
            &flow,
            "authorization.started",
            json!({ "integrationId": provider.id, "pkce": pkce.is_some() }),
        )
        .await?;
        Ok(pb::StartProviderAuthorizationResponse {
            authorization_url: url.to_string(),
        })
    }

    /// The provider's redirect back (`/link/oauth/callback`). Only the first
    /// callback of a request's `state` is acted on; the code is exchanged
    /// only while the flow is still open at its login.
    pub async fn provider_callback(&self, callback: Callback) -> Result<Landing> {
        let Some(state) = callback
            .state
            .as_deref()
            .filter(|s| !s.is_empty() && s.len() <= MAX_CALLBACK_PARAM)
        else {
            return Ok(Landing::Refused(INVALID_STATE));
        };
        let state_hash = token_hash(state);
        let Some(used) = store::use_authorization(self.db(), &state_hash).await? else {
            return Ok(Landing::Refused(INVALID_STATE));
        };
        let display =
            AuthorizationDisplay::parse(&used.display).unwrap_or(AuthorizationDisplay::Page);
        let landing = Landing::LinkPage(display);
        let flow = self.flow_by_id(used.flow_id).await?;
        if self.check_open_at(&flow, FlowStep::Login).await.is_err() {
            // Finished, expired or moved on: the page says which.
            return Ok(landing);
        }
        match callback.error.as_deref() {
            Some("access_denied") => {
                self.trace(&flow, "authorization.denied", json!({})).await?;
                self.finish(&flow, Finish::Cancelled(FlowStep::Login))
                    .await?;
                return Ok(landing);
            }
            Some(error) => {
                let shown: String = error
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .take(64)
                    .collect();
                self.trace(&flow, "authorization.failed", json!({ "error": shown }))
                    .await?;
                self.finish(
                    &flow,
                    Finish::Failed(
                        AUTHORIZATION_FAILED,
                        format!("the provider refused the authorization ({shown})"),
                    ),
                )
                .await?;
                return Ok(landing);
            }
            None => {}
        }
        let Some(code) = callback
            .code
            .filter(|c| !c.is_empty() && c.len() <= MAX_CALLBACK_PARAM)
        else {
            self.finish(
                &flow,
                Finish::Failed(
                    AUTHORIZATION_FAILED,
                    "the provider sent no authorization code".into(),
                ),
            )
            .await?;
            return Ok(landing);
        };
        let verifier = used
            .verifier_ciphertext
            .as_deref()
            .map(|sealed| {
                self.cipher()
                    .decrypt(sealed, Sealed::AuthorizationVerifier(&state_hash))
                    .map_err(Error::Internal)
                    .and_then(|plain| String::from_utf8(plain).map_err(Error::internal))
                    .map(SecretString::from)
            })
            .transpose()?;
        let flows = self.clone();
        detached(async move { flows.exchange(&flow, &code, verifier.as_ref()).await }).await?;
        Ok(landing)
    }

    /// Exchanges the code as the flow's one attempt in flight and records
    /// the outcome like a login's.
    async fn exchange(
        &self,
        flow: &FlowRow,
        code: &str,
        verifier: Option<&SecretString>,
    ) -> Result<()> {
        let attempt = match self.reserve_attempt(flow).await {
            Ok(attempt) => attempt,
            // Busy with another callback of this flow, or finished since.
            Err(_) => return Ok(()),
        };
        let flow = &attempt.flow;
        self.hooks(flow.kind).login_reserved(self, flow).await?;
        let provider = self.provider_of(flow)?;
        let client = self.oauth_client(flow, &provider).await?;
        let exchanged = self
            .provider_oauth()
            .exchange_code(&provider, &client, code, verifier)
            .await;
        let ctx = flow.login_context(&provider);
        match exchanged {
            Ok(tokens) => {
                self.after_login(
                    &attempt,
                    &ctx,
                    Ok(LoginOutcome::LoggedIn(tokens.into_session())),
                )
                .await?;
            }
            Err(err) => {
                self.trace(flow, "login.failed", json!({ "errorCode": err.code() }))
                    .await?;
                let code = match err {
                    TokenError::Unavailable { .. } => "provider_unavailable",
                    TokenError::InvalidGrant | TokenError::Rejected(_) => AUTHORIZATION_FAILED,
                };
                self.finish(flow, Finish::Failed(code, err.to_string()))
                    .await?;
            }
        }
        Ok(())
    }

    /// Gives up an OAuth grant linkd holds but will not keep (the flow ended
    /// before consent): revoked at the provider, best effort.
    pub(crate) async fn revoke_held(
        &self,
        flow: &FlowRow,
        provider: &Provider,
        session: &ProviderSession,
    ) {
        let Some(tokens) = crate::connectors::oauth_session::OAuthTokens::from_session(session)
        else {
            return;
        };
        if let Ok(client) = self.oauth_client(flow, provider).await
            && let Err(err) = self
                .provider_oauth()
                .revoke(provider, &client, &tokens)
                .await
        {
            tracing::info!(integration = %provider.id, error_code = err.code(), "revoking an unused grant failed");
        }
    }
}
