//! Prometheus metrics (`GET /metrics`, text exposition format): webhook
//! queue depth and lag, paused destinations, deliveries by outcome and delivery latency.

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
    pub deliveries: Family<Outcome, Counter>,
    pub delivery_seconds: Histogram,
    pub queue_depth: Gauge,
    pub oldest_due_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub paused_destinations: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            deliveries: Family::default(),
            delivery_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            queue_depth: Gauge::default(),
            oldest_due_seconds: Gauge::default(),
            paused_destinations: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn record(&self, outcome: &'static str) {
        self.deliveries.get_or_create(&Outcome { outcome }).inc();
    }

    /// Adds these series to the replica's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome",
            self.deliveries.clone(),
        );
        registry.register(
            "webhook_delivery_duration_seconds",
            "Time from sending a webhook to its response or failure",
            self.delivery_seconds.clone(),
        );
        // The gauges are database-wide: every replica reports the same
        // value, so aggregate them with max, not sum.
        registry.register(
            "webhook_queue_depth",
            "Events waiting for delivery (pending, due now or later), across all replicas",
            self.queue_depth.clone(),
        );
        registry.register(
            "webhook_oldest_due_seconds",
            "How long the longest-waiting due event has been due, across all replicas (0 when none is)",
            self.oldest_due_seconds.clone(),
        );
        registry.register(
            "webhook_paused_destinations",
            "Webhook destinations whose circuit breaker is open (their events wait), across all replicas",
            self.paused_destinations.clone(),
        );
    }
}
