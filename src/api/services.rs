//! The services, wired once: one per concern, each with the handles it
//! needs. The gRPC services and the REST shim are thin adapters that
//! authenticate, convert and call the one service a request belongs to, so
//! both surfaces always behave the same.

use crate::auth::Authenticator;
use crate::catalog::Catalog;
use crate::client_apps::ClientApps;
use crate::connections::Connections;
use crate::connectors::Connectors;
use crate::events::Events;
use crate::flows::{FlowSettings, Flows};
use crate::idempotency::Idempotency;
use crate::kernel::crypto::Cipher;
use crate::kernel::db::Db;
use crate::links::Links;
use crate::links::flow::LinkFlow;
use crate::oauth::{OAuth, OAuthSettings};
use crate::provider_oauth::ProviderOAuth;
use crate::sessions::{SessionFlow, Sessions};
use crate::webhooks::{Deliveries, WebhookSettings};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Request-handling settings, from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub public_url: Url,
    /// Defaults to `<public URL>/appclip`.
    pub app_clip_base_url: Option<Url>,
    pub session_ttl: Duration,
    pub provider_timeout: Duration,
    /// How long a verified API key is trusted without the database.
    pub api_key_cache_ttl: Duration,
    pub rate_limits: crate::ratelimit::RateLimitSettings,
    pub max_list_offset: i64,
    pub oauth: OAuthSettings,
    pub webhooks: WebhookSettings,
    pub connectors: ConnectorSettings,
    pub provider_oauth: ProviderOAuthConfig,
}

/// Where the deployment's OAuth clients come from, and which provider hosts
/// pass the SSRF guard.
#[derive(Debug, Clone)]
pub struct ProviderOAuthConfig {
    pub clients_file: Option<std::path::PathBuf>,
    pub allow: Arc<crate::kernel::ssrf::Allowlist>,
    pub refresh: crate::connections::tokens::RefreshSettings,
    pub max_proxy_response_bytes: u64,
}

/// Which connector processes this replica calls, and how long it waits.
#[derive(Debug, Clone)]
pub struct ConnectorSettings {
    pub remotes: Vec<crate::connectors::RemoteSettings>,
    pub tls: crate::connectors::remote::TlsFiles,
    pub deadlines: crate::connectors::remote::Deadlines,
}

/// Every service of a replica; cheap to clone.
#[derive(Debug, Clone)]
pub struct Services {
    db: Db,
    pub auth: Authenticator,
    pub client_apps: ClientApps,
    pub links: Links,
    pub sessions: Sessions,
    pub flows: Flows,
    pub connections: Connections,
    pub oauth: OAuth,
    /// linkd as an OAuth client of providers.
    pub provider_oauth: ProviderOAuth,
    pub events: Events,
    /// What the webhook dispatcher delivers with (and its metrics).
    pub deliveries: Deliveries,
    /// The connectors every call goes through.
    pub connectors: Connectors,
    catalog: Arc<Catalog>,
    /// Every metric series of this replica.
    metrics: Arc<prometheus_client::registry::Registry>,
    /// The RED series of both surfaces, fed by their middleware.
    pub requests: Arc<crate::api::metrics::RequestMetrics>,
    /// What the background jobs did, fed by the jobs themselves.
    pub jobs: Arc<crate::api::metrics::JobMetrics>,
}

impl Services {
    /// The Prometheus text exposition of every metric of this replica.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.metrics)
            .expect("writing to a String cannot fail");
        out
    }

    /// Starts asking the configured connectors what they serve, until each
    /// has answered; `None` without connectors.
    pub fn spawn_connector_describer(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.connectors.spawn_describer(self.catalog.clone())
    }

    /// The integrations this replica knows.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The database every service uses.
    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn new(
        db: Db,
        catalog: Arc<Catalog>,
        connectors: Connectors,
        provider_oauth: ProviderOAuth,
        cipher: Cipher,
        settings: Settings,
    ) -> Self {
        let app_clip_base_url = settings.app_clip_base_url.unwrap_or_else(|| {
            settings
                .public_url
                .join("appclip")
                .expect("public URL is a base")
        });
        let mut root = prometheus_client::registry::Registry::default();
        root.register_collector(Box::new(crate::api::metrics::ProcessCollector));
        let registry = root.sub_registry_with_prefix("linkd");
        let requests = Arc::new(crate::api::metrics::RequestMetrics::default());
        requests.register(registry);
        let jobs = Arc::new(crate::api::metrics::JobMetrics::default());
        jobs.register(registry);
        let webhook_metrics = Arc::new(crate::webhooks::metrics::Metrics::default());
        webhook_metrics.register(registry);
        connectors.metrics().register(registry);
        provider_oauth.metrics().register(registry);
        db.register_metrics(registry);
        let build_info = prometheus_client::metrics::family::Family::<
            Vec<(&'static str, &'static str)>,
            prometheus_client::metrics::gauge::Gauge,
        >::default();
        build_info
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the running linkd's version as a label",
            build_info,
        );
        let limits = crate::ratelimit::RateLimiter::new(db.clone(), settings.rate_limits.clone());
        limits.register(registry);
        let auth = Authenticator::new(db.clone(), settings.api_key_cache_ttl, limits.clone());
        let idempotency = Idempotency::new(db.clone(), cipher.clone());
        let flows = Flows::new(
            db.clone(),
            catalog.clone(),
            connectors.clone(),
            cipher.clone(),
            provider_oauth.clone(),
            FlowSettings {
                public_url: settings.public_url,
                session_ttl: settings.session_ttl,
                provider_timeout: settings.provider_timeout,
            },
            Arc::new(LinkFlow),
            Arc::new(SessionFlow),
            limits,
        );
        let oauth = OAuth::new(
            db.clone(),
            catalog.clone(),
            settings.oauth.clone(),
            flows.clone(),
            auth.clone(),
        );
        oauth.register_metrics(registry);
        Services {
            auth: auth.clone(),
            client_apps: ClientApps::new(
                db.clone(),
                cipher.clone(),
                settings.rate_limits.client_app,
            ),
            links: Links::new(
                db.clone(),
                catalog.clone(),
                cipher.clone(),
                app_clip_base_url,
                idempotency.clone(),
                flows.clone(),
            ),
            sessions: Sessions::new(
                db.clone(),
                cipher.clone(),
                idempotency.clone(),
                flows.clone(),
                settings.oauth.code_ttl,
            ),
            connections: Connections::new(
                db.clone(),
                catalog.clone(),
                connectors.clone(),
                cipher.clone(),
                settings.max_list_offset,
                settings.provider_timeout,
                idempotency.clone(),
                crate::connections::tokens::TokenKeeper::new(
                    provider_oauth.clone(),
                    settings.provider_oauth.refresh.clone(),
                ),
            ),
            oauth,
            provider_oauth,
            events: Events::new(db.clone()),
            deliveries: Deliveries {
                db: db.clone(),
                cipher,
                settings: settings.webhooks,
                metrics: webhook_metrics,
            },
            metrics: Arc::new(root),
            requests,
            jobs,
            connectors,
            catalog,
            flows,
            db,
        }
    }
}
