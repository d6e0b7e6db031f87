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
pub mod web;
