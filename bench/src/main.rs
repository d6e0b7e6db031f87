//! linkd's benchmark. `cargo run --release -p linkd-bench -- --all` starts a
//! durable Postgres and the release linkd as real processes, drives them with
//! real clients (tonic, reqwest) in closed and open loops, and measures the
//! baselines in the same run: pgbench replaying the exact statements each call
//! issues (captured on the wire) and the stack floor (gRPC Health/Check,
//! `GET /healthz`). It prints a table and writes JSON.

mod calls;
mod load;
mod replay;
mod report;
mod stack;
mod stats;
mod webhooks;

use anyhow::Context;
use calls::{Clients, Surface};
use clap::Parser;
use load::Call;
use report::{Report, Row};
use stack::{Database, Linkd, Tenant};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Benchmark linkd against baselines measured in the same run")]
struct Args {
    /// Run every group (the default when no --only is given).
    #[arg(long)]
    all: bool,
    /// Only these groups: floor, create, init, connections, flow, oauth, webhooks.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Length of each measured run.
    #[arg(long, default_value = "5s", value_parser = humantime_secs)]
    duration: Duration,
    /// Closed-loop concurrencies.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    concurrency: Vec<usize>,
    /// Rows seeded for the listing benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    connections: i64,
    /// Events in the webhook backlog.
    #[arg(long, default_value_t = 20_000)]
    backlog: i64,
    /// Due events for the large side of the claim-cost comparison (the small
    /// side is 1,000).
    #[arg(long, default_value_t = 100_000)]
    claim_backlog: i64,
    /// Exit non-zero when any call failed (CI's smoke run).
    #[arg(long)]
    fail_on_errors: bool,
    /// Use this Postgres server instead of a local cluster (databases named
    /// linkd_bench* are created and dropped on it).
    #[arg(long)]
    database_url: Option<String>,
    /// Where to write the results.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{s}: a number of seconds, e.g. 5s"))?;
    Ok(Duration::from_secs_f64(secs))
}

impl Args {
    fn wants(&self, group: &str) -> bool {
        self.all || self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

/// A call of one shape, over the surface given.
type MakeCall<'a> = Box<dyn Fn(Surface) -> Call + 'a>;

/// Everything a group needs.
struct Bench {
    args: Args,
    bin: PathBuf,
    db: Database,
    key: String,
    report: Report,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Two workers, like the two cores the whole stack shares.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(stack::output_dir())?;
    eprintln!("building linkd (release)…");
    let bin = stack::build_linkd()?;
    eprintln!("starting Postgres…");
    let db = Database::start(args.database_url.as_deref())?;
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| stack::output_dir().join("results.json"));
    let mut bench = Bench {
        args,
        bin,
        db,
        key: linkd::kernel::crypto::EncryptionKey::generate().to_base64(),
        report: Report::default(),
    };
    bench.api().await?;
    if bench.args.wants("webhooks") {
        bench.webhooks().await?;
    }
    bench.report.print();
    bench.report.write(&json)?;
    eprintln!("\nresults written to {}", json.display());
    let failed: Vec<&str> = bench
        .report
        .rows
        .iter()
        .filter(|r| r.errors > 0)
        .map(|r| r.scenario.as_str())
        .collect();
    if bench.args.fail_on_errors && !failed.is_empty() {
        anyhow::bail!("calls failed in: {}", failed.join(", "));
    }
    Ok(())
}

impl Bench {
    /// Runs `call` in a closed loop against `linkd` and returns its row.
    async fn closed(
        &mut self,
        linkd: &Linkd,
        scenario: &str,
        surface: &str,
        call: &Call,
        concurrency: usize,
    ) -> Row {
        // A short warm-up: connections, prepared statements, caches.
        load::closed_loop(call, concurrency, Duration::from_millis(500)).await;
        let mode = format!("closed c={concurrency}");
        let run = load::closed_loop(call, concurrency, self.args.duration);
        measure(linkd, scenario, surface, &mode, concurrency, run).await
    }

    async fn open(
        &mut self,
        linkd: &Linkd,
        scenario: &str,
        surface: &str,
        call: &Call,
        rate: f64,
    ) -> Row {
        let mode = format!("open {rate:.0}/s");
        let run = load::open_loop(call, rate, self.args.duration, 1024);
        measure(linkd, scenario, surface, &mode, 0, run).await
    }

    fn pgbench(
        &mut self,
        scenario: &str,
        script: &replay::Script,
        url: &str,
        concurrency: usize,
    ) -> anyhow::Result<Row> {
        let path = stack::output_dir().join(format!("pgbench-{scenario}.sql"));
        std::fs::write(&path, &script.text)?;
        let pg0 = stats::postgres_cpu_seconds();
        let secs = self.args.duration.as_secs().max(1);
        let result = replay::run_pgbench(&path, url, concurrency, secs)?;
        let row = Row::pgbench(
            scenario,
            concurrency,
            &result,
            script,
            Duration::from_secs(secs),
        )
        .with_cpu(None, stats::postgres_cpu_seconds() - pg0);
        eprintln!("  {}", row.line());
        Ok(row)
    }

    /// A tenant on `url` whose webhooks go to `receiver`.
    fn tenant(&self, url: &str, receiver: &webhooks::Receiver) -> anyhow::Result<Tenant> {
        stack::create_tenant(
            &self.bin,
            url,
            &self.key,
            calls::REDIRECT_URI,
            &receiver.url(),
        )
    }

    /// Every API group, on one database and one linkd.
    async fn api(&mut self) -> anyhow::Result<()> {
        let url = self.db.fresh("linkd_bench").await?;
        let receiver = webhooks::Receiver::start().await?;
        let allow = [("LINKD_WEBHOOK_ALLOW", "127.0.0.1")];
        let linkd = Linkd::start(&self.bin, &url, &self.key, "linkd", &allow).await?;
        let (idle_rss, _) = stats::memory_mb(linkd.pid);
        self.report.idle_rss_mb = Some(idle_rss);
        let tenant = self.tenant(&url, &receiver)?;
        let clients = Clients::connect(linkd.addr, tenant.clone(), 4).await?;
        let scripts = self.capture(&url, &tenant).await?;
        let concurrencies = self.args.concurrency.clone();

        if self.args.wants("floor") {
            eprintln!("stack floor");
            for &c in &concurrencies {
                for surface in [Surface::Grpc, Surface::Rest] {
                    let call = calls::health(&clients, surface);
                    let row = self
                        .closed(&linkd, "health", surface.name(), &call, c)
                        .await;
                    self.report.push(row);
                }
            }
        }
        let shapes: [(&str, &str, MakeCall); 3] = [
            (
                "create",
                "CreateLink (1 op)",
                Box::new(|s| calls::create_link(&clients, s, 1)),
            ),
            (
                "create",
                "CreateLink (3 ops)",
                Box::new(|s| calls::create_link(&clients, s, 3)),
            ),
            (
                "init",
                "InitLinkSession",
                Box::new(|s| calls::init_session(&clients, s)),
            ),
        ];
        for (group, scenario, make) in &shapes {
            if !self.args.wants(group) {
                continue;
            }
            eprintln!("{scenario}");
            let mut peak: f64 = 0.0;
            for &c in &concurrencies {
                for surface in [Surface::Grpc, Surface::Rest] {
                    let row = self
                        .closed(&linkd, scenario, surface.name(), &make(surface), c)
                        .await;
                    if surface == Surface::Grpc {
                        peak = peak.max(row.rate);
                    }
                    self.report.push(row);
                }
                match scripts.get(*scenario) {
                    Some(script) => {
                        let row = self.pgbench(scenario, script, &url, c)?;
                        self.report.push(row);
                    }
                    None => eprintln!("  no pgbench baseline (capture failed)"),
                }
            }
            // p99 at half the peak rate, from an open loop.
            for surface in [Surface::Grpc, Surface::Rest] {
                let row = self
                    .open(
                        &linkd,
                        scenario,
                        surface.name(),
                        &make(surface),
                        (peak / 2.0).max(10.0),
                    )
                    .await;
                self.report.push(row);
            }
        }
        if self.args.wants("connections") {
            self.connections(&linkd, &url, &clients, &tenant).await?;
        }
        if self.args.wants("flow") {
            eprintln!("whole link flow (create, claim, credentials, GetLink)");
            let call = calls::link_flow(&clients);
            for &c in concurrencies.iter().filter(|c| **c <= 8) {
                let row = self.closed(&linkd, "link flow", "gRPC", &call, c).await;
                self.report.push(row);
                if let Some(script) = scripts.get("link flow") {
                    let row = self.pgbench("link flow", script, &url, c)?;
                    self.report.push(row);
                }
            }
        }
        if self.args.wants("oauth") {
            eprintln!("OAuth: authorize, login, consent, token");
            let call = calls::oauth(&clients);
            for &c in concurrencies.iter().filter(|c| **c <= 8) {
                let row = self
                    .closed(&linkd, "OAuth authorize+exchange", "REST", &call, c)
                    .await;
                self.report.push(row);
            }
        }
        let (_, peak_rss) = stats::memory_mb(linkd.pid);
        self.report.peak_rss_mb = Some(peak_rss);
        Ok(())
    }

    /// Captures the statements of each call shape through pgcapture, on a
    /// linkd whose background work is quiet, and turns them into pgbench
    /// scripts.
    async fn capture(
        &mut self,
        url: &str,
        tenant: &Tenant,
    ) -> anyhow::Result<std::collections::HashMap<String, replay::Script>> {
        let proxy = pgcapture::Proxy::start(url).await?;
        let quiet = [
            ("LINKD_HEALTH_CHECK_INTERVAL", "1h"),
            ("LINKD_EXPIRY_INTERVAL", "1h"),
            ("LINKD_WEBHOOK_POLL_INTERVAL", "1h"),
            ("LINKD_WEBHOOK_QUEUE_STATS_INTERVAL", "1h"),
        ];
        let linkd = Linkd::start(&self.bin, &proxy.url, &self.key, "linkd-capture", &quiet).await?;
        let clients = Clients::connect(linkd.addr, tenant.clone(), 1).await?;
        let shapes: [(&str, Call); 4] = [
            (
                "CreateLink (1 op)",
                calls::create_link(&clients, Surface::Grpc, 1),
            ),
            (
                "CreateLink (3 ops)",
                calls::create_link(&clients, Surface::Grpc, 3),
            ),
            (
                "InitLinkSession",
                calls::init_session(&clients, Surface::Grpc),
            ),
            ("link flow", calls::link_flow(&clients)),
        ];
        let mut scripts = std::collections::HashMap::new();
        eprintln!("capturing each call's statements for pgbench");
        for (name, call) in shapes {
            let mut trips = Vec::new();
            // The last of three: warm connections, the key cached.
            for n in 0..3 {
                proxy.settle().await;
                let before = proxy.round_trips();
                call(n).await.with_context(|| format!("{name} (capture)"))?;
                proxy.settle().await;
                trips = proxy.trips_since(before);
            }
            match replay::script(&trips, &tenant.known_ids) {
                Ok(script) => {
                    eprintln!(
                        "  {name}: {} round trips ({} statements' trips, {} pings)",
                        trips.len(),
                        script.round_trips,
                        script.pings
                    );
                    self.report
                        .round_trips
                        .insert(name.to_string(), trips.len());
                    scripts.insert(name.to_string(), script);
                }
                Err(err) => eprintln!("  {name}: cannot replay: {err:#}"),
            }
        }
        Ok(scripts)
    }

    async fn connections(
        &mut self,
        linkd: &Linkd,
        url: &str,
        clients: &Clients,
        tenant: &Tenant,
    ) -> anyhow::Result<()> {
        let rows = self.args.connections;
        eprintln!("connections: seeding {rows} rows");
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await?;
        let app_id = tenant.known_ids[1];
        sqlx::query(
            "INSERT INTO connections (id, organization_id, environment, client_app_id, integration_id, status,
                 client_reference_id, created_at, updated_at, authenticated_at)
             SELECT gen_random_uuid(), $1, 'sandbox', $2, 'onlyfans', 'active', 'ref_' || g,
                    now() - make_interval(secs => g), now(), now()
             FROM generate_series(1, $3) g",
        )
        .bind(tenant.organization_id)
        .bind(app_id)
        .bind(rows)
        .execute(&db)
        .await?;
        sqlx::query("VACUUM ANALYZE connections")
            .execute(&db)
            .await?;
        let (first_id,): (uuid::Uuid,) = sqlx::query_as(
            "SELECT id FROM connections WHERE organization_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(tenant.organization_id)
        .fetch_one(&db)
        .await?;
        // A page token near the end, as paging there would have produced it.
        let (deep_at, deep_id): (chrono::DateTime<chrono::Utc>, uuid::Uuid) = sqlx::query_as(
            "SELECT created_at, id FROM connections WHERE organization_id = $1
             ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1",
        )
        .bind(tenant.organization_id)
        .bind(rows - 20)
        .fetch_one(&db)
        .await?;
        let token = linkd::kernel::paging::encode(
            linkd::kernel::paging::Cursor {
                created_at: deep_at,
                id: deep_id,
            },
            "\u{0}",
        );
        let c = 8;
        let get = calls::get_connection(
            clients,
            linkd::kernel::ids::ConnectionId::from_uuid(first_id).to_string(),
        );
        let row = self.closed(linkd, "GetConnection", "gRPC", &get, c).await;
        self.report.push(row);
        let first = self
            .closed(
                linkd,
                "ListConnections first page",
                "gRPC",
                &calls::list_connections(clients, None),
                c,
            )
            .await;
        let deep = self
            .closed(
                linkd,
                &format!("ListConnections page at {rows} rows"),
                "gRPC",
                &calls::list_connections(clients, Some(token)),
                c,
            )
            .await;
        self.report.deep_over_first = Some(first.p50_ms.max(1e-6).recip() * deep.p50_ms);
        self.report.push(first);
        self.report.push(deep);
        Ok(())
    }

    /// Deliveries from a backlog with 1 and 2 replicas, the claim cost at 1k
    /// and `--claim-backlog` due events, and what a destination that never
    /// answers costs a healthy one.
    async fn webhooks(&mut self) -> anyhow::Result<()> {
        let backlog = self.args.backlog;
        let big = format!(
            "1 replica, {}k due (first 10 s)",
            self.args.claim_backlog / 1000
        );
        let window = Some(Duration::from_secs(10));
        let runs: [(&str, i64, usize, Option<Duration>); 4] = [
            ("1 replica", backlog, 1, None),
            ("2 replicas", backlog, 2, None),
            ("1 replica, 1k due", 1_000, 1, None),
            (&big, self.args.claim_backlog, 1, window),
        ];
        for (label, events, replicas, window) in runs {
            let row = self.backlog(label, events, replicas, window, 0).await?;
            self.report.push(row);
        }
        // 1,000 events due first for a receiver that accepts and never
        // answers (each attempt holds a slot for LINKD_WEBHOOK_TIMEOUT), then
        // the healthy tenant's: its rate over 20 s, against the 1k run above.
        let row = self
            .backlog(
                "healthy receiver behind a hanging one (first 20 s)",
                1_000,
                1,
                Some(Duration::from_secs(20)),
                1_000,
            )
            .await?;
        self.report.push(row);
        Ok(())
    }

    /// One backlog run: `events` due for a healthy receiver (after `hanging`
    /// due for one that never answers), delivered by `replicas` replicas
    /// until drained, or for `window`.
    async fn backlog(
        &mut self,
        label: &str,
        events: i64,
        replicas: usize,
        window: Option<Duration>,
        hanging: i64,
    ) -> anyhow::Result<Row> {
        eprintln!("webhooks: {label}");
        let url = self.db.fresh("linkd_bench_hooks").await?;
        let receiver = webhooks::Receiver::start().await?;
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy(&url)?;
        let _hang = if hanging > 0 {
            let hang = webhooks::Hanging::start().await?;
            let stuck =
                stack::create_tenant(&self.bin, &url, &self.key, calls::REDIRECT_URI, &hang.url())?;
            webhooks::seed_backlog(&db, stuck.organization_id, hanging).await?;
            Some(hang)
        } else {
            None
        };
        // Migrates the database (when nothing did yet) and makes the tenant.
        let tenant = self.tenant(&url, &receiver)?;
        webhooks::seed_backlog(&db, tenant.organization_id, events).await?;
        db.close().await;
        let seeded = Instant::now();
        let allow = [("LINKD_WEBHOOK_ALLOW", "127.0.0.1")];
        let pg0 = stats::postgres_cpu_seconds();
        let mut running = Vec::new();
        for r in 0..replicas {
            let log = format!("linkd-hooks-{r}");
            running.push(Linkd::start(&self.bin, &url, &self.key, &log, &allow).await?);
        }
        let started = Instant::now();
        let timeout = window.unwrap_or(Duration::from_secs(120));
        let drained = webhooks::wait_for(&receiver, events as usize, started, timeout).await;
        let elapsed = drained.unwrap_or(started.elapsed());
        let delays = receiver.delays_after(seeded);
        let cpu: f64 = running.iter().map(|l| stats::cpu_seconds(l.pid)).sum();
        let row = Row::webhooks(
            label,
            events,
            replicas,
            receiver.delivered(),
            elapsed,
            drained.is_some() || window.is_some(),
            &delays,
        )
        .with_cpu(Some(cpu), stats::postgres_cpu_seconds() - pg0)
        .with_memory(running[0].pid);
        eprintln!("  {}", row.line());
        Ok(row)
    }
}

/// One measured run: its latencies, and the CPU linkd and Postgres spent on it.
async fn measure(
    linkd: &Linkd,
    scenario: &str,
    surface: &str,
    mode: &str,
    concurrency: usize,
    run: impl Future<Output = load::Sample>,
) -> Row {
    let (cpu0, pg0) = (stats::cpu_seconds(linkd.pid), stats::postgres_cpu_seconds());
    let sample = run.await;
    let row = Row::measured(scenario, surface, mode, concurrency, &sample)
        .with_cpu(
            Some(stats::cpu_seconds(linkd.pid) - cpu0),
            stats::postgres_cpu_seconds() - pg0,
        )
        .with_memory(linkd.pid);
    eprintln!("  {}", row.line());
    row
}
