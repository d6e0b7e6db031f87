//! Test harness: one throwaway Postgres cluster for the whole run (or the
//! server behind `DATABASE_URL`), a migrated template database, a fresh copy
//! of it per test, and the real server on port 0.

use linkd::api::services::Services;
use linkd::client_apps::rules::NewClientApp;
use linkd::client_apps::store as tenancy;
use linkd::kernel::crypto::{Cipher, EncryptionKey};
use linkd::kernel::db::{self, PoolSettings};
use linkd::kernel::ids::{ApiKeyId, OrganizationId};
use linkd::kernel::tenant::{Environment, Tenant};
use linkd::ops::config::ServeArgs;
use linkd::ops::local_postgres::{Durability, LocalPostgres};
use linkd::ops::server::Server;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sqlx::Connection;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
use tonic::transport::Channel;
use url::Url;

/// The Postgres server tests run against.
enum TestPostgres {
    Local(LocalPostgres),
    External(Url),
}

static POSTGRES: OnceLock<TestPostgres> = OnceLock::new();
static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

fn postgres() -> &'static TestPostgres {
    POSTGRES.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) => TestPostgres::External(Url::parse(&url).expect("DATABASE_URL is a URL")),
        Err(_) => {
            let root = std::env::temp_dir().join(format!("linkd-test-{}", std::process::id()));
            TestPostgres::Local(
                LocalPostgres::start(&root, Durability::Throwaway).expect("starting test Postgres"),
            )
        }
    })
}

/// URL of `database` on the test server.
pub fn database_url(database: &str) -> String {
    match postgres() {
        TestPostgres::Local(local) => local.url(database),
        TestPostgres::External(url) => {
            let mut url = url.clone();
            url.set_path(database);
            url.to_string()
        }
    }
}

async fn admin_connection() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&database_url("postgres"))
        .await
        .expect("connecting to the test Postgres")
}

/// A migrated template, made once per test process.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let name = format!("linkd_template_{}", std::process::id());
            let mut conn = admin_connection().await;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name}"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .unwrap();
            let pool = crate::helpers::connect(&database_url(&name));
            db::migrate(&pool).await.unwrap();
            pool.close().await;
            name
        })
        .await
}

/// A pool on `url`, as linkd opens one (connecting on first use).
pub fn connect(url: &str) -> linkd::kernel::db::Db {
    db::pool(
        url,
        &PoolSettings {
            max_connections: 10,
            acquire_timeout: ACQUIRE_TIMEOUT,
            pooler: Default::default(),
        },
    )
    .unwrap()
}

/// A new database without linkd's schema, for tests of migrating; returns
/// its URL.
pub async fn empty_database() -> String {
    let name = format!("linkd_test_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin_connection().await)
        .await
        .unwrap();
    database_url(&name)
}

/// A new, migrated, empty database for one test; returns its URL.
pub async fn fresh_database() -> String {
    let template = template().await;
    let name = format!("linkd_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = admin_connection().await;
    // Creating from one template is serialised by Postgres; retry if two
    // creations collide.
    for attempt in 0.. {
        match sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE {template}"
        )))
        .execute(&mut conn)
        .await
        {
            Ok(_) => break,
            Err(e) if attempt < 50 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("creating test database: {e}"),
        }
    }
    database_url(&name)
}

/// Test HTTP clients use rustls with ring, the crypto backend of the tree.
pub fn install_crypto() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub fn test_key() -> EncryptionKey {
    static KEY: OnceLock<EncryptionKey> = OnceLock::new();
    KEY.get_or_init(EncryptionKey::generate).clone()
}

pub fn serve_args() -> ServeArgs {
    ServeArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: None,
        app_clip_base_url: Some("https://appclip.example.com".parse().unwrap()),
        max_request_bytes: 64 * 1024,
        shutdown_drain_delay: Duration::ZERO,
        shutdown_grace_period: Duration::from_secs(5),
        health_check_interval: Duration::from_millis(200),
        expiry_interval: Duration::from_millis(300),
        event_retention: Duration::from_secs(30 * 24 * 60 * 60),
        link_session_ttl: Duration::from_secs(30 * 60),
        provider_timeout: Duration::from_secs(30),
        oauth_require_pkce: true,
        oauth_state_min_length: 0,
        oauth_code_ttl: Duration::from_secs(600),
        oauth_token_ttl: Duration::from_secs(3600),
        oauth_refresh_ttl: Duration::from_secs(30 * 24 * 60 * 60),
        // Roomy: a receiver on a busy machine that answers late must not
        // turn into a retry. Tests of time-outs set their own.
        webhook_timeout: Duration::from_secs(5),
        webhook_retry_schedule: linkd::ops::config::Schedule(vec![
            Duration::ZERO,
            Duration::from_millis(300),
            Duration::from_millis(600),
        ]),
        webhook_lease: Duration::from_secs(10),
        webhook_poll_interval: Duration::from_millis(100),
        webhook_concurrency: 16,
        webhook_destination_concurrency: 8,
        webhook_breaker_failures: 5,
        webhook_breaker_cooldown: Duration::from_secs(1),
        webhook_queue_stats_interval: Duration::from_secs(1),
        api_key_cache_ttl: Duration::from_secs(5),
        // On, so every test passes through the buckets, but far above what
        // a test sends; the rate-limit tests set their own.
        rate_limit_api_key: roomy_limit(),
        rate_limit_client_app: roomy_limit(),
        rate_limit_flow: roomy_limit(),
        rate_limit_client_ip: roomy_limit(),
        client_ip_header: None,
        max_list_offset: 10_000,
        webhook_allow: linkd::ops::config::Allow(
            linkd::kernel::ssrf::Allowlist::parse("127.0.0.1").unwrap(),
        ),
        connectors: Default::default(),
        connector_tokens: Default::default(),
        connector_tls_ca_file: None,
        connector_tls_cert_file: None,
        connector_tls_key_file: None,
        sandbox_connectors: Default::default(),
        connector_login_timeout: Duration::from_secs(30),
        connector_operation_timeout: Duration::from_secs(30),
        connector_check_timeout: Duration::from_secs(10),
        connection_check_interval: Duration::from_secs(6 * 60 * 60),
        connection_expiry_warning: Duration::from_secs(7 * 24 * 60 * 60),
        oauth_clients_file: None,
        provider_allow: linkd::ops::config::Allow(
            linkd::kernel::ssrf::Allowlist::parse("127.0.0.1").unwrap(),
        ),
        proxy_max_response_bytes: 10 * 1024 * 1024,
        oauth_refresh_interval: Duration::from_millis(200),
        oauth_refresh_backoff: Duration::from_secs(30),
        oauth_refresh_attempts: 8,
        oauth_refresh_exhausted_retry: Duration::from_secs(6 * 60 * 60),
    }
}

fn roomy_limit() -> linkd::ops::config::RateLimit {
    linkd::ops::config::RateLimit(Some(
        linkd::ratelimit::Policy::parse("10000/s,burst=20000").unwrap(),
    ))
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub api: Services,
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A tenant with one client app and one API key.
pub struct TestTenant {
    pub tenant: Tenant,
    pub app_id: String,
    pub api_key_id: ApiKeyId,
    pub key: String,
    /// The app's OAuth client secret.
    pub client_secret: String,
    /// The app's webhook signing secret (`whsec_…`).
    pub webhook_secret: String,
}

/// How long test servers wait for a database connection: roomy, so a busy
/// machine does not turn a slow query into a `503` (the outage tests set
/// their own, short one).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn spawn_app() -> TestApp {
    spawn_app_on(&fresh_database().await, ACQUIRE_TIMEOUT).await
}

/// Starts the server on `db_url` with the given database acquire timeout and
/// waits until its health reports SERVING.
pub async fn spawn_app_on(db_url: &str, acquire_timeout: Duration) -> TestApp {
    spawn_configured(db_url, acquire_timeout, serve_args()).await
}

/// Starts the server on a fresh database with `configure` applied to the
/// test defaults.
pub async fn spawn_app_with(configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    let mut args = serve_args();
    configure(&mut args);
    spawn_configured(&fresh_database().await, ACQUIRE_TIMEOUT, args).await
}

/// Starts the server on `db_url` with `args`.
pub async fn spawn_configured(db_url: &str, acquire_timeout: Duration, args: ServeArgs) -> TestApp {
    let listener = Server::bind(&args).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pool = db::pool(
        db_url,
        &PoolSettings {
            max_connections: 10,
            acquire_timeout,
            pooler: Default::default(),
        },
    )
    .unwrap();
    let catalog = linkd::ops::startup::load_catalog(None).unwrap();
    let api = linkd::ops::startup::api(
        pool,
        catalog,
        Cipher::new(&test_key(), &[]),
        args.settings(addr),
    )
    .expect("services");
    let server = Server::new(listener, api.clone(), args).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    let app = TestApp {
        addr,
        api,
        http: {
            install_crypto();
            reqwest::Client::new()
        },
        shutdown: Some(tx),
        running: Some(running),
    };
    app.wait_for_readiness(true).await;
    app
}

impl TestApp {
    /// A server this test did not start (a `linkd` process) at `addr`, with
    /// `api` on the same database for the helpers' own reads and set-up.
    pub fn elsewhere(addr: SocketAddr, api: Services) -> TestApp {
        install_crypto();
        TestApp {
            addr,
            api,
            http: reqwest::Client::new(),
            shutdown: None,
            running: None,
        }
    }

    /// Shuts the server down and waits until it has stopped: its listener
    /// is closed and its background jobs (sweeps, webhook dispatch) ended.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(running) = self.running.take() {
            running.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path` with `key` as `Authorization: Bearer`.
    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("HTTP request")
    }

    /// `LinkService.GetLink` over gRPC.
    pub async fn grpc_link(&self, key: &str, link_id: &str) -> linkd::pb::Link {
        linkd::pb::link_service_client::LinkServiceClient::new(self.channel().await)
            .get_link(with_key(
                linkd::pb::GetLinkRequest {
                    link_id: link_id.into(),
                },
                key,
            ))
            .await
            .expect("GetLink")
            .into_inner()
            .link
            .expect("GetLink returns the link")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("gRPC connect")
    }

    /// Takes every connection of the server's pool (it shares the test's):
    /// until they are dropped, each use of the database waits.
    pub async fn hold_every_pooled_connection(
        &self,
    ) -> Vec<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        let pool = self.api.db().pool().clone();
        let mut held = Vec::new();
        while held.len() < pool.options().get_max_connections() as usize {
            held.push(pool.acquire().await.unwrap());
        }
        held
    }

    /// `GET path` with `key`, sent in a task of its own: its status once it
    /// is answered.
    pub fn spawn_get(&self, path: &str, key: &str) -> tokio::task::JoinHandle<StatusCode> {
        let (http, url, key) = (self.http.clone(), self.url(path), key.to_string());
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
        })
    }

    /// Polls `/readyz` until it reports `ready` (or not), for up to 10 s.
    pub async fn wait_for_readiness(&self, ready: bool) {
        for _ in 0..200 {
            let status = self
                .http
                .get(self.url("/readyz"))
                .send()
                .await
                .map(|r| r.status().is_success());
            if status.ok() == Some(ready) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "server never became {}",
            if ready { "ready" } else { "unready" }
        );
    }

    pub async fn create_tenant(&self, environment: Environment) -> TestTenant {
        let organization_id = OrganizationId::new();
        tenancy::create_organization(self.api.db(), organization_id, "Test org")
            .await
            .unwrap();
        self.add_app(
            Tenant {
                organization_id,
                environment,
            },
            "Test app",
        )
        .await
    }

    /// Adds an app and a key to an existing organization and environment.
    pub async fn add_app(&self, tenant: Tenant, name: &str) -> TestTenant {
        self.add_app_with(
            tenant,
            name,
            &[
                "https://app.example.com/callback".into(),
                "myapp://callback".into(),
            ],
        )
        .await
    }

    /// Adds an app with these redirect URIs, and a key.
    pub async fn add_app_with(
        &self,
        tenant: Tenant,
        name: &str,
        redirect_uris: &[String],
    ) -> TestTenant {
        self.add_app_hooked(
            tenant,
            name,
            redirect_uris,
            "https://hooks.example.com/linkd",
        )
        .await
    }

    /// Adds an app whose webhooks go to `webhook_url`, and a key.
    pub async fn add_app_hooked(
        &self,
        tenant: Tenant,
        name: &str,
        redirect_uris: &[String],
        webhook_url: &str,
    ) -> TestTenant {
        let app = NewClientApp::parse(name, redirect_uris, Some(webhook_url)).unwrap();
        let created = self
            .api
            .client_apps
            .create_client_app(tenant, &app)
            .await
            .unwrap();
        let key = linkd::auth::issue_key(self.api.db(), tenant).await.unwrap();
        TestTenant {
            tenant,
            client_secret: created.client_secret.expose_secret().to_string(),
            webhook_secret: created.webhook_secret.expose_secret().to_string(),
            app_id: created.app.id.to_string(),
            api_key_id: key.id,
            key: key.key.expose_secret().to_string(),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A gRPC request carrying `key` as `authorization: Bearer`.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// The sandbox's always-good login, as the flow API takes it.
pub fn good_login() -> linkd::pb::SubmitCredentialsRequest {
    linkd::pb::SubmitCredentialsRequest {
        fields: [("username", "user_good"), ("password", "pass_good")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
    }
}

/// Waits until a statement whose text matches `pattern` (SQL `LIKE`) is
/// waiting on a lock in the database behind `db`: the request running it is
/// held exactly where a test wants it.
pub async fn wait_for_lock_wait(db: &linkd::kernel::db::Db, pattern: &str) {
    let started = std::time::Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
        )
        .bind(pattern)
        .fetch_one(db)
        .await
        .unwrap();
        if waiting >= 1 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no statement like {pattern:?} ever waited on a lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The end user's side, as the app clip and the Link page drive it over
/// REST, and the calls a client makes to start it.
impl TestApp {
    /// `POST /v1/links` as `tenant`; asserts `201` and returns the link.
    pub async fn create_link(&self, tenant: &TestTenant, body: Value) -> Value {
        let response = self
            .http
            .post(self.url("/v1/links"))
            .bearer_auth(&tenant.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    /// `GET /v1/links/{id}` of a created link.
    pub async fn link_json(&self, tenant: &TestTenant, link: &Value) -> Value {
        self.get(
            &format!("/v1/links/{}", link["linkId"].as_str().unwrap()),
            &tenant.key,
        )
        .await
        .json()
        .await
        .unwrap()
    }

    /// Claims a link with its code, as the app clip does; asserts the flow
    /// waits for the login.
    pub async fn claim(&self, link: &Value) -> LinkFlow<'_> {
        let response = self
            .http
            .post(self.url("/v1/flow/claim"))
            .json(&json!({ "linkId": link["linkId"], "claimCode": link["claimCode"] }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["flow"]["step"], "login");
        LinkFlow {
            app: self,
            token: body["flowToken"].as_str().unwrap().to_string(),
        }
    }

    /// `POST /v2/link/init` as `tenant`: the answer as it came.
    pub async fn init_session(&self, tenant: &TestTenant, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("/v2/link/init"))
            .bearer_auth(&tenant.key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Starts a session and opens its Link page.
    pub async fn open_session(&self, tenant: &TestTenant, body: Value) -> Page<'_> {
        let response = self.init_session(tenant, body).await;
        assert_eq!(response.status(), StatusCode::OK);
        let session: Value = response.json().await.unwrap();
        Page::from_url(self, session["url"].as_str().unwrap())
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// The URL of this server's database, for tools such as `pg_dump`.
    pub async fn database_url(&self) -> String {
        let name: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(self.api.db())
            .await
            .unwrap();
        database_url(&name)
    }

    /// Every event's payload, oldest first.
    pub async fn events(&self) -> Vec<Value> {
        sqlx::query_scalar("SELECT payload FROM events ORDER BY created_at, id")
            .fetch_all(self.api.db())
            .await
            .unwrap()
    }

    /// The payloads of `tenant`'s events of one type, oldest first.
    pub async fn events_of(&self, tenant: &TestTenant, event_type: &str) -> Vec<Value> {
        sqlx::query_scalar(
            "SELECT payload FROM events WHERE organization_id = $1 AND type = $2 ORDER BY id",
        )
        .bind(tenant.tenant.organization_id)
        .bind(event_type)
        .fetch_all(self.api.db())
        .await
        .unwrap()
    }

    /// Runs a whole session for `username` on OnlyFans (picked when the
    /// session does not fix an integration), through consent; returns the
    /// final flow.
    pub async fn complete_session(
        &self,
        tenant: &TestTenant,
        body: Value,
        username: &str,
    ) -> Value {
        let page = self.open_session(tenant, body).await;
        if page.flow().await["step"] == "pre-login" {
            page.pick("onlyfans").await;
        }
        let flow = page.login(username, "pass_good").await;
        assert_eq!(flow["step"], "authorization", "{flow}");
        let done = page.approve().await;
        assert_eq!(done["outcome"], "success", "{done}");
        done
    }
}

/// A claimed link's flow, as the app clip drives it.
pub struct LinkFlow<'a> {
    pub app: &'a TestApp,
    pub token: String,
}

impl LinkFlow<'_> {
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .app
            .http
            .post(self.app.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    /// Logs in; asserts `200` and returns the flow.
    pub async fn login(&self, username: &str, password: &str) -> Value {
        let (status, body) = self
            .post(
                "/v1/flow/credentials",
                json!({ "fields": { "username": username, "password": password } }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

/// The Link page's side of a session, over REST.
pub struct Page<'a> {
    pub app: &'a TestApp,
    pub token: String,
}

impl<'a> Page<'a> {
    /// The page a Link page URL opens: its token is in the fragment.
    pub fn from_url(app: &'a TestApp, url: &str) -> Page<'a> {
        let url = Url::parse(url).unwrap();
        let token = url
            .fragment()
            .and_then(|f| f.strip_prefix("token="))
            .expect("the token is in the URL fragment")
            .to_string();
        assert!(url.query().is_none(), "no secret in the query string");
        Page { app, token }
    }

    pub async fn call(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let request = match body {
            Some(body) => self.app.http.post(self.app.url(path)).json(&body),
            None => self.app.http.get(self.app.url(path)),
        };
        let response = request.bearer_auth(&self.token).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// A call that must succeed: asserts `200` and returns the flow.
    pub async fn ok(&self, path: &str, body: Option<Value>) -> Value {
        let (status, flow) = self.call(path, body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {flow}");
        flow
    }

    pub async fn flow(&self) -> Value {
        self.ok("/v1/flow", None).await
    }

    pub async fn pick(&self, integration: &str) -> Value {
        self.ok(
            "/v1/flow/integration",
            Some(json!({ "integrationId": integration })),
        )
        .await
    }

    pub async fn login(&self, username: &str, password: &str) -> Value {
        self.ok(
            "/v1/flow/credentials",
            Some(json!({ "fields": { "username": username, "password": password } })),
        )
        .await
    }

    pub async fn code(&self, code: &str) -> Value {
        self.ok("/v1/flow/second-factor", Some(json!({ "code": code })))
            .await
    }

    pub async fn approve(&self) -> Value {
        self.ok("/v1/flow/approve", Some(json!({}))).await
    }

    pub async fn cancel(&self, step: &str) -> Value {
        self.ok("/v1/flow/cancel", Some(json!({ "step": step })))
            .await
    }
}
