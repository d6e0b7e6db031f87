//! Idempotency keys for creating calls (`Idempotency-Key` header,
//! `idempotency-key` metadata).
//!
//! The first request with a key claims it (row with no response yet), does
//! its work, and stores its response in the same transaction as the work. A
//! repeat with the same request gets the stored response; with another
//! request it is refused; while the first is still running it gets a
//! conflict. A claim left behind by a crashed request is taken over after
//! [`STALE_AFTER_SECS`].

use crate::crypto::Cipher;
use crate::domain::Tenant;
use crate::error::{Error, Result};
use sqlx::{PgConnection, PgExecutor, PgPool};

/// How long a key is remembered; a later request with it is a new request.
pub const RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Longest accepted key.
pub const MAX_KEY_LEN: usize = 255;
/// A claim without a response older than this belongs to a dead request.
pub const STALE_AFTER_SECS: f64 = 60.0;

pub struct IdempotencyKey<'a> {
    pub tenant: Tenant,
    pub operation: &'static str,
    pub key: &'a str,
    pub request_hash: Vec<u8>,
}

/// What to do with a request carrying a key.
pub enum Claim {
    /// First use: do the work, then [`store_response`].
    Fresh,
    /// Already done: answer with this (decrypted, encoded) response.
    Replay(Vec<u8>),
}

pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| (0x21..=0x7e).contains(&b))
    {
        return Err(Error::invalid(
            "Idempotency-Key",
            format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        ));
    }
    Ok(())
}

fn context(k: &IdempotencyKey<'_>) -> String {
    format!(
        "idempotency_keys.response:{}:{}:{}:{}",
        k.tenant.organization_id, k.tenant.environment, k.operation, k.key
    )
}

pub async fn claim(
    conn: &mut PgConnection,
    cipher: &Cipher,
    k: &IdempotencyKey<'_>,
) -> Result<Claim> {
    check_key(k.key)?;
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (organization_id, environment, operation, key, request_hash)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (organization_id, environment, operation, key) DO UPDATE
            SET request_hash = EXCLUDED.request_hash, created_at = now()
            WHERE idempotency_keys.response_ciphertext IS NULL
              AND idempotency_keys.request_hash = EXCLUDED.request_hash
              AND idempotency_keys.created_at < now() - make_interval(secs => $6)",
    )
    .bind(k.tenant.organization_id)
    .bind(k.tenant.environment.as_str())
    .bind(k.operation)
    .bind(k.key)
    .bind(&k.request_hash)
    .bind(STALE_AFTER_SECS)
    .execute(&mut *conn)
    .await?;
    if claimed.rows_affected() == 1 {
        return Ok(Claim::Fresh);
    }
    let (hash, response): (Vec<u8>, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT request_hash, response_ciphertext FROM idempotency_keys
         WHERE organization_id = $1 AND environment = $2 AND operation = $3 AND key = $4",
    )
    .bind(k.tenant.organization_id)
    .bind(k.tenant.environment.as_str())
    .bind(k.operation)
    .bind(k.key)
    .fetch_one(&mut *conn)
    .await?;
    if hash != k.request_hash {
        return Err(Error::IdempotencyMismatch);
    }
    match response {
        Some(sealed) => Ok(Claim::Replay(
            cipher
                .decrypt(&sealed, &context(k))
                .map_err(Error::Internal)?,
        )),
        None => Err(Error::Aborted {
            reason: "IDEMPOTENCY_KEY_IN_USE",
            message: "a request with this Idempotency-Key is still being processed; retry later"
                .into(),
        }),
    }
}

/// Stores the response, in the transaction that did the work.
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
    .bind(cipher.encrypt(response, &context(k)))
    .execute(tx)
    .await?;
    Ok(())
}

/// Releases a claim whose request failed, so a retry can run.
pub async fn release(db: impl PgExecutor<'_>, k: &IdempotencyKey<'_>) -> Result<()> {
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
pub async fn prune(db: &PgPool) -> Result<u64> {
    let pruned = sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
    )
    .bind(RETENTION.as_secs_f64())
    .execute(db)
    .await?;
    Ok(pruned.rows_affected())
}
