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
//! connection. `exchange_code` turns the code into an opaque access token
//! scoped to that one connection.

pub mod rules;
pub mod store;

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
    AuthorizationRequest, MAX_STATE_LEN, Redemption, error_redirect, is_valid_pkce_value,
    redirect_uri_matches,
};
use crate::pb;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgConnection;
use std::sync::Arc;
use subtle::ConstantTimeEq;

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

/// Client credentials of a token request: HTTP Basic or the body.
#[derive(Debug, Default)]
pub struct BasicCredentials {
    pub client_id: String,
    pub client_secret: SecretString,
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
        }
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
        let redirect_error = |error: &'static str, description: &str| pb::AuthorizeResponse {
            location: error_redirect(
                &effective_redirect_uri,
                error,
                description,
                state.as_deref(),
            ),
            error: error.to_string(),
        };
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
        if let Err(why) = rules::check_pkce_challenge(
            challenge,
            given(&req.code_challenge_method),
            self.settings.require_pkce,
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

    /// Authenticates the client of a token request (RFC 6749 §2.3.1): HTTP
    /// Basic or `client_id` + `client_secret` in the body, not both.
    async fn authenticate_client(
        &self,
        req: &pb::ExchangeCodeRequest,
        basic: Option<BasicCredentials>,
    ) -> Result<ClientAppId> {
        let (client_id, secret) = match basic {
            Some(_) if req.client_secret.is_some() => {
                return Err(Error::oauth(
                    "invalid_request",
                    "Use one client authentication method, not both.",
                ));
            }
            Some(basic) => {
                if !req.client_id.is_empty() && req.client_id != basic.client_id {
                    return Err(Error::oauth(
                        "invalid_request",
                        "client_id differs from the authenticated client.",
                    ));
                }
                (basic.client_id, basic.client_secret)
            }
            None => match &req.client_secret {
                Some(secret) => (req.client_id.clone(), SecretString::from(secret.clone())),
                None => {
                    return Err(Error::oauth(
                        "invalid_client",
                        "Client authentication is required.",
                    ));
                }
            },
        };
        let failed = || Error::oauth("invalid_client", "Client authentication failed.");
        let app_id = ClientAppId::parse(&client_id).ok_or_else(failed)?;
        let stored = tenancy::client_secret_hash(&self.db, app_id).await?;
        let presented = token_hash(secret.expose_secret());
        let stored = stored.unwrap_or_default();
        let matches = stored.len() == presented.len() && bool::from(presented.ct_eq(&stored));
        if !matches {
            return Err(failed());
        }
        self.auth.limits().charge_client_app(app_id).await?;
        Ok(app_id)
    }

    /// Exchanges an authorization code for an access token (RFC 6749
    /// §4.1.3). The code is locked while checked, so of concurrent
    /// redemptions exactly one succeeds; a redemption of a used code fails
    /// and revokes what the first one issued.
    pub async fn exchange_code(
        &self,
        req: pb::ExchangeCodeRequest,
        basic: Option<BasicCredentials>,
    ) -> Result<pb::ExchangeCodeResponse> {
        let client = self.authenticate_client(&req, basic).await?;
        check_token_request(&req)?;
        let invalid_grant = |why: &str| Error::oauth("invalid_grant", why);
        let mut tx = self.db.begin().await?;
        let code = store::lock_code(&mut tx, &token_hash(&req.code))
            .await?
            .ok_or_else(|| invalid_grant("The code is invalid."))?;
        if code.client_app_id != client {
            return Err(invalid_grant("The code was issued to another client."));
        }
        if code.used {
            store::revoke_tokens_of_code(&mut tx, code.id).await?;
            tx.commit().await?;
            tracing::warn!(
                client_app_id = %client.to_string(),
                "authorization code replayed; its tokens are revoked"
            );
            return Err(invalid_grant(
                "The code was already used; tokens issued for it are revoked.",
            ));
        }
        if code.expired {
            return Err(invalid_grant("The code has expired."));
        }
        rules::check_redemption(
            &Redemption {
                redirect_uri: code.redirect_uri.as_deref(),
                effective_redirect_uri: &code.effective_redirect_uri,
                code_challenge: code.code_challenge.as_deref(),
            },
            given(&req.redirect_uri),
            req.code_verifier.as_deref(),
        )
        .map_err(invalid_grant)?;
        let live = crate::connections::store::exists(&mut *tx, code.connection_id).await?;
        if !live {
            return Err(invalid_grant("The connection no longer exists."));
        }
        let token = format!("lat_{}", random_token());
        let ttl = self.settings.token_ttl;
        store::insert_token(&mut tx, &token_hash(&token), &code, client, ttl).await?;
        store::mark_code_used(&mut tx, code.id).await?;
        tx.commit().await?;
        Ok(pb::ExchangeCodeResponse {
            access_token: token,
            token_type: "Bearer".into(),
            expires_in: ttl.as_secs() as i64,
            connection_id: code.connection_id.to_string(),
            scope: code.scope,
        })
    }

    /// Authenticates a caller of `GetConnection`: an API key (the tenant's
    /// connections) or an OAuth access token (its one connection).
    pub async fn authenticate_connection_reader(
        &self,
        credential: Option<&SecretString>,
    ) -> Result<Caller> {
        let Some(token) = credential.filter(|t| t.expose_secret().starts_with("lat_")) else {
            return self.auth.authenticate(credential).await;
        };
        let row = store::live_token(&self.db, &token_hash(token.expose_secret())).await?;
        let (organization_id, environment, connection_id, client_app_id) =
            row.ok_or(Error::Unauthenticated)?;
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

/// The token request's own syntax (RFC 6749 §4.1.3), before the code is
/// looked up.
fn check_token_request(req: &pb::ExchangeCodeRequest) -> Result<()> {
    match req.grant_type.as_str() {
        "" => return Err(Error::oauth("invalid_request", "grant_type is required.")),
        "authorization_code" => {}
        _ => {
            return Err(Error::oauth(
                "unsupported_grant_type",
                "Only grant_type=authorization_code is supported.",
            ));
        }
    }
    if req.code.is_empty() {
        return Err(Error::oauth("invalid_request", "code is required."));
    }
    if let Some(verifier) = &req.code_verifier
        && !is_valid_pkce_value(verifier)
    {
        return Err(Error::oauth(
            "invalid_request",
            "code_verifier must be 43 to 128 unreserved characters.",
        ));
    }
    Ok(())
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
