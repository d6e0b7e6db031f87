//! REST of the apps' OAuth clients at providers (`ClientAppService`'s
//! `…ProviderOAuthClient` RPCs).

use super::body::read_object;
use super::{Authenticated, RestState, iso8601};
use crate::kernel::error::Error;
use crate::pb;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

fn client_json(client: &pb::ProviderOAuthClient) -> Value {
    json!({
        "integrationId": client.integration_id,
        "clientId": client.client_id,
        "scopes": client.scopes,
        "updatedAt": client.updated_at.as_ref().map(iso8601),
        "deploymentDefault": client.deployment_default,
    })
}

#[utoipa::path(put, operation_id = "SetProviderOAuthClient", path = "/v1/client-apps/{client_app_id}/oauth-clients/{integration_id}", tag = "client apps", security(("api_key" = [])), params(("client_app_id" = String, Path, description = "`app_…`"), ("integration_id" = String, Path)), request_body(content = Object, content_type = "application/json"), responses((status = 200, body = Object, description = "the client, without its secret")))]
pub(super) async fn set_client(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path((client_app_id, integration_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let (client_id, client_secret, scopes) = read_object(
        &headers,
        &body,
        &["clientId", "clientSecret", "scopes"],
        |f| {
            (
                f.string("clientId").unwrap_or_default(),
                f.string("clientSecret").unwrap_or_default(),
                f.string_list("scopes"),
            )
        },
    )?;
    let set = state
        .api
        .provider_oauth
        .set_client(
            &caller,
            pb::SetProviderOAuthClientRequest {
                client_app_id,
                integration_id,
                client_id,
                client_secret,
                scopes,
            },
        )
        .await?;
    let client = set.oauth_client.unwrap_or_default();
    Ok(Json(client_json(&client)).into_response())
}

#[utoipa::path(get, operation_id = "ListProviderOAuthClients", path = "/v1/client-apps/{client_app_id}/oauth-clients", tag = "client apps", security(("api_key" = [])), params(("client_app_id" = String, Path, description = "`app_…`")), responses((status = 200, body = Object, description = "`{oauthClients}`")))]
pub(super) async fn list_clients(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path(client_app_id): Path<String>,
) -> Result<Response, Error> {
    let listed = state
        .api
        .provider_oauth
        .list_clients(
            &caller,
            pb::ListProviderOAuthClientsRequest { client_app_id },
        )
        .await?;
    let clients: Vec<Value> = listed.oauth_clients.iter().map(client_json).collect();
    Ok(Json(json!({ "oauthClients": clients })).into_response())
}

#[utoipa::path(delete, operation_id = "DeleteProviderOAuthClient", path = "/v1/client-apps/{client_app_id}/oauth-clients/{integration_id}", tag = "client apps", security(("api_key" = [])), params(("client_app_id" = String, Path, description = "`app_…`"), ("integration_id" = String, Path)), responses((status = 200, body = Object)))]
pub(super) async fn delete_client(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path((client_app_id, integration_id)): Path<(String, String)>,
) -> Result<Response, Error> {
    state
        .api
        .provider_oauth
        .delete_client(
            &caller,
            pb::DeleteProviderOAuthClientRequest {
                client_app_id,
                integration_id,
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
