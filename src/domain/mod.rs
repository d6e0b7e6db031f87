//! Domain rules as plain types and functions: no tonic, no axum, no SQL.

pub mod link;
pub mod oauth;
pub mod session;
