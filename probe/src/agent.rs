//! The agent loop: poll for a plan, run it, report, repeat.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::future::join_all;
use meshprobe_core::plan::{AgentReport, Assignment, Plan, ProbeResult};
use meshprobe_core::{AgentKind, Layer, NodeName};
use tokio::time::sleep;

use crate::client::CoordinatorClient;
use crate::dns::{DnsOutcome, query_a};
use crate::icmp::{Pinger, Schedule, Target};

/// Everything an agent needs to run.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The node this agent runs on.
    pub node: NodeName,
    /// Host-network or pod-network agent.
    pub kind: AgentKind,
    /// Coordinator base URL (for a pod agent: its host agent's relay).
    pub coordinator: String,
    /// The pod agent's own IP; detected from the route to the coordinator when absent.
    pub pod_ip: Option<Ipv4Addr>,
    /// Where the host agent serves the relay for its pod agent; `None` turns it off.
    pub relay_listen: Option<SocketAddr>,
    /// How long one poll for the next round may wait (default 10 s).
    pub poll_wait: Duration,
    /// Where the last plan is kept across restarts (a volume in the pod); `None` keeps it
    /// in memory only.
    pub state_dir: Option<std::path::PathBuf>,
    /// While the coordinator is unreachable, run the last plan this often (default 30 s).
    pub offline_interval: Duration,
}

/// Reports kept while the coordinator is unreachable; the oldest go first.
pub const OFFLINE_BUFFER: usize = 64;

fn plan_path(dir: &std::path::Path, kind: AgentKind) -> std::path::PathBuf {
    dir.join(format!("plan-{kind}.json"))
}

/// The plan saved by an earlier run, if any (an unreadable file is ignored, with a warning).
fn load_plan(dir: &std::path::Path, kind: AgentKind) -> Option<Plan> {
    let path = plan_path(dir, kind);
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str(&text) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable saved plan");
            None
        }
    }
}

/// Saves the plan atomically (write, then rename), so a crash never leaves half a file.
fn save_plan(dir: &std::path::Path, plan: &Plan) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".plan-{}.json.tmp", plan.kind));
    std::fs::write(&tmp, serde_json::to_vec(plan).unwrap_or_default())?;
    std::fs::rename(tmp, plan_path(dir, plan.kind))
}

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The relay's address could not be bound.
    #[error("cannot listen for the relay on {addr}: {source}")]
    Relay {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the agent until the process ends. Transient failures (coordinator down, a probe
/// failing) are logged and retried; only a failure to start returns.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let mut warnings = Vec::new();
    let pinger = match Pinger::open() {
        Ok(p) => {
            tracing::info!(node = %cfg.node, kind = %cfg.kind, socket = ?p.kind(), "ICMP socket open");
            Some(p)
        }
        Err(e) => {
            tracing::warn!(error = %e, "ICMP probes disabled");
            warnings.push(e.to_string());
            None
        }
    };
    if cfg.kind == AgentKind::Host
        && let Some(addr) = cfg.relay_listen
    {
        let listener = crate::relay::bind(addr)
            .await
            .map_err(|source| AgentError::Relay { addr, source })?;
        let upstream = cfg.coordinator.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::relay::serve(listener, upstream).await {
                tracing::error!(error = %e, "relay stopped");
            }
        });
        tracing::info!(%addr, "relay for the pod agent listening");
    }
    let pod_ip = match (cfg.kind, cfg.pod_ip) {
        (AgentKind::Pod, None) => detect_source_ip(&cfg.coordinator),
        (_, ip) => ip,
    };
    let client = CoordinatorClient::new(&cfg.coordinator);
    let http = crate::http::client(Duration::from_millis(1500));
    let (mut after, mut epoch) = (0u64, 0u64);
    // Host agents capture the overlay once they know their node IP (from the first plan).
    let mut capture: Option<crate::capture::Capture> = None;
    let mut capture_tried = false;
    let mut backoff = Duration::from_millis(500);
    // The last plan, from the coordinator or from disk: what the agent keeps probing with
    // while the coordinator (or the API server behind it) is unreachable.
    let mut last_plan: Option<Plan> = cfg
        .state_dir
        .as_deref()
        .and_then(|d| load_plan(d, cfg.kind));
    let mut offline: std::collections::VecDeque<AgentReport> = std::collections::VecDeque::new();
    let mut next_offline = tokio::time::Instant::now() + cfg.offline_interval;
    loop {
        let polled = client
            .next(&cfg.node, cfg.kind, after, epoch, pod_ip, cfg.poll_wait)
            .await;
        if polled.is_ok() && !offline.is_empty() {
            let batch: Vec<AgentReport> = offline.iter().cloned().collect();
            match client.deliver_offline(&batch).await {
                Ok(()) => {
                    tracing::info!(
                        reports = batch.len(),
                        "delivered the reports made while the coordinator was away"
                    );
                    offline.clear();
                }
                Err(e) => tracing::warn!(error = %e, "could not deliver buffered reports yet"),
            }
        }
        match polled {
            Ok(Some(Assignment { epoch: e, plan })) => {
                backoff = Duration::from_millis(500);
                (after, epoch) = (plan.round, e);
                if let Some(dir) = &cfg.state_dir
                    && let Err(err) = save_plan(dir, &plan)
                {
                    tracing::warn!(dir = %dir.display(), error = %err, "cannot save the plan");
                }
                last_plan = Some(plan.clone());
                if !capture_tried && let Some(o) = &plan.overlay {
                    capture_tried = true;
                    match start_capture(o.node_ip, o.port).await {
                        Ok(c) => capture = Some(c),
                        Err(e) => {
                            tracing::warn!(error = %e, "no packet capture");
                            warnings.push(e);
                        }
                    }
                }
                let report =
                    run_plan(&plan, pinger.as_ref(), &http, &warnings, capture.as_ref()).await;
                for attempt in 0..3u32 {
                    match client.report(&report).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(round = plan.round, attempt, error = %e, "report failed");
                            sleep(Duration::from_millis(300)).await;
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot poll the coordinator");
                if let Some(plan) = &last_plan
                    && tokio::time::Instant::now() >= next_offline
                {
                    next_offline = tokio::time::Instant::now() + cfg.offline_interval;
                    let plan = Plan {
                        capture_packets: false,
                        ..plan.clone()
                    };
                    let mut report =
                        run_plan(&plan, pinger.as_ref(), &http, &warnings, capture.as_ref()).await;
                    report.offline_at_ms = Some(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64),
                    );
                    report.packets.clear();
                    if offline.len() == OFFLINE_BUFFER {
                        offline.pop_front();
                    }
                    offline.push_back(report);
                    tracing::info!(
                        buffered = offline.len(),
                        "probed with the last plan while the coordinator is unreachable"
                    );
                }
                // Back off from the coordinator, but not past the next offline round.
                let until_offline =
                    next_offline.saturating_duration_since(tokio::time::Instant::now());
                sleep(if last_plan.is_some() {
                    backoff.min(until_offline.max(Duration::from_millis(100)))
                } else {
                    backoff
                })
                .await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn start_capture(node_ip: Ipv4Addr, port: u16) -> Result<crate::capture::Capture, String> {
    tokio::task::spawn_blocking(move || {
        use crate::evidence::Host;
        let json = crate::evidence::RealHost
            .run("ip", &["-j", "-4", "addr", "show"])
            .map_err(|e| format!("packet capture: cannot list interfaces (ip -j addr): {e}"))?;
        crate::capture::Capture::start(
            node_ip,
            port,
            &crate::capture::interfaces_from_ip_json(&json),
        )
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The local address the kernel picks to reach the coordinator's host.
fn detect_source_ip(url: &str) -> Option<Ipv4Addr> {
    let host = url.split("://").nth(1)?.split(['/', ':']).next()?;
    let ip: Ipv4Addr = host.parse().ok()?;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect((ip, 9)).ok()?;
    match sock.local_addr().ok()? {
        SocketAddr::V4(a) => Some(*a.ip()),
        SocketAddr::V6(_) => None,
    }
}

/// Runs every probe of `plan` concurrently and collects the report.
pub async fn run_plan(
    plan: &Plan,
    pinger: Option<&Pinger>,
    http: &reqwest::Client,
    warnings: &[String],
    capture: Option<&crate::capture::Capture>,
) -> AgentReport {
    let s = &plan.settings;
    let started_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let started = tokio::time::Instant::now();
    let interval = Duration::from_millis(u64::from(s.icmp_interval_ms));

    let icmp = async {
        let targets: Vec<Target> = plan
            .icmp
            .iter()
            .map(|t| Target {
                ip: t.ip,
                size: t.size,
            })
            .collect();
        let outcomes = match pinger {
            Some(p) => {
                let schedule = Schedule {
                    count: s.icmp_count,
                    interval,
                    timeout: Duration::from_millis(u64::from(s.icmp_timeout_ms)),
                };
                p.run(plan.round, &targets, schedule).await
            }
            None => Vec::new(),
        };
        plan.icmp
            .iter()
            .enumerate()
            .map(|(i, t)| match outcomes.get(i) {
                Some(o) => ProbeResult {
                    layer: t.layer,
                    column: t.column.clone(),
                    sent: o.sent,
                    ok: o.received,
                    rtt_ms: o.mean_rtt_ms(),
                    detail: o.detail.clone(),
                },
                None => not_probed(t.layer, &t.column, "no ICMP socket (see warnings)"),
            })
            .collect::<Vec<_>>()
    };

    let dns = async {
        let limit = Duration::from_millis(u64::from(s.dns_timeout_ms));
        let per_target = plan.dns.iter().map(|t| async move {
            let queries = (0..s.dns_repeats).flat_map(|r| t.names.iter().map(move |n| (r, n)));
            let outcomes = join_all(queries.map(|(r, name)| async move {
                sleep(interval * u32::from(r)).await;
                query_a(t.server, name, limit).await
            }))
            .await;
            let mut acc = Acc::default();
            for o in outcomes {
                match o {
                    DnsOutcome::Answer { rtt, .. } => acc.ok(rtt),
                    DnsOutcome::Failed(why) => acc.fail(why),
                }
            }
            acc.result(t.layer, &t.column)
        });
        join_all(per_target).await
    };

    let web = async {
        let per_target = plan.http.iter().map(|t| async move {
            let outcomes = join_all((0..t.attempts).map(|a| async move {
                sleep(interval * u32::from(a)).await;
                crate::http::probe(http, &t.url, t.host.as_deref(), t.check).await
            }))
            .await;
            let mut acc = Acc::default();
            for o in outcomes {
                match o {
                    Ok(rtt) => acc.ok(rtt),
                    Err(why) => acc.fail(why),
                }
            }
            acc.result(t.layer, &t.column)
        });
        join_all(per_target).await
    };

    // Node-local evidence: host agents only, read off the async threads (it runs commands).
    let evidence = async {
        if plan.kind != AgentKind::Host {
            return None;
        }
        let expect = plan.overlay.clone();
        tokio::task::spawn_blocking(move || {
            crate::evidence::collect(&crate::evidence::RealHost, expect.as_ref())
        })
        .await
        .ok()
    };

    let (icmp, dns, web, evidence) = tokio::join!(icmp, dns, web, evidence);
    let mut results = icmp;
    results.extend(dns);
    results.extend(web);
    // Sort for stable reports; cells are keyed by (layer, column) anyway.
    let order: BTreeMap<Layer, usize> = Layer::ALL
        .iter()
        .enumerate()
        .map(|(i, l)| (*l, i))
        .collect();
    results.sort_by_key(|r| order.get(&r.layer).copied().unwrap_or(usize::MAX));
    let mut report = AgentReport {
        round: plan.round,
        node: plan.node.clone(),
        kind: plan.kind,
        results,
        warnings: warnings.to_vec(),
        evidence,
        capture: None,
        packets: Vec::new(),
        offline_at_ms: None,
    };
    if let (Some(c), Some(o)) = (capture, &plan.overlay) {
        // Every agent got its plan at about the same moment; the capture must include the
        // last waves of every agent's probes (the pod agent beside us, peers toward us).
        let wait =
            Duration::from_millis(u64::from(s.icmp_count) * u64::from(s.icmp_interval_ms) + 300);
        tokio::time::sleep_until(started + wait).await;
        // ...and the capture thread must have caught up with them (up to a second more).
        let all_sent_us = started_us + wait.as_micros() as u64;
        let give_up = tokio::time::Instant::now() + Duration::from_secs(1);
        while !c.drained_since(all_sent_us) && tokio::time::Instant::now() < give_up {
            sleep(Duration::from_millis(20)).await;
        }
        if let Some(why) = c.stopped() {
            report
                .warnings
                .push(format!("packet capture stopped: {why}"));
        }
        let peers: Vec<(NodeName, Ipv4Addr)> =
            o.peers.iter().map(|p| (p.node.clone(), p.ip)).collect();
        report.capture = Some(c.summary(plan.round, &peers));
        if plan.capture_packets {
            report.packets = c.packets(plan.round, started_us, 4000);
        }
    }
    report
}

fn not_probed(layer: Layer, column: &str, why: &str) -> ProbeResult {
    ProbeResult {
        layer,
        column: column.to_owned(),
        sent: 0,
        ok: 0,
        rtt_ms: None,
        detail: Some(why.to_owned()),
    }
}

/// Accumulates attempts at one target.
#[derive(Default)]
struct Acc {
    sent: u32,
    ok: u32,
    rtt: Duration,
    last_error: Option<String>,
}

impl Acc {
    fn ok(&mut self, rtt: Duration) {
        self.sent += 1;
        self.ok += 1;
        self.rtt += rtt;
    }
    fn fail(&mut self, why: String) {
        self.sent += 1;
        self.last_error = Some(why);
    }
    fn result(self, layer: Layer, column: &str) -> ProbeResult {
        ProbeResult {
            layer,
            column: column.to_owned(),
            sent: self.sent,
            ok: self.ok,
            rtt_ms: (self.ok > 0).then(|| self.rtt.as_secs_f64() * 1000.0 / f64::from(self.ok)),
            detail: self.last_error,
        }
    }
}
