//! One slow or failing destination cannot slow the others: deliveries in
//! flight are capped per destination, a circuit breaker holds a failing
//! destination's events back together (with the reason on each event), and
//! a corrected webhook URL gets the events that were waiting.

use crate::helpers::{TestApp, TestTenant, spawn_app_with};
use crate::webhooks::{Receiver, failed_link, hooked_tenant, metric, metrics_of};
use linkd::kernel::ids::ClientAppId;
use linkd::ops::config::{AdminCommand, Schedule};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The tenant's events, newest first, as `GET /v1/events` lists them.
async fn events_of(app: &TestApp, tenant: &TestTenant) -> Vec<Value> {
    let response = app.get("/v1/events?limit=100", &tenant.key).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["events"].as_array().unwrap().clone()
}

/// Polls the tenant's events until `done` holds for all of them.
async fn wait_all(
    app: &TestApp,
    tenant: &TestTenant,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let events = events_of(app, tenant).await;
        if !events.is_empty() && events.iter().all(&done) {
            return events;
        }
        assert!(started.elapsed() < within, "not yet: {events:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn paused_destinations(app: &TestApp) -> f64 {
    metric(&metrics_of(app).await, "linkd_webhook_paused_destinations")
}

/// Writes `count` due events for the tenant's app straight into the outbox,
/// in one statement (the destination comes from the outbox's trigger).
async fn seed_events(db: &linkd::kernel::db::Db, tenant: &TestTenant, count: i64) {
    sqlx::query(
        "INSERT INTO events (id, organization_id, environment, type, payload)
         SELECT gen_random_uuid(), $1, 'sandbox', 'link.completed',
                jsonb_build_object('type', 'link.completed', 'data', jsonb_build_object('n', g))
         FROM generate_series(1, $2) g",
    )
    .bind(tenant.tenant.organization_id)
    .bind(count)
    .execute(db)
    .await
    .unwrap();
}

fn schedule(delays_ms: &[u64]) -> Schedule {
    Schedule(
        delays_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
    )
}

#[tokio::test]
async fn a_destination_that_hangs_holds_only_its_share_of_the_slots() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|args| {
        args.webhook_concurrency = 4;
        args.webhook_destination_concurrency = 2;
        args.webhook_timeout = Duration::from_secs(10);
        args.webhook_lease = Duration::from_secs(20);
    })
    .await;
    // `/stall` answers after 8 s: without a cap its four events would take
    // all four slots for that long.
    let stuck = hooked_tenant(&app, &receiver.url("stall")).await;
    for _ in 0..4 {
        failed_link(&app, &stuck, None).await;
    }
    receiver.wait_for("stall", 2, Duration::from_secs(5)).await;

    let healthy = hooked_tenant(&app, &receiver.url("ok")).await;
    for _ in 0..3 {
        failed_link(&app, &healthy, None).await;
    }
    receiver.wait_for("ok", 3, Duration::from_secs(4)).await;
    assert_eq!(
        receiver.at("stall").len(),
        2,
        "never more than its cap in flight to one destination"
    );
    let delivered = wait_all(&app, &healthy, Duration::from_secs(5), |e| {
        e["deliveryStatus"] == "delivered"
    })
    .await;
    assert_eq!(delivered.len(), 3);
}

#[tokio::test]
async fn failures_in_a_row_pause_a_destination_and_its_events_wait_together() {
    // Long enough that a busy machine still sees the pause before it ends.
    const COOLDOWN: Duration = Duration::from_secs(6);
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|args| {
        // One at a time, so the failures come in a known order.
        args.webhook_destination_concurrency = 1;
        args.webhook_breaker_failures = 3;
        args.webhook_breaker_cooldown = COOLDOWN;
        // Retries come well before the cool-down ends, so whichever events
        // took the three failures (one event three times, on a slow
        // machine) are held with the rest; the long last step keeps every
        // event's schedule (its give-up age) far from over.
        args.webhook_retry_schedule = schedule(&[0, 200, 200, 200, 60_000]);
    })
    .await;
    // Three `500`s, then `200`.
    let tenant = hooked_tenant(&app, &receiver.url("flaky/3")).await;
    for _ in 0..4 {
        failed_link(&app, &tenant, None).await;
    }
    let failed = receiver
        .wait_for("flaky/3", 3, Duration::from_secs(5))
        .await;
    let paused_at = failed[2].at;

    // Paused: every pending event says why and waits for the cool-down
    // (one created after the pause began says so without a count).
    let held = wait_all(&app, &tenant, COOLDOWN / 2, |e| {
        e["deliveryStatus"] == "pending"
            && e["lastError"].as_str().is_some_and(|why| {
                why.starts_with("destination paused until")
                    && (why.contains("after 3 failed attempts in a row")
                        || why.contains("after repeated failures"))
            })
    })
    .await;
    assert_eq!(held.len(), 4);
    let soonest = held
        .iter()
        .map(|e| {
            chrono::DateTime::parse_from_rfc3339(e["nextAttemptAt"].as_str().unwrap()).unwrap()
        })
        .min()
        .unwrap();
    assert!(
        soonest > chrono::Utc::now() + chrono::Duration::milliseconds(1_500),
        "held for the cool-down, not the 200 ms retry delay: {soonest}"
    );
    while paused_destinations(&app).await != 1.0 {
        assert!(
            paused_at.elapsed() < COOLDOWN,
            "gauge never showed the pause"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(paused_at + COOLDOWN - Duration::from_millis(500) - Instant::now()).await;
    assert_eq!(
        receiver.at("flaky/3").len(),
        3,
        "nothing is sent while the destination is paused"
    );

    // After the cool-down the destination answers again: everything goes.
    receiver
        .wait_for("flaky/3", 7, Duration::from_secs(10))
        .await;
    let resumed = receiver.at("flaky/3")[3].at;
    assert!(resumed - paused_at >= COOLDOWN - Duration::from_millis(300));
    wait_all(&app, &tenant, Duration::from_secs(5), |e| {
        e["deliveryStatus"] == "delivered"
    })
    .await;
    let started = Instant::now();
    while paused_destinations(&app).await != 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "still shown as paused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_corrected_webhook_url_receives_the_events_that_waited() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|args| {
        args.webhook_destination_concurrency = 1;
        args.webhook_breaker_failures = 2;
        args.webhook_breaker_cooldown = Duration::from_secs(60);
        args.webhook_retry_schedule = schedule(&[0, 200, 60_000]);
    })
    .await;
    let tenant = hooked_tenant(&app, &receiver.url("always500")).await;
    for _ in 0..3 {
        failed_link(&app, &tenant, None).await;
    }
    receiver
        .wait_for("always500", 2, Duration::from_secs(5))
        .await;
    wait_all(&app, &tenant, Duration::from_secs(2), |e| {
        e["lastError"]
            .as_str()
            .is_some_and(|why| why.contains("paused"))
    })
    .await;

    let set = |url: &str| AdminCommand::SetWebhookUrl {
        app_id: tenant.app_id.clone(),
        url: Some(url.to_string()),
        clear: false,
        json: true,
    };
    // A bad URL names the field and changes nothing.
    let refused = linkd::ops::admin::run(&app.api, set("ftp://hooks.example")).await;
    let message = format!("{:#}", refused.unwrap_err());
    assert!(message.contains("webhook_url"), "{message}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.at("always500").len(), 2, "still paused");

    linkd::ops::admin::run(&app.api, set(&receiver.url("ok")))
        .await
        .unwrap();
    // Long before the 60 s cool-down would have ended.
    let got = receiver.wait_for("ok", 3, Duration::from_secs(5)).await;
    let mut ids: Vec<&str> = got.iter().map(|r| r.id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each waiting event once");
    assert!(got.iter().all(|r| r.verifies_with(&tenant.webhook_secret)));
    wait_all(&app, &tenant, Duration::from_secs(5), |e| {
        e["deliveryStatus"] == "delivered" && e["destinationUrl"] == receiver.url("ok")
    })
    .await;
}

#[tokio::test]
async fn events_held_past_their_retry_schedule_fail_instead_of_waiting_forever() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|args| {
        args.webhook_destination_concurrency = 1;
        args.webhook_breaker_failures = 1;
        args.webhook_breaker_cooldown = Duration::from_secs(1);
        // Three attempts within 400 ms.
        args.webhook_retry_schedule = schedule(&[0, 200, 200]);
    })
    .await;
    let tenant = hooked_tenant(&app, &receiver.url("always500")).await;
    for _ in 0..2 {
        failed_link(&app, &tenant, None).await;
    }
    let failed = wait_all(&app, &tenant, Duration::from_secs(10), |e| {
        e["deliveryStatus"] == "failed"
    })
    .await;
    for event in &failed {
        let why = event["lastError"].as_str().unwrap();
        assert!(why.contains("retry schedule is over"), "{why}");
        assert!(event["attempts"].as_i64().unwrap() < 3, "{event}");
    }
}

/// A destination at its cap is claimed again as soon as one of its
/// deliveries ends, not at the next poll: with a one-hour poll interval a
/// backlog for one destination still drains. Multi-threaded, as in
/// production, where deliveries end while the claim is running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_for_one_destination_drains_through_its_cap() {
    let receiver = Receiver::start().await;
    let db_url = crate::helpers::fresh_database().await;
    let first = crate::helpers::spawn_configured(
        &db_url,
        crate::helpers::ACQUIRE_TIMEOUT,
        crate::helpers::serve_args(),
    )
    .await;
    let tenant = hooked_tenant(&first, &receiver.url("ok")).await;
    first.stop().await;
    // The backlog is there when the dispatcher starts: its first claim
    // takes 4, and only deliveries ending can bring the next claims.
    let db = crate::helpers::connect(&db_url);
    seed_events(&db, &tenant, 500).await;
    let mut args = crate::helpers::serve_args();
    args.webhook_poll_interval = Duration::from_secs(3600);
    args.webhook_concurrency = 16;
    args.webhook_destination_concurrency = 4;
    let _app =
        crate::helpers::spawn_configured(&db_url, crate::helpers::ACQUIRE_TIMEOUT, args).await;
    let got = receiver.wait_for("ok", 500, Duration::from_secs(30)).await;
    assert!(got.iter().all(|r| r.verifies_with(&tenant.webhook_secret)));
}

/// Destinations take turns: another tenant's event written after a large
/// backlog goes out next to it, not after it.
#[tokio::test]
async fn a_tenant_behind_another_tenants_backlog_gets_its_turn() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|args| {
        args.webhook_concurrency = 16;
        args.webhook_destination_concurrency = 4;
    })
    .await;
    let busy = hooked_tenant(&app, &receiver.url("ok")).await;
    let quiet = hooked_tenant(&app, &receiver.url("quiet")).await;
    seed_events(app.api.db(), &busy, 400).await;
    seed_events(app.api.db(), &quiet, 1).await;
    receiver.wait_for("quiet", 1, Duration::from_secs(10)).await;
    let before = receiver.at("ok").len();
    assert!(
        before < 200,
        "the quiet tenant's event waited for {before} of the busy one's 400"
    );
    receiver.wait_for("ok", 400, Duration::from_secs(30)).await;
}

/// An event written while its destination's breaker opens is held with the
/// others: the opening waits for the transaction writing it, then moves it
/// too (before, it showed as due with no reason while nothing sent it).
#[tokio::test]
async fn an_event_written_while_the_breaker_opens_is_held_too() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|args| args.webhook_poll_interval = Duration::from_secs(3600)).await;
    let tenant = hooked_tenant(&app, &receiver.url("always500")).await;
    let destination = linkd::webhooks::app_destination(ClientAppId::parse(&tenant.app_id).unwrap());
    let db = app.api.db().clone();

    // A transaction writing an event for the destination, still open.
    let mut writing = db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (id, organization_id, environment, type, payload)
         VALUES (gen_random_uuid(), $1, 'sandbox', 'link.failed', '{}')",
    )
    .bind(tenant.tenant.organization_id)
    .execute(&mut *writing)
    .await
    .unwrap();

    // The breaker opens meanwhile (five failures, as a dispatcher records).
    let opening = tokio::spawn({
        let (db, destination) = (db.clone(), destination.clone());
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT open_until FROM record_destination_outcomes(
                     ARRAY[$1], ARRAY[false], ARRAY[5], ARRAY['HTTP 500'], 5, 60, 86400)",
            )
            .bind(&destination)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    });
    crate::helpers::wait_for_lock_wait(&db, "%record_destination_outcomes%").await;
    writing.commit().await.unwrap();
    let open_until = opening.await.unwrap();

    let (next_attempt_at, last_error): (chrono::DateTime<chrono::Utc>, Option<String>) =
        sqlx::query_as("SELECT next_attempt_at, last_error FROM events WHERE destination = $1")
            .bind(&destination)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(next_attempt_at, open_until, "held until the breaker's end");
    let why = last_error.unwrap_or_default();
    assert!(
        why.starts_with("destination paused until") && why.contains("5 failed attempts in a row"),
        "{why}"
    );
}
