//! Public identifiers and secret tokens.
//!
//! A public id is a type prefix plus a UUIDv7 (`app_0190…`): opaque to
//! clients, time-ordered for indexes. Each kind is its own Rust type
//! (`LinkId`, `ConnectionId`, …), parsed once where it enters and stored as
//! the bare UUID, so a connection id can never be passed where a link id
//! belongs. Secret tokens (API keys, claim codes, flow tokens) carry 256
//! random bits and are stored only as SHA-256 hashes; with that much
//! entropy a slow password hash buys nothing.

use crate::kernel::error::{Error, Result};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Declares one id type per kind: a `Copy` newtype over the row's UUID,
/// stored as `uuid` (`sqlx(transparent)`), shown and serialized in its
/// public form when it has a prefix.
macro_rules! ids {
    ($( $(#[$doc:meta])* $name:ident $(= $prefix:literal)? ; )*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
        #[sqlx(transparent)]
        pub struct $name(Uuid);

        // A fresh id is not a default value of the type.
        #[allow(clippy::new_without_default)]
        impl $name {
            /// A fresh time-ordered id for a new row.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The id of a stored row, as read back from somewhere that
            /// keeps only the UUID (a page cursor).
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            pub const fn uuid(self) -> Uuid {
                self.0
            }
        }

        $(ids!(@public $name $prefix);)?
    )*};
    (@public $name:ident $prefix:literal) => {
        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Parses a public id; `None` when the prefix or the UUID part
            /// is wrong.
            pub fn parse(public: &str) -> Option<Self> {
                parse_public(Self::PREFIX, public).map(Self)
            }

            /// Reads an id given to look something up: `None` only when the
            /// prefix is wrong. An id with the right prefix that linkd never
            /// issued reads as the nil UUID, which names no row (ids are
            /// UUIDv7), so it is not found exactly like an unknown one.
            pub fn parse_reference(public: &str) -> Option<Self> {
                public
                    .starts_with(Self::PREFIX)
                    .then(|| Self::parse(public).unwrap_or(Self(Uuid::nil())))
            }

            /// The id a request names in `field` to look something up, or
            /// an error naming the field when it is missing or has the
            /// wrong prefix. A malformed id with the right prefix is then
            /// not found, like an unknown one.
            pub fn from_request(field: &str, value: &str) -> Result<Self> {
                if value.is_empty() {
                    return Err(Error::invalid(field, "is required"));
                }
                Self::parse_reference(value).ok_or_else(|| {
                    Error::invalid(field, format!("must be an id starting with `{}`", Self::PREFIX))
                })
            }
        }

        impl PublicId for $name {
            const PREFIX: &'static str = $prefix;

            fn parse_reference(public: &str) -> Option<Self> {
                $name::parse_reference(public)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}{}", Self::PREFIX, self.0.simple())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let public = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                Self::parse(&public).ok_or_else(|| {
                    serde::de::Error::custom(concat!("not an id starting with `", $prefix, "`"))
                })
            }
        }

        /// The public form in the OpenAPI document: the prefix and 32
        /// lowercase hex digits.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(concat!("^", $prefix, "[0-9a-f]{32}$")))
                    .description(Some(concat!("`", $prefix, "…`")))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

ids! {
    /// An organization: the tenant every client app, key and connection
    /// belongs to (`org_…`).
    OrganizationId = "org_";
    /// A client app (`app_…`); also its OAuth `client_id`.
    ClientAppId = "app_";
    /// An API key (`key_…`); the id is public, the secret is not.
    ApiKeyId = "key_";
    /// A link intent (`link_…`).
    LinkId = "link_";
    /// A connection (`conn_…`).
    ConnectionId = "conn_";
    /// An event (`evt_…`), also the webhook message id.
    EventId = "evt_";
    /// One recorded Access API call (`opr_…`).
    OperationRunId = "opr_";
    /// An end-user flow behind a Link page; never shown to clients.
    FlowId;
    /// One login attempt of a flow; never shown to clients.
    AttemptId;
}

/// What code generic over the kind of a public id needs (a filter that
/// takes any kind).
pub trait PublicId: Sized {
    const PREFIX: &'static str;
    fn parse_reference(public: &str) -> Option<Self>;
}

fn parse_public(prefix: &str, public: &str) -> Option<Uuid> {
    let rest = public.strip_prefix(prefix)?;
    if rest.len() != 32 {
        return None;
    }
    Uuid::try_parse(rest).ok()
}

/// 32 random bytes from the OS-seeded CSPRNG, base64url without padding.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `len` random bytes, hex-encoded.
pub fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The stored form of a secret token.
pub fn token_hash(token: impl AsRef<[u8]>) -> Vec<u8> {
    Sha256::digest(token.as_ref()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_kinds() {
        let id = ClientAppId::new();
        let public = id.to_string();
        assert!(public.starts_with("app_"));
        assert_eq!(ClientAppId::parse(&public), Some(id));
        assert_eq!(ConnectionId::parse(&public), None);
        assert_eq!(ClientAppId::parse("app_nothex"), None);
        assert_eq!(ClientAppId::parse(&format!("{public}0")), None);
        assert_eq!(ClientAppId::parse_reference(&public), Some(id));
        assert_eq!(
            ClientAppId::parse_reference("app_doesnotexist"),
            Some(ClientAppId::from_uuid(Uuid::nil()))
        );
        assert_eq!(ClientAppId::parse_reference("conn_x"), None);
        assert_eq!(serde_json::to_value(id).unwrap(), serde_json::json!(public));
    }

    #[test]
    fn request_ids_name_the_field_when_missing_or_of_another_kind() {
        let violation = |value: &str| match LinkId::from_request("linkId", value) {
            Err(Error::Validation(v)) => (v[0].path.clone(), v[0].message.clone()),
            other => panic!("{value:?} gave {other:?}"),
        };
        assert_eq!(violation(""), ("linkId".into(), "is required".into()));
        assert_eq!(
            violation("conn_0190"),
            (
                "linkId".into(),
                "must be an id starting with `link_`".into()
            )
        );
        assert!(LinkId::from_request("linkId", "link_unknown").is_ok());
    }
    #[test]
    fn tokens_are_distinct_and_hashes_stable() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_ne!(token_hash(&a), token_hash(&b));
        // SHA-256, checked against the FIPS 180-2 test vector.
        assert_eq!(
            hex::encode(token_hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
