//! The one place that maps domain errors to gRPC codes and HTTP statuses.
//!
//! Every layer returns [`Error`]; the gRPC adapter turns it into a
//! `tonic::Status` with `google.rpc` details and the REST shim into the
//! documented JSON shape. Internal causes are logged here, once, with their
//! cause chain, and never reach the caller.

use http::StatusCode;
use std::collections::HashMap;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// `google.rpc.ErrorInfo.domain` of every linkd error.
pub const ERROR_DOMAIN: &str = "linkd";

/// One invalid field: where it is (`operations[1].arguments.cvv`) and what is
/// wrong with it. The message never repeats the value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = FieldIssue)]
pub struct FieldViolation {
    /// JSON path of the field (`operations[1].arguments.cvv`), `""` for the
    /// whole body.
    pub path: String,
    /// What is wrong with it; never repeats the value.
    pub message: String,
}

/// Declares [`Reason`]: each variant, its wire string and what it means. The
/// doc line is the description the README table and the OpenAPI document
/// give.
macro_rules! reasons {
    ($( #[doc = $doc:literal] $variant:ident = $name:literal, )*) => {
        /// The machine-readable reason of every error: gRPC
        /// `google.rpc.ErrorInfo.reason` and the REST body's `code` are this
        /// same `UPPER_SNAKE` string.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Reason { $( #[doc = $doc] $variant, )* }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            pub const fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $name,)* }
            }

            pub fn description(self) -> &'static str {
                match self { $(Reason::$variant => $doc.trim(),)* }
            }
        }
    };
}

reasons! {
    /// One or more fields are invalid; `issues` (REST) / `BadRequest` (gRPC) lists each.
    ValidationFailed = "VALIDATION_FAILED",
    /// The body is not in the media type the endpoint reads.
    UnsupportedMediaType = "UNSUPPORTED_MEDIA_TYPE",
    /// The API key or bearer token is missing, unknown or revoked.
    Unauthenticated = "UNAUTHENTICATED",
    /// No such resource in the caller's tenant, or no such route.
    NotFound = "NOT_FOUND",
    /// The REST path exists but not with this method (`Allow` lists those it has).
    MethodNotAllowed = "METHOD_NOT_ALLOWED",
    /// The body is larger than `LINKD_MAX_REQUEST_BYTES`.
    PayloadTooLarge = "PAYLOAD_TOO_LARGE",
    /// The idempotency key was used before with a different request.
    IdempotencyKeyReused = "IDEMPOTENCY_KEY_REUSED",
    /// A request with the same idempotency key is still running.
    IdempotencyKeyInUse = "IDEMPOTENCY_KEY_IN_USE",
    /// The link's lifetime is over.
    LinkExpired = "LINK_EXPIRED",
    /// The link was already claimed by another Link session.
    LinkAlreadyClaimed = "LINK_ALREADY_CLAIMED",
    /// The Link session, or the connection's provider session, is over.
    SessionExpired = "SESSION_EXPIRED",
    /// The Link flow already ended (connected, failed or cancelled).
    FlowFinished = "FLOW_FINISHED",
    /// Another request is talking to the provider for this flow; retry shortly.
    FlowBusy = "FLOW_BUSY",
    /// The call does not fit the flow's current step.
    WrongStep = "WRONG_STEP",
    /// The integration has no OAuth client configured for this client app.
    OauthClientMissing = "OAUTH_CLIENT_MISSING",
    /// The provider refused the operation.
    OperationFailed = "OPERATION_FAILED",
    /// Earlier operation runs still hold the connection; retry shortly.
    ConnectionBusy = "CONNECTION_BUSY",
    /// The provider refused the refresh token; the end user must reconnect.
    RefreshFailed = "REFRESH_FAILED",
    /// The connection's integration has no API the proxy can call.
    ProxyNotSupported = "PROXY_NOT_SUPPORTED",
    /// The provider's answer is larger than `LINKD_PROXY_MAX_RESPONSE_BYTES`.
    ProxyResponseTooLarge = "PROXY_RESPONSE_TOO_LARGE",
    /// The client app has not enabled the access-token hand-off.
    AccessTokenHandoffDisabled = "ACCESS_TOKEN_HANDOFF_DISABLED",
    /// A sandbox tool was called with a production key.
    SandboxOnly = "SANDBOX_ONLY",
    /// The connection is not a sandbox login that can be reset.
    NotSandboxSession = "NOT_SANDBOX_SESSION",
    /// The provider, or its connector, did not answer in time; retry later.
    ProviderUnavailable = "PROVIDER_UNAVAILABLE",
    /// Too many calls for one of the rate limits; retry after `Retry-After` / `RetryInfo`.
    RateLimited = "RATE_LIMITED",
    /// A dependency (the database) cannot be reached; retry later.
    Unavailable = "UNAVAILABLE",
    /// A bug or unexpected failure; the details are in linkd's log.
    Internal = "INTERNAL",
}

/// Why a request does not fit the current state of a resource. Each reason
/// has its own HTTP status so REST clients can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The resource's lifetime is over (HTTP 410).
    Expired,
    /// A single-use thing was already used (HTTP 409).
    AlreadyUsed,
    /// The call does not fit the current step (HTTP 409).
    WrongState,
    /// What the provider answered cannot be passed on (HTTP 502).
    BadUpstream,
}

impl Precondition {
    fn http_status(self) -> StatusCode {
        match self {
            Precondition::Expired => StatusCode::GONE,
            Precondition::AlreadyUsed | Precondition::WrongState => StatusCode::CONFLICT,
            Precondition::BadUpstream => StatusCode::BAD_GATEWAY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more fields are invalid; every violation is listed.
    #[error("{}", validation_summary(.0))]
    Validation(Vec<FieldViolation>),
    /// Missing, unknown or revoked credential. Deliberately says no more.
    #[error("missing or invalid credentials")]
    Unauthenticated,
    /// No such resource in the caller's tenant (another tenant's ids land
    /// here too).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    FailedPrecondition {
        precondition: Precondition,
        reason: Reason,
        message: String,
    },
    /// The caller may not do this at all (a sandbox tool with a production
    /// key).
    #[error("{message}")]
    PermissionDenied { reason: Reason, message: String },
    /// A REST body in a media type the endpoint does not read.
    #[error("Content-Type must be {expected}")]
    UnsupportedMediaType { expected: &'static str },
    /// An idempotency key was reused with a different request.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    /// A concurrent request holds the resource (e.g. same idempotency key).
    #[error("{message}")]
    Aborted { reason: Reason, message: String },
    /// A token-endpoint error (RFC 6749 §5.2): `error` is the OAuth code
    /// (`invalid_grant`, `invalid_client`…), never a secret.
    #[error("{error}: {description}")]
    OAuth {
        error: &'static str,
        description: String,
    },
    /// The provider, or the connector that serves it, did not answer in
    /// time; retry later.
    #[error("the provider cannot be reached right now; retry later")]
    ProviderUnavailable,
    /// A rate limit's bucket is empty: `scope` names which one
    /// (`api_key`, `client_app`, `flow`, `client_ip`), `subject` what it
    /// counts (never a secret), `limit` its policy.
    #[error("rate limit exceeded ({scope} {limit}); retry in {} ms", retry_after.as_millis())]
    RateLimited {
        scope: &'static str,
        subject: String,
        limit: String,
        retry_after: std::time::Duration,
    },
    /// A dependency (the database) cannot be reached; retry later.
    #[error("service temporarily unavailable, retry later")]
    Unavailable(#[source] anyhow::Error),
    /// A bug or an unexpected failure; details are logged, not returned.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    /// A single-field validation error.
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Validation(vec![FieldViolation {
            path: path.into(),
            message: message.into(),
        }])
    }

    pub fn oauth(error: &'static str, description: impl Into<String>) -> Self {
        Error::OAuth {
            error,
            description: description.into(),
        }
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Error::Internal(err.into())
    }

    /// The code table: gRPC code, HTTP status and machine-readable reason
    /// (an RFC 6749 error code for the OAuth endpoints, which follow the RFC).
    pub fn classify(&self) -> (Code, StatusCode, &'static str) {
        let (code, status, reason) = match self {
            Error::OAuth { error, .. } => {
                // A client that failed to authenticate, or an access token a
                // protected resource refused (RFC 6750 §3.1), is a 401.
                let (code, status) = if matches!(*error, "invalid_client" | "invalid_token") {
                    (Code::Unauthenticated, StatusCode::UNAUTHORIZED)
                } else {
                    (Code::InvalidArgument, StatusCode::BAD_REQUEST)
                };
                return (code, status, error);
            }
            Error::Validation(_) => (
                Code::InvalidArgument,
                StatusCode::BAD_REQUEST,
                Reason::ValidationFailed,
            ),
            Error::Unauthenticated => (
                Code::Unauthenticated,
                StatusCode::UNAUTHORIZED,
                Reason::Unauthenticated,
            ),
            Error::NotFound(_) => (Code::NotFound, StatusCode::NOT_FOUND, Reason::NotFound),
            Error::FailedPrecondition {
                precondition,
                reason,
                ..
            } => (
                Code::FailedPrecondition,
                precondition.http_status(),
                *reason,
            ),
            Error::PermissionDenied { reason, .. } => {
                (Code::PermissionDenied, StatusCode::FORBIDDEN, *reason)
            }
            Error::UnsupportedMediaType { .. } => (
                Code::InvalidArgument,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Reason::UnsupportedMediaType,
            ),
            Error::IdempotencyMismatch => (
                Code::InvalidArgument,
                StatusCode::UNPROCESSABLE_ENTITY,
                Reason::IdempotencyKeyReused,
            ),
            Error::Aborted { reason, .. } => (Code::Aborted, StatusCode::CONFLICT, *reason),
            Error::ProviderUnavailable => (
                Code::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::ProviderUnavailable,
            ),
            Error::RateLimited { .. } => (
                Code::ResourceExhausted,
                StatusCode::TOO_MANY_REQUESTS,
                Reason::RateLimited,
            ),
            Error::Unavailable(_) => (
                Code::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::Unavailable,
            ),
            Error::Internal(_) => (
                Code::Internal,
                StatusCode::INTERNAL_SERVER_ERROR,
                Reason::Internal,
            ),
        };
        (code, status, reason.as_str())
    }

    /// Logs what the caller will not see: the cause chain of internal and
    /// availability errors.
    pub fn log(&self) {
        match self {
            Error::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error")
            }
            Error::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "dependency unavailable")
            }
            _ => {}
        }
    }

    /// When to try again, for errors that pass with time: REST sends it as
    /// `Retry-After`, gRPC as `RetryInfo`.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            // The database probe runs every couple of seconds; a pool that
            // timed out frees up as calls finish.
            Error::Unavailable(_) => Some(std::time::Duration::from_secs(1)),
            Error::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    pub fn violations(&self) -> &[FieldViolation] {
        match self {
            Error::Validation(v) => v,
            _ => &[],
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        err.log();
        let (code, _, reason) = err.classify();
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::new();
        if let Error::RateLimited {
            scope,
            subject,
            limit,
            ..
        } = &err
        {
            metadata.insert("scope".to_string(), scope.to_string());
            metadata.insert("limit".to_string(), limit.clone());
            details.set_quota_failure(vec![tonic_types::QuotaViolation::new(
                subject.clone(),
                format!("{scope} rate limit {limit}"),
            )]);
        }
        details.set_error_info(reason, ERROR_DOMAIN, metadata);
        if let Some(delay) = err.retry_after() {
            details.set_retry_info(Some(delay));
        }
        if let Error::Validation(violations) = &err {
            details.set_bad_request(
                violations
                    .iter()
                    .map(|v| tonic_types::FieldViolation::new(v.path.clone(), v.message.clone()))
                    .collect::<Vec<_>>(),
            );
        }
        tonic::Status::with_error_details(code, err.to_string(), details)
    }
}

/// Short human-readable summary of a validation error for the gRPC message;
/// the full list is in the `BadRequest` detail.
fn validation_summary(violations: &[FieldViolation]) -> String {
    match violations {
        [one] => format!("Validation failed: {}: {}", one.path, one.message),
        many => format!(
            "Validation failed: {}",
            many.iter()
                .map(|v| format!("{}: {}", v.path, v.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// Postgres SQLSTATE classes and codes that mean "cannot reach or use the
/// database right now" rather than "this query is wrong".
fn is_unavailable_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources (too many connections, disk full)
        || matches!(code, "57P01" | "57P02" | "57P03") // shutdown / cannot connect now
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Error::Unavailable(err.into()),
            sqlx::Error::Database(db) if db.code().is_some_and(|c| is_unavailable_sqlstate(&c)) => {
                Error::Unavailable(err.into())
            }
            _ => Error::Internal(err.into()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::Reason;

    /// Integrators match on these strings: the README's error table lists
    /// every one, in the form gRPC's `ErrorInfo.reason` requires.
    #[test]
    fn the_readme_lists_every_reason_in_upper_snake_case() {
        let readme = include_str!("../../README.md");
        for reason in Reason::ALL {
            let name = reason.as_str();
            assert!(
                name.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{name}"
            );
            assert!(
                readme.contains(&format!("| `{name}` |")),
                "README's error table lacks {name}"
            );
            assert!(!reason.description().is_empty());
        }
    }
}
