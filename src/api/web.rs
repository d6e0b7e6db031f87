//! The Link page and its embed script, served by linkd itself (no CDN, no
//! third-party assets): `/link` (Link sessions, token in the URL fragment),
//! `/appclip/{linkId}?code=…` (the default app clip URL of a link intent:
//! the same page claims the link), `/link/embed.js` for client apps.
//!
//! The page talks only to the flow API of this origin; its CSP forbids any
//! other source.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const PAGE: &str = include_str!("../../web/link.html");
const SCRIPT: &str = include_str!("../../web/link.js");
const STYLE: &str = include_str!("../../web/link.css");
const EMBED: &str = include_str!("../../web/embed.js");

/// Everything the page loads comes from this origin; it may be framed by
/// client apps (embed mode), and it never sends a Referer.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                        connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'";

fn asset(body: &'static str, content_type: &'static str, cache: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn page() -> Response {
    let mut response = asset(PAGE, "text/html; charset=utf-8", "no-store");
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    response
}

async fn script() -> Response {
    asset(
        SCRIPT,
        "text/javascript; charset=utf-8",
        "public, max-age=300",
    )
}

async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8", "public, max-age=300")
}

/// Loaded by client apps from their own origin.
async fn embed() -> Response {
    let mut response = asset(
        EMBED,
        "text/javascript; charset=utf-8",
        "public, max-age=300",
    );
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response.headers_mut().insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    response
}

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/link", get(page))
        .route("/appclip/{link_id}", get(page))
        .route("/link/app.js", get(script))
        .route("/link/app.css", get(style))
        .route("/link/embed.js", get(embed))
}
