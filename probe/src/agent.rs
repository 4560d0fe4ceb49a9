//! The agent loop: poll for a plan, run it, report, repeat.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::future::join_all;
use meshprobe_core::api::{AgentPoll, Assignment};
use meshprobe_core::plan::{AgentReport, Plan, ProbeResult};
use meshprobe_core::{AgentKind, Failure, Layer, NodeName};
use tokio::time::{Instant, sleep};

use crate::client::{ClientError, CoordinatorClient};
use crate::dns::DnsOutcome;
use crate::icmp::{Pinger, Schedule, Target};
use crate::probers::{Probers, RealProbers};

/// Everything an agent needs to run. The binary's flags set every field; [`Default`]
/// gives the documented defaults.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The node this agent runs on.
    pub node: NodeName,
    /// Host-network or pod-network agent.
    pub kind: AgentKind,
    /// Coordinator base URL. A pod agent may be given the coordinator itself or its host
    /// agent's relay: either way it switches to the relay its plan names.
    pub coordinator: String,
    /// The pod agent's own IP; detected from the route to the coordinator when absent.
    pub pod_ip: Option<Ipv4Addr>,
    /// Where the host agent serves the relay for its pod agent; `None` turns it off.
    pub relay_listen: Option<SocketAddr>,
    /// How long one poll for the next round may wait (default 10 s).
    pub poll_wait: Duration,
    /// The poll's heartbeat period (default 300 ms); `None` uses v1 long polls without one.
    /// A poll that hears nothing for [`HEARTBEATS_MISSED`] periods is a dead connection.
    pub heartbeat: Option<Duration>,
    /// Where the last plan is kept across restarts (a volume in the pod); `None` keeps it
    /// in memory only.
    pub state_dir: Option<std::path::PathBuf>,
    /// While the coordinator is unreachable, run the last plan this often (default 30 s).
    pub offline_interval: Duration,
    /// The credential presented to the coordinator (and passed on by the relay), and the
    /// CA its certificate is verified against.
    pub client: crate::client::ClientOptions,
}

impl AgentConfig {
    /// A configuration with the defaults, for `node` and `kind`, reporting to `coordinator`.
    pub fn new(node: NodeName, kind: AgentKind, coordinator: impl Into<String>) -> Self {
        Self {
            node,
            kind,
            coordinator: coordinator.into(),
            pod_ip: None,
            relay_listen: None,
            poll_wait: Duration::from_secs(10),
            heartbeat: Some(Duration::from_millis(300)),
            state_dir: None,
            offline_interval: Duration::from_secs(30),
            client: crate::client::ClientOptions::default(),
        }
    }

    /// How long a heartbeat-streamed poll may stay quiet before it is declared dead.
    pub fn idle_limit(&self) -> Duration {
        match self.heartbeat {
            Some(h) => meshprobe_core::api::idle_limit(h),
            None => self.poll_wait + Duration::from_secs(5),
        }
    }
}

/// How far past the plan's budget `run_plan` cuts off a part that is still running.
pub const BUDGET_SLACK: Duration = Duration::from_millis(1500);

/// The longest heartbeat period an agent accepts (so a dead connection is noticed within
/// about 6 s even when the coordinator holds 10,000 polls).
pub const MAX_HEARTBEAT_MS: u32 = 2_000;

/// Heartbeats a poll may miss before the agent declares its connection dead and polls
/// again: at the default 300 ms, a dead connection is noticed in 1 s.
pub const HEARTBEATS_MISSED: u32 = meshprobe_core::api::HEARTBEATS_MISSED;

/// Reports kept while the coordinator is unreachable; the oldest go first.
pub const OFFLINE_BUFFER: usize = 64;

/// The largest probe an agent sends: an IPv4 packet's limit, less room for the headers.
pub const MAX_PROBE_SIZE: u16 = 65_000;

/// The first retry after a failed poll; doubles up to [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two polls of an unreachable coordinator: a restarted
/// coordinator hears from every agent within this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

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
    let bytes = serde_json::to_vec(plan).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
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
        #[source]
        source: std::io::Error,
    },
    /// The coordinator URL is unusable.
    #[error("--coordinator: {0}")]
    Url(#[source] ClientError),
}

/// Where the agent sends its polls and reports: the URL it was given, and (pod agents)
/// the relay its plan named. The relay is preferred; after a failure there the next
/// attempt goes to the URL given, and the one after to the relay again.
struct Endpoints {
    given: CoordinatorClient,
    relay: Option<CoordinatorClient>,
    relay_failed: bool,
}

impl Endpoints {
    fn current(&self) -> &CoordinatorClient {
        match &self.relay {
            Some(r) if !self.relay_failed => r,
            _ => &self.given,
        }
    }

    /// A plan named the relay: switch to it (a no-op when it is the URL given).
    fn learn(&mut self, relay: Option<std::net::SocketAddrV4>) {
        let Some(addr) = relay else { return };
        let client = self.given.relay(addr);
        if client.url() == self.given.url() {
            self.relay = None;
        } else if self.relay.as_ref().is_none_or(|r| r.url() != client.url()) {
            tracing::info!(relay = %client.url(), "reporting through the host agent's relay");
            self.relay = Some(client);
            self.relay_failed = false;
        }
    }

    /// The last attempt failed: alternate between the relay and the URL given.
    fn failed(&mut self) {
        if self.relay.is_some() {
            self.relay_failed = !self.relay_failed;
        }
    }

    fn succeeded(&mut self) {
        self.relay_failed = false;
    }
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
    let mut relay = None;
    if cfg.kind == AgentKind::Host
        && let Some(addr) = cfg.relay_listen
    {
        let listener = crate::relay::bind(addr)
            .await
            .map_err(|source| AgentError::Relay { addr, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| AgentError::Relay { addr, source })?
            .port();
        let upstream = cfg.coordinator.clone();
        let options = cfg.client.clone();
        let admission = crate::relay::Admission::default();
        let serving = admission.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::relay::serve(listener, upstream, options, serving).await {
                tracing::error!(error = %e, "relay stopped");
            }
        });
        tracing::info!(%addr, "relay for the pod agent listening");
        // The pod range from the topology, not from a round's plan: a round may be 30 s
        // away (or its plan planned before this agent started), and the pod agent cannot
        // poll through the relay until it is admitted.
        match CoordinatorClient::with_options(&cfg.coordinator, &cfg.client) {
            Ok(client) => {
                tokio::spawn(crate::relay::learn_pod_range(
                    client,
                    cfg.node.clone(),
                    admission.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the coordinator for this node's pod range")
            }
        }
        relay = Some(RelayHandle { port, admission });
    }
    let probers = RealProbers::new(pinger);
    agent_loop(&cfg, &probers, warnings, relay).await
}

/// The host agent's relay, as the agent loop sees it: the port it advertises, and whom it
/// admits (this node's pod range, from each plan).
#[derive(Clone, Debug)]
pub struct RelayHandle {
    /// The port it listens on.
    pub port: u16,
    /// Its admission, updated from each plan.
    pub admission: crate::relay::Admission,
}

impl RelayHandle {
    /// Takes a plan in: admits its pod range, and asks the evidence to walk the firewall
    /// for the path from those pods to this relay (the coordinator does not know the port).
    fn take(&self, plan: &mut Plan) {
        self.admission.set(plan.pod_cidr);
        if let (Some(o), Some(pod_cidr)) = (plan.overlay.as_mut(), plan.pod_cidr) {
            o.relay = Some(meshprobe_core::evidence::RelayPath {
                port: self.port,
                pod_cidr,
            });
        }
    }
}

/// The loop of [`run`] over any [`Probers`]: poll, run, report, repeat; probe with the last
/// plan while the coordinator is unreachable and deliver those reports later.
pub async fn agent_loop(
    cfg: &AgentConfig,
    probers: &impl Probers,
    mut warnings: Vec<String>,
    relay: Option<RelayHandle>,
) -> Result<(), AgentError> {
    let relay_port = relay.as_ref().map(|r| r.port);
    let pod_ip = match (cfg.kind, cfg.pod_ip) {
        (AgentKind::Pod, None) => source_ip_toward(&cfg.coordinator),
        (_, ip) => ip,
    };
    let mut endpoints = Endpoints {
        given: CoordinatorClient::with_options(&cfg.coordinator, &cfg.client)
            .map_err(AgentError::Url)?,
        relay: None,
        relay_failed: false,
    };
    let mut poll = AgentPoll {
        wait: Some(cfg.poll_wait.as_secs().max(1)),
        pod_ip,
        heartbeat_ms: cfg.heartbeat.map(|h| h.as_millis() as u32),
        // A coordinator with thousands of polls open may stretch the heartbeat: it says
        // which period it chose, and the dead-connection limit follows it.
        heartbeat_max_ms: cfg.heartbeat.map(|_| MAX_HEARTBEAT_MS),
        relay_port,
        ..AgentPoll::default()
    };
    // Host agents capture the overlay once they know their node IP (from the first plan).
    let mut capture: Option<crate::capture::Capture> = None;
    let mut capture_tried = false;
    let mut backoff = FIRST_BACKOFF;
    // The last plan, from the coordinator or from disk: what the agent keeps probing with
    // while the coordinator (or the API server behind it) is unreachable.
    let mut last_plan: Option<Plan> = cfg
        .state_dir
        .as_deref()
        .and_then(|d| load_plan(d, cfg.kind));
    if let Some(p) = &mut last_plan {
        endpoints.learn(p.relay);
        if let Some(r) = &relay {
            r.take(p);
        }
    }
    let mut offline: VecDeque<AgentReport> = VecDeque::new();
    let mut next_offline = Instant::now() + cfg.offline_interval;
    loop {
        let polled = endpoints
            .current()
            .poll(&cfg.node, cfg.kind, &poll, cfg.idle_limit())
            .await;
        if polled.is_ok() && !offline.is_empty() {
            let batch: Vec<AgentReport> = offline.iter().cloned().collect();
            match endpoints.current().deliver_offline(&batch).await {
                Ok(kept) => {
                    tracing::info!(
                        reports = batch.len(),
                        kept,
                        "delivered the reports made while the coordinator was away"
                    );
                    offline.clear();
                }
                Err(e) => tracing::warn!(error = %e, "could not deliver buffered reports yet"),
            }
        }
        match polled {
            Ok(Some(Assignment { epoch: e, mut plan })) => {
                backoff = FIRST_BACKOFF;
                endpoints.succeeded();
                (poll.after, poll.epoch) = (plan.round, e);
                if cfg.kind == AgentKind::Pod {
                    endpoints.learn(plan.relay);
                }
                if let Some(r) = &relay {
                    r.take(&mut plan);
                }
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
                let report = run_plan(&plan, probers, &warnings, capture.as_ref()).await;
                deliver(&mut endpoints, &report, &plan).await;
            }
            Ok(None) => {
                backoff = FIRST_BACKOFF;
                endpoints.succeeded();
            }
            Err(e) => {
                let dead = matches!(
                    &e,
                    ClientError::Unreachable {
                        source: crate::transport::TransportError::Idle(_),
                        ..
                    }
                );
                if e.is_auth() {
                    tracing::error!(error = %e, "the coordinator refuses this agent's credential: check --token-file (this node's credential from `meshprobe credential --node NODE`, or the cluster secret)");
                } else {
                    tracing::warn!(error = %e, endpoint = %endpoints.current().url(), "cannot poll the coordinator");
                }
                endpoints.failed();
                if let Some(plan) = &last_plan
                    && Instant::now() >= next_offline
                {
                    next_offline = Instant::now() + cfg.offline_interval;
                    let plan = Plan {
                        capture_packets: false,
                        ..plan.clone()
                    };
                    let mut report = run_plan(&plan, probers, &warnings, capture.as_ref()).await;
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
                // A connection found dead is replaced at once: the coordinator is likely
                // fine, and the round it may be running wants this agent now.
                if dead {
                    continue;
                }
                // A coordinator at its limit says when to come back: wait that long (and
                // a little more, so that agents told the same do not return together).
                if let Some(pause) = e.retry_after() {
                    sleep(told_to_wait(pause)).await;
                    continue;
                }
                // Back off from the coordinator, but not past the next offline round.
                let until_offline = next_offline.saturating_duration_since(Instant::now());
                sleep(if last_plan.is_some() {
                    backoff.min(until_offline.max(Duration::from_millis(50)))
                } else {
                    backoff
                })
                .await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Posts a round's report, retrying (alternating endpoints) until the round's budget has
/// passed once more: later, the coordinator has moved on anyway.
async fn deliver(endpoints: &mut Endpoints, report: &AgentReport, plan: &Plan) {
    let give_up = Instant::now() + Duration::from_millis(u64::from(plan.budget_ms));
    for attempt in 0u32.. {
        let left = give_up.saturating_duration_since(Instant::now());
        let timeout = left
            .max(Duration::from_millis(500))
            .min(Duration::from_secs(5));
        match endpoints.current().report(report, timeout).await {
            Ok(()) => {
                endpoints.succeeded();
                return;
            }
            // The coordinator said no (the round ended, say): retrying changes nothing.
            Err(e) if e.status().is_some_and(|s| (400..500).contains(&s)) => {
                tracing::warn!(round = plan.round, error = %e, "report refused");
                return;
            }
            // The coordinator is at its limit: come back when it says, within the budget.
            Err(e) if e.retry_after().is_some() => {
                let pause = told_to_wait(e.retry_after().unwrap_or_default());
                if Instant::now() + pause >= give_up {
                    tracing::warn!(round = plan.round, error = %e, "report not delivered: the coordinator is overloaded and asked to wait past the round");
                    return;
                }
                tracing::info!(
                    round = plan.round,
                    attempt,
                    pause_ms = pause.as_millis() as u64,
                    "the coordinator asked to wait"
                );
                sleep(pause).await;
            }
            Err(e) => {
                tracing::warn!(round = plan.round, attempt, endpoint = %endpoints.current().url(), error = %e, "report failed");
                endpoints.failed();
                if Instant::now() >= give_up {
                    return;
                }
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// How long to wait when the coordinator said `Retry-After: pause`: that, plus up to a
/// quarter more (at least 100 ms) at random, so that agents told the same spread out.
fn told_to_wait(pause: Duration) -> Duration {
    let spread = (pause / 4).max(Duration::from_millis(100));
    pause + spread.mul_f64(fastrand::f64())
}

async fn start_capture(node_ip: Ipv4Addr, port: u16) -> Result<crate::capture::Capture, String> {
    tokio::task::spawn_blocking(move || {
        use crate::evidence::Host;
        let json = crate::evidence::RealHost::within(Duration::from_secs(5))
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
/// The address this host sends from toward the IPv4 address in `url` (the node IP, from
/// the host network), or `None` when the URL names no IPv4 address.
pub fn source_ip_toward(url: &str) -> Option<Ipv4Addr> {
    let host = url.split("://").nth(1)?.split(['/', ':']).next()?;
    let ip: Ipv4Addr = host.parse().ok()?;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect((ip, 9)).ok()?;
    match sock.local_addr().ok()? {
        SocketAddr::V4(a) => Some(*a.ip()),
        SocketAddr::V6(_) => None,
    }
}

/// Runs every probe of `plan` concurrently and collects the report. The whole run,
/// evidence commands and the capture's wait included, is bounded by the plan's budget: a
/// part still running then is cut off, and its cells say so.
pub async fn run_plan(
    plan: &Plan,
    probers: &impl Probers,
    warnings: &[String],
    capture: Option<&crate::capture::Capture>,
) -> AgentReport {
    let s = &plan.settings;
    let started_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let started = Instant::now();
    let budget = Duration::from_millis(u64::from(plan.budget_ms.max(s.budget_ms())));
    // The budget is when the slowest probe's own timeout has passed; the cut-off is a
    // backstop a little later, so that it never races a probe timing out on its own (whose
    // "timeout" says more than "not finished"), also on a loaded machine. It is the
    // coordinator's default grace: a report later than that is refused anyway.
    let deadline = started + budget + BUDGET_SLACK;
    let interval = Duration::from_millis(u64::from(s.icmp_interval_ms));
    const OVER_BUDGET: &str = "not finished within the round's budget";

    let icmp = async {
        // Full-size underlay probes go at the plan's size or the route's MTU, whichever is
        // larger: a NIC set larger than the fabric carries (jumbo frames on one node) then
        // shows as lost full-size probes instead of passing unseen.
        let targets: Vec<Target> = plan
            .icmp
            .iter()
            .map(|t| Target {
                ip: t.ip,
                size: if t.layer == Layer::UnderlayFullSize {
                    probers
                        .route_mtu(t.ip)
                        .map_or(t.size, |m| m.clamp(t.size, MAX_PROBE_SIZE))
                } else {
                    t.size
                },
                fragment: t.layer == Layer::PodToPodFragmented,
            })
            .collect();
        let schedule = Schedule {
            count: s.icmp_count,
            interval,
            timeout: Duration::from_millis(u64::from(s.icmp_timeout_ms)),
        };
        let outcomes =
            tokio::time::timeout_at(deadline, probers.ping(plan.round, &targets, schedule)).await;
        plan.icmp
            .iter()
            .enumerate()
            .map(|(i, t)| match &outcomes {
                Ok(Some(o)) => match o.get(i) {
                    Some(o) => ProbeResult {
                        layer: t.layer,
                        column: t.column.clone(),
                        sent: o.sent,
                        ok: o.received,
                        rtt_ms: o.mean_rtt_ms(),
                        detail: match (&o.failure, targets[i].size) {
                            (Some(f), size) if size != t.size => Some(format!(
                                "{f}; {size}-byte DF probes, this node's MTU toward {}",
                                t.ip
                            )),
                            (f, _) => f.as_ref().map(|f| f.detail.clone()),
                        },
                        failure: o.failure.as_ref().map(|f| f.kind),
                    },
                    None => not_probed(t.layer, &t.column, "no outcome from the ICMP prober"),
                },
                Ok(None) => not_probed(t.layer, &t.column, "no ICMP socket (see warnings)"),
                Err(_) => not_probed(t.layer, &t.column, OVER_BUDGET),
            })
            .collect::<Vec<_>>()
    };

    let dns = async {
        let limit = Duration::from_millis(u64::from(s.dns_timeout_ms));
        let per_target = plan.dns.iter().map(|t| async move {
            let queries = (0..s.dns_repeats).flat_map(|r| t.names.iter().map(move |n| (r, n)));
            let outcomes = tokio::time::timeout_at(
                deadline,
                join_all(queries.map(|(r, name)| async move {
                    sleep(interval * u32::from(r)).await;
                    probers.dns(t.server, name, limit).await
                })),
            )
            .await;
            let Ok(outcomes) = outcomes else {
                return not_probed(t.layer, &t.column, OVER_BUDGET);
            };
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
        let limit = Duration::from_millis(u64::from(s.http_timeout_ms));
        let per_target = plan.http.iter().map(|t| async move {
            let outcomes = tokio::time::timeout_at(
                deadline,
                join_all((0..t.attempts).map(|a| async move {
                    sleep(interval * u32::from(a)).await;
                    probers
                        .http(&t.url, t.host.as_deref(), t.check, limit)
                        .await
                })),
            )
            .await;
            let Ok(outcomes) = outcomes else {
                return not_probed(t.layer, &t.column, OVER_BUDGET);
            };
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

    // Node-local evidence: host agents only.
    let evidence = async {
        if plan.kind != AgentKind::Host {
            return None;
        }
        probers.evidence(plan.overlay.clone(), budget).await
    };

    let ((icmp, t_icmp), (dns, t_dns), (web, t_http), (evidence, t_evidence)) = tokio::join!(
        timed(started, icmp),
        timed(started, dns),
        timed(started, web),
        timed(started, evidence)
    );
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
    if plan.kind == AgentKind::Host && report.evidence.is_none() {
        report
            .warnings
            .push(format!("node-local evidence: {OVER_BUDGET}"));
    }
    if let (Some(c), Some(o)) = (capture, &plan.overlay) {
        // Every agent got its plan at about the same moment; the capture must include the
        // last waves of every agent's probes (the pod agent beside us, peers toward us).
        let wait =
            Duration::from_millis(u64::from(s.icmp_count) * u64::from(s.icmp_interval_ms) + 300);
        tokio::time::sleep_until((started + wait).min(deadline)).await;
        // ...and the capture thread must have caught up with them (up to a second more,
        // never past the budget).
        let all_sent_us = started_us + wait.as_micros() as u64;
        let give_up = (Instant::now() + Duration::from_secs(1)).min(deadline);
        while !c.drained_since(all_sent_us) && Instant::now() < give_up {
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
        tracing::debug!(
            round = plan.round,
            capture_ms = started.elapsed().as_millis() as u64,
            "capture caught up"
        );
        if plan.capture_packets {
            report.packets = c.packets(plan.round, started_us, 4000);
        }
    }
    tracing::debug!(
        round = plan.round,
        icmp_ms = t_icmp.as_millis() as u64,
        dns_ms = t_dns.as_millis() as u64,
        http_ms = t_http.as_millis() as u64,
        evidence_ms = t_evidence.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "plan run"
    );
    report
}

/// `f`'s output, and when it came (since `started`): for the run's debug log.
async fn timed<T>(started: Instant, f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let out = f.await;
    (out, started.elapsed())
}

fn not_probed(layer: Layer, column: &str, why: &str) -> ProbeResult {
    ProbeResult {
        layer,
        column: column.to_owned(),
        sent: 0,
        ok: 0,
        rtt_ms: None,
        detail: Some(why.to_owned()),
        failure: None,
    }
}

/// Accumulates attempts at one target.
#[derive(Default)]
struct Acc {
    sent: u32,
    ok: u32,
    rtt: Duration,
    last_error: Option<Failure>,
}

impl Acc {
    fn ok(&mut self, rtt: Duration) {
        self.sent += 1;
        self.ok += 1;
        self.rtt += rtt;
    }
    fn fail(&mut self, why: Failure) {
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
            failure: self.last_error.as_ref().map(|f| f.kind),
            detail: self.last_error.map(|f| f.detail),
        }
    }
}
