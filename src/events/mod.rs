//! EventService: the tenant's events with their webhook deliveries, and
//! redeliveries; the outbox every state change writes to ([`outbox`]).
//! Delivery itself is [`crate::webhooks`], which this module only names.
//! Imports the kernel.

use crate::auth::Caller;
use crate::kernel::error::{Error, Result};
use crate::kernel::ids::{EventId, PublicId};
use crate::kernel::paging::Cursor;
use crate::kernel::proto_json;
use crate::kernel::time::timestamp;
use crate::kernel::validate::{Violations, limits};
use crate::pb;
pub mod outbox;
pub mod store;

use chrono::{DateTime, Utc};
use store::{AttemptRow, EventFilter, EventRow};

/// Events per page when `limit` is not given.
pub const DEFAULT_LIST_LIMIT: i32 = 20;
/// Largest accepted `limit`.
pub const MAX_LIST_LIMIT: i32 = 100;

crate::kernel::names::stored_names! {
    /// Where an event's delivery is (`events.delivery_status`).
    pub enum DeliveryStatus: pb::DeliveryStatus {
        /// Queued or waiting for its next attempt.
        Pending = "pending",
        Delivered = "delivered",
        /// Out of attempts, or its destination answered 410.
        Failed = "failed",
        /// Nowhere to send it (no webhook URL).
        Skipped = "skipped",
    }
}

fn event_to_proto(row: &EventRow) -> pb::Event {
    pb::Event {
        id: row.id.to_string(),
        r#type: row.r#type.clone(),
        data: Some(proto_json::to_struct(&row.payload.0["data"])),
        link_id: row.link_id.map(|id| id.to_string()),
        connection_id: row.connection_id.map(|id| id.to_string()),
        created_at: Some(timestamp(row.created_at)),
        delivery_status: row.delivery_status.to_proto() as i32,
        attempts: row.attempts,
        next_attempt_at: (row.delivery_status == DeliveryStatus::Pending)
            .then(|| timestamp(row.next_attempt_at)),
        delivered_at: row.delivered_at.map(timestamp),
        last_error: row.last_error.clone(),
        destination_url: row.url.clone(),
    }
}

fn attempt_to_proto(row: &AttemptRow) -> pb::DeliveryAttempt {
    pb::DeliveryAttempt {
        attempt: row.attempt,
        url: row.url.clone(),
        started_at: Some(timestamp(row.started_at)),
        latency_ms: i64::from(row.latency_ms),
        status_code: row.status_code,
        error: row.error.clone(),
    }
}

fn time(ts: &Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

/// Checks an optional time range, recording a violation when it is empty.
fn time_range(
    v: &mut Violations,
    after: &Option<prost_types::Timestamp>,
    before: &Option<prost_types::Timestamp>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let (after, before) = (time(after), time(before));
    if let (Some(a), Some(b)) = (after, before)
        && a >= b
    {
        v.add("createdAfter", "must be before createdBefore");
    }
    (after, before)
}

fn optional_id<Id: PublicId>(v: &mut Violations, path: &str, value: &Option<String>) -> Option<Id> {
    let value = value.as_deref().filter(|s| !s.is_empty())?;
    // A malformed id with the right prefix matches nothing.
    let parsed = Id::parse_reference(value);
    if parsed.is_none() {
        v.add(
            path,
            format!("must be an id starting with `{}`", Id::PREFIX),
        );
    }
    parsed
}

/// EventService: the outbox as clients read it, and redeliveries.
#[derive(Debug, Clone)]
pub struct Events {
    db: crate::kernel::db::Db,
}

impl Events {
    pub fn new(db: crate::kernel::db::Db) -> Self {
        Events { db }
    }
}

impl Events {
    pub async fn list_events(
        &self,
        caller: &Caller,
        req: pb::ListEventsRequest,
    ) -> Result<pb::ListEventsResponse> {
        let mut v = Violations::new();
        let limit = req.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            v.add("limit", format!("must be between 1 and {MAX_LIST_LIMIT}"));
        }
        let event_type = req.r#type.clone().filter(|t| !t.is_empty());
        if let Some(t) = &event_type {
            v.max_len("type", t, limits::ID);
        }
        let (created_after, created_before) =
            time_range(&mut v, &req.created_after, &req.created_before);
        let delivery_status = match req.delivery_status() {
            pb::DeliveryStatus::Unspecified if req.delivery_status != 0 => {
                v.add("deliveryStatus", "is not a delivery state");
                None
            }
            pb::DeliveryStatus::Unspecified => None,
            other => DeliveryStatus::from_proto(other),
        };
        let filter = EventFilter {
            connection_id: optional_id(&mut v, "connectionId", &req.connection_id),
            link_id: optional_id(&mut v, "linkId", &req.link_id),
            event_type,
            delivery_status,
            created_after,
            created_before,
        };
        let filter_key = format!("{filter:?}");
        let cursor = match req.page_token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => crate::kernel::paging::decode(token, &filter_key)
                .map_err(|msg| v.add("pageToken", msg))
                .ok(),
            None => None,
        };
        v.finish()?;
        let limit = i64::from(limit);
        let mut rows = store::list(
            &self.db,
            caller.tenant,
            &filter,
            cursor.map(|c| (c.created_at, EventId::from_uuid(c.id))),
            limit,
        )
        .await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => crate::kernel::paging::encode(
                Cursor {
                    created_at: last.created_at,
                    id: last.id.uuid(),
                },
                &filter_key,
            ),
            _ => String::new(),
        };
        Ok(pb::ListEventsResponse {
            events: rows.iter().map(event_to_proto).collect(),
            next_page_token,
        })
    }

    pub async fn get_event(
        &self,
        caller: &Caller,
        req: pb::GetEventRequest,
    ) -> Result<pb::GetEventResponse> {
        let id = EventId::from_request("eventId", &req.event_id)?;
        let (event, attempts) = store::get(&self.db, caller.tenant, id).await?;
        Ok(pb::GetEventResponse {
            event: Some(event_to_proto(&event)),
            attempts: attempts.iter().map(attempt_to_proto).collect(),
        })
    }

    pub async fn redeliver_event(
        &self,
        caller: &Caller,
        req: pb::RedeliverEventRequest,
    ) -> Result<pb::RedeliverEventResponse> {
        let id = EventId::from_request("eventId", &req.event_id)?;
        store::get(&self.db, caller.tenant, id).await?;
        store::redeliver(&self.db, caller.tenant, Some(id), None, None).await?;
        let (event, _) = store::get(&self.db, caller.tenant, id).await?;
        Ok(pb::RedeliverEventResponse {
            event: Some(event_to_proto(&event)),
        })
    }

    pub async fn redeliver_failed_events(
        &self,
        caller: &Caller,
        req: pb::RedeliverFailedEventsRequest,
    ) -> Result<pb::RedeliverFailedEventsResponse> {
        let mut v = Violations::new();
        let (after, before) = time_range(&mut v, &req.created_after, &req.created_before);
        v.finish()?;
        let queued = store::redeliver(&self.db, caller.tenant, None, after, before).await?;
        Ok(pb::RedeliverFailedEventsResponse {
            queued: queued as i64,
        })
    }
}

/// Parses an ISO 8601 time given to REST, or fails naming the parameter.
pub fn parse_time(path: &str, value: &str) -> Result<prost_types::Timestamp> {
    let at = DateTime::parse_from_rfc3339(value).map_err(|_| {
        Error::invalid(
            path,
            "must be an ISO 8601 time such as 2026-11-22T10:00:00Z",
        )
    })?;
    Ok(timestamp(at.with_timezone(&Utc)))
}
