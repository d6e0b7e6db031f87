//! Logs and traces: structured logs (JSON or pretty) through `tracing`, spans
//! exported by OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and the W3C
//! `traceparent` of each incoming request (HTTP header or gRPC metadata, the
//! same thing on one listener) taken as the parent of its span. Every log
//! line of a request carries its `trace_id`.

use crate::ops::config::{LogArgs, LogFormat};
use anyhow::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes exported spans when dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs the log subscriber, with the OpenTelemetry layer only when an
/// exporter is configured: without one, building OpenTelemetry spans for
/// every request costs CPU and sends them nowhere.
pub fn init(args: &LogArgs) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_new(&args.log)
        .map_err(|e| anyhow::anyhow!("invalid configuration: --log / LINKD_LOG: {e}"))?;
    let mut provider = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name("linkd")
            .build(),
    );
    let exporting = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) => {
            url::Url::parse(&endpoint).map_err(|e| {
                anyhow::anyhow!("invalid configuration: OTEL_EXPORTER_OTLP_ENDPOINT: {e}")
            })?;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .context("creating the OTLP span exporter")?;
            provider = provider.with_batch_exporter(exporter);
            true
        }
        Err(_) => false,
    };
    let provider = provider.build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let otel =
        exporting.then(|| tracing_opentelemetry::layer().with_tracer(provider.tracer("linkd")));

    let json = match args.log_format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
    }
    .context("installing the log subscriber")?;
    Ok(TelemetryGuard { provider })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one request (gRPC or REST), child of the caller's
/// `traceparent` when it sent one. Its `trace_id` (the caller's, or the new
/// trace's when spans are exported) is on every log line of the request.
pub fn request_span<B>(request: &http::Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    let caller_trace = parent.span().span_context().trace_id();
    let _ = span.set_parent(parent);
    let trace_id = if caller_trace != opentelemetry::trace::TraceId::INVALID {
        caller_trace
    } else {
        span.context().span().span_context().trace_id()
    };
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}
