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
