//! Flows of link intents: claim with the claim code, log in once, give a
//! second factor when asked, then every operation runs in that one session.
//! Any failure fails the whole link and keeps no partial result. The link's
//! final state, the purge of its arguments and its `link.completed` /
//! `link.failed` event are written in one transaction.
//!
//! The operations run exactly once: the login attempt that succeeded moves
//! the flow to `processing` and the link to `processing` in one statement
//! (only the attempt's holder can), runs them, and finishes the link. If
//! its process dies meanwhile, the expiry sweep fails the link with
//! `operation_interrupted` once the run's lease has passed.

use super::Links;
use super::store::{self, LinkForFlow};
use crate::catalog::operations::shape_result;
use crate::connectors::{LoginContext, ProviderSession};
use crate::events::outbox::{self, EventSubject};
use crate::flows::attempt::Attempt;
use crate::flows::{Finish, FlowKindHooks, FlowOutcome, FlowRow, FlowStep, Flows};
use crate::kernel::crypto::Sealed;
use crate::kernel::error::{Error, Precondition, Reason, Result};
use crate::kernel::ids::{FlowId, LinkId, random_token, token_hash};
use crate::links::rules::{LinkStatus, return_url_with_link_id};
use crate::pb;
use serde_json::{Value, json};
use sqlx::PgConnection;

impl Links {
    /// Claims a link with its single-use code; exactly one of concurrent
    /// claims wins.
    pub async fn claim_link(&self, req: pb::ClaimLinkRequest) -> Result<pb::ClaimLinkResponse> {
        let link_id = LinkId::from_request("linkId", &req.link_id)?;
        if !req.claim_code.starts_with("clm_") || req.claim_code.len() > 128 {
            return Err(Error::invalid(
                "claimCode",
                "must be the clm_… code from the app clip URL",
            ));
        }
        let code_hash = token_hash(&req.claim_code);
        let flow_id = FlowId::new();
        let token = format!("lft_{}", random_token());
        // The claim and its flow in one statement: only the request whose
        // UPDATE matched a pending link gets a flow.
        let claimed =
            store::claim_link(&self.db, link_id, &code_hash, flow_id, &token_hash(&token)).await?;
        if claimed.is_none() {
            let state = store::claim_state(&self.db, link_id, &code_hash).await?;
            return Err(match state {
                None => Error::NotFound("link"),
                Some((status, past)) if past || status == LinkStatus::Expired => {
                    Error::FailedPrecondition {
                        precondition: Precondition::Expired,
                        reason: Reason::LinkExpired,
                        message: "this link has expired".into(),
                    }
                }
                Some(_) => Error::FailedPrecondition {
                    precondition: Precondition::AlreadyUsed,
                    reason: Reason::LinkAlreadyClaimed,
                    message: "this link was already claimed".into(),
                },
            });
        }
        Ok(pb::ClaimLinkResponse {
            flow_token: token,
            flow: Some(self.flows.flow_view(flow_id).await?),
        })
    }
}

/// The link kind of flow: runs the operations after login.
#[derive(Debug)]
pub(crate) struct LinkFlow;

#[async_trait::async_trait]
impl FlowKindHooks for LinkFlow {
    /// The link's part of the flow view, from what the flow row carries.
    async fn view(&self, _: &Flows, flow: &FlowRow, view: &mut pb::Flow) -> Result<()> {
        let Some(link_id) = flow.link_id else {
            return Ok(());
        };
        view.link_id = link_id.to_string();
        if let (Some(_), Some(url)) = (&flow.outcome, flow.link_return_url.as_deref()) {
            view.redirect_url = return_url_with_link_id(url, &view.link_id);
        }
        Ok(())
    }

    async fn trace(
        &self,
        engine: &Flows,
        flow: &FlowRow,
        event: &str,
        details: Value,
    ) -> Result<()> {
        if let (true, Some(link_id)) = (flow.debug, flow.link_id) {
            store::append_trace(engine.db(), link_id, event, details).await?;
        }
        Ok(())
    }

    /// After a successful login: moves the flow and the link to
    /// `processing` (only the holder of the login attempt can), runs the
    /// operations, finishes the link, and logs out (a link needs the
    /// provider session only for its operations).
    async fn logged_in(
        &self,
        engine: &Flows,
        attempt: &Attempt,
        ctx: &LoginContext<'_>,
        session: ProviderSession,
    ) -> Result<()> {
        let link_id = attempt.flow.link()?;
        // Each operation may take the timeout, plus the margin of `lease`.
        let started = store::start_run(
            engine.db(),
            attempt.flow.id,
            link_id,
            attempt.id,
            engine.provider_timeout(),
            engine.lease(0),
        )
        .await?;
        let running = FlowRow {
            step: FlowStep::Processing,
            attempt_id: Some(attempt.id),
            session_ciphertext: None,
            ..attempt.flow.clone()
        };
        let moved = started.moved;
        match (moved, started.link()) {
            (true, Some(link)) => {
                let finish = self
                    .run_operations(engine, &running, &link, ctx, &session)
                    .await?;
                self.finish_link(engine, &running, finish).await?;
            }
            // The sweep expired the link while the end user logged in.
            (true, None) => {
                self.finish_link(engine, &running, Finish::Expired).await?;
            }
            // Cancelled or expired while the provider was logging in.
            (false, _) => {}
        }
        engine.log_out(&attempt.flow, ctx, &session).await;
        Ok(())
    }

    async fn awaiting_second_factor(&self, tx: &mut PgConnection, flow: &FlowRow) -> Result<()> {
        store::set_awaiting_2fa(tx, flow.link()?).await
    }

    async fn finish(&self, engine: &Flows, flow: &FlowRow, finish: Finish) -> Result<bool> {
        self.finish_link(engine, flow, finish).await
    }
}

impl LinkFlow {
    /// Runs every operation in order in one provider session; the first
    /// failure fails the whole link.
    async fn run_operations(
        &self,
        engine: &Flows,
        flow: &FlowRow,
        link: &LinkForFlow,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
    ) -> Result<Finish> {
        let sealed = link
            .arguments_ciphertext
            .as_deref()
            .ok_or_else(|| Error::internal(anyhow::anyhow!("link arguments already purged")))?;
        let arguments: Vec<Value> = serde_json::from_slice(
            &engine
                .cipher()
                .decrypt(sealed, Sealed::LinkArguments(link.id))
                .map_err(Error::Internal)?,
        )
        .map_err(Error::internal)?;
        let connector = match engine.connectors().serving(ctx) {
            Ok(connector) => connector,
            Err(err) => return Ok(Finish::Failed(err.code(), err.to_string())),
        };
        let mut data = Vec::new();
        // A session the connector renews is the one the next operation uses.
        let mut session = std::borrow::Cow::Borrowed(session);
        for (index, (op, args)) in link.operations.iter().zip(&arguments).enumerate() {
            let step = json!({ "index": index, "resource": op.resource, "action": op.action });
            if flow.debug {
                let shown = engine
                    .catalog()
                    .provider(&link.integration_id)
                    .and_then(|p| {
                        p.capability(&op.resource, op.action)
                            .map(|c| c.redact_arguments(args))
                    })
                    .unwrap_or(Value::Null);
                let mut details = step.clone();
                details["arguments"] = shown;
                engine.trace(flow, "operation.started", details).await?;
            }
            match engine
                .within_deadline(connector.execute(ctx, &session, &op.resource, op.action, args))
                .await
            {
                Ok(executed) => {
                    engine.trace(flow, "operation.completed", step).await?;
                    data.push(executed.data);
                    if let Some(renewed) = executed.renewed {
                        session = std::borrow::Cow::Owned(renewed);
                    }
                }
                Err(err) => {
                    let mut details = step;
                    details["errorCode"] = json!(err.code());
                    engine.trace(flow, "operation.failed", details).await?;
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
    /// session, and writes the event, all in one transaction. Returns false,
    /// changing nothing, when the flow was no longer at the step `flow`
    /// shows (see [`crate::flows::store::close`]).
    async fn finish_link(&self, engine: &Flows, flow: &FlowRow, finish: Finish) -> Result<bool> {
        let link_id = flow.link()?;
        let (status, outcome, error_code, error_message, result, event, cancelled_step) =
            match finish {
                Finish::Completed(result) => (
                    LinkStatus::Completed,
                    FlowOutcome::Success,
                    None,
                    None,
                    Some(result),
                    "link.completed",
                    None,
                ),
                Finish::Failed(code, message) => (
                    LinkStatus::Failed,
                    FlowOutcome::Error,
                    Some(code),
                    Some(message),
                    None,
                    "link.failed",
                    None,
                ),
                Finish::Expired => (
                    LinkStatus::Expired,
                    FlowOutcome::Error,
                    Some("link_expired"),
                    Some("The link expired before it was completed.".to_string()),
                    None,
                    "link.expired",
                    None,
                ),
                Finish::Cancelled(step) => (
                    LinkStatus::Cancelled,
                    FlowOutcome::Cancelled,
                    Some("cancelled"),
                    Some("The end user cancelled.".into()),
                    None,
                    "link.failed",
                    Some(step),
                ),
            };
        let mut tx = engine.db().begin().await?;
        // The flow decides: only the request that closes it goes on.
        if !crate::flows::store::close(&mut tx, flow, outcome, error_code, cancelled_step).await? {
            return Ok(false);
        }
        if flow.debug {
            let details = json!({ "errorCode": error_code });
            store::append_trace(&mut *tx, link_id, &format!("link.{status}"), details).await?;
        }
        // Unless the expiry sweep got there first (it writes its own event).
        let finished = store::finish(
            &mut tx,
            link_id,
            status,
            error_code,
            error_message.as_deref(),
            result.as_ref(),
        )
        .await?;
        if let Some((integration_id, external_user_id)) = finished {
            let mut data = json!({
                "linkId": link_id.to_string(),
                "integrationId": integration_id,
                "status": status,
                "externalUserId": external_user_id,
            });
            if let Some(result) = &result {
                data["result"] = result.clone();
            }
            if let Some(code) = error_code {
                data["errorCode"] = json!(code);
            }
            let subject = EventSubject {
                link_id: Some(link_id),
                connection_id: None,
            };
            outbox::record(&mut tx, flow.tenant(), event, subject, data).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
