//! The `linkd` binary as operators run it: configuration errors, the admin
//! CLI, graceful shutdown, the local Postgres, and trace propagation.

use crate::helpers::{fresh_database, spawn_app_on, test_key};
use linkd::pb::ListClientAppsRequest;
use linkd::pb::client_app_service_client::ClientAppServiceClient;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tonic::transport::Channel;

pub fn linkd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_linkd"));
    for (var, _) in std::env::vars() {
        if var.starts_with("LINKD_") || var == "DATABASE_URL" || var.starts_with("OTEL_") {
            cmd.env_remove(var);
        }
    }
    cmd.env("LINKD_LOG_FORMAT", "json");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running linkd")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn invalid_configuration_stops_start_up_with_one_line_naming_the_setting() {
    let secret_looking = "c2VjcmV0LXRoYXQtaXMtbm90LTMyLWJ5dGVz";
    /// Environment, arguments, and what the one error line must say.
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("LINKD_LISTEN", "not-an-address")],
            vec![],
            "--listen / LINKD_LISTEN",
        ),
        (
            vec![],
            vec!["--listen", "1.2.3.4:99999"],
            "--listen / LINKD_LISTEN",
        ),
        (
            vec![("LINKD_PUBLIC_URL", "ftp://x")],
            vec![],
            "--public-url / LINKD_PUBLIC_URL",
        ),
        (
            vec![("DATABASE_URL", "mysql://x")],
            vec![],
            "--database-url / DATABASE_URL",
        ),
        (
            vec![("LINKD_ENCRYPTION_KEY", secret_looking)],
            vec![],
            "--encryption-key / LINKD_ENCRYPTION_KEY",
        ),
        (
            vec![("DATABASE_URL", "postgres://u@127.0.0.1:1/db")],
            vec![],
            "LINKD_ENCRYPTION_KEY is required with DATABASE_URL",
        ),
        (
            vec![("LINKD_SHUTDOWN_GRACE_PERIOD", "soon")],
            vec![],
            "--shutdown-grace-period / LINKD_SHUTDOWN_GRACE_PERIOD",
        ),
        (
            vec![("LINKD_EVENT_RETENTION", "5m")],
            vec![],
            "--event-retention / LINKD_EVENT_RETENTION",
        ),
        (vec![("LINKD_LOG", "linkd=loud")], vec![], "LINKD_LOG"),
    ];
    for (env, args, expected) in cases {
        let out = run(linkd().envs(env.clone()).args(&args));
        let err = stderr(&out);
        assert!(!out.status.success(), "{env:?} {args:?} should fail");
        assert!(
            err.contains(expected),
            "{env:?}: expected {expected:?} in {err:?}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");
        assert!(!err.contains(secret_looking), "never echoes the key");
    }
}

#[test]
fn an_invalid_catalog_stops_start_up_naming_file_and_entry() {
    let dir = tempfile::tempdir().unwrap();
    let builtin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog/tmobile.json");
    let broken = std::fs::read_to_string(builtin).unwrap().replacen(
        "\"action\": \"write\"",
        "\"action\": \"erase\"",
        1,
    );
    std::fs::write(dir.path().join("tmobile.json"), broken).unwrap();
    let out = run(linkd()
        .env("LINKD_CATALOG_DIR", dir.path())
        .env("LINKD_DATA_DIR", dir.path().join("data")));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("tmobile.json"), "{err}");
    assert!(
        err.contains("capabilities[1] (paymentMethod erase)"),
        "{err}"
    );
    assert!(err.contains("read or write"), "{err}");
    assert!(
        !dir.path().join("data/pgdata").exists(),
        "fails before touching the database"
    );
}

#[test]
fn gen_key_prints_a_usable_key() {
    let out = run(linkd().arg("gen-key"));
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    assert!(
        key.trim()
            .parse::<linkd::kernel::crypto::EncryptionKey>()
            .is_ok()
    );
}

pub fn admin(db_url: &str, args: &[&str]) -> Output {
    run(linkd()
        .env("DATABASE_URL", db_url)
        .env("LINKD_ENCRYPTION_KEY", test_key().to_base64())
        .arg("admin")
        .args(args))
}

#[tokio::test]
async fn admin_cli_creates_apps_and_keys_that_work_and_revokes_them() {
    let db = fresh_database().await;
    let out = admin(
        &db,
        &[
            "create-app",
            "--name",
            "Acme",
            "--environment",
            "sandbox",
            "--redirect-uri",
            "https://acme.example/cb",
            "--redirect-uri",
            "acme://cb",
            "--webhook-url",
            "https://acme.example/hooks",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["apiKey"].as_str().unwrap();
    assert!(key.starts_with("lk_sandbox_"));
    assert!(
        created["webhookSecret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    assert!(created["clientAppId"].as_str().unwrap().starts_with("app_"));
    let org = created["organizationId"].as_str().unwrap();

    let mut args = crate::helpers::serve_args();
    args.api_key_cache_ttl = Duration::from_secs(1);
    let app = crate::helpers::spawn_configured(&db, crate::helpers::ACQUIRE_TIMEOUT, args).await;
    let apps: serde_json::Value = app.get("/v1/client-apps", key).await.json().await.unwrap();
    assert_eq!(apps["clientApps"][0]["id"], created["clientAppId"]);
    assert_eq!(
        apps["clientApps"][0]["redirectUris"],
        serde_json::json!(["https://acme.example/cb", "acme://cb"])
    );

    // Secret rotation from the CLI: a new webhook secret (the old one keeps
    // signing for the grace period) and a new OAuth client secret that
    // replaces the old one at once.
    let app_id = created["clientAppId"].as_str().unwrap();
    let rotated = admin(
        &db,
        &["rotate-webhook-secret", app_id, "--grace", "1h", "--json"],
    );
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let rotated: serde_json::Value = serde_json::from_slice(&rotated.stdout).unwrap();
    let new_webhook_secret = rotated["webhookSecret"].as_str().unwrap();
    assert!(new_webhook_secret.starts_with("whsec_"));
    assert_ne!(rotated["webhookSecret"], created["webhookSecret"]);
    let old_client_secret = created["clientSecret"].as_str().unwrap();
    let client_rotated = admin(&db, &["rotate-client-secret", app_id, "--json"]);
    assert!(
        client_rotated.status.success(),
        "{}",
        stderr(&client_rotated)
    );
    let client_rotated: serde_json::Value = serde_json::from_slice(&client_rotated.stdout).unwrap();
    let new_client_secret = client_rotated["clientSecret"].as_str().unwrap();
    assert!(new_client_secret.starts_with("lcs_") && new_client_secret != old_client_secret);
    let token_with = |secret: &str| {
        app.http
            .post(app.url("/v3/oauth/token"))
            .basic_auth(app_id, Some(secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", "lac_unknown"),
            ])
            .send()
    };
    assert_eq!(
        token_with(old_client_secret).await.unwrap().status(),
        reqwest::StatusCode::UNAUTHORIZED,
        "the old client secret no longer authenticates"
    );
    let with_new = token_with(new_client_secret).await.unwrap();
    assert_eq!(with_new.status(), reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(
        with_new.json::<serde_json::Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    let missing = admin(
        &db,
        &[
            "rotate-webhook-secret",
            "app_0190aaaaaaaa7aaa8aaaaaaaaaaaaaaa",
        ],
    );
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no client app"),
        "{}",
        stderr(&missing)
    );

    let listed = admin(&db, &["list-apps", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["clientAppId"], created["clientAppId"]);

    let out = admin(
        &db,
        &[
            "create-key",
            "--organization",
            org,
            "--environment",
            "production",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let prod: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let prod_key = prod["apiKey"].as_str().unwrap();
    assert!(prod_key.starts_with("lk_production_"));
    let prod_apps: serde_json::Value = app
        .get("/v1/client-apps", prod_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        prod_apps["clientApps"],
        serde_json::json!([]),
        "the sandbox app is not visible to production"
    );

    let out = admin(&db, &["revoke-key", created["apiKeyId"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The server trusts a verified key for LINKD_API_KEY_CACHE_TTL (1 s here).
    crate::auth::refused_within(&app, key, Duration::from_secs(1)).await;
    let again = admin(&db, &["revoke-key", created["apiKeyId"].as_str().unwrap()]);
    assert!(!again.status.success());

    let bad = admin(
        &db,
        &[
            "create-app",
            "--name",
            "Bad",
            "--environment",
            "sandbox",
            "--redirect-uri",
            "javascript:alert(1)",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("redirect_uris[0]"),
        "{}",
        stderr(&bad)
    );
    let unknown_org = admin(
        &db,
        &[
            "create-key",
            "--organization",
            "org_0190aaaaaaaa7aaa8aaaaaaaaaaaaaaa",
            "--environment",
            "sandbox",
        ],
    );
    assert!(
        stderr(&unknown_org).contains("does not exist"),
        "{}",
        stderr(&unknown_org)
    );
}

/// A running `linkd serve` child process and the lines it printed.
pub struct Running {
    pub child: Child,
    pub port: u16,
    stdout: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// A test that fails midway must not leave its linkd running.
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn spawn_linkd(mut cmd: Command) -> Running {
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = stderr.clone();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let mut printed = Vec::new();
    let port = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| {
                panic!(
                    "linkd did not start: {printed:?} {:?}",
                    stderr.lock().unwrap()
                )
            });
        if let Some(addr) = line.strip_prefix("linkd listening on ") {
            let addr = addr.split_whitespace().next().unwrap();
            break addr.rsplit(':').next().unwrap().parse().unwrap();
        }
        printed.push(line);
    };
    let stdout = {
        let (tx2, rx2) = std::sync::mpsc::channel();
        for line in printed {
            tx2.send(line).unwrap();
        }
        std::thread::spawn(move || {
            while let Ok(line) = rx.recv() {
                if tx2.send(line).is_err() {
                    break;
                }
            }
        });
        rx2
    };
    Running {
        child,
        port,
        stdout,
        stderr,
    }
}

impl Running {
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    pub fn wait(mut self) -> (std::process::ExitStatus, Vec<String>) {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.stderr.lock().unwrap().clone());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("linkd did not exit: {:?}", self.stderr.lock().unwrap());
    }
}

/// SIGTERM with a call in flight: health flips to NOT_SERVING first, the
/// call completes, the process exits 0.
#[tokio::test]
async fn sigterm_drains_in_flight_calls_and_exits_zero() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let db = fresh_database().await;
    let helper = spawn_app_on(&db, crate::helpers::ACQUIRE_TIMEOUT).await;
    let tenant = helper
        .create_tenant(linkd::kernel::tenant::Environment::Sandbox)
        .await;
    let mut cmd = linkd();
    cmd.env("DATABASE_URL", &db)
        .env("LINKD_ENCRYPTION_KEY", test_key().to_base64())
        .env("LINKD_SHUTDOWN_DRAIN_DELAY", "3s")
        .env("LINKD_SHUTDOWN_GRACE_PERIOD", "20s")
        .env("LINKD_DB_ACQUIRE_TIMEOUT", "20s");
    let server = spawn_linkd(cmd);
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let mut apps = ClientAppServiceClient::new(channel);
    apps.list_client_apps(crate::helpers::with_key(
        ListClientAppsRequest {},
        &tenant.key,
    ))
    .await
    .unwrap();

    // Hold a lock that the call's read of the apps must wait for: the call
    // is now in flight for as long as we keep it.
    let mut blocker = helper.api.db().begin().await.unwrap();
    sqlx::query("LOCK TABLE client_apps IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let key = tenant.key.clone();
    let mut in_flight_client = apps.clone();
    let in_flight = tokio::spawn(async move {
        in_flight_client
            .list_client_apps(crate::helpers::with_key(ListClientAppsRequest {}, &key))
            .await
    });
    // In flight: its read waits on the lock.
    crate::helpers::wait_for_lock_wait(helper.api.db(), "%FROM client_apps%").await;
    assert!(!in_flight.is_finished());

    server.sigterm();
    let signalled = std::time::Instant::now();
    // Within the drain delay the server still answers, and reports
    // NOT_SERVING from the moment shutdown starts.
    let mut status = ServingStatus::Serving;
    while signalled.elapsed() < Duration::from_millis(2500) {
        status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status,
        ServingStatus::NotServing,
        "NOT_SERVING once shutdown starts"
    );
    // Still accepting new connections during the delay (a mesh may still
    // route some here)...
    let address = format!("127.0.0.1:{}", server.port);
    if signalled.elapsed() < Duration::from_millis(2500) {
        tokio::net::TcpStream::connect(&address)
            .await
            .expect("new connections are accepted during the drain delay");
    }
    // ...and once it has passed the listener is closed, while the call in
    // flight still waits.
    loop {
        if tokio::net::TcpStream::connect(&address).await.is_err() {
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "the listener stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "closed before the drain delay: {:?}",
        signalled.elapsed()
    );
    assert!(!in_flight.is_finished(), "still waiting on the lock");
    blocker.rollback().await.unwrap();
    let reply = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert_eq!(reply.into_inner().client_apps.len(), 1);

    let (status, _) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// With no DATABASE_URL: first start initialises a local cluster, creates a
/// sandbox tenant and prints a working key; SIGTERM stops that cluster; a
/// second start reuses it without a new banner.
#[tokio::test]
async fn without_database_url_linkd_runs_and_stops_its_own_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = spawn_linkd({
        let mut cmd = linkd();
        cmd.env("LINKD_DATA_DIR", &data_dir);
        cmd
    });
    let mut banner = Vec::new();
    while let Ok(line) = server.stdout.recv_timeout(Duration::from_millis(200)) {
        banner.push(line);
    }
    let banner = banner.join("\n");
    let key = banner
        .split_whitespace()
        .find(|w| w.starts_with("lk_sandbox_"))
        .unwrap_or_else(|| panic!("no key printed: {banner}"))
        .to_string();
    assert!(banner.contains("grpcurl -plaintext"), "{banner}");
    assert!(banner.contains("curl -H"), "{banner}");
    // The suggested session call sends the JSON body the endpoint needs, and
    // that call works.
    assert!(
        banner.contains("-H 'Content-Type: application/json' -d '{}'"),
        "{banner}"
    );
    crate::helpers::install_crypto();
    let session = reqwest::Client::new()
        .post(format!("http://localhost:{}/v2/link/init", server.port))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), reqwest::StatusCode::OK);

    let mut apps = ClientAppServiceClient::new(server.channel().await);
    let listed = apps
        .list_client_apps(crate::helpers::with_key(ListClientAppsRequest {}, &key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.client_apps.len(), 1);
    let anonymous = apps
        .list_client_apps(ListClientAppsRequest {})
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);

    let pid_file = data_dir.join("pgdata/postmaster.pid");
    assert!(pid_file.exists(), "local Postgres is running");
    server.sigterm();
    let (status, _) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    for _ in 0..100 {
        if !pid_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pid_file.exists(), "local Postgres was stopped");

    let again = spawn_linkd({
        let mut cmd = linkd();
        cmd.env("LINKD_DATA_DIR", &data_dir);
        cmd
    });
    let mut printed = Vec::new();
    while let Ok(line) = again.stdout.recv_timeout(Duration::from_millis(200)) {
        printed.push(line);
    }
    assert!(
        !printed.iter().any(|l| l.contains("lk_sandbox_")),
        "no second sandbox: {printed:?}"
    );
    let mut apps = ClientAppServiceClient::new(again.channel().await);
    let listed = apps
        .list_client_apps(crate::helpers::with_key(ListClientAppsRequest {}, &key))
        .await
        .unwrap();
    assert_eq!(
        listed.into_inner().client_apps.len(),
        1,
        "same data, same key"
    );
    again.sigterm();
    let (status, _) = tokio::task::spawn_blocking(move || again.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// An OTLP/gRPC trace collector: records every exported span.
async fn start_collector() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<opentelemetry_proto::tonic::trace::v1::Span>,
) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };

    struct Collector(
        tokio::sync::mpsc::UnboundedSender<opentelemetry_proto::tonic::trace::v1::Span>,
    );

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            for resource in request.into_inner().resource_spans {
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        let _ = self.0.send(span);
                    }
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, rx)
}

/// Calls linkd over REST and gRPC, each with its own `traceparent`; returns
/// the trace and parent ids sent, and linkd's log lines after SIGTERM.
async fn traced_calls(mut cmd: Command) -> ([(&'static str, &'static str); 2], Vec<String>) {
    // Request lines are logged at debug.
    cmd.env("LINKD_LOG", "info,tower_http=debug");
    let server = spawn_linkd(cmd);
    let (rest_trace, rest_parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let (grpc_trace, grpc_parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");

    crate::helpers::install_crypto();
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/v1/client-apps", server.port))
        .header("traceparent", format!("00-{rest_trace}-{rest_parent}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    let mut apps = ClientAppServiceClient::new(server.channel().await);
    let mut request = tonic::Request::new(ListClientAppsRequest {});
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{grpc_trace}-{grpc_parent}-01").parse().unwrap(),
    );
    let _ = apps.list_client_apps(request).await;

    server.sigterm(); // flushes the span exporter on the way out
    let (status, logs) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    for trace in [rest_trace, grpc_trace] {
        let line = logs
            .iter()
            .find(|l| l.contains(trace))
            .unwrap_or_else(|| panic!("no log line with trace {trace}: {logs:#?}"));
        let parsed: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
        assert_eq!(parsed["span"]["trace_id"], trace);
    }
    ([(rest_trace, rest_parent), (grpc_trace, grpc_parent)], logs)
}

/// The caller's W3C `traceparent` (HTTP header or gRPC metadata) becomes the
/// parent of the request's span: visible in its log lines and exported by
/// OTLP to the configured collector.
#[tokio::test]
async fn traceparent_from_http_and_grpc_reaches_logs_and_otlp() {
    let db = fresh_database().await;
    let (collector, mut spans) = start_collector().await;
    let mut cmd = linkd();
    cmd.env("DATABASE_URL", &db)
        .env("LINKD_ENCRYPTION_KEY", test_key().to_base64())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"));
    let (traces, _) = traced_calls(cmd).await;

    let mut exported = Vec::new();
    while let Ok(span) = spans.try_recv() {
        exported.push((
            hex::encode(&span.trace_id),
            hex::encode(&span.parent_span_id),
            span.name,
        ));
    }
    for (trace, parent) in traces {
        assert!(
            exported
                .iter()
                .any(|(t, p, name)| t == trace && p == parent && name == "request"),
            "no exported request span in trace {trace} under {parent}: {exported:?}"
        );
    }
}

/// Without an exporter no OpenTelemetry layer runs (it would cost every call
/// for nothing), and log lines still carry the caller's trace id.
#[tokio::test]
async fn without_an_exporter_logs_still_carry_the_callers_trace_id() {
    let db = fresh_database().await;
    let mut cmd = linkd();
    cmd.env("DATABASE_URL", &db)
        .env("LINKD_ENCRYPTION_KEY", test_key().to_base64())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let (_, logs) = traced_calls(cmd).await;
    assert!(
        logs.iter()
            .any(|l| l.contains("finished processing request")),
        "request lines are logged at debug when asked: {logs:#?}"
    );
}

/// A database that cannot be reached stops start-up at once with one line:
/// the setting, the host, the cause; never the password in the URL.
#[test]
fn an_unreachable_database_is_one_line_naming_the_host_and_the_cause() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    // The cause, not a pool time-out: it did not wait on the pool (a wall
    // clock bound here failed on a loaded machine without saying more).
    let out = run(linkd()
        .env(
            "DATABASE_URL",
            format!("postgres://linkd:hunter2-secret@127.0.0.1:{port}/linkd"),
        )
        // Not the default port, which something else may hold.
        .env("LINKD_LISTEN", "127.0.0.1:0")
        .env("LINKD_ENCRYPTION_KEY", test_key().to_base64()));
    assert!(!out.status.success());
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "cannot reach the database (DATABASE_URL: host 127.0.0.1, port {port}, database linkd): connection refused"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2-secret"), "{err}");
    assert!(!err.contains("pool timed out"), "{err}");
}

/// `linkd --help` lists the commands and the global options only; each
/// command's help starts with its own options; a boolean option says which
/// values it takes.
#[test]
fn help_shows_the_commands_and_each_commands_own_options_first() {
    let top = run(linkd().arg("--help"));
    assert!(top.status.success());
    let top = String::from_utf8_lossy(&top.stdout).into_owned();
    for expected in [
        "Commands:",
        "serve",
        "admin",
        "Global options:",
        "--database-url",
        "linkd serve --help",
    ] {
        assert!(top.contains(expected), "{expected} missing from {top}");
    }
    assert!(
        !top.contains("--listen"),
        "serve options belong to `serve --help`: {top}"
    );

    let serve = run(linkd().args(["serve", "--help"]));
    let serve = String::from_utf8_lossy(&serve.stdout).into_owned();
    let own = serve
        .find("Serve options:")
        .expect("a Serve options heading");
    let global = serve
        .find("Global options:")
        .expect("a Global options heading");
    assert!(own < global, "{serve}");
    assert!(serve.find("--listen").unwrap() < global);
    assert!(
        serve.contains("--oauth-require-pkce <true|false>"),
        "{serve}"
    );

    let admin = run(linkd().args(["admin", "set-branding", "--help"]));
    let admin = String::from_utf8_lossy(&admin.stdout).into_owned();
    assert!(
        admin.find("--accent-color").unwrap() < admin.find("Global options:").unwrap(),
        "{admin}"
    );

    // The serve options still work without the command.
    let bad = run(linkd().args(["--listen", "nonsense"]));
    assert!(
        stderr(&bad).contains("--listen / LINKD_LISTEN"),
        "{}",
        stderr(&bad)
    );
}
