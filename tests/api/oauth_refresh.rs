//! OAuth connections' tokens kept fresh against a real authorization server
//! (oidc-provider, which rotates refresh tokens and refuses a used one):
//! refreshed ahead of expiry in the background, once per connection across
//! replicas, a refused grant expiring the connection, and failures backing
//! off, marked exhausted and recovering.

use crate::helpers::{ACQUIRE_TIMEOUT, TestApp, fresh_database, serve_args, spawn_app_with};
use crate::provider_oauth::{INTEGRATION, OAuthSetup, setup, setup_on};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The connection as `GET /v2/connections/{id}` shows it.
pub async fn connection(s: &OAuthSetup, id: &str) -> Value {
    connection_on(&s.app, s, id).await
}

async fn connection_on(app: &TestApp, s: &OAuthSetup, id: &str) -> Value {
    let (status, body) = crate::sessions::get_connection(app, &s.tenant, id).await;
    assert!(status.is_success(), "{status} {body}");
    body
}

pub fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap_or_else(|| panic!("a time: {value}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// Polls the connection until `done` holds of it, for at most `within`.
pub async fn wait_for(
    s: &OAuthSetup,
    id: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let c = connection(s, id).await;
        if done(&c) {
            return c;
        }
        assert!(started.elapsed() < within, "{what}: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The provider's count of one kind of call.
pub async fn stat(s: &OAuthSetup, name: &str) -> u64 {
    s.provider.stats().await[name].as_u64().unwrap()
}

async fn wait_for_stat(s: &OAuthSetup, name: &str, at_least: u64, within: Duration) {
    let started = Instant::now();
    while stat(s, name).await < at_least {
        assert!(
            started.elapsed() < within,
            "{name} stayed below {at_least}: {}",
            s.provider.stats().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reasons(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["data"]["reason"].as_str().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn tokens_are_refreshed_ahead_of_expiry_and_every_rotated_refresh_token_is_kept() {
    // Four-second access tokens: refreshed two seconds in.
    let s = setup(4).await;
    let done = s.connect("creator-1").await;
    let id = done["connectionId"].as_str().unwrap();
    let first = connection(&s, id).await;
    let oauth = &first["oauth"];
    let obtained = time(&oauth["tokenObtainedAt"]);
    let expires = time(&oauth["tokenExpiresAt"]);
    let next = time(&oauth["nextRefreshAt"]);
    assert!((expires - obtained).num_milliseconds() > 3_000, "{first}");
    assert!(
        next < expires && next > obtained,
        "refreshed ahead: {first}"
    );
    assert_eq!(oauth["refreshFailures"], 0);
    assert_eq!(oauth["lastRefreshError"], Value::Null);
    assert!(
        !first.to_string().contains("ccessToken\""),
        "no token is shown: {first}"
    );

    // oidc-provider rotates the refresh token on every use and refuses a
    // used one: three refreshes in a row only work if each rotated token
    // was saved.
    wait_for_stat(&s, "refresh_token", 3, Duration::from_secs(20)).await;
    assert_eq!(stat(&s, "token_errors").await, 0);
    let later = connection(&s, id).await;
    assert_eq!(later["status"], "active", "{later}");
    assert!(
        time(&later["oauth"]["tokenObtainedAt"]) > obtained,
        "{later}"
    );
    assert!(
        time(&later["oauth"]["tokenExpiresAt"]) > Utc::now(),
        "the current token is valid: {later}"
    );
    assert!(
        s.app
            .events_of(&s.tenant, "connection.expired")
            .await
            .is_empty()
    );
    assert!(
        s.app.metrics().await.contains(&format!(
            r#"linkd_oauth_token_requests_total{{integration="{INTEGRATION}",grant="refresh_token",outcome="ok"}}"#
        )),
        "refreshes are counted"
    );
}

#[tokio::test]
async fn three_replicas_refresh_each_token_once() {
    let db = fresh_database().await;
    let first = crate::helpers::spawn_configured(&db, ACQUIRE_TIMEOUT, serve_args()).await;
    let s = setup_on(first, 4).await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let replica = crate::helpers::spawn_configured(&db, ACQUIRE_TIMEOUT, serve_args()).await;
        replica
            .api
            .catalog()
            .add_described(&s.provider.catalog_entry(INTEGRATION))
            .unwrap();
        others.push(replica);
    }
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for user in ["creator-1", "creator-2"] {
            ids.push(
                s.connect(user).await["connectionId"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        ids
    };
    // Every replica's refresher looks every 200 ms and each refresh takes
    // 400 ms at the provider: a token refreshed twice would present a used
    // refresh token, which the provider refuses, revoking the grant.
    s.provider.slow(400).await;
    wait_for_stat(&s, "refresh_token", 8, Duration::from_secs(30)).await;
    assert_eq!(
        stat(&s, "token_errors").await,
        0,
        "{}",
        s.provider.stats().await
    );
    for id in &ids {
        let c = connection_on(&others[1], &s, id).await;
        assert_eq!(c["status"], "active", "{c}");
        assert_eq!(c["oauth"]["refreshFailures"], 0, "{c}");
    }
    assert!(
        s.app
            .events_of(&s.tenant, "connection.expired")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_refused_refresh_token_expires_the_connection_with_one_event() {
    let s = setup(4).await;
    let id = s.connect("creator-1").await["connectionId"]
        .as_str()
        .unwrap()
        .to_string();
    // The end user revokes the app at the provider.
    s.provider.forget_grants().await;
    let expired = wait_for(&s, &id, Duration::from_secs(10), "expires", |c| {
        c["status"] == "expired"
    })
    .await;
    assert_eq!(
        expired["oauth"]["lastRefreshError"], "invalid_grant",
        "{expired}"
    );
    let events = s.app.events_of(&s.tenant, "connection.expired").await;
    assert_eq!(reasons(&events), ["refresh_failed"]);
    assert_eq!(events[0]["data"]["connection"]["status"], "expired");
    let wiped: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT session_ciphertext FROM connections WHERE id = $1")
            .bind(uuid::Uuid::parse_str(&id["conn_".len()..]).unwrap())
            .fetch_one(s.app.api.db())
            .await
            .unwrap();
    assert_eq!(wiped, None, "the tokens are wiped");
    // Nothing retries an expired connection.
    let refused = stat(&s, "token_errors").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stat(&s, "token_errors").await, refused);
    assert_eq!(
        s.app.events_of(&s.tenant, "connection.expired").await.len(),
        1
    );

    // A reconnect through the provider's consent repairs it: the same id,
    // fresh tokens, the failure record cleared, `connection.updated`.
    let done = s.reconnect(&id, "creator-1").await;
    assert_eq!(done["connectionId"], id.as_str());
    let repaired = connection(&s, &id).await;
    assert_eq!(repaired["status"], "active", "{repaired}");
    assert_eq!(repaired["oauth"]["refreshFailures"], 0);
    assert_eq!(repaired["oauth"]["lastRefreshError"], Value::Null);
    let updated = s.app.events_of(&s.tenant, "connection.updated").await;
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0]["data"]["connection"]["status"], "active");
    // And it is kept fresh again.
    let refreshed = stat(&s, "refresh_token").await;
    wait_for_stat(&s, "refresh_token", refreshed + 1, Duration::from_secs(10)).await;
    assert_eq!(connection(&s, &id).await["status"], "active");
}

#[tokio::test]
async fn failing_refreshes_back_off_are_marked_exhausted_and_recover() {
    let app = spawn_app_with(|args| {
        args.oauth_refresh_backoff = Duration::from_millis(500);
        args.oauth_refresh_attempts = 3;
        args.oauth_refresh_exhausted_retry = Duration::from_secs(3);
    })
    .await;
    let s = setup_on(app, 4).await;
    let id = s.connect("creator-1").await["connectionId"]
        .as_str()
        .unwrap()
        .to_string();
    s.provider.down(503, Some(1)).await;

    let failed = wait_for(
        &s,
        &id,
        Duration::from_secs(10),
        "a failure is recorded",
        |c| c["oauth"]["refreshFailures"] == 1,
    )
    .await;
    assert_eq!(
        failed["status"], "active",
        "a transient failure expires nothing"
    );
    assert_eq!(failed["oauth"]["lastRefreshError"], "provider_unavailable");
    let wait = time(&failed["oauth"]["nextRefreshAt"]) - time(&failed["updatedAt"]);
    assert!(
        wait.num_milliseconds() >= 950,
        "Retry-After: 1 is honoured over the 500 ms back-off: {failed}"
    );

    let exhausted = wait_for(&s, &id, Duration::from_secs(15), "marked exhausted", |c| {
        !c["oauth"]["refreshExhaustedAt"].is_null()
    })
    .await;
    assert_eq!(exhausted["status"], "active");
    assert_eq!(exhausted["oauth"]["refreshFailures"], 3);
    assert_eq!(stat(&s, "refused_while_down").await, 3, "no hot retries");
    let updated = s.app.events_of(&s.tenant, "connection.updated").await;
    assert_eq!(reasons(&updated), ["refresh_exhausted"]);
    assert!(
        !updated[0]["data"]["connection"]["oauth"]["refreshExhaustedAt"].is_null(),
        "{}",
        updated[0]
    );

    s.provider.up().await;
    let recovered = wait_for(&s, &id, Duration::from_secs(10), "recovers", |c| {
        c["oauth"]["refreshFailures"] == 0
    })
    .await;
    assert_eq!(recovered["status"], "active");
    assert_eq!(recovered["oauth"]["refreshExhaustedAt"], Value::Null);
    assert_eq!(recovered["oauth"]["lastRefreshError"], Value::Null);
    let updated = s.app.events_of(&s.tenant, "connection.updated").await;
    assert_eq!(
        reasons(&updated),
        ["refresh_exhausted", "refresh_recovered"]
    );
    assert!(
        s.app
            .events_of(&s.tenant, "connection.expired")
            .await
            .is_empty()
    );
}
