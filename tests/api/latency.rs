//! What keeps calls fast and is deterministic enough to assert: the socket
//! options of accepted connections and the database round trips per call.
//! (Throughput and latency are the benchmark's job, never a test's.)

use crate::helpers::{TestApp, fresh_database, serve_args, spawn_app, spawn_configured, with_key};
use linkd::kernel::tenant::Environment;
use linkd::pb;
use linkd::pb::link_flow_service_client::LinkFlowServiceClient;
use linkd::pb::link_service_client::LinkServiceClient;
use nix::sys::socket::{SockaddrIn, getpeername, getsockname, getsockopt, sockopt};
use pgcapture::Proxy as CountingProxy;
use serde_json::json;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The server's side of every connection accepted on `server`, with its
/// `TCP_NODELAY` setting: sockets of this process bound to the server's
/// address with a peer (the listener has none). The server runs in the test
/// process, so its sockets are ours to see.
fn accepted_sockets(server: SocketAddr) -> Vec<(SocketAddr, bool)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(fd) = entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .parse::<RawFd>()
        else {
            continue;
        };
        let Ok(local) = getsockname::<SockaddrIn>(fd) else {
            continue;
        };
        if SocketAddr::from(std::net::SocketAddrV4::from(local)) != server {
            continue;
        }
        let Ok(peer) = getpeername::<SockaddrIn>(fd) else {
            continue;
        };
        // SAFETY: only read through while this loop holds it; a socket that
        // another test thread closed meanwhile answers EBADF and is skipped.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Ok(nodelay) = getsockopt(&borrowed, sockopt::TcpNoDelay) {
            found.push((std::net::SocketAddrV4::from(peer).into(), nodelay));
        }
    }
    found
}

#[tokio::test]
async fn accepted_connections_disable_nagle_for_grpc_and_rest() {
    let app = spawn_app().await;
    // A gRPC call over HTTP/2 and a REST call over HTTP/1.1, each on its own
    // connection, both kept open while we look.
    let channel = app.channel().await;
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health check");
    let rest = reqwest::Client::new();
    let ready = rest.get(app.url("/healthz")).send().await.unwrap();
    assert!(ready.status().is_success());

    let sockets = accepted_sockets(app.addr);
    // The readiness polling of spawn_app may have left its own connection.
    assert!(
        sockets.len() >= 2,
        "expected the gRPC and the REST connection, found {sockets:?}"
    );
    for (peer, nodelay) in sockets {
        assert!(nodelay, "connection from {peer} has Nagle's algorithm on");
    }
    drop(channel);
}

/// A server whose database is behind a counting proxy, with its background
/// work (health probe, expiry sweep, webhook polling, queue gauges, token
/// refresher) quiet
/// after start-up and its key cache long-lived, so every counted round trip
/// belongs to the calls made and no count depends on timing.
async fn counted_app() -> (TestApp, CountingProxy) {
    let proxy = CountingProxy::start(&fresh_database().await)
        .await
        .expect("starting the counting proxy");
    let mut args = serve_args();
    let quiet = Duration::from_secs(3600);
    args.health_check_interval = quiet;
    args.expiry_interval = quiet;
    args.webhook_poll_interval = quiet;
    args.webhook_queue_stats_interval = quiet;
    args.oauth_refresh_interval = quiet;
    // A verified key stays cached however slowly the rounds run (a busy
    // machine outlasted the 5 s default between rounds: one more trip per
    // keyed call).
    args.api_key_cache_ttl = quiet;
    // A shared bucket's lease is one more trip per chunk of calls (or per
    // second, whichever comes first): counted by linkd_rate_limit_leases_total
    // and the rate-limit tests, not here.
    args.rate_limit_api_key = linkd::ops::config::RateLimit(None);
    args.rate_limit_client_app = linkd::ops::config::RateLimit(None);
    let app = spawn_configured(&proxy.url, crate::helpers::ACQUIRE_TIMEOUT, args).await;
    (app, proxy)
}

/// The round trips made by `call` (what each ran), counted once the
/// connections it used are back in the pool (a connection's return is
/// finished in the background).
async fn round_trips<T>(proxy: &CountingProxy, call: impl AsyncFnOnce() -> T) -> (Trips, T) {
    proxy.settle().await;
    let before = proxy.round_trips();
    let out = call().await;
    proxy.settle().await;
    (Trips(proxy.trips_since(before)), out)
}

#[derive(Debug, Clone, PartialEq)]
struct Trips(Vec<pgcapture::Trip>);

impl Trips {
    fn count(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Display for Trips {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} round trips:", self.0.len())?;
        for trip in &self.0 {
            write!(f, "\n  {trip}")?;
        }
        Ok(())
    }
}

fn billing_link() -> pb::CreateLinkRequest {
    pb::CreateLinkRequest {
        integration_id: "verizon".into(),
        operations: vec![pb::Operation {
            resource: "mobileBillingStatement".into(),
            action: pb::OperationAction::Read as i32,
            arguments: None,
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn calls_cost_at_most_their_documented_round_trips() {
    let (app, proxy) = counted_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let channel = app.channel().await;
    let mut links = LinkServiceClient::new(channel.clone());
    let mut flows = LinkFlowServiceClient::new(channel.clone());
    let rest = reqwest::Client::new();

    // Each call is made twice first: the first use of a statement on a
    // connection prepares it (counted apart), and the key gets verified.
    let mut counts = Vec::new();
    for round in 0..3 {
        let (create_grpc, link) = round_trips(&proxy, async || {
            links
                .create_link(with_key(billing_link(), &tenant.key))
                .await
                .expect("CreateLink")
                .into_inner()
        })
        .await;
        let (create_rest, status) = round_trips(&proxy, async || {
            rest.post(app.url("/v1/links"))
                .bearer_auth(&tenant.key)
                .json(&json!({ "integrationId": "verizon",
                    "operations": [{ "resource": "mobileBillingStatement", "action": "read" }] }))
                .send()
                .await
                .unwrap()
                .status()
        })
        .await;
        assert_eq!(status, reqwest::StatusCode::CREATED);
        let (init_session, _) = round_trips(&proxy, async || {
            links
                .init_link_session(with_key(
                    pb::InitLinkSessionRequest {
                        client_reference_id: Some("user_abc123".into()),
                        ..Default::default()
                    },
                    &tenant.key,
                ))
                .await
                .expect("InitLinkSession")
        })
        .await;
        // The whole end-user flow of a link intent: create, claim, log in
        // (which runs the operation), and the client reading the result.
        let (whole_flow, result) = round_trips(&proxy, async || {
            let link = links
                .create_link(with_key(billing_link(), &tenant.key))
                .await
                .unwrap()
                .into_inner();
            let claimed = flows
                .claim_link(pb::ClaimLinkRequest {
                    link_id: link.link_id.clone(),
                    claim_code: link.claim_code,
                })
                .await
                .unwrap()
                .into_inner();
            flows
                .submit_credentials(with_key(crate::helpers::good_login(), &claimed.flow_token))
                .await
                .unwrap();
            links
                .get_link(with_key(
                    pb::GetLinkRequest {
                        link_id: link.link_id,
                    },
                    &tenant.key,
                ))
                .await
                .unwrap()
                .into_inner()
                .link
                .unwrap()
        })
        .await;
        assert_eq!(result.status(), pb::LinkStatus::Completed);
        assert!(link.link_id.starts_with("link_"));
        counts.push((round, create_grpc, create_rest, init_session, whole_flow));
    }
    let (_, create_grpc, create_rest, init_session, whole_flow) = counts[2].clone();
    eprintln!(
        "gRPC CreateLink: {create_grpc}\nREST CreateLink: {create_rest}\nInitLinkSession: {init_session}\nwhole flow: {whole_flow}"
    );
    // The statement and the connection's return to the pool; the API key
    // comes from the cache. (Before: 8 and 11, with a ping per acquire and
    // the key read on its own connection.)
    assert!(create_grpc.count() <= 2, "gRPC CreateLink: {create_grpc}");
    assert!(create_rest.count() <= 2, "REST CreateLink: {create_rest}");
    assert!(init_session.count() <= 3, "InitLinkSession: {init_session}");
    assert!(whole_flow.count() <= 30, "whole link flow: {whole_flow}");
    // Warm calls cost the same every time: nothing is left to prepare.
    assert_eq!(counts[1].1.count(), create_grpc.count());
    assert_eq!(counts[1].4.count(), whole_flow.count());
}

/// The OAuth token endpoints' database cost: a refresh retires the token
/// and stores its successors in one transaction; introspection and
/// revocation look the token up once; an access token reading its
/// connection costs its lookup and the read.
#[tokio::test]
async fn oauth_token_calls_cost_at_most_their_documented_round_trips() {
    use crate::oauth::{CB, client, code_for, exchange, token};
    let (app, proxy) = counted_app().await;
    let client_app = client(&app, &[CB]).await;
    let basic = Some((
        client_app.app_id.as_str(),
        client_app.client_secret.as_str(),
    ));
    let code = code_for(&app, &client_app, "counted").await;
    let (_, _, mut issued) = token(&app, &exchange(&client_app, &code), basic).await;
    let mut counts = Vec::new();
    // Warm up the statements on the pool's connections first (see above).
    for _ in 0..3 {
        let refresh_token = issued["refresh_token"].as_str().unwrap().to_string();
        let (refresh, (status, _, next)) = round_trips(&proxy, async || {
            token(
                &app,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token.as_str()),
                ],
                basic,
            )
            .await
        })
        .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{next}");
        issued = next;
        let access = issued["access_token"].as_str().unwrap().to_string();
        let (introspect, active) = round_trips(&proxy, async || {
            token_action(&app, "/v3/oauth/introspect", &access, basic).await
        })
        .await;
        assert!(active.contains("\"active\":true"), "{active}");
        let path = format!(
            "/v2/connections/{}",
            issued["connection_id"].as_str().unwrap()
        );
        let (read, status) =
            round_trips(&proxy, async || app.get(&path, &access).await.status()).await;
        assert_eq!(status, reqwest::StatusCode::OK);
        let (revoke, _) = round_trips(&proxy, async || {
            token_action(&app, "/v3/oauth/revoke", &access, basic).await
        })
        .await;
        counts.push((refresh, introspect, read, revoke));
    }
    let (refresh, introspect, read, revoke) = counts[2].clone();
    eprintln!("refresh: {refresh}\nintrospect: {introspect}\nread: {read}\nrevoke: {revoke}");
    // Each pooled statement or transaction also costs its connection's
    // return to the pool. Refresh: the client lookup, then BEGIN, retire,
    // insert both tokens, COMMIT.
    assert!(refresh.count() <= 7, "refresh: {refresh}");
    // The client lookup and the token lookup.
    assert!(introspect.count() <= 4, "introspect: {introspect}");
    // The client lookup, the token lookup and the revocation.
    assert!(revoke.count() <= 6, "revoke: {revoke}");
    // The token lookup and the read.
    assert!(read.count() <= 4, "access-token read: {read}");
    assert_eq!(counts[1].0.count(), refresh.count());
}

/// Posts a revocation or introspection form for `token` with HTTP Basic
/// `basic`; the answer's body.
async fn token_action(
    app: &TestApp,
    path: &str,
    token: &str,
    basic: Option<(&str, &str)>,
) -> String {
    let mut request = app.http.post(app.url(path)).form(&[("token", token)]);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    assert!(status.is_success(), "{path}: {status}");
    response.text().await.unwrap()
}
