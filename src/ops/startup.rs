//! Turning configuration into running parts: the database (external or the
//! local development cluster), the encryption key ring, and the sandbox
//! tenant created on a development database's first start.

use crate::api::services::{Services, Settings};
use crate::auth::IssuedKey;
use crate::catalog::Catalog;
use crate::client_apps::rules::NewClientApp;
use crate::client_apps::store as tenancy;
use crate::kernel::crypto::{Cipher, EncryptionKey};
use crate::kernel::db::Db;
use crate::kernel::db::{PoolSettings, Pooler};
use crate::kernel::ids::{ClientAppId, OrganizationId};
use crate::kernel::tenant::{Environment, Tenant};
use crate::ops::config::SharedArgs;
use crate::ops::local_postgres::{Durability, LocalPostgres};
use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The database linkd runs on, and the local cluster behind it if any (kept
/// alive for as long as this value lives).
#[derive(Debug)]
pub struct Database {
    pub pool: Db,
    pub local: Option<LocalPostgres>,
}

const LOCAL_DATABASE: &str = "linkd";
const DEV_KEY_FILE: &str = "encryption.key";

impl SharedArgs {
    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.db_max_connections,
            acquire_timeout: self.db_acquire_timeout,
            pooler: match self.db_pooler {
                crate::ops::config::DbPooler::None => Pooler::None,
                crate::ops::config::DbPooler::Transaction => Pooler::Transaction,
            },
        }
    }

    /// The key ring. Required with `DATABASE_URL`; the local development
    /// database keeps a generated key next to its data.
    pub fn cipher(&self) -> anyhow::Result<Cipher> {
        let current = match (&self.encryption_key, &self.database_url) {
            (Some(key), _) => key.clone(),
            (None, None) => self.development_key()?,
            (None, Some(_)) => bail!(
                "invalid configuration: --encryption-key / LINKD_ENCRYPTION_KEY is required with DATABASE_URL (generate one with `linkd gen-key`)"
            ),
        };
        Ok(Cipher::new(&current, &self.previous_encryption_keys))
    }

    fn development_key(&self) -> anyhow::Result<EncryptionKey> {
        let path = self.data_dir.join(DEV_KEY_FILE);
        if path.exists() {
            let raw = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            return raw
                .parse()
                .map_err(|e| anyhow::anyhow!("invalid configuration: {}: {e}", path.display()));
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating data directory {}", self.data_dir.display()))?;
        let key = EncryptionKey::generate();
        std::fs::write(&path, key.to_base64())?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        tracing::info!(path = %path.display(), "generated a development encryption key");
        Ok(key)
    }

    /// Connects to `DATABASE_URL`, or starts (and first initialises) the local
    /// cluster under the data directory. Migrations are applied either way.
    pub async fn open(&self) -> anyhow::Result<Database> {
        let (url, local) = match &self.database_url {
            Some(url) => {
                crate::kernel::db::check_reachable(
                    url,
                    self.pool_settings().pooler,
                    self.db_acquire_timeout.max(Duration::from_secs(5)),
                )
                .await?;
                (url.clone(), None)
            }
            None => {
                let root = self.data_dir.clone();
                let local = tokio::task::spawn_blocking(move || {
                    LocalPostgres::start(&root, Durability::Durable)
                })
                .await??;
                crate::kernel::db::ensure_database(&local.url("postgres"), LOCAL_DATABASE).await?;
                (local.url(LOCAL_DATABASE), Some(local))
            }
        };
        let pool = crate::kernel::db::pool(&url, &self.pool_settings())?;
        crate::kernel::db::migrate(&pool).await?;
        Ok(Database { pool, local })
    }
}

/// Wires the services of one replica.
pub fn api(
    pool: Db,
    catalog: Arc<Catalog>,
    cipher: Cipher,
    settings: Settings,
) -> anyhow::Result<Services> {
    let connectors = crate::connectors::Connectors::with_remotes(
        Arc::new(crate::connectors::sandbox::SandboxConnector::new(
            pool.clone(),
        )),
        settings.connectors.remotes.clone(),
        &settings.connectors.tls,
        settings.connectors.deadlines,
    )?;
    let default_clients = match &settings.provider_oauth.clients_file {
        Some(path) => crate::provider_oauth::load_default_clients(path, &catalog)?,
        None => Default::default(),
    };
    let provider_oauth = crate::provider_oauth::ProviderOAuth::new(
        pool.clone(),
        cipher.clone(),
        catalog.clone(),
        crate::provider_oauth::ProviderOAuthSettings {
            public_url: settings.public_url.clone(),
            timeout: settings.provider_timeout,
            allow: settings.provider_oauth.allow.clone(),
            default_clients,
            max_api_response_bytes: settings.provider_oauth.max_proxy_response_bytes,
        },
    )?;
    Ok(Services::new(
        pool,
        catalog,
        connectors,
        provider_oauth,
        cipher,
        settings,
    ))
}

/// What the first start of a development database created.
pub struct SandboxTenant {
    pub organization_id: OrganizationId,
    pub app_id: ClientAppId,
    pub key: IssuedKey,
    /// The app's OAuth client secret.
    pub client_secret: secrecy::SecretString,
}

/// On an empty development database, creates a sandbox organization, client
/// app and API key so the service can be called right away.
pub async fn bootstrap_sandbox(api: &Services) -> anyhow::Result<Option<SandboxTenant>> {
    let mut tx = api.db().begin().await?;
    // Serialise concurrent first starts.
    tenancy::lock_bootstrap(&mut tx).await?;
    if tenancy::count_organizations(&mut *tx).await? > 0 {
        return Ok(None);
    }
    let organization_id = OrganizationId::new();
    tenancy::create_organization(&mut *tx, organization_id, "Sandbox").await?;
    tx.commit().await?;
    let tenant = Tenant {
        organization_id,
        environment: Environment::Sandbox,
    };
    let app = NewClientApp::parse(
        "Sandbox app",
        &["http://localhost:3000/callback".to_string()],
        None,
    )?;
    let created = api.client_apps.create_client_app(tenant, &app).await?;
    let key = crate::auth::issue_key(api.db(), tenant).await?;
    Ok(Some(SandboxTenant {
        organization_id,
        app_id: created.app.id,
        key,
        client_secret: created.client_secret,
    }))
}

/// The first-start banner: the key (shown once) and calls to paste.
pub fn print_sandbox_banner(sandbox: &SandboxTenant, addr: std::net::SocketAddr) {
    let key = sandbox.key.key.expose_secret();
    let port = addr.port();
    println!(
        "\n\
         linkd created a sandbox organization on this new development database:\n\
         \n  organization  {org}\n  client app    {app}\n  API key       {key}\n  client secret {secret}  (OAuth)\n\
         \nThe key and secret are shown only now. Try it:\n\
         \n  grpcurl -plaintext -H 'authorization: Bearer {key}' localhost:{port} linkd.v1.ClientAppService/ListClientApps\
         \n  curl -H 'Authorization: Bearer {key}' http://localhost:{port}/v1/client-apps\
         \n  curl -X POST -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{{}}' http://localhost:{port}/v2/link/init   # open the returned url in a browser\n",
        org = sandbox.organization_id,
        app = sandbox.app_id,
        secret = sandbox.client_secret.expose_secret(),
    );
}

/// The built-in catalog, or the one in `dir` (`LINKD_CATALOG_DIR`).
pub fn load_catalog(dir: Option<&Path>) -> anyhow::Result<Arc<Catalog>> {
    let catalog = match dir {
        Some(dir) => Catalog::load_dir(dir),
        None => Catalog::builtin(),
    };
    Ok(Arc::new(catalog.context("invalid provider catalog")?))
}
