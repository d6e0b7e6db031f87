//! Integration tests: the real server on a real socket, a real Postgres, real
//! gRPC and HTTP clients. One test binary, so one Postgres cluster per run.

mod access;
mod auth;
mod browser;
mod client_apps;
mod connections;
mod connectors;
mod deploy;
mod flow;
mod flow_races;
mod health;
mod helpers;
mod input_gate;
mod key_rotation;
mod latency;
mod links;
mod oauth;
mod oauth_clients;
mod oauth_grants;
mod oauth_proxy;
mod oauth_refresh;
mod oauth_server;
mod outage;
mod polyglot;
mod pooler;
mod process;
mod provider_oauth;
mod providers;
mod python_env;
mod rate_limits;
mod replicas;
mod sessions;
mod surface;
mod transcoding;
mod webhook_destinations;
mod webhooks;
