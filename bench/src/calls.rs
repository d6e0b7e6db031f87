//! The calls the benchmark makes, each as real clients send them: tonic
//! stubs over HTTP/2 and reqwest over HTTP/1.1 keep-alive.

use crate::load::Call;
use crate::stack::Tenant;
use anyhow::{Context, bail, ensure};
use linkd::pb;
use linkd::pb::connection_service_client::ConnectionServiceClient;
use linkd::pb::link_flow_service_client::LinkFlowServiceClient;
use linkd::pb::link_service_client::LinkServiceClient;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The redirect URI of the benchmark's client app.
pub const REDIRECT_URI: &str = "https://bench.example.com/callback";
/// RFC 7636 appendix B.
const PKCE_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const PKCE_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// Clients of one linkd: a few HTTP/2 channels (calls spread over them, as
/// a client with a channel pool would) and a pooled HTTP/1.1 client.
#[derive(Clone)]
pub struct Clients {
    pub base: String,
    channels: Arc<Vec<Channel>>,
    pub http: reqwest::Client,
    pub tenant: Tenant,
}

impl Clients {
    pub async fn connect(
        addr: SocketAddr,
        tenant: Tenant,
        channels: usize,
    ) -> anyhow::Result<Clients> {
        let mut all = Vec::new();
        for _ in 0..channels.max(1) {
            all.push(
                Channel::from_shared(format!("http://{addr}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .context("gRPC connect")?,
            );
        }
        Ok(Clients {
            base: format!("http://{addr}"),
            channels: Arc::new(all),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .tcp_nodelay(true)
                .pool_max_idle_per_host(256)
                .build()?,
            tenant,
        })
    }

    fn channel(&self, n: u64) -> Channel {
        self.channels[n as usize % self.channels.len()].clone()
    }

    fn with_key<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.tenant.api_key)
                .parse()
                .expect("ASCII key"),
        );
        request
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// gRPC or REST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Surface {
    Grpc,
    Rest,
}

impl Surface {
    pub fn name(self) -> &'static str {
        match self {
            Surface::Grpc => "gRPC",
            Surface::Rest => "REST",
        }
    }
}

fn call<F, Fut>(clients: &Clients, f: F) -> Call
where
    F: Fn(Clients, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let clients = clients.clone();
    Arc::new(move |n| Box::pin(f(clients.clone(), n)))
}

/// The stack floor: gRPC `Health/Check` or `GET /healthz`.
pub fn health(clients: &Clients, surface: Surface) -> Call {
    match surface {
        Surface::Grpc => call(clients, |c, n| async move {
            HealthClient::new(c.channel(n))
                .check(HealthCheckRequest::default())
                .await?;
            Ok(())
        }),
        Surface::Rest => call(clients, |c, _| async move {
            let status = c.http.get(c.url("/healthz")).send().await?.status();
            ensure!(status.is_success(), "healthz answered {status}");
            Ok(())
        }),
    }
}

/// The body of `POST /v1/links` with 1 or 3 operations.
pub fn link_body(operations: usize) -> Value {
    match operations {
        1 => json!({ "integrationId": "verizon",
            "operations": [{ "resource": "mobileBillingStatement", "action": "read" }] }),
        _ => json!({ "integrationId": "tmobile", "operations": [
            { "resource": "paymentMethod", "action": "write", "arguments": {
                "cardNumber": "5555555555554444", "expirationDate": "12/99", "cvv": "987",
                "nameOnCard": "Ada L", "billingZip": "10001" } },
            { "resource": "paymentMethod", "action": "read" },
            { "resource": "mobileBillingStatement", "action": "read" } ] }),
    }
}

fn link_proto(operations: usize) -> pb::CreateLinkRequest {
    let body = link_body(operations);
    pb::CreateLinkRequest {
        integration_id: body["integrationId"].as_str().unwrap_or_default().into(),
        operations: body["operations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|op| pb::Operation {
                resource: op["resource"].as_str().unwrap_or_default().into(),
                action: match op["action"].as_str() {
                    Some("write") => pb::OperationAction::Write,
                    _ => pb::OperationAction::Read,
                } as i32,
                arguments: op
                    .get("arguments")
                    .map(linkd::kernel::proto_json::to_struct),
            })
            .collect(),
        ..Default::default()
    }
}

pub fn create_link(clients: &Clients, surface: Surface, operations: usize) -> Call {
    match surface {
        Surface::Grpc => {
            let request = link_proto(operations);
            call(clients, move |c, n| {
                let request = request.clone();
                async move {
                    LinkServiceClient::new(c.channel(n))
                        .create_link(c.with_key(request))
                        .await?;
                    Ok(())
                }
            })
        }
        Surface::Rest => {
            let body = link_body(operations);
            call(clients, move |c, _| {
                let body = body.clone();
                async move {
                    let response = c
                        .http
                        .post(c.url("/v1/links"))
                        .bearer_auth(&c.tenant.api_key)
                        .json(&body)
                        .send()
                        .await?;
                    ensure!(
                        response.status() == 201,
                        "CreateLink answered {}",
                        response.status()
                    );
                    Ok(())
                }
            })
        }
    }
}

pub fn init_session(clients: &Clients, surface: Surface) -> Call {
    match surface {
        Surface::Grpc => call(clients, |c, n| async move {
            LinkServiceClient::new(c.channel(n))
                .init_link_session(c.with_key(pb::InitLinkSessionRequest {
                    client_reference_id: Some(format!("user_{n}")),
                    ..Default::default()
                }))
                .await?;
            Ok(())
        }),
        Surface::Rest => call(clients, |c, n| async move {
            let response = c
                .http
                .post(c.url("/v2/link/init"))
                .bearer_auth(&c.tenant.api_key)
                .json(&json!({ "clientReferenceId": format!("user_{n}") }))
                .send()
                .await?;
            ensure!(
                response.status() == 200,
                "InitLinkSession answered {}",
                response.status()
            );
            Ok(())
        }),
    }
}

pub fn get_connection(clients: &Clients, connection_id: String) -> Call {
    call(clients, move |c, n| {
        let connection_id = connection_id.clone();
        async move {
            ConnectionServiceClient::new(c.channel(n))
                .get_connection(c.with_key(pb::GetConnectionRequest { connection_id }))
                .await?;
            Ok(())
        }
    })
}

/// One page of 10 connections, from the start or after `page_token`.
pub fn list_connections(clients: &Clients, page_token: Option<String>) -> Call {
    call(clients, move |c, n| {
        let page_token = page_token.clone();
        async move {
            let page = ConnectionServiceClient::new(c.channel(n))
                .list_connections(c.with_key(pb::ListConnectionsRequest {
                    limit: Some(10),
                    page_token,
                    ..Default::default()
                }))
                .await?
                .into_inner();
            ensure!(
                page.connections.len() == 10,
                "a short page: {}",
                page.connections.len()
            );
            Ok(())
        }
    })
}

/// The whole end-user flow of a link intent over gRPC: create, claim, log
/// in (the operation runs), and the client reading the result.
pub fn link_flow(clients: &Clients) -> Call {
    call(clients, |c, n| async move {
        let channel = c.channel(n);
        let link = LinkServiceClient::new(channel.clone())
            .create_link(c.with_key(link_proto(1)))
            .await?
            .into_inner();
        let mut flows = LinkFlowServiceClient::new(channel.clone());
        let claimed = flows
            .claim_link(pb::ClaimLinkRequest {
                link_id: link.link_id.clone(),
                claim_code: link.claim_code,
            })
            .await?
            .into_inner();
        let mut request = tonic::Request::new(pb::SubmitCredentialsRequest {
            fields: [("username", "user_good"), ("password", "pass_good")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", claimed.flow_token).parse()?,
        );
        flows.submit_credentials(request).await?;
        let got = LinkServiceClient::new(channel)
            .get_link(c.with_key(pb::GetLinkRequest {
                link_id: link.link_id,
            }))
            .await?
            .into_inner()
            .link
            .context("no link")?;
        ensure!(
            got.status() == pb::LinkStatus::Completed,
            "link ended {:?}",
            got.status()
        );
        Ok(())
    })
}

/// OAuth: `GET /v3/oauth/authorize`, the end user's login and consent on the
/// Link page API, and the code exchanged at `POST /v3/oauth/token`.
pub fn oauth(clients: &Clients) -> Call {
    call(clients, |c, n| async move {
        let mut authorize = url::Url::parse(&c.url("/v3/oauth/authorize"))?;
        authorize
            .query_pairs_mut()
            .append_pair("client_id", &c.tenant.client_app_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", REDIRECT_URI)
            .append_pair("state", &format!("s{n}"))
            .append_pair("institution_id", "northbank")
            .append_pair("code_challenge", PKCE_CHALLENGE)
            .append_pair("code_challenge_method", "S256");
        let response = c
            .http
            .get(authorize)
            .header("Accept", "text/plain")
            .send()
            .await?;
        ensure!(
            response.status() == 302,
            "authorize answered {}",
            response.status()
        );
        let location = response
            .headers()
            .get("location")
            .context("no Location")?
            .to_str()?
            .to_string();
        let token = url::Url::parse(&location)?
            .fragment()
            .and_then(|f| f.strip_prefix("token="))
            .context("no flow token in the Location fragment")?
            .to_string();
        let post = |path: &str, body: Value| {
            c.http
                .post(c.url(path))
                .bearer_auth(&token)
                .json(&body)
                .send()
        };
        let flow: Value = post(
            "/v1/flow/credentials",
            json!({ "fields": { "username": "user_good", "password": "pass_good" } }),
        )
        .await?
        .json()
        .await?;
        ensure!(flow["step"] == "authorization", "after login: {flow}");
        let done: Value = post("/v1/flow/approve", json!({})).await?.json().await?;
        let back = done["redirectUrl"].as_str().context("no redirectUrl")?;
        let code = url::Url::parse(back)?
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .context("no code on the redirect")?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", PKCE_VERIFIER),
                ("client_id", &c.tenant.client_app_id),
                ("client_secret", &c.tenant.client_secret),
            ])
            .finish();
        let response = c
            .http
            .post(c.url("/v3/oauth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await?;
        if response.status() != 200 {
            bail!(
                "token answered {}: {}",
                response.status(),
                response.text().await?
            );
        }
        Ok(())
    })
}
