//! Background work every replica runs; each job is safe to run in several
//! replicas at once.

use sqlx::PgPool;
use std::time::Duration;

/// Links expired per statement.
const EXPIRY_BATCH: i64 = 500;

/// Every `interval`: marks links past their expiry `expired` (with their
/// `link.expired` events) and forgets idempotency keys past their retention.
pub fn spawn_link_expiry(db: PgPool, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            loop {
                match crate::store::links::expire_links(&db, None, EXPIRY_BATCH).await {
                    Ok(n) if n as i64 == EXPIRY_BATCH => continue,
                    Ok(0) => break,
                    Ok(n) => {
                        tracing::info!(expired = n, "expired links");
                        break;
                    }
                    Err(err) => {
                        err.log();
                        break;
                    }
                }
            }
            if let Err(err) = crate::store::idempotency::prune(&db).await {
                err.log();
            }
        }
    })
}
