//! The provider session of an OAuth integration's connection: the tokens of
//! its grant, which linkd obtains and refreshes itself. Connectors serving
//! such an integration see only the current access token ([`OAuthView`]):
//! a refresh token never leaves linkd, and logging out is revoking, which
//! linkd does (see [`crate::provider_oauth`]).

use super::{
    Connector, ConnectorError, Credentials, Executed, LoginContext, LoginOutcome, ProviderSession,
    SessionCheck,
};
use crate::catalog::Action;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::sync::Arc;

/// The tokens of one grant, kept inside the connection's sealed session.
/// `Debug` shows no token.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuthTokens {
    pub access_token: String,
    /// `Bearer` unless the provider said otherwise.
    pub token_type: String,
    pub refresh_token: Option<String>,
    /// Granted scopes as the provider wrote them, when it said.
    pub scope: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub refresh_expires_at: Option<DateTime<Utc>>,
    pub obtained_at: DateTime<Utc>,
}

impl std::fmt::Debug for OAuthTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthTokens")
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl OAuthTokens {
    /// The session linkd stores: it ends when the refresh token does, or
    /// without one, when the access token does.
    pub fn into_session(self) -> ProviderSession {
        let expires_at = match &self.refresh_token {
            Some(_) => self.refresh_expires_at,
            None => self.expires_at,
        };
        ProviderSession {
            expires_at,
            data: json!({ "oauth2": self }),
        }
    }

    /// The tokens of an OAuth session; `None` for any other session.
    pub fn from_session(session: &ProviderSession) -> Option<Self> {
        serde_json::from_value(session.data.get("oauth2")?.clone()).ok()
    }
}

/// Where [`connector_session`] puts the view in the session's data.
const VIEW_KEY: &str = "oauth2View";

/// What a connector sees of an OAuth session: the access token, its type,
/// scope and expiry, and the API base URL to call (under [`VIEW_KEY`]; a
/// remote connector gets it as its session bytes, see [`view_bytes`]).
pub fn connector_session(ctx: &LoginContext<'_>, session: &ProviderSession) -> ProviderSession {
    let Some(tokens) = OAuthTokens::from_session(session) else {
        return ProviderSession {
            data: json!({}),
            expires_at: None,
        };
    };
    ProviderSession {
        data: json!({ VIEW_KEY: {
            "accessToken": tokens.access_token,
            "tokenType": tokens.token_type,
            "scope": tokens.scope,
            "expiresAt": tokens.expires_at,
            "apiBaseUrl": ctx.provider.oauth2.as_ref().map(|o| o.api_base_url.to_string()),
        }}),
        expires_at: tokens.expires_at,
    }
}

/// The JSON a remote connector receives as the session of an OAuth
/// integration (the connector protocol documents its shape); `None` for a
/// session the connector made itself.
pub fn view_bytes(session: &ProviderSession) -> Option<Vec<u8>> {
    serde_json::to_vec(session.data.get(VIEW_KEY)?).ok()
}

/// The connector of an OAuth integration, as every caller gets it.
#[derive(Debug)]
pub(super) struct OAuthView(pub Arc<dyn Connector>);

#[tonic::async_trait]
impl Connector for OAuthView {
    async fn login(
        &self,
        _: &LoginContext<'_>,
        _: &Credentials,
    ) -> Result<LoginOutcome, ConnectorError> {
        Err(ConnectorError::OperationFailed(
            "this integration logs in at the provider's OAuth page".into(),
        ))
    }

    async fn second_factor(
        &self,
        ctx: &LoginContext<'_>,
        _: &ProviderSession,
        _code: &str,
    ) -> Result<LoginOutcome, ConnectorError> {
        self.login(ctx, &Credentials::new()).await
    }

    async fn execute(
        &self,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
        resource: &str,
        action: Action,
        arguments: &serde_json::Value,
    ) -> Result<Executed, ConnectorError> {
        let view = connector_session(ctx, session);
        let executed = self
            .0
            .execute(ctx, &view, resource, action, arguments)
            .await?;
        // The tokens are linkd's to renew, not the connector's.
        Ok(Executed {
            data: executed.data,
            renewed: None,
        })
    }

    async fn logout(
        &self,
        _: &LoginContext<'_>,
        _: &ProviderSession,
    ) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn check_session(
        &self,
        _: &LoginContext<'_>,
        session: &ProviderSession,
    ) -> Result<SessionCheck, ConnectorError> {
        // Refreshing is this session's health check (see connections).
        Ok(SessionCheck {
            alive: true,
            expires_at: session.expires_at,
        })
    }
}
