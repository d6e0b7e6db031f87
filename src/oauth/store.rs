//! Authorization codes and access tokens, stored by the hash of their
//! value.

use crate::kernel::error::Result;
use crate::kernel::ids::{ClientAppId, ConnectionId, OrganizationId};
use crate::kernel::tenant::{Environment, Tenant};
use crate::oauth::rules::AuthorizationRequest;
use sqlx::{PgConnection, PgExecutor};
use std::time::Duration;
use uuid::Uuid;

/// An authorization code as the token endpoint checks it.
#[derive(Debug, sqlx::FromRow)]
pub struct CodeRow {
    pub id: Uuid,
    pub organization_id: OrganizationId,
    pub environment: Environment,
    pub client_app_id: ClientAppId,
    pub connection_id: ConnectionId,
    pub redirect_uri: Option<String>,
    pub effective_redirect_uri: String,
    pub code_challenge: Option<String>,
    pub scope: String,
    pub expired: bool,
    pub used: bool,
}

/// Stores a code issued for a consented session, valid for `ttl`.
pub async fn insert_code(
    tx: &mut PgConnection,
    code_hash: &[u8],
    tenant: Tenant,
    client_app_id: ClientAppId,
    connection_id: ConnectionId,
    request: &AuthorizationRequest,
    ttl: Duration,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO oauth_codes (id, code_hash, organization_id, environment, client_app_id, connection_id,
             redirect_uri, effective_redirect_uri, code_challenge, scope, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => $11))",
    )
    .bind(Uuid::now_v7())
    .bind(code_hash)
    .bind(tenant.organization_id)
    .bind(tenant.environment)
    .bind(client_app_id)
    .bind(connection_id)
    .bind(&request.redirect_uri)
    .bind(&request.effective_redirect_uri)
    .bind(&request.code_challenge)
    .bind(&request.scope)
    .bind(ttl.as_secs_f64())
    .execute(tx)
    .await?;
    Ok(())
}

/// The code with this hash, locked until `tx` ends: of concurrent
/// redemptions one decides, the others see it used.
pub async fn lock_code(tx: &mut PgConnection, code_hash: &[u8]) -> Result<Option<CodeRow>> {
    Ok(sqlx::query_as(
        "SELECT id, organization_id, environment, client_app_id, connection_id, redirect_uri,
                effective_redirect_uri, code_challenge, scope, expires_at <= now() AS expired,
                used_at IS NOT NULL AS used
         FROM oauth_codes WHERE code_hash = $1 FOR UPDATE",
    )
    .bind(code_hash)
    .fetch_optional(tx)
    .await?)
}

/// Revokes every token issued for a code (it was replayed).
pub async fn revoke_tokens_of_code(tx: &mut PgConnection, code_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE oauth_tokens SET revoked_at = now() WHERE code_id = $1 AND revoked_at IS NULL",
    )
    .bind(code_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// Stores an access token for the code's connection, valid for `ttl`.
pub async fn insert_token(
    tx: &mut PgConnection,
    token_hash: &[u8],
    code: &CodeRow,
    client_app_id: ClientAppId,
    ttl: Duration,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO oauth_tokens (id, token_hash, code_id, organization_id, environment, client_app_id,
             connection_id, scope, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9))",
    )
    .bind(Uuid::now_v7())
    .bind(token_hash)
    .bind(code.id)
    .bind(code.organization_id)
    .bind(code.environment)
    .bind(client_app_id)
    .bind(code.connection_id)
    .bind(&code.scope)
    .bind(ttl.as_secs_f64())
    .execute(tx)
    .await?;
    Ok(())
}

pub async fn mark_code_used(tx: &mut PgConnection, code_id: Uuid) -> Result<()> {
    sqlx::query("UPDATE oauth_codes SET used_at = now() WHERE id = $1")
        .bind(code_id)
        .execute(tx)
        .await?;
    Ok(())
}

/// An unrevoked, unexpired token: its tenant and connection.
pub async fn live_token(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<Option<(OrganizationId, Environment, ConnectionId, ClientAppId)>> {
    Ok(sqlx::query_as(
        "SELECT organization_id, environment, connection_id, client_app_id FROM oauth_tokens
         WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?)
}
