//! HTTP probes: CoreDNS `/metrics`, NodePorts and ingresses.

use std::time::Duration;

use meshprobe_core::plan::HttpCheck;
use meshprobe_core::promtext;
use meshprobe_core::{FailKind, Failure};
use tokio::time::Instant;

/// Bodies larger than this are cut off and count as a failure (a metrics page is far
/// smaller; an unbounded read could exhaust the agent's memory).
pub const MAX_BODY: usize = 4 << 20;

/// Builds the client every HTTP probe shares: no proxy (a probe must take the path it is
/// testing), no connection reuse (each probe opens its own connection, so it really
/// crosses the network). Each probe sets its own timeout (the plan's).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// GETs `url` (with `host` as the Host header, if given) and checks the answer.
/// Returns the RTT on success and the reason on failure.
pub async fn probe(
    client: &reqwest::Client,
    url: &str,
    host: Option<&str>,
    check: HttpCheck,
    timeout: Duration,
) -> Result<Duration, Failure> {
    let start = Instant::now();
    tokio::time::timeout(timeout, get(client, url, host, check, start))
        .await
        .unwrap_or_else(|_| Err(Failure::timeout()))
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    host: Option<&str>,
    check: HttpCheck,
    start: Instant,
) -> Result<Duration, Failure> {
    let mut req = client.get(url);
    if let Some(h) = host {
        req = req.header(reqwest::header::HOST, h);
    }
    let mut resp = req.send().await.map_err(describe)?;
    let status = resp.status();
    if !status.is_success() {
        let kind = match status.as_u16() {
            502..=504 => FailKind::UpstreamError,
            _ => FailKind::HttpStatus,
        };
        return Err(Failure::new(kind, format!("HTTP {}", status.as_u16())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(Failure::new(
                FailKind::BadBody,
                format!("body larger than {MAX_BODY} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let rtt = start.elapsed();
    if check == HttpCheck::PrometheusText {
        let bad = |why: String| Failure::new(FailKind::BadBody, why);
        let text = std::str::from_utf8(&body).map_err(|_| bad("body is not UTF-8".to_owned()))?;
        promtext::validate(text).map_err(|e| bad(format!("not Prometheus text: {e}")))?;
    }
    Ok(rtt)
}

fn describe(e: reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::timeout()
    } else if e.is_connect() {
        // The innermost cause says "Connection refused" or "No route to host"; its kind
        // comes from the socket error's errno, wherever it sits in the chain.
        let mut inner: &dyn std::error::Error = &e;
        while let Some(next) = inner.source() {
            inner = next;
        }
        let kind = io_kind(&e).unwrap_or(FailKind::Timeout);
        Failure::new(kind, format!("connect: {inner}"))
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(next) = src {
            s = format!("{s}: {next}");
            src = next.source();
        }
        // Connected, then the exchange broke: a reset is the peer's answer; anything
        // else is an answer that is not HTTP.
        Failure::new(io_kind(&e).unwrap_or(FailKind::BadBody), s)
    }
}

/// The kind of the innermost socket error in `e`'s chain, read from its errno.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<FailKind> {
    let mut at: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut kind = None;
    while let Some(err) = at {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            kind = Some(FailKind::of_io(io));
        }
        at = err.source();
    }
    kind
}
