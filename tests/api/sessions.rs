//! Link sessions (`POST /v2/link/init`, `InitLinkSession`) driven through
//! the flow API the Link page uses: defaults, validation, every redirect
//! shape, reconnects, expiry.

use crate::helpers::{Page, TestApp, TestTenant, spawn_app, with_key};
use linkd::kernel::tenant::Environment;
use linkd::pb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tonic::Code;
use url::Url;

pub const CALLBACK: &str = "https://app.example.com/callback";

/// The result query parameters appended to the redirect URL.
pub fn redirect_query(flow: &Value) -> Vec<(String, String)> {
    let url = Url::parse(flow["redirectUrl"].as_str().expect("redirectUrl")).unwrap();
    url.query_pairs().into_owned().collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub async fn get_connection(app: &TestApp, tenant: &TestTenant, id: &str) -> (StatusCode, Value) {
    let response = app.get(&format!("/v2/connections/{id}"), &tenant.key).await;
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn violation_paths(body: &Value) -> Vec<&str> {
    body["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn init_defaults_to_the_first_app_and_redirect_uri() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let second = app.add_app(tenant.tenant, "Second app").await;

    let before = chrono::Utc::now();
    let response = app.init_session(&tenant, json!({})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let session: Value = response.json().await.unwrap();
    let url = session["url"].as_str().unwrap();
    assert!(url.starts_with(&app.url("/link#token=lft_")), "{url}");
    let expires = chrono::DateTime::parse_from_rfc3339(session["expiresAt"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let lifetime = expires - before;
    assert!(
        lifetime > chrono::Duration::minutes(29) && lifetime <= chrono::Duration::minutes(31),
        "default lifetime is 30 minutes, got {lifetime}"
    );

    let page = Page::from_url(&app, url);
    let flow = page.flow().await;
    assert_eq!(flow["step"], "pre-login");
    assert_eq!(flow["clientAppName"], "Test app", "first app of the tenant");
    assert_eq!(flow["clientOrigin"], "https://app.example.com");
    let offered: Vec<&str> = flow["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["integrationId"].as_str().unwrap())
        .collect();
    assert!(offered.contains(&"onlyfans") && offered.contains(&"tmobile"));
    let cancelled = page.cancel("pre-login").await;
    assert_eq!(
        redirect_query(&cancelled),
        pairs(&[("status", "cancelled"), ("step", "pre-login")])
    );
    assert!(
        cancelled["redirectUrl"]
            .as_str()
            .unwrap()
            .starts_with(CALLBACK)
    );

    // Naming the second app and its app-scheme redirect.
    let page = app
        .open_session(
            &tenant,
            json!({ "clientAppId": second.app_id, "redirectUrl": "myapp://callback" }),
        )
        .await;
    let flow = page.flow().await;
    assert_eq!(flow["clientAppName"], "Second app");
    assert_eq!(
        flow["clientOrigin"],
        Value::Null,
        "app schemes have no origin"
    );
    let cancelled = page.cancel("pre-login").await;
    assert!(
        cancelled["redirectUrl"]
            .as_str()
            .unwrap()
            .starts_with("myapp://callback?status=cancelled")
    );
}

#[tokio::test]
async fn bad_init_requests_name_the_field_and_create_nothing() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let other = app.create_tenant(Environment::Sandbox).await;
    let cases = [
        (json!({ "connectionId": "abc123" }), vec!["connectionId"]),
        (
            json!({ "geolocation": { "state": "CA" } }),
            vec!["geolocation.country"],
        ),
        (
            json!({ "geolocation": { "country": "ZZ" } }),
            vec!["geolocation.country"],
        ),
        (
            json!({ "geolocation": { "country": "US", "state": "QC" } }),
            vec!["geolocation.state"],
        ),
        (json!({ "geolocation": "US" }), vec!["geolocation"]),
        (
            json!({ "redirectUrl": format!("{CALLBACK}/") }),
            vec!["redirectUrl"],
        ),
        (
            json!({ "redirectUrl": "https://APP.example.com/callback" }),
            vec!["redirectUrl"],
        ),
        (
            json!({ "redirectUrl": format!("{CALLBACK}?x=1") }),
            vec!["redirectUrl"],
        ),
        (
            json!({ "clientAppId": 7, "clientReferenceId": "r".repeat(256) }),
            vec!["clientAppId", "clientReferenceId"],
        ),
        (json!({ "clientAppId": "link_123" }), vec!["clientAppId"]),
        (json!({ "redirect_url": CALLBACK }), vec!["redirect_url"]),
    ];
    for (body, paths) in cases {
        let response = app.init_session(&tenant, body.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], "Validation failed");
        assert_eq!(violation_paths(&error), paths, "{body}");
    }
    let not_found = app
        .init_session(&tenant, json!({ "clientAppId": other.app_id }))
        .await;
    assert_eq!(
        not_found.status(),
        StatusCode::NOT_FOUND,
        "another tenant's app"
    );

    // gRPC: the same paths in a google.rpc.BadRequest.
    let mut links = pb::link_service_client::LinkServiceClient::new(app.channel().await);
    let status = links
        .init_link_session(with_key(
            pb::InitLinkSessionRequest {
                connection_id: Some("abc".into()),
                geolocation: Some(pb::Geolocation::default()),
                ..Default::default()
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    use tonic_types::StatusExt;
    let paths: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(paths, ["connectionId", "geolocation.country"]);

    let flows: i64 = sqlx::query_scalar("SELECT count(*) FROM flows")
        .fetch_one(app.api.db())
        .await
        .unwrap();
    assert_eq!(flows, 0, "a refused request creates nothing");

    // A tenant without any client app.
    let bare = app.create_tenant(Environment::Production).await;
    sqlx::query("DELETE FROM client_apps WHERE organization_id = $1")
        .bind(bare.tenant.organization_id)
        .execute(app.api.db())
        .await
        .unwrap();
    assert_eq!(
        app.init_session(&bare, json!({})).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_successful_session_redirects_with_the_new_connection() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let page = app
        .open_session(
            &tenant,
            json!({ "redirectUrl": CALLBACK, "clientReferenceId": "user_abc123",
                "geolocation": { "country": "us", "state": "ca" } }),
        )
        .await;
    assert_eq!(page.flow().await["clientReferenceId"], "user_abc123");
    let login = page.pick("onlyfans").await;
    assert_eq!(login["step"], "login");
    let names: Vec<&str> = login["credentialFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["username", "password"]);
    let consent = page.login("user_good", "pass_good").await;
    assert_eq!(consent["step"], "authorization");
    assert_eq!(consent["redirectUrl"], Value::Null, "not finished yet");
    let done = page.approve().await;
    assert_eq!(done["step"], "done");
    let connection_id = done["connectionId"].as_str().unwrap().to_string();
    assert!(connection_id.starts_with("conn_"));
    assert_eq!(
        redirect_query(&done),
        pairs(&[
            ("status", "success"),
            ("connection_id", &connection_id),
            ("client_reference_id", "user_abc123"),
        ])
    );

    let (status, connection) = get_connection(&app, &tenant, &connection_id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(connection["status"], "active");
    assert_eq!(connection["integrationId"], "onlyfans");
    assert_eq!(connection["clientAppId"], tenant.app_id.as_str());
    assert_eq!(connection["clientReferenceId"], "user_abc123");
    assert_eq!(
        connection["geolocation"],
        json!({ "country": "US", "state": "CA" })
    );
    assert!(connection["authenticatedAt"].is_string());
    assert!(connection["sessionExpiresAt"].is_string());
    assert!(connection.get("session").is_none());

    let created = app.events_of(&tenant, "connection.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["data"]["clientReferenceId"], "user_abc123");
    assert_eq!(created[0]["data"]["connection"], connection);

    // Single use: the finished session accepts nothing more.
    let (status, error) = page
        .call("/v1/flow/cancel", Some(json!({ "step": "authorization" })))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["code"], "FLOW_FINISHED");

    // The provider session is stored encrypted only.
    let sealed: Vec<u8> = sqlx::query_scalar(
        "SELECT session_ciphertext FROM connections WHERE client_reference_id = 'user_abc123'",
    )
    .fetch_one(app.api.db())
    .await
    .unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains("user_good"));
}

#[tokio::test]
async fn two_factor_and_every_cancel_step_redirect_as_documented() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let body = json!({ "clientReferenceId": "u1" });

    // 2FA: the connection waits in awaiting_2fa; a wrong code can be retried.
    let page = app.open_session(&tenant, body.clone()).await;
    page.pick("tmobile").await;
    let asked = page.login("user_2fa", "pass_good").await;
    assert_eq!(asked["step"], "2fa");
    assert!(asked["secondFactorPrompt"].as_str().unwrap().len() > 5);
    let waiting = app
        .get("/v2/connections?status=awaiting_2fa", &tenant.key)
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(waiting["connections"].as_array().unwrap().len(), 1);
    let wrong = page.code("000000").await;
    assert_eq!(
        (wrong["step"].as_str(), wrong["errorCode"].as_str()),
        (Some("2fa"), Some("invalid_code"))
    );
    assert_eq!(page.code("123456").await["step"], "authorization");
    let done = page.approve().await;
    assert_eq!(
        redirect_query(&done)[0],
        ("status".into(), "success".into())
    );

    // Cancel at each documented step.
    for step in ["pre-login", "login", "2fa", "authorization"] {
        let page = app.open_session(&tenant, body.clone()).await;
        if step != "pre-login" {
            page.pick("tmobile").await;
        }
        match step {
            "2fa" => {
                page.login("user_2fa", "pass_good").await;
            }
            "authorization" => {
                page.login("user_good", "pass_good").await;
            }
            _ => {}
        }
        let cancelled = page.cancel(step).await;
        assert_eq!(cancelled["outcome"], "cancelled");
        assert_eq!(cancelled["cancelledStep"], step);
        assert_eq!(
            redirect_query(&cancelled),
            pairs(&[
                ("status", "cancelled"),
                ("step", step),
                ("client_reference_id", "u1")
            ])
        );
    }
    // Sessions that started a login and were cancelled leave failed connections.
    let failed = app
        .get("/v2/connections?status=failed", &tenant.key)
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(failed["connections"].as_array().unwrap().len(), 2);
    assert_eq!(app.events_of(&tenant, "connection.created").await.len(), 1);
}

#[tokio::test]
async fn provider_errors_redirect_with_their_error_code() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;

    let page = app.open_session(&tenant, json!({})).await;
    page.pick("onlyfans").await;
    let locked = page.login("user_locked", "pass_good").await;
    assert_eq!(
        redirect_query(&locked),
        pairs(&[("status", "error"), ("error_code", "account_locked")])
    );

    // Wrong passwords can be retried; the fifth ends the session.
    let page = app
        .open_session(&tenant, json!({ "clientReferenceId": "u2" }))
        .await;
    page.pick("onlyfans").await;
    for _ in 0..4 {
        let retry = page.login("user_good", "wrong").await;
        assert_eq!(retry["step"], "login");
        assert_eq!(retry["errorCode"], "invalid_credentials");
        assert_eq!(
            retry["errorMessage"],
            "The username or password is incorrect."
        );
    }
    let pending = app
        .get("/v2/connections?status=pending", &tenant.key)
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        pending["connections"][0]["clientReferenceId"], "u2",
        "a login in progress is a pending connection"
    );
    let failed = page.login("user_good", "wrong").await;
    assert_eq!(
        redirect_query(&failed),
        pairs(&[
            ("status", "error"),
            ("error_code", "invalid_credentials"),
            ("client_reference_id", "u2"),
        ])
    );

    // Production with no connector configured for the integration.
    let production = app.create_tenant(Environment::Production).await;
    let page = app.open_session(&production, json!({})).await;
    page.pick("onlyfans").await;
    let unavailable = page.login("user_good", "pass_good").await;
    assert_eq!(
        redirect_query(&unavailable),
        pairs(&[("status", "error"), ("error_code", "provider_unavailable")])
    );
}

#[tokio::test]
async fn an_expired_session_is_unusable_and_redirects_with_session_expired() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let page = app
        .open_session(&tenant, json!({ "clientReferenceId": "late" }))
        .await;
    page.pick("onlyfans").await;
    // Abandoned half-way: the background sweep closes it and fails the
    // connection it was making.
    let abandoned = app.open_session(&tenant, json!({})).await;
    abandoned.pick("onlyfans").await;
    abandoned.login("user_2fa", "pass_good").await;
    // Both sessions' lifetimes run out.
    sqlx::query("UPDATE flows SET expires_at = now() - interval '1 second'")
        .execute(app.api.db())
        .await
        .unwrap();

    let (status, error) = page
        .call(
            "/v1/flow/credentials",
            Some(json!({ "fields": { "username": "user_good", "password": "pass_good" } })),
        )
        .await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(error["code"], "SESSION_EXPIRED");
    let flow = page.flow().await;
    assert_eq!(flow["step"], "done");
    assert_eq!(
        redirect_query(&flow),
        pairs(&[
            ("status", "error"),
            ("error_code", "session_expired"),
            ("client_reference_id", "late"),
        ])
    );

    for _ in 0..50 {
        let failed = app
            .get("/v2/connections?status=failed", &tenant.key)
            .await
            .json::<Value>()
            .await
            .unwrap();
        if failed["connections"].as_array().unwrap().len() == 1 {
            let flow = abandoned.flow().await;
            assert_eq!(flow["errorCode"], "session_expired");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the sweep never failed the abandoned session's connection");
}

#[tokio::test]
async fn reconnect_keeps_the_id_even_from_expired_and_unknown_ids_make_new_ones() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let other = app.create_tenant(Environment::Sandbox).await;
    // A provider session of 10 s: the expiry job marks the connection expired.
    let first = app
        .complete_session(
            &tenant,
            json!({ "clientReferenceId": "r1" }),
            "user_shortsession",
        )
        .await;
    let id = first["connectionId"].as_str().unwrap().to_string();
    let mut expired = false;
    for _ in 0..300 {
        if get_connection(&app, &tenant, &id).await.1["status"] == "expired" {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(expired, "the connection never expired");
    let expired_events = app.events_of(&tenant, "connection.expired").await;
    assert_eq!(expired_events.len(), 1);
    assert_eq!(expired_events[0]["data"]["connection"]["id"], id.as_str());
    assert_eq!(expired_events[0]["data"]["connection"]["status"], "expired");
    assert_eq!(expired_events[0]["data"]["reason"], "session_lifetime");
    // Its end was announced once beforehand (it was within the 7-day
    // warning from the start), however many sweeps ran meanwhile.
    let expiring = app.events_of(&tenant, "connection.expiring").await;
    assert_eq!(expiring.len(), 1, "{expiring:?}");
    assert_eq!(expiring[0]["data"]["connection"]["id"], id.as_str());
    assert_eq!(expiring[0]["data"]["connection"]["status"], "active");
    assert!(expiring[0]["data"]["connection"]["sessionExpiresAt"].is_string());

    // Reconnect: the integration is fixed, the id stays, the state is active again.
    let page = app
        .open_session(
            &tenant,
            json!({ "connectionId": id, "clientReferenceId": "r1" }),
        )
        .await;
    let flow = page.flow().await;
    assert_eq!(
        flow["step"], "login",
        "a reconnect skips choosing the integration"
    );
    assert_eq!(flow["integrationId"], "onlyfans");
    page.login("user_good", "pass_good").await;
    let done = page.approve().await;
    assert_eq!(done["connectionId"], id.as_str());
    let (_, connection) = get_connection(&app, &tenant, &id).await;
    assert_eq!(connection["status"], "active");
    let updated = app.events_of(&tenant, "connection.updated").await;
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0]["data"]["connection"]["id"], id.as_str());
    assert_eq!(app.events_of(&tenant, "connection.created").await.len(), 1);

    // Unknown, foreign and deleted ids: a new connection, no error.
    let unknown = format!("conn_{}", uuid::Uuid::now_v7().simple());
    let foreign = app.complete_session(&other, json!({}), "user_good").await["connectionId"]
        .as_str()
        .unwrap()
        .to_string();
    let deleted = app.complete_session(&tenant, json!({}), "user_good").await["connectionId"]
        .as_str()
        .unwrap()
        .to_string();
    let response = app
        .http
        .delete(app.url(&format!("/v2/connections/{deleted}")))
        .bearer_auth(&tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for given in [unknown, foreign.clone(), deleted] {
        let done = app
            .complete_session(&tenant, json!({ "connectionId": given }), "user_good")
            .await;
        let made = done["connectionId"].as_str().unwrap();
        assert_ne!(made, given);
        assert_eq!(get_connection(&app, &tenant, made).await.0, StatusCode::OK);
    }
    assert_eq!(
        get_connection(&app, &other, &foreign).await.1["status"],
        "active",
        "the other tenant's connection is untouched"
    );
}

#[tokio::test]
async fn init_is_idempotent_and_works_over_grpc_end_to_end() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let send = |body: Value, key: &'static str| {
        app.http
            .post(app.url("/v2/link/init"))
            .bearer_auth(&tenant.key)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first: Value = send(json!({ "clientReferenceId": "a" }), "k1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again: Value = send(json!({ "clientReferenceId": "a" }), "k1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first, again);
    let reused = send(json!({ "clientReferenceId": "b" }), "k1")
        .await
        .unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The whole session over gRPC.
    let channel = app.channel().await;
    let mut links = pb::link_service_client::LinkServiceClient::new(channel.clone());
    let session = links
        .init_link_session(with_key(
            pb::InitLinkSessionRequest {
                client_app_id: Some(tenant.app_id.clone()),
                redirect_url: Some(CALLBACK.into()),
                client_reference_id: Some("grpc-user".into()),
                geolocation: Some(pb::Geolocation {
                    country: "CA".into(),
                    state: Some("QC".into()),
                }),
                ..Default::default()
            },
            &tenant.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(session.expires_at.is_some());
    let token = Page::from_url(&app, &session.url).token;
    let mut flow = pb::link_flow_service_client::LinkFlowServiceClient::new(channel.clone());
    let picked = flow
        .select_integration(with_key(
            pb::SelectIntegrationRequest {
                integration_id: "ubereats".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .flow
        .unwrap();
    assert_eq!(picked.step(), pb::FlowStep::Login);
    let bad_pick = flow
        .select_integration(with_key(
            pb::SelectIntegrationRequest {
                integration_id: "nope".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        bad_pick.code(),
        Code::FailedPrecondition,
        "already past pre-login"
    );
    let consent = flow
        .submit_credentials(with_key(
            pb::SubmitCredentialsRequest {
                fields: [("username", "user_good"), ("password", "pass_good")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .flow
        .unwrap();
    assert_eq!(consent.step(), pb::FlowStep::Authorization);
    let done = flow
        .approve_access(with_key(pb::ApproveAccessRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .flow
        .unwrap();
    assert_eq!(done.outcome(), pb::FlowOutcome::Success);
    assert!(done.redirect_url.contains("status=success"));

    let mut connections = pb::connection_service_client::ConnectionServiceClient::new(channel);
    let connection = connections
        .get_connection(with_key(
            pb::GetConnectionRequest {
                connection_id: done.connection_id.clone(),
            },
            &tenant.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(connection.status(), pb::ConnectionStatus::Active);
    assert_eq!(connection.integration_id, "ubereats");
    assert_eq!(connection.client_reference_id.as_deref(), Some("grpc-user"));
    assert_eq!(
        connection.geolocation,
        Some(pb::Geolocation {
            country: "CA".into(),
            state: Some("QC".into())
        })
    );
}

/// Reconnecting leaves the connection as it was until the new login
/// succeeds: a wrong password, a second factor pending, a cancel or an
/// expired session change nothing; the successful reconnect updates it in
/// place (`connection.updated`, same id).
#[tokio::test]
async fn a_reconnected_connection_keeps_its_state_until_the_new_login_succeeds() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let done = app
        .complete_session(&tenant, json!({ "clientReferenceId": "r" }), "user_good")
        .await;
    let id = done["connectionId"].as_str().unwrap().to_string();
    let status = async |app: &TestApp| get_connection(app, &tenant, &id).await.1["status"].clone();
    assert_eq!(status(&app).await, "active");

    let again = json!({ "connectionId": id });
    let page = app.open_session(&tenant, again.clone()).await;
    let (code, wrong) = page
        .call(
            "/v1/flow/credentials",
            Some(json!({ "fields": { "username": "user_2fa", "password": "nope" } })),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(wrong["errorCode"], "invalid_credentials");
    assert_eq!(status(&app).await, "active", "after a wrong password");
    let asked = page.login("user_2fa", "pass_good").await;
    assert_eq!(asked["step"], "2fa");
    assert_eq!(
        status(&app).await,
        "active",
        "while a second factor is pending"
    );
    page.cancel("2fa").await;
    assert_eq!(status(&app).await, "active", "after a cancel");

    let abandoned = app.open_session(&tenant, again.clone()).await;
    abandoned.login("user_2fa", "pass_good").await;
    sqlx::query("UPDATE flows SET expires_at = now() - interval '1 second' WHERE outcome IS NULL")
        .execute(app.api.db())
        .await
        .unwrap();
    let expired = abandoned.flow().await;
    assert_eq!(expired["errorCode"], "session_expired");
    assert_eq!(status(&app).await, "active", "after an expired session");

    let reconnected = app.complete_session(&tenant, again, "user_good").await;
    assert_eq!(reconnected["connectionId"], id.as_str());
    assert_eq!(status(&app).await, "active");
    assert_eq!(app.events_of(&tenant, "connection.updated").await.len(), 1);
    assert_eq!(app.events_of(&tenant, "connection.created").await.len(), 1);
}

/// `lang` picks the Link page's language: the flow says it, and what the
/// server words (catalog labels, the second-factor prompt, error messages)
/// is in it. Unsupported or malformed codes are refused on `lang`.
#[tokio::test]
async fn lang_sets_the_pages_language_down_to_catalog_labels_and_prompts() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    for (lang, message) in [
        ("de", "The field Lang must be one of: en, fr."),
        (
            "english",
            "The field Lang must be a valid ISO-639-1 two letter code.",
        ),
    ] {
        let response = app.init_session(&tenant, json!({ "lang": lang })).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{lang}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["issues"][0]["path"], "lang", "{body}");
        assert_eq!(body["issues"][0]["message"], message, "{body}");
    }
    let refused = linkd::pb::link_service_client::LinkServiceClient::new(app.channel().await)
        .init_link_session(crate::helpers::with_key(
            linkd::pb::InitLinkSessionRequest {
                lang: Some("zz".into()),
                ..Default::default()
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let english = app.open_session(&tenant, json!({ "lang": "" })).await;
    assert_eq!(english.flow().await["lang"], "en");

    let page = app.open_session(&tenant, json!({ "lang": "FR" })).await;
    assert_eq!(page.flow().await["lang"], "fr");
    let flow = page.pick("onlyfans").await;
    let labels: Vec<&str> = flow["credentialFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["Courriel", "Mot de passe"]);
    let wrong = page.login("user_good", "pass_bad").await;
    assert_eq!(wrong["errorCode"], "invalid_credentials");
    assert_eq!(
        wrong["errorMessage"],
        "Le nom d’utilisateur ou le mot de passe est incorrect."
    );
    let asked = page.login("user_2fa", "pass_good").await;
    assert_eq!(asked["step"], "2fa");
    assert_eq!(
        asked["secondFactorPrompt"],
        "Saisissez le code de vérification que le fournisseur vous a envoyé."
    );
}
