//! Several `linkd` processes on one database, as operators run replicas:
//! every event is delivered by exactly one of them, and a replica killed
//! with SIGKILL mid-delivery loses nothing (its leases run out and another
//! replica sends the same webhook-id).

use crate::helpers::{fresh_database, test_key};
use crate::process::{Running, linkd, spawn_linkd};
use crate::webhooks::Receiver;
use linkd::client_apps::rules::NewClientApp;
use linkd::kernel::crypto::Cipher;
use linkd::kernel::ids::OrganizationId;
use linkd::kernel::tenant::{Environment, Tenant};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A tenant whose app sends its webhooks to `webhook_url`; returns it and
/// the app's webhook secret.
pub async fn tenant(db_url: &str, webhook_url: &str) -> (linkd::kernel::db::Db, Tenant, String) {
    let pool = crate::helpers::connect(db_url);
    linkd::kernel::db::migrate(&pool).await.unwrap();
    let api = linkd::ops::startup::api(
        pool.clone(),
        linkd::ops::startup::load_catalog(None).unwrap(),
        Cipher::new(&test_key(), &[]),
        crate::helpers::serve_args().settings("127.0.0.1:1".parse().unwrap()),
    )
    .expect("services");
    let organization_id = OrganizationId::new();
    linkd::client_apps::store::create_organization(&pool, organization_id, "Replicated")
        .await
        .unwrap();
    let tenant = Tenant {
        organization_id,
        environment: Environment::Sandbox,
    };
    let app = NewClientApp::parse(
        "Replicated app",
        &["https://app.example.com/cb".to_string()],
        Some(webhook_url),
    )
    .unwrap();
    let created = api
        .client_apps
        .create_client_app(tenant, &app)
        .await
        .unwrap();
    use secrecy::ExposeSecret;
    (
        pool,
        tenant,
        created.webhook_secret.expose_secret().to_string(),
    )
}

fn replicas(db_url: &str, n: usize, env: &[(&str, &str)]) -> Vec<Running> {
    (0..n)
        .map(|_| {
            let mut cmd = linkd();
            cmd.env("DATABASE_URL", db_url)
                .env("LINKD_ENCRYPTION_KEY", test_key().to_base64())
                .env("LINKD_WEBHOOK_ALLOW", "127.0.0.1")
                .env("LINKD_WEBHOOK_POLL_INTERVAL", "100ms")
                .env("LINKD_DB_ACQUIRE_TIMEOUT", "10s")
                .env("LINKD_LOG", "warn")
                .envs(env.iter().copied());
            spawn_linkd(cmd)
        })
        .collect()
}

async fn insert_events(pool: &linkd::kernel::db::Db, tenant: Tenant, n: i32) {
    sqlx::query(
        "INSERT INTO events (id, organization_id, environment, type, payload)
         SELECT gen_random_uuid(), $1, $2, 'link.failed',
                jsonb_build_object('type', 'link.failed', 'data', jsonb_build_object('n', g))
         FROM generate_series(1, $3) g",
    )
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// Requests per webhook-id at `path`.
fn by_id(receiver: &Receiver, path: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for hook in receiver.at(path) {
        *counts.entry(hook.id().to_string()).or_default() += 1;
    }
    counts
}

async fn wait_for_ids(receiver: &Receiver, path: &str, n: usize, within: Duration) {
    let started = Instant::now();
    while by_id(receiver, path).len() < n {
        assert!(
            started.elapsed() < within,
            "{} of {n} events arrived",
            by_id(receiver, path).len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `n` events are marked delivered (the mark follows the
/// response by a moment).
async fn wait_delivered(pool: &linkd::kernel::db::Db, n: i64) {
    let started = Instant::now();
    loop {
        let delivered: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE delivery_status = 'delivered'")
                .fetch_one(pool)
                .await
                .unwrap();
        if delivered == n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{delivered} of {n} delivered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn stop(mut replicas: Vec<Running>) {
    for replica in &mut replicas {
        let _ = replica.child.kill();
        let _ = replica.child.wait();
    }
}

#[tokio::test]
async fn three_replicas_deliver_each_of_a_thousand_events_once() {
    let receiver = Receiver::start().await;
    let db_url = fresh_database().await;
    let (pool, tenant, secret) = tenant(&db_url, &receiver.url("fleet")).await;
    let fleet = replicas(&db_url, 3, &[]);
    insert_events(&pool, tenant, 1000).await;
    wait_for_ids(&receiver, "fleet", 1000, Duration::from_secs(90)).await;
    // Once every event is recorded delivered no claim can start a send; a
    // second send already under way would have counted a second attempt
    // (checked below), so nothing is waited for by time.
    wait_delivered(&pool, 1000).await;
    let counts = by_id(&receiver, "fleet");
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "delivered more than once: {repeated:?}"
    );
    assert_eq!(receiver.at("fleet").len(), 1000);
    assert!(
        receiver
            .at("fleet")
            .iter()
            .all(|hook| hook.verifies_with(&secret))
    );
    // Every attempt of an event tried more than once, with what it got.
    let retried: Vec<(Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT a.status_code, a.error FROM delivery_attempts a JOIN events e ON e.id = a.event_id
         WHERE e.attempts <> 1 ORDER BY a.event_id, a.attempt",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        retried.is_empty(),
        "each event took one attempt: {retried:?}"
    );
    stop(fleet);
}

#[tokio::test]
async fn a_replica_killed_mid_delivery_loses_no_event() {
    let receiver = Receiver::start().await;
    let db_url = fresh_database().await;
    // `slow` answers after 3 s, so every replica always has deliveries in
    // flight; leases are 6 s.
    let (pool, tenant, _) = tenant(&db_url, &receiver.url("slow")).await;
    let mut fleet = replicas(
        &db_url,
        3,
        &[
            ("LINKD_WEBHOOK_TIMEOUT", "5s"),
            ("LINKD_WEBHOOK_LEASE", "6s"),
            ("LINKD_WEBHOOK_CONCURRENCY", "8"),
        ],
    );
    insert_events(&pool, tenant, 120).await;
    receiver.wait_for("slow", 20, Duration::from_secs(30)).await;
    let victim = fleet.remove(0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    stop(vec![victim]);
    wait_for_ids(&receiver, "slow", 120, Duration::from_secs(120)).await;
    wait_delivered(&pool, 120).await;
    // What the killed replica had in flight arrived again, same webhook-id.
    let counts = by_id(&receiver, "slow");
    assert!(
        counts.values().any(|n| *n > 1),
        "the killed replica's in-flight deliveries were retried by the others"
    );
    stop(fleet);
}

/// SIGTERM: the replica claims nothing more from the moment it reports not
/// ready, and the deliveries it has in flight are sent and recorded before
/// it exits (no lease to wait out, no second send).
#[tokio::test]
async fn a_replica_stopped_by_sigterm_finishes_its_deliveries_and_claims_no_more() {
    let receiver = Receiver::start().await;
    let db_url = fresh_database().await;
    let (pool, tenant, _) = tenant(&db_url, &receiver.url("slow")).await;
    let replica = replicas(
        &db_url,
        1,
        &[
            ("LINKD_SHUTDOWN_DRAIN_DELAY", "1s"),
            ("LINKD_SHUTDOWN_GRACE_PERIOD", "20s"),
            ("LINKD_WEBHOOK_TIMEOUT", "10s"),
            ("LINKD_WEBHOOK_LEASE", "60s"),
        ],
    )
    .remove(0);
    insert_events(&pool, tenant, 3).await;
    // `slow` answers after 3 s: all three are in flight now.
    receiver.wait_for("slow", 3, Duration::from_secs(15)).await;
    replica.sigterm();
    crate::helpers::install_crypto();
    let readyz = format!("http://127.0.0.1:{}/readyz", replica.port);
    let started = Instant::now();
    while reqwest::get(&readyz).await.unwrap().status() != reqwest::StatusCode::SERVICE_UNAVAILABLE
    {
        assert!(started.elapsed() < Duration::from_secs(5), "never draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    insert_events(&pool, tenant, 2).await;

    let (status, _) = tokio::task::spawn_blocking(move || replica.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let (delivered, untouched): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE delivery_status = 'delivered' AND attempts = 1),
                count(*) FILTER (WHERE delivery_status = 'pending' AND attempts = 0)
         FROM events",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        delivered, 3,
        "in-flight deliveries were recorded before exit"
    );
    assert_eq!(untouched, 2, "nothing was claimed after shutdown began");
    assert_eq!(receiver.at("slow").len(), 3);
}

/// Three replicas (and the test's own server) sweep the same database at
/// once: every link, abandoned Link session and connection past its
/// lifetime is expired exactly once, each with one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_sweep_links_sessions_and_connections_once() {
    use crate::flow::billing_link;
    let db_url = fresh_database().await;
    let app = crate::helpers::spawn_app_on(&db_url, Duration::from_secs(5)).await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let mut links = Vec::new();
    for i in 0..40 {
        let link = app.create_link(&tenant, billing_link()).await;
        if i % 2 == 0 {
            app.claim(&link).await;
        }
        links.push(link);
    }
    for _ in 0..20 {
        let page = app.open_session(&tenant, serde_json::json!({})).await;
        page.pick("verizon").await;
        page.login("user_2fa", "pass_good").await; // a connection awaiting 2FA
    }
    for _ in 0..20 {
        app.complete_session(&tenant, serde_json::json!({}), "user_good")
            .await;
    }
    let fleet = replicas(&db_url, 3, &[("LINKD_EXPIRY_INTERVAL", "100ms")]);
    let pool = app.api.db();
    // Everything's lifetime runs out at once.
    for aging in [
        "UPDATE links SET expires_at = now() - interval '1 second'",
        "UPDATE flows SET expires_at = now() - interval '1 second' WHERE kind = 'session' AND outcome IS NULL",
        "UPDATE connections SET session_expires_at = now() - interval '1 second' WHERE status = 'active'",
    ] {
        sqlx::query(aging).execute(pool).await.unwrap();
    }
    let started = Instant::now();
    let count = async |sql: &str| -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(pool)
            .await
            .unwrap()
    };
    loop {
        let links_left = count("SELECT count(*) FROM links WHERE status <> 'expired'").await;
        let sessions_left =
            count("SELECT count(*) FROM flows WHERE kind = 'session' AND outcome IS NULL").await;
        let connections_left =
            count("SELECT count(*) FROM connections WHERE status IN ('active', 'awaiting_2fa')")
                .await;
        if links_left + sessions_left + connections_left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "left: {links_left} links, {sessions_left} sessions, {connections_left} connections"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count("SELECT count(*) FROM events WHERE type = 'link.expired'").await,
        40
    );
    assert_eq!(
        count("SELECT count(DISTINCT link_id) FROM events WHERE type = 'link.expired'").await,
        40
    );
    assert_eq!(
        count("SELECT count(*) FROM events WHERE type = 'connection.expired'").await,
        20
    );
    assert_eq!(
        count("SELECT count(DISTINCT connection_id) FROM events WHERE type = 'connection.expired'")
            .await,
        20
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM flows WHERE kind = 'session' AND error_code = 'session_expired'"
        )
        .await,
        20
    );
    assert_eq!(
        count("SELECT count(*) FROM connections WHERE status = 'failed'").await,
        20
    );
    assert_eq!(
        count("SELECT count(*) FROM connections WHERE status = 'expired'").await,
        20
    );
    stop(fleet);
}
