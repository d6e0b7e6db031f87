//! Link intents: `CreateLink` and `GetLink`, the provider list a client
//! chooses from, and the link kind of flow ([`flow`]: claim, operations,
//! finish). Imports the kernel, the catalog, connectors, idempotency,
//! events and the flow engine.

pub mod flow;
pub mod rules;
pub mod store;

use crate::auth::Caller;
use crate::catalog::Category;
use crate::flows::Flows;
use crate::idempotency::Idempotency;
use crate::idempotency::store::IdempotencyKey;
use crate::kernel::crypto::Sealed;
use crate::kernel::error::{Error, Result};
use crate::kernel::ids::{LinkId, random_token, token_hash};
use crate::kernel::proto_json;
use crate::kernel::time::timestamp;
use crate::kernel::validate::{Violations, limits};
use crate::pb;
use prost::Message as _;
use rules::{LinkRequest, LinkStatus, NewLink, return_url_with_link_id};
use sqlx::PgConnection;

/// LinkService's link intents, and claiming one (LinkFlowService).
#[derive(Debug, Clone)]
pub struct Links {
    db: crate::kernel::db::Db,
    catalog: std::sync::Arc<crate::catalog::Catalog>,
    cipher: crate::kernel::crypto::Cipher,
    /// Base of `app_clip_url`: `<base>/<link id>?code=<claim code>`.
    app_clip_base_url: url::Url,
    idempotency: Idempotency,
    flows: Flows,
}

impl Links {
    pub fn new(
        db: crate::kernel::db::Db,
        catalog: std::sync::Arc<crate::catalog::Catalog>,
        cipher: crate::kernel::crypto::Cipher,
        app_clip_base_url: url::Url,
        idempotency: Idempotency,
        flows: Flows,
    ) -> Self {
        Links {
            db,
            catalog,
            cipher,
            app_clip_base_url,
            idempotency,
            flows,
        }
    }

    /// The catalog requests are checked against.
    pub fn catalog(&self) -> &crate::catalog::Catalog {
        &self.catalog
    }
}

impl Links {
    pub fn list_providers(
        &self,
        req: pb::ListProvidersRequest,
    ) -> Result<pb::ListProvidersResponse> {
        let mut v = Violations::new();
        if let Some(id) = &req.integration_id {
            v.max_len("integrationId", id, limits::ID);
        }
        v.finish()?;
        let wanted = req.integration_id.as_deref().filter(|id| !id.is_empty());
        let providers = self
            .catalog
            .providers()
            .into_iter()
            .filter(|p| wanted.is_none_or(|id| id == p.id))
            .map(|p| pb::Provider {
                integration_id: p.id.clone(),
                name: p.name.clone(),
                category: match p.category {
                    Category::MobileCarrier => pb::ProviderCategory::MobileCarrier,
                    Category::Delivery => pb::ProviderCategory::Delivery,
                    Category::Creator => pb::ProviderCategory::Creator,
                    Category::Bank => pb::ProviderCategory::Bank,
                } as i32,
                capabilities: p
                    .capabilities
                    .iter()
                    .map(|c| pb::Capability {
                        resource: c.resource.clone(),
                        action: c.action.to_proto() as i32,
                        description: c.description.clone(),
                        arguments_schema: Some(proto_json::to_struct(&c.arguments_schema)),
                        result_description: c.result_description.clone(),
                    })
                    .collect(),
                login_method: p.login_method() as i32,
                oauth_scopes: p
                    .oauth2
                    .as_ref()
                    .map(|o| o.scopes.allowed.clone())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(pb::ListProvidersResponse { providers })
    }

    /// Creates a link record (no session until it is claimed). With an
    /// idempotency key, a repeat of the same request returns the first
    /// response and creates nothing.
    pub async fn create_link(
        &self,
        caller: &Caller,
        req: pb::CreateLinkRequest,
        idempotency_key: Option<&str>,
    ) -> Result<pb::CreateLinkResponse> {
        let new = NewLink::parse(&link_request(&req), &self.catalog)?;
        let key = idempotency_key.map(|key| IdempotencyKey {
            tenant: caller.tenant,
            operation: "LinkService.CreateLink",
            key,
            request_hash: token_hash(req.encode_to_vec()),
        });
        self.idempotency
            .run(key, async |conn| self.insert_link(conn, caller, &new).await)
            .await
    }

    /// Writes the link: one statement.
    async fn insert_link(
        &self,
        conn: &mut PgConnection,
        caller: &Caller,
        new: &NewLink,
    ) -> Result<pb::CreateLinkResponse> {
        let id = LinkId::new();
        let link_id = id.to_string();
        let claim_code = format!("clm_{}", random_token());
        let arguments = serde_json::to_vec(&new.arguments).map_err(Error::internal)?;
        let sealed = self.cipher.encrypt(&arguments, Sealed::LinkArguments(id));
        let row = store::insert_link(
            conn,
            store::LinkInsert {
                id,
                tenant: caller.tenant,
                new,
                arguments_ciphertext: &sealed,
                claim_code_hash: &token_hash(&claim_code),
            },
        )
        .await?;
        let mut app_clip_url = self.app_clip_base_url.clone();
        app_clip_url
            .path_segments_mut()
            .expect("http(s) base URL")
            .pop_if_empty()
            .push(&link_id);
        app_clip_url
            .query_pairs_mut()
            .append_pair("code", &claim_code);
        let response = pb::CreateLinkResponse {
            link_id: link_id.clone(),
            claim_code,
            integration_id: row.integration_id.clone(),
            operations: operation_summaries(&row),
            status: pb::LinkStatus::Pending as i32,
            app_clip_url: app_clip_url.to_string(),
            return_url: row
                .return_url
                .as_deref()
                .map(|url| return_url_with_link_id(url, &link_id))
                .unwrap_or_default(),
            expires_at: Some(timestamp(row.expires_at)),
            created_at: Some(timestamp(row.created_at)),
        };
        Ok(response)
    }

    pub async fn get_link(
        &self,
        caller: &Caller,
        req: pb::GetLinkRequest,
    ) -> Result<pb::GetLinkResponse> {
        let id = LinkId::from_request("linkId", &req.link_id)?;
        let row = store::get_link(&self.db, caller.tenant, id).await?;
        let link_id = row.id.to_string();
        let status = row.status;
        Ok(pb::GetLinkResponse {
            link: Some(pb::Link {
                operations: operation_summaries(&row),
                status: status_to_proto(status) as i32,
                return_url: row
                    .return_url
                    .as_deref()
                    .map(|url| return_url_with_link_id(url, &link_id)),
                link_id,
                integration_id: row.integration_id,
                webhook_url: row.webhook_url,
                external_user_id: row.external_user_id,
                debug: row.debug,
                error_code: row.error_code,
                error_message: row.error_message,
                result: row.result.as_ref().map(proto_json::to_struct),
                debug_trace: debug_steps(&row.debug_trace),
                created_at: Some(timestamp(row.created_at)),
                expires_at: Some(timestamp(row.expires_at)),
                claimed_at: row.claimed_at.map(timestamp),
                finished_at: row.finished_at.map(timestamp),
            }),
        })
    }
}

/// The rules' view of a `CreateLink` request.
pub fn link_request(req: &pb::CreateLinkRequest) -> LinkRequest<'_> {
    LinkRequest {
        integration_id: &req.integration_id,
        operations: crate::catalog::operations::requests_from_proto(&req.operations),
        webhook_url: req.webhook_url.as_deref(),
        return_url: req.return_url.as_deref(),
        external_user_id: req.external_user_id.as_deref(),
        debug: req.debug,
        expires_in: req.expires_in,
    }
}

fn status_to_proto(status: LinkStatus) -> pb::LinkStatus {
    match status {
        LinkStatus::Pending => pb::LinkStatus::Pending,
        LinkStatus::Claimed => pb::LinkStatus::Claimed,
        LinkStatus::Awaiting2fa => pb::LinkStatus::Awaiting2fa,
        LinkStatus::Processing => pb::LinkStatus::Processing,
        LinkStatus::Completed => pb::LinkStatus::Completed,
        LinkStatus::Failed => pb::LinkStatus::Failed,
        LinkStatus::Expired => pb::LinkStatus::Expired,
        LinkStatus::Cancelled => pb::LinkStatus::Cancelled,
    }
}

fn debug_steps(trace: &serde_json::Value) -> Vec<pb::DebugStep> {
    trace
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|step| pb::DebugStep {
                    at: step["at"]
                        .as_str()
                        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                        .map(|at| timestamp(at.with_timezone(&chrono::Utc))),
                    event: step["event"].as_str().unwrap_or_default().to_string(),
                    details: Some(proto_json::to_struct(&step["details"])),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn operation_summaries(row: &store::LinkRow) -> Vec<pb::OperationSummary> {
    crate::catalog::operations::summaries(&row.operations)
}
