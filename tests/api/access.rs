//! The Access API on sandbox connections: `POST /v2/connections/{id}/operations`
//! and `ExecuteOperations`, their validation and isolation, result shapes,
//! idempotency, turns taken on one connection, and the recorded runs.

use crate::helpers::{TestApp, TestTenant, spawn_app, with_key};
use linkd::kernel::tenant::Environment;
use linkd::pb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tonic::Code;

/// An active sandbox OnlyFans connection of `username`.
async fn connection(app: &TestApp, tenant: &TestTenant, username: &str) -> String {
    app.complete_session(tenant, json!({}), username).await["connectionId"]
        .as_str()
        .unwrap()
        .to_string()
}

pub async fn execute(
    app: &TestApp,
    key: &str,
    connection_id: &str,
    body: Value,
) -> (StatusCode, Value) {
    let response = app
        .http
        .post(app.url(&format!("/v2/connections/{connection_id}/operations")))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

pub async fn runs(app: &TestApp, key: &str, connection_id: &str, query: &str) -> Value {
    let response = app
        .get(
            &format!("/v2/connections/{connection_id}/operations{query}"),
            key,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn paths(error: &Value) -> Vec<&str> {
    error["issues"]
        .as_array()
        .unwrap_or_else(|| panic!("{error}"))
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn operations_run_on_the_stored_session_with_the_documented_result_shapes() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let id = connection(&app, &tenant, "user_good").await;

    // One operation: flat, under its result key.
    let (status, one) = execute(
        &app,
        &tenant.key,
        &id,
        json!({ "operations": [{ "resource": "earnings", "action": "read", "arguments": { "months": 2 } }] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["connectionId"], id.as_str());
    assert!(one["operationRunId"].as_str().unwrap().starts_with("opr_"));
    assert!(
        one["result"]["earnings"].is_array() || one["result"]["earnings"].is_object(),
        "{one}"
    );

    // Several: wrapped, in request order.
    let (status, two) = execute(
        &app,
        &tenant.key,
        &id,
        json!({ "operations": [
            { "resource": "profile", "action": "read" },
            { "resource": "subscribers", "action": "read", "arguments": { "limit": 5 } }
        ] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{two}");
    let wrapped = two["result"]["operations"].as_array().unwrap();
    assert_eq!(
        wrapped
            .iter()
            .map(|o| (
                o["resource"].as_str().unwrap(),
                o["action"].as_str().unwrap()
            ))
            .collect::<Vec<_>>(),
        [("profile", "read"), ("subscribers", "read")]
    );
    assert!(wrapped.iter().all(|o| !o["data"].is_null()), "{two}");

    // The same over gRPC, with the same shapes.
    let mut grpc = pb::connection_service_client::ConnectionServiceClient::new(app.channel().await);
    let answer = grpc
        .execute_operations(with_key(
            pb::ExecuteOperationsRequest {
                connection_id: id.clone(),
                operations: vec![pb::Operation {
                    resource: "profile".into(),
                    action: pb::OperationAction::Read as i32,
                    arguments: None,
                }],
            },
            &tenant.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.result.unwrap().fields.contains_key("profile"));

    // Each call is on record, newest first, without arguments.
    let page = runs(&app, &tenant.key, &id, "").await;
    let listed = page["operationRuns"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{page}");
    assert_eq!(listed[0]["id"], answer.operation_run_id.as_str());
    assert_eq!(listed[2]["id"], one["operationRunId"]);
    assert_eq!(
        listed[1]["operations"],
        json!([
            { "resource": "profile", "action": "read" },
            { "resource": "subscribers", "action": "read" }
        ])
    );
    for run in listed {
        assert_eq!(run["status"], "succeeded", "{run}");
        assert!(run["errorCode"].is_null() && run["durationMs"].as_i64().unwrap() >= 0);
        assert!(run["startedAt"].as_str().unwrap().ends_with('Z'));
        assert!(
            !run.to_string().contains("months"),
            "never the arguments: {run}"
        );
    }
    let first = runs(&app, &tenant.key, &id, "?limit=2").await;
    assert_eq!(first["operationRuns"].as_array().unwrap().len(), 2);
    let token = first["nextPageToken"].as_str().unwrap();
    let rest = runs(
        &app,
        &tenant.key,
        &id,
        &format!("?limit=2&pageToken={token}"),
    )
    .await;
    assert_eq!(rest["operationRuns"][0]["id"], one["operationRunId"]);
    assert!(rest["nextPageToken"].is_null());
}

#[tokio::test]
async fn bad_operations_and_foreign_connections_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let id = connection(&app, &tenant, "user_good").await;
    let ten_plus_one: Vec<Value> = (0..11)
        .map(|_| json!({ "resource": "profile", "action": "read" }))
        .collect();
    for (body, expected) in [
        (json!({}), vec!["operations"]),
        (json!({ "operations": [] }), vec!["operations"]),
        (json!({ "operations": ten_plus_one }), vec!["operations"]),
        (
            json!({ "operations": [{ "resource": "paymentMethod", "action": "read" }] }),
            vec!["operations[0]"],
        ),
        (
            json!({ "operations": [{ "resource": "earnings", "action": "read", "arguments": { "months": "many" } }] }),
            vec!["operations[0].arguments.months"],
        ),
        (
            json!({ "operations": [{ "resource": "profile", "action": "delete" }] }),
            vec!["operations[0].action"],
        ),
        (
            json!({ "operations": [{ "resource": "profile", "action": "read" }], "extra": 1 }),
            vec!["extra"],
        ),
    ] {
        let (status, error) = execute(&app, &tenant.key, &id, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert_eq!(error["error"], "Validation failed");
        assert_eq!(paths(&error), expected, "{body}");
    }
    let good = json!({ "operations": [{ "resource": "profile", "action": "read" }] });
    let (status, error) = execute(&app, &tenant.key, "link_123", good.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(paths(&error), ["connectionId"]);

    // Unknown, another tenant's, and deleted connections are all not found.
    let other = app.create_tenant(Environment::Sandbox).await;
    let (status, _) = execute(&app, &other.key, &id, good.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let production = app.create_tenant(Environment::Production).await;
    let (status, _) = execute(&app, &production.key, &id, good.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get(&format!("/v2/connections/{id}/operations"), &other.key)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let unknown = format!("conn_{}", uuid::Uuid::now_v7().simple());
    let (status, _) = execute(&app, &tenant.key, &unknown, good.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = execute(&app, "lk_sandbox_nope", &id, good.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // gRPC names the same fields.
    let mut grpc = pb::connection_service_client::ConnectionServiceClient::new(app.channel().await);
    let refused = grpc
        .execute_operations(with_key(
            pb::ExecuteOperationsRequest {
                connection_id: id.clone(),
                operations: vec![],
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    // Nothing ran.
    let page = runs(&app, &tenant.key, &id, "").await;
    assert_eq!(page["operationRuns"], json!([]));

    let deleted = app
        .http
        .delete(app.url(&format!("/v2/connections/{id}")))
        .bearer_auth(&tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let (status, _) = execute(&app, &tenant.key, &id, good).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_failed_operation_fails_the_call_and_is_recorded() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let id = connection(&app, &tenant, "user_opfail").await;
    let (status, error) = execute(
        &app,
        &tenant.key,
        &id,
        json!({ "operations": [{ "resource": "profile", "action": "read" }] }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["code"], "OPERATION_FAILED", "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .starts_with("profile read: "),
        "{error}"
    );
    let page = runs(&app, &tenant.key, &id, "").await;
    let run = &page["operationRuns"][0];
    assert_eq!(run["status"], "failed");
    assert_eq!(run["errorCode"], "operation_failed");
    // The connection is still usable: an operation failure is not an expiry.
    let connection = crate::sessions::get_connection(&app, &tenant, &id).await.1;
    assert_eq!(connection["status"], "active");
}

#[tokio::test]
async fn concurrent_calls_on_one_connection_take_turns() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    // Every sandbox operation of this user takes 3 seconds.
    let id = connection(&app, &tenant, "user_slow_ops").await;
    let body = json!({ "operations": [{ "resource": "profile", "action": "read" }] });
    let started = Instant::now();
    let (a, b) = tokio::join!(
        execute(&app, &tenant.key, &id, body.clone()),
        execute(&app, &tenant.key, &id, body.clone()),
    );
    assert_eq!(a.0, StatusCode::OK, "{}", a.1);
    assert_eq!(b.0, StatusCode::OK, "{}", b.1);
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "the second waited for the first: {:?}",
        started.elapsed()
    );
    // On record, one ran after the other.
    let page = runs(&app, &tenant.key, &id, "").await;
    let listed = page["operationRuns"].as_array().unwrap();
    let at = |run: &Value| {
        chrono::DateTime::parse_from_rfc3339(run["startedAt"].as_str().unwrap()).unwrap()
    };
    let (newer, older) = (&listed[0], &listed[1]);
    let gap = at(newer) - at(older);
    assert!(
        gap.num_milliseconds() >= older["durationMs"].as_i64().unwrap(),
        "the runs overlapped: {page}"
    );
}

#[tokio::test]
async fn an_idempotency_key_runs_the_call_once() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let id = connection(&app, &tenant, "user_good").await;
    let send = |body: Value| {
        app.http
            .post(app.url(&format!("/v2/connections/{id}/operations")))
            .bearer_auth(&tenant.key)
            .header("Idempotency-Key", "access-1")
            .json(&body)
            .send()
    };
    let body = json!({ "operations": [{ "resource": "profile", "action": "read" }] });
    let first: Value = send(body.clone()).await.unwrap().json().await.unwrap();
    let again: Value = send(body).await.unwrap().json().await.unwrap();
    assert_eq!(first, again);
    let other = send(json!({ "operations": [{ "resource": "earnings", "action": "read" }] }))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = runs(&app, &tenant.key, &id, "").await;
    assert_eq!(page["operationRuns"].as_array().unwrap().len(), 1, "{page}");
}

#[tokio::test]
async fn a_connection_that_is_not_active_is_refused_without_calling_the_provider() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    // A session whose login failed leaves a failed connection.
    let page = app.open_session(&tenant, json!({})).await;
    page.pick("onlyfans").await;
    let failed = page.login("user_locked", "pass_good").await;
    assert_eq!(failed["errorCode"], "account_locked", "{failed}");
    let listed: Value = app
        .get("/v2/connections?status=failed", &tenant.key)
        .await
        .json()
        .await
        .unwrap();
    let id = listed["connections"][0]["id"].as_str().unwrap().to_string();
    let (status, error) = execute(
        &app,
        &tenant.key,
        &id,
        json!({ "operations": [{ "resource": "profile", "action": "read" }] }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["code"], "SESSION_EXPIRED");
    assert!(
        error["error"].as_str().unwrap().contains("connectionId"),
        "{error}"
    );
    let page = runs(&app, &tenant.key, &id, "").await;
    assert_eq!(page["operationRuns"], json!([]));
}
