//! REST of `SetClientAppBranding` (`PUT /v1/client-apps/{id}/branding`,
//! the logo as base64) and the logo the Link page loads
//! (`GET /link/brand/{id}/logo`).

use super::body::read_object;
use super::{Authenticated, ClientAppJson, RestState};
use crate::kernel::error::Error;
use crate::pb;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

#[utoipa::path(put, operation_id = "SetClientAppBranding", path = "/v1/client-apps/{client_app_id}/branding", tag = "client apps", security(("api_key" = [])), params(("client_app_id" = String, Path, description = "`app_…`")), request_body(content = Object, content_type = "application/json"), responses((status = 200, body = super::ClientAppJson)))]
pub(super) async fn set_branding(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path(client_app_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let (display_name, accent_color, logo, remove_logo) = read_object(
        &headers,
        &body,
        &["displayName", "accentColor", "logo", "removeLogo"],
        |f| {
            (
                f.string("displayName"),
                f.string("accentColor"),
                f.string("logo"),
                f.boolean("removeLogo").unwrap_or(false),
            )
        },
    )?;
    let logo = logo
        .map(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| Error::invalid("logo", "must be base64 (standard alphabet)"))
        })
        .transpose()?;
    let set = state
        .api
        .client_apps
        .set_branding(
            &caller,
            pb::SetClientAppBrandingRequest {
                client_app_id,
                display_name,
                accent_color,
                logo,
                remove_logo,
            },
        )
        .await?;
    let app = set.client_app.expect("set_branding returns the app");
    Ok(Json(ClientAppJson::from(app)).into_response())
}

/// The app's logo, for the Link page: cached for good (its URL changes with
/// it), never sniffed, never run.
#[utoipa::path(get, operation_id = "GetClientAppLogo", path = "/link/brand/{client_app_id}/logo", tag = "client apps", params(("client_app_id" = String, Path, description = "`app_…`")), responses((status = 200, content_type = "image/*", description = "the logo; cache forever under its `v` query")))]
pub(super) async fn logo(
    State(state): State<RestState>,
    Path(client_app_id): Path<String>,
) -> Result<Response, Error> {
    let (content_type, bytes) = state.api.client_apps.logo(&client_app_id).await?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&content_type).map_err(Error::internal)?,
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(response)
}
