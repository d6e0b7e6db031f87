//! Application services: what each RPC does, independent of transport. The
//! gRPC services and the REST shim are thin adapters that authenticate,
//! convert, and call these methods, so both surfaces always behave the same.

use crate::auth::Caller;
use crate::catalog::Catalog;
use crate::kernel::crypto::Cipher;
use crate::kernel::error::Result;
use secrecy::SecretString;
use sqlx::PgPool;
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
}
