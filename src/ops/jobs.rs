//! Background work every replica runs; each job is safe to run in several
//! replicas at once (rows are claimed with `FOR UPDATE SKIP LOCKED`).

use sqlx::PgPool;
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
/// expired, fails links whose run was interrupted (its process died), marks connections whose provider session ended `expired` (each
/// with its event), removes finished events older than `event_retention`,
/// and forgets idempotency keys past their retention.
pub fn spawn_expiry(
    db: PgPool,
    interval: Duration,
    event_retention: Duration,
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
