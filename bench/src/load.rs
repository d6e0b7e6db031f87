//! Load generators: a closed loop (N workers, each sends its next request
//! when the last one answered) and an open loop (requests start at a fixed
//! rate whatever the answers do, latency measured from the scheduled start,
//! so a stall is not hidden by coordinated omission).

use hdrhistogram::Histogram;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One call of a scenario; `n` numbers the calls (unique within a run).
pub type Call = Arc<dyn Fn(u64) -> CallFuture + Send + Sync>;
pub type CallFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Latencies and errors of one run.
pub struct Sample {
    /// Latency of successful calls, in microseconds.
    pub latency: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

impl Sample {
    fn new() -> Sample {
        Sample {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
        }
    }

    fn record(&mut self, took: Duration, result: anyhow::Result<()>) {
        match result {
            Ok(()) => {
                let _ = self.latency.record(took.as_micros().max(1) as u64);
            }
            Err(err) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }

    fn merge(&mut self, other: Sample) {
        let _ = self.latency.add(&other.latency);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn requests(&self) -> u64 {
        self.latency.len()
    }

    pub fn rate(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// `concurrency` workers calling back to back for `duration`.
pub async fn closed_loop(call: &Call, concurrency: usize, duration: Duration) -> Sample {
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (call, counter) = (call.clone(), counter.clone());
            tokio::spawn(async move {
                let mut sample = Sample::new();
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let t0 = Instant::now();
                    let result = call(n).await;
                    sample.record(t0.elapsed(), result);
                }
                sample
            })
        })
        .collect();
    let mut total = Sample::new();
    for worker in workers {
        total.merge(worker.await.expect("worker panicked"));
    }
    total.elapsed = started.elapsed();
    total
}

/// Calls started at `rate` per second for `duration`; at most `max_in_flight`
/// at once (a start that finds them all busy counts as an error).
pub async fn open_loop(call: &Call, rate: f64, duration: Duration, max_in_flight: usize) -> Sample {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let started = Instant::now();
    let total = (duration.as_secs_f64() * rate) as u64;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sample = Sample::new();
    for n in 0..total {
        let scheduled = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            sample.record(
                Duration::ZERO,
                Err(anyhow::anyhow!("open loop: every slot busy")),
            );
            continue;
        };
        let (call, tx) = (call.clone(), tx.clone());
        tokio::spawn(async move {
            let result = call(n).await;
            let _ = tx.send((scheduled.elapsed(), result));
            drop(permit);
        });
    }
    drop(tx);
    while let Some((took, result)) = rx.recv().await {
        sample.record(took, result);
    }
    sample.elapsed = started.elapsed();
    sample
}
