//! Background work every replica runs; each job is safe to run in several
//! replicas at once (rows are claimed with `FOR UPDATE SKIP LOCKED`).

use crate::kernel::db::Db;
use std::time::Duration;

/// Rows expired or removed per statement.
const EXPIRY_BATCH: i64 = 500;

/// Runs `sweep` (returning how many rows it handled) until a batch comes
/// back short; logs what it did and any error.
async fn drain<F, Fut>(what: &str, mut sweep: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = crate::kernel::error::Result<u64>>,
{
    loop {
        match sweep().await {
            Ok(n) if n as i64 == EXPIRY_BATCH => continue,
            Ok(0) => break,
            Ok(n) => {
                tracing::info!(count = n, "{what}");
                break;
            }
            Err(err) => {
                err.log();
                break;
            }
        }
    }
}

/// Every `interval`: marks links and Link sessions past their lifetime
/// expired, fails links whose run was interrupted (its process died), marks
/// connections whose provider session ended `expired` and announces those
/// ending within `expiry_warning` (each with its event), removes finished
/// events older than `event_retention`, and forgets idempotency keys past
/// their retention.
pub fn spawn_expiry(
    db: Db,
    interval: Duration,
    event_retention: Duration,
    expiry_warning: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            drain("expired links", || {
                crate::links::store::expire_links(&db, None, EXPIRY_BATCH)
            })
            .await;
            drain("failed links whose run was interrupted", || {
                crate::flows::store::fail_interrupted_runs(&db, EXPIRY_BATCH)
            })
            .await;
            drain("expired Link sessions", || async {
                crate::flows::store::expire_sessions(&db, EXPIRY_BATCH)
                    .await
                    .map(|n| n as u64)
            })
            .await;
            drain("expired connections", || async {
                crate::connections::expire_sessions(&db, EXPIRY_BATCH)
                    .await
                    .map(|n| n as u64)
            })
            .await;
            drain("connections announced as expiring", || async {
                crate::connections::health::warn_expiring(&db, expiry_warning, EXPIRY_BATCH)
                    .await
                    .map(|n| n as u64)
            })
            .await;
            drain("removed finished events past their retention", || {
                crate::events::store::prune_finished(&db, event_retention, EXPIRY_BATCH)
            })
            .await;
            if let Err(err) = crate::idempotency::store::prune(&db).await {
                err.log();
            }
        }
    })
}

/// Asks connectors whether active connections' sessions are still usable,
/// each connection about once per `interval` (spread out, shared by the
/// replicas), expiring the ones that ended. Looks for due checks a hundred
/// times per interval (between every 100 ms and every minute).
pub fn spawn_connection_checks(
    connections: crate::connections::Connections,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    let pause = (interval / 100).clamp(Duration::from_millis(100), Duration::from_secs(60));
    tokio::spawn(async move {
        loop {
            match connections.check_due_sessions(interval).await {
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
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match connections.refresh_due_tokens().await {
                Ok(n) if n as i64 == crate::connections::tokens::REFRESH_BATCH => continue,
                Ok(_) => {}
                Err(err) => err.log(),
            }
            tokio::time::sleep(interval).await;
        }
    })
}
