//! The coordinator's listener: a cap on open connections, and connections that go quiet
//! are closed, so that idle or slow clients can neither exhaust file descriptors nor hold
//! the port.
//!
//! - At most [`Limits::max_connections`] connections are open; past that, new ones wait in
//!   the kernel's backlog until one closes (never an `accept` error loop).
//! - A connection must send its first bytes within [`Limits::first_bytes`].
//! - A connection that neither reads nor writes for [`Limits::idle`] is closed. Long polls
//!   are not idle: they write a heartbeat, or answer within the API's longest wait, which
//!   `idle` exceeds.
//! - With TLS ([`BoundedListener::with_tls`]), the handshake runs on the connection's own
//!   first reads and writes, never in `accept`: a slow handshake holds its own slot only,
//!   and must finish within [`Limits::first_bytes`] like any first request.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The listener's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time from accept to a connection's first byte.
    pub first_bytes: Duration,
    /// Time a connection may neither read nor write.
    pub idle: Duration,
}

/// File descriptors kept for everything but client connections (the Kubernetes client,
/// logs, the runtime).
const RESERVED_FDS: u64 = 64;

impl Limits {
    /// The defaults: 10 s to the first byte, 90 s idle (beyond the API's longest wait of
    /// 60 s), and as many connections as the process's file-descriptor limit leaves room
    /// for, at most 65,536.
    pub fn for_this_process() -> Self {
        let fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(65_536 + RESERVED_FDS);
        Self {
            max_connections: fds.saturating_sub(RESERVED_FDS).clamp(16, 65_536) as usize,
            first_bytes: Duration::from_secs(10),
            idle: crate::api::MAX_WAIT + Duration::from_secs(30),
        }
    }
}

/// A TCP listener with [`Limits`].
pub struct BoundedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl BoundedListener {
    /// Wraps `inner`.
    pub fn new(inner: TcpListener, limits: Limits) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            tls: None,
        }
    }

    /// Serves TLS with `config` on every connection.
    pub fn with_tls(mut self, config: Arc<tokio_rustls::rustls::ServerConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = Bounded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed; should it be, serve without the cap.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => {
                    let _ = io.set_nodelay(true);
                    let io = match &self.tls {
                        Some(acceptor) => Stream::Handshake(Box::new(acceptor.accept(io))),
                        None => Stream::Plain(io),
                    };
                    return (Bounded::new(io, permit, self.limits), addr);
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

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection's byte stream: plain, or TLS (handshaking, then established).
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
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
            Stream::Handshake(_) | Stream::Failed => Poll::Ready(Ok(())),
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
            Stream::Handshake(_) | Stream::Failed => Poll::Ready(Ok(0)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Handshake(_) | Stream::Failed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Handshake(_) | Stream::Failed => Poll::Ready(Ok(())),
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
            Stream::Handshake(_) | Stream::Failed => Poll::Ready(Ok(0)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Handshake(_) | Stream::Failed => false,
        }
    }
}

/// An accepted connection that holds its slot and closes itself when quiet.
pub struct Bounded {
    io: Stream,
    _permit: Option<OwnedSemaphorePermit>,
    idle: Duration,
    quiet: Pin<Box<Sleep>>,
}

impl Bounded {
    fn new(io: Stream, permit: Option<OwnedSemaphorePermit>, limits: Limits) -> Self {
        Self {
            io,
            _permit: permit,
            idle: limits.idle,
            quiet: Box::pin(tokio::time::sleep(limits.first_bytes)),
        }
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

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, BoundedListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, BoundedListener>) -> Self {
        Self(*stream.remote_addr())
    }
}
