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

use super::attempt::Attempt;
use super::{EventSubject, Finish, FlowRow, close_flow, record_event};
use crate::app::Api;
use crate::catalog::Provider;
use crate::connectors::{LoginContext, ProviderSession};
use crate::kernel::crypto::Sealed;
use crate::kernel::error::{Error, Precondition, Result};
use crate::kernel::ids::parse_id;
use crate::kernel::ids::{IdKind, random_token, token_hash};
use crate::links::rules::{LinkOperation, return_url_with_link_id};
use crate::pb;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

#[derive(Debug, sqlx::FromRow)]
struct LinkForFlow {
    id: Uuid,
    integration_id: String,
    operations: sqlx::types::Json<Vec<LinkOperation>>,
    arguments_ciphertext: Option<Vec<u8>>,
}

/// What a run that moved its link to `processing` got: whether the
/// attempt still held the flow (it may have been cancelled or expired
/// meanwhile), and the link's columns when the link was still waiting for
/// its login (not expired by the sweep meanwhile).
#[derive(Debug, sqlx::FromRow)]
struct StartedRun {
    moved: bool,
    id: Option<Uuid>,
    integration_id: Option<String>,
    operations: Option<sqlx::types::Json<Vec<LinkOperation>>>,
    arguments_ciphertext: Option<Vec<u8>>,
}

impl StartedRun {
    fn link(self) -> Option<LinkForFlow> {
        Some(LinkForFlow {
            id: self.id?,
            integration_id: self.integration_id?,
            operations: self.operations?,
            arguments_ciphertext: self.arguments_ciphertext,
        })
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

pub(super) async fn append_trace(
    db: impl PgExecutor<'_>,
    link_id: Uuid,
    event: &str,
    details: Value,
) -> Result<()> {
    sqlx::query(
        "UPDATE links SET debug_trace = debug_trace || jsonb_build_array(
             jsonb_build_object('at', now(), 'event', $2::text, 'details', $3::jsonb))
         WHERE id = $1",
    )
    .bind(link_id)
    .bind(event)
    .bind(details)
    .execute(db)
    .await?;
    Ok(())
}

pub(super) async fn mark_awaiting_2fa(tx: &mut PgConnection, flow: &FlowRow) -> Result<()> {
    sqlx::query("UPDATE links SET status = 'awaiting_2fa' WHERE id = $1 AND status = 'claimed'")
        .bind(flow.link_id)
        .execute(tx)
        .await?;
    Ok(())
}

impl Api {
    /// The link's part of the flow view, from what the flow row carries.
    pub(super) fn link_view(&self, flow: &FlowRow, view: &mut pb::Flow) {
        let Some(link_id) = flow.link_id else {
            return;
        };
        view.link_id = IdKind::Link.format(link_id);
        if let (Some(_), Some(url)) = (&flow.outcome, flow.link_return_url.as_deref()) {
            view.redirect_url = return_url_with_link_id(url, &view.link_id);
        }
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
        let flow_id = Uuid::now_v7();
        let token = format!("lft_{}", random_token());
        // The claim and its flow in one statement: only the request whose
        // UPDATE matched a pending link gets a flow.
        let claimed: Option<Uuid> = sqlx::query_scalar(
            "WITH claimed AS (
                 UPDATE links SET status = 'claimed', claimed_at = now()
                 WHERE id = $1 AND claim_code_hash = $2 AND status = 'pending' AND expires_at > now()
                 RETURNING id, organization_id, environment, integration_id, expires_at)
             INSERT INTO flows (id, token_hash, organization_id, environment, kind, link_id, integration_id, step, expires_at)
             SELECT $3, $4, organization_id, environment, 'link', id, integration_id, 'login', expires_at
             FROM claimed
             RETURNING id",
        )
        .bind(link_id)
        .bind(&code_hash)
        .bind(flow_id)
        .bind(token_hash(&token))
        .fetch_optional(self.db())
        .await?;
        if claimed.is_none() {
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
        }
        Ok(pb::ClaimLinkResponse {
            flow_token: token,
            flow: Some(self.flow_view(flow_id).await?),
        })
    }

    /// After a successful login: moves the flow and the link to
    /// `processing` (only the holder of the login attempt can), runs the
    /// operations, finishes the link, and logs out (a link needs the
    /// provider session only for its operations).
    pub(super) async fn run_link(
        &self,
        attempt: &Attempt,
        ctx: &LoginContext<'_>,
        session: ProviderSession,
    ) -> Result<()> {
        let link_id = attempt.flow.link()?;
        let started: StartedRun = sqlx::query_as(
            "WITH moved AS (
                 UPDATE flows SET step = 'processing', failed_logins = failed_logins - 1,
                     error_code = NULL, second_factor_prompt = NULL, session_ciphertext = NULL,
                     attempt_until = now() + make_interval(secs =>
                         $4 * (SELECT jsonb_array_length(operations) FROM links WHERE id = $2) + $5),
                     updated_at = now()
                 WHERE id = $1 AND attempt_id = $3 AND outcome IS NULL
                 RETURNING link_id
             ), run AS (
                 UPDATE links SET status = 'processing'
                 FROM moved WHERE links.id = moved.link_id AND links.status IN ('claimed', 'awaiting_2fa')
                 RETURNING links.id, links.integration_id, links.operations, links.arguments_ciphertext
             )
             SELECT EXISTS (SELECT 1 FROM moved) AS moved, run.* FROM (SELECT 1) one LEFT JOIN run ON true",
        )
        .bind(attempt.flow.id)
        .bind(link_id)
        .bind(attempt.id)
        // Each operation may take the timeout, plus the margin of `lease`.
        .bind(self.state.provider_timeout.as_secs_f64())
        .bind(self.lease(0).as_secs_f64())
        .fetch_one(self.db())
        .await?;
        let running = FlowRow {
            step: "processing".into(),
            attempt_id: Some(attempt.id),
            session_ciphertext: None,
            ..attempt.flow.clone()
        };
        let moved = started.moved;
        match (moved, started.link()) {
            (true, Some(link)) => {
                let finish = self.run_operations(&running, &link, ctx, &session).await?;
                self.finish_link(&running, finish).await?;
            }
            // The sweep expired the link while the end user logged in.
            (true, None) => {
                self.finish_link(&running, Finish::Expired).await?;
            }
            // Cancelled or expired while the provider was logging in.
            (false, _) => {}
        }
        self.log_out(ctx, &session).await;
        Ok(())
    }

    /// Runs every operation in order in one provider session; the first
    /// failure fails the whole link.
    async fn run_operations(
        &self,
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
            &self
                .state
                .cipher
                .decrypt(sealed, Sealed::LinkArguments(link.id))
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
            if flow.debug {
                let shown = self
                    .state
                    .catalog
                    .capability(&link.integration_id, &op.resource, op.action)
                    .map_or(Value::Null, |c| c.redact_arguments(args));
                let mut details = step.clone();
                details["arguments"] = shown;
                self.trace(flow, "operation.started", details).await?;
            }
            match self
                .within_deadline(connector.execute(ctx, session, &op.resource, op.action, args))
                .await
            {
                Ok(value) => {
                    self.trace(flow, "operation.completed", step).await?;
                    data.push(value);
                }
                Err(err) => {
                    let mut details = step;
                    details["errorCode"] = json!(err.code());
                    self.trace(flow, "operation.failed", details).await?;
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
    /// shows (see [`close_flow`]).
    pub(super) async fn finish_link(&self, flow: &FlowRow, finish: Finish) -> Result<bool> {
        let link_id = flow.link()?;
        let (status, outcome, error_code, error_message, result, event, cancelled_step) =
            match finish {
                Finish::Completed(result) => (
                    "completed",
                    "success",
                    None,
                    None,
                    Some(result),
                    "link.completed",
                    None,
                ),
                Finish::Failed(code, message) => (
                    "failed",
                    "error",
                    Some(code),
                    Some(message),
                    None,
                    "link.failed",
                    None,
                ),
                Finish::Expired => (
                    "expired",
                    "error",
                    Some("link_expired"),
                    Some("The link expired before it was completed.".to_string()),
                    None,
                    "link.expired",
                    None,
                ),
                Finish::Cancelled(step) => (
                    "cancelled",
                    "cancelled",
                    Some("cancelled"),
                    Some("The end user cancelled.".into()),
                    None,
                    "link.failed",
                    Some(step),
                ),
            };
        let mut tx = self.db().begin().await?;
        // The flow decides: only the request that closes it goes on.
        if !close_flow(&mut tx, flow, outcome, error_code, cancelled_step).await? {
            return Ok(false);
        }
        if flow.debug {
            let details = json!({ "errorCode": error_code });
            append_trace(&mut *tx, link_id, &format!("link.{status}"), details).await?;
        }
        // Unless the expiry sweep got there first (it writes its own event).
        let finished: Option<(String, Option<String>)> = sqlx::query_as(
            "UPDATE links SET status = $2, error_code = $3, error_message = $4, result = $5,
                 finished_at = now(), arguments_ciphertext = NULL
             WHERE id = $1 AND status IN ('pending', 'claimed', 'awaiting_2fa', 'processing')
             RETURNING integration_id, external_user_id",
        )
        .bind(link_id)
        .bind(status)
        .bind(error_code)
        .bind(&error_message)
        .bind(&result)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((integration_id, external_user_id)) = finished {
            let mut data = json!({
                "linkId": IdKind::Link.format(link_id),
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
            record_event(&mut tx, flow.tenant(), event, subject, data).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

/// Fails links whose run outlived its lease (the process running the
/// operations died): `failed` with `operation_interrupted`, arguments
/// purged, flow closed, a `link.failed` event, in one statement. Some
/// operations may have reached the provider; the error says so. Skips rows
/// another replica holds. Returns how many links failed.
pub async fn fail_interrupted_runs(db: &PgPool, batch: i64) -> Result<u64> {
    let failed = sqlx::query(
        "WITH stale AS (
             SELECT id FROM flows
             WHERE step = 'processing' AND outcome IS NULL AND attempt_until <= now()
             ORDER BY attempt_until
             LIMIT $1
             FOR UPDATE SKIP LOCKED
         ), closed AS (
             UPDATE flows f SET step = 'done', outcome = 'error', error_code = 'operation_interrupted',
                 attempt_id = NULL, attempt_until = NULL, updated_at = now()
             FROM stale WHERE f.id = stale.id
             RETURNING f.link_id
         ), failed AS (
             UPDATE links SET status = 'failed', error_code = 'operation_interrupted',
                 error_message = $2, finished_at = now(), arguments_ciphertext = NULL
             FROM closed WHERE links.id = closed.link_id AND links.status = 'processing'
             RETURNING links.id, links.organization_id, links.environment, links.integration_id,
                 links.external_user_id
         )
         INSERT INTO events (id, organization_id, environment, type, link_id, payload)
         SELECT gen_random_uuid(), organization_id, environment, 'link.failed', id,
                link_event_payload('link.failed', id, integration_id, 'failed', external_user_id,
                    'operation_interrupted')
         FROM failed",
    )
    .bind(batch)
    .bind(INTERRUPTED_MESSAGE)
    .execute(db)
    .await?;
    Ok(failed.rows_affected())
}

/// `error_message` of a link whose run was interrupted.
const INTERRUPTED_MESSAGE: &str =
    "The run was interrupted before it finished; some operations may have reached the provider.";
