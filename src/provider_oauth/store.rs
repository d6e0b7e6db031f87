//! SQL of the apps' OAuth clients at providers.

use crate::kernel::error::Result;
use crate::kernel::ids::ClientAppId;
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

#[derive(Debug, sqlx::FromRow)]
pub struct ClientRow {
    pub integration_id: String,
    pub client_id: String,
    pub secret_ciphertext: Vec<u8>,
    pub scopes: Option<Vec<String>>,
    pub updated_at: DateTime<Utc>,
}

pub struct NewClient<'a> {
    pub app: ClientAppId,
    pub integration_id: &'a str,
    pub client_id: &'a str,
    pub secret_ciphertext: &'a [u8],
    pub scopes: Option<&'a [String]>,
}

pub async fn upsert(db: impl PgExecutor<'_>, new: &NewClient<'_>) -> Result<ClientRow> {
    Ok(sqlx::query_as(
        "INSERT INTO provider_oauth_clients
             (client_app_id, integration_id, client_id, secret_ciphertext, scopes)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (client_app_id, integration_id) DO UPDATE
             SET client_id = EXCLUDED.client_id, secret_ciphertext = EXCLUDED.secret_ciphertext,
                 scopes = EXCLUDED.scopes, updated_at = now()
         RETURNING integration_id, client_id, secret_ciphertext, scopes, updated_at",
    )
    .bind(new.app)
    .bind(new.integration_id)
    .bind(new.client_id)
    .bind(new.secret_ciphertext)
    .bind(new.scopes)
    .fetch_one(db)
    .await?)
}

pub async fn get(
    db: impl PgExecutor<'_>,
    app: ClientAppId,
    integration_id: &str,
) -> Result<Option<ClientRow>> {
    Ok(sqlx::query_as(
        "SELECT integration_id, client_id, secret_ciphertext, scopes, updated_at
         FROM provider_oauth_clients WHERE client_app_id = $1 AND integration_id = $2",
    )
    .bind(app)
    .bind(integration_id)
    .fetch_optional(db)
    .await?)
}

pub async fn list(db: impl PgExecutor<'_>, app: ClientAppId) -> Result<Vec<ClientRow>> {
    Ok(sqlx::query_as(
        "SELECT integration_id, client_id, secret_ciphertext, scopes, updated_at
         FROM provider_oauth_clients WHERE client_app_id = $1 ORDER BY integration_id",
    )
    .bind(app)
    .fetch_all(db)
    .await?)
}

pub async fn delete(
    db: impl PgExecutor<'_>,
    app: ClientAppId,
    integration_id: &str,
) -> Result<bool> {
    Ok(sqlx::query(
        "DELETE FROM provider_oauth_clients WHERE client_app_id = $1 AND integration_id = $2",
    )
    .bind(app)
    .bind(integration_id)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}
