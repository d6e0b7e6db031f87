//! Authorization codes, grants, and access and refresh tokens, stored by
//! the hash of their value.

use crate::kernel::error::Result;
use crate::kernel::ids::{ClientAppId, ConnectionId, OrganizationId};
use crate::kernel::tenant::{Environment, Tenant};
use crate::oauth::rules::AuthorizationRequest;
use chrono::{DateTime, Utc};
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

/// Revokes the grant a code made (the code was replayed): every token of
/// it stops working.
pub async fn revoke_grant_of_code(tx: &mut PgConnection, code_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE oauth_grants SET revoked_at = now() WHERE code_id = $1 AND revoked_at IS NULL",
    )
    .bind(code_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// Revokes a grant: every access and refresh token of it.
pub async fn revoke_grant(db: impl PgExecutor<'_>, grant_id: Uuid) -> Result<()> {
    sqlx::query("UPDATE oauth_grants SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(grant_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Revokes one access token.
pub async fn revoke_token(db: impl PgExecutor<'_>, token_id: Uuid) -> Result<()> {
    sqlx::query("UPDATE oauth_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(token_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Makes the grant of a code being redeemed; its refresh tokens end
/// `refresh_ttl` from now (`None`: it gets none). Returns its id.
pub async fn insert_grant(
    tx: &mut PgConnection,
    code: &CodeRow,
    refresh_ttl: Option<Duration>,
) -> Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO oauth_grants (id, code_id, organization_id, environment, client_app_id,
             connection_id, scope, refresh_expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8))",
    )
    .bind(id)
    .bind(code.id)
    .bind(code.organization_id)
    .bind(code.environment)
    .bind(code.client_app_id)
    .bind(code.connection_id)
    .bind(&code.scope)
    .bind(refresh_ttl.map(|ttl| ttl.as_secs_f64()))
    .execute(tx)
    .await?;
    Ok(id)
}

/// Tokens to store for a grant, by the hash of their values.
#[derive(Debug)]
pub struct NewTokens<'a> {
    pub grant_id: Uuid,
    pub scope: &'a str,
    pub access_hash: &'a [u8],
    pub access_ttl: Duration,
    /// Lives as long as the grant's refresh tokens do.
    pub refresh_hash: Option<&'a [u8]>,
}

/// Stores an access token (with `scope`), and the refresh token when there
/// is one (with the grant's scope, RFC 6749 §6), in one statement.
pub async fn insert_tokens(tx: &mut PgConnection, tokens: &NewTokens<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO oauth_tokens (id, token_hash, code_id, grant_id, organization_id, environment,
             client_app_id, connection_id, scope, kind, expires_at)
         SELECT $2, $3, g.code_id, g.id, g.organization_id, g.environment, g.client_app_id,
                g.connection_id, $4, 'access', now() + make_interval(secs => $5)
         FROM oauth_grants g WHERE g.id = $1
         UNION ALL
         SELECT $6, $7, g.code_id, g.id, g.organization_id, g.environment, g.client_app_id,
                g.connection_id, g.scope, 'refresh', g.refresh_expires_at
         FROM oauth_grants g WHERE g.id = $1 AND $7::bytea IS NOT NULL",
    )
    .bind(tokens.grant_id)
    .bind(Uuid::now_v7())
    .bind(tokens.access_hash)
    .bind(tokens.scope)
    .bind(tokens.access_ttl.as_secs_f64())
    .bind(Uuid::now_v7())
    .bind(tokens.refresh_hash)
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

/// The grant a refresh token was exchanged from.
#[derive(Debug, sqlx::FromRow)]
pub struct Exchanged {
    pub grant_id: Uuid,
    pub connection_id: ConnectionId,
    /// The grant's scopes (a refresh may narrow them).
    pub grant_scope: String,
}

/// Retires a live refresh token of `client` (its one use): exactly one of
/// concurrent uses gets the grant, the others `None` (the row lock makes
/// them wait, then see it used).
pub async fn use_refresh_token(
    tx: &mut PgConnection,
    token_hash: &[u8],
    client: ClientAppId,
) -> Result<Option<Exchanged>> {
    Ok(sqlx::query_as(
        "UPDATE oauth_tokens t SET used_at = now()
         FROM oauth_grants g
         WHERE t.token_hash = $1 AND t.kind = 'refresh' AND t.client_app_id = $2
           AND g.id = t.grant_id AND t.used_at IS NULL AND t.revoked_at IS NULL
           AND t.expires_at > now() AND g.revoked_at IS NULL
         RETURNING g.id AS grant_id, g.connection_id, g.scope AS grant_scope",
    )
    .bind(token_hash)
    .bind(client)
    .fetch_optional(tx)
    .await?)
}

/// A stored token, whatever its state.
#[derive(Debug, sqlx::FromRow)]
pub struct TokenRow {
    pub id: Uuid,
    pub grant_id: Uuid,
    pub client_app_id: ClientAppId,
    pub connection_id: ConnectionId,
    /// `access` or `refresh`.
    pub kind: String,
    pub scope: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Usable now: neither it nor its grant revoked, not expired, and (a
    /// refresh token) not used.
    pub active: bool,
    /// A refresh token that was already exchanged.
    pub used: bool,
}

/// The token with this hash, live or not.
pub async fn find_token(db: impl PgExecutor<'_>, token_hash: &[u8]) -> Result<Option<TokenRow>> {
    Ok(sqlx::query_as(
        "SELECT t.id, t.grant_id, t.client_app_id, t.connection_id, t.kind, t.scope, t.created_at,
                t.expires_at, t.used_at IS NOT NULL AS used,
                (t.revoked_at IS NULL AND g.revoked_at IS NULL AND t.expires_at > now()
                 AND t.used_at IS NULL) AS active
         FROM oauth_tokens t JOIN oauth_grants g ON g.id = t.grant_id
         WHERE t.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?)
}

/// A live access token: its tenant, connection and client.
pub async fn live_token(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<Option<(OrganizationId, Environment, ConnectionId, ClientAppId)>> {
    Ok(sqlx::query_as(
        "SELECT t.organization_id, t.environment, t.connection_id, t.client_app_id
         FROM oauth_tokens t JOIN oauth_grants g ON g.id = t.grant_id
         WHERE t.token_hash = $1 AND t.kind = 'access' AND t.revoked_at IS NULL
           AND t.expires_at > now() AND g.revoked_at IS NULL",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?)
}

/// Deletes up to `batch` codes each of the kinds that can no longer matter,
/// with their grants and tokens: codes never redeemed, a day after they
/// expired; grants revoked a day ago; grants past their refresh tokens'
/// end, two days on (a day longer than the longest-lived access token a
/// last refresh could issue). Returns how many codes went.
pub async fn prune_ended(db: impl PgExecutor<'_>, batch: i64) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM oauth_codes WHERE id IN (
             (SELECT id FROM oauth_codes
              WHERE used_at IS NULL AND expires_at < now() - interval '1 day' LIMIT $1)
             UNION
             (SELECT code_id FROM oauth_grants
              WHERE revoked_at < now() - interval '1 day' LIMIT $1)
             UNION
             (SELECT code_id FROM oauth_grants
              WHERE COALESCE(refresh_expires_at, created_at) < now() - interval '2 days' LIMIT $1))",
    )
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}

/// Deletes up to `batch` access tokens of live grants that expired a day
/// ago (used refresh tokens stay while their grant lives: a replay of one
/// must still be recognised).
pub async fn prune_expired_access_tokens(db: impl PgExecutor<'_>, batch: i64) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM oauth_tokens WHERE id IN (
             SELECT id FROM oauth_tokens
             WHERE kind = 'access' AND expires_at < now() - interval '1 day' LIMIT $1)",
    )
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}
