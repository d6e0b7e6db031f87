//! Webhook delivery, the way Standard Webhooks senders do it: every event in
//! the outbox is sent once its transaction commits, signed, retried on a
//! schedule with jitter, at least once, by whichever replica claims it.
//!
//! Each replica runs one [`Dispatcher`]. It claims due events
//! with `FOR UPDATE SKIP LOCKED` and a lease (see
//! [`store::claim_due`]), sends each through one pooled HTTP
//! client that never follows redirects, never uses a proxy and resolves
//! names through the SSRF guard, and records every attempt.
//!
//! Outcomes: 2xx delivered; 410 disables the endpoint; 429/503 wait at least
//! `Retry-After`; anything else (3xx included), a timeout or a connection
//! error is retried until the schedule runs out, then the event is `failed`.
//! A destination refused by the SSRF guard fails at once (retrying cannot
//! help; fix the URL and redeliver).

pub mod metrics;
pub mod signing;

pub mod store;

use crate::kernel::crypto::Sealed;
use crate::kernel::ids::ClientAppId;
use crate::kernel::ssrf::{self, Allowlist, Refused};
use signing::SigningSecret;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Attempt, DueEvent, Finished, Next};

/// How much of a receiver's answer is read (and dropped) so that its
/// connection goes back to the pool; a longer answer closes it instead.
const MAX_RESPONSE_DRAIN_BYTES: usize = 64 * 1024;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// How webhooks are sent.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Per attempt, from connect to the end of the response headers.
    pub timeout: Duration,
    /// Delay before each attempt: the first is normally 0 (at once); its
    /// length is the number of attempts.
    pub schedule: Vec<Duration>,
    /// How long a claimed attempt may run before another replica retries it.
    pub lease: Duration,
    /// How often an idle dispatcher looks for due events.
    pub poll_interval: Duration,
    /// How often the queue gauges are refreshed.
    pub queue_stats_interval: Duration,
    /// Deliveries in flight per replica.
    pub concurrency: usize,
    /// Deliveries in flight per replica to one destination, so a destination
    /// that hangs holds at most this many of the `concurrency` slots.
    pub per_destination: usize,
    /// When a failing destination's events are held back together.
    pub breaker: store::BreakerSettings,
    pub allow: Arc<Allowlist>,
}

/// The one pooled client of deliveries (see [`ssrf::guarded_client`]).
pub fn http_client(settings: &WebhookSettings) -> anyhow::Result<reqwest::Client> {
    Ok(
        ssrf::guarded_client(settings.allow.clone(), settings.timeout)?
            .user_agent(concat!("linkd-webhooks/", env!("CARGO_PKG_VERSION")))
            // A destination has at most this many deliveries at once.
            .pool_max_idle_per_host(settings.per_destination.max(1))
            .build()?,
    )
}

/// What delivering needs: the database, the cipher that opens signing
/// secrets, the settings and the metrics it updates.
#[derive(Debug, Clone)]
pub struct Deliveries {
    pub db: crate::kernel::db::Db,
    pub cipher: crate::kernel::crypto::Cipher,
    pub settings: WebhookSettings,
    pub metrics: Arc<metrics::Metrics>,
}

/// The dispatcher of this replica: a loop that claims due events and a
/// bounded set of deliveries in flight.
pub struct Dispatcher {
    stop: tokio::sync::watch::Sender<bool>,
    claiming: tokio::task::JoinHandle<()>,
    measuring: tokio::task::JoinHandle<()>,
    recording: tokio::task::JoinHandle<()>,
    slots: Arc<tokio::sync::Semaphore>,
    concurrency: u32,
}

impl Dispatcher {
    /// Starts claiming and delivering.
    pub fn spawn(deliveries: Deliveries) -> anyhow::Result<Dispatcher> {
        let settings = deliveries.settings.clone();
        let client = http_client(&settings)?;
        let concurrency = settings
            .concurrency
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let measuring = tokio::spawn(measure_queue(deliveries.clone()));
        let (recorder, finished) = tokio::sync::mpsc::channel(concurrency);
        let recording = tokio::spawn(record_loop(deliveries.clone(), finished));
        let recorder = Recorder(recorder);
        let claiming = tokio::spawn(claim_loop(
            deliveries,
            client,
            recorder,
            slots.clone(),
            stopped,
        ));
        Ok(Dispatcher {
            stop,
            claiming,
            measuring,
            recording,
            slots,
            concurrency: u32::try_from(concurrency).expect("at most MAX_PERMITS"),
        })
    }

    /// Stops claiming events (a claim already running completes, and its
    /// events are sent). Deliveries in flight go on.
    pub fn stop_claiming(&self) {
        let _ = self.stop.send(true);
        self.measuring.abort();
    }

    /// Stops claiming and waits up to `grace` for the deliveries in flight
    /// to be sent and recorded. What is still running after that is retried
    /// by another replica once its lease ends, with the same `webhook-id`.
    pub async fn finish(mut self, grace: Duration) {
        self.stop_claiming();
        let drained = tokio::time::timeout(grace, async {
            let _ = (&mut self.claiming).await;
            let in_flight = self.in_flight();
            if in_flight > 0 {
                tracing::info!(in_flight, "waiting for webhook deliveries in flight");
            }
            let _ = self.slots.acquire_many(self.concurrency).await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = self.in_flight(),
                "grace period over; webhook deliveries still in flight are retried after their lease"
            );
        }
    }

    /// Deliveries running now.
    fn in_flight(&self) -> usize {
        self.concurrency as usize - self.slots.available_permits()
    }

    /// Stops at once; deliveries in flight are cut off when the runtime
    /// ends and retried after their lease.
    pub fn abort(&self) {
        self.claiming.abort();
        self.measuring.abort();
        self.recording.abort();
    }
}

/// Refreshes the queue gauges on its own clock, so they keep moving while
/// every delivery slot is busy (when they matter most).
async fn measure_queue(deliveries: Deliveries) {
    let mut ticker = tokio::time::interval(deliveries.settings.queue_stats_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // An unreachable database is reported by the health probe.
        if let Ok(queue) = store::queue_stats(&deliveries.db).await {
            deliveries.metrics.queue_depth.set(queue.depth);
            deliveries
                .metrics
                .oldest_due_seconds
                .set(queue.oldest_due_seconds);
            deliveries
                .metrics
                .paused_destinations
                .set(queue.paused_destinations);
        }
    }
}

/// Most destinations one claim looks at (each costs an index descent); the
/// next claim goes on from there.
const MAX_DESTINATIONS_PER_CLAIM: i64 = 256;

/// The destination (breaker and per-destination cap) of events sent to a
/// client app's own webhook URL; the SQL function `event_destination` names
/// it the same way.
pub fn app_destination(app_id: ClientAppId) -> String {
    format!("app:{}", app_id.uuid())
}

/// The longest wait before a claim that failed (database unreachable or
/// busy) is tried again.
const CLAIM_RETRY: Duration = Duration::from_secs(1);

/// How long a claim woken by a delivery ending waits for others to end.
const CLAIM_COALESCE: Duration = Duration::from_millis(1);

/// Most finished deliveries written in one statement.
const RECORD_BATCH: usize = 256;

/// Where deliveries report how they ended; [`record_loop`] writes them.
#[derive(Clone)]
struct Recorder(tokio::sync::mpsc::Sender<(Finished, tokio::sync::oneshot::Sender<()>)>);

impl Recorder {
    /// Hands the delivery's end over and waits until it is written (or the
    /// write failed: the lease then brings the event back), so a delivery
    /// keeps its slot, and shutdown waits, until its outcome is stored.
    async fn record(&self, finished: Finished) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.0.send((finished, done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

/// Writes finished deliveries in batches: whatever arrived while the last
/// write ran goes in the next statement, so a busy dispatcher pays one round
/// trip for many deliveries and an idle one waits for nothing.
async fn record_loop(
    deliveries: Deliveries,
    mut finished: tokio::sync::mpsc::Receiver<(Finished, tokio::sync::oneshot::Sender<()>)>,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while finished.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let (ends, acks): (Vec<Finished>, Vec<_>) = batch.drain(..).unzip();
        if let Err(err) = store::finish_attempts(&deliveries.db, &ends).await {
            err.log();
        }
        // After the attempts, so that an opening breaker also holds back the
        // events that were just scheduled for a retry.
        match store::record_destination_outcomes(
            &deliveries.db,
            &ends,
            &deliveries.settings.breaker,
        )
        .await
        {
            Ok(opened) => {
                for o in opened {
                    tracing::warn!(
                        destination = %o.destination,
                        open_until = %o.open_until,
                        held = o.held,
                        given_up = o.given_up,
                        "webhook destination paused after repeated failures"
                    );
                }
            }
            Err(err) => err.log(),
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// Deliveries this replica has in flight per destination, and a signal
/// each time one ends.
#[derive(Default)]
struct InFlight {
    by_destination: Mutex<HashMap<String, usize>>,
    ended: tokio::sync::Notify,
}

impl InFlight {
    fn counts(&self) -> Vec<(String, i32)> {
        let counts = self.by_destination.lock().expect("never poisoned");
        counts
            .iter()
            .map(|(d, n)| (d.clone(), i32::try_from(*n).unwrap_or(i32::MAX)))
            .collect()
    }

    fn start(self: &Arc<Self>, destination: &str) -> InFlightGuard {
        let mut counts = self.by_destination.lock().expect("never poisoned");
        *counts.entry(destination.to_string()).or_default() += 1;
        InFlightGuard {
            in_flight: self.clone(),
            destination: destination.to_string(),
        }
    }
}

/// One delivery counted in [`InFlight`] until dropped.
struct InFlightGuard {
    in_flight: Arc<InFlight>,
    destination: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut counts = self
            .in_flight
            .by_destination
            .lock()
            .expect("never poisoned");
        if let Some(n) = counts.get_mut(&self.destination) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.destination);
            }
        }
        drop(counts);
        self.in_flight.ended.notify_one();
    }
}

/// Claims as many due events as there are free delivery slots (at most
/// `per_destination` in flight to one destination) and sends each in its
/// own task, until `stopped` turns true.
async fn claim_loop(
    deliveries: Deliveries,
    client: reqwest::Client,
    recorder: Recorder,
    slots: Arc<tokio::sync::Semaphore>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let settings = deliveries.settings.clone();
    let cap = settings.per_destination.max(1);
    let in_flight = Arc::new(InFlight::default());
    // Destinations are visited in key order, each claim after the last.
    let mut cursor = String::new();
    // Waits for `future` unless the dispatcher is stopped first.
    macro_rules! unless_stopped {
        ($future:expr) => {
            tokio::select! {
                biased;
                _ = stopped.wait_for(|stop| *stop) => return,
                value = $future => value,
            }
        };
    }
    loop {
        // Wait for a free slot (returning at once when stopped), then claim
        // as many events as slots are free.
        let first = unless_stopped!(slots.clone().acquire_owned()).expect("never closed");
        let free = slots.available_permits() + 1;
        let busy = in_flight.counts();
        let claimed = store::claim_due(
            &deliveries.db,
            free as i64,
            settings.lease,
            i32::try_from(cap).unwrap_or(i32::MAX),
            &busy,
            &cursor,
            MAX_DESTINATIONS_PER_CLAIM,
        )
        .await;
        let (due, walked_to) = match claimed {
            Ok(claim) => (claim.events, claim.walked_to),
            Err(err) => {
                // A database hiccup: look again soon, not after a long idle
                // poll interval with the backlog waiting.
                err.log();
                drop(first);
                unless_stopped!(tokio::time::sleep(settings.poll_interval.min(CLAIM_RETRY)));
                continue;
            }
        };
        // A claim that started after the first destination and found too
        // little looks at the ones before it at once.
        let looked_everywhere = cursor.is_empty() && walked_to.is_none();
        cursor = walked_to.unwrap_or_default();
        let idle = due.len() < free && looked_everywhere;
        // Whether a destination's cap (as the claim saw it) may have left
        // due events behind: then a delivery ending is worth a new claim.
        let capped = {
            let mut seen: HashMap<&str, usize> = busy
                .iter()
                .map(|(d, n)| (d.as_str(), usize::try_from(*n).unwrap_or(0)))
                .collect();
            for event in &due {
                *seen.entry(event.destination.as_str()).or_default() += 1;
            }
            seen.values().any(|n| *n >= cap)
        };
        let mut permit = Some(first);
        for event in due {
            // Only this loop takes slots, and it claimed no more than were
            // free, so these never wait.
            let permit = match permit.take() {
                Some(permit) => permit,
                None => slots.clone().acquire_owned().await.expect("never closed"),
            };
            let counted = in_flight.start(&event.destination);
            let (deliveries, client, recorder) =
                (deliveries.clone(), client.clone(), recorder.clone());
            tokio::spawn(async move {
                let (attempt, next, reached) = deliver(&deliveries, &client, &event).await;
                recorder
                    .record(Finished {
                        event_id: event.id,
                        claimed_attempts: event.attempts,
                        destination: event.destination,
                        // A delivered attempt to a destination with no
                        // failures on record changes no breaker: not
                        // reporting it saves the batch a statement.
                        reached: reached.filter(|delivered| !delivered || event.troubled),
                        attempt,
                        next,
                    })
                    .await;
                drop(counted);
                drop(permit);
            });
        }
        drop(permit);
        if idle {
            if capped {
                // Events may be due for a destination at its cap: look again
                // as soon as a delivery ends (one that ended during the
                // claim has left a wake-up behind).
                unless_stopped!(async {
                    tokio::select! {
                        _ = tokio::time::sleep(settings.poll_interval) => {}
                        _ = in_flight.ended.notified() => {
                            // Let the deliveries ending about now end too, so
                            // the claim refills several slots at once.
                            tokio::time::sleep(CLAIM_COALESCE).await;
                        }
                    }
                });
            } else {
                unless_stopped!(tokio::time::sleep(settings.poll_interval));
            }
        }
    }
}

/// The signing secrets of the event's app: the current one, and the
/// previous one while its rotation grace period lasts.
fn secrets(deliveries: &Deliveries, event: &DueEvent) -> Vec<SigningSecret> {
    let Some(app_id) = event.client_app_id else {
        return Vec::new();
    };
    let cipher = &deliveries.cipher;
    let mut secrets = Vec::new();
    let current = event
        .webhook_secret_ciphertext
        .as_deref()
        .and_then(|sealed| cipher.decrypt(sealed, Sealed::WebhookSecret(app_id)).ok());
    let previous = event
        .previous_webhook_secret_ciphertext
        .as_deref()
        .filter(|_| event.previous_active)
        .and_then(|sealed| {
            cipher
                .decrypt(sealed, Sealed::PreviousWebhookSecret(app_id))
                .ok()
        });
    for plain in [current, previous].into_iter().flatten() {
        if let Some(secret) = std::str::from_utf8(&plain)
            .ok()
            .and_then(SigningSecret::parse)
        {
            secrets.push(secret);
        }
    }
    secrets
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// The delay before attempt `attempts + 1`, with ±20 % jitter, or `None`
/// when the schedule is used up.
fn next_delay(schedule: &[Duration], attempts: i32) -> Option<Duration> {
    let base = *schedule.get(usize::try_from(attempts).ok()?)?;
    Some(base.mul_f64(rand::random_range(0.8..=1.2)))
}

/// Reads a bounded part of the answer (within the request's timeout): a
/// connection whose answer was not read to the end cannot be reused.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while read < MAX_RESPONSE_DRAIN_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
}

/// Sends one claimed event; returns its attempt (none when nothing was
/// sent), where the event goes next, and what the attempt says about the
/// destination's health (see [`Finished::reached`]).
async fn deliver(
    deliveries: &Deliveries,
    client: &reqwest::Client,
    event: &DueEvent,
) -> (Option<Attempt>, Next, Option<bool>) {
    let settings = &deliveries.settings;
    let metrics = &deliveries.metrics;
    let Some(url) = event.url.as_deref() else {
        metrics.record("skipped");
        let why = "no destination: neither the link nor the client app has a webhook URL";
        return (None, Next::Skipped(why.into()), None);
    };
    if event.disabled {
        metrics.record("disabled");
        let why = "the endpoint answered 410 Gone earlier and is disabled; redeliver to re-enable";
        return (None, Next::Failed(why.into()), None);
    }
    let secrets = secrets(deliveries, event);
    if secrets.is_empty() {
        metrics.record("skipped");
        let why = "no signing secret for the client app";
        return (None, Next::Skipped(why.into()), None);
    }
    let started_at = chrono::Utc::now();
    let started = Instant::now();
    let refused = match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
            ssrf::check_literal_host(&parsed, &settings.allow).err()
        }
        _ => {
            metrics.record("failed");
            let why = "the webhook URL is not http(s)";
            return (None, Next::Failed(why.into()), None);
        }
    };
    if let Some(refused) = refused {
        metrics.record("refused");
        let attempt = Attempt {
            url: url.to_string(),
            started_at,
            latency: started.elapsed(),
            status_code: None,
            error: Some(refused.to_string()),
        };
        let why = refused.to_string();
        return (Some(attempt), Next::Failed(why), None);
    }
    let message_id = event.id.to_string();
    let body = serde_json::to_vec(&event.payload.0).expect("JSON values serialize");
    let timestamp = started_at.timestamp();
    let signature = signing::signature_header(&secrets, &message_id, timestamp, &body);
    let sent = client
        .post(url)
        .header("webhook-id", &message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let latency = started.elapsed();
    metrics.delivery_seconds.observe(latency.as_secs_f64());
    let retry = |error: String, at_least: Option<Duration>| match next_delay(
        &settings.schedule,
        event.attempts,
    ) {
        Some(delay) => (
            "retry",
            Next::RetryIn(at_least.map_or(delay, |min| delay.max(min))),
            error,
        ),
        None => ("failed", Next::Failed(error.clone()), error),
    };
    let (status_code, (outcome, next, error)) = match sent {
        Ok(response) => {
            let status = response.status();
            let code = Some(status.as_u16());
            let wait = retry_after(&response);
            drain(response).await;
            if status.is_success() {
                (code, ("delivered", Next::Delivered, String::new()))
            } else if status == reqwest::StatusCode::GONE {
                if let Err(err) = store::disable_endpoint(
                    &deliveries.db,
                    event.organization_id,
                    &event.environment,
                    url,
                )
                .await
                {
                    err.log();
                }
                let why = "the endpoint answered 410 Gone; it is disabled".to_string();
                (code, ("disabled", Next::Failed(why.clone()), why))
            } else if matches!(status.as_u16(), 429 | 503) {
                (code, retry(format!("HTTP {}", status.as_u16()), wait))
            } else if status.is_redirection() {
                (
                    code,
                    retry(
                        format!("HTTP {} (redirects are not followed)", status.as_u16()),
                        None,
                    ),
                )
            } else {
                (code, retry(format!("HTTP {}", status.as_u16()), None))
            }
        }
        Err(err) if ssrf::caused_by_refusal(&err) => {
            let why = Refused {
                host: url::Url::parse(url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
                    .unwrap_or_default(),
            }
            .to_string();
            (None, ("refused", Next::Failed(why.clone()), why))
        }
        Err(err) if err.is_timeout() => (
            None,
            retry(format!("timed out after {:?}", settings.timeout), None),
        ),
        Err(err) => (None, retry(format!("{}", err.without_url()), None)),
    };
    metrics.record(outcome);
    // A 410 or a refusal is about the URL, not about a destination that is
    // slow or down: the breaker ignores them.
    let reached = match outcome {
        "delivered" => Some(true),
        "retry" | "failed" => Some(false),
        _ => None,
    };
    let attempt = Attempt {
        url: url.to_string(),
        started_at,
        latency,
        status_code,
        error: Some(error).filter(|e| !e.is_empty()),
    };
    (Some(attempt), next, reached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_runs_out_and_jitter_stays_close() {
        let schedule = [
            Duration::ZERO,
            Duration::from_secs(5),
            Duration::from_secs(300),
        ];
        assert_eq!(next_delay(&schedule, 0), Some(Duration::ZERO));
        let second = next_delay(&schedule, 1).unwrap();
        assert!(second >= Duration::from_secs(4) && second <= Duration::from_secs(6));
        assert!(next_delay(&schedule, 3).is_none());
    }
}
