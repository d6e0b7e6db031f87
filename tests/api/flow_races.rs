//! Many requests driving one flow at once, as a double-submitting browser,
//! two tabs or an attacker's script would: the attempt limit holds at the
//! provider, a link's operations run once, and a run whose process dies is
//! resolved by another replica's sweep. Every test runs on a multi-threaded
//! runtime so the requests really race in the server.

use crate::flow::{billing_link, card_link};
use crate::helpers::LinkFlow;
use crate::helpers::{TestApp, fresh_database, spawn_app, test_key};
use crate::process::{linkd, spawn_linkd};
use linkd::kernel::tenant::Environment;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// What the sandbox provider saw for `username`: logins and codes that
/// reached it, and the cards stored.
async fn provider_counters(app: &TestApp, username: &str) -> (i32, i32, usize) {
    let row: Option<(i32, i32, sqlx::types::Json<Vec<Value>>)> = sqlx::query_as(
        "SELECT login_attempts, code_attempts, payment_methods FROM sandbox_accounts WHERE username = $1",
    )
    .bind(username)
    .fetch_optional(app.api.db())
    .await
    .unwrap();
    row.map_or((0, 0, 0), |(logins, codes, cards)| {
        (logins, codes, cards.0.len())
    })
}

/// One attacker task: posts `body` to `path` until the flow refuses for
/// good, waiting briefly whenever another request holds the flow. Returns
/// every status and `code` seen.
async fn hammer(flow: &LinkFlow<'_>, path: &str, body: Value) -> Vec<(StatusCode, String)> {
    let mut seen = Vec::new();
    let started = Instant::now();
    loop {
        let (status, answer) = flow.post(path, body.clone()).await;
        let code = answer["code"].as_str().unwrap_or_default().to_string();
        let busy = status == StatusCode::CONFLICT && code == "FLOW_BUSY";
        let done = answer["step"] == "done" || (status.is_client_error() && !busy);
        seen.push((status, code));
        if done {
            return seen;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "{seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `tasks` hammering tasks at once and returns everything they saw.
async fn attack(
    flow: &LinkFlow<'_>,
    tasks: usize,
    path: &str,
    body: Value,
) -> Vec<(StatusCode, String)> {
    let attempts = (0..tasks).map(|_| hammer(flow, path, body.clone()));
    futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn assert_only_expected_answers(seen: &[(StatusCode, String)]) {
    let mut tally = std::collections::BTreeMap::<(u16, &str), usize>::new();
    for (status, code) in seen {
        *tally.entry((status.as_u16(), code.as_str())).or_default() += 1;
    }
    for (status, code) in seen {
        // A 503 is the documented "database busy, retry" answer (the pool's
        // acquire timeout on a loaded machine); it changes nothing, and the
        // attacker retries like any client.
        assert!(
            *status == StatusCode::OK
                || (*status == StatusCode::SERVICE_UNAVAILABLE && code == "unavailable")
                || (*status == StatusCode::CONFLICT
                    && ["FLOW_BUSY", "FLOW_FINISHED", "WRONG_STEP"].contains(&code.as_str())),
            "unexpected answer {status} {code}; all answers: {tally:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_concurrent_wrong_passwords_reach_the_provider_five_times_at_most() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = app.create_link(&tenant, billing_link()).await;
    let flow = app.claim(&link).await;

    let wrong = json!({ "fields": { "username": "user_slow", "password": "guess" } });
    let seen = attack(&flow, 30, "/v1/flow/credentials", wrong).await;
    assert_only_expected_answers(&seen);
    assert!(
        seen.iter().any(|(_, code)| code == "FLOW_BUSY"),
        "the requests overlapped: {seen:?}"
    );

    let (logins, _, _) = provider_counters(&app, "user_slow").await;
    assert_eq!(logins, 5, "logins that reached the provider");
    let finished = app.link_json(&tenant, &link).await;
    assert_eq!(finished["status"], "failed");
    assert_eq!(finished["errorCode"], "invalid_credentials");

    // The right password afterwards is refused without reaching the provider.
    let (status, body) = flow
        .post(
            "/v1/flow/credentials",
            json!({ "fields": { "username": "user_slow", "password": "pass_good" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "FLOW_FINISHED");
    assert_eq!(provider_counters(&app, "user_slow").await.0, 5);
    let failed: Vec<Value> = app
        .events()
        .await
        .into_iter()
        .filter(|e| e["type"] == "link.failed")
        .collect();
    assert_eq!(failed.len(), 1, "one link.failed: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_concurrent_wrong_codes_reach_the_provider_five_times_at_most() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = app.create_link(&tenant, billing_link()).await;
    let flow = app.claim(&link).await;
    let asked = flow.login("user_slow_2fa", "pass_good").await;
    assert_eq!(asked["step"], "2fa");

    let seen = attack(
        &flow,
        30,
        "/v1/flow/second-factor",
        json!({ "code": "000000" }),
    )
    .await;
    assert_only_expected_answers(&seen);
    assert!(seen.iter().any(|(_, code)| code == "FLOW_BUSY"));

    let (logins, codes, _) = provider_counters(&app, "user_slow_2fa").await;
    assert_eq!((logins, codes), (1, 5), "logins and codes at the provider");
    let finished = app.link_json(&tenant, &link).await;
    assert_eq!(finished["status"], "failed");
    assert_eq!(finished["errorCode"], "invalid_code");
    let (status, body) = flow
        .post("/v1/flow/second-factor", json!({ "code": "123456" }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "FLOW_FINISHED");
    assert_eq!(provider_counters(&app, "user_slow_2fa").await.1, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_correct_logins_run_the_operations_once() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = app.create_link(&tenant, card_link()).await;
    let flow = app.claim(&link).await;

    let right = json!({ "fields": { "username": "user_good", "password": "pass_good" } });
    let answers = futures_util::future::join_all(
        (0..10).map(|_| flow.post("/v1/flow/credentials", right.clone())),
    )
    .await;
    let seen: Vec<(StatusCode, String)> = answers
        .iter()
        .map(|(status, body)| (*status, body["code"].as_str().unwrap_or_default().into()))
        .collect();
    assert_only_expected_answers(&seen);
    let winners: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(winners.len(), 1, "one request ran the link: {seen:?}");
    assert_eq!(winners[0]["outcome"], "success");

    let (logins, _, cards) = provider_counters(&app, "user_good").await;
    assert_eq!(logins, 1, "logins at the provider");
    assert_eq!(cards, 1, "cards stored at the provider");
    let finished = app.link_json(&tenant, &link).await;
    assert_eq!(finished["status"], "completed");
    let completed: Vec<Value> = app
        .events()
        .await
        .into_iter()
        .filter(|e| e["type"] == "link.completed")
        .collect();
    assert_eq!(completed.len(), 1);
    // The read after the write shows the one card written.
    let cards_read = completed[0]["data"]["result"]["operations"][1]["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|card| card["last4"] == "4444")
        .count();
    assert_eq!(cards_read, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_and_approvals_on_a_link_session_make_one_connection() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let page = app.open_session(&tenant, json!({})).await;
    page.pick("tmobile").await;
    let login = json!({ "fields": { "username": "user_slow", "password": "pass_good" } });
    let logins = futures_util::future::join_all(
        (0..8).map(|_| page.call("/v1/flow/credentials", Some(login.clone()))),
    )
    .await;
    let ok: Vec<&Value> = logins
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(ok.len(), 1, "{logins:?}");
    assert_eq!(ok[0]["step"], "authorization");
    for (status, body) in logins.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!(*status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["code"], "FLOW_BUSY");
    }
    assert_eq!(provider_counters(&app, "user_slow").await.0, 1);

    let approvals = futures_util::future::join_all(
        (0..8).map(|_| page.call("/v1/flow/approve", Some(json!({})))),
    )
    .await;
    let approved = approvals
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    assert_eq!(approved, 1, "{approvals:?}");
    for (status, body) in approvals.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!(*status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["code"], "FLOW_FINISHED");
    }
    let created = app.events_of(&tenant, "connection.created").await;
    assert_eq!(created.len(), 1);
    let connections: i64 = sqlx::query_scalar("SELECT count(*) FROM connections")
        .fetch_one(app.api.db())
        .await
        .unwrap();
    assert_eq!(connections, 1);
}

/// A cancel that arrives while the login is at the provider wins; the
/// login's success is then given back to the provider and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_during_a_slow_login_stops_the_operations_from_running() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = app.create_link(&tenant, card_link()).await;
    let flow = app.claim(&link).await;
    let login = flow.post(
        "/v1/flow/credentials",
        json!({ "fields": { "username": "user_slow", "password": "pass_good" } }),
    );
    let cancel = async {
        // Once the login holds its attempt (it is at the provider for 3 s).
        let started = Instant::now();
        loop {
            let held: bool = sqlx::query_scalar("SELECT attempt_id IS NOT NULL FROM flows")
                .fetch_one(app.api.db())
                .await
                .unwrap();
            if held {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the login never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        flow.post("/v1/flow/cancel", json!({ "step": "login" }))
            .await
    };
    let ((_, logged_in), (cancel_status, cancelled)) = tokio::join!(login, cancel);
    assert_eq!(cancel_status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["outcome"], "cancelled");
    assert_eq!(logged_in["outcome"], "cancelled", "{logged_in}");
    assert_eq!(app.link_json(&tenant, &link).await["status"], "cancelled");
    assert_eq!(provider_counters(&app, "user_slow").await.2, 0, "no card");
}

/// A replica killed while the operations run leaves the link `processing`;
/// another replica's sweep fails it with `operation_interrupted` once the
/// run's lease has passed, and tells the client with `link.failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_replica_dies_is_failed_by_the_sweep_as_interrupted() {
    let db_url = fresh_database().await;
    let app = crate::helpers::spawn_app_on(&db_url, Duration::from_secs(5)).await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = app.create_link(&tenant, billing_link()).await;
    let mut cmd = linkd();
    cmd.env("DATABASE_URL", &db_url)
        .env("LINKD_ENCRYPTION_KEY", test_key().to_base64())
        .env("LINKD_PROVIDER_TIMEOUT", "4s")
        .env("LINKD_LOG", "warn");
    let mut doomed = spawn_linkd(cmd);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", doomed.port);
    let claimed: Value = http
        .post(format!("{base}/v1/flow/claim"))
        .json(&json!({ "linkId": link["linkId"], "claimCode": link["claimCode"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = claimed["flowToken"].as_str().unwrap().to_string();
    let login = http
        .post(format!("{base}/v1/flow/credentials"))
        .bearer_auth(&token)
        .json(&json!({ "fields": { "username": "user_slow_ops", "password": "pass_good" } }))
        .send();
    let login = tokio::spawn(login);
    let started = Instant::now();
    while app.link_json(&tenant, &link).await["status"] != "processing" {
        assert!(started.elapsed() < Duration::from_secs(10), "never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    assert!(login.await.unwrap().is_err(), "the replica died mid-run");
    assert_eq!(app.link_json(&tenant, &link).await["status"], "processing");

    // This test's in-process server is the surviving replica: its sweep
    // resolves the run once the lease the dead replica set has passed (4 s
    // for the one operation, plus 2 s).
    let started = Instant::now();
    let failed = loop {
        let now = app.link_json(&tenant, &link).await;
        if now["status"] != "processing" {
            break now;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["errorCode"], "operation_interrupted");
    assert!(
        failed["errorMessage"]
            .as_str()
            .unwrap()
            .contains("may have reached the provider")
    );
    let events = app.events().await;
    let failures: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "link.failed")
        .collect();
    assert_eq!(failures.len(), 1, "{events:?}");
    assert_eq!(failures[0]["data"]["errorCode"], "operation_interrupted");
    let flow = LinkFlow { app: &app, token };
    let (status, view) = flow
        .post("/v1/flow/cancel", json!({ "step": "login" }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{view}");
    let seen: Value = app
        .http
        .get(app.url("/v1/flow"))
        .bearer_auth(&flow.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["outcome"], "error");
    assert_eq!(seen["errorCode"], "operation_interrupted");
}

/// A cancel that read the flow at `login` but reaches its update after the
/// login moved the flow to `processing` must not close it: the close is
/// conditional on the step the cancel saw. The test holds the flow row so
/// the cancel waits between its read and its update, moves the flow on as
/// the winning login does, and lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_that_lost_the_race_does_not_close_a_running_link() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let link = app.create_link(&tenant, billing_link()).await;
    let flow = app.claim(&link).await;
    let mut holder = app.api.db().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM flows FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let cancel = flow.post("/v1/flow/cancel", json!({ "step": "login" }));
    let race = async {
        crate::helpers::wait_for_lock_wait(app.api.db(), "UPDATE flows SET step = 'done'%").await;
        // What the winning login's transition writes.
        sqlx::query(
            "UPDATE flows SET step = 'processing', attempt_id = gen_random_uuid(),
                 attempt_until = now() + interval '1 minute'",
        )
        .execute(&mut *holder)
        .await
        .unwrap();
        sqlx::query("UPDATE links SET status = 'processing'")
            .execute(&mut *holder)
            .await
            .unwrap();
        holder.commit().await.unwrap();
    };
    let ((status, answer), ()) = tokio::join!(cancel, race);
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["code"], "WRONG_STEP", "{answer}");
    let (step, outcome): (String, Option<String>) =
        sqlx::query_as("SELECT step, outcome FROM flows")
            .fetch_one(app.api.db())
            .await
            .unwrap();
    assert_eq!(
        (step.as_str(), outcome),
        ("processing", None),
        "the run keeps its flow"
    );
    assert_eq!(app.link_json(&tenant, &link).await["status"], "processing");
}
