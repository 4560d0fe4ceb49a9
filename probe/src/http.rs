//! HTTP probes: CoreDNS `/metrics`, NodePorts and ingresses.

use std::time::Duration;

use meshprobe_core::plan::HttpCheck;
use meshprobe_core::promtext;
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
) -> Result<Duration, String> {
    let start = Instant::now();
    tokio::time::timeout(timeout, get(client, url, host, check, start))
        .await
        .unwrap_or_else(|_| Err("timeout".to_owned()))
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    host: Option<&str>,
    check: HttpCheck,
    start: Instant,
) -> Result<Duration, String> {
    let mut req = client.get(url);
    if let Some(h) = host {
        req = req.header(reqwest::header::HOST, h);
    }
    let mut resp = req.send().await.map_err(describe)?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("body larger than {MAX_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    let rtt = start.elapsed();
    if check == HttpCheck::PrometheusText {
        let text = std::str::from_utf8(&body).map_err(|_| "body is not UTF-8".to_owned())?;
        promtext::validate(text).map_err(|e| format!("not Prometheus text: {e}"))?;
    }
    Ok(rtt)
}

fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".to_owned()
    } else if e.is_connect() {
        // The innermost cause says "Connection refused" or "No route to host".
        let mut inner: &dyn std::error::Error = &e;
        while let Some(next) = inner.source() {
            inner = next;
        }
        format!("connect: {inner}")
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(next) = src {
            s = format!("{s}: {next}");
            src = next.source();
        }
        s
    }
}
