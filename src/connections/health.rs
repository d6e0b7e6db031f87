//! Connection health: what the background jobs of every replica do to keep
//! connections honest. The check asks the connector whether each active
//! connection's session is still usable, spread over the check interval,
//! and expires the ones that ended; the warning announces once that a
//! session will end soon (`connection.expiring`, Plaid's
//! `PENDING_EXPIRATION`). Both claim their rows with `SKIP LOCKED`, so they
//! are safe in several replicas at once.

use super::access::REASON_SESSION_ENDED;
use super::{Connections, connection_event_data, store};
use crate::connectors::ConnectorError;
use crate::events::outbox::{self, EventSubject};
use crate::kernel::db::Db;
use crate::kernel::error::{Error, Precondition, Reason, Result};
use serde_json::json;
use std::time::Duration;

/// Connections checked per claim.
pub const CHECK_BATCH: i64 = 50;

/// What the connector said of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ended,
    /// Still usable; with its end when the connector told a new one.
    Alive(Option<chrono::DateTime<chrono::Utc>>),
    /// No answer.
    Unknown,
}

/// What one round of checks found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub checked: usize,
    pub expired: usize,
}

impl Connections {
    /// Checks the connections whose check is due, up to [`CHECK_BATCH`].
    pub async fn check_due_sessions(&self, interval: Duration) -> Result<Checked> {
        let due = store::claim_due_checks(&self.db, interval, CHECK_BATCH).await?;
        let mut found = Checked::default();
        for claimed in due {
            found.checked += 1;
            let verdict = self.check(&claimed).await;
            if let Verdict::Alive(Some(expires_at)) = verdict {
                store::set_session_expiry(&self.db, claimed.leased.row.id, expires_at).await?;
            }
            if verdict == Verdict::Ended {
                let mut tx = self.db.begin().await?;
                if let Some(row) = store::expire_checked(&mut tx, claimed.leased.row.id).await? {
                    let mut data = connection_event_data(&row, None);
                    data["reason"] = json!(REASON_SESSION_ENDED);
                    let subject = EventSubject {
                        link_id: None,
                        connection_id: Some(row.id),
                    };
                    outbox::record(
                        &mut tx,
                        claimed.tenant(),
                        "connection.expired",
                        subject,
                        data,
                    )
                    .await?;
                    found.expired += 1;
                }
                tx.commit().await?;
            }
        }
        Ok(found)
    }

    /// What the connector says of the session. A connector that does not
    /// answer leaves the connection as it is (asked again at the next
    /// round).
    async fn check(&self, claimed: &store::Claimed) -> Verdict {
        let row = &claimed.leased.row;
        let Some(provider) = self.catalog.provider(&row.integration_id) else {
            return Verdict::Unknown;
        };
        let Some(session) = self.open_session(row.id, claimed.leased.session_ciphertext.as_deref())
        else {
            return Verdict::Ended;
        };
        let ctx = super::login_context(claimed.tenant(), row, &provider);
        let Ok(connector) = self.connectors.serving(&ctx) else {
            return Verdict::Unknown;
        };
        match tokio::time::timeout(
            self.provider_timeout,
            connector.check_session(&ctx, &session),
        )
        .await
        .unwrap_or(Err(ConnectorError::ProviderUnavailable))
        {
            Ok(check) if !check.alive => Verdict::Ended,
            Ok(check) => Verdict::Alive(
                check
                    .expires_at
                    .filter(|at| Some(*at) != row.session_expires_at),
            ),
            Err(err) => {
                tracing::debug!(
                    connection_id = %row.id,
                    error_code = err.code(),
                    "connection health check got no answer; asked again next round"
                );
                Verdict::Unknown
            }
        }
    }
}

impl Connections {
    /// `ResetSandboxLogin`: ends a sandbox connection's session at the
    /// sandbox provider; the connection finds out like any other.
    pub async fn reset_sandbox_login(
        &self,
        caller: &crate::auth::Caller,
        req: crate::pb::ResetSandboxLoginRequest,
    ) -> Result<crate::pb::ResetSandboxLoginResponse> {
        let id = super::parse_connection_id(&req.connection_id)?;
        if caller.tenant.environment != crate::kernel::tenant::Environment::Sandbox {
            return Err(Error::PermissionDenied {
                reason: Reason::SandboxOnly,
                message: "ResetSandboxLogin is for sandbox keys only".into(),
            });
        }
        let held = store::get_with_session(&self.db, caller.tenant, id).await?;
        if held.row.status != super::ConnectionStatus::Active {
            return Err(super::access::session_expired());
        }
        let ended = match self.open_session(id, held.session_ciphertext.as_deref()) {
            Some(session) => crate::connectors::sandbox::end_session(&self.db, &session).await?,
            None => false,
        };
        if !ended {
            return Err(Error::FailedPrecondition {
                precondition: Precondition::WrongState,
                reason: Reason::NotSandboxSession,
                message:
                    "an external connector made this connection's session; end it at that provider"
                        .into(),
            });
        }
        Ok(crate::pb::ResetSandboxLoginResponse {
            connection_id: id.to_string(),
        })
    }
}

/// Sends `connection.expiring` once for each active connection whose
/// session ends within `warning` (again after a reconnect); returns how
/// many.
pub async fn warn_expiring(db: &Db, warning: Duration, batch: i64) -> Result<usize> {
    let mut tx = db.begin().await?;
    let warned = store::warn_expiring(&mut tx, warning, batch).await?;
    for (tenant, row) in &warned {
        let subject = EventSubject {
            link_id: None,
            connection_id: Some(row.id),
        };
        let data = connection_event_data(row, None);
        outbox::record(&mut tx, *tenant, "connection.expiring", subject, data).await?;
    }
    tx.commit().await?;
    Ok(warned.len())
}
