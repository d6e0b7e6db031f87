//! API keys: `lk_<environment>_<lookup id>_<secret>`.
//!
//! The lookup id finds the row; the secret (256 random bits) is stored only as
//! its SHA-256 hash and compared in constant time. A missing, malformed,
//! unknown or revoked key all produce the same `UNAUTHENTICATED`, with no
//! hint which.

pub mod store;

use crate::kernel::error::{Error, Result};
use crate::kernel::ids::{ApiKeyId, ConnectionId, random_hex, random_token, token_hash};
use crate::kernel::tenant::{Environment, Tenant};

use crate::kernel::db::Db;
use crate::ratelimit::RateLimiter;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgExecutor;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

const KEY_PREFIX: &str = "lk";

/// The authenticated caller of a tenant-scoped API.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub tenant: Tenant,
    /// Set for an OAuth access token: the one connection it may read.
    pub only_connection: Option<ConnectionId>,
}

/// A freshly created key: shown once, never stored in clear.
#[derive(Debug)]
pub struct IssuedKey {
    pub id: ApiKeyId,
    pub key: SecretString,
}

struct ParsedKey<'a> {
    environment: Environment,
    lookup_id: &'a str,
    secret: &'a str,
}

fn parse_key(key: &str) -> Option<ParsedKey<'_>> {
    let mut parts = key.splitn(4, '_');
    if parts.next()? != KEY_PREFIX {
        return None;
    }
    let environment = Environment::parse(parts.next()?)?;
    let lookup_id = parts.next()?;
    let secret = parts.next()?;
    (lookup_id.len() == 16 && !secret.is_empty()).then_some(ParsedKey {
        environment,
        lookup_id,
        secret,
    })
}

/// Creates and stores a key for `tenant`; returns the only copy of it.
pub async fn issue_key(db: impl PgExecutor<'_>, tenant: Tenant) -> Result<IssuedKey> {
    let id = ApiKeyId::new();
    let lookup_id = random_hex(8);
    let secret = random_token();
    store::insert_api_key(db, id, tenant, &lookup_id, &token_hash(&secret)).await?;
    let key = format!("{KEY_PREFIX}_{}_{lookup_id}_{secret}", tenant.environment);
    Ok(IssuedKey {
        id,
        key: SecretString::from(key),
    })
}

/// The key a request carries: `authorization: Bearer KEY` or `apikey: KEY`
/// (header or gRPC metadata).
pub fn presented_key(headers: &http::HeaderMap) -> Option<SecretString> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| SecretString::from(token.trim().to_string()));
    }
    let value = headers.get("apikey")?.to_str().ok()?;
    Some(SecretString::from(value.trim().to_string()))
}

/// Keys verified recently, so that a call costs no database round trip for
/// its key: each entry is trusted for `ttl` after the database confirmed it,
/// which bounds how long a revoked key keeps working on a replica. Only
/// successes are kept (a new key works at once); entries are keyed by the
/// SHA-256 of the whole presented key, never the key itself.
#[derive(Debug)]
struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Vec<u8>, (Verified, Instant)>>,
}

/// A key the database confirmed: whose it is, and its id (its rate limit's
/// bucket).
#[derive(Debug, Clone, Copy)]
struct Verified {
    caller: Caller,
    key_id: ApiKeyId,
}

/// Beyond this many distinct keys the cache starts over rather than grow.
const KEY_CACHE_CAPACITY: usize = 10_000;

impl KeyCache {
    fn new(ttl: Duration) -> Self {
        KeyCache {
            ttl,
            entries: Mutex::default(),
        }
    }

    fn get(&self, hash: &[u8]) -> Option<Verified> {
        let entries = self.entries.lock().expect("key cache lock");
        let (verified, verified_at) = entries.get(hash)?;
        (verified_at.elapsed() < self.ttl).then_some(*verified)
    }

    fn put(&self, hash: Vec<u8>, verified: Verified) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("key cache lock");
        if entries.len() >= KEY_CACHE_CAPACITY {
            entries.retain(|_, (_, verified_at)| verified_at.elapsed() < self.ttl);
            if entries.len() >= KEY_CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(hash, (verified, Instant::now()));
    }
}

/// Authenticates API keys: verifies them against the database, trusts one
/// verified within the cache's lifetime without it, and charges each call
/// to the key's rate limit.
#[derive(Debug, Clone)]
pub struct Authenticator {
    db: Db,
    cache: std::sync::Arc<KeyCache>,
    limits: RateLimiter,
}

impl Authenticator {
    /// `cache_ttl`: how long a verified key is trusted without the database
    /// (zero: never).
    pub fn new(db: Db, cache_ttl: Duration, limits: RateLimiter) -> Self {
        Authenticator {
            db,
            cache: std::sync::Arc::new(KeyCache::new(cache_ttl)),
            limits,
        }
    }

    /// The caller a presented key belongs to, or `UNAUTHENTICATED`; or
    /// `RESOURCE_EXHAUSTED` past the key's rate limit.
    pub async fn authenticate(&self, key: Option<&SecretString>) -> Result<Caller> {
        let key = key.ok_or(Error::Unauthenticated)?;
        let whole_key_hash = token_hash(key.expose_secret());
        let verified = match self.cache.get(&whole_key_hash) {
            Some(verified) => verified,
            None => {
                let verified = verify(&self.db, key).await?;
                self.cache.put(whole_key_hash, verified);
                verified
            }
        };
        self.limits.charge_api_key(verified.key_id).await?;
        Ok(verified.caller)
    }

    /// The rate limits every authenticated call is charged to.
    pub fn limits(&self) -> &RateLimiter {
        &self.limits
    }

    /// Whether `key` was verified recently enough to be trusted without the
    /// database.
    pub fn is_trusted(&self, key: &SecretString) -> bool {
        self.cache.get(&token_hash(key.expose_secret())).is_some()
    }
}

/// Checks a presented key against the database.
async fn verify(db: &Db, key: &SecretString) -> Result<Verified> {
    let parsed = parse_key(key.expose_secret()).ok_or(Error::Unauthenticated)?;
    let row = store::find_api_key(db, parsed.lookup_id).await?;
    let presented_hash = token_hash(parsed.secret);
    // Compare against a dummy hash when the row is missing so timing does not
    // reveal whether a lookup id exists.
    let stored_hash = row.as_ref().map_or(&[0u8; 32][..], |r| &r.secret_hash[..]);
    let hash_matches: bool = presented_hash.ct_eq(stored_hash).into();
    match row {
        Some(row)
            if hash_matches
                && row.revoked_at.is_none()
                && row.environment == parsed.environment.as_str() =>
        {
            Ok(Verified {
                caller: Caller {
                    tenant: Tenant {
                        organization_id: row.organization_id,
                        environment: parsed.environment,
                    },
                    only_connection: None,
                },
                key_id: row.id,
            })
        }
        _ => Err(Error::Unauthenticated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_format_parses_and_rejects_lookalikes() {
        let secret = random_token();
        let key = format!("lk_sandbox_{}_{secret}", "0123456789abcdef");
        let parsed = parse_key(&key).unwrap();
        assert_eq!(parsed.environment, Environment::Sandbox);
        assert_eq!(parsed.secret, secret);
        for bad in [
            "",
            "lk_sandbox_short_x",
            "sk_sandbox_0123456789abcdef_x",
            "lk_staging_0123456789abcdef_x",
            "lk_sandbox_0123456789abcdef_",
        ] {
            assert!(parse_key(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn both_documented_headers_are_accepted() {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(presented_key(&h).unwrap().expose_secret(), "abc");
        let mut h = http::HeaderMap::new();
        h.insert("apikey", "xyz".parse().unwrap());
        assert_eq!(presented_key(&h).unwrap().expose_secret(), "xyz");
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert!(presented_key(&h).is_none());
    }
}
