use crate::helpers::{TestApp, spawn_app, spawn_app_with, with_key};
use linkd::kernel::tenant::Environment;
use linkd::pb::ListClientAppsRequest;
use linkd::pb::client_app_service_client::ClientAppServiceClient;
use reqwest::StatusCode;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test]
async fn missing_malformed_unknown_and_revoked_keys_are_rejected_alike() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let revoked = app.add_app(tenant.tenant, "Second").await;
    assert!(
        linkd::auth::store::revoke_api_key(app.api.db(), revoked.api_key_id)
            .await
            .unwrap()
    );

    // Same lookup id with another secret; an unknown lookup id; garbage; and
    // the sandbox key relabelled as a production key.
    let mut wrong_secret = tenant.key.clone();
    // A different last character (the old one may have been any of 64).
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == 'A' { 'B' } else { 'A' });
    let unknown =
        "lk_sandbox_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string();
    let relabelled = tenant.key.replacen("lk_sandbox_", "lk_production_", 1);
    let bad_keys = [
        wrong_secret,
        unknown,
        "not-a-key".into(),
        relabelled,
        revoked.key.clone(),
    ];

    let mut grpc = ClientAppServiceClient::new(app.channel().await);
    let missing = grpc
        .list_client_apps(ListClientAppsRequest {})
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    let rest_missing = app
        .http
        .get(app.url("/v1/client-apps"))
        .send()
        .await
        .unwrap();
    assert_eq!(rest_missing.status(), StatusCode::UNAUTHORIZED);
    let missing_body: serde_json::Value = rest_missing.json().await.unwrap();

    for key in &bad_keys {
        let status = grpc
            .list_client_apps(with_key(ListClientAppsRequest {}, key))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{key}");
        assert_eq!(
            status.message(),
            missing.message(),
            "no hint which check failed"
        );
        assert!(!status.message().contains(key.as_str()));

        let response = app.get("/v1/client-apps", key).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"linkd\""
        );
        assert_eq!(
            response.json::<serde_json::Value>().await.unwrap(),
            missing_body
        );
    }

    // The valid key still works, by either documented header.
    grpc.list_client_apps(with_key(ListClientAppsRequest {}, &tenant.key))
        .await
        .unwrap();
    let bearer = app.get("/v1/client-apps", &tenant.key).await;
    assert_eq!(bearer.status(), StatusCode::OK);
    let apikey = app
        .http
        .get(app.url("/v1/client-apps"))
        .header("apikey", &tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(apikey.status(), StatusCode::OK);
}

#[tokio::test]
async fn api_keys_are_stored_only_as_hashes() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    // lk_<environment>_<lookup id>_<secret>; the secret may itself contain '_'.
    let secret = tenant.key.splitn(4, '_').nth(3).unwrap().to_string();
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT lookup_id, secret_hash FROM api_keys")
            .fetch_all(app.api.db())
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        tenant.key.contains(&rows[0].0),
        "lookup id is the public part"
    );
    assert!(!String::from_utf8_lossy(&rows[0].1).contains(&secret));
    // SHA-256 as Postgres computes it, not as the code under test does.
    let matches: bool =
        sqlx::query_scalar("SELECT secret_hash = sha256(convert_to($1, 'UTF8')) FROM api_keys")
            .bind(&secret)
            .fetch_one(app.api.db())
            .await
            .unwrap();
    assert!(matches, "the stored hash is SHA-256 of the secret");
}

/// Asserts that `key` is refused within `bound` (plus a margin for a slow
/// machine), and stays refused.
pub async fn refused_within(app: &TestApp, key: &str, bound: Duration) {
    let deadline = Instant::now() + bound + Duration::from_secs(3);
    loop {
        let status = app.get("/v1/client-apps", key).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            Instant::now() < deadline,
            "a revoked key still works after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.get("/v1/client-apps", key).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_the_cache_lifetime() {
    for ttl in [Duration::ZERO, Duration::from_secs(1)] {
        let app = spawn_app_with(|args| args.api_key_cache_ttl = ttl).await;
        let tenant = app.create_tenant(Environment::Sandbox).await;
        // Verified, so cached for `ttl`.
        assert_eq!(
            app.get("/v1/client-apps", &tenant.key).await.status(),
            StatusCode::OK
        );
        assert!(
            linkd::auth::store::revoke_api_key(app.api.db(), tenant.api_key_id)
                .await
                .unwrap()
        );
        if ttl.is_zero() {
            // No cache: the very next call is refused.
            assert_eq!(
                app.get("/v1/client-apps", &tenant.key).await.status(),
                StatusCode::UNAUTHORIZED
            );
        }
        refused_within(&app, &tenant.key, ttl).await;
        // Over gRPC too.
        let refused = ClientAppServiceClient::new(app.channel().await)
            .list_client_apps(with_key(ListClientAppsRequest {}, &tenant.key))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
}
