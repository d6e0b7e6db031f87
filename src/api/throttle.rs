//! The rate limits at the door, and the `RateLimit` headers on the way out.
//!
//! Calls without any credential (OAuth authorize and token requests, link
//! claims, the brand logo) take a token from their client address's bucket
//! before they run; calls with a bearer credential (API key, flow token,
//! OAuth access token) only when it turns out wrong. Once an address's
//! bucket is empty it gets `429` for everything except API keys this
//! replica verified recently, so guessing keys or tokens soon costs the
//! database nothing. The API-key, client-app and flow buckets are
//! charged where those credentials are checked (auth, oauth, flows); every
//! bucket a call drew from is reported in its `RateLimit-Policy` and
//! `RateLimit` headers (IETF draft-ietf-httpapi-ratelimit-headers), on
//! REST responses and gRPC response metadata alike.

use crate::api::{ApiPath, api_path};
use crate::auth::{Authenticator, presented_key};
use crate::kernel::error::Error;
use crate::ratelimit::{Quota, RateLimiter};
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use http::{HeaderName, HeaderValue};
use secrecy::ExposeSecret as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

#[derive(Debug, Clone)]
pub struct Throttle {
    pub auth: Authenticator,
    pub limits: RateLimiter,
    /// `LINKD_CLIENT_IP_HEADER`.
    pub client_ip_header: Option<HeaderName>,
}

impl Throttle {
    /// The caller's address: from the configured header when it holds one
    /// (`x-forwarded-for`: its last entry, the one the nearest proxy
    /// added), else the connection's peer.
    fn client_ip(&self, request: &Request) -> IpAddr {
        let from_header = self.client_ip_header.as_ref().and_then(|name| {
            let value = request.headers().get_all(name).iter().next_back()?;
            let last = value.to_str().ok()?.rsplit(',').next()?.trim();
            last.parse::<IpAddr>()
                .ok()
                .or_else(|| last.parse::<SocketAddr>().ok().map(|a| a.ip()))
        });
        from_header
            .or_else(|| {
                request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip())
            })
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    pub async fn limit(State(throttle): State<Throttle>, request: Request, next: Next) -> Response {
        let Some(surface) = api_path(request.uri().path()) else {
            return next.run(request).await;
        };
        let ip = throttle.client_ip(&request);
        let credential = match presented_key(request.headers()) {
            None => Credential::None,
            Some(key) if key.expose_secret().starts_with("lk_") => Credential::ApiKey {
                trusted: throttle.auth.is_trusted(&key),
            },
            Some(_) => Credential::Token,
        };
        let (response, quotas) = crate::ratelimit::collecting(async {
            let at_the_door = match credential {
                Credential::None => throttle.limits.charge_client_ip(ip),
                Credential::ApiKey { trusted: true } => Ok(()),
                Credential::ApiKey { trusted: false } | Credential::Token => {
                    throttle.limits.check_client_ip(ip)
                }
            };
            match at_the_door {
                Err(refused) => refusal(surface, refused),
                Ok(()) => next.run(request).await,
            }
        })
        .await;
        let mut response = response;
        if credential != Credential::None && is_unauthenticated(&response) {
            // A wrong credential costs its address a token.
            let _ = throttle.limits.charge_client_ip(ip);
        }
        write_headers(&mut response, &quotas);
        response
    }
}

/// What a request authenticates with, as far as the door can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    /// Nothing (OAuth authorize and token requests, link claims, logos).
    None,
    /// An API key; trusted when this replica verified it recently.
    ApiKey { trusted: bool },
    /// A flow token or an OAuth access token: each has a bucket of its own
    /// once it is found valid.
    Token,
}

fn refusal(surface: ApiPath, refused: Error) -> Response {
    match surface {
        ApiPath::Grpc => tonic::Status::from(refused).into_http(),
        ApiPath::Rest => refused.into_response(),
    }
}

fn is_unauthenticated(response: &Response) -> bool {
    response.status() == http::StatusCode::UNAUTHORIZED
        || response
            .headers()
            .get("grpc-status")
            .is_some_and(|code| code.as_bytes() == b"16")
}

/// `RateLimit-Policy: "api_key";q=200;w=2` and
/// `RateLimit: "api_key";r=57;t=1`, one list member per bucket drawn from.
fn write_headers(response: &mut Response, quotas: &[Quota]) {
    if quotas.is_empty() {
        return;
    }
    let join = |member: &dyn Fn(&Quota) -> String| {
        quotas.iter().map(member).collect::<Vec<_>>().join(", ")
    };
    let policy = join(&|q| {
        format!(
            "\"{}\";q={};w={}",
            q.scope.as_str(),
            q.policy.burst,
            q.policy.window_seconds()
        )
    });
    let current = join(&|q| {
        let full_in = q.full_in.as_secs() + u64::from(q.full_in.subsec_nanos() > 0);
        format!("\"{}\";r={};t={}", q.scope.as_str(), q.remaining, full_in)
    });
    let headers = response.headers_mut();
    if let (Ok(policy), Ok(current)) = (
        HeaderValue::from_str(&policy),
        HeaderValue::from_str(&current),
    ) {
        headers.insert(HeaderName::from_static("ratelimit-policy"), policy);
        headers.insert(HeaderName::from_static("ratelimit"), current);
    }
}
