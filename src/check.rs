//! `meshprobe check`: ask the coordinator for a fresh round, wait for it, print it.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use meshprobe_core::CheckReport;
use meshprobe_core::render::{Style, render};
use tokio::time::Instant;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Findings and per-layer tables for people.
    Table,
    /// CONTRACT §3 JSON.
    Json,
}

/// What `check` needs.
#[derive(Clone, Debug)]
pub struct CheckArgs {
    /// Coordinator base URL.
    pub coordinator: String,
    /// Output format.
    pub output: Output,
    /// Give up after this long (exit 2).
    pub timeout: Duration,
    /// Write the failing pairs' captured packets as pcap files here.
    pub pcap: Option<std::path::PathBuf>,
}

/// `check` could not produce a result (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No HTTP answer.
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Unreachable {
        /// URL.
        url: String,
        /// Why, innermost cause first.
        reason: String,
    },
    /// An HTTP error from the coordinator.
    #[error("the coordinator at {url} answered HTTP {status}: {body}")]
    Http {
        /// URL.
        url: String,
        /// Status.
        status: u16,
        /// Body.
        body: String,
    },
    /// The round did not finish in time.
    #[error("round {round} did not finish within {timeout:?} ({progress})")]
    Timeout {
        /// Round.
        round: u64,
        /// The limit.
        timeout: Duration,
        /// Last progress seen.
        progress: String,
    },
    /// The coordinator's answer did not parse.
    #[error("the coordinator at {url} sent an unreadable answer: {reason}")]
    Garbled {
        /// URL.
        url: String,
        /// Why.
        reason: String,
    },
}

fn innermost(e: &reqwest::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    if e.is_timeout() {
        "timed out".to_owned()
    } else {
        inner.to_string()
    }
}

/// Sends a request to the coordinator; a success's JSON body, or the error that says why not.
async fn send_json(
    req: reqwest::RequestBuilder,
    base: &str,
    url: &str,
) -> Result<serde_json::Value, CheckError> {
    let resp = req.send().await.map_err(|e| CheckError::Unreachable {
        url: base.to_owned(),
        reason: innermost(&e),
    })?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        return Err(CheckError::Http {
            url: url.to_owned(),
            status,
            body: resp.text().await.unwrap_or_default(),
        });
    }
    resp.json().await.map_err(|e| CheckError::Garbled {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

/// Triggers a round and waits for its report.
pub async fn fetch(args: &CheckArgs) -> Result<CheckReport, CheckError> {
    let base = args.coordinator.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(CheckError::Unreachable {
            url: base.to_owned(),
            reason: "the coordinator URL must start with http:// or https://".to_owned(),
        });
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| CheckError::Unreachable {
            url: base.to_owned(),
            reason: e.to_string(),
        })?;
    let deadline = Instant::now() + args.timeout;
    let url = format!("{base}/v1/rounds");
    let body = if args.pcap.is_some() {
        r#"{"capture":true}"#
    } else {
        ""
    };
    let req = http
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .timeout(args.timeout);
    let v = send_json(req, base, &url).await?;
    let round = v["round"].as_u64().ok_or_else(|| CheckError::Garbled {
        url: url.clone(),
        reason: format!("no round id in {v}"),
    })?;

    let progress_on = std::io::stderr().is_terminal();
    let mut progress = String::from("no progress reported");
    let spinner = ['|', '/', '-', '\\'];
    let mut tick = 0usize;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            if progress_on {
                eprint!("\r\x1b[K");
            }
            return Err(CheckError::Timeout {
                round,
                timeout: args.timeout,
                progress,
            });
        }
        let wait = left.min(Duration::from_secs(1));
        let url = format!("{base}/v1/rounds/{round}?wait={}", wait.as_secs().max(1));
        let resp = http
            .get(&url)
            .timeout(wait + Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| CheckError::Unreachable {
                url: base.to_owned(),
                reason: innermost(&e),
            })?;
        match resp.status().as_u16() {
            200 => {
                if progress_on {
                    eprint!("\r\x1b[K");
                }
                return resp.json().await.map_err(|e| CheckError::Garbled {
                    url,
                    reason: e.to_string(),
                });
            }
            202 => {
                let v: serde_json::Value = resp.json().await.unwrap_or_default();
                progress = format!("{}/{} agents reported", v["reported"], v["expected"]);
                if progress_on {
                    eprint!("\r{} round {round}: {progress}", spinner[tick % 4]);
                    let _ = std::io::stderr().flush();
                    tick += 1;
                }
            }
            status => {
                return Err(CheckError::Http {
                    url,
                    status,
                    body: resp.text().await.unwrap_or_default(),
                });
            }
        }
    }
}

/// The overlay pairs that failed this round (unordered, at most 16).
pub fn failing_pairs(report: &CheckReport) -> Vec<(String, String)> {
    use meshprobe_core::{CellState, Layer};
    let mut pairs = std::collections::BTreeSet::new();
    for layer in [
        Layer::GatewayFromHost,
        Layer::GatewayFromPod,
        Layer::PodToPod,
        Layer::PodToPodFullSize,
    ] {
        for (s, row) in report.layers.get(&layer).into_iter().flatten() {
            for (d, c) in row {
                if s != d && c.state == CellState::Fail {
                    pairs.insert(if s < d {
                        (s.clone(), d.clone())
                    } else {
                        (d.clone(), s.clone())
                    });
                }
            }
        }
    }
    pairs.into_iter().take(16).collect()
}

/// Fetches the packets both ends of every failing pair captured and writes them as pcap
/// files (`round-R-A-B.at-A.pcap`): what tcpdump would have shown on each end.
pub async fn write_pcaps(
    args: &CheckArgs,
    report: &CheckReport,
    dir: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, CheckError> {
    let base = args.coordinator.trim_end_matches('/');
    let io = |e: std::io::Error, p: &std::path::Path| CheckError::Garbled {
        url: p.display().to_string(),
        reason: format!("cannot write: {e}"),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    let http =
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| CheckError::Unreachable {
                url: base.to_owned(),
                reason: e.to_string(),
            })?;
    let mut written = Vec::new();
    for (a, b) in failing_pairs(report) {
        for (at, peer) in [(&a, &b), (&b, &a)] {
            let url = format!(
                "{base}/v1/rounds/{}/packets?node={at}&peer={peer}",
                report.round
            );
            let v = send_json(http.get(&url).timeout(args.timeout), base, &url).await?;
            let packets: Vec<meshprobe_core::capture::CapturedPacket> =
                serde_json::from_value(v["packets"].clone()).map_err(|e| CheckError::Garbled {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            let path = dir.join(format!("round-{}-{a}-{b}.at-{at}.pcap", report.round));
            std::fs::write(&path, meshprobe_core::capture::pcap(&packets, 65_535))
                .map_err(|e| io(e, &path))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Runs `check` and prints the result; returns the exit code (0 healthy, 1 findings or
/// failing cells, 2 could not check).
pub async fn run(args: CheckArgs) -> u8 {
    match fetch(&args).await {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            match args.output {
                Output::Json => {
                    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
                    let _ = writeln!(out, "{text}");
                }
                Output::Table => {
                    let color =
                        std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                    let _ = write!(out, "{}", render(&report, Style { color }));
                }
            }
            if let Some(dir) = &args.pcap {
                match write_pcaps(&args, &report, dir).await {
                    Ok(files) if files.is_empty() => {
                        eprintln!("pcap: no failing overlay pair, nothing written")
                    }
                    Ok(files) => {
                        eprintln!(
                            "pcap: wrote {} files (read them with `tcpdump -nr FILE`):",
                            files.len()
                        );
                        for f in files {
                            eprintln!("  {}", f.display());
                        }
                    }
                    Err(e) => {
                        eprintln!("meshprobe check: error: pcap: {e}");
                        return 2;
                    }
                }
            }
            if report.healthy { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("meshprobe check: error: {e}");
            2
        }
    }
}
