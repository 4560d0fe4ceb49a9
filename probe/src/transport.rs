//! The one HTTP client stack that talks to the coordinator (agents, relay and `check`),
//! built to survive the faults the agent reports on.
//!
//! - **A clamped MSS.** Reports are the largest thing an agent sends, and an underlay that
//!   silently drops full-size frames (a switch port with a smaller MTU, no ICMP
//!   "fragmentation needed") would swallow every full-size TCP segment of them: the node
//!   would go silent exactly when it has the most to say. Every connection clamps its TCP
//!   MSS to [`REPORT_MSS`] before connecting: the SYN advertises it (the coordinator's
//!   answers stay small too) and our own segments never exceed it.
//! - **A fresh connection per request.** An agent sends a few per round, and a fresh
//!   connection never rides one that a conntrack flush or a NAT rewrite killed.
//! - **TLS when the URL says `https://`**, verified against the CA the operator gave
//!   (`--ca-file`, [`client_tls`]); rustls with the workspace's one crypto provider, ring.
//! - **Credentials per request.** The caller passes the `Authorization` value; the relay
//!   passes on its pod agent's own.
//! - **Idle-bounded reads.** A heartbeat-streamed poll ([`meshprobe_core::api`]) is read
//!   with an idle limit: a connection that goes quiet for longer is dead, and the caller
//!   knows in about a second instead of at the poll's timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use socket2::SockRef;
use tokio::net::TcpSocket;
use tokio::time::Instant;

/// A TLS client configuration: whom to trust.
pub type TlsConfig = Arc<tokio_rustls::rustls::ClientConfig>;

/// The clamped MSS: 1200-byte segments fit any underlay that carries IPv4 minimum-MTU
/// plus common tunnel overheads.
pub const REPORT_MSS: u32 = 1200;
/// Largest answer body accepted.
pub const MAX_ANSWER: usize = 16 << 20;

/// A request failed before a whole HTTP answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The URL is not `http://host[:port][/prefix]`.
    #[error("{url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A socket operation (resolve, socket, connect) failed.
    #[error("{what} {authority}: {source}")]
    Io {
        /// The step that failed.
        what: &'static str,
        /// host:port.
        authority: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (handshake, send, read).
    #[error("{what} {authority}: {source}")]
    Http {
        /// The step that failed.
        what: &'static str,
        /// host:port.
        authority: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// No (whole) answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A streamed answer went quiet: the connection is dead.
    #[error("nothing received for {0:?}: the connection is dead")]
    Idle(Duration),
    /// The answer is larger than [`MAX_ANSWER`].
    #[error("answer larger than {MAX_ANSWER} bytes")]
    TooLarge,
    /// The TLS handshake failed (an unknown CA, a name mismatch, a plain-HTTP server).
    #[error("TLS with {authority}: {source}")]
    Tls {
        /// host:port.
        authority: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA file is unusable.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A TLS client configuration that trusts the CA certificates in `pem` (the content of
/// `path`, named in errors).
pub fn client_tls(path: &str, pem: &[u8]) -> Result<TlsConfig, TransportError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let bad = |reason: String| TransportError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("a certificate is unusable: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".to_owned()));
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An answer: status, content type, body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Content-Type, if any.
    pub content_type: Option<header::HeaderValue>,
    /// `Retry-After` in seconds, if the server sent one (at most an hour is believed).
    pub retry_after: Option<Duration>,
    /// Body.
    pub body: Bytes,
}

/// The `Retry-After` of an answer, when it is a number of seconds (the HTTP-date form is
/// not used by the coordinator); capped at an hour so a hostile server cannot park us.
pub fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// A base URL split into what a connection needs.
#[derive(Clone)]
pub struct Base {
    /// `host:port` (port 80 or 443 when the URL has none).
    pub authority: String,
    /// The path prefix, without a trailing slash (usually empty).
    pub prefix: String,
    /// For `https://`: the TLS configuration and the name the certificate must carry.
    pub tls: Option<(TlsConfig, ServerName<'static>)>,
}

impl std::fmt::Debug for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Base")
            .field("authority", &self.authority)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .finish()
    }
}

impl Base {
    /// A plain-HTTP base for `addr` (the relay).
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            authority: addr.to_string(),
            prefix: String::new(),
            tls: None,
        }
    }
}

/// Splits `http://host:port/prefix` (or `https://`, which needs `tls`) into its authority
/// and prefix. The certificate must name the URL's host, or `server_name` when given (an
/// agent that connects to the Service's ClusterIP, to need no DNS, verifies the Service's
/// DNS name).
pub fn parse_base(
    base: &str,
    tls: Option<&TlsConfig>,
    server_name: Option<&str>,
) -> Result<Base, TransportError> {
    let url_err = |reason| TransportError::Url {
        url: base.to_owned(),
        reason,
    };
    let (rest, secure) = if let Some(rest) = base.strip_prefix("https://") {
        (rest, true)
    } else if let Some(rest) = base.strip_prefix("http://") {
        (rest, false)
    } else {
        return Err(url_err(
            "the coordinator URL must start with http:// or https://",
        ));
    };
    let (authority, prefix) = rest
        .split_once('/')
        .map_or((rest, String::new()), |(a, p)| {
            let p = p.trim_end_matches('/');
            (
                a,
                if p.is_empty() {
                    String::new()
                } else {
                    format!("/{p}")
                },
            )
        });
    if authority.is_empty() {
        return Err(url_err("the URL has no host"));
    }
    let host = match authority.rsplit_once(':') {
        Some((h, _)) => h,
        None => authority,
    };
    let tls = if secure {
        let config = tls.ok_or_else(|| {
            url_err("an https:// coordinator needs --ca-file (the CA that signed its certificate)")
        })?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(server_name.unwrap_or(host).to_owned()).map_err(|_| {
            url_err("the host (or --tls-server-name) is not a valid TLS server name")
        })?;
        Some((Arc::clone(config), name))
    } else {
        None
    };
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else if secure {
        format!("{authority}:443")
    } else {
        format!("{authority}:80")
    };
    Ok(Base {
        authority,
        prefix,
        tls,
    })
}

/// Sends one request to `base` + `path` and returns the answer's head, within `timeout`;
/// the body is read by the caller ([`collect`], [`collect_idle`], or streamed on, as the
/// relay does).
pub async fn open(
    base: &Base,
    method: Method,
    path: &str,
    body: Option<(&str, Bytes)>,
    auth: Option<&header::HeaderValue>,
    timeout: Duration,
) -> Result<Response<Incoming>, TransportError> {
    tokio::time::timeout(timeout, exchange(base, method, path, body, auth))
        .await
        .map_err(|_| TransportError::Timeout(timeout))?
}

/// Sends one request and reads the whole answer, all within `timeout`.
pub async fn send(
    base: &Base,
    method: Method,
    path: &str,
    body: Option<(&str, Bytes)>,
    auth: Option<&header::HeaderValue>,
    timeout: Duration,
) -> Result<Answer, TransportError> {
    let deadline = Instant::now() + timeout;
    let resp = open(base, method, path, body, auth, timeout).await?;
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, collect(&base.authority, resp))
        .await
        .map_err(|_| TransportError::Timeout(timeout))?
}

/// Reads a whole answer (up to [`MAX_ANSWER`]).
pub async fn collect(authority: &str, resp: Response<Incoming>) -> Result<Answer, TransportError> {
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let retry_after = retry_after(resp.headers());
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(source) => TransportError::Http {
                what: "read answer from",
                authority: authority.to_owned(),
                source: *source,
            },
            Err(_) => TransportError::TooLarge,
        })?
        .to_bytes();
    Ok(Answer {
        status,
        content_type,
        retry_after,
        body,
    })
}

/// Reads a streamed answer whose every frame must arrive within `idle` of the previous
/// one, and the whole within `overall`.
pub async fn collect_idle(
    authority: &str,
    resp: Response<Incoming>,
    idle: Duration,
    overall: Duration,
) -> Result<Answer, TransportError> {
    let deadline = Instant::now() + overall;
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let retry_after = retry_after(resp.headers());
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    loop {
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        let frame = match tokio::time::timeout(wait, body.frame()).await {
            Ok(f) => f,
            Err(_) if Instant::now() >= deadline => return Err(TransportError::Timeout(overall)),
            Err(_) => return Err(TransportError::Idle(idle)),
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|source| TransportError::Http {
            what: "read answer from",
            authority: authority.to_owned(),
            source,
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_ANSWER {
                return Err(TransportError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Answer {
        status,
        content_type,
        retry_after,
        body: Bytes::from(buf),
    })
}

async fn exchange(
    base: &Base,
    method: Method,
    path: &str,
    body: Option<(&str, Bytes)>,
    auth: Option<&header::HeaderValue>,
) -> Result<Response<Incoming>, TransportError> {
    let authority = base.authority.as_str();
    let io = |what, source| TransportError::Io {
        what,
        authority: authority.to_owned(),
        source,
    };
    let http = |what, source| TransportError::Http {
        what,
        authority: authority.to_owned(),
        source,
    };
    let addr: SocketAddr = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| io("resolve", e))?
        .next()
        .ok_or_else(|| io("resolve", std::io::Error::other("no address")))?;
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| io("socket for", e))?;
    SockRef::from(&sock)
        .set_tcp_mss(REPORT_MSS)
        .map_err(|e| io("clamp MSS for", e))?;
    let stream = sock.connect(addr).await.map_err(|e| io("connect", e))?;
    let mut sender = match &base.tls {
        None => handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http("handshake with", e))?,
        Some((config, name)) => {
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect(name.clone(), stream)
                .await
                .map_err(|source| TransportError::Tls {
                    authority: authority.to_owned(),
                    source,
                })?;
            handshake(TokioIo::new(tls))
                .await
                .map_err(|e| http("handshake with", e))?
        }
    };
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", base.prefix))
        .header(header::HOST, authority);
    if let Some(v) = auth {
        req = req.header(header::AUTHORIZATION, v.clone());
    }
    let payload = match body {
        Some((ct, bytes)) => {
            req = req.header(header::CONTENT_TYPE, ct);
            bytes
        }
        None => Bytes::new(),
    };
    let req = req.body(Full::new(payload)).map_err(|e| {
        io(
            "build request for",
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        )
    })?;
    sender
        .send_request(req)
        .await
        .map_err(|e| http("request to", e))
}

/// An HTTP/1 handshake over `io`, its connection driven by a task of its own.
async fn handshake<T>(
    io: T,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, hyper::Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let b = |url: &str| {
            let b = parse_base(url, None, None).expect("ok");
            (b.authority, b.prefix)
        };
        assert_eq!(
            b("http://10.0.0.1:7070"),
            ("10.0.0.1:7070".into(), "".into())
        );
        assert_eq!(b("http://coord/api/"), ("coord:80".into(), "/api".into()));
        assert_eq!(b("http://coord/"), ("coord:80".into(), "".into()));
        // https needs a CA to verify against.
        assert!(parse_base("https://x", None, None).is_err());
        assert!(parse_base("ftp://x", None, None).is_err());
        assert!(parse_base("http://", None, None).is_err());
    }

    async fn serve(app: axum::Router) -> Base {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        parse_base(&format!("http://{addr}"), None, None).expect("base")
    }

    #[tokio::test]
    async fn clamped_connection_talks_http() {
        let base = serve(axum::Router::new().route(
            "/x",
            axum::routing::post(|b: String| async move { format!("got {b}") }),
        ))
        .await;
        let a = send(
            &base,
            Method::POST,
            "/x",
            Some(("text/plain", Bytes::from_static(b"hi"))),
            None,
            Duration::from_secs(5),
        )
        .await
        .expect("answer");
        assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"got hi"[..]));
        let refused = send(
            &parse_base("http://127.0.0.1:1", None, None).expect("base"),
            Method::GET,
            "/",
            None,
            None,
            Duration::from_secs(5),
        )
        .await;
        assert!(
            matches!(
                refused,
                Err(TransportError::Io {
                    what: "connect",
                    ..
                })
            ),
            "{refused:?}"
        );
    }

    /// A stream that sends a heartbeat and then goes quiet is declared dead after the idle
    /// limit, not after the overall timeout.
    #[tokio::test]
    async fn a_quiet_stream_is_dead_after_the_idle_limit() {
        let base = serve(axum::Router::new().route(
            "/s",
            axum::routing::get(|| async {
                let s = futures_util::stream::unfold(0u8, |n| async move {
                    if n > 0 {
                        // Goes quiet after the first heartbeat.
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Some((Ok::<_, std::io::Error>(Bytes::from_static(b"\n")), n + 1))
                });
                axum::body::Body::from_stream(s)
            }),
        ))
        .await;
        let started = Instant::now();
        let resp = open(&base, Method::GET, "/s", None, None, Duration::from_secs(5))
            .await
            .expect("head");
        let r = collect_idle(
            &base.authority,
            resp,
            Duration::from_millis(300),
            Duration::from_secs(20),
        )
        .await;
        assert!(matches!(r, Err(TransportError::Idle(_))), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
