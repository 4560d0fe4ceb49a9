//! The listener: a cap on open connections, overall and per source address, and
//! connections that go quiet are closed, so that idle or slow clients can neither exhaust
//! file descriptors nor hold the port.
//!
//! - At most [`Limits::max_connections`] connections are open; past that, new ones wait in
//!   the kernel's backlog until one closes (never an `accept` error loop).
//! - At most [`Limits::per_source`] from one address; past that, a new one is answered 503
//!   and closed at once, so that one client cannot take the slots the others (and the
//!   kubelet's `/healthz`) need.
//! - An admission filter ([`BoundedListener::admit`]) closes connections from addresses the
//!   server does not serve (the relay admits its own node's pods only).
//! - A connection must send its first bytes within [`Limits::first_bytes`].
//! - A connection that neither reads nor writes for [`Limits::idle`] is closed. Long polls
//!   are not idle: they write a heartbeat, or answer within the API's longest wait, which
//!   `idle` exceeds.
//! - With TLS ([`BoundedListener::with_tls`]), the handshake runs on the connection's own
//!   first reads and writes, never in `accept`: a slow handshake holds its own slot only,
//!   and must finish within [`Limits::first_bytes`] like any first request.
//! - A plain HTTP request sent to a TLS port (`http://` where `https://` was meant) is
//!   answered in plain HTTP, 400 with the hint to use https, instead of a TLS alert that
//!   clients print as "invalid HTTP version".

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::Limits;

/// Which client addresses a server serves.
pub type Admit = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// What one source address holds: connections and body bytes in flight.
#[derive(Clone, Copy, Debug, Default)]
struct Use {
    connections: usize,
    body_bytes: u64,
}

/// Every source address's [`Use`], and the body bytes in flight from all of them, shared
/// by the listener and its connections.
#[derive(Clone, Default)]
struct Sources(Arc<Mutex<(HashMap<IpAddr, Use>, u64)>>);

impl Sources {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<IpAddr, Use>) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner).0)
    }

    fn with_all<R>(&self, f: impl FnOnce(&mut HashMap<IpAddr, Use>, &mut u64) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (m, total) = &mut *g;
        f(m, total)
    }

    /// A connection slot for `ip`, unless it holds `cap` already (0: no cap).
    fn take(&self, ip: IpAddr, cap: usize) -> Option<SourceSlot> {
        self.with(|m| {
            let u = m.entry(ip).or_default();
            if cap > 0 && u.connections >= cap {
                return None;
            }
            u.connections += 1;
            Some(SourceSlot {
                sources: self.clone(),
                ip,
            })
        })
    }

    fn forget_if_unused(m: &mut HashMap<IpAddr, Use>, ip: IpAddr) {
        if m.get(&ip)
            .is_some_and(|u| u.connections == 0 && u.body_bytes == 0)
        {
            m.remove(&ip);
        }
    }
}

/// One connection's hold on its source's count.
struct SourceSlot {
    sources: Sources,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        self.sources.with(|m| {
            if let Some(u) = m.get_mut(&self.ip) {
                u.connections = u.connections.saturating_sub(1);
            }
            Sources::forget_if_unused(m, self.ip);
        });
    }
}

/// The body bytes a connection's source, and all clients together, may still have in
/// flight.
#[derive(Clone)]
pub struct BodyBudget {
    sources: Sources,
    ip: IpAddr,
    cap: u64,
    total_cap: u64,
}

impl BodyBudget {
    /// Counts `n` more bytes in flight; false (and nothing counted) past either cap.
    pub fn charge(&self, n: u64) -> bool {
        self.sources.with_all(|m, total| {
            if self.total_cap > 0 && *total + n > self.total_cap {
                return false;
            }
            let u = m.entry(self.ip).or_default();
            if self.cap > 0 && u.body_bytes + n > self.cap {
                return false;
            }
            u.body_bytes += n;
            *total += n;
            true
        })
    }

    /// Counts `n` bytes no longer in flight.
    pub fn release(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.sources.with_all(|m, total| {
            *total = total.saturating_sub(n);
            if let Some(u) = m.get_mut(&self.ip) {
                u.body_bytes = u.body_bytes.saturating_sub(n);
            }
            Sources::forget_if_unused(m, self.ip);
        });
    }

    /// The cap (0: none).
    pub fn cap(&self) -> u64 {
        self.cap
    }
}

/// What a connection past its source's cap is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 57\r\n\r\n\
{\"error\":\"too many connections from this client address\"}";

/// A TCP listener with [`Limits`].
pub struct BoundedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    sources: Sources,
    admit: Option<Admit>,
}

impl BoundedListener {
    /// Wraps `inner`.
    pub fn new(inner: TcpListener, limits: Limits) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            tls: None,
            sources: Sources::default(),
            admit: None,
        }
    }

    /// Serves only clients whose address `admit` accepts; others are closed at accept.
    pub fn admit(mut self, admit: Admit) -> Self {
        self.admit = Some(admit);
        self
    }

    /// The bounds it was made with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Serves TLS with `config` on every connection.
    pub fn with_tls(mut self, config: Arc<tokio_rustls::rustls::ServerConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }
}

impl BoundedListener {
    /// The next connection the bounds admit, with its client's address.
    pub async fn accept(&mut self) -> (Bounded, SocketAddr) {
        // The semaphore is never closed; should it be, serve without the cap.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => {
                    if self.admit.as_ref().is_some_and(|admit| !admit(addr.ip())) {
                        tracing::debug!(%addr, "connection from an address this server does not serve: closed");
                        continue;
                    }
                    let Some(slot) = self.sources.take(addr.ip(), self.limits.per_source) else {
                        tracing::debug!(%addr, cap = self.limits.per_source, "too many connections from one address: refused");
                        if self.tls.is_none() {
                            // One try, never a wait: the socket's buffer takes it or not.
                            let _ = io.try_write(BUSY);
                        }
                        continue;
                    };
                    let _ = io.set_nodelay(true);
                    let io = match &self.tls {
                        Some(acceptor) => Stream::Sniff(Box::new((io, acceptor.clone()))),
                        None => Stream::Plain(io),
                    };
                    let budget = BodyBudget {
                        sources: self.sources.clone(),
                        ip: addr.ip(),
                        cap: self.limits.body_bytes_per_source,
                        total_cap: self.limits.body_bytes_total,
                    };
                    return (Bounded::new(io, permit, slot, budget, self.limits), addr);
                }
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait a
                    // moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// What a plain HTTP request to a TLS port is told (400, as nginx answers it), in plain
/// HTTP.
const PLAIN_TO_TLS: &str =
    "{\"error\":\"this port speaks TLS: use https:// (a plain HTTP request was sent)\"}";

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a connection's first byte says it speaks, on a TLS port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FirstByte {
    /// A TLS handshake record.
    Tls,
    /// An HTTP method's first letter: plain HTTP sent to the TLS port.
    PlainHttp,
    /// Anything else: left to the TLS handshake to refuse.
    Other,
}

impl FirstByte {
    fn of(b: u8) -> Self {
        match b {
            TLS_HANDSHAKE_RECORD => FirstByte::Tls,
            b'A'..=b'Z' => FirstByte::PlainHttp,
            _ => FirstByte::Other,
        }
    }
}

/// A connection's byte stream: plain, or TLS (handshaking, then established).
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// A TLS port's connection before its first byte has been seen.
    Sniff(Box<(TcpStream, tokio_rustls::TlsAcceptor)>),
    /// The TLS handshake, driven by the first reads and writes.
    Handshake(Box<tokio_rustls::Accept<TcpStream>>),
    /// Established TLS.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The handshake failed.
    Failed,
}

impl Stream {
    /// Drives a handshake to its end; `Ready(Ok)` once the stream carries data.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Stream::Sniff(sniff) = self {
            let mut first = [0u8; 1];
            let mut buf = ReadBuf::new(&mut first);
            let seen = match ready!(sniff.0.poll_peek(cx, &mut buf)) {
                Ok(0) => None,
                Ok(_) => Some(FirstByte::of(first[0])),
                Err(e) => {
                    *self = Stream::Failed;
                    return Poll::Ready(Err(e));
                }
            };
            let Stream::Sniff(sniff) = std::mem::replace(self, Stream::Failed) else {
                unreachable!("matched above")
            };
            let (io, acceptor) = *sniff;
            match seen {
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed before the TLS handshake",
                    )));
                }
                Some(FirstByte::PlainHttp) => {
                    refuse_plain_http(&io);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a plain HTTP request on the TLS port: answered with the https hint",
                    )));
                }
                Some(FirstByte::Tls | FirstByte::Other) => {
                    *self = Stream::Handshake(Box::new(acceptor.accept(io)));
                }
            }
        }
        if let Stream::Handshake(accept) = self {
            match ready!(Pin::new(accept.as_mut()).poll(cx)) {
                Ok(tls) => *self = Stream::Tls(Box::new(tls)),
                Err(e) => {
                    *self = Stream::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        match self {
            Stream::Failed => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the TLS handshake failed",
            ))),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Sniff(_) | Stream::Handshake(_) | Stream::Failed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
            Stream::Sniff(_) | Stream::Handshake(_) | Stream::Failed => Poll::Ready(Ok(0)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Sniff(_) | Stream::Handshake(_) | Stream::Failed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Sniff(_) | Stream::Handshake(_) | Stream::Failed => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Sniff(_) | Stream::Handshake(_) | Stream::Failed => Poll::Ready(Ok(0)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Sniff(_) | Stream::Handshake(_) | Stream::Failed => false,
        }
    }
}

/// Answers a plain HTTP request on the TLS port with [`PLAIN_TO_TLS`]. What the client
/// has sent so far is read first (one try, never a wait), so that closing the socket sends
/// a FIN after the answer rather than a reset that could overtake it.
fn refuse_plain_http(io: &TcpStream) {
    let mut scratch = [0u8; 4096];
    for _ in 0..16 {
        match io.try_read(&mut scratch) {
            Ok(n) if n == scratch.len() => continue,
            _ => break,
        }
    }
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{PLAIN_TO_TLS}",
        PLAIN_TO_TLS.len()
    );
    let _ = io.try_write(answer.as_bytes());
}

/// An accepted connection that holds its slot and closes itself when quiet.
pub struct Bounded {
    io: Stream,
    _permit: Option<OwnedSemaphorePermit>,
    _slot: SourceSlot,
    budget: BodyBudget,
    idle: Duration,
    quiet: Pin<Box<Sleep>>,
}

impl Bounded {
    fn new(
        io: Stream,
        permit: Option<OwnedSemaphorePermit>,
        slot: SourceSlot,
        budget: BodyBudget,
        limits: Limits,
    ) -> Self {
        Self {
            io,
            _permit: permit,
            _slot: slot,
            budget,
            idle: limits.idle,
            quiet: Box::pin(tokio::time::sleep(limits.first_bytes)),
        }
    }

    /// The body budget of its source address.
    pub fn body_budget(&self) -> BodyBudget {
        self.budget.clone()
    }

    fn active(&mut self) {
        let at = Instant::now() + self.idle;
        self.quiet.as_mut().reset(at);
    }

    /// Whether the quiet timer has run out (and registers for its wake-up if not).
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.quiet.as_mut().poll(cx).is_ready()
    }
}

fn quiet_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection quiet for too long")
}

impl AsyncRead for Bounded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.timed_out(cx) => Poll::Ready(Err(quiet_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.active();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if this.timed_out(cx) => Poll::Ready(Err(quiet_error())),
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        if n > 0 {
            this.active();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A client's address, as the handlers see it (`ConnectInfo<PeerAddr>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);
