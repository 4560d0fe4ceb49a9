//! Benchmark: the whole coordinator path at scale, with a simulated cluster.
//!
//! The real coordinator binary (`meshprobe coordinator`, static mode, authenticated, with
//! a history on disk) serves its real HTTP stack on 127.0.0.1. This process runs both
//! agents of every node as tasks: they long-poll with heartbeats exactly as agents do (the
//! probe crate's own client), take the plans the coordinator's planner made, and report
//! what the synthetic cluster model (`meshprobe_diagnosis::synth`) says those probes saw,
//! with three faults injected. Nothing probes a network: the agents answer at once, so a
//! round's wall time is the coordinator's own work plus the wire.
//!
//! Each round prints one row: the coordinator's phases (plan, collect, build, diagnose,
//! record), its CPU seconds and peak RSS, bytes per plan and per report, the longest any
//! agent waited for its plan, and `/metrics`' size and series.
//!
//! `cargo bench --bench scale` (release); `MESHPROBE_BENCH_NODES` sets the size (default
//! 1,000), `MESHPROBE_BENCH_ROUNDS` the rounds (default 3). `cargo test` runs it at 100
//! nodes (dev profile), checking that every agent got its plan and delivered its report
//! and that the faults were found, so that the harness cannot rot.
//!
//! The harness runs at nice 10 (the coordinator at 0): on one machine the simulated
//! agents share the coordinator's cores, and without it their work inflates its figures.
//!
//! File descriptors: the agents hold one connection each (2N), and so does the
//! coordinator. The harness raises its soft `RLIMIT_NOFILE` to the hard limit, which the
//! coordinator inherits; 5,000 nodes need a hard limit above about 10,500.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cpu_seconds, env_or, peak_rss_kib};
use meshprobe_core::api::{AgentPoll, RoundRequest, StatusAnswer};
use meshprobe_core::auth::{ClusterSecret, Subject};
use meshprobe_core::plan::PlanSettings;
use meshprobe_core::{AgentKind, NodeName, Topology};
use meshprobe_diagnosis::synth::{self, Fault, Model};
use meshprobe_probe::client::{ClientError, ClientOptions, CoordinatorClient, Credential};
use meshprobe_probe::transport::TransportError;

const BIN: &str = env!("CARGO_BIN_EXE_meshprobe");

/// What the agents saw in one round.
#[derive(Clone, Copy, Debug, Default)]
struct RoundSeen {
    plans: u64,
    measured_plans: u64,
    measured_reports: u64,
    plan_bytes: u64,
    plan_bytes_max: u64,
    plan_wait_max: Duration,
    reports: u64,
    report_bytes: u64,
    report_bytes_max: u64,
}

/// What the agents share with the harness.
#[derive(Default)]
struct Shared {
    /// When the harness asked for the round now starting.
    started: Mutex<Option<Instant>>,
    rounds: Mutex<BTreeMap<u64, RoundSeen>>,
    /// 503s with Retry-After (polls and reports).
    told_to_wait: AtomicU64,
    /// Polls whose heartbeats stopped for a second (replaced at once, as agents do).
    reconnects: AtomicU64,
    /// Other failures, with the last one's text.
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    stop: AtomicBool,
}

impl Shared {
    fn seen(&self, round: u64, f: impl FnOnce(&mut RoundSeen)) {
        let mut r = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        f(r.entry(round).or_default());
    }
    fn failed(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
    }
}

/// One simulated agent: the agent loop's protocol, with the model in place of probes.
async fn agent(
    client: CoordinatorClient,
    node: NodeName,
    kind: AgentKind,
    pod_ip: Option<Ipv4Addr>,
    model: &'static Model<'static>,
    shared: Arc<Shared>,
) {
    let mut poll = AgentPoll {
        wait: Some(10),
        heartbeat_ms: Some(300),
        heartbeat_max_ms: Some(meshprobe_probe::agent::MAX_HEARTBEAT_MS),
        pod_ip,
        ..AgentPoll::default()
    };
    let mut salt = node.as_str().bytes().fold(kind as u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    while !shared.stop.load(Ordering::Relaxed) {
        match client
            .poll(&node, kind, &poll, Duration::from_secs(1))
            .await
        {
            Ok(Some(a)) => {
                let got = Instant::now();
                (poll.after, poll.epoch) = (a.plan.round, a.epoch);
                let waited = shared
                    .started
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .map_or(Duration::ZERO, |t| got.saturating_duration_since(t));
                // Bytes are measured on one agent in 16: serialising every plan and report
                // twice would double the harness's work, not the coordinator's.
                let measured = salt % 16 == 0;
                let plan_bytes = if measured { wire_bytes(&a) } else { 0 };
                shared.seen(a.plan.round, |s| {
                    s.plans += 1;
                    s.measured_plans += u64::from(measured);
                    s.plan_bytes += plan_bytes;
                    s.plan_bytes_max = s.plan_bytes_max.max(plan_bytes);
                    s.plan_wait_max = s.plan_wait_max.max(waited);
                });
                let Some(report) = model.agent_report(&a.plan, &mut salt) else {
                    continue;
                };
                let bytes = if measured { wire_bytes(&report) } else { 0 };
                for _ in 0..30 {
                    match client.report(&report, Duration::from_secs(20)).await {
                        Ok(()) => {
                            shared.seen(a.plan.round, |s| {
                                s.reports += 1;
                                s.measured_reports += u64::from(measured);
                                s.report_bytes += bytes;
                                s.report_bytes_max = s.report_bytes_max.max(bytes);
                            });
                            break;
                        }
                        Err(e) => match e.retry_after() {
                            Some(p) => {
                                shared.told_to_wait.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(p).await;
                            }
                            None => {
                                shared.failed(e);
                                break;
                            }
                        },
                    }
                }
            }
            Ok(None) => {}
            Err(ClientError::Unreachable {
                source: TransportError::Idle(_),
                ..
            }) => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => match e.retry_after() {
                Some(p) => {
                    shared.told_to_wait.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(p).await;
                }
                None => {
                    if !shared.stop.load(Ordering::Relaxed) {
                        shared.failed(e);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
}

/// The JSON bytes a body takes on the wire.
fn wire_bytes(v: &impl serde::Serialize) -> u64 {
    serde_json::to_vec(v).map_or(0, |b| b.len() as u64)
}

/// The coordinator process; killed (by its own pid) and its files removed on drop.
struct Coordinator {
    child: Child,
    dir: PathBuf,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    let _ = setrlimit(Resource::Nofile, l);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// `/metrics`, parsed as far as the table needs.
struct Scrape {
    bytes: usize,
    series: usize,
    phases: BTreeMap<String, f64>,
    findings: Vec<String>,
    reported: f64,
}

fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

fn scrape(text: &str) -> Scrape {
    let mut s = Scrape {
        bytes: text.len(),
        series: 0,
        phases: BTreeMap::new(),
        findings: Vec::new(),
        reported: 0.0,
    };
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        s.series += 1;
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if line.starts_with("meshprobe_round_phase_seconds{") {
            if let Some(p) = label(line, "phase") {
                s.phases.insert(p.to_owned(), value);
            }
        } else if line.starts_with("meshprobe_finding{") {
            if let (Some(c), Some(n)) = (label(line, "cause"), label(line, "node")) {
                s.findings.push(format!("{c} {n}"));
            }
        } else if line.starts_with("meshprobe_agents{") && label(line, "state") == Some("reported")
        {
            s.reported += value;
        }
    }
    s.findings.sort();
    s
}

struct Row {
    round: u64,
    wall: Duration,
    cpu: f64,
    rss_mib: f64,
    seen: RoundSeen,
    scrape: Scrape,
}

fn print_table(nodes: usize, agents: usize, rows: &[Row]) {
    println!(
        "\nscale: {nodes} nodes, {agents} agents, real coordinator on 127.0.0.1 (history on disk)"
    );
    println!(
        "{:>5} {:>7} {:>6} {:>7} {:>6} {:>8} {:>6} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8} {:>7}",
        "round",
        "wall s",
        "plan",
        "collect",
        "build",
        "diagnose",
        "record",
        "cpu s",
        "RSS MiB",
        "plan B",
        "report B",
        "rep max",
        "wait ms",
        "metr KiB",
        "series"
    );
    for r in rows {
        let ms = |p: &str| r.scrape.phases.get(p).copied().unwrap_or(0.0) * 1000.0;
        let mean = |sum: u64, n: u64| sum.checked_div(n).unwrap_or(0);
        println!(
            "{:>5} {:>7.2} {:>6.0} {:>7.0} {:>6.0} {:>8.0} {:>6.0} {:>7.2} {:>7.0} {:>8} {:>8} {:>8} {:>7.0} {:>8.0} {:>7}",
            r.round,
            r.wall.as_secs_f64(),
            ms("plan"),
            ms("collect"),
            ms("build"),
            ms("diagnose"),
            ms("record"),
            r.cpu,
            r.rss_mib,
            mean(r.seen.plan_bytes, r.seen.measured_plans),
            mean(r.seen.report_bytes, r.seen.measured_reports),
            r.seen.report_bytes_max,
            r.seen.plan_wait_max.as_secs_f64() * 1000.0,
            r.scrape.bytes as f64 / 1024.0,
            r.scrape.series
        );
    }
    println!(
        "  (phases in ms; plan B and report B: mean JSON bytes as sent, over one agent in 16; wait: the longest any agent waited for its plan from the round's request)"
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let nodes = env_or("MESHPROBE_BENCH_NODES", if bench { 1000 } else { 100 }).max(8);
    let rounds = env_or("MESHPROBE_BENCH_ROUNDS", if bench { 3 } else { 2 }).max(1);
    let fds = raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(run(nodes, rounds, fds));
    std::process::exit(code);
}

async fn run(nodes: usize, rounds: usize, fds: u64) -> i32 {
    let dir = std::env::temp_dir().join(format!("meshprobe-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let inventory = synth::inventory(nodes);
    let topo: &'static Topology = Box::leak(Box::new(synth::topology(nodes)));
    std::fs::write(dir.join("inventory.yaml"), &inventory).expect("inventory");
    let secret_text = format!("bench-scale-secret-{}", fastrand::u64(..));
    std::fs::write(dir.join("secret"), &secret_text).expect("secret");
    let secret = ClusterSecret::from_bytes(secret_text.as_bytes()).expect("secret");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let child = Command::new(BIN)
        .args(["coordinator", "--inventory"])
        .arg(dir.join("inventory.yaml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(dir.join("secret"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--interval", "1h"])
        // The round waits for every agent that polls (a healthy round ends at its last
        // report), but at most budget + grace. Here 10,000 agents share two cores with
        // the coordinator, so they get 10 s of grace, not 1.5 s.
        .args(["--grace", "10s"])
        // 10,000 simulated agents share one loopback address: the per-address cap is for
        // clients that are one machine each.
        .args(["--connections-per-source", "0"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the coordinator");
    let pid = child.id() as i32;
    let coordinator = Coordinator { child, dir };
    // The agents stand in for 10,000 machines but share this one's two cores with the
    // coordinator: they yield to it, so that its figures are its own work, not contention.
    let _ = rustix::process::setpriority_process(None, 10);
    let url = format!("http://127.0.0.1:{port}");
    let client_as = |subject: &Subject| {
        let cred = Credential::token(&secret.credential(subject)).expect("credential");
        CoordinatorClient::with_options(
            &url,
            &ClientOptions {
                credential: Some(cred),
                ..ClientOptions::default()
            },
        )
        .expect("client")
    };
    let operator = client_as(&Subject::operator("bench").expect("name"));
    let base = meshprobe_probe::transport::parse_base(&url, None, None).expect("url");
    let auth = Credential::token(&secret.credential(&Subject::operator("bench").expect("name")))
        .and_then(|c| c.header())
        .expect("header");
    let get = |path: &'static str| {
        let (base, auth) = (base.clone(), auth.clone());
        async move {
            meshprobe_probe::transport::send(
                &base,
                axum::http::Method::GET,
                path,
                None,
                Some(&auth),
                Duration::from_secs(60),
            )
            .await
        }
    };
    // Up within 30 s (a 5,000-node inventory parses in well under a second).
    let up = Instant::now();
    while get("/healthz").await.is_err() {
        if up.elapsed() > Duration::from_secs(30) {
            eprintln!("bench scale: the coordinator did not start");
            return 2;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let faults: &'static [Fault] = Box::leak(Box::new([
        Fault::VxlanIn(nodes / 3),
        Fault::ForwardOff(nodes / 2),
        Fault::Mtu(nodes - 2),
    ]));
    let expected = [
        format!("vxlan-blocked n{}", nodes / 3 + 1),
        format!("ip-forward-disabled n{}", nodes / 2 + 1),
        format!("mtu-mismatch n{}", nodes - 1),
    ];
    let model: &'static Model<'static> =
        Box::leak(Box::new(Model::new(topo, faults, &PlanSettings::default())));
    let pod_ips = model.pod_ips();
    let shared = Arc::new(Shared::default());
    let mut tasks = Vec::new();
    let mut agents = 0usize;
    for (i, n) in topo.nodes.iter().enumerate() {
        for kind in AgentKind::ALL {
            if model.silent(n.name.as_str(), kind) {
                continue;
            }
            agents += 1;
            let pod_ip = (kind == AgentKind::Pod)
                .then(|| pod_ips.get(&n.name).copied())
                .flatten();
            tasks.push(tokio::spawn(agent(
                client_as(&Subject::Node(n.name.clone())),
                n.name.clone(),
                kind,
                pod_ip,
                model,
                Arc::clone(&shared),
            )));
        }
        // A ramp, not a SYN flood: 500 agents every 50 ms.
        if i % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "bench scale: {nodes} nodes, {agents} agents polling (fd limit {fds}); faults: {}",
        expected.join(", ")
    );
    // Every agent's poll open (the coordinator counts them) before the first round.
    let ready = Instant::now();
    loop {
        let polling = match get(meshprobe_core::api::AGENTS).await {
            Ok(a) => serde_json::from_slice::<meshprobe_core::api::AgentsList>(&a.body)
                .map_or(0, |l| l.agents.iter().filter(|a| a.polling).count()),
            Err(_) => 0,
        };
        if polling >= agents {
            break;
        }
        if ready.elapsed() > Duration::from_secs(120) {
            eprintln!(
                "bench scale: only {polling} of {agents} agents polling after 120 s (last error: {:?})",
                shared.last_error.lock().unwrap_or_else(|e| e.into_inner())
            );
            return 2;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // What holding every poll open costs between rounds: heartbeats, nothing else.
    let (cpu0, re0, t0) = (
        cpu_seconds(pid),
        shared.reconnects.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = (
        (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64(),
        shared.reconnects.load(Ordering::Relaxed) - re0,
    );
    let mut rows = Vec::new();
    for _ in 0..rounds {
        let cpu0 = cpu_seconds(pid);
        let t0 = Instant::now();
        *shared.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(t0);
        let id = match operator
            .start_round(&RoundRequest::default(), Duration::from_secs(30))
            .await
        {
            Ok(s) => s.round,
            Err(e) => {
                eprintln!("bench scale: cannot start a round: {e}");
                return 2;
            }
        };
        loop {
            let done = get(meshprobe_core::api::STATUS)
                .await
                .ok()
                .and_then(|a| serde_json::from_slice::<StatusAnswer>(&a.body).ok())
                .is_some_and(|s| s.latest_round >= Some(id));
            if done {
                break;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                eprintln!("bench scale: round {id} did not finish within 120 s");
                return 2;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let wall = t0.elapsed();
        let cpu = cpu_seconds(pid) - cpu0;
        let text = match get(meshprobe_core::api::METRICS).await {
            Ok(a) => String::from_utf8_lossy(&a.body).into_owned(),
            Err(e) => {
                eprintln!("bench scale: /metrics: {e}");
                return 2;
            }
        };
        // Reports still in flight when the round ended are not the round's.
        let seen = shared
            .rounds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied()
            .unwrap_or_default();
        rows.push(Row {
            round: id,
            wall,
            cpu,
            rss_mib: peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
            seen,
            scrape: scrape(&text),
        });
    }
    shared.stop.store(true, Ordering::Relaxed);
    print_table(nodes, agents, &rows);
    println!(
        "  idle, all {agents} polls open for 10 s: the coordinator used {:.0}% of a core; {} quiet polls were replaced",
        idle.0 * 100.0,
        idle.1
    );
    let mine = peak_rss_kib(std::process::id() as i32).unwrap_or(0) as f64 / 1024.0;
    println!(
        "  agents: {} told to wait (503 Retry-After), {} quiet polls replaced, {} errors; the harness itself (all agents): peak RSS {mine:.0} MiB",
        shared.told_to_wait.load(Ordering::Relaxed),
        shared.reconnects.load(Ordering::Relaxed),
        shared.errors.load(Ordering::Relaxed),
    );

    // What must hold whatever the machine's speed.
    let mut wrong = Vec::new();
    for r in &rows {
        if r.seen.plans != agents as u64 || r.seen.reports != agents as u64 {
            wrong.push(format!(
                "round {}: {} plans and {} reports for {agents} agents",
                r.round, r.seen.plans, r.seen.reports
            ));
        }
        if r.scrape.reported != agents as f64 {
            wrong.push(format!(
                "round {}: the coordinator counted {} agents reported, not {agents}",
                r.round, r.scrape.reported
            ));
        }
        for e in &expected {
            if !r.scrape.findings.contains(e) {
                wrong.push(format!(
                    "round {}: finding {e:?} missing from {:?}",
                    r.round, r.scrape.findings
                ));
            }
        }
        if r.scrape.series >= 50_000 {
            wrong.push(format!("round {}: {} series", r.round, r.scrape.series));
        }
    }
    if shared.errors.load(Ordering::Relaxed) > 0 {
        wrong.push(format!(
            "agents failed: {:?}",
            shared.last_error.lock().unwrap_or_else(|e| e.into_inner())
        ));
    }
    for t in tasks {
        t.abort();
    }
    drop(coordinator);
    if wrong.is_empty() {
        0
    } else {
        eprintln!("bench scale: {}", wrong.join("\n  "));
        1
    }
}
