//! Provider connectors: how linkd logs in to a third-party account and runs
//! operations there. Every integration is served through [`Connector`]: the
//! built-in [`sandbox::SandboxConnector`] serves every catalog integration
//! with deterministic data and magic credentials (see README), and
//! [`remote::RemoteConnector`] calls a connector process in any language
//! over the connector protocol. [`Connectors`] routes each call.
//!
//! Imports only the kernel and the catalog.

mod geolocation;
pub use geolocation::Geolocation;

pub mod breaker;
mod describe;
pub mod metrics;
pub mod oauth_session;
pub mod remote;
pub mod sandbox;

use crate::catalog::{Action, Catalog, Provider};
use crate::kernel::ids::ConnectionId;
use crate::kernel::tenant::{Environment, Tenant};
use metrics::ConnectorMetrics;
use remote::{Deadlines, RemoteConnector};
use secrecy::SecretString;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

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

/// What an operation returned.
#[derive(Debug)]
pub struct Executed {
    /// The resource's data (what appears under the capability's
    /// `resultKey`).
    pub data: serde_json::Value,
    /// A session the connector renewed (rolled cookies, a refreshed token)
    /// to use from now on instead of the one sent.
    pub renewed: Option<ProviderSession>,
}

/// Who is logging in where.
#[derive(Debug, Clone)]
pub struct LoginContext<'a> {
    pub tenant: Tenant,
    pub provider: &'a Provider,
    /// The connection the call is for; `None` for a link intent's flow.
    pub connection_id: Option<ConnectionId>,
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

    /// Runs one operation.
    async fn execute(
        &self,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
        resource: &str,
        action: Action,
        arguments: &serde_json::Value,
    ) -> Result<Executed, ConnectorError>;

    async fn logout(
        &self,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
    ) -> Result<(), ConnectorError>;

    /// Whether the provider session is still usable, changing nothing.
    async fn check_session(
        &self,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
    ) -> Result<SessionCheck, ConnectorError>;
}

/// What a session check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCheck {
    /// False when the provider has ended the session.
    pub alive: bool,
    /// When the provider will end it, when the connector learned that now.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Which connector serves each call. Sandbox tenants get the built-in
/// sandbox connector, unless the integration is served by a connector the
/// operator also routed sandbox traffic to; production tenants get the
/// connector that described the integration, and `provider_unavailable`
/// when none did (no made-up data in production).
#[derive(Debug, Clone)]
pub struct Connectors {
    sandbox: Arc<dyn Connector>,
    remotes: Arc<[Remote]>,
    /// Integration → index in `remotes`, from the connectors' `Describe`.
    routes: Arc<RwLock<HashMap<String, usize>>>,
    metrics: Arc<ConnectorMetrics>,
}

#[derive(Debug)]
struct Remote {
    connector: Arc<RemoteConnector>,
    /// Serves sandbox tenants too.
    sandbox: bool,
}

/// A configured connector endpoint.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub name: String,
    pub endpoint: String,
    pub token: Option<SecretString>,
    /// Sandbox tenants use it too for the integrations it serves.
    pub serves_sandbox: bool,
}

impl Connectors {
    /// The sandbox connector alone.
    pub fn new(sandbox: Arc<dyn Connector>) -> Self {
        Connectors {
            sandbox,
            remotes: Arc::new([]),
            routes: Arc::default(),
            metrics: Arc::default(),
        }
    }

    /// The sandbox connector and connector processes at `remotes`. Nothing
    /// is routed to a connector before it has described what it serves
    /// (see [`Connectors::describe_all`]).
    pub fn with_remotes(
        sandbox: Arc<dyn Connector>,
        remotes: Vec<RemoteSettings>,
        tls: &remote::TlsFiles,
        deadlines: Deadlines,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(ConnectorMetrics::default());
        let tls = if remotes.iter().any(|r| r.endpoint.starts_with("https:")) {
            Some(tls.load()?)
        } else {
            None
        };
        let remotes = remotes
            .into_iter()
            .map(|r| {
                Ok(Remote {
                    connector: Arc::new(RemoteConnector::new(
                        &r.name,
                        &r.endpoint,
                        r.token,
                        tls.as_ref(),
                        deadlines,
                        metrics.clone(),
                    )?),
                    sandbox: r.serves_sandbox,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Connectors {
            sandbox,
            remotes: remotes.into(),
            routes: Arc::default(),
            metrics,
        })
    }

    pub fn metrics(&self) -> &ConnectorMetrics {
        &self.metrics
    }

    /// The connector that serves a call for `ctx`; for an OAuth
    /// integration, behind [`oauth_session::OAuthView`].
    pub fn serving(&self, ctx: &LoginContext<'_>) -> Result<Arc<dyn Connector>, ConnectorError> {
        let connector = self.route(ctx)?;
        Ok(if ctx.provider.oauth2.is_some() {
            Arc::new(oauth_session::OAuthView(connector))
        } else {
            connector
        })
    }

    fn route(&self, ctx: &LoginContext<'_>) -> Result<Arc<dyn Connector>, ConnectorError> {
        let remote = self
            .routes
            .read()
            .expect("routes lock")
            .get(&ctx.provider.id)
            .map(|&i| &self.remotes[i]);
        match (ctx.tenant.environment, remote) {
            (Environment::Production, Some(remote)) => Ok(remote.connector.clone()),
            (Environment::Production, None) => Err(ConnectorError::ProviderUnavailable),
            (Environment::Sandbox, Some(remote)) if remote.sandbox => Ok(remote.connector.clone()),
            (Environment::Sandbox, _) => Ok(self.sandbox.clone()),
        }
    }

    /// Asks every connector that has not answered yet what it serves, and
    /// routes the integrations that agree with `catalog`. Returns how many
    /// connectors are still to answer.
    pub async fn describe_all(&self, catalog: &Catalog, answered: &mut [bool]) -> usize {
        for (index, remote) in self.remotes.iter().enumerate() {
            if answered[index] {
                continue;
            }
            let connector = &remote.connector;
            let Ok(description) = connector.describe().await else {
                continue;
            };
            answered[index] = true;
            let mut served = Vec::new();
            for integration in &description.integrations {
                match describe::admit(catalog, integration) {
                    Ok(()) => served.push(integration.integration_id.clone()),
                    Err(problem) => tracing::error!(
                        connector = connector.name(),
                        integration = %integration.integration_id,
                        "connector's integration refused: {problem}"
                    ),
                }
            }
            let mut routes = self.routes.write().expect("routes lock");
            for id in &served {
                if let Some(&other) = routes.get(id)
                    && other != index
                {
                    tracing::error!(
                        connector = connector.name(),
                        integration = %id,
                        "integration already served by connector {}; kept there",
                        self.remotes[other].connector.name()
                    );
                    continue;
                }
                routes.insert(id.clone(), index);
            }
            tracing::info!(
                connector = connector.name(),
                version = %description.connector_version,
                integrations = ?served,
                "connector described what it serves"
            );
        }
        answered.iter().filter(|done| !**done).count()
    }

    /// Describes the connectors until each has answered, backing off from
    /// one second to a minute between rounds, so a connector that is down at
    /// start-up is routed as soon as it is up.
    pub fn spawn_describer(&self, catalog: Arc<Catalog>) -> Option<tokio::task::JoinHandle<()>> {
        if self.remotes.is_empty() {
            return None;
        }
        let connectors = self.clone();
        Some(tokio::spawn(async move {
            let mut answered = vec![false; connectors.remotes.len()];
            let mut pause = std::time::Duration::from_secs(1);
            while connectors.describe_all(&catalog, &mut answered).await > 0 {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(60));
            }
        }))
    }
}
