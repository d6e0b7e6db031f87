use crate::helpers::{spawn_app_on, with_key};
use linkd::domain::Environment;
use linkd::local_postgres::{Durability, LocalPostgres};
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

/// Stops the database under a running server: calls fail fast with
/// UNAVAILABLE / 503, health goes NOT_SERVING, and everything recovers when
/// the database returns, without a restart.
#[tokio::test]
async fn database_outage_is_unavailable_then_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pg");
    let cluster = start_cluster(root.clone()).await;
    linkd::store::ensure_database(&cluster.url("postgres"), "linkd")
        .await
        .unwrap();
    let url = cluster.url("linkd");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    linkd::store::migrate(&pool).await.unwrap();
    pool.close().await;

    let app = spawn_app_on(&url, Duration::from_millis(500)).await;
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
        started.elapsed() < Duration::from_secs(5),
        "fails promptly, took {:?}",
        started.elapsed()
    );
    assert!(
        !status.message().contains("127.0.0.1"),
        "no internals in the message"
    );
    let rest = app.get("/v1/client-apps", &tenant.key).await;
    assert_eq!(rest.status(), StatusCode::SERVICE_UNAVAILABLE);

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
