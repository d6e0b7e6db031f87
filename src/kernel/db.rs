//! The database itself: the pool, migrations, the liveness probe. Queries
//! live in each concern's `store.rs`; every tenant-scoped one takes the
//! caller's organization and environment.

use anyhow::Context;
use futures_util::TryStreamExt as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection as _, Executor, PgConnection, PgPool, Postgres};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// What sits between linkd and Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// Postgres itself, or a pooler that gives each client a server
    /// connection for its whole session (PgBouncer `pool_mode = session`).
    #[default]
    None,
    /// A pooler that may hand each transaction to another server connection
    /// (PgBouncer `pool_mode = transaction`): nothing may outlive a
    /// transaction, so no prepared-statement cache and every statement
    /// inside one transaction (see [`Db`]).
    Transaction,
}

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub pooler: Pooler,
}

/// The database as the services use it: a pool, and whether each use must
/// be pinned to one server connection by a transaction.
///
/// Behind a transaction pooler (PgBouncer in transaction mode before 1.21,
/// which does not track prepared statements) two things break: a statement
/// sqlx runs outside a transaction is two exchanges (`Parse`/`Sync`, then
/// `Bind`/`Execute`/`Sync`) the pooler may send to two servers, and a named
/// prepared statement outlives its transaction on a server that the next
/// transaction, or another client, may get. So in that mode ("pinned"):
/// - a statement run on `&Db` runs unnamed inside `BEGIN` … `COMMIT`;
/// - [`Db::begin`] and [`Db::connection`] hand out transactions whose
///   commit and rollback first close the statements they prepared;
/// - a connection that comes back to the pool still holding prepared
///   statements (a transaction dropped unfinished) is closed unflushed, so
///   the pooler discards its server connection with them.
///
/// Directly on Postgres all of this is the plain pool: one round trip per
/// statement, statements cached per connection.
#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
    pinned: bool,
    acquiring: Arc<Acquiring>,
}

/// How long uses wait for a pooled connection, and how many wait now: the
/// pool's saturation, which its size and idle count alone do not show.
#[derive(Debug)]
struct Acquiring {
    waiting: prometheus_client::metrics::gauge::Gauge,
    seconds: prometheus_client::metrics::histogram::Histogram,
    timeouts: prometheus_client::metrics::counter::Counter,
}

impl Default for Acquiring {
    fn default() -> Self {
        Acquiring {
            waiting: Default::default(),
            // 0.1 ms to ~2 s; longer waits are near the acquire timeout.
            seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 3.0, 10),
            ),
            timeouts: Default::default(),
        }
    }
}

/// Counts a waiter from its start until dropped (also when its acquire is
/// cancelled).
struct Waiting<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Waiting<'a> {
    fn start(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A transaction ([`Db::begin`]): commit or roll it back; dropped, it rolls
/// back.
#[derive(Debug)]
pub struct DbTransaction {
    /// `None` only once ended.
    tx: Option<sqlx::Transaction<'static, Postgres>>,
    pinned: bool,
}

impl std::ops::Deref for DbTransaction {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.tx.as_ref().expect("an open transaction")
    }
}

impl std::ops::DerefMut for DbTransaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.tx.as_mut().expect("an open transaction")
    }
}

impl DbTransaction {
    fn new(tx: sqlx::Transaction<'static, Postgres>, pinned: bool) -> Self {
        DbTransaction {
            tx: Some(tx),
            pinned,
        }
    }

    pub async fn commit(mut self) -> sqlx::Result<()> {
        let mut tx = self.tx.take().expect("an open transaction");
        if self.pinned {
            tx.clear_cached_statements().await?;
        }
        tx.commit().await
    }

    pub async fn rollback(mut self) -> sqlx::Result<()> {
        let tx = self.tx.take().expect("an open transaction");
        rollback(tx, self.pinned).await
    }
}

/// Closes what the transaction prepared while it still has its server
/// (behind a transaction pooler), then rolls back.
async fn rollback(mut tx: sqlx::Transaction<'static, Postgres>, pinned: bool) -> sqlx::Result<()> {
    if pinned {
        tx.clear_cached_statements().await?;
    }
    tx.rollback().await
}

impl Drop for DbTransaction {
    fn drop(&mut self) {
        // Pinned and dropped open (an early return): roll back in the
        // background rather than leave the statements to the pool's safety
        // net, which would cost the pooler a server connection.
        if let (true, Some(tx)) = (self.pinned, self.tx.take())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = rollback(tx, true).await;
            });
        }
    }
}

/// One connection for several statements ([`Db::connection`]);
/// [`DbConnection::finish`] ends it (behind a transaction pooler it is a
/// transaction, and this commits it; dropped unfinished, its work there is
/// rolled back).
#[derive(Debug)]
pub enum DbConnection {
    Direct(sqlx::pool::PoolConnection<Postgres>),
    Pinned(DbTransaction),
}

impl std::ops::Deref for DbConnection {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        match self {
            DbConnection::Direct(conn) => conn,
            DbConnection::Pinned(tx) => tx,
        }
    }
}

impl std::ops::DerefMut for DbConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            DbConnection::Direct(conn) => conn,
            DbConnection::Pinned(tx) => tx,
        }
    }
}

impl DbConnection {
    pub async fn finish(self) -> sqlx::Result<()> {
        match self {
            DbConnection::Direct(_) => Ok(()),
            DbConnection::Pinned(tx) => tx.commit().await,
        }
    }

    /// Ends it after a failure: behind a transaction pooler, rolls back.
    pub async fn abandon(self) -> sqlx::Result<()> {
        match self {
            DbConnection::Direct(_) => Ok(()),
            DbConnection::Pinned(tx) => tx.rollback().await,
        }
    }
}

impl Db {
    /// The pool underneath, for its gauges.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A probe connecting as the pool does, outside it.
    pub fn probe(&self) -> Probe {
        Probe {
            options: (*self.pool.connect_options()).clone(),
            connection: None,
        }
    }

    /// Closes every connection and refuses new uses.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn begin(&self) -> sqlx::Result<DbTransaction> {
        self.begin_opened_by(None).await
    }

    /// A transaction opened by `statement` (`BEGIN ISOLATION LEVEL …`).
    pub async fn begin_with(&self, statement: &'static str) -> sqlx::Result<DbTransaction> {
        self.begin_opened_by(Some(statement)).await
    }

    async fn begin_opened_by(
        &self,
        statement: Option<&'static str>,
    ) -> sqlx::Result<DbTransaction> {
        let conn = self.acquire().await?;
        // What `Pool::begin` does, after an acquire that is measured.
        let tx =
            sqlx::Transaction::begin(conn, statement.map(sqlx::SqlSafeStr::into_sql_str)).await?;
        Ok(DbTransaction::new(tx, self.pinned))
    }

    pub async fn connection(&self) -> sqlx::Result<DbConnection> {
        Ok(if self.pinned {
            DbConnection::Pinned(self.begin().await?)
        } else {
            DbConnection::Direct(self.acquire().await?)
        })
    }

    /// A connection from the pool, the wait measured
    /// (`linkd_db_pool_acquire_seconds`, `…_waiting`, `…_timeouts_total`).
    async fn acquire(&self) -> sqlx::Result<sqlx::pool::PoolConnection<Postgres>> {
        let measured = &self.acquiring;
        let started = std::time::Instant::now();
        let waiting = Waiting::start(&measured.waiting);
        let conn = self.pool.acquire().await;
        drop(waiting);
        measured.seconds.observe(started.elapsed().as_secs_f64());
        if matches!(conn, Err(sqlx::Error::PoolTimedOut)) {
            measured.timeouts.inc();
        }
        conn
    }
}

/// A query run without a named prepared statement (`persistent(false)`):
/// nothing of it stays on the server after its transaction.
struct Unnamed<E>(E);

impl<'q, E: sqlx::Execute<'q, Postgres>> sqlx::Execute<'q, Postgres> for Unnamed<E> {
    fn sql(self) -> sqlx::SqlStr {
        self.0.sql()
    }
    fn statement(&self) -> Option<&sqlx::postgres::PgStatement> {
        self.0.statement()
    }
    fn take_arguments(
        &mut self,
    ) -> Result<Option<sqlx::postgres::PgArguments>, sqlx::error::BoxDynError> {
        self.0.take_arguments()
    }
    fn persistent(&self) -> bool {
        false
    }
}

impl<'c> Executor<'c> for &'c Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::stream::BoxStream<
        'e,
        sqlx::Result<sqlx::Either<sqlx::postgres::PgQueryResult, sqlx::postgres::PgRow>>,
    >
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Postgres>,
    {
        let db = self.clone();
        if !self.pinned {
            // What `Pool`'s own executor does, after an acquire that is
            // measured.
            return Box::pin(async_stream::try_stream! {
                let mut conn = db.acquire().await?;
                let mut results = conn.fetch_many(query);
                while let Some(result) = results.try_next().await? {
                    yield result;
                }
            });
        }
        Box::pin(async_stream::try_stream! {
            let mut tx = db.begin().await?;
            {
                let mut results = tx.fetch_many(Unnamed(query));
                while let Some(result) = results.try_next().await? {
                    yield result;
                }
            }
            tx.commit().await?;
        })
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_util::future::BoxFuture<'e, sqlx::Result<Option<sqlx::postgres::PgRow>>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Postgres>,
    {
        let db = self.clone();
        if !self.pinned {
            return Box::pin(async move { db.acquire().await?.fetch_optional(query).await });
        }
        Box::pin(async move {
            let mut tx = db.begin().await?;
            let row = tx.fetch_optional(Unnamed(query)).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> futures_util::future::BoxFuture<'e, sqlx::Result<sqlx::postgres::PgStatement>>
    where
        'c: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> futures_util::future::BoxFuture<'e, sqlx::Result<sqlx::Describe<Postgres>>>
    where
        'c: 'e,
    {
        self.pool.describe(sql)
    }
}

/// A lazily connecting pool: start-up does not fail when the database is
/// briefly down, and requests fail fast with UNAVAILABLE (bounded acquire
/// timeout) until it is back.
pub fn pool(url: &str, settings: &PoolSettings) -> anyhow::Result<Db> {
    let options = connect_options(url, settings.pooler)?
        .application_name("linkd")
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    let pinned = settings.pooler == Pooler::Transaction;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
        // No ping before each use: a dead connection fails its statement and
        // is dropped, and idle connections are retired after `idle_timeout`.
        .test_before_acquire(false);
    let pool = if pinned {
        // The safety net of the pinned mode: a connection still holding
        // prepared statements is closed without flushing its queued
        // ROLLBACK, so the pooler sees its client leave mid-transaction and
        // closes that server connection, statements and all.
        pool.after_release(|conn, _| {
            Box::pin(async move {
                match conn.cached_statements_size() {
                    0 => Ok(true),
                    _ => Err(sqlx::Error::Protocol(
                        "a transaction behind the pooler ended unfinished with prepared statements; closing its connection".into(),
                    )),
                }
            })
        })
    } else {
        pool
    }
    .connect_lazy_with(options);
    Ok(Db {
        pool,
        pinned,
        acquiring: Arc::default(),
    })
}

/// How to connect to `url` through `pooler`.
fn connect_options(url: &str, pooler: Pooler) -> anyhow::Result<PgConnectOptions> {
    let options =
        PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid Postgres URL")?;
    Ok(match pooler {
        Pooler::None => options,
        // PgBouncer refuses startup parameters it does not know, such as
        // the `extra_float_digits` sqlx sends (linkd reads no floats as
        // text: the server's default does).
        Pooler::Transaction => options.extra_float_digits(None),
    })
}

/// Connects once to `DATABASE_URL` at start-up, so that a database that
/// cannot be reached is one line naming the setting, the host and the cause
/// (`connection refused`, `password authentication failed…`), not a pool
/// time-out. Never prints the URL (it may hold a password).
pub async fn check_reachable(url: &str, pooler: Pooler, within: Duration) -> anyhow::Result<()> {
    let options = connect_options(url, pooler)?;
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

/// Applies pending migrations, all in one transaction under a
/// transaction-level advisory lock: safe from several replicas at once, and
/// behind a transaction pooler (a session lock, as sqlx takes by default,
/// could stay held on a server connection the pooler hands to others). A
/// failed migration leaves the database as it was. (So a migration cannot
/// be `-- no-transaction`.)
pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_locking(false);
    let mut tx = db.begin().await.context("applying database migrations")?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('linkd migrations', 0))")
        .execute(&mut *tx)
        .await
        .context("applying database migrations: taking the migration lock")?;
    migrator
        .run(&mut *tx)
        .await
        .context("applying database migrations")?;
    tx.commit().await.context("applying database migrations")
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

/// Asks whether the database answers, over a connection of its own: a
/// pool whose connections are all busy (a load spike) must not read as a
/// database that is down, or readiness and the fail-fast gate would turn
/// the spike into an outage.
pub struct Probe {
    options: PgConnectOptions,
    connection: Option<PgConnection>,
}

impl Probe {
    /// One round trip (a simple-protocol `SELECT 1`, which leaves nothing
    /// behind on a pooler's server connection), connecting first when the
    /// last ping failed or none ran yet; `false` when no answer came within
    /// `within`. A connection that failed or was cut off is dropped.
    pub async fn ping(&mut self, within: Duration) -> bool {
        let answered = tokio::time::timeout(within, async {
            if self.connection.is_none() {
                self.connection = Some(PgConnection::connect_with(&self.options).await?);
            }
            let connection = self.connection.as_mut().expect("connected above");
            sqlx::raw_sql("SELECT 1").execute(connection).await?;
            Ok::<(), sqlx::Error>(())
        })
        .await;
        let up = matches!(answered, Ok(Ok(())));
        if !up {
            self.connection = None;
        }
        up
    }
}

/// The pool's state on every scrape: connections idle and in use, and the
/// most it may open (`linkd_db_pool_connections{state}`,
/// `linkd_db_pool_max_connections`).
#[derive(Debug)]
pub struct PoolCollector {
    pool: PgPool,
}

impl Db {
    /// Registers the pool's series: connections by state and the most it
    /// opens (read on each scrape), and the waits for a connection.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(PoolCollector {
            pool: self.pool.clone(),
        }));
        registry.register(
            "db_pool_waiting",
            "Uses of the database waiting for a pooled connection now",
            self.acquiring.waiting.clone(),
        );
        registry.register_with_unit(
            "db_pool_acquire",
            "Time a use of the database waited for a pooled connection",
            prometheus_client::registry::Unit::Seconds,
            self.acquiring.seconds.clone(),
        );
        registry.register(
            "db_pool_acquire_timeouts",
            "Waits for a pooled connection that gave up after LINKD_DB_ACQUIRE_TIMEOUT (answered UNAVAILABLE)",
            self.acquiring.timeouts.clone(),
        );
    }
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
