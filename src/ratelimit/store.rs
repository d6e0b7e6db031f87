//! The shared buckets: one row per API key or client app, leased from in
//! chunks by one conditional upsert.

use super::Policy;
use crate::kernel::db::Db;
use crate::kernel::error::Result;
use crate::kernel::ids::ClientAppId;

/// A lease takes this fraction of the bucket (rounded up, at least one
/// token): the most a replica can hold unspent, so it bounds both how many
/// tokens sit idle on one replica while another is refused and how many
/// round trips a busy key costs (one per chunk).
pub const CHUNK_DIVISOR: f64 = 10.0;

/// What one lease got.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    /// Tokens taken (0: the bucket holds less than one).
    pub granted: u32,
    /// Tokens left in the bucket after the lease.
    pub left: f64,
    /// The policy the bucket was refilled under (the client app's own, or
    /// the default passed in).
    pub policy: Policy,
}

/// Takes up to one chunk from the bucket `key`, refilled first under the
/// app's own policy when `app` has one, else `default`. The row lock of the
/// upsert orders concurrent leases from every replica, each computed from
/// the state the previous one left, so together they never take more than
/// the bucket holds.
pub async fn lease(db: &Db, key: &str, default: Policy, app: Option<ClientAppId>) -> Result<Lease> {
    let (granted, left, rate, burst): (i32, f64, f64, f64) = sqlx::query_as(
        "WITH policy AS (
             SELECT COALESCE(a.rate_limit_per_second, $2) AS rate,
                    COALESCE(a.rate_limit_burst::double precision, $3) AS burst
             FROM (VALUES (1)) AS one (x) LEFT JOIN client_apps a ON a.id = $4::uuid
         )
         INSERT INTO rate_limit_buckets AS b (key, rate, burst, tokens, granted, refilled_at)
         SELECT $1, rate, burst,
                burst - GREATEST(1, CEIL(burst / $5)), GREATEST(1, CEIL(burst / $5)), now()
         FROM policy
         ON CONFLICT (key) DO UPDATE SET
             rate = EXCLUDED.rate,
             burst = EXCLUDED.burst,
             -- EXCLUDED.granted is the chunk wanted; SET reads the old row.
             granted = LEAST(EXCLUDED.granted,
                 FLOOR(rate_limit_refilled(b.tokens, b.refilled_at, EXCLUDED.rate, EXCLUDED.burst))),
             tokens = rate_limit_refilled(b.tokens, b.refilled_at, EXCLUDED.rate, EXCLUDED.burst)
                 - LEAST(EXCLUDED.granted,
                     FLOOR(rate_limit_refilled(b.tokens, b.refilled_at, EXCLUDED.rate, EXCLUDED.burst))),
             refilled_at = GREATEST(b.refilled_at, now())
         RETURNING granted, tokens, rate, burst",
    )
    .bind(key)
    .bind(default.per_second)
    .bind(f64::from(default.burst))
    .bind(app.map(ClientAppId::uuid))
    .bind(CHUNK_DIVISOR)
    .fetch_one(db)
    .await?;
    Ok(Lease {
        granted: granted.max(0) as u32,
        left,
        policy: Policy {
            per_second: rate,
            burst: burst as u32,
        },
    })
}

/// Sets or clears (`None`) a client app's own policy; `false` when there is
/// no such app.
pub async fn set_client_app_policy(
    db: &Db,
    app: ClientAppId,
    policy: Option<Policy>,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE client_apps SET rate_limit_per_second = $2, rate_limit_burst = $3 WHERE id = $1",
    )
    .bind(app)
    .bind(policy.map(|p| p.per_second))
    .bind(policy.map(|p| p.burst as i32))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Drops up to `batch` buckets that have refilled completely since their
/// last lease: a full bucket is the same as no row (the next lease starts
/// one full).
pub async fn prune_full(db: &Db, batch: i64) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM rate_limit_buckets WHERE key IN (
             SELECT key FROM rate_limit_buckets
             WHERE rate_limit_refilled(tokens, refilled_at, rate, burst) >= burst
             LIMIT $1
         )",
    )
    .bind(batch)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
