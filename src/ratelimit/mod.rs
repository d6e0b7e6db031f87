//! Rate limits: token buckets per API key, client app, Link flow and client
//! address.
//!
//! The API-key and client-app buckets are shared by every replica: they
//! live in Postgres ([`store`]) and each replica leases a chunk of tokens at
//! a time, spending it without a round trip. Leases never take more than a
//! bucket holds, so all replicas together admit at most `burst + rate × t`
//! calls in any `t`; a replica's unspent chunk (at most a tenth of the
//! bucket) lapses after [`LEASE_LIFETIME`]. A refused key is remembered
//! until its next token is due, so a caller hammering past its limit costs
//! the database nothing more.
//!
//! The flow and client-address buckets guard the calls that carry no API
//! key (the Link page's, the OAuth endpoints'); they are kept in each
//! replica's memory, because their whole point is that an unauthenticated
//! caller cannot make linkd touch Postgres at will.

pub mod store;

use crate::kernel::db::Db;
use crate::kernel::error::{Error, Result};
use crate::kernel::ids::{ApiKeyId, ClientAppId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a bucket counts calls of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    ApiKey,
    ClientApp,
    Flow,
    ClientIp,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::ApiKey => "api_key",
            Scope::ClientApp => "client_app",
            Scope::Flow => "flow",
            Scope::ClientIp => "client_ip",
        }
    }
}

/// A token bucket: `burst` tokens at most, `per_second` added each second;
/// a call takes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub per_second: f64,
    pub burst: u32,
}

impl Policy {
    /// The largest rate a policy may name (per second).
    pub const MAX_PER_SECOND: f64 = 1_000_000.0;
    /// The largest bucket.
    pub const MAX_BURST: u32 = 10_000_000;

    /// Reads `RATE/s` or `RATE/m`, optionally `,burst=N` (default: two
    /// seconds' worth, at least one): `100/s,burst=200`, `30/m`.
    pub fn parse(s: &str) -> std::result::Result<Policy, String> {
        let usage =
            "expected RATE/s or RATE/m with an optional ,burst=N (e.g. 100/s,burst=200), or off";
        let (rate, burst) = match s.split_once(',') {
            Some((rate, burst)) => {
                let burst = burst
                    .trim()
                    .strip_prefix("burst=")
                    .ok_or_else(|| format!("{s:?}: {usage}"))?;
                let burst: u32 = burst
                    .parse()
                    .map_err(|_| format!("{s:?}: burst must be a whole number"))?;
                (rate.trim(), Some(burst))
            }
            None => (s.trim(), None),
        };
        let (number, per) = rate
            .rsplit_once('/')
            .ok_or_else(|| format!("{s:?}: {usage}"))?;
        let seconds = match per {
            "s" => 1.0,
            "m" => 60.0,
            _ => return Err(format!("{s:?}: the rate is per s or per m; {usage}")),
        };
        let count: f64 = number
            .parse()
            .map_err(|_| format!("{s:?}: {number:?} is not a number; {usage}"))?;
        let per_second = count / seconds;
        if !(per_second > 0.0 && per_second <= Self::MAX_PER_SECOND) {
            return Err(format!(
                "{s:?}: the rate must be above 0 and at most {} per second",
                Self::MAX_PER_SECOND
            ));
        }
        let burst = burst.unwrap_or_else(|| (per_second * 2.0).ceil().max(1.0) as u32);
        if !(1..=Self::MAX_BURST).contains(&burst) {
            return Err(format!("{s:?}: burst must be 1 to {}", Self::MAX_BURST));
        }
        Ok(Policy { per_second, burst })
    }

    /// How long until `tokens` (< 1) grows to one token.
    fn wait_for_one(self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - tokens).max(0.0) / self.per_second).min(86_400.0))
    }

    /// Seconds a bucket takes to fill from empty: the window of the
    /// `RateLimit-Policy` header.
    pub fn window_seconds(self) -> u64 {
        (f64::from(self.burst) / self.per_second).ceil().max(1.0) as u64
    }
}

/// As [`Policy::parse`] reads it: per minute when that is a whole number
/// below one a second (`30/m,burst=1`), else per second.
impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per_minute = self.per_second * 60.0;
        if self.per_second < 1.0 && (per_minute - per_minute.round()).abs() < 1e-9 {
            write!(f, "{}/m,burst={}", per_minute.round(), self.burst)
        } else {
            write!(f, "{}/s,burst={}", self.per_second, self.burst)
        }
    }
}

/// The policies of a replica; `None` turns a scope off.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    pub api_key: Option<Policy>,
    /// The default of client apps without their own.
    pub client_app: Option<Policy>,
    pub flow: Option<Policy>,
    pub client_ip: Option<Policy>,
}

/// How much of one bucket a call left, for the `RateLimit` headers.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub scope: Scope,
    pub policy: Policy,
    /// Whole tokens left (an estimate for shared buckets: other replicas
    /// may be spending too).
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub full_in: Duration,
}

tokio::task_local! {
    /// The quotas the current request drew from, read by the transport
    /// after the handler to write the `RateLimit` headers.
    static DRAWN: Arc<Mutex<Vec<Quota>>>;
}

/// Runs `request`, collecting the quotas it draws from.
pub async fn collecting<F: std::future::Future>(request: F) -> (F::Output, Vec<Quota>) {
    let drawn = Arc::new(Mutex::new(Vec::new()));
    let output = DRAWN.scope(drawn.clone(), request).await;
    let quotas = std::mem::take(&mut *drawn.lock().expect("quota list lock"));
    (output, quotas)
}

fn note(quota: Quota) {
    let _ = DRAWN.try_with(|drawn| {
        let mut drawn = drawn.lock().expect("quota list lock");
        // One entry per scope: the last draw's.
        drawn.retain(|q| q.scope != quota.scope);
        drawn.push(quota);
    });
}

/// The error of a refused call.
fn refused(scope: Scope, subject: String, policy: Policy, retry_after: Duration) -> Error {
    note(Quota {
        scope,
        policy,
        remaining: 0,
        full_in: Duration::from_secs_f64(f64::from(policy.burst) / policy.per_second),
    });
    Error::RateLimited {
        scope: scope.as_str(),
        subject,
        limit: policy.to_string(),
        retry_after,
    }
}

/// How long a leased chunk may be spent: past it, what is left lapses, so
/// a replica does not save up tokens for a later burst.
pub const LEASE_LIFETIME: Duration = Duration::from_secs(1);

/// Beyond this many keys, a map drops the entries that are the same as
/// absent (full buckets, lapsed leases) rather than grow.
const MAX_ENTRIES: usize = 100_000;

/// One replica's share of a shared bucket.
#[derive(Debug, Default)]
struct Share {
    tokens: u32,
    leased_at: Option<Instant>,
    /// The bucket's remainder right after the lease, and the policy it ran
    /// under (for the headers and for refusals between leases).
    left: f64,
    policy: Option<Policy>,
    refused_until: Option<Instant>,
}

impl Share {
    fn live(&self, now: Instant) -> bool {
        self.tokens > 0 && self.leased_at.is_some_and(|at| now - at < LEASE_LIFETIME)
    }

    fn quota(&self, scope: Scope, policy: Policy, now: Instant) -> Quota {
        let since = self.leased_at.map_or(0.0, |at| (now - at).as_secs_f64());
        let burst = f64::from(policy.burst);
        let in_bucket = (self.left + policy.per_second * since).min(burst);
        let remaining = (f64::from(self.tokens) + in_bucket).min(burst);
        Quota {
            scope,
            policy,
            remaining: remaining.floor() as u32,
            full_in: Duration::from_secs_f64(((burst - remaining).max(0.0)) / policy.per_second),
        }
    }
}

/// A bucket kept in this replica's memory.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, policy: Policy, now: Instant) -> f64 {
        (self.tokens + policy.per_second * (now - self.at).as_secs_f64())
            .min(f64::from(policy.burst))
    }
}

#[derive(prometheus_client::encoding::EncodeLabelSet, Debug, Clone, PartialEq, Eq, Hash)]
struct ScopeLabel {
    scope: &'static str,
}

/// Enforces the policies of [`RateLimitSettings`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    settings: RateLimitSettings,
    shares: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Share>>>>,
    local: Mutex<HashMap<(Scope, Vec<u8>), Bucket>>,
    throttled: Family<ScopeLabel, Counter>,
    leases: Counter,
}

impl RateLimiter {
    pub fn new(db: Db, settings: RateLimitSettings) -> Self {
        RateLimiter {
            inner: Arc::new(Inner {
                db,
                settings,
                shares: Mutex::default(),
                local: Mutex::default(),
                throttled: Family::default(),
                leases: Counter::default(),
            }),
        }
    }

    pub fn settings(&self) -> &RateLimitSettings {
        &self.inner.settings
    }

    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "rate_limited",
            "Calls refused with 429 / RESOURCE_EXHAUSTED, by the bucket that refused them",
            self.inner.throttled.clone(),
        );
        registry.register(
            "rate_limit_leases",
            "Round trips to the shared buckets (one per chunk of tokens)",
            self.inner.leases.clone(),
        );
    }

    fn count_refusal(&self, scope: Scope) {
        self.inner
            .throttled
            .get_or_create(&ScopeLabel {
                scope: scope.as_str(),
            })
            .inc();
    }

    /// One call of an API key.
    pub async fn charge_api_key(&self, key: ApiKeyId) -> Result<()> {
        let Some(policy) = self.inner.settings.api_key else {
            return Ok(());
        };
        self.charge_shared(Scope::ApiKey, format!("api_key:{key}"), policy, None)
            .await
    }

    /// One call on behalf of a client app, under its own policy when an
    /// operator gave it one.
    pub async fn charge_client_app(&self, app: ClientAppId) -> Result<()> {
        let Some(policy) = self.inner.settings.client_app else {
            return Ok(());
        };
        self.charge_shared(
            Scope::ClientApp,
            format!("client_app:{app}"),
            policy,
            Some(app),
        )
        .await
    }

    async fn charge_shared(
        &self,
        scope: Scope,
        key: String,
        default: Policy,
        app: Option<ClientAppId>,
    ) -> Result<()> {
        let share = {
            let mut shares = self.inner.shares.lock().expect("rate limit shares lock");
            if shares.len() >= MAX_ENTRIES && !shares.contains_key(&key) {
                let now = Instant::now();
                shares.retain(|_, share| {
                    share.try_lock().map_or(true, |s| {
                        s.live(now) || s.refused_until.is_some_and(|u| u > now)
                    })
                });
            }
            shares.entry(key.clone()).or_default().clone()
        };
        // Calls of one key on this replica queue here while one of them
        // leases, and then spend what it got.
        let mut share = share.lock().await;
        let now = Instant::now();
        if share.live(now) {
            share.tokens -= 1;
            let policy = share.policy.unwrap_or(default);
            note(share.quota(scope, policy, now));
            return Ok(());
        }
        if let (Some(until), Some(policy)) = (share.refused_until, share.policy)
            && until > now
        {
            self.count_refusal(scope);
            return Err(refused(scope, key, policy, until - now));
        }
        self.inner.leases.inc();
        let lease = store::lease(&self.inner.db, &key, default, app).await?;
        let now = Instant::now();
        share.policy = Some(lease.policy);
        share.left = lease.left;
        share.leased_at = Some(now);
        if lease.granted == 0 {
            share.tokens = 0;
            let wait = lease.policy.wait_for_one(lease.left);
            share.refused_until = Some(now + wait);
            self.count_refusal(scope);
            return Err(refused(scope, key, lease.policy, wait));
        }
        share.refused_until = None;
        share.tokens = lease.granted - 1;
        note(share.quota(scope, lease.policy, now));
        Ok(())
    }

    /// One call of a Link flow, by its token's hash (checked before the
    /// flow is looked up).
    pub fn charge_flow(&self, token_hash: &[u8]) -> Result<()> {
        let Some(policy) = self.inner.settings.flow else {
            return Ok(());
        };
        self.charge_local(Scope::Flow, token_hash.to_vec(), policy, "flow".into())
    }

    /// One call from `ip` (an IPv6 address counts by its /64, which one
    /// subscriber usually holds whole).
    pub fn charge_client_ip(&self, ip: IpAddr) -> Result<()> {
        let Some(policy) = self.inner.settings.client_ip else {
            return Ok(());
        };
        self.charge_local(
            Scope::ClientIp,
            ip_key(ip),
            policy,
            format!("client_ip:{ip}"),
        )
    }

    /// Refuses, without taking a token, when `ip`'s bucket is empty.
    pub fn check_client_ip(&self, ip: IpAddr) -> Result<()> {
        let Some(policy) = self.inner.settings.client_ip else {
            return Ok(());
        };
        let now = Instant::now();
        let local = self.inner.local.lock().expect("rate limit buckets lock");
        match local.get(&(Scope::ClientIp, ip_key(ip))) {
            Some(bucket) if bucket.refilled(policy, now) < 1.0 => {
                let wait = policy.wait_for_one(bucket.refilled(policy, now));
                drop(local);
                self.count_refusal(Scope::ClientIp);
                Err(refused(
                    Scope::ClientIp,
                    format!("client_ip:{ip}"),
                    policy,
                    wait,
                ))
            }
            _ => Ok(()),
        }
    }

    fn charge_local(
        &self,
        scope: Scope,
        key: Vec<u8>,
        policy: Policy,
        subject: String,
    ) -> Result<()> {
        let now = Instant::now();
        let mut local = self.inner.local.lock().expect("rate limit buckets lock");
        if local.len() >= MAX_ENTRIES {
            let settings = &self.inner.settings;
            local.retain(|(scope, _), bucket| {
                let policy = match scope {
                    Scope::Flow => settings.flow,
                    _ => settings.client_ip,
                };
                policy.is_some_and(|p| bucket.refilled(p, now) < f64::from(p.burst))
            });
        }
        let bucket = local.entry((scope, key)).or_insert(Bucket {
            tokens: f64::from(policy.burst),
            at: now,
        });
        let tokens = bucket.refilled(policy, now);
        if tokens < 1.0 {
            *bucket = Bucket { tokens, at: now };
            drop(local);
            self.count_refusal(scope);
            return Err(refused(scope, subject, policy, policy.wait_for_one(tokens)));
        }
        *bucket = Bucket {
            tokens: tokens - 1.0,
            at: now,
        };
        drop(local);
        let remaining = tokens - 1.0;
        note(Quota {
            scope,
            policy,
            remaining: remaining.floor() as u32,
            full_in: Duration::from_secs_f64(
                (f64::from(policy.burst) - remaining).max(0.0) / policy.per_second,
            ),
        });
        Ok(())
    }
}

/// The bucket key of an address: IPv4 whole, IPv6 by its /64.
fn ip_key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_read_as_documented() {
        let p = Policy::parse("100/s,burst=200").unwrap();
        assert_eq!((p.per_second, p.burst), (100.0, 200));
        let p = Policy::parse("30/m").unwrap();
        assert_eq!((p.per_second, p.burst), (0.5, 1));
        assert_eq!(Policy::parse("5/s").unwrap().burst, 10);
        for bad in [
            "",
            "100",
            "100/h",
            "0/s",
            "-1/s",
            "x/s",
            "5/s,burst=0",
            "5/s,size=3",
            "5/s,burst=1.5",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Policy::parse("100/s,burst=200").unwrap().window_seconds(),
            2
        );
        for shown in [
            "100/s,burst=200",
            "30/m,burst=1",
            "1/m,burst=3",
            "2.5/s,burst=5",
        ] {
            assert_eq!(Policy::parse(shown).unwrap().to_string(), shown);
        }
    }

    #[test]
    fn ipv6_neighbours_share_a_bucket_and_ipv4_does_not() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(mapped), ip_key("192.0.2.7".parse().unwrap()));
        assert_ne!(
            ip_key("192.0.2.7".parse().unwrap()),
            ip_key("192.0.2.8".parse().unwrap())
        );
    }
}
