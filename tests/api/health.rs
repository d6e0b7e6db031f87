//! Connection health: the background check of ended sessions and the
//! sandbox's way to end one on purpose (`ResetSandboxLogin`).

use crate::access::execute;
use crate::helpers::{TestApp, TestTenant, spawn_app, spawn_app_with, with_key};
use crate::sessions::get_connection;
use linkd::kernel::tenant::Environment;
use linkd::pb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tonic::Code;

async fn reset_login(app: &TestApp, key: &str, id: &str) -> (StatusCode, Value) {
    let response = app
        .http
        .post(app.url(&format!("/v2/sandbox/connections/{id}/reset-login")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn status_of(app: &TestApp, tenant: &TestTenant, id: &str) -> Value {
    get_connection(app, tenant, id).await.1["status"].clone()
}

async fn wait_for_status(app: &TestApp, tenant: &TestTenant, id: &str, status: &str) {
    let started = Instant::now();
    while status_of(app, tenant, id).await != status {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{id} never became {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_reset_sandbox_login_makes_the_next_access_call_expire_the_connection() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let id = app.complete_session(&tenant, json!({}), "user_good").await["connectionId"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, reset) = reset_login(&app, &tenant.key, &id).await;
    assert_eq!(status, StatusCode::OK, "{reset}");
    assert_eq!(reset["connectionId"], id.as_str());
    // The call itself changes nothing: the connection finds out on use.
    assert_eq!(status_of(&app, &tenant, &id).await, "active");

    let profile = json!({ "operations": [{ "resource": "profile", "action": "read" }] });
    let (status, error) = execute(&app, &tenant.key, &id, profile.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["code"], "SESSION_EXPIRED");
    assert_eq!(status_of(&app, &tenant, &id).await, "expired");
    let expired = app.events_of(&tenant, "connection.expired").await;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["data"]["reason"], "session_ended");

    // Not active any more: nothing to reset.
    let (status, error) = reset_login(&app, &tenant.key, &id).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["code"], "SESSION_EXPIRED");

    // A reconnect repairs it, with connection.updated, and it works again.
    let page = app
        .open_session(&tenant, json!({ "connectionId": id }))
        .await;
    page.login("user_good", "pass_good").await;
    assert_eq!(page.approve().await["connectionId"], id.as_str());
    assert_eq!(app.events_of(&tenant, "connection.updated").await.len(), 1);
    let (status, ran) = execute(&app, &tenant.key, &id, profile).await;
    assert_eq!(status, StatusCode::OK, "{ran}");
}

#[tokio::test]
async fn reset_login_is_for_sandbox_keys_and_live_connections_only() {
    let app = spawn_app().await;
    let sandbox = app.create_tenant(Environment::Sandbox).await;
    let production = app.create_tenant(Environment::Production).await;
    let id = app.complete_session(&sandbox, json!({}), "user_good").await["connectionId"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, error) = reset_login(&app, &production.key, &id).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
    assert_eq!(error["code"], "SANDBOX_ONLY");
    let other = app.create_tenant(Environment::Sandbox).await;
    let (status, _) = reset_login(&app, &other.key, &id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, error) = reset_login(&app, &sandbox.key, "link_x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");

    let mut grpc = pb::connection_service_client::ConnectionServiceClient::new(app.channel().await);
    let refused = grpc
        .reset_sandbox_login(with_key(
            pb::ResetSandboxLoginRequest {
                connection_id: id.clone(),
            },
            &production.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // Nothing happened to the connection.
    assert_eq!(status_of(&app, &sandbox, &id).await, "active");
    assert!(
        app.events_of(&sandbox, "connection.expired")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn the_health_check_finds_ended_sessions_by_itself() {
    let app = spawn_app_with(|args| args.connection_check_interval = Duration::from_secs(1)).await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let done = app.complete_session(&tenant, json!({}), "user_good").await;
        ids.push(done["connectionId"].as_str().unwrap().to_string());
    }
    let (status, _) = reset_login(&app, &tenant.key, &ids[1]).await;
    assert_eq!(status, StatusCode::OK);
    wait_for_status(&app, &tenant, &ids[1], "expired").await;
    // Several rounds later, the others are still fine and the ended one
    // was announced once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_of(&app, &tenant, &ids[0]).await, "active");
    assert_eq!(status_of(&app, &tenant, &ids[2]).await, "active");
    let expired = app.events_of(&tenant, "connection.expired").await;
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["data"]["connection"]["id"], ids[1].as_str());
    assert_eq!(expired[0]["data"]["reason"], "session_ended");
}
