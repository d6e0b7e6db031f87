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

/// An app's OAuth client at a provider; the secret is never returned.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ProviderOAuthClient)]
struct OAuthClientView {
    integration_id: String,
    client_id: String,
    scopes: Vec<String>,
    /// ISO 8601.
    updated_at: Option<String>,
    /// The deployment's own client, used while the app has none.
    deployment_default: bool,
}

fn client_json(client: &pb::ProviderOAuthClient) -> OAuthClientView {
    OAuthClientView {
        integration_id: client.integration_id.clone(),
        client_id: client.client_id.clone(),
        scopes: client.scopes.clone(),
        updated_at: client.updated_at.as_ref().map(iso8601),
        deployment_default: client.deployment_default,
    }
}

/// The app's OAuth clients, one per OAuth integration of the catalog.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct OAuthClientList {
    oauth_clients: Vec<OAuthClientView>,
}

/// The app's own OAuth client at the provider.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema only: the handler reads the body.
struct OAuthClientBody {
    #[schema(
        min_length = 1,
        max_length = 512,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    client_id: String,
    /// Stored encrypted; never returned.
    #[schema(
        min_length = 1,
        max_length = 512,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    client_secret: String,
    /// Scopes the integration offers; none for its defaults.
    scopes: Option<Vec<String>>,
}

#[utoipa::path(put, operation_id = "SetProviderOAuthClient", path = "/v1/client-apps/{client_app_id}/oauth-clients/{integration_id}", tag = "client apps", security(("api_key" = [])), params(("client_app_id" = inline(crate::kernel::ids::ClientAppId), Path), ("integration_id" = String, Path)), request_body(content = OAuthClientBody, content_type = "application/json"), responses((status = 200, body = OAuthClientView)))]
pub(super) async fn set_client(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path((client_app_id, integration_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let (client_id, client_secret, scopes) =
        read_object::<OAuthClientBody, _>(&headers, &body, |f| {
            (
                f.string("clientId").unwrap_or_default(),
                f.string("clientSecret").unwrap_or_default(),
                f.string_list("scopes"),
            )
        })?;
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

#[utoipa::path(get, operation_id = "ListProviderOAuthClients", path = "/v1/client-apps/{client_app_id}/oauth-clients", tag = "client apps", security(("api_key" = [])), params(("client_app_id" = inline(crate::kernel::ids::ClientAppId), Path)), responses((status = 200, body = OAuthClientList)))]
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
    Ok(Json(OAuthClientList {
        oauth_clients: listed.oauth_clients.iter().map(client_json).collect(),
    })
    .into_response())
}

#[utoipa::path(delete, operation_id = "DeleteProviderOAuthClient", path = "/v1/client-apps/{client_app_id}/oauth-clients/{integration_id}", tag = "client apps", security(("api_key" = [])), params(("client_app_id" = inline(crate::kernel::ids::ClientAppId), Path), ("integration_id" = String, Path)), responses((status = 204, description = "removed; the deployment's default applies again, when there is one")))]
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
