//! The end-user flow over REST (`/v1/flow/…`), authenticated by the flow
//! token as `Authorization: Bearer lft_…`.

use super::RestState;
use super::body::read_object;
use crate::auth::presented_key;
use crate::flows::{flow_step, step_name};
use crate::kernel::error::Error;
use crate::pb;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub(super) fn flow_json(flow: &pb::Flow) -> Value {
    let outcome = match flow.outcome() {
        pb::FlowOutcome::Success => json!("success"),
        pb::FlowOutcome::Cancelled => json!("cancelled"),
        pb::FlowOutcome::Error => json!("error"),
        pb::FlowOutcome::Unspecified => Value::Null,
    };
    let empty_to_null = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    json!({
        "step": step_name(flow.step()).unwrap_or("unspecified"),
        "outcome": outcome,
        "integrationId": empty_to_null(&flow.integration_id),
        "integrationName": empty_to_null(&flow.integration_name),
        "credentialFields": flow.credential_fields.iter()
            .map(|f| json!({ "name": f.name, "label": f.label, "secret": f.secret }))
            .collect::<Vec<_>>(),
        "secondFactorPrompt": empty_to_null(&flow.second_factor_prompt),
        "errorCode": empty_to_null(&flow.error_code),
        "errorMessage": empty_to_null(&flow.error_message),
        "redirectUrl": empty_to_null(&flow.redirect_url),
        "linkId": empty_to_null(&flow.link_id),
        "connectionId": empty_to_null(&flow.connection_id),
        "clientAppName": empty_to_null(&flow.client_app_name),
        "clientOrigin": empty_to_null(&flow.client_origin),
        "clientAccentColor": empty_to_null(&flow.client_accent_color),
        "clientLogoUrl": empty_to_null(&flow.client_logo_url),
        "clientReferenceId": empty_to_null(&flow.client_reference_id),
        "cancelledStep": step_name(flow.cancelled_step()),
        "scopes": flow.scopes,
        "integrations": flow.integrations.iter()
            .map(|i| json!({
                "integrationId": i.integration_id,
                "name": i.name,
                "loginMethod": super::enum_name(i.login_method().as_str_name()),
                "category": i.category,
                "sandbox": i.sandbox,
            }))
            .collect::<Vec<_>>(),
        "loginMethod": match flow.login_method() {
            pb::LoginMethod::Unspecified => Value::Null,
            method => json!(super::enum_name(method.as_str_name())),
        },
        "expiresAt": flow.expires_at.as_ref().map(super::iso8601),
        "lang": flow.lang,
    })
}

#[utoipa::path(post, operation_id = "ClaimLink", path = "/v1/flow/claim", tag = "flow", request_body(content = Object, content_type = "application/json"), responses((status = 200, body = Object, description = "`{flowToken, flow}`")))]
pub(super) async fn claim(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let req = read_object(&headers, &body, &["linkId", "claimCode"], |f| {
        pb::ClaimLinkRequest {
            link_id: f.string("linkId").unwrap_or_default(),
            claim_code: f.string("claimCode").unwrap_or_default(),
        }
    })?;
    let claimed = state.api.links.claim_link(req).await?;
    let flow = claimed.flow.expect("claim returns the flow");
    Ok(Json(json!({ "flowToken": claimed.flow_token, "flow": flow_json(&flow) })).into_response())
}

#[utoipa::path(get, operation_id = "GetFlow", path = "/v1/flow", tag = "flow", security(("flow_token" = [])), responses((status = 200, body = Object, description = "the flow")))]
pub(super) async fn get(
    State(state): State<RestState>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let flow = state
        .api
        .flows
        .get_flow(presented_key(&headers).as_ref())
        .await?;
    Ok(Json(flow_json(&flow)).into_response())
}

#[utoipa::path(post, operation_id = "SubmitCredentials", path = "/v1/flow/credentials", tag = "flow", security(("flow_token" = [])), request_body(content = Object, content_type = "application/json"), responses((status = 200, body = Object, description = "the flow")))]
pub(super) async fn credentials(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let req = read_object(&headers, &body, &["fields"], |f| {
        pb::SubmitCredentialsRequest {
            fields: f.string_map("fields"),
        }
    })?;
    let flow = state
        .api
        .flows
        .submit_credentials(presented_key(&headers).as_ref(), req)
        .await?;
    Ok(Json(flow_json(&flow)).into_response())
}

#[utoipa::path(post, operation_id = "SubmitSecondFactor", path = "/v1/flow/second-factor", tag = "flow", security(("flow_token" = [])), request_body(content = Object, content_type = "application/json"), responses((status = 200, body = Object, description = "the flow")))]
pub(super) async fn second_factor(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let req = read_object(&headers, &body, &["code"], |f| {
        pb::SubmitSecondFactorRequest {
            code: f.string("code").unwrap_or_default(),
        }
    })?;
    let flow = state
        .api
        .flows
        .submit_second_factor(presented_key(&headers).as_ref(), req)
        .await?;
    Ok(Json(flow_json(&flow)).into_response())
}

#[utoipa::path(post, operation_id = "CancelFlow", path = "/v1/flow/cancel", tag = "flow", security(("flow_token" = [])), request_body(content = Object, content_type = "application/json"), responses((status = 200, body = Object, description = "the flow")))]
pub(super) async fn cancel(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let step = read_object(&headers, &body, &["step"], |f| {
        flow_step(&f.string("step").unwrap_or_default())
    })?;
    let flow = state
        .api
        .flows
        .cancel_flow(
            presented_key(&headers).as_ref(),
            pb::CancelFlowRequest { step: step as i32 },
        )
        .await?;
    Ok(Json(flow_json(&flow)).into_response())
}

#[utoipa::path(post, operation_id = "SelectIntegration", path = "/v1/flow/integration", tag = "flow", security(("flow_token" = [])), request_body(content = Object, content_type = "application/json"), responses((status = 200, body = Object, description = "the flow")))]
pub(super) async fn select_integration(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let req = read_object(&headers, &body, &["integrationId"], |f| {
        pb::SelectIntegrationRequest {
            integration_id: f.string("integrationId").unwrap_or_default(),
        }
    })?;
    let flow = state
        .api
        .sessions
        .select_integration(presented_key(&headers).as_ref(), req)
        .await?;
    Ok(Json(flow_json(&flow)).into_response())
}

/// Takes no fields: an empty body or `{}`.
#[utoipa::path(post, operation_id = "ApproveAccess", path = "/v1/flow/approve", tag = "flow", security(("flow_token" = [])), responses((status = 200, body = Object, description = "the flow")))]
pub(super) async fn approve(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    read_object(&headers, &body, &[], |_| ())?;
    let flow = state
        .api
        .sessions
        .approve_access(presented_key(&headers).as_ref())
        .await?;
    Ok(Json(flow_json(&flow)).into_response())
}

#[utoipa::path(post, operation_id = "StartProviderAuthorization", path = "/v1/flow/oauth/start", tag = "flow", security(("flow_token" = [])), request_body(content = Object, content_type = "application/json"), responses((status = 200, body = Object, description = "`{authorizationUrl}`")))]
pub(super) async fn start_provider_authorization(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let display = read_object(&headers, &body, &["display"], |f| {
        match f.string("display").as_deref() {
            None | Some("page") => Ok(pb::AuthorizationDisplay::Page),
            Some("popup") => Ok(pb::AuthorizationDisplay::Popup),
            Some(_) => Err(Error::invalid("display", "must be page or popup")),
        }
    })??;
    let started = state
        .api
        .flows
        .start_provider_authorization(
            presented_key(&headers).as_ref(),
            pb::StartProviderAuthorizationRequest {
                display: display as i32,
            },
        )
        .await?;
    Ok(Json(json!({ "authorizationUrl": started.authorization_url })).into_response())
}

/// `/link/oauth/callback`: the provider's redirect back. Always a `303` to
/// the Link page (which has the flow token in its tab's storage), so the
/// code leaves the address bar and history at once: plain for the Link
/// page's own tab, `#oauth=popup` for a popup (the page closes itself), or
/// `#oauth_error=invalid_state` when nothing was done.
#[utoipa::path(get, operation_id = "ProviderCallback", path = "/link/oauth/callback", tag = "flow", params(("state" = Option<String>, Query), ("code" = Option<String>, Query), ("error" = Option<String>, Query)), responses((status = 303, description = "back to the Link page")))]
pub(super) async fn provider_callback(
    State(state): State<RestState>,
    axum::extract::Query(callback): axum::extract::Query<crate::flows::oauth::Callback>,
) -> Result<Response, Error> {
    use crate::flows::oauth::{AuthorizationDisplay, Landing};
    let location = match state.api.flows.provider_callback(callback).await? {
        Landing::LinkPage(AuthorizationDisplay::Page) => "/link".to_string(),
        Landing::LinkPage(AuthorizationDisplay::Popup) => "/link#oauth=popup".to_string(),
        Landing::Refused(code) => format!("/link#oauth_error={code}"),
    };
    Ok((
        axum::http::StatusCode::SEE_OTHER,
        [
            (axum::http::header::LOCATION, location),
            (axum::http::header::CACHE_CONTROL, "no-store".to_string()),
            (
                axum::http::header::REFERRER_POLICY,
                "no-referrer".to_string(),
            ),
        ],
    )
        .into_response())
}
