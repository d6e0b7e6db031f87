use crate::helpers::{spawn_app, with_key};
use linkd::kernel::tenant::Environment;
use linkd::pb;
use linkd::pb::link_service_client::LinkServiceClient;
use reqwest::StatusCode;
use serde_json::Value;
use tonic::Code;

#[tokio::test]
async fn providers_list_every_combination_with_argument_schemas() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let mut grpc = LinkServiceClient::new(app.channel().await);

    let all = grpc
        .list_providers(with_key(pb::ListProvidersRequest::default(), &tenant.key))
        .await
        .unwrap()
        .into_inner()
        .providers;
    let ids: Vec<_> = all.iter().map(|p| p.integration_id.as_str()).collect();
    for expected in ["att", "tmobile", "ubereats", "verizon"] {
        assert!(ids.contains(&expected), "{expected} in {ids:?}");
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ordered by id: {ids:?}"
    );

    let tmobile = grpc
        .list_providers(with_key(
            pb::ListProvidersRequest {
                integration_id: Some("tmobile".into()),
            },
            &tenant.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .providers;
    assert_eq!(tmobile.len(), 1);
    assert_eq!(tmobile[0].category(), pb::ProviderCategory::MobileCarrier);
    let write = tmobile[0]
        .capabilities
        .iter()
        .find(|c| c.resource == "paymentMethod" && c.action() == pb::OperationAction::Write)
        .expect("paymentMethod write");
    let schema = linkd::kernel::proto_json::from_struct(write.arguments_schema.as_ref().unwrap());
    assert_eq!(schema["properties"]["cardNumber"]["format"], "card-number");
    assert!(
        schema["required"]
            .as_array()
            .unwrap()
            .contains(&Value::from("cvv"))
    );

    let unknown = grpc
        .list_providers(with_key(
            pb::ListProvidersRequest {
                integration_id: Some("nope".into()),
            },
            &tenant.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(unknown.providers.is_empty());

    let too_long = grpc
        .list_providers(with_key(
            pb::ListProvidersRequest {
                integration_id: Some("x".repeat(65)),
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::InvalidArgument);

    let anonymous = grpc
        .list_providers(pb::ListProvidersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn rest_providers_render_the_documented_names() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;

    let body: Value = app
        .get("/v1/providers?integrationId=verizon", &tenant.key)
        .await
        .json()
        .await
        .unwrap();
    let providers = body["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 1);
    let verizon = &providers[0];
    assert_eq!(verizon["integrationId"], "verizon");
    assert_eq!(verizon["category"], "mobile_carrier");
    let billing = verizon["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["resource"] == "mobileBillingStatement")
        .expect("billing statement capability");
    assert_eq!(billing["action"], "read");
    assert_eq!(
        billing["argumentsSchema"]["properties"]["months"]["maximum"],
        24
    );
    assert!(
        billing["resultDescription"]
            .as_str()
            .unwrap()
            .contains("billing")
    );

    let snake: Value = app
        .get("/v1/providers?integration_id=ubereats", &tenant.key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(snake["providers"][0]["integrationId"], "ubereats");
    let everything: Value = app
        .get("/v1/providers", &tenant.key)
        .await
        .json()
        .await
        .unwrap();
    assert!(everything["providers"].as_array().unwrap().len() >= 7);

    let too_long = app
        .get(
            &format!("/v1/providers?integrationId={}", "x".repeat(65)),
            &tenant.key,
        )
        .await;
    assert_eq!(too_long.status(), StatusCode::BAD_REQUEST);
    let body: Value = too_long.json().await.unwrap();
    assert_eq!(body["issues"][0]["path"], "integrationId");
    let anonymous = app.http.get(app.url("/v1/providers")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}
