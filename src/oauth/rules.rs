//! OAuth 2.0 rules (RFC 6749 authorization-code grant, RFC 7636 PKCE,
//! RFC 8252 loopback redirects, RFC 9700): parameter syntax, redirect URI
//! matching by exact string, PKCE S256, and the redirect query of results.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use crate::flows::AuthorizationRequest;

/// The PKCE parameters of an authorization request (RFC 7636 §4.3): S256
/// only, both or neither, and required when `require_pkce`. Err is the
/// `invalid_request` description.
pub fn check_pkce_challenge(
    challenge: Option<&str>,
    method: Option<&str>,
    require_pkce: bool,
) -> Result<(), &'static str> {
    match (challenge, method) {
        (_, Some(method)) if method != "S256" => Err("code_challenge_method must be S256."),
        (Some(_), None) => Err("code_challenge_method must be S256 (plain is not accepted)."),
        (None, Some(_)) => Err("code_challenge is required with code_challenge_method."),
        (Some(challenge), Some(_)) if !is_valid_pkce_value(challenge) => {
            Err("code_challenge must be 43 to 128 unreserved characters.")
        }
        (None, None) if require_pkce => {
            Err("PKCE is required: send code_challenge with code_challenge_method=S256.")
        }
        _ => Ok(()),
    }
}

/// What an authorization code was issued for, as its redemption is checked.
#[derive(Debug, Clone, Copy)]
pub struct Redemption<'a> {
    /// The `redirect_uri` the authorization request sent, if any.
    pub redirect_uri: Option<&'a str>,
    pub effective_redirect_uri: &'a str,
    pub code_challenge: Option<&'a str>,
}

/// Whether a token request may redeem `code` (RFC 6749 §4.1.3, RFC 7636
/// §4.6): the redirect URI as the authorization request had it, and the
/// PKCE verifier exactly when a challenge was sent. Err is the
/// `invalid_grant` description.
pub fn check_redemption(
    code: &Redemption<'_>,
    redirect_uri: Option<&str>,
    code_verifier: Option<&str>,
) -> Result<(), &'static str> {
    let redirect_ok = match (code.redirect_uri, redirect_uri) {
        (Some(sent), given) => given == Some(sent),
        (None, Some(given)) => given == code.effective_redirect_uri,
        (None, None) => true,
    };
    if !redirect_ok {
        return Err("redirect_uri does not match the authorization request.");
    }
    match (code.code_challenge, code_verifier) {
        (Some(challenge), Some(verifier)) if verifier_matches(verifier, challenge) => Ok(()),
        (Some(_), Some(_)) => Err("The code_verifier does not match."),
        (Some(_), None) => Err("code_verifier is required."),
        (None, Some(_)) => {
            Err("The code was issued without a code_challenge; no code_verifier is accepted.")
        }
        (None, None) => Ok(()),
    }
}

/// What the endpoints accept; the metadata document (RFC 8414) lists the
/// same constants, so the two cannot disagree.
pub const RESPONSE_TYPES: [&str; 1] = ["code"];
/// `form_post` and `fragment` are refused: the Link page returns by
/// redirect.
pub const RESPONSE_MODES: [&str; 1] = ["query"];
pub const GRANT_TYPES: [&str; 2] = ["authorization_code", "refresh_token"];
pub const PKCE_METHODS: [&str; 1] = ["S256"];
/// How clients authenticate at the token, revocation and introspection
/// endpoints: confidential clients with their secret (either way), public
/// ones (`none`) by `client_id` alone.
pub const CLIENT_AUTH_METHODS: [&str; 3] = ["client_secret_basic", "client_secret_post", "none"];
/// `token_type_hint` values of revocation and introspection (RFC 7009 §2.1).
pub const TOKEN_TYPE_HINTS: [&str; 2] = ["access_token", "refresh_token"];
/// Token prefixes: what a token is can be told without a lookup.
pub const ACCESS_TOKEN_PREFIX: &str = "lat_";
pub const REFRESH_TOKEN_PREFIX: &str = "lrt_";

/// Scopes a client may ask for; the consent page lists them.
pub const SCOPES: [&str; 4] = ["accounts", "transactions", "statements", "identity"];
/// Granted when `scope` is omitted.
pub const DEFAULT_SCOPE: &str = "accounts";
pub use crate::kernel::lang::{LANG_MESSAGE, LANGUAGES, parse_lang};
/// Longest accepted `state`.
pub const MAX_STATE_LEN: usize = 1024;

/// Checks a space-separated scope list against [`SCOPES`]; `None` means the
/// default. Returns the normalised list (deduplicated, in request order).
pub fn parse_scope(scope: Option<&str>) -> Result<String, String> {
    let Some(scope) = scope.filter(|s| !s.is_empty()) else {
        return Ok(DEFAULT_SCOPE.to_string());
    };
    let mut granted: Vec<&str> = Vec::new();
    for item in scope.split(' ') {
        if !SCOPES.contains(&item) {
            return Err(format!("unknown scope; supported: {}", SCOPES.join(" ")));
        }
        if !granted.contains(&item) {
            granted.push(item);
        }
    }
    Ok(granted.join(" "))
}

/// The scopes of a refresh request (RFC 6749 §6): omitted, the grant's;
/// otherwise each must be one the grant has. Err is the `invalid_scope`
/// description.
pub fn narrow_scope(granted: &str, requested: Option<&str>) -> Result<String, &'static str> {
    let Some(requested) = requested.filter(|s| !s.is_empty()) else {
        return Ok(granted.to_string());
    };
    let has: Vec<&str> = granted.split(' ').collect();
    let mut wanted: Vec<&str> = Vec::new();
    for item in requested.split(' ') {
        if !has.contains(&item) {
            return Err("scope asks for more than the grant has.");
        }
        if !wanted.contains(&item) {
            wanted.push(item);
        }
    }
    Ok(wanted.join(" "))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters. Challenges share the
/// alphabet and bounds (§4.2).
pub fn is_valid_pkce_value(value: &str) -> bool {
    (43..=128).contains(&value.len()) && value.bytes().all(is_unreserved)
}

/// `BASE64URL(SHA256(verifier))` (RFC 7636 §4.2, S256).
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `verifier` answers `challenge` under S256, in constant time.
pub fn verifier_matches(verifier: &str, challenge: &str) -> bool {
    let computed = s256_challenge(verifier);
    computed.len() == challenge.len() && bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

/// The port-free remainder of a loopback IP redirect URI (`http://127.0.0.1`
/// or `http://[::1]`, RFC 8252 §7.3): (`prefix`, rest after the port).
fn split_loopback(uri: &str) -> Option<(&'static str, &str)> {
    let prefix = ["http://127.0.0.1", "http://[::1]"]
        .into_iter()
        .find(|p| uri.starts_with(p))?;
    let rest = &uri[prefix.len()..];
    let rest = match rest.strip_prefix(':') {
        Some(with_port) => {
            let digits = with_port.bytes().take_while(u8::is_ascii_digit).count();
            let port: u32 = with_port[..digits].parse().ok()?;
            if !(1..=65535).contains(&port) {
                return None;
            }
            &with_port[digits..]
        }
        None => rest,
    };
    matches!(rest.bytes().next(), None | Some(b'/' | b'?')).then_some((prefix, rest))
}

/// Whether `requested` is `registered`, compared as strings (RFC 9700 §4.1.3):
/// a trailing slash, other case, an extra query, dot segments or percent
/// encodings all differ. The one exception: for a registered loopback IP
/// URI any port is accepted (RFC 8252 §7.3); `localhost` gets no exception.
pub fn redirect_uri_matches(registered: &str, requested: &str) -> bool {
    if registered == requested {
        return true;
    }
    match (split_loopback(registered), split_loopback(requested)) {
        (Some((p1, rest1)), Some((p2, rest2))) => p1 == p2 && rest1 == rest2,
        _ => false,
    }
}

/// `uri` with `params` appended to its query, form-encoded, leaving the
/// registered URI byte for byte as it is (RFC 6749 §3.1.2: its query is
/// kept).
pub fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    let mut encoded = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        encoded.append_pair(name, value);
    }
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}{}", encoded.finish())
}

/// The successful authorization response (RFC 6749 §4.1.2), with the
/// issuer that answered (RFC 9207) so a client of several servers can tell
/// which one this is.
pub fn code_redirect(uri: &str, code: &str, state: Option<&str>, issuer: &str) -> String {
    let mut params = vec![("code", code)];
    if let Some(state) = state {
        params.push(("state", state));
    }
    params.push(("iss", issuer));
    with_query(uri, &params)
}

/// An error response to the redirect URI (RFC 6749 §4.1.2.1), with `iss`
/// (RFC 9207).
pub fn error_redirect(
    uri: &str,
    error: &str,
    description: &str,
    state: Option<&str>,
    issuer: &str,
) -> String {
    let mut params = vec![("error", error), ("error_description", description)];
    if let Some(state) = state {
        params.push(("state", state));
    }
    params.push(("iss", issuer));
    with_query(uri, &params)
}

/// The issuer identifier (RFC 8414 §2): the public URL without a trailing
/// slash, as the metadata and every `iss` say it.
pub fn issuer(public_url: &url::Url) -> String {
    public_url.as_str().trim_end_matches('/').to_string()
}

/// The authorization-endpoint error for a Link session that ended without
/// success.
pub fn flow_error(error_code: Option<&str>) -> (&'static str, &'static str) {
    match error_code {
        None | Some("cancelled") => ("access_denied", "The end user cancelled."),
        Some("provider_unavailable") => (
            "temporarily_unavailable",
            "The institution is unavailable; try again later.",
        ),
        Some("session_expired") => ("access_denied", "The login session expired."),
        Some("account_locked") => ("access_denied", "The account is locked at the institution."),
        Some("invalid_credentials") => (
            "access_denied",
            "The end user could not log in to the institution.",
        ),
        Some(_) => ("server_error", "The login could not be completed."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_vector_verifies() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert_eq!(s256_challenge(verifier), challenge);
        assert!(verifier_matches(verifier, challenge));
        assert!(!verifier_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK",
            challenge
        ));
        assert!(is_valid_pkce_value(verifier));
        assert!(!is_valid_pkce_value(&"a".repeat(42)));
        assert!(!is_valid_pkce_value(&"a".repeat(129)));
        assert!(!is_valid_pkce_value(&format!("{}+", "a".repeat(43))));
    }

    #[test]
    fn redirect_uris_compare_as_exact_strings() {
        let registered = "https://app.example.com/cb";
        assert!(redirect_uri_matches(registered, registered));
        for variant in [
            "https://app.example.com/cb/",
            "https://APP.example.com/cb",
            "https://app.example.com/CB",
            "https://app.example.com/cb?x=1",
            "https://app.example.com/x/../cb",
            "https://app.example.com/%63b",
            "https://app.example.com:443/cb",
            "https://app.example.com/cb#f",
            "http://app.example.com/cb",
        ] {
            assert!(!redirect_uri_matches(registered, variant), "{variant}");
        }
    }

    #[test]
    fn loopback_ip_redirects_accept_any_port_and_nothing_else() {
        let registered = "http://127.0.0.1/callback";
        assert!(redirect_uri_matches(
            registered,
            "http://127.0.0.1:51234/callback"
        ));
        assert!(redirect_uri_matches(
            "http://[::1]:8000/callback",
            "http://[::1]:9/callback"
        ));
        assert!(!redirect_uri_matches(
            registered,
            "http://127.0.0.1:51234/callback/"
        ));
        assert!(!redirect_uri_matches(
            registered,
            "http://127.0.0.1:99999/callback"
        ));
        assert!(!redirect_uri_matches(
            registered,
            "http://[::1]:5000/callback"
        ));
        assert!(!redirect_uri_matches(
            "http://localhost/callback",
            "http://localhost:5000/callback"
        ));
        assert!(!redirect_uri_matches(
            registered,
            "http://127.0.0.1.evil.com/callback"
        ));
    }

    #[test]
    fn state_survives_the_redirect_byte_for_byte() {
        for state in ["a&b=c", "x#y", "100%", "é✓ 漢字", "+ sign"] {
            let location = code_redirect(
                "https://app.example.com/cb?keep=1",
                "c0de",
                Some(state),
                "https://linkd.example",
            );
            assert!(location.starts_with("https://app.example.com/cb?keep=1&code=c0de&state="));
            let url = url::Url::parse(&location).unwrap();
            let echoed: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            assert_eq!(echoed[2], ("state".to_string(), state.to_string()));
            assert_eq!(
                echoed[3],
                ("iss".to_string(), "https://linkd.example".to_string())
            );
        }
    }

    #[test]
    fn lang_and_scope_rules() {
        assert_eq!(parse_lang(None), Ok("en"));
        assert_eq!(parse_lang(Some("FR")), Ok("fr"));
        assert_eq!(parse_lang(Some("english")), Err(LANG_MESSAGE.into()));
        assert_eq!(parse_lang(Some("zz")), Err(LANG_MESSAGE.into()));
        assert!(parse_lang(Some("de")).unwrap_err().contains("en, fr"));
        assert_eq!(parse_scope(None).unwrap(), "accounts");
        assert_eq!(
            parse_scope(Some("transactions accounts transactions")).unwrap(),
            "transactions accounts"
        );
        assert!(parse_scope(Some("accounts  transactions")).is_err());
        assert!(parse_scope(Some("admin")).is_err());
    }

    #[test]
    fn a_refresh_may_narrow_the_scope_never_widen_it() {
        assert_eq!(
            narrow_scope("accounts identity", None).unwrap(),
            "accounts identity"
        );
        assert_eq!(
            narrow_scope("accounts identity", Some("")).unwrap(),
            "accounts identity"
        );
        assert_eq!(
            narrow_scope("accounts identity", Some("identity")).unwrap(),
            "identity"
        );
        assert!(narrow_scope("accounts", Some("accounts transactions")).is_err());
        assert!(narrow_scope("accounts", Some("accounts  accounts")).is_err());
    }

    #[test]
    fn the_issuer_has_no_trailing_slash() {
        let url = url::Url::parse("https://linkd.example/").unwrap();
        assert_eq!(issuer(&url), "https://linkd.example");
        let url = url::Url::parse("https://example.com/linkd/").unwrap();
        assert_eq!(issuer(&url), "https://example.com/linkd");
    }
}
