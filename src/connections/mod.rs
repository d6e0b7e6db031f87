//! ConnectionService: list, get and delete the connections Link sessions
//! leave behind, the Access API that uses them (`access.rs`), and the
//! background expiry of their provider sessions. Imports the kernel, the
//! catalog, connectors, idempotency and events.

use crate::auth::Caller;
use crate::connectors::oauth_session::OAuthTokens;
use crate::connectors::{LoginContext, ProviderSession};
use crate::events::outbox::{self, EventSubject};
use crate::kernel::crypto::Sealed;
use crate::kernel::error::{Error, Result};
use crate::kernel::ids::ConnectionId;
use crate::kernel::paging::Cursor;
use crate::kernel::tenant::Tenant;
use crate::kernel::time::timestamp;
use crate::kernel::validate::{Violations, limits};
use crate::pb;
pub mod access;
pub mod health;
pub mod proxy;
pub mod store;
pub mod tokens;

use crate::kernel::db::Db;
use serde_json::{Value, json};
use store::{ConnectionRow, ListFilter};

/// Connections per page when `limit` is not given.
pub const DEFAULT_LIST_LIMIT: i32 = 10;
/// Largest accepted `limit`.
pub const MAX_LIST_LIMIT: i32 = 100;

crate::kernel::names::stored_names! {
    /// The lifecycle of a connection (`connections.status`).
    pub enum ConnectionStatus: pb::ConnectionStatus {
        /// Its first login is under way.
        Pending = "pending",
        Active = "active",
        /// Its login waits for the second factor.
        Awaiting2fa = "awaiting_2fa",
        /// The provider session ended.
        Expired = "expired",
        /// The session that was making it ended without success.
        Failed = "failed",
    }
}

/// A connection as the API shows it.
pub fn connection_to_proto(row: &ConnectionRow) -> pb::Connection {
    pb::Connection {
        id: row.id.to_string(),
        client_app_id: row.client_app_id.to_string(),
        integration_id: row.integration_id.clone(),
        status: row.status.to_proto() as i32,
        client_reference_id: row.client_reference_id.clone(),
        geolocation: row.geolocation.as_ref().map(|g| g.0.to_proto()),
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
        authenticated_at: row.authenticated_at.map(timestamp),
        session_expires_at: row.session_expires_at.map(timestamp),
        oauth: oauth_to_proto(&row.token),
    }
}

/// The OAuth state of a connection; `None` for one that holds no tokens.
fn oauth_to_proto(token: &store::TokenState) -> Option<pb::ConnectionOAuth> {
    let obtained_at = token.token_obtained_at?;
    Some(pb::ConnectionOAuth {
        token_obtained_at: Some(timestamp(obtained_at)),
        token_expires_at: token.token_expires_at.map(timestamp),
        next_refresh_at: token.refresh_due_at.map(timestamp),
        refresh_failures: token.refresh_failures,
        last_refresh_error: token.refresh_error.clone().unwrap_or_default(),
        refresh_exhausted_at: token.refresh_exhausted_at.map(timestamp),
    })
}

/// The `data` of a `connection.*` event: the client's reference id and the
/// full connection (never its session).
pub fn connection_event_data(
    row: &ConnectionRow,
    billing_stopped_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Value {
    let mut data = json!({
        "clientReferenceId": row.client_reference_id,
        "connection": crate::kernel::views::connection_json(&connection_to_proto(row)),
    });
    if let Some(at) = billing_stopped_at {
        data["billingStoppedAt"] = json!(crate::kernel::views::iso8601(&timestamp(at)));
    }
    data
}

/// The filters of a listing as page tokens bind them.
fn filter_key(filter: &ListFilter) -> String {
    format!(
        "{}\u{0}{}",
        filter.status.map_or("", ConnectionStatus::as_str),
        filter.client_reference_id.as_deref().unwrap_or_default()
    )
}

/// A checked `ListConnections` request.
struct ListQuery {
    filter: ListFilter,
    cursor: Option<Cursor>,
    offset: i64,
    limit: i64,
}

impl ListQuery {
    fn parse(req: &pb::ListConnectionsRequest, max_offset: i64) -> Result<Self> {
        let mut v = Violations::new();
        let limit = req.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            v.add("limit", format!("must be between 1 and {MAX_LIST_LIMIT}"));
        }
        let offset = req.offset.unwrap_or(0);
        if offset < 0 {
            v.add("offset", "must not be negative");
        } else if i64::from(offset) > max_offset {
            v.add(
                "offset",
                format!(
                    "must be at most {max_offset}; page deeper with pageToken (the nextPageToken of the previous page)"
                ),
            );
        }
        let status = match req.status() {
            pb::ConnectionStatus::Unspecified if req.status != 0 => {
                v.add("status", "is not a connection state");
                None
            }
            pb::ConnectionStatus::Unspecified => None,
            other => ConnectionStatus::from_proto(other),
        };
        let client_reference_id = req
            .client_reference_id
            .clone()
            .filter(|r| !r.is_empty())
            .filter(|r| v.max_len("clientReferenceId", r, limits::REFERENCE));
        let filter = ListFilter {
            status,
            client_reference_id,
        };
        let cursor = match req.page_token.as_deref().filter(|t| !t.is_empty()) {
            Some(_) if offset > 0 => {
                v.add("pageToken", "cannot be combined with offset");
                None
            }
            Some(token) => crate::kernel::paging::decode(token, &filter_key(&filter))
                .map_err(|msg| v.add("pageToken", msg))
                .ok(),
            None => None,
        };
        v.finish()?;
        Ok(ListQuery {
            filter,
            cursor,
            offset: i64::from(offset),
            limit: i64::from(limit),
        })
    }
}

crate::kernel::names::stored_names! {
    /// How a recorded Access API call ended (`operation_runs.status`).
    pub enum RunStatus: pb::OperationRunStatus {
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

fn parse_connection_id(value: &str) -> Result<ConnectionId> {
    ConnectionId::from_request("connectionId", value)
}

/// ConnectionService: what it reads and what deleting logs out.
#[derive(Debug, Clone)]
pub struct Connections {
    db: Db,
    catalog: std::sync::Arc<crate::catalog::Catalog>,
    connectors: crate::connectors::Connectors,
    cipher: crate::kernel::crypto::Cipher,
    /// Largest `offset` a listing accepts.
    max_list_offset: i64,
    /// Longest wait for one provider call (a logout, an operation).
    provider_timeout: std::time::Duration,
    idempotency: crate::idempotency::Idempotency,
    tokens: tokens::TokenKeeper,
}

impl Connections {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        catalog: std::sync::Arc<crate::catalog::Catalog>,
        connectors: crate::connectors::Connectors,
        cipher: crate::kernel::crypto::Cipher,
        max_list_offset: i64,
        provider_timeout: std::time::Duration,
        idempotency: crate::idempotency::Idempotency,
        tokens: tokens::TokenKeeper,
    ) -> Self {
        Connections {
            db,
            catalog,
            connectors,
            cipher,
            max_list_offset,
            provider_timeout,
            idempotency,
            tokens,
        }
    }
}

impl Connections {
    pub async fn list_connections(
        &self,
        caller: &Caller,
        req: pb::ListConnectionsRequest,
    ) -> Result<pb::ListConnectionsResponse> {
        let query = ListQuery::parse(&req, self.max_list_offset)?;
        let mut rows = store::list(
            &self.db,
            caller.tenant,
            &query.filter,
            query.cursor,
            query.offset,
            query.limit,
        )
        .await?;
        let more = rows.len() as i64 > query.limit;
        rows.truncate(query.limit as usize);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => crate::kernel::paging::encode(
                Cursor {
                    created_at: last.created_at,
                    id: last.id.uuid(),
                },
                &filter_key(&query.filter),
            ),
            _ => String::new(),
        };
        Ok(pb::ListConnectionsResponse {
            connections: rows.iter().map(connection_to_proto).collect(),
            next_page_token,
        })
    }

    pub async fn get_connection(
        &self,
        caller: &Caller,
        req: pb::GetConnectionRequest,
    ) -> Result<pb::GetConnectionResponse> {
        let id = parse_connection_id(&req.connection_id)?;
        if caller.only_connection.is_some_and(|only| only != id) {
            // A token for another connection learns nothing about this id.
            return Err(Error::NotFound("connection"));
        }
        let row = store::get(&self.db, caller.tenant, id).await?;
        Ok(pb::GetConnectionResponse {
            connection: Some(connection_to_proto(&row)),
        })
    }

    /// Logs the end user out at the provider (an OAuth grant is revoked
    /// there, RFC 7009, when it has a revocation endpoint; best effort: the
    /// session is wiped on our side either way), then deletes the connection, stops
    /// billing and emits `connection.deleted` in one transaction.
    pub async fn delete_connection(
        &self,
        caller: &Caller,
        req: pb::DeleteConnectionRequest,
    ) -> Result<pb::DeleteConnectionResponse> {
        let id = parse_connection_id(&req.connection_id)?;
        let tenant = caller.tenant;
        let held = store::get_with_session(&self.db, tenant, id).await?;
        let row = &held.row;
        let oauth = self
            .catalog
            .provider(&row.integration_id)
            .is_some_and(|p| p.oauth2.is_some());
        let mut tx = if oauth {
            // The tokens revoked are the current ones: no refresh rotates
            // them between the read and the wipe.
            let mut tx = self.db.begin().await?;
            store::lock_for_refresh(&mut tx, id, true).await?;
            if let Some(sealed) = store::session_ciphertext(&mut *tx, tenant, id).await? {
                self.logout_connection(tenant, row, &sealed).await;
            }
            tx
        } else {
            // No database connection is held while the connector logs out.
            if let Some(sealed) = &held.session_ciphertext {
                self.logout_connection(tenant, row, sealed).await;
            }
            self.db.begin().await?
        };
        let (row, billing_stopped_at) = store::delete(&mut tx, tenant, id)
            .await?
            .ok_or(Error::NotFound("connection"))?;
        let subject = EventSubject {
            link_id: None,
            connection_id: Some(row.id),
        };
        let data = connection_event_data(&row, Some(billing_stopped_at));
        outbox::record(&mut tx, tenant, "connection.deleted", subject, data).await?;
        tx.commit().await?;
        Ok(pb::DeleteConnectionResponse {
            connection_id: row.id.to_string(),
            billing_stopped_at: Some(timestamp(billing_stopped_at)),
        })
    }

    /// The provider session stored for connection `id`; `None` when there
    /// is none or it does not open (a key no longer in the ring).
    fn open_session(&self, id: ConnectionId, sealed: Option<&[u8]>) -> Option<ProviderSession> {
        let plain = self
            .cipher
            .decrypt(sealed?, Sealed::ConnectionSession(id))
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }

    async fn logout_connection(&self, tenant: Tenant, row: &ConnectionRow, sealed: &[u8]) {
        let Some(provider) = self.catalog.provider(&row.integration_id) else {
            return;
        };
        let session = self.open_session(row.id, Some(sealed));
        if provider.oauth2.is_some() {
            let tokens = session.as_ref().and_then(OAuthTokens::from_session);
            if let (Some(tokens), Ok(Some(client))) = (
                tokens,
                self.tokens
                    .provider_oauth
                    .client(row.client_app_id, &provider)
                    .await,
            ) && let Err(err) = self
                .tokens
                .provider_oauth
                .revoke(&provider, &client, &tokens)
                .await
            {
                tracing::warn!(
                    connection_id = %row.id.to_string(),
                    error_code = err.code(),
                    "revoking the grant at the provider failed; the tokens are wiped anyway"
                );
            }
            return;
        }
        let ctx = login_context(tenant, row, &provider);
        let (Some(session), Ok(connector)) = (session, self.connectors.serving(&ctx)) else {
            return;
        };
        // Bounded like every provider call: a connector that hangs must not
        // hold up the deletion.
        let logout = tokio::time::timeout(self.provider_timeout, connector.logout(&ctx, &session));
        if let Err(err) = logout
            .await
            .unwrap_or(Err(crate::connectors::ConnectorError::ProviderUnavailable))
        {
            tracing::warn!(
                connection_id = %row.id.to_string(),
                error_code = err.code(),
                "provider logout failed; the stored session is wiped anyway"
            );
        }
    }
}

/// Who a provider call about `row` is for and where it should come from.
fn login_context<'p>(
    tenant: Tenant,
    row: &ConnectionRow,
    provider: &'p crate::catalog::Provider,
) -> LoginContext<'p> {
    LoginContext {
        tenant,
        provider,
        connection_id: Some(row.id),
        geolocation: row
            .geolocation
            .as_ref()
            .map(|g| (g.country.clone(), g.state.clone())),
    }
}

/// Marks up to `batch` connections whose provider session has ended
/// `expired`, each with its `connection.expired` event, in one transaction.
/// Safe in several replicas at once (rows are claimed with SKIP LOCKED).
pub async fn expire_sessions(db: &Db, batch: i64) -> Result<usize> {
    let mut tx = db.begin().await?;
    let expired = store::expire_due(&mut tx, batch).await?;
    for (tenant, row) in &expired {
        let subject = EventSubject {
            link_id: None,
            connection_id: Some(row.id),
        };
        let mut data = connection_event_data(row, None);
        data["reason"] = json!("session_lifetime");
        outbox::record(&mut tx, *tenant, "connection.expired", subject, data).await?;
    }
    tx.commit().await?;
    Ok(expired.len())
}
