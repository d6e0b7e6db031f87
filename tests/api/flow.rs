//! Claiming a link and running it through the end-user flow, with the
//! sandbox connector's magic credentials.

use crate::helpers::{spawn_app, with_key};
use linkd::kernel::ids::LinkId;
use linkd::kernel::tenant::Environment;
use linkd::pb;
use linkd::pb::link_flow_service_client::LinkFlowServiceClient;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

const CARD: &str = "5555555555554444";
const CVV: &str = "987";

pub fn billing_link() -> Value {
    json!({ "integrationId": "verizon", "operations": [{ "resource": "mobileBillingStatement", "action": "read" }],
            "returnUrl": "https://your-app.com/done?tab=billing", "externalUserId": "user-42" })
}

pub fn card_link() -> Value {
    json!({ "integrationId": "tmobile", "operations": [
        { "resource": "paymentMethod", "action": "write", "arguments": {
            "cardNumber": CARD, "expirationDate": "12/99", "cvv": CVV, "nameOnCard": "Ada L", "billingZip": "10001" } },
        { "resource": "paymentMethod", "action": "read" } ] })
}

#[tokio::test]
async fn single_operation_result_is_flat_and_completion_is_recorded() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = app.create_link(&tenant, billing_link()).await;
    let flow = app.claim(&link).await;
    assert_eq!(app.link_json(&tenant, &link).await["status"], "claimed");

    let done = flow.login("user_good", "pass_good").await;
    assert_eq!(done["step"], "done");
    assert_eq!(done["outcome"], "success");
    let link_id = link["linkId"].as_str().unwrap();
    assert_eq!(
        done["redirectUrl"],
        format!("https://your-app.com/done?tab=billing&linkId={link_id}")
    );

    let stored = app.link_json(&tenant, &link).await;
    assert_eq!(stored["status"], "completed");
    let billing = stored["result"]["billing"]
        .as_array()
        .expect("flat {billing: [...]}");
    assert_eq!(billing.len(), 3, "default months");
    assert_eq!(stored["result"].as_object().unwrap().len(), 1);
    assert!(billing[0]["amountDue"].as_f64().unwrap() > 0.0);
    assert!(stored["finishedAt"].as_i64().is_some() && stored["claimedAt"].as_i64().is_some());

    // Deterministic sandbox data: the same account gives the same statements.
    let again = app.create_link(&tenant, billing_link()).await;
    app.claim(&again)
        .await
        .login("user_good", "pass_good")
        .await;
    assert_eq!(
        app.link_json(&tenant, &again).await["result"],
        stored["result"]
    );

    let events = app.events().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "link.completed");
    assert_eq!(events[0]["data"]["linkId"], link["linkId"]);
    assert_eq!(events[0]["data"]["externalUserId"], "user-42");
    assert_eq!(events[0]["data"]["result"], stored["result"]);

    // The finished flow accepts nothing more.
    let (status, body) = flow
        .post(
            "/v1/flow/credentials",
            json!({ "fields": { "username": "user_good", "password": "pass_good" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "FLOW_FINISHED");
}

#[tokio::test]
async fn several_operations_run_in_one_session_and_writes_are_visible_to_reads() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = app.create_link(&tenant, card_link()).await;

    // Over gRPC this time.
    let channel = app.channel().await;
    let mut flows = LinkFlowServiceClient::new(channel.clone());
    let claimed = flows
        .claim_link(pb::ClaimLinkRequest {
            link_id: link["linkId"].as_str().unwrap().into(),
            claim_code: link["claimCode"].as_str().unwrap().into(),
        })
        .await
        .unwrap()
        .into_inner();
    let flow = flows
        .submit_credentials(with_key(crate::helpers::good_login(), &claimed.flow_token))
        .await
        .unwrap()
        .into_inner()
        .flow
        .unwrap();
    assert_eq!(flow.outcome(), pb::FlowOutcome::Success);

    let got = app
        .grpc_link(&tenant.key, link["linkId"].as_str().unwrap())
        .await;
    assert_eq!(got.status(), pb::LinkStatus::Completed);
    let result = linkd::kernel::proto_json::from_struct(got.result.as_ref().unwrap());
    let ops = result["operations"]
        .as_array()
        .expect("wrapped {operations: [...]}");
    assert_eq!(ops.len(), 2);
    assert_eq!(
        (ops[0]["resource"].as_str(), ops[0]["action"].as_str()),
        (Some("paymentMethod"), Some("write"))
    );
    assert_eq!(ops[0]["data"]["last4"], "4444");
    assert_eq!(ops[0]["data"]["brand"], "mastercard");
    let listed = ops[1]["data"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|c| c["last4"] == "4444" && c["isDefault"] == true),
        "the write is visible to the read: {listed:?}"
    );
    // A CVV would appear as the string "987"; bare digits can occur by chance
    // in timestamps and ids.
    let quoted_cvv = format!("\"{CVV}\"");
    assert!(!result.to_string().contains(CARD) && !result.to_string().contains(&quoted_cvv));

    // A later link reading the same sandbox account sees the card too.
    let read = app.create_link(&tenant, json!({ "integrationId": "tmobile", "operations": [{ "resource": "paymentMethod", "action": "read" }] })).await;
    app.claim(&read).await.login("user_good", "pass_good").await;
    let cards = app.link_json(&tenant, &read).await["result"]["paymentMethods"].clone();
    assert!(
        cards
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["last4"] == "4444"),
        "{cards}"
    );

    // After the link finished, nothing in the database holds the card number
    // or the CVV.
    let dump = std::process::Command::new("pg_dump")
        .arg("--data-only")
        .arg(app.database_url().await)
        .output()
        .expect("pg_dump runs");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("sandbox_accounts") || dump.contains("4444"),
        "the dump has data"
    );
    assert!(!dump.contains(CARD), "card number in pg_dump");
    assert!(!dump.contains(&format!("\"{CVV}\"")), "CVV in pg_dump");
}

#[tokio::test]
async fn two_factor_and_wrong_password_then_right() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = app.create_link(&tenant, billing_link()).await;
    let flow = app.claim(&link).await;

    let wrong = flow.login("user_2fa", "hunter2").await;
    assert_eq!(wrong["step"], "login");
    assert_eq!(wrong["errorCode"], "invalid_credentials");
    assert!(!wrong.to_string().contains("hunter2"));

    let asked = flow.login("user_2fa", "pass_good").await;
    assert_eq!(asked["step"], "2fa");
    assert!(
        asked["secondFactorPrompt"]
            .as_str()
            .unwrap()
            .contains("code")
    );
    assert_eq!(
        app.link_json(&tenant, &link).await["status"],
        "awaiting_2fa"
    );

    let (_, bad_code) = flow
        .post("/v1/flow/second-factor", json!({ "code": "000000" }))
        .await;
    assert_eq!(bad_code["step"], "2fa");
    assert_eq!(bad_code["errorCode"], "invalid_code");
    let (status, done) = flow
        .post("/v1/flow/second-factor", json!({ "code": "123456" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["outcome"], "success");
    assert_eq!(app.link_json(&tenant, &link).await["status"], "completed");
}

#[tokio::test]
async fn locked_accounts_and_failing_operations_fail_the_whole_link() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;

    let locked = app.create_link(&tenant, billing_link()).await;
    let done = app
        .claim(&locked)
        .await
        .login("user_locked", "pass_good")
        .await;
    assert_eq!(
        (done["outcome"].as_str(), done["errorCode"].as_str()),
        (Some("error"), Some("account_locked"))
    );
    let stored = app.link_json(&tenant, &locked).await;
    assert_eq!(stored["status"], "failed");
    assert_eq!(stored["errorCode"], "account_locked");

    let failing = app.create_link(&tenant, card_link()).await;
    let done = app
        .claim(&failing)
        .await
        .login("user_opfail", "pass_good")
        .await;
    assert_eq!(done["errorCode"], "operation_failed");
    let stored = app.link_json(&tenant, &failing).await;
    assert_eq!(stored["status"], "failed");
    assert_eq!(stored["result"], Value::Null, "no partial result");
    let purged: Option<Vec<u8>> = sqlx::query_scalar("SELECT arguments_ciphertext FROM links WHERE status = 'failed' AND operations @> '[{\"action\":\"write\"}]'")
        .fetch_one(app.api.db())
        .await
        .unwrap();
    assert!(purged.is_none(), "arguments purged on failure");

    let types: Vec<Value> = app
        .events()
        .await
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(types, [json!("link.failed"), json!("link.failed")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_are_single_use_and_exactly_one_concurrent_claim_wins() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = app.create_link(&tenant, billing_link()).await;
    let claim = |code: Value| {
        let body = json!({ "linkId": link["linkId"], "claimCode": code });
        let request = app.http.post(app.url("/v1/flow/claim")).json(&body);
        async move { request.send().await.unwrap() }
    };
    let wrong = claim(json!("clm_nope")).await;
    assert_eq!(wrong.status(), StatusCode::NOT_FOUND);

    let attempts =
        futures_util::future::join_all((0..10).map(|_| claim(link["claimCode"].clone()))).await;
    let statuses: Vec<_> = attempts.iter().map(|r| r.status()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );

    let mut flows = LinkFlowServiceClient::new(app.channel().await);
    let again = flows
        .claim_link(pb::ClaimLinkRequest {
            link_id: link["linkId"].as_str().unwrap().into(),
            claim_code: link["claimCode"].as_str().unwrap().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    let expiring = app.create_link(&tenant, billing_link()).await;
    // Its lifetime runs out before anyone claims it.
    sqlx::query("UPDATE links SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(LinkId::parse(expiring["linkId"].as_str().unwrap()).unwrap())
        .execute(app.api.db())
        .await
        .unwrap();
    let late = app
        .http
        .post(app.url("/v1/flow/claim"))
        .json(&json!({ "linkId": expiring["linkId"], "claimCode": expiring["claimCode"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), StatusCode::GONE);
    assert_eq!(late.json::<Value>().await.unwrap()["code"], "LINK_EXPIRED");
}

#[tokio::test]
async fn cancelling_and_flow_authentication() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = app.create_link(&tenant, billing_link()).await;
    let flow = app.claim(&link).await;

    let (status, _) = flow.post("/v1/flow/cancel", json!({ "step": "2fa" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "not at that step");
    let (status, body) = flow
        .post("/v1/flow/cancel", json!({ "step": "login" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "cancelled");
    let stored = app.link_json(&tenant, &link).await;
    assert_eq!(stored["status"], "cancelled");
    assert_eq!(app.events().await[0]["data"]["errorCode"], "cancelled");

    let anonymous = app.http.get(app.url("/v1/flow")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    // Who asks is checked before what they ask: no token and a bad step is
    // a 401, not a lesson in steps.
    let anonymous_cancel = app
        .http
        .post(app.url("/v1/flow/cancel"))
        .json(&json!({ "step": "nope" }))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous_cancel.status(), StatusCode::UNAUTHORIZED);
    let api_key_is_not_a_flow_token = app
        .http
        .get(app.url("/v1/flow"))
        .bearer_auth(&tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        api_key_is_not_a_flow_token.status(),
        StatusCode::UNAUTHORIZED
    );
    let current: Value = app
        .http
        .get(app.url("/v1/flow"))
        .bearer_auth(&flow.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(current["step"], "done");
}

#[tokio::test]
async fn a_background_sweep_expires_links_and_records_events() {
    let app = spawn_app().await; // sweep every 300 ms
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = app.create_link(&tenant, card_link()).await;
    let _flow = app.claim(&link).await; // claimed, never finished
    let keep = app.create_link(&tenant, billing_link()).await;
    // The claimed link's lifetime runs out; the other's does not.
    sqlx::query("UPDATE links SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(LinkId::parse(link["linkId"].as_str().unwrap()).unwrap())
        .execute(app.api.db())
        .await
        .unwrap();

    let mut expired = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(30) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        expired = app.events().await;
        if !expired.is_empty() {
            break;
        }
    }
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["type"], "link.expired");
    assert_eq!(expired[0]["data"]["linkId"], link["linkId"]);
    let (status, arguments): (String, Option<Vec<u8>>) =
        sqlx::query_as("SELECT status, arguments_ciphertext FROM links WHERE claim_code_hash = $1")
            .bind(linkd::kernel::ids::token_hash(
                link["claimCode"].as_str().unwrap(),
            ))
            .fetch_one(app.api.db())
            .await
            .unwrap();
    assert_eq!(status, "expired", "expired without anyone reading it");
    assert!(arguments.is_none(), "card and CVV purged on expiry");
    assert_eq!(app.link_json(&tenant, &keep).await["status"], "pending");
    // Reading it again does not expire it twice.
    assert_eq!(app.link_json(&tenant, &link).await["status"], "expired");
    assert_eq!(app.events().await.len(), 1);
}

#[tokio::test]
async fn debug_links_record_a_redacted_step_by_step_trace() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let mut body = card_link();
    body["debug"] = json!(true);
    let link = app.create_link(&tenant, body).await;
    let flow = app.claim(&link).await;
    flow.login("user_good", "wrong").await;
    flow.login("user_good", "pass_good").await;

    let stored = app.link_json(&tenant, &link).await;
    let trace = stored["debugTrace"].as_array().expect("debugTrace");
    let events: Vec<&str> = trace.iter().map(|s| s["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "login.started",
            "login.failed",
            "login.started",
            "login.succeeded",
            "operation.started",
            "operation.completed",
            "operation.started",
            "operation.completed",
            "link.completed"
        ]
    );
    assert!(
        trace
            .iter()
            .all(|s| s["at"].as_str().is_some_and(|at| at.ends_with('Z')))
    );
    assert_eq!(trace[1]["details"]["errorCode"], "invalid_credentials");
    let write_args = &trace[4]["details"]["arguments"];
    assert_eq!(write_args["cardNumber"], "•••• 4444");
    assert_eq!(write_args["cvv"], "[redacted]");
    assert_eq!(write_args["billingZip"], "10001");
    let text = stored.to_string();
    assert!(
        !text.contains(CARD)
            && !text.contains(&format!("\"{CVV}\""))
            && !text.contains("pass_good")
            && !text.contains("\"wrong\"")
    );

    // Without debug there is no trace.
    let plain = app.create_link(&tenant, billing_link()).await;
    app.claim(&plain)
        .await
        .login("user_good", "pass_good")
        .await;
    assert!(
        app.link_json(&tenant, &plain)
            .await
            .get("debugTrace")
            .is_none()
    );
}

#[tokio::test]
async fn the_slow_sandbox_provider_answers_late_but_completes() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = app.create_link(&tenant, billing_link()).await;
    let flow = app.claim(&link).await;
    let started = std::time::Instant::now();
    let done = flow.login("user_slow", "pass_good").await;
    assert!(started.elapsed() >= linkd::connectors::sandbox::SLOW_CALL);
    assert_eq!(done["outcome"], "success");
    assert_eq!(app.link_json(&tenant, &link).await["status"], "completed");
}
