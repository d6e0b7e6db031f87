use crate::helpers::spawn_app;
use crate::python_env::python;
use linkd::kernel::tenant::Environment;

/// Python stubs generated from `proto/` call the server like a client team in
/// another language would.
#[tokio::test]
async fn python_stubs_generated_from_the_protos_call_the_server() {
    tokio::task::spawn_blocking(python).await.unwrap();
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let stubs = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let generated = python()
        .current_dir(root)
        .args(["-m", "grpc_tools.protoc", "-Iproto"])
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .args([
            "proto/google/api/annotations.proto",
            "proto/google/api/http.proto",
            "proto/linkd/v1/client_app.proto",
            "proto/linkd/v1/link.proto",
            "proto/linkd/v1/connection.proto",
            "proto/linkd/v1/authorize.proto",
            "proto/linkd/v1/flow.proto",
        ])
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "grpcio-tools failed: {}",
        String::from_utf8_lossy(&generated.stderr)
    );

    let address = app.addr.to_string();
    let key = tenant.key.clone();
    let stub_dir = stubs.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        python()
            .arg(format!("{root}/tests/polyglot/client.py"))
            .arg(&stub_dir)
            .arg(&address)
            .arg(&key)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["health:"], "SERVING");
    assert_eq!(result["health:linkd.v1.ClientAppService"], "SERVING");
    assert_eq!(result["health:linkd.v1.LinkService"], "SERVING");
    assert_eq!(
        result["apps"],
        serde_json::json!([{ "id": tenant.app_id, "environment": "ENVIRONMENT_SANDBOX" }])
    );
    assert_eq!(result["anonymous"], "UNAUTHENTICATED");
}
