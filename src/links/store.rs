//! Link intents.

use crate::catalog::operations::Operation;
use crate::kernel::error::{Error, Result};
use crate::kernel::ids::{AttemptId, FlowId, LinkId};
use crate::kernel::tenant::Tenant;
use crate::links::rules::LinkStatus;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use std::time::Duration;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LinkRow {
    pub id: LinkId,
    pub integration_id: String,
    pub operations: sqlx::types::Json<Vec<Operation>>,
    pub webhook_url: Option<String>,
    pub return_url: Option<String>,
    pub external_user_id: Option<String>,
    pub debug: bool,
    pub status: LinkStatus,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub result: Option<serde_json::Value>,
    pub debug_trace: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

macro_rules! link_columns {
    () => {
        "id, integration_id, operations, webhook_url, return_url, external_user_id, debug, status, \
         error_code, error_message, result, debug_trace, created_at, expires_at, claimed_at, finished_at"
    };
}

/// What `insert_link` stores.
pub struct LinkInsert<'a> {
    pub id: LinkId,
    pub tenant: Tenant,
    pub new: &'a crate::links::rules::NewLink,
    pub arguments_ciphertext: &'a [u8],
    pub claim_code_hash: &'a [u8],
}

pub async fn insert_link(db: impl PgExecutor<'_>, link: LinkInsert<'_>) -> Result<LinkRow> {
    Ok(sqlx::query_as(concat!(
        "INSERT INTO links (id, organization_id, environment, integration_id, operations, arguments_ciphertext,
             webhook_url, return_url, external_user_id, debug, claim_code_hash, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now() + make_interval(secs => $12))
         RETURNING ",
        link_columns!()
    ))
    .bind(link.id)
    .bind(link.tenant.organization_id)
    .bind(link.tenant.environment.as_str())
    .bind(&link.new.integration_id)
    .bind(sqlx::types::Json(&link.new.operations))
    .bind(link.arguments_ciphertext)
    .bind(&link.new.webhook_url)
    .bind(&link.new.return_url)
    .bind(&link.new.external_user_id)
    .bind(link.new.debug)
    .bind(link.claim_code_hash)
    .bind(link.new.expires_in_secs as f64)
    .fetch_one(db)
    .await?)
}

/// Marks unfinished links past their expiry `expired`, purges their
/// arguments and writes a `link.expired` event for each, in one statement.
/// `only` limits it to one link (expiry on read); otherwise it takes up to
/// `batch` links, skipping rows another replica is already expiring.
/// Returns how many links expired.
pub async fn expire_links(
    db: impl PgExecutor<'_>,
    only: Option<(Tenant, LinkId)>,
    batch: i64,
) -> Result<u64> {
    let (organization, environment, id) = match only {
        Some((tenant, id)) => (
            Some(tenant.organization_id),
            Some(tenant.environment.as_str()),
            Some(id),
        ),
        None => (None, None, None),
    };
    let expired = sqlx::query(
        "WITH due AS (
             SELECT id FROM links
             WHERE status IN ('pending', 'claimed', 'awaiting_2fa') AND expires_at <= now()
               AND ($1::uuid IS NULL OR (id = $1 AND organization_id = $2 AND environment = $3))
             ORDER BY expires_at
             LIMIT $4
             FOR UPDATE SKIP LOCKED
         ), expired AS (
             UPDATE links SET status = 'expired', error_code = 'link_expired',
                 error_message = 'The link expired before it was completed.',
                 finished_at = expires_at, arguments_ciphertext = NULL
             FROM due WHERE links.id = due.id
             RETURNING links.id, links.organization_id, links.environment, links.integration_id, links.external_user_id
         )
         INSERT INTO events (id, organization_id, environment, type, link_id, payload)
         SELECT gen_random_uuid(), organization_id, environment, 'link.expired', id,
                link_event_payload('link.expired', id, integration_id, 'expired', external_user_id,
                    'link_expired')
         FROM expired",
    )
    .bind(id)
    .bind(organization)
    .bind(environment)
    .bind(batch)
    .execute(db)
    .await?;
    Ok(expired.rows_affected())
}

/// The tenant's link; an unfinished link past its expiry is expired first
/// (see [`expire_links`]), so expiry holds on read even between sweeps. A
/// live link costs one statement: the expiry runs only when the row read
/// shows it is due (by this replica's clock; the sweep catches the rest).
pub async fn get_link(db: &crate::kernel::db::Db, tenant: Tenant, id: LinkId) -> Result<LinkRow> {
    let row = find_link(db, tenant, id).await?;
    let unfinished = matches!(
        row.status,
        LinkStatus::Pending | LinkStatus::Claimed | LinkStatus::Awaiting2fa
    );
    if unfinished
        && row.expires_at <= Utc::now()
        && expire_links(db, Some((tenant, id)), 1).await? > 0
    {
        return find_link(db, tenant, id).await;
    }
    Ok(row)
}

async fn find_link(db: &crate::kernel::db::Db, tenant: Tenant, id: LinkId) -> Result<LinkRow> {
    sqlx::query_as(concat!(
        "SELECT ",
        link_columns!(),
        " FROM links WHERE id = $1 AND organization_id = $2 AND environment = $3"
    ))
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .fetch_optional(db)
    .await?
    .ok_or(Error::NotFound("link"))
}

/// Appends a step to a link's debug trace.
pub async fn append_trace(
    db: impl PgExecutor<'_>,
    link_id: LinkId,
    event: &str,
    details: Value,
) -> Result<()> {
    sqlx::query(
        "UPDATE links SET debug_trace = debug_trace || jsonb_build_array(
             jsonb_build_object('at', now(), 'event', $2::text, 'details', $3::jsonb))
         WHERE id = $1",
    )
    .bind(link_id)
    .bind(event)
    .bind(details)
    .execute(db)
    .await?;
    Ok(())
}

/// A claimed link waits for its end user's second factor.
pub async fn set_awaiting_2fa(tx: &mut PgConnection, link_id: LinkId) -> Result<()> {
    sqlx::query("UPDATE links SET status = 'awaiting_2fa' WHERE id = $1 AND status = 'claimed'")
        .bind(link_id)
        .execute(tx)
        .await?;
    Ok(())
}

/// A link's status and whether it is past its expiry, when `code_hash` is
/// its claim code's: why a claim did not take it.
pub async fn claim_state(
    db: impl PgExecutor<'_>,
    link_id: LinkId,
    code_hash: &[u8],
) -> Result<Option<(LinkStatus, bool)>> {
    Ok(sqlx::query_as(
        "SELECT status, expires_at <= now() FROM links WHERE id = $1 AND claim_code_hash = $2",
    )
    .bind(link_id)
    .bind(code_hash)
    .fetch_optional(db)
    .await?)
}

/// Ends an unfinished link with `status` (purging its arguments) unless the
/// expiry sweep got there first; returns its integration and external user
/// id for the event.
pub async fn finish(
    tx: &mut PgConnection,
    link_id: LinkId,
    status: LinkStatus,
    error_code: Option<&str>,
    error_message: Option<&str>,
    result: Option<&serde_json::Value>,
) -> Result<Option<(String, Option<String>)>> {
    Ok(sqlx::query_as(
        "UPDATE links SET status = $2, error_code = $3, error_message = $4, result = $5,
             finished_at = now(), arguments_ciphertext = NULL
         WHERE id = $1 AND status IN ('pending', 'claimed', 'awaiting_2fa', 'processing')
         RETURNING integration_id, external_user_id",
    )
    .bind(link_id)
    .bind(status)
    .bind(error_code)
    .bind(error_message)
    .bind(result)
    .fetch_optional(&mut *tx)
    .await?)
}

#[derive(Debug, sqlx::FromRow)]
pub struct LinkForFlow {
    pub id: LinkId,
    pub integration_id: String,
    pub operations: sqlx::types::Json<Vec<Operation>>,
    pub arguments_ciphertext: Option<Vec<u8>>,
}

/// What a run that moved its link to `processing` got: whether the
/// attempt still held the flow (it may have been cancelled or expired
/// meanwhile), and the link's columns when the link was still waiting for
/// its login (not expired by the sweep meanwhile).
#[derive(Debug, sqlx::FromRow)]
pub struct StartedRun {
    pub moved: bool,
    pub id: Option<LinkId>,
    pub integration_id: Option<String>,
    pub operations: Option<sqlx::types::Json<Vec<Operation>>>,
    pub arguments_ciphertext: Option<Vec<u8>>,
}

impl StartedRun {
    pub fn link(self) -> Option<LinkForFlow> {
        Some(LinkForFlow {
            id: self.id?,
            integration_id: self.integration_id?,
            operations: self.operations?,
            arguments_ciphertext: self.arguments_ciphertext,
        })
    }
}

/// Claims a pending, unexpired link with its claim code and opens its flow,
/// in one statement: only the request whose update matched gets the flow.
pub async fn claim_link(
    db: impl PgExecutor<'_>,
    link_id: LinkId,
    code_hash: &[u8],
    flow_id: FlowId,
    token_hash: &[u8],
) -> Result<Option<FlowId>> {
    Ok(sqlx::query_scalar(
        "WITH claimed AS (
             UPDATE links SET status = 'claimed', claimed_at = now()
             WHERE id = $1 AND claim_code_hash = $2 AND status = 'pending' AND expires_at > now()
             RETURNING id, organization_id, environment, integration_id, expires_at)
         INSERT INTO flows (id, token_hash, organization_id, environment, kind, link_id, integration_id, step, expires_at)
         SELECT $3, $4, organization_id, environment, 'link', id, integration_id, 'login', expires_at
         FROM claimed
         RETURNING id",
    )
    .bind(link_id)
    .bind(code_hash)
    .bind(flow_id)
    .bind(token_hash)
    .fetch_optional(db)
    .await?)
}

/// Moves the flow (only while `attempt_id` holds it) and its waiting link
/// to `processing`, leasing the flow for `per_call` per operation plus
/// `margin`.
pub async fn start_run(
    db: impl PgExecutor<'_>,
    flow_id: FlowId,
    link_id: LinkId,
    attempt_id: AttemptId,
    per_call: Duration,
    margin: Duration,
) -> Result<StartedRun> {
    Ok(sqlx::query_as(
        "WITH moved AS (
             UPDATE flows SET step = 'processing', failed_logins = failed_logins - 1,
                 error_code = NULL, second_factor_prompt = NULL, session_ciphertext = NULL,
                 attempt_until = now() + make_interval(secs =>
                     $4 * (SELECT jsonb_array_length(operations) FROM links WHERE id = $2) + $5),
                 updated_at = now()
             WHERE id = $1 AND attempt_id = $3 AND outcome IS NULL
             RETURNING link_id
         ), run AS (
             UPDATE links SET status = 'processing'
             FROM moved WHERE links.id = moved.link_id AND links.status IN ('claimed', 'awaiting_2fa')
             RETURNING links.id, links.integration_id, links.operations, links.arguments_ciphertext
         )
         SELECT EXISTS (SELECT 1 FROM moved) AS moved, run.* FROM (SELECT 1) one LEFT JOIN run ON true",
    )
    .bind(flow_id)
    .bind(link_id)
    .bind(attempt_id)
    .bind(per_call.as_secs_f64())
    .bind(margin.as_secs_f64())
    .fetch_one(db)
    .await?)
}
