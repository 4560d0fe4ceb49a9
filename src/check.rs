//! `meshprobe check`: ask the coordinator for a fresh round, wait for it, print it.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use meshprobe_core::api::RoundRequest;
use meshprobe_core::render::{Style, render};
use meshprobe_core::{CheckReport, NodeName};
use meshprobe_probe::client::{ClientError, ClientOptions, CoordinatorClient, RoundAnswer};
use tokio::time::Instant;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The verdict and findings, then one line per healthy layer and a compact grid per
    /// layer with failures.
    Table,
    /// Like `table`, with every layer's full matrix (RTT and loss per cell).
    Wide,
    /// CONTRACT §3 JSON.
    Json,
    /// JUnit XML (one testcase per layer and per finding), for CI.
    Junit,
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
    /// The credential and the CA to verify the coordinator with.
    pub client: ClientOptions,
    /// Save this round as a baseline of this name.
    pub save_baseline: Option<String>,
    /// Compare this round with this baseline (or `latest-healthy`), and print what changed
    /// first.
    pub baseline: Option<String>,
    /// Also write the round as JUnit XML to this file.
    pub junit: Option<std::path::PathBuf>,
}

/// `--output json` with `--baseline`: the report (CONTRACT §3) and, as an extension, what
/// changed since the baseline.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WithDiff<'a> {
    #[serde(flatten)]
    report: &'a CheckReport,
    baseline: &'a meshprobe_core::diff::ReportDiff,
}

/// `check` could not produce a result (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The coordinator could not be asked, or answered with an error.
    #[error(transparent)]
    Coordinator(#[from] ClientError),
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
    /// A pcap file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `meshprobe baselines`: the baselines the coordinator keeps, newest first (exit 0), or
/// why they cannot be listed (exit 2).
pub async fn list_baselines(
    coordinator: &str,
    client: &ClientOptions,
    json: bool,
    timeout: Duration,
) -> u8 {
    let answer = match CoordinatorClient::with_options(coordinator, client) {
        Ok(c) => c.baselines(timeout).await,
        Err(e) => Err(e),
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "meshprobe baselines: error: {}",
                crate::cli::error_line(CheckError::from(e))
            );
            return 2;
        }
    };
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    } else {
        let _ = write!(out, "{}", render_baselines(&answer));
    }
    0
}

/// The baselines as a table (names and owners escaped: they are the coordinator's text).
fn render_baselines(a: &meshprobe_core::api::BaselinesAnswer) -> String {
    use meshprobe_core::text::{printable_line, utc};
    if a.baselines.is_empty() {
        return "no baselines saved (save one with `meshprobe check --save-baseline NAME`)\n"
            .to_owned();
    }
    let rows: Vec<[String; 4]> = a
        .baselines
        .iter()
        .map(|b| {
            [
                printable_line(&b.name, 63),
                b.round.to_string(),
                utc(b.saved_ms),
                b.owner
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |o| printable_line(o, 63)),
            ]
        })
        .collect();
    let head = ["NAME", "ROUND", "SAVED", "OWNER"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = String::new();
    for r in std::iter::once(head.map(str::to_owned)).chain(rows) {
        out.push_str(&format!(
            "{:<w0$}  {:>w1$}  {:<w2$}  {}\n",
            r[0], r[1], r[2], r[3]
        ));
    }
    out
}

/// Triggers a round and waits for its report.
pub async fn fetch(
    client: &CoordinatorClient,
    args: &CheckArgs,
) -> Result<CheckReport, CheckError> {
    let deadline = Instant::now() + args.timeout;
    let started = client
        .start_round(
            &RoundRequest {
                capture: args.pcap.is_some(),
            },
            args.timeout,
        )
        .await?;
    let round = started.round;

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
        match client
            .round(round, left.min(Duration::from_secs(1)))
            .await?
        {
            RoundAnswer::Done(report) => {
                if progress_on {
                    eprint!("\r\x1b[K");
                }
                return Ok(*report);
            }
            RoundAnswer::Running(p) => {
                progress = format!("{}/{} agents reported", p.reported, p.expected);
                if progress_on {
                    eprint!("\r{} round {round}: {progress}", spinner[tick % 4]);
                    let _ = std::io::stderr().flush();
                    tick += 1;
                }
            }
        }
    }
}

/// The overlay pairs that failed this round (unordered, at most 16).
pub fn failing_pairs(report: &CheckReport) -> Vec<(NodeName, NodeName)> {
    use meshprobe_core::{CellState, Layer};
    let mut pairs = std::collections::BTreeSet::new();
    for layer in [
        Layer::GatewayFromHost,
        Layer::GatewayFromPod,
        Layer::PodToPod,
        Layer::PodToPodFullSize,
    ] {
        for (s, d, c) in report.layers.get(&layer).into_iter().flat_map(|m| m.iter()) {
            if s != d && c.state == CellState::Fail {
                pairs.insert(if s < d { (s, d) } else { (d, s) });
            }
        }
    }
    // Overlay columns are node names; anything else cannot be a pair.
    pairs
        .into_iter()
        .filter_map(|(a, b)| Some((NodeName::new(a).ok()?, NodeName::new(b).ok()?)))
        .take(16)
        .collect()
}

/// Fetches the packets both ends of every failing pair captured and writes them as pcap
/// files (`round-R-A-B.at-A.pcap`): what tcpdump would have shown on each end.
pub async fn write_pcaps(
    client: &CoordinatorClient,
    args: &CheckArgs,
    report: &CheckReport,
    dir: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, CheckError> {
    let write_err = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| CheckError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let mut written = Vec::new();
    for (a, b) in failing_pairs(report) {
        for (at, peer) in [(&a, &b), (&b, &a)] {
            let answer = client.packets(report.round, at, peer, args.timeout).await?;
            let path = dir.join(format!("round-{}-{a}-{b}.at-{at}.pcap", report.round));
            std::fs::write(
                &path,
                meshprobe_core::capture::pcap(&answer.packets, 65_535),
            )
            .map_err(write_err(&path))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Runs `check` and prints the result; returns the exit code (0 healthy, 1 findings or
/// failing cells, 2 could not check).
pub async fn run(args: CheckArgs) -> u8 {
    let client = match CoordinatorClient::with_options(&args.coordinator, &args.client) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "meshprobe check: error: {}",
                crate::cli::error_line(CheckError::from(e))
            );
            return 2;
        }
    };
    // The baseline is read before the round: `latest-healthy` must not be this round.
    let before = match &args.baseline {
        Some(name) => match client.baseline(name, args.timeout).await {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!(
                    "meshprobe check: error: --baseline {name}: {}",
                    crate::cli::error_line(e)
                );
                return 2;
            }
        },
        None => None,
    };
    // When the baseline was saved, for the diff's header (a coordinator that cannot list
    // them still compares).
    let saved_ms = match &args.baseline {
        Some(name) if name != meshprobe_core::api::LATEST_HEALTHY => client
            .baselines(args.timeout)
            .await
            .ok()
            .and_then(|a| a.baselines.into_iter().find(|b| &b.name == name))
            .map(|b| b.saved_ms),
        _ => None,
    };
    match fetch(&client, &args).await {
        Ok(report) => {
            let diff = before.as_ref().map(|b| meshprobe_core::diff::ReportDiff {
                baseline_name: args.baseline.clone(),
                baseline_saved_ms: saved_ms,
                ..meshprobe_core::diff::compare(b, &report)
            });
            let mut out = std::io::stdout().lock();
            let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            match args.output {
                Output::Json => {
                    let text = match &diff {
                        Some(d) => serde_json::to_string_pretty(&WithDiff {
                            report: &report,
                            baseline: d,
                        }),
                        None => serde_json::to_string_pretty(&report),
                    }
                    .unwrap_or_default();
                    let _ = writeln!(out, "{text}");
                }
                Output::Junit => {
                    let _ = write!(out, "{}", meshprobe_core::junit::to_junit(&report));
                }
                Output::Table | Output::Wide => {
                    if let Some(d) = &diff {
                        let _ = writeln!(out, "{}", meshprobe_core::diff::render_diff(d, 20));
                    }
                    let text = if args.output == Output::Wide {
                        meshprobe_core::render::render_wide(&report, Style { color })
                    } else {
                        render(&report, Style { color })
                    };
                    let _ = write!(out, "{text}");
                }
            }
            drop(out);
            if let Some(path) = &args.junit
                && let Err(e) = std::fs::write(path, meshprobe_core::junit::to_junit(&report))
            {
                eprintln!(
                    "meshprobe check: error: --junit {}: {}",
                    path.display(),
                    crate::cli::error_line(e)
                );
                return 2;
            }
            if let Some(name) = &args.save_baseline {
                match client
                    .save_baseline(name, Some(report.round), args.timeout)
                    .await
                {
                    Ok(s) => eprintln!("baseline {} saved: round {}", s.name, s.round),
                    Err(e) => {
                        eprintln!(
                            "meshprobe check: error: --save-baseline {name}: {}",
                            crate::cli::error_line(e)
                        );
                        return 2;
                    }
                }
            }
            if let Some(dir) = &args.pcap {
                match write_pcaps(&client, &args, &report, dir).await {
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
                        eprintln!(
                            "meshprobe check: error: pcap: {}",
                            crate::cli::error_line(e)
                        );
                        return 2;
                    }
                }
            }
            // The coordinator's word is checked against the report's own content.
            if report.healthy && report.is_healthy() {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("meshprobe check: error: {}", crate::cli::error_line(e));
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use meshprobe_core::api::{BaselineInfo, BaselinesAnswer};

    #[test]
    fn baselines_print_as_a_table_with_owners_escaped() {
        let a = BaselinesAnswer {
            baselines: vec![
                BaselineInfo {
                    name: "pre-upgrade".into(),
                    round: 1234,
                    saved_ms: 1_796_418_307_000,
                    owner: Some("ci\u{1b}[2J".into()),
                },
                BaselineInfo {
                    name: "b".into(),
                    round: 7,
                    saved_ms: 0,
                    owner: None,
                },
            ],
        };
        let text = super::render_baselines(&a);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME         ROUND  SAVED"), "{text}");
        assert!(
            lines[1].starts_with("pre-upgrade   1234  2026-12-04 21:05:07 UTC  ci\\u{1b}[2J"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("b                7  1970-01-01 00:00:00 UTC  -"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'));
        assert!(super::render_baselines(&BaselinesAnswer::default()).contains("--save-baseline"));
    }
}
