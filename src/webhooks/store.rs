//! The outbox as a delivery queue: claiming due events (with a lease),
//! recording attempts, destination breakers, disabled endpoints, queue
//! statistics.

use crate::kernel::db::Db;
use crate::kernel::error::Result;
use crate::kernel::ids::{ClientAppId, EventId, OrganizationId};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;
use sqlx::types::Json;
use std::time::Duration;
use uuid::Uuid;

/// An event claimed for one delivery attempt, with where it goes and the
/// app secrets that sign it.
#[derive(Debug)]
pub struct DueEvent {
    pub id: EventId,
    pub organization_id: OrganizationId,
    pub environment: String,
    pub payload: Json<Value>,
    /// Attempts including this one.
    pub attempts: i32,
    /// Who the event goes to, as a key that survives a corrected URL (see
    /// the `event_destination` SQL function): the unit of the
    /// per-destination cap and of the circuit breaker.
    pub destination: String,
    pub url: Option<String>,
    pub client_app_id: Option<ClientAppId>,
    pub webhook_secret_ciphertext: Option<Vec<u8>>,
    pub previous_webhook_secret_ciphertext: Option<Vec<u8>>,
    pub previous_active: bool,
    /// The destination answered 410 earlier.
    pub disabled: bool,
    /// Its destination has failures on record (its breaker may need to
    /// hear that it answered again).
    pub troubled: bool,
}

/// What one claim took, and how far it looked.
#[derive(Debug)]
pub struct Claim {
    pub events: Vec<DueEvent>,
    /// The last destination looked at: the next claim starts after it, so
    /// every destination gets its turn (`None`: it looked at all of them
    /// after the cursor; start from the first again).
    pub walked_to: Option<String>,
}

/// A row of the claim: the walk's end, and one claimed event (or none).
#[derive(sqlx::FromRow)]
struct ClaimRow {
    walked_to: Option<String>,
    walked: i64,
    id: Option<EventId>,
    organization_id: Option<OrganizationId>,
    environment: Option<String>,
    payload: Option<Json<Value>>,
    attempts: Option<i32>,
    destination: Option<String>,
    url: Option<String>,
    client_app_id: Option<ClientAppId>,
    webhook_secret_ciphertext: Option<Vec<u8>>,
    previous_webhook_secret_ciphertext: Option<Vec<u8>>,
    previous_active: Option<bool>,
    disabled: Option<bool>,
    troubled: Option<bool>,
}

/// Claims up to `limit` due events, destination by destination in key
/// order after `after` (round robin across claims), skipping rows other
/// dispatchers hold, destinations whose breaker is open, and deliveries over
/// the per-destination cap: `in_flight` is what this replica is already
/// sending to each destination, and at most `per_destination` go to one at
/// a time. Looks at no more than `max_walk` destinations.
///
/// Walking the destinations (one index descent each) rather than the due
/// order means a destination with a long backlog at its cap costs a claim
/// nothing: the claim steps over it, not through its events.
///
/// Each claim counts an attempt and pushes `next_attempt_at` out by `lease`:
/// if this process dies, the event is due again when the lease ends.
pub async fn claim_due(
    db: &Db,
    limit: i64,
    lease: Duration,
    per_destination: i32,
    in_flight: &[(String, i32)],
    after: &str,
    max_walk: i64,
) -> Result<Claim> {
    let (busy, counts): (Vec<&str>, Vec<i32>) =
        in_flight.iter().map(|(d, n)| (d.as_str(), *n)).unzip();
    let rows: Vec<ClaimRow> = sqlx::query_as(
        "WITH RECURSIVE walk(destination, n) AS (
             (SELECT e.destination, 1 FROM events e
              WHERE e.delivery_status = 'pending' AND e.destination > $6
              ORDER BY e.destination LIMIT 1)
             UNION ALL
             SELECT (SELECT e.destination FROM events e
                     WHERE e.delivery_status = 'pending' AND e.destination > w.destination
                     ORDER BY e.destination LIMIT 1),
                    w.n + 1
             FROM walk w WHERE w.destination IS NOT NULL AND w.n < $7
         ), walked AS (
             SELECT destination, n FROM walk WHERE destination IS NOT NULL
         ), busy AS (
             SELECT * FROM unnest($3::text[], $4::int[]) AS b(destination, in_flight)
         ), due AS (
             SELECT picked.id FROM walked w
             LEFT JOIN busy b ON b.destination = w.destination
             CROSS JOIN LATERAL (
                 SELECT e.id FROM events e
                 WHERE e.delivery_status = 'pending' AND e.destination = w.destination
                   AND e.next_attempt_at <= now()
                 ORDER BY e.next_attempt_at
                 LIMIT GREATEST($5 - COALESCE(b.in_flight, 0), 0)
                 FOR UPDATE SKIP LOCKED
             ) picked
             WHERE NOT EXISTS (SELECT 1 FROM webhook_destinations p
                               WHERE p.destination = w.destination AND p.open_until > now())
             LIMIT $1
         ), claimed AS (
             UPDATE events e SET attempts = e.attempts + 1,
                 next_attempt_at = now() + make_interval(secs => $2)
             FROM due WHERE e.id = due.id
             RETURNING e.id, e.organization_id, e.environment, e.payload, e.attempts, e.destination
         ), summary AS (
             -- Where the next claim starts: after the last destination this
             -- one took from when it filled up, else after the last looked at.
             SELECT CASE WHEN (SELECT count(*) FROM claimed) >= $1
                         THEN (SELECT max(destination) FROM claimed)
                         ELSE (SELECT destination FROM walked ORDER BY n DESC LIMIT 1) END AS walked_to,
                    (SELECT count(*) FROM walked) AS walked
         )
         SELECT s.walked_to, s.walked, c.id, c.organization_id, c.environment, c.payload, c.attempts,
                c.destination, d.url, d.client_app_id, a.webhook_secret_ciphertext,
                a.previous_webhook_secret_ciphertext,
                COALESCE(a.previous_webhook_secret_expires_at > now(), false) AS previous_active,
                EXISTS (SELECT 1 FROM disabled_webhook_endpoints x
                        WHERE x.organization_id = c.organization_id AND x.environment = c.environment
                          AND x.url = d.url) AS disabled,
                EXISTS (SELECT 1 FROM webhook_destinations w
                        WHERE w.destination = c.destination AND w.consecutive_failures > 0) AS troubled
         FROM summary s
         LEFT JOIN claimed c ON true
         LEFT JOIN event_destinations d ON d.event_id = c.id
         LEFT JOIN client_apps a ON a.id = d.client_app_id",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(&busy)
    .bind(&counts)
    .bind(per_destination)
    .bind(after)
    .bind(max_walk)
    .fetch_all(db)
    .await?;
    let (walked_to, walked) = rows
        .first()
        .map_or((None, 0), |row| (row.walked_to.clone(), row.walked));
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let (Some(id), Some(organization_id), Some(environment), Some(payload), Some(attempts)) = (
            row.id,
            row.organization_id,
            row.environment,
            row.payload,
            row.attempts,
        ) else {
            continue; // the summary row of a claim that took nothing
        };
        events.push(DueEvent {
            id,
            organization_id,
            environment,
            payload,
            attempts,
            destination: row.destination.unwrap_or_default(),
            url: row.url,
            client_app_id: row.client_app_id,
            webhook_secret_ciphertext: row.webhook_secret_ciphertext,
            previous_webhook_secret_ciphertext: row.previous_webhook_secret_ciphertext,
            previous_active: row.previous_active.unwrap_or(false),
            disabled: row.disabled.unwrap_or(false),
            troubled: row.troubled.unwrap_or(false),
        });
    }
    // Filled up, or cut short by `max_walk`: go on from there next time.
    let go_on = events.len() as i64 >= limit || walked >= max_walk;
    let claim = Claim {
        events,
        walked_to: walked_to.filter(|_| go_on),
    };
    Ok(claim)
}

/// What happened to one attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub url: String,
    pub started_at: DateTime<Utc>,
    pub latency: Duration,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

/// Where the event goes next.
#[derive(Debug, Clone)]
pub enum Next {
    Delivered,
    RetryIn(Duration),
    Failed(String),
    Skipped(String),
}

/// One finished delivery: the event as claimed, its attempt (none when it
/// was not sent), and where it goes next.
#[derive(Debug, Clone)]
pub struct Finished {
    pub event_id: EventId,
    pub claimed_attempts: i32,
    pub destination: String,
    /// Whether the destination answered well (`Some(true)`: delivered),
    /// failed (`Some(false)`: an error status, a time-out, no connection),
    /// or says nothing about its health (`None`: not sent, refused by the
    /// SSRF guard, disabled by `410`).
    pub reached: Option<bool>,
    pub attempt: Option<Attempt>,
    pub next: Next,
}

/// Records the attempts and moves the events on, all in one statement; an
/// event that another dispatcher re-claimed meanwhile (its lease ran out)
/// keeps only its attempt. Events are updated by primary key.
pub async fn finish_attempts(db: impl PgExecutor<'_>, finished: &[Finished]) -> Result<()> {
    let n = finished.len();
    let (mut event_ids, mut claimed, mut statuses, mut delays, mut next_errors) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (
        mut attempt_ids,
        mut has_attempt,
        mut urls,
        mut started,
        mut latencies,
        mut codes,
        mut errors,
    ) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for f in finished {
        let (status, delay, error): (&str, f64, Option<String>) = match &f.next {
            Next::Delivered => ("delivered", 0.0, None),
            Next::RetryIn(delay) => ("pending", delay.as_secs_f64(), None),
            Next::Failed(error) => ("failed", 0.0, Some(error.clone())),
            Next::Skipped(error) => ("skipped", 0.0, Some(error.clone())),
        };
        event_ids.push(f.event_id);
        claimed.push(f.claimed_attempts);
        statuses.push(status);
        delays.push(delay);
        next_errors.push(error);
        attempt_ids.push(Uuid::now_v7());
        has_attempt.push(f.attempt.is_some());
        let a = f.attempt.as_ref();
        urls.push(a.map(|a| a.url.as_str()));
        started.push(a.map(|a| a.started_at));
        latencies.push(a.map(|a| a.latency.as_millis().min(i32::MAX as u128) as i32));
        codes.push(a.and_then(|a| a.status_code.map(i32::from)));
        errors.push(a.and_then(|a| a.error.clone()));
    }
    sqlx::query(
        "WITH input AS (
             SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::float8[], $5::text[],
                                  $6::uuid[], $7::bool[], $8::text[], $9::timestamptz[], $10::int[],
                                  $11::int[], $12::text[])
                 AS t(event_id, claimed_attempts, status, delay_secs, next_error,
                      attempt_id, has_attempt, url, started_at, latency_ms, status_code, attempt_error)
         ), recorded AS (
             INSERT INTO delivery_attempts (id, event_id, attempt, url, started_at, latency_ms, status_code, error)
             SELECT attempt_id, event_id,
                    (SELECT count(*) + 1 FROM delivery_attempts d WHERE d.event_id = input.event_id),
                    url, started_at, latency_ms, status_code, attempt_error
             FROM input WHERE has_attempt
         )
         UPDATE events e SET delivery_status = i.status,
             -- A retry never comes before the end of a pause that began
             -- while this attempt was in flight.
             next_attempt_at = GREATEST(now() + make_interval(secs => i.delay_secs),
                                        CASE WHEN i.status = 'pending' THEN
                                            (SELECT w.open_until FROM webhook_destinations w
                                             WHERE w.destination = e.destination AND w.open_until > now())
                                        END),
             delivered_at = CASE WHEN i.status = 'delivered' THEN now() ELSE e.delivered_at END,
             -- The error of this step, else that of the latest attempt (this
             -- one when there was one).
             last_error = CASE WHEN i.has_attempt THEN COALESCE(i.next_error, i.attempt_error)
                          ELSE COALESCE(i.next_error, (SELECT d.error FROM delivery_attempts d
                                        WHERE d.event_id = i.event_id ORDER BY d.attempt DESC LIMIT 1))
                          END
         FROM input i
         WHERE e.id = i.event_id AND e.attempts = i.claimed_attempts AND e.delivery_status = 'pending'",
    )
    .bind(&event_ids)
    .bind(&claimed)
    .bind(&statuses)
    .bind(&delays)
    .bind(&next_errors)
    .bind(&attempt_ids)
    .bind(&has_attempt)
    .bind(&urls)
    .bind(&started)
    .bind(&latencies)
    .bind(&codes)
    .bind(&errors)
    .execute(db)
    .await?;
    Ok(())
}

/// When a destination's breaker opens and for how long.
#[derive(Debug, Clone)]
pub struct BreakerSettings {
    /// Failed attempts in a row that open it.
    pub failures: i32,
    /// How long it stays open the first time; each opening since the last
    /// delivered attempt doubles it (at most 32 times).
    pub cooldown: Duration,
    /// An event held back when it is older than this (the whole retry
    /// schedule) fails instead of waiting more.
    pub give_up_after: Duration,
}

/// A destination whose breaker opened.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Opened {
    pub destination: String,
    pub open_until: DateTime<Utc>,
    /// Its pending events now waiting until `open_until`.
    pub held: i64,
    /// Its events that failed instead, past their retry schedule.
    pub given_up: i64,
}

/// Moves the breakers of the destinations in `finished` (in the order the
/// attempts ended): a delivered attempt closes its destination's breaker,
/// failures in a row open it (see the `record_destination_outcomes` SQL
/// function). Returns the breakers opened now.
pub async fn record_destination_outcomes(
    db: impl PgExecutor<'_>,
    finished: &[Finished],
    settings: &BreakerSettings,
) -> Result<Vec<Opened>> {
    // Per destination: any success, the failures after the last success,
    // and the last failure's error.
    let mut outcomes: Vec<(&str, bool, i32, Option<&str>)> = Vec::new();
    for f in finished {
        let Some(reached) = f.reached else { continue };
        let index = match outcomes.iter().position(|o| o.0 == f.destination) {
            Some(index) => index,
            None => {
                outcomes.push((&f.destination, false, 0, None));
                outcomes.len() - 1
            }
        };
        let outcome = &mut outcomes[index];
        if reached {
            (outcome.1, outcome.2) = (true, 0);
        } else {
            outcome.2 += 1;
            outcome.3 = f.attempt.as_ref().and_then(|a| a.error.as_deref());
        }
    }
    if outcomes.is_empty() {
        return Ok(Vec::new());
    }
    let mut destinations = Vec::with_capacity(outcomes.len());
    let mut succeeded = Vec::with_capacity(outcomes.len());
    let mut failures = Vec::with_capacity(outcomes.len());
    let mut errors = Vec::with_capacity(outcomes.len());
    for (destination, success, failed, error) in outcomes {
        destinations.push(destination);
        succeeded.push(success);
        failures.push(failed);
        errors.push(error);
    }
    Ok(sqlx::query_as(
        "SELECT destination, open_until, held, given_up
         FROM record_destination_outcomes($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&destinations)
    .bind(&succeeded)
    .bind(&failures)
    .bind(&errors)
    .bind(settings.failures)
    .bind(settings.cooldown.as_secs_f64())
    .bind(settings.give_up_after.as_secs_f64())
    .fetch_all(db)
    .await?)
}

/// Stops deliveries to `url` for the tenant (it answered 410 Gone).
pub async fn disable_endpoint(
    db: impl PgExecutor<'_>,
    organization_id: OrganizationId,
    environment: &str,
    url: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO disabled_webhook_endpoints (organization_id, environment, url) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(organization_id)
    .bind(environment)
    .bind(url)
    .execute(db)
    .await?;
    Ok(())
}

/// The delivery queue, database-wide.
#[derive(Debug, sqlx::FromRow)]
pub struct QueueStats {
    /// Events waiting for delivery, due now or later.
    pub depth: i64,
    /// How long the longest-waiting due event has been due, in seconds
    /// (0 when none is): the dispatchers' lag.
    pub oldest_due_seconds: f64,
    /// Destinations whose breaker is open now.
    pub paused_destinations: i64,
}

pub async fn queue_stats(db: &Db) -> Result<QueueStats> {
    Ok(sqlx::query_as(
        "SELECT count(*) AS depth,
                COALESCE(EXTRACT(EPOCH FROM now() - min(next_attempt_at)
                                 FILTER (WHERE next_attempt_at <= now())), 0)::float8
                    AS oldest_due_seconds,
                (SELECT count(*) FROM webhook_destinations WHERE open_until > now())
                    AS paused_destinations
         FROM events WHERE delivery_status = 'pending'",
    )
    .fetch_one(db)
    .await?)
}

/// Closes a destination's breaker: the events it held back are due at once
/// (those waiting on their own retry delay keep it).
pub async fn release_destination(db: impl PgExecutor<'_>, destination: &str) -> Result<()> {
    // Held events wait exactly until the breaker's `open_until`.
    sqlx::query(
        "WITH closed AS (
             DELETE FROM webhook_destinations WHERE destination = $1 RETURNING open_until
         )
         UPDATE events e SET next_attempt_at = now(), last_error = NULL
         FROM closed c
         WHERE e.destination = $1 AND e.delivery_status = 'pending'
           AND e.next_attempt_at = c.open_until",
    )
    .bind(destination)
    .execute(db)
    .await?;
    Ok(())
}
