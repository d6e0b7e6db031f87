//! Idempotency keys: a creating call run under a key answers a repeat of
//! the same request with the first response and creates nothing twice.
//! Imports the kernel only.

pub mod store;

use crate::kernel::crypto::Cipher;
use crate::kernel::db::Db;
use crate::kernel::error::{Error, Result};
use sqlx::PgConnection;
use store::{Claim, IdempotencyKey};

/// Runs creating calls under idempotency keys; responses are stored
/// encrypted.
#[derive(Debug, Clone)]
pub struct Idempotency {
    db: Db,
    cipher: Cipher,
}

impl Idempotency {
    pub fn new(db: Db, cipher: Cipher) -> Self {
        Idempotency { db, cipher }
    }

    /// Runs a creating call on one connection, under an optional
    /// idempotency key. Without a key `work` runs on the connection as it is,
    /// so its writes must be one statement. With a key, one transaction takes
    /// the key, runs `work` and stores its response (a repeat of a finished
    /// request gets that response); a failure rolls all of it back, so the
    /// client can retry at once.
    pub(crate) async fn run<R: prost::Message + Default>(
        &self,
        key: Option<IdempotencyKey<'_>>,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<R>,
    ) -> Result<R> {
        let Some(key) = key else {
            let mut conn = self.db.connection().await?;
            return match work(&mut conn).await {
                Ok(response) => {
                    conn.finish().await?;
                    Ok(response)
                }
                Err(err) => {
                    let _ = conn.abandon().await;
                    Err(err)
                }
            };
        };
        let cipher = &self.cipher;
        let mut tx = self.db.begin().await?;
        let result = async {
            if let Claim::Replay(encoded) = store::claim(&mut tx, cipher, &key).await? {
                return R::decode(encoded.as_slice()).map_err(Error::internal);
            }
            let response = work(&mut tx).await?;
            store::store_response(&mut tx, cipher, &key, &response.encode_to_vec()).await?;
            Ok(response)
        }
        .await;
        match result {
            Ok(response) => {
                tx.commit().await?;
                Ok(response)
            }
            Err(err) => {
                // At once, not when the connection is next used: the key's
                // lock and row go with the rollback. (A dead connection has
                // rolled back in the server already.)
                let _ = tx.rollback().await;
                Err(err)
            }
        }
    }

    /// Takes `key` for a call whose work calls a provider and so cannot sit
    /// in one transaction: the claim is held by a lease of `lease`. `Some`
    /// is the stored response of a finished repeat; `None` means run the
    /// call, then [`Idempotency::finish_leased`] in the transaction that
    /// records its outcome, or [`Idempotency::abandon_leased`] on failure.
    pub(crate) async fn begin_leased<R: prost::Message + Default>(
        &self,
        key: &IdempotencyKey<'_>,
        lease: std::time::Duration,
    ) -> Result<Option<R>> {
        match store::claim_leased(&self.db, &self.cipher, key, lease).await? {
            Claim::Fresh => Ok(None),
            Claim::Replay(encoded) => R::decode(encoded.as_slice())
                .map(Some)
                .map_err(Error::internal),
        }
    }

    /// Stores a leased call's response with its outcome (same `tx`).
    pub(crate) async fn finish_leased<R: prost::Message>(
        &self,
        tx: &mut PgConnection,
        key: &IdempotencyKey<'_>,
        response: &R,
    ) -> Result<()> {
        store::store_response(tx, &self.cipher, key, &response.encode_to_vec()).await
    }

    /// Gives up a leased claim whose call failed, so a retry runs at once.
    pub(crate) async fn abandon_leased(&self, key: &IdempotencyKey<'_>) {
        if let Err(err) = store::release_leased(&self.db, key).await {
            // The lease ends on its own; only the retry waits for it.
            err.log();
        }
    }
}
