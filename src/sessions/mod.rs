//! Link sessions (the top of the concerns: imports the flow engine,
//! connections, OAuth codes, events and below). `InitLinkSession` opens a flow that the hosted or embedded
//! Link page walks through: pick the integration (unless a reconnect fixes
//! it), log in, give a second factor when asked, consent, done. Consent
//! makes the connection `active` (or refreshes the reconnected one) and
//! emits `connection.created` / `connection.updated` in the same
//! transaction. The end user is then sent to the redirect URL with the
//! documented result parameters.
//!
//! The connection row of a new connection appears at the first login
//! attempt (`pending`), follows the login (`awaiting_2fa`), and becomes
//! `failed` when the session ends without success. A reconnected connection
//! keeps its state until the new login succeeds.

pub mod rules;

use crate::auth::Caller;
use crate::catalog::{Category, Provider};
use crate::client_apps::store as client_apps;
use crate::connections::store::{self as store, FreshSession, NewConnection};
use crate::connections::{ConnectionStatus, connection_event_data};
use crate::connectors::oauth_session::OAuthTokens;
use crate::connectors::{LoginContext, ProviderSession};
use crate::events::outbox::{self, EventSubject};
use crate::flows::attempt::Attempt;
use crate::flows::{
    Finish, FlowKind, FlowKindHooks, FlowOutcome, FlowRow, FlowStep, Flows, NewSessionFlow,
    store as flows_store, wrong_step,
};
use crate::idempotency::Idempotency;
use crate::idempotency::store::IdempotencyKey;
use crate::kernel::crypto::Sealed;
use crate::kernel::db::Db;
use crate::kernel::error::{Error, Precondition, Reason, Result};
use crate::kernel::ids::{ConnectionId, token_hash};
use crate::oauth::rules::{code_redirect, error_redirect, flow_error, issuer};
use crate::pb;
use crate::sessions::rules::{
    NewSession, SessionRequest, SessionResult, session_redirect_url, web_origin,
};
use prost::Message as _;
use secrecy::SecretString;
use sqlx::PgConnection;
use std::sync::Arc;
use std::time::Duration;

/// LinkService's `InitLinkSession` and the session steps of
/// LinkFlowService: choosing the integration and consent.
#[derive(Debug, Clone)]
pub struct Sessions {
    db: Db,
    cipher: crate::kernel::crypto::Cipher,
    idempotency: Idempotency,
    flows: Flows,
    /// How long an OAuth authorization code issued at consent lives.
    code_ttl: Duration,
}

impl Sessions {
    pub fn new(
        db: Db,
        cipher: crate::kernel::crypto::Cipher,
        idempotency: Idempotency,
        flows: Flows,
        code_ttl: Duration,
    ) -> Self {
        Sessions {
            db,
            cipher,
            idempotency,
            flows,
            code_ttl,
        }
    }

    /// Starts a Link session and returns the URL of its page. With an
    /// idempotency key, a repeat of the same request returns the first URL.
    pub async fn init_link_session(
        &self,
        caller: &Caller,
        req: pb::InitLinkSessionRequest,
        idempotency_key: Option<&str>,
    ) -> Result<pb::InitLinkSessionResponse> {
        let new = NewSession::parse(&session_request(&req))?;
        let key = idempotency_key.map(|key| IdempotencyKey {
            tenant: caller.tenant,
            operation: "LinkService.InitLinkSession",
            key,
            request_hash: token_hash(req.encode_to_vec()),
        });
        self.idempotency
            .run(key, async |conn| {
                self.open_session(conn, caller, &new).await
            })
            .await
    }

    /// Reads the app (and the connection to reconnect), then writes the
    /// session's flow in one statement.
    async fn open_session(
        &self,
        conn: &mut PgConnection,
        caller: &Caller,
        new: &NewSession,
    ) -> Result<pb::InitLinkSessionResponse> {
        let tenant = caller.tenant;
        let app = match new.client_app_id {
            Some(id) => client_apps::get_client_app(&mut *conn, tenant, id).await?,
            None => client_apps::list_client_apps(&mut *conn, tenant)
                .await?
                .into_iter()
                .next()
                .ok_or(Error::NotFound("client app"))?,
        };
        let redirect_url = match &new.redirect_url {
            Some(url) if app.redirect_uris.contains(url) => url.clone(),
            Some(_) => {
                return Err(Error::invalid(
                    "redirectUrl",
                    "must exactly match one of the client app's allowed redirect URIs",
                ));
            }
            None => app.redirect_uris[0].clone(),
        };
        // An unknown, deleted or foreign id is not an error: a new
        // connection is made instead (documented).
        let existing = match new.connection_id {
            Some(id) => store::find_live(&mut *conn, tenant, id).await?,
            None => None,
        };
        let (connection_id, reconnect, integration_id) = match &existing {
            Some(row) => (row.id, true, Some(row.integration_id.clone())),
            None => (ConnectionId::new(), false, None),
        };
        let (url, expires_at) = self
            .flows
            .open_session(
                conn,
                &NewSessionFlow {
                    tenant,
                    client_app_id: app.id,
                    redirect_url: &redirect_url,
                    client_reference_id: new.client_reference_id.as_deref(),
                    connection_id,
                    reconnect,
                    integration_id: integration_id.as_deref(),
                    geolocation: new.geolocation.as_ref(),
                    lang: new.lang,
                    oauth: None,
                },
            )
            .await?;
        Ok(pb::InitLinkSessionResponse {
            url,
            expires_at: Some(crate::kernel::time::timestamp(expires_at)),
        })
    }

    /// Picks the integration of a session that does not fix one.
    pub async fn select_integration(
        &self,
        token: Option<&SecretString>,
        req: pb::SelectIntegrationRequest,
    ) -> Result<pb::Flow> {
        let flow = self.flows.flow_at(token, FlowStep::PreLogin).await?;
        if req.integration_id.is_empty() {
            return Err(Error::invalid("integrationId", "is required"));
        }
        let offered = offered_integrations(&self.flows, &flow)
            .await?
            .iter()
            .any(|p| p.id == req.integration_id);
        if !offered {
            return Err(Error::invalid(
                "integrationId",
                "is not one of the offered integrations",
            ));
        }
        flows_store::choose_integration(&self.db, flow.id, &req.integration_id).await?;
        self.flows.flow_view(flow.id).await
    }

    /// The end user's consent: the connection becomes `active` with the
    /// provider session held since login, and the flow finishes.
    pub async fn approve_access(&self, token: Option<&SecretString>) -> Result<pb::Flow> {
        let flow = self.flows.flow_at(token, FlowStep::Authorization).await?;
        let session = self
            .flows
            .open_held_session(&flow)?
            .ok_or_else(|| wrong_step("no login is waiting for consent"))?;
        let mut tx = self.db.begin().await?;
        if !flows_store::close(&mut tx, &flow, FlowOutcome::Success, None, None).await? {
            return Err(Error::FailedPrecondition {
                precondition: Precondition::AlreadyUsed,
                reason: Reason::FlowFinished,
                message: "this flow has already finished".into(),
            });
        }
        let requested = flow
            .connection_id
            .ok_or_else(|| Error::internal(anyhow::anyhow!("session flow without connection")))?;
        let (row, created) = match self
            .activate_connection(&mut tx, &flow, requested, &session)
            .await?
        {
            Some(row) => (row, !flow.reconnect),
            None => {
                // Deleted while the end user was logging in: make a new one.
                let id = ConnectionId::new();
                insert_connection(&mut *tx, &flow, id).await?;
                let row = self
                    .activate_connection(&mut tx, &flow, id, &session)
                    .await?
                    .ok_or_else(|| Error::internal(anyhow::anyhow!("new connection vanished")))?;
                flows_store::set_connection(&mut *tx, flow.id, id).await?;
                (row, true)
            }
        };
        let event = if created {
            "connection.created"
        } else {
            "connection.updated"
        };
        let subject = EventSubject {
            link_id: None,
            connection_id: Some(row.id),
        };
        outbox::record(
            &mut tx,
            flow.tenant(),
            event,
            subject,
            connection_event_data(&row, None),
        )
        .await?;
        let code_redirect_url = match &flow.oauth {
            Some(oauth) => {
                let client_app_id = flow.client_app_id.ok_or_else(|| {
                    Error::internal(anyhow::anyhow!("session flow without client app"))
                })?;
                let code = crate::oauth::issue_authorization_code(
                    &mut tx,
                    self.code_ttl,
                    flow.tenant(),
                    client_app_id,
                    &oauth.0,
                    row.id,
                )
                .await?;
                Some(code_redirect(
                    &oauth.0.effective_redirect_uri,
                    &code,
                    oauth.0.state.as_deref(),
                    &issuer(self.flows.public_url()),
                ))
            }
            None => None,
        };
        tx.commit().await?;
        let mut view = self.flows.flow_view(flow.id).await?;
        if let Some(url) = code_redirect_url {
            view.redirect_url = url;
        }
        Ok(view)
    }

    async fn activate_connection(
        &self,
        tx: &mut PgConnection,
        flow: &FlowRow,
        id: ConnectionId,
        session: &ProviderSession,
    ) -> Result<Option<store::ConnectionRow>> {
        let sealed = self.cipher.encrypt(
            &serde_json::to_vec(session).map_err(Error::internal)?,
            Sealed::ConnectionSession(id),
        );
        store::activate(
            tx,
            flow.tenant(),
            id,
            &FreshSession {
                ciphertext: &sealed,
                expires_at: session.expires_at,
                client_reference_id: flow.client_reference_id.as_deref(),
                geolocation: flow.geolocation.as_ref().map(|g| &g.0),
                token: OAuthTokens::from_session(session)
                    .as_ref()
                    .map(crate::connections::tokens::token_times),
            },
        )
        .await
    }
}

async fn insert_connection(
    db: impl sqlx::PgExecutor<'_>,
    flow: &FlowRow,
    id: ConnectionId,
) -> Result<()> {
    let (Some(client_app_id), Some(integration_id)) =
        (flow.client_app_id, flow.integration_id.as_deref())
    else {
        return Err(wrong_step("no integration has been chosen"));
    };
    store::insert_pending(
        db,
        &NewConnection {
            id,
            tenant: flow.tenant(),
            client_app_id,
            integration_id,
            client_reference_id: flow.client_reference_id.as_deref(),
            geolocation: flow.geolocation.as_ref().map(|g| &g.0),
        },
    )
    .await
}

/// The rules' view of an `InitLinkSession` request.
pub fn session_request(req: &pb::InitLinkSessionRequest) -> SessionRequest<'_> {
    SessionRequest {
        client_app_id: req.client_app_id.as_deref(),
        redirect_url: req.redirect_url.as_deref(),
        client_reference_id: req.client_reference_id.as_deref(),
        connection_id: req.connection_id.as_deref(),
        geolocation: req
            .geolocation
            .as_ref()
            .map(|geo| (geo.country.as_str(), geo.state.as_deref())),
        lang: req.lang.as_deref(),
    }
}

/// The integrations a session's end user may pick: for an OAuth
/// authorization request (linkd as the bank-data provider) only banks; an
/// OAuth integration only when the app (or the deployment) has an OAuth
/// client there.
async fn offered_integrations(engine: &Flows, flow: &FlowRow) -> Result<Vec<Arc<Provider>>> {
    let providers = engine.catalog().providers();
    let usable = match flow.client_app_id {
        Some(app) if providers.iter().any(|p| p.oauth2.is_some()) => {
            engine.provider_oauth().usable_integrations(app).await?
        }
        _ => Vec::new(),
    };
    Ok(providers
        .into_iter()
        .filter(|p| flow.oauth.is_none() || p.category == Category::Bank)
        .filter(|p| p.oauth2.is_none() || usable.contains(&p.id))
        .collect())
}

/// The session kind of flow: holds the provider session for consent and
/// keeps the connection it makes in step.
#[derive(Debug)]
pub(crate) struct SessionFlow;

#[async_trait::async_trait]
impl FlowKindHooks for SessionFlow {
    async fn view(&self, engine: &Flows, flow: &FlowRow, view: &mut pb::Flow) -> Result<()> {
        let redirect_url = flow.redirect_url.as_deref().unwrap_or_default();
        if let Some(id) = flow.client_app_id
            && let Some(app) = client_apps::presentation(engine.db(), id).await?
        {
            view.client_app_name = app.name;
            view.client_accent_color = app.accent_color.unwrap_or_default();
            view.client_logo_url = app
                .logo_sha256
                .map(|sha| crate::client_apps::logo_path(id, &sha))
                .unwrap_or_default();
        }
        view.client_origin = web_origin(redirect_url).unwrap_or_default();
        view.client_reference_id = flow.client_reference_id.clone().unwrap_or_default();
        let oauth = flow.oauth.as_ref().map(|o| &o.0);
        if let Some(oauth) = oauth {
            view.scopes = oauth.scope.split(' ').map(str::to_string).collect();
        }
        if flow.step == FlowStep::PreLogin {
            view.integrations = offered_integrations(engine, flow)
                .await?
                .into_iter()
                .map(|p| pb::IntegrationChoice {
                    integration_id: p.id.clone(),
                    name: p.name.clone(),
                    login_method: p.login_method() as i32,
                    category: p.category.as_str().into(),
                    sandbox: p.sandbox,
                })
                .collect();
        }
        let connection_id = flow
            .connection_id
            .map(|id| id.to_string())
            .unwrap_or_default();
        let result = match flow.outcome {
            Some(FlowOutcome::Success) => Some(SessionResult::Success {
                connection_id: &connection_id,
            }),
            Some(FlowOutcome::Cancelled) => Some(SessionResult::Cancelled {
                step: flow.cancelled_step.map_or("", FlowStep::as_str),
            }),
            Some(FlowOutcome::Error) => Some(SessionResult::Error {
                error_code: flow.error_code.as_deref().unwrap_or("provider_unavailable"),
            }),
            None => None,
        };
        match (result, oauth) {
            (None, _) => {}
            // The code is shown once, in ApproveAccess's answer.
            (Some(SessionResult::Success { .. }), Some(_)) => {}
            (Some(_), Some(oauth)) => {
                let (error, description) = flow_error(flow.error_code.as_deref());
                view.redirect_url = error_redirect(
                    &oauth.effective_redirect_uri,
                    error,
                    description,
                    oauth.state.as_deref(),
                    &issuer(engine.public_url()),
                );
            }
            (Some(result), None) => {
                view.redirect_url = session_redirect_url(
                    redirect_url,
                    &result,
                    flow.client_reference_id.as_deref(),
                );
            }
        }
        if flow.outcome == Some(FlowOutcome::Success) {
            view.connection_id = connection_id;
        }
        Ok(())
    }

    /// At the first login attempt of a session making a new connection, the
    /// connection appears as `pending`.
    async fn login_reserved(&self, engine: &Flows, flow: &FlowRow) -> Result<()> {
        match (flow.reconnect, flow.connection_id) {
            (false, Some(id)) => insert_connection(engine.db(), flow, id).await,
            _ => Ok(()),
        }
    }

    /// Logged in: keep the provider session (encrypted, bound to the flow)
    /// until the end user consents or leaves. Only the login attempt's
    /// holder can; a session that finished meanwhile logs the provider out.
    async fn logged_in(
        &self,
        engine: &Flows,
        attempt: &Attempt,
        ctx: &LoginContext<'_>,
        session: ProviderSession,
    ) -> Result<()> {
        let sealed = engine.seal_held_session(&attempt.flow, &session)?;
        let held = flows_store::hold_for_consent(engine.db(), attempt.flow.id, attempt.id, &sealed)
            .await?;
        if !held {
            engine.log_out(&attempt.flow, ctx, &session).await;
        }
        Ok(())
    }

    /// A new connection waits for the second factor with its flow.
    async fn awaiting_second_factor(&self, tx: &mut PgConnection, flow: &FlowRow) -> Result<()> {
        if let (false, Some(id)) = (flow.reconnect, flow.connection_id) {
            store::set_unfinished_status(
                tx,
                id,
                &[ConnectionStatus::Pending],
                ConnectionStatus::Awaiting2fa,
            )
            .await?;
        }
        Ok(())
    }

    /// Ends a session that did not succeed; a connection it was making is
    /// `failed`.
    async fn finish(&self, engine: &Flows, flow: &FlowRow, finish: Finish) -> Result<bool> {
        debug_assert_eq!(flow.kind, FlowKind::Session);
        let (outcome, error_code, cancelled_step) = match &finish {
            Finish::Failed(code, _) => (FlowOutcome::Error, Some(*code), None),
            Finish::Cancelled(step) => (FlowOutcome::Cancelled, None, Some(*step)),
            Finish::Expired => (FlowOutcome::Error, Some("session_expired"), None),
            Finish::Completed(_) => {
                return Err(Error::internal(anyhow::anyhow!(
                    "a session succeeds through consent, not operations"
                )));
            }
        };
        let mut tx = engine.db().begin().await?;
        if !flows_store::close(&mut tx, flow, outcome, error_code, cancelled_step).await? {
            return Ok(false);
        }
        if let (false, Some(id)) = (flow.reconnect, flow.connection_id) {
            store::set_unfinished_status(
                &mut tx,
                id,
                &[ConnectionStatus::Pending, ConnectionStatus::Awaiting2fa],
                ConnectionStatus::Failed,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
