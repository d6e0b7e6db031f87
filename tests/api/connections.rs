//! ConnectionService over REST and gRPC: listing (offset and keyset paging,
//! filters), get, delete, tenant isolation.

use crate::helpers::{TestApp, TestTenant, spawn_app, with_key};
use crate::sessions::get_connection;
use linkd::kernel::tenant::Environment;
use linkd::pb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

async fn list(app: &TestApp, tenant: &TestTenant, query: &str) -> (StatusCode, Value) {
    let response = app
        .get(&format!("/v2/connections{query}"), &tenant.key)
        .await;
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn ids(page: &Value) -> Vec<String> {
    page["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

/// Makes `n` active connections with references `ref-0`…; returns their ids
/// newest first.
async fn make(app: &TestApp, tenant: &TestTenant, n: usize) -> Vec<String> {
    let mut made = Vec::new();
    for i in 0..n {
        let done = app
            .complete_session(
                tenant,
                json!({ "clientReferenceId": format!("ref-{}", i % 3) }),
                "user_good",
            )
            .await;
        made.push(done["connectionId"].as_str().unwrap().to_string());
    }
    made.reverse();
    made
}

#[tokio::test]
async fn listing_pages_by_offset_and_by_token_in_one_stable_order() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let all = make(&app, &tenant, 12).await;

    let (status, first) = list(&app, &tenant, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&first), all[..10], "default limit 10, newest first");
    assert!(first["nextPageToken"].is_string());

    // Offset paging.
    let (_, rest) = list(&app, &tenant, "?limit=5&offset=10").await;
    assert_eq!(ids(&rest), all[10..]);
    assert_eq!(rest["nextPageToken"], Value::Null);

    // Keyset paging, with the snake_case parameter name of the issue.
    let mut seen = Vec::new();
    let mut query = "?limit=5".to_string();
    loop {
        let (status, page) = list(&app, &tenant, &query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        match page["nextPageToken"].as_str() {
            Some(token) => query = format!("?limit=5&page_token={token}"),
            None => break,
        }
    }
    assert_eq!(seen, all);

    // A token survives new connections arriving at the head of the list.
    let (_, page) = list(&app, &tenant, "?limit=4").await;
    let token = page["nextPageToken"].as_str().unwrap().to_string();
    make(&app, &tenant, 1).await;
    let (_, next) = list(&app, &tenant, &format!("?limit=4&pageToken={token}")).await;
    assert_eq!(ids(&next), all[4..8]);

    // Filters, and a token bound to its filters.
    let (_, by_reference) = list(&app, &tenant, "?clientReferenceId=ref-1&limit=2").await;
    assert_eq!(by_reference["connections"].as_array().unwrap().len(), 2);
    assert!(
        by_reference["connections"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["clientReferenceId"] == "ref-1")
    );
    let token = by_reference["nextPageToken"].as_str().unwrap();
    let (status, error) = list(&app, &tenant, &format!("?page_token={token}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["issues"][0]["path"], "pageToken");
    let (_, active) = list(&app, &tenant, "?status=active&limit=100").await;
    assert_eq!(active["connections"].as_array().unwrap().len(), 13);
    let (_, expired) = list(&app, &tenant, "?status=expired").await;
    assert!(ids(&expired).is_empty());

    // gRPC agrees.
    let mut connections =
        pb::connection_service_client::ConnectionServiceClient::new(app.channel().await);
    let page = connections
        .list_connections(with_key(
            pb::ListConnectionsRequest {
                limit: Some(3),
                offset: Some(1),
                client_reference_id: Some("ref-0".into()),
                status: pb::ConnectionStatus::Active as i32,
                ..Default::default()
            },
            &tenant.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let (_, rest_page) = list(
        &app,
        &tenant,
        "?limit=3&offset=1&clientReferenceId=ref-0&status=active",
    )
    .await;
    let grpc_ids: Vec<String> = page.connections.iter().map(|c| c.id.clone()).collect();
    assert_eq!(grpc_ids, ids(&rest_page));
}

#[tokio::test]
async fn bad_list_parameters_are_refused_naming_the_parameter() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    for (query, path) in [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=ten", "limit"),
        ("?offset=-1", "offset"),
        ("?status=deleted", "status"),
        ("?page_token=garbage", "pageToken"),
        ("?stauts=active", "stauts"),
    ] {
        let (status, error) = list(&app, &tenant, query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(error["issues"][0]["path"], path, "{query}: {error}");
    }
    // A real page token with an offset: the two ways of paging do not mix.
    make(&app, &tenant, 2).await;
    let (_, first) = list(&app, &tenant, "?limit=1").await;
    let token = first["nextPageToken"].as_str().expect("a next page");
    let (status, alone) = list(&app, &tenant, &format!("?limit=1&pageToken={token}")).await;
    assert_eq!(status, StatusCode::OK, "the token is good: {alone}");
    let (status, error) = list(&app, &tenant, &format!("?offset=1&pageToken={token}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["issues"][0]["path"], "pageToken", "{error}");
    let (status, _) = list(&app, &tenant, "?limit=100").await;
    assert_eq!(status, StatusCode::OK, "100 is the documented maximum");

    // Offsets are bounded (LINKD_MAX_LIST_OFFSET, 10,000): deeper pages are
    // for page tokens, whose cost does not grow with depth.
    let (status, _) = list(&app, &tenant, "?offset=10000").await;
    assert_eq!(status, StatusCode::OK, "10,000 is the default bound");
    let (status, error) = list(&app, &tenant, "?offset=10001").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["issues"][0]["path"], "offset", "{error}");
    let message = error["issues"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("10000") && message.contains("pageToken"),
        "{message}"
    );

    let mut connections =
        pb::connection_service_client::ConnectionServiceClient::new(app.channel().await);
    let status = connections
        .list_connections(with_key(
            pb::ListConnectionsRequest {
                limit: Some(500),
                status: 42,
                ..Default::default()
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let deep = connections
        .list_connections(with_key(
            pb::ListConnectionsRequest {
                offset: Some(1_000_000),
                ..Default::default()
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(deep.code(), Code::InvalidArgument);
    assert!(deep.message().contains("pageToken"), "{}", deep.message());
    let anonymous = connections
        .list_connections(pb::ListConnectionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn delete_logs_out_stops_billing_and_hides_the_connection() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let other = app.create_tenant(Environment::Sandbox).await;
    let id = make(&app, &tenant, 1).await.remove(0);

    // Another tenant cannot see or delete it.
    assert_eq!(
        get_connection(&app, &other, &id).await.0,
        StatusCode::NOT_FOUND
    );
    let foreign_delete = app
        .http
        .delete(app.url(&format!("/v2/connections/{id}")))
        .bearer_auth(&other.key)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign_delete.status(), StatusCode::NOT_FOUND);
    assert!(ids(&list(&app, &other, "").await.1).is_empty());

    let response = app
        .http
        .delete(app.url(&format!("/v2/connections/{id}")))
        .bearer_auth(&tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let deleted: Value = response.json().await.unwrap();
    assert_eq!(deleted["connectionId"], id.as_str());
    assert!(deleted["billingStoppedAt"].as_str().unwrap().ends_with('Z'));

    assert_eq!(
        get_connection(&app, &tenant, &id).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(ids(&list(&app, &tenant, "").await.1).is_empty());
    let (session, billing): (Option<Vec<u8>>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT session_ciphertext, billing_stopped_at FROM connections")
            .fetch_one(app.api.db())
            .await
            .unwrap();
    assert!(session.is_none(), "the provider session is wiped");
    assert!(billing.is_some());
    let deleted_events = app.events_of(&tenant, "connection.deleted").await;
    assert_eq!(deleted_events.len(), 1);
    assert_eq!(deleted_events[0]["data"]["connection"]["id"], id.as_str());

    // gRPC: now NOT_FOUND; malformed ids name the field.
    let mut connections =
        pb::connection_service_client::ConnectionServiceClient::new(app.channel().await);
    let again = connections
        .delete_connection(with_key(
            pb::DeleteConnectionRequest {
                connection_id: id.clone(),
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    let (status, error) = get_connection(&app, &tenant, "abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["issues"][0]["path"], "connectionId");
}

#[tokio::test]
async fn concurrent_expiry_sweeps_expire_each_connection_once() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let made = make(&app, &tenant, 6).await;
    sqlx::query("UPDATE connections SET session_expires_at = now() - interval '1 second'")
        .execute(app.api.db())
        .await
        .unwrap();
    // Four sweeps at once, as four replicas would run them (the server's own
    // background sweep may join in).
    let sweeps: Vec<_> = (0..4)
        .map(|_| {
            let db = app.api.db().clone();
            tokio::spawn(async move { linkd::connections::expire_sessions(&db, 2).await })
        })
        .collect();
    for sweep in sweeps {
        sweep.await.unwrap().unwrap();
    }
    while linkd::connections::expire_sessions(app.api.db(), 2)
        .await
        .unwrap()
        > 0
    {}
    let (_, expired) = list(&app, &tenant, "?status=expired").await;
    assert_eq!(ids(&expired), made);
    let events = app.events_of(&tenant, "connection.expired").await;
    let mut expired_ids: Vec<&str> = events
        .iter()
        .map(|e| e["data"]["connection"]["id"].as_str().unwrap())
        .collect();
    expired_ids.sort();
    let mut expected: Vec<&str> = made.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(expired_ids, expected, "one event per connection");
}

/// Page tokens carry the filter's place: paging a filtered listing returns
/// each matching connection once, in order, and nothing else.
#[tokio::test]
async fn page_tokens_walk_a_filtered_listing() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let made = make(&app, &tenant, 9).await; // references ref-0, ref-1, ref-2, …
    let wanted: Vec<String> = made
        .iter()
        .enumerate()
        // Newest first: made[j] was connection 8 - j, reference ref-((8 - j) % 3).
        .filter(|(j, _)| (8 - j) % 3 == 1)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(wanted.len(), 3);
    let mut seen = Vec::new();
    let mut query = "?status=active&clientReferenceId=ref-1&limit=2".to_string();
    loop {
        let (status, page) = list(&app, &tenant, &query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for connection in page["connections"].as_array().unwrap() {
            assert_eq!(connection["clientReferenceId"], "ref-1");
        }
        seen.extend(ids(&page));
        match page["nextPageToken"].as_str() {
            Some(token) => {
                query = format!("?status=active&clientReferenceId=ref-1&limit=2&pageToken={token}")
            }
            None => break,
        }
    }
    assert_eq!(seen, wanted);
}
