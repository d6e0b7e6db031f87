//! Idempotency keys for creating calls (`Idempotency-Key` header,
//! `idempotency-key` metadata).
//!
//! A request with a key takes it inside the transaction that does its
//! work: a transaction-scoped advisory lock on the key (so a concurrent
//! duplicate is told at once that the first is still running), then the
//! key's row, written with the work and its response in that same
//! transaction. A repeat with the same request gets the stored response;
//! with another request it is refused. Nothing outlives a failure: a failed
//! request, a dropped connection or a database outage rolls back the row
//! and releases the lock together, so the retry runs at once.

use crate::kernel::crypto::{Cipher, Sealed};
use crate::kernel::db::Db;
use crate::kernel::error::{Error, Reason, Result};
use crate::kernel::tenant::Tenant;
use sqlx::PgConnection;

/// How long a key is remembered; a later request with it is a new request.
pub const RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Longest accepted key.
pub const MAX_KEY_LEN: usize = 255;

pub struct IdempotencyKey<'a> {
    pub tenant: Tenant,
    pub operation: &'static str,
    pub key: &'a str,
    pub request_hash: Vec<u8>,
}

/// What to do with a request carrying a key.
pub enum Claim {
    /// First use: do the work in this transaction, then [`store_response`].
    Fresh,
    /// Already done: answer with this (decrypted, encoded) response.
    Replay(Vec<u8>),
}

/// The key as sent (header or metadata value), checked: 1 to
/// [`MAX_KEY_LEN`] visible ASCII characters.
pub fn read_key(value: &[u8]) -> Result<String> {
    if value.is_empty()
        || value.len() > MAX_KEY_LEN
        || !value.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return Err(Error::invalid(
            "Idempotency-Key",
            format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        ));
    }
    Ok(String::from_utf8_lossy(value).into_owned())
}

fn in_use() -> Error {
    Error::Aborted {
        reason: Reason::IdempotencyKeyInUse,
        message: "a request with this Idempotency-Key is still being processed; retry later".into(),
    }
}

fn response_seal<'k>(k: &IdempotencyKey<'k>) -> Sealed<'k> {
    Sealed::IdempotentResponse {
        tenant: k.tenant,
        operation: k.operation,
        key: k.key,
    }
}

/// Takes the key for the transaction `tx`, or says it is taken: `Fresh`
/// (this transaction now owns it), `Replay` of a finished request,
/// `IDEMPOTENCY_KEY_REUSED` for a different request, or
/// `IDEMPOTENCY_KEY_IN_USE` while another transaction holds it.
pub async fn claim(
    tx: &mut PgConnection,
    cipher: &Cipher,
    k: &IdempotencyKey<'_>,
) -> Result<Claim> {
    // The lock is taken before the insert looks for a committed row, so a
    // request that finished a moment ago is always seen. A row without a
    // response is a claim of an older linkd that never finished: taken over.
    let (held, inserted): (bool, bool) = sqlx::query_as(
        "WITH lock AS (
             SELECT pg_try_advisory_xact_lock(hashtextextended(
                 $1::text || '/' || $2 || '/' || $3 || '/' || $4, 0)) AS held
         ), inserted AS (
             INSERT INTO idempotency_keys (organization_id, environment, operation, key, request_hash)
             SELECT $1, $2, $3, $4, $5 FROM lock WHERE held
             ON CONFLICT (organization_id, environment, operation, key) DO UPDATE
                 SET request_hash = EXCLUDED.request_hash, created_at = now()
                 WHERE idempotency_keys.response_ciphertext IS NULL
                   AND (idempotency_keys.lease_until IS NULL OR idempotency_keys.lease_until < now())
             RETURNING 1
         )
         SELECT held, EXISTS (SELECT 1 FROM inserted) FROM lock",
    )
    .bind(k.tenant.organization_id)
    .bind(k.tenant.environment.as_str())
    .bind(k.operation)
    .bind(k.key)
    .bind(&k.request_hash)
    .fetch_one(&mut *tx)
    .await?;
    if !held {
        return Err(in_use());
    }
    if inserted {
        return Ok(Claim::Fresh);
    }
    match stored(&mut *tx, k).await? {
        (hash, _) if hash != k.request_hash => Err(Error::IdempotencyMismatch),
        (_, Some(sealed)) => replay(cipher, k, &sealed),
        (_, None) => Err(Error::internal(anyhow::anyhow!(
            "an idempotency key held by this transaction has no response"
        ))),
    }
}

/// The key's row as it stands: the request hash and the sealed response
/// (`None` while the first request runs).
async fn stored(
    db: impl sqlx::PgExecutor<'_>,
    k: &IdempotencyKey<'_>,
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    Ok(sqlx::query_as(
        "SELECT request_hash, response_ciphertext FROM idempotency_keys
         WHERE organization_id = $1 AND environment = $2 AND operation = $3 AND key = $4",
    )
    .bind(k.tenant.organization_id)
    .bind(k.tenant.environment.as_str())
    .bind(k.operation)
    .bind(k.key)
    .fetch_one(db)
    .await?)
}

fn replay(cipher: &Cipher, k: &IdempotencyKey<'_>, sealed: &[u8]) -> Result<Claim> {
    Ok(Claim::Replay(
        cipher
            .decrypt(sealed, response_seal(k))
            .map_err(Error::Internal)?,
    ))
}

/// Stores the response, in the transaction that did the work (or that
/// records a leased call's outcome).
pub async fn store_response(
    tx: &mut PgConnection,
    cipher: &Cipher,
    k: &IdempotencyKey<'_>,
    response: &[u8],
) -> Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET response_ciphertext = $5
         WHERE organization_id = $1 AND environment = $2 AND operation = $3 AND key = $4",
    )
    .bind(k.tenant.organization_id)
    .bind(k.tenant.environment.as_str())
    .bind(k.operation)
    .bind(k.key)
    .bind(cipher.encrypt(response, response_seal(k)))
    .execute(tx)
    .await?;
    Ok(())
}

/// Takes the key for a call whose work cannot sit in one transaction (it
/// calls a provider): the claim is committed at once and held by a lease,
/// so a repeat meanwhile is told the first is still running
/// (`IDEMPOTENCY_KEY_IN_USE`), and a claim whose process died is taken over
/// once its lease ends. Finish with [`store_response`] (on any connection)
/// or [`release_leased`].
pub async fn claim_leased(
    db: &Db,
    cipher: &Cipher,
    k: &IdempotencyKey<'_>,
    lease: std::time::Duration,
) -> Result<Claim> {
    let taken: bool = sqlx::query_scalar(
        "WITH taken AS (
             INSERT INTO idempotency_keys (organization_id, environment, operation, key, request_hash, lease_until)
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
             ON CONFLICT (organization_id, environment, operation, key) DO UPDATE
                 SET request_hash = EXCLUDED.request_hash, created_at = now(),
                     lease_until = EXCLUDED.lease_until
                 WHERE idempotency_keys.response_ciphertext IS NULL
                   AND (idempotency_keys.lease_until IS NULL OR idempotency_keys.lease_until < now())
             RETURNING 1
         )
         SELECT EXISTS (SELECT 1 FROM taken)",
    )
    .bind(k.tenant.organization_id)
    .bind(k.tenant.environment.as_str())
    .bind(k.operation)
    .bind(k.key)
    .bind(&k.request_hash)
    .bind(lease.as_secs_f64())
    .fetch_one(db)
    .await?;
    if taken {
        return Ok(Claim::Fresh);
    }
    match stored(db, k).await? {
        (hash, _) if hash != k.request_hash => Err(Error::IdempotencyMismatch),
        (_, Some(sealed)) => replay(cipher, k, &sealed),
        (_, None) => Err(in_use()),
    }
}

/// Gives up a leased claim whose call failed, so a retry runs at once.
pub async fn release_leased(db: &Db, k: &IdempotencyKey<'_>) -> Result<()> {
    sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE organization_id = $1 AND environment = $2 AND operation = $3 AND key = $4
           AND response_ciphertext IS NULL",
    )
    .bind(k.tenant.organization_id)
    .bind(k.tenant.environment.as_str())
    .bind(k.operation)
    .bind(k.key)
    .execute(db)
    .await?;
    Ok(())
}

/// Forgets keys older than [`RETENTION`]; returns how many.
pub async fn prune(db: &Db) -> Result<u64> {
    let pruned = sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
    )
    .bind(RETENTION.as_secs_f64())
    .execute(db)
    .await?;
    Ok(pruned.rows_affected())
}
