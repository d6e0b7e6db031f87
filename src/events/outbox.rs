//! The outbox write: every state change records its event in the same
//! transaction, and the webhook dispatcher delivers it from there.

use crate::kernel::error::Result;
use crate::kernel::ids::{ConnectionId, LinkId};
use crate::kernel::tenant::Tenant;
use serde_json::{Value, json};
use sqlx::PgConnection;

/// Largest event payload, and so webhook body. A `link.completed` whose
/// result is larger carries `"resultTruncated": true` instead of `result`
/// (see `GetLink`).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Writes an event to the outbox, inside the caller's transaction.
pub async fn record(
    tx: &mut PgConnection,
    tenant: Tenant,
    event_type: &str,
    subject: EventSubject,
    mut data: Value,
) -> Result<()> {
    let size = serde_json::to_vec(&data).map_or(0, |v| v.len());
    if size > MAX_PAYLOAD_BYTES
        && let Some(object) = data.as_object_mut()
        && object.remove("result").is_some()
    {
        // Webhook bodies are capped; the full result stays readable by GetLink.
        object.insert("resultTruncated".into(), Value::Bool(true));
    }
    let payload = json!({ "type": event_type, "data": data });
    super::store::insert(tx, tenant, event_type, subject, &payload).await
}

/// What an event is about, for filtering deliveries.
#[derive(Debug, Default, Clone, Copy)]
pub struct EventSubject {
    pub link_id: Option<LinkId>,
    pub connection_id: Option<ConnectionId>,
}
