//! JSON renderings of resources that more than one surface shows: the REST
//! shim and webhook payloads render a connection the same way.

use crate::pb;
use serde_json::{Value, json};

/// ISO 8601 with milliseconds, UTC (`2026-11-22T10:00:00.000Z`).
pub fn iso8601(ts: &prost_types::Timestamp) -> String {
    chrono::DateTime::from_timestamp(ts.seconds, ts.nanos as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The documented REST name of a proto enum value: its name without the
/// enum prefix, lowercased (`LINK_STATUS_AWAITING_2FA` → `awaiting_2fa`,
/// `OPERATION_ACTION_READ` → `read`).
pub fn enum_name(proto_name: &str) -> String {
    const PREFIXES: [&str; 8] = [
        "LOGIN_METHOD_",
        "OPERATION_RUN_STATUS_",
        "LINK_STATUS_",
        "DELIVERY_STATUS_",
        "OPERATION_ACTION_",
        "PROVIDER_CATEGORY_",
        "ENVIRONMENT_",
        "CONNECTION_STATUS_",
    ];
    let bare = PREFIXES
        .iter()
        .find_map(|p| proto_name.strip_prefix(p))
        .unwrap_or(proto_name);
    bare.to_ascii_lowercase()
}

/// A connection as REST returns it and webhooks carry it. Timestamps are ISO
/// 8601; absent optional values are `null`.
pub fn connection_json(c: &pb::Connection) -> Value {
    let time = |t: &Option<prost_types::Timestamp>| t.as_ref().map(iso8601);
    let mut connection = json!({
        "id": c.id,
        "clientAppId": c.client_app_id,
        "integrationId": c.integration_id,
        "status": enum_name(c.status().as_str_name()),
        "clientReferenceId": c.client_reference_id,
        "geolocation": c.geolocation.as_ref().map(|g| json!({ "country": g.country, "state": g.state })),
        "createdAt": time(&c.created_at),
        "updatedAt": time(&c.updated_at),
        "authenticatedAt": time(&c.authenticated_at),
        "sessionExpiresAt": time(&c.session_expires_at),
    });
    if let Some(oauth) = &c.oauth {
        connection["oauth"] = json!({
            "tokenObtainedAt": time(&oauth.token_obtained_at),
            "tokenExpiresAt": time(&oauth.token_expires_at),
            "nextRefreshAt": time(&oauth.next_refresh_at),
            "refreshFailures": oauth.refresh_failures,
            "lastRefreshError": (!oauth.last_refresh_error.is_empty()).then_some(&oauth.last_refresh_error),
            "refreshExhaustedAt": time(&oauth.refresh_exhausted_at),
        });
    }
    connection
}

/// A webhook event as REST returns it.
pub fn event_json(e: &pb::Event) -> Value {
    let time = |t: &Option<prost_types::Timestamp>| t.as_ref().map(iso8601);
    json!({
        "id": e.id,
        "type": e.r#type,
        "data": e.data.as_ref().map(crate::kernel::proto_json::from_struct),
        "linkId": e.link_id,
        "connectionId": e.connection_id,
        "createdAt": time(&e.created_at),
        "deliveryStatus": enum_name(e.delivery_status().as_str_name()),
        "attempts": e.attempts,
        "nextAttemptAt": time(&e.next_attempt_at),
        "deliveredAt": time(&e.delivered_at),
        "lastError": e.last_error,
        "destinationUrl": e.destination_url,
    })
}

/// One delivery attempt as REST returns it.
pub fn attempt_json(a: &pb::DeliveryAttempt) -> Value {
    json!({
        "attempt": a.attempt,
        "url": a.url,
        "startedAt": a.started_at.as_ref().map(iso8601),
        "latencyMs": a.latency_ms,
        "statusCode": a.status_code,
        "error": a.error,
    })
}
