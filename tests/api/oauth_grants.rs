//! linkd's OAuth server as standard clients configure and use it: the
//! metadata (RFC 8414) held to what the endpoints accept, `iss` on every
//! authorization response (RFC 9207), rotating refresh tokens with reuse
//! detection (RFC 6749 §6, RFC 9700 §4.14), revocation (RFC 7009),
//! introspection (RFC 7662), public clients (RFC 8252), CORS for registered
//! web origins, and RFC 6750 errors from a protected resource.

use crate::helpers::{TestApp, TestTenant, spawn_app, spawn_app_with};
use crate::oauth::{
    CB, CHALLENGE, VERIFIER, authorize, client, code_for, exchange, location, log_in_and_consent,
    param, token,
};
use linkd::kernel::ids::ClientAppId;
use linkd::pb;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tonic::Code;

/// A code exchanged for tokens: the token response.
async fn tokens_for(app: &TestApp, client: &TestTenant) -> Value {
    let code = code_for(app, client, "st").await;
    let (status, _, body) = token(app, &exchange(client, &code), Some(client_basic(client))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn client_basic(client: &TestTenant) -> (&str, &str) {
    (&client.app_id, &client.client_secret)
}

/// A `grant_type=refresh_token` request with HTTP Basic.
async fn refresh(
    app: &TestApp,
    client: &TestTenant,
    refresh_token: &str,
    scope: Option<&str>,
) -> (StatusCode, Value) {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let (status, _, body) = token(app, &form, Some(client_basic(client))).await;
    (status, body)
}

/// POSTs a form to `path` with HTTP Basic for `basic`.
async fn post_form(
    app: &TestApp,
    path: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (StatusCode, HeaderMap, String) {
    let mut request = app.http.post(app.url(path)).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

async fn introspect(app: &TestApp, client: &TestTenant, token: &str) -> Value {
    let (status, _, body) = post_form(
        app,
        "/v3/oauth/introspect",
        &[("token", token)],
        Some(client_basic(client)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn revoke(app: &TestApp, client: &TestTenant, form: &[(&str, &str)]) -> (StatusCode, String) {
    let (status, _, body) =
        post_form(app, "/v3/oauth/revoke", form, Some(client_basic(client))).await;
    (status, body)
}

/// What reading the token's connection answers.
async fn read_connection(app: &TestApp, issued: &Value, access_token: &str) -> reqwest::Response {
    let path = format!(
        "/v2/connections/{}",
        issued["connection_id"].as_str().unwrap()
    );
    app.get(&path, access_token).await
}

fn s<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {value}"))
}

async fn metadata(app: &TestApp) -> Value {
    let response = app
        .http
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    response.json().await.unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Registers `client` as a public client with these web origins (none:
/// the list is left as it is).
pub async fn make_public(app: &TestApp, client: &TestTenant, web_origins: &[&str]) {
    let origins: Vec<String> = web_origins.iter().map(|o| o.to_string()).collect();
    linkd::ops::admin::run(
        &app.api,
        linkd::ops::config::AdminCommand::SetOauthRegistration {
            app_id: client.app_id.clone(),
            client_type: Some("public".into()),
            refresh_tokens: None,
            web_origins: origins,
            clear_web_origins: false,
        },
    )
    .await
    .unwrap();
}

/// RFC 8414: the document has the required members with the issuer linkd
/// is reached at, and every value it lists is one the endpoints accept;
/// values it leaves out are refused.
#[tokio::test]
async fn the_metadata_says_what_the_endpoints_accept() {
    let app = spawn_app().await;
    let doc = metadata(&app).await;
    let issuer = s(&doc, "issuer").to_string();
    // §2: the issuer is the URL the server is reached at, no query or
    // fragment; §3: the metadata is at its well-known path.
    assert_eq!(issuer, app.url("").trim_end_matches('/'));
    assert!(!issuer.contains('?') && !issuer.contains('#'));
    for (field, path) in [
        ("authorization_endpoint", "/v3/oauth/authorize"),
        ("token_endpoint", "/v3/oauth/token"),
        ("revocation_endpoint", "/v3/oauth/revoke"),
        ("introspection_endpoint", "/v3/oauth/introspect"),
    ] {
        assert_eq!(s(&doc, field), format!("{issuer}{path}"), "{field}");
    }
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    // §2: members with no value are left out, never an empty list.
    for (name, value) in doc.as_object().unwrap() {
        assert!(
            value.as_array().is_none_or(|list| !list.is_empty()),
            "{name} is empty"
        );
    }
    assert_eq!(strings(&doc["response_types_supported"]), ["code"]);
    assert_eq!(strings(&doc["response_modes_supported"]), ["query"]);
    assert_eq!(strings(&doc["code_challenge_methods_supported"]), ["S256"]);
    let grants = strings(&doc["grant_types_supported"]);
    assert_eq!(grants, ["authorization_code", "refresh_token"]);
    let methods = strings(&doc["token_endpoint_auth_methods_supported"]);
    assert_eq!(
        methods,
        ["client_secret_basic", "client_secret_post", "none"]
    );
    for field in [
        "revocation_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
    ] {
        assert_eq!(strings(&doc[field]), methods, "{field}");
    }

    // Each listed grant type is understood (a bad value is invalid_grant or
    // invalid_request, never unsupported_grant_type); others are refused.
    let client_app = client(&app, &[CB]).await;
    for grant in &grants {
        let (_, _, body) = token(
            &app,
            &[
                ("grant_type", grant),
                ("code", "lac_nope"),
                ("refresh_token", "lrt_nope"),
            ],
            Some(client_basic(&client_app)),
        )
        .await;
        assert_eq!(body["error"], "invalid_grant", "{grant}: {body}");
    }
    for grant in ["client_credentials", "password", "implicit"] {
        let (status, _, body) = token(
            &app,
            &[("grant_type", grant)],
            Some(client_basic(&client_app)),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "unsupported_grant_type", "{grant}");
    }

    // Each listed auth method authenticates at all three endpoints.
    let public_app = client(&app, &[CB]).await;
    make_public(&app, &public_app, &[]).await;
    for method in &methods {
        let (id, secret) = match method.as_str() {
            "none" => (public_app.app_id.as_str(), None),
            _ => (
                client_app.app_id.as_str(),
                Some(client_app.client_secret.as_str()),
            ),
        };
        for path in [
            "/v3/oauth/token",
            "/v3/oauth/revoke",
            "/v3/oauth/introspect",
        ] {
            let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", "lrt_x")];
            form.push(("token", "lat_x"));
            let basic = match (method.as_str(), secret) {
                ("client_secret_basic", Some(secret)) => Some((id, secret)),
                _ => None,
            };
            if basic.is_none() {
                form.push(("client_id", id));
            }
            if let ("client_secret_post", Some(secret)) = (method.as_str(), secret) {
                form.push(("client_secret", secret));
            }
            let (status, _, body) = post_form(&app, path, &form, basic).await;
            assert_ne!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} at {path}: {body}"
            );
            assert_ne!(status, StatusCode::NOT_FOUND, "{method} at {path}");
        }
    }

    // Listed: response_type code, mode query, PKCE S256, each scope.
    let base = |extra: &[(&'static str, &'static str)]| {
        let mut params = vec![
            ("client_id", client_app.app_id.clone()),
            ("redirect_uri", CB.to_string()),
            ("response_type", "code".to_string()),
            ("code_challenge", CHALLENGE.to_string()),
            ("code_challenge_method", "S256".to_string()),
        ];
        for (k, v) in extra {
            params.retain(|(name, _)| name != k);
            params.push((k, v.to_string()));
        }
        params
    };
    let error_of = |response: &reqwest::Response| param(&location(response), "error");
    for scope in strings(&doc["scopes_supported"]) {
        let scope: &'static str = Box::leak(scope.into_boxed_str());
        let params = base(&[("scope", scope), ("response_mode", "query")]);
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = authorize(&app, &pairs).await;
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(error_of(&response), None, "{scope}");
    }
    // Not listed: other response types, modes and PKCE methods.
    for (extra, error) in [
        (("response_type", "token"), "unsupported_response_type"),
        (("response_mode", "form_post"), "invalid_request"),
        (("response_mode", "fragment"), "invalid_request"),
        (("code_challenge_method", "plain"), "invalid_request"),
    ] {
        let params = base(&[extra]);
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = authorize(&app, &pairs).await;
        assert_eq!(error_of(&response).as_deref(), Some(error), "{extra:?}");
    }
}

/// RFC 9207: the success and every error redirect carry `iss`, the
/// metadata's issuer.
#[tokio::test]
async fn every_authorization_response_names_the_issuer() {
    let app = spawn_app().await;
    let issuer = s(&metadata(&app).await, "issuer").to_string();
    let client_app = client(&app, &[CB]).await;
    let request = |extra: (&'static str, &'static str)| {
        vec![
            ("client_id", client_app.app_id.clone()),
            ("redirect_uri", CB.to_string()),
            ("response_type", "code".to_string()),
            ("state", "s1".to_string()),
            ("code_challenge", CHALLENGE.to_string()),
            ("code_challenge_method", "S256".to_string()),
            (extra.0, extra.1.to_string()),
        ]
    };
    let send = |params: Vec<(&'static str, String)>| {
        let app = &app;
        async move {
            let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            location(&authorize(app, &pairs).await)
        }
    };
    // Errors found at the authorization endpoint.
    let back = send(request(("scope", "admin"))).await;
    assert_eq!(param(&back, "error").as_deref(), Some("invalid_scope"));
    assert_eq!(param(&back, "iss").as_deref(), Some(issuer.as_str()));
    let back = send(request(("response_mode", "form_post"))).await;
    assert_eq!(param(&back, "iss").as_deref(), Some(issuer.as_str()));
    // The end user cancels on the Link page.
    let page = send(request(("institution_id", "northbank"))).await;
    let done = crate::helpers::Page::from_url(&app, &page)
        .cancel("login")
        .await;
    let back = done["redirectUrl"].as_str().unwrap();
    assert_eq!(param(back, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(back, "state").as_deref(), Some("s1"));
    assert_eq!(param(back, "iss").as_deref(), Some(issuer.as_str()));
    // Success.
    let page = send(request(("institution_id", "northbank"))).await;
    let back = log_in_and_consent(&app, &page, "user_good").await;
    assert!(param(&back, "code").is_some());
    assert_eq!(param(&back, "iss").as_deref(), Some(issuer.as_str()));
}

/// Refresh tokens rotate: each use gives a new pair and retires the one
/// used; a retired one presented again revokes the whole grant. A refresh
/// may narrow the scope, never widen it.
#[tokio::test]
async fn refresh_tokens_rotate_and_a_replayed_one_revokes_the_grant() {
    let app = spawn_app().await;
    let client_app = client(&app, &[CB]).await;
    let first = tokens_for(&app, &client_app).await;
    let refresh0 = s(&first, "refresh_token").to_string();
    assert!(refresh0.starts_with("lrt_"), "{first}");
    assert_eq!(s(&first, "scope"), "accounts");

    // A wider scope is refused and leaves the token usable.
    let (status, body) = refresh(&app, &client_app, &refresh0, Some("accounts identity")).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_scope")
    );

    // Two refreshes in a row, each with the newest token.
    let (status, second) = refresh(&app, &client_app, &refresh0, None).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let refresh1 = s(&second, "refresh_token").to_string();
    assert_ne!(refresh1, refresh0);
    assert_ne!(s(&second, "access_token"), s(&first, "access_token"));
    assert_eq!(s(&second, "connection_id"), s(&first, "connection_id"));
    assert_eq!(second["expires_in"], 3600);
    let (status, third) = refresh(&app, &client_app, &refresh1, Some("accounts")).await;
    assert_eq!(status, StatusCode::OK, "{third}");
    let access2 = s(&third, "access_token").to_string();
    let refresh2 = s(&third, "refresh_token").to_string();
    assert_eq!(
        read_connection(&app, &third, &access2).await.status(),
        StatusCode::OK
    );

    // The first refresh token, retired, comes back: someone else has it.
    let (status, body) = refresh(&app, &client_app, &refresh0, None).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    // Every token of the grant is dead now, the newest included.
    assert_eq!(
        read_connection(&app, &third, &access2).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (_, body) = refresh(&app, &client_app, &refresh2, None).await;
    assert_eq!(s(&body, "error"), "invalid_grant");
    assert_eq!(
        introspect(&app, &client_app, &access2).await,
        serde_json::json!({"active": false})
    );
    // Operators see it.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("linkd_oauth_replays_total{token=\"refresh_token\"} 1\n"),
        "{metrics}"
    );
    // Tokens are stored as their SHA-256 only.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM oauth_tokens WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(&refresh2)
    .fetch_one(app.api.db())
    .await
    .unwrap();
    assert_eq!(stored, 1);
}

/// Of concurrent refreshes with one token exactly one gets new tokens; the
/// others are replays, so the grant ends revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refreshes_of_one_token_let_exactly_one_succeed() {
    let app = spawn_app().await;
    let client_app = client(&app, &[CB]).await;
    let first = tokens_for(&app, &client_app).await;
    let refresh0 = s(&first, "refresh_token").to_string();
    let attempts = (0..8).map(|_| refresh(&app, &client_app, &refresh0, None));
    let answers = futures_util::future::join_all(attempts).await;
    let won: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .filter(|(status, _)| *status != StatusCode::OK)
            .all(|(status, body)| *status == StatusCode::BAD_REQUEST
                && body["error"] == "invalid_grant"),
        "{answers:?}"
    );
    let (_, body) = refresh(&app, &client_app, s(won[0], "refresh_token"), None).await;
    assert_eq!(s(&body, "error"), "invalid_grant", "the grant is revoked");
}

/// `LINKD_OAUTH_REFRESH_TTL` bounds a grant's refresh tokens from the code
/// exchange on, rotation included; deleting the connection ends the grant.
#[tokio::test]
async fn refresh_tokens_end_with_the_grant_lifetime_and_with_the_connection() {
    let app = spawn_app_with(|args| {
        args.oauth_refresh_ttl = std::time::Duration::from_secs(2 * 24 * 60 * 60)
    })
    .await;
    let client_app = client(&app, &[CB]).await;
    let first = tokens_for(&app, &client_app).await;
    let (_, second) = refresh(&app, &client_app, s(&first, "refresh_token"), None).await;
    let lifetimes: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - now())::float8 FROM oauth_tokens
         WHERE kind = 'refresh' ORDER BY created_at",
    )
    .fetch_all(app.api.db())
    .await
    .unwrap();
    assert_eq!(lifetimes.len(), 2);
    for lifetime in &lifetimes {
        assert!(
            (2.0 * 86400.0 - 60.0..=2.0 * 86400.0).contains(lifetime),
            "{lifetimes:?}"
        );
    }
    let refresh_view = introspect(&app, &client_app, s(&second, "refresh_token")).await;
    assert_eq!(refresh_view["token_type"], "refresh_token");
    let exp = refresh_view["exp"].as_i64().unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now + 2 * 86400 - 120..=now + 2 * 86400).contains(&exp),
        "{refresh_view}"
    );
    // The grant's lifetime runs out.
    sqlx::query(
        "UPDATE oauth_tokens SET expires_at = now() - interval '1 second' WHERE kind = 'refresh'",
    )
    .execute(app.api.db())
    .await
    .unwrap();
    let (_, body) = refresh(&app, &client_app, s(&second, "refresh_token"), None).await;
    assert_eq!(s(&body, "error"), "invalid_grant");

    // A new grant, then its connection is deleted by the client's backend.
    let fresh = tokens_for(&app, &client_app).await;
    let access = s(&fresh, "access_token");
    assert_eq!(
        read_connection(&app, &fresh, access).await.status(),
        StatusCode::OK
    );
    let deleted = app
        .http
        .delete(app.url(&format!("/v2/connections/{}", s(&fresh, "connection_id"))))
        .bearer_auth(&client_app.key)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    let (_, body) = refresh(&app, &client_app, s(&fresh, "refresh_token"), None).await;
    assert_eq!(s(&body, "error"), "invalid_grant");
    assert_eq!(introspect(&app, &client_app, access).await["active"], false);
}

/// An app with refresh tokens off gets none and may not use the grant.
#[tokio::test]
async fn an_app_without_refresh_tokens_gets_none() {
    let app = spawn_app().await;
    let client_app = client(&app, &[CB]).await;
    let id = ClientAppId::parse(&client_app.app_id).unwrap();
    let first = tokens_for(&app, &client_app).await;
    linkd::client_apps::store::set_oauth_registration(app.api.db(), id, None, Some(false), None)
        .await
        .unwrap();
    let later = tokens_for(&app, &client_app).await;
    assert!(later.get("refresh_token").is_none(), "{later}");
    let (status, body) = refresh(&app, &client_app, s(&first, "refresh_token"), None).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "unauthorized_client")
    );
}

/// RFC 7009: POST only, client authentication required, a refresh token
/// ends its grant, an access token itself, an unknown token is a `200`, a
/// hint never hides a token, another client's token is refused and kept.
#[tokio::test]
async fn revocation_follows_rfc_7009() {
    let app = spawn_app().await;
    let client_app = client(&app, &[CB]).await;
    let other = client(&app, &[CB]).await;
    let issued = tokens_for(&app, &client_app).await;
    let access = s(&issued, "access_token");
    let refresh_token = s(&issued, "refresh_token");

    let get = app
        .http
        .get(app.url("/v3/oauth/revoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, body) = post_form(&app, "/v3/oauth/revoke", &[("token", access)], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("invalid_client"));
    let (status, body) = revoke(&app, &client_app, &[("token_type_hint", "access_token")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("invalid_request"), "{body}");
    // Another client may not revoke it (§2.1), and it keeps working.
    let (status, body) = revoke(&app, &other, &[("token", access)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("unauthorized_client"), "{body}");
    assert_eq!(
        read_connection(&app, &issued, access).await.status(),
        StatusCode::OK
    );

    // An access token, with the wrong hint: found anyway, revoked alone.
    let (status, _) = revoke(
        &app,
        &client_app,
        &[("token", access), ("token_type_hint", "refresh_token")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        read_connection(&app, &issued, access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        introspect(&app, &client_app, refresh_token).await["active"],
        true
    );
    // Revoking it again, or an unknown token, or with an unknown hint: 200.
    for form in [
        vec![("token", access)],
        vec![("token", "lat_unknown")],
        vec![("token", "whatever"), ("token_type_hint", "id_token")],
    ] {
        let (status, _) = revoke(&app, &client_app, &form).await;
        assert_eq!(status, StatusCode::OK, "{form:?}");
    }
    // A refresh token: the grant ends, so a refreshed access token dies too.
    let (_, next) = refresh(&app, &client_app, refresh_token, None).await;
    let (status, _) = revoke(&app, &client_app, &[("token", s(&next, "refresh_token"))]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        read_connection(&app, &next, s(&next, "access_token"))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let (_, body) = refresh(&app, &client_app, s(&next, "refresh_token"), None).await;
    assert_eq!(s(&body, "error"), "invalid_grant");
}

/// RFC 7662: client authentication required; an active token's claims; a
/// token that is not active, or is another client's, is `{"active":
/// false}` and nothing more.
#[tokio::test]
async fn introspection_follows_rfc_7662() {
    let app = spawn_app().await;
    let issuer = s(&metadata(&app).await, "issuer").to_string();
    let client_app = client(&app, &[CB]).await;
    let other = client(&app, &[CB]).await;
    let issued = tokens_for(&app, &client_app).await;
    let access = s(&issued, "access_token");

    let (status, headers, _) =
        post_form(&app, "/v3/oauth/introspect", &[("token", access)], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        headers.get("www-authenticate").is_none(),
        "Basic was not tried"
    );
    let (status, _, body) = post_form(
        &app,
        "/v3/oauth/introspect",
        &[],
        Some(client_basic(&client_app)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("invalid_request"));

    let view = introspect(&app, &client_app, access).await;
    let now = chrono::Utc::now().timestamp();
    assert_eq!(view["active"], true);
    assert_eq!(view["scope"], "accounts");
    assert_eq!(view["client_id"], client_app.app_id.as_str());
    assert_eq!(view["token_type"], "Bearer");
    assert_eq!(view["sub"], issued["connection_id"]);
    assert_eq!(view["iss"], issuer.as_str());
    let (iat, exp) = (view["iat"].as_i64().unwrap(), view["exp"].as_i64().unwrap());
    assert!((now - 60..=now).contains(&iat), "{view}");
    assert_eq!(exp - iat, 3600, "{view}");

    let inactive = serde_json::json!({"active": false});
    assert_eq!(introspect(&app, &other, access).await, inactive);
    assert_eq!(introspect(&app, &client_app, "lat_unknown").await, inactive);
    // A rotated refresh token is no longer active.
    let refresh0 = s(&issued, "refresh_token");
    refresh(&app, &client_app, refresh0, None).await;
    assert_eq!(introspect(&app, &client_app, refresh0).await, inactive);
    // Revoked, the access token is inactive.
    revoke(&app, &client_app, &[("token", access)]).await;
    assert_eq!(introspect(&app, &client_app, access).await, inactive);
}

/// RevokeToken and IntrospectToken over gRPC, with the same rules.
#[tokio::test]
async fn revocation_and_introspection_over_grpc() {
    let app = spawn_app().await;
    let client_app = client(&app, &[CB]).await;
    let issued = tokens_for(&app, &client_app).await;
    let mut rpc = pb::authorize_service_client::AuthorizeServiceClient::new(app.channel().await);
    let access = s(&issued, "access_token").to_string();
    let ask = |token: &str, secret: &str| pb::IntrospectTokenRequest {
        token: token.into(),
        client_id: client_app.app_id.clone(),
        client_secret: Some(secret.into()),
        ..Default::default()
    };
    let refused = rpc
        .introspect_token(ask(&access, "lcs_wrong"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let view = rpc
        .introspect_token(ask(&access, &client_app.client_secret))
        .await
        .unwrap()
        .into_inner();
    assert!(view.active);
    assert_eq!(view.connection_id, s(&issued, "connection_id"));
    assert_eq!(view.token_type, "Bearer");
    assert!(view.expire_time.unwrap().seconds > view.issue_time.unwrap().seconds);

    rpc.revoke_token(pb::RevokeTokenRequest {
        token: s(&issued, "refresh_token").into(),
        client_id: client_app.app_id.clone(),
        client_secret: Some(client_app.client_secret.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let view = rpc
        .introspect_token(ask(&access, &client_app.client_secret))
        .await
        .unwrap()
        .into_inner();
    assert!(!view.active, "the refresh token's grant ended");
    assert_eq!(view, pb::IntrospectTokenResponse::default());
}

/// A public client (RFC 8252): client_id alone at the token endpoints,
/// never a secret; PKCE even when the server does not require it;
/// loopback redirect URIs on any port and private-use schemes, exactly.
#[tokio::test]
async fn public_clients_use_pkce_and_no_secret() {
    let app = spawn_app_with(|args| args.oauth_require_pkce = false).await;
    let native = client(
        &app,
        &["http://127.0.0.1/callback", "com.example.budget:/oauth2"],
    )
    .await;
    make_public(&app, &native, &[]).await;
    let listed = app
        .get(&format!("/v1/client-apps/{}", native.app_id), &native.key)
        .await;
    let listed: Value = listed.json().await.unwrap();
    assert_eq!(
        listed["oauth"]["tokenEndpointAuthMethod"], "none",
        "{listed}"
    );

    let request = |redirect: &str, pkce: bool| {
        let mut params = vec![
            ("client_id", native.app_id.clone()),
            ("redirect_uri", redirect.to_string()),
            ("response_type", "code".to_string()),
            ("institution_id", "northbank".to_string()),
        ];
        if pkce {
            params.push(("code_challenge", CHALLENGE.to_string()));
            params.push(("code_challenge_method", "S256".to_string()));
        }
        params
    };
    let send = |params: Vec<(&'static str, String)>| {
        let app = &app;
        async move {
            let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            authorize(app, &pairs).await
        }
    };
    // Without PKCE: refused, though the server-wide setting is off.
    let back = location(&send(request("http://127.0.0.1:50123/callback", false)).await);
    assert_eq!(
        param(&back, "error").as_deref(),
        Some("invalid_request"),
        "{back}"
    );
    // Not exactly registered: the error page, never a redirect.
    for wrong in [
        "http://localhost:50123/callback",
        "http://127.0.0.1:50123/callback/",
        "com.example.budget:/oauth2/",
        "com.example.evil:/oauth2",
    ] {
        let response = send(request(wrong, true)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{wrong}");
    }

    for redirect in [
        "http://127.0.0.1:50123/callback",
        "com.example.budget:/oauth2",
    ] {
        let page = location(&send(request(redirect, true)).await);
        let back = log_in_and_consent(&app, &page, "user_good").await;
        assert!(back.starts_with(&format!("{redirect}?code=")), "{back}");
        let code = param(&back, "code").unwrap();
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect),
            ("code_verifier", VERIFIER),
            ("client_id", native.app_id.as_str()),
        ];
        // A secret, by Basic or in the body, is refused for a public client.
        let (status, _, body) = token(&app, &form, Some((&native.app_id, "lcs_x"))).await;
        assert_eq!(
            (status, s(&body, "error")),
            (StatusCode::UNAUTHORIZED, "invalid_client")
        );
        let mut with_secret = form.to_vec();
        with_secret.push(("client_secret", &native.client_secret));
        let (status, _, _) = token(&app, &with_secret, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // client_id alone redeems it; an empty secret is no secret.
        let mut empty_secret = form.to_vec();
        empty_secret.push(("client_secret", ""));
        let (status, _, issued) = token(&app, &empty_secret, None).await;
        assert_eq!(status, StatusCode::OK, "{issued}");
        let refreshed = token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", s(&issued, "refresh_token")),
                ("client_id", native.app_id.as_str()),
            ],
            None,
        )
        .await;
        assert_eq!(refreshed.0, StatusCode::OK, "{}", refreshed.2);
        // HTTP Basic with an empty password, as some libraries send it.
        let again = token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", s(&refreshed.2, "refresh_token")),
            ],
            Some((&native.app_id, "")),
        )
        .await;
        assert_eq!(again.0, StatusCode::OK, "{}", again.2);
        let refreshed = again;
        let (status, _, _) = post_form(
            &app,
            "/v3/oauth/revoke",
            &[
                ("token", s(&refreshed.2, "refresh_token")),
                ("client_id", &native.app_id),
            ],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }

    // A confidential client still needs its secret.
    let confidential = client(&app, &[CB]).await;
    let (status, _, body) = token(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", "lac_x"),
            ("client_id", &confidential.app_id),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
}

/// CORS: only a client app's registered web origins may read the token
/// endpoints' answers in a browser; the preflight and the metadata answer
/// any origin some app registered; nothing for other origins.
#[tokio::test]
async fn browser_apps_get_cors_for_their_registered_origins_only() {
    let app = spawn_app().await;
    let spa = client(&app, &[CB]).await;
    make_public(
        &app,
        &spa,
        &["https://spa.example", "http://127.0.0.1:5173"],
    )
    .await;
    let other = client(&app, &[CB]).await;
    make_public(&app, &other, &["https://other.example"]).await;
    let allow_origin = |response: &reqwest::Response| {
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
    };
    for path in [
        "/v3/oauth/token",
        "/v3/oauth/revoke",
        "/v3/oauth/introspect",
        "/.well-known/oauth-authorization-server",
    ] {
        for (origin, allowed) in [
            ("https://spa.example", true),
            ("http://127.0.0.1:5173", true),
            ("https://evil.example", false),
        ] {
            let preflight = app
                .http
                .request(reqwest::Method::OPTIONS, app.url(path))
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "POST")
                .header("Access-Control-Request-Headers", "content-type")
                .send()
                .await
                .unwrap();
            assert!(preflight.status().is_success(), "{path}");
            assert_eq!(
                allow_origin(&preflight).is_some(),
                allowed,
                "{path} {origin}"
            );
            if allowed {
                let methods = preflight.headers()["access-control-allow-methods"]
                    .to_str()
                    .unwrap();
                assert!(methods.contains("POST"), "{methods}");
                let headers = preflight.headers()["access-control-allow-headers"]
                    .to_str()
                    .unwrap();
                assert!(headers.contains("content-type"), "{headers}");
            }
        }
    }
    let meta = app
        .http
        .get(app.url("/.well-known/oauth-authorization-server"))
        .header("Origin", "https://other.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allow_origin(&meta).as_deref(),
        Some("https://other.example")
    );

    // The token endpoint: the client's own origins only, errors included
    // (so the app can read why).
    let post = |origin: &'static str, client_id: String| {
        let app = &app;
        async move {
            app.http
                .post(app.url("/v3/oauth/token"))
                .header("Origin", origin)
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", "lac_unknown"),
                    ("client_id", client_id.as_str()),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let mine = post("https://spa.example", spa.app_id.clone()).await;
    assert_eq!(mine.status(), StatusCode::BAD_REQUEST);
    assert_eq!(allow_origin(&mine).as_deref(), Some("https://spa.example"));
    assert!(
        mine.headers()["vary"].to_str().unwrap().contains("Origin"),
        "answers differ by origin"
    );
    let theirs = post("https://other.example", spa.app_id.clone()).await;
    assert_eq!(allow_origin(&theirs), None);
    let unknown = post("https://evil.example", spa.app_id.clone()).await;
    assert_eq!(allow_origin(&unknown), None);

    // A bad origin is refused when registered, naming it.
    let refused = linkd::ops::admin::run(
        &app.api,
        linkd::ops::config::AdminCommand::SetOauthRegistration {
            app_id: spa.app_id.clone(),
            client_type: None,
            refresh_tokens: None,
            web_origins: vec!["https://spa.example/app".into()],
            clear_web_origins: false,
        },
    )
    .await;
    let message = format!("{:#}", refused.unwrap_err());
    assert!(message.contains("web_origins[0]"), "{message}");
    let still = post("https://spa.example", spa.app_id.clone()).await;
    assert_eq!(allow_origin(&still).as_deref(), Some("https://spa.example"));
}

/// RFC 6750 §3: a refused access token gets `error="invalid_token"` in the
/// challenge and the body; a request without a credential a bare
/// challenge. gRPC says `UNAUTHENTICATED` with reason `invalid_token`.
#[tokio::test]
async fn a_protected_resource_refuses_tokens_as_rfc_6750_says() {
    let app = spawn_app().await;
    let client_app = client(&app, &[CB]).await;
    let issued = tokens_for(&app, &client_app).await;
    revoke(&app, &client_app, &[("token", s(&issued, "access_token"))]).await;
    let refused = read_connection(&app, &issued, s(&issued, "access_token")).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let challenge = refused.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(challenge.contains("error_description=\""), "{challenge}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token", "{body}");
    // Also an `Error`, for clients that read every 401 as one.
    assert_eq!(body["code"], "UNAUTHENTICATED", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );

    let bare = app
        .http
        .get(app.url(&format!("/v2/connections/{}", s(&issued, "connection_id"))))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
    let challenge = bare.headers()["www-authenticate"].to_str().unwrap();
    assert_eq!(challenge, "Bearer realm=\"linkd\"");

    let mut rpc = pb::connection_service_client::ConnectionServiceClient::new(app.channel().await);
    let status = rpc
        .get_connection(crate::helpers::with_key(
            pb::GetConnectionRequest {
                connection_id: s(&issued, "connection_id").into(),
            },
            s(&issued, "access_token"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    use tonic_types::StatusExt;
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "invalid_token"
    );
}

/// RFC 6749 §5.2: the Basic challenge answers a failed Basic attempt only;
/// media types compare case-insensitively; others are refused.
#[tokio::test]
async fn token_endpoint_challenges_and_media_types() {
    let app = spawn_app().await;
    let client_app = client(&app, &[CB]).await;
    let form = [("grant_type", "refresh_token"), ("refresh_token", "lrt_x")];
    let (status, headers, _) = token(&app, &form, Some((&client_app.app_id, "lcs_wrong"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Basic realm=\"linkd\"");
    let mut in_body = form.to_vec();
    in_body.extend([
        ("client_id", client_app.app_id.as_str()),
        ("client_secret", "lcs_wrong"),
    ]);
    let (status, headers, body) = token(&app, &in_body, None).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    assert!(headers.get("www-authenticate").is_none(), "{headers:?}");

    let send = |content_type: &'static str| {
        let app = &app;
        let client_app = &client_app;
        async move {
            let response = app
                .http
                .post(app.url("/v3/oauth/token"))
                .basic_auth(&client_app.app_id, Some(&client_app.client_secret))
                .header("Content-Type", content_type)
                .body("grant_type=refresh_token&refresh_token=lrt_unknown")
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    for accepted in [
        "Application/X-WWW-Form-Urlencoded",
        "application/x-www-form-urlencoded; Charset=UTF-8",
    ] {
        let (status, body) = send(accepted).await;
        assert_eq!(
            (status, s(&body, "error")),
            (StatusCode::BAD_REQUEST, "invalid_grant"),
            "{accepted}"
        );
    }
    let (status, body) = send("application/json").await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

/// The expiry sweep deletes codes never redeemed, grants that ended and
/// long-expired access tokens, and keeps a live grant's used refresh
/// tokens: a replay of one is still caught.
#[tokio::test]
async fn the_sweep_deletes_what_ended_and_keeps_what_catches_a_replay() {
    let app = spawn_app().await;
    let client_app = client(&app, &[CB]).await;
    let db = app.api.db();
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(db)
            .await
            .unwrap()
    };
    // A live grant, refreshed once; a grant revoked; another grant; a code
    // nobody redeemed.
    let live = tokens_for(&app, &client_app).await;
    let (_, refreshed) = refresh(&app, &client_app, s(&live, "refresh_token"), None).await;
    let revoked = tokens_for(&app, &client_app).await;
    revoke(
        &app,
        &client_app,
        &[("token", s(&revoked, "refresh_token"))],
    )
    .await;
    let ended = tokens_for(&app, &client_app).await;
    let unredeemed = code_for(&app, &client_app, "never redeemed").await;
    assert_eq!(count("SELECT count(*) FROM oauth_codes").await, 4);
    // Then time passes for them, all at once (the sweep runs meanwhile): the
    // live grant's first access token expired two days ago, the revocation
    // was two days ago, the other grant's refresh tokens ended three days
    // ago, the unredeemed code expired two days ago.
    let mut tx = db.begin().await.unwrap();
    for (sql, token) in [
        (
            "UPDATE oauth_tokens SET expires_at = now() - interval '2 days'
             WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
            s(&live, "access_token"),
        ),
        (
            "UPDATE oauth_grants SET revoked_at = now() - interval '2 days'
             WHERE id = (SELECT grant_id FROM oauth_tokens
                         WHERE token_hash = sha256(convert_to($1, 'UTF8')))",
            s(&revoked, "access_token"),
        ),
        (
            "UPDATE oauth_grants SET refresh_expires_at = now() - interval '3 days'
             WHERE id = (SELECT grant_id FROM oauth_tokens
                         WHERE token_hash = sha256(convert_to($1, 'UTF8')))",
            s(&ended, "access_token"),
        ),
        (
            "UPDATE oauth_codes SET expires_at = now() - interval '2 days'
             WHERE code_hash = sha256(convert_to($1, 'UTF8'))",
            unredeemed.as_str(),
        ),
    ] {
        let updated = sqlx::query(sql)
            .bind(token)
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(updated.rows_affected(), 1, "{sql}");
    }
    tx.commit().await.unwrap();

    let started = std::time::Instant::now();
    while count("SELECT count(*) FROM oauth_codes").await > 1
        || count("SELECT count(*) FROM oauth_tokens WHERE kind = 'access'").await > 1
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the sweep never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(count("SELECT count(*) FROM oauth_grants").await, 1);
    // The live grant kept both refresh tokens and its current access token.
    assert_eq!(
        count("SELECT count(*) FROM oauth_tokens WHERE kind = 'refresh'").await,
        2
    );
    let current = s(&refreshed, "access_token");
    assert_eq!(
        read_connection(&app, &refreshed, current).await.status(),
        StatusCode::OK
    );
    // The used refresh token is still recognised: its replay ends the grant.
    let (_, body) = refresh(&app, &client_app, s(&live, "refresh_token"), None).await;
    assert_eq!(s(&body, "error"), "invalid_grant");
    assert_eq!(
        read_connection(&app, &refreshed, current).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// A replica of the previous release (mid rolling upgrade) redeems a code
/// its own way, inserting a token without a grant: the token still reads
/// its connection, and a replay of the code through this release revokes
/// it.
#[tokio::test]
async fn tokens_a_previous_release_issues_get_a_grant() {
    let app = spawn_app().await;
    let client_app = client(&app, &[CB]).await;
    let code = code_for(&app, &client_app, "old").await;
    let db = app.api.db();
    // What the previous release's exchange wrote, statement for statement.
    let (code_id, connection_id): (uuid::Uuid, uuid::Uuid) = sqlx::query_as(
        "SELECT id, connection_id FROM oauth_codes WHERE code_hash = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(&code)
    .fetch_one(db)
    .await
    .unwrap();
    let old_token = "lat_issued_by_the_previous_release_0123456789abcdef";
    sqlx::query(
        "INSERT INTO oauth_tokens (id, token_hash, code_id, organization_id, environment, client_app_id,
             connection_id, scope, expires_at)
         SELECT gen_random_uuid(), sha256(convert_to($1, 'UTF8')), c.id, c.organization_id,
                c.environment, c.client_app_id, c.connection_id, c.scope, now() + interval '1 hour'
         FROM oauth_codes c WHERE c.id = $2",
    )
    .bind(old_token)
    .bind(code_id)
    .execute(db)
    .await
    .unwrap();
    sqlx::query("UPDATE oauth_codes SET used_at = now() WHERE id = $1")
        .bind(code_id)
        .execute(db)
        .await
        .unwrap();
    let path = format!(
        "/v2/connections/{}",
        linkd::kernel::ids::ConnectionId::from_uuid(connection_id)
    );
    assert_eq!(app.get(&path, old_token).await.status(), StatusCode::OK);
    assert_eq!(
        introspect(&app, &client_app, old_token).await["active"],
        true
    );
    // The code comes back to this release: a replay, which ends the grant.
    let (_, _, body) = token(
        &app,
        &exchange(&client_app, &code),
        Some(client_basic(&client_app)),
    )
    .await;
    assert_eq!(s(&body, "error"), "invalid_grant");
    assert_eq!(
        app.get(&path, old_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
