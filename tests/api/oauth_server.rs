//! A real OAuth 2.0 authorization server for the provider-integration
//! tests: `tests/oauth_provider/server.mjs` (oidc-provider from npm, OpenID
//! Certified) on loopback, installed with npm on first use, plus the end
//! user's part on its login and consent pages.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use url::Url;

/// The client id and secret the tests register at the provider.
pub const CLIENT_ID: &str = "linkd-test-app";
pub const CLIENT_SECRET: &str = "linkd-test-secret";

fn provider_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oauth_provider")
}

/// `npm ci` in `dir` (a folder under `tests/`) once per test run, when its
/// `node_modules` lacks `package`.
pub fn npm_ci(dir: &std::path::Path, package: &str) {
    static INSTALLS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLS.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join("node_modules").join(package).exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .expect("npm is installed (Node 20+)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// What the end user does on the provider's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
}

pub struct OAuthServer {
    child: Child,
    pub base: Url,
    http: reqwest::Client,
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OAuthServer {
    /// Starts the provider with one confidential client whose redirect URI
    /// is `callback`, issuing access tokens that live `access_ttl` seconds.
    pub fn start(callback: &str, access_ttl: u64) -> Self {
        npm_ci(&provider_dir(), "oidc-provider");
        let clients = json!([{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [callback],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "client_secret_basic",
        }]);
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(provider_dir())
            .env("PORT", "0")
            .env("CLIENTS", clients.to_string())
            .env("ACCESS_TTL", access_ttl.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node is installed");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the OAuth server did not start: {line:?}"));
        crate::helpers::install_crypto();
        OAuthServer {
            child,
            base: Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            http: reqwest::Client::new(),
        }
    }

    /// A catalog entry `id` for this provider (PKCE, Basic client
    /// authentication, revocation, its `/api` as the API base).
    pub fn catalog_entry(&self, id: &str) -> Value {
        json!({
            "id": id,
            "name": "Acme ID",
            "category": "creator",
            "auth": {
                "type": "oauth2",
                "authorizationUrl": self.base.join("/auth").unwrap().as_str(),
                "tokenUrl": self.base.join("/token").unwrap().as_str(),
                "revocationUrl": self.base.join("/token/revocation").unwrap().as_str(),
                "scopes": {"default": ["read"], "allowed": ["read", "write", "offline_access"]},
                "pkce": true,
                "clientAuthentication": "basic",
                "apiBaseUrl": self.base.join("/api").unwrap().as_str(),
            },
            "capabilities": [{
                "resource": "profile", "action": "read", "description": "Reads the profile.",
                "resultKey": "profile", "resultDescription": "profile: {id, username}.",
                "arguments": {"type": "object", "additionalProperties": false, "properties": {}},
            }],
        })
    }

    /// Token endpoint calls by grant type, revocations and API calls.
    pub async fn stats(&self) -> Value {
        self.http
            .get(self.base.join("/__stats").unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn control(&self, path: &str) {
        let response = self
            .http
            .post(self.base.join(path).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }

    /// The token endpoint answers `status` (with `Retry-After: retry_after`
    /// when given) until [`Self::up`].
    pub async fn down(&self, status: u16, retry_after: Option<u64>) {
        let mut path = format!("/__down?status={status}");
        if let Some(seconds) = retry_after {
            path.push_str(&format!("&retry_after={seconds}"));
        }
        self.control(&path).await;
    }

    /// The token endpoint takes `ms` milliseconds to answer.
    pub async fn slow(&self, ms: u64) {
        self.control(&format!("/__slow?ms={ms}")).await;
    }

    /// Forgets every access token, keeping the refresh tokens: the API
    /// refuses tokens linkd still thinks valid.
    pub async fn expire_access_tokens(&self) {
        self.control("/__expire_access").await;
    }

    /// Every access and refresh token the provider issued.
    pub async fn issued_tokens(&self) -> Vec<String> {
        let body: Value = self
            .http
            .get(self.base.join("/__tokens").unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        serde_json::from_value(body["tokens"].clone()).unwrap()
    }

    pub async fn up(&self) {
        self.control("/__up").await;
    }

    /// Destroys every grant and token, as when the user revokes the app at
    /// the provider.
    pub async fn forget_grants(&self) {
        self.control("/__forget").await;
    }

    /// Plays the end user on the provider's development pages: opens the
    /// authorization URL, signs in as `user`, then approves or denies.
    /// Returns where the provider redirects the browser (linkd's callback).
    pub async fn authorize(&self, authorization_url: &str, user: &str, decision: Decision) -> Url {
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut url = Url::parse(authorization_url).unwrap();
        for _ in 0..12 {
            if url.origin() != self.base.origin() {
                return url;
            }
            let response = browser.get(url.clone()).send().await.unwrap();
            if response.status().is_redirection() {
                url = url
                    .join(response.headers()["location"].to_str().unwrap())
                    .unwrap();
                continue;
            }
            assert_eq!(response.status(), StatusCode::OK, "{url}");
            let page = response.text().await.unwrap();
            let form = if page.contains("name=\"prompt\" value=\"login\"") {
                vec![("prompt", "login"), ("login", user), ("password", "any")]
            } else if decision == Decision::Deny {
                url = url.join(&format!("{}/abort", url.path())).unwrap();
                continue;
            } else {
                vec![("prompt", "consent")]
            };
            let posted = browser.post(url.clone()).form(&form).send().await.unwrap();
            assert!(posted.status().is_redirection(), "{}", posted.status());
            url = url
                .join(posted.headers()["location"].to_str().unwrap())
                .unwrap();
        }
        panic!("the provider never redirected back: {url}");
    }
}
