//! The end-user flow over REST (`/v1/flow/…`), authenticated by the flow
//! token as `Authorization: Bearer lft_…`.

use super::RestState;
use super::body::{NoFields, read_object};
use crate::auth::presented_key;
use crate::flows::{flow_step, step_name};
use crate::kernel::error::Error;
use crate::kernel::ids::LinkId;
use crate::pb;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;

/// Where an end-user flow stands and what the Link page shows next. Every
/// field is present; `null` when it does not apply at this step.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Flow)]
struct FlowView {
    #[schema(value_type = crate::flows::FlowStep)]
    step: &'static str,
    /// Set once the flow finished.
    outcome: Option<crate::flows::FlowOutcome>,
    integration_id: Option<String>,
    integration_name: Option<String>,
    /// What the login form asks for.
    credential_fields: Vec<CredentialField>,
    second_factor_prompt: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    /// Where the page goes once the flow finished.
    redirect_url: Option<String>,
    link_id: Option<String>,
    connection_id: Option<String>,
    client_app_name: Option<String>,
    client_origin: Option<String>,
    client_accent_color: Option<String>,
    client_logo_url: Option<String>,
    client_reference_id: Option<String>,
    /// The step the end user cancelled at.
    cancelled_step: Option<crate::flows::FlowStep>,
    /// What the app asks to be allowed (the consent step).
    scopes: Vec<String>,
    /// The providers to choose from (`pre-login`).
    integrations: Vec<IntegrationChoice>,
    /// `credentials` or `oauth`, once an integration is chosen.
    login_method: Option<String>,
    /// ISO 8601.
    expires_at: Option<String>,
    /// The page's language.
    lang: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct CredentialField {
    name: String,
    label: String,
    /// Shown masked.
    secret: bool,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct IntegrationChoice {
    integration_id: String,
    name: String,
    /// `credentials` or `oauth`.
    login_method: String,
    category: String,
    sandbox: bool,
}

fn flow_json(flow: &pb::Flow) -> FlowView {
    let given = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    FlowView {
        step: step_name(flow.step()).unwrap_or("unspecified"),
        outcome: crate::flows::FlowOutcome::from_proto(flow.outcome()),
        integration_id: given(&flow.integration_id),
        integration_name: given(&flow.integration_name),
        credential_fields: flow
            .credential_fields
            .iter()
            .map(|f| CredentialField {
                name: f.name.clone(),
                label: f.label.clone(),
                secret: f.secret,
            })
            .collect(),
        second_factor_prompt: given(&flow.second_factor_prompt),
        error_code: given(&flow.error_code),
        error_message: given(&flow.error_message),
        redirect_url: given(&flow.redirect_url),
        link_id: given(&flow.link_id),
        connection_id: given(&flow.connection_id),
        client_app_name: given(&flow.client_app_name),
        client_origin: given(&flow.client_origin),
        client_accent_color: given(&flow.client_accent_color),
        client_logo_url: given(&flow.client_logo_url),
        client_reference_id: given(&flow.client_reference_id),
        cancelled_step: crate::flows::FlowStep::from_proto(flow.cancelled_step()),
        scopes: flow.scopes.clone(),
        integrations: flow
            .integrations
            .iter()
            .map(|i| IntegrationChoice {
                integration_id: i.integration_id.clone(),
                name: i.name.clone(),
                login_method: super::enum_name(i.login_method().as_str_name()),
                category: i.category.clone(),
                sandbox: i.sandbox,
            })
            .collect(),
        login_method: match flow.login_method() {
            pb::LoginMethod::Unspecified => None,
            method => Some(super::enum_name(method.as_str_name())),
        },
        expires_at: flow.expires_at.as_ref().map(super::iso8601),
        lang: flow.lang.clone(),
    }
}

/// Claims a link with the code its app clip or Link page was given.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema only: the handler reads the body.
struct ClaimLinkBody {
    link_id: LinkId,
    /// The `clm_…` code of the app clip URL.
    #[schema(pattern = "^clm_[A-Za-z0-9_-]{1,124}$")]
    claim_code: String,
}

/// A claimed link: the flow token for the next calls, and the flow.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ClaimedLink {
    /// `lft_…`: the bearer token of every other `/v1/flow` call.
    flow_token: String,
    flow: FlowView,
}

#[utoipa::path(post, operation_id = "ClaimLink", path = "/v1/flow/claim", tag = "flow", request_body(content = ClaimLinkBody, content_type = "application/json"), responses((status = 200, body = ClaimedLink)))]
pub(super) async fn claim(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let req = read_object::<ClaimLinkBody, _>(&headers, &body, |f| pb::ClaimLinkRequest {
        link_id: f.string("linkId").unwrap_or_default(),
        claim_code: f.string("claimCode").unwrap_or_default(),
    })?;
    let claimed = state.api.links.claim_link(req).await?;
    let flow = claimed.flow.expect("claim returns the flow");
    Ok(Json(ClaimedLink {
        flow_token: claimed.flow_token,
        flow: flow_json(&flow),
    })
    .into_response())
}

#[utoipa::path(get, operation_id = "GetFlow", path = "/v1/flow", tag = "flow", security(("flow_token" = [])), responses((status = 200, body = FlowView)))]
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

/// The values of the flow's `credentialFields`, by name.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // A schema only: the handler reads the body.
struct CredentialsBody {
    fields: HashMap<String, String>,
}

#[utoipa::path(post, operation_id = "SubmitCredentials", path = "/v1/flow/credentials", tag = "flow", security(("flow_token" = [])), request_body(content = CredentialsBody, content_type = "application/json"), responses((status = 200, body = FlowView)))]
pub(super) async fn credentials(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let req =
        read_object::<CredentialsBody, _>(&headers, &body, |f| pb::SubmitCredentialsRequest {
            fields: f.string_map("fields"),
        })?;
    let flow = state
        .api
        .flows
        .submit_credentials(presented_key(&headers).as_ref(), req)
        .await?;
    Ok(Json(flow_json(&flow)).into_response())
}

/// The code the provider sent the end user.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // A schema only: the handler reads the body.
struct SecondFactorBody {
    code: String,
}

#[utoipa::path(post, operation_id = "SubmitSecondFactor", path = "/v1/flow/second-factor", tag = "flow", security(("flow_token" = [])), request_body(content = SecondFactorBody, content_type = "application/json"), responses((status = 200, body = FlowView)))]
pub(super) async fn second_factor(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let req =
        read_object::<SecondFactorBody, _>(&headers, &body, |f| pb::SubmitSecondFactorRequest {
            code: f.string("code").unwrap_or_default(),
        })?;
    let flow = state
        .api
        .flows
        .submit_second_factor(presented_key(&headers).as_ref(), req)
        .await?;
    Ok(Json(flow_json(&flow)).into_response())
}

/// Where the end user cancelled, for the app's analytics.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // A schema only: the handler reads the body.
struct CancelFlowBody {
    step: Option<crate::flows::FlowStep>,
}

#[utoipa::path(post, operation_id = "CancelFlow", path = "/v1/flow/cancel", tag = "flow", security(("flow_token" = [])), request_body(content = CancelFlowBody, content_type = "application/json"), responses((status = 200, body = FlowView)))]
pub(super) async fn cancel(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let step = read_object::<CancelFlowBody, _>(&headers, &body, |f| {
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

/// One of the flow's `integrations`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // A schema only: the handler reads the body.
struct SelectIntegrationBody {
    #[schema(max_length = 64)]
    integration_id: String,
}

#[utoipa::path(post, operation_id = "SelectIntegration", path = "/v1/flow/integration", tag = "flow", security(("flow_token" = [])), request_body(content = SelectIntegrationBody, content_type = "application/json"), responses((status = 200, body = FlowView)))]
pub(super) async fn select_integration(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let req = read_object::<SelectIntegrationBody, _>(&headers, &body, |f| {
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
#[utoipa::path(post, operation_id = "ApproveAccess", path = "/v1/flow/approve", tag = "flow", security(("flow_token" = [])), responses((status = 200, body = FlowView)))]
pub(super) async fn approve(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    read_object::<NoFields, _>(&headers, &body, |_| ())?;
    let flow = state
        .api
        .sessions
        .approve_access(presented_key(&headers).as_ref())
        .await?;
    Ok(Json(flow_json(&flow)).into_response())
}

/// How the Link page shows the provider's consent page.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // A schema only: the handler reads the body.
struct StartAuthorizationBody {
    /// `page` (the default: this tab) or `popup`.
    display: Option<crate::flows::oauth::AuthorizationDisplay>,
}

/// Where to send the end user: the provider's authorization page.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct AuthorizationStarted {
    authorization_url: String,
}

#[utoipa::path(post, operation_id = "StartProviderAuthorization", path = "/v1/flow/oauth/start", tag = "flow", security(("flow_token" = [])), request_body(content = StartAuthorizationBody, content_type = "application/json"), responses((status = 200, body = AuthorizationStarted)))]
pub(super) async fn start_provider_authorization(
    State(state): State<RestState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let display = read_object::<StartAuthorizationBody, _>(&headers, &body, |f| {
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
    Ok(Json(AuthorizationStarted {
        authorization_url: started.authorization_url,
    })
    .into_response())
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
