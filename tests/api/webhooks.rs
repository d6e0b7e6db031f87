//! Webhook delivery to a real HTTP receiver started by the test, with
//! signatures checked by an independent implementation (the
//! `standardwebhooks` crate): headers, retries, 410, 429, 3xx, timeouts,
//! the SSRF guard, secret rotation and the events API.

use crate::helpers::{TestApp, TestTenant, spawn_app, spawn_app_with, with_key};
use crate::sessions::CALLBACK;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use linkd::kernel::ids::{EventId, OrganizationId};
use linkd::kernel::tenant::{Environment, Tenant};
use linkd::pb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// The sender's end of the connection the request came on.
    pub peer: std::net::SocketAddr,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn id(&self) -> &str {
        self.headers["webhook-id"].to_str().unwrap()
    }

    pub fn timestamp(&self) -> i64 {
        self.headers["webhook-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Verifies the signature with the `standardwebhooks` crate.
    pub fn verifies_with(&self, secret: &str) -> bool {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&self.body, &self.headers)
            .is_ok()
    }
}

#[derive(Clone, Default)]
struct Log {
    received: Arc<Mutex<Vec<Received>>>,
}

/// A webhook receiver whose behaviour is chosen by the path:
/// `/ok`, `/flaky/N` (N × 500, then 200), `/always500`, `/gone` (410),
/// `/streamed` (200 whose body follows the headers 50 ms later),
/// `/busy` (429 with `Retry-After: 2` once, then 200), `/unavailable` (503
/// with `Retry-After` as an HTTP date 3 s ahead once, then 200), `/redirect` (302 to
/// `/ok`), `/slow` (answers after 3 s), `/busy-for-weeks` (429 with
/// `Retry-After` of two weeks, always).
pub struct Receiver {
    pub base: String,
    log: Log,
}

async fn receive(
    State(log): State<Log>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let seen_before = {
        let mut received = log.received.lock().unwrap();
        let seen = received.iter().filter(|r| r.path == path).count();
        received.push(Received {
            path: path.clone(),
            peer,
            headers,
            body: body.to_vec(),
            at: Instant::now(),
        });
        seen
    };
    let mut parts = path.split('/');
    match (parts.next(), parts.next()) {
        (Some("flaky"), Some(n)) if seen_before < n.parse().unwrap() => {
            AxumStatus::INTERNAL_SERVER_ERROR.into_response()
        }
        (Some("always500"), _) => AxumStatus::INTERNAL_SERVER_ERROR.into_response(),
        (Some("gone"), _) => AxumStatus::GONE.into_response(),
        (Some("busy"), _) if seen_before == 0 => {
            (AxumStatus::TOO_MANY_REQUESTS, [("retry-after", "2")]).into_response()
        }
        (Some("unavailable"), _) if seen_before == 0 => {
            // Retry-After as an HTTP date, 3 s ahead (whole seconds).
            let at = chrono::Utc::now() + chrono::Duration::seconds(3);
            let date = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
            (AxumStatus::SERVICE_UNAVAILABLE, [("retry-after", date)]).into_response()
        }
        (Some("busy-for-weeks"), _) => {
            (AxumStatus::TOO_MANY_REQUESTS, [("retry-after", "1209600")]).into_response()
        }
        (Some("redirect"), _) => (AxumStatus::FOUND, [("location", "/ok")]).into_response(),
        (Some("stall"), _) => {
            tokio::time::sleep(Duration::from_secs(8)).await;
            AxumStatus::OK.into_response()
        }
        (Some("slow"), _) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            AxumStatus::OK.into_response()
        }
        (Some("streamed"), _) => {
            // The body follows the headers a moment later, as streamed or
            // chunked answers do.
            let late = futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from_static(b"ok"))
            });
            axum::body::Body::from_stream(late).into_response()
        }
        // As the handler in `connections.md` does.
        _ => (AxumStatus::OK, "ok").into_response(),
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let log = Log::default();
        let router = axum::Router::new()
            .route("/{*path}", axum::routing::post(receive))
            .with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, service).await });
        Receiver { base, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    pub fn all(&self) -> Vec<Received> {
        self.log.received.lock().unwrap().clone()
    }

    pub fn at(&self, path: &str) -> Vec<Received> {
        self.all().into_iter().filter(|r| r.path == path).collect()
    }

    /// Waits until `path` got at least `n` requests.
    pub async fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let got = self.at(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                started.elapsed() < within,
                "{path}: {} of {n} requests after {within:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

pub async fn hooked_tenant(app: &TestApp, webhook_url: &str) -> TestTenant {
    let organization_id = OrganizationId::new();
    linkd::client_apps::store::create_organization(app.api.db(), organization_id, "Hooked org")
        .await
        .unwrap();
    app.add_app_hooked(
        Tenant {
            organization_id,
            environment: Environment::Sandbox,
        },
        "Hooked app",
        &[CALLBACK.to_string()],
        webhook_url,
    )
    .await
}

/// A cancelled link: one `link.failed` event, sent to `webhook_url` when
/// given (else to the app's URL). Returns the link id.
pub async fn failed_link(app: &TestApp, tenant: &TestTenant, webhook_url: Option<&str>) -> String {
    let mut body = json!({ "integrationId": "verizon",
        "operations": [{ "resource": "mobileBillingStatement", "action": "read" }] });
    if let Some(url) = webhook_url {
        body["webhookUrl"] = json!(url);
    }
    let link: Value = app
        .http
        .post(app.url("/v1/links"))
        .bearer_auth(&tenant.key)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claimed: Value = app
        .http
        .post(app.url("/v1/flow/claim"))
        .json(&json!({ "linkId": link["linkId"], "claimCode": link["claimCode"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cancelled = app
        .http
        .post(app.url("/v1/flow/cancel"))
        .bearer_auth(claimed["flowToken"].as_str().unwrap())
        .json(&json!({ "step": "login" }))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    link["linkId"].as_str().unwrap().to_string()
}

async fn event_of(app: &TestApp, tenant: &TestTenant, event_id: &str) -> Value {
    let response = app
        .get(&format!("/v1/events/{event_id}"), &tenant.key)
        .await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "GET /v1/events/{event_id}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls an event until its delivery status is `status`.
async fn wait_status(app: &TestApp, tenant: &TestTenant, event_id: &str, status: &str) -> Value {
    let started = Instant::now();
    loop {
        let event = event_of(app, tenant, event_id).await;
        if event["event"]["deliveryStatus"] == status {
            return event;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "event never became {status}: {event}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn deliveries_are_signed_and_verify_with_an_independent_library() {
    let receiver = Receiver::start().await;
    let app = spawn_app().await;
    let tenant = hooked_tenant(&app, &receiver.url("app")).await;

    let done = app
        .complete_session(
            &tenant,
            json!({ "clientReferenceId": "user_abc123" }),
            "user_good",
        )
        .await;
    let got = receiver.wait_for("app", 1, Duration::from_secs(10)).await;
    let hook = &got[0];
    assert!(hook.verifies_with(&tenant.webhook_secret));
    assert!(!hook.verifies_with(&linkd::client_apps::rules::generate_webhook_secret()));
    assert!(hook.id().starts_with("evt_"));
    assert!((hook.timestamp() - chrono::Utc::now().timestamp()).abs() < 30);
    assert_eq!(hook.headers["content-type"], "application/json");
    let body = hook.json();
    assert_eq!(body["type"], "connection.created");
    assert_eq!(body["data"]["clientReferenceId"], "user_abc123");
    assert_eq!(body["data"]["connection"]["id"], done["connectionId"]);
    assert!(!String::from_utf8_lossy(&hook.body).contains("pass_good"));

    // Answers are read to the end, even when the body comes after the
    // headers, so the next delivery reuses the pooled connection.
    let streamed = receiver.url("streamed");
    failed_link(&app, &tenant, Some(&streamed)).await;
    let first = receiver
        .wait_for("streamed", 1, Duration::from_secs(10))
        .await;
    // Recorded only after the whole answer was read.
    wait_status(&app, &tenant, first[0].id(), "delivered").await;
    failed_link(&app, &tenant, Some(&streamed)).await;
    let got = receiver
        .wait_for("streamed", 2, Duration::from_secs(10))
        .await;
    assert_eq!(got[0].peer, got[1].peer, "one connection for both");

    // A link's own webhookUrl wins over the app's.
    let link_id = failed_link(&app, &tenant, Some(&receiver.url("link-own"))).await;
    let got = receiver
        .wait_for("link-own", 1, Duration::from_secs(10))
        .await;
    assert!(got[0].verifies_with(&tenant.webhook_secret));
    assert_eq!(got[0].json()["type"], "link.failed");
    assert_eq!(got[0].json()["data"]["linkId"], link_id.as_str());

    // The events API shows both delivered, with their attempts.
    let event = wait_status(&app, &tenant, hook.id(), "delivered").await;
    assert_eq!(event["event"]["type"], "connection.created");
    assert_eq!(event["event"]["destinationUrl"], receiver.url("app"));
    assert_eq!(event["attempts"][0]["statusCode"], 200);
    assert_eq!(event["attempts"].as_array().unwrap().len(), 1);
    let listed: Value = app
        .get(&format!("/v1/events?linkId={link_id}"), &tenant.key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["events"][0]["id"], got[0].id());

    let metrics = metrics_of(&app).await;
    assert!(
        metrics.contains("linkd_webhook_deliveries_total{outcome=\"delivered\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("linkd_webhook_delivery_duration_seconds_count"));
    assert!(metrics.contains("linkd_webhook_queue_depth"));
}

#[tokio::test]
async fn failures_retry_on_the_schedule_with_the_same_id_and_a_fresh_timestamp() {
    let receiver = Receiver::start().await;
    // 1.3 s ± 20 % jitter is over a second, so each attempt's
    // `webhook-timestamp` (whole seconds) is later than the one before.
    let app = spawn_app_with(|args| {
        args.webhook_retry_schedule = linkd::ops::config::Schedule(vec![
            Duration::ZERO,
            Duration::from_millis(1300),
            Duration::from_millis(1300),
        ])
    })
    .await;
    let tenant = hooked_tenant(&app, &receiver.url("flaky/2")).await;
    failed_link(&app, &tenant, None).await;
    let got = receiver
        .wait_for("flaky/2", 3, Duration::from_secs(15))
        .await;
    assert!(got.iter().all(|r| r.id() == got[0].id()), "one webhook-id");
    assert!(got[1].timestamp() > got[0].timestamp() && got[2].timestamp() > got[1].timestamp());
    assert!(got.iter().all(|r| r.verifies_with(&tenant.webhook_secret)));
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(1040),
        "jittered 1.3 s"
    );
    let event = wait_status(&app, &tenant, got[0].id(), "delivered").await;
    let codes: Vec<i64> = event["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["statusCode"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 200]);

    // When the schedule runs out the event is failed; redelivery starts over.
    let hopeless = hooked_tenant(&app, &receiver.url("always500")).await;
    failed_link(&app, &hopeless, None).await;
    let got = receiver
        .wait_for("always500", 3, Duration::from_secs(15))
        .await;
    let event = wait_status(&app, &hopeless, got[0].id(), "failed").await;
    assert_eq!(event["event"]["lastError"], "HTTP 500");
    let redeliver = app
        .http
        .post(app.url("/v1/events/redeliver-failed"))
        .bearer_auth(&hopeless.key)
        .json(&json!({ "createdAfter": "2020-01-01T00:00:00Z" }))
        .send()
        .await
        .unwrap();
    assert_eq!(redeliver.json::<Value>().await.unwrap()["queued"], 1);
    let again = receiver
        .wait_for("always500", 4, Duration::from_secs(10))
        .await;
    assert_eq!(again[3].id(), got[0].id());
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_redirects_are_not_followed() {
    let receiver = Receiver::start().await;
    let app = spawn_app().await;
    let tenant = hooked_tenant(&app, &receiver.url("gone")).await;
    failed_link(&app, &tenant, None).await;
    let got = receiver.wait_for("gone", 1, Duration::from_secs(10)).await;
    let first = wait_status(&app, &tenant, got[0].id(), "failed").await;
    assert!(
        first["event"]["lastError"]
            .as_str()
            .unwrap()
            .contains("410")
    );
    // The next event is not sent to the disabled endpoint.
    let second_link = failed_link(&app, &tenant, None).await;
    let listed: Value = app
        .get(&format!("/v1/events?linkId={second_link}"), &tenant.key)
        .await
        .json()
        .await
        .unwrap();
    let second_id = listed["events"][0]["id"].as_str().unwrap().to_string();
    let second = wait_status(&app, &tenant, &second_id, "failed").await;
    assert!(
        second["event"]["lastError"]
            .as_str()
            .unwrap()
            .contains("disabled")
    );
    assert_eq!(receiver.at("gone").len(), 1);
    // Redelivering re-enables it.
    let mut events = pb::event_service_client::EventServiceClient::new(app.channel().await);
    let queued = events
        .redeliver_event(with_key(
            pb::RedeliverEventRequest {
                event_id: second_id.clone(),
            },
            &tenant.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        queued.event.unwrap().delivery_status(),
        pb::DeliveryStatus::Pending
    );
    let got = receiver.wait_for("gone", 2, Duration::from_secs(10)).await;
    assert_eq!(got[1].id(), second_id);

    // 3xx is a failure and is not followed.
    let redirected = hooked_tenant(&app, &receiver.url("redirect")).await;
    failed_link(&app, &redirected, None).await;
    let got = receiver
        .wait_for("redirect", 3, Duration::from_secs(10))
        .await;
    let event = wait_status(&app, &redirected, got[0].id(), "failed").await;
    assert_eq!(event["attempts"][0]["statusCode"], 302);
    assert!(
        receiver.at("ok").is_empty(),
        "the redirect was not followed"
    );
}

#[tokio::test]
async fn retry_after_is_honoured_for_429_and_503_and_timeouts_are_failures() {
    let receiver = Receiver::start().await;
    // Schedule 0, 300 ms, 600 ms; `/slow` answers after 3 s, well past 1 s.
    let app = spawn_app_with(|args| args.webhook_timeout = Duration::from_secs(1)).await;
    let busy = hooked_tenant(&app, &receiver.url("busy")).await;
    failed_link(&app, &busy, None).await;
    let got = receiver.wait_for("busy", 2, Duration::from_secs(10)).await;
    assert!(
        got[1].at - got[0].at >= Duration::from_secs(2),
        "waited for Retry-After"
    );
    assert_eq!(got[0].id(), got[1].id());

    let unavailable = hooked_tenant(&app, &receiver.url("unavailable")).await;
    failed_link(&app, &unavailable, None).await;
    let got = receiver
        .wait_for("unavailable", 2, Duration::from_secs(10))
        .await;
    assert!(
        got[1].at - got[0].at >= Duration::from_secs(2),
        "waited for the HTTP-date Retry-After, not the 300 ms schedule"
    );
    let event = wait_status(&app, &unavailable, got[0].id(), "delivered").await;
    assert_eq!(event["attempts"][0]["statusCode"], 503);

    let slow = hooked_tenant(&app, &receiver.url("slow")).await;
    failed_link(&app, &slow, None).await;
    let got = receiver.wait_for("slow", 1, Duration::from_secs(10)).await;
    let started = Instant::now();
    loop {
        let event = event_of(&app, &slow, got[0].id()).await;
        if let Some(error) = event["attempts"][0]["error"].as_str() {
            assert!(error.contains("timed out"), "{error}");
            assert!(event["attempts"][0]["statusCode"].is_null());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_ssrf_guard_refuses_private_destinations_before_connecting() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|args| {
        args.webhook_allow = linkd::ops::config::Allow(Default::default());
    })
    .await;
    let tenant = hooked_tenant(&app, &receiver.url("app-default")).await;
    let port = receiver.base.rsplit(':').next().unwrap().to_string();
    let destinations = [
        format!("http://127.0.0.1:{port}/loopback"),
        format!("http://localhost:{port}/by-name"),
        // Other spellings of the same host: trailing dot, case, IDNA.
        format!("http://localhost.:{port}/trailing-dot"),
        format!("http://LocalHost:{port}/case"),
        format!("http://\u{24db}ocalhost:{port}/idna"),
        format!("http://127.0.0.1.:{port}/dotted-literal"),
        format!("http://[::1]:{port}/v6-loopback"),
        format!("http://[::ffff:127.0.0.1]:{port}/mapped"),
        format!("http://0.0.0.0:{port}/unspecified"),
        "http://10.0.0.1/private".to_string(),
        "http://172.16.0.1/private".to_string(),
        "http://192.168.1.1/private".to_string(),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://100.64.0.1/cgnat".to_string(),
        "http://224.0.0.1/multicast".to_string(),
        "http://240.0.0.1/reserved".to_string(),
        "http://198.18.0.1/benchmarking".to_string(),
        "http://192.0.2.1/documentation".to_string(),
        "http://[fc00::1]/ula".to_string(),
        "http://[fe80::1]/link-local".to_string(),
        "http://[ff02::1]/v6-multicast".to_string(),
        "http://[2001:db8::1]/v6-documentation".to_string(),
        "http://[100::1]/v6-discard".to_string(),
        "http://[64:ff9b::a9fe:a9fe]/nat64-metadata".to_string(),
        "http://[2002:a9fe:a9fe::1]/6to4-metadata".to_string(),
    ];
    let mut links = Vec::new();
    for destination in &destinations {
        links.push((
            destination.clone(),
            failed_link(&app, &tenant, Some(destination)).await,
        ));
    }
    for (destination, link_id) in links {
        let listed: Value = app
            .get(&format!("/v1/events?linkId={link_id}"), &tenant.key)
            .await
            .json()
            .await
            .unwrap();
        let id = listed["events"][0]["id"].as_str().unwrap().to_string();
        let event = wait_status(&app, &tenant, &id, "failed").await;
        let error = event["event"]["lastError"].as_str().unwrap();
        assert!(
            error.contains("destination refused"),
            "{destination}: {error}"
        );
        assert_eq!(
            event["attempts"].as_array().unwrap().len(),
            1,
            "{destination}: no retries"
        );
    }
    assert!(
        receiver.all().is_empty(),
        "nothing reached the receiver: {:?}",
        receiver.all()
    );
    let metrics = metrics_of(&app).await;
    let refused = format!(
        "linkd_webhook_deliveries_total{{outcome=\"refused\"}} {}",
        destinations.len()
    );
    assert!(metrics.contains(&refused), "{refused} in {metrics}");
}

#[tokio::test]
async fn a_rotated_secret_and_its_successor_both_sign_during_rotation() {
    let receiver = Receiver::start().await;
    let app = spawn_app().await;
    let tenant = hooked_tenant(&app, &receiver.url("rotating")).await;
    let rotated: Value = app
        .http
        .post(app.url(&format!(
            "/v1/client-apps/{}/rotate-webhook-secret",
            tenant.app_id
        )))
        .bearer_auth(&tenant.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_secret = rotated["webhookSecret"].as_str().unwrap().to_string();
    assert!(new_secret.starts_with("whsec_") && new_secret != tenant.webhook_secret);
    failed_link(&app, &tenant, None).await;
    let got = receiver
        .wait_for("rotating", 1, Duration::from_secs(10))
        .await;
    let signatures = got[0].headers["webhook-signature"].to_str().unwrap();
    assert_eq!(signatures.split(' ').count(), 2);
    assert!(
        got[0].verifies_with(&tenant.webhook_secret),
        "old secret still verifies"
    );
    assert!(got[0].verifies_with(&new_secret));

    // With no grace period, only the newest secret signs.
    let mut apps = pb::client_app_service_client::ClientAppServiceClient::new(app.channel().await);
    let newest = apps
        .rotate_webhook_secret(with_key(
            pb::RotateWebhookSecretRequest {
                client_app_id: tenant.app_id.clone(),
                previous_secret_grace_seconds: Some(0),
            },
            &tenant.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .webhook_secret;
    failed_link(&app, &tenant, None).await;
    let got = receiver
        .wait_for("rotating", 2, Duration::from_secs(10))
        .await;
    assert_eq!(
        got[1].headers["webhook-signature"]
            .to_str()
            .unwrap()
            .split(' ')
            .count(),
        1
    );
    assert!(got[1].verifies_with(&newest));
    assert!(!got[1].verifies_with(&new_secret));
    let other = hooked_tenant(&app, &receiver.url("other")).await;
    let foreign = app
        .http
        .post(app.url(&format!(
            "/v1/client-apps/{}/rotate-webhook-secret",
            tenant.app_id
        )))
        .bearer_auth(&other.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_events_api_filters_pages_and_isolates_tenants() {
    let receiver = Receiver::start().await;
    let app = spawn_app().await;
    let tenant = hooked_tenant(&app, &receiver.url("api")).await;
    let other = hooked_tenant(&app, &receiver.url("api-other")).await;
    let connected = app
        .complete_session(&tenant, json!({ "clientReferenceId": "r" }), "user_good")
        .await;
    let connection_id = connected["connectionId"].as_str().unwrap().to_string();
    let before_links = chrono::Utc::now();
    let mut link_ids = Vec::new();
    for _ in 0..3 {
        link_ids.push(failed_link(&app, &tenant, None).await);
    }
    failed_link(&app, &other, None).await;
    receiver.wait_for("api", 4, Duration::from_secs(10)).await;

    let list = |query: String| {
        let app = &app;
        let key = tenant.key.clone();
        async move {
            let response = app.get(&format!("/v1/events{query}"), &key).await;
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (_, all) = list(String::new()).await;
    assert_eq!(
        all["events"].as_array().unwrap().len(),
        4,
        "only this tenant's"
    );
    let (_, by_type) = list("?type=connection.created".into()).await;
    assert_eq!(by_type["events"][0]["connectionId"], connection_id.as_str());
    assert_eq!(by_type["events"].as_array().unwrap().len(), 1);
    let (_, by_connection) = list(format!("?connectionId={connection_id}")).await;
    assert_eq!(by_connection["events"].as_array().unwrap().len(), 1);
    let after = before_links.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (_, since) = list(format!("?createdAfter={}", urlencode(&after))).await;
    assert_eq!(since["events"].as_array().unwrap().len(), 3);
    // Keyset paging.
    let (_, page1) = list("?limit=3".into()).await;
    let token = page1["nextPageToken"].as_str().unwrap();
    let (_, page2) = list(format!("?limit=3&pageToken={token}")).await;
    assert_eq!(page2["events"].as_array().unwrap().len(), 1);
    assert_eq!(page2["nextPageToken"], Value::Null);
    for (query, path) in [
        ("?limit=0", "limit"),
        ("?linkId=abc", "linkId"),
        ("?deliveryStatus=lost", "deliveryStatus"),
        ("?createdAfter=yesterday", "createdAfter"),
        ("?colour=red", "colour"),
    ] {
        let (status, error) = list(query.into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(error["issues"][0]["path"], path);
    }
    // Another tenant's event is unknown.
    let id = all["events"][0]["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/v1/events/{id}"), &other.key)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    // gRPC agrees.
    let mut events = pb::event_service_client::EventServiceClient::new(app.channel().await);
    let page = events
        .list_events(with_key(
            pb::ListEventsRequest {
                r#type: Some("link.failed".into()),
                ..Default::default()
            },
            &tenant.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 3);
    let found = events
        .get_event(with_key(
            pb::GetEventRequest {
                event_id: page.events[0].id.clone(),
            },
            &tenant.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        found.event.unwrap().link_id.as_deref(),
        Some(link_ids[2].as_str())
    );
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A real link whose result is larger than a webhook body may be: the
/// `link.completed` webhook leaves the result out and says so, and GetLink
/// still returns all of it.
#[tokio::test]
async fn oversized_link_results_are_left_out_of_the_webhook_body() {
    let receiver = Receiver::start().await;
    let app = spawn_app().await;
    let tenant = hooked_tenant(&app, &receiver.url("large")).await;
    let read =
        json!({ "resource": "transactions", "action": "read", "arguments": { "limit": 500 } });
    let link: Value = app
        .http
        .post(app.url("/v1/links"))
        .bearer_auth(&tenant.key)
        .json(&json!({ "integrationId": "northbank", "operations": [read.clone(), read.clone(), read.clone(), read] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let flow = app.claim(&link).await;
    let done = flow.login("user_large", "pass_good").await;
    assert_eq!(done["outcome"], "success", "{done}");

    let got = receiver.wait_for("large", 1, Duration::from_secs(20)).await;
    let body = got[0].json();
    assert_eq!(body["type"], "link.completed");
    assert_eq!(body["data"]["linkId"], link["linkId"]);
    assert_eq!(body["data"]["resultTruncated"], true);
    assert!(body["data"].get("result").is_none());
    assert!(got[0].body.len() < linkd::events::outbox::MAX_PAYLOAD_BYTES);
    let full: Value = app
        .get(
            &format!("/v1/links/{}", link["linkId"].as_str().unwrap()),
            &tenant.key,
        )
        .await
        .json()
        .await
        .unwrap();
    let operations = full["result"]["operations"].as_array().unwrap();
    assert_eq!(operations.len(), 4);
    assert!(
        operations
            .iter()
            .all(|op| op["data"].as_array().unwrap().len() == 500)
    );
    assert!(
        serde_json::to_vec(&full["result"]).unwrap().len()
            > linkd::events::outbox::MAX_PAYLOAD_BYTES,
        "the result really is larger than a webhook body"
    );
}

/// The sweep removes finished events older than the retention (30 days by
/// default) with their attempts; pending and recent ones stay.
#[tokio::test]
async fn finished_events_past_their_retention_are_removed_and_pending_ones_kept() {
    let receiver = Receiver::start().await;
    let app = spawn_app().await;
    let tenant = hooked_tenant(&app, &receiver.url("kept")).await;
    for _ in 0..3 {
        failed_link(&app, &tenant, None).await;
    }
    let got = receiver.wait_for("kept", 3, Duration::from_secs(10)).await;
    let ids: Vec<String> = got.iter().map(|r| r.id().to_string()).collect();
    for id in &ids {
        wait_status(&app, &tenant, id, "delivered").await;
    }
    let uuid = |id: &str| EventId::parse(id).unwrap();
    let (old_delivered, old_pending) = (uuid(&ids[0]), uuid(&ids[1]));
    // One transaction: a sweep between two statements would see the pending
    // event old and still delivered, and rightly remove it.
    let mut tx = app.api.db().begin().await.unwrap();
    sqlx::query(
        "UPDATE events SET delivery_status = 'pending', next_attempt_at = now() + interval '1 day'
         WHERE id = $1",
    )
    .bind(old_pending)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE events SET created_at = now() - interval '31 days' WHERE id = ANY($1)")
        .bind([old_delivered, old_pending])
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let started = Instant::now();
    while app
        .get(&format!("/v1/events/{}", ids[0]), &tenant.key)
        .await
        .status()
        != StatusCode::NOT_FOUND
    {
        assert!(started.elapsed() < Duration::from_secs(10), "never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM delivery_attempts WHERE event_id = $1")
            .bind(old_delivered)
            .fetch_one(app.api.db())
            .await
            .unwrap();
    assert_eq!(attempts, 0, "its attempts went with it");
    assert_eq!(
        event_of(&app, &tenant, &ids[1]).await["event"]["deliveryStatus"],
        "pending"
    );
    assert_eq!(
        event_of(&app, &tenant, &ids[2]).await["event"]["deliveryStatus"],
        "delivered"
    );
}

/// The Prometheus exposition of `GET /metrics`.
pub async fn metrics_of(app: &TestApp) -> String {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing from {exposition}"))
        .parse()
        .unwrap()
}

/// While every delivery slot is busy the queue gauges keep moving: the
/// backlog and how long its oldest due event has waited.
#[tokio::test]
async fn queue_metrics_show_the_backlog_while_every_slot_is_busy() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|args| {
        args.webhook_concurrency = 1;
        args.webhook_timeout = Duration::from_secs(10);
        args.webhook_lease = Duration::from_secs(20);
    })
    .await;
    let tenant = hooked_tenant(&app, &receiver.url("stall")).await;
    for _ in 0..3 {
        failed_link(&app, &tenant, None).await;
    }
    // One delivery holds the only slot for 8 s; two are due and waiting.
    let arrived = receiver.wait_for("stall", 1, Duration::from_secs(10)).await[0].at;
    loop {
        let exposition = metrics_of(&app).await;
        let depth = metric(&exposition, "linkd_webhook_queue_depth");
        let lag = metric(&exposition, "linkd_webhook_oldest_due_seconds");
        if depth == 3.0 && lag >= 1.0 {
            break;
        }
        assert!(
            arrived.elapsed() < Duration::from_secs(7),
            "depth {depth}, oldest due {lag} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(receiver.at("stall").len(), 1, "still one at a time");
}

/// A `Retry-After` beyond 24 hours is held to 24 hours: a receiver cannot
/// park its events for weeks.
#[tokio::test]
async fn retry_after_is_capped_at_a_day() {
    let receiver = Receiver::start().await;
    let app = spawn_app().await;
    let tenant = hooked_tenant(&app, &receiver.url("busy-for-weeks")).await;
    failed_link(&app, &tenant, None).await;
    let got = receiver
        .wait_for("busy-for-weeks", 1, Duration::from_secs(10))
        .await;
    let event = wait_attempts(&app, &tenant, got[0].id(), 1).await;
    let next =
        chrono::DateTime::parse_from_rfc3339(event["event"]["nextAttemptAt"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);
    let wait = next - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::hours(23) && wait <= chrono::Duration::hours(24),
        "next attempt in {wait}: {event}"
    );
    assert_eq!(event["event"]["deliveryStatus"], "pending");
}

/// The event once `n` attempts are recorded.
async fn wait_attempts(app: &TestApp, tenant: &TestTenant, event_id: &str, n: usize) -> Value {
    let started = Instant::now();
    loop {
        let event = event_of(app, tenant, event_id).await;
        if event["attempts"].as_array().map_or(0, Vec::len) >= n {
            return event;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{event}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /v1/events/{id}` reads the event and its attempts from one
/// snapshot: an attempt recorded between the two reads is not shown next to
/// the event as it was before it.
#[tokio::test]
async fn an_event_and_its_attempts_are_read_together() {
    let receiver = Receiver::start().await;
    // The dispatcher looks once at start-up, then not for an hour.
    let app = spawn_app_with(|args| args.webhook_poll_interval = Duration::from_secs(3600)).await;
    let tenant = hooked_tenant(&app, &receiver.url("ok")).await;
    failed_link(&app, &tenant, None).await;
    let db = app.api.db().clone();
    let event_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM events")
        .fetch_one(&db)
        .await
        .unwrap();
    let public_id = EventId::from_uuid(event_id).to_string();

    // A delivery's outcome being written, with the attempts table held so
    // the read waits between its two queries.
    let mut recording = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE delivery_attempts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *recording)
        .await
        .unwrap();
    let read = tokio::spawn({
        let (url, key, http) = (
            app.url(&format!("/v1/events/{public_id}")),
            tenant.key.clone(),
            app.http.clone(),
        );
        async move {
            let response = http.get(url).bearer_auth(key).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()
        }
    });
    crate::helpers::wait_for_lock_wait(&db, "%FROM delivery_attempts%").await;
    sqlx::query(
        "INSERT INTO delivery_attempts (id, event_id, attempt, url, started_at, latency_ms, status_code)
         VALUES (gen_random_uuid(), $1, 1, 'http://127.0.0.1/ok', now(), 3, 200)",
    )
    .bind(event_id)
    .execute(&mut *recording)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE events SET attempts = 1, delivery_status = 'delivered', delivered_at = now() WHERE id = $1",
    )
    .bind(event_id)
    .execute(&mut *recording)
    .await
    .unwrap();
    recording.commit().await.unwrap();

    let seen = read.await.unwrap();
    assert_eq!(seen["event"]["deliveryStatus"], "pending", "{seen}");
    assert_eq!(
        seen["attempts"].as_array().map(Vec::len),
        Some(0),
        "the attempt recorded after the event was read is not shown with it: {seen}"
    );
    // Read again: both changes, together.
    let now = event_of(&app, &tenant, &public_id).await;
    assert_eq!(now["event"]["deliveryStatus"], "delivered");
    assert_eq!(now["attempts"].as_array().map(Vec::len), Some(1));
}
