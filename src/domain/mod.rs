//! Domain rules as plain types and functions: no tonic, no axum, no SQL.

pub mod card;
pub mod client_app;
pub mod link;
pub mod oauth;
pub mod session;

use crate::pb;

/// What an operation does to its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Read,
    Write,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Action::Read),
            "write" => Some(Action::Write),
            _ => None,
        }
    }

    pub fn to_proto(self) -> pb::OperationAction {
        match self {
            Action::Read => pb::OperationAction::Read,
            Action::Write => pb::OperationAction::Write,
        }
    }
}
