//! Serving status, shared by gRPC health (`grpc.health.v1`) and `/readyz`.
//!
//! A probe pings the database on an interval: unreachable → every service
//! `NOT_SERVING`, reachable again → `SERVING`, without a restart. Once
//! shutdown starts the status stays `NOT_SERVING`.

use crate::kernel::db::Db;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    /// Fully qualified names of the services reported on (plus "" for the
    /// server as a whole).
    services: Arc<Vec<&'static str>>,
    database_up: Arc<AtomicBool>,
    /// The probe's last ping failed (false until a probe says so, so the
    /// first requests after start are not refused before it has run).
    database_down: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

impl Health {
    pub fn new(reporter: HealthReporter, services: Vec<&'static str>) -> Self {
        Health {
            reporter,
            services: Arc::new(services),
            database_up: Arc::new(AtomicBool::new(false)),
            database_down: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn is_serving(&self) -> bool {
        self.database_up.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    async fn publish(&self) {
        let status = if self.is_serving() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in std::iter::once(&"").chain(self.services.iter()) {
            self.reporter.set_service_status(*name, status).await;
        }
    }

    pub async fn set_database_up(&self, up: bool) {
        let was = self.database_up.swap(up, Ordering::SeqCst);
        self.database_down.store(!up, Ordering::SeqCst);
        if was != up {
            if up {
                tracing::info!("database reachable; serving");
            } else {
                tracing::warn!("database unreachable; health NOT_SERVING until it returns");
            }
        }
        self.publish().await;
    }

    /// Refuses API calls at once with `UNAVAILABLE` / `503` while the probe
    /// finds the database down, instead of letting each wait out the pool's
    /// acquire timeout (and pile up behind it). Health, readiness, metrics,
    /// the OpenAPI document and the Link page's static files still answer.
    /// Calls resume at the probe's next successful ping
    /// (`LINKD_HEALTH_CHECK_INTERVAL`).
    pub async fn fail_fast_while_database_down(
        axum::extract::State(health): axum::extract::State<Health>,
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        if !health.database_down.load(Ordering::SeqCst)
            || crate::api::api_path(request.uri().path()).is_none()
        {
            return next.run(request).await;
        }
        let refused = crate::kernel::error::Error::Unavailable(anyhow::anyhow!(
            "refused without trying: the database probe finds it down"
        ));
        if crate::api::api_path(request.uri().path()) == Some(crate::api::ApiPath::Grpc) {
            tonic::Status::from(refused).into_http()
        } else {
            refused.into_response()
        }
    }

    /// First step of shutdown: report `NOT_SERVING` for good.
    pub async fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.publish().await;
    }

    /// Probes the database every `interval` until the task is dropped.
    pub fn spawn_database_probe(&self, db: Db, interval: Duration) -> tokio::task::JoinHandle<()> {
        let health = self.clone();
        let mut probe = db.probe();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let up = probe.ping(interval.max(Duration::from_secs(1))).await;
                health.set_database_up(up).await;
            }
        })
    }
}
