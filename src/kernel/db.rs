//! The database itself: the pool, migrations, the liveness ping. Queries
//! live in each concern's `store.rs`; every tenant-scoped one takes the
//! caller's organization and environment.

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

/// A lazily connecting pool: start-up does not fail when the database is
/// briefly down, and requests fail fast with UNAVAILABLE (bounded acquire
/// timeout) until it is back.
pub fn pool(url: &str, settings: &PoolSettings) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .context("DATABASE_URL is not a valid Postgres URL")?
        .application_name("linkd")
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
        // No ping before each use: a dead connection fails its statement and
        // is dropped, and idle connections are retired after `idle_timeout`.
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// Connects once to `DATABASE_URL` at start-up, so that a database that
/// cannot be reached is one line naming the setting, the host and the cause
/// (`connection refused`, `password authentication failed…`), not a pool
/// time-out. Never prints the URL (it may hold a password).
pub async fn check_reachable(url: &str, within: Duration) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let options =
        PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid Postgres URL")?;
    let target = format!(
        "DATABASE_URL: host {}, port {}, database {}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(the user's)")
    );
    match tokio::time::timeout(within, sqlx::PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(err)) => anyhow::bail!("cannot reach the database ({target}): {}", cause(&err)),
        Err(_) => anyhow::bail!(
            "cannot reach the database ({target}): no answer within {}s",
            within.as_secs()
        ),
    }
}

/// Why a connection attempt failed, in a few words.
fn cause(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::TimedOut => "connection timed out".into(),
            std::io::ErrorKind::NotFound => "no such host or socket".into(),
            _ => io.to_string(),
        },
        sqlx::Error::Tls(tls) => format!("TLS: {tls}"),
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

/// Applies pending migrations. Safe to run from several replicas at once
/// (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations")
}

/// Creates `database` on the server behind `admin_url` when it does not exist.
pub async fn ensure_database(admin_url: &str, database: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .context("connecting to the local Postgres")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // The name is quoted as an identifier; it comes from our own constant.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{}\"",
            database.replace('"', "\"\"")
        )))
        .execute(&mut conn)
        .await
        .with_context(|| format!("creating database {database}"))?;
    }
    Ok(())
}

/// One round trip that succeeds while the database answers.
pub async fn ping(db: &PgPool) -> crate::kernel::error::Result<()> {
    sqlx::query("SELECT 1").execute(db).await?;
    Ok(())
}

/// The pool's state on every scrape: connections idle and in use, and the
/// most it may open (`linkd_db_pool_connections{state}`,
/// `linkd_db_pool_max_connections`).
#[derive(Debug)]
pub struct PoolCollector {
    pub pool: PgPool,
}

impl prometheus_client::collector::Collector for PoolCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::gauge::ConstGauge;
        let size = i64::from(self.pool.size());
        let idle = i64::try_from(self.pool.num_idle()).unwrap_or(i64::MAX);
        let mut connections = encoder.encode_descriptor(
            "db_pool_connections",
            "Database connections of this process's pool, by state (idle, in_use).",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, value) in [("idle", idle), ("in_use", (size - idle).max(0))] {
            let labels = [("state", state)];
            ConstGauge::new(value).encode(connections.encode_family(&labels)?)?;
        }
        let max = ConstGauge::new(i64::from(self.pool.options().get_max_connections()));
        max.encode(encoder.encode_descriptor(
            "db_pool_max_connections",
            "Most connections this process's pool opens (LINKD_DB_MAX_CONNECTIONS).",
            None,
            max.metric_type(),
        )?)?;
        Ok(())
    }
}
