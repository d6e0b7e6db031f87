//! The Link page in a real browser: Debian's headless Chromium driven over
//! WebDriver (chromedriver + fantoccini), against the real server and a
//! client app's pages served by the test on another origin. Screenshots of
//! every step land in `target/test-output/browser/<test>/`.

use crate::helpers::{TestApp, TestTenant, spawn_app};
use axum::extract::Query;
use axum::response::Html;
use fantoccini::{Client, ClientBuilder, Locator};
use linkd::kernel::ids::OrganizationId;
use linkd::kernel::tenant::Tenant;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use url::Url;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(20);

/// The first lines of every Link page screen: the header.
const HEADER: [&str; 2] = ["◆", "linkd"];
const LOGIN_LEAD: &str =
    "Your credentials go to the provider only; they are not shared with the app.";
const USED: &str = "This session has already been used. Start again from the app.";
const CLOSE: &str = "You can close this window.";

/// Chromium and chromedriver, installed from Debian when missing (as `.ci/run`
/// does) so that `cargo test` alone sets up a fresh machine.
fn ensure_chromium() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let present = || Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
        if !present() && nix::unistd::Uid::effective().is_root() {
            let _ = std::process::Command::new("apt-get")
                .args(["install", "-y", "-q", "chromium", "chromium-driver"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
        }
        if present() {
            Ok(())
        } else {
            Err(format!(
                "browser tests need {CHROMIUM} and {CHROMEDRIVER}: run `apt-get install chromium chromium-driver` (or .ci/run)"
            ))
        }
    });
    if let Err(message) = ready {
        panic!("{message}");
    }
}

/// Two browsers at a time: the machines running this have two cores.
fn browser_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| tokio::sync::Semaphore::new(2))
}

struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
    _slot: tokio::sync::SemaphorePermit<'static>,
    shots: PathBuf,
    taken: usize,
    /// The header lines every screen starts with (linkd's, or a client
    /// app's brand).
    header: Vec<String>,
}

impl Browser {
    /// A phone-sized headless Chromium.
    async fn start(test: &str) -> Browser {
        ensure_chromium();
        let slot = browser_slots().acquire().await.unwrap();
        // A free port, then chromedriver on it; another process may take
        // the port in between, and chromedriver then exits: pick again.
        let spawn_driver = || {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let driver = tokio::process::Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("starting chromedriver");
            (port, driver)
        };
        let (mut port, mut driver) = spawn_driver();
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--disable-quic", "--window-size=390,844",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(_) if matches!(driver.try_wait(), Ok(Some(_))) && started.elapsed() < WAIT => {
                    (port, driver) = spawn_driver();
                }
                Err(err) if started.elapsed() < WAIT => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("connecting to chromedriver: {err}"),
            }
        };
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("../test-output/browser")
            .join(test);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            _driver: driver,
            _profile: profile,
            _slot: slot,
            shots,
            taken: 0,
            header: HEADER.iter().map(|l| l.to_string()).collect(),
        }
    }

    /// The visible text of the Link page's card (the whole page elsewhere),
    /// line by line, blank lines dropped.
    async fn card_lines(&self) -> Vec<String> {
        let text = self
            .client
            .execute(
                "var c = document.getElementById('card'); return (c || document.body).innerText;",
                vec![],
            )
            .await
            .unwrap_or_default();
        text.as_str()
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Waits until the Link page shows exactly its header and `expected`,
    /// line by line, and is not busy; fails on stray text; saves a
    /// screenshot as `step`.
    async fn screen(&mut self, step: &str, expected: &[&str]) {
        let expected: Vec<&str> = self
            .header
            .iter()
            .map(String::as_str)
            .chain(expected.iter().copied())
            .collect();
        let started = Instant::now();
        loop {
            let lines = self.card_lines().await;
            let busy = self
                .client
                .execute(
                    "var v = document.getElementById('view'); return !!v && v.getAttribute('aria-busy') === 'true';",
                    vec![],
                )
                .await
                .ok()
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            if lines == expected && !busy {
                assert_no_stray_text(step, &lines);
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "{step}: the page shows {lines:#?}\nexpected {expected:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.shot(step).await;
    }

    /// [`Self::screen`], then a second screenshot at desktop size
    /// (1280×800) of the same screen, which must read the same.
    async fn screen_at_both_sizes(&mut self, step: &str, expected: &[&str]) {
        self.screen(step, expected).await;
        self.client.set_window_size(1280, 800).await.unwrap();
        self.screen(&format!("{step}-desktop"), expected).await;
        self.client.set_window_size(390, 844).await.unwrap();
    }

    /// What the host page's callbacks recorded of one `kind` (`success`,
    /// `exit`, `event`).
    async fn results(&self, kind: &str) -> Vec<Value> {
        let recorded = self
            .client
            .execute(
                "var kind = arguments[0]; return window.results.filter(function (r) { return r.kind === kind; });",
                vec![json!(kind)],
            )
            .await
            .unwrap();
        recorded.as_array().cloned().unwrap_or_default()
    }

    /// Runs `script` in the page and returns its answer.
    async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    async fn shot(&mut self, step: &str) {
        self.taken += 1;
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(
            self.shots.join(format!("{:02}-{step}.png", self.taken)),
            png,
        )
        .unwrap();
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Waits until `css` matches a displayed element, then returns it.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let started = Instant::now();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && element.is_displayed().await.unwrap_or(false)
            {
                return element;
            }
            assert!(started.elapsed() < WAIT, "no element {css}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Waits until the heading contains `text`.
    async fn heading(&self, text: &str) {
        self.text_of("h1", text).await;
    }

    async fn text_of(&self, css: &str, text: &str) {
        let started = Instant::now();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && element.text().await.unwrap_or_default().contains(text)
            {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "{css} never showed {text:?}: {}",
                self.client.source().await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for navigation to a URL starting with `prefix`.
    async fn landed_on(&self, prefix: &str) -> Url {
        let started = Instant::now();
        loop {
            let url = self.client.current_url().await.expect("current URL");
            if url.as_str().starts_with(prefix) {
                return url;
            }
            assert!(
                started.elapsed() < WAIT,
                "stayed on {url}, expected {prefix}…"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn login(&self, username: &str, password: &str) {
        let user = self.find("input[name=username]").await;
        user.clear().await.unwrap();
        user.send_keys(username).await.unwrap();
        let pass = self.find("input[name=password]").await;
        pass.clear().await.unwrap();
        pass.send_keys(password).await.unwrap();
        self.click("button[type=submit]").await;
    }

    /// Waits for a window other than `main` (a popup) and returns it.
    async fn popup_beside(
        &self,
        main: &fantoccini::wd::WindowHandle,
    ) -> fantoccini::wd::WindowHandle {
        let started = Instant::now();
        loop {
            let windows = self.client.windows().await.unwrap();
            if let Some(popup) = windows.into_iter().find(|w| w != main) {
                return popup;
            }
            assert!(started.elapsed() < WAIT, "no popup opened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every popup has closed itself.
    async fn wait_until_one_window(&self) {
        let started = Instant::now();
        while self.client.windows().await.unwrap().len() > 1 {
            assert!(started.elapsed() < WAIT, "the popup stayed open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn quit(self) {
        let _ = self.client.close().await;
    }
}

/// Text an end user must never see: placeholders of missing values and
/// untranslated message keys (`invalid_code`, `twoFactor`).
fn stray(word: &str) -> bool {
    let word =
        word.trim_matches(|c: char| !c.is_alphanumeric() && c != '_' && c != '[' && c != ']');
    let snake = word.contains('_') && word.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    let camel = word.starts_with(|c: char| c.is_ascii_lowercase())
        && word.chars().any(|c| c.is_ascii_uppercase())
        && word.chars().all(|c| c.is_ascii_alphanumeric());
    let placeholder = ["null", "undefined", "NaN", "[object"]
        .iter()
        .any(|p| word.contains(p));
    placeholder || snake || camel
}

fn assert_no_stray_text(step: &str, lines: &[String]) {
    for line in lines {
        let bad: Vec<&str> = line.split_whitespace().filter(|w| stray(w)).collect();
        assert!(bad.is_empty(), "{step}: stray text {bad:?} in {line:?}");
    }
}

#[test]
fn the_stray_text_guard_catches_what_shipped_before() {
    for line in [
        "Connected. null",
        "nullnull",
        "invalid_code",
        "twoFactor",
        "[object Object]",
        "NaN",
        "undefined",
    ] {
        assert!(line.split_whitespace().any(stray), "{line}");
    }
    for line in [
        "Log in to OnlyFans",
        "Allow Acme Budget to access your Uber Eats account?",
        "◆ linkd",
    ] {
        assert!(!line.split_whitespace().any(stray), "{line}");
    }
}

/// What the picker lists, line by line, as the end user reads it: the
/// integrations grouped by category (banks, mobile carriers, delivery,
/// creator platforms) under headings in `lang`, a Sandbox badge after each
/// test institution. OAuth integrations need the app's OAuth client; these
/// apps have none.
fn picker_lines(lang: &str) -> Vec<String> {
    picker_lines_with(lang, &[])
}

/// [`picker_lines`] with the OAuth integrations `oauth` offered too (the
/// app has an OAuth client there).
fn picker_lines_with(lang: &str, oauth: &[&str]) -> Vec<String> {
    let catalog = linkd::ops::startup::load_catalog(None).unwrap();
    let providers = catalog.providers();
    let headings: [(&str, &str, &str); 4] = [
        ("bank", "Banks", "Banques"),
        ("mobile_carrier", "Mobile carriers", "Opérateurs mobiles"),
        ("delivery", "Delivery", "Livraison"),
        ("creator", "Creator platforms", "Plateformes de créateurs"),
    ];
    let mut lines = Vec::new();
    for (category, en, fr) in headings {
        let members: Vec<_> = providers
            .iter()
            .filter(|p| p.oauth2.is_none() || oauth.contains(&p.id.as_str()))
            .filter(|p| p.category.as_str() == category)
            .collect();
        if members.is_empty() {
            continue;
        }
        lines.push(if lang == "fr" { fr } else { en }.to_string());
        for p in members {
            lines.push(p.name.clone());
            if p.sandbox {
                lines.push(
                    if lang == "fr" {
                        "Bac à sable"
                    } else {
                        "Sandbox"
                    }
                    .to_string(),
                );
            }
        }
    }
    lines
}

fn query(url: &Url) -> Vec<(String, String)> {
    url.query_pairs().into_owned().collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The client app's own web pages on another origin: its redirect target
/// and a page that embeds Link with `/link/embed.js`; and an attacker's
/// page on a third origin that the host page frames.
struct ClientSite {
    origin: String,
    forger: String,
}

/// Framed inside the host page, next to Link's own frame: forges what
/// linkd would post to the host, and what the host would post to Link.
const FORGER_PAGE: &str = r#"<!doctype html><html><body><script>
  parent.postMessage({ source: 'linkd', type: 'success', connectionId: 'conn_forged' }, '*');
  parent.postMessage({ source: 'linkd', type: 'exit', status: 'cancelled', step: 'login' }, '*');
  for (var i = 0; i < parent.frames.length; i++) {
    if (parent.frames[i] !== window) parent.frames[i].postMessage({ source: 'linkd-host', type: 'close' }, '*');
  }
  parent.postMessage({ source: 'forger', type: 'posted' }, '*');
</script></body></html>"#;

const HOST_PAGE: &str = r#"<!doctype html>
<html><head><meta name="viewport" content="width=device-width, initial-scale=1"><title>Client app</title>
<script src="LINKD/link/embed.js"></script></head>
<body><h1>Client app</h1><button id="connect">Connect an account</button><button id="close">Close Link</button>
<ol id="log"></ol>
<script>
  window.results = [];
  window.addEventListener('message', function (e) {
    if (e.data && e.data.source === 'forger') window.forged = true;
  });
  function record(kind, payload) {
    window.results.push({ kind: kind, payload: payload });
    var li = document.createElement('li');
    li.textContent = kind + ' ' + JSON.stringify(payload);
    document.getElementById('log').appendChild(li);
  }
  var handle = null;
  document.getElementById('connect').addEventListener('click', function () {
    var params = new URLSearchParams(location.search);
    handle = Linkd.open({
      url: params.get('session'),
      mode: params.get('mode') || 'iframe',
      onSuccess: function (r) { record('success', r); },
      onExit: function (r) { record('exit', r); },
      onEvent: function (e) { record('event', e); },
    });
  });
  document.getElementById('close').addEventListener('click', function () { handle && handle.close(); });
</script></body></html>"#;

/// A single-page app, a public OAuth client, as a browser runs it: from
/// `/spa?client_id=…` it discovers linkd (RFC 8414), sends the end user to
/// authorize with PKCE and, back at `/spa?code=…`, checks `iss` and calls
/// the token, introspection and revocation endpoints with `fetch` — which
/// the browser lets it read only when CORS allows its origin. What it saw
/// lands in `window.spa` and on the page.
const SPA_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Budget SPA</title></head>
<body><h1>Budget SPA</h1><p id="status">Working…</p><pre id="result"></pre>
<script>
(async function () {
  const linkd = 'LINKD';
  const here = location.origin + location.pathname;
  const params = new URLSearchParams(location.search);
  const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const finish = (result) => {
    window.spa = result;
    document.getElementById('status').textContent = result.error ? 'Failed' : 'Connected';
    document.getElementById('result').textContent = JSON.stringify(result, null, 2);
  };
  try {
    const meta = await (await fetch(linkd + '/.well-known/oauth-authorization-server')).json();
    if (params.has('client_id')) {
      const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
      const challenge = b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
      const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
      sessionStorage.setItem('pkce', JSON.stringify({ verifier, state, clientId: params.get('client_id') }));
      const url = new URL(meta.authorization_endpoint);
      for (const [k, v] of Object.entries({ client_id: params.get('client_id'), response_type: 'code',
          redirect_uri: here, state, code_challenge: challenge, code_challenge_method: 'S256',
          institution_id: 'northbank' })) url.searchParams.set(k, v);
      location.assign(url.href);
      return;
    }
    const saved = JSON.parse(sessionStorage.getItem('pkce'));
    const result = { stateMatches: params.get('state') === saved.state, issMatches: params.get('iss') === meta.issuer };
    const post = async (endpoint, fields) => {
      const response = await fetch(endpoint, { method: 'POST', body: new URLSearchParams({ client_id: saved.clientId, ...fields }) });
      return { status: response.status, body: await response.text() };
    };
    try {
      const issued = await post(meta.token_endpoint, { grant_type: 'authorization_code', code: params.get('code'),
        redirect_uri: here, code_verifier: saved.verifier });
      result.token = issued.status;
      const tokens = JSON.parse(issued.body);
      const refreshed = await post(meta.token_endpoint, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
      result.refresh = refreshed.status;
      const next = JSON.parse(refreshed.body);
      result.active = JSON.parse((await post(meta.introspection_endpoint, { token: next.access_token })).body).active;
      result.revoke = (await post(meta.revocation_endpoint, { token: next.refresh_token })).status;
      result.activeAfterRevoke = JSON.parse((await post(meta.introspection_endpoint, { token: next.access_token })).body).active;
    } catch (err) {
      result.error = String(err);
    }
    finish(result);
  } catch (err) {
    finish({ error: String(err) });
  }
})();
</script></body></html>"#;

impl ClientSite {
    async fn start(linkd: &TestApp) -> ClientSite {
        let page = HOST_PAGE.replace("LINKD", &linkd.url(""));
        let spa = SPA_PAGE.replace("LINKD", linkd.url("").trim_end_matches('/'));
        let router = axum::Router::new()
            .route(
                "/spa",
                axum::routing::get(move || {
                    let spa = spa.clone();
                    async move { Html(spa) }
                }),
            )
            .route(
                "/callback",
                axum::routing::get(|| async { Html("<h1>Back in the client app</h1>") }),
            )
            .route(
                "/host.html",
                axum::routing::get(move |_: Query<HashMap<String, String>>| {
                    let page = page.clone();
                    async move { Html(page) }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let forger = axum::Router::new().route(
            "/forger.html",
            axum::routing::get(|| async { Html(FORGER_PAGE) }),
        );
        let forger_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let forger_addr = forger_listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(forger_listener, forger).await });
        ClientSite {
            origin: format!("http://{addr}"),
            // Another origin: `localhost` rather than 127.0.0.1.
            forger: format!("http://localhost:{}", forger_addr.port()),
        }
    }

    /// The app's page that opens `session` with the embed script.
    fn host_page(&self, session: &str) -> String {
        let mut url = Url::parse(&format!("{}/host.html", self.origin)).unwrap();
        url.query_pairs_mut().append_pair("session", session);
        url.to_string()
    }

    fn callback(&self) -> String {
        format!("{}/callback", self.origin)
    }

    /// Registers an app whose redirect URI is this site's callback (with a
    /// query of its own, which must survive).
    async fn register(&self, app: &TestApp, tenant: Tenant) -> TestTenant {
        app.add_app_with(
            tenant,
            "Acme Budget",
            &[format!("{}?from=linkd", self.callback())],
        )
        .await
    }
}

/// The client app's website, and a new tenant whose app redirects there.
async fn client_site(app: &TestApp) -> (ClientSite, TestTenant) {
    let site = ClientSite::start(app).await;
    let tenant = site.register(app, new_tenant(app).await).await;
    (site, tenant)
}

async fn session_url(app: &TestApp, tenant: &TestTenant, body: Value) -> String {
    let response = app.init_session(tenant, body).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    response.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn new_tenant(app: &TestApp) -> Tenant {
    let organization_id = OrganizationId::new();
    linkd::client_apps::store::create_organization(app.api.db(), organization_id, "Browser org")
        .await
        .unwrap();
    Tenant {
        organization_id,
        environment: linkd::kernel::tenant::Environment::Sandbox,
    }
}

#[tokio::test]
async fn hosted_success_by_keyboard_on_a_phone_screen() {
    let app = spawn_app().await;
    let (site, tenant) = client_site(&app).await;
    let url = session_url(&app, &tenant, json!({ "clientReferenceId": "user_abc123" })).await;
    let mut browser = Browser::start("hosted_success").await;

    browser.goto(&url).await;
    let names = picker_lines("en");
    let mut pick = vec![
        "Choose your provider",
        "Acme Budget wants to connect to one of your accounts.",
    ];
    pick.extend(names.iter().map(String::as_str));
    pick.push("Cancel");
    browser
        .screen_at_both_sizes("pick-integration", &pick)
        .await;
    let address = browser.client.current_url().await.unwrap();
    assert_eq!(address.fragment(), None, "the token leaves the address bar");
    // Everything the page loaded came from linkd, and its CSP refuses an
    // injected inline script.
    let loaded = browser
        .client
        .execute(
            "return performance.getEntriesByType('resource').map(function (e) { return new URL(e.name).origin; });",
            vec![],
        )
        .await
        .unwrap();
    let linkd_origin = app.url("");
    let loaded: Vec<&str> = loaded
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert!(
        !loaded.is_empty() && loaded.iter().all(|o| *o == linkd_origin),
        "{loaded:?}"
    );
    let injected = browser
        .client
        .execute(
            "var s = document.createElement('script'); s.textContent = 'window.injected = true;'; \
             document.head.appendChild(s); return window.injected === true;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!(false), "the CSP blocks inline script");
    let page = app.http.get(app.url("/link")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "form-action 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    browser.click("button[data-integration=onlyfans]").await;

    // Keyboard only: the first field has focus; Tab, then Enter submits.
    browser
        .screen_at_both_sizes(
            "login",
            &[
                "Log in to OnlyFans",
                LOGIN_LEAD,
                "Email",
                "Password",
                "Continue",
                "Cancel",
            ],
        )
        .await;
    let focused = browser.client.active_element().await.unwrap();
    assert_eq!(
        focused.attr("name").await.unwrap().as_deref(),
        Some("username")
    );
    focused
        .send_keys("user_good\u{e004}pass_good\u{e007}")
        .await
        .unwrap();

    browser
        .screen_at_both_sizes(
            "consent",
            &[
                "Allow Acme Budget to access your OnlyFans account?",
                "Acme Budget will be able to use this connection until you or the app remove it.",
                "Allow",
                "Cancel",
            ],
        )
        .await;
    browser.click("button.primary").await;
    browser
        .screen("done", &["Connected. Returning to the app…"])
        .await;

    let landed = browser.landed_on(&site.callback()).await;
    browser.shot("back-in-app").await;
    let params = query(&landed);
    let connection_id = params[2].1.clone();
    assert!(connection_id.starts_with("conn_"));
    assert_eq!(
        params,
        pairs(&[
            ("from", "linkd"),
            ("status", "success"),
            ("connection_id", &connection_id),
            ("client_reference_id", "user_abc123"),
        ])
    );
    let (_, connection) = crate::sessions::get_connection(&app, &tenant, &connection_id).await;
    assert_eq!(connection["status"], "active");

    // Single use: opening the URL again cannot reuse it.
    browser.goto(&url).await;
    browser.screen_at_both_sizes("reused", &[USED, CLOSE]).await;
    browser.quit().await;
}

#[tokio::test]
async fn two_factor_after_a_wrong_password() {
    let app = spawn_app().await;
    let (site, tenant) = client_site(&app).await;
    let url = session_url(&app, &tenant, json!({})).await;
    let mut browser = Browser::start("two_factor").await;

    browser.goto(&url).await;
    browser.click("button[data-integration=tmobile]").await;
    browser.login("user_2fa", "wrong-password").await;
    browser
        .screen_at_both_sizes(
            "wrong-password",
            &[
                "Log in to T-Mobile",
                LOGIN_LEAD,
                "Phone number or email",
                "Password",
                "The username or password is incorrect.",
                "Continue",
                "Cancel",
            ],
        )
        .await;
    browser.login("user_2fa", "pass_good").await;
    let two_factor = |alert: Option<&'static str>| {
        let mut lines = vec![
            "Enter your verification code",
            "Enter the 6-digit code sent to your phone ending in 0042.",
            "Verification code",
        ];
        lines.extend(alert);
        lines.extend(["Verify", "Cancel"]);
        lines
    };
    browser
        .screen_at_both_sizes("two-factor", &two_factor(None))
        .await;
    let code = browser.find("input[name=code]").await;
    code.send_keys("000000").await.unwrap();
    browser.click("button[type=submit]").await;
    browser
        .screen_at_both_sizes(
            "wrong-code",
            &two_factor(Some("That code is incorrect. Check it and try again.")),
        )
        .await;
    let code = browser.find("input[name=code]").await;
    code.clear().await.unwrap();
    code.send_keys("123456\u{e007}").await.unwrap();
    browser
        .screen_at_both_sizes(
            "consent",
            &[
                "Allow Acme Budget to access your T-Mobile account?",
                "Acme Budget will be able to use this connection until you or the app remove it.",
                "Allow",
                "Cancel",
            ],
        )
        .await;
    browser.click("button.primary").await;
    let landed = browser.landed_on(&site.callback()).await;
    assert_eq!(query(&landed)[1], ("status".into(), "success".into()));
    browser.shot("back-in-app").await;
    browser.quit().await;
}

#[tokio::test]
async fn cancel_at_each_step_returns_to_the_app() {
    let app = spawn_app().await;
    let (site, tenant) = client_site(&app).await;
    let mut browser = Browser::start("cancel").await;
    for step in ["pre-login", "login", "2fa", "authorization"] {
        let url = session_url(&app, &tenant, json!({ "clientReferenceId": "u7" })).await;
        browser.goto(&url).await;
        if step != "pre-login" {
            browser.click("button[data-integration=att]").await;
        }
        match step {
            "2fa" => {
                browser.login("user_2fa", "pass_good").await;
                browser.heading("verification code").await;
            }
            "authorization" => {
                browser.login("user_good", "pass_good").await;
                browser.heading("Allow").await;
            }
            "login" => browser.heading("Log in to").await,
            _ => browser.heading("Choose your provider").await,
        }
        browser.shot(&format!("{step}-before-cancel")).await;
        browser.click("button.cancel").await;
        browser
            .screen(
                &format!("{step}-cancelled"),
                &["Cancelled. Returning to the app…"],
            )
            .await;
        let landed = browser.landed_on(&site.callback()).await;
        assert_eq!(
            query(&landed),
            pairs(&[
                ("from", "linkd"),
                ("status", "cancelled"),
                ("step", step),
                ("client_reference_id", "u7"),
            ]),
            "cancel at {step}"
        );
    }
    browser.quit().await;
}

#[tokio::test]
async fn an_expired_session_says_so_and_returns_with_session_expired() {
    let app = spawn_app().await;
    let (site, tenant) = client_site(&app).await;
    let mut browser = Browser::start("expired").await;
    let url = session_url(&app, &tenant, json!({})).await;
    browser.goto(&url).await;
    browser.click("button[data-integration=verizon]").await;
    browser.heading("Log in to Verizon").await;
    browser.shot("login").await;
    // The session's lifetime runs out while the end user types.
    sqlx::query("UPDATE flows SET expires_at = now() - interval '1 second'")
        .execute(app.api.db())
        .await
        .unwrap();
    browser.login("user_good", "pass_good").await;
    browser
        .screen(
            "expired",
            &["This session has expired. Start again from the app."],
        )
        .await;
    let landed = browser.landed_on(&site.callback()).await;
    assert_eq!(
        query(&landed),
        pairs(&[
            ("from", "linkd"),
            ("status", "error"),
            ("error_code", "session_expired"),
        ])
    );
    browser.quit().await;
}

/// A provider error ends the session on an error screen that names it,
/// then returns with its code.
#[tokio::test]
async fn a_provider_error_shows_its_message_and_returns_with_its_code() {
    let app = spawn_app().await;
    let (site, tenant) = client_site(&app).await;
    let mut browser = Browser::start("provider_error").await;
    let url = session_url(&app, &tenant, json!({ "clientReferenceId": "u9" })).await;
    browser.goto(&url).await;
    browser.click("button[data-integration=att]").await;
    browser.login("user_locked", "pass_good").await;
    browser
        .screen(
            "locked",
            &["This account is locked at the provider. Returning to the app…"],
        )
        .await;
    let landed = browser.landed_on(&site.callback()).await;
    assert_eq!(
        query(&landed),
        pairs(&[
            ("from", "linkd"),
            ("status", "error"),
            ("error_code", "account_locked"),
            ("client_reference_id", "u9"),
        ])
    );
    browser.quit().await;
}

#[tokio::test]
async fn embedded_results_reach_the_host_page_through_post_message() {
    let app = spawn_app().await;
    let (site, tenant) = client_site(&app).await;
    let mut browser = Browser::start("embedded").await;
    let host_page = |session: &str| site.host_page(session);

    // Success through onSuccess; the overlay goes away.
    let url = session_url(&app, &tenant, json!({ "clientReferenceId": "emb-1" })).await;
    browser.goto(&host_page(&url)).await;
    browser.click("#connect").await;
    let link_frame = "[data-linkd-overlay] iframe";
    browser.find(link_frame).await.enter_frame().await.unwrap();
    browser.heading("Choose your provider").await;
    browser.client.enter_parent_frame().await.unwrap();
    browser.shot("overlay").await;
    // Once Link is open, a frame from a third origin forges messages to the
    // host page and to Link's frame; both ignore them.
    browser
        .client
        .execute(
            "var f = document.createElement('iframe'); f.src = arguments[0]; document.body.appendChild(f);",
            vec![json!(format!("{}/forger.html", site.forger))],
        )
        .await
        .unwrap();
    let started = Instant::now();
    while browser
        .client
        .execute("return window.forged === true;", vec![])
        .await
        .unwrap()
        != json!(true)
    {
        assert!(started.elapsed() < WAIT, "the forger never posted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let early = browser
        .client
        .execute(
            "return window.results.filter(function (r) { return r.kind !== 'event'; });",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(early, json!([]), "forged results reached the app");
    browser.find(link_frame).await.enter_frame().await.unwrap();
    browser.click("button[data-integration=ubereats]").await;
    browser.login("user_good", "pass_good").await;
    browser.heading("Allow Acme Budget").await;
    browser.click("button.primary").await;
    browser.client.enter_parent_frame().await.unwrap();
    browser.text_of("#log", "success").await;
    browser.shot("on-success").await;
    let results = browser
        .client
        .execute("return window.results;", vec![])
        .await
        .unwrap();
    let results = results.as_array().unwrap();
    let success: Vec<&Value> = results.iter().filter(|r| r["kind"] == "success").collect();
    assert_eq!(success.len(), 1, "{results:?}");
    let connection_id = success[0]["payload"]["connectionId"].as_str().unwrap();
    assert!(connection_id.starts_with("conn_") && connection_id != "conn_forged");
    assert_eq!(success[0]["payload"]["clientReferenceId"], "emb-1");
    let steps: Vec<&str> = results
        .iter()
        .filter(|r| r["kind"] == "event")
        .map(|r| r["payload"]["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["pre-login", "login", "authorization", "done"]);
    assert!(
        browser
            .client
            .find(Locator::Css("[data-linkd-overlay]"))
            .await
            .is_err(),
        "the overlay is removed"
    );
    let (_, connection) = crate::sessions::get_connection(&app, &tenant, connection_id).await;
    assert_eq!(connection["status"], "active");

    // Cancel inside the frame → onExit.
    let url = session_url(&app, &tenant, json!({})).await;
    browser.goto(&host_page(&url)).await;
    browser.click("#connect").await;
    browser.find("iframe").await.enter_frame().await.unwrap();
    browser.heading("Choose your provider").await;
    browser.click("button.cancel").await;
    browser.client.enter_parent_frame().await.unwrap();
    browser.text_of("#log", "exit").await;
    browser.shot("on-exit").await;
    let results = browser
        .client
        .execute(
            "return window.results.filter(function (r) { return r.kind === 'exit'; });",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        results[0]["payload"],
        json!({ "status": "cancelled", "step": "pre-login", "errorCode": null, "clientReferenceId": null })
    );

    // The host asks Link to close: the page cancels at its step → onExit.
    let url = session_url(&app, &tenant, json!({})).await;
    browser.goto(&host_page(&url)).await;
    browser.click("#connect").await;
    browser.find("iframe").await.enter_frame().await.unwrap();
    browser.click("button[data-integration=northbank]").await;
    browser.heading("Log in to").await;
    browser.client.enter_parent_frame().await.unwrap();
    // The overlay covers the host page; the app closes Link from script.
    browser
        .client
        .execute("document.getElementById('close').click();", vec![])
        .await
        .unwrap();
    browser.text_of("#log", "exit").await;
    let exits = browser
        .client
        .execute(
            "return window.results.filter(function (r) { return r.kind === 'exit'; });",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(exits[0]["payload"]["step"], "login");
    browser.shot("closed-by-host").await;
    browser.quit().await;
}

#[tokio::test]
async fn a_popup_delivers_its_result_to_the_opener() {
    let app = spawn_app().await;
    let (site, tenant) = client_site(&app).await;
    let mut browser = Browser::start("popup").await;
    let session = session_url(&app, &tenant, json!({ "clientReferenceId": "pop" })).await;
    let mut host = Url::parse(&format!("{}/host.html", site.origin)).unwrap();
    host.query_pairs_mut()
        .append_pair("session", &session)
        .append_pair("mode", "popup");
    browser.goto(host.as_str()).await;
    let main = browser.client.window().await.unwrap();
    browser.click("#connect").await;
    let popup = browser.popup_beside(&main).await;
    browser.client.switch_to_window(popup).await.unwrap();
    browser
        .click("button[data-integration=banquelaurentide]")
        .await;
    browser.login("user_good", "pass_good").await;
    browser.heading("Allow Acme Budget").await;
    browser.shot("popup-consent").await;
    browser.click("button.primary").await;
    browser.client.switch_to_window(main).await.unwrap();
    browser.text_of("#log", "success").await;
    browser.shot("opener-on-success").await;
    browser.wait_until_one_window().await;
    let success = browser
        .client
        .execute(
            "return window.results.filter(function (r) { return r.kind === 'success'; });",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(success[0]["payload"]["clientReferenceId"], "pop");
    browser.quit().await;
}

#[tokio::test]
async fn the_default_app_clip_url_claims_and_runs_a_link() {
    let app = spawn_app().await;
    let (site, tenant) = client_site(&app).await;
    let mut browser = Browser::start("app_clip").await;
    let link: Value = app
        .http
        .post(app.url("/v1/links"))
        .bearer_auth(&tenant.key)
        .json(&json!({
            "integrationId": "verizon",
            "operations": [{ "resource": "mobileBillingStatement", "action": "read" }],
            "returnUrl": site.callback(),
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link_id = link["linkId"].as_str().unwrap();
    let page = format!(
        "{}?code={}",
        app.url(&format!("/appclip/{link_id}")),
        link["claimCode"].as_str().unwrap()
    );
    browser.goto(&page).await;
    let login = [
        "Log in to Verizon",
        LOGIN_LEAD,
        "Phone number or email",
        "Password",
        "Continue",
        "Cancel",
    ];
    browser.screen("login", &login).await;
    let address = browser.client.current_url().await.unwrap();
    assert_eq!(
        address.query(),
        None,
        "the claim code leaves the address bar"
    );
    // A slow provider: the end user reloads while the operations run, and
    // the page shows it is working, then finishes on its own.
    browser.login("user_slow_ops", "pass_good").await;
    let started = Instant::now();
    while app.grpc_link(&tenant.key, link_id).await.status() != linkd::pb::LinkStatus::Processing {
        assert!(started.elapsed() < WAIT, "the run never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    browser.client.refresh().await.unwrap();
    browser.screen("connecting", &["Connecting…"]).await;
    browser
        .screen("done", &["Connected. Returning to the app…"])
        .await;
    let landed = browser.landed_on(&site.callback()).await;
    assert_eq!(query(&landed), pairs(&[("linkId", link_id)]));
    browser.shot("back-in-app").await;
    assert_eq!(
        app.grpc_link(&tenant.key, link_id).await.status(),
        linkd::pb::LinkStatus::Completed
    );

    // The claim code is single-use.
    browser.goto(&page).await;
    browser.screen("reused", &[USED, CLOSE]).await;
    browser.quit().await;
}

#[tokio::test]
async fn oauth_authorize_login_2fa_callback_and_token_in_the_browser() {
    use crate::oauth::{CHALLENGE, VERIFIER};
    let app = spawn_app().await;
    let site = ClientSite::start(&app).await;
    let client = site.register(&app, new_tenant(&app).await).await;
    let redirect_uri = format!("{}?from=linkd", site.callback());
    let mut browser = Browser::start("oauth").await;
    let mut authorize = Url::parse(&app.url("/v3/oauth/authorize")).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("client_id", &client.app_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("state", "xyz&1 é")
        .append_pair("scope", "accounts transactions")
        .append_pair("institution_id", "banquelaurentide")
        .append_pair("lang", "fr")
        .append_pair("code_challenge", CHALLENGE)
        .append_pair("code_challenge_method", "S256");

    // The browser follows the 302 to the institution's login, in French.
    browser.goto(authorize.as_str()).await;
    browser.heading("Connexion à Banque Laurentide").await;
    browser.shot("login-fr").await;
    browser.login("user_2fa", "pass_good").await;
    browser.heading("Saisissez votre code").await;
    browser.shot("two-factor").await;
    browser
        .find("input[name=code]")
        .await
        .send_keys("123456\u{e007}")
        .await
        .unwrap();
    browser.heading("Autoriser Acme Budget").await;
    browser.find("li[data-scope=transactions]").await;
    browser.shot("consent-with-scopes").await;
    browser.click("button.primary").await;

    let landed = browser.landed_on(&site.callback()).await;
    browser.shot("callback").await;
    let params = query(&landed);
    assert_eq!(params[0], ("from".into(), "linkd".into()));
    assert_eq!(params[1].0, "code");
    assert_eq!(params[2], ("state".into(), "xyz&1 é".into()));
    let code = params[1].1.clone();

    let (status, _, issued) = crate::oauth::token(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", VERIFIER),
        ],
        Some((client.app_id.as_str(), client.client_secret.as_str())),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{issued}");
    let connection_id = issued["connection_id"].as_str().unwrap();
    let read = app
        .get(
            &format!("/v2/connections/{connection_id}"),
            issued["access_token"].as_str().unwrap(),
        )
        .await;
    assert_eq!(read.status(), reqwest::StatusCode::OK);
    let connection: Value = read.json().await.unwrap();
    assert_eq!(connection["status"], "active");
    assert_eq!(connection["integrationId"], "banquelaurentide");
    browser.quit().await;
}

/// A single-page app in the browser, a public client registered with its
/// web origin, discovers linkd, logs the end user in and redeems, refreshes,
/// introspects and revokes with `fetch`; the same page for an app that did
/// not register its origin can run the login but not read the token
/// endpoint's answer.
#[tokio::test]
async fn a_single_page_app_redeems_its_code_in_the_browser_through_cors() {
    let app = spawn_app().await;
    let site = ClientSite::start(&app).await;
    let tenant = new_tenant(&app).await;
    let spa_uri = format!("{}/spa", site.origin);
    let register = |origin: String| {
        let app = &app;
        let spa_uri = spa_uri.clone();
        async move {
            let client = app.add_app_with(tenant, "Budget SPA", &[spa_uri]).await;
            crate::oauth_grants::make_public(app, &client, &[&origin]).await;
            client
        }
    };
    let spa = register(site.origin.clone()).await;
    let elsewhere = register("https://elsewhere.example".into()).await;
    let mut browser = Browser::start("oauth-spa").await;
    for (client, origin_registered) in [(&spa, true), (&elsewhere, false)] {
        browser
            .goto(&format!("{spa_uri}?client_id={}", client.app_id))
            .await;
        browser.heading("Log in to North Bank").await;
        browser.login("user_good", "pass_good").await;
        browser.heading("Budget SPA").await;
        if origin_registered {
            browser.shot("spa-consent").await;
        }
        browser.click("button.primary").await;
        browser.landed_on(&format!("{spa_uri}?code=")).await;
        let started = Instant::now();
        let result = loop {
            let result = browser.eval("return window.spa || null;").await;
            if !result.is_null() {
                break result;
            }
            assert!(started.elapsed() < WAIT, "the SPA never finished");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        browser
            .shot(if origin_registered {
                "spa-connected"
            } else {
                "spa-refused"
            })
            .await;
        assert_eq!(result["stateMatches"], true, "{result}");
        assert_eq!(result["issMatches"], true, "{result}");
        if origin_registered {
            assert_eq!(
                result,
                json!({"stateMatches": true, "issMatches": true, "token": 200, "refresh": 200,
                       "active": true, "revoke": 200, "activeAfterRevoke": false})
            );
            browser.text_of("#status", "Connected").await;
        } else {
            // The browser withheld the answer: fetch itself failed.
            assert!(
                result["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("TypeError")),
                "{result}"
            );
            assert!(result.get("token").is_none(), "{result}");
        }
    }
    browser.quit().await;
}

/// A client site whose app has its OAuth client at a real OAuth provider
/// (oidc-provider) in the catalog as `acmeid`.
async fn oauth_site(app: &TestApp) -> (ClientSite, TestTenant, crate::oauth_server::OAuthServer) {
    let provider = crate::oauth_server::OAuthServer::start(&app.url("/link/oauth/callback"), 60);
    app.api
        .catalog()
        .add_described(&provider.catalog_entry(crate::provider_oauth::INTEGRATION))
        .unwrap();
    let (site, tenant) = client_site(app).await;
    crate::provider_oauth::set_client(
        app,
        &tenant,
        json!({
            "clientId": crate::oauth_server::CLIENT_ID,
            "clientSecret": crate::oauth_server::CLIENT_SECRET,
            "scopes": ["read", "offline_access"],
        }),
    )
    .await;
    (site, tenant, provider)
}

impl Browser {
    /// Signs in and consents on the OAuth provider's own pages.
    async fn at_the_provider(&mut self, user: &str) {
        self.find("input[name=login]")
            .await
            .send_keys(user)
            .await
            .unwrap();
        self.find("input[name=password]")
            .await
            .send_keys("any")
            .await
            .unwrap();
        self.shot("provider-sign-in").await;
        self.click("button.login-submit").await;
        self.text_of("button.login-submit", "Continue").await;
        self.shot("provider-consent").await;
        self.click("button.login-submit").await;
    }
}

const OAUTH_LOGIN: [&str; 4] = [
    "Log in to Acme ID",
    "You will sign in on Acme ID’s own page. Your password is never shared with the app.",
    "Continue to Acme ID",
    "Cancel",
];

#[tokio::test]
async fn hosted_oauth_session_goes_through_the_providers_pages() {
    let app = spawn_app().await;
    let (site, tenant, provider) = oauth_site(&app).await;
    let url = session_url(&app, &tenant, json!({ "clientReferenceId": "oauth-user" })).await;
    let mut browser = Browser::start("oauth_hosted").await;
    browser.goto(&url).await;
    browser.heading("Choose your provider").await;
    browser.click("button[data-integration=acmeid]").await;
    browser
        .screen_at_both_sizes("oauth-login", &OAUTH_LOGIN)
        .await;
    browser.click("button[data-oauth=start]").await;
    browser.landed_on(provider.base.as_str()).await;
    browser.at_the_provider("creator-7").await;

    // Back on the Link page in the same tab, at consent.
    browser
        .screen_at_both_sizes(
            "consent",
            &[
                "Allow Acme Budget to access your Acme ID account?",
                "Acme Budget will be able to use this connection until you or the app remove it.",
                "Allow",
                "Cancel",
            ],
        )
        .await;
    let address = browser.client.current_url().await.unwrap();
    assert_eq!(address.path(), "/link");
    assert_eq!(address.query(), None, "the code left the address bar");
    browser.click("button.primary").await;
    browser
        .screen("done", &["Connected. Returning to the app…"])
        .await;
    let landed = browser.landed_on(&site.callback()).await;
    browser.shot("back-in-app").await;
    let params = query(&landed);
    assert_eq!(params[1], ("status".to_string(), "success".to_string()));
    let connection_id = &params[2].1;
    let (_, connection) = crate::sessions::get_connection(&app, &tenant, connection_id).await;
    assert_eq!(connection["status"], "active");
    assert_eq!(connection["integrationId"], "acmeid");
    let created = app.events_of(&tenant, "connection.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(provider.stats().await["authorization_code"], 1);
    browser.quit().await;
}

#[tokio::test]
async fn embedded_oauth_opens_the_provider_in_a_popup() {
    let app = spawn_app().await;
    let (site, tenant, provider) = oauth_site(&app).await;
    let session = session_url(&app, &tenant, json!({ "clientReferenceId": "emb-oauth" })).await;
    let mut browser = Browser::start("oauth_embedded").await;
    let mut host = Url::parse(&format!("{}/host.html", site.origin)).unwrap();
    host.query_pairs_mut().append_pair("session", &session);
    browser.goto(host.as_str()).await;
    let main = browser.client.window().await.unwrap();
    browser.click("#connect").await;
    let link_frame = "[data-linkd-overlay] iframe";
    browser.find(link_frame).await.enter_frame().await.unwrap();
    browser.click("button[data-integration=acmeid]").await;
    browser.screen("oauth-login", &OAUTH_LOGIN).await;
    browser.click("button[data-oauth=start]").await;
    let popup = browser.popup_beside(&main).await;
    browser
        .screen(
            "oauth-waiting",
            &[
                OAUTH_LOGIN[0],
                OAUTH_LOGIN[1],
                "Finish signing in to Acme ID in the window that opened.",
                OAUTH_LOGIN[2],
                OAUTH_LOGIN[3],
            ],
        )
        .await;
    browser.client.switch_to_window(popup).await.unwrap();
    browser.at_the_provider("creator-8").await;
    // The popup closes itself once linkd has the code.
    browser.wait_until_one_window().await;
    browser.client.switch_to_window(main).await.unwrap();
    browser.find(link_frame).await.enter_frame().await.unwrap();
    browser
        .heading("Allow Acme Budget to access your Acme ID account?")
        .await;
    browser.shot("consent-in-frame").await;
    browser.click("button.primary").await;
    browser.client.enter_parent_frame().await.unwrap();
    browser.text_of("#log", "success").await;
    browser.shot("on-success").await;
    let success = browser
        .client
        .execute(
            "return window.results.filter(function (r) { return r.kind === 'success'; });",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(success[0]["payload"]["clientReferenceId"], "emb-oauth");
    assert_eq!(app.events_of(&tenant, "connection.created").await.len(), 1);
    assert_eq!(provider.stats().await["authorization_code"], 1);
    browser.quit().await;
}

/// A French session, phone and desktop: every screen in French (catalog
/// labels and the second-factor prompt included), the picker past seven
/// entries searchable, a refused password keeping the username.
#[tokio::test]
async fn a_french_session_reads_french_throughout_and_keeps_the_username() {
    let app = spawn_app().await;
    let (site, tenant) = client_site(&app).await;
    // An OAuth client at Twitch: an eighth integration to choose from.
    crate::provider_oauth::set_client_for(
        &app,
        &tenant,
        "twitch",
        json!({"clientId": "acme-budget", "clientSecret": "twitch-secret"}),
    )
    .await;
    let url = session_url(&app, &tenant, json!({ "lang": "fr" })).await;
    let mut browser = Browser::start("french").await;
    browser.goto(&url).await;

    let lead = "Acme Budget souhaite se connecter à l’un de vos comptes.";
    let names = picker_lines_with("fr", &["twitch"]);
    assert!(names.iter().any(|n| n == "Twitch"), "{names:?}");
    let mut pick = vec!["Choisissez votre fournisseur", lead, "Rechercher"];
    pick.extend(names.iter().map(String::as_str));
    pick.push("Annuler");
    browser.screen_at_both_sizes("fr-pick", &pick).await;
    assert_eq!(
        browser.eval("return document.documentElement.lang;").await,
        "fr"
    );

    let search = browser.find("input[name=search]").await;
    search.send_keys("laurentíde").await.unwrap();
    browser
        .screen(
            "fr-search",
            &[
                "Choisissez votre fournisseur",
                lead,
                "Rechercher",
                "Banques",
                "Banque Laurentide",
                "Bac à sable",
                "Annuler",
            ],
        )
        .await;
    search.clear().await.unwrap();
    search.send_keys("zzz").await.unwrap();
    browser
        .screen(
            "fr-search-nothing",
            &[
                "Choisissez votre fournisseur",
                lead,
                "Rechercher",
                "Aucun fournisseur ne correspond à « zzz ».",
                "Annuler",
            ],
        )
        .await;
    search.clear().await.unwrap();
    search.send_keys("laur").await.unwrap();
    browser
        .click("button[data-integration=banquelaurentide]")
        .await;

    let login = |alert: Option<&'static str>| {
        let mut lines = vec![
            "Connexion à Banque Laurentide",
            "Vos identifiants vont uniquement au fournisseur; ils ne sont pas partagés avec l’application.",
            "Numéro de carte ou nom d’utilisateur",
            "Mot de passe",
        ];
        lines.extend(alert);
        lines.extend(["Continuer", "Annuler"]);
        lines
    };
    browser.screen_at_both_sizes("fr-login", &login(None)).await;
    browser.login("user_2fa", "mauvais").await;
    browser
        .screen_at_both_sizes(
            "fr-wrong-password",
            &login(Some(
                "Le nom d’utilisateur ou le mot de passe est incorrect.",
            )),
        )
        .await;
    assert_eq!(
        browser
            .eval("return document.querySelector('input[name=username]').value;")
            .await,
        "user_2fa",
        "the username is kept"
    );
    assert_eq!(
        browser
            .eval("return document.querySelector('input[name=password]').value;")
            .await,
        "",
        "the password is not"
    );
    assert_eq!(
        browser.eval("return document.activeElement.name;").await,
        "password",
        "the password field has focus"
    );
    let password = browser.find("input[name=password]").await;
    password.send_keys("pass_good\u{e007}").await.unwrap();

    let two_factor = [
        "Saisissez votre code de vérification",
        "Saisissez le code de vérification que le fournisseur vous a envoyé.",
        "Code de vérification",
        "Vérifier",
        "Annuler",
    ];
    browser
        .screen_at_both_sizes("fr-two-factor", &two_factor)
        .await;
    let code = browser.find("input[name=code]").await;
    code.send_keys("123456\u{e007}").await.unwrap();
    browser
        .screen_at_both_sizes(
            "fr-consent",
            &[
                "Autoriser Acme Budget à accéder à votre compte Banque Laurentide?",
                "Acme Budget pourra utiliser cette connexion jusqu’à ce que vous ou l’application la supprimiez.",
                "Autoriser",
                "Annuler",
            ],
        )
        .await;
    browser.click("button.primary").await;
    browser
        .screen("fr-done", &["Compte connecté. Retour à l’application…"])
        .await;
    let landed = browser.landed_on(&site.callback()).await;
    assert_eq!(query(&landed)[1], ("status".into(), "success".into()));
    browser.quit().await;
}

/// The error page of an untrusted OAuth request: the Link page's card and
/// styles, in the request's language.
#[tokio::test]
async fn the_oauth_error_page_looks_like_the_link_page_in_both_languages() {
    let app = spawn_app().await;
    let mut browser = Browser::start("oauth_error_page").await;
    for (lang, lines) in [
        (
            "en",
            [
                "This sign-in request cannot continue",
                "The app that sent you here is not registered with this service.",
                "Return to the app you came from and try again.",
            ],
        ),
        (
            "fr",
            [
                "Cette demande de connexion ne peut pas continuer",
                "L’application qui vous a envoyé ici n’est pas enregistrée auprès de ce service.",
                "Retournez dans l’application d’où vous venez et réessayez.",
            ],
        ),
    ] {
        browser
            .goto(&app.url(&format!(
                "/v3/oauth/authorize?client_id=app_unknown&response_type=code&lang={lang}"
            )))
            .await;
        browser
            .screen_at_both_sizes(&format!("{lang}-error"), &lines)
            .await;
        let styled = browser
            .eval("return getComputedStyle(document.querySelector('main.card')).maxWidth;")
            .await;
        assert_eq!(styled, "416px", "the Link page's stylesheet applies");
    }
    browser.quit().await;
}

/// The embedded overlay is a modal dialog: the host page is inert behind
/// it, focus goes in and comes back, and Escape (inside Link) or the close
/// button end it with `onExit` `closed`, cancelling the flow. A new session
/// URL opened over an old one in the same tab starts the new flow.
#[tokio::test]
async fn the_overlay_is_a_modal_dialog_that_escape_and_its_button_close() {
    let app = spawn_app().await;
    let (site, tenant) = client_site(&app).await;
    let mut browser = Browser::start("dialog").await;
    let host_page = |session: &str| site.host_page(session);
    let cancelled_flows = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM flows WHERE outcome = 'cancelled' AND cancelled_step = 'pre-login'",
        )
        .fetch_one(app.api.db())
        .await
        .unwrap()
    };

    for (round, how) in ["escape", "close-button"].into_iter().enumerate() {
        let url = session_url(&app, &tenant, json!({})).await;
        browser.goto(&host_page(&url)).await;
        browser.click("#connect").await;
        let overlay = browser.find("[data-linkd-overlay]").await;
        assert_eq!(
            overlay.attr("role").await.unwrap().as_deref(),
            Some("dialog")
        );
        assert_eq!(
            overlay.attr("aria-modal").await.unwrap().as_deref(),
            Some("true")
        );
        assert_eq!(
            browser.eval("return document.activeElement.tagName;").await,
            "IFRAME",
            "focus moves into Link"
        );
        assert_eq!(
            browser
                .eval("return !!document.getElementById('connect').closest('[inert]');")
                .await,
            true,
            "the host page is inert behind the dialog"
        );
        browser
            .find("[data-linkd-overlay] iframe")
            .await
            .enter_frame()
            .await
            .unwrap();
        browser.heading("Choose your provider").await;
        if how == "escape" {
            browser
                .client
                .active_element()
                .await
                .unwrap()
                .send_keys("\u{e00c}")
                .await
                .unwrap();
            browser.client.enter_parent_frame().await.unwrap();
        } else {
            browser.client.enter_parent_frame().await.unwrap();
            browser.shot("dialog-open").await;
            browser.click("[data-linkd-close]").await;
        }
        browser.text_of("#log", "exit").await;
        let exits = browser.results("exit").await;
        assert_eq!(
            exits[0]["payload"],
            json!({ "status": "closed", "step": "pre-login", "errorCode": null, "clientReferenceId": null }),
            "{how}"
        );
        assert!(
            browser
                .client
                .find(Locator::Css("[data-linkd-overlay]"))
                .await
                .is_err(),
            "{how}: the overlay is gone"
        );
        assert_eq!(
            browser.eval("return document.activeElement.id;").await,
            "connect",
            "{how}: focus is back where it was"
        );
        assert_eq!(
            browser
                .eval("return document.querySelectorAll('[inert]').length;")
                .await,
            0
        );
        browser.shot(&format!("closed-by-{how}")).await;
        // The flow was cancelled at its step, not left open.
        let started = Instant::now();
        while cancelled_flows().await < round as i64 + 1 {
            assert!(
                started.elapsed() < WAIT,
                "{how}: the flow was not cancelled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Hosted: a second session URL pasted over the first starts it.
    let first = session_url(&app, &tenant, json!({})).await;
    let second = session_url(&app, &tenant, json!({ "lang": "fr" })).await;
    browser.goto(&first).await;
    browser.heading("Choose your provider").await;
    let fragment = Url::parse(&second).unwrap().fragment().unwrap().to_string();
    browser
        .client
        .execute("location.hash = arguments[0];", vec![json!(fragment)])
        .await
        .unwrap();
    browser.heading("Choisissez votre fournisseur").await;
    browser.shot("new-session-in-the-same-tab").await;
    browser.quit().await;
}

/// A client app's brand on its Link page, set with the operator CLI: its
/// logo (served by linkd) and display name in the header, its accent on the
/// buttons with text that reads on it.
#[tokio::test]
async fn the_link_page_wears_the_client_apps_brand() {
    let app = spawn_app().await;
    let (_site, tenant) = client_site(&app).await;
    let logo = tempfile::NamedTempFile::new().unwrap();
    {
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(crate::client_apps::LOGO_PNG)
            .unwrap();
        std::fs::write(logo.path(), png).unwrap();
    }
    let db_url = app.database_url().await;
    let set = crate::process::admin(
        &db_url,
        &[
            "set-branding",
            &tenant.app_id,
            "--display-name",
            "Acme Budget Pro",
            "--accent-color",
            "#ffcc00",
            "--logo",
            logo.path().to_str().unwrap(),
        ],
    );
    assert!(set.status.success(), "{set:?}");

    let url = session_url(&app, &tenant, json!({})).await;
    let mut browser = Browser::start("branding").await;
    browser.header = vec!["Acme Budget Pro".into()];
    browser.goto(&url).await;
    let mut pick = vec![
        "Choose your provider",
        "Acme Budget Pro wants to connect to one of your accounts.",
    ];
    let names = picker_lines("en");
    pick.extend(names.iter().map(String::as_str));
    pick.push("Cancel");
    browser.screen_at_both_sizes("branded-pick", &pick).await;
    let started = Instant::now();
    while browser
        .eval("var i = document.querySelector('img.client-logo'); return !!i && i.complete && i.naturalWidth;")
        .await
        != json!(16)
    {
        assert!(started.elapsed() < WAIT, "the logo never loaded from linkd");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.click("button[data-integration=att]").await;
    browser
        .screen_at_both_sizes(
            "branded-login",
            &[
                "Log in to AT&T",
                LOGIN_LEAD,
                "Phone number or email",
                "Password",
                "Continue",
                "Cancel",
            ],
        )
        .await;
    let colors = browser
        .eval(
            "var s = getComputedStyle(document.querySelector('button.primary')); return [s.backgroundColor, s.color];",
        )
        .await;
    assert_eq!(
        colors,
        json!(["rgb(255, 204, 0)", "rgb(0, 0, 0)"]),
        "the accent, with black text on yellow"
    );
    browser.quit().await;
}

/// The OAuth integration's steps in French, phone and desktop.
#[tokio::test]
async fn a_french_oauth_session_reads_french_at_every_step() {
    let app = spawn_app().await;
    let (site, tenant, provider) = oauth_site(&app).await;
    let url = session_url(&app, &tenant, json!({ "lang": "fr" })).await;
    let mut browser = Browser::start("oauth_french").await;
    browser.goto(&url).await;
    browser.heading("Choisissez votre fournisseur").await;
    browser.click("button[data-integration=acmeid]").await;
    browser
        .screen_at_both_sizes(
            "fr-oauth-login",
            &[
                "Connexion à Acme ID",
                "Vous vous connecterez sur la page de Acme ID. Votre mot de passe n’est jamais partagé avec l’application.",
                "Continuer vers Acme ID",
                "Annuler",
            ],
        )
        .await;
    browser.click("button[data-oauth=start]").await;
    browser.landed_on(provider.base.as_str()).await;
    browser.at_the_provider("createur-1").await;
    browser
        .screen_at_both_sizes(
            "fr-consent",
            &[
                "Autoriser Acme Budget à accéder à votre compte Acme ID?",
                "Acme Budget pourra utiliser cette connexion jusqu’à ce que vous ou l’application la supprimiez.",
                "Autoriser",
                "Annuler",
            ],
        )
        .await;
    browser.click("button.primary").await;
    browser
        .screen("fr-done", &["Compte connecté. Retour à l’application…"])
        .await;
    browser.landed_on(&site.callback()).await;
    browser.quit().await;
}
