//! The `google.api.http` annotations of the contract against the REST linkd
//! serves (the OpenAPI document, itself checked against the served one):
//! every binding names a route served with that method, and every served
//! API route is an annotated RPC or one of the few routes that exist only
//! for browsers, each listed here with why.

use prost_reflect::{DescriptorPool, DynamicMessage, Value};
use std::collections::BTreeSet;

/// Served routes no RPC stands for.
const REST_ONLY: &[(&str, &str, &str)] = &[
    (
        "POST",
        "/v3/oauth/resume",
        "the Link page's form post back into an OAuth authorization",
    ),
    (
        "GET",
        "/link/oauth/callback",
        "where providers redirect the end user's browser",
    ),
    (
        "GET",
        "/link/brand/{client_app_id}/logo",
        "the logo image the Link page shows",
    ),
    (
        "GET",
        "/.well-known/oauth-authorization-server",
        "RFC 8414 metadata: OAuth clients discover the REST endpoints by it",
    ),
];

/// Routes that are not the API: probes, scrapes, the document itself.
const NOT_API: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// `{path=**}` is `{path}` in OpenAPI.
fn template(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').unwrap() + open;
        let name = rest[open + 1..close].split('=').next().unwrap();
        out.push_str(&format!("{{{name}}}"));
        rest = &rest[close + 1..];
    }
    out + rest
}

/// (RPC, METHOD, path) of every binding, additional bindings included; a
/// custom `*` binding is every method.
fn annotated() -> Vec<(String, String, String)> {
    let pool = DescriptorPool::decode(linkd::pb::FILE_DESCRIPTOR_SET).unwrap();
    let http = pool
        .get_extension_by_name("google.api.http")
        .expect("the descriptors carry google/api/annotations.proto");
    let mut bindings = Vec::new();
    for service in pool.services().filter(|s| s.package_name() == "linkd.v1") {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http) {
                continue;
            }
            let rule = options.get_extension(&http);
            let Value::Message(rule) = rule.as_ref() else {
                panic!("{}: not an HttpRule", method.full_name());
            };
            let mut rules = vec![rule.clone()];
            if let Some(Value::List(more)) = rule
                .get_field_by_name("additional_bindings")
                .map(|v| v.into_owned())
            {
                rules.extend(more.into_iter().filter_map(|v| match v {
                    Value::Message(m) => Some(m),
                    _ => None,
                }));
            }
            for rule in rules {
                for (verb, path) in binding(&rule) {
                    bindings.push((method.full_name().to_owned(), verb, template(&path)));
                }
            }
        }
    }
    bindings
}

fn text(message: &DynamicMessage, field: &str) -> Option<String> {
    if !message.has_field_by_name(field) {
        return None;
    }
    match message.get_field_by_name(field)?.as_ref() {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn binding(rule: &DynamicMessage) -> Vec<(String, String)> {
    for verb in METHODS {
        if let Some(path) = text(rule, verb) {
            return vec![(verb.to_uppercase(), path)];
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(Value::Message(custom)) =
            rule.get_field_by_name("custom").map(|v| v.into_owned())
    {
        let path = text(&custom, "path").unwrap();
        return match text(&custom, "kind").as_deref() {
            Some("*") => METHODS
                .iter()
                .map(|verb| (verb.to_uppercase(), path.clone()))
                .collect(),
            Some(kind) => vec![(kind.to_uppercase(), path)],
            None => panic!("custom binding without a kind"),
        };
    }
    panic!("an HttpRule without a pattern: {rule:?}")
}

fn served() -> BTreeSet<(String, String)> {
    let document: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json")).unwrap(),
    )
    .unwrap();
    let mut routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for verb in METHODS {
            if item.get(verb).is_some() {
                routes.insert((verb.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

#[test]
fn every_http_annotation_names_a_served_route_and_every_api_route_has_one() {
    let served = served();
    let bindings = annotated();
    assert!(bindings.len() >= 30, "{bindings:?}");
    let mut covered = BTreeSet::new();
    for (rpc, verb, path) in &bindings {
        assert!(
            served.contains(&(verb.clone(), path.clone())),
            "{rpc} is annotated {verb} {path}, which linkd does not serve"
        );
        covered.insert((verb.clone(), path.clone()));
    }
    for (verb, path) in &served {
        if covered.contains(&(verb.clone(), path.clone())) || NOT_API.contains(&path.as_str()) {
            continue;
        }
        assert!(
            REST_ONLY.iter().any(|(v, p, _)| v == verb && p == path),
            "{verb} {path} is served but no RPC is annotated with it (annotate it, or list it as REST-only with why)"
        );
    }
    // And the REST-only list holds only what is served and not annotated.
    for (verb, path, why) in REST_ONLY {
        let route = (verb.to_string(), path.to_string());
        assert!(
            served.contains(&route),
            "{verb} {path} ({why}) is not served"
        );
        assert!(
            !covered.contains(&route),
            "{verb} {path} is annotated after all"
        );
    }
}
