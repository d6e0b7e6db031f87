//! Public identifiers and secret tokens.
//!
//! Ids are a type prefix plus a UUIDv7 (`app_0190…`): opaque to clients,
//! time-ordered for indexes. Secret tokens (API keys, claim codes, flow
//! tokens) carry 256 random bits and are stored only as SHA-256 hashes; with
//! that much entropy a slow password hash buys nothing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The kinds of public id, each with its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Organization,
    ClientApp,
    ApiKey,
    Link,
    Connection,
    Event,
}

impl IdKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            IdKind::Organization => "org_",
            IdKind::ClientApp => "app_",
            IdKind::ApiKey => "key_",
            IdKind::Link => "link_",
            IdKind::Connection => "conn_",
            IdKind::Event => "evt_",
        }
    }

    /// A fresh time-ordered UUID for a new row of this kind.
    pub fn new_uuid(self) -> Uuid {
        Uuid::now_v7()
    }

    /// Renders a row id as its public form.
    pub fn format(self, id: Uuid) -> String {
        format!("{}{}", self.prefix(), id.simple())
    }

    /// Parses a public id; `None` when the prefix or the UUID part is wrong.
    pub fn parse(self, public: &str) -> Option<Uuid> {
        let rest = public.strip_prefix(self.prefix())?;
        if rest.len() != 32 {
            return None;
        }
        Uuid::try_parse(rest).ok()
    }

    /// Reads an id given to look something up: `None` only when the prefix
    /// is wrong. An id with the right prefix that linkd never issued reads
    /// as the nil UUID, which names no row (ids are UUIDv7), so it is not
    /// found exactly like an unknown one.
    pub fn parse_reference(self, public: &str) -> Option<Uuid> {
        if !public.starts_with(self.prefix()) {
            return None;
        }
        Some(self.parse(public).unwrap_or(Uuid::nil()))
    }
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

/// Parses a public id given in a request to look something up, or fails
/// naming the field when it is missing or has the wrong prefix. A
/// malformed id with the right prefix is then not found, like an unknown
/// one (see [`IdKind::parse_reference`]).
pub fn parse_id(
    kind: IdKind,
    field: &str,
    value: &str,
) -> crate::kernel::error::Result<uuid::Uuid> {
    if value.is_empty() {
        return Err(crate::kernel::error::Error::invalid(field, "is required"));
    }
    kind.parse_reference(value).ok_or_else(|| {
        crate::kernel::error::Error::invalid(
            field,
            format!("must be an id starting with `{}`", kind.prefix()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_kinds() {
        let id = IdKind::ClientApp.new_uuid();
        let public = IdKind::ClientApp.format(id);
        assert!(public.starts_with("app_"));
        assert_eq!(IdKind::ClientApp.parse(&public), Some(id));
        assert_eq!(IdKind::Connection.parse(&public), None);
        assert_eq!(IdKind::ClientApp.parse("app_nothex"), None);
        assert_eq!(IdKind::ClientApp.parse(&format!("{public}0")), None);
        assert_eq!(IdKind::ClientApp.parse_reference(&public), Some(id));
        assert_eq!(
            IdKind::ClientApp.parse_reference("app_doesnotexist"),
            Some(Uuid::nil())
        );
        assert_eq!(IdKind::ClientApp.parse_reference("conn_x"), None);
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
