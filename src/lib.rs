//! linkd: an account-linking service. See README.md for the architecture.

pub mod api;
pub mod auth;
pub mod catalog;
pub mod client_apps;
pub mod connections;
pub mod connectors;
pub mod events;
pub mod flows;
pub mod idempotency;
pub mod kernel;
pub mod links;
pub mod ops;
pub mod provider_oauth;
pub mod ratelimit;
pub mod sessions;
pub mod webhooks;

pub mod oauth;

/// Generated code of the public contract in `proto/linkd/v1`.
#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("linkd.v1");

    /// Encoded descriptors of the contract, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("linkd_descriptor");
}

/// The connector protocol (`proto/linkd/connector/v1`): linkd's client side.
// The protos' comments wrap list items the way proto style guides do.
#[allow(clippy::doc_lazy_continuation)]
pub mod connector_pb {
    tonic::include_proto!("linkd.connector.v1");
}
