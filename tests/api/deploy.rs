//! The deployment files (`Dockerfile`, `compose.yaml`, `deploy/k8s/`) held
//! against the linkd they deploy: the manifests pass `kubernetes-validate
//! --strict`, they hang together (selectors, ports, the Secret), every
//! setting they name is one linkd reads, the Deployment's own environment
//! starts linkd whose probes answer and whose shutdown fits the pod's grace
//! period, and the commands they run (migration Job, compose's admin line)
//! work. Building the image and `docker compose up` need a Docker engine,
//! which this machine has not.

use crate::helpers::{empty_database, fresh_database, install_crypto, test_key};
use crate::process::{linkd, spawn_linkd};
use crate::python_env::{python, python_tool};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("deploy/k8s"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests under deploy/k8s");
    files
}

/// Every document of the YAML files, as JSON (PyYAML, which the validator
/// brings, reads them; no second YAML parser in the tree).
fn yaml_documents(files: &[PathBuf]) -> Vec<Value> {
    let out = python()
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))",
        ])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/k8s"))
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    python_tool("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .args(files)
        .output()
        .unwrap()
}

#[test]
fn kubernetes_manifests_pass_strict_validation_and_a_misspelt_field_does_not() {
    let files = manifests();
    let out = validate(&files);
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            report
                .lines()
                .any(|line| line.contains(&name) && line.contains("passed")),
            "{name} was not validated: {report}"
        );
    }

    // The validator is strict: a typo in a probe is an error, not a probe
    // silently dropped by the API server.
    let broken = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deployment-typo.yaml");
    let deployment = std::fs::read_to_string(repo("deploy/k8s/deployment.yaml")).unwrap();
    assert!(deployment.contains("readinessProbe:"));
    std::fs::write(
        &broken,
        deployment.replace("readinessProbe:", "readinesProbe:"),
    )
    .unwrap();
    let out = validate(&[broken]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("readinesProbe"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The settings `linkd --help` and `linkd serve --help` list (`[env: NAME`).
fn settings_linkd_reads() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for args in [&["--help"][..], &["serve", "--help"]] {
        let out = linkd().args(args).output().unwrap();
        for part in String::from_utf8_lossy(&out.stdout).split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            names.insert(name);
        }
    }
    assert!(names.contains("DATABASE_URL") && names.contains("LINKD_LISTEN"));
    names
}

fn container(pod_owner: &Value) -> &Value {
    &pod_owner["spec"]["template"]["spec"]["containers"][0]
}

fn env_names(container: &Value) -> Vec<String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|var| var["name"].as_str().unwrap().to_owned())
        .collect()
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|var| var["name"] == name)
        .and_then(|var| var["value"].as_str())
        .unwrap_or_else(|| panic!("{name} not set in the container"))
}

/// `ENV` names of the Dockerfile's runtime stage.
fn dockerfile_env_names(dockerfile: &str) -> Vec<String> {
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    let joined = runtime.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|line| line.strip_prefix("ENV "))
        .flat_map(|vars| vars.split_whitespace())
        .filter_map(|pair| pair.split_once('=').map(|(name, _)| name.to_owned()))
        .collect()
}

#[test]
fn deployment_files_hang_together_and_name_only_settings_linkd_reads() {
    let known = settings_linkd_reads();
    let documents = yaml_documents(&manifests());
    let deployment = kind(&documents, "Deployment");
    let job = kind(&documents, "Job");
    let secret = kind(&documents, "Secret");
    let compose = &yaml_documents(&[repo("compose.yaml")])[0];
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).unwrap();

    let secret_keys: Vec<String> = secret["stringData"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut named: Vec<(String, String)> = Vec::new();
    for (source, names) in [
        ("Deployment", env_names(container(deployment))),
        ("Job", env_names(container(job))),
        ("Secret", secret_keys.clone()),
        (
            "compose.yaml",
            compose["services"]["linkd"]["environment"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect(),
        ),
        ("Dockerfile", dockerfile_env_names(&dockerfile)),
    ] {
        named.extend(names.into_iter().map(|name| (source.to_owned(), name)));
    }
    let unknown: Vec<_> = named
        .iter()
        .filter(|(_, name)| !known.contains(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "settings linkd does not read: {unknown:?}"
    );
    // The two secrets are in the Secret, not in plain env or the image.
    for secret_name in ["DATABASE_URL", "LINKD_ENCRYPTION_KEY"] {
        assert!(secret_keys.iter().any(|key| key == secret_name));
        assert!(
            !env_names(container(deployment))
                .iter()
                .any(|n| n == secret_name)
        );
        assert!(!dockerfile.contains(&format!("{secret_name}=")));
    }
    for owner in [deployment, job] {
        assert_eq!(
            container(owner)["envFrom"][0]["secretRef"]["name"],
            secret["metadata"]["name"]
        );
    }

    // Traffic reaches the pods: the Service, PDB and HPA point at them, and
    // not at the migration Job's pod.
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let job_labels = &job["spec"]["template"]["metadata"]["labels"];
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], *pod_labels);
    for (owner, selector) in [
        ("Service", &kind(&documents, "Service")["spec"]["selector"]),
        (
            "PodDisruptionBudget",
            &kind(&documents, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        ),
    ] {
        assert!(selects(selector, pod_labels), "{owner} misses the pods");
        assert!(
            !selects(selector, job_labels),
            "{owner} takes the Job's pod"
        );
    }
    let hpa = kind(&documents, "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );

    // One port, the one linkd listens on, in every file.
    let listen_port = |listen: &str| listen.rsplit(':').next().unwrap().parse::<u64>().unwrap();
    let port = listen_port(env_value(container(deployment), "LINKD_LISTEN"));
    let container_port = &container(deployment)["ports"][0];
    assert_eq!(container_port["containerPort"], port);
    let service_port = &kind(&documents, "Service")["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"], container_port["name"]);
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(
            container(deployment)[probe]["httpGet"]["port"],
            container_port["name"],
            "{probe}"
        );
    }
    let dockerfile_listen = dockerfile
        .split_whitespace()
        .find_map(|word| word.strip_prefix("LINKD_LISTEN="))
        .unwrap();
    assert_eq!(listen_port(dockerfile_listen), port);
    assert!(dockerfile.contains(&format!("EXPOSE {port}\n")));
    assert_eq!(
        compose["services"]["linkd"]["ports"][0],
        format!("{port}:{port}")
    );

    // Non-root everywhere, as the image's user.
    assert!(dockerfile.contains("USER 10001:10001"));
    for owner in [deployment, job] {
        let pod = &owner["spec"]["template"]["spec"]["securityContext"];
        assert_eq!(pod["runAsNonRoot"], true);
        assert_eq!(pod["runAsUser"], 10001);
    }
}

/// Whether a label selector (`matchLabels` form) picks pods with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().unwrap();
    !selector.is_empty() && selector.iter().all(|(k, v)| &labels[k] == v)
}

async fn status(http: &reqwest::Client, url: &str) -> Option<u16> {
    http.get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|response| response.status().as_u16())
}

fn seconds(setting: &str) -> Duration {
    humantime::parse_duration(setting).unwrap()
}

/// The Deployment's container environment (the Secret filled in with a test
/// database and key) starts linkd; every probe path answers 200; on SIGTERM
/// readiness fails while liveness holds, and linkd exits 0 well inside
/// `terminationGracePeriodSeconds`.
#[tokio::test]
async fn the_deployments_environment_serves_its_probes_and_drains_inside_its_grace_period() {
    let documents = yaml_documents(&manifests());
    let deployment = kind(&documents, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = container(deployment);

    let drain = seconds(env_value(container, "LINKD_SHUTDOWN_DRAIN_DELAY"));
    let grace = seconds(env_value(container, "LINKD_SHUTDOWN_GRACE_PERIOD"));
    let pod_grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    assert!(
        pod_grace > drain + grace,
        "the kubelet would kill linkd mid-drain: {pod_grace:?} <= {drain:?} + {grace:?}"
    );
    let probe_period = Duration::from_secs(
        container["readinessProbe"]["periodSeconds"]
            .as_u64()
            .unwrap(),
    );
    let failures = container["readinessProbe"]["failureThreshold"]
        .as_u64()
        .unwrap() as u32;
    assert!(
        drain >= probe_period * failures,
        "endpoints would still route here after the drain delay: {drain:?} < {probe_period:?} × {failures}"
    );

    let mut cmd = linkd();
    for var in container["env"].as_array().unwrap() {
        cmd.env(
            var["name"].as_str().unwrap(),
            var["value"].as_str().unwrap(),
        );
    }
    cmd.env("DATABASE_URL", fresh_database().await)
        .env("LINKD_ENCRYPTION_KEY", test_key().to_base64());
    let running = spawn_linkd(cmd); // on a free port instead of 8080
    install_crypto();
    let http = reqwest::Client::new();
    let url = |path: &Value| {
        format!(
            "http://127.0.0.1:{}{}",
            running.port,
            path.as_str().unwrap()
        )
    };
    let probe = |name: &str| url(&container[name]["httpGet"]["path"]);
    for name in ["startupProbe", "livenessProbe"] {
        assert_eq!(status(&http, &probe(name)).await, Some(200), "{name}");
    }
    // Ready once the first database probe has passed; the kubelet keeps
    // asking, and so does this test, for as long as the startup probe
    // would wait.
    let startup = &container["startupProbe"];
    let startup_budget = Duration::from_secs(
        startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap(),
    );
    let started = Instant::now();
    while status(&http, &probe("readinessProbe")).await != Some(200) {
        assert!(
            started.elapsed() < startup_budget,
            "never ready within {startup_budget:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let healthcheck = dockerfile
        .split_whitespace()
        .find_map(|word| word.strip_prefix("http://127.0.0.1:8080"))
        .expect("the Dockerfile's HEALTHCHECK URL");
    assert_eq!(
        status(&http, &url(&Value::from(healthcheck))).await,
        Some(200)
    );

    let stopped_at = Instant::now();
    running.sigterm();
    let mut readiness_failed = false;
    while stopped_at.elapsed() < drain {
        if status(&http, &probe("readinessProbe")).await == Some(503) {
            readiness_failed = true;
            // Draining is not dead: the kubelet must not restart it.
            assert_eq!(status(&http, &probe("livenessProbe")).await, Some(200));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        readiness_failed,
        "readiness did not fail during the drain delay"
    );
    let (exit, _) = tokio::task::spawn_blocking(move || running.wait())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        stopped_at.elapsed() < pod_grace,
        "linkd outlived the pod's grace period: {:?}",
        stopped_at.elapsed()
    );
}

/// The migration Job's command migrates an empty database (and again, as a
/// retried Job would); compose's admin line creates an app and prints a key.
#[tokio::test]
async fn the_migration_job_and_the_compose_admin_line_run() {
    let documents = yaml_documents(&manifests());
    let job = kind(&documents, "Job");
    let args: Vec<&str> = container(job)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    let db = empty_database().await;
    for attempt in 1..=2 {
        let out = linkd()
            .args(&args)
            .env("DATABASE_URL", &db)
            .env("LINKD_ENCRYPTION_KEY", test_key().to_base64())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "attempt {attempt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('links', 'connections', 'client_apps')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 3);

    let compose = std::fs::read_to_string(repo("compose.yaml")).unwrap();
    let admin_line = compose
        .lines()
        .find_map(|line| line.split_once("docker compose exec linkd linkd "))
        .map(|(_, args)| args)
        .expect("compose.yaml's admin line");
    let out = linkd()
        .args(admin_line.split_whitespace())
        .env("DATABASE_URL", &db)
        .env("LINKD_ENCRYPTION_KEY", test_key().to_base64())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("lk_sandbox_"), "{printed}");
}
