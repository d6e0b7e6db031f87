//! Flows of link intents: claim with the claim code, log in once, give a
//! second factor when asked, then every operation runs in that one session.
//! Any failure fails the whole link and keeps no partial result. The link's
//! final state, the purge of its arguments and its `link.completed` /
//! `link.failed` event are written in one transaction.

use super::{EventSubject, Finish, FlowRow, close_flow, record_event};
use crate::app::{Api, link_arguments_context, parse_id};
use crate::catalog::Provider;
use crate::connectors::{LoginContext, ProviderSession};
use crate::domain::link::{LinkOperation, return_url_with_link_id};
use crate::error::{Error, Precondition, Result};
use crate::ids::{IdKind, random_token, token_hash};
use crate::pb;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

#[derive(Debug, sqlx::FromRow)]
struct LinkForFlow {
    id: Uuid,
    integration_id: String,
    operations: sqlx::types::Json<Vec<LinkOperation>>,
    arguments_ciphertext: Option<Vec<u8>>,
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
    async fn link_for_flow(&self, flow: &FlowRow) -> Result<LinkForFlow> {
        let link_id = flow.link()?;
        Ok(sqlx::query_as(
            "SELECT id, integration_id, operations, arguments_ciphertext FROM links WHERE id = $1",
        )
        .bind(link_id)
        .fetch_one(self.db())
        .await?)
    }

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

    /// After a successful login: runs the operations, finishes the link, and
    /// logs out (a link needs the provider session only for its operations).
    pub(super) async fn run_link(
        &self,
        flow: &FlowRow,
        ctx: &LoginContext<'_>,
        session: ProviderSession,
    ) -> Result<()> {
        let link = self.link_for_flow(flow).await?;
        let finish = self.run_operations(flow, &link, ctx, &session).await?;
        self.finish_link(flow, finish).await?;
        if let Ok(connector) = self.state.connectors.for_tenant(flow.tenant()) {
            let _ = connector.logout(ctx, &session).await;
        }
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
            match connector
                .execute(ctx, session, &op.resource, op.action, args)
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
    /// session, and writes the event, all in one transaction.
    pub(super) async fn finish_link(&self, flow: &FlowRow, finish: Finish) -> Result<()> {
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
        self.trace(
            flow,
            &format!("link.{status}"),
            json!({ "errorCode": error_code }),
        )
        .await?;
        let mut tx = self.db().begin().await?;
        // Only the request that finishes the link writes its event.
        let finished: Option<(String, Option<String>)> = sqlx::query_as(
            "UPDATE links SET status = $2, error_code = $3, error_message = $4, result = $5,
                 finished_at = now(), arguments_ciphertext = NULL
             WHERE id = $1 AND status IN ('pending', 'claimed', 'awaiting_2fa')
             RETURNING integration_id, external_user_id",
        )
        .bind(link_id)
        .bind(status)
        .bind(error_code)
        .bind(&error_message)
        .bind(&result)
        .fetch_optional(&mut *tx)
        .await?;
        close_flow(&mut tx, flow, outcome, error_code, cancelled_step).await?;
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
        Ok(())
    }
}
