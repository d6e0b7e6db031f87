//! The SSRF guard of every call to an address a client or a provider chose
//! (webhook delivery, provider APIs): destinations in loopback, private,
//! link-local (cloud metadata), CGNAT, multicast, documentation or reserved
//! ranges are refused before any connection. Host names are resolved by
//! [`GuardedResolver`], which hands the HTTP client only allowed addresses:
//! the addresses checked are the addresses connected to, so DNS rebinding has
//! no gap. An operator allowlist (host names or CIDR ranges) opens named
//! destinations for local development and tests.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

/// Ranges never delivered to (IPv4 and IPv6; IPv4 embedded in IPv6 is
/// checked as IPv4).
static FORBIDDEN: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",       // "this" network
        "10.0.0.0/8",      // private
        "100.64.0.0/10",   // CGNAT
        "127.0.0.0/8",     // loopback
        "169.254.0.0/16",  // link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",   // private
        "192.0.0.0/24",    // IETF protocol assignments
        "192.0.2.0/24",    // documentation
        "192.88.99.0/24",  // 6to4 relay anycast
        "192.168.0.0/16",  // private
        "198.18.0.0/15",   // benchmarking
        "198.51.100.0/24", // documentation
        "203.0.113.0/24",  // documentation
        "224.0.0.0/4",     // multicast
        "240.0.0.0/4",     // reserved, broadcast
        "::/128",          // unspecified
        "::1/128",         // loopback
        "64:ff9b:1::/48",  // local-use NAT64
        "100::/64",        // discard
        "2001::/23",       // IETF protocol assignments (Teredo, ORCHID…)
        "2001:db8::/32",   // documentation
        "fc00::/7",        // unique local
        "fe80::/10",       // link-local
        "fec0::/10",       // site-local (deprecated)
        "ff00::/8",        // multicast
    ]
    .iter()
    .map(|net| net.parse().expect("valid range"))
    .collect()
});

/// The IPv4 address carried inside an IPv6 one (mapped, compatible, NAT64,
/// 6to4), which is what a connection would really reach.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Whether webhooks may be sent to `ip` without an allowlist entry.
pub fn is_public(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) if v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST => {
            embedded_v4(v6).map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        other => other,
    };
    !FORBIDDEN.iter().any(|net| net.contains(&ip))
}

/// Destinations opened by the operator (`LINKD_WEBHOOK_ALLOW`,
/// `LINKD_PROVIDER_ALLOW`): host names
/// (exact, case-insensitive) and IP ranges.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

impl Allowlist {
    /// Parses a comma-separated list such as `127.0.0.1,hooks.internal,10.1.0.0/16`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut allow = Allowlist::default();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Ok(net) = entry.parse::<IpNet>() {
                allow.nets.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                allow.nets.push(IpNet::from(ip));
            } else if entry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                allow.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(format!("`{entry}` is neither a host name nor an IP range"));
            }
        }
        Ok(allow)
    }

    pub fn allows_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Whether a connection to `ip`, reached through `host`, is allowed.
    pub fn permits(&self, host: &str, ip: IpAddr) -> bool {
        self.allows_host(host) || self.allows_ip(ip) || is_public(ip)
    }
}

/// Why a destination was refused; shown in the delivery attempt.
#[derive(Debug, thiserror::Error)]
#[error("destination refused: {host} resolves only to addresses linkd may not reach")]
pub struct Refused {
    pub host: String,
}

/// Checks a URL whose host is an IP literal (the HTTP client does not
/// resolve those); host names are left to [`GuardedResolver`].
pub fn check_literal_host(url: &url::Url, allow: &Allowlist) -> Result<(), Refused> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    let host = normalize_host(url.host_str().unwrap_or_default());
    if allow.permits(&host, ip) {
        Ok(())
    } else {
        Err(Refused { host })
    }
}

/// A DNS resolver for an outbound HTTP client that returns only addresses
/// the allowlist or [`is_public`] permits, and fails when none is left.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub allow: Arc<Allowlist>,
}

/// The host name as the guard and the resolver see it: lowercase, without
/// the root's trailing dot (`LocalHost.` is `localhost`), so that spelling
/// cannot turn a refused destination into a lookup failure that is retried.
/// (The URL parser has already applied IDNA.)
pub fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        let host = normalize_host(name.as_str());
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| allow.permits(&host, addr.ip()))
                .collect();
            if resolved.is_empty() {
                return Err(Box::new(Refused { host }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(resolved.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a request failed because the guard refused its destination.
pub fn caused_by_refusal(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if current.is::<Refused>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// An outbound HTTP client behind the guard: rustls with ring (the tree's
/// one crypto backend) and the webpki roots, no redirects (a redirect could
/// lead past the guard's host check), no proxies, guarded DNS.
pub fn guarded_client(
    allow: Arc<Allowlist>,
    timeout: std::time::Duration,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { allow })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_forbidden_range_is_refused() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
            "2001::1",
            // IPv4 inside IPv6: mapped, compatible, NAT64, 6to4.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:c0a8:0101::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_public(ip), "{ip} must be refused");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_public(ip), "{ip} is public");
        }
    }

    #[test]
    fn the_allowlist_opens_named_hosts_and_ranges() {
        let allow = Allowlist::parse("127.0.0.1, hooks.internal,10.1.0.0/16").unwrap();
        assert!(allow.permits("x", "127.0.0.1".parse().unwrap()));
        assert!(!allow.permits("x", "127.0.0.2".parse().unwrap()));
        assert!(allow.permits("HOOKS.internal", "192.168.0.9".parse().unwrap()));
        assert!(allow.permits("x", "10.1.200.3".parse().unwrap()));
        assert!(!allow.permits("x", "10.2.0.1".parse().unwrap()));
        assert!(Allowlist::parse("bad entry!").is_err());
        let url = url::Url::parse("http://[::ffff:169.254.169.254]/x").unwrap();
        assert!(check_literal_host(&url, &Allowlist::default()).is_err());
        assert!(allow.permits(
            &normalize_host("Hooks.Internal."),
            "10.9.9.9".parse().unwrap()
        ));
    }
}
