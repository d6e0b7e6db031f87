//! The end-user side of a link intent (LinkFlowService): claim with the claim
//! code, log in once, give a second factor when asked, then every operation
//! runs in that one session. Any failure fails the whole link and keeps no
//! partial result. The link's final state, the purge of its arguments and its
//! `link.completed` / `link.failed` event are written in one transaction.

use crate::app::{Api, link_arguments_context, parse_id};
use crate::catalog::Provider;
use crate::connectors::{ConnectorError, Credentials, LoginContext, LoginOutcome, ProviderSession};
use crate::domain::link::{LinkOperation, return_url_with_link_id};
use crate::domain::{Environment, Tenant};
use crate::error::{Error, Precondition, Result};
use crate::ids::{IdKind, random_token, token_hash};
use crate::pb;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

/// Wrong logins allowed before the link fails.
pub const MAX_FAILED_ATTEMPTS: i32 = 5;
/// Longest credential value.
pub const MAX_CREDENTIAL_LEN: usize = 1024;

#[derive(Debug, sqlx::FromRow)]
struct FlowRow {
    id: Uuid,
    organization_id: Uuid,
    environment: String,
    link_id: Option<Uuid>,
    integration_id: Option<String>,
    step: String,
    outcome: Option<String>,
    error_code: Option<String>,
    second_factor_prompt: Option<String>,
    session_ciphertext: Option<Vec<u8>>,
    failed_logins: i32,
    expires_at: chrono::DateTime<chrono::Utc>,
}

impl FlowRow {
    fn tenant(&self) -> Tenant {
        Tenant {
            organization_id: self.organization_id,
            environment: Environment::parse(&self.environment).unwrap_or(Environment::Sandbox),
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct LinkForFlow {
    id: Uuid,
    integration_id: String,
    operations: sqlx::types::Json<Vec<LinkOperation>>,
    arguments_ciphertext: Option<Vec<u8>>,
    return_url: Option<String>,
    external_user_id: Option<String>,
    debug: bool,
}

const FLOW_COLUMNS: &str = "id, organization_id, environment, link_id, integration_id, step, outcome, error_code, \
                            second_factor_prompt, session_ciphertext, failed_logins, expires_at";

fn session_context(flow_id: Uuid) -> String {
    format!("flows.session:{flow_id}")
}

/// Flow steps and their names: stored in `flows.step` and rendered by REST.
const FLOW_STEPS: [(pb::FlowStep, &str); 6] = [
    (pb::FlowStep::PreLogin, "pre-login"),
    (pb::FlowStep::Authorization, "authorization"),
    (pb::FlowStep::Login, "login"),
    (pb::FlowStep::TwoFactor, "2fa"),
    (pb::FlowStep::Processing, "processing"),
    (pb::FlowStep::Done, "done"),
];

/// The steps an end user can cancel at.
pub const CANCELLABLE_STEPS: [pb::FlowStep; 4] = [
    pb::FlowStep::PreLogin,
    pb::FlowStep::Authorization,
    pb::FlowStep::Login,
    pb::FlowStep::TwoFactor,
];

pub fn flow_step(name: &str) -> pb::FlowStep {
    FLOW_STEPS
        .iter()
        .find(|(_, n)| *n == name)
        .map_or(pb::FlowStep::Unspecified, |(step, _)| *step)
}

pub fn step_name(step: pb::FlowStep) -> Option<&'static str> {
    FLOW_STEPS
        .iter()
        .find(|(s, _)| *s == step)
        .map(|(_, name)| *name)
}

fn error_message(code: &str) -> &'static str {
    match code {
        "invalid_credentials" => "The username or password is incorrect.",
        "invalid_code" => "That code is incorrect. Check it and try again.",
        "account_locked" => "This account is locked at the provider.",
        "operation_failed" => "The provider could not complete the request.",
        "session_expired" => "This session has expired.",
        "link_expired" => "This link has expired.",
        "cancelled" => "Cancelled.",
        _ => "The provider is unavailable. Try again later.",
    }
}

fn wrong_step(message: &str) -> Error {
    Error::FailedPrecondition {
        precondition: Precondition::WrongState,
        reason: "WRONG_STEP",
        message: message.to_string(),
    }
}

/// The result of the operations: flat for one, wrapped for several.
pub fn shape_result(provider: &Provider, operations: &[LinkOperation], data: Vec<Value>) -> Value {
    if let ([op], [only]) = (operations, data.as_slice()) {
        let key = provider
            .capabilities
            .iter()
            .find(|c| c.resource == op.resource && c.action == op.action)
            .map_or(op.resource.as_str(), |c| c.result_key.as_str());
        return json!({ key: only });
    }
    let wrapped: Vec<Value> = operations
        .iter()
        .zip(data)
        .map(|(op, data)| json!({ "resource": op.resource, "action": op.action, "data": data }))
        .collect();
    json!({ "operations": wrapped })
}

/// Writes an event to the outbox, inside the caller's transaction.
pub async fn record_event(
    tx: &mut PgConnection,
    tenant: Tenant,
    event_type: &str,
    link_id: Option<Uuid>,
    data: Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (id, organization_id, environment, type, link_id, payload) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::now_v7())
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .bind(event_type)
    .bind(link_id)
    .bind(json!({ "type": event_type, "data": data }))
    .execute(tx)
    .await?;
    Ok(())
}

enum Finish {
    Completed(Value),
    Failed(&'static str, String),
    Cancelled,
}

impl Api {
    /// Appends a step to the link's debug trace when the link has `debug` on.
    /// `details` must already be free of secrets.
    async fn trace(&self, link: &LinkForFlow, event: &str, details: Value) -> Result<()> {
        if link.debug {
            sqlx::query(
                "UPDATE links SET debug_trace = debug_trace || jsonb_build_array(
                     jsonb_build_object('at', now(), 'event', $2::text, 'details', $3::jsonb))
                 WHERE id = $1",
            )
            .bind(link.id)
            .bind(event)
            .bind(details)
            .execute(self.db())
            .await?;
        }
        Ok(())
    }

    async fn load_flow(&self, token: Option<&SecretString>) -> Result<FlowRow> {
        let token = token.ok_or(Error::Unauthenticated)?;
        let token = token.expose_secret();
        if !token.starts_with("lft_") {
            return Err(Error::Unauthenticated);
        }
        let row: FlowRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {FLOW_COLUMNS} FROM flows WHERE token_hash = $1"
        )))
        .bind(token_hash(token))
        .fetch_optional(self.db())
        .await?
        .ok_or(Error::Unauthenticated)?;
        Ok(row)
    }

    async fn link_for_flow(&self, flow: &FlowRow) -> Result<LinkForFlow> {
        let link_id = flow
            .link_id
            .ok_or_else(|| wrong_step("this flow has no link"))?;
        Ok(sqlx::query_as(
            "SELECT id, integration_id, operations, arguments_ciphertext, return_url, external_user_id, debug
             FROM links WHERE id = $1",
        )
        .bind(link_id)
        .fetch_one(self.db())
        .await?)
    }

    async fn flow_view(&self, flow_id: Uuid) -> Result<pb::Flow> {
        let flow: FlowRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {FLOW_COLUMNS} FROM flows WHERE id = $1"
        )))
        .bind(flow_id)
        .fetch_one(self.db())
        .await?;
        let provider = flow
            .integration_id
            .as_deref()
            .and_then(|id| self.state.catalog.provider(id));
        let link = match flow.link_id {
            Some(_) => Some(self.link_for_flow(&flow).await?),
            None => None,
        };
        let link_id = link
            .as_ref()
            .map(|l| IdKind::Link.format(l.id))
            .unwrap_or_default();
        let redirect_url = match (
            &flow.outcome,
            link.as_ref().and_then(|l| l.return_url.as_deref()),
        ) {
            (Some(_), Some(url)) => return_url_with_link_id(url, &link_id),
            _ => String::new(),
        };
        let error_code = flow.error_code.clone().unwrap_or_default();
        Ok(pb::Flow {
            step: flow_step(&flow.step) as i32,
            outcome: match flow.outcome.as_deref() {
                Some("success") => pb::FlowOutcome::Success,
                Some("cancelled") => pb::FlowOutcome::Cancelled,
                Some("error") => pb::FlowOutcome::Error,
                _ => pb::FlowOutcome::Unspecified,
            } as i32,
            client_app_name: String::new(),
            integration_id: flow.integration_id.clone().unwrap_or_default(),
            integration_name: provider.map(|p| p.name.clone()).unwrap_or_default(),
            integrations: Vec::new(),
            credential_fields: provider
                .map(|p| {
                    p.credentials
                        .iter()
                        .map(|c| pb::CredentialField {
                            name: c.name.clone(),
                            label: c.label.clone(),
                            secret: c.secret,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            second_factor_prompt: flow.second_factor_prompt.clone().unwrap_or_default(),
            error_message: if error_code.is_empty() {
                String::new()
            } else {
                error_message(&error_code).into()
            },
            error_code,
            redirect_url,
            connection_id: String::new(),
            link_id,
            expires_at: Some(prost_types::Timestamp {
                seconds: flow.expires_at.timestamp(),
                nanos: 0,
            }),
            lang: "en".into(),
        })
    }

    /// Claims a link with its single-use code; exactly one of concurrent
    /// claims wins.
    pub async fn claim_link(&self, req: pb::ClaimLinkRequest) -> Result<pb::ClaimLinkResponse> {
        let link_id = parse_id(IdKind::Link, "linkId", &req.link_id)?;
        if !req.claim_code.starts_with("clm_") || req.claim_code.len() > 128 {
            return Err(Error::invalid(
                "claimCode",
                "must be the clm_… code from the app clip URL",
            ));
        }
        let code_hash = token_hash(&req.claim_code);
        let mut tx = self.db().begin().await?;
        let claimed: Option<(Uuid, String, String, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as(
                "UPDATE links SET status = 'claimed', claimed_at = now()
             WHERE id = $1 AND claim_code_hash = $2 AND status = 'pending' AND expires_at > now()
             RETURNING organization_id, environment, integration_id, expires_at",
            )
            .bind(link_id)
            .bind(&code_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((organization_id, environment, integration_id, expires_at)) = claimed else {
            drop(tx);
            let state: Option<(String, bool)> =
                sqlx::query_as("SELECT status, expires_at <= now() FROM links WHERE id = $1 AND claim_code_hash = $2")
                    .bind(link_id)
                    .bind(&code_hash)
                    .fetch_optional(self.db())
                    .await?;
            return Err(match state {
                None => Error::NotFound("link"),
                Some((status, past)) if past || status == "expired" => Error::FailedPrecondition {
                    precondition: Precondition::Expired,
                    reason: "LINK_EXPIRED",
                    message: "this link has expired".into(),
                },
                Some(_) => Error::FailedPrecondition {
                    precondition: Precondition::AlreadyUsed,
                    reason: "LINK_ALREADY_CLAIMED",
                    message: "this link was already claimed".into(),
                },
            });
        };
        let flow_id = Uuid::now_v7();
        let token = format!("lft_{}", random_token());
        sqlx::query(
            "INSERT INTO flows (id, token_hash, organization_id, environment, link_id, integration_id, step, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'login', $7)",
        )
        .bind(flow_id)
        .bind(token_hash(&token))
        .bind(organization_id)
        .bind(environment)
        .bind(link_id)
        .bind(integration_id)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(pb::ClaimLinkResponse {
            flow_token: token,
            flow: Some(self.flow_view(flow_id).await?),
        })
    }

    pub async fn get_flow(&self, token: Option<&SecretString>) -> Result<pb::Flow> {
        let flow = self.load_flow(token).await?;
        self.flow_view(flow.id).await
    }

    /// The flow, checked to be at `step`, unfinished and unexpired (an
    /// expired link is finished as expired first).
    async fn flow_at(
        &self,
        token: Option<&SecretString>,
        step: &str,
    ) -> Result<(FlowRow, LinkForFlow)> {
        let flow = self.load_flow(token).await?;
        if flow.outcome.is_some() {
            return Err(Error::FailedPrecondition {
                precondition: Precondition::AlreadyUsed,
                reason: "FLOW_FINISHED",
                message: "this flow has already finished".into(),
            });
        }
        let link = self.link_for_flow(&flow).await?;
        if flow.expires_at <= chrono::Utc::now() {
            self.finish(
                &flow,
                &link,
                Finish::Failed(
                    "link_expired",
                    "The link expired before it was completed.".into(),
                ),
            )
            .await?;
            return Err(Error::FailedPrecondition {
                precondition: Precondition::Expired,
                reason: "LINK_EXPIRED",
                message: "this link has expired".into(),
            });
        }
        if flow.step != step {
            return Err(wrong_step(&format!(
                "the flow is at step {}, not {step}",
                flow.step
            )));
        }
        Ok((flow, link))
    }

    fn provider_of(&self, link: &LinkForFlow) -> Result<&Provider> {
        self.state
            .catalog
            .provider(&link.integration_id)
            .ok_or_else(|| {
                Error::internal(anyhow::anyhow!(
                    "integration {} left the catalog",
                    link.integration_id
                ))
            })
    }

    pub async fn submit_credentials(
        &self,
        token: Option<&SecretString>,
        req: pb::SubmitCredentialsRequest,
    ) -> Result<pb::Flow> {
        let (flow, link) = self.flow_at(token, "login").await?;
        let provider = self.provider_of(&link)?;
        let mut v = crate::validate::Violations::new();
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
        let ctx = LoginContext {
            tenant: flow.tenant(),
            provider,
            geolocation: None,
        };
        let fields: Vec<&String> = req.fields.keys().collect();
        self.trace(
            &link,
            "login.started",
            json!({ "integrationId": provider.id, "fields": fields }),
        )
        .await?;
        let outcome = match self.state.connectors.for_tenant(flow.tenant()) {
            Ok(connector) => connector.login(&ctx, &credentials).await,
            Err(unavailable) => Err(unavailable),
        };
        self.after_login(&flow, &link, &ctx, outcome).await
    }

    pub async fn submit_second_factor(
        &self,
        token: Option<&SecretString>,
        req: pb::SubmitSecondFactorRequest,
    ) -> Result<pb::Flow> {
        let (flow, link) = self.flow_at(token, "2fa").await?;
        if req.code.is_empty() || req.code.len() > 32 {
            return Err(Error::invalid(
                "code",
                "is required (at most 32 characters)",
            ));
        }
        let provider = self.provider_of(&link)?;
        let sealed = flow
            .session_ciphertext
            .as_deref()
            .ok_or_else(|| wrong_step("no second factor is pending"))?;
        let pending: ProviderSession = serde_json::from_slice(
            &self
                .state
                .cipher
                .decrypt(sealed, &session_context(flow.id))
                .map_err(Error::Internal)?,
        )
        .map_err(Error::internal)?;
        let ctx = LoginContext {
            tenant: flow.tenant(),
            provider,
            geolocation: None,
        };
        self.trace(&link, "second_factor.submitted", json!({}))
            .await?;
        let outcome = match self.state.connectors.for_tenant(flow.tenant()) {
            Ok(connector) => connector.second_factor(&ctx, &pending, &req.code).await,
            Err(unavailable) => Err(unavailable),
        };
        self.after_login(&flow, &link, &ctx, outcome).await
    }

    pub async fn cancel_flow(
        &self,
        token: Option<&SecretString>,
        req: pb::CancelFlowRequest,
    ) -> Result<pb::Flow> {
        let step = Some(req.step())
            .filter(|step| CANCELLABLE_STEPS.contains(step))
            .and_then(step_name)
            .ok_or_else(|| {
                Error::invalid(
                    "step",
                    "must be the current step: pre-login, authorization, login or 2fa",
                )
            })?;
        let (flow, link) = self.flow_at(token, step).await?;
        self.finish(&flow, &link, Finish::Cancelled).await?;
        self.flow_view(flow.id).await
    }

    async fn after_login(
        &self,
        flow: &FlowRow,
        link: &LinkForFlow,
        ctx: &LoginContext<'_>,
        outcome: Result<LoginOutcome, ConnectorError>,
    ) -> Result<pb::Flow> {
        let traced = match &outcome {
            Ok(LoginOutcome::LoggedIn(_)) => ("login.succeeded", json!({})),
            Ok(LoginOutcome::SecondFactorRequired { .. }) => {
                ("login.second_factor_required", json!({}))
            }
            Err(err) => ("login.failed", json!({ "errorCode": err.code() })),
        };
        self.trace(link, traced.0, traced.1).await?;
        match outcome {
            Ok(LoginOutcome::LoggedIn(session)) => {
                let finish = self.run_operations(link, ctx, &session).await?;
                self.finish(flow, link, finish).await?;
                if let Ok(connector) = self.state.connectors.for_tenant(flow.tenant()) {
                    // A link needs the provider session only for its operations.
                    let _ = connector.logout(ctx, &session).await;
                }
            }
            Ok(LoginOutcome::SecondFactorRequired { pending, prompt }) => {
                let sealed = self.state.cipher.encrypt(
                    &serde_json::to_vec(&pending).map_err(Error::internal)?,
                    &session_context(flow.id),
                );
                let mut tx = self.db().begin().await?;
                sqlx::query(
                    "UPDATE flows SET step = '2fa', second_factor_prompt = $2, session_ciphertext = $3,
                         error_code = NULL, updated_at = now() WHERE id = $1",
                )
                .bind(flow.id)
                .bind(&prompt)
                .bind(sealed)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE links SET status = 'awaiting_2fa' WHERE id = $1 AND status = 'claimed'",
                )
                .bind(link.id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Err(err)
                if err.is_retryable_input() && flow.failed_logins + 1 < MAX_FAILED_ATTEMPTS =>
            {
                sqlx::query(
                    "UPDATE flows SET error_code = $2, failed_logins = failed_logins + 1, updated_at = now() WHERE id = $1",
                )
                .bind(flow.id)
                .bind(err.code())
                .execute(self.db())
                .await?;
            }
            Err(err) => {
                self.finish(flow, link, Finish::Failed(err.code(), err.to_string()))
                    .await?;
            }
        }
        self.flow_view(flow.id).await
    }

    /// Runs every operation in order in one provider session; the first
    /// failure fails the whole link.
    async fn run_operations(
        &self,
        link: &LinkForFlow,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
    ) -> Result<Finish> {
        let sealed = link
            .arguments_ciphertext
            .as_deref()
            .ok_or_else(|| Error::internal(anyhow::anyhow!("link arguments already purged")))?;
        let arguments: Vec<Value> = serde_json::from_slice(
            &self
                .state
                .cipher
                .decrypt(sealed, &link_arguments_context(link.id))
                .map_err(Error::Internal)?,
        )
        .map_err(Error::internal)?;
        let connector = match self.state.connectors.for_tenant(ctx.tenant) {
            Ok(connector) => connector,
            Err(err) => return Ok(Finish::Failed(err.code(), err.to_string())),
        };
        let mut data = Vec::new();
        for (index, (op, args)) in link.operations.iter().zip(&arguments).enumerate() {
            let step = json!({ "index": index, "resource": op.resource, "action": op.action });
            if link.debug {
                let shown = self
                    .state
                    .catalog
                    .capability(&link.integration_id, &op.resource, op.action)
                    .map_or(Value::Null, |c| c.redact_arguments(args));
                let mut details = step.clone();
                details["arguments"] = shown;
                self.trace(link, "operation.started", details).await?;
            }
            match connector
                .execute(ctx, session, &op.resource, op.action, args)
                .await
            {
                Ok(value) => {
                    self.trace(link, "operation.completed", step).await?;
                    data.push(value);
                }
                Err(err) => {
                    let mut details = step;
                    details["errorCode"] = json!(err.code());
                    self.trace(link, "operation.failed", details).await?;
                    return Ok(Finish::Failed(
                        err.code(),
                        format!("{} {}: {err}", op.resource, op.action.as_str()),
                    ));
                }
            }
        }
        Ok(Finish::Completed(shape_result(
            ctx.provider,
            &link.operations,
            data,
        )))
    }

    /// Ends the link and its flow, purges the arguments and the provider
    /// session, and writes the event, all in one transaction.
    async fn finish(&self, flow: &FlowRow, link: &LinkForFlow, finish: Finish) -> Result<()> {
        let (status, outcome, error_code, error_message, result, event) = match finish {
            Finish::Completed(result) => (
                "completed",
                "success",
                None,
                None,
                Some(result),
                "link.completed",
            ),
            Finish::Failed(code, message) => (
                if code == "link_expired" {
                    "expired"
                } else {
                    "failed"
                },
                "error",
                Some(code),
                Some(message),
                None,
                if code == "link_expired" {
                    "link.expired"
                } else {
                    "link.failed"
                },
            ),
            Finish::Cancelled => (
                "cancelled",
                "cancelled",
                Some("cancelled"),
                Some("The end user cancelled.".into()),
                None,
                "link.failed",
            ),
        };
        self.trace(
            link,
            &format!("link.{status}"),
            json!({ "errorCode": error_code }),
        )
        .await?;
        let mut tx = self.db().begin().await?;
        let finished = sqlx::query(
            "UPDATE links SET status = $2, error_code = $3, error_message = $4, result = $5,
                 finished_at = now(), arguments_ciphertext = NULL
             WHERE id = $1 AND status IN ('pending', 'claimed', 'awaiting_2fa')",
        )
        .bind(link.id)
        .bind(status)
        .bind(error_code)
        .bind(&error_message)
        .bind(&result)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE flows SET step = 'done', outcome = $2, error_code = $3, session_ciphertext = NULL, updated_at = now()
             WHERE id = $1",
        )
        .bind(flow.id)
        .bind(outcome)
        .bind(error_code)
        .execute(&mut *tx)
        .await?;
        if finished.rows_affected() == 1 {
            let link_public = IdKind::Link.format(link.id);
            let mut data = json!({
                "linkId": link_public,
                "integrationId": link.integration_id,
                "status": status,
                "externalUserId": link.external_user_id,
            });
            if let Some(result) = &result {
                data["result"] = result.clone();
            }
            if let Some(code) = error_code {
                data["errorCode"] = json!(code);
            }
            record_event(&mut tx, flow.tenant(), event, Some(link.id), data).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
