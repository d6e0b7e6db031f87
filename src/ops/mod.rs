//! Running linkd: configuration, start-up wiring, the server and its
//! shutdown, background jobs, telemetry, the operator CLI and the local
//! Postgres. Ops wires every concern and the API together; nothing imports it
//! but `main`.

pub mod admin;
pub mod config;
pub mod jobs;
pub mod local_postgres;
pub mod server;
pub mod startup;
pub mod telemetry;
