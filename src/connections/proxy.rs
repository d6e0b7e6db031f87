//! Using an OAuth connection after Link: the token hand-off, and the
//! proxy: one HTTP request of the client's to an OAuth connection's
//! provider API, with the connection's current access token (refreshed
//! first when it has expired, and once more when the provider answers
//! `401`), the answer streamed back as it comes within the size limit.
//! Which URLs and headers may pass is [`crate::provider_oauth::api`]'s
//! rule; this is the connection's side: who may call, which tokens, what
//! a refused token leads to.

use super::{ConnectionStatus, Connections, parse_connection_id, store};
use crate::auth::Caller;
use crate::connectors::oauth_session::OAuthTokens;
use crate::kernel::error::{Error, Precondition, Reason, Result};
use crate::provider_oauth::ProviderOAuth;
use crate::provider_oauth::api::{self, ApiError, ApiRequest};
use axum::body::Bytes;
use futures_util::{Stream, StreamExt as _};
use http::{HeaderMap, Method, StatusCode};
use std::pin::Pin;
use std::time::Instant;

/// One request for the provider, as the client sent it (REST or gRPC).
#[derive(Debug)]
pub struct ProxyCall {
    pub connection_id: String,
    /// `GET` when empty.
    pub method: String,
    /// Percent-encoded, relative to the API base URL.
    pub path: String,
    /// Without `?`.
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why the body of an answer stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the provider's answer is larger than LINKD_PROXY_MAX_RESPONSE_BYTES")]
    TooLarge,
    #[error("the provider's answer broke off or took too long")]
    Broken,
}

pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// The provider's answer: status, the headers that pass back, and the body
/// as it arrives.
pub struct ProxyAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BodyStream,
}

fn not_supported() -> Error {
    Error::FailedPrecondition {
        precondition: Precondition::WrongState,
        reason: Reason::ProxyNotSupported,
        message: "the proxy is for connections to OAuth integrations; use ExecuteOperations".into(),
    }
}

fn parse_method(method: &str) -> Result<Method> {
    if method.is_empty() {
        return Ok(Method::GET);
    }
    Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .ok()
        .filter(|m| api::METHODS.contains(m))
        .ok_or_else(|| {
            Error::invalid(
                "method",
                "must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
            )
        })
}

impl Connections {
    /// An active OAuth connection of the caller's with its tokens and
    /// integration, or why not.
    async fn oauth_connection(
        &self,
        caller: &Caller,
        connection_id: &str,
    ) -> Result<(
        store::Leased,
        std::sync::Arc<crate::catalog::Provider>,
        OAuthTokens,
    )> {
        let id = parse_connection_id(connection_id)?;
        if caller.only_connection.is_some_and(|only| only != id) {
            return Err(Error::NotFound("connection"));
        }
        let held = store::get_with_session(&self.db, caller.tenant, id).await?;
        let provider = self
            .catalog
            .provider(&held.row.integration_id)
            .filter(|p| p.oauth2.is_some())
            .ok_or_else(not_supported)?;
        if held.row.status != ConnectionStatus::Active {
            return Err(super::access::session_expired());
        }
        let tokens = self
            .open_session(id, held.session_ciphertext.as_deref())
            .as_ref()
            .and_then(OAuthTokens::from_session)
            .ok_or_else(super::access::session_expired)?;
        Ok((held, provider, tokens))
    }

    /// `GetConnectionAccessToken`: see the proto for the contract.
    pub async fn access_token(
        &self,
        caller: &Caller,
        req: crate::pb::GetConnectionAccessTokenRequest,
    ) -> Result<crate::pb::GetConnectionAccessTokenResponse> {
        let (held, provider, tokens) = self.oauth_connection(caller, &req.connection_id).await?;
        let app = crate::client_apps::store::get_client_app(
            &self.db,
            caller.tenant,
            held.row.client_app_id,
        )
        .await?;
        if !app.access_token_handoff {
            return Err(Error::PermissionDenied {
                reason: Reason::AccessTokenHandoffDisabled,
                message: "this client app may not read access tokens: use the proxy, or ask the \
                          operator to enable the hand-off (linkd admin set-access-token-handoff)"
                    .into(),
            });
        }
        let tokens = self.usable_tokens(&held.row, tokens, false).await?;
        tracing::info!(connection_id = %held.row.id, "access token handed off");
        Ok(crate::pb::GetConnectionAccessTokenResponse {
            connection_id: held.row.id.to_string(),
            access_token: tokens.access_token,
            token_type: tokens.token_type,
            expires_at: tokens.expires_at.map(crate::kernel::time::timestamp),
            scope: tokens.scope.unwrap_or_default(),
            api_base_url: provider
                .oauth2
                .as_ref()
                .map(|o| o.api_base_url.to_string())
                .unwrap_or_default(),
        })
    }

    /// `Proxy`: see the proto for the contract.
    pub async fn proxy(&self, caller: &Caller, call: ProxyCall) -> Result<ProxyAnswer> {
        let method = parse_method(&call.method)?;
        let (held, provider, tokens) = self.oauth_connection(caller, &call.connection_id).await?;
        let row = &held.row;
        let base = &provider
            .oauth2
            .as_ref()
            .expect("an OAuth integration")
            .api_base_url;
        let url = api::api_url(base, &call.path, &call.query)
            .map_err(|problem| Error::invalid("path", problem))?;
        let started = Instant::now();
        let outcome = self
            .send_with_fresh_token(
                row,
                &provider,
                tokens,
                ApiRequest {
                    method,
                    url,
                    headers: call.headers,
                    body: call.body,
                },
            )
            .await;
        let label = match &outcome {
            Ok(response) => format!("{}xx", response.status().as_u16() / 100),
            Err(err) => err.classify().2.to_ascii_lowercase(),
        };
        let oauth = &self.tokens.provider_oauth;
        oauth
            .metrics()
            .proxy_request(&provider.id, label, started.elapsed().as_secs_f64());
        let response = outcome?;
        let limit = oauth.max_api_response_bytes();
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(Error::FailedPrecondition {
                precondition: Precondition::BadUpstream,
                reason: Reason::ProxyResponseTooLarge,
                message: format!(
                    "the provider's answer is larger than {limit} bytes (LINKD_PROXY_MAX_RESPONSE_BYTES)"
                ),
            });
        }
        let status = response.status();
        let mut headers = HeaderMap::new();
        for (name, value) in response.headers() {
            if api::returns_response_header(name) {
                headers.append(name, value.clone());
            }
        }
        Ok(ProxyAnswer {
            status,
            headers,
            body: limited(response, limit),
        })
    }

    /// Sends `request` with usable tokens; on a `401`, refreshes the token
    /// the provider refused and sends it once more.
    async fn send_with_fresh_token(
        &self,
        row: &store::ConnectionRow,
        provider: &crate::catalog::Provider,
        tokens: OAuthTokens,
        request: ApiRequest,
    ) -> Result<reqwest::Response> {
        let oauth = &self.tokens.provider_oauth;
        let client_id = if ProviderOAuth::api_needs_client_id(provider) {
            oauth
                .client(row.client_app_id, provider)
                .await?
                .map(|c| c.client_id)
        } else {
            None
        };
        let tokens = self.usable_tokens(row, tokens, false).await?;
        let send = |tokens: OAuthTokens| {
            let client_id = client_id.clone();
            let request = &request;
            async move {
                oauth
                    .call_api(provider, client_id.as_deref(), &tokens, request)
                    .await
                    .map_err(|err| self.api_error(row, err))
            }
        };
        let response = send(tokens.clone()).await?;
        if response.status() != StatusCode::UNAUTHORIZED || tokens.refresh_token.is_none() {
            return Ok(response);
        }
        drop(response);
        let refreshed = self.usable_tokens(row, tokens, true).await?;
        send(refreshed).await
    }

    fn api_error(&self, row: &store::ConnectionRow, err: ApiError) -> Error {
        tracing::warn!(
            connection_id = %row.id,
            integration = %row.integration_id,
            error = %err,
            "proxied call got no answer"
        );
        Error::ProviderUnavailable
    }
}

/// The body of `response` as it arrives, cut off past `limit` bytes; it
/// ends after its first error.
fn limited(response: reqwest::Response, limit: u64) -> BodyStream {
    let mut seen: u64 = 0;
    let chunks = response.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(|_| BodyError::Broken)?;
        seen += chunk.len() as u64;
        if seen > limit {
            return Err(BodyError::TooLarge);
        }
        Ok(chunk)
    });
    Box::pin(chunks.scan(false, |failed, item| {
        let next = (!*failed).then(|| {
            *failed = item.is_err();
            item
        });
        std::future::ready(next)
    }))
}
