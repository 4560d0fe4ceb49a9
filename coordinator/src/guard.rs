//! What every request passes before authentication, and every answer after the handler:
//!
//! - **Host.** The `Host` header must be an IP address, `localhost`, an in-cluster Service
//!   name (`….svc`, `….svc.<domain>`) or a name given with `--allowed-host`: a page on
//!   another site whose name was rebound to the coordinator's address gets 421, so the
//!   browser that loaded it can never read the API (reads may be open).
//! - **Origin.** A request that changes something (not GET or HEAD) and says where it comes
//!   from must come from the coordinator's own origin: with authentication off, a page on
//!   another site cannot start rounds or save baselines through a visitor's browser.
//! - **Errors are JSON.** An error answer axum or hyper wrote as text (a 413 past the body
//!   limit, a 415, a 405) is rewritten as `{"error": "..."}` like the API's own, except
//!   on the probes' `/healthz` and `/readyz`.
//! - **HSTS.** With TLS, every answer says `Strict-Transport-Security`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::rounds::Coordinator;

/// The largest text error body rewritten as JSON (larger ones are cut).
const MAX_TEXT_ERROR: usize = 16 << 10;

/// The middleware.
pub async fn layer(State(c): State<Arc<Coordinator>>, req: Request, next: Next) -> Response {
    let settings = c.settings();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(h) = &host
        && !host_allowed(h, &settings.allowed_hosts)
    {
        return finish(
            crate::api::json_error(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this coordinator does not answer to host {:?} (an IP address, localhost, a Service name, or one given with --allowed-host)",
                    meshprobe_core::text::printable_line(h, 100)
                ),
            ),
            settings.tls,
        );
    }
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
    if writes
        && let Some(origin) = req.headers().get(header::ORIGIN)
        && !same_origin(origin, host.as_deref())
    {
        return finish(
            crate::api::json_error(
                StatusCode::FORBIDDEN,
                "a request from another site's page cannot change the coordinator",
            ),
            settings.tls,
        );
    }
    let probe = matches!(
        req.uri().path(),
        meshprobe_core::api::HEALTHZ | meshprobe_core::api::READYZ
    );
    let r = next.run(req).await;
    let r = if !probe && (r.status().is_client_error() || r.status().is_server_error()) {
        as_json(r).await
    } else {
        r
    };
    finish(r, settings.tls)
}

fn finish(mut r: Response, tls: bool) -> Response {
    if tls {
        r.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    r
}

/// Whether the coordinator answers to `host` (`name[:port]`, `[v6]:port`).
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(n, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                n
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".svc")
        || name.contains(".svc.")
        || allowed
            .iter()
            .any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(&name))
}

/// Whether an `Origin` header names the host the request was sent to.
fn same_origin(origin: &HeaderValue, host: Option<&str>) -> bool {
    let (Ok(origin), Some(host)) = (origin.to_str(), host) else {
        return false;
    };
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    !authority.is_empty() && authority.eq_ignore_ascii_case(host)
}

/// A text error answer as the API's JSON error.
async fn as_json(r: Response) -> Response {
    let text = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("text/plain"));
    if !text {
        return r;
    }
    let (parts, body) = r.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_TEXT_ERROR)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&bytes).trim().to_owned();
    let message = if message.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_owned()
    } else {
        message
    };
    let mut json = crate::api::json_error(parts.status, message);
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            json.headers_mut().insert(k.clone(), v.clone());
        }
    }
    json.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_a_coordinator_answers_to() {
        let none: [String; 0] = [];
        for ok in [
            "10.43.0.12",
            "10.43.0.12:7070",
            "[fd00::1]:7070",
            "localhost:7070",
            "meshprobe-coordinator.meshprobe.svc:443",
            "meshprobe-coordinator.meshprobe.svc.cluster.local",
        ] {
            assert!(host_allowed(ok, &none), "{ok}");
        }
        for bad in [
            "evil.example.com",
            "evil.example.com:7070",
            "10.43.0.12.nip.io",
        ] {
            assert!(!host_allowed(bad, &none), "{bad}");
        }
        let mine = ["meshprobe.example.com".to_owned()];
        assert!(host_allowed("MeshProbe.example.com:443", &mine));
    }

    #[test]
    fn origins() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert!(same_origin(
            &h("https://10.0.0.1:7070"),
            Some("10.0.0.1:7070")
        ));
        assert!(!same_origin(
            &h("https://evil.example.com"),
            Some("10.0.0.1:7070")
        ));
        assert!(!same_origin(&h("null"), Some("10.0.0.1:7070")));
    }
}
