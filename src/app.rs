//! Application services: what each RPC does, independent of transport. The
//! gRPC services and the REST shim are thin adapters that authenticate,
//! convert, and call these methods, so both surfaces always behave the same.

use crate::auth::Caller;
use crate::catalog::{Catalog, Category};
use crate::crypto::Cipher;
use crate::domain::Tenant;
use crate::domain::client_app::NewClientApp;
use crate::error::{Error, Result};
use crate::ids::IdKind;
use crate::pb;
use crate::proto_json;
use crate::store::tenancy::{self, ClientAppRow};
use crate::validate::{Violations, limits};
use secrecy::SecretString;
use sqlx::PgPool;
use std::sync::Arc;
use url::Url;

/// Everything a request handler needs, shared by all of them.
#[derive(Debug)]
pub struct AppState {
    pub db: PgPool,
    pub catalog: Arc<Catalog>,
    pub cipher: Cipher,
    pub public_url: Url,
}

/// The application, cheap to clone.
#[derive(Debug, Clone)]
pub struct Api {
    pub state: Arc<AppState>,
}

/// A client app just created, with the secrets that are shown only now.
#[derive(Debug)]
pub struct CreatedClientApp {
    pub app: ClientAppRow,
    pub webhook_secret: SecretString,
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
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

/// Parses a public id given in a request, or fails naming the field.
pub fn parse_id(kind: IdKind, field: &str, value: &str) -> Result<uuid::Uuid> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    kind.parse(value).ok_or_else(|| {
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
        crate::auth::authenticate(self.db(), key).await
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
        let id = parse_id(IdKind::ClientApp, "client_app_id", &req.client_app_id)?;
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
            .encrypt(secret.as_bytes(), &webhook_secret_context(id));
        let app = tenancy::insert_client_app(self.db(), id, tenant, app, &sealed).await?;
        Ok(CreatedClientApp {
            app,
            webhook_secret: SecretString::from(secret),
        })
    }

    // ---- LinkService: provider discovery -----------------------------------

    pub fn list_providers(
        &self,
        req: pb::ListProvidersRequest,
    ) -> Result<pb::ListProvidersResponse> {
        let mut v = Violations::new();
        if let Some(id) = &req.integration_id {
            v.max_len("integration_id", id, limits::ID);
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

    // ---- Behaviour that later issues fill in --------------------------------

    pub fn not_yet(&self, rpc: &'static str) -> Error {
        Error::Unimplemented(rpc)
    }
}

/// Associated data binding a webhook secret's ciphertext to its app.
pub fn webhook_secret_context(app_id: uuid::Uuid) -> String {
    format!(
        "client_apps.webhook_secret:{}",
        IdKind::ClientApp.format(app_id)
    )
}
