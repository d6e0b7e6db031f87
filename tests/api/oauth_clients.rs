//! OAuth client libraries nobody at linkd wrote, Authlib (PyPI) and
//! openid-client (npm), run the whole flow against a live linkd configured
//! by discovery alone: a confidential and a public client each log in,
//! refresh twice, introspect, revoke, and see a replayed refresh token end
//! the grant. The scripts (`tests/oauth_clients/`) play the client app; the
//! test plays the end user on the flow API.

use crate::helpers::{TestApp, TestTenant, spawn_app};
use crate::oauth::{client, location, log_in_and_consent, no_redirects};
use crate::python_env::python;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WEB_CB: &str = "https://client.example.com/cb";
/// A native app's loopback redirect (RFC 8252 §7.3): registered without a
/// port, requested on whichever port the app listens.
const LOOPBACK_CB: &str = "http://127.0.0.1/callback";
const LOOPBACK_CB_WITH_PORT: &str = "http://127.0.0.1:53682/callback";

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oauth_clients")
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Confidential,
    Public,
}

/// A client app of that kind; the public one is a native app.
async fn registered(app: &TestApp, kind: Kind) -> (TestTenant, &'static str) {
    match kind {
        Kind::Confidential => (client(app, &[WEB_CB]).await, WEB_CB),
        Kind::Public => {
            let native = client(app, &[LOOPBACK_CB]).await;
            crate::oauth_grants::make_public(app, &native, &[]).await;
            (native, LOOPBACK_CB_WITH_PORT)
        }
    }
}

/// Runs a client script to the end, doing the end user's part when it
/// asks; returns what it reports.
async fn run_client(app: &TestApp, mut command: tokio::process::Command, kind: Kind) -> Value {
    let (tenant, redirect_uri) = registered(app, kind).await;
    let base = app.url("").trim_end_matches('/').to_string();
    command
        .env("ISSUER", &base)
        .env("CLIENT_ID", &tenant.app_id)
        .env("REDIRECT_URI", redirect_uri)
        .env("RESOURCE_BASE", &base)
        .env_remove("CLIENT_SECRET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Kind::Confidential = kind {
        command.env("CLIENT_SECRET", &tenant.client_secret);
    }
    let mut child = command.spawn().expect("the client script starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let talk = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let message: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("not a protocol line: {line}"));
            if let Some(url) = message["authorize"].as_str() {
                // The end user follows the client's authorization request
                // to the Link page, logs in and consents.
                let response = no_redirects().get(url).send().await.unwrap();
                assert_eq!(response.status(), 302, "{url}");
                let back = log_in_and_consent(app, &location(&response), "user_good").await;
                stdin
                    .write_all(format!("{back}\n").as_bytes())
                    .await
                    .unwrap();
                stdin.flush().await.unwrap();
            } else if message.get("result").is_some() {
                return Some(message["result"].clone());
            }
        }
        None
    };
    let result = tokio::time::timeout(Duration::from_secs(120), talk)
        .await
        .expect("the client script finishes within 2 minutes");
    let status = child.wait().await.unwrap();
    let mut errors = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut errors)
        .await
        .unwrap();
    match result {
        Some(result) if status.success() => result,
        _ => panic!("{kind:?} client failed ({status}):\n{errors}"),
    }
}

/// What both libraries must have seen, whatever their dialect.
fn assert_the_whole_flow(result: &Value, library: &str) {
    let context = format!("{library}: {result:#}");
    assert!(
        result["token_type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer")),
        "{context}"
    );
    assert_eq!(result["scope"], "accounts identity", "{context}");
    assert!(
        result["connection_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("conn_")),
        "{context}"
    );
    assert_eq!(result["first_read"], 200, "{context}");
    assert_eq!(
        result["refresh_tokens"], 3,
        "each refresh rotates: {context}"
    );
    assert_eq!(result["refreshed_read"], 200, "{context}");
    let introspected = &result["introspected"];
    assert_eq!(introspected["active"], true, "{context}");
    assert_eq!(introspected["token_type"], "Bearer", "{context}");
    assert_eq!(introspected["sub"], result["connection_id"], "{context}");
    assert_eq!(result["revoked_access_active"], false, "{context}");
    assert_eq!(
        result["refresh_active_after_access_revoked"], true,
        "revoking an access token keeps the grant: {context}"
    );
    assert_eq!(result["replay"], "invalid_grant", "{context}");
    assert_eq!(
        result["refresh_active_after_replay"], false,
        "a replay revokes the grant: {context}"
    );
    assert_eq!(result["refresh_after_replay"], "invalid_grant", "{context}");
}

#[tokio::test]
async fn openid_client_runs_the_whole_flow_through_discovery() {
    crate::oauth_server::npm_ci(&clients_dir(), "openid-client");
    let app = spawn_app().await;
    for kind in [Kind::Confidential, Kind::Public] {
        let mut node = tokio::process::Command::new("node");
        node.arg(clients_dir().join("openid_client.mjs"));
        let result = run_client(&app, node, kind).await;
        assert_the_whole_flow(&result, &format!("openid-client {kind:?}"));
        // openid-client reads the RFC 6750 challenge of the refused token.
        assert_eq!(
            result["revoked_access_read"], "bearer:invalid_token",
            "{result}"
        );
        let endpoints: Vec<String> = result["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            endpoints,
            [
                "/v3/oauth/token",
                "/v3/oauth/revoke",
                "/v3/oauth/introspect"
            ]
            .map(|path| app.url(path)),
        );
    }
}

#[tokio::test]
async fn authlib_runs_the_whole_flow_through_discovery() {
    let app = spawn_app().await;
    for kind in [Kind::Confidential, Kind::Public] {
        let mut script = tokio::process::Command::from(python());
        script.arg(clients_dir().join("authlib_client.py"));
        let result = run_client(&app, script, kind).await;
        assert_the_whole_flow(&result, &format!("Authlib {kind:?}"));
        assert_eq!(result["iss"], app.url("").trim_end_matches('/'), "{result}");
        let refused = result["revoked_access_read"].as_str().unwrap();
        assert!(
            refused.starts_with("401 Bearer") && refused.contains("error=\"invalid_token\""),
            "{refused}"
        );
    }
}
