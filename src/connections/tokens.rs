//! The access tokens of OAuth connections: when each is due for refreshing,
//! and refreshing them.
//!
//! A refresh runs inside a transaction holding the connection's advisory
//! lock across the token request, so exactly one refresh of a connection
//! runs at a time across every replica; under the lock the row is read
//! again, so a caller that waited finds the tokens another refresh just
//! stored instead of spending the (possibly rotated, single-use) refresh
//! token twice. The new access token and a rotated refresh token are saved
//! by the same `UPDATE`, in the one sealed session. Within a replica,
//! callers wanting the same connection's tokens queue on a local mutex
//! first, so twenty concurrent calls hold one database connection, not
//! twenty.
//!
//! What a failure does: `invalid_grant` (revoked or expired refresh token)
//! expires the connection with `connection.expired` (`refresh_failed`);
//! anything else (network, 5xx, 429, a refused client) is counted and
//! retried after a jittered exponential back-off that honours
//! `Retry-After`, and after [`RefreshSettings::attempts`] failures in a row
//! the connection is marked exhausted (`connection.updated`,
//! `refresh_exhausted`) and retried only rarely; the next success, or a
//! reconnect, clears it (`connection.updated`, `refresh_recovered`).

use super::store::{self, ConnectionRow};
use super::{ConnectionStatus, Connections, connection_event_data};
use crate::connectors::oauth_session::OAuthTokens;
use crate::events::outbox::{self, EventSubject};
use crate::kernel::crypto::Sealed;
use crate::kernel::error::{Error, Precondition, Reason, Result};
use crate::kernel::ids::ConnectionId;
use crate::provider_oauth::{ProviderOAuth, TokenError};
use chrono::{DateTime, Utc};
use rand::Rng as _;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long before expiry a token is refreshed: this, or half its lifetime
/// when that is shorter, less up to a tenth at random so that tokens issued
/// together are not all refreshed in the same second.
pub const REFRESH_LEAD: chrono::Duration = chrono::Duration::minutes(5);

/// When the refresher should take these tokens; `None` when they cannot be
/// refreshed (no refresh token) or never expire.
pub fn refresh_due(tokens: &OAuthTokens) -> Option<DateTime<Utc>> {
    tokens.refresh_token.as_ref()?;
    let expires_at = tokens.expires_at?;
    let lifetime = expires_at - tokens.obtained_at;
    let lead = REFRESH_LEAD.min(lifetime / 2);
    let jitter_ms = rand::rng().random_range(0..=(lead.num_milliseconds() / 10).max(0));
    Some(expires_at - lead - chrono::Duration::milliseconds(jitter_ms))
}

/// An access token expiring sooner than this (or a quarter of its lifetime,
/// when shorter) is refreshed before a call.
const EXPIRY_SKEW: chrono::Duration = chrono::Duration::seconds(30);
/// The longest back-off between two failed refreshes, and the longest
/// `Retry-After` honoured.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Connections the background refresher looks at per round, and how many
/// of them it refreshes at once.
pub const REFRESH_BATCH: i64 = 100;
const REFRESH_CONCURRENCY: usize = 4;

/// Why `connection.expired` was emitted: the provider refused the refresh
/// token (`invalid_grant`).
pub const REASON_REFRESH_FAILED: &str = "refresh_failed";
/// Why `connection.updated` was emitted: refreshing kept failing, or
/// worked again after that.
pub const REASON_REFRESH_EXHAUSTED: &str = "refresh_exhausted";
pub const REASON_REFRESH_RECOVERED: &str = "refresh_recovered";

/// How failed refreshes are retried.
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    /// The wait after the first failure; doubled with each further one (up
    /// to an hour), ±20 %.
    pub backoff: Duration,
    /// Failures in a row after which the connection is marked exhausted.
    pub attempts: u32,
    /// How often an exhausted connection is still tried in the background.
    pub exhausted_retry: Duration,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        RefreshSettings {
            backoff: Duration::from_secs(30),
            attempts: 8,
            exhausted_retry: Duration::from_secs(6 * 3600),
        }
    }
}

impl RefreshSettings {
    /// The wait after `failures` failures in a row, at least what the
    /// provider asked for.
    fn backoff_after(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(1 << failures.saturating_sub(1).min(20))
            .min(MAX_BACKOFF);
        let jittered = doubled.mul_f64(rand::rng().random_range(0.8..=1.2));
        jittered.max(retry_after.unwrap_or_default().min(MAX_BACKOFF))
    }
}

/// Refreshing OAuth connections' tokens: the provider's token endpoint,
/// how failures are retried, and this replica's queue per connection.
#[derive(Debug, Clone)]
pub struct TokenKeeper {
    pub(super) provider_oauth: ProviderOAuth,
    settings: RefreshSettings,
    turns: Arc<Mutex<HashMap<ConnectionId, Arc<tokio::sync::Mutex<()>>>>>,
    /// Refreshes run as their own tasks: a caller that goes away (a client
    /// that hangs up) must not cut one off between the provider rotating
    /// the refresh token and linkd saving the new one. Shutdown waits for
    /// them.
    tasks: tokio_util::task::TaskTracker,
}

impl TokenKeeper {
    pub fn new(provider_oauth: ProviderOAuth, settings: RefreshSettings) -> Self {
        TokenKeeper {
            provider_oauth,
            settings,
            turns: Arc::default(),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Waits (up to `grace`) for the refreshes under way; no new ones start
    /// in the background after this.
    pub async fn finish(&self, grace: Duration) {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; cutting off the token refreshes still running");
        }
    }

    /// Waits for this replica's other refreshes of connection `id`.
    async fn turn(&self, id: ConnectionId) -> Turn<'_> {
        let mutex = self
            .turns
            .lock()
            .expect("not poisoned")
            .entry(id)
            .or_default()
            .clone();
        let guard = mutex.clone().lock_owned().await;
        Turn {
            keeper: self,
            id,
            mutex,
            _guard: guard,
        }
    }
}

/// A connection's turn in this replica; the queue is forgotten when the
/// last one waiting is done.
struct Turn<'a> {
    keeper: &'a TokenKeeper,
    id: ConnectionId,
    mutex: Arc<tokio::sync::Mutex<()>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut turns = self.keeper.turns.lock().expect("not poisoned");
        // The map's reference, this one and the guard's: nobody waits.
        if Arc::strong_count(&self.mutex) <= 3 {
            turns.remove(&self.id);
        }
    }
}

/// Why tokens could not be made usable.
#[derive(Debug)]
pub enum RefreshFailure {
    /// The grant is gone (refused, or the connection is no longer
    /// `active`): reconnect.
    Ended,
    /// The token endpoint did not answer usefully; retry later.
    Unavailable,
    /// The provider refused the request for another reason (`invalid_client`,
    /// no OAuth client for the app…): the integration needs fixing.
    Refused(String),
    Failed(Error),
}

impl From<Error> for RefreshFailure {
    fn from(err: Error) -> Self {
        RefreshFailure::Failed(err)
    }
}

impl From<sqlx::Error> for RefreshFailure {
    fn from(err: sqlx::Error) -> Self {
        RefreshFailure::Failed(err.into())
    }
}

impl From<RefreshFailure> for Error {
    fn from(failure: RefreshFailure) -> Self {
        match failure {
            RefreshFailure::Ended => super::access::session_expired(),
            RefreshFailure::Unavailable => Error::ProviderUnavailable,
            RefreshFailure::Refused(code) => Error::FailedPrecondition {
                precondition: Precondition::WrongState,
                reason: Reason::RefreshFailed,
                message: format!(
                    "the provider refused to refresh the connection's access token ({code}); \
                     check the app's OAuth client for this integration"
                ),
            },
            RefreshFailure::Failed(err) => err,
        }
    }
}

/// Who wants a refresh.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// The background refresher: only when still due, and not waiting for
    /// a refresh another replica is doing.
    Due,
    /// A call that holds the tokens obtained at `seen` and needs usable
    /// ones; `rejected` when the provider just refused that access token.
    Call { seen: DateTime<Utc>, rejected: bool },
}

/// What one refresh attempt came to.
#[derive(Debug)]
enum Refreshed {
    Usable(OAuthTokens),
    /// Background only: not due any more, or another replica holds it.
    Skipped,
    /// Background only: failed for now (counted and rescheduled).
    Failed,
}

fn usable_until(tokens: &OAuthTokens, at: DateTime<Utc>) -> bool {
    tokens.expires_at.is_none_or(|expires| expires > at)
}

/// Whether the access token has a while to live for a call starting now.
fn lasts_for_a_call(tokens: &OAuthTokens, now: DateTime<Utc>) -> bool {
    let skew = tokens.expires_at.map_or(EXPIRY_SKEW, |expires| {
        EXPIRY_SKEW.min((expires - tokens.obtained_at) / 4)
    });
    usable_until(tokens, now + skew)
}

impl Connections {
    /// Waits (up to `grace`) for the token refreshes under way.
    pub async fn finish_refreshes(&self, grace: Duration) {
        self.tokens.finish(grace).await;
    }

    /// Tokens of `row` fit to call the provider with: `current` while its
    /// access token has a while to live and the provider has not just
    /// `rejected` it, refreshed otherwise (once, however many calls want it
    /// at the same time).
    pub(super) async fn usable_tokens(
        &self,
        row: &ConnectionRow,
        current: OAuthTokens,
        rejected: bool,
    ) -> Result<OAuthTokens, RefreshFailure> {
        if !rejected && lasts_for_a_call(&current, Utc::now()) {
            return Ok(current);
        }
        if current.refresh_token.is_none() {
            return if rejected || !usable_until(&current, Utc::now()) {
                Err(RefreshFailure::Ended)
            } else {
                Ok(current)
            };
        }
        let _turn = self.tokens.turn(row.id).await;
        let trigger = Trigger::Call {
            seen: current.obtained_at,
            rejected,
        };
        match self.refresh_to_completion(row, trigger).await? {
            Refreshed::Usable(tokens) => Ok(tokens),
            Refreshed::Skipped | Refreshed::Failed => Err(RefreshFailure::Unavailable),
        }
    }

    /// Refreshes the tokens due for it, up to [`REFRESH_BATCH`]; returns
    /// how many were looked at. Safe in several replicas at once.
    pub async fn refresh_due_tokens(&self) -> Result<usize> {
        use futures_util::StreamExt as _;
        if self.tokens.tasks.is_closed() {
            return Ok(0);
        }
        let due = store::due_refreshes(&self.db, REFRESH_BATCH).await?;
        let count = due.len();
        let mut rounds = futures_util::stream::iter(due)
            .map(|row| async move {
                let _turn = self.tokens.turn(row.id).await;
                (row.id, self.refresh_to_completion(&row, Trigger::Due).await)
            })
            .buffer_unordered(REFRESH_CONCURRENCY);
        while let Some((id, outcome)) = rounds.next().await {
            match outcome {
                Ok(_) | Err(RefreshFailure::Ended) => {}
                Err(RefreshFailure::Failed(err)) => err.log(),
                Err(other) => tracing::debug!(connection_id = %id, ?other, "refresh failed"),
            }
        }
        Ok(count)
    }

    /// [`Self::refresh`] as a task of its own, which runs to the end
    /// whether or not the caller waits for it.
    async fn refresh_to_completion(
        &self,
        row: &ConnectionRow,
        trigger: Trigger,
    ) -> Result<Refreshed, RefreshFailure> {
        let (this, row) = (self.clone(), row.clone());
        self.tokens
            .tasks
            .spawn(async move { this.refresh(&row, trigger).await })
            .await
            .map_err(|err| RefreshFailure::Failed(Error::internal(err)))?
    }

    /// One refresh of `row`'s tokens under its lock, and what it leads to.
    async fn refresh(
        &self,
        row: &ConnectionRow,
        trigger: Trigger,
    ) -> Result<Refreshed, RefreshFailure> {
        let provider = self
            .catalog
            .provider(&row.integration_id)
            .filter(|p| p.oauth2.is_some())
            .ok_or_else(|| {
                Error::internal(anyhow::anyhow!(
                    "{} is no longer an OAuth integration of the catalog",
                    row.integration_id
                ))
            })?;
        let oauth = &self.tokens.provider_oauth;
        let client = oauth.client(row.client_app_id, &provider).await?;

        let mut tx = self.db.begin().await?;
        let waits = matches!(trigger, Trigger::Call { .. });
        if !store::lock_for_refresh(&mut tx, row.id, waits).await? {
            return Ok(Refreshed::Skipped);
        }
        let background = matches!(trigger, Trigger::Due);
        let ended = || {
            if background {
                Ok(Refreshed::Skipped)
            } else {
                Err(RefreshFailure::Ended)
            }
        };
        let Some(locked) = store::get_for_refresh(&mut tx, row.id).await? else {
            return ended();
        };
        if locked.leased.row.status != ConnectionStatus::Active {
            return ended();
        }
        let Some(tokens) = self
            .open_session(row.id, locked.leased.session_ciphertext.as_deref())
            .as_ref()
            .and_then(OAuthTokens::from_session)
        else {
            return ended();
        };
        let state = &locked.leased.row.token;
        let now = Utc::now();
        match trigger {
            Trigger::Due if state.refresh_due_at.is_none_or(|due| due > now) => {
                return Ok(Refreshed::Skipped);
            }
            Trigger::Due => {}
            Trigger::Call { seen, rejected } => {
                // Another refresh got there first.
                if tokens.obtained_at != seen {
                    return Ok(Refreshed::Usable(tokens));
                }
                if !rejected && lasts_for_a_call(&tokens, now) {
                    return Ok(Refreshed::Usable(tokens));
                }
                if state.refresh_not_before.is_some_and(|at| at > now) {
                    return if !rejected && usable_until(&tokens, now) {
                        Ok(Refreshed::Usable(tokens))
                    } else {
                        Err(RefreshFailure::Unavailable)
                    };
                }
            }
        }

        let outcome = match &client {
            Some(client) => oauth.refresh(&provider, client, &tokens).await,
            None => Err(TokenError::Rejected("oauth_client_missing".into())),
        };
        let tenant = locked.tenant();
        let subject = EventSubject {
            link_id: None,
            connection_id: Some(row.id),
        };
        match outcome {
            Ok(fresh) => {
                let times = token_times(&fresh);
                let session = fresh.clone().into_session();
                let plain = serde_json::to_vec(&session).map_err(Error::internal)?;
                let sealed = self
                    .cipher
                    .encrypt(&plain, Sealed::ConnectionSession(row.id));
                let saved =
                    store::save_refreshed(&mut tx, row.id, &sealed, session.expires_at, times)
                        .await?;
                if let Some(saved) = saved
                    && state.refresh_exhausted_at.is_some()
                {
                    let mut data = connection_event_data(&saved, None);
                    data["reason"] = json!(REASON_REFRESH_RECOVERED);
                    outbox::record(&mut tx, tenant, "connection.updated", subject, data).await?;
                }
                tx.commit().await?;
                Ok(Refreshed::Usable(fresh))
            }
            Err(TokenError::InvalidGrant) => {
                let code = TokenError::InvalidGrant.code();
                if let Some(expired) = store::expire_refused_grant(&mut tx, row.id, code).await? {
                    let mut data = connection_event_data(&expired, None);
                    data["reason"] = json!(REASON_REFRESH_FAILED);
                    outbox::record(&mut tx, tenant, "connection.expired", subject, data).await?;
                }
                tx.commit().await?;
                tracing::info!(
                    connection_id = %row.id,
                    "the provider refused the refresh token; the connection expired"
                );
                Err(RefreshFailure::Ended)
            }
            Err(err) => {
                let settings = &self.tokens.settings;
                let failures = u32::try_from(state.refresh_failures).unwrap_or(0) + 1;
                let retry_after = match &err {
                    TokenError::Unavailable { retry_after } => *retry_after,
                    _ => None,
                };
                let wait = settings.backoff_after(failures, retry_after);
                let exhausted = failures >= settings.attempts;
                let not_before = now + wait;
                let due_at = if exhausted {
                    now + settings.exhausted_retry.max(wait)
                } else {
                    not_before
                };
                let recorded = store::record_refresh_failure(
                    &mut tx,
                    row.id,
                    err.code(),
                    not_before,
                    due_at,
                    exhausted,
                )
                .await?;
                if let Some(recorded) = recorded
                    && exhausted
                    && state.refresh_exhausted_at.is_none()
                {
                    let mut data = connection_event_data(&recorded, None);
                    data["reason"] = json!(REASON_REFRESH_EXHAUSTED);
                    outbox::record(&mut tx, tenant, "connection.updated", subject, data).await?;
                }
                tx.commit().await?;
                tracing::warn!(
                    connection_id = %row.id,
                    error_code = err.code(),
                    failures,
                    retry_in_ms = wait.as_millis() as u64,
                    exhausted,
                    "refreshing the access token failed"
                );
                match (trigger, err) {
                    (Trigger::Due, _) => Ok(Refreshed::Failed),
                    (
                        Trigger::Call {
                            rejected: false, ..
                        },
                        _,
                    ) if usable_until(&tokens, now) => Ok(Refreshed::Usable(tokens)),
                    (_, TokenError::Rejected(code)) => Err(RefreshFailure::Refused(code)),
                    _ => Err(RefreshFailure::Unavailable),
                }
            }
        }
    }
}

/// The stored times of a connection's tokens.
pub fn token_times(tokens: &OAuthTokens) -> super::store::TokenTimes {
    super::store::TokenTimes {
        obtained_at: Some(tokens.obtained_at),
        expires_at: tokens.expires_at,
        refresh_due_at: refresh_due(tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(lifetime_secs: i64, refresh: bool) -> OAuthTokens {
        let now = Utc::now();
        OAuthTokens {
            access_token: "a".into(),
            token_type: "Bearer".into(),
            refresh_token: refresh.then(|| "r".into()),
            scope: None,
            expires_at: Some(now + chrono::Duration::seconds(lifetime_secs)),
            refresh_expires_at: None,
            obtained_at: now,
        }
    }

    #[test]
    fn failed_refreshes_back_off_doubling_to_an_hour_and_honour_retry_after() {
        let settings = RefreshSettings {
            backoff: Duration::from_secs(10),
            ..RefreshSettings::default()
        };
        let within = |d: Duration, secs: f64| (secs * 0.8..=secs * 1.2).contains(&d.as_secs_f64());
        assert!(within(settings.backoff_after(1, None), 10.0));
        assert!(within(settings.backoff_after(3, None), 40.0));
        assert!(within(settings.backoff_after(30, None), 3600.0));
        let asked = settings.backoff_after(1, Some(Duration::from_secs(120)));
        assert_eq!(asked, Duration::from_secs(120));
        let too_long = settings.backoff_after(1, Some(Duration::from_secs(86_400)));
        assert_eq!(
            too_long, MAX_BACKOFF,
            "a Retry-After past an hour is capped"
        );
    }

    #[test]
    fn refreshed_ahead_of_expiry_spread_a_little() {
        let hour = tokens(3600, true);
        let due = refresh_due(&hour).unwrap();
        let ahead = hour.expires_at.unwrap() - due;
        assert!(
            ahead >= REFRESH_LEAD && ahead <= REFRESH_LEAD + REFRESH_LEAD / 10,
            "{ahead}"
        );
        // A short-lived token: half its lifetime ahead.
        let short = tokens(60, true);
        let ahead = short.expires_at.unwrap() - refresh_due(&short).unwrap();
        assert!(ahead >= chrono::Duration::seconds(30) && ahead <= chrono::Duration::seconds(33));
        assert_eq!(refresh_due(&tokens(60, false)), None);
    }
}
