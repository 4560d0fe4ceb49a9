//! meshprobe's one bounded HTTP/1.1 server, for the coordinator and for the host agent's
//! relay: every connection is bounded in time and in bytes, so that anonymous slow or idle
//! clients can neither exhaust descriptors or memory nor hold the port or a shutdown.
//!
//! | bound | field | what it stops |
//! |---|---|---|
//! | open connections | [`Limits::max_connections`] | descriptor exhaustion |
//! | connections per source address | [`Limits::per_source`] | one client taking every slot |
//! | time to the first byte (TLS handshake included) | [`Limits::first_bytes`] | silent connections |
//! | time to a whole request head | [`Limits::head`] | a head dripped a byte at a time |
//! | head buffer | [`Limits::head_bytes`] | 400 KB held per unfinished head |
//! | body rate, after a grace | [`Limits::body_min_rate`], [`Limits::body_grace`] | a body dripped a byte at a time |
//! | body bytes in flight per source | [`Limits::body_bytes_per_source`] | many slow uploads from one client |
//! | body bytes in flight in all | [`Limits::body_bytes_total`] | many clients' uploads passing the memory limit |
//! | quiet time (no read, no write) | [`Limits::idle`] | a client that stops reading its answer |
//! | graceful shutdown | [`Limits::shutdown_grace`] | a slow client holding SIGTERM |
//!
//! [`serve`] runs the accept loop over a [`BoundedListener`] with hyper's HTTP/1 server
//! (its head deadline and head buffer) and hands each request to an axum `Router`, with
//! the client's address as `ConnectInfo<PeerAddr>` and its body behind [`body::MinRate`].

pub mod body;
pub mod listener;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt;

pub use listener::{Bounded, BoundedListener, PeerAddr};

/// The server's bounds. [`Limits::for_this_process`] gives the coordinator's defaults;
/// [`Limits::relay`] the relay's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; past that, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections open at once from one source address (0: no cap); past that, a new
    /// one is answered 503 and closed at once.
    pub per_source: usize,
    /// Time from accept to a connection's first byte (TLS handshake included).
    pub first_bytes: Duration,
    /// Time from the first byte of a request head (or the end of the previous answer)
    /// to its last: also how long a kept-alive connection may wait for its next request.
    pub head: Duration,
    /// The largest request head (request line and headers); larger ones get 431.
    pub head_bytes: usize,
    /// Time a connection may neither read nor write (an answer the client stops reading).
    pub idle: Duration,
    /// After [`Self::body_grace`], a request body must have arrived at this many bytes
    /// a second on average, or the request ends (0: no floor).
    pub body_min_rate: u64,
    /// Time a request body may take before the rate floor applies.
    pub body_grace: Duration,
    /// Body bytes one source address may have in flight at once (0: no cap).
    pub body_bytes_per_source: u64,
    /// Body bytes all clients together may have in flight at once (0: no cap).
    pub body_bytes_total: u64,
    /// Time open connections get to finish after shutdown begins; then they are closed.
    pub shutdown_grace: Duration,
}

/// File descriptors kept for everything but client connections (the Kubernetes client,
/// logs, the runtime).
const RESERVED_FDS: u64 = 64;

/// The smallest head buffer hyper accepts.
const MIN_HEAD_BYTES: usize = 8192;

impl Limits {
    /// The coordinator's defaults: as many connections as the file-descriptor limit leaves
    /// room for (at most 65,536), 64 per source address, 10 s to the first byte and to a
    /// whole head, 64 KiB heads, 90 s quiet (beyond the API's longest wait of 60 s), bodies
    /// at 32 KiB/s after 10 s, 32 MiB of bodies in flight per source and 128 MiB in all
    /// (within the deployed 512 Mi), 10 s to shut down.
    pub fn for_this_process() -> Self {
        let fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(65_536 + RESERVED_FDS);
        Self {
            max_connections: fds.saturating_sub(RESERVED_FDS).clamp(16, 65_536) as usize,
            per_source: 64,
            first_bytes: Duration::from_secs(10),
            head: Duration::from_secs(10),
            head_bytes: 64 << 10,
            idle: Duration::from_secs(90),
            body_min_rate: 32 << 10,
            body_grace: Duration::from_secs(10),
            body_bytes_per_source: 32 << 20,
            body_bytes_total: 128 << 20,
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// The relay's: one pod agent is its only client, so few connections (16, 8 per
    /// source), 16 KiB heads and 16 MiB of bodies in flight (two reports; within the
    /// agent's deployed 64 Mi); the same deadlines as the coordinator's.
    pub fn relay() -> Self {
        Self {
            max_connections: 16,
            per_source: 8,
            head_bytes: 16 << 10,
            body_bytes_per_source: 16 << 20,
            body_bytes_total: 16 << 20,
            ..Self::for_this_process()
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets open
/// connections finish their requests for up to [`Limits::shutdown_grace`], closes the rest
/// and returns.
pub async fn serve<F>(mut listener: BoundedListener, app: Router, shutdown: F)
where
    F: Future<Output = ()> + Send,
{
    let limits = listener.limits();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut open = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (io, peer) = listener.accept() => {
                let (app, stopped) = (app.clone(), stopped.clone());
                open.spawn(connection(io, peer, app, limits, stopped));
            }
            Some(_) = open.join_next(), if !open.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    // The port closes now: new clients are refused, not queued.
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while open.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = open.len(),
            grace = ?limits.shutdown_grace,
            "connections still open at the shutdown deadline: closed"
        );
        open.abort_all();
        while open.join_next().await.is_some() {}
    }
}

async fn connection(
    io: Bounded,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let budget = io.body_budget();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let app = app.clone();
        let budget = budget.clone();
        async move {
            let (mut parts, incoming) = req.into_parts();
            parts.extensions.insert(ConnectInfo(PeerAddr(peer)));
            let body =
                body::MinRate::new(incoming, limits.body_min_rate, limits.body_grace, budget);
            let req = hyper::Request::from_parts(parts, axum::body::Body::new(body));
            Ok::<_, Infallible>(app.oneshot(req).await.unwrap_or_else(|e| match e {}))
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head)
        .max_buf_size(limits.head_bytes.max(MIN_HEAD_BYTES));
    let conn = http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        }
        () = until_stopped(&mut stopped) => {
            // Finish the request in hand, then close (the caller's deadline bounds it).
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Returns once shutdown has begun (or its sender is gone).
async fn until_stopped(stopped: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}
