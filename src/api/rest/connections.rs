//! `/v2/connections`: list (documented `limit`/`offset`/`status`, plus
//! `clientReferenceId` and `page_token`), get and delete; the Access API's
//! `/v2/connections/{id}/operations` (run, and list the runs).

use super::body::{
    Fields, creating_request, declared_fields, integer, list_query, operations_field,
};
use super::{Authenticated, RestState};
use crate::connections::ConnectionStatus;
use crate::kernel::error::Error;
use crate::kernel::proto_json;
use crate::kernel::validate::Violations;
use crate::kernel::views::{ConnectionView, iso8601};
use crate::pb;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

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

/// One page of connections, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ConnectionPage {
    connections: Vec<ConnectionView>,
    /// Pass as `pageToken` for the next page; `null` on the last.
    next_page_token: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct DeletedConnection {
    connection_id: String,
    /// When billing for the connection stopped (now).
    billing_stopped_at: Option<String>,
}

#[utoipa::path(get, operation_id = "ListConnections", path = "/v2/connections", tag = "connections", security(("api_key" = [])), params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "default 20"), ("offset" = Option<u32>, Query, maximum = 10000, description = "at most `LINKD_MAX_LIST_OFFSET` (10000); not with `pageToken`"), ("status" = Option<crate::connections::ConnectionStatus>, Query), ("clientReferenceId" = Option<String>, Query, max_length = 255), ("pageToken" = Option<String>, Query, description = "the `nextPageToken` of the previous page, with the same filters")), responses((status = 200, body = ConnectionPage)))]
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
    let connections = page.connections.iter().map(ConnectionView::from).collect();
    let next_page_token = Some(page.next_page_token).filter(|t| !t.is_empty());
    Ok(Json(ConnectionPage {
        connections,
        next_page_token,
    })
    .into_response())
}

/// Also accepts an OAuth access token for this one connection.
#[utoipa::path(get, operation_id = "GetConnection", path = "/v2/connections/{connection_id}", tag = "connections", security(("api_key" = []), ("connection_token" = [])), params(("connection_id" = inline(crate::kernel::ids::ConnectionId), Path)), responses((status = 401, body = super::ErrorBody, description = "no valid API key or access token; a refused OAuth access token (unknown, expired, revoked) answers as RFC 6750 §3.1 says: `WWW-Authenticate: Bearer error=\"invalid_token\"`, `error` `invalid_token`, an `error_description`, and `code` `UNAUTHENTICATED`"), (status = 200, body = ConnectionView)))]
pub(super) async fn get(
    State(state): State<RestState>,
    headers: axum::http::HeaderMap,
    Path(connection_id): Path<String>,
) -> Result<Response, Error> {
    let caller = connection_reader(&state, &headers).await?;
    let connection = state
        .api
        .connections
        .get_connection(&caller, pb::GetConnectionRequest { connection_id })
        .await?
        .connection
        .expect("get_connection returns the connection");
    Ok(Json(ConnectionView::from(&connection)).into_response())
}

#[utoipa::path(delete, operation_id = "DeleteConnection", path = "/v2/connections/{connection_id}", tag = "connections", security(("api_key" = [])), params(("connection_id" = inline(crate::kernel::ids::ConnectionId), Path)), responses((status = 200, body = DeletedConnection)))]
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
    Ok(Json(DeletedConnection {
        connection_id: deleted.connection_id,
        billing_stopped_at: deleted.billing_stopped_at.as_ref().map(iso8601),
    })
    .into_response())
}

/// The caller of a route that also accepts an OAuth access token for the
/// one connection it names.
async fn connection_reader(
    state: &RestState,
    headers: &axum::http::HeaderMap,
) -> Result<crate::auth::Caller, Error> {
    state
        .api
        .oauth
        .authenticate_connection_reader(crate::auth::presented_key(headers).as_ref())
        .await
}

/// Operations to run on the connection now, as in `POST /v1/links`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // A schema only: the handler reads the body.
struct ExecuteOperationsBody {
    #[schema(min_items = 1)]
    operations: Vec<super::body::OperationBody>,
}

/// `POST /v2/connections/{connectionId}/operations` with
/// `{"operations": [...]}` as in `POST /v1/links`.
#[utoipa::path(post, operation_id = "ExecuteOperations", path = "/v2/connections/{connection_id}/operations", tag = "connections", security(("api_key" = []), ("connection_token" = [])), params(("connection_id" = inline(crate::kernel::ids::ConnectionId), Path), ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "1 to 255 visible ASCII characters; replays of the same request within 24 h answer as the first did, another request under the same key is `422 IDEMPOTENCY_KEY_REUSED`")), request_body(content = ExecuteOperationsBody, content_type = "application/json"), responses((status = 401, body = super::ErrorBody, description = "no valid API key or access token; a refused OAuth access token (unknown, expired, revoked) answers as RFC 6750 §3.1 says: `WWW-Authenticate: Bearer error=\"invalid_token\"`, `error` `invalid_token`, an `error_description`, and `code` `UNAUTHENTICATED`"), (status = 200, body = OperationsResult)))]
pub(super) async fn execute_operations(
    State(state): State<RestState>,
    headers: axum::http::HeaderMap,
    Path(connection_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let caller = connection_reader(&state, &headers).await?;
    let (req, key) = creating_request(
        &headers,
        &body,
        |object| {
            let mut problems = Violations::new();
            Fields::new(object, "", &mut problems)
                .reject_unknown(declared_fields::<ExecuteOperationsBody>());
            let operations = operations_field(object, &mut problems);
            (
                pb::ExecuteOperationsRequest {
                    connection_id: connection_id.clone(),
                    operations,
                },
                problems,
            )
        },
        // The operations' own rules need the connection's integration: the
        // service checks them once the types are right.
        |_| Ok(()),
    )?;
    let ran = state
        .api
        .connections
        .execute_operations(&caller, req, key.as_deref())
        .await?;
    Ok(Json(OperationsResult {
        connection_id: ran.connection_id,
        result: ran.result.as_ref().map(proto_json::from_struct),
        operation_run_id: ran.operation_run_id,
    })
    .into_response())
}

const RUN_PARAMS: [(&str, &str); 2] = [("limit", "limit"), ("pageToken", "page_token")];

/// `GET /v2/connections/{connectionId}/operations`.
#[utoipa::path(get, operation_id = "ListOperationRuns", path = "/v2/connections/{connection_id}/operations", tag = "connections", security(("api_key" = []), ("connection_token" = [])), params(("connection_id" = inline(crate::kernel::ids::ConnectionId), Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "default 20"), ("pageToken" = Option<String>, Query, description = "the `nextPageToken` of the previous page")), responses((status = 401, body = super::ErrorBody, description = "no valid API key or access token; a refused OAuth access token (unknown, expired, revoked) answers as RFC 6750 §3.1 says: `WWW-Authenticate: Bearer error=\"invalid_token\"`, `error` `invalid_token`, an `error_description`, and `code` `UNAUTHENTICATED`"), (status = 200, body = OperationRunPage)))]
pub(super) async fn list_operation_runs(
    State(state): State<RestState>,
    headers: axum::http::HeaderMap,
    Path(connection_id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, Error> {
    let caller = connection_reader(&state, &headers).await?;
    let mut req: pb::ListOperationRunsRequest = list_query(
        &params,
        &RUN_PARAMS,
        |req: &mut pb::ListOperationRunsRequest, name, value, v| match name {
            "limit" => req.limit = integer(v, name, value),
            _ => req.page_token = Some(value.to_string()),
        },
    )?;
    req.connection_id = connection_id;
    let page = state
        .api
        .connections
        .list_operation_runs(&caller, req)
        .await?;
    Ok(Json(OperationRunPage {
        operation_runs: page
            .operation_runs
            .iter()
            .map(OperationRunView::from)
            .collect(),
        next_page_token: Some(page.next_page_token).filter(|t| !t.is_empty()),
    })
    .into_response())
}

/// One page of a connection's Access API calls, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct OperationRunPage {
    operation_runs: Vec<OperationRunView>,
    /// `null` on the last page.
    next_page_token: Option<String>,
}

/// One recorded Access API call.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = OperationRun)]
struct OperationRunView {
    /// `opr_…`
    id: String,
    connection_id: String,
    operations: Vec<super::links::OperationJson>,
    /// `succeeded` or `failed`.
    status: String,
    error_code: Option<String>,
    error_message: Option<String>,
    /// ISO 8601.
    started_at: Option<String>,
    duration_ms: i64,
}

impl From<&pb::OperationRun> for OperationRunView {
    fn from(run: &pb::OperationRun) -> Self {
        let given = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        OperationRunView {
            id: run.id.clone(),
            connection_id: run.connection_id.clone(),
            operations: super::links::operations_json(&run.operations),
            status: super::enum_name(run.status().as_str_name()),
            error_code: given(&run.error_code),
            error_message: given(&run.error_message),
            started_at: run.started_at.as_ref().map(iso8601),
            duration_ms: run.duration_ms,
        }
    }
}

/// What the operations returned.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct OperationsResult {
    connection_id: String,
    /// By `resource.action`; a single operation's result is flat.
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    /// `opr_…`: this call in `GET …/operations`.
    operation_run_id: String,
}

/// The connection whose sandbox login was reset.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ResetLogin {
    connection_id: String,
}

/// The provider access token, for an app the operator allowed to take it.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct AccessTokenHandOff {
    connection_id: String,
    access_token: String,
    /// Usually `Bearer`.
    token_type: String,
    /// ISO 8601; `null` when the provider gave no lifetime.
    expires_at: Option<String>,
    /// Space-separated; `null` when the provider named none.
    scope: Option<String>,
    /// Where to call the provider's API with it.
    api_base_url: String,
}

/// `POST /v2/sandbox/connections/{connectionId}/reset-login` (no fields).
#[utoipa::path(post, operation_id = "ResetSandboxLogin", path = "/v2/sandbox/connections/{connection_id}/reset-login", tag = "connections", security(("api_key" = [])), params(("connection_id" = inline(crate::kernel::ids::ConnectionId), Path)), responses((status = 200, body = ResetLogin)))]
pub(super) async fn reset_sandbox_login(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path(connection_id): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    super::body::read_object::<super::body::NoFields, _>(&headers, &body, |_| ())?;
    let reset = state
        .api
        .connections
        .reset_sandbox_login(&caller, pb::ResetSandboxLoginRequest { connection_id })
        .await?;
    Ok(Json(ResetLogin {
        connection_id: reset.connection_id,
    })
    .into_response())
}

/// Any method on `/v2/connections/{connectionId}/proxy[/{path…}]`: the
/// request, its query and body as they are, to the provider's API; the
/// answer streamed back with the provider's status and headers.
#[utoipa::path(method(get, post, put, patch, delete), operation_id = "Proxy", path = "/v2/connections/{connection_id}/proxy/{path}",
    tag = "connections",
    security(("api_key" = []), ("connection_token" = [])),
    params(("connection_id" = inline(crate::kernel::ids::ConnectionId), Path),
           ("path" = String, Path, description = "the provider API path, any number of segments, below the integration's apiBaseUrl")),
    responses((status = "default", description = "the provider's answer, status and body as it gave them; linkd's own refusals are `Error`")))]
pub(super) async fn proxy(
    State(state): State<RestState>,
    method: axum::http::Method,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    Path(params): Path<std::collections::HashMap<String, String>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let caller = connection_reader(&state, &headers).await?;
    let connection_id = params.get("connection_id").cloned().unwrap_or_default();
    // What follows `/v2/connections/{id}/proxy`, still percent-encoded,
    // with its leading slash (so `proxy//x` keeps its empty segment).
    let path = match uri.path().splitn(6, '/').nth(5) {
        Some(rest) => format!("/{rest}"),
        None => String::new(),
    };
    let answer = state
        .api
        .connections
        .proxy(
            &caller,
            crate::connections::proxy::ProxyCall {
                connection_id,
                method: method.as_str().to_string(),
                path,
                query: uri.query().unwrap_or_default().to_string(),
                headers,
                body,
            },
        )
        .await?;
    let mut response = Response::new(axum::body::Body::from_stream(answer.body));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    response.extensions_mut().insert(super::ProviderAnswer);
    Ok(response)
}

/// `GET /v2/connections/{connectionId}/access-token`: the hand-off, flat,
/// never cached.
#[utoipa::path(get, operation_id = "GetConnectionAccessToken", path = "/v2/connections/{connection_id}/access-token", tag = "connections", security(("api_key" = [])), params(("connection_id" = inline(crate::kernel::ids::ConnectionId), Path)), responses((status = 200, body = AccessTokenHandOff)))]
pub(super) async fn access_token(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path(connection_id): Path<String>,
) -> Result<Response, Error> {
    let token = state
        .api
        .connections
        .access_token(
            &caller,
            pb::GetConnectionAccessTokenRequest { connection_id },
        )
        .await?;
    let body = AccessTokenHandOff {
        expires_at: token.expires_at.as_ref().map(iso8601),
        scope: Some(token.scope).filter(|s| !s.is_empty()),
        connection_id: token.connection_id,
        access_token: token.access_token,
        token_type: token.token_type,
        api_base_url: token.api_base_url,
    };
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response())
}
