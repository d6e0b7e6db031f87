//! Opaque keyset page tokens shared by the listing RPCs: where the next page
//! starts (after this `(created_at, id)`, newest first), bound to the
//! filters of the listing that issued it. Tampering can only move within
//! the caller's own rows.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Where a keyset page starts: after this (created_at, id), newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Token {
    /// created_at, microseconds since the epoch.
    t: i64,
    /// id, simple hex.
    i: String,
    /// Fingerprint of the filters.
    f: String,
}

fn fingerprint(filters: &str) -> String {
    Sha256::digest(filters.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A token continuing after `cursor`; `filters` is any stable rendering of
/// the listing's filters.
pub fn encode(cursor: Cursor, filters: &str) -> String {
    let token = Token {
        t: cursor.created_at.timestamp_micros(),
        i: cursor.id.simple().to_string(),
        f: fingerprint(filters),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).expect("serializable"))
}

/// The cursor of a token issued for the same `filters`, or why not.
pub fn decode(token: &str, filters: &str) -> Result<Cursor, &'static str> {
    let malformed = "is not a page token issued by this listing";
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed)?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|_| malformed)?;
    if token.f != fingerprint(filters) {
        return Err("belongs to a listing with other filters; repeat the same filters");
    }
    Ok(Cursor {
        created_at: DateTime::from_timestamp_micros(token.t).ok_or(malformed)?,
        id: Uuid::try_parse(&token.i).map_err(|_| malformed)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_stay_bound_to_their_filters() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        let token = encode(cursor, "active\u{0}ref-1");
        assert_eq!(decode(&token, "active\u{0}ref-1"), Ok(cursor));
        assert!(decode(&token, "expired\u{0}ref-1").is_err());
        assert!(decode("garbage", "").is_err());
    }
}
