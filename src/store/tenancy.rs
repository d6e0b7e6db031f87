//! Organizations, client apps and API keys.

use crate::domain::client_app::NewClientApp;
use crate::kernel::error::{Error, Result};
use crate::kernel::tenant::{Environment, Tenant};
use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClientAppRow {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub environment: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub webhook_url: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl ClientAppRow {
    pub fn environment(&self) -> Environment {
        Environment::parse(&self.environment).expect("CHECK constraint limits environment")
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub environment: String,
    pub secret_hash: Vec<u8>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Columns of [`ClientAppRow`], as a macro so queries stay `&'static str`.
macro_rules! app_columns {
    () => {
        "id, organization_id, environment, name, redirect_uris, webhook_url, created_at"
    };
}

pub async fn create_organization(db: impl PgExecutor<'_>, id: Uuid, name: &str) -> Result<()> {
    sqlx::query("INSERT INTO organizations (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(name)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn organization_exists(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM organizations WHERE id = $1)")
            .bind(id)
            .fetch_one(db)
            .await?,
    )
}

pub async fn count_organizations(db: impl PgExecutor<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM organizations")
        .fetch_one(db)
        .await?)
}

pub async fn insert_client_app(
    db: impl PgExecutor<'_>,
    id: Uuid,
    tenant: Tenant,
    app: &NewClientApp,
    webhook_secret_ciphertext: &[u8],
    client_secret_hash: &[u8],
) -> Result<ClientAppRow> {
    Ok(sqlx::query_as(concat!(
        "INSERT INTO client_apps (id, organization_id, environment, name, redirect_uris, webhook_url,
             webhook_secret_ciphertext, client_secret_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
        app_columns!()
    ))
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .bind(&app.name)
    .bind(&app.redirect_uris)
    .bind(&app.webhook_url)
    .bind(webhook_secret_ciphertext)
    .bind(client_secret_hash)
    .fetch_one(db)
    .await?)
}

/// The tenant's apps, oldest first (the first is the default app).
pub async fn list_client_apps(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
) -> Result<Vec<ClientAppRow>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        app_columns!(),
        " FROM client_apps WHERE organization_id = $1 AND environment = $2 ORDER BY created_at, id"
    ))
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .fetch_all(db)
    .await?)
}

/// Every app, for operators; optionally of one organization.
pub async fn list_all_client_apps(
    db: &PgPool,
    organization_id: Option<Uuid>,
) -> Result<Vec<ClientAppRow>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        app_columns!(),
        " FROM client_apps WHERE $1::uuid IS NULL OR organization_id = $1 ORDER BY created_at, id"
    ))
    .bind(organization_id)
    .fetch_all(db)
    .await?)
}

pub async fn get_client_app(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
    id: Uuid,
) -> Result<ClientAppRow> {
    sqlx::query_as(concat!(
        "SELECT ",
        app_columns!(),
        " FROM client_apps WHERE id = $1 AND organization_id = $2 AND environment = $3"
    ))
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .fetch_optional(db)
    .await?
    .ok_or(Error::NotFound("client app"))
}

pub async fn insert_api_key(
    db: impl PgExecutor<'_>,
    id: Uuid,
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

pub async fn find_api_key(db: &PgPool, lookup_id: &str) -> Result<Option<ApiKeyRow>> {
    Ok(sqlx::query_as(
        "SELECT id, organization_id, environment, secret_hash, revoked_at FROM api_keys WHERE lookup_id = $1",
    )
    .bind(lookup_id)
    .fetch_optional(db)
    .await?)
}

/// Revokes a key; `false` when no unrevoked key has this id.
pub async fn revoke_api_key(db: &PgPool, id: Uuid) -> Result<bool> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .execute(db)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Any tenant's app by id (OAuth identifies the client by `client_id` alone).
pub async fn find_client_app(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<ClientAppRow>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        app_columns!(),
        " FROM client_apps WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// The stored hash of an app's OAuth client secret, if one was issued.
pub async fn client_secret_hash(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Vec<u8>>> {
    Ok(sqlx::query_scalar::<_, Option<Vec<u8>>>(
        "SELECT client_secret_hash FROM client_apps WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?
    .flatten())
}

/// Replaces an app's OAuth client secret hash; false when no such app.
pub async fn set_client_secret_hash(
    db: impl PgExecutor<'_>,
    id: Uuid,
    hash: &[u8],
) -> Result<bool> {
    let updated = sqlx::query("UPDATE client_apps SET client_secret_hash = $2 WHERE id = $1")
        .bind(id)
        .bind(hash)
        .execute(db)
        .await?;
    Ok(updated.rows_affected() == 1)
}
