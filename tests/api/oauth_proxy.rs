//! The proxy to an OAuth connection's provider API, against the real
//! authorization server's protected echo API: what reaches the provider
//! (its token, never the client's key), paths that cannot leave the API
//! base, one refresh for many concurrent calls, a refused token refreshed
//! and retried, size limits, and gRPC streaming.

use crate::helpers::{spawn_app_with, with_key};
use crate::oauth_refresh::stat;
use crate::provider_oauth::{INTEGRATION, OAuthSetup, setup, setup_on};
use linkd::pb;
use linkd::pb::connection_service_client::ConnectionServiceClient;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn connected(s: &OAuthSetup, user: &str) -> String {
    s.connect(user).await["connectionId"]
        .as_str()
        .unwrap()
        .to_string()
}

fn proxy_url(s: &OAuthSetup, id: &str, rest: &str) -> String {
    s.app.url(&format!("/v2/connections/{id}/proxy/{rest}"))
}

async fn proxy_get(s: &OAuthSetup, id: &str, rest: &str) -> reqwest::Response {
    s.app
        .http
        .get(proxy_url(s, id, rest))
        .bearer_auth(&s.tenant.key)
        .send()
        .await
        .unwrap()
}

/// A request line sent as it is (HTTP clients normalise `..` away before
/// sending); the status and body of the answer.
async fn raw_get(s: &OAuthSetup, target: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(s.app.addr).await.unwrap();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        s.tenant.key
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_proxy_sends_the_connections_token_and_never_the_clients_key() {
    let s = setup(60).await;
    let id = connected(&s, "creator-7").await;
    let response = s
        .app
        .http
        .post(proxy_url(&s, &id, "things/caf%C3%A9?x=1&y=%20z"))
        .bearer_auth(&s.tenant.key)
        .header("x-api-key", "client-secret-key")
        .header("apikey", "client-secret-key")
        .header("cookie", "session=client")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-custom", "kept")
        .header("content-type", "application/json")
        .body(r#"{"hello":"provider"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["x-provider"],
        "test",
        "provider headers pass"
    );
    assert!(
        response.headers().get("set-cookie").is_none(),
        "the provider's cookies do not"
    );
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/api/things/caf%C3%A9");
    assert_eq!(echo["query"], json!({"x": "1", "y": " z"}));
    assert_eq!(echo["body"], r#"{"hello":"provider"}"#);
    assert_eq!(echo["sub"], "creator-7", "the connection's own grant");
    let headers = &echo["headers"];
    let authorization = headers["authorization"].as_str().unwrap();
    assert!(authorization.starts_with("Bearer "), "{headers}");
    assert!(!authorization.contains(&s.tenant.key), "{headers}");
    for dropped in ["x-api-key", "apikey", "cookie", "x-forwarded-for"] {
        assert!(
            headers.get(dropped).is_none(),
            "{dropped} reached the provider: {headers}"
        );
    }
    assert!(!headers.to_string().contains("client-secret-key"));
    assert_eq!(headers["x-custom"], "kept");
    assert_eq!(headers["content-type"], "application/json");

    // The provider's status passes through, errors included.
    let teapot = proxy_get(&s, &id, "teapot").await;
    assert_eq!(teapot.status().as_u16(), 418);
    let metrics = s.app.metrics().await;
    for series in [
        format!(r#"linkd_proxy_requests_total{{integration="{INTEGRATION}",outcome="2xx"}} 1"#),
        format!(r#"linkd_proxy_requests_total{{integration="{INTEGRATION}",outcome="4xx"}} 1"#),
    ] {
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
    assert!(metrics.contains("linkd_proxy_request_duration_seconds_count"));
}

#[tokio::test]
async fn paths_that_would_leave_the_api_base_reach_nothing() {
    let s = setup(60).await;
    let id = connected(&s, "creator-1").await;
    let base = format!("/v2/connections/{id}/proxy");
    let api_calls = stat(&s, "api").await;
    for escape in [
        "/../../token",
        "/%2e%2e/token",
        "/.%2E/token",
        "/users%2f..%2f..%2ftoken",
        "/..%5ctoken",
        "//127.0.0.1:1/x",
        "/a/./b",
    ] {
        let (status, body) = raw_get(&s, &format!("{base}{escape}")).await;
        assert_eq!(status, 400, "{escape}: {body}");
        assert_eq!(body["issues"][0]["path"], "path", "{escape}: {body}");
    }
    assert_eq!(stat(&s, "api").await, api_calls, "the provider saw none");
    assert_eq!(
        stat(&s, "refresh_token").await + stat(&s, "token_errors").await,
        0
    );

    // gRPC says the same.
    let mut grpc = ConnectionServiceClient::new(s.app.channel().await);
    let refused = grpc
        .proxy(with_key(
            pb::ProxyRequest {
                connection_id: id.clone(),
                path: "../token".into(),
                ..Default::default()
            },
            &s.tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("path"), "{}", refused.message());
    let refused = grpc
        .proxy(with_key(
            pb::ProxyRequest {
                connection_id: id.clone(),
                method: "TRACE".into(),
                ..Default::default()
            },
            &s.tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("method"),
        "{}",
        refused.message()
    );

    // A connection that does not log in with OAuth has no proxy.
    let done = s
        .app
        .complete_session(&s.tenant, json!({}), "creator")
        .await;
    let sandbox = done["connectionId"].as_str().unwrap();
    let response = proxy_get(&s, sandbox, "me").await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "PROXY_NOT_SUPPORTED", "{body}");
}

#[tokio::test]
async fn twenty_concurrent_calls_on_an_expired_token_refresh_it_once() {
    // No background refresher: the calls find the token expired.
    let app = spawn_app_with(|args| args.oauth_refresh_interval = Duration::from_secs(3600)).await;
    let s = setup_on(app, 2).await;
    let id = connected(&s, "creator-3").await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    s.provider.slow(300).await;
    let calls = (0..20).map(|_| proxy_get(&s, &id, "me"));
    let answers = futures_util::future::join_all(calls).await;
    for answer in answers {
        assert_eq!(answer.status(), StatusCode::OK);
    }
    assert_eq!(
        stat(&s, "refresh_token").await,
        1,
        "{}",
        s.provider.stats().await
    );
    assert_eq!(stat(&s, "token_errors").await, 0);
    assert_eq!(
        stat(&s, "api").await,
        20,
        "no call was sent with the expired token"
    );
}

#[tokio::test]
async fn a_token_the_provider_refuses_is_refreshed_and_the_call_sent_once_more() {
    let s = setup(60).await;
    let id = connected(&s, "creator-4").await;
    let before = crate::oauth_refresh::connection(&s, &id).await;
    s.provider.expire_access_tokens().await;
    let response = proxy_get(&s, &id, "me").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(stat(&s, "refresh_token").await, 1);
    assert_eq!(stat(&s, "api").await, 2, "refused once, then answered");
    let after = crate::oauth_refresh::connection(&s, &id).await;
    assert!(
        crate::oauth_refresh::time(&after["oauth"]["tokenObtainedAt"])
            > crate::oauth_refresh::time(&before["oauth"]["tokenObtainedAt"])
    );

    // The grant itself revoked: the refresh is refused, the connection
    // expires with one event, and the call says to reconnect.
    s.provider.forget_grants().await;
    let response = proxy_get(&s, &id, "me").await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "SESSION_EXPIRED", "{body}");
    let events = s.app.events_of(&s.tenant, "connection.expired").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["reason"], "refresh_failed");
    let again = proxy_get(&s, &id, "me").await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(
        s.app.events_of(&s.tenant, "connection.expired").await.len(),
        1
    );

    // No token the provider ever issued is in the database in plaintext.
    let tokens = s.provider.issued_tokens().await;
    assert!(tokens.len() >= 4, "{tokens:?}");
    let dump = std::process::Command::new("pg_dump")
        .arg("--data-only")
        .arg(s.app.database_url().await)
        .output()
        .expect("pg_dump runs");
    assert!(dump.status.success());
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("connections"), "the dump has data");
    for token in tokens {
        assert!(!dump.contains(&token), "a provider token in pg_dump");
    }
}

#[tokio::test]
async fn large_answers_stream_within_the_limit_and_are_refused_past_it() {
    let app = spawn_app_with(|args| args.proxy_max_response_bytes = 4 * 1024 * 1024).await;
    let s = setup_on(app, 60).await;
    let id = connected(&s, "creator-5").await;

    // gRPC: the head, then the body in order.
    let mut grpc = ConnectionServiceClient::new(s.app.channel().await);
    let mut stream = grpc
        .proxy(with_key(
            pb::ProxyRequest {
                connection_id: id.clone(),
                path: "big".into(),
                query: "bytes=3000000&chunked=1".into(),
                ..Default::default()
            },
            &s.tenant.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let head = stream.message().await.unwrap().unwrap();
    assert_eq!(head.status, 200);
    assert!(
        head.headers
            .iter()
            .any(|h| h.name == "content-type" && h.value == "application/octet-stream")
    );
    let mut body = head.body.len();
    let mut messages = 1;
    while let Some(next) = stream.message().await.unwrap() {
        assert_eq!(next.status, 0);
        body += next.body.len();
        messages += 1;
    }
    assert_eq!(body, 3_000_000);
    assert!(messages > 2, "streamed in pieces");

    // Past the limit: refused when announced, cut off when not.
    let announced = proxy_get(&s, &id, "big?bytes=5000000").await;
    assert_eq!(announced.status(), StatusCode::BAD_GATEWAY);
    let body: Value = announced.json().await.unwrap();
    assert_eq!(body["code"], "PROXY_RESPONSE_TOO_LARGE", "{body}");
    let mut stream = grpc
        .proxy(with_key(
            pb::ProxyRequest {
                connection_id: id.clone(),
                path: "big".into(),
                query: "bytes=5000000&chunked=1".into(),
                ..Default::default()
            },
            &s.tenant.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    let cut = loop {
        match stream.message().await {
            Ok(Some(next)) => received += next.body.len(),
            Ok(None) => panic!("the whole answer came through"),
            Err(status) => break status,
        }
    };
    assert_eq!(cut.code(), tonic::Code::ResourceExhausted);
    assert!(received <= 4 * 1024 * 1024);
    let rest = proxy_get(&s, &id, "big?bytes=5000000&chunked=1").await;
    assert_eq!(rest.status(), StatusCode::OK, "the head had gone out");
    assert!(rest.bytes().await.is_err(), "the body is cut off");
}

#[tokio::test]
async fn the_access_token_is_handed_off_only_to_apps_the_operator_allowed() {
    let app = spawn_app_with(|args| args.oauth_refresh_interval = Duration::from_secs(3600)).await;
    let s = setup_on(app, 4).await;
    let id = connected(&s, "creator-6").await;
    let path = format!("/v2/connections/{id}/access-token");

    let refused = s.app.get(&path, &s.tenant.key).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "ACCESS_TOKEN_HANDOFF_DISABLED", "{body}");

    let db_url = s.app.database_url().await;
    let enabled = crate::process::admin(
        &db_url,
        &[
            "set-access-token-handoff",
            &s.tenant.app_id,
            "--enabled",
            "true",
        ],
    );
    assert!(enabled.status.success(), "{enabled:?}");

    // The first token has expired by now: the hand-off refreshes it.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let response = s.app.get(&path, &s.tenant.key).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let token: Value = response.json().await.unwrap();
    assert_eq!(stat(&s, "refresh_token").await, 1);
    assert_eq!(token["connectionId"], id.as_str());
    assert_eq!(token["tokenType"], "Bearer");
    assert!(token.get("refreshToken").is_none(), "{token}");
    assert!(
        crate::oauth_refresh::time(&token["expiresAt"]) > chrono::Utc::now(),
        "{token}"
    );
    assert_eq!(
        token["apiBaseUrl"],
        s.provider.base.join("/api").unwrap().as_str()
    );
    // It works at the provider, called directly.
    let direct = reqwest::Client::new()
        .get(s.provider.base.join("/api/me").unwrap())
        .bearer_auth(token["accessToken"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), StatusCode::OK);
    let echo: Value = direct.json().await.unwrap();
    assert_eq!(echo["sub"], "creator-6");

    // gRPC gives the same token while it is valid.
    let mut grpc = ConnectionServiceClient::new(s.app.channel().await);
    let same = grpc
        .get_connection_access_token(with_key(
            pb::GetConnectionAccessTokenRequest {
                connection_id: id.clone(),
            },
            &s.tenant.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.access_token, token["accessToken"].as_str().unwrap());
    assert_eq!(stat(&s, "refresh_token").await, 1);

    // Turned off again: refused.
    let disabled = crate::process::admin(
        &db_url,
        &[
            "set-access-token-handoff",
            &s.tenant.app_id,
            "--enabled",
            "false",
        ],
    );
    assert!(disabled.status.success());
    let refused = grpc
        .get_connection_access_token(with_key(
            pb::GetConnectionAccessTokenRequest { connection_id: id },
            &s.tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}
