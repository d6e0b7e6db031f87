use crate::helpers::{TestApp, spawn_app, with_key};
use linkd::kernel::ids::LinkId;
use linkd::kernel::tenant::Environment;
use linkd::pb;
use linkd::pb::link_service_client::LinkServiceClient;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

const CARD: &str = "4111111111111111";

/// The request of the reference document.
fn documented_request() -> Value {
    json!({
        "integrationId": "tmobile",
        "operations": [
            { "resource": "paymentMethod", "action": "read" },
            { "resource": "paymentMethod", "action": "write", "arguments": {
                "cardNumber": CARD, "expirationDate": "12/99", "cvv": "123",
                "nameOnCard": "John Doe", "billingZip": "10001" } }
        ],
        "webhookUrl": "https://your-server.com/webhook",
        "returnUrl": "https://your-app.com/done"
    })
}

async fn post_link(
    app: &TestApp,
    key: &str,
    body: &Value,
    idempotency_key: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url("/v1/links"))
        .bearer_auth(key)
        .json(body);
    if let Some(k) = idempotency_key {
        request = request.header("Idempotency-Key", k);
    }
    request.send().await.unwrap()
}

/// The same request as a proto message, built independently of the shim.
fn documented_proto() -> pb::CreateLinkRequest {
    let args =
        linkd::kernel::proto_json::to_struct(&documented_request()["operations"][1]["arguments"]);
    pb::CreateLinkRequest {
        integration_id: "tmobile".into(),
        operations: vec![
            pb::Operation {
                resource: "paymentMethod".into(),
                action: pb::OperationAction::Read as i32,
                arguments: None,
            },
            pb::Operation {
                resource: "paymentMethod".into(),
                action: pb::OperationAction::Write as i32,
                arguments: Some(args),
            },
        ],
        webhook_url: Some("https://your-server.com/webhook".into()),
        return_url: Some("https://your-app.com/done".into()),
        ..Default::default()
    }
}

fn paths(body: &Value) -> Vec<String> {
    body["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_string())
        .collect()
}

fn grpc_paths(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

#[tokio::test]
async fn created_link_has_exactly_the_documented_shape() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let before = chrono::Utc::now().timestamp_millis();
    let response = post_link(&app, &tenant.key, &documented_request(), None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();

    let mut keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "appClipUrl",
            "claimCode",
            "createdAt",
            "expiresAt",
            "integrationId",
            "linkId",
            "operations",
            "returnUrl",
            "status"
        ]
    );
    let link_id = body["linkId"].as_str().unwrap();
    let claim_code = body["claimCode"].as_str().unwrap();
    assert!(link_id.starts_with("link_"));
    assert!(
        claim_code.starts_with("clm_") && claim_code.len() >= 4 + 43,
        "≥ 256 random bits"
    );
    assert_eq!(body["integrationId"], "tmobile");
    assert_eq!(
        body["operations"],
        json!([{ "resource": "paymentMethod", "action": "read" }, { "resource": "paymentMethod", "action": "write" }])
    );
    assert_eq!(body["status"], "pending");
    assert_eq!(
        body["appClipUrl"],
        format!("https://appclip.example.com/{link_id}?code={claim_code}")
    );
    assert_eq!(
        body["returnUrl"],
        format!("https://your-app.com/done?linkId={link_id}")
    );
    let created = body["createdAt"].as_i64().unwrap();
    assert!(
        (before - 5_000..=chrono::Utc::now().timestamp_millis() + 5_000).contains(&created),
        "epoch ms"
    );
    assert_eq!(
        body["expiresAt"].as_i64().unwrap() - created,
        4 * 3600 * 1000,
        "default 4 hours"
    );
    assert!(!body.to_string().contains(CARD));

    // Stored: a link record only, arguments encrypted, claim code hashed.
    let (ciphertext, hash, sessions): (Vec<u8>, Vec<u8>, i64) = sqlx::query_as(
        "SELECT arguments_ciphertext, claim_code_hash, (SELECT count(*) FROM links) FROM links",
    )
    .fetch_one(app.api.db())
    .await
    .unwrap();
    assert_eq!(sessions, 1);
    assert!(!String::from_utf8_lossy(&ciphertext).contains(CARD));
    assert!(!String::from_utf8_lossy(&ciphertext).contains("\"123\""));
    let independent: Vec<u8> = sqlx::query_scalar("SELECT sha256(convert_to($1, 'UTF8'))")
        .bind(claim_code)
        .fetch_one(app.api.db())
        .await
        .unwrap();
    assert_eq!(
        hash, independent,
        "SHA-256 of the claim code, as Postgres computes it"
    );

    // GetLink shows it pending, on both surfaces.
    let got: Value = app
        .get(&format!("/v1/links/{link_id}"), &tenant.key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "pending");
    assert_eq!(got["operations"], body["operations"]);
    assert_eq!(got["expiresAt"], body["expiresAt"]);
    assert_eq!(got["webhookUrl"], "https://your-server.com/webhook");
    assert!(!got.to_string().contains(CARD) && !got.to_string().contains("clm_"));
    let link = app.grpc_link(&tenant.key, link_id).await;
    assert_eq!(link.status(), pb::LinkStatus::Pending);
    assert_eq!(
        link.return_url.as_deref(),
        Some(body["returnUrl"].as_str().unwrap())
    );
}

#[tokio::test]
async fn grpc_create_link_matches_rest() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let mut grpc = LinkServiceClient::new(app.channel().await);
    let mut req = documented_proto();
    req.expires_in = Some(600);
    req.return_url = Some("myapp://callback?from=linkd".into());
    let created = grpc
        .create_link(with_key(req, &tenant.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.status(), pb::LinkStatus::Pending);
    assert_eq!(
        created.return_url,
        format!("myapp://callback?from=linkd&linkId={}", created.link_id)
    );
    let span = created.expires_at.unwrap().seconds - created.created_at.unwrap().seconds;
    assert_eq!(span, 600);
    let ops: Vec<_> = created
        .operations
        .iter()
        .map(|o| (o.resource.as_str(), o.action()))
        .collect();
    assert_eq!(
        ops,
        [
            ("paymentMethod", pb::OperationAction::Read),
            ("paymentMethod", pb::OperationAction::Write)
        ]
    );
}

#[tokio::test]
async fn every_documented_400_case_names_its_path_on_both_surfaces() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let mut grpc = LinkServiceClient::new(app.channel().await);

    let with = |patch: Value| {
        let mut body = documented_request();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    let bad_card = json!([{ "resource": "paymentMethod", "action": "write", "arguments": {
        "cardNumber": "4111111111111112", "expirationDate": "01/20", "cvv": "12", "billingZip": "1" } }]);
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({}), vec!["integrationId", "operations"]),
        (with(json!({ "operations": [] })), vec!["operations"]),
        (
            with(json!({ "webhookUrl": "not a url" })),
            vec!["webhookUrl"],
        ),
        (
            with(json!({ "returnUrl": "javascript:alert(1)" })),
            vec!["returnUrl"],
        ),
        (
            with(json!({ "returnUrl": "data:text/html,hi" })),
            vec!["returnUrl"],
        ),
        (
            with(json!({ "returnUrl": "file:///etc/passwd" })),
            vec!["returnUrl"],
        ),
        (
            with(json!({ "returnUrl": "http://your-app.com/done" })),
            vec!["returnUrl"],
        ),
        (with(json!({ "expiresIn": 0 })), vec!["expiresIn"]),
        (with(json!({ "expiresIn": -5 })), vec!["expiresIn"]),
        (with(json!({ "expiresIn": 999_999_999 })), vec!["expiresIn"]),
        (
            with(json!({ "integrationId": "myspace" })),
            vec!["integrationId"],
        ),
        (
            with(
                json!({ "integrationId": "ubereats", "operations": [{ "resource": "mobileBillingStatement", "action": "read" }] }),
            ),
            vec!["operations[0]"],
        ),
        (
            with(json!({ "operations": [{ "resource": "paymentMethod", "action": "delete" }] })),
            vec!["operations[0].action"],
        ),
        (
            with(json!({ "operations": bad_card })),
            vec![
                "operations[0].arguments.cardNumber",
                "operations[0].arguments.cvv",
                "operations[0].arguments.expirationDate",
                "operations[0].arguments.billingZip",
            ],
        ),
        (
            with(
                json!({ "operations": [{ "resource": "mobileBillingStatement", "action": "read", "arguments": { "months": 99, "pages": 1 } }] }),
            ),
            vec!["operations[0].arguments.months", "operations[0].arguments"],
        ),
        // Several problems at once are all reported.
        (
            with(
                json!({ "webhookUrl": "nope", "returnUrl": "file:///x", "expiresIn": 0, "externalUserId": "u".repeat(300) }),
            ),
            vec!["webhookUrl", "returnUrl", "expiresIn", "externalUserId"],
        ),
    ];
    for (body, expected) in cases {
        let response = post_link(&app, &tenant.key, &body, None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let text = response.text().await.unwrap();
        assert!(
            !text.contains("4111111111111112") && !text.contains("\"12\""),
            "no card data echoed: {text}"
        );
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["error"], "Validation failed");
        let mut got = paths(&error);
        got.sort();
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "REST {body}");
        for issue in error["issues"].as_array().unwrap() {
            assert!(!issue["message"].as_str().unwrap().is_empty());
        }

        // The same request over gRPC gives the same paths (where gRPC can
        // express it: the shim's JSON parsing is REST-only).
        if body.get("operations").is_some_and(|o| {
            o.as_array()
                .is_some_and(|a| a.iter().all(|op| op["action"] != "delete"))
        }) {
            let req = rest_to_proto(&body);
            let status = grpc
                .create_link(with_key(req, &tenant.key))
                .await
                .unwrap_err();
            assert!(!status.message().contains("4111111111111112"));
            let mut got = grpc_paths(&status);
            got.sort();
            assert_eq!(got, want, "gRPC {body}");
        }
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(app.api.db())
        .await
        .unwrap();
    assert_eq!(count, 0, "invalid requests change nothing");
}

/// A test-side translation of a documented JSON body into the proto message.
fn rest_to_proto(body: &Value) -> pb::CreateLinkRequest {
    pb::CreateLinkRequest {
        integration_id: body["integrationId"].as_str().unwrap_or_default().into(),
        operations: body["operations"]
            .as_array()
            .map(|ops| {
                ops.iter()
                    .map(|op| pb::Operation {
                        resource: op["resource"].as_str().unwrap_or_default().into(),
                        action: match op["action"].as_str() {
                            Some("read") => pb::OperationAction::Read as i32,
                            Some("write") => pb::OperationAction::Write as i32,
                            _ => 0,
                        },
                        arguments: op
                            .get("arguments")
                            .map(linkd::kernel::proto_json::to_struct),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        webhook_url: body["webhookUrl"].as_str().map(Into::into),
        return_url: body["returnUrl"].as_str().map(Into::into),
        external_user_id: body["externalUserId"].as_str().map(Into::into),
        debug: false,
        expires_in: body["expiresIn"].as_i64(),
    }
}

#[tokio::test]
async fn wrong_json_types_are_reported_with_domain_problems() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let body = json!({ "integrationId": 5, "operations": "all", "debug": "yes", "expiresIn": 1.5, "webhookUrl": "nope", "extra": true });
    let response = post_link(&app, &tenant.key, &body, None).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let mut got = paths(&response.json().await.unwrap());
    got.sort();
    assert_eq!(
        got,
        [
            "debug",
            "expiresIn",
            "extra",
            "integrationId",
            "operations",
            "webhookUrl"
        ]
    );

    let response = app
        .http
        .post(app.url("/v1/links"))
        .bearer_auth(&tenant.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "Validation failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_replay_refuse_mismatches_and_survive_races() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let first: Value = post_link(&app, &tenant.key, &documented_request(), Some("order-1"))
        .await
        .json()
        .await
        .unwrap();
    let replay = post_link(&app, &tenant.key, &documented_request(), Some("order-1")).await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(
        replay.json::<Value>().await.unwrap(),
        first,
        "the stored response, byte for byte"
    );

    // The same request over gRPC with the same key is the same call.
    let mut grpc = LinkServiceClient::new(app.channel().await);
    let mut req = with_key(documented_proto(), &tenant.key);
    req.metadata_mut()
        .insert("idempotency-key", "order-1".parse().unwrap());
    let over_grpc = grpc.create_link(req).await.unwrap().into_inner();
    assert_eq!(over_grpc.link_id, first["linkId"].as_str().unwrap());

    let mut other = documented_request();
    other["returnUrl"] = json!("https://your-app.com/other");
    let mismatch = post_link(&app, &tenant.key, &other, Some("order-1")).await;
    assert_eq!(mismatch.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        mismatch.json::<Value>().await.unwrap()["code"],
        "IDEMPOTENCY_KEY_REUSED"
    );
    let mut req = with_key(
        pb::CreateLinkRequest {
            return_url: Some("https://x.example/y".into()),
            ..documented_proto()
        },
        &tenant.key,
    );
    req.metadata_mut()
        .insert("idempotency-key", "order-1".parse().unwrap());
    let status = grpc.create_link(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "IDEMPOTENCY_KEY_REUSED"
    );

    // Another tenant's identical key is independent.
    let other_tenant = app.create_tenant(Environment::Sandbox).await;
    let theirs: Value = post_link(
        &app,
        &other_tenant.key,
        &documented_request(),
        Some("order-1"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_ne!(theirs["linkId"], first["linkId"]);

    // Concurrent duplicates: one link; each answer is the link or a conflict.
    let request = documented_request();
    let attempts = (0..8).map(|_| post_link(&app, &tenant.key, &request, Some("race")));
    let responses = futures_util::future::join_all(attempts).await;
    let mut ids = std::collections::BTreeSet::new();
    for response in responses {
        match response.status() {
            StatusCode::CREATED => {
                ids.insert(
                    response.json::<Value>().await.unwrap()["linkId"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            StatusCode::CONFLICT => {
                assert_eq!(
                    response.json::<Value>().await.unwrap()["code"],
                    "IDEMPOTENCY_KEY_IN_USE"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM links WHERE organization_id = $1")
        .bind(tenant.tenant.organization_id)
        .fetch_one(app.api.db())
        .await
        .unwrap();
    assert_eq!(count, 2, "order-1 and race, once each");
}

#[tokio::test]
async fn links_are_tenant_scoped_and_expire_on_read() {
    let app = spawn_app().await;
    let alice = app.create_tenant(Environment::Sandbox).await;
    let bob = app.create_tenant(Environment::Sandbox).await;
    let mut body = documented_request();
    body["expiresIn"] = json!(1);
    let created: Value = post_link(&app, &alice.key, &body, None)
        .await
        .json()
        .await
        .unwrap();
    let link_id = created["linkId"].as_str().unwrap();

    let foreign = app.get(&format!("/v1/links/{link_id}"), &bob.key).await;
    let unknown = app
        .get(&format!("/v1/links/{}", LinkId::new()), &bob.key)
        .await;
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    assert_eq!(foreign.text().await.unwrap(), unknown.text().await.unwrap());
    let malformed = app.get("/v1/links/conn_123", &bob.key).await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);

    // Read until the one-second lifetime has passed (expiry on read, or the
    // sweep, whichever comes first).
    let started = std::time::Instant::now();
    let expired: Value = loop {
        let read: Value = app
            .get(&format!("/v1/links/{link_id}"), &alice.key)
            .await
            .json()
            .await
            .unwrap();
        if read["status"] != "pending" {
            break read;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(expired["status"], "expired");
    assert_eq!(expired["errorCode"], "link_expired");
    assert_eq!(expired["finishedAt"], created["expiresAt"]);
    let purged: Option<Vec<u8>> = sqlx::query_scalar("SELECT arguments_ciphertext FROM links")
        .fetch_one(app.api.db())
        .await
        .unwrap();
    assert!(
        purged.is_none(),
        "arguments (card, CVV) purged once expired"
    );
}

#[tokio::test]
async fn idempotency_keys_are_forgotten_after_their_retention() {
    let app = spawn_app().await; // background jobs every 300 ms
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let first: Value = post_link(&app, &tenant.key, &documented_request(), Some("old"))
        .await
        .json()
        .await
        .unwrap();
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(app.api.db())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
            .fetch_one(app.api.db())
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the sweep never forgot the key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let again: Value = post_link(&app, &tenant.key, &documented_request(), Some("old"))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(
        again["linkId"], first["linkId"],
        "an expired key is a new request"
    );
}

/// While a request with a key is still running (held inside its
/// transaction by a lock this test takes), the same key is `409` /
/// `ABORTED` at once on both surfaces; the same key on another RPC is a
/// different key; once the first finishes, repeats replay it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_in_use_is_refused_at_once_and_keys_are_per_rpc() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let mut blocker = app.api.db().begin().await.unwrap();
    sqlx::query("LOCK TABLE links IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let first = tokio::spawn({
        let (http, url, key) = (app.http.clone(), app.url("/v1/links"), tenant.key.clone());
        async move {
            http.post(url)
                .bearer_auth(key)
                .header("Idempotency-Key", "busy-1")
                .json(&documented_request())
                .send()
                .await
                .unwrap()
        }
    });
    crate::helpers::wait_for_lock_wait(app.api.db(), "INSERT INTO links%").await;
    let busy = post_link(&app, &tenant.key, &documented_request(), Some("busy-1")).await;
    assert_eq!(busy.status(), StatusCode::CONFLICT);
    assert_eq!(
        busy.json::<Value>().await.unwrap()["code"],
        "IDEMPOTENCY_KEY_IN_USE"
    );
    let mut grpc = LinkServiceClient::new(app.channel().await);
    let mut req = with_key(documented_proto(), &tenant.key);
    req.metadata_mut()
        .insert("idempotency-key", "busy-1".parse().unwrap());
    let status = grpc.create_link(req).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "IDEMPOTENCY_KEY_IN_USE"
    );
    blocker.rollback().await.unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let replay: Value = post_link(&app, &tenant.key, &documented_request(), Some("busy-1"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(replay["linkId"], first["linkId"]);
    // The same key on InitLinkSession is its own key, not a reuse.
    let session = app
        .http
        .post(app.url("/v2/link/init"))
        .bearer_auth(&tenant.key)
        .header("Idempotency-Key", "busy-1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), StatusCode::OK);

    let links: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(app.api.db())
        .await
        .unwrap();
    assert_eq!(links, 1);
}
