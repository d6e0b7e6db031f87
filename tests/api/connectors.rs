//! The connector protocol with a real connector process: the Python example
//! in `examples/connectors/python/`, its stubs generated from the proto, and
//! the provider website it logs in to, each its own process on its own
//! port.

use crate::helpers::{TestApp, TestTenant, spawn_app_with};
use crate::python_env::python;
use crate::sessions::get_connection;
use linkd::kernel::tenant::Environment;
use linkd::ops::config::{ConnectorEndpoints, Names};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/connectors/python");

/// The example connector and the Acme Mobile website, running.
pub struct ExampleConnector {
    /// Held for its `kill_on_drop`.
    _site: Child,
    connector: Option<Child>,
    pub site_url: String,
    /// `http://127.0.0.1:PORT` of the connector.
    pub endpoint: String,
    port: u16,
    stubs: tempfile::TempDir,
    http: reqwest::Client,
}

/// Starts `command` and returns it with the first line it prints.
async fn start(mut command: Command) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the program starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("the process says where it listens")
    .unwrap();
    (child, line.trim().to_string())
}

impl ExampleConnector {
    pub async fn start() -> Self {
        crate::helpers::install_crypto();
        // Made (once) off the runtime: it may take a minute.
        tokio::task::spawn_blocking(python).await.unwrap();
        let stubs = tempfile::tempdir().unwrap();
        // What the example's README tells a team to run.
        let generated = python()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["-m", "grpc_tools.protoc", "-Iproto"])
            .arg(format!("--python_out={}", stubs.path().display()))
            .arg(format!("--grpc_python_out={}", stubs.path().display()))
            .arg("linkd/connector/v1/connector.proto")
            .output()
            .unwrap();
        assert!(
            generated.status.success(),
            "{}",
            String::from_utf8_lossy(&generated.stderr)
        );
        let mut site = Command::from(python());
        site.arg(format!("{EXAMPLE}/provider_site.py"))
            .args(["--port", "0"]);
        let (site, line) = start(site).await;
        let site_url = line.rsplit(' ').next().unwrap().to_string();
        let mut example = ExampleConnector {
            _site: site,
            connector: None,
            site_url,
            endpoint: String::new(),
            port: 0,
            stubs,
            http: reqwest::Client::new(),
        };
        example.start_connector().await;
        example
    }

    /// Starts the connector process (again, on the same port once it had
    /// one).
    pub async fn start_connector(&mut self) {
        self.start_connector_with(&[]).await;
    }

    /// Starts the connector with more arguments (`--token T`).
    pub async fn start_connector_with(&mut self, extra: &[&str]) {
        let mut connector = Command::from(python());
        connector
            .arg(format!("{EXAMPLE}/connector.py"))
            .args(["--port", &self.port.to_string(), "--site", &self.site_url])
            .args(extra)
            .env("CONNECTOR_STUBS", self.stubs.path())
            // gRPC's own informational lines (refused handshakes) are noise here.
            .env("GRPC_VERBOSITY", "ERROR");
        let (child, line) = start(connector).await;
        let address = line.rsplit(' ').next().unwrap();
        self.port = address.rsplit(':').next().unwrap().parse().unwrap();
        self.endpoint = format!("http://{address}");
        self.connector = Some(child);
    }

    /// Kills the connector process (the website stays up).
    pub async fn kill_connector(&mut self) {
        if let Some(mut child) = self.connector.take() {
            child.kill().await.unwrap();
        }
    }

    /// Stops the connector without closing its socket: calls hang.
    pub fn freeze_connector(&self) {
        let pid = self.connector.as_ref().unwrap().id().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
    }

    /// What the provider's back office shows for an account.
    pub async fn account(&self, username: &str) -> Value {
        self.http
            .get(format!(
                "{}/_support/account?username={username}",
                self.site_url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Ends every session of an account at the provider, as a password
    /// change does.
    pub async fn end_sessions(&self, username: &str) {
        let answer = self
            .http
            .post(format!(
                "{}/_support/end-sessions?username={username}",
                self.site_url
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
    }

    fn routes(&self) -> ConnectorEndpoints {
        ConnectorEndpoints(vec![("acme".into(), self.endpoint.parse().unwrap())])
    }
}

/// linkd with the example connector configured as `acme`, once it has
/// described what it serves (`acmemobile` is listed for `tenant`).
async fn app_with(example: &ExampleConnector, sandbox_too: bool) -> TestApp {
    app_configured(example, |args| {
        if sandbox_too {
            args.sandbox_connectors = Names(vec!["acme".into()]);
        }
    })
    .await
}

async fn app_configured(
    example: &ExampleConnector,
    configure: impl FnOnce(&mut linkd::ops::config::ServeArgs),
) -> TestApp {
    let routes = example.routes();
    let app = spawn_app_with(|args| {
        args.connectors = routes;
        args.connector_login_timeout = Duration::from_secs(3);
        configure(args);
    })
    .await;
    let probe = app.create_tenant(Environment::Production).await;
    let started = Instant::now();
    while !lists_acme(&app, &probe).await {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the connector's integration never reached the catalog"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app
}

async fn lists_acme(app: &TestApp, tenant: &TestTenant) -> bool {
    let providers: Value = app
        .get("/v1/providers", &tenant.key)
        .await
        .json()
        .await
        .unwrap();
    providers["providers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["integrationId"] == "acmemobile")
}

#[tokio::test]
async fn a_production_session_links_an_account_through_a_connector_in_python() {
    let example = ExampleConnector::start().await;
    let app = app_with(&example, false).await;
    let tenant = app.create_tenant(Environment::Production).await;

    // The integration came from the connector's Describe answer.
    let providers: Value = app
        .get("/v1/providers", &tenant.key)
        .await
        .json()
        .await
        .unwrap();
    let acme = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["integrationId"] == "acmemobile")
        .unwrap();
    assert_eq!(acme["name"], "Acme Mobile");
    assert_eq!(acme["category"], "mobile_carrier");

    let page = app.open_session(&tenant, json!({})).await;
    page.pick("acmemobile").await;
    let wrong = page.login("bob", "not-his-password").await;
    assert_eq!(wrong["step"], "login", "{wrong}");
    assert_eq!(wrong["errorCode"], "invalid_credentials", "{wrong}");
    let asked = page.login("bob", "battery-staple").await;
    assert_eq!(asked["step"], "2fa", "{asked}");
    assert_eq!(
        asked["secondFactorPrompt"],
        "Enter the code Acme Mobile texted to your phone."
    );
    let consent = page.code("424242").await;
    assert_eq!(consent["step"], "authorization", "{consent}");
    let done = page.approve().await;
    assert_eq!(done["outcome"], "success", "{done}");
    let id = done["connectionId"].as_str().unwrap().to_string();

    let connection = get_connection(&app, &tenant, &id).await.1;
    assert_eq!(connection["status"], "active", "{connection}");
    assert_eq!(connection["integrationId"], "acmemobile");
    // The provider saw one login that is still signed in.
    let account = example.account("bob").await;
    assert_eq!(
        (account["logins"].clone(), account["activeSessions"].clone()),
        (json!(1), json!(1))
    );

    // Deleting the connection logs out at the provider.
    let deleted = app
        .http
        .delete(app.url(&format!("/v2/connections/{id}")))
        .bearer_auth(&tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let account = example.account("bob").await;
    assert_eq!(account["logouts"], 1, "{account}");
    assert_eq!(account["activeSessions"], 0, "{account}");

    // Every call was counted per connector, call and outcome.
    let metrics = app.metrics().await;
    for series in [
        r#"linkd_connector_calls_total{connector="acme",call="login",code="invalid_credentials"} 1"#,
        r#"linkd_connector_calls_total{connector="acme",call="login",code="ok"} 1"#,
        r#"linkd_connector_calls_total{connector="acme",call="submit_second_factor",code="ok"} 1"#,
        r#"linkd_connector_calls_total{connector="acme",call="logout",code="ok"} 1"#,
        r#"linkd_connector_call_duration_seconds_count{connector="acme",call="login"} 2"#,
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_production_link_runs_its_operations_at_the_provider_through_the_connector() {
    let example = ExampleConnector::start().await;
    let app = app_with(&example, false).await;
    let tenant = app.create_tenant(Environment::Production).await;
    let link = app
        .create_link(
            &tenant,
            json!({
                "integrationId": "acmemobile",
                "operations": [
                    { "resource": "mobileBillingStatement", "action": "read", "arguments": { "months": 2 } },
                    { "resource": "paymentMethod", "action": "write", "arguments": {
                        "cardNumber": "4242424242424242", "expirationDate": "12/39",
                        "cvv": "123", "billingZip": "94107", "nameOnCard": "Alice Example" } },
                    // The site rotates the session cookie after the write: this
                    // read works only with the session the connector renewed.
                    { "resource": "paymentMethod", "action": "read" }
                ]
            }),
        )
        .await;
    let flow = app.claim(&link).await;
    let done = flow.login("alice", "correct-horse").await;
    assert_eq!(done["outcome"], "success", "{done}");

    let link = app.link_json(&tenant, &link).await;
    assert_eq!(link["status"], "completed", "{link}");
    let results = link["result"]["operations"].as_array().unwrap();
    assert_eq!(results[0]["data"].as_array().unwrap().len(), 2, "{link}");
    assert_eq!(results[0]["data"][0]["currency"], "USD", "{link}");
    assert_eq!(results[1]["data"]["last4"], "4242", "{link}");
    assert_eq!(results[2]["data"][0]["last4"], "4242", "{link}");
    // The card is on the account at the provider, and never in full.
    let account = example.account("alice").await;
    let cards = account["paymentMethods"].as_array().unwrap();
    assert_eq!(cards.len(), 1, "{account}");
    assert_eq!(cards[0]["last4"], "4242");
    assert_eq!(cards[0]["nameOnCard"], "Alice Example");
    assert!(!link.to_string().contains("4242424242424242"));
}

#[tokio::test]
async fn a_locked_account_and_a_declined_card_are_the_protocols_errors() {
    let example = ExampleConnector::start().await;
    let app = app_with(&example, false).await;
    let tenant = app.create_tenant(Environment::Production).await;
    let page = app.open_session(&tenant, json!({})).await;
    page.pick("acmemobile").await;
    let locked = page.login("carol", "tr0ub4dor").await;
    assert_eq!(locked["outcome"], "error", "{locked}");
    assert_eq!(locked["errorCode"], "account_locked", "{locked}");

    let link = app
        .create_link(
            &tenant,
            json!({
                "integrationId": "acmemobile",
                "operations": [{ "resource": "paymentMethod", "action": "write", "arguments": {
                    "cardNumber": "4000000000000002", "expirationDate": "12/39",
                    "cvv": "123", "billingZip": "94107" } }]
            }),
        )
        .await;
    let done = app.claim(&link).await.login("alice", "correct-horse").await;
    assert_eq!(done["outcome"], "error", "{done}");
    let link = app.link_json(&tenant, &link).await;
    assert_eq!(link["status"], "failed", "{link}");
    assert_eq!(link["errorCode"], "operation_failed", "{link}");
    // The provider's own words reach the client, nothing more.
    assert!(
        link["errorMessage"]
            .as_str()
            .unwrap()
            .contains("The card was declined."),
        "{link}"
    );
}

#[tokio::test]
async fn a_connector_that_is_down_or_hangs_answers_provider_unavailable_within_the_deadline() {
    let mut example = ExampleConnector::start().await;
    let app = app_with(&example, false).await;
    let tenant = app.create_tenant(Environment::Production).await;

    // Killed: the end user hears at once.
    example.kill_connector().await;
    let page = app.open_session(&tenant, json!({})).await;
    page.pick("acmemobile").await;
    let started = Instant::now();
    let down = page.login("alice", "correct-horse").await;
    assert_eq!(down["errorCode"], "provider_unavailable", "{down}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Back on its port: the next flow works without restarting linkd.
    example.start_connector().await;
    let page = app.open_session(&tenant, json!({})).await;
    page.pick("acmemobile").await;
    let back = page.login("alice", "correct-horse").await;
    assert_eq!(back["step"], "authorization", "{back}");

    // Hung (stopped, its socket open): the login deadline (3 s here) ends
    // the wait with provider_unavailable, not a page that spins forever.
    example.freeze_connector();
    let page = app.open_session(&tenant, json!({})).await;
    page.pick("acmemobile").await;
    let started = Instant::now();
    let hung = page.login("alice", "correct-horse").await;
    let waited = started.elapsed();
    assert_eq!(hung["errorCode"], "provider_unavailable", "{hung}");
    assert!(
        (Duration::from_secs(3)..Duration::from_secs(6)).contains(&waited),
        "{waited:?}"
    );

    // Killed in the middle of a call: the answer comes when the connection
    // drops, not at the deadline.
    let page = app.open_session(&tenant, json!({})).await;
    page.pick("acmemobile").await;
    let started = Instant::now();
    let (cut, ()) = tokio::join!(page.login("alice", "correct-horse"), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        example.kill_connector().await;
    });
    assert_eq!(cut["errorCode"], "provider_unavailable", "{cut}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sandbox_tenants_reach_the_connector_only_when_the_operator_routes_them() {
    let example = ExampleConnector::start().await;
    // Not routed: sandbox keys get the built-in sandbox's magic credentials
    // for the described integration, and the provider sees nothing.
    let app = app_with(&example, false).await;
    let sandbox = app.create_tenant(Environment::Sandbox).await;
    let page = app.open_session(&sandbox, json!({})).await;
    page.pick("acmemobile").await;
    let flow = page.login("user_good", "pass_good").await;
    assert_eq!(flow["step"], "authorization", "{flow}");
    assert_eq!(example.account("alice").await["logins"], 0);
    app.stop().await;

    // Routed with LINKD_SANDBOX_CONNECTORS: the team tries its connector
    // with a sandbox key.
    let app = app_with(&example, true).await;
    let sandbox = app.create_tenant(Environment::Sandbox).await;
    let page = app.open_session(&sandbox, json!({})).await;
    page.pick("acmemobile").await;
    let magic = page.login("user_good", "pass_good").await;
    assert_eq!(magic["errorCode"], "invalid_credentials", "{magic}");
    let real = page.login("alice", "correct-horse").await;
    assert_eq!(real["step"], "authorization", "{real}");
    assert_eq!(example.account("alice").await["logins"], 1);
}

/// The number a counter series shows on `/metrics` (0 when absent).
async fn counter(app: &TestApp, series: &str) -> u64 {
    app.metrics()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_access_api_uses_the_connection_at_the_provider_until_the_provider_ends_it() {
    let example = ExampleConnector::start().await;
    let app = app_with(&example, false).await;
    let tenant = app.create_tenant(Environment::Production).await;
    let page = app.open_session(&tenant, json!({})).await;
    page.pick("acmemobile").await;
    page.login("alice", "correct-horse").await;
    let id = page.approve().await["connectionId"]
        .as_str()
        .unwrap()
        .to_string();

    // Reads the bills and adds a card at the provider, on the stored session.
    let (status, ran) = crate::access::execute(
        &app,
        &tenant.key,
        &id,
        json!({ "operations": [
            { "resource": "mobileBillingStatement", "action": "read", "arguments": { "months": 3 } },
            { "resource": "paymentMethod", "action": "write", "arguments": {
                "cardNumber": "5555555555554444", "expirationDate": "01/40",
                "cvv": "321", "billingZip": "10001" } }
        ] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    let results = ran["result"]["operations"].as_array().unwrap();
    assert_eq!(results[0]["data"].as_array().unwrap().len(), 3);
    assert_eq!(results[1]["data"]["brand"], "mastercard");
    let account = example.account("alice").await;
    assert_eq!(account["paymentMethods"][0]["last4"], "4444", "{account}");
    // The site rotated the session after the card: the renewed one was
    // kept, so the next call still works.
    let bills =
        json!({ "operations": [{ "resource": "mobileBillingStatement", "action": "read" }] });
    let (status, again) = crate::access::execute(&app, &tenant.key, &id, bills.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        again["result"]["billing"].as_array().unwrap().len(),
        3,
        "{again}"
    );

    // The provider ends the session: the next call expires the connection,
    // with one connection.expired, and tells the client to reconnect.
    example.end_sessions("alice").await;
    let (status, error) = crate::access::execute(&app, &tenant.key, &id, bills.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["code"], "SESSION_EXPIRED");
    let connection = get_connection(&app, &tenant, &id).await.1;
    assert_eq!(connection["status"], "expired");
    let expired = app.events_of(&tenant, "connection.expired").await;
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["data"]["reason"], "session_ended");
    assert_eq!(expired[0]["data"]["connection"]["id"], id.as_str());

    // While expired, calls are refused without reaching the connector.
    let calls = r#"linkd_connector_calls_total{connector="acme",call="execute_operation",code="session_expired"}"#;
    let before = counter(&app, calls).await;
    assert_eq!(before, 1);
    let (status, _) = crate::access::execute(&app, &tenant.key, &id, bills.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(counter(&app, calls).await, before);
    assert_eq!(app.events_of(&tenant, "connection.expired").await.len(), 1);

    // A reconnect keeps the id, and the Access API works again.
    let page = app
        .open_session(&tenant, json!({ "connectionId": id }))
        .await;
    page.login("alice", "correct-horse").await;
    let done = page.approve().await;
    assert_eq!(done["connectionId"], id.as_str(), "{done}");
    let (status, back) = crate::access::execute(&app, &tenant.key, &id, bills).await;
    assert_eq!(status, StatusCode::OK, "{back}");
    let recorded = crate::access::runs(&app, &tenant.key, &id, "").await;
    let statuses: Vec<&str> = recorded["operationRuns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["succeeded", "failed", "succeeded", "succeeded"],
        "{recorded}"
    );
}

#[tokio::test]
async fn the_health_check_asks_the_connector_and_expires_sessions_the_provider_ended() {
    let example = ExampleConnector::start().await;
    let app = app_configured(&example, |args| {
        args.connection_check_interval = Duration::from_secs(1);
        // Sweeps (and so expiry warnings) as often as checks; the example's
        // 12-hour sessions are not announced until they are shortened.
        args.expiry_interval = Duration::from_millis(300);
        args.connection_expiry_warning = Duration::from_secs(2 * 60 * 60);
    })
    .await;
    let tenant = app.create_tenant(Environment::Production).await;
    let mut ids = Vec::new();
    for user in [("alice", "correct-horse"), ("bob", "battery-staple")] {
        let page = app.open_session(&tenant, json!({})).await;
        page.pick("acmemobile").await;
        if page.login(user.0, user.1).await["step"] == "2fa" {
            page.code("424242").await;
        }
        ids.push(
            page.approve().await["connectionId"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // A few rounds of checks: both sessions are fine.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let checks = r#"linkd_connector_calls_total{connector="acme",call="check_session",code="ok"}"#;
    assert!(counter(&app, checks).await >= 2, "the connector was asked");

    // The provider shortens Alice's session to an hour: the check learns
    // its new end from the connector, and the client hears once that it
    // is ending.
    let shortened = example
        .http
        .post(format!(
            "{}/_support/shorten-sessions?username=alice&seconds=3600",
            example.site_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(shortened.status(), StatusCode::OK);
    let started = Instant::now();
    while app
        .events_of(&tenant, "connection.expiring")
        .await
        .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never announced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expiring = app.events_of(&tenant, "connection.expiring").await;
    assert_eq!(expiring[0]["data"]["connection"]["id"], ids[0].as_str());
    let ends = chrono::DateTime::parse_from_rfc3339(
        expiring[0]["data"]["connection"]["sessionExpiresAt"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let in_an_hour = chrono::Utc::now() + chrono::Duration::hours(1);
    assert!(
        (ends.to_utc() - in_an_hour).num_seconds().abs() < 60,
        "{ends}"
    );

    // Bob changes his password at the provider: the check finds out alone.
    example.end_sessions("bob").await;
    let started = Instant::now();
    loop {
        let connection: Value = app
            .get(&format!("/v2/connections/{}", ids[1]), &tenant.key)
            .await
            .json()
            .await
            .unwrap();
        if connection["status"] == "expired" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expired = app.events_of(&tenant, "connection.expired").await;
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["data"]["connection"]["id"], ids[1].as_str());
    assert_eq!(expired[0]["data"]["reason"], "session_ended");
    let alice: Value = app
        .get(&format!("/v2/connections/{}", ids[0]), &tenant.key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(alice["status"], "active");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.events_of(&tenant, "connection.expiring").await.len(),
        1,
        "once"
    );
}

/// A port nothing listens on (yet).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_connector_that_is_down_at_start_up_is_routed_once_it_answers() {
    let mut example = ExampleConnector::start().await;
    example.kill_connector().await;
    // linkd starts with the connector configured but not running.
    example.port = free_port();
    example.endpoint = format!("http://127.0.0.1:{}", example.port);
    let routes = example.routes();
    let app = spawn_app_with(|args| args.connectors = routes).await;
    let tenant = app.create_tenant(Environment::Production).await;
    assert!(!lists_acme(&app, &tenant).await);
    let page = app.open_session(&tenant, json!({})).await;
    let (status, _) = page
        .call(
            "/v1/flow/integration",
            Some(json!({ "integrationId": "acmemobile" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "not in the catalog yet");

    // Up a moment later, on the configured port: the describer finds it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    example.start_connector().await;
    let started = Instant::now();
    while !lists_acme(&app, &tenant).await {
        assert!(started.elapsed() < Duration::from_secs(20), "never routed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = app.open_session(&tenant, json!({})).await;
    page.pick("acmemobile").await;
    let flow = page.login("alice", "correct-horse").await;
    assert_eq!(flow["step"], "authorization", "{flow}");
}

#[tokio::test]
async fn a_bearer_token_is_sent_to_connectors_that_require_one() {
    let mut example = ExampleConnector::start().await;
    example.kill_connector().await;
    example
        .start_connector_with(&["--token", "s3cret-token"])
        .await;

    // Without the token the connector refuses even Describe: nothing routed.
    let routes = example.routes();
    let untrusted = spawn_app_with(|args| args.connectors = routes).await;
    let probe = untrusted.create_tenant(Environment::Production).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!lists_acme(&untrusted, &probe).await);
    untrusted.stop().await;

    // With it, everything works.
    let app = app_configured(&example, |args| {
        args.connector_tokens = linkd::ops::config::ConnectorTokens(
            [(
                "acme".to_string(),
                secrecy::SecretString::from("s3cret-token"),
            )]
            .into(),
        );
    })
    .await;
    let tenant = app.create_tenant(Environment::Production).await;
    let page = app.open_session(&tenant, json!({})).await;
    page.pick("acmemobile").await;
    let flow = page.login("alice", "correct-horse").await;
    assert_eq!(flow["step"], "authorization", "{flow}");
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate,
/// made with the `openssl` command line.
fn certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=linkd test CA",
        ],
    ]
    .concat());
    for (name, usage, san) in [
        ("server", "serverAuth", "subjectAltName=IP:127.0.0.1\n"),
        ("client", "clientAuth", ""),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        std::fs::write(
            dir.join(&ext),
            format!("{san}basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        run(&[
            &["req"],
            &ec[..],
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

#[tokio::test]
async fn mutual_tls_to_a_connector_needs_linkds_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let file = |name: &str| certs.path().join(name).display().to_string();
    let mut example = ExampleConnector::start().await;
    example.kill_connector().await;
    example
        .start_connector_with(&[
            "--tls-cert",
            &file("server.pem"),
            "--tls-key",
            &file("server.key"),
            "--tls-client-ca",
            &file("ca.pem"),
        ])
        .await;
    example.endpoint = example.endpoint.replace("http://", "https://");

    // Trusting the connector but without a client certificate: refused in
    // the handshake, so nothing is routed.
    let routes = example.routes();
    let ca = certs.path().join("ca.pem");
    let anonymous = spawn_app_with(|args| {
        args.connectors = routes;
        args.connector_tls_ca_file = Some(ca.clone());
    })
    .await;
    let probe = anonymous.create_tenant(Environment::Production).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!lists_acme(&anonymous, &probe).await);
    anonymous.stop().await;

    // With linkd's certificate the whole flow works over mutual TLS.
    let app = app_configured(&example, |args| {
        args.connector_tls_ca_file = Some(certs.path().join("ca.pem"));
        args.connector_tls_cert_file = Some(certs.path().join("client.pem"));
        args.connector_tls_key_file = Some(certs.path().join("client.key"));
    })
    .await;
    let tenant = app.create_tenant(Environment::Production).await;
    let page = app.open_session(&tenant, json!({})).await;
    page.pick("acmemobile").await;
    let flow = page.login("alice", "correct-horse").await;
    assert_eq!(flow["step"], "authorization", "{flow}");
}

/// An OAuth integration's capabilities run in a connector like any other:
/// linkd holds the grant and hands the connector the current access token;
/// a token the provider refuses is refreshed and the operation run again.
#[tokio::test]
async fn an_oauth_integrations_operations_run_in_the_connector_with_linkds_token() {
    use crate::provider_oauth::{INTEGRATION, setup_on};
    let mut example = ExampleConnector::start().await;
    // Down until the catalog knows the OAuth entry it will describe.
    example.kill_connector().await;
    let routes = example.routes();
    let app = spawn_app_with(|args| {
        args.connectors = routes;
        args.sandbox_connectors = Names(vec!["acme".into()]);
        args.oauth_refresh_interval = Duration::from_secs(3600);
    })
    .await;
    let s = setup_on(app, 60).await;
    example
        .start_connector_with(&["--oauth-integration", INTEGRATION])
        .await;
    let probe = s.app.create_tenant(Environment::Production).await;
    let started = Instant::now();
    while !lists_acme(&s.app, &probe).await {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never described"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = s.connect("creator-8").await["connectionId"]
        .as_str()
        .unwrap()
        .to_string();
    let run = || async {
        let response = s
            .app
            .http
            .post(s.app.url(&format!("/v2/connections/{id}/operations")))
            .bearer_auth(&s.tenant.key)
            .json(&json!({"operations": [{"resource": "profile", "action": "read"}]}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json::<Value>().await.unwrap())
    };
    let (status, ran) = run().await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    assert_eq!(ran["result"]["profile"]["id"], "creator-8", "{ran}");
    let stats = s.provider.stats().await;
    assert_eq!(stats["api"], 1, "{stats}");

    s.provider.expire_access_tokens().await;
    let (status, ran) = run().await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    assert_eq!(ran["result"]["profile"]["id"], "creator-8");
    let stats = s.provider.stats().await;
    assert_eq!(stats["refresh_token"], 1, "{stats}");
    assert_eq!(stats["api"], 3, "refused once, then run again: {stats}");
    let (_, connection) = get_connection(&s.app, &s.tenant, &id).await;
    assert_eq!(connection["status"], "active", "{connection}");
    assert!(
        s.app
            .events_of(&s.tenant, "connection.expired")
            .await
            .is_empty()
    );
}
