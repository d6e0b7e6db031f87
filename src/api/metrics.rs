//! RED metrics of both surfaces, one middleware in front of every route:
//! requests by surface, service, method and code, their latency (to the
//! end of the response body, so a gRPC call's trailers are in), and the
//! calls in flight.
//!
//! Labels stay bounded whatever callers send: REST is labelled by the
//! matched route template (`/v1/links/{link_id}`), never the raw path, and
//! an unknown route or gRPC method is `unmatched`.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// One series of calls: `grpc` or `rest`, then what was called.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Call {
    /// `grpc` or `rest`.
    pub surface: &'static str,
    /// gRPC: the service (`linkd.v1.LinkService`); REST: the route template.
    pub service: String,
    /// gRPC: the RPC (`CreateLink`); REST: the HTTP method.
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Answered {
    pub surface: &'static str,
    pub service: String,
    pub method: String,
    /// gRPC: the status code name (`OK`, `NOT_FOUND`…); REST: the HTTP status.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Surface {
    pub surface: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub struct RequestMetrics {
    requests: Family<Answered, Counter>,
    duration: Family<Call, Histogram, fn() -> Histogram>,
    in_flight: Family<Surface, Gauge>,
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestMetrics")
    }
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
        }
    }
}

impl RequestMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Calls answered, by surface (grpc, rest), service, method and code",
            self.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a call's arrival to the end of its answer, by surface, service and method",
            self.duration.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Calls being served now, by surface",
            self.in_flight.clone(),
        );
    }

    /// The middleware: counts the call when its answer has been sent (or
    /// the caller went away).
    pub async fn record(
        axum::extract::State(metrics): axum::extract::State<Arc<RequestMetrics>>,
        request: Request,
        next: Next,
    ) -> Response {
        let call = classify(&request);
        let Some(call) = call else {
            // Health probes, scrapes, the Link page's files: not API calls.
            return next.run(request).await;
        };
        let surface = Surface {
            surface: call.surface,
        };
        metrics.in_flight.get_or_create(&surface).inc();
        let pending = Pending {
            metrics,
            call,
            started: Instant::now(),
            done: false,
        };
        let response = next.run(request).await;
        let (parts, body) = response.into_parts();
        let grpc_status = parts
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok());
        let is_grpc = parts
            .headers
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
        let mut observed = Observed {
            body,
            pending,
            // A trailers-only gRPC answer carries its status in the
            // headers; otherwise it comes in the trailers.
            status: match (is_grpc, grpc_status) {
                (true, Some(code)) => Code::Grpc(code),
                (true, None) => Code::GrpcUnknownYet,
                (false, _) => Code::Http(parts.status.as_u16()),
            },
        };
        if observed.body.is_end_stream() {
            observed.finish();
        }
        Response::from_parts(parts, axum::body::Body::new(observed))
    }
}

/// What a request is, for the metrics; `None` for what is not an API call.
fn classify(request: &Request) -> Option<Call> {
    let path = request.uri().path();
    if crate::api::api_path(path)? == crate::api::ApiPath::Grpc {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        return Some(Call {
            surface: "grpc",
            service: service.to_string(),
            method: method.to_string(),
        });
    }
    let service = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    Some(Call {
        surface: "rest",
        // The proxy's many paths are one route.
        service: service.replace("{*path}", "{path}"),
        method: request.method().as_str().to_string(),
    })
}

enum Code {
    Http(u16),
    Grpc(i32),
    /// A gRPC answer whose status is still to come in the trailers.
    GrpcUnknownYet,
}

struct Pending {
    metrics: Arc<RequestMetrics>,
    call: Call,
    started: Instant,
    done: bool,
}

pin_project_lite::pin_project! {
    struct Observed<B> {
        #[pin]
        body: B,
        pending: Pending,
        status: Code,
    }

    impl<B> PinnedDrop for Observed<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !this.pending.done {
                // The caller went away before the end of the answer.
                record(this.pending, 1, this.status);
            }
        }
    }
}

impl<B> Observed<B> {
    fn finish(&mut self) {
        if !self.pending.done {
            record(&mut self.pending, 2, &self.status);
        }
    }
}

/// Counts the call once. `fallback` is the code of a gRPC call whose
/// status never came (1 = CANCELLED when the caller left, 2 = UNKNOWN).
fn record(pending: &mut Pending, fallback: i32, status: &Code) {
    pending.done = true;
    let code = match *status {
        Code::Http(status) => status.to_string(),
        Code::Grpc(code) => grpc_code_name(code),
        Code::GrpcUnknownYet => grpc_code_name(fallback),
    };
    let metrics = &pending.metrics;
    let mut call = pending.call.clone();
    if call.surface == "grpc" && code == "UNIMPLEMENTED" {
        // An unknown method: its name is the caller's, not a series.
        call.method = "unmatched".into();
    }
    metrics
        .duration
        .get_or_create(&call)
        .observe(pending.started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&Answered {
            surface: call.surface,
            service: call.service,
            method: call.method,
            code,
        })
        .inc();
    metrics
        .in_flight
        .get_or_create(&Surface {
            surface: pending.call.surface,
        })
        .dec();
}

fn grpc_code_name(code: i32) -> String {
    let name = match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    };
    name.to_string()
}

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                {
                    *this.status = Code::Grpc(code);
                }
                if (frame.is_trailers() || this.body.is_end_stream()) && !this.pending.done {
                    record(this.pending, 2, this.status);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if !this.pending.done {
                    record(this.pending, 2, this.status);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One background job (`expire_links`, `prune_events`, `token_refresh`…).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Job {
    pub job: &'static str,
}

/// What the background jobs did: passes, rows, failures and the time of
/// the last pass that succeeded (the series to alert on when a job stalls).
#[derive(Default)]
pub struct JobMetrics {
    runs: Family<Job, Counter>,
    rows: Family<Job, Counter>,
    failures: Family<Job, Counter>,
    last_success: Family<Job, Gauge>,
}

impl std::fmt::Debug for JobMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobMetrics")
    }
}

impl JobMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "job_runs",
            "Passes of each background job, whether they succeeded or not",
            self.runs.clone(),
        );
        registry.register(
            "job_rows",
            "Rows each background job expired, removed, checked or refreshed",
            self.rows.clone(),
        );
        registry.register(
            "job_failures",
            "Passes of each background job that failed (the error is logged)",
            self.failures.clone(),
        );
        registry.register(
            "job_last_success_timestamp_seconds",
            "Unix time of each background job's last pass that succeeded",
            self.last_success.clone(),
        );
    }

    /// Records one pass of `job`: the rows it handled, or its failure.
    pub fn record(&self, job: &'static str, outcome: Result<u64, ()>) {
        let job = Job { job };
        self.runs.get_or_create(&job).inc();
        match outcome {
            Ok(rows) => {
                self.rows.get_or_create(&job).inc_by(rows);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_secs());
                self.last_success
                    .get_or_create(&job)
                    .set(i64::try_from(now).unwrap_or(i64::MAX));
            }
            Err(()) => {
                self.failures.get_or_create(&job).inc();
            }
        }
    }
}

/// The standard `process_*` series (CPU, memory, file descriptors, threads,
/// start time), read from `/proc/self` on each scrape; unprefixed, as
/// dashboards and alerts for any service expect them.
#[derive(Debug)]
pub struct ProcessCollector;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use procfs::WithCurrentSystemInfo as _;
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let Ok(stat) = me.stat() else {
            return Ok(());
        };
        let ticks = procfs::ticks_per_second() as f64;
        let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let mut gauge = |name: &str, help: &str, value: f64| -> Result<(), std::fmt::Error> {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size, in bytes",
            stat.rss_bytes().get() as f64,
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size, in bytes",
            stat.vsize as f64,
        )?;
        gauge(
            "process_threads",
            "Operating system threads",
            stat.num_threads as f64,
        )?;
        if let Ok(boot) = procfs::boot_time_secs() {
            gauge(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                boot as f64 + stat.starttime as f64 / ticks,
            )?;
        }
        if let Ok(open) = me.fd_count() {
            gauge("process_open_fds", "Open file descriptors", open as f64)?;
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            gauge(
                "process_max_fds",
                "Most file descriptors the process may open",
                max as f64,
            )?;
        }
        Ok(())
    }
}
