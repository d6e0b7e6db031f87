//! Link session rules: what `InitLinkSession` accepts, the proxy location,
//! and the query parameters the end user is redirected back with.

use crate::connectors::Geolocation;
use crate::kernel::error::Error;
use crate::kernel::ids::{ClientAppId, ConnectionId};
use crate::kernel::validate::{Violations, limits};
use url::Url;

/// What `InitLinkSession` asks for, as given (either surface converts to
/// it); an empty string is not given.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionRequest<'a> {
    pub client_app_id: Option<&'a str>,
    pub redirect_url: Option<&'a str>,
    pub client_reference_id: Option<&'a str>,
    pub connection_id: Option<&'a str>,
    /// The country and, optionally, the state.
    pub geolocation: Option<(&'a str, Option<&'a str>)>,
    pub lang: Option<&'a str>,
}

/// An `InitLinkSession` request whose fields are well-formed. Whether the
/// app and redirect URL exist is checked against the store afterwards.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub client_app_id: Option<ClientAppId>,
    pub redirect_url: Option<String>,
    pub client_reference_id: Option<String>,
    /// `None` when not given; a well-formed id may still name no connection.
    pub connection_id: Option<ConnectionId>,
    pub geolocation: Option<Geolocation>,
    /// The Link page's language (`en` when not given).
    pub lang: &'static str,
}

impl NewSession {
    /// Checks every field and reports every problem at once.
    pub fn parse(req: &SessionRequest<'_>) -> Result<Self, Error> {
        let mut v = Violations::new();
        let given = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
        let client_app_id = given(req.client_app_id).and_then(|id| {
            // A malformed id with the right prefix is an unknown app (404).
            let parsed = ClientAppId::parse_reference(&id);
            if parsed.is_none() {
                v.add(
                    "clientAppId",
                    "must be a client app id starting with `app_`",
                );
            }
            parsed
        });
        let redirect_url = given(req.redirect_url);
        if let Some(url) = &redirect_url {
            v.max_len("redirectUrl", url, limits::URL);
        }
        let client_reference_id = given(req.client_reference_id);
        if let Some(reference) = &client_reference_id {
            v.max_len("clientReferenceId", reference, limits::REFERENCE);
        }
        // A well-formed id that names nothing is not an error (documented):
        // the session then makes a new connection. Only the prefix and shape
        // are checked here.
        let connection_id = given(req.connection_id).and_then(|id| {
            if !id.starts_with(ConnectionId::PREFIX) {
                v.add("connectionId", "must start with `conn_`");
                return None;
            }
            if id.len() > limits::ID {
                v.add(
                    "connectionId",
                    format!("must be at most {} characters", limits::ID),
                );
                return None;
            }
            ConnectionId::parse(&id)
        });
        let geolocation = req
            .geolocation
            .and_then(|(country, state)| Geolocation::parse(&mut v, country, state));
        let lang = crate::kernel::lang::parse_lang(req.lang)
            .map_err(|message| v.add("lang", message))
            .unwrap_or("en");
        v.finish()?;
        Ok(NewSession {
            client_app_id,
            redirect_url,
            client_reference_id,
            connection_id,
            geolocation,
            lang,
        })
    }
}

/// How a Link session ended, as the redirect reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionResult<'a> {
    Success { connection_id: &'a str },
    Cancelled { step: &'a str },
    Error { error_code: &'a str },
}

/// `redirect_url` with the documented result parameters appended, keeping
/// its own query: `status=success&connection_id=…`, `status=cancelled&step=…`
/// or `status=error&error_code=…`, each followed by `client_reference_id`
/// when the session was given one.
pub fn session_redirect_url(
    redirect_url: &str,
    result: &SessionResult<'_>,
    client_reference_id: Option<&str>,
) -> String {
    let Ok(mut url) = Url::parse(redirect_url) else {
        return redirect_url.to_string();
    };
    {
        let mut query = url.query_pairs_mut();
        match result {
            SessionResult::Success { connection_id } => {
                query.append_pair("status", "success");
                query.append_pair("connection_id", connection_id);
            }
            SessionResult::Cancelled { step } => {
                query.append_pair("status", "cancelled");
                query.append_pair("step", step);
            }
            SessionResult::Error { error_code } => {
                query.append_pair("status", "error");
                query.append_pair("error_code", error_code);
            }
        }
        if let Some(reference) = client_reference_id {
            query.append_pair("client_reference_id", reference);
        }
    }
    url.to_string()
}

/// The web origin (`scheme://host[:port]`) of a redirect URL: the only origin
/// the embedded Link page posts its result to. App schemes have none.
pub fn web_origin(redirect_url: &str) -> Option<String> {
    let url = Url::parse(redirect_url).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    Some(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(geo: Option<(&'a str, Option<&'a str>)>) -> SessionRequest<'a> {
        SessionRequest {
            geolocation: geo,
            ..Default::default()
        }
    }

    fn paths(err: Error) -> Vec<String> {
        match err {
            Error::Validation(issues) => issues.into_iter().map(|i| i.path).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn geolocation_checks_iso_codes() {
        let ok = NewSession::parse(&request(Some(("us", Some("ca"))))).unwrap();
        assert_eq!(
            ok.geolocation,
            Some(Geolocation {
                country: "US".into(),
                state: Some("CA".into())
            })
        );
        assert!(NewSession::parse(&request(Some(("FR", Some("75C"))))).is_ok());
        assert_eq!(
            paths(NewSession::parse(&request(Some(("", Some("CA"))))).unwrap_err()),
            ["geolocation.country"]
        );
        assert_eq!(
            paths(NewSession::parse(&request(Some(("XX", None)))).unwrap_err()),
            ["geolocation.country"]
        );
        assert_eq!(
            paths(NewSession::parse(&request(Some(("US", Some("ZZ"))))).unwrap_err()),
            ["geolocation.state"]
        );
        // A real subdivision, of another country.
        assert_eq!(
            paths(NewSession::parse(&request(Some(("CA", Some("CA"))))).unwrap_err()),
            ["geolocation.state"]
        );
    }

    #[test]
    fn every_malformed_field_is_reported() {
        let (redirect_url, reference) = ("x".repeat(3000), "r".repeat(256));
        let req = SessionRequest {
            client_app_id: Some("link_1"),
            redirect_url: Some(&redirect_url),
            client_reference_id: Some(&reference),
            connection_id: Some("abc123"),
            geolocation: Some(("", None)),
            lang: Some("de"),
        };
        assert_eq!(
            paths(NewSession::parse(&req).unwrap_err()),
            [
                "clientAppId",
                "redirectUrl",
                "clientReferenceId",
                "connectionId",
                "geolocation.country",
                "lang"
            ]
        );
    }

    #[test]
    fn redirects_carry_exactly_the_documented_parameters() {
        assert_eq!(
            session_redirect_url(
                "https://app.example/cb?x=1",
                &SessionResult::Success {
                    connection_id: "conn_1"
                },
                Some("user 1&2")
            ),
            "https://app.example/cb?x=1&status=success&connection_id=conn_1&client_reference_id=user+1%262"
        );
        assert_eq!(
            session_redirect_url(
                "https://app.example/cb",
                &SessionResult::Cancelled { step: "2fa" },
                None
            ),
            "https://app.example/cb?status=cancelled&step=2fa"
        );
        assert_eq!(
            session_redirect_url(
                "myapp://done",
                &SessionResult::Error {
                    error_code: "session_expired"
                },
                None
            ),
            "myapp://done?status=error&error_code=session_expired"
        );
    }

    #[test]
    fn only_web_redirects_have_an_origin() {
        assert_eq!(
            web_origin("http://127.0.0.1:4000/cb?x=1").as_deref(),
            Some("http://127.0.0.1:4000")
        );
        assert_eq!(
            web_origin("https://app.example/cb").as_deref(),
            Some("https://app.example")
        );
        assert_eq!(web_origin("myapp://cb"), None);
    }
}
