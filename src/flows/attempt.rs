//! One provider call at a time per flow. A login or a second-factor code is
//! an *attempt*: the statement that reserves it checks the step, the
//! attempt limit and that no other attempt is in flight, counts it, and
//! marks the flow busy until a lease runs out. Only the holder of the
//! attempt may record its outcome (every such update names the attempt), so
//! however many requests arrive at once, at most [`MAX_FAILED_ATTEMPTS`]
//! failing calls ever reach the provider for one flow, and a successful
//! login moves the flow on exactly once.

use super::{Finish, FlowRow, Flows, MAX_FAILED_ATTEMPTS, store};
use crate::connectors::ConnectorError;
use crate::kernel::error::{Error, Precondition, Reason, Result};
use crate::kernel::ids::AttemptId;
use std::time::Duration;
use tracing::Instrument as _;

/// A reserved attempt: the flow as the reservation left it (the attempt
/// counted) and the attempt's id.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub flow: FlowRow,
    pub id: AttemptId,
}

/// Runs `work` to its end even if the request that started it goes away (a
/// closed tab drops the request's future): once a provider call is
/// reserved, its outcome is always recorded.
pub(crate) async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work.in_current_span())
        .await
        .map_err(Error::internal)?
}

pub(crate) fn flow_busy() -> Error {
    Error::Aborted {
        reason: Reason::FlowBusy,
        message: "another request is already working on this flow; read the flow and try again"
            .into(),
    }
}

impl Flows {
    /// Waits for a provider call at most `LINKD_PROVIDER_TIMEOUT`; a call
    /// past it fails as `provider_unavailable`.
    pub(crate) async fn within_deadline<T>(
        &self,
        call: impl Future<Output = Result<T, ConnectorError>>,
    ) -> Result<T, ConnectorError> {
        tokio::time::timeout(self.settings.provider_timeout, call)
            .await
            .unwrap_or(Err(ConnectorError::ProviderUnavailable))
    }

    /// How long `calls` provider calls hold a flow: each may take the
    /// timeout, and half of one more is left for recording the outcome.
    pub(crate) fn lease(&self, calls: u32) -> Duration {
        self.settings.provider_timeout * calls + self.settings.provider_timeout / 2
    }

    /// Reserves the next provider call of `flow` at its current step, or
    /// fails saying why not: finished, expired, moved to another step (the
    /// errors of `flow_at`), or busy with another request (`FLOW_BUSY`).
    pub(crate) async fn reserve_attempt(&self, flow: &FlowRow) -> Result<Attempt> {
        let id = AttemptId::new();
        let lease = self.lease(1);
        let reserved = store::reserve_attempt(
            self.db(),
            flow.id,
            id,
            lease,
            flow.step,
            MAX_FAILED_ATTEMPTS,
        )
        .await?;
        if let Some(flow) = reserved {
            return Ok(Attempt { flow, id });
        }
        // Not reserved: say why, from the flow as it is now.
        let now = self.flow_by_id(flow.id).await?;
        self.check_open_at(&now, flow.step).await?;
        let idle = now
            .attempt_until
            .is_none_or(|until| until <= chrono::Utc::now());
        if idle && now.failed_logins >= MAX_FAILED_ATTEMPTS {
            // The last attempt's process died before finishing the flow.
            let err = if now.step == super::FlowStep::TwoFactor {
                ConnectorError::InvalidCode
            } else {
                ConnectorError::InvalidCredentials
            };
            self.finish(&now, Finish::Failed(err.code(), err.to_string()))
                .await?;
            return Err(Error::FailedPrecondition {
                precondition: Precondition::AlreadyUsed,
                reason: Reason::FlowFinished,
                message: "this flow has already finished".into(),
            });
        }
        Err(flow_busy())
    }

    /// Records a failed attempt the end user may retry: the flow stays at
    /// its step with `error_code`, and is free for the next attempt.
    pub(crate) async fn release_attempt(&self, attempt: &Attempt, error_code: &str) -> Result<()> {
        store::release_attempt(self.db(), attempt.flow.id, attempt.id, error_code).await
    }
}
