use crate::helpers::{spawn_app, with_key};
use crate::python_env::python_tool;
use linkd::kernel::tenant::Environment;
use linkd::pb;
use reqwest::StatusCode;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SERVICES: [&str; 5] = [
    "linkd.v1.LinkService",
    "linkd.v1.ConnectionService",
    "linkd.v1.AuthorizeService",
    "linkd.v1.LinkFlowService",
    "linkd.v1.ClientAppService",
];

#[tokio::test]
async fn health_reports_every_service_serving() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel().await);
    for service in std::iter::once("").chain(SERVICES) {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn reflection_lists_the_contract() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(app.channel().await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        // Clients such as grpcurl decode error details through reflection.
        MessageRequest::FileContainingSymbol("google.rpc.ErrorInfo".into()),
    ]
    .map(|message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    });
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(names.contains(service), "{service} missing from {names:?}");
    }
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
        panic!(
            "google.rpc.ErrorInfo is not known to reflection: {:?}",
            response.message_response
        );
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn unknown_routes_and_methods_get_clear_answers() {
    let app = spawn_app().await;
    let missing = app.http.get(app.url("/v9/nothing")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        missing.json::<serde_json::Value>().await.unwrap()["code"],
        "NOT_FOUND"
    );
    let wrong_method = app.http.put(app.url("/v1/links")).send().await.unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers()["allow"], "POST");
    let body: serde_json::Value = wrong_method.json().await.unwrap();
    assert_eq!(body["code"], "METHOD_NOT_ALLOWED", "{body}");
    assert!(body["error"].as_str().unwrap().contains("Allow"), "{body}");

    // The proxy forwards the methods providers take, no others.
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let trace = app
        .http
        .request(
            reqwest::Method::TRACE,
            app.url("/v2/connections/conn_x/proxy/accounts"),
        )
        .bearer_auth(&tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(trace.status(), StatusCode::METHOD_NOT_ALLOWED);
    let allowed = trace.headers()["allow"].to_str().unwrap().to_string();
    for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        assert!(allowed.split(',').any(|m| m == method), "{allowed}");
    }
    assert_eq!(
        trace.json::<serde_json::Value>().await.unwrap()["code"],
        "METHOD_NOT_ALLOWED"
    );

    // A form of another media type is refused in the one error shape.
    let not_a_form = app
        .http
        .post(app.url("/v3/oauth/resume"))
        .header("content-type", "text/plain")
        .body("REF=lft_x")
        .send()
        .await
        .unwrap();
    assert_eq!(not_a_form.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        not_a_form.json::<serde_json::Value>().await.unwrap()["code"],
        "UNSUPPORTED_MEDIA_TYPE"
    );
}

/// schemathesis (PyPI) generates requests from the served OpenAPI document
/// and sends them to a live linkd: no answer may be a 5xx, or break the
/// document (status, media type, headers, schema), or take a method or skip
/// authentication the document does not allow, and every request the
/// document allows must be accepted (not a 400), except where
/// `tests/schemathesis.toml` names a rule the schemas cannot state.
#[tokio::test]
async fn schemathesis_finds_nothing_against_the_served_document() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let document = app.url("/openapi.json");
    let report = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    let auth = format!("Authorization: Bearer {}", tenant.key);
    let out = tokio::task::spawn_blocking(move || {
        python_tool("schemathesis")
            // Its cache (`.schemathesis/`) goes under target/, not the tree.
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .arg("--config-file")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/schemathesis.toml"
            ))
            .args(["run", &document, "-H", &auth])
            .args(["--checks", "all"])
            // The same cases on every run, so a failure here reproduces.
            .args(["--seed", "1", "--max-examples", "25", "--no-color"])
            .arg("--report-dir")
            .arg(&report)
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really ran every operation (but the document's own, which
    // schemathesis leaves out).
    let operations = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| *path != "/openapi.json")
        .map(|(_, item)| item.as_object().unwrap().len())
        .sum::<usize>();
    assert!(
        stdout.contains(&format!("Tested: {operations}")),
        "expected {operations} operations tested:\n{stdout}"
    );
}

#[tokio::test]
async fn oversized_requests_are_refused_on_both_surfaces() {
    let app = spawn_app().await; // cap: 64 KiB
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let big = "x".repeat(100 * 1024);

    let rest = app
        .http
        .post(app.url("/v2/link/init"))
        .bearer_auth(&tenant.key)
        .header("content-type", "application/json")
        .body(format!("{{\"clientReferenceId\":\"{big}\"}}"))
        .send()
        .await;
    // Refused from its Content-Length, before the body is read.
    let response = rest.expect("the server answers an oversized body");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "PAYLOAD_TOO_LARGE", "{body}");

    let mut links = pb::link_service_client::LinkServiceClient::new(app.channel().await);
    let status = links
        .init_link_session(with_key(
            pb::InitLinkSessionRequest {
                client_reference_id: Some(big),
                ..Default::default()
            },
            &tenant.key,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
}

/// `/metrics` says which linkd runs and how its database pool stands.
#[tokio::test]
async fn metrics_carry_the_build_and_the_database_pool() {
    let app = crate::helpers::spawn_app().await;
    let exposition = app.metrics().await;
    assert!(
        exposition.contains(&format!(
            "linkd_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{exposition}"
    );
    assert!(
        exposition.contains("linkd_db_pool_max_connections 10"),
        "{exposition}"
    );
    let in_use = exposition
        .lines()
        .find_map(|l| l.strip_prefix("linkd_db_pool_connections{state=\"in_use\"} "))
        .unwrap_or_else(|| panic!("no in-use gauge in {exposition}"));
    let idle = exposition
        .lines()
        .find_map(|l| l.strip_prefix("linkd_db_pool_connections{state=\"idle\"} "))
        .unwrap_or_else(|| panic!("no idle gauge in {exposition}"));
    let open: i64 = in_use.parse::<i64>().unwrap() + idle.parse::<i64>().unwrap();
    assert!(
        (1..=10).contains(&open),
        "the readiness probe opened some: {exposition}"
    );
}

/// The background jobs report each pass, the rows it touched and when it
/// last succeeded; the process reports its CPU, memory and descriptors.
#[tokio::test]
async fn metrics_show_what_the_jobs_did_and_the_process_uses() {
    let app = crate::helpers::spawn_app_with(|args| {
        args.link_session_ttl = std::time::Duration::from_secs(1);
    })
    .await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    for _ in 0..2 {
        let session = app.init_session(&tenant, serde_json::json!({})).await;
        assert_eq!(session.status(), StatusCode::OK);
    }
    let started = std::time::Instant::now();
    let value = |exposition: &str, series: &str| -> Option<f64> {
        exposition
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    };
    // The sweep runs every 300 ms here; the sessions end after 1 s.
    let exposition = loop {
        let exposition = app.metrics().await;
        if value(
            &exposition,
            r#"linkd_job_rows_total{job="expire_sessions"}"#,
        ) == Some(2.0)
        {
            break exposition;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{exposition}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for job in [
        "expire_links",
        "expire_sessions",
        "prune_events",
        "prune_idempotency_keys",
    ] {
        let runs = value(
            &exposition,
            &format!("linkd_job_runs_total{{job=\"{job}\"}}"),
        );
        assert!(runs.is_some_and(|n| n >= 1.0), "{job}: {exposition}");
        let last = value(
            &exposition,
            &format!("linkd_job_last_success_timestamp_seconds{{job=\"{job}\"}}"),
        )
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - last).abs() < 60.0, "{job}: {last} vs {now}");
    }
    assert_eq!(
        value(&exposition, r#"linkd_job_rows_total{job="expire_links"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(
            &exposition,
            r#"linkd_job_failures_total{job="expire_sessions"}"#
        ),
        None,
        "no failure, no series"
    );
    // The test process is this replica's process.
    assert!(value(&exposition, "process_cpu_seconds_total").is_some_and(|s| s > 0.0));
    assert!(value(&exposition, "process_resident_memory_bytes").is_some_and(|b| b > 1e6));
    assert!(value(&exposition, "process_open_fds").is_some_and(|n| n >= 3.0));
    assert!(value(&exposition, "process_max_fds").is_some_and(|n| n >= 64.0));
    assert!(value(&exposition, "process_threads").is_some_and(|n| n >= 1.0));
    let start = value(&exposition, "process_start_time_seconds").unwrap();
    assert!(start > 1.7e9, "{start}");
}

/// Every API call is counted by surface, service, method and code, with its
/// latency; labels are route templates, never raw paths or unknown names.
#[tokio::test]
async fn metrics_count_every_call_by_surface_method_and_code() {
    let app = spawn_app().await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let mut apps = pb::client_app_service_client::ClientAppServiceClient::new(app.channel().await);
    for _ in 0..2 {
        apps.list_client_apps(with_key(pb::ListClientAppsRequest {}, &tenant.key))
            .await
            .unwrap();
    }
    let anonymous = apps
        .list_client_apps(pb::ListClientAppsRequest {})
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert_eq!(
        app.get("/v1/client-apps", &tenant.key).await.status(),
        StatusCode::OK
    );
    for id in ["link_one", "link_two"] {
        let missing = app.get(&format!("/v1/links/{id}"), &tenant.key).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
    let nowhere = app.get("/v1/no-such-route", &tenant.key).await;
    assert_eq!(nowhere.status(), StatusCode::NOT_FOUND);
    let _ = app.http.get(app.url("/healthz")).send().await.unwrap();

    let exposition = app.metrics().await;
    let value = |series: &str| -> Option<f64> {
        exposition
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    };
    let grpc = r#"surface="grpc",service="linkd.v1.ClientAppService",method="ListClientApps""#;
    assert_eq!(
        value(&format!("linkd_requests_total{{{grpc},code=\"OK\"}}")),
        Some(2.0),
        "{exposition}"
    );
    assert_eq!(
        value(&format!(
            "linkd_requests_total{{{grpc},code=\"UNAUTHENTICATED\"}}"
        )),
        Some(1.0),
        "{exposition}"
    );
    assert_eq!(
        value(&format!("linkd_request_duration_seconds_count{{{grpc}}}")),
        Some(3.0),
        "{exposition}"
    );
    assert_eq!(
        value(
            r#"linkd_requests_total{surface="rest",service="/v1/client-apps",method="GET",code="200"}"#
        ),
        Some(1.0),
        "{exposition}"
    );
    // Both ids are one series: the route's template.
    assert_eq!(
        value(
            r#"linkd_requests_total{surface="rest",service="/v1/links/{link_id}",method="GET",code="404"}"#
        ),
        Some(2.0),
        "{exposition}"
    );
    assert_eq!(
        value(
            r#"linkd_requests_total{surface="rest",service="unmatched",method="GET",code="404"}"#
        ),
        Some(1.0),
        "{exposition}"
    );
    assert!(
        !exposition.contains("link_one") && !exposition.contains("no-such-route"),
        "{exposition}"
    );
    assert!(
        !exposition.contains("/healthz"),
        "probes are not API calls: {exposition}"
    );
    // Nothing is being served while /metrics answers.
    assert_eq!(
        value(r#"linkd_requests_in_flight{surface="grpc"}"#),
        Some(0.0),
        "{exposition}"
    );
    assert_eq!(
        value(r#"linkd_requests_in_flight{surface="rest"}"#),
        Some(0.0),
        "{exposition}"
    );
}

/// `/openapi.json` is the committed `openapi.json`: a route added or changed
/// without regenerating it (`cargo run -- openapi > openapi.json`) fails here.
#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served = response.text().await.unwrap();
    let committed = include_str!("../../openapi.json");
    assert!(
        served == committed,
        "openapi.json is out of date: run `cargo run -- openapi > openapi.json`"
    );
    let document: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    // What integrators generate clients from: the documented routes with
    // the RPC names as operation ids, and the one error shape.
    let paths = document["paths"].as_object().unwrap();
    assert_eq!(
        paths["/v2/link/init"]["post"]["operationId"],
        "InitLinkSession"
    );
    assert_eq!(
        paths["/v2/connections/{connection_id}"]["delete"]["responses"]["default"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/Error"
    );
    let codes = &document["components"]["schemas"]["ErrorCode"]["enum"];
    assert!(
        codes.as_array().unwrap().contains(&"FLOW_FINISHED".into()),
        "{codes}"
    );
    // Every documented path answers something other than "no such route".
    for path in paths.keys().filter(|p| !p.contains('{')) {
        let methods = paths[path].as_object().unwrap();
        let method = if methods.contains_key("get") {
            "GET"
        } else {
            "POST"
        };
        let answer = app
            .http
            .request(method.parse().unwrap(), app.url(path))
            .send()
            .await
            .unwrap();
        let body = answer.text().await.unwrap_or_default();
        assert!(
            !body.contains("\"code\":\"NOT_FOUND\""),
            "{method} {path}: {body}"
        );
    }
}

/// Answers of real calls fit the schemas the document gives them.
#[tokio::test]
async fn real_answers_fit_the_documented_schemas() {
    let app = spawn_app().await;
    // The served document is this one (checked above).
    let document: serde_json::Value =
        serde_json::from_str(include_str!("../../openapi.json")).unwrap();
    let fits = |schema: &str, answer: &serde_json::Value| {
        let root = serde_json::json!({
            "$ref": format!("#/components/schemas/{schema}"),
            "components": document["components"],
        });
        let validator = jsonschema::validator_for(&root).expect("the document's schemas compile");
        let problems: Vec<String> = validator
            .iter_errors(answer)
            .map(|e| e.to_string())
            .collect();
        assert!(problems.is_empty(), "{schema}: {problems:?} in {answer}");
    };
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let session = app.init_session(&tenant, serde_json::json!({})).await;
    assert_eq!(session.status(), StatusCode::OK);
    fits("LinkSession", &session.json().await.unwrap());
    let invalid = app
        .init_session(&tenant, serde_json::json!({"lang": 7, "nope": 1}))
        .await;
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    fits("Error", &invalid.json().await.unwrap());
    for (schema, path) in [
        ("ConnectionPage", "/v2/connections"),
        ("ClientAppList", "/v1/client-apps"),
        ("ProviderList", "/v1/providers"),
    ] {
        fits(
            schema,
            &app.get(path, &tenant.key).await.json().await.unwrap(),
        );
    }
    let created = app
        .create_link(
            &tenant,
            serde_json::json!({
                "integrationId": "tmobile",
                "operations": [{"resource": "paymentMethod", "action": "read"}],
                "returnUrl": "https://app.example.com/back",
                "debug": true,
            }),
        )
        .await;
    fits("CreatedLink", &created);
    fits("Link", &app.link_json(&tenant, &created).await);
    let refused = app.get("/v2/connections", "").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    fits("Error", &refused.json().await.unwrap());
}

/// A saturated pool shows on `/metrics`: calls waiting for a connection,
/// how long they waited, and the waits that gave up (each a `503`).
#[tokio::test]
async fn metrics_show_calls_waiting_for_a_pooled_connection() {
    let app = crate::helpers::spawn_app_on(
        &crate::helpers::fresh_database().await,
        std::time::Duration::from_secs(1),
    )
    .await;
    let tenant = app.create_tenant(Environment::Sandbox).await;
    let value = crate::webhooks::metric;
    let before = app.metrics().await;
    assert_eq!(value(&before, "linkd_db_pool_acquire_timeouts_total"), 0.0);
    let waits_before = value(&before, "linkd_db_pool_acquire_seconds_count");
    assert!(waits_before >= 1.0, "set-up used the pool: {before}");

    let held = app.hold_every_pooled_connection().await;
    let waiting = app.spawn_get("/v1/client-apps", &tenant.key);
    let started = std::time::Instant::now();
    loop {
        let now = app.metrics().await;
        if value(&now, "linkd_db_pool_waiting") >= 1.0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(waiting.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    drop(held);

    // The background sweeps may have waited (and given up) beside the call.
    let started = std::time::Instant::now();
    let after = loop {
        let now = app.metrics().await;
        if value(&now, "linkd_db_pool_waiting") == 0.0 {
            break now;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(value(&after, "linkd_db_pool_acquire_timeouts_total") >= 1.0);
    assert!(value(&after, "linkd_db_pool_acquire_seconds_count") > waits_before);
    // The wait that timed out is in the ~1 s bucket, not below 0.7 s.
    let quick = value(
        &after,
        "linkd_db_pool_acquire_seconds_bucket{le=\"0.6561\"}",
    );
    assert!(
        value(&after, "linkd_db_pool_acquire_seconds_count") > quick,
        "{after}"
    );
    app.stop().await;
}
