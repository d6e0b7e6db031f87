//! OAuth 2.0 provider integrations against a real authorization server
//! (oidc-provider on loopback): the app's OAuth client, the Link flow
//! through the provider's consent page and linkd's callback, and what a
//! replayed, forged or late callback does.

use crate::helpers::{Page, TestApp, TestTenant, spawn_app};
use crate::oauth_server::{CLIENT_ID, CLIENT_SECRET, Decision, OAuthServer};
use linkd::kernel::tenant::Environment;
use reqwest::StatusCode;
use serde_json::{Value, json};
use url::Url;

pub const INTEGRATION: &str = "acmeid";

/// A linkd with the test provider in its catalog, a tenant whose app has
/// its OAuth client there, and the provider.
pub struct OAuthSetup {
    pub app: TestApp,
    pub tenant: TestTenant,
    pub provider: OAuthServer,
}

pub async fn setup_on(app: TestApp, access_ttl: u64) -> OAuthSetup {
    let provider = OAuthServer::start(&app.url("/link/oauth/callback"), access_ttl);
    app.api
        .catalog()
        .add_described(&provider.catalog_entry(INTEGRATION))
        .unwrap();
    let tenant = app.create_tenant(Environment::Sandbox).await;
    set_client(&app, &tenant, json!({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "scopes": ["read", "offline_access"]}))
        .await;
    OAuthSetup {
        app,
        tenant,
        provider,
    }
}

pub async fn setup(access_ttl: u64) -> OAuthSetup {
    setup_on(spawn_app().await, access_ttl).await
}

pub async fn set_client(app: &TestApp, tenant: &TestTenant, body: Value) -> Value {
    let (status, body) = put_client(app, tenant, body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Sets the app's OAuth client at `integration`; asserts `200`.
pub async fn set_client_for(app: &TestApp, tenant: &TestTenant, integration: &str, body: Value) {
    let (status, body) = put_client_for(app, tenant, integration, body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn put_client(app: &TestApp, tenant: &TestTenant, body: Value) -> (StatusCode, Value) {
    put_client_for(app, tenant, INTEGRATION, body).await
}

async fn put_client_for(
    app: &TestApp,
    tenant: &TestTenant,
    integration: &str,
    body: Value,
) -> (StatusCode, Value) {
    let response = app
        .http
        .put(app.url(&format!(
            "/v1/client-apps/{}/oauth-clients/{integration}",
            tenant.app_id
        )))
        .bearer_auth(&tenant.key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// A browser that does not follow redirects, to read where linkd sends it.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Follows linkd's callback; returns its `Location`.
pub async fn follow_callback(callback: &Url) -> String {
    let response = browser().get(callback.clone()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    response.headers()["location"].to_str().unwrap().to_string()
}

impl OAuthSetup {
    /// A Link session at the test integration's login step.
    pub async fn session_at_login(&self) -> Page<'_> {
        let page = self.app.open_session(&self.tenant, json!({})).await;
        let flow = page.pick(INTEGRATION).await;
        assert_eq!(flow["step"], "login", "{flow}");
        page
    }

    pub async fn start(&self, page: &Page<'_>) -> Url {
        let started = page.ok("/v1/flow/oauth/start", Some(json!({}))).await;
        Url::parse(started["authorizationUrl"].as_str().unwrap()).unwrap()
    }

    /// A whole Link session through the provider's consent to an active
    /// connection; returns the final flow.
    pub async fn connect(&self, user: &str) -> Value {
        let page = self.session_at_login().await;
        self.consent(&page, user).await
    }

    /// A Link session that reconnects connection `id` through the
    /// provider's consent; returns the final flow.
    pub async fn reconnect(&self, id: &str, user: &str) -> Value {
        let page = self
            .app
            .open_session(&self.tenant, json!({"connectionId": id}))
            .await;
        let flow = page.flow().await;
        assert_eq!(flow["step"], "login", "the integration is fixed: {flow}");
        self.consent(&page, user).await
    }

    /// From the login step through the provider's pages and linkd's
    /// consent.
    async fn consent(&self, page: &Page<'_>, user: &str) -> Value {
        let url = self.start(page).await;
        let callback = self
            .provider
            .authorize(url.as_str(), user, Decision::Approve)
            .await;
        assert_eq!(follow_callback(&callback).await, "/link");
        let flow = page.flow().await;
        assert_eq!(flow["step"], "authorization", "{flow}");
        let done = page.approve().await;
        assert_eq!(done["outcome"], "success", "{done}");
        done
    }
}

#[tokio::test]
async fn a_session_connects_through_the_providers_consent_page() {
    let s = setup(60).await;
    let page = s.app.open_session(&s.tenant, json!({})).await;
    let flow = page.flow().await;
    let choice = flow["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["integrationId"] == INTEGRATION)
        .unwrap_or_else(|| panic!("the integration is offered: {flow}"));
    assert_eq!(choice["loginMethod"], "oauth2");
    assert!(
        !flow["integrations"].to_string().contains("\"twitch\""),
        "an OAuth integration without a client is not offered: {flow}"
    );
    let flow = page.pick(INTEGRATION).await;
    assert_eq!(flow["loginMethod"], "oauth2");
    assert_eq!(flow["credentialFields"], json!([]));

    let url = s.start(&page).await;
    let params: std::collections::HashMap<String, String> =
        url.query_pairs().into_owned().collect();
    assert_eq!(url.origin(), s.provider.base.origin());
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], CLIENT_ID);
    assert_eq!(params["redirect_uri"], s.app.url("/link/oauth/callback"));
    assert_eq!(params["scope"], "read offline_access");
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["state"].len(), 43, "256 random bits");
    assert!(!url.as_str().contains(CLIENT_SECRET));

    let callback = s
        .provider
        .authorize(url.as_str(), "creator-42", Decision::Approve)
        .await;
    assert!(
        callback
            .as_str()
            .starts_with(&s.app.url("/link/oauth/callback"))
    );
    assert_eq!(follow_callback(&callback).await, "/link");
    let flow = page.flow().await;
    assert_eq!(flow["step"], "authorization", "{flow}");
    let done = page.approve().await;
    assert_eq!(done["outcome"], "success");
    let redirect = Url::parse(done["redirectUrl"].as_str().unwrap()).unwrap();
    let query: std::collections::HashMap<String, String> =
        redirect.query_pairs().into_owned().collect();
    assert_eq!(query["status"], "success");
    let connection_id = done["connectionId"].as_str().unwrap();
    assert_eq!(query["connection_id"], connection_id);
    assert_eq!(s.provider.stats().await["authorization_code"], 1);
    assert!(
        s.app.metrics().await.contains(
            r#"linkd_oauth_token_requests_total{integration="acmeid",grant="authorization_code",outcome="ok"} 1"#
        ),
        "the exchange is counted"
    );

    let (_, connection) = crate::sessions::get_connection(&s.app, &s.tenant, connection_id).await;
    assert_eq!(connection["status"], "active");
    assert_eq!(connection["integrationId"], INTEGRATION);
    let created = s.app.events_of(&s.tenant, "connection.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["data"]["connection"]["id"], connection_id);

    // The provider's redirect replayed: nothing happens, the code is not
    // exchanged again.
    assert_eq!(
        follow_callback(&callback).await,
        "/link#oauth_error=invalid_state"
    );
    assert_eq!(s.provider.stats().await["authorization_code"], 1);
    assert_eq!(
        s.app.events_of(&s.tenant, "connection.created").await.len(),
        1
    );
}

#[tokio::test]
async fn access_denied_at_the_provider_cancels_at_login() {
    let s = setup(60).await;
    let page = s.session_at_login().await;
    let url = s.start(&page).await;
    let callback = s
        .provider
        .authorize(url.as_str(), "creator-1", Decision::Deny)
        .await;
    assert!(callback.query().unwrap().contains("error=access_denied"));
    assert_eq!(follow_callback(&callback).await, "/link");
    let flow = page.flow().await;
    assert_eq!(flow["outcome"], "cancelled", "{flow}");
    assert_eq!(flow["cancelledStep"], "login");
    let redirect = flow["redirectUrl"].as_str().unwrap();
    assert!(
        redirect.contains("status=cancelled") && redirect.contains("step=login"),
        "{redirect}"
    );
    assert_eq!(s.provider.stats().await["authorization_code"], 0);
}

#[tokio::test]
async fn a_forged_state_or_a_late_callback_changes_nothing() {
    let s = setup(60).await;
    let page = s.session_at_login().await;
    let url = s.start(&page).await;
    let callback = s
        .provider
        .authorize(url.as_str(), "creator-1", Decision::Approve)
        .await;

    // The same code with a state linkd never issued (login CSRF).
    let mut forged = callback.clone();
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == "state" {
                (k, "x".repeat(43))
            } else {
                (k, v)
            }
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    assert_eq!(
        follow_callback(&forged).await,
        "/link#oauth_error=invalid_state"
    );
    let mut no_state = callback.clone();
    no_state.set_query(Some("code=abc"));
    assert_eq!(
        follow_callback(&no_state).await,
        "/link#oauth_error=invalid_state"
    );
    assert_eq!(page.flow().await["step"], "login");

    // The end user cancelled in the meantime: the real callback arrives
    // for a finished flow and its code is never exchanged.
    page.cancel("login").await;
    assert_eq!(follow_callback(&callback).await, "/link");
    assert_eq!(s.provider.stats().await["authorization_code"], 0);
    let flow = page.flow().await;
    assert_eq!(flow["outcome"], "cancelled");
}

#[tokio::test]
async fn a_provider_error_other_than_denial_fails_the_flow() {
    let s = setup(60).await;
    let page = s.session_at_login().await;
    let url = s.start(&page).await;
    let state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let mut callback = Url::parse(&s.app.url("/link/oauth/callback")).unwrap();
    callback
        .query_pairs_mut()
        .append_pair("error", "server_error")
        .append_pair("state", &state);
    assert_eq!(follow_callback(&callback).await, "/link");
    let flow = page.flow().await;
    assert_eq!(flow["outcome"], "error");
    assert_eq!(flow["errorCode"], "authorization_failed");
    assert!(
        flow["redirectUrl"]
            .as_str()
            .unwrap()
            .contains("error_code=authorization_failed"),
        "{flow}"
    );
}

#[tokio::test]
async fn the_apps_oauth_client_is_validated_and_its_secret_never_returned() {
    let s = setup(60).await;
    let (status, body) = put_client(
        &s.app,
        &s.tenant,
        json!({"clientId": "", "clientSecret": "x", "scopes": ["admin"]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let paths: Vec<&str> = body["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["clientId", "scopes[0]"], "{body}");

    let response = s
        .app
        .http
        .put(s.app.url(&format!(
            "/v1/client-apps/{}/oauth-clients/tmobile",
            s.tenant.app_id
        )))
        .bearer_auth(&s.tenant.key)
        .json(&json!({"clientId": "a", "clientSecret": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["issues"][0]["path"], "integrationId");

    let listed: Value = s
        .app
        .http
        .get(s.app.url(&format!(
            "/v1/client-apps/{}/oauth-clients",
            s.tenant.app_id
        )))
        .bearer_auth(&s.tenant.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["oauthClients"][0]["clientId"], CLIENT_ID);
    assert_eq!(
        listed["oauthClients"][0]["scopes"],
        json!(["read", "offline_access"])
    );
    assert!(!listed.to_string().contains(CLIENT_SECRET), "{listed}");
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT secret_ciphertext FROM provider_oauth_clients")
            .fetch_one(s.app.api.db())
            .await
            .unwrap();
    assert!(
        !stored
            .windows(CLIENT_SECRET.len())
            .any(|w| w == CLIENT_SECRET.as_bytes()),
        "stored encrypted"
    );

    // Another tenant's key finds no such app.
    let other = s.app.create_tenant(Environment::Sandbox).await;
    let foreign = s
        .app
        .http
        .get(s.app.url(&format!(
            "/v1/client-apps/{}/oauth-clients",
            s.tenant.app_id
        )))
        .bearer_auth(&other.key)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deleting_a_connection_revokes_the_grant_at_the_provider() {
    let s = setup(60).await;
    let done = s.connect("creator-9").await;
    let id = done["connectionId"].as_str().unwrap();
    let response = s
        .app
        .http
        .delete(s.app.url(&format!("/v2/connections/{id}")))
        .bearer_auth(&s.tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(s.provider.stats().await["revocations"], 1);
    let (status, _) = crate::sessions::get_connection(&s.app, &s.tenant, id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let wiped: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT session_ciphertext FROM connections WHERE id = $1")
            .bind(uuid::Uuid::parse_str(&id["conn_".len()..]).unwrap())
            .fetch_one(s.app.api.db())
            .await
            .unwrap();
    assert_eq!(wiped, None, "the tokens are wiped");
}
