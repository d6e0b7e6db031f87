//! Metrics of linkd as an OAuth client: token requests by integration, grant
//! and outcome.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    integration: String,
    /// `authorization_code`, `refresh_token` or `revoke`.
    grant: &'static str,
    /// `ok` or the error code (`invalid_grant`, `provider_unavailable`…).
    outcome: String,
}

#[derive(Default)]
pub struct OAuthMetrics {
    token_requests: Family<TokenLabels, Counter>,
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
