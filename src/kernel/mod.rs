//! What every concern shares and nothing else owns: the error table, typed
//! ids, the tenant, encryption, the database pool, validation, paging, time
//! and the JSON renderings REST and webhooks share. The kernel imports no
//! concern (`tests/architecture.rs` checks).

pub mod crypto;
pub mod db;
pub mod error;
pub mod ids;
pub mod lang;
pub mod names;
pub mod paging;
pub mod proto_json;
pub mod ssrf;
pub mod tenant;
pub mod time;
pub mod validate;
pub mod views;
