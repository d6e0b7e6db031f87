//! Connection queries. Deleted connections are kept for billing records but
//! no read returns them.

use crate::catalog::operations::Operation;
use crate::connectors::Geolocation;
use crate::kernel::error::{Error, Result};
use crate::kernel::ids::{ClientAppId, ConnectionId, OperationRunId, OrganizationId};
use crate::kernel::paging::Cursor;
use crate::kernel::tenant::Tenant;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConnectionRow {
    pub id: ConnectionId,
    pub client_app_id: ClientAppId,
    pub integration_id: String,
    pub status: super::ConnectionStatus,
    pub client_reference_id: Option<String>,
    pub geolocation: Option<Json<Geolocation>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub authenticated_at: Option<DateTime<Utc>>,
    pub session_expires_at: Option<DateTime<Utc>>,
    /// For an OAuth grant: its access token's times and how refreshing goes.
    #[sqlx(flatten)]
    pub token: TokenState,
}

/// How an OAuth connection's tokens stand; all empty for other connections.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct TokenState {
    pub token_obtained_at: Option<DateTime<Utc>>,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub refresh_due_at: Option<DateTime<Utc>>,
    pub refresh_not_before: Option<DateTime<Utc>>,
    pub refresh_failures: i32,
    pub refresh_error: Option<String>,
    pub refresh_exhausted_at: Option<DateTime<Utc>>,
}

macro_rules! connection_columns {
    () => {
        "id, client_app_id, integration_id, status, client_reference_id, geolocation, created_at, \
         updated_at, authenticated_at, session_expires_at, token_obtained_at, token_expires_at, \
         refresh_due_at, refresh_not_before, refresh_failures, refresh_error, refresh_exhausted_at"
    };
}

/// [`connection_columns`] of the table aliased `c`, for updates that join.
macro_rules! qualified_connection_columns {
    () => {
        "c.id, c.client_app_id, c.integration_id, c.status, c.client_reference_id, c.geolocation, \
         c.created_at, c.updated_at, c.authenticated_at, c.session_expires_at, \
         c.token_obtained_at, c.token_expires_at, c.refresh_due_at, c.refresh_not_before, \
         c.refresh_failures, c.refresh_error, c.refresh_exhausted_at"
    };
}

/// The tenant's live connection `$1` (`$2`, `$3`: its organization and
/// environment), after a select list.
macro_rules! live_connection {
    () => {
        " FROM connections
          WHERE id = $1 AND organization_id = $2 AND environment = $3 AND deleted_at IS NULL"
    };
}

/// A connection a Link session is about to make.
pub struct NewConnection<'a> {
    pub id: ConnectionId,
    pub tenant: Tenant,
    pub client_app_id: ClientAppId,
    pub integration_id: &'a str,
    pub client_reference_id: Option<&'a str>,
    pub geolocation: Option<&'a Geolocation>,
}

/// Inserts the connection as `pending` unless it exists already (a retried
/// login of the same session).
pub async fn insert_pending(db: impl PgExecutor<'_>, new: &NewConnection<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO connections (id, organization_id, environment, client_app_id, integration_id, status,
             client_reference_id, geolocation)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(new.id)
    .bind(new.tenant.organization_id)
    .bind(new.tenant.environment.as_str())
    .bind(new.client_app_id)
    .bind(new.integration_id)
    .bind(new.client_reference_id)
    .bind(new.geolocation.map(Json))
    .execute(db)
    .await?;
    Ok(())
}

/// Moves a connection that is still being made to `status` (`awaiting_2fa`
/// or `failed`); an active or deleted one is left alone.
pub async fn set_unfinished_status(
    tx: &mut PgConnection,
    id: ConnectionId,
    from: &[super::ConnectionStatus],
    status: super::ConnectionStatus,
) -> Result<()> {
    sqlx::query(
        "UPDATE connections SET status = $2, updated_at = now()
         WHERE id = $1 AND status = ANY($3) AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(status)
    .bind(from)
    .execute(tx)
    .await?;
    Ok(())
}

/// A fresh provider session for a connection.
pub struct FreshSession<'a> {
    pub ciphertext: &'a [u8],
    pub expires_at: Option<DateTime<Utc>>,
    pub client_reference_id: Option<&'a str>,
    pub geolocation: Option<&'a Geolocation>,
    /// For an OAuth grant: its access token's times.
    pub token: Option<TokenTimes>,
}

/// When an OAuth connection's access token was obtained, expires and is
/// due for refreshing (see [`super::tokens::refresh_due`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenTimes {
    pub obtained_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub refresh_due_at: Option<DateTime<Utc>>,
}

/// Makes a live connection `active` with a fresh session (first login or
/// reconnect, also from `expired`). `None` when it no longer exists (deleted
/// while the end user was logging in).
pub async fn activate(
    tx: &mut PgConnection,
    tenant: Tenant,
    id: ConnectionId,
    session: &FreshSession<'_>,
) -> Result<Option<ConnectionRow>> {
    Ok(sqlx::query_as(concat!(
        "UPDATE connections SET status = 'active', session_ciphertext = $4, session_expires_at = $5,
             authenticated_at = now(), updated_at = now(),
             client_reference_id = COALESCE($6, client_reference_id),
             geolocation = COALESCE($7, geolocation),
             token_obtained_at = $8, token_expires_at = $9, refresh_due_at = $10,
             refresh_not_before = NULL, refresh_failures = 0, refresh_error = NULL,
             refresh_exhausted_at = NULL
         WHERE id = $1 AND organization_id = $2 AND environment = $3 AND deleted_at IS NULL
         RETURNING ",
        connection_columns!()
    ))
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .bind(session.ciphertext)
    .bind(session.expires_at)
    .bind(session.client_reference_id)
    .bind(session.geolocation.map(Json))
    .bind(session.token.and_then(|t| t.obtained_at))
    .bind(session.token.and_then(|t| t.expires_at))
    .bind(session.token.and_then(|t| t.refresh_due_at))
    .fetch_optional(tx)
    .await?)
}

/// The tenant's live connection.
pub async fn get(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
    id: ConnectionId,
) -> Result<ConnectionRow> {
    // Not through `get_with_session`: most reads need no session, which
    // may be tens of kilobytes.
    sqlx::query_as(concat!(
        "SELECT ",
        connection_columns!(),
        live_connection!()
    ))
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .fetch_optional(db)
    .await?
    .ok_or(Error::NotFound("connection"))
}

/// The integration of a live connection, for a reconnect.
pub async fn find_live(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
    id: ConnectionId,
) -> Result<Option<ConnectionRow>> {
    match get(db, tenant, id).await {
        Ok(row) => Ok(Some(row)),
        Err(Error::NotFound(_)) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Filters of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub status: Option<super::ConnectionStatus>,
    pub client_reference_id: Option<String>,
}

/// One page, newest first (ties by id), after `cursor` and skipping
/// `offset` rows. Fetches `limit + 1` rows so the caller knows whether more
/// follow.
pub async fn list(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
    filter: &ListFilter,
    cursor: Option<Cursor>,
    offset: i64,
    limit: i64,
) -> Result<Vec<ConnectionRow>> {
    let mut q = sqlx::QueryBuilder::new(concat!(
        "SELECT ",
        connection_columns!(),
        " FROM connections WHERE deleted_at IS NULL AND organization_id = "
    ));
    q.push_bind(tenant.organization_id)
        .push(" AND environment = ")
        .push_bind(tenant.environment.as_str());
    if let Some(status) = filter.status {
        q.push(" AND status = ").push_bind(status);
    }
    if let Some(reference) = &filter.client_reference_id {
        q.push(" AND client_reference_id = ")
            .push_bind(reference.clone());
    }
    if let Some(cursor) = cursor {
        q.push(" AND (created_at, id) < (")
            .push_bind(cursor.created_at)
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(limit + 1)
        .push(" OFFSET ")
        .push_bind(offset);
    Ok(q.build_query_as().fetch_all(db).await?)
}

/// The encrypted provider session of a live connection.
pub async fn session_ciphertext(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
    id: ConnectionId,
) -> Result<Option<Vec<u8>>> {
    let row: Option<Option<Vec<u8>>> =
        sqlx::query_scalar(concat!("SELECT session_ciphertext", live_connection!()))
            .bind(id)
            .bind(tenant.organization_id)
            .bind(tenant.environment.as_str())
            .fetch_optional(db)
            .await?;
    row.ok_or(Error::NotFound("connection"))
}

/// The tenant's live connection with its sealed session.
pub async fn get_with_session(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
    id: ConnectionId,
) -> Result<Leased> {
    sqlx::query_as(concat!(
        "SELECT session_ciphertext, ",
        connection_columns!(),
        live_connection!()
    ))
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .fetch_optional(db)
    .await?
    .ok_or(Error::NotFound("connection"))
}

/// Soft-deletes a live connection, wiping its session, stopping billing and
/// revoking the OAuth grants to it.
/// `None` when it was not live (already deleted, unknown, other tenant).
pub async fn delete(
    tx: &mut PgConnection,
    tenant: Tenant,
    id: ConnectionId,
) -> Result<Option<(ConnectionRow, DateTime<Utc>)>> {
    #[derive(sqlx::FromRow)]
    struct Deleted {
        #[sqlx(flatten)]
        row: ConnectionRow,
        billing_stopped_at: DateTime<Utc>,
    }
    // Every OAuth grant to the connection ends with it (its access and
    // refresh tokens with them), in the same statement.
    let deleted: Option<Deleted> = sqlx::query_as(concat!(
        "WITH ended_grants AS (
             UPDATE oauth_grants SET revoked_at = now()
             WHERE connection_id = $1 AND organization_id = $2 AND environment = $3
               AND revoked_at IS NULL
         )
         UPDATE connections SET deleted_at = now(), billing_stopped_at = now(),
             session_ciphertext = NULL, updated_at = now()
         WHERE id = $1 AND organization_id = $2 AND environment = $3 AND deleted_at IS NULL
         RETURNING billing_stopped_at, ",
        connection_columns!()
    ))
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .fetch_optional(tx)
    .await?;
    Ok(deleted.map(|d| (d.row, d.billing_stopped_at)))
}

/// Marks up to `batch` active connections whose provider session has ended
/// `expired` and wipes their sessions, skipping rows another replica holds.
/// Returns them with their tenants for the caller's events (same `tx`).
pub async fn expire_due(tx: &mut PgConnection, batch: i64) -> Result<Vec<(Tenant, ConnectionRow)>> {
    #[derive(sqlx::FromRow)]
    struct Expired {
        organization_id: OrganizationId,
        environment: String,
        #[sqlx(flatten)]
        row: ConnectionRow,
    }
    let rows: Vec<Expired> = sqlx::query_as(concat!(
        "WITH due AS (
             SELECT id FROM connections
             WHERE status = 'active' AND deleted_at IS NULL AND session_expires_at <= now()
             ORDER BY session_expires_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED
         )
         UPDATE connections c SET status = 'expired', session_ciphertext = NULL, updated_at = now()
         FROM due WHERE c.id = due.id
         RETURNING c.organization_id, c.environment, ",
        qualified_connection_columns!()
    ))
    .bind(batch)
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|e| {
            let environment = crate::kernel::tenant::Environment::parse(&e.environment)?;
            Some((
                Tenant {
                    organization_id: e.organization_id,
                    environment,
                },
                e.row,
            ))
        })
        .collect())
}

/// Whether the connection exists and is not deleted.
pub async fn exists(db: impl PgExecutor<'_>, id: ConnectionId) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM connections WHERE id = $1 AND deleted_at IS NULL)",
    )
    .bind(id)
    .fetch_one(db)
    .await?)
}

/// A connection whose operations lease a run took, with its session.
#[derive(Debug, sqlx::FromRow)]
pub struct Leased {
    #[sqlx(flatten)]
    pub row: ConnectionRow,
    pub session_ciphertext: Option<Vec<u8>>,
}

/// Takes the connection's operations lease for `run`, for `lease`: only
/// while it is live and `active` and no other run holds an unexpired lease.
/// `None` when it was not taken (see [`operations_state`] for why).
pub async fn take_operations_lease(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
    id: ConnectionId,
    run: OperationRunId,
    lease: std::time::Duration,
) -> Result<Option<Leased>> {
    Ok(sqlx::query_as(concat!(
        "UPDATE connections SET operations_run_id = $4,
             operations_lease_until = now() + make_interval(secs => $5)
         WHERE id = $1 AND organization_id = $2 AND environment = $3 AND deleted_at IS NULL
           AND status = 'active'
           AND (operations_lease_until IS NULL OR operations_lease_until < now())
         RETURNING session_ciphertext, ",
        connection_columns!()
    ))
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .bind(run)
    .bind(lease.as_secs_f64())
    .fetch_optional(db)
    .await?)
}

/// Why a lease was not taken: the live connection's status and whether
/// another run holds it; `None` when there is no such live connection.
pub async fn operations_state(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
    id: ConnectionId,
) -> Result<Option<(super::ConnectionStatus, bool)>> {
    Ok(sqlx::query_as(
        "SELECT status, COALESCE(operations_lease_until > now(), false) FROM connections
         WHERE id = $1 AND organization_id = $2 AND environment = $3 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .fetch_optional(db)
    .await?)
}

/// Gives back the lease `run` holds, keeping a session the connector
/// renewed. Changes nothing when the run no longer holds it (the
/// connection was deleted, expired or reconnected meanwhile).
pub async fn release_operations_lease(
    tx: &mut PgConnection,
    id: ConnectionId,
    run: OperationRunId,
    renewed: Option<(&[u8], Option<DateTime<Utc>>)>,
) -> Result<()> {
    let (ciphertext, expires_at) = renewed.unzip();
    sqlx::query(
        "UPDATE connections SET operations_run_id = NULL, operations_lease_until = NULL,
             session_ciphertext = COALESCE($3, session_ciphertext),
             session_expires_at = CASE WHEN $3::bytea IS NULL THEN session_expires_at ELSE $4 END,
             updated_at = CASE WHEN $3::bytea IS NULL THEN updated_at ELSE now() END
         WHERE id = $1 AND operations_run_id = $2",
    )
    .bind(id)
    .bind(run)
    .bind(ciphertext)
    .bind(expires_at.flatten())
    .execute(tx)
    .await?;
    Ok(())
}

/// Expires the connection `run` found with an ended provider session,
/// wiping the session and the lease: only while it is still `active` and
/// the run holds it, so exactly one caller gets the row (for its event).
pub async fn expire_ended_session(
    tx: &mut PgConnection,
    id: ConnectionId,
    run: OperationRunId,
) -> Result<Option<ConnectionRow>> {
    Ok(sqlx::query_as(concat!(
        "UPDATE connections SET status = 'expired', session_ciphertext = NULL,
             operations_run_id = NULL, operations_lease_until = NULL, updated_at = now()
         WHERE id = $1 AND operations_run_id = $2 AND status = 'active' AND deleted_at IS NULL
         RETURNING ",
        connection_columns!()
    ))
    .bind(id)
    .bind(run)
    .fetch_optional(tx)
    .await?)
}

/// One recorded Access API call.
#[derive(Debug, sqlx::FromRow)]
pub struct RunRow {
    pub id: OperationRunId,
    pub connection_id: ConnectionId,
    pub operations: Json<Vec<Operation>>,
    pub status: super::RunStatus,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// Records a call that ran.
pub async fn insert_run(tx: &mut PgConnection, tenant: Tenant, run: &RunRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO operation_runs (id, organization_id, environment, connection_id, operations,
             status, error_code, error_message, started_at, finished_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(run.id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .bind(run.connection_id)
    .bind(&run.operations)
    .bind(run.status)
    .bind(&run.error_code)
    .bind(&run.error_message)
    .bind(run.started_at)
    .bind(run.finished_at)
    .bind(run.created_at)
    .execute(tx)
    .await?;
    Ok(())
}

/// A page of a connection's runs, newest first, after `cursor`; `limit + 1`
/// rows so the caller knows whether more follow.
pub async fn list_runs(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
    connection_id: ConnectionId,
    cursor: Option<Cursor>,
    limit: i64,
) -> Result<Vec<RunRow>> {
    let mut q = sqlx::QueryBuilder::new(
        "SELECT id, connection_id, operations, status, error_code, error_message, started_at,
             finished_at, created_at
         FROM operation_runs WHERE organization_id = ",
    );
    q.push_bind(tenant.organization_id)
        .push(" AND environment = ")
        .push_bind(tenant.environment.as_str())
        .push(" AND connection_id = ")
        .push_bind(connection_id);
    if let Some(cursor) = cursor {
        q.push(" AND (created_at, id) < (")
            .push_bind(cursor.created_at)
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(limit + 1);
    Ok(q.build_query_as().fetch_all(db).await?)
}

/// A connection with its tenant, as a background job claims it.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub organization_id: OrganizationId,
    pub environment: crate::kernel::tenant::Environment,
    #[sqlx(flatten)]
    pub leased: Leased,
}

impl Claimed {
    pub fn tenant(&self) -> Tenant {
        Tenant {
            organization_id: self.organization_id,
            environment: self.environment,
        }
    }
}

/// Claims up to `batch` active connections whose health check is due (one
/// `interval` after the last, or after the login), moving each one's next
/// check an interval on (±20 %, so checks spread out); rows another
/// replica is claiming are skipped. The claim is the move: two replicas
/// never check the same connection in one round.
pub async fn claim_due_checks(
    db: impl PgExecutor<'_>,
    interval: std::time::Duration,
    batch: i64,
) -> Result<Vec<Claimed>> {
    Ok(sqlx::query_as(concat!(
        "WITH due AS (
             SELECT id FROM connections
             WHERE status = 'active' AND deleted_at IS NULL
               AND COALESCE(next_check_at, authenticated_at + make_interval(secs => $1)) <= now()
             ORDER BY next_check_at NULLS FIRST
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         )
         UPDATE connections c
         SET next_check_at = now() + make_interval(secs => $1 * (0.8 + 0.4 * random()))
         FROM due WHERE c.id = due.id
         RETURNING c.organization_id, c.environment, c.session_ciphertext, ",
        qualified_connection_columns!()
    ))
    .bind(interval.as_secs_f64())
    .bind(batch)
    .fetch_all(db)
    .await?)
}

/// Expires a connection whose provider session a health check found
/// ended: only while it is still `active` and no Access API call holds it
/// (that call will find out itself), so exactly one caller gets the row.
pub async fn expire_checked(
    tx: &mut PgConnection,
    id: ConnectionId,
) -> Result<Option<ConnectionRow>> {
    Ok(sqlx::query_as(concat!(
        "UPDATE connections SET status = 'expired', session_ciphertext = NULL, updated_at = now()
         WHERE id = $1 AND status = 'active' AND deleted_at IS NULL
           AND (operations_lease_until IS NULL OR operations_lease_until < now())
         RETURNING ",
        connection_columns!()
    ))
    .bind(id)
    .fetch_optional(tx)
    .await?)
}

/// Marks up to `batch` active connections whose session ends within
/// `warning` and that were not warned since their last login; returns them
/// with their tenants for the caller's `connection.expiring` events (same
/// `tx`). Safe in several replicas at once.
pub async fn warn_expiring(
    tx: &mut PgConnection,
    warning: std::time::Duration,
    batch: i64,
) -> Result<Vec<(Tenant, ConnectionRow)>> {
    #[derive(sqlx::FromRow)]
    struct Warned {
        organization_id: OrganizationId,
        environment: crate::kernel::tenant::Environment,
        #[sqlx(flatten)]
        row: ConnectionRow,
    }
    let rows: Vec<Warned> = sqlx::query_as(concat!(
        "WITH due AS (
             SELECT id FROM connections
             WHERE status = 'active' AND deleted_at IS NULL
               AND session_expires_at > now()
               AND session_expires_at <= now() + make_interval(secs => $1)
               AND (expiry_warned_at IS NULL OR expiry_warned_at < authenticated_at)
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         )
         UPDATE connections c SET expiry_warned_at = now()
         FROM due WHERE c.id = due.id
         RETURNING c.organization_id, c.environment, ",
        qualified_connection_columns!()
    ))
    .bind(warning.as_secs_f64())
    .bind(batch)
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|w| {
            (
                Tenant {
                    organization_id: w.organization_id,
                    environment: w.environment,
                },
                w.row,
            )
        })
        .collect())
}

/// Records when an active connection's session will end, as its connector
/// just told.
pub async fn set_session_expiry(
    db: impl PgExecutor<'_>,
    id: ConnectionId,
    expires_at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "UPDATE connections SET session_expires_at = $2, updated_at = now()
         WHERE id = $1 AND status = 'active' AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(expires_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Takes the connection's refresh lock for the rest of `tx`: one refresh
/// per connection at a time across every replica. With `wait` false, gives
/// up at once when another transaction holds it (`false`).
pub async fn lock_for_refresh(tx: &mut PgConnection, id: ConnectionId, wait: bool) -> Result<bool> {
    let sql = if wait {
        "SELECT pg_advisory_xact_lock(hashtextextended('connection-refresh/' || $1::text, 0)) IS NOT NULL"
    } else {
        "SELECT pg_try_advisory_xact_lock(hashtextextended('connection-refresh/' || $1::text, 0))"
    };
    Ok(sqlx::query_scalar(sql).bind(id).fetch_one(tx).await?)
}

/// A live connection with its sealed session, as a refresh reads it under
/// its lock.
pub async fn get_for_refresh(tx: &mut PgConnection, id: ConnectionId) -> Result<Option<Claimed>> {
    Ok(sqlx::query_as(concat!(
        "SELECT organization_id, environment, session_ciphertext, ",
        connection_columns!(),
        " FROM connections WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(tx)
    .await?)
}

/// Stores refreshed tokens (the access token and a rotated refresh token
/// together, in the one sealed session) and clears the failure record.
/// Returns the row while the connection is still `active`.
pub async fn save_refreshed(
    tx: &mut PgConnection,
    id: ConnectionId,
    ciphertext: &[u8],
    session_expires_at: Option<DateTime<Utc>>,
    token: TokenTimes,
) -> Result<Option<ConnectionRow>> {
    Ok(sqlx::query_as(concat!(
        "UPDATE connections SET session_ciphertext = $2, session_expires_at = $3,
             token_obtained_at = $4, token_expires_at = $5, refresh_due_at = $6,
             refresh_not_before = NULL, refresh_failures = 0, refresh_error = NULL,
             refresh_exhausted_at = NULL, updated_at = now()
         WHERE id = $1 AND status = 'active' AND deleted_at IS NULL
         RETURNING ",
        connection_columns!()
    ))
    .bind(id)
    .bind(ciphertext)
    .bind(session_expires_at)
    .bind(token.obtained_at)
    .bind(token.expires_at)
    .bind(token.refresh_due_at)
    .fetch_optional(tx)
    .await?)
}

/// A refresh that failed for now: counted, with when to try again (on
/// demand no sooner than `not_before`; in the background at `due_at`);
/// `exhausted` marks the connection as no longer retried soon (kept from
/// the first time). Returns the row while still `active`.
pub async fn record_refresh_failure(
    tx: &mut PgConnection,
    id: ConnectionId,
    error_code: &str,
    not_before: DateTime<Utc>,
    due_at: DateTime<Utc>,
    exhausted: bool,
) -> Result<Option<ConnectionRow>> {
    Ok(sqlx::query_as(concat!(
        "UPDATE connections SET refresh_failures = refresh_failures + 1, refresh_error = $2,
             refresh_not_before = $3, refresh_due_at = $4,
             refresh_exhausted_at = CASE WHEN $5 THEN COALESCE(refresh_exhausted_at, now()) END,
             updated_at = now()
         WHERE id = $1 AND status = 'active' AND deleted_at IS NULL
         RETURNING ",
        connection_columns!()
    ))
    .bind(id)
    .bind(error_code)
    .bind(not_before)
    .bind(due_at)
    .bind(exhausted)
    .fetch_optional(tx)
    .await?)
}

/// Expires a connection whose grant the provider refused (`invalid_grant`)
/// and wipes its tokens: only while `active`, so one caller gets the row.
pub async fn expire_refused_grant(
    tx: &mut PgConnection,
    id: ConnectionId,
    error_code: &str,
) -> Result<Option<ConnectionRow>> {
    Ok(sqlx::query_as(concat!(
        "UPDATE connections SET status = 'expired', session_ciphertext = NULL,
             refresh_due_at = NULL, refresh_not_before = NULL, refresh_error = $2,
             refresh_failures = refresh_failures + 1, updated_at = now()
         WHERE id = $1 AND status = 'active' AND deleted_at IS NULL
         RETURNING ",
        connection_columns!()
    ))
    .bind(id)
    .bind(error_code)
    .fetch_optional(tx)
    .await?)
}

/// Up to `batch` active connections whose tokens are due for refreshing,
/// soonest first. Nothing is claimed: each refresh takes the connection's
/// lock and looks again.
pub async fn due_refreshes(db: impl PgExecutor<'_>, batch: i64) -> Result<Vec<ConnectionRow>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        connection_columns!(),
        " FROM connections
         WHERE refresh_due_at <= now() AND status = 'active' AND deleted_at IS NULL
         ORDER BY refresh_due_at LIMIT $1"
    ))
    .bind(batch)
    .fetch_all(db)
    .await?)
}
