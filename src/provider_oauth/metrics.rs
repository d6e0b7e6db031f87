//! Metrics of linkd as an OAuth client: token requests by integration, grant
//! and outcome; proxied API calls by integration and outcome, and how long
//! they took.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
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
    /// The provider's status class (`2xx`…`5xx`), or linkd's error code
    /// when the call never got an answer (`provider_unavailable`…).
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IntegrationLabel {
    integration: String,
}

fn proxy_histogram() -> Histogram {
    Histogram::new([0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

pub struct OAuthMetrics {
    token_requests: Family<TokenLabels, Counter>,
    proxy_requests: Family<ProxyLabels, Counter>,
    proxy_seconds: Family<IntegrationLabel, Histogram, fn() -> Histogram>,
}

impl Default for OAuthMetrics {
    fn default() -> Self {
        OAuthMetrics {
            token_requests: Family::default(),
            proxy_requests: Family::default(),
            proxy_seconds: Family::new_with_constructor(proxy_histogram),
        }
    }
}

impl std::fmt::Debug for OAuthMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OAuthMetrics")
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
            "Proxied calls to providers' APIs by integration and outcome (status class, or linkd's error code when no answer came)",
            self.proxy_requests.clone(),
        );
        registry.register(
            "proxy_request_duration_seconds",
            "Time to the provider's response headers of proxied calls, by integration (token refreshes included)",
            self.proxy_seconds.clone(),
        );
    }

    /// One proxied call and how long its answer took to start.
    pub fn proxy_request(&self, integration: &str, outcome: String, seconds: f64) {
        self.proxy_requests
            .get_or_create(&ProxyLabels {
                integration: integration.to_string(),
                outcome,
            })
            .inc();
        self.proxy_seconds
            .get_or_create(&IntegrationLabel {
                integration: integration.to_string(),
            })
            .observe(seconds);
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
}
