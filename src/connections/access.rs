//! The Access API: operations run on an `active` connection's stored
//! provider session, after Link, with the validation and result shapes of a
//! link intent.
//!
//! Calls on one connection take turns through a lease on the connection
//! row (a conditional `UPDATE` only one call wins; a replica that dies
//! mid-call frees it when the lease ends), so no database connection is
//! held while a provider works. What a call did is recorded with its outcome
//! in one transaction: the run, a session the connector renewed, the lease
//! given back, or, when the provider ended the session, the connection
//! `expired` with its one `connection.expired` event.

use super::tokens::RefreshFailure;
use super::{Connections, RunStatus, connection_event_data, parse_connection_id, store};
use crate::auth::Caller;
use crate::catalog::operations::{Operation, check_operations, requests_from_proto, summaries};
use crate::connectors::oauth_session::OAuthTokens;
use crate::connectors::{ConnectorError, LoginContext, ProviderSession};
use crate::events::outbox::{self, EventSubject};
use crate::idempotency::store::IdempotencyKey;
use crate::kernel::crypto::Sealed;
use crate::kernel::error::{Error, Precondition, Reason, Result};
use crate::kernel::ids::{ConnectionId, OperationRunId, token_hash};
use crate::kernel::paging::{self, Cursor};
use crate::kernel::proto_json;
use crate::kernel::tenant::Tenant;
use crate::kernel::time::timestamp;
use crate::kernel::validate::Violations;
use crate::pb;
use chrono::Utc;
use prost::Message as _;
use serde_json::{Value, json};
use sqlx::types::Json;
use std::time::{Duration, Instant};

/// Runs per page of `ListOperationRuns` when `limit` is not given.
pub const DEFAULT_RUNS_LIMIT: i32 = 20;
/// Largest accepted `limit` of `ListOperationRuns`.
pub const MAX_RUNS_LIMIT: i32 = 100;

/// Why `connection.expired` was emitted: the provider ended the session
/// (found by a call or the health check).
pub const REASON_SESSION_ENDED: &str = "session_ended";

pub(super) fn session_expired() -> Error {
    Error::FailedPrecondition {
        precondition: Precondition::WrongState,
        reason: Reason::SessionExpired,
        message: "the connection's provider session has ended: reconnect it with a Link session \
                  (InitLinkSession with this connectionId)"
            .into(),
    }
}

fn connection_busy() -> Error {
    Error::Aborted {
        reason: Reason::ConnectionBusy,
        message: "earlier calls on this connection are still running; retry later".into(),
    }
}

/// The client's error for a connector's.
fn access_error(op: &Operation, err: &ConnectorError) -> Error {
    match err {
        ConnectorError::SessionExpired
        | ConnectorError::InvalidCredentials
        | ConnectorError::InvalidCode => session_expired(),
        ConnectorError::ProviderUnavailable => Error::ProviderUnavailable,
        ConnectorError::OperationFailed(_) | ConnectorError::AccountLocked => {
            Error::FailedPrecondition {
                precondition: Precondition::WrongState,
                reason: Reason::OperationFailed,
                message: format!("{} {}: {err}", op.resource, op.action.as_str()),
            }
        }
    }
}

/// Whether the connector's answer means the stored session is gone.
fn session_ended(err: &ConnectorError) -> bool {
    matches!(
        err,
        ConnectorError::SessionExpired
            | ConnectorError::InvalidCredentials
            | ConnectorError::InvalidCode
    )
}

/// What a run did at the provider.
struct Ran {
    data: Vec<Value>,
    renewed: Option<ProviderSession>,
    /// The operation that failed and why.
    failure: Option<(usize, ConnectorError)>,
}

impl Connections {
    /// How long a call of `operations` operations may hold its connection:
    /// each may take the provider deadline, and half of one more is left for
    /// recording the outcome.
    fn operations_lease(&self, operations: usize) -> Duration {
        self.provider_timeout * operations as u32 + self.provider_timeout / 2
    }

    /// `ExecuteOperations`.
    pub async fn execute_operations(
        &self,
        caller: &Caller,
        req: pb::ExecuteOperationsRequest,
        idempotency_key: Option<&str>,
    ) -> Result<pb::ExecuteOperationsResponse> {
        let id = parse_connection_id(&req.connection_id)?;
        if caller.only_connection.is_some_and(|only| only != id) {
            return Err(Error::NotFound("connection"));
        }
        let tenant = caller.tenant;
        // The connection first: its integration decides what is valid.
        let connection = store::get(&self.db, tenant, id).await?;
        let mut v = Violations::new();
        let known = self.catalog.provider(&connection.integration_id).is_some();
        let (operations, arguments) = check_operations(
            &mut v,
            &self.catalog,
            &connection.integration_id,
            known,
            &requests_from_proto(&req.operations),
        );
        v.finish()?;
        let lease = self.operations_lease(operations.len());
        let key = idempotency_key.map(|key| IdempotencyKey {
            tenant,
            operation: "ConnectionService.ExecuteOperations",
            key,
            request_hash: token_hash(req.encode_to_vec()),
        });
        if let Some(key) = &key
            && let Some(replay) = self.idempotency.begin_leased(key, lease).await?
        {
            return Ok(replay);
        }
        let outcome = self
            .run_operations(tenant, id, &operations, &arguments, lease, key.as_ref())
            .await;
        if outcome.is_err()
            && let Some(key) = &key
        {
            self.idempotency.abandon_leased(key).await;
        }
        outcome
    }

    /// Waits for the connection's turn, runs the operations, and records
    /// what happened.
    async fn run_operations(
        &self,
        tenant: Tenant,
        id: ConnectionId,
        operations: &[Operation],
        arguments: &[Value],
        lease: Duration,
        key: Option<&IdempotencyKey<'_>>,
    ) -> Result<pb::ExecuteOperationsResponse> {
        let run_id = OperationRunId::new();
        let leased = self.take_turn(tenant, id, run_id, lease).await?;
        let started_at = Utc::now();
        let started = Instant::now();
        let provider = self
            .catalog
            .provider(&leased.row.integration_id)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("integration left the catalog")))?;
        let ctx = super::login_context(tenant, &leased.row, &provider);
        let oauth = provider.oauth2.is_some().then_some(&leased.row);
        let ran = match self.open_session(id, leased.session_ciphertext.as_deref()) {
            Some(session) => {
                self.call_provider(&ctx, oauth, session, operations, arguments)
                    .await
            }
            // Nothing to use: as if the provider had ended it.
            None => Ran {
                data: Vec::new(),
                renewed: None,
                failure: Some((0, ConnectorError::SessionExpired)),
            },
        };

        let finished_at = Utc::now();
        let failure = ran
            .failure
            .as_ref()
            .map(|(i, err)| (access_error(&operations[*i], err), err));
        let run = store::RunRow {
            id: run_id,
            connection_id: id,
            operations: Json(operations.to_vec()),
            status: if failure.is_some() {
                RunStatus::Failed
            } else {
                RunStatus::Succeeded
            },
            error_code: failure.as_ref().map(|(_, err)| err.code().to_string()),
            error_message: failure.as_ref().map(|(error, _)| error.to_string()),
            started_at,
            finished_at,
            created_at: started_at,
        };
        let mut tx = self.db.begin().await?;
        store::insert_run(&mut tx, tenant, &run).await?;
        let renewed = ran
            .renewed
            .map(|session| {
                let plain = serde_json::to_vec(&session).map_err(Error::internal)?;
                Ok::<_, Error>((
                    self.cipher.encrypt(&plain, Sealed::ConnectionSession(id)),
                    session.expires_at,
                ))
            })
            .transpose()?;
        if let Some((_, err)) = &failure
            && session_ended(err)
        {
            if let Some(row) = store::expire_ended_session(&mut tx, id, run_id).await? {
                let mut data = connection_event_data(&row, None);
                data["reason"] = json!(REASON_SESSION_ENDED);
                let subject = EventSubject {
                    link_id: None,
                    connection_id: Some(id),
                };
                outbox::record(&mut tx, tenant, "connection.expired", subject, data).await?;
            } else {
                // Expired meanwhile (a refused refresh, the health check):
                // the lease is still this run's to give back.
                store::release_operations_lease(&mut tx, id, run_id, None).await?;
            }
        } else {
            let renewed = renewed
                .as_ref()
                .map(|(sealed, at)| (sealed.as_slice(), *at));
            store::release_operations_lease(&mut tx, id, run_id, renewed).await?;
        }
        if let Some((error, _)) = failure {
            tx.commit().await?;
            tracing::info!(
                connection_id = %id,
                operation_run_id = %run_id,
                error_code = %run.error_code.as_deref().unwrap_or_default(),
                "access call failed"
            );
            return Err(error);
        }
        let response = pb::ExecuteOperationsResponse {
            connection_id: id.to_string(),
            result: Some(proto_json::to_struct(
                &crate::catalog::operations::shape_result(&provider, operations, ran.data),
            )),
            operation_run_id: run_id.to_string(),
        };
        if let Some(key) = key {
            self.idempotency
                .finish_leased(&mut tx, key, &response)
                .await?;
        }
        tx.commit().await?;
        tracing::debug!(
            connection_id = %id,
            operation_run_id = %run_id,
            took_ms = started.elapsed().as_millis() as u64,
            "access call succeeded"
        );
        Ok(response)
    }

    /// Takes the connection's operations lease, waiting (up to `wait`) for
    /// a call that holds it. Refused at once when the connection is unknown
    /// or not `active`.
    async fn take_turn(
        &self,
        tenant: Tenant,
        id: ConnectionId,
        run: OperationRunId,
        wait: Duration,
    ) -> Result<store::Leased> {
        let until = Instant::now() + wait;
        let mut pause = Duration::from_millis(20);
        loop {
            if let Some(leased) =
                store::take_operations_lease(&self.db, tenant, id, run, wait).await?
            {
                return Ok(leased);
            }
            match store::operations_state(&self.db, tenant, id).await? {
                None => return Err(Error::NotFound("connection")),
                Some((status, _)) if status != super::ConnectionStatus::Active => {
                    return Err(session_expired());
                }
                // Held by another call (or its lease just ended): wait.
                Some(_) => {}
            }
            if Instant::now() + pause > until {
                return Err(connection_busy());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Runs the operations in order with the connector serving the
    /// connection, each within the provider deadline; stops at the first
    /// failure. For an OAuth connection (`oauth`), an expired access token
    /// is refreshed first, and an operation the provider refused the token
    /// for is run once more after a refresh.
    async fn call_provider(
        &self,
        ctx: &LoginContext<'_>,
        oauth: Option<&store::ConnectionRow>,
        session: ProviderSession,
        operations: &[Operation],
        arguments: &[Value],
    ) -> Ran {
        let mut ran = Ran {
            data: Vec::new(),
            renewed: None,
            failure: None,
        };
        let connector = match self.connectors.serving(ctx) {
            Ok(connector) => connector,
            Err(err) => {
                ran.failure = Some((0, err));
                return ran;
            }
        };
        let mut session = session;
        if let Some(row) = oauth {
            match self.fresh_oauth_session(row, &session, false).await {
                Ok(fresh) => session = fresh,
                Err(err) => {
                    ran.failure = Some((0, err));
                    return ran;
                }
            }
        }
        let mut refreshed_after_refusal = false;
        let mut calls = operations.iter().zip(arguments).enumerate().peekable();
        while let Some(&(i, (op, args))) = calls.peek() {
            let call = connector.execute(ctx, &session, &op.resource, op.action, args);
            let outcome = tokio::time::timeout(self.provider_timeout, call)
                .await
                .unwrap_or(Err(ConnectorError::ProviderUnavailable));
            if let (Some(row), Err(ConnectorError::SessionExpired), false) =
                (oauth, &outcome, refreshed_after_refusal)
            {
                refreshed_after_refusal = true;
                match self.fresh_oauth_session(row, &session, true).await {
                    // The same operation again, with the new token.
                    Ok(fresh) => {
                        session = fresh;
                        continue;
                    }
                    Err(err) => {
                        ran.failure = Some((i, err));
                        break;
                    }
                }
            }
            calls.next();
            match outcome {
                Ok(executed) => {
                    ran.data.push(executed.data);
                    if let Some(renewed) = executed.renewed {
                        session = renewed.clone();
                        ran.renewed = Some(renewed);
                    }
                }
                Err(err) => {
                    ran.failure = Some((i, err));
                    break;
                }
            }
        }
        ran
    }

    /// `session` with usable OAuth tokens (refreshed when they were not, or
    /// when the provider `rejected` them), as a connector error otherwise.
    async fn fresh_oauth_session(
        &self,
        row: &store::ConnectionRow,
        session: &ProviderSession,
        rejected: bool,
    ) -> Result<ProviderSession, ConnectorError> {
        let Some(tokens) = OAuthTokens::from_session(session) else {
            return Err(ConnectorError::SessionExpired);
        };
        match self.usable_tokens(row, tokens, rejected).await {
            Ok(tokens) => Ok(tokens.into_session()),
            Err(RefreshFailure::Ended) => Err(ConnectorError::SessionExpired),
            Err(RefreshFailure::Unavailable) => Err(ConnectorError::ProviderUnavailable),
            Err(RefreshFailure::Refused(code)) => Err(ConnectorError::OperationFailed(format!(
                "the provider refused to refresh the access token ({code})"
            ))),
            Err(RefreshFailure::Failed(err)) => {
                err.log();
                Err(ConnectorError::ProviderUnavailable)
            }
        }
    }

    /// `ListOperationRuns`.
    pub async fn list_operation_runs(
        &self,
        caller: &Caller,
        req: pb::ListOperationRunsRequest,
    ) -> Result<pb::ListOperationRunsResponse> {
        let id = parse_connection_id(&req.connection_id)?;
        if caller.only_connection.is_some_and(|only| only != id) {
            return Err(Error::NotFound("connection"));
        }
        let mut v = Violations::new();
        let limit = req.limit.unwrap_or(DEFAULT_RUNS_LIMIT);
        if !(1..=MAX_RUNS_LIMIT).contains(&limit) {
            v.add("limit", format!("must be between 1 and {MAX_RUNS_LIMIT}"));
        }
        let filter_key = id.to_string();
        let cursor = match req.page_token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => paging::decode(token, &filter_key)
                .map_err(|msg| v.add("pageToken", msg))
                .ok(),
            None => None,
        };
        v.finish()?;
        // Unknown, deleted and other tenants' connections are not found,
        // even when they have runs on record.
        store::get(&self.db, caller.tenant, id).await?;
        let limit = i64::from(limit);
        let mut rows = store::list_runs(&self.db, caller.tenant, id, cursor, limit).await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => paging::encode(
                Cursor {
                    created_at: last.created_at,
                    id: last.id.uuid(),
                },
                &filter_key,
            ),
            _ => String::new(),
        };
        Ok(pb::ListOperationRunsResponse {
            operation_runs: rows.iter().map(run_to_proto).collect(),
            next_page_token,
        })
    }
}

fn run_to_proto(row: &store::RunRow) -> pb::OperationRun {
    pb::OperationRun {
        id: row.id.to_string(),
        connection_id: row.connection_id.to_string(),
        operations: summaries(&row.operations),
        status: row.status.to_proto() as i32,
        error_code: row.error_code.clone().unwrap_or_default(),
        error_message: row.error_message.clone().unwrap_or_default(),
        started_at: Some(timestamp(row.started_at)),
        duration_ms: (row.finished_at - row.started_at).num_milliseconds(),
    }
}
