//! Application services: what each RPC does, independent of transport. The
//! gRPC services and the REST shim are thin adapters that authenticate,
//! convert, and call these methods, so both surfaces always behave the same.

use crate::auth::Caller;
use crate::catalog::{Catalog, Category};
use crate::domain::client_app::NewClientApp;
use crate::domain::link::{LinkStatus, NewLink, return_url_with_link_id};
use crate::kernel::crypto::{Cipher, Sealed};
use crate::kernel::error::{Error, Result};
use crate::kernel::ids::{IdKind, random_token, token_hash};
use crate::kernel::tenant::Tenant;
use crate::kernel::validate::{Violations, limits};
use crate::pb;
use crate::api::proto_json;
use crate::store::idempotency::{self, Claim, IdempotencyKey};
use crate::store::links;
use crate::store::tenancy::{self, ClientAppRow};
use prost::Message as _;
use secrecy::SecretString;
use sqlx::{Connection as _, PgConnection, PgPool};
use std::sync::Arc;
use url::Url;

/// Everything a request handler needs, shared by all of them.
#[derive(Debug)]
pub struct AppState {
    pub db: PgPool,
    pub catalog: Arc<Catalog>,
    pub connectors: crate::connectors::Connectors,
    pub cipher: Cipher,
    pub public_url: Url,
    /// Base of `app_clip_url`: `<base>/<link id>?code=<claim code>`.
    pub app_clip_base_url: Url,
    /// How long a Link session accepts input.
    pub session_ttl: std::time::Duration,
    /// The longest one provider call may take.
    pub provider_timeout: std::time::Duration,
    /// API keys verified recently.
    pub key_cache: crate::auth::KeyCache,
    /// Largest `offset` a listing accepts.
    pub max_list_offset: i64,
    pub oauth: OAuthSettings,
    pub webhooks: crate::webhooks::WebhookSettings,
    pub metrics: Arc<crate::webhooks::metrics::Metrics>,
}

/// Request-handling settings, from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub public_url: Url,
    /// Defaults to `<public URL>/appclip`.
    pub app_clip_base_url: Option<Url>,
    pub session_ttl: std::time::Duration,
    pub provider_timeout: std::time::Duration,
    /// How long a verified API key is trusted without the database.
    pub api_key_cache_ttl: std::time::Duration,
    pub max_list_offset: i64,
    pub oauth: OAuthSettings,
    pub webhooks: crate::webhooks::WebhookSettings,
}

/// How strict the OAuth authorization server is.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    pub require_pkce: bool,
    /// 0: `state` is optional.
    pub state_min_length: usize,
    pub code_ttl: std::time::Duration,
    pub token_ttl: std::time::Duration,
}

/// The application, cheap to clone.
#[derive(Debug, Clone)]
pub struct Api {
    pub state: Arc<AppState>,
}

/// How long a rotated-out webhook secret keeps signing by default.
pub const DEFAULT_ROTATION_GRACE_SECS: i64 = 24 * 60 * 60;
/// The longest such grace period.
pub const MAX_ROTATION_GRACE_SECS: i64 = 7 * 24 * 60 * 60;

/// A client app just created, with the secrets that are shown only now.
#[derive(Debug)]
pub struct CreatedClientApp {
    pub app: ClientAppRow,
    pub webhook_secret: SecretString,
    /// The OAuth client secret (`client_secret` at `/v3/oauth/token`).
    pub client_secret: SecretString,
}

pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn client_app_to_proto(row: ClientAppRow) -> pb::ClientApp {
    pb::ClientApp {
        id: IdKind::ClientApp.format(row.id),
        environment: row.environment().to_proto() as i32,
        name: row.name,
        redirect_uris: row.redirect_uris,
        webhook_url: row.webhook_url,
        created_at: Some(timestamp(row.created_at)),
    }
}

/// Parses a public id given in a request to look something up, or fails
/// naming the field when it is missing or has the wrong prefix. A
/// malformed id with the right prefix is then not found, like an unknown
/// one (see [`IdKind::parse_reference`]).
pub fn parse_id(kind: IdKind, field: &str, value: &str) -> Result<uuid::Uuid> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    kind.parse_reference(value).ok_or_else(|| {
        Error::invalid(
            field,
            format!("must be an id starting with `{}`", kind.prefix()),
        )
    })
}

impl Api {
    pub fn new(state: AppState) -> Self {
        Api {
            state: Arc::new(state),
        }
    }

    pub fn db(&self) -> &PgPool {
        &self.state.db
    }

    pub async fn authenticate(&self, key: Option<&SecretString>) -> Result<Caller> {
        crate::auth::authenticate(self.db(), &self.state.key_cache, key).await
    }

    // ---- ClientAppService -------------------------------------------------

    pub async fn list_client_apps(&self, caller: &Caller) -> Result<pb::ListClientAppsResponse> {
        let apps = tenancy::list_client_apps(self.db(), caller.tenant).await?;
        Ok(pb::ListClientAppsResponse {
            client_apps: apps.into_iter().map(client_app_to_proto).collect(),
        })
    }

    pub async fn get_client_app(
        &self,
        caller: &Caller,
        req: pb::GetClientAppRequest,
    ) -> Result<pb::GetClientAppResponse> {
        let id = parse_id(IdKind::ClientApp, "clientAppId", &req.client_app_id)?;
        let app = tenancy::get_client_app(self.db(), caller.tenant, id).await?;
        Ok(pb::GetClientAppResponse {
            client_app: Some(client_app_to_proto(app)),
        })
    }

    /// Registers a client app (operators, through `linkd admin`). The webhook
    /// signing secret is stored encrypted and returned only here.
    pub async fn create_client_app(
        &self,
        tenant: Tenant,
        app: &NewClientApp,
    ) -> Result<CreatedClientApp> {
        let id = IdKind::ClientApp.new_uuid();
        let secret = crate::domain::client_app::generate_webhook_secret();
        let sealed = self
            .state
            .cipher
            .encrypt(secret.as_bytes(), Sealed::WebhookSecret(id));
        let client_secret = crate::domain::client_app::generate_client_secret();
        let app = tenancy::insert_client_app(
            self.db(),
            id,
            tenant,
            app,
            &sealed,
            &token_hash(&client_secret),
        )
        .await?;
        Ok(CreatedClientApp {
            app,
            webhook_secret: SecretString::from(secret),
            client_secret: SecretString::from(client_secret),
        })
    }

    /// Replaces an app's webhook signing secret. The previous one keeps
    /// signing next to it for `grace_secs`. `tenant` scopes the app to the
    /// caller; operators pass `None`. Returns the new secret (its only copy)
    /// and when the previous one stops signing.
    pub async fn rotate_webhook_secret(
        &self,
        tenant: Option<Tenant>,
        app_id: uuid::Uuid,
        grace_secs: i64,
    ) -> Result<(SecretString, chrono::DateTime<chrono::Utc>)> {
        if !(0..=MAX_ROTATION_GRACE_SECS).contains(&grace_secs) {
            return Err(Error::invalid(
                "previousSecretGraceSeconds",
                format!("must be between 0 and {MAX_ROTATION_GRACE_SECS}"),
            ));
        }
        let mut tx = self.db().begin().await?;
        let current: Vec<u8> = sqlx::query_scalar(
            "SELECT webhook_secret_ciphertext FROM client_apps
             WHERE id = $1 AND ($2::uuid IS NULL OR (organization_id = $2 AND environment = $3))
             FOR UPDATE",
        )
        .bind(app_id)
        .bind(tenant.map(|t| t.organization_id))
        .bind(tenant.map(|t| t.environment.as_str()))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::NotFound("client app"))?;
        let cipher = &self.state.cipher;
        let previous = cipher
            .decrypt(&current, Sealed::WebhookSecret(app_id))
            .map_err(Error::Internal)?;
        let secret = crate::domain::client_app::generate_webhook_secret();
        let expires_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
            "UPDATE client_apps SET webhook_secret_ciphertext = $2,
                 previous_webhook_secret_ciphertext = $3,
                 previous_webhook_secret_expires_at = now() + make_interval(secs => $4)
             WHERE id = $1 RETURNING previous_webhook_secret_expires_at",
        )
        .bind(app_id)
        .bind(cipher.encrypt(secret.as_bytes(), Sealed::WebhookSecret(app_id)))
        .bind(cipher.encrypt(&previous, Sealed::PreviousWebhookSecret(app_id)))
        .bind(grace_secs as f64)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((SecretString::from(secret), expires_at))
    }

    pub async fn rotate_webhook_secret_for(
        &self,
        caller: &Caller,
        req: pb::RotateWebhookSecretRequest,
    ) -> Result<pb::RotateWebhookSecretResponse> {
        let id = parse_id(IdKind::ClientApp, "clientAppId", &req.client_app_id)?;
        let grace = req
            .previous_secret_grace_seconds
            .unwrap_or(DEFAULT_ROTATION_GRACE_SECS);
        let (secret, expires_at) = self
            .rotate_webhook_secret(Some(caller.tenant), id, grace)
            .await?;
        Ok(pb::RotateWebhookSecretResponse {
            webhook_secret: secrecy::ExposeSecret::expose_secret(&secret).to_string(),
            previous_secret_expires_at: Some(timestamp(expires_at)),
        })
    }

    /// Issues a new OAuth client secret for an app (any tenant: operators),
    /// replacing the old one at once. Returns the only copy.
    pub async fn rotate_client_secret(&self, app_id: uuid::Uuid) -> Result<SecretString> {
        let secret = crate::domain::client_app::generate_client_secret();
        if !tenancy::set_client_secret_hash(self.db(), app_id, &token_hash(&secret)).await? {
            return Err(Error::NotFound("client app"));
        }
        Ok(SecretString::from(secret))
    }

    // ---- LinkService: provider discovery -----------------------------------

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
            .state
            .catalog
            .providers()
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
            })
            .collect();
        Ok(pb::ListProvidersResponse { providers })
    }

    // ---- LinkService: link intents -------------------------------------------

    /// Creates a link record (no session until it is claimed). With an
    /// idempotency key, a repeat of the same request returns the first
    /// response and creates nothing.
    pub async fn create_link(
        &self,
        caller: &Caller,
        req: pb::CreateLinkRequest,
        idempotency_key: Option<&str>,
    ) -> Result<pb::CreateLinkResponse> {
        let new = NewLink::parse(&req, &self.state.catalog)?;
        let key = idempotency_key.map(|key| IdempotencyKey {
            tenant: caller.tenant,
            operation: "LinkService.CreateLink",
            key,
            request_hash: token_hash(req.encode_to_vec()),
        });
        self.idempotent(key, async |conn| self.insert_link(conn, caller, &new).await)
            .await
    }

    /// Runs a creating call on one connection, under an optional
    /// idempotency key. Without a key `work` runs on the connection as it is,
    /// so its writes must be one statement. With a key, one transaction takes
    /// the key, runs `work` and stores its response (a repeat of a finished
    /// request gets that response); a failure rolls all of it back, so the
    /// client can retry at once.
    pub(crate) async fn idempotent<R: prost::Message + Default>(
        &self,
        key: Option<IdempotencyKey<'_>>,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<R>,
    ) -> Result<R> {
        let mut conn = self.db().acquire().await?;
        let Some(key) = key else {
            return work(&mut conn).await;
        };
        let cipher = &self.state.cipher;
        let mut tx = conn.begin().await?;
        let result = async {
            if let Claim::Replay(encoded) = idempotency::claim(&mut tx, cipher, &key).await? {
                return R::decode(encoded.as_slice()).map_err(Error::internal);
            }
            let response = work(&mut tx).await?;
            idempotency::store_response(&mut tx, cipher, &key, &response.encode_to_vec()).await?;
            Ok(response)
        }
        .await;
        match result {
            Ok(response) => {
                tx.commit().await?;
                Ok(response)
            }
            Err(err) => {
                // At once, not when the connection is next used: the key's
                // lock and row go with the rollback. (A dead connection has
                // rolled back in the server already.)
                let _ = tx.rollback().await;
                Err(err)
            }
        }
    }

    /// Writes the link: one statement.
    async fn insert_link(
        &self,
        conn: &mut PgConnection,
        caller: &Caller,
        new: &NewLink,
    ) -> Result<pb::CreateLinkResponse> {
        let id = IdKind::Link.new_uuid();
        let link_id = IdKind::Link.format(id);
        let claim_code = format!("clm_{}", random_token());
        let arguments = serde_json::to_vec(&new.arguments).map_err(Error::internal)?;
        let sealed = self
            .state
            .cipher
            .encrypt(&arguments, Sealed::LinkArguments(id));
        let row = links::insert_link(
            conn,
            links::LinkInsert {
                id,
                tenant: caller.tenant,
                new,
                arguments_ciphertext: &sealed,
                claim_code_hash: &token_hash(&claim_code),
            },
        )
        .await?;
        let mut app_clip_url = self.state.app_clip_base_url.clone();
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
        let id = parse_id(IdKind::Link, "linkId", &req.link_id)?;
        let row = links::get_link(self.db(), caller.tenant, id).await?;
        let link_id = IdKind::Link.format(row.id);
        let status = LinkStatus::parse(&row.status)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("bad status {}", row.status)))?;
        Ok(pb::GetLinkResponse {
            link: Some(pb::Link {
                operations: operation_summaries(&row),
                status: status.to_proto() as i32,
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

fn operation_summaries(row: &links::LinkRow) -> Vec<pb::OperationSummary> {
    row.operations
        .iter()
        .map(|op| pb::OperationSummary {
            resource: op.resource.clone(),
            action: op.action.to_proto() as i32,
        })
        .collect()
}
