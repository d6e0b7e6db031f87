//! A connector served by another process over the connector protocol
//! (`proto/linkd/connector/v1/connector.proto`), in any language.
//!
//! Each call has a deadline for its kind; only `Describe` and
//! `CheckSession`, which change nothing, are repeated after a transport
//! failure. A breaker per endpoint stops calling a connector that keeps
//! failing, so end users get `provider_unavailable` at once instead of
//! waiting out a deadline each, and lets one call through after a pause to
//! see whether it is back.

use super::breaker::Breaker;
use super::metrics::ConnectorMetrics;
use super::{
    Connector, ConnectorError, Credentials, Executed, LoginContext, LoginOutcome, ProviderSession,
    SessionCheck,
};
use crate::catalog::Action;
use crate::connector_pb as cpb;
use crate::connector_pb::connector_service_client::ConnectorServiceClient;
use crate::kernel::proto_json;
use crate::kernel::tenant::Environment;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The `google.rpc.ErrorInfo` domain of connector errors.
pub const ERROR_DOMAIN: &str = "connector.linkd.dev";

/// Longest `OPERATION_FAILED` message passed on to clients.
const MAX_FAILURE_MESSAGE: usize = 200;

/// Largest session a connector may hand linkd to keep.
const MAX_SESSION_BYTES: usize = 64 * 1024;

/// How long each kind of call may take.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// `Login` and `SubmitSecondFactor`.
    pub login: Duration,
    /// `ExecuteOperation`.
    pub operation: Duration,
    /// `Describe`, `CheckSession` and `Logout`.
    pub check: Duration,
}

/// Where the TLS material for `https://` connectors is
/// (`LINKD_CONNECTOR_TLS_*`).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Certificate authorities to trust instead of the web PKI roots.
    pub ca: Option<std::path::PathBuf>,
    /// linkd's own certificate and key, for mutual TLS.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl TlsFiles {
    /// The client TLS settings these files make, or which file is wrong.
    pub fn load(&self) -> anyhow::Result<ClientTlsConfig> {
        let read = |path: &std::path::Path, setting: &str| {
            std::fs::read(path).map_err(|err| {
                anyhow::anyhow!("invalid configuration: {setting} {}: {err}", path.display())
            })
        };
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(
                ca,
                "LINKD_CONNECTOR_TLS_CA_FILE",
            )?)),
            None => tls.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(
                read(cert, "LINKD_CONNECTOR_TLS_CERT_FILE")?,
                read(key, "LINKD_CONNECTOR_TLS_KEY_FILE")?,
            ));
        }
        Ok(tls)
    }
}

/// One configured connector endpoint.
#[derive(Clone)]
pub struct RemoteConnector {
    name: Arc<str>,
    client: ConnectorServiceClient<Channel>,
    token: Option<SecretString>,
    deadlines: Deadlines,
    breaker: Arc<Breaker>,
    metrics: Arc<ConnectorMetrics>,
}

impl std::fmt::Debug for RemoteConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConnector")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The calls of the protocol, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Describe,
    Login,
    SecondFactor,
    Execute,
    CheckSession,
    Logout,
}

impl Call {
    pub const fn as_str(self) -> &'static str {
        match self {
            Call::Describe => "describe",
            Call::Login => "login",
            Call::SecondFactor => "submit_second_factor",
            Call::Execute => "execute_operation",
            Call::CheckSession => "check_session",
            Call::Logout => "logout",
        }
    }

    /// Calls that change nothing at the provider may be sent again.
    const fn safe_to_repeat(self) -> bool {
        matches!(self, Call::Describe | Call::CheckSession)
    }
}

impl RemoteConnector {
    /// A connector at `endpoint` (`http://host:port`, or `https://` with
    /// `tls`). The channel connects on first use, so a connector that is
    /// down does not hold up start-up.
    pub fn new(
        name: &str,
        endpoint: &str,
        token: Option<SecretString>,
        tls: Option<&ClientTlsConfig>,
        deadlines: Deadlines,
        metrics: Arc<ConnectorMetrics>,
    ) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(endpoint.to_string())
            .map_err(|err| anyhow::anyhow!("connector {name}: endpoint {endpoint:?}: {err}"))?
            .connect_timeout(deadlines.check.min(Duration::from_secs(5)))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if endpoint.uri().scheme_str() == Some("https") {
            let tls = tls
                .cloned()
                .unwrap_or_else(|| ClientTlsConfig::new().with_webpki_roots());
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|err| anyhow::anyhow!("connector {name}: TLS: {err}"))?;
        }
        Ok(RemoteConnector {
            name: name.into(),
            client: ConnectorServiceClient::new(endpoint.connect_lazy()),
            token,
            deadlines,
            breaker: Arc::new(Breaker::default()),
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn deadline(&self, call: Call) -> Duration {
        match call {
            Call::Login | Call::SecondFactor => self.deadlines.login,
            Call::Execute => self.deadlines.operation,
            Call::Describe | Call::CheckSession | Call::Logout => self.deadlines.check,
        }
    }

    fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        if let Some(token) = &self.token
            && let Ok(value) = format!("Bearer {}", token.expose_secret()).parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// Sends one call through the breaker. A call that is safe to repeat is
    /// sent again, within what is left of its deadline, when it failed on
    /// the way; an answer from the connector, error or not, is final.
    async fn call<Req, Resp, F, Fut>(
        &self,
        call: Call,
        message: Req,
        send: F,
    ) -> Result<Resp, ConnectorError>
    where
        Req: Clone,
        F: Fn(ConnectorServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.deadline(call);
        let mut backoff = Duration::from_millis(100);
        let outcome = loop {
            if !self.breaker.allows() {
                break Err(ConnectorError::ProviderUnavailable);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let status = match send(self.client.clone(), self.request(message.clone(), left)).await
            {
                Ok(response) => {
                    self.breaker.succeeded();
                    break Ok(response.into_inner());
                }
                Err(status) => status,
            };
            if let Some(error) = self.protocol_error(call, &status) {
                // The connector answered: it is up, whatever it said.
                self.breaker.succeeded();
                break Err(error);
            }
            self.breaker.failed();
            let retry = call.safe_to_repeat() && Instant::now() + backoff < deadline;
            if !retry {
                tracing::warn!(
                    connector = %self.name,
                    call = call.as_str(),
                    grpc_code = ?status.code(),
                    "connector unreachable or failing; answering provider_unavailable"
                );
                break Err(ConnectorError::ProviderUnavailable);
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        };
        self.metrics.record(
            &self.name,
            call,
            outcome.as_ref().err().map(ConnectorError::code),
            started.elapsed(),
        );
        outcome
    }

    /// The protocol error a failed call carries, when the connector
    /// answered with one. A reason outside the closed set is the
    /// connector's bug: `provider_unavailable`, logged for its team.
    fn protocol_error(&self, call: Call, status: &tonic::Status) -> Option<ConnectorError> {
        use tonic_types::StatusExt as _;
        let info = status
            .get_details_error_info()
            .filter(|info| info.domain == ERROR_DOMAIN)?;
        Some(match info.reason.as_str() {
            "INVALID_CREDENTIALS" => ConnectorError::InvalidCredentials,
            "INVALID_CODE" => ConnectorError::InvalidCode,
            "ACCOUNT_LOCKED" => ConnectorError::AccountLocked,
            "OPERATION_FAILED" => {
                ConnectorError::OperationFailed(failure_message(status.message()))
            }
            "SESSION_EXPIRED" => ConnectorError::SessionExpired,
            "PROVIDER_UNAVAILABLE" => ConnectorError::ProviderUnavailable,
            other => {
                tracing::warn!(
                    connector = %self.name,
                    call = call.as_str(),
                    reason = other,
                    "connector answered a reason outside the protocol; answering provider_unavailable"
                );
                ConnectorError::ProviderUnavailable
            }
        })
    }

    /// The protocol's view of what linkd passes to a connector.
    fn context(&self, ctx: &LoginContext<'_>) -> cpb::CallContext {
        cpb::CallContext {
            integration_id: ctx.provider.id.clone(),
            environment: match ctx.tenant.environment {
                Environment::Sandbox => cpb::Environment::Sandbox,
                Environment::Production => cpb::Environment::Production,
            } as i32,
            organization_id: ctx.tenant.organization_id.to_string(),
            connection_id: ctx
                .connection_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            location: ctx
                .geolocation
                .as_ref()
                .map(|(country, subdivision)| cpb::Location {
                    country: country.clone(),
                    subdivision: subdivision.clone().unwrap_or_default(),
                }),
        }
    }

    /// A stored session, made by this connector, as the protocol carries
    /// it. A session another connector made (the route changed) is ended.
    fn session(&self, session: &ProviderSession) -> Result<cpb::Session, ConnectorError> {
        if let Some(view) = super::oauth_session::view_bytes(session) {
            return Ok(cpb::Session {
                data: view,
                expires_at: session.expires_at.map(crate::kernel::time::timestamp),
            });
        }
        let stored: StoredSession = serde_json::from_value(session.data.clone())
            .map_err(|_| ConnectorError::SessionExpired)?;
        if *stored.connector != *self.name {
            return Err(ConnectorError::SessionExpired);
        }
        Ok(cpb::Session {
            data: STANDARD
                .decode(stored.data)
                .map_err(|_| ConnectorError::SessionExpired)?,
            expires_at: session.expires_at.map(crate::kernel::time::timestamp),
        })
    }

    /// A session the connector answered, as linkd stores it.
    fn keep(&self, session: Option<cpb::Session>) -> Result<ProviderSession, ConnectorError> {
        let session = session.ok_or_else(|| self.broken("a session is missing"))?;
        if session.data.len() > MAX_SESSION_BYTES {
            return Err(self.broken("its session is larger than 64 KiB"));
        }
        Ok(ProviderSession {
            data: serde_json::to_value(StoredSession {
                connector: self.name.to_string(),
                data: STANDARD.encode(&session.data),
            })
            .expect("plain strings serialize"),
            expires_at: session.expires_at.and_then(from_timestamp),
        })
    }

    /// An answer outside the protocol: logged for the connector's team,
    /// `provider_unavailable` for the end user.
    fn broken(&self, what: &str) -> ConnectorError {
        tracing::warn!(connector = %self.name, "connector answer refused: {what}");
        ConnectorError::ProviderUnavailable
    }

    fn outcome(
        &self,
        logged_in: Option<cpb::LoggedIn>,
        second_factor: Option<cpb::SecondFactorRequired>,
    ) -> Result<LoginOutcome, ConnectorError> {
        match (logged_in, second_factor) {
            (Some(done), None) => Ok(LoginOutcome::LoggedIn(self.keep(done.session)?)),
            (None, Some(more)) => Ok(LoginOutcome::SecondFactorRequired {
                pending: self.keep(more.pending)?,
                prompt: more.prompt.chars().take(MAX_FAILURE_MESSAGE).collect(),
            }),
            _ => Err(self.broken("a login answered no outcome")),
        }
    }

    /// The integrations this connector says it serves.
    pub async fn describe(&self) -> Result<cpb::DescribeResponse, ConnectorError> {
        self.call(
            Call::Describe,
            cpb::DescribeRequest {},
            |mut c, r| async move { c.describe(r).await },
        )
        .await
    }
}

/// What linkd stores as the session's data: which connector made it and
/// the connector's bytes.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSession {
    connector: String,
    data: String,
}

fn failure_message(message: &str) -> String {
    let message: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FAILURE_MESSAGE)
        .collect();
    if message.trim().is_empty() {
        "the provider refused the operation".into()
    } else {
        message
    }
}

fn from_timestamp(t: prost_types::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

fn action(action: Action) -> cpb::OperationAction {
    match action {
        Action::Read => cpb::OperationAction::Read,
        Action::Write => cpb::OperationAction::Write,
    }
}

#[tonic::async_trait]
impl Connector for RemoteConnector {
    async fn login(
        &self,
        ctx: &LoginContext<'_>,
        credentials: &Credentials,
    ) -> Result<LoginOutcome, ConnectorError> {
        let request = cpb::LoginRequest {
            context: Some(self.context(ctx)),
            credentials: credentials
                .iter()
                .map(|(name, value)| (name.clone(), value.expose_secret().to_string()))
                .collect(),
        };
        let response = self
            .call(
                Call::Login,
                request,
                |mut c, r| async move { c.login(r).await },
            )
            .await?;
        use cpb::login_response::Outcome;
        match response.outcome {
            Some(Outcome::LoggedIn(done)) => self.outcome(Some(done), None),
            Some(Outcome::SecondFactorRequired(more)) => self.outcome(None, Some(more)),
            None => self.outcome(None, None),
        }
    }

    async fn second_factor(
        &self,
        ctx: &LoginContext<'_>,
        pending: &ProviderSession,
        code: &str,
    ) -> Result<LoginOutcome, ConnectorError> {
        let request = cpb::SubmitSecondFactorRequest {
            context: Some(self.context(ctx)),
            pending: Some(self.session(pending)?),
            code: code.to_string(),
        };
        let response = self
            .call(Call::SecondFactor, request, |mut c, r| async move {
                c.submit_second_factor(r).await
            })
            .await?;
        use cpb::submit_second_factor_response::Outcome;
        match response.outcome {
            Some(Outcome::LoggedIn(done)) => self.outcome(Some(done), None),
            Some(Outcome::SecondFactorRequired(more)) => self.outcome(None, Some(more)),
            None => self.outcome(None, None),
        }
    }

    async fn execute(
        &self,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
        resource: &str,
        action_: Action,
        arguments: &serde_json::Value,
    ) -> Result<Executed, ConnectorError> {
        let secret_arguments = ctx
            .provider
            .capabilities
            .iter()
            .find(|c| c.resource == resource && c.action == action_)
            .map(|c| c.secret_arguments())
            .unwrap_or_default();
        let request = cpb::ExecuteOperationRequest {
            context: Some(self.context(ctx)),
            session: Some(self.session(session)?),
            resource: resource.to_string(),
            action: action(action_) as i32,
            arguments: Some(proto_json::to_struct(arguments)),
            secret_arguments,
        };
        let response = self
            .call(Call::Execute, request, |mut c, r| async move {
                c.execute_operation(r).await
            })
            .await?;
        Ok(Executed {
            data: response
                .data
                .as_ref()
                .map_or(serde_json::Value::Null, proto_json::from_proto_value),
            renewed: match response.session {
                Some(session) => Some(self.keep(Some(session))?),
                None => None,
            },
        })
    }

    async fn logout(
        &self,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
    ) -> Result<(), ConnectorError> {
        let request = cpb::LogoutRequest {
            context: Some(self.context(ctx)),
            session: Some(self.session(session)?),
        };
        self.call(Call::Logout, request, |mut c, r| async move {
            c.logout(r).await
        })
        .await
        .map(drop)
    }

    async fn check_session(
        &self,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
    ) -> Result<SessionCheck, ConnectorError> {
        let session = match self.session(session) {
            Ok(session) => session,
            // Not this connector's session: nothing it could check.
            Err(ConnectorError::SessionExpired) => {
                return Ok(SessionCheck {
                    alive: false,
                    expires_at: None,
                });
            }
            Err(other) => return Err(other),
        };
        let request = cpb::CheckSessionRequest {
            context: Some(self.context(ctx)),
            session: Some(session),
        };
        let answer = self
            .call(Call::CheckSession, request, |mut c, r| async move {
                c.check_session(r).await
            })
            .await?;
        Ok(SessionCheck {
            alive: answer.active,
            expires_at: answer.expires_at.and_then(from_timestamp),
        })
    }
}
