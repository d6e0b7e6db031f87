//! API keys: stored by lookup id with the hash of their secret.

use crate::kernel::db::Db;
use crate::kernel::error::Result;
use crate::kernel::ids::{ApiKeyId, OrganizationId};
use crate::kernel::tenant::Tenant;
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: ApiKeyId,
    pub organization_id: OrganizationId,
    pub environment: String,
    pub secret_hash: Vec<u8>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub async fn insert_api_key(
    db: impl PgExecutor<'_>,
    id: ApiKeyId,
    tenant: Tenant,
    lookup_id: &str,
    secret_hash: &[u8],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, organization_id, environment, lookup_id, secret_hash) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .bind(lookup_id)
    .bind(secret_hash)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn find_api_key(db: &Db, lookup_id: &str) -> Result<Option<ApiKeyRow>> {
    Ok(sqlx::query_as(
        "SELECT id, organization_id, environment, secret_hash, revoked_at FROM api_keys WHERE lookup_id = $1",
    )
    .bind(lookup_id)
    .fetch_optional(db)
    .await?)
}

/// Revokes a key; `false` when no unrevoked key has this id.
pub async fn revoke_api_key(db: &Db, id: ApiKeyId) -> Result<bool> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .execute(db)
            .await?;
    Ok(done.rows_affected() == 1)
}
