//! The event outbox: the reads and redeliveries of the events API, and
//! retention.

use crate::kernel::db::Db;
use crate::kernel::error::{Error, Result};
use crate::kernel::ids::{ConnectionId, EventId, LinkId};
use crate::kernel::tenant::Tenant;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use std::time::Duration;

/// Appends an event to the outbox, inside the caller's transaction.
pub async fn insert(
    tx: &mut sqlx::PgConnection,
    tenant: Tenant,
    event_type: &str,
    subject: super::outbox::EventSubject,
    payload: &Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (id, organization_id, environment, type, link_id, connection_id, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(EventId::new())
    .bind(tenant.organization_id)
    .bind(tenant.environment)
    .bind(event_type)
    .bind(subject.link_id)
    .bind(subject.connection_id)
    .bind(payload)
    .execute(tx)
    .await?;
    Ok(())
}

/// Removes up to `batch` events that are done (delivered, failed or
/// skipped) and older than `retention`, with their attempts; returns how
/// many. Safe in several replicas at once.
pub async fn prune_finished(db: &Db, retention: Duration, batch: i64) -> Result<u64> {
    let pruned = sqlx::query(
        "DELETE FROM events WHERE id IN (
             SELECT id FROM events
             WHERE delivery_status <> 'pending' AND created_at < now() - make_interval(secs => $1)
             ORDER BY created_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(retention.as_secs_f64())
    .bind(batch)
    .execute(db)
    .await?;
    Ok(pruned.rows_affected())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: EventId,
    pub r#type: String,
    pub link_id: Option<LinkId>,
    pub connection_id: Option<ConnectionId>,
    pub payload: Json<Value>,
    pub created_at: DateTime<Utc>,
    pub delivery_status: super::DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub url: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub attempt: i32,
    pub url: String,
    pub started_at: DateTime<Utc>,
    pub latency_ms: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

macro_rules! event_columns {
    () => {
        "e.id, e.type, e.link_id, e.connection_id, e.payload, e.created_at, e.delivery_status, e.attempts, \
         e.next_attempt_at, e.delivered_at, e.last_error, d.url"
    };
}

/// Filters of an events listing.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub connection_id: Option<ConnectionId>,
    pub link_id: Option<LinkId>,
    pub delivery_status: Option<super::DeliveryStatus>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// Newest first; keyset on (created_at, id); `limit + 1` rows.
pub async fn list(
    db: &Db,
    tenant: Tenant,
    filter: &EventFilter,
    after: Option<(DateTime<Utc>, EventId)>,
    limit: i64,
) -> Result<Vec<EventRow>> {
    let mut q = sqlx::QueryBuilder::new(concat!(
        "SELECT ",
        event_columns!(),
        " FROM events e JOIN event_destinations d ON d.event_id = e.id WHERE e.organization_id = "
    ));
    q.push_bind(tenant.organization_id)
        .push(" AND e.environment = ")
        .push_bind(tenant.environment.as_str());
    if let Some(t) = &filter.event_type {
        q.push(" AND e.type = ").push_bind(t.clone());
    }
    if let Some(id) = filter.connection_id {
        q.push(" AND e.connection_id = ").push_bind(id);
    }
    if let Some(id) = filter.link_id {
        q.push(" AND e.link_id = ").push_bind(id);
    }
    if let Some(status) = filter.delivery_status {
        q.push(" AND e.delivery_status = ").push_bind(status);
    }
    if let Some(t) = filter.created_after {
        q.push(" AND e.created_at >= ").push_bind(t);
    }
    if let Some(t) = filter.created_before {
        q.push(" AND e.created_at < ").push_bind(t);
    }
    if let Some((created_at, id)) = after {
        q.push(" AND (e.created_at, e.id) < (")
            .push_bind(created_at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY e.created_at DESC, e.id DESC LIMIT ")
        .push_bind(limit + 1);
    Ok(q.build_query_as().fetch_all(db).await?)
}

pub async fn get(db: &Db, tenant: Tenant, id: EventId) -> Result<(EventRow, Vec<AttemptRow>)> {
    // One snapshot for both reads: a delivery finishing in between must not
    // show its attempt next to the event as it was before (still leased).
    let mut tx = db
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    let event: EventRow = sqlx::query_as(concat!(
        "SELECT ",
        event_columns!(),
        " FROM events e JOIN event_destinations d ON d.event_id = e.id
          WHERE e.id = $1 AND e.organization_id = $2 AND e.environment = $3"
    ))
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound("event"))?;
    let attempts = sqlx::query_as(
        "SELECT attempt, url, started_at, latency_ms, status_code, error FROM delivery_attempts
         WHERE event_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((event, attempts))
}

/// Queues events again from the start of the retry schedule (same ids),
/// and re-enables their destinations if they had answered 410. `only`
/// selects one event; otherwise every failed event created in the range.
/// Returns how many were queued.
pub async fn redeliver(
    db: &Db,
    tenant: Tenant,
    only: Option<EventId>,
    created_after: Option<DateTime<Utc>>,
    created_before: Option<DateTime<Utc>>,
) -> Result<u64> {
    let mut tx = db.begin().await?;
    let queued: Vec<Option<String>> = sqlx::query_scalar(
        "UPDATE events e SET delivery_status = 'pending', attempts = 0, next_attempt_at = now(),
             last_error = NULL,
             destination = event_destination(e.organization_id, e.environment, e.link_id, e.connection_id)
         FROM event_destinations d
         WHERE d.event_id = e.id AND e.organization_id = $1 AND e.environment = $2
           AND (($3::uuid IS NOT NULL AND e.id = $3 AND e.delivery_status <> 'pending')
                OR ($3::uuid IS NULL AND e.delivery_status = 'failed'
                    AND ($4::timestamptz IS NULL OR e.created_at >= $4)
                    AND ($5::timestamptz IS NULL OR e.created_at < $5)))
         RETURNING d.url",
    )
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .bind(only)
    .bind(created_after)
    .bind(created_before)
    .fetch_all(&mut *tx)
    .await?;
    let urls: Vec<String> = queued.iter().flatten().cloned().collect();
    sqlx::query(
        "DELETE FROM disabled_webhook_endpoints WHERE organization_id = $1 AND environment = $2 AND url = ANY($3)",
    )
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .bind(&urls)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(queued.len() as u64)
}
