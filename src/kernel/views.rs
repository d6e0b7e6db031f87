//! JSON renderings of resources that more than one surface shows: the REST
//! shim and webhook payloads render a connection the same way.

use crate::pb;
use serde_json::Value;

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
    serde_json::to_value(ConnectionView::from(c)).expect("a connection view serializes")
}

/// A connection, as REST returns it and webhooks carry it.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Connection)]
pub struct ConnectionView {
    /// `conn_…`
    id: String,
    client_app_id: String,
    integration_id: String,
    /// `active`, `expired` or `revoked`.
    status: String,
    client_reference_id: Option<String>,
    geolocation: Option<GeolocationView>,
    created_at: Option<String>,
    updated_at: Option<String>,
    /// When the end user last logged in.
    authenticated_at: Option<String>,
    /// When the provider session is known to end.
    session_expires_at: Option<String>,
    /// OAuth integrations only: the provider token's refresh state.
    #[serde(skip_serializing_if = "Option::is_none")]
    oauth: Option<ConnectionOAuthView>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Geolocation)]
pub struct GeolocationView {
    /// ISO 3166-1 alpha-2.
    country: String,
    /// ISO 3166-2 subdivision.
    state: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ConnectionOAuth)]
pub struct ConnectionOAuthView {
    token_obtained_at: Option<String>,
    token_expires_at: Option<String>,
    next_refresh_at: Option<String>,
    /// Failed refreshes in a row.
    refresh_failures: i32,
    last_refresh_error: Option<String>,
    /// Set once the failures reached `LINKD_OAUTH_REFRESH_ATTEMPTS`.
    refresh_exhausted_at: Option<String>,
}

impl From<&pb::Connection> for ConnectionView {
    fn from(c: &pb::Connection) -> Self {
        let time = |t: &Option<prost_types::Timestamp>| t.as_ref().map(iso8601);
        ConnectionView {
            id: c.id.clone(),
            client_app_id: c.client_app_id.clone(),
            integration_id: c.integration_id.clone(),
            status: enum_name(c.status().as_str_name()),
            client_reference_id: c.client_reference_id.clone(),
            geolocation: c.geolocation.as_ref().map(|g| GeolocationView {
                country: g.country.clone(),
                state: g.state.clone(),
            }),
            created_at: time(&c.created_at),
            updated_at: time(&c.updated_at),
            authenticated_at: time(&c.authenticated_at),
            session_expires_at: time(&c.session_expires_at),
            oauth: c.oauth.as_ref().map(|o| ConnectionOAuthView {
                token_obtained_at: time(&o.token_obtained_at),
                token_expires_at: time(&o.token_expires_at),
                next_refresh_at: time(&o.next_refresh_at),
                refresh_failures: o.refresh_failures,
                last_refresh_error: (!o.last_refresh_error.is_empty())
                    .then(|| o.last_refresh_error.clone()),
                refresh_exhausted_at: time(&o.refresh_exhausted_at),
            }),
        }
    }
}

/// A webhook event and the state of its delivery, as REST returns it.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Event)]
pub struct EventView {
    /// `evt_…`; also the `webhook-id` of every attempt.
    id: String,
    /// Such as `connection.created`.
    r#type: String,
    /// The webhook body's `data`; never a secret.
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
    link_id: Option<String>,
    connection_id: Option<String>,
    created_at: Option<String>,
    /// `pending`, `delivered`, `failed` or `skipped`.
    delivery_status: String,
    /// Attempts since the last (re)delivery request.
    attempts: i32,
    /// While `pending`.
    next_attempt_at: Option<String>,
    delivered_at: Option<String>,
    /// Why the last attempt failed, or why delivery stopped.
    last_error: Option<String>,
    destination_url: Option<String>,
}

impl From<&pb::Event> for EventView {
    fn from(e: &pb::Event) -> Self {
        let time = |t: &Option<prost_types::Timestamp>| t.as_ref().map(iso8601);
        EventView {
            id: e.id.clone(),
            r#type: e.r#type.clone(),
            data: e.data.as_ref().map(crate::kernel::proto_json::from_struct),
            link_id: e.link_id.clone(),
            connection_id: e.connection_id.clone(),
            created_at: time(&e.created_at),
            delivery_status: enum_name(e.delivery_status().as_str_name()),
            attempts: e.attempts,
            next_attempt_at: time(&e.next_attempt_at),
            delivered_at: time(&e.delivered_at),
            last_error: e.last_error.clone(),
            destination_url: e.destination_url.clone(),
        }
    }
}

/// One delivery attempt, as REST returns it.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = DeliveryAttempt)]
pub struct AttemptView {
    /// 1 for the event's first, counting redeliveries.
    attempt: i32,
    url: String,
    started_at: Option<String>,
    /// Until the answer or the failure.
    latency_ms: i64,
    /// Absent when no answer came.
    status_code: Option<i32>,
    /// Absent on success.
    error: Option<String>,
}

impl From<&pb::DeliveryAttempt> for AttemptView {
    fn from(a: &pb::DeliveryAttempt) -> Self {
        AttemptView {
            attempt: a.attempt,
            url: a.url.clone(),
            started_at: a.started_at.as_ref().map(iso8601),
            latency_ms: a.latency_ms,
            status_code: a.status_code,
            error: a.error.clone(),
        }
    }
}
