//! The live view at `/`: one HTML page, a script and a style sheet, compiled into the
//! binary (nothing fetched at run time, no CDN, no library). The page polls
//! `/v1/status` every 2 s and fetches `/v1/rounds/latest` and `/v1/findings` when a new
//! round finished; everything it shows comes from the API's JSON and is put on the page as
//! text, never as HTML.
//!
//! Every answer carries a Content-Security-Policy that allows only this origin's script
//! and style (no inline script, no framing), `nosniff` and no referrer.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("web/index.html");
const APP: &str = include_str!("web/app.js");
const STYLE: &str = include_str!("web/style.css");
const ICON: &str = include_str!("web/favicon.svg");

/// The page's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /`.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/app.js`.
pub async fn app() -> Response {
    asset("text/javascript; charset=utf-8", APP)
}

/// `GET /ui/style.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /ui/favicon.svg`.
pub async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}
