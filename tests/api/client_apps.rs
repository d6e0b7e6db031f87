use crate::helpers::{spawn_app, with_key};
use linkd::kernel::ids::ClientAppId;
use linkd::kernel::tenant::{Environment, Tenant};
use linkd::pb::client_app_service_client::ClientAppServiceClient;
use linkd::pb::{GetClientAppRequest, ListClientAppsRequest};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn client_apps_are_listed_and_fetched_over_grpc_and_rest() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let second = app.add_app(tenant.tenant, "Second app").await;

    let mut grpc = ClientAppServiceClient::new(app.channel().await);
    let listed = grpc
        .list_client_apps(with_key(ListClientAppsRequest {}, &tenant.key))
        .await
        .unwrap()
        .into_inner()
        .client_apps;
    let ids: Vec<_> = listed.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        [tenant.app_id.as_str(), second.app_id.as_str()],
        "oldest first"
    );
    assert_eq!(
        listed[0].redirect_uris,
        ["https://app.example.com/callback", "myapp://callback"]
    );
    assert_eq!(listed[0].environment(), linkd::pb::Environment::Sandbox);

    let got = grpc
        .get_client_app(with_key(
            GetClientAppRequest {
                client_app_id: second.app_id.clone(),
            },
            &tenant.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .client_app
        .unwrap();
    assert_eq!(got.name, "Second app");
    assert_eq!(
        got.webhook_url.as_deref(),
        Some("https://hooks.example.com/linkd")
    );

    let rest: Value = app
        .get(&format!("/v1/client-apps/{}", second.app_id), &tenant.key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["id"], json!(second.app_id));
    assert_eq!(rest["environment"], "sandbox");
    assert_eq!(
        rest["redirectUris"],
        json!(["https://app.example.com/callback", "myapp://callback"])
    );
    assert!(
        rest.get("webhookSecret").is_none(),
        "the signing secret is never returned"
    );
    assert!(
        rest["createdAt"].as_str().unwrap().ends_with('Z'),
        "ISO 8601 UTC"
    );
}

#[tokio::test]
async fn another_tenants_ids_behave_exactly_like_unknown_ones() {
    let app = spawn_app().await;
    let alice = app.create_tenant(Environment::Sandbox).await;
    let bob = app.create_tenant(Environment::Sandbox).await;
    // Same organization as Alice, other environment: also a different tenant.
    let alice_prod = app
        .add_app(
            Tenant {
                organization_id: alice.tenant.organization_id,
                environment: Environment::Production,
            },
            "Prod app",
        )
        .await;
    let unknown = ClientAppId::new().to_string();

    let mut grpc = ClientAppServiceClient::new(app.channel().await);
    for key in [&bob.key, &alice_prod.key] {
        let foreign = grpc
            .get_client_app(with_key(
                GetClientAppRequest {
                    client_app_id: alice.app_id.clone(),
                },
                key,
            ))
            .await
            .unwrap_err();
        let missing = grpc
            .get_client_app(with_key(
                GetClientAppRequest {
                    client_app_id: unknown.clone(),
                },
                key,
            ))
            .await
            .unwrap_err();
        assert_eq!(foreign.code(), Code::NotFound);
        assert_eq!(
            (foreign.code(), foreign.message()),
            (missing.code(), missing.message())
        );

        let foreign_rest = app
            .get(&format!("/v1/client-apps/{}", alice.app_id), key)
            .await;
        let missing_rest = app.get(&format!("/v1/client-apps/{unknown}"), key).await;
        assert_eq!(foreign_rest.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing_rest.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            foreign_rest.text().await.unwrap(),
            missing_rest.text().await.unwrap()
        );

        let listed = grpc
            .list_client_apps(with_key(ListClientAppsRequest {}, key))
            .await
            .unwrap()
            .into_inner()
            .client_apps;
        assert_eq!(listed.len(), 1);
        assert_ne!(listed[0].id, alice.app_id);
    }
}

#[tokio::test]
async fn malformed_ids_are_invalid_arguments_naming_the_field() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let mut grpc = ClientAppServiceClient::new(app.channel().await);
    let status = grpc
        .get_client_app(with_key(
            GetClientAppRequest {
                client_app_id: "conn_123".into(),
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = status
        .get_details_bad_request()
        .expect("BadRequest detail")
        .field_violations;
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "clientAppId");
    assert!(violations[0].description.contains("app_"));
    let info = status.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "VALIDATION_FAILED");

    let response = app.get("/v1/client-apps/nope", &tenant.key).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "Validation failed");
    assert_eq!(body["issues"][0]["path"], "clientAppId");
    assert!(
        body["issues"][0]["message"]
            .as_str()
            .unwrap()
            .contains("app_")
    );
}

/// A 16×16 orange PNG.
pub const LOGO_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAF0lEQVR4nGP438NAEiJN9aiGUQ1DSgMA/YOLELHsQkgAAAAASUVORK5CYII=";

/// `PUT /v1/client-apps/{id}/branding` with `body`.
pub async fn put_branding(
    app: &crate::helpers::TestApp,
    tenant: &crate::helpers::TestTenant,
    body: Value,
) -> (StatusCode, Value) {
    let response = app
        .http
        .put(app.url(&format!("/v1/client-apps/{}/branding", tenant.app_id)))
        .bearer_auth(&tenant.key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn branding_is_validated_stored_and_the_logo_served_by_linkd() {
    use base64::Engine as _;
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let (status, set) = put_branding(
        &app,
        &tenant,
        json!({"displayName": "  Acme Budget Pro ", "accentColor": "#FFCC00", "logo": LOGO_PNG}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(set["branding"]["displayName"], "Acme Budget Pro");
    assert_eq!(set["branding"]["accentColor"], "#ffcc00");
    let logo_url = set["branding"]["logoUrl"].as_str().unwrap().to_string();
    assert!(
        logo_url.starts_with(&format!("/link/brand/{}/logo?v=", tenant.app_id)),
        "{logo_url}"
    );
    let logo = app.http.get(app.url(&logo_url)).send().await.unwrap();
    assert_eq!(logo.status(), StatusCode::OK);
    assert_eq!(logo.headers()["content-type"], "image/png");
    assert_eq!(logo.headers()["x-content-type-options"], "nosniff");
    assert!(
        logo.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(LOGO_PNG)
        .unwrap();
    assert_eq!(logo.bytes().await.unwrap().as_ref(), png.as_slice());

    // The Link page of its sessions carries it.
    let page = app.open_session(&tenant, json!({})).await;
    let flow = page.flow().await;
    assert_eq!(flow["clientAppName"], "Acme Budget Pro");
    assert_eq!(flow["clientAccentColor"], "#ffcc00");
    assert_eq!(flow["clientLogoUrl"], logo_url.as_str());

    // Bad input names its field and changes nothing.
    let svg = base64::engine::general_purpose::STANDARD.encode("<svg onload=alert(1)></svg>");
    for (body, field) in [
        (json!({"accentColor": "red"}), "accentColor"),
        (json!({"displayName": "x".repeat(61)}), "displayName"),
        (json!({"logo": svg}), "logo"),
        (json!({"logo": "%%%"}), "logo"),
        (json!({"logo": LOGO_PNG, "removeLogo": true}), "removeLogo"),
    ] {
        let (status, refused) = put_branding(&app, &tenant, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {refused}");
        assert_eq!(refused["issues"][0]["path"], field, "{refused}");
    }
    let unchanged = app
        .get(&format!("/v1/client-apps/{}", tenant.app_id), &tenant.key)
        .await;
    let unchanged: Value = unchanged.json().await.unwrap();
    assert_eq!(unchanged["branding"], set["branding"]);

    // Another tenant's key finds no such app.
    let other = app.create_tenant(Environment::Sandbox).await;
    let response = app
        .http
        .put(app.url(&format!("/v1/client-apps/{}/branding", tenant.app_id)))
        .bearer_auth(&other.key)
        .json(&json!({"displayName": "Mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Cleared: the name and colour go back to linkd's, the logo is gone.
    let (status, cleared) = put_branding(
        &app,
        &tenant,
        json!({"displayName": "", "accentColor": "", "removeLogo": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(
        cleared["branding"],
        json!({"displayName": null, "accentColor": null, "logoUrl": null})
    );
    let gone = app.http.get(app.url(&logo_url)).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}
