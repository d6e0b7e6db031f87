//! OAuth 2.0 authorization-code flow with PKCE (`/v3/oauth/authorize`,
//! `/v3/oauth/token`, AuthorizeService) against RFC 6749, RFC 7636 and the
//! documented shapes.

use crate::helpers::Page;
use crate::helpers::{TestApp, TestTenant, spawn_app, spawn_app_with, with_key};
use linkd::kernel::ids::OrganizationId;
use linkd::kernel::tenant::{Environment, Tenant};
use linkd::pb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use url::Url;

pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
pub const CB: &str = "https://client.example.com/cb";
const LOOPBACK: &str = "http://127.0.0.1/cb";

/// An HTTP client that does not follow redirects.
pub fn no_redirects() -> reqwest::Client {
    crate::helpers::install_crypto();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// An OAuth client app with several redirect URIs.
pub async fn client(app: &TestApp, redirect_uris: &[&str]) -> TestTenant {
    let organization_id = OrganizationId::new();
    linkd::client_apps::store::create_organization(app.api.db(), organization_id, "OAuth org")
        .await
        .unwrap();
    let uris: Vec<String> = redirect_uris.iter().map(|u| u.to_string()).collect();
    app.add_app_with(
        Tenant {
            organization_id,
            environment: Environment::Sandbox,
        },
        "Budget Buddy",
        &uris,
    )
    .await
}

pub async fn authorize(app: &TestApp, params: &[(&str, &str)]) -> reqwest::Response {
    let mut url = Url::parse(&app.url("/v3/oauth/authorize")).unwrap();
    url.query_pairs_mut().extend_pairs(params);
    no_redirects()
        .get(url)
        .header("Accept", "text/plain")
        .send()
        .await
        .unwrap()
}

pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .expect("Location")
        .to_str()
        .unwrap()
        .to_string()
}

pub fn query(url: &str) -> Vec<(String, String)> {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

pub fn param(url: &str, name: &str) -> Option<String> {
    query(url)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Runs the end user's side on the Link page API: login (with 2FA for
/// `user_2fa`) and consent. Returns the redirect carrying the code.
pub async fn log_in_and_consent(app: &TestApp, location: &str, username: &str) -> String {
    let page = Page::from_url(app, location);
    if page.flow().await["step"] == "pre-login" {
        page.pick("northbank").await;
    }
    let flow = page.login(username, "pass_good").await;
    let flow = if flow["step"] == "2fa" {
        page.code("123456").await
    } else {
        flow
    };
    assert_eq!(flow["step"], "authorization", "{flow}");
    let done = page.approve().await;
    done["redirectUrl"].as_str().unwrap().to_string()
}

pub async fn token(
    app: &TestApp,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = app.http.post(app.url("/v3/oauth/token")).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap())
}

/// A code for `client`, issued with the RFC 7636 Appendix B challenge.
pub async fn code_for(app: &TestApp, client: &TestTenant, state: &str) -> String {
    let response = authorize(
        app,
        &[
            ("client_id", &client.app_id),
            ("response_type", "code"),
            ("redirect_uri", CB),
            ("state", state),
            ("institution_id", "northbank"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let back = log_in_and_consent(app, &location(&response), "user_good").await;
    assert!(back.starts_with(&format!("{CB}?code=lac_")), "{back}");
    assert_eq!(param(&back, "state").as_deref(), Some(state));
    param(&back, "code").unwrap()
}

pub fn exchange<'a>(client: &'a TestTenant, code: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", CB),
        ("code_verifier", VERIFIER),
        ("client_id", &client.app_id),
    ]
}

#[tokio::test]
async fn authorize_answers_the_documented_302_and_400_shapes() {
    let app = spawn_app().await;
    let client = client(&app, &[CB, LOOPBACK]).await;
    let state = "s\"<tag>&x";
    let response = authorize(
        &app,
        &[
            ("client_id", &client.app_id),
            ("response_type", "code"),
            ("redirect_uri", CB),
            ("state", state),
            ("scope", "accounts transactions"),
            ("institution_id", "northbank"),
            ("lang", "fr"),
            ("tag", "campaign-7"),
            ("recipientId", "rcp-1"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let to = location(&response);
    assert!(to.starts_with(&app.url("/link#token=lft_")), "{to}");
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = response.text().await.unwrap();
    for expected in [
        "<title>Submit Form</title>",
        "<body onload=\"javascript:document.forms[0].submit()\">",
        "<form method=\"post\" action=\"/v3/oauth/resume\">",
        "<input type=\"hidden\" name=\"response_type\" value=\"code\"/>",
        "<input type=\"hidden\" name=\"lang\" value=\"fr\"/>",
        "<input type=\"hidden\" name=\"state\" value=\"s&quot;&lt;tag&gt;&amp;x\"/>",
        "<noscript><input type=\"submit\" value=\"Resume\"/></noscript>",
        "you must press the Resume button once to proceed",
    ] {
        assert!(body.contains(expected), "missing {expected} in {body}");
    }

    // The institution's login, in French, with the requested scopes.
    let page = Page::from_url(&app, &to);
    let flow = page.flow().await;
    assert_eq!(flow["step"], "login");
    assert_eq!(flow["integrationId"], "northbank");
    assert_eq!(flow["lang"], "fr");
    assert_eq!(flow["scopes"], json!(["accounts", "transactions"]));
    assert_eq!(
        flow["credentialFields"][0]["label"],
        "Numéro de carte ou nom d’utilisateur"
    );

    // An empty `lang` is English, and the form says so.
    let english = authorize(
        &app,
        &[
            ("client_id", &client.app_id),
            ("response_type", "code"),
            ("redirect_uri", CB),
            ("lang", ""),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    assert_eq!(english.status(), StatusCode::FOUND);
    let english_to = location(&english);
    let form = english.text().await.unwrap();
    assert!(
        form.contains("<input type=\"hidden\" name=\"lang\" value=\"en\"/>"),
        "{form}"
    );
    assert_eq!(Page::from_url(&app, &english_to).flow().await["lang"], "en");

    // The form resumes there with 303 (a redirect after a POST).
    let reference = to.split("#token=").nth(1).unwrap();
    let resumed = no_redirects()
        .post(app.url("/v3/oauth/resume"))
        .form(&[("REF", reference), ("lang", "fr")])
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resumed), to);

    // 400 shapes, keyed by parameter.
    let base = [
        ("client_id", client.app_id.as_str()),
        ("response_type", "code"),
        ("redirect_uri", CB),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut params: Vec<(&str, &str)> = base.to_vec();
        params.extend_from_slice(extra);
        params
    };
    for (extra, expected) in [
        (
            vec![("lang", "english")],
            json!({ "lang": ["The field Lang must be a valid ISO-639-1 two letter code."] }),
        ),
        (
            vec![("lang", "zz")],
            json!({ "lang": ["The field Lang must be a valid ISO-639-1 two letter code."] }),
        ),
        (
            vec![("lang", "de")],
            json!({ "lang": ["The field Lang must be one of: en, fr."] }),
        ),
        (
            vec![("institution_id", "onlyfans")],
            json!({ "institution_id": ["The field institution_id must name a supported institution."] }),
        ),
        (
            vec![("state", "a"), ("state", "b")],
            json!({ "state": ["The field state must not be repeated."] }),
        ),
    ] {
        let response = authorize(&app, &with(&extra)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{extra:?}");
        assert!(response.headers().get("location").is_none());
        assert_eq!(response.json::<Value>().await.unwrap(), expected);
    }
    // Unknown parameters are ignored, even repeated (RFC 6749 §3.1).
    let response = authorize(&app, &with(&[("utm", "a"), ("utm", "b")])).await;
    assert_eq!(response.status(), StatusCode::FOUND);

    let long_tag = "t".repeat(256);
    let response = authorize(
        &app,
        &[base.as_slice(), &[("tag", long_tag.as_str())]].concat(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(body["tag"][0].as_str().unwrap().contains("255"));

    // gRPC: the same location, and the same parameter errors.
    let mut authorize_rpc =
        pb::authorize_service_client::AuthorizeServiceClient::new(app.channel().await);
    let answer = authorize_rpc
        .authorize(pb::AuthorizeRequest {
            client_id: client.app_id.clone(),
            response_type: "code".into(),
            redirect_uri: Some(CB.into()),
            code_challenge: Some(CHALLENGE.into()),
            code_challenge_method: Some("S256".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.location.starts_with(&app.url("/link#token=lft_")));
    assert!(answer.error.is_empty());
    let status = authorize_rpc
        .authorize(pb::AuthorizeRequest {
            client_id: client.app_id.clone(),
            lang: Some("english".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("lang"));
}

#[tokio::test]
async fn untrusted_clients_and_redirect_uris_get_an_error_page_never_a_redirect() {
    let app = spawn_app().await;
    let client = client(&app, &[CB, LOOPBACK, "http://localhost/cb"]).await;
    let single = client_single(&app).await;
    let pkce = [
        ("response_type", "code"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    let unknown = format!("app_{}", uuid::Uuid::now_v7().simple());
    let mut cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("client_id", unknown.as_str()), ("redirect_uri", CB)],
        vec![("client_id", "not-an-app"), ("redirect_uri", CB)],
        vec![("redirect_uri", CB)],
        // Several registered: redirect_uri is required.
        vec![("client_id", client.app_id.as_str())],
    ];
    for variant in [
        "https://client.example.com/cb/",
        "https://CLIENT.example.com/cb",
        "https://client.example.com/CB",
        "https://client.example.com/cb?extra=1",
        "https://client.example.com/x/../cb",
        "https://client.example.com/%63b",
        "https://client.example.com%2Fcb",
        "https://evil.example.com/cb",
        "http://localhost:5000/cb",
        "http://[::1]:5000/cb",
    ] {
        cases.push(vec![
            ("client_id", client.app_id.as_str()),
            ("redirect_uri", variant),
        ]);
    }
    for case in cases {
        let params: Vec<(&str, &str)> = [case.as_slice(), &pkce].concat();
        let response = authorize(&app, &params).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{params:?}");
        assert!(response.headers().get("location").is_none(), "{params:?}");
        assert_eq!(
            response.headers()["content-type"],
            "text/html; charset=utf-8"
        );
        let page = response.text().await.unwrap();
        assert!(page.contains("cannot continue"), "{page}");
    }
    // Accept: application/json gets the same refusal as JSON.
    let json_error = no_redirects()
        .get(app.url(&format!(
            "/v3/oauth/authorize?client_id={unknown}&response_type=code"
        )))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(json_error.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_error.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );

    // Loopback IP redirect URIs accept any port (RFC 8252 §7.3).
    let loopback = authorize(
        &app,
        &[
            &[
                ("client_id", client.app_id.as_str()),
                ("redirect_uri", "http://127.0.0.1:53682/cb"),
            ],
            pkce.as_slice(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(loopback.status(), StatusCode::FOUND);
    // One registered URI: redirect_uri may be omitted.
    let omitted = authorize(
        &app,
        &[&[("client_id", single.app_id.as_str())], pkce.as_slice()].concat(),
    )
    .await;
    assert_eq!(omitted.status(), StatusCode::FOUND);

    // gRPC: INVALID_ARGUMENT naming the parameter, no location.
    let mut rpc = pb::authorize_service_client::AuthorizeServiceClient::new(app.channel().await);
    let status = rpc
        .authorize(pb::AuthorizeRequest {
            client_id: client.app_id.clone(),
            redirect_uri: Some("https://client.example.com/cb/".into()),
            response_type: "code".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("redirect_uri"));
}

async fn client_single(app: &TestApp) -> TestTenant {
    client(app, &["https://single.example.com/cb?x=1"]).await
}

#[tokio::test]
async fn later_errors_redirect_with_error_and_the_state_byte_for_byte() {
    let app = spawn_app().await;
    let client = client(&app, &[CB]).await;
    let states = ["a&b=c", "x#y", "100%", "é✓ 漢字", "plus+space "];
    let cases: [(&[(&str, &str)], &str); 6] = [
        (
            &[
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "S256"),
            ],
            "invalid_request",
        ),
        (
            &[
                ("response_type", "token"),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "S256"),
            ],
            "unsupported_response_type",
        ),
        (
            &[
                ("response_type", "code"),
                ("scope", "accounts admin"),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "S256"),
            ],
            "invalid_scope",
        ),
        (
            &[
                ("response_type", "code"),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "plain"),
            ],
            "invalid_request",
        ),
        (&[("response_type", "code")], "invalid_request"),
        (
            &[
                ("response_type", "code"),
                ("code_challenge", "too-short"),
                ("code_challenge_method", "S256"),
            ],
            "invalid_request",
        ),
    ];
    for state in states {
        for (params, error) in cases {
            let mut all = vec![
                ("client_id", client.app_id.as_str()),
                ("redirect_uri", CB),
                ("state", state),
            ];
            all.extend_from_slice(params);
            let response = authorize(&app, &all).await;
            assert_eq!(response.status(), StatusCode::FOUND, "{all:?}");
            let to = location(&response);
            assert!(to.starts_with(&format!("{CB}?error=")), "{to}");
            assert_eq!(param(&to, "error").as_deref(), Some(error), "{all:?}");
            assert!(param(&to, "error_description").is_some());
            assert_eq!(
                param(&to, "state").as_deref(),
                Some(state),
                "state echoed exactly"
            );
        }
    }
    // gRPC gives the same redirect.
    let mut rpc = pb::authorize_service_client::AuthorizeServiceClient::new(app.channel().await);
    let answer = rpc
        .authorize(pb::AuthorizeRequest {
            client_id: client.app_id.clone(),
            response_type: "code".into(),
            redirect_uri: Some(CB.into()),
            state: Some("x#y".into()),
            scope: Some("nope".into()),
            code_challenge: Some(CHALLENGE.into()),
            code_challenge_method: Some("S256".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.error, "invalid_scope");
    assert_eq!(param(&answer.location, "state").as_deref(), Some("x#y"));

    // Cancelling at the institution login goes back as access_denied.
    let response = authorize(
        &app,
        &[
            ("client_id", client.app_id.as_str()),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("state", "st&1"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    let page = Page::from_url(&app, &location(&response));
    let flow = page.flow().await;
    let offered: Vec<&str> = flow["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["integrationId"].as_str().unwrap())
        .collect();
    assert_eq!(
        offered,
        ["banquelaurentide", "northbank"],
        "only institutions"
    );
    let cancelled = page.cancel("pre-login").await;
    let back = cancelled["redirectUrl"].as_str().unwrap();
    assert_eq!(param(back, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(back, "state").as_deref(), Some("st&1"));
}

#[tokio::test]
async fn a_required_state_must_be_long_enough() {
    let app = spawn_app_with(|args| args.oauth_state_min_length = 8).await;
    let client = client(&app, &[CB]).await;
    for state in [None, Some("short")] {
        let mut params = vec![
            ("client_id", client.app_id.as_str()),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ];
        if let Some(state) = state {
            params.push(("state", state));
        }
        let to = location(&authorize(&app, &params).await);
        assert_eq!(param(&to, "error").as_deref(), Some("invalid_request"));
        assert_eq!(param(&to, "state").as_deref(), state);
    }
    let ok = authorize(
        &app,
        &[
            ("client_id", client.app_id.as_str()),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("state", "long-enough-state"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    assert!(location(&ok).starts_with(&app.url("/link#")));
}

#[tokio::test]
async fn codes_exchange_once_with_pkce_and_a_replay_revokes_the_token() {
    let app = spawn_app().await;
    let client = client(&app, &[CB]).await;
    let other = client_single(&app).await;
    let code = code_for(&app, &client, "st-1").await;

    // Wrong verifier, missing verifier, wrong redirect, another client: invalid_grant.
    let wrong_verifier = "a".repeat(43);
    for (form, basic) in [
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", CB),
                ("code_verifier", wrong_verifier.as_str()),
            ],
            Some((client.app_id.as_str(), client.client_secret.as_str())),
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", CB),
            ],
            Some((client.app_id.as_str(), client.client_secret.as_str())),
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", "https://client.example.com/cb/"),
                ("code_verifier", VERIFIER),
            ],
            Some((client.app_id.as_str(), client.client_secret.as_str())),
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("code_verifier", VERIFIER),
            ],
            Some((client.app_id.as_str(), client.client_secret.as_str())),
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", CB),
                ("code_verifier", VERIFIER),
            ],
            Some((other.app_id.as_str(), other.client_secret.as_str())),
        ),
    ] {
        let (status, headers, body) = token(&app, &form, basic).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{form:?}: {body}");
        assert_eq!(body["error"], "invalid_grant", "{form:?}");
        assert_eq!(headers["cache-control"], "no-store");
    }
    // Client authentication and request errors.
    let (status, headers, body) = token(
        &app,
        &exchange(&client, &code),
        Some((client.app_id.as_str(), "lcs_wrong")),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let mut both = exchange(&client, &code);
    both.push(("client_secret", &client.client_secret));
    let (status, _, body) = token(
        &app,
        &both,
        Some((client.app_id.as_str(), client.client_secret.as_str())),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let mut password = exchange(&client, &code);
    password[0] = ("grant_type", "password");
    let (_, _, body) = token(
        &app,
        &password,
        Some((client.app_id.as_str(), client.client_secret.as_str())),
    )
    .await;
    assert_eq!(body["error"], "unsupported_grant_type");
    let mut malformed = exchange(&client, &code);
    malformed[3] = ("code_verifier", "short");
    let (_, _, body) = token(
        &app,
        &malformed,
        Some((client.app_id.as_str(), client.client_secret.as_str())),
    )
    .await;
    assert_eq!(body["error"], "invalid_request");
    let json_body = app
        .http
        .post(app.url("/v3/oauth/token"))
        .json(&json!({ "grant_type": "authorization_code" }))
        .send()
        .await
        .unwrap();
    assert_eq!(json_body.status(), StatusCode::BAD_REQUEST);

    // The RFC 7636 Appendix B pair redeems it, with the secret in the body.
    let mut form = exchange(&client, &code);
    form.push(("client_secret", &client.client_secret));
    let (status, headers, issued) = token(&app, &form, None).await;
    assert_eq!(status, StatusCode::OK, "{issued}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(issued["token_type"], "Bearer");
    assert_eq!(issued["expires_in"], 3600);
    assert_eq!(issued["scope"], "accounts");
    let access = issued["access_token"].as_str().unwrap();
    assert!(access.starts_with("lat_") && access.len() >= 4 + 43);
    let connection_id = issued["connection_id"].as_str().unwrap();

    // The token reads its one connection, and nothing else.
    let read = app
        .get(&format!("/v2/connections/{connection_id}"), access)
        .await;
    assert_eq!(read.status(), StatusCode::OK);
    let connection: Value = read.json().await.unwrap();
    assert_eq!(connection["integrationId"], "northbank");
    assert_eq!(connection["clientAppId"], client.app_id.as_str());
    // It may use its connection through the Access API too, and no other.
    let accounts = json!({ "operations": [{ "resource": "accounts", "action": "read" }] });
    let (status, ran) = crate::access::execute(&app, access, connection_id, accounts.clone()).await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    assert!(ran["result"]["accounts"].is_array(), "{ran}");
    let elsewhere = format!("conn_{}", uuid::Uuid::now_v7().simple());
    let (status, _) = crate::access::execute(&app, access, &elsewhere, accounts).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let unknown = format!("conn_{}", uuid::Uuid::now_v7().simple());
    assert_eq!(
        app.get(&format!("/v2/connections/{unknown}"), access)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v2/connections", access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let mut connections =
        pb::connection_service_client::ConnectionServiceClient::new(app.channel().await);
    let over_grpc = connections
        .get_connection(with_key(
            pb::GetConnectionRequest {
                connection_id: connection_id.into(),
            },
            access,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(over_grpc.connection.unwrap().id, connection_id);
    // The connection belongs to the client's tenant.
    assert_eq!(
        app.get(&format!("/v2/connections/{connection_id}"), &client.key)
            .await
            .status(),
        StatusCode::OK
    );

    // A second redemption fails and revokes the first token.
    let (status, _, body) = token(&app, &form, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert_eq!(
        app.get(&format!("/v2/connections/{connection_id}"), access)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_redemptions_let_exactly_one_succeed() {
    let app = spawn_app().await;
    let client = client(&app, &[CB]).await;
    let code = code_for(&app, &client, "race").await;
    let attempts = (0..8).map(|_| {
        let form = exchange(&client, &code);
        let app = &app;
        let client = &client;
        async move {
            token(
                app,
                &form,
                Some((client.app_id.as_str(), client.client_secret.as_str())),
            )
            .await
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let winners = results
        .iter()
        .filter(|(status, _, _)| *status == StatusCode::OK)
        .count();
    assert_eq!(winners, 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(status, _, body)| *status == StatusCode::OK || body["error"] == "invalid_grant")
    );
}

#[tokio::test]
async fn codes_expire_and_pkce_cannot_be_downgraded() {
    let app = spawn_app_with(|args| args.oauth_require_pkce = false).await;
    let client = client(&app, &[CB]).await;
    let basic = Some((client.app_id.as_str(), client.client_secret.as_str()));
    let code = code_for(&app, &client, "late").await;
    // The code's lifetime runs out before it is redeemed.
    sqlx::query("UPDATE oauth_codes SET expires_at = now() - interval '1 second'")
        .execute(app.api.db())
        .await
        .unwrap();
    let (_, _, body) = token(&app, &exchange(&client, &code), basic).await;
    assert_eq!(body["error"], "invalid_grant");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    // A code issued without a challenge refuses a verifier (and works without).
    let response = authorize(
        &app,
        &[
            ("client_id", client.app_id.as_str()),
            ("response_type", "code"),
            ("redirect_uri", CB),
            ("institution_id", "northbank"),
        ],
    )
    .await;
    let back = log_in_and_consent(&app, &location(&response), "user_2fa").await;
    let code = param(&back, "code").unwrap();
    let (_, _, body) = token(&app, &exchange(&client, &code), basic).await;
    assert_eq!(body["error"], "invalid_grant");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("without a code_challenge"),
        "refused for the verifier, not for age: {body}"
    );
    let (status, _, _) = token(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CB),
        ],
        basic,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn exchange_over_grpc_maps_oauth_errors() {
    let app = spawn_app().await;
    let client = client(&app, &[CB]).await;
    let code = code_for(&app, &client, "grpc").await;
    let mut rpc = pb::authorize_service_client::AuthorizeServiceClient::new(app.channel().await);
    let request = |secret: &str, verifier: &str| pb::ExchangeCodeRequest {
        grant_type: "authorization_code".into(),
        code: code.clone(),
        redirect_uri: Some(CB.into()),
        client_id: client.app_id.clone(),
        client_secret: Some(secret.into()),
        code_verifier: Some(verifier.into()),
        ..Default::default()
    };
    let bad_client = rpc
        .exchange_code(request("lcs_nope", VERIFIER))
        .await
        .unwrap_err();
    assert_eq!(bad_client.code(), Code::Unauthenticated);
    let bad_grant = rpc
        .exchange_code(request(&client.client_secret, &"b".repeat(50)))
        .await
        .unwrap_err();
    assert_eq!(bad_grant.code(), Code::InvalidArgument);
    use tonic_types::StatusExt;
    assert_eq!(
        bad_grant.get_details_error_info().unwrap().reason,
        "invalid_grant"
    );
    let issued = rpc
        .exchange_code(request(&client.client_secret, VERIFIER))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.token_type, "Bearer");
    assert!(issued.connection_id.starts_with("conn_"));
}

/// `LINKD_OAUTH_TOKEN_TTL` sets `expires_in` and how long the token reads
/// its connection; past it the token is refused like an unknown one.
#[tokio::test]
async fn access_tokens_live_the_configured_lifetime() {
    let app =
        spawn_app_with(|args| args.oauth_token_ttl = std::time::Duration::from_secs(120)).await;
    let client = client(&app, &[CB]).await;
    let code = code_for(&app, &client, "ttl").await;
    let basic = Some((client.app_id.as_str(), client.client_secret.as_str()));
    let (status, _, issued) = token(&app, &exchange(&client, &code), basic).await;
    assert_eq!(status, StatusCode::OK, "{issued}");
    assert_eq!(issued["expires_in"], 120);
    let lifetime: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - now())::float8 FROM oauth_tokens WHERE kind = 'access'",
    )
    .fetch_one(app.api.db())
    .await
    .unwrap();
    assert!(
        (100.0..=120.0).contains(&lifetime),
        "stored lifetime {lifetime}"
    );
    let access = issued["access_token"].as_str().unwrap();
    let path = format!(
        "/v2/connections/{}",
        issued["connection_id"].as_str().unwrap()
    );
    assert_eq!(app.get(&path, access).await.status(), StatusCode::OK);
    // The lifetime runs out.
    sqlx::query("UPDATE oauth_tokens SET expires_at = now() - interval '1 second'")
        .execute(app.api.db())
        .await
        .unwrap();
    assert_eq!(
        app.get(&path, access).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
