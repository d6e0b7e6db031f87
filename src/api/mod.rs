//! The transports: the gRPC services, the REST shim with its documented
//! shapes, the Link page, health, and the input gate in front of them all.
//! Adapters authenticate, convert and call a concern's service; the rules
//! live in the concerns.

pub mod gate;
pub mod grpc;
pub mod health;
pub mod metrics;
pub mod rest;
pub mod services;
pub mod throttle;
pub mod web;

/// Which API a request path calls, if any: linkd's gRPC services, or the
/// REST API (the brand logo, stored in the database, counts). Health,
/// reflection, `/metrics`, `/openapi.json` and the Link page's files are
/// not the API: they are neither counted as calls nor refused while the
/// database is down. A new top-level REST prefix belongs here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiPath {
    Grpc,
    Rest,
}

pub(crate) fn api_path(path: &str) -> Option<ApiPath> {
    if path.starts_with("/linkd.") {
        Some(ApiPath::Grpc)
    } else if ["/v1/", "/v2/", "/v3/", "/link/brand/"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
    {
        Some(ApiPath::Rest)
    } else {
        None
    }
}
