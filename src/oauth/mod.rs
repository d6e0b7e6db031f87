//! AuthorizeService: an OAuth 2.0 authorization server (RFC 6749 code grant,
//! RFC 7636 PKCE, RFC 9700 practices) whose login step is a Link session.
//! Imports the flow engine (to open the session), connections, client apps
//! and below.
//!
//! `authorize` checks the request in the RFC's order: malformed parameters
//! are a `400` keyed by parameter; an unknown client or an unregistered
//! redirect URI is an error page (never a redirect: the redirect target is
//! not trusted); every later problem goes back to the redirect URI as
//! `error`/`error_description`/`state`. A valid request opens a Link session
//! for the client's tenant; consent issues a single-use code (256 random
//! bits, stored hashed, short-lived) in the same transaction that makes the
//! connection. The token endpoint (`tokens.rs`) turns the code into a grant
//! with an access token scoped to that one connection and a rotating
//! refresh token, and revokes and introspects them; `clients.rs`
//! authenticates the clients that call it.

mod clients;
pub mod rules;
pub mod store;
mod tokens;

use clients::ClientAuth;

use crate::auth::{Authenticator, Caller};
use crate::catalog::{Catalog, Category};
use crate::client_apps::store as tenancy;
use crate::flows::{Flows, NewSessionFlow};
use crate::kernel::db::Db;
use crate::kernel::error::{Error, FieldViolation, Result};
use crate::kernel::ids::{ClientAppId, ConnectionId, random_token, token_hash};
use crate::kernel::tenant::Tenant;
use crate::kernel::validate::{Violations, limits};
use crate::oauth::rules::{
    ACCESS_TOKEN_PREFIX, AuthorizationRequest, MAX_STATE_LEN, RESPONSE_MODES, error_redirect,
    redirect_uri_matches,
};
use crate::pb;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgConnection;
use std::sync::Arc;

/// Why an authorization request cannot even be answered by redirect.
#[derive(Debug)]
pub enum AuthorizeError {
    /// Malformed parameters: `400 {"<parameter>": ["message"]}`.
    Parameters(Vec<FieldViolation>),
    /// Unknown client, or a redirect URI not registered for it: an error
    /// page for the end user, never a redirect.
    UntrustedClient {
        parameter: &'static str,
        message: String,
    },
    Other(Error),
}

impl From<Error> for AuthorizeError {
    fn from(err: Error) -> Self {
        AuthorizeError::Other(err)
    }
}

impl From<AuthorizeError> for Error {
    fn from(err: AuthorizeError) -> Self {
        match err {
            AuthorizeError::Parameters(violations) => Error::Validation(violations),
            AuthorizeError::UntrustedClient { parameter, message } => {
                Error::invalid(parameter, message)
            }
            AuthorizeError::Other(err) => err,
        }
    }
}

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// The syntax checks that need no client: every problem at once, keyed by
/// the REST parameter name.
fn check_parameters(
    req: &pb::AuthorizeRequest,
    catalog: &Catalog,
) -> Result<&'static str, AuthorizeError> {
    let mut v = Violations::new();
    let lang = rules::parse_lang(given(&req.lang)).map_err(|message| v.add("lang", message));
    for (name, value, max) in [
        ("redirect_uri", &req.redirect_uri, limits::URL),
        ("state", &req.state, MAX_STATE_LEN),
        ("tag", &req.tag, limits::REFERENCE),
        ("recipientId", &req.recipient_id, limits::REFERENCE),
        ("scope", &req.scope, limits::URL),
        ("code_challenge", &req.code_challenge, 128),
        (
            "code_challenge_method",
            &req.code_challenge_method,
            limits::ID,
        ),
        ("response_mode", &req.response_mode, limits::ID),
    ] {
        if let Some(value) = value {
            v.max_len(name, value, max);
        }
    }
    if let Some(institution) = given(&req.institution_id) {
        let is_bank = catalog
            .provider(institution)
            .is_some_and(|p| p.category == Category::Bank);
        if !is_bank {
            v.add(
                "institution_id",
                "The field institution_id must name a supported institution.",
            );
        }
    }
    let violations = v.into_vec();
    if !violations.is_empty() {
        return Err(AuthorizeError::Parameters(violations));
    }
    Ok(lang.unwrap_or("en"))
}

/// How strict the OAuth authorization server is.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    pub require_pkce: bool,
    /// 0: `state` is optional.
    pub state_min_length: usize,
    pub code_ttl: std::time::Duration,
    pub token_ttl: std::time::Duration,
    /// How long a grant's refresh tokens work after the code exchange.
    pub refresh_ttl: std::time::Duration,
}

/// Codes and refresh tokens presented again, by kind
/// (`authorization_code`, `refresh_token`): each one revoked its grant. A
/// rise means tokens leak, or a client retries in parallel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReplayLabels {
    token: &'static str,
}

/// AuthorizeService: authorization requests, code exchange, and the
/// access tokens that read a connection.
#[derive(Debug, Clone)]
pub struct OAuth {
    db: Db,
    catalog: Arc<Catalog>,
    settings: OAuthSettings,
    flows: Flows,
    auth: Authenticator,
    replays: prometheus_client::metrics::family::Family<
        ReplayLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl OAuth {
    pub fn new(
        db: Db,
        catalog: Arc<Catalog>,
        settings: OAuthSettings,
        flows: Flows,
        auth: Authenticator,
    ) -> Self {
        OAuth {
            db,
            catalog,
            settings,
            flows,
            auth,
            replays: Default::default(),
        }
    }

    /// Registers `oauth_replays_total`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "oauth_replays",
            "Authorization codes and refresh tokens presented again (each revoked its grant), by token kind",
            self.replays.clone(),
        );
    }

    /// Counts a replayed code or refresh token, and says so in the log.
    fn replayed(&self, token: &'static str, client: ClientAppId) {
        self.replays.get_or_create(&ReplayLabels { token }).inc();
        tracing::warn!(
            client_app_id = %client.to_string(),
            token,
            "a used token was presented again; its grant is revoked"
        );
    }

    /// Validates an authorization request; on success opens the Link session
    /// for it and returns the Link page as `location`.
    pub async fn authorize(
        &self,
        req: pb::AuthorizeRequest,
    ) -> Result<pb::AuthorizeResponse, AuthorizeError> {
        let lang = check_parameters(&req, &self.catalog)?;
        let untrusted = |parameter, message: &str| AuthorizeError::UntrustedClient {
            parameter,
            message: message.to_string(),
        };
        let app_id = ClientAppId::parse(&req.client_id)
            .ok_or_else(|| untrusted("client_id", "The client_id is missing or unknown."))?;
        let app = tenancy::find_client_app(&self.db, app_id)
            .await?
            .ok_or_else(|| untrusted("client_id", "The client_id is missing or unknown."))?;
        let effective_redirect_uri = match given(&req.redirect_uri) {
            Some(requested) => {
                if !app
                    .redirect_uris
                    .iter()
                    .any(|registered| redirect_uri_matches(registered, requested))
                {
                    return Err(untrusted(
                        "redirect_uri",
                        "The redirect_uri is not registered for this client.",
                    ));
                }
                requested.to_string()
            }
            None => match app.redirect_uris.as_slice() {
                [only] => only.clone(),
                _ => {
                    return Err(untrusted(
                        "redirect_uri",
                        "The redirect_uri is required: this client registered several.",
                    ));
                }
            },
        };
        let state = req.state.clone();
        let issuer = self.issuer();
        let redirect_error = |error: &'static str, description: &str| pb::AuthorizeResponse {
            location: error_redirect(
                &effective_redirect_uri,
                error,
                description,
                state.as_deref(),
                &issuer,
            ),
            error: error.to_string(),
        };
        if let Some(mode) = given(&req.response_mode)
            && !RESPONSE_MODES.contains(&mode)
        {
            return Ok(redirect_error(
                "invalid_request",
                "response_mode must be query (form_post and fragment are not supported).",
            ));
        }
        match given(&Some(req.response_type.clone())) {
            None => {
                return Ok(redirect_error(
                    "invalid_request",
                    "response_type is required.",
                ));
            }
            Some("code") => {}
            Some(_) => {
                return Ok(redirect_error(
                    "unsupported_response_type",
                    "Only response_type=code is supported.",
                ));
            }
        }
        let scope = match rules::parse_scope(req.scope.as_deref()) {
            Ok(scope) => scope,
            Err(message) => return Ok(redirect_error("invalid_scope", &message)),
        };
        let min_state = self.settings.state_min_length;
        if min_state > 0
            && state
                .as_deref()
                .is_none_or(|s| s.chars().count() < min_state)
        {
            return Ok(redirect_error(
                "invalid_request",
                &format!("state is required (at least {min_state} characters)."),
            ));
        }
        let challenge = given(&req.code_challenge);
        // A public client has no secret: PKCE is what binds its code to it
        // (RFC 9700 §2.1.1), whatever the server-wide setting.
        let public = app.is_public_client();
        if let Err(why) = rules::check_pkce_challenge(
            challenge,
            given(&req.code_challenge_method),
            self.settings.require_pkce || public,
        ) {
            return Ok(redirect_error("invalid_request", why));
        }
        let request = AuthorizationRequest {
            redirect_uri: given(&req.redirect_uri).map(str::to_string),
            effective_redirect_uri: effective_redirect_uri.clone(),
            state: state.clone(),
            scope,
            code_challenge: challenge.map(str::to_string),
            tag: given(&req.tag).map(str::to_string),
            recipient_id: given(&req.recipient_id).map(str::to_string),
        };
        let tenant = Tenant {
            organization_id: app.organization_id,
            environment: app.environment(),
        };
        let mut tx = self.db.begin().await.map_err(Error::from)?;
        let (location, _) = self
            .flows
            .open_session(
                &mut tx,
                &NewSessionFlow {
                    tenant,
                    client_app_id: app.id,
                    redirect_url: &effective_redirect_uri,
                    client_reference_id: None,
                    connection_id: ConnectionId::new(),
                    reconnect: false,
                    integration_id: given(&req.institution_id),
                    geolocation: None,
                    lang,
                    oauth: Some(&request),
                },
            )
            .await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(pb::AuthorizeResponse {
            location,
            error: String::new(),
        })
    }

    /// The issuer identifier: the metadata's `issuer` and every `iss`.
    pub fn issuer(&self) -> String {
        rules::issuer(self.flows.public_url())
    }

    /// Authenticates a caller of `GetConnection`: an API key (the tenant's
    /// connections) or an OAuth access token (its one connection).
    pub async fn authenticate_connection_reader(
        &self,
        credential: Option<&SecretString>,
    ) -> Result<Caller> {
        let Some(token) = credential.filter(|t| t.expose_secret().starts_with(ACCESS_TOKEN_PREFIX))
        else {
            return self.auth.authenticate(credential).await;
        };
        let row = store::live_token(&self.db, &token_hash(token.expose_secret())).await?;
        // RFC 6750 §3.1: the resource says the token is the problem, so an
        // OAuth client knows to refresh it rather than give up.
        let (organization_id, environment, connection_id, client_app_id) =
            row.ok_or_else(|| {
                Error::oauth(
                    "invalid_token",
                    "The access token is invalid, expired or revoked.",
                )
            })?;
        self.auth.limits().charge_client_app(client_app_id).await?;
        Ok(Caller {
            tenant: Tenant {
                organization_id,
                environment,
            },
            only_connection: Some(connection_id),
        })
    }
}

/// Issues the authorization code of a consented OAuth session, inside
/// the transaction that made the connection. Returns the only copy.
pub(crate) async fn issue_authorization_code(
    tx: &mut PgConnection,
    code_ttl: std::time::Duration,
    tenant: Tenant,
    client_app_id: ClientAppId,
    request: &AuthorizationRequest,
    connection_id: ConnectionId,
) -> Result<String> {
    let code = format!("lac_{}", random_token());
    store::insert_code(
        tx,
        &token_hash(&code),
        tenant,
        client_app_id,
        connection_id,
        request,
        code_ttl,
    )
    .await?;
    Ok(code)
}
