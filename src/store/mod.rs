//! Queries not yet moved into their concern's `store.rs`.

pub mod connections;

pub mod idempotency;
pub mod links;
