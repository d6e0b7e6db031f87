//! Rate limits as callers meet them: `429` with `Retry-After` and the
//! `RateLimit` headers on REST, `RESOURCE_EXHAUSTED` with `RetryInfo` and
//! `QuotaFailure` on gRPC, per API key across replicas, per client app (with
//! an operator's own limit), per Link flow and per client address.

use crate::helpers::{
    ACQUIRE_TIMEOUT, TestApp, fresh_database, serve_args, spawn_app_with, spawn_configured,
    with_key,
};
use futures_util::StreamExt as _;
use linkd::kernel::tenant::Environment;
use linkd::ops::config::{RateLimit, ServeArgs};
use linkd::pb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tonic_types::StatusExt as _;

fn limit(policy: &str) -> RateLimit {
    RateLimit(Some(linkd::ratelimit::Policy::parse(policy).unwrap()))
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

async fn providers(app: &TestApp, key: &str) -> reqwest::Response {
    app.get("/v1/providers", key).await
}

#[tokio::test]
async fn an_api_key_past_its_limit_gets_429_with_when_to_retry_and_others_do_not() {
    let app = spawn_app_with(|args| args.rate_limit_api_key = limit("1/s,burst=5")).await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let other = app.create_tenant(Environment::Sandbox).await;

    let mut remaining = Vec::new();
    for _ in 0..5 {
        let response = providers(&app, &tenant.key).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "ratelimit-policy"), "\"api_key\";q=5;w=5");
        let current = header(&response, "ratelimit").to_string();
        assert!(current.starts_with("\"api_key\";r="), "{current}");
        remaining.push(current);
    }
    assert!(remaining.last().unwrap().contains(";r=0;"), "{remaining:?}");

    let refused = providers(&app, &tenant.key).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "1");
    assert!(header(&refused, "ratelimit").contains(";r=0;"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("api_key"),
        "{body}"
    );
    assert!(!body.to_string().contains(&tenant.key));

    // Another tenant's key has a bucket of its own.
    assert_eq!(providers(&app, &other.key).await.status(), StatusCode::OK);

    // A refused call changes nothing: the link is not created.
    let create = app
        .http
        .post(app.url("/v1/links"))
        .bearer_auth(&tenant.key)
        .json(&json!({ "operations": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), StatusCode::TOO_MANY_REQUESTS);
    let links: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(app.api.db())
        .await
        .unwrap();
    assert_eq!(links, 0);

    // After the delay it said, the key works again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(providers(&app, &tenant.key).await.status(), StatusCode::OK);

    let metrics = app.metrics().await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("linkd_rate_limited_total{scope=\"api_key\"}") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn grpc_callers_get_resource_exhausted_with_retry_info_and_quota_failure() {
    let app = spawn_app_with(|args| args.rate_limit_api_key = limit("1/s,burst=3")).await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let mut grpc = pb::link_service_client::LinkServiceClient::new(app.channel().await);
    for _ in 0..3 {
        let answer = grpc
            .list_providers(with_key(pb::ListProvidersRequest::default(), &tenant.key))
            .await
            .unwrap();
        assert!(
            answer.metadata().get("ratelimit-policy").is_some(),
            "{:?}",
            answer.metadata()
        );
    }
    let refused = grpc
        .list_providers(with_key(pb::ListProvidersRequest::default(), &tenant.key))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let details = refused.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "RATE_LIMITED");
    assert_eq!(details.error_info().unwrap().metadata["scope"], "api_key");
    let delay = details.retry_info().unwrap().retry_delay.unwrap();
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );
    let violation = &details.quota_failure().unwrap().violations[0];
    assert!(
        violation.subject.starts_with("api_key:key_"),
        "{violation:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn three_replicas_share_one_bucket_per_key() {
    let db_url = fresh_database().await;
    let args = || {
        let mut args: ServeArgs = serve_args();
        args.rate_limit_api_key = limit("1/s,burst=30");
        args
    };
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(spawn_configured(&db_url, ACQUIRE_TIMEOUT, args()).await);
    }
    let tenant = replicas[0].create_tenant(Environment::Sandbox).await;
    let key = tenant.key.as_str();
    let started = Instant::now();
    // 90 calls, 30 on each replica, 6 at a time per replica.
    let calls = replicas.iter().flat_map(|replica| {
        (0..30).map(move |_| async move { providers(replica, key).await.status() })
    });
    let statuses: Vec<StatusCode> = futures_util::stream::iter(calls)
        .buffer_unordered(18)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let passed = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(passed + refused, 90, "{statuses:?}");
    // Never more than the bucket plus what it refilled meanwhile, over all
    // replicas (each alone would have let 30 through); at most one chunk
    // (3 tokens) per replica may lie unspent.
    let most = 30 + elapsed.ceil() as usize;
    assert!(
        passed <= most,
        "{passed} passed in {elapsed:.1}s; at most {most}"
    );
    assert!(passed >= 30 - 3 * 3, "only {passed} passed");
    for replica in replicas {
        replica.stop().await;
    }
}

/// The `rateLimit` a client app shows over REST.
async fn shown_limit(app: &TestApp, tenant: &crate::helpers::TestTenant) -> Value {
    let shown: Value = app
        .get(&format!("/v1/client-apps/{}", tenant.app_id), &tenant.key)
        .await
        .json()
        .await
        .unwrap();
    shown["rateLimit"].clone()
}

#[tokio::test]
async fn a_client_app_is_limited_over_its_flows_and_an_operator_can_raise_its_limit() {
    let app = spawn_app_with(|args| args.rate_limit_client_app = limit("1/s,burst=4")).await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let first = app.open_session(&tenant, json!({})).await;
    let second = app.open_session(&tenant, json!({})).await;
    // The app's four tokens, spread over two flows.
    for page in [&first, &second, &first, &second] {
        assert_eq!(page.call("/v1/flow", None).await.0, StatusCode::OK);
    }
    let (status, body) = second.call("/v1/flow", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("client_app"),
        "{body}"
    );
    // API-key calls of the same tenant are another bucket.
    assert_eq!(providers(&app, &tenant.key).await.status(), StatusCode::OK);

    assert_eq!(
        shown_limit(&app, &tenant).await,
        json!({ "perSecond": 1.0, "burst": 4, "custom": false })
    );

    let db_url = app.database_url().await;
    let bad = crate::process::admin(
        &db_url,
        &["set-rate-limit", &tenant.app_id, "--limit", "lots"],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--limit"),
        "{bad:?}"
    );
    let raised = crate::process::admin(
        &db_url,
        &[
            "set-rate-limit",
            &tenant.app_id,
            "--limit",
            "100/s,burst=100",
        ],
    );
    assert!(raised.status.success(), "{raised:?}");
    // Applied from the next lease: once the refusal's delay has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..10 {
        assert_eq!(first.call("/v1/flow", None).await.0, StatusCode::OK);
    }
    assert_eq!(
        shown_limit(&app, &tenant).await,
        json!({ "perSecond": 100.0, "burst": 100, "custom": true })
    );
    app.stop().await;
}

#[tokio::test]
async fn each_link_flow_has_its_own_limit() {
    let app = spawn_app_with(|args| args.rate_limit_flow = limit("1/s,burst=3")).await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let busy = app.open_session(&tenant, json!({})).await;
    let calm = app.open_session(&tenant, json!({})).await;
    for _ in 0..3 {
        assert_eq!(busy.call("/v1/flow", None).await.0, StatusCode::OK);
    }
    let (status, body) = busy.call("/v1/flow", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "RATE_LIMITED");
    assert!(!body.to_string().contains(&busy.token));
    assert_eq!(calm.call("/v1/flow", None).await.0, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn guessing_tokens_or_keys_from_one_address_is_cut_off_before_the_database() {
    let app = spawn_app_with(|args| args.rate_limit_client_ip = limit("1/s,burst=4")).await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    // Verified once, so this replica trusts it without the database.
    assert_eq!(providers(&app, &tenant.key).await.status(), StatusCode::OK);

    let guess = |n: usize| format!("lk_sandbox_{:016x}_{n}", n);
    for n in 0..4 {
        let response = providers(&app, &guess(n)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let cut_off = providers(&app, &guess(99)).await;
    assert_eq!(cut_off.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&cut_off, "ratelimit-policy").starts_with("\"client_ip\""));
    let flow_guess = app
        .http
        .get(app.url("/v1/flow"))
        .bearer_auth("lft_guess")
        .send()
        .await
        .unwrap();
    assert_eq!(flow_guess.status(), StatusCode::TOO_MANY_REQUESTS);
    // The key this replica already trusts still works from that address.
    assert_eq!(providers(&app, &tenant.key).await.status(), StatusCode::OK);
    app.stop().await;

    // Behind a proxy that names the caller, each caller has its own bucket.
    let app = spawn_app_with(|args| {
        args.rate_limit_client_ip = limit("1/s,burst=2");
        args.client_ip_header = Some(http::HeaderName::from_static("x-forwarded-for"));
    })
    .await;
    let from = |address: &'static str| {
        app.http
            .get(app.url("/v1/flow"))
            .bearer_auth("lft_guess")
            .header("x-forwarded-for", format!("198.51.100.1, {address}"))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(
            from("203.0.113.1").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        from("203.0.113.1").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        from("203.0.113.2").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;
}

#[tokio::test]
async fn buckets_that_refilled_are_swept_from_the_database() {
    // One lease takes one token, which comes back after 2 s: long enough
    // to see the bucket before the sweep may drop it.
    let app = spawn_app_with(|args| args.rate_limit_api_key = limit("30/m,burst=5")).await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    assert_eq!(providers(&app, &tenant.key).await.status(), StatusCode::OK);
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM rate_limit_buckets WHERE key LIKE 'api_key:%'",
        )
        .fetch_one(app.api.db())
        .await
        .unwrap()
    };
    assert_eq!(count().await, 1);
    // The expiry sweep runs every 300 ms in tests.
    let deadline = Instant::now() + Duration::from_secs(10);
    while count().await > 0 {
        assert!(Instant::now() < deadline, "the full bucket stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

/// The OAuth token endpoint draws on the client app's bucket once the
/// client authenticated (a wrong secret is the address's problem, above).
#[tokio::test]
async fn token_requests_draw_on_the_client_apps_bucket() {
    let app = spawn_app_with(|args| args.rate_limit_client_app = limit("1/m,burst=3")).await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let exchange = || async {
        let response = app
            .http
            .post(app.url("/v3/oauth/token"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", "not-a-code"),
                ("client_id", tenant.app_id.as_str()),
                ("client_secret", tenant.client_secret.as_str()),
            ])
            .send()
            .await
            .unwrap();
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, retry_after, response.json::<Value>().await.unwrap())
    };
    for _ in 0..3 {
        let (status, _, body) = exchange().await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_grant", "{body}");
    }
    let (status, retry_after, body) = exchange().await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(retry_after.is_some(), "{body}");
    assert!(body.to_string().contains("client_app"), "{body}");
    app.stop().await;
}
