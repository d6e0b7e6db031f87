//! Flow rows: read by token or id, reserved for one provider call, moved
//! between steps and closed, each change conditional on the state the
//! caller saw.

use super::{FlowKind, FlowOutcome, FlowStep};
use crate::connectors::Geolocation;
use crate::kernel::db::Db;
use crate::kernel::error::Result;
use crate::kernel::ids::{AttemptId, ClientAppId, ConnectionId, FlowId, LinkId, OrganizationId};
use crate::kernel::tenant::{Environment, Tenant};
use sqlx::{PgConnection, PgExecutor};
use std::time::Duration;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FlowRow {
    pub id: FlowId,
    pub organization_id: OrganizationId,
    pub environment: Environment,
    pub kind: FlowKind,
    pub link_id: Option<LinkId>,
    /// The link's `debug` flag (false for sessions).
    pub debug: bool,
    pub integration_id: Option<String>,
    pub step: FlowStep,
    pub outcome: Option<FlowOutcome>,
    pub error_code: Option<String>,
    pub second_factor_prompt: Option<String>,
    pub session_ciphertext: Option<Vec<u8>>,
    /// Provider calls that failed or are in flight (see `flows::attempt`).
    pub failed_logins: i32,
    /// The provider call in flight, and until when it holds the flow.
    pub attempt_id: Option<AttemptId>,
    pub attempt_until: Option<chrono::DateTime<chrono::Utc>>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub client_app_id: Option<ClientAppId>,
    pub redirect_url: Option<String>,
    pub client_reference_id: Option<String>,
    pub connection_id: Option<ConnectionId>,
    pub reconnect: bool,
    pub geolocation: Option<sqlx::types::Json<Geolocation>>,
    pub cancelled_step: Option<FlowStep>,
    pub lang: String,
    pub oauth: Option<sqlx::types::Json<super::AuthorizationRequest>>,
    /// The link's `return_url` (link flows), read with the flow.
    pub link_return_url: Option<String>,
}

/// A [`FlowRow`] from `flows f LEFT JOIN links l`.
pub(crate) const FLOW_COLUMNS: &str = "f.id, f.organization_id, f.environment, f.kind, f.link_id,
        COALESCE(l.debug, false) AS debug, f.integration_id, f.step, f.outcome, f.error_code,
        f.second_factor_prompt, f.session_ciphertext, f.failed_logins, f.attempt_id,
        f.attempt_until, f.expires_at, f.client_app_id, f.redirect_url, f.client_reference_id,
        f.connection_id, f.reconnect, f.geolocation, f.cancelled_step, f.lang, f.oauth,
        l.return_url AS link_return_url";

pub async fn by_token_hash(db: impl PgExecutor<'_>, hash: &[u8]) -> Result<Option<FlowRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {FLOW_COLUMNS} FROM flows f LEFT JOIN links l ON l.id = f.link_id
         WHERE f.token_hash = $1"
    )))
    .bind(hash)
    .fetch_optional(db)
    .await?)
}

pub async fn by_id(db: impl PgExecutor<'_>, id: FlowId) -> Result<FlowRow> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {FLOW_COLUMNS} FROM flows f LEFT JOIN links l ON l.id = f.link_id
         WHERE f.id = $1"
    )))
    .bind(id)
    .fetch_one(db)
    .await?)
}

/// Counts one provider call against the flow and holds the flow for it
/// (`attempt_id` until `lease` from now), if the flow is still open at
/// `step`, under `max_failed` failures and held by no other call. Returns
/// the flow as reserved, or `None`, changing nothing.
pub async fn reserve_attempt(
    db: impl PgExecutor<'_>,
    flow_id: FlowId,
    attempt_id: AttemptId,
    lease: Duration,
    step: FlowStep,
    max_failed: i32,
) -> Result<Option<FlowRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH f AS (
             UPDATE flows SET failed_logins = failed_logins + 1, attempt_id = $2,
                 attempt_until = now() + make_interval(secs => $3), updated_at = now()
             WHERE id = $1 AND step = $4 AND outcome IS NULL AND expires_at > now()
               AND failed_logins < $5 AND (attempt_until IS NULL OR attempt_until <= now())
             RETURNING *)
         SELECT {FLOW_COLUMNS} FROM f LEFT JOIN links l ON l.id = f.link_id"
    )))
    .bind(flow_id)
    .bind(attempt_id)
    .bind(lease.as_secs_f64())
    .bind(step)
    .bind(max_failed)
    .fetch_optional(db)
    .await?)
}

/// Frees the flow after a failed call the end user may retry, keeping the
/// failure counted and showing `error_code`. Only the call's own attempt.
pub async fn release_attempt(
    db: impl PgExecutor<'_>,
    flow_id: FlowId,
    attempt_id: AttemptId,
    error_code: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE flows SET error_code = $3, attempt_id = NULL, attempt_until = NULL, updated_at = now()
         WHERE id = $1 AND attempt_id = $2 AND outcome IS NULL",
    )
    .bind(flow_id)
    .bind(attempt_id)
    .bind(error_code)
    .execute(db)
    .await?;
    Ok(())
}

/// Moves the flow to the second factor with the provider's prompt and the
/// sealed pending session; the successful call is given back (only failures
/// count). False, changing nothing, unless the call's attempt still holds
/// the unfinished flow.
pub async fn await_second_factor(
    tx: &mut PgConnection,
    flow_id: FlowId,
    attempt_id: AttemptId,
    prompt: &str,
    sealed_session: &[u8],
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE flows SET step = '2fa', second_factor_prompt = $3, session_ciphertext = $4,
             error_code = NULL, failed_logins = failed_logins - 1,
             attempt_id = NULL, attempt_until = NULL, updated_at = now()
         WHERE id = $1 AND attempt_id = $2 AND outcome IS NULL",
    )
    .bind(flow_id)
    .bind(attempt_id)
    .bind(prompt)
    .bind(sealed_session)
    .execute(tx)
    .await?
    .rows_affected()
        == 1)
}

/// Marks the flow done, wiping any held provider session, if it is still
/// at the step `flow` shows (a running link only by its run's attempt).
/// False when another request moved or finished it first.
pub async fn close(
    tx: &mut PgConnection,
    flow: &FlowRow,
    outcome: FlowOutcome,
    error_code: Option<&str>,
    cancelled_step: Option<FlowStep>,
) -> Result<bool> {
    let closed = sqlx::query(
        "UPDATE flows SET step = 'done', outcome = $2, error_code = $3, cancelled_step = $4,
             session_ciphertext = NULL, attempt_id = NULL, attempt_until = NULL, updated_at = now()
         WHERE id = $1 AND outcome IS NULL AND step = $5
           AND (step <> 'processing' OR attempt_id = $6)",
    )
    .bind(flow.id)
    .bind(outcome)
    .bind(error_code)
    .bind(cancelled_step)
    .bind(flow.step)
    .bind(flow.attempt_id)
    .execute(tx)
    .await?;
    Ok(closed.rows_affected() == 1)
}

/// Fails links whose run outlived its lease (the process running the
/// operations died): `failed` with `operation_interrupted`, arguments
/// purged, flow closed, a `link.failed` event, in one statement. Some
/// operations may have reached the provider; the error says so. Skips rows
/// another replica holds. Returns how many links failed.
pub async fn fail_interrupted_runs(db: &Db, batch: i64) -> Result<u64> {
    let failed = sqlx::query(
        "WITH stale AS (
             SELECT id FROM flows
             WHERE step = 'processing' AND outcome IS NULL AND attempt_until <= now()
             ORDER BY attempt_until
             LIMIT $1
             FOR UPDATE SKIP LOCKED
         ), closed AS (
             UPDATE flows f SET step = 'done', outcome = 'error', error_code = 'operation_interrupted',
                 attempt_id = NULL, attempt_until = NULL, updated_at = now()
             FROM stale WHERE f.id = stale.id
             RETURNING f.link_id
         ), failed AS (
             UPDATE links SET status = 'failed', error_code = 'operation_interrupted',
                 error_message = $2, finished_at = now(), arguments_ciphertext = NULL
             FROM closed WHERE links.id = closed.link_id AND links.status = 'processing'
             RETURNING links.id, links.organization_id, links.environment, links.integration_id,
                 links.external_user_id
         )
         INSERT INTO events (id, organization_id, environment, type, link_id, payload)
         SELECT gen_random_uuid(), organization_id, environment, 'link.failed', id,
                link_event_payload('link.failed', id, integration_id, 'failed', external_user_id,
                    'operation_interrupted')
         FROM failed",
    )
    .bind(batch)
    .bind(INTERRUPTED_MESSAGE)
    .execute(db)
    .await?;
    Ok(failed.rows_affected())
}

/// `error_message` of a link whose run was interrupted.
const INTERRUPTED_MESSAGE: &str =
    "The run was interrupted before it finished; some operations may have reached the provider.";

/// Closes Link sessions past their expiry that nobody touched (the page
/// closes its own on the next call), failing the connections they were
/// making. Skips rows another replica holds. Returns how many closed.
pub async fn expire_sessions(db: &Db, batch: i64) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "WITH due AS (
             SELECT id FROM flows
             WHERE kind = 'session' AND outcome IS NULL AND expires_at <= now()
             ORDER BY expires_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED
         ), closed AS (
             UPDATE flows f SET step = 'done', outcome = 'error', error_code = 'session_expired',
                 session_ciphertext = NULL, updated_at = now()
             FROM due WHERE f.id = due.id
             RETURNING f.connection_id, f.reconnect
         ), failed AS (
             UPDATE connections c SET status = 'failed', updated_at = now()
             FROM closed
             WHERE c.id = closed.connection_id AND NOT closed.reconnect
               AND c.status IN ('pending', 'awaiting_2fa') AND c.deleted_at IS NULL
             RETURNING 1
         )
         SELECT count(*) FROM closed",
    )
    .bind(batch)
    .fetch_one(db)
    .await?)
}

/// A Link session about to start (from `InitLinkSession` or an OAuth
/// authorization request).
pub struct NewSessionFlow<'a> {
    pub tenant: Tenant,
    pub client_app_id: ClientAppId,
    pub redirect_url: &'a str,
    pub client_reference_id: Option<&'a str>,
    /// The connection to make (fresh id) or to reconnect.
    pub connection_id: ConnectionId,
    pub reconnect: bool,
    /// Fixed integration; `None` lets the end user choose.
    pub integration_id: Option<&'a str>,
    pub geolocation: Option<&'a Geolocation>,
    pub lang: &'a str,
    pub oauth: Option<&'a super::AuthorizationRequest>,
}

/// Opens a Link session's flow at `step` for `ttl`, inside `tx`; returns
/// when it expires.
pub async fn insert_session(
    tx: &mut PgConnection,
    token_hash: &[u8],
    new: &NewSessionFlow<'_>,
    step: FlowStep,
    ttl: Duration,
) -> Result<chrono::DateTime<chrono::Utc>> {
    Ok(sqlx::query_scalar(
        "INSERT INTO flows (id, token_hash, organization_id, environment, kind, integration_id, step,
             expires_at, client_app_id, redirect_url, client_reference_id, connection_id, reconnect,
             geolocation, lang, oauth)
         VALUES ($1, $2, $3, $4, 'session', $5, $6, now() + make_interval(secs => $7), $8, $9, $10,
             $11, $12, $13, $14, $15)
         RETURNING expires_at",
    )
    .bind(FlowId::new())
    .bind(token_hash)
    .bind(new.tenant.organization_id)
    .bind(new.tenant.environment)
    .bind(new.integration_id)
    .bind(step)
    .bind(ttl.as_secs_f64())
    .bind(new.client_app_id)
    .bind(new.redirect_url)
    .bind(new.client_reference_id)
    .bind(new.connection_id)
    .bind(new.reconnect)
    .bind(new.geolocation.map(sqlx::types::Json))
    .bind(new.lang)
    .bind(new.oauth.map(sqlx::types::Json))
    .fetch_one(&mut *tx)
    .await?)
}

/// The end user's integration choice moves a session from `pre-login` to
/// `login` (once).
pub async fn choose_integration(
    db: impl PgExecutor<'_>,
    flow_id: FlowId,
    integration_id: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE flows SET integration_id = $2, step = 'login', updated_at = now()
         WHERE id = $1 AND step = 'pre-login' AND outcome IS NULL",
    )
    .bind(flow_id)
    .bind(integration_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Points a session at the connection it made instead of the requested one.
pub async fn set_connection(
    db: impl PgExecutor<'_>,
    flow_id: FlowId,
    connection_id: ConnectionId,
) -> Result<()> {
    sqlx::query("UPDATE flows SET connection_id = $2 WHERE id = $1")
        .bind(flow_id)
        .bind(connection_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Holds the sealed provider session until consent, giving the successful
/// login back; false, changing nothing, unless the attempt still holds the
/// unfinished flow.
pub async fn hold_for_consent(
    db: impl PgExecutor<'_>,
    flow_id: FlowId,
    attempt_id: AttemptId,
    sealed_session: &[u8],
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE flows SET step = 'authorization', session_ciphertext = $3, error_code = NULL,
             second_factor_prompt = NULL, failed_logins = failed_logins - 1,
             attempt_id = NULL, attempt_until = NULL, updated_at = now()
         WHERE id = $1 AND attempt_id = $2 AND outcome IS NULL",
    )
    .bind(flow_id)
    .bind(attempt_id)
    .bind(sealed_session)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// Records an authorization request sent to a provider for `flow_id`.
pub async fn insert_authorization(
    db: impl PgExecutor<'_>,
    state_hash: &[u8],
    flow_id: FlowId,
    verifier_ciphertext: Option<&[u8]>,
    display: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO flow_authorizations (state_hash, flow_id, verifier_ciphertext, display)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(state_hash)
    .bind(flow_id)
    .bind(verifier_ciphertext)
    .bind(display)
    .execute(db)
    .await?;
    Ok(())
}

/// An authorization request taken by its callback.
#[derive(Debug, sqlx::FromRow)]
pub struct UsedAuthorization {
    pub flow_id: FlowId,
    pub verifier_ciphertext: Option<Vec<u8>>,
    pub display: String,
}

/// Marks the request of `state_hash` used and wipes its verifier, returning
/// what it held; `None` when there is no such request or it was used (only
/// one callback ever gets it).
pub async fn use_authorization(
    db: impl PgExecutor<'_>,
    state_hash: &[u8],
) -> Result<Option<UsedAuthorization>> {
    Ok(sqlx::query_as(
        "UPDATE flow_authorizations a SET used_at = now(), verifier_ciphertext = NULL
         FROM (SELECT state_hash, verifier_ciphertext FROM flow_authorizations
               WHERE state_hash = $1 AND used_at IS NULL FOR UPDATE) before
         WHERE a.state_hash = before.state_hash
         RETURNING a.flow_id, before.verifier_ciphertext, a.display",
    )
    .bind(state_hash)
    .fetch_optional(db)
    .await?)
}
