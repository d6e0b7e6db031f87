//! The sandbox provider's own records: each account's saved cards and how
//! many logins and codes reached it, as a real provider keeps them.

use crate::kernel::error::Result;
use crate::kernel::tenant::Tenant;
use serde_json::Value;
use sqlx::PgExecutor;

/// The account's saved cards, if the account has a record.
pub async fn cards(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
    integration_id: &str,
    username: &str,
) -> Result<Option<sqlx::types::Json<Vec<Value>>>> {
    Ok(sqlx::query_scalar(
        "SELECT payment_methods FROM sandbox_accounts
         WHERE organization_id = $1 AND environment = $2 AND integration_id = $3 AND username = $4",
    )
    .bind(tenant.organization_id)
    .bind(tenant.environment)
    .bind(integration_id)
    .bind(username)
    .fetch_optional(db)
    .await?)
}

/// Saves a card, in one statement as a provider's own write would be:
/// concurrent writes each add their card. A default card makes the others
/// not default.
pub async fn add_card(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
    integration_id: &str,
    username: &str,
    card: &Value,
    make_default: bool,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sandbox_accounts (organization_id, environment, integration_id, username, payment_methods)
         VALUES ($1, $2, $3, $4, jsonb_build_array($5::jsonb))
         ON CONFLICT (organization_id, environment, integration_id, username)
         DO UPDATE SET payment_methods = CASE WHEN $6 THEN
                 (SELECT COALESCE(jsonb_agg(c || '{\"isDefault\": false}'), '[]')
                  FROM jsonb_array_elements(sandbox_accounts.payment_methods) c)
             ELSE sandbox_accounts.payment_methods END || jsonb_build_array($5::jsonb),
             updated_at = now()",
    )
    .bind(tenant.organization_id)
    .bind(tenant.environment)
    .bind(integration_id)
    .bind(username)
    .bind(card)
    .bind(make_default)
    .execute(db)
    .await?;
    Ok(())
}

/// Counts logins and second-factor codes that reached the account.
pub async fn count_attempts(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
    integration_id: &str,
    username: &str,
    logins: i32,
    codes: i32,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sandbox_accounts (organization_id, environment, integration_id, username,
             login_attempts, code_attempts)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (organization_id, environment, integration_id, username)
         DO UPDATE SET login_attempts = sandbox_accounts.login_attempts + $5,
             code_attempts = sandbox_accounts.code_attempts + $6, updated_at = now()",
    )
    .bind(tenant.organization_id)
    .bind(tenant.environment)
    .bind(integration_id)
    .bind(username)
    .bind(logins)
    .bind(codes)
    .execute(db)
    .await?;
    Ok(())
}

/// Ends a sandbox provider session, as a password change at the provider
/// would.
pub async fn end_session(db: impl PgExecutor<'_>, session_id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO sandbox_ended_sessions (session_id) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(session_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Whether the sandbox provider session was ended on purpose.
pub async fn session_ended(db: impl PgExecutor<'_>, session_id: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sandbox_ended_sessions WHERE session_id = $1)",
    )
    .bind(session_id)
    .fetch_one(db)
    .await?)
}
