//! Metrics of linkd as an OAuth client: token requests by integration, grant
//! and outcome, proxied calls by integration and status, and how old access
//! tokens are when they are used.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    integration: String,
    /// `authorization_code`, `refresh_token` or `revoke`.
    grant: &'static str,
    /// `ok` or the error code (`invalid_grant`, `provider_unavailable`…).
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyLabels {
    integration: String,
    /// The provider's status code, or `error` when no answer came.
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IntegrationLabel {
    integration: String,
}

pub struct OAuthMetrics {
    token_requests: Family<TokenLabels, Counter>,
    proxy: Family<ProxyLabels, Counter>,
    token_age: Family<IntegrationLabel, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for OAuthMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OAuthMetrics")
    }
}

impl Default for OAuthMetrics {
    fn default() -> Self {
        OAuthMetrics {
            token_requests: Family::default(),
            proxy: Family::default(),
            // 1 s to about 4.5 days.
            token_age: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 3.0, 12))
            }),
        }
    }
}

impl OAuthMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "oauth_token_requests",
            "Token endpoint calls to providers by integration, grant (authorization_code, refresh_token, revoke) and outcome",
            self.token_requests.clone(),
        );
        registry.register(
            "proxy_requests",
            "Calls proxied to provider APIs by integration and provider status",
            self.proxy.clone(),
        );
        registry.register(
            "oauth_access_token_age_seconds",
            "Age of the access token used for a provider call, by integration",
            self.token_age.clone(),
        );
    }

    pub fn token_request(&self, integration: &str, grant: &'static str, outcome: &str) {
        self.token_requests
            .get_or_create(&TokenLabels {
                integration: integration.to_string(),
                grant,
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn proxied(&self, integration: &str, status: Option<u16>) {
        self.proxy
            .get_or_create(&ProxyLabels {
                integration: integration.to_string(),
                status: status.map_or_else(|| "error".into(), |s| s.to_string()),
            })
            .inc();
    }

    pub fn token_used(&self, integration: &str, age: chrono::Duration) {
        self.token_age
            .get_or_create(&IntegrationLabel {
                integration: integration.to_string(),
            })
            .observe(age.num_milliseconds().max(0) as f64 / 1000.0);
    }
}
