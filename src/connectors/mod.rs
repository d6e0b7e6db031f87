//! Provider connectors: how linkd logs in to a third-party account and runs
//! operations there. Every integration is served through [`Connector`]; the
//! built-in [`sandbox::SandboxConnector`] serves every catalog integration
//! with deterministic data and magic credentials (see README).

mod geolocation;
pub use geolocation::Geolocation;

pub mod sandbox;

use crate::catalog::Action;
use crate::catalog::Provider;
use crate::kernel::tenant::Tenant;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a provider call failed, as the error codes clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    #[error("the username or password is wrong")]
    InvalidCredentials,
    #[error("the second-factor code is wrong")]
    InvalidCode,
    #[error("the account is locked at the provider")]
    AccountLocked,
    #[error("the provider could not perform the operation: {0}")]
    OperationFailed(String),
    #[error("the provider session has ended")]
    SessionExpired,
    #[error("the provider is unavailable")]
    ProviderUnavailable,
}

impl ConnectorError {
    /// The machine-readable code (`error_code` in APIs and redirects).
    pub fn code(&self) -> &'static str {
        match self {
            ConnectorError::InvalidCredentials => "invalid_credentials",
            ConnectorError::InvalidCode => "invalid_code",
            ConnectorError::AccountLocked => "account_locked",
            ConnectorError::OperationFailed(_) => "operation_failed",
            ConnectorError::SessionExpired => "session_expired",
            ConnectorError::ProviderUnavailable => "provider_unavailable",
        }
    }

    /// Whether the end user may simply try again in the same step.
    pub fn is_retryable_input(&self) -> bool {
        matches!(
            self,
            ConnectorError::InvalidCredentials | ConnectorError::InvalidCode
        )
    }
}

/// Provider session data (cookies, tokens): opaque to linkd, stored only
/// encrypted, never returned by an API. `Debug` does not show it.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct ProviderSession {
    pub data: serde_json::Value,
    /// When the provider will end the session, when known.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl std::fmt::Debug for ProviderSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSession")
            .field("data", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What a login (or second factor) led to.
#[derive(Debug)]
pub enum LoginOutcome {
    LoggedIn(ProviderSession),
    /// The provider wants a second factor; `pending` carries the half-done
    /// login to [`Connector::second_factor`].
    SecondFactorRequired {
        pending: ProviderSession,
        prompt: String,
    },
}

/// Who is logging in where.
#[derive(Debug, Clone)]
pub struct LoginContext<'a> {
    pub tenant: Tenant,
    pub provider: &'a Provider,
    /// ISO 3166 country (and subdivision) to appear to come from.
    pub geolocation: Option<(String, Option<String>)>,
}

/// The end user's credentials, by catalog field name. Values are secret.
pub type Credentials = BTreeMap<String, SecretString>;

#[tonic::async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    async fn login(
        &self,
        ctx: &LoginContext<'_>,
        credentials: &Credentials,
    ) -> Result<LoginOutcome, ConnectorError>;

    async fn second_factor(
        &self,
        ctx: &LoginContext<'_>,
        pending: &ProviderSession,
        code: &str,
    ) -> Result<LoginOutcome, ConnectorError>;

    /// Runs one operation; returns the resource's data (what appears under
    /// the capability's `resultKey`).
    async fn execute(
        &self,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
        resource: &str,
        action: Action,
        arguments: &serde_json::Value,
    ) -> Result<serde_json::Value, ConnectorError>;

    async fn logout(
        &self,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
    ) -> Result<(), ConnectorError>;

    /// Whether the provider session is still usable.
    async fn session_alive(
        &self,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
    ) -> Result<bool, ConnectorError>;
}

/// Which connector serves a tenant. Sandbox tenants get the sandbox
/// connector; this build has no connectors for real providers, so production
/// tenants get `provider_unavailable` instead of made-up data.
#[derive(Debug, Clone)]
pub struct Connectors {
    sandbox: Arc<dyn Connector>,
}

impl Connectors {
    pub fn new(sandbox: Arc<dyn Connector>) -> Self {
        Connectors { sandbox }
    }

    pub fn for_tenant(&self, tenant: Tenant) -> Result<&dyn Connector, ConnectorError> {
        match tenant.environment {
            crate::kernel::tenant::Environment::Sandbox => Ok(self.sandbox.as_ref()),
            crate::kernel::tenant::Environment::Production => {
                Err(ConnectorError::ProviderUnavailable)
            }
        }
    }
}
