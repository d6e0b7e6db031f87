//! Encryption-key rotation in the running service, with real `linkd`
//! processes on one database: a replica started with a new key and the old
//! one in `LINKD_PREVIOUS_ENCRYPTION_KEYS` reads everything written under
//! the old key (link arguments, the webhook secret) and writes under the
//! new one, so that once rotation is done the old key can go.

use crate::helpers::{fresh_database, test_key};
use crate::process::{Running, linkd, spawn_linkd};
use crate::webhooks::Receiver;
use linkd::kernel::crypto::EncryptionKey;
use serde_json::{Value, json};
use std::time::Duration;

fn replica(db_url: &str, key: &EncryptionKey, previous: Option<&EncryptionKey>) -> Running {
    let mut cmd = linkd();
    cmd.env("DATABASE_URL", db_url)
        .env("LINKD_ENCRYPTION_KEY", key.to_base64())
        .env("LINKD_WEBHOOK_ALLOW", "127.0.0.1")
        .env("LINKD_WEBHOOK_POLL_INTERVAL", "100ms")
        // Roomy on a busy machine (the default 3 s turned slow queries into 503s).
        .env("LINKD_DB_ACQUIRE_TIMEOUT", "10s")
        .env("LINKD_LOG", "warn");
    if let Some(previous) = previous {
        cmd.env("LINKD_PREVIOUS_ENCRYPTION_KEYS", previous.to_base64());
    }
    spawn_linkd(cmd)
}

fn card_link() -> Value {
    json!({ "integrationId": "tmobile", "operations": [{ "resource": "paymentMethod", "action": "write",
        "arguments": { "cardNumber": "4242424242424242", "expirationDate": "12/99", "cvv": "123",
                       "nameOnCard": "Ada", "billingZip": "10001" } }] })
}

/// Creates a link on `replica`, or runs one there (claim and log in) and
/// returns its final status.
async fn create(http: &reqwest::Client, replica: &Running, key: &str) -> Value {
    let response = http
        .post(format!("http://127.0.0.1:{}/v1/links", replica.port))
        .bearer_auth(key)
        .json(&card_link())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    response.json().await.unwrap()
}

async fn run(http: &reqwest::Client, replica: &Running, link: &Value) -> Value {
    let base = format!("http://127.0.0.1:{}", replica.port);
    let claimed: Value = http
        .post(format!("{base}/v1/flow/claim"))
        .json(&json!({ "linkId": link["linkId"], "claimCode": link["claimCode"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = claimed["flowToken"]
        .as_str()
        .unwrap_or_else(|| panic!("not claimed: {claimed}"))
        .to_string();
    http.post(format!("{base}/v1/flow/credentials"))
        .bearer_auth(&token)
        .json(&json!({ "fields": { "username": "user_good", "password": "pass_good" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_new_key_reads_the_old_key_and_writes_the_new_one() {
    let receiver = Receiver::start().await;
    let db_url = fresh_database().await;
    // The tenant's app (and its webhook secret) is written under the old key.
    let (pool, tenant, secret) = crate::replicas::tenant(&db_url, &receiver.url("rotation")).await;
    let api_key = linkd::auth::issue_key(&pool, tenant).await.unwrap();
    let api_key = secrecy::ExposeSecret::expose_secret(&api_key.key).to_string();
    let (old, new) = (test_key(), EncryptionKey::generate());
    crate::helpers::install_crypto();
    let http = reqwest::Client::new();

    let before = replica(&db_url, &old, None);
    let written_under_old = create(&http, &before, &api_key).await;
    drop(before);

    // Rotation: the new key first, the old one still accepted.
    let rotating = replica(&db_url, &new, Some(&old));
    let done = run(&http, &rotating, &written_under_old).await;
    assert_eq!(done["outcome"], "success", "old arguments read: {done}");
    let hooks = receiver
        .wait_for("rotation", 1, Duration::from_secs(30))
        .await;
    assert!(
        hooks[0].verifies_with(&secret),
        "the webhook secret written under the old key still signs"
    );
    let written_under_new = create(&http, &rotating, &api_key).await;
    drop(rotating);

    // Rotation done: the old key is gone, and what was written meanwhile reads.
    let after = replica(&db_url, &new, None);
    let done = run(&http, &after, &written_under_new).await;
    assert_eq!(done["outcome"], "success", "new arguments read: {done}");
    drop(after);
}
