//! Client app rules: names, redirect URIs, webhook URLs and signing secrets.

use crate::kernel::error::Error;
use crate::kernel::validate::{Violations, limits};
use base64::Engine as _;
use rand::RngCore;
use url::Url;

/// Most redirect URIs one app may register.
pub const MAX_REDIRECT_URIS: usize = 20;

/// A client app's registration, checked.
#[derive(Debug, Clone)]
pub struct NewClientApp {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub webhook_url: Option<String>,
}

impl NewClientApp {
    /// Checks every field and reports every problem at once. Redirect URIs are
    /// kept exactly as given: they are compared by exact string later.
    pub fn parse(
        name: &str,
        redirect_uris: &[String],
        webhook_url: Option<&str>,
    ) -> Result<Self, Error> {
        let mut v = Violations::new();
        v.require_len("name", name.trim(), limits::NAME);
        if redirect_uris.is_empty() {
            v.add("redirect_uris", "at least one redirect URI is required");
        }
        if redirect_uris.len() > MAX_REDIRECT_URIS {
            v.add(
                "redirect_uris",
                format!("at most {MAX_REDIRECT_URIS} redirect URIs"),
            );
        }
        for (i, uri) in redirect_uris.iter().enumerate() {
            let path = format!("redirect_uris[{i}]");
            if v.max_len(&path, uri, limits::URL)
                && let Err(msg) = check_redirect_uri(uri)
            {
                v.add(path, msg);
            }
        }
        check_webhook_url(&mut v, webhook_url);
        v.finish()?;
        Ok(NewClientApp {
            name: name.trim().to_string(),
            redirect_uris: redirect_uris.to_vec(),
            webhook_url: webhook_url.map(str::to_string),
        })
    }
}

/// An app's webhook URL, checked (`None` means the app has none).
pub fn parse_webhook_url(url: Option<&str>) -> Result<Option<String>, Error> {
    let mut v = Violations::new();
    check_webhook_url(&mut v, url);
    v.finish()?;
    Ok(url.map(str::to_string))
}

fn check_webhook_url(v: &mut Violations, url: Option<&str>) {
    if let Some(url) = url
        && v.max_len("webhook_url", url, limits::URL)
        && !is_web_url(url)
    {
        v.add("webhook_url", "must be a valid http:// or https:// URL");
    }
}

pub fn is_web_url(s: &str) -> bool {
    Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A redirect target end users are sent to: https, http on a loopback host,
/// or a custom app scheme. Script-capable and local-file schemes are refused,
/// and fragments are not allowed (RFC 6749 §3.1.2).
pub fn check_redirect_uri(uri: &str) -> Result<(), &'static str> {
    let url = Url::parse(uri).map_err(|_| "must be an absolute URL or app scheme")?;
    if url.fragment().is_some() {
        return Err("must not contain a fragment");
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if is_loopback_host(&url) => Ok(()),
        "http" => Err("http:// is only allowed for loopback hosts; use https://"),
        "javascript" | "data" | "file" | "vbscript" | "blob" | "about" | "ftp" | "ws" | "wss"
        | "https" => Err("scheme not allowed"),
        _ => Ok(()), // custom app scheme such as myapp://callback
    }
}

/// How a client app acts as an OAuth client (RFC 6749 §2.1).
pub const OAUTH_CLIENT_TYPES: [&str; 2] = ["confidential", "public"];
/// Most web origins one app may register.
pub const MAX_WEB_ORIGINS: usize = 20;

/// A change to an app's OAuth registration, checked: `None` keeps a
/// setting as it is.
#[derive(Debug, Clone, Default)]
pub struct OAuthRegistration {
    pub client_type: Option<&'static str>,
    pub refresh_tokens: Option<bool>,
    pub web_origins: Option<Vec<String>>,
}

impl OAuthRegistration {
    /// Checks every field and reports every problem at once.
    pub fn parse(
        client_type: Option<&str>,
        refresh_tokens: Option<bool>,
        web_origins: Option<&[String]>,
    ) -> Result<Self, Error> {
        let mut v = Violations::new();
        let client_type = client_type.and_then(|t| {
            let known = OAUTH_CLIENT_TYPES.iter().find(|k| **k == t).copied();
            if known.is_none() {
                v.add("client_type", "must be confidential or public");
            }
            known
        });
        let web_origins = web_origins.map(|origins| {
            if origins.len() > MAX_WEB_ORIGINS {
                v.add(
                    "web_origins",
                    format!("at most {MAX_WEB_ORIGINS} web origins"),
                );
            }
            let mut parsed = Vec::new();
            for (i, origin) in origins.iter().enumerate() {
                match parse_web_origin(origin) {
                    Ok(origin) if !parsed.contains(&origin) => parsed.push(origin),
                    Ok(_) => {}
                    Err(message) => v.add(format!("web_origins[{i}]"), message),
                }
            }
            parsed
        });
        v.finish()?;
        Ok(OAuthRegistration {
            client_type,
            refresh_tokens,
            web_origins,
        })
    }
}

/// A browser origin as the `Origin` header sends it (RFC 6454):
/// `https://host[:port]`, or `http://` on a loopback host; no path, query
/// or user. Returned in its serialised form (lower-case host, default port
/// dropped), which is what browsers send.
pub fn parse_web_origin(origin: &str) -> Result<String, &'static str> {
    let url = Url::parse(origin).map_err(|_| "must be an origin such as https://app.example")?;
    let bare = url.path() == "/" && !origin.ends_with('/');
    if !bare || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err("must be an origin: scheme, host and port only, no path");
    }
    match url.scheme() {
        "https" if url.host().is_some() => {}
        "http" if is_loopback_host(&url) => {}
        "http" => return Err("http:// is only allowed for loopback hosts; use https://"),
        _ => return Err("must be an https:// origin"),
    }
    Ok(url.origin().ascii_serialization())
}

/// An OAuth client secret: `lcs_` and 256 random bits, stored only hashed.
pub fn generate_client_secret() -> String {
    format!("lcs_{}", crate::kernel::ids::random_token())
}

/// A Standard Webhooks signing secret: `whsec_` and base64 of 32 random bytes.
pub fn generate_webhook_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_accept_https_loopback_and_app_schemes() {
        for ok in [
            "https://app.example.com/cb",
            "http://127.0.0.1:5000/cb",
            "http://localhost/cb",
            "http://[::1]:9/x",
            "myapp://callback",
        ] {
            assert_eq!(check_redirect_uri(ok), Ok(()), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "file:///etc/passwd",
            "http://example.com/cb",
            "https://a.example/cb#frag",
            "/relative",
            "",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn web_origins_are_bare_https_origins() {
        assert_eq!(
            parse_web_origin("https://App.Example:443").unwrap(),
            "https://app.example"
        );
        assert_eq!(
            parse_web_origin("http://127.0.0.1:5173").unwrap(),
            "http://127.0.0.1:5173"
        );
        for bad in [
            "https://app.example/",
            "https://app.example/spa",
            "https://app.example?x=1",
            "http://app.example",
            "https://user@app.example",
            "app.example",
            "*",
            "null",
        ] {
            assert!(parse_web_origin(bad).is_err(), "{bad}");
        }
        let err = OAuthRegistration::parse(
            Some("secret"),
            None,
            Some(&["https://ok.example".into(), "ftp://x".into()]),
        )
        .unwrap_err();
        let paths: Vec<_> = err.violations().iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths, ["client_type", "web_origins[1]"]);
    }

    #[test]
    fn new_app_lists_every_problem() {
        let err = NewClientApp::parse(
            " ",
            &["javascript:x".into(), "https://ok.example/cb".into()],
            Some("nope"),
        )
        .unwrap_err();
        let paths: Vec<_> = err.violations().iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths, ["name", "redirect_uris[0]", "webhook_url"]);
    }

    #[test]
    fn webhook_secrets_follow_standard_webhooks() {
        let secret = generate_webhook_secret();
        let raw = secret.strip_prefix("whsec_").unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .unwrap()
                .len(),
            32
        );
        assert_ne!(secret, generate_webhook_secret());
    }
}

/// Longest display name on the Link page.
pub const MAX_DISPLAY_NAME: usize = 60;
/// Largest logo, in bytes.
pub const MAX_LOGO_BYTES: usize = 256 * 1024;

/// A logo whose type was read from its bytes.
#[derive(Debug, Clone)]
pub struct Logo {
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
    pub sha256: String,
}

/// A checked `SetClientAppBranding`: `None` leaves a part unchanged,
/// `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct Branding {
    pub display_name: Option<Option<String>>,
    pub accent_color: Option<Option<String>>,
    pub logo: Option<Option<Logo>>,
}

/// The image type of `bytes` by its signature: PNG, JPEG or WebP only (an
/// SVG can carry script).
fn image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// What `SetClientAppBranding` asks for, as given.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrandingRequest<'a> {
    pub display_name: Option<&'a str>,
    pub accent_color: Option<&'a str>,
    pub logo: Option<&'a [u8]>,
    pub remove_logo: bool,
}

impl Branding {
    pub fn parse(req: &BrandingRequest<'_>) -> Result<Self, Error> {
        let mut v = Violations::new();
        let display_name = req.display_name.map(|name| {
            let name = name.trim();
            if name.chars().count() > MAX_DISPLAY_NAME || name.chars().any(char::is_control) {
                v.add(
                    "displayName",
                    format!(
                        "must be at most {MAX_DISPLAY_NAME} characters, without control characters"
                    ),
                );
            }
            (!name.is_empty()).then(|| name.to_string())
        });
        let accent_color = req.accent_color.map(|color| {
            let color = color.trim().to_ascii_lowercase();
            let valid = color.len() == 7
                && color.starts_with('#')
                && color[1..].bytes().all(|b| b.is_ascii_hexdigit());
            if !color.is_empty() && !valid {
                v.add("accentColor", "must be a colour as #rrggbb");
            }
            (!color.is_empty()).then_some(color)
        });
        let logo = match (req.logo, req.remove_logo) {
            (Some(_), true) => {
                v.add("removeLogo", "cannot be combined with logo");
                None
            }
            (None, true) => Some(None),
            (None, false) => None,
            (Some(bytes), false) => {
                if bytes.len() > MAX_LOGO_BYTES {
                    v.add(
                        "logo",
                        format!("must be at most {} KiB", MAX_LOGO_BYTES / 1024),
                    );
                    None
                } else if let Some(content_type) = image_type(bytes) {
                    use sha2::Digest as _;
                    Some(Some(Logo {
                        content_type,
                        bytes: bytes.to_vec(),
                        sha256: hex::encode(sha2::Sha256::digest(bytes)),
                    }))
                } else {
                    v.add("logo", "must be a PNG, JPEG or WebP image");
                    None
                }
            }
        };
        v.finish()?;
        Ok(Branding {
            display_name,
            accent_color,
            logo,
        })
    }
}
