//! Metrics of calls to connectors: count and errors by connector, call and
//! error code, and a latency histogram per connector and call.

use super::remote::Call;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    connector: String,
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    connector: String,
    call: &'static str,
    /// `ok`, or the connector error code (`provider_unavailable`, …).
    code: &'static str,
}

pub struct ConnectorMetrics {
    calls: Family<OutcomeLabels, Counter>,
    seconds: Family<CallLabels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for ConnectorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectorMetrics")
    }
}

impl Default for ConnectorMetrics {
    fn default() -> Self {
        ConnectorMetrics {
            calls: Family::default(),
            seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
        }
    }
}

impl ConnectorMetrics {
    pub fn record(&self, connector: &str, call: Call, error: Option<&'static str>, took: Duration) {
        self.calls
            .get_or_create(&OutcomeLabels {
                connector: connector.to_string(),
                call: call.as_str(),
                code: error.unwrap_or("ok"),
            })
            .inc();
        self.seconds
            .get_or_create(&CallLabels {
                connector: connector.to_string(),
                call: call.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// Adds these series to the replica's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connector_calls",
            "Calls to connectors by connector, call and outcome code (ok or the error code)",
            self.calls.clone(),
        );
        registry.register(
            "connector_call_duration_seconds",
            "Time a connector call took, retries included, by connector and call",
            self.seconds.clone(),
        );
    }
}
