//! The input gate, tried as an attacker would: NUL characters in any
//! string, bodies that are not JSON objects, unknown fields, the wrong
//! content type, protobuf that does not decode, and ids that look right but
//! name nothing. Each is a clear client error naming the field, on both
//! surfaces, and changes nothing.

use crate::helpers::{TestApp, TestTenant, spawn_app, with_key};
use linkd::kernel::ids::EventId;
use linkd::kernel::tenant::Environment;
use linkd::pb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt as _;

const NUL: &str = "a\u{0}b";

async fn post(app: &TestApp, key: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    let response = app
        .http
        .post(app.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The paths a REST validation error names.
fn issue_paths(body: &Value) -> Vec<String> {
    body["issues"]
        .as_array()
        .map(|issues| {
            issues
                .iter()
                .map(|i| i["path"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The fields a gRPC `BadRequest` detail names.
fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(app.api.db())
        .await
        .unwrap()
}

fn card_link() -> Value {
    json!({ "integrationId": "tmobile", "operations": [{ "resource": "paymentMethod", "action": "write",
        "arguments": { "cardNumber": "5555555555554444", "expirationDate": "12/99", "cvv": "987",
                       "nameOnCard": "Ada", "billingZip": "10001" } }],
        "webhookUrl": "https://hooks.example.com/x", "returnUrl": "https://app.example.com/done",
        "externalUserId": "user-1" })
}

/// `body` with the string at `path` (dots, `[i]`) replaced by one with NUL.
fn with_nul(body: &Value, path: &str) -> Value {
    let mut body = body.clone();
    let mut at = &mut body;
    for part in path.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (
                name,
                Some(rest.trim_end_matches(']').parse::<usize>().unwrap()),
            ),
            None => (part, None),
        };
        at = &mut at[name];
        if let Some(i) = index {
            at = &mut at[i];
        }
    }
    *at = json!(NUL);
    body
}

#[tokio::test]
async fn nul_in_any_rest_string_is_a_400_naming_the_field_and_writes_nothing() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = card_link();
    for path in [
        "integrationId",
        "webhookUrl",
        "returnUrl",
        "externalUserId",
        "operations[0].resource",
        "operations[0].action",
        "operations[0].arguments.cardNumber",
        "operations[0].arguments.nameOnCard",
    ] {
        let (status, body) = post(&app, &tenant.key, "/v1/links", &with_nul(&link, path)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(issue_paths(&body), [path], "{body}");
        assert!(!body.to_string().contains("5555555555554444"), "{body}");
    }
    let session = json!({ "clientAppId": tenant.app_id, "redirectUrl": "https://app.example.com/callback",
        "clientReferenceId": "ref-1", "connectionId": "conn_0190", "geolocation": { "country": "US", "state": "CA" } });
    for path in [
        "clientAppId",
        "redirectUrl",
        "clientReferenceId",
        "connectionId",
        "geolocation.country",
        "geolocation.state",
    ] {
        let (status, body) = post(
            &app,
            &tenant.key,
            "/v2/link/init",
            &with_nul(&session, path),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(issue_paths(&body), [path], "{body}");
    }
    // A NUL in a key is refused too, at the object holding it.
    let (status, body) = post(
        &app,
        &tenant.key,
        "/v1/links",
        &json!({ "integrationId": "tmobile", "a\u{0}": 1 }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(count(&app, "links").await, 0);
    assert_eq!(count(&app, "flows").await, 0);

    for query in [
        "/v2/connections?clientReferenceId=%00",
        "/v2/connections?client_reference_id=x%00y",
        "/v2/connections?status=%00",
        "/v2/connections?pageToken=%00",
        "/v1/events?type=%00",
        "/v1/events?deliveryStatus=%00",
        "/v1/events?linkId=link_%00",
        "/v1/providers?integrationId=%00",
    ] {
        let response = app.get(query, &tenant.key).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = response.json().await.unwrap();
        let name = query.split('?').nth(1).unwrap().split('=').next().unwrap();
        assert_eq!(issue_paths(&body), [name], "{query}: {body}");
    }

    // The end user's side, and the OAuth token endpoint.
    let (status, body) = post(
        &app,
        "",
        "/v1/flow/claim",
        &json!({ "linkId": NUL, "claimCode": "clm_x" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(issue_paths(&body), ["linkId"]);
    let token = app
        .http
        .post(app.url("/v3/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=authorization_code&code=x%00&client_id=app_x")
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), StatusCode::BAD_REQUEST);
    let token: Value = token.json().await.unwrap();
    assert_eq!(token["error"], "invalid_request", "{token}");
}

#[tokio::test]
async fn nul_in_any_grpc_string_is_invalid_argument_naming_the_field() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let channel = app.channel().await;
    let mut links = pb::link_service_client::LinkServiceClient::new(channel.clone());
    let arguments = linkd::kernel::proto_json::to_struct(
        &json!({ "cardNumber": "5555555555554444", "cvv": NUL }),
    );
    let request = pb::CreateLinkRequest {
        integration_id: "tmobile".into(),
        operations: vec![pb::Operation {
            resource: "paymentMethod".into(),
            action: pb::OperationAction::Write as i32,
            arguments: Some(arguments),
        }],
        external_user_id: Some(NUL.into()),
        webhook_url: Some(format!("https://hooks.example.com/{NUL}")),
        ..Default::default()
    };
    let status = links
        .create_link(with_key(request, &tenant.key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        [
            "externalUserId",
            "operations[0].arguments.cvv",
            "webhookUrl"
        ]
    );
    assert!(!format!("{status:?}").contains("5555555555554444"));

    let status = links
        .init_link_session(with_key(
            pb::InitLinkSessionRequest {
                client_reference_id: Some(NUL.into()),
                ..Default::default()
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["clientReferenceId"]);

    let mut connections =
        pb::connection_service_client::ConnectionServiceClient::new(channel.clone());
    let status = connections
        .list_connections(with_key(
            pb::ListConnectionsRequest {
                client_reference_id: Some(NUL.into()),
                ..Default::default()
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["clientReferenceId"]);

    let mut events = pb::event_service_client::EventServiceClient::new(channel.clone());
    let status = events
        .list_events(with_key(
            pb::ListEventsRequest {
                r#type: Some(NUL.into()),
                ..Default::default()
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["type"]);

    let mut flows = pb::link_flow_service_client::LinkFlowServiceClient::new(channel);
    let status = flows
        .submit_credentials(with_key(
            pb::SubmitCredentialsRequest {
                fields: [("username".to_string(), NUL.to_string())].into(),
            },
            "lft_x",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["fields.username"]);
    assert_eq!(count(&app, "links").await, 0);
}

/// A hooked app with one failed event, for the admin-like endpoints.
async fn tenant_with_a_failed_event(app: &TestApp) -> (TestTenant, String) {
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let id = EventId::new();
    sqlx::query(
        "INSERT INTO events (id, organization_id, environment, type, payload, delivery_status, attempts)
         VALUES ($1, $2, 'sandbox', 'link.failed', '{}', 'failed', 10)",
    )
    .bind(id)
    .bind(tenant.tenant.organization_id)
    .execute(app.api.db())
    .await
    .unwrap();
    (tenant, id.to_string())
}

async fn webhook_secret_sealed(app: &TestApp) -> Vec<u8> {
    sqlx::query_scalar("SELECT webhook_secret_ciphertext FROM client_apps")
        .fetch_one(app.api.db())
        .await
        .unwrap()
}

async fn failed_events(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE delivery_status = 'failed'")
        .fetch_one(app.api.db())
        .await
        .unwrap()
}

#[tokio::test]
async fn bodies_that_are_not_objects_or_carry_unknown_fields_change_nothing() {
    let app = spawn_app().await;
    let (tenant, event_id) = tenant_with_a_failed_event(&app).await;
    let secret = webhook_secret_sealed(&app).await;
    let rotate = format!("/v1/client-apps/{}/rotate-webhook-secret", tenant.app_id);
    let redeliver = format!("/v1/events/{event_id}/redeliver");
    for body in [
        json!([1, 2]),
        json!("x"),
        json!(5),
        Value::Null,
        json!({ "bogus": 1 }),
    ] {
        for path in [rotate.as_str(), "/v1/events/redeliver-failed", &redeliver] {
            let (status, answer) = post(&app, &tenant.key, path, &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {answer}");
            let expected = if body.is_object() { "bogus" } else { "" };
            assert_eq!(issue_paths(&answer), [expected], "{path} {body}: {answer}");
        }
        let (status, answer) = post(&app, &tenant.key, "/v1/links", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
    }
    assert_eq!(webhook_secret_sealed(&app).await, secret, "not rotated");
    assert_eq!(failed_events(&app).await, 1, "nothing re-queued");

    // Every flow endpoint names an unknown field; no attempt is spent.
    let link: Value = post(
        &app,
        &tenant.key,
        "/v1/links",
        &json!({ "integrationId": "verizon",
                 "operations": [{ "resource": "mobileBillingStatement", "action": "read" }] }),
    )
    .await
    .1;
    let claim = json!({ "linkId": link["linkId"], "claimCode": link["claimCode"], "extra": true });
    let (status, answer) = post(&app, "", "/v1/flow/claim", &claim).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(issue_paths(&answer), ["extra"]);
    let claim = json!({ "linkId": link["linkId"], "claimCode": link["claimCode"] });
    let (status, claimed) = post(&app, "", "/v1/flow/claim", &claim).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let token = claimed["flowToken"].as_str().unwrap();
    for (path, body) in [
        (
            "/v1/flow/credentials",
            json!({ "fields": { "username": "user_good", "password": "pass_good" }, "remember": true }),
        ),
        (
            "/v1/flow/second-factor",
            json!({ "code": "123456", "x": 1 }),
        ),
        (
            "/v1/flow/cancel",
            json!({ "step": "login", "reason": "bored" }),
        ),
        (
            "/v1/flow/integration",
            json!({ "integrationId": "verizon", "x": 1 }),
        ),
        ("/v1/flow/approve", json!({ "consent": true })),
    ] {
        let (status, answer) = post(&app, token, path, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        let unknown: Vec<String> = body
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !["fields", "code", "step", "integrationId"].contains(&k.as_str()))
            .cloned()
            .collect();
        assert_eq!(issue_paths(&answer), unknown, "{path}: {answer}");
    }
    let flow: Value = app
        .http
        .get(app.url("/v1/flow"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(flow["step"], "login", "nothing happened: {flow}");
    assert_eq!(flow["errorCode"], Value::Null);
    // Only the endpoints that take no fields accept no body at all.
    for path in [
        rotate.as_str(),
        "/v1/events/redeliver-failed",
        "/v1/links",
        "/v2/link/init",
    ] {
        let empty = app
            .http
            .post(app.url(path))
            .bearer_auth(&tenant.key)
            .send()
            .await
            .unwrap();
        assert_eq!(empty.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    assert_eq!(webhook_secret_sealed(&app).await, secret, "not rotated");
    assert_eq!(failed_events(&app).await, 1, "nothing re-queued");
    let empty = app
        .http
        .post(app.url(&redeliver))
        .bearer_auth(&tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_non_json_content_type_is_415_naming_the_expected_type() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let body = json!({ "integrationId": "verizon",
        "operations": [{ "resource": "mobileBillingStatement", "action": "read" }] })
    .to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut request = app
            .http
            .post(app.url("/v1/links"))
            .bearer_auth(&tenant.key)
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["code"], "UNSUPPORTED_MEDIA_TYPE");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{answer}"
        );
    }
    assert_eq!(count(&app, "links").await, 0);
    // Any spelling of JSON is JSON.
    for content_type in [
        "Application/JSON; charset=utf-8",
        "application/merge-patch+json",
    ] {
        let response = app
            .http
            .post(app.url("/v1/links"))
            .bearer_auth(&tenant.key)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{content_type}");
    }
}

/// Sends `bytes` as the message of `method`, bypassing prost.
async fn raw_call(app: &TestApp, key: &str, method: &'static str, bytes: Vec<u8>) -> tonic::Status {
    #[derive(Clone, Default)]
    struct Raw;
    struct RawEncoder;
    struct RawDecoder;
    impl tonic::codec::Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(
            &mut self,
            item: Vec<u8>,
            buf: &mut tonic::codec::EncodeBuf<'_>,
        ) -> Result<(), tonic::Status> {
            use prost::bytes::BufMut as _;
            buf.put_slice(&item);
            Ok(())
        }
    }
    impl tonic::codec::Decoder for RawDecoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(
            &mut self,
            buf: &mut tonic::codec::DecodeBuf<'_>,
        ) -> Result<Option<Vec<u8>>, tonic::Status> {
            use prost::bytes::Buf as _;
            Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
        }
    }
    impl tonic::codec::Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    grpc.ready().await.unwrap();
    grpc.unary(
        with_key(bytes, key),
        http::uri::PathAndQuery::from_static(method),
        Raw,
    )
    .await
    .unwrap_err()
}

#[tokio::test]
async fn protobuf_that_does_not_decode_is_invalid_argument_on_every_service() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    // A truncated varint, and a string field holding bytes that are not UTF-8.
    let garbage = [vec![0x08, 0xff, 0xff], vec![0x0a, 0x02, 0xff, 0xfe]];
    for method in [
        "/linkd.v1.LinkService/CreateLink",
        "/linkd.v1.LinkService/InitLinkSession",
        "/linkd.v1.ConnectionService/ListConnections",
        "/linkd.v1.ClientAppService/GetClientApp",
        "/linkd.v1.EventService/ListEvents",
        "/linkd.v1.LinkFlowService/ClaimLink",
        "/linkd.v1.AuthorizeService/ExchangeCode",
    ] {
        for bytes in &garbage {
            let status = raw_call(&app, &tenant.key, method, bytes.clone()).await;
            assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
            assert!(status.message().contains("not a valid"), "{status:?}");
        }
    }
    assert_eq!(count(&app, "links").await, 0);
}

#[tokio::test]
async fn ids_with_the_right_prefix_that_name_nothing_are_not_found() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    for path in [
        "/v2/connections/conn_doesnotexist000",
        "/v1/links/link_doesnotexist",
        "/v1/client-apps/app_nope",
        "/v1/events/evt_0",
    ] {
        let response = app.get(path, &tenant.key).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "GET {path}");
    }
    let deleted = app
        .http
        .delete(app.url("/v2/connections/conn_doesnotexist000"))
        .bearer_auth(&tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NOT_FOUND);
    let (status, _) = post(&app, &tenant.key, "/v1/events/evt_0/redeliver", &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post(
        &app,
        &tenant.key,
        "/v1/client-apps/app_nope/rotate-webhook-secret",
        &json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post(
        &app,
        &tenant.key,
        "/v2/link/init",
        &json!({ "clientAppId": "app_nope" }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post(
        &app,
        "",
        "/v1/flow/claim",
        &json!({ "linkId": "link_x", "claimCode": "clm_x" }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A malformed id as a filter matches nothing.
    let listed: Value = app
        .get("/v1/events?linkId=link_nope", &tenant.key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["events"], json!([]));

    // Only a wrong prefix is a validation error, and it says so truly.
    let response = app.get("/v2/connections/link_0190", &tenant.key).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["issues"][0]["path"], "connectionId");
    assert!(
        body["issues"][0]["message"]
            .as_str()
            .unwrap()
            .contains("starting with `conn_`")
    );

    // The same over gRPC.
    let channel = app.channel().await;
    let mut connections =
        pb::connection_service_client::ConnectionServiceClient::new(channel.clone());
    let status = connections
        .delete_connection(with_key(
            pb::DeleteConnectionRequest {
                connection_id: "conn_doesnotexist000".into(),
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let mut links = pb::link_service_client::LinkServiceClient::new(channel.clone());
    let status = links
        .get_link(with_key(
            pb::GetLinkRequest {
                link_id: "link_doesnotexist".into(),
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let mut apps = pb::client_app_service_client::ClientAppServiceClient::new(channel.clone());
    let status = apps
        .get_client_app(with_key(
            pb::GetClientAppRequest {
                client_app_id: "app_nope".into(),
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let mut events = pb::event_service_client::EventServiceClient::new(channel);
    let status = events
        .get_event(with_key(
            pb::GetEventRequest {
                event_id: "evt_0".into(),
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}
