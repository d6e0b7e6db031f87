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

/// Stored as its name in `text` columns (a `CHECK` keeps them to these):
/// rows decode straight into the enum, and an unknown name is an error
/// rather than a guess.
impl sqlx::Type<sqlx::Postgres> for Environment {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Environment {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let name = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Environment::parse(name).ok_or_else(|| format!("unknown environment {name:?}").into())
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for Environment {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
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
