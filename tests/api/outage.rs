use crate::helpers::{spawn_app_on, with_key};
use linkd::kernel::tenant::Environment;
use linkd::ops::local_postgres::{Durability, LocalPostgres};
use linkd::pb::ListClientAppsRequest;
use linkd::pb::client_app_service_client::ClientAppServiceClient;
use reqwest::StatusCode;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn start_cluster(root: std::path::PathBuf) -> LocalPostgres {
    tokio::task::spawn_blocking(move || LocalPostgres::start(&root, Durability::Durable))
        .await
        .unwrap()
        .unwrap()
}

/// A cluster of its own under `root` with a migrated `linkd` database: its
/// URL and a pool on it.
async fn migrated_cluster(
    root: std::path::PathBuf,
) -> (LocalPostgres, String, linkd::kernel::db::Db) {
    let cluster = start_cluster(root).await;
    linkd::kernel::db::ensure_database(&cluster.url("postgres"), "linkd")
        .await
        .unwrap();
    let url = cluster.url("linkd");
    let pool = crate::helpers::connect(&url);
    linkd::kernel::db::migrate(&pool).await.unwrap();
    (cluster, url, pool)
}

/// Stops the database under a running server: calls fail fast with
/// UNAVAILABLE / 503, health goes NOT_SERVING, and everything recovers when
/// the database returns, without a restart.
#[tokio::test]
async fn database_outage_is_unavailable_then_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pg");
    let (cluster, url, pool) = migrated_cluster(root.clone()).await;
    pool.close().await;

    // Short enough to show the outage promptly, long enough for a fresh
    // cluster's first connections on a busy machine.
    let acquire_timeout = Duration::from_secs(2);
    let app = spawn_app_on(&url, acquire_timeout).await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let channel = app.channel().await;
    let mut grpc = ClientAppServiceClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    grpc.list_client_apps(with_key(ListClientAppsRequest {}, &tenant.key))
        .await
        .unwrap();

    let stop = tokio::task::spawn_blocking(move || cluster.stop());
    stop.await.unwrap();

    let started = Instant::now();
    let status = grpc
        .list_client_apps(with_key(ListClientAppsRequest {}, &tenant.key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < acquire_timeout + Duration::from_secs(2),
        "fails within the acquire timeout, took {:?}",
        started.elapsed()
    );
    assert!(
        !status.message().contains("127.0.0.1"),
        "no internals in the message"
    );
    let rest = app.get("/v1/client-apps", &tenant.key).await;
    assert_eq!(rest.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rest.headers()["retry-after"], "1");

    app.wait_for_readiness(false).await;
    let checked = health
        .check(HealthCheckRequest {
            service: "linkd.v1.LinkService".into(),
        })
        .await
        .unwrap();
    assert_eq!(checked.into_inner().status(), ServingStatus::NotServing);

    let _cluster = start_cluster(root).await;
    app.wait_for_readiness(true).await;
    let checked = health
        .check(HealthCheckRequest {
            service: "linkd.v1.LinkService".into(),
        })
        .await
        .unwrap();
    assert_eq!(checked.into_inner().status(), ServingStatus::Serving);
    let apps = grpc
        .list_client_apps(with_key(ListClientAppsRequest {}, &tenant.key))
        .await
        .unwrap()
        .into_inner()
        .client_apps;
    assert_eq!(apps.len(), 1);
}

/// The database dies while a request with an `Idempotency-Key` is inside
/// its transaction (held there by a lock this test takes on `links`): the
/// request fails as unavailable, and once the database is back the retry
/// with the same key creates the link at once, exactly once, instead of
/// finding the key stuck.
#[tokio::test]
async fn an_idempotency_key_is_free_again_after_an_outage_mid_request() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pg");
    let (cluster, url, pool) = migrated_cluster(root.clone()).await;

    // Short enough to show the outage promptly, long enough for a fresh
    // cluster's first connections on a busy machine.
    let acquire_timeout = Duration::from_secs(2);
    let app = spawn_app_on(&url, acquire_timeout).await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let create = |app: &crate::helpers::TestApp| {
        app.http
            .post(app.url("/v1/links"))
            .bearer_auth(&tenant.key)
            .header("idempotency-key", "outage-1")
            .json(&serde_json::json!({ "integrationId": "verizon",
                "operations": [{ "resource": "mobileBillingStatement", "action": "read" }] }))
            .send()
    };
    // Hold the request inside its transaction: its INSERT waits on this lock.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE links IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let request = tokio::spawn(create(&app));
    crate::helpers::wait_for_lock_wait(&pool, "INSERT INTO links%").await;
    // The database stops with the request still waiting (and the lock held).
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
    drop(blocker);
    drop(pool);
    let failed = request.await.unwrap().unwrap();
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);

    let _cluster = start_cluster(root).await;
    app.wait_for_readiness(true).await;
    let retried = create(&app).await.unwrap();
    let status = retried.status();
    let first: serde_json::Value = retried.json().await.unwrap();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the retry runs at once: {first}"
    );
    let repeated: serde_json::Value = create(&app).await.unwrap().json().await.unwrap();
    assert_eq!(
        repeated["linkId"], first["linkId"],
        "the repeat replays: {repeated}"
    );
    let links: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(app.api.db())
        .await
        .unwrap();
    assert_eq!(links, 1);
}

/// Once readiness reports the database down, calls that need it are
/// refused at once with UNAVAILABLE / 503 rather than each waiting out a
/// (here long) pool acquire timeout; health, readiness and metrics still
/// answer; calls succeed again when the database returns.
#[tokio::test]
async fn calls_fail_fast_while_readiness_says_the_database_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pg");
    let (cluster, url, pool) = migrated_cluster(root.clone()).await;
    pool.close().await;

    let acquire_timeout = Duration::from_secs(60);
    let app = spawn_app_on(&url, acquire_timeout).await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let channel = app.channel().await;
    let mut grpc = ClientAppServiceClient::new(channel.clone());
    let mut health = HealthClient::new(channel);

    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
    app.wait_for_readiness(false).await;

    // Far inside the acquire timeout: the call is not waiting on the pool.
    let within = Duration::from_secs(10);
    let status = tokio::time::timeout(
        within,
        grpc.list_client_apps(with_key(ListClientAppsRequest {}, &tenant.key)),
    )
    .await
    .expect("refused at once, not after the acquire timeout")
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let reason = tonic_types::StatusExt::get_error_details(&status)
        .error_info()
        .map(|info| info.reason.clone());
    assert_eq!(reason.as_deref(), Some("UNAVAILABLE"));
    let retry = tonic_types::StatusExt::get_error_details(&status)
        .retry_info()
        .and_then(|info| info.retry_delay);
    assert_eq!(retry, Some(Duration::from_secs(1)), "RetryInfo says when");
    let rest = tokio::time::timeout(within, app.get("/v1/client-apps", &tenant.key))
        .await
        .expect("refused at once");
    assert_eq!(rest.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rest.headers()["retry-after"], "1");
    assert_eq!(
        rest.json::<serde_json::Value>().await.unwrap()["code"],
        "UNAVAILABLE"
    );

    // What does not need the database still answers.
    let alive = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), StatusCode::OK);
    let checked = health
        .check(HealthCheckRequest {
            service: "linkd.v1.ClientAppService".into(),
        })
        .await
        .unwrap();
    assert_eq!(checked.into_inner().status(), ServingStatus::NotServing);
    assert!(app.metrics().await.contains("linkd_build_info"));

    let _cluster = start_cluster(root).await;
    app.wait_for_readiness(true).await;
    let apps = grpc
        .list_client_apps(with_key(ListClientAppsRequest {}, &tenant.key))
        .await
        .unwrap()
        .into_inner()
        .client_apps;
    assert_eq!(apps.len(), 1);
}

/// Every pooled connection busy (a load spike) is not an outage: readiness
/// stays ready and calls wait their turn instead of being refused.
#[tokio::test]
async fn a_pool_whose_connections_are_all_busy_is_not_a_database_that_is_down() {
    let app = crate::helpers::spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let held = app.hold_every_pooled_connection().await;
    // Several probe intervals (200 ms in tests), each past its 1 s time-out.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "a busy pool reads as down");

    let waiting = app.spawn_get("/v1/client-apps", &tenant.key);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held);
    assert_eq!(waiting.await.unwrap(), StatusCode::OK);
    app.stop().await;
}
