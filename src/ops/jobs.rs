//! Background work every replica runs; each job is safe to run in several
//! replicas at once (rows are claimed with `FOR UPDATE SKIP LOCKED`).

use crate::api::metrics::JobMetrics;
use crate::kernel::db::Db;
use std::sync::Arc;
use std::time::Duration;

/// Rows expired or removed per statement.
const EXPIRY_BATCH: i64 = 500;

/// Runs `sweep` (returning how many rows it handled) until a batch comes
/// back short; logs what it did and any error, and records the pass as
/// `job` in the job metrics.
async fn drain<F, Fut>(jobs: &JobMetrics, job: &'static str, what: &str, mut sweep: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = crate::kernel::error::Result<u64>>,
{
    let mut rows = 0;
    loop {
        match sweep().await {
            // A full batch (or more, for sweeps of several kinds): there
            // may be more.
            Ok(n) if n as i64 >= EXPIRY_BATCH => rows += n,
            Ok(n) => {
                rows += n;
                if rows > 0 {
                    tracing::info!(count = rows, "{what}");
                }
                jobs.record(job, Ok(rows));
                return;
            }
            Err(err) => {
                err.log();
                jobs.record(job, Err(()));
                return;
            }
        }
    }
}

/// Every `interval`: marks links and Link sessions past their lifetime
/// expired, fails links whose run was interrupted (its process died), marks
/// connections whose provider session ended `expired` and announces those
/// ending within `expiry_warning` (each with its event), removes finished
/// events older than `event_retention`, forgets idempotency keys past
/// their retention, drops rate-limit buckets that are full again, and
/// deletes OAuth codes, grants and access tokens that ended.
pub fn spawn_expiry(
    db: Db,
    jobs: Arc<JobMetrics>,
    interval: Duration,
    event_retention: Duration,
    expiry_warning: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            drain(&jobs, "expire_links", "expired links", || {
                crate::links::store::expire_links(&db, None, EXPIRY_BATCH)
            })
            .await;
            drain(
                &jobs,
                "fail_interrupted_runs",
                "failed links whose run was interrupted",
                || crate::flows::store::fail_interrupted_runs(&db, EXPIRY_BATCH),
            )
            .await;
            drain(
                &jobs,
                "expire_sessions",
                "expired Link sessions",
                || async {
                    crate::flows::store::expire_sessions(&db, EXPIRY_BATCH)
                        .await
                        .map(|n| n as u64)
                },
            )
            .await;
            drain(
                &jobs,
                "expire_connections",
                "expired connections",
                || async {
                    crate::connections::expire_sessions(&db, EXPIRY_BATCH)
                        .await
                        .map(|n| n as u64)
                },
            )
            .await;
            drain(
                &jobs,
                "warn_expiring",
                "connections announced as expiring",
                || async {
                    crate::connections::health::warn_expiring(&db, expiry_warning, EXPIRY_BATCH)
                        .await
                        .map(|n| n as u64)
                },
            )
            .await;
            drain(
                &jobs,
                "prune_events",
                "removed finished events past their retention",
                || crate::events::store::prune_finished(&db, event_retention, EXPIRY_BATCH),
            )
            .await;
            drain(
                &jobs,
                "prune_idempotency_keys",
                "forgot idempotency keys past their retention",
                || crate::idempotency::store::prune(&db),
            )
            .await;
            drain(
                &jobs,
                "prune_rate_limit_buckets",
                "dropped full rate-limit buckets",
                || crate::ratelimit::store::prune_full(&db, EXPIRY_BATCH),
            )
            .await;
            drain(
                &jobs,
                "prune_oauth_grants",
                "deleted OAuth codes and grants that ended",
                || crate::oauth::store::prune_ended(&db, EXPIRY_BATCH),
            )
            .await;
            drain(
                &jobs,
                "prune_oauth_access_tokens",
                "deleted expired OAuth access tokens",
                || crate::oauth::store::prune_expired_access_tokens(&db, EXPIRY_BATCH),
            )
            .await;
        }
    })
}

/// Asks connectors whether active connections' sessions are still usable,
/// each connection about once per `interval` (spread out, shared by the
/// replicas), expiring the ones that ended. Looks for due checks a hundred
/// times per interval (between every 100 ms and every minute).
pub fn spawn_connection_checks(
    connections: crate::connections::Connections,
    jobs: Arc<JobMetrics>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    let pause = (interval / 100).clamp(Duration::from_millis(100), Duration::from_secs(60));
    tokio::spawn(async move {
        loop {
            let checked = connections.check_due_sessions(interval).await;
            jobs.record(
                "connection_checks",
                checked
                    .as_ref()
                    .map(|found| found.checked as u64)
                    .map_err(|_| ()),
            );
            match checked {
                // A full batch: more may be due at once.
                Ok(found) if found.checked as i64 == crate::connections::health::CHECK_BATCH => {
                    if found.expired > 0 {
                        tracing::info!(count = found.expired, "connections whose session ended");
                    }
                    continue;
                }
                Ok(found) => {
                    if found.expired > 0 {
                        tracing::info!(count = found.expired, "connections whose session ended");
                    }
                }
                Err(err) => err.log(),
            }
            tokio::time::sleep(pause).await;
        }
    })
}

/// Refreshes OAuth access tokens as they come due, every `interval` (at
/// once again after a full batch). Safe in several replicas at once.
pub fn spawn_token_refresher(
    connections: crate::connections::Connections,
    jobs: Arc<JobMetrics>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let refreshed = connections.refresh_due_tokens().await;
            jobs.record(
                "token_refresh",
                refreshed.as_ref().map(|n| *n as u64).map_err(|_| ()),
            );
            match refreshed {
                Ok(n) if n as i64 == crate::connections::tokens::REFRESH_BATCH => continue,
                Ok(_) => {}
                Err(err) => err.log(),
            }
            tokio::time::sleep(interval).await;
        }
    })
}
