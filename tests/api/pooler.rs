//! Behind PgBouncer in transaction-pooling mode (Debian's `pgbouncer`, 1.18:
//! no prepared-statement tracking), with fewer server connections than the
//! linkd processes' pools together: three `linkd` processes set to
//! `LINKD_DB_POOLER=transaction` migrate an empty database at once, take
//! link intents, run Link sessions end to end and deliver every webhook
//! once, while Postgres sees no more linkd connections than the pooler's.

use crate::helpers::{
    Page, TestApp, TestTenant, database_url, empty_database, serve_args, test_key,
};
use crate::process::{Running, linkd, spawn_linkd};
use crate::webhooks::{Receiver, hooked_tenant};
use linkd::kernel::crypto::Cipher;
use linkd::kernel::db::{PoolSettings, Pooler};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use url::Url;

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";
/// Server connections PgBouncer opens to Postgres, in all.
const SERVER_CONNECTIONS: usize = 4;
/// Each linkd's pool: together 3 × 4 = 12 client connections on 4 servers.
const LINKD_POOL: usize = 4;

/// Installs Debian's pgbouncer when missing and we may (as `.ci/run` does).
fn ensure_pgbouncer() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        if !Path::new(PGBOUNCER).exists() && nix::unistd::Uid::effective().is_root() {
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-q", "pgbouncer"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
        }
        if Path::new(PGBOUNCER).exists() {
            Ok(())
        } else {
            Err(format!(
                "the pooler test needs {PGBOUNCER}: run `apt-get install pgbouncer` (or .ci/run)"
            ))
        }
    });
    if let Err(message) = ready {
        panic!("{message}");
    }
}

/// A PgBouncer in front of the test Postgres, stopped on drop.
struct PgBouncer {
    child: Child,
    port: u16,
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PgBouncer {
    fn start() -> PgBouncer {
        ensure_pgbouncer();
        let server = Url::parse(&database_url("postgres")).unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("pgbouncer-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        // As operators run it for linkd: transaction pooling, a server pool
        // smaller than the clients' pools, nothing linkd-specific.
        let config = format!(
            "[databases]\n\
             * = host={host} port={server_port} user={user} password={password}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = any\n\
             pool_mode = transaction\n\
             default_pool_size = {SERVER_CONNECTIONS}\n\
             max_db_connections = {SERVER_CONNECTIONS}\n\
             reserve_pool_size = 0\n\
             max_client_conn = 200\n\
             logfile = {log}\n",
            host = server.host_str().unwrap(),
            server_port = server.port().unwrap_or(5432),
            user = server.username(),
            password = server.password().unwrap_or(""),
            log = dir.join("pgbouncer.log").display(),
        );
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(&ini, config).unwrap();
        let mut cmd = Command::new(PGBOUNCER);
        cmd.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null());
        // PgBouncer refuses to run as root.
        if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            for path in [&dir, &ini] {
                std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .unwrap();
            }
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let child = cmd.spawn().expect("starting pgbouncer");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "pgbouncer did not listen: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PgBouncer { child, port }
    }

    /// `direct`'s database, through this pooler.
    fn url(&self, direct: &str) -> String {
        let mut url = Url::parse(direct).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }
}

fn replicas(pooled_url: &str) -> Vec<Running> {
    (0..3)
        .map(|_| {
            let mut cmd = linkd();
            cmd.env("DATABASE_URL", pooled_url)
                .env("LINKD_DB_POOLER", "transaction")
                .env("LINKD_DB_MAX_CONNECTIONS", LINKD_POOL.to_string())
                .env("LINKD_DB_ACQUIRE_TIMEOUT", "30s")
                .env("LINKD_ENCRYPTION_KEY", test_key().to_base64())
                .env("LINKD_WEBHOOK_ALLOW", "127.0.0.1")
                .env("LINKD_WEBHOOK_POLL_INTERVAL", "100ms")
                .env("LINKD_LOG", "warn");
            spawn_linkd(cmd)
        })
        .collect()
}

/// Most linkd connections Postgres held at once, sampled until `done`.
fn watch_server_connections(
    direct_url: String,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        // One connection of its own (a pool might open a second one, which
        // would count). Only client backends count: an autovacuum worker
        // on this database is listed too.
        let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&direct_url)
            .await
            .unwrap();
        let mut most = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let now: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND backend_type = 'client backend'",
            )
            .fetch_one(&mut db)
            .await
            .unwrap();
            most = most.max(now);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        most
    })
}

/// `POST /v1/links` under the one Idempotency-Key the retries share.
async fn retry_link(app: &TestApp, tenant: &TestTenant, body: &Value) -> (StatusCode, Value) {
    let response = app
        .http
        .post(app.url("/v1/links"))
        .bearer_auth(&tenant.key)
        .header("Idempotency-Key", "pooled-retry")
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn three_linkd_processes_share_a_transaction_pooler_with_fewer_server_connections() {
    let bouncer = PgBouncer::start();
    let direct_url = empty_database().await;
    let pooled_url = bouncer.url(&direct_url);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_server_connections(direct_url.clone(), done.clone());

    // Three processes migrate the empty database at once, through the pooler.
    let processes = tokio::task::spawn_blocking({
        let pooled_url = pooled_url.clone();
        move || replicas(&pooled_url)
    })
    .await
    .unwrap();
    // The tests' own set-up goes through the pooler too, in the same mode.
    let db = linkd::kernel::db::pool(
        &pooled_url,
        &PoolSettings {
            max_connections: LINKD_POOL as u32,
            acquire_timeout: Duration::from_secs(30),
            pooler: Pooler::Transaction,
        },
    )
    .unwrap();
    let api = linkd::ops::startup::api(
        db,
        linkd::ops::startup::load_catalog(None).unwrap(),
        Cipher::new(&test_key(), &[]),
        serve_args().settings("127.0.0.1:1".parse().unwrap()),
    )
    .unwrap();
    let apps: Vec<TestApp> = processes
        .iter()
        .map(|p| TestApp::elsewhere(([127, 0, 0, 1], p.port).into(), api.clone()))
        .collect();
    let receiver = Receiver::start().await;
    let tenant = hooked_tenant(&apps[0], &receiver.url("ok")).await;

    // 200 link intents at concurrency 16, spread over the processes.
    let links = futures_util::future::join_all((0..16).map(|worker| {
        let (apps, tenant) = (&apps, &tenant);
        async move {
            let mut made = Vec::new();
            for i in (worker..200).step_by(16) {
                let app = &apps[i % 3];
                let response = app
                    .http
                    .post(app.url("/v1/links"))
                    .bearer_auth(&tenant.key)
                    .json(&json!({ "integrationId": "verizon", "externalUserId": format!("user-{i}"),
                        "operations": [{ "resource": "mobileBillingStatement", "action": "read" }] }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap();
                assert_eq!(status, StatusCode::CREATED, "link {i}: {body}");
                made.push(body);
            }
            made
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();
    assert_eq!(links.len(), 200);

    // Retries with one Idempotency-Key race across the processes: one link
    // is made, the others hear the key is in use.
    let link_body = json!({ "integrationId": "verizon",
        "operations": [{ "resource": "mobileBillingStatement", "action": "read" }] });
    let answers = futures_util::future::join_all((0..12).map(|i| {
        let (apps, tenant, body) = (&apps, &tenant, &link_body);
        async move {
            let app = &apps[i % 3];
            let mut body = body.clone();
            if i % 4 == 3 {
                body["externalUserId"] = json!("someone-else");
            }
            let (status, answer) = retry_link(app, tenant, &body).await;
            (i, status, answer)
        }
    }))
    .await;
    let mut link_ids = std::collections::HashSet::new();
    for (i, status, body) in &answers {
        match status.as_u16() {
            201 if i % 4 != 3 => {
                link_ids.insert(body["linkId"].as_str().unwrap().to_owned());
            }
            409 | 422 => assert!(
                i % 4 == 3 || body["code"] == "IDEMPOTENCY_KEY_IN_USE",
                "{i}: {body}"
            ),
            _ => panic!("retry {i}: {status} {body}"),
        }
    }
    assert_eq!(link_ids.len(), 1, "{answers:?}");
    // Then, one at a time: a replay on each process, and a reuse with
    // another body refused.
    for (i, app) in apps.iter().enumerate() {
        let mut body = link_body.clone();
        if i == 2 {
            body["externalUserId"] = json!("someone-else");
        }
        let (status, answer) = retry_link(app, &tenant, &body).await;
        if i == 2 {
            assert_eq!(
                answer["code"], "IDEMPOTENCY_KEY_REUSED",
                "{status} {answer}"
            );
        } else {
            assert_eq!(status, StatusCode::CREATED, "{answer}");
            assert!(link_ids.contains(answer["linkId"].as_str().unwrap()));
        }
    }

    // 12 of them claimed and finished by the end user, each step on
    // another process than the one before.
    futures_util::future::join_all(links.iter().take(12).enumerate().map(|(i, link)| {
        let apps = &apps;
        async move {
            let flow = apps[i % 3].claim(link).await;
            let flow = crate::helpers::LinkFlow {
                app: &apps[(i + 1) % 3],
                token: flow.token,
            };
            let done = flow.login("user_good", "pass_good").await;
            assert_eq!(done["outcome"], "success", "link {i}: {done}");
        }
    }))
    .await;

    // 12 Link sessions run end to end the same way: init, pick, log in,
    // approve, each on a different process.
    futures_util::future::join_all((0..12).map(|i| {
        let (apps, tenant) = (&apps, &tenant);
        async move {
            let response = apps[i % 3].init_session(tenant, json!({})).await;
            assert_eq!(response.status(), StatusCode::OK);
            let session: Value = response.json().await.unwrap();
            let url = session["url"].as_str().unwrap();
            let on = |n: usize| Page::from_url(&apps[(i + n) % 3], url);
            on(1).pick("onlyfans").await;
            let flow = on(2).login(&format!("member_{i}"), "pass_good").await;
            assert_eq!(flow["step"], "authorization", "session {i}: {flow}");
            let done = on(3).approve().await;
            assert_eq!(done["outcome"], "success", "session {i}: {done}");
        }
    }))
    .await;

    // Every event is delivered, each exactly once (a webhook-id seen twice
    // would be a delivery two processes both claimed), correctly signed.
    let expected = 12 + 12; // link.completed ×12, connection.created ×12
    receiver
        .wait_for("ok", expected, Duration::from_secs(60))
        .await;
    // Time for a duplicate to arrive, if one were coming.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = receiver.at("ok");
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for delivery in &got {
        assert!(delivery.verifies_with(&tenant.webhook_secret));
        *by_id
            .entry(delivery.headers["webhook-id"].to_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(by_id.len(), expected, "{by_id:?}");
    assert!(by_id.values().all(|n| *n == 1), "{by_id:?}");
    let mut types: HashMap<String, usize> = HashMap::new();
    for delivery in &got {
        *types
            .entry(delivery.json()["type"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(types.get("link.completed"), Some(&12), "{types:?}");
    assert_eq!(types.get("connection.created"), Some(&12), "{types:?}");

    // And Postgres never saw more linkd connections than the pooler's.
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.await.unwrap();
    assert!(
        (1..=SERVER_CONNECTIONS as i64).contains(&most),
        "Postgres held {most} linkd connections; the pooler has {SERVER_CONNECTIONS}"
    );
    for process in processes {
        process.sigterm();
        let (status, stderr) = tokio::task::spawn_blocking(move || process.wait())
            .await
            .unwrap();
        assert!(status.success(), "{stderr:?}");
        let errors: Vec<_> = stderr
            .iter()
            .filter(|line| line.contains("\"ERROR\""))
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
    }
}
