//! Webhook delivery from a backlog: events written straight into the outbox
//! by SQL, linkd replicas started on it, and a local receiver that answers
//! `200` and notes when each `webhook-id` first arrived.

use axum::http::HeaderMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A receiver answering `200` to every delivery.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Receiver> {
        let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let seen = arrivals.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                    seen.lock()
                        .expect("arrivals")
                        .entry(id.to_string())
                        .or_insert_with(Instant::now);
                }
                ""
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver { addr, arrivals })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn delivered(&self) -> usize {
        self.arrivals.lock().expect("arrivals").len()
    }

    /// Arrival times, as delays after `since`, sorted.
    pub fn delays_after(&self, since: Instant) -> Vec<Duration> {
        let mut delays: Vec<Duration> = self
            .arrivals
            .lock()
            .expect("arrivals")
            .values()
            .map(|at| at.saturating_duration_since(since))
            .collect();
        delays.sort();
        delays
    }
}

/// A destination that accepts connections, reads the request and never
/// answers (what a stuck receiver looks like from linkd).
pub struct Hanging {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Hanging {
    pub async fn start() -> anyhow::Result<Hanging> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut socket, &mut sink).await;
                });
            }
        });
        Ok(Hanging { addr, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `count` due events for the tenant's app, committed at once.
pub async fn seed_backlog(
    db: &sqlx::PgPool,
    organization_id: uuid::Uuid,
    count: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO events (id, organization_id, environment, type, payload)
         SELECT gen_random_uuid(), $1, 'sandbox', 'link.completed',
                jsonb_build_object('type', 'link.completed', 'data',
                    jsonb_build_object('linkId', 'link_bench', 'status', 'completed', 'n', g))
         FROM generate_series(1, $2) g",
    )
    .bind(organization_id)
    .bind(count)
    .execute(db)
    .await?;
    Ok(())
}

/// Waits until `target` deliveries arrived or `timeout` passed; returns how
/// long it took (or `None` on time-out).
pub async fn wait_for(
    receiver: &Receiver,
    target: usize,
    since: Instant,
    timeout: Duration,
) -> Option<Duration> {
    loop {
        if receiver.delivered() >= target {
            return Some(since.elapsed());
        }
        if since.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
