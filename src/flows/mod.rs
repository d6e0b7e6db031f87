//! The end user's side of linkd (LinkFlowService). A flow is either a claimed
//! link intent (`link`, see [`crate::links::flow`]) or a Link session
//! (`session`, see [`crate::sessions`]). Both share the flow token, login,
//! second factor, cancel and expiry, which live here; what success means
//! differs: a link runs its operations, a session asks for consent and
//! leaves a connection. The kinds plug in through `FlowKindHooks`, so the
//! engine imports only the kernel, the catalog and connectors.
//!
//! Every state change and its event are written in one transaction.

pub(crate) mod attempt;
pub mod oauth;
pub mod store;

use crate::catalog::{Catalog, Provider};
use crate::connectors::{
    ConnectorError, Connectors, Credentials, LoginContext, LoginOutcome, ProviderSession,
};
use crate::kernel::crypto::{Cipher, Sealed};
use crate::kernel::db::Db;
use crate::kernel::error::{Error, Precondition, Reason, Result};
use crate::kernel::ids::{FlowId, LinkId, random_token, token_hash};
use crate::kernel::tenant::Tenant;
use crate::pb;
use attempt::{Attempt, detached};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::PgConnection;
use std::sync::Arc;
use std::time::Duration;
pub(crate) use store::{FlowRow, NewSessionFlow};
use url::Url;

/// An accepted authorization request, kept with the Link session that
/// serves it (`flows.oauth`) until a code is issued.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRequest {
    /// The `redirect_uri` parameter as sent; `None` when omitted (then the
    /// token request need not repeat it).
    pub redirect_uri: Option<String>,
    /// Where results go: the sent URI, or the client's only one.
    pub effective_redirect_uri: String,
    pub state: Option<String>,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// PKCE S256 challenge, when sent.
    pub code_challenge: Option<String>,
    pub tag: Option<String>,
    pub recipient_id: Option<String>,
}

/// Wrong logins and second-factor codes allowed before the flow fails;
/// also the most provider calls that can fail for one flow.
pub const MAX_FAILED_ATTEMPTS: i32 = 5;
/// Longest credential value.
pub const MAX_CREDENTIAL_LEN: usize = 1024;

crate::kernel::names::stored_names! {
    /// What a flow serves (`flows.kind`).
    pub enum FlowKind {
        /// A claimed link intent.
        Link = "link",
        /// A Link session.
        Session = "session",
    }
}

crate::kernel::names::stored_names! {
    /// Where a flow is (`flows.step`); REST renders these names.
    pub enum FlowStep: pb::FlowStep {
        PreLogin = "pre-login",
        Authorization = "authorization",
        Login = "login",
        TwoFactor = "2fa",
        Processing = "processing",
        Done = "done",
    }
}

crate::kernel::names::stored_names! {
    /// How a finished flow ended (`flows.outcome`).
    pub enum FlowOutcome: pb::FlowOutcome {
        Success = "success",
        Cancelled = "cancelled",
        Error = "error",
    }
}

impl FlowRow {
    pub(crate) fn tenant(&self) -> Tenant {
        Tenant {
            organization_id: self.organization_id,
            environment: self.environment,
        }
    }

    /// The link of a link flow.
    pub(crate) fn link(&self) -> Result<LinkId> {
        self.link_id
            .ok_or_else(|| Error::internal(anyhow::anyhow!("link flow without a link")))
    }

    /// Unfinished and past its expiry. A link whose operations are running
    /// is not cut short: its run finishes it (or the sweep, if the run's
    /// process died).
    pub(crate) fn due_to_expire(&self) -> bool {
        self.outcome.is_none()
            && self.step != FlowStep::Processing
            && self.expires_at <= chrono::Utc::now()
    }

    pub(crate) fn login_context<'p>(&self, provider: &'p Provider) -> LoginContext<'p> {
        LoginContext {
            tenant: self.tenant(),
            provider,
            connection_id: self.connection_id,
            geolocation: self
                .geolocation
                .as_ref()
                .map(|g| (g.country.clone(), g.state.clone())),
        }
    }
}

/// The steps an end user can cancel at.
pub const CANCELLABLE_STEPS: [FlowStep; 4] = [
    FlowStep::PreLogin,
    FlowStep::Authorization,
    FlowStep::Login,
    FlowStep::TwoFactor,
];

/// The wire value of a step's name; unspecified for an unknown name.
pub fn flow_step(name: &str) -> pb::FlowStep {
    FlowStep::parse(name).map_or(pb::FlowStep::Unspecified, FlowStep::to_proto)
}

/// The name of a wire step; `None` for unspecified.
pub fn step_name(step: pb::FlowStep) -> Option<&'static str> {
    FlowStep::from_proto(step).map(FlowStep::as_str)
}

fn error_message(code: &str, lang: &str) -> &'static str {
    if lang == "fr" {
        return match code {
            "invalid_credentials" => "Le nom d’utilisateur ou le mot de passe est incorrect.",
            "invalid_code" => "Ce code est incorrect. Vérifiez-le et réessayez.",
            "account_locked" => "Ce compte est verrouillé chez le fournisseur.",
            "operation_failed" => "Le fournisseur n’a pas pu traiter la demande.",
            "operation_interrupted" => {
                "La connexion avec le fournisseur a été interrompue. Des changements ont pu être faits; vérifiez le compte avant de réessayer."
            }
            "session_expired" => "Cette session a expiré. Recommencez depuis l’application.",
            "authorization_failed" => "Le fournisseur n’a pas autorisé la connexion.",
            "link_expired" => "Ce lien a expiré.",
            "cancelled" => "Annulé.",
            _ => "Le fournisseur est indisponible. Réessayez plus tard.",
        };
    }
    match code {
        "invalid_credentials" => "The username or password is incorrect.",
        "invalid_code" => "That code is incorrect. Check it and try again.",
        "account_locked" => "This account is locked at the provider.",
        "operation_failed" => "The provider could not complete the request.",
        "operation_interrupted" => {
            "The connection to the provider was interrupted. Some changes may have been made; check the account before trying again."
        }
        "session_expired" => "This session has expired. Start again from the app.",
        "authorization_failed" => "The provider did not authorize the connection.",
        "link_expired" => "This link has expired.",
        "cancelled" => "Cancelled.",
        _ => "The provider is unavailable. Try again later.",
    }
}

pub(crate) fn wrong_step(message: &str) -> Error {
    Error::FailedPrecondition {
        precondition: Precondition::WrongState,
        reason: Reason::WrongStep,
        message: message.to_string(),
    }
}

/// How an unfinished flow ends (success of a session is
/// [`crate::sessions`]'s consent, which also writes the connection).
#[derive(Debug)]
pub(crate) enum Finish {
    /// A link's operations all succeeded, with this result.
    Completed(Value),
    /// Failed with an error code (`invalid_credentials`, `account_locked`…).
    Failed(&'static str, String),
    /// The end user cancelled at this step.
    Cancelled(FlowStep),
    /// The flow's lifetime ran out.
    Expired,
}

/// Path of the Link page under the public URL; the flow token follows in
/// the fragment so it never reaches access logs or `Referer` headers.
pub const LINK_PAGE_PATH: &str = "link";

/// What a kind of flow does where kinds differ: a link runs its operations,
/// a session asks for consent and leaves a connection. [`crate::links`] and
/// [`crate::sessions`] implement it; the engine calls it and imports
/// neither. Each method gets the engine for the shared steps.
#[async_trait::async_trait]
pub(crate) trait FlowKindHooks: Send + Sync + std::fmt::Debug {
    /// Adds this kind's fields to the end user's view of `flow`.
    async fn view(&self, engine: &Flows, flow: &FlowRow, view: &mut pb::Flow) -> Result<()>;

    /// Appends a step to the flow's debug trace, when it keeps one.
    /// `details` is already free of secrets. Keeps none by default.
    async fn trace(&self, _: &Flows, _: &FlowRow, _: &str, _: Value) -> Result<()> {
        Ok(())
    }

    /// A login attempt was reserved; the provider is called next. Nothing
    /// to do by default.
    async fn login_reserved(&self, _: &Flows, _: &FlowRow) -> Result<()> {
        Ok(())
    }

    /// The provider logged the end user in on `attempt`.
    async fn logged_in(
        &self,
        engine: &Flows,
        attempt: &Attempt,
        ctx: &LoginContext<'_>,
        session: ProviderSession,
    ) -> Result<()>;

    /// Inside the transaction that moved `flow` to the second factor.
    async fn awaiting_second_factor(&self, tx: &mut PgConnection, flow: &FlowRow) -> Result<()>;

    /// Ends the unfinished `flow` as `finish` says (see [`Flows::finish`]).
    async fn finish(&self, engine: &Flows, flow: &FlowRow, finish: Finish) -> Result<bool>;
}

/// What the engine needs, from configuration.
#[derive(Debug, Clone)]
pub struct FlowSettings {
    pub public_url: Url,
    /// How long a Link session accepts input.
    pub session_ttl: Duration,
    /// The longest one provider call may take.
    pub provider_timeout: Duration,
}

/// The flow engine: LinkFlowService's shared steps, over both kinds.
#[derive(Debug, Clone)]
pub struct Flows {
    db: Db,
    catalog: Arc<Catalog>,
    connectors: Connectors,
    cipher: Cipher,
    provider_oauth: crate::provider_oauth::ProviderOAuth,
    settings: FlowSettings,
    link: Arc<dyn FlowKindHooks>,
    session: Arc<dyn FlowKindHooks>,
    limits: crate::ratelimit::RateLimiter,
}

impl Flows {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        db: Db,
        catalog: Arc<Catalog>,
        connectors: Connectors,
        cipher: Cipher,
        provider_oauth: crate::provider_oauth::ProviderOAuth,
        settings: FlowSettings,
        link: Arc<dyn FlowKindHooks>,
        session: Arc<dyn FlowKindHooks>,
        limits: crate::ratelimit::RateLimiter,
    ) -> Self {
        Flows {
            db,
            catalog,
            connectors,
            cipher,
            provider_oauth,
            settings,
            link,
            session,
            limits,
        }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub(crate) fn cipher(&self) -> &Cipher {
        &self.cipher
    }

    pub(crate) fn connectors(&self) -> &Connectors {
        &self.connectors
    }

    pub(crate) fn provider_oauth(&self) -> &crate::provider_oauth::ProviderOAuth {
        &self.provider_oauth
    }

    /// The longest one provider call may take.
    pub(crate) fn provider_timeout(&self) -> Duration {
        self.settings.provider_timeout
    }

    fn hooks(&self, kind: FlowKind) -> &dyn FlowKindHooks {
        match kind {
            FlowKind::Link => self.link.as_ref(),
            FlowKind::Session => self.session.as_ref(),
        }
    }

    /// Inserts a session flow inside `tx`; returns the Link page URL (the
    /// only copy of the flow token) and when the session expires.
    pub(crate) async fn open_session(
        &self,
        tx: &mut PgConnection,
        new: &NewSessionFlow<'_>,
    ) -> Result<(String, chrono::DateTime<chrono::Utc>)> {
        let step = if new.integration_id.is_some() {
            FlowStep::Login
        } else {
            FlowStep::PreLogin
        };
        let token = format!("lft_{}", random_token());
        let expires_at = store::insert_session(
            tx,
            &token_hash(&token),
            new,
            step,
            self.settings.session_ttl,
        )
        .await?;
        Ok((self.link_page_url(&token)?, expires_at))
    }

    /// The URL end users and clients reach this deployment at.
    pub fn public_url(&self) -> &url::Url {
        &self.settings.public_url
    }

    /// The Link page URL of a flow token (in the fragment).
    pub(crate) fn link_page_url(&self, token: &str) -> Result<String> {
        let mut url = self
            .settings
            .public_url
            .join(LINK_PAGE_PATH)
            .map_err(Error::internal)?;
        url.set_fragment(Some(&format!("token={token}")));
        Ok(url.to_string())
    }

    /// The flow of a flow token, charged to the flow's rate limit (before
    /// the lookup) and its client app's (after).
    async fn load_flow(&self, token: Option<&SecretString>) -> Result<FlowRow> {
        let token = token.ok_or(Error::Unauthenticated)?;
        let token = token.expose_secret();
        if !token.starts_with("lft_") {
            return Err(Error::Unauthenticated);
        }
        let hash = token_hash(token);
        self.limits.charge_flow(&hash)?;
        let flow = store::by_token_hash(&self.db, &hash)
            .await?
            .ok_or(Error::Unauthenticated)?;
        if let Some(app) = flow.client_app_id {
            self.limits.charge_client_app(app).await?;
        }
        Ok(flow)
    }

    async fn flow_by_id(&self, flow_id: FlowId) -> Result<FlowRow> {
        store::by_id(&self.db, flow_id).await
    }

    /// Appends a step to the link's debug trace when the link has `debug`
    /// on. `details` must already be free of secrets.
    pub(crate) async fn trace(&self, flow: &FlowRow, event: &str, details: Value) -> Result<()> {
        self.hooks(flow.kind)
            .trace(self, flow, event, details)
            .await
    }

    /// The end user's view of the flow, read fresh.
    pub(crate) async fn flow_view(&self, flow_id: FlowId) -> Result<pb::Flow> {
        let flow = self.flow_by_id(flow_id).await?;
        let provider = flow
            .integration_id
            .as_deref()
            .and_then(|id| self.catalog.provider(id));
        let error_code = flow.error_code.clone().unwrap_or_default();
        let mut view = pb::Flow {
            step: flow.step.to_proto() as i32,
            outcome: flow
                .outcome
                .map_or(pb::FlowOutcome::Unspecified, FlowOutcome::to_proto)
                as i32,
            integration_id: flow.integration_id.clone().unwrap_or_default(),
            integration_name: provider
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            login_method: provider
                .as_ref()
                .map_or(pb::LoginMethod::Unspecified, |p| p.login_method())
                as i32,
            credential_fields: provider
                .as_ref()
                .filter(|_| flow.step == FlowStep::Login)
                .map(|p| {
                    p.credentials
                        .iter()
                        .map(|c| pb::CredentialField {
                            name: c.name.clone(),
                            label: c.label_in(&flow.lang).to_string(),
                            secret: c.secret,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            second_factor_prompt: match provider
                .as_ref()
                .and_then(|p| p.second_factor_prompts.get(&flow.lang))
            {
                Some(translated) if flow.second_factor_prompt.is_some() => translated.clone(),
                _ => flow.second_factor_prompt.clone().unwrap_or_default(),
            },
            error_message: if error_code.is_empty() {
                String::new()
            } else {
                error_message(&error_code, &flow.lang).into()
            },
            error_code,
            expires_at: Some(prost_types::Timestamp {
                seconds: flow.expires_at.timestamp(),
                nanos: 0,
            }),
            lang: flow.lang.clone(),
            cancelled_step: flow
                .cancelled_step
                .map_or(pb::FlowStep::Unspecified, FlowStep::to_proto)
                as i32,
            ..Default::default()
        };
        self.hooks(flow.kind).view(self, &flow, &mut view).await?;
        Ok(view)
    }

    /// The flow's state. A flow past its expiry is finished as expired first,
    /// so the page learns where to send the end user.
    pub async fn get_flow(&self, token: Option<&SecretString>) -> Result<pb::Flow> {
        let flow = self.load_flow(token).await?;
        if flow.due_to_expire() {
            self.finish(&flow, Finish::Expired).await?;
        }
        self.flow_view(flow.id).await
    }

    /// The flow, checked to be unfinished, unexpired (an expired one is
    /// finished as expired first) and at `step`.
    pub(crate) async fn flow_at(
        &self,
        token: Option<&SecretString>,
        step: FlowStep,
    ) -> Result<FlowRow> {
        let flow = self.load_flow(token).await?;
        self.check_open_at(&flow, step).await?;
        Ok(flow)
    }

    /// Fails unless `flow` is unfinished, unexpired (an expired one is
    /// finished as expired first) and at `step`.
    async fn check_open_at(&self, flow: &FlowRow, step: FlowStep) -> Result<()> {
        let expired = match flow.kind {
            FlowKind::Link => Error::FailedPrecondition {
                precondition: Precondition::Expired,
                reason: Reason::LinkExpired,
                message: "this link has expired".into(),
            },
            FlowKind::Session => Error::FailedPrecondition {
                precondition: Precondition::Expired,
                reason: Reason::SessionExpired,
                message: "this Link session has expired".into(),
            },
        };
        if flow.outcome.is_some() {
            // Closed by the expiry sweep: say so, not just "finished".
            if matches!(
                flow.error_code.as_deref(),
                Some("session_expired" | "link_expired")
            ) {
                return Err(expired);
            }
            return Err(Error::FailedPrecondition {
                precondition: Precondition::AlreadyUsed,
                reason: Reason::FlowFinished,
                message: "this flow has already finished".into(),
            });
        }
        if flow.due_to_expire() {
            self.finish(flow, Finish::Expired).await?;
            return Err(expired);
        }
        if flow.step != step {
            return Err(wrong_step(&format!(
                "the flow is at step {}, not {step}",
                flow.step
            )));
        }
        Ok(())
    }

    fn provider_of(&self, flow: &FlowRow) -> Result<Arc<Provider>> {
        let id = flow
            .integration_id
            .as_deref()
            .ok_or_else(|| wrong_step("no integration has been chosen"))?;
        self.catalog
            .provider(id)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("integration {id} left the catalog")))
    }

    pub(crate) fn open_held_session(&self, flow: &FlowRow) -> Result<Option<ProviderSession>> {
        let Some(sealed) = flow.session_ciphertext.as_deref() else {
            return Ok(None);
        };
        let plain = self
            .cipher
            .decrypt(sealed, Sealed::FlowSession(flow.id))
            .map_err(Error::Internal)?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(Error::internal)
    }

    pub(crate) fn seal_held_session(
        &self,
        flow: &FlowRow,
        session: &ProviderSession,
    ) -> Result<Vec<u8>> {
        Ok(self.cipher.encrypt(
            &serde_json::to_vec(session).map_err(Error::internal)?,
            Sealed::FlowSession(flow.id),
        ))
    }

    /// Logs in (step `login`). The credentials are checked against the
    /// form before an attempt is spent; the attempt then runs to its end
    /// even if the caller goes away.
    pub async fn submit_credentials(
        &self,
        token: Option<&SecretString>,
        req: pb::SubmitCredentialsRequest,
    ) -> Result<pb::Flow> {
        let flow = self.flow_at(token, FlowStep::Login).await?;
        let provider = self.provider_of(&flow)?;
        let mut v = crate::kernel::validate::Violations::new();
        let mut credentials = Credentials::new();
        for field in &provider.credentials {
            let path = format!("fields.{}", field.name);
            match req.fields.get(&field.name) {
                Some(value) if !value.is_empty() => {
                    v.max_len(&path, value, MAX_CREDENTIAL_LEN);
                    credentials.insert(field.name.clone(), SecretString::from(value.clone()));
                }
                _ => v.add(path, "is required"),
            }
        }
        for name in req
            .fields
            .keys()
            .filter(|n| !provider.credentials.iter().any(|c| &c.name == *n))
        {
            v.add(
                format!("fields.{name}"),
                "is not a field of this login form",
            );
        }
        v.finish()?;
        let fields: Vec<String> = req.fields.into_keys().collect();
        let flows = self.clone();
        detached(async move { flows.log_in(&flow, &credentials, fields).await }).await
    }

    async fn log_in(
        &self,
        flow: &FlowRow,
        credentials: &Credentials,
        fields: Vec<String>,
    ) -> Result<pb::Flow> {
        let attempt = self.reserve_attempt(flow).await?;
        let flow = &attempt.flow;
        self.hooks(flow.kind).login_reserved(self, flow).await?;
        let provider = self.provider_of(flow)?;
        let ctx = flow.login_context(&provider);
        self.trace(
            flow,
            "login.started",
            json!({ "integrationId": provider.id, "fields": fields }),
        )
        .await?;
        let outcome = match self.connectors.serving(&ctx) {
            Ok(connector) => {
                self.within_deadline(connector.login(&ctx, credentials))
                    .await
            }
            Err(unavailable) => Err(unavailable),
        };
        self.after_login(&attempt, &ctx, outcome).await
    }

    /// Gives the second factor (step `2fa`); like a login, one attempt.
    pub async fn submit_second_factor(
        &self,
        token: Option<&SecretString>,
        req: pb::SubmitSecondFactorRequest,
    ) -> Result<pb::Flow> {
        let flow = self.flow_at(token, FlowStep::TwoFactor).await?;
        if req.code.is_empty() || req.code.chars().count() > 32 {
            return Err(Error::invalid(
                "code",
                "is required (at most 32 characters)",
            ));
        }
        let flows = self.clone();
        detached(async move { flows.give_code(&flow, &req.code).await }).await
    }

    async fn give_code(&self, flow: &FlowRow, code: &str) -> Result<pb::Flow> {
        let attempt = self.reserve_attempt(flow).await?;
        let flow = &attempt.flow;
        let provider = self.provider_of(flow)?;
        let pending = self
            .open_held_session(flow)?
            .ok_or_else(|| wrong_step("no second factor is pending"))?;
        let ctx = flow.login_context(&provider);
        self.trace(flow, "second_factor.submitted", json!({}))
            .await?;
        let outcome = match self.connectors.serving(&ctx) {
            Ok(connector) => {
                self.within_deadline(connector.second_factor(&ctx, &pending, code))
                    .await
            }
            Err(unavailable) => Err(unavailable),
        };
        self.after_login(&attempt, &ctx, outcome).await
    }

    pub async fn cancel_flow(
        &self,
        token: Option<&SecretString>,
        req: pb::CancelFlowRequest,
    ) -> Result<pb::Flow> {
        // Who asks comes first: an unauthenticated call is told so, not
        // what is wrong with its step.
        let flow = self.load_flow(token).await?;
        let step = FlowStep::from_proto(req.step())
            .filter(|step| CANCELLABLE_STEPS.contains(step))
            .ok_or_else(|| {
                Error::invalid(
                    "step",
                    "must be the current step: pre-login, authorization, login or 2fa",
                )
            })?;
        self.check_open_at(&flow, step).await?;
        if !self.finish(&flow, Finish::Cancelled(step)).await? {
            // It moved on meanwhile (a login succeeded, or it finished):
            // say so, as if this request had come a moment later.
            self.flow_at(token, step).await?;
        }
        self.flow_view(flow.id).await
    }

    /// Records what the provider said to a reserved attempt. Each outcome is
    /// a transition only the attempt's holder can make; one that finds the
    /// flow moved on (cancelled, expired) gives the provider session back.
    async fn after_login(
        &self,
        attempt: &Attempt,
        ctx: &LoginContext<'_>,
        outcome: Result<LoginOutcome, ConnectorError>,
    ) -> Result<pb::Flow> {
        let flow = &attempt.flow;
        let traced = match &outcome {
            Ok(LoginOutcome::LoggedIn(_)) => ("login.succeeded", json!({})),
            Ok(LoginOutcome::SecondFactorRequired { .. }) => {
                ("login.second_factor_required", json!({}))
            }
            Err(err) => ("login.failed", json!({ "errorCode": err.code() })),
        };
        self.trace(flow, traced.0, traced.1).await?;
        match outcome {
            Ok(LoginOutcome::LoggedIn(session)) => {
                self.hooks(flow.kind)
                    .logged_in(self, attempt, ctx, session)
                    .await?
            }
            Ok(LoginOutcome::SecondFactorRequired { pending, prompt }) => {
                let sealed = self.seal_held_session(flow, &pending)?;
                let mut tx = self.db.begin().await?;
                // The successful call is given back: only failures count.
                let moved =
                    store::await_second_factor(&mut tx, flow.id, attempt.id, &prompt, &sealed)
                        .await?;
                if moved {
                    self.hooks(flow.kind)
                        .awaiting_second_factor(&mut tx, flow)
                        .await?;
                    tx.commit().await?;
                } else {
                    drop(tx);
                    self.log_out(flow, ctx, &pending).await;
                }
            }
            Err(err) if err.is_retryable_input() && flow.failed_logins < MAX_FAILED_ATTEMPTS => {
                self.release_attempt(attempt, err.code()).await?;
            }
            Err(err) => {
                self.finish(flow, Finish::Failed(err.code(), err.to_string()))
                    .await?;
            }
        }
        self.flow_view(flow.id).await
    }

    /// Ends a provider session `flow` will not keep; best effort, within the
    /// call deadline. An OAuth grant is revoked at the provider instead.
    pub(crate) async fn log_out(
        &self,
        flow: &FlowRow,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
    ) {
        if ctx.provider.oauth2.is_some() {
            self.revoke_held(flow, ctx.provider, session).await;
            return;
        }
        if let Ok(connector) = self.connectors.serving(ctx) {
            let _ = self.within_deadline(connector.logout(ctx, session)).await;
        }
    }

    /// Ends an unfinished flow that did not succeed (or a link that did):
    /// the flow, its link or connection, and the event, in one transaction.
    /// A provider session still held (consent or second factor pending) is
    /// logged out. Returns false, changing nothing, when the flow is no
    /// longer at the step `flow` shows (another request moved or finished it).
    pub(crate) async fn finish(&self, flow: &FlowRow, finish: Finish) -> Result<bool> {
        if let Ok(Some(held)) = self.open_held_session(flow)
            && let Ok(provider) = self.provider_of(flow)
        {
            // Best effort: the session is wiped from our side regardless.
            self.log_out(flow, &flow.login_context(&provider), &held)
                .await;
        }
        self.hooks(flow.kind).finish(self, flow, finish).await
    }
}
