//! The agent's HTTP transport to the coordinator, built to survive the faults the agent
//! reports on.
//!
//! Reports are the largest thing an agent sends, and an underlay that silently drops
//! full-size frames (a switch port with a smaller MTU, no ICMP "fragmentation needed")
//! would swallow every full-size TCP segment of them: the node would go silent exactly
//! when it has the most to say. So every connection clamps its TCP MSS to
//! [`REPORT_MSS`] before connecting: the SYN advertises it (the coordinator's answers stay
//! small too) and our own segments never exceed it. One new connection per request: an
//! agent sends a few per round, and a fresh connection never rides a dead one.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use socket2::SockRef;
use tokio::net::TcpSocket;

/// The clamped MSS: 1200-byte segments fit any underlay that carries IPv4 minimum-MTU
/// plus common tunnel overheads.
pub const REPORT_MSS: u32 = 1200;
/// Largest answer body accepted.
pub const MAX_ANSWER: usize = 16 << 20;

/// A request failed before an HTTP answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The URL is not `http://host:port`.
    #[error("{0}")]
    Url(String),
    /// Name resolution, connect, or the exchange failed.
    #[error("{0}")]
    Io(String),
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// An answer: status, content type, body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Content-Type, if any.
    pub content_type: Option<header::HeaderValue>,
    /// Body.
    pub body: Bytes,
}

/// Splits `http://host:port/prefix` into (host:port, prefix).
pub fn parse_base(base: &str) -> Result<(String, String), TransportError> {
    let rest = base.strip_prefix("http://").ok_or_else(|| {
        TransportError::Url(format!(
            "{base:?}: the coordinator URL must start with http://"
        ))
    })?;
    let (authority, prefix) = rest
        .split_once('/')
        .map_or((rest, String::new()), |(a, p)| {
            (a, format!("/{}", p.trim_end_matches('/')))
        });
    if authority.is_empty() {
        return Err(TransportError::Url(format!("{base:?} has no host")));
    }
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, prefix))
}

/// Sends one request to `base` + `path` and reads the whole answer, within `timeout`.
pub async fn send(
    base: &str,
    method: Method,
    path: &str,
    body: Option<(String, Bytes)>,
    timeout: Duration,
) -> Result<Answer, TransportError> {
    let (authority, prefix) = parse_base(base)?;
    tokio::time::timeout(
        timeout,
        exchange(&authority, method, &format!("{prefix}{path}"), body),
    )
    .await
    .map_err(|_| TransportError::Timeout(timeout))?
}

async fn exchange(
    authority: &str,
    method: Method,
    path: &str,
    body: Option<(String, Bytes)>,
) -> Result<Answer, TransportError> {
    let io = |what: &str, e: &dyn std::fmt::Display| {
        TransportError::Io(format!("{what} {authority}: {e}"))
    };
    let addr: SocketAddr = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| io("resolve", &e))?
        .next()
        .ok_or_else(|| TransportError::Io(format!("resolve {authority}: no address")))?;
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| io("socket for", &e))?;
    SockRef::from(&sock)
        .set_tcp_mss(REPORT_MSS)
        .map_err(|e| io("clamp MSS for", &e))?;
    let stream = sock.connect(addr).await.map_err(|e| io("connect", &e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| io("handshake with", &e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, authority);
    let payload = match body {
        Some((ct, bytes)) => {
            req = req.header(header::CONTENT_TYPE, ct);
            bytes
        }
        None => Bytes::new(),
    };
    let req = req
        .body(Full::new(payload))
        .map_err(|e| io("build request for", &e))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| io("request to", &e))?;
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| io("read answer from", &e))?
        .to_bytes();
    Ok(Answer {
        status,
        content_type,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            parse_base("http://10.0.0.1:7070").expect("ok"),
            ("10.0.0.1:7070".into(), String::new())
        );
        assert_eq!(
            parse_base("http://coord/api/").expect("ok"),
            ("coord:80".into(), "/api".into())
        );
        assert!(parse_base("https://x").is_err());
        assert!(parse_base("http://").is_err());
    }

    #[tokio::test]
    async fn clamped_connection_talks_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/x",
            axum::routing::post(|b: String| async move { format!("got {b}") }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let a = send(
            &format!("http://{addr}"),
            Method::POST,
            "/x",
            Some(("text/plain".to_owned(), Bytes::from_static(b"hi"))),
            Duration::from_secs(5),
        )
        .await
        .expect("answer");
        assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"got hi"[..]));
        let refused = send(
            "http://127.0.0.1:1",
            Method::GET,
            "/",
            None,
            Duration::from_secs(5),
        )
        .await;
        assert!(
            matches!(refused, Err(TransportError::Io(ref m)) if m.contains("connect")),
            "{refused:?}"
        );
    }
}
