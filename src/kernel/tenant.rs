//! Whose data a request touches: an organization in one environment.

use crate::pb;

/// The environment an API key, a client app and everything they create
/// belong to. Keys of one environment never see data of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Sandbox,
    Production,
}

impl Environment {
    pub const fn as_str(self) -> &'static str {
        match self {
            Environment::Sandbox => "sandbox",
            Environment::Production => "production",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sandbox" => Some(Environment::Sandbox),
            "production" => Some(Environment::Production),
            _ => None,
        }
    }

    pub fn to_proto(self) -> pb::Environment {
        match self {
            Environment::Sandbox => pb::Environment::Sandbox,
            Environment::Production => pb::Environment::Production,
        }
    }
}

impl std::fmt::Display for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose data a request may touch: every store query is scoped to one
/// organization and one environment, taken from the caller's API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenant {
    pub organization_id: uuid::Uuid,
    pub environment: Environment,
}
