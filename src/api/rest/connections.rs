//! `/v2/connections`: list (documented `limit`/`offset`/`status`, plus
//! `clientReferenceId` and `page_token`), get and delete.

use super::body::{integer, list_query, page_json};
use super::{Authenticated, RestState};
use crate::connections::ConnectionStatus;
use crate::kernel::error::Error;
use crate::kernel::views::{connection_json, iso8601};
use crate::pb;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Query parameters of `GET /v2/connections`, each under its documented
/// name and its camelCase/snake_case twin.
const LIST_PARAMS: [(&str, &str); 5] = [
    ("limit", "limit"),
    ("offset", "offset"),
    ("status", "status"),
    ("clientReferenceId", "client_reference_id"),
    ("pageToken", "page_token"),
];

fn list_request(params: &[(String, String)]) -> Result<pb::ListConnectionsRequest, Error> {
    list_query(
        params,
        &LIST_PARAMS,
        |req: &mut pb::ListConnectionsRequest, name, value, v| match name {
            "limit" => req.limit = integer(v, name, value),
            "offset" => req.offset = integer(v, name, value),
            "status" => match ConnectionStatus::parse(value) {
                Some(status) => req.set_status(status.to_proto()),
                None => v.add(
                    "status",
                    format!("must be one of {}", ConnectionStatus::names()),
                ),
            },
            "clientReferenceId" => req.client_reference_id = Some(value.to_string()),
            _ => req.page_token = Some(value.to_string()),
        },
    )
}

pub(super) async fn list(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, Error> {
    let page = state
        .api
        .connections
        .list_connections(&caller, list_request(&params)?)
        .await?;
    let connections = page.connections.iter().map(connection_json).collect();
    Ok(Json(page_json("connections", connections, page.next_page_token)).into_response())
}

/// Also accepts an OAuth access token for this one connection.
pub(super) async fn get(
    State(state): State<RestState>,
    headers: axum::http::HeaderMap,
    Path(connection_id): Path<String>,
) -> Result<Response, Error> {
    let caller = state
        .api
        .oauth
        .authenticate_connection_reader(crate::auth::presented_key(&headers).as_ref())
        .await?;
    let connection = state
        .api
        .connections
        .get_connection(&caller, pb::GetConnectionRequest { connection_id })
        .await?
        .connection
        .expect("get_connection returns the connection");
    Ok(Json(connection_json(&connection)).into_response())
}

pub(super) async fn delete(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path(connection_id): Path<String>,
) -> Result<Response, Error> {
    let deleted = state
        .api
        .connections
        .delete_connection(&caller, pb::DeleteConnectionRequest { connection_id })
        .await?;
    Ok(Json(json!({
        "connectionId": deleted.connection_id,
        "billingStoppedAt": deleted.billing_stopped_at.as_ref().map(iso8601),
    }))
    .into_response())
}
