//! linkd: an account-linking service. See README.md for the architecture.

pub mod api;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod client_apps;
pub mod connections;
pub mod connectors;
pub mod domain;
pub mod events;
pub mod flow;
pub mod kernel;
pub mod ops;
pub mod webhooks;

pub mod oauth;
pub mod store;

/// Generated code of the public contract in `proto/linkd/v1`.
#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("linkd.v1");

    /// Encoded descriptors of the contract, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("linkd_descriptor");
}
