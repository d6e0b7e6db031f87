//! What the benchmark runs against: a durable local Postgres (or the server
//! in `--database-url`), the release `linkd` binary started as real
//! processes, and tenants made with its own admin CLI.

use anyhow::{Context, bail};
use linkd::ops::local_postgres::{Durability, LocalPostgres};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ sits in the workspace")
        .to_path_buf()
}

/// Where the benchmark keeps its cluster, logs and results.
pub fn output_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("bench")
}

/// Builds the release `linkd` binary (a no-op when it is up to date).
pub fn build_linkd() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        // The whole workspace, so features resolve as for the benchmark itself
        // and neither build undoes the other.
        .args([
            "build",
            "--release",
            "--quiet",
            "--workspace",
            "--bin",
            "linkd",
        ])
        .status()
        .context("running cargo build for linkd")?;
    if !status.success() {
        bail!("building linkd failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(target.join("release").join("linkd"))
}

/// The Postgres server of the run.
pub struct Database {
    _local: Option<LocalPostgres>,
    admin_url: String,
    url_of: Box<dyn Fn(&str) -> String + Send + Sync>,
}

impl Database {
    /// A durable local cluster under the output directory (fsync on, as in
    /// production), or the server behind `url`.
    pub fn start(url: Option<&str>) -> anyhow::Result<Database> {
        match url {
            Some(url) => {
                let base = url::Url::parse(url).context("--database-url is not a URL")?;
                let admin = {
                    let mut u = base.clone();
                    u.set_path("postgres");
                    u.to_string()
                };
                Ok(Database {
                    _local: None,
                    admin_url: admin,
                    url_of: Box::new(move |db| {
                        let mut u = base.clone();
                        u.set_path(db);
                        u.to_string()
                    }),
                })
            }
            None => {
                let root = output_dir().join("postgres");
                let local = LocalPostgres::start(&root, Durability::Durable)?;
                let admin_url = local.url("postgres");
                let template = local.url("TEMPLATE_DB");
                Ok(Database {
                    _local: Some(local),
                    admin_url,
                    url_of: Box::new(move |db| template.replace("TEMPLATE_DB", db)),
                })
            }
        }
    }

    /// A new, empty database (dropped first if a previous run left it).
    pub async fn fresh(&self, name: &str) -> anyhow::Result<String> {
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        Ok((self.url_of)(name))
    }
}

/// A running linkd process.
pub struct Linkd {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

const BENCH_RATE_LIMIT: &str = "1000000/s,burst=10000000";

impl Linkd {
    /// Starts `bin` on `db_url` (migrating it) and waits until it is ready.
    pub async fn start(
        bin: &Path,
        db_url: &str,
        key: &str,
        log_name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Linkd> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = std::fs::File::create(output_dir().join(format!("{log_name}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.env("DATABASE_URL", db_url)
            .env("LINKD_ENCRYPTION_KEY", key)
            .env("LINKD_LISTEN", addr.to_string())
            .env("LINKD_LOG", "warn")
            .env("LINKD_LOG_FORMAT", "json")
            .env("LINKD_DB_MAX_CONNECTIONS", "32")
            // On, so every call passes the buckets, but never reached: the
            // bench measures what they cost, not where they stop.
            .env("LINKD_RATE_LIMIT_API_KEY", BENCH_RATE_LIMIT)
            .env("LINKD_RATE_LIMIT_CLIENT_APP", BENCH_RATE_LIMIT)
            .env("LINKD_RATE_LIMIT_FLOW", BENCH_RATE_LIMIT)
            .env("LINKD_RATE_LIMIT_CLIENT_IP", BENCH_RATE_LIMIT)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(log);
        for (name, value) in env {
            cmd.env(name, value);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let mut linkd = Linkd { child, addr, pid };
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = linkd.child.try_wait() {
                bail!("linkd exited at start ({status}); see {log_name}.log");
            }
            let ready = client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(linkd);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("linkd was not ready within 30 s; see {log_name}.log");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Linkd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tenant made by `linkd admin create-app`.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub api_key: String,
    pub client_app_id: String,
    pub client_secret: String,
    pub organization_id: uuid::Uuid,
    /// Ids that exist before any benchmarked call (never fresh in a replay).
    pub known_ids: Vec<uuid::Uuid>,
}

pub fn create_tenant(
    bin: &Path,
    db_url: &str,
    key: &str,
    redirect_uri: &str,
    webhook_url: &str,
) -> anyhow::Result<Tenant> {
    let out = Command::new(bin)
        .env("DATABASE_URL", db_url)
        .env("LINKD_ENCRYPTION_KEY", key)
        .env("LINKD_LOG", "warn")
        .args([
            "admin",
            "create-app",
            "--name",
            "Bench",
            "--environment",
            "sandbox",
        ])
        .args([
            "--redirect-uri",
            redirect_uri,
            "--webhook-url",
            webhook_url,
            "--json",
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "linkd admin create-app failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let created: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let field = |name: &str| -> anyhow::Result<String> {
        created[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("create-app printed no {name}"))
    };
    use linkd::kernel::ids::{ApiKeyId, ClientAppId, OrganizationId};
    let bad = |id: &str| format!("bad id {id}");
    let organization_id = OrganizationId::parse(&field("organizationId")?)
        .with_context(|| bad("organizationId"))?
        .uuid();
    let client_app_id = field("clientAppId")?;
    Ok(Tenant {
        api_key: field("apiKey")?,
        client_secret: field("clientSecret")?,
        organization_id,
        known_ids: vec![
            organization_id,
            ClientAppId::parse(&client_app_id)
                .with_context(|| bad(&client_app_id))?
                .uuid(),
            ApiKeyId::parse(&field("apiKeyId")?)
                .with_context(|| bad("apiKeyId"))?
                .uuid(),
        ],
        client_app_id,
    })
}
