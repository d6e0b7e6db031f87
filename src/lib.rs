//! linkd: an account-linking service. See README.md for the architecture.

pub mod admin;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod connections;
pub mod connectors;
pub mod domain;
pub mod events;
pub mod flow;
pub mod gate;
pub mod grpc;
pub mod health;
pub mod jobs;
pub mod kernel;
pub mod views;
pub mod web;
pub mod webhooks;

pub mod local_postgres;
pub mod metrics;
pub mod oauth;
pub mod proto_json;
pub mod rest;
pub mod server;
pub mod startup;
pub mod store;
pub mod telemetry;

/// Generated code of the public contract in `proto/linkd/v1`.
#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("linkd.v1");

    /// Encoded descriptors of the contract, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("linkd_descriptor");
}
