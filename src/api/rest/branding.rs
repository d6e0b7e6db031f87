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

/// What the Link page shows of the app; a field left out keeps its value.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema only: the handler reads the body.
struct BrandingBody {
    /// Empty for the app's own name; at most 60 characters, no control
    /// characters.
    #[schema(max_length = 60, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    display_name: Option<String>,
    /// `#rrggbb`, or empty for linkd's own colour.
    #[schema(pattern = "^\\s*(#[0-9A-Fa-f]{6})?\\s*$")]
    accent_color: Option<String>,
    /// A PNG, JPEG or WebP image of at most 256 KiB, base64 (standard
    /// alphabet).
    #[schema(content_encoding = "base64")]
    logo: Option<String>,
    /// Drops the logo (not with `logo`).
    remove_logo: Option<bool>,
}

#[utoipa::path(put, operation_id = "SetClientAppBranding", path = "/v1/client-apps/{client_app_id}/branding", tag = "client apps", security(("api_key" = [])), params(("client_app_id" = inline(crate::kernel::ids::ClientAppId), Path)), request_body(content = BrandingBody, content_type = "application/json"), responses((status = 200, body = super::ClientAppJson)))]
pub(super) async fn set_branding(
    State(state): State<RestState>,
    Authenticated(caller): Authenticated,
    Path(client_app_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let (display_name, accent_color, logo, remove_logo) =
        read_object::<BrandingBody, _>(&headers, &body, |f| {
            (
                f.string("displayName"),
                f.string("accentColor"),
                f.string("logo"),
                f.boolean("removeLogo").unwrap_or(false),
            )
        })?;
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
#[utoipa::path(get, operation_id = "GetClientAppLogo", path = "/link/brand/{client_app_id}/logo", tag = "client apps", params(("client_app_id" = inline(crate::kernel::ids::ClientAppId), Path)), responses((status = 200, content_type = "image/*", description = "the logo; cache forever under its `v` query")))]
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
