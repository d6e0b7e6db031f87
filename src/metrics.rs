//! Prometheus metrics (`GET /metrics`, text exposition format): webhook
//! queue depth, deliveries by outcome and delivery latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `delivered`, `retry` (failed, will retry), `failed` (gave up),
    /// `refused` (SSRF guard), `disabled` (endpoint answered 410), `skipped`
    /// (no destination).
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub deliveries: Family<Outcome, Counter>,
    pub delivery_seconds: Histogram,
    pub queue_depth: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("linkd");
        let deliveries = Family::<Outcome, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome",
            deliveries.clone(),
        );
        let delivery_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "webhook_delivery_duration_seconds",
            "Time from sending a webhook to its response or failure",
            delivery_seconds.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "webhook_queue_depth",
            "Events waiting for delivery (pending, due now or later)",
            queue_depth.clone(),
        );
        Metrics {
            registry,
            deliveries,
            delivery_seconds,
            queue_depth,
        }
    }
}

impl Metrics {
    pub fn record(&self, outcome: &'static str) {
        self.deliveries.get_or_create(&Outcome { outcome }).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
