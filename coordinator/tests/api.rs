//! The coordinator's HTTP API, in process, with fake agents on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use meshprobe_coordinator::{Coordinator, Settings, StaticTopology, router};
use meshprobe_core::plan::{AgentReport, Assignment, ProbeResult};
use meshprobe_core::{CellState, CheckReport, Layer, Topology};
use pretty_assertions::assert_eq;

const INVENTORY: &str = "
cluster: {name: t, dnsServiceIP: 10.43.0.10}
nodes:
  - {name: n1, internalIP: 192.168.77.11, podCIDR: 10.42.1.0/24}
  - {name: n2, internalIP: 192.168.77.12, podCIDR: 10.42.2.0/24}
  - {name: n3, internalIP: 192.168.77.13, podCIDR: 10.42.3.0/24}
coreDNS: [{name: coredns-a, node: n1, ip: 10.42.1.53}]
";

async fn start() -> (String, Arc<Coordinator>) {
    start_with(meshprobe_coordinator::auth::Auth::insecure()).await
}

async fn start_with(auth: meshprobe_coordinator::auth::Auth) -> (String, Arc<Coordinator>) {
    let topo = Topology::from_inventory(INVENTORY).expect("valid inventory");
    // Agents are known silent after 500 ms (3 s by default), so that tests which want a
    // round to stop waiting for nobody need not sleep long.
    let settings = Settings {
        silent_after: Duration::from_millis(500),
        auth,
        ..Settings::default()
    };
    let c = Coordinator::new(Box::new(StaticTopology::new(topo)), settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = router(Arc::clone(&c));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), c)
}

/// A host agent's report with no results.
fn empty_report(round: u64, node: &str) -> AgentReport {
    AgentReport {
        round,
        node: node.parse().expect("name"),
        kind: meshprobe_core::AgentKind::Host,
        results: vec![],
        warnings: vec![],
        evidence: None,
        capture: None,
        packets: vec![],
        offline_at_ms: None,
    }
}

/// A cell a fake agent reports dead: one layer's, or every layer's (`None`), toward a
/// column.
type Dead = Option<(Option<Layer>, &'static str)>;

/// A fake agent: polls once, answers every planned cell with 20 successes out of 20, but
/// `fail`'s with none.
async fn fake_agent(
    base: String,
    node: &'static str,
    kind: &'static str,
    pod_ip: &'static str,
    fail: Dead,
) {
    fake_agent_as(base, node, kind, pod_ip, fail, None).await;
}

/// [`fake_agent`] presenting `token`.
async fn fake_agent_as(
    base: String,
    node: &'static str,
    kind: &'static str,
    pod_ip: &'static str,
    fail: Dead,
    token: Option<String>,
) {
    let http = reqwest::Client::builder()
        .default_headers(
            token
                .map(|t| {
                    let mut h = reqwest::header::HeaderMap::new();
                    h.insert(
                        reqwest::header::AUTHORIZATION,
                        format!("Bearer {t}").parse().expect("header"),
                    );
                    h
                })
                .unwrap_or_default(),
        )
        .build()
        .expect("client");
    // "0.0.0.0": no pod IP to tell (host agents).
    let pod_ip = if pod_ip == "0.0.0.0" {
        String::new()
    } else {
        format!("&podIP={pod_ip}")
    };
    let resp = http
        .get(format!(
            "{base}/v1/agents/{node}/{kind}/next?after=0&epoch=0&wait=10{pod_ip}"
        ))
        .send()
        .await
        .expect("poll");
    assert_eq!(resp.status(), 200, "{node}/{kind} got no plan");
    let a: Assignment = resp.json().await.expect("assignment");
    let results = a
        .plan
        .cells()
        .map(|(layer, column)| {
            let bad = fail.is_some_and(|(l, c)| c == column && l.is_none_or(|l| l == layer));
            ProbeResult {
                layer,
                column: column.to_owned(),
                sent: 20,
                ok: if bad { 0 } else { 20 },
                rtt_ms: (!bad).then_some(0.3),
                detail: bad.then(|| "timeout".to_owned()),
                failure: bad.then_some(meshprobe_core::FailKind::Timeout),
            }
        })
        .collect();
    let report = AgentReport {
        round: a.plan.round,
        node: a.plan.node.clone(),
        kind: a.plan.kind,
        results,
        warnings: vec![],
        evidence: None,
        capture: None,
        packets: vec![],
        offline_at_ms: None,
    };
    let resp = http
        .post(format!("{base}/v1/reports"))
        .json(&report)
        .send()
        .await
        .expect("report");
    assert_eq!(
        resp.status(),
        202,
        "{}",
        resp.text().await.unwrap_or_default()
    );
}

/// The pod agents of [`INVENTORY`] register their IPs (an empty poll), so that the next
/// round plans pod-to-pod; each presents `token(node)`.
async fn register_pod_agents(
    http: &reqwest::Client,
    base: &str,
    token: impl Fn(&str) -> Option<String>,
) {
    for (node, ip) in [
        ("n1", "10.42.1.10"),
        ("n2", "10.42.2.10"),
        ("n3", "10.42.3.10"),
    ] {
        let mut req = http.get(format!(
            "{base}/v1/agents/{node}/pod/next?after=0&epoch=0&wait=0&podIP={ip}"
        ));
        if let Some(t) = token(node) {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("register");
        assert_eq!(r.status(), 204);
    }
}

/// The six agents of [`INVENTORY`] (a host and a pod agent per node), all healthy, each
/// presenting `token(node)`.
fn spawn_agents(
    base: &str,
    token: impl Fn(&'static str) -> Option<String>,
) -> Vec<tokio::task::JoinHandle<()>> {
    [
        ("n1", "10.42.1.10"),
        ("n2", "10.42.2.10"),
        ("n3", "10.42.3.10"),
    ]
    .into_iter()
    .flat_map(|(n, ip)| {
        [("host", "0.0.0.0"), ("pod", ip)]
            .map(|(k, ip)| tokio::spawn(fake_agent_as(base.to_owned(), n, k, ip, None, token(n))))
    })
    .collect()
}

#[tokio::test]
async fn round_with_fake_agents_builds_matrices_and_silent_node_is_unknown() {
    let (base, c) = start().await;
    // Pod agents register their IPs first (an empty poll), so the round plans pod-to-pod.
    let http = reqwest::Client::new();
    for (node, ip) in [("n1", "10.42.1.10"), ("n2", "10.42.2.10")] {
        let r = http
            .get(format!(
                "{base}/v1/agents/{node}/pod/next?after=0&epoch=0&wait=0&podIP={ip}"
            ))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), 204);
    }
    // Host agents too, so they count as live.
    for node in ["n1", "n2"] {
        let r = http
            .get(format!("{base}/v1/agents/{node}/host/next?wait=0"))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), 204);
    }
    let agents = [
        tokio::spawn(fake_agent(
            base.clone(),
            "n1",
            "host",
            "0.0.0.0",
            Some((Some(Layer::Underlay), "n2")),
        )),
        tokio::spawn(fake_agent(base.clone(), "n2", "host", "0.0.0.0", None)),
        tokio::spawn(fake_agent(base.clone(), "n1", "pod", "10.42.1.10", None)),
        tokio::spawn(fake_agent(base.clone(), "n2", "pod", "10.42.2.10", None)),
    ];
    let r: serde_json::Value = http
        .post(format!("{base}/v1/rounds"))
        .send()
        .await
        .expect("trigger")
        .json()
        .await
        .expect("json");
    let round = r["round"].as_u64().expect("round id");
    for a in agents {
        a.await.expect("fake agent");
    }
    let resp = http
        .get(format!("{base}/v1/rounds/{round}?wait=10"))
        .send()
        .await
        .expect("wait");
    assert_eq!(resp.status(), 200);
    let report: CheckReport = resp.json().await.expect("report");
    assert!(!report.healthy);
    let state = |l, s: &str, d: &str| report.cell(l, s, d).map(|c| c.state);
    assert_eq!(state(Layer::Underlay, "n1", "n2"), Some(CellState::Fail));
    assert_eq!(state(Layer::Underlay, "n2", "n1"), Some(CellState::Ok));
    assert_eq!(state(Layer::PodToPod, "n1", "n2"), Some(CellState::Ok));
    // n3 has no agents: its rows are unknown, never fail; others' cells toward it are
    // measured (ok here), and its pod cells are unknown for want of a probe pod IP.
    assert_eq!(state(Layer::Underlay, "n3", "n1"), Some(CellState::Unknown));
    assert_eq!(state(Layer::Underlay, "n1", "n3"), Some(CellState::Ok));
    assert_eq!(state(Layer::PodToPod, "n1", "n3"), Some(CellState::Unknown));
    assert_eq!(state(Layer::DnsPod, "n2", "coredns-a"), Some(CellState::Ok));
    assert!(c.latest().is_some());
    // The SLO metrics, by their exported names, per layer and per node (never per pair).
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    meshprobe_core::promtext::validate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    use meshprobe_coordinator::metrics::*;
    assert!(text.contains(&format!("{ROUNDS}_total 1")), "{text}");
    assert!(text.contains(&format!("{HEALTHY} 0")));
    assert!(
        text.contains(&format!("{CELLS}{{layer=\"underlay\",state=\"fail\"}} 1")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{NODE_FAILING_CELLS}{{node=\"n2\"}} 1")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{AGENTS}{{kind=\"host\",state=\"absent\"}} 1")),
        "{text}"
    );
    assert!(
        !text.contains("n1->n2") && !text.contains("dst="),
        "no per-pair series"
    );
    // A round finishes early once every live agent reported: far under its deadline.
    assert!(
        report.duration_ms < 2000,
        "round took {} ms",
        report.duration_ms
    );
}

#[tokio::test]
async fn hostile_requests_get_4xx_and_the_server_keeps_serving() {
    let (base, _c) = start().await;
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>, ct: &'static str| {
        let http = http.clone();
        let url = format!("{base}/v1/reports");
        async move {
            http.post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .expect("post")
                .status()
                .as_u16()
        }
    };
    let garbage = post(b"\x00\xffnot json at all".to_vec(), "application/json").await;
    assert!((400..500).contains(&garbage), "garbage -> {garbage}");
    let wrong_shape = post(br#"{"round": "seven"}"#.to_vec(), "application/json").await;
    assert!(
        (400..500).contains(&wrong_shape),
        "wrong shape -> {wrong_shape}"
    );
    let no_ct = post(b"{}".to_vec(), "text/plain").await;
    assert!((400..500).contains(&no_ct), "wrong content type -> {no_ct}");
    let huge = post(vec![b'['; 9 << 20], "application/json").await;
    assert_eq!(huge, 413, "oversized body");
    let stale = empty_report(99, "n1");
    let s = http
        .post(format!("{base}/v1/reports"))
        .json(&stale)
        .send()
        .await
        .expect("post")
        .status();
    assert_eq!(s, 409, "a report for a round that is not running");
    for (path, want) in [
        ("/v1/rounds/abc", 400),
        ("/v1/rounds/12345", 404),
        ("/v1/agents/N_1/host/next?wait=0", 400),
        ("/v1/agents/n1/sidecar/next?wait=0", 400),
        ("/v1/agents/n9/host/next?wait=0", 404),
        ("/v1/agents/n1/host/next?after=x", 400),
        // Issue 9: the poll's query is a wire type; a parameter from a newer agent is
        // ignored, not refused (a rolling upgrade must not silence agents).
        ("/v1/agents/n1/host/next?wait=0&fromTheFuture=1", 204),
    ] {
        let got = http
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("get")
            .status()
            .as_u16();
        assert_eq!(got, want, "{path}");
    }
    let ok = http
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("still serving");
    assert_eq!(ok.status(), 200);
}

/// Starts a round and waits (up to 10 s) for its report.
async fn round_now(http: &reqwest::Client, base: &str) -> CheckReport {
    let started: meshprobe_core::api::RoundStarted = http
        .post(format!("{base}/v1/rounds"))
        .send()
        .await
        .expect("trigger")
        .json()
        .await
        .expect("json");
    round_report(http, base, started.round).await
}

/// Round `id`'s report, waiting up to 10 s for it.
async fn round_report(http: &reqwest::Client, base: &str, id: u64) -> CheckReport {
    http.get(format!("{base}/v1/rounds/{id}?wait=10"))
        .send()
        .await
        .expect("wait")
        .json()
        .await
        .expect("report")
}

#[tokio::test]
async fn round_with_no_live_agent_finishes_at_once_all_unknown() {
    let (base, _c) = start().await;
    // A coordinator that just started waits `silent_after` for agents to reconnect; past
    // that, nobody polling means nobody to wait for.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let http = reqwest::Client::new();
    let report = round_now(&http, &base).await;
    let (ok, fail, unknown) = report.counts();
    assert_eq!((ok, fail), (0, 0));
    assert!(unknown > 0 && !report.healthy);
    assert!(
        report.duration_ms < 500,
        "waited {} ms for nobody",
        report.duration_ms
    );
}

/// Issue 9: a round ends as soon as every agent still missing is known silent. An agent
/// whose poll connection went away (killed, or its connection reset) is waited for only
/// until `silent_after` (500 ms here), not to the round's deadline (3.1 s).
#[tokio::test]
async fn a_round_stops_waiting_for_an_agent_whose_poll_connection_died() {
    let (base, _c) = start().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let http = reqwest::Client::new();
    // A heartbeat-streamed poll: 200 at once, a newline every 100 ms.
    let mut resp = http
        .get(format!(
            "{base}/v1/agents/n1/host/next?after=0&epoch=0&wait=10&heartbeatMs=100"
        ))
        .send()
        .await
        .expect("poll");
    assert_eq!(resp.status(), 200);
    let beat = resp.chunk().await.expect("read").expect("a heartbeat");
    assert_eq!(&beat[..], b"\n");
    // The agent dies: its connection closes.
    drop(resp);
    let report = round_now(&http, &base).await;
    assert!(
        report.duration_ms < 1500,
        "waited {} ms for a dead agent",
        report.duration_ms
    );
    let n1 = meshprobe_core::NodeName::new("n1").expect("name");
    assert_eq!(
        report.agents[&n1].host,
        meshprobe_core::matrix::AgentState::Silent
    );
}

/// A heartbeat-streamed poll ends with the plan as one JSON document (the heartbeats are
/// JSON white space), and an agent that polls while a round runs gets it at once.
#[tokio::test]
async fn a_streamed_poll_ends_with_the_plan() {
    let (base, c) = start().await;
    let round = c.trigger();
    let body = reqwest::Client::new()
        .get(format!(
            "{base}/v1/agents/n2/host/next?after=0&epoch=0&wait=5&heartbeatMs=100&relayPort=7071"
        ))
        .send()
        .await
        .expect("poll")
        .bytes()
        .await
        .expect("body");
    let end: meshprobe_core::api::PollResult = serde_json::from_slice(&body).expect("one JSON");
    let a = end.assignment.expect("the running round's plan");
    assert_eq!(a.plan.round, round);
    assert_eq!(a.plan.relay, None, "host plans name no relay");
    // Its pod agent's plan names the relay the host agent advertised.
    let pod: Assignment = reqwest::Client::new()
        .get(format!(
            "{base}/v1/agents/n2/pod/next?after=0&epoch=0&wait=5&podIP=10.42.2.10"
        ))
        .send()
        .await
        .expect("poll")
        .json()
        .await
        .expect("assignment");
    assert_eq!(
        pod.plan.relay,
        Some("192.168.77.12:7071".parse().expect("addr"))
    );
}

/// Issue 11, first bounds: a forged or replayed report, a pod IP outside the node's pod
/// CIDR, made-up node names and implausible offline reports are refused, and nothing is
/// kept for them.
#[tokio::test]
async fn forged_replayed_and_implausible_inputs_are_refused() {
    let (base, c) = start().await;
    let http = reqwest::Client::new();
    // A pod IP outside n2's pod CIDR (or a link-local one) never becomes a probe target.
    for ip in ["169.254.169.254", "127.0.0.1", "10.42.1.7"] {
        let got = http
            .get(format!(
                "{base}/v1/agents/n2/pod/next?after=0&epoch=0&wait=0&podIP={ip}"
            ))
            .send()
            .await
            .expect("poll")
            .status();
        assert_eq!(got, 400, "podIP {ip} for n2");
    }
    assert!(
        c.agents().agents.iter().all(|a| a.pod_ip.is_none()),
        "{:?}",
        c.agents()
    );

    // Made-up node names on the report endpoint are never listed as agents.
    let mut forged = empty_report(1, "n1");
    for i in 0..200 {
        forged.node = format!("made-up-{i}").parse().expect("name");
        let s = http
            .post(format!("{base}/v1/reports"))
            .json(&forged)
            .send()
            .await
            .expect("post")
            .status();
        assert_eq!(s, 409, "no round is running");
    }
    assert!(
        c.agents().agents.is_empty(),
        "made-up nodes were registered: {}",
        c.agents().agents.len()
    );

    // One report per agent per round: a second one for the same agent is refused, and
    // the first one stands.
    let agents = spawn_agents(&base, |_| None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let round = c.trigger();
    for a in agents {
        a.await.expect("agent");
    }
    let replay = empty_report(round, "n1");
    let got = http
        .post(format!("{base}/v1/reports"))
        .json(&replay)
        .send()
        .await
        .expect("post");
    let status = got.status();
    // The round may have finished already (409 not running) or still run (409 duplicate).
    assert_eq!(status, 409, "{}", got.text().await.unwrap_or_default());
    let r = round_report(&http, &base, round).await;
    assert!(r.healthy, "the first reports stand: {:?}", r.findings);

    // Offline reports: untimed, from the year 2100, or for a round never planned are not
    // kept.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let offline = |round: u64, at: Option<u64>| AgentReport {
        round,
        offline_at_ms: at,
        ..replay.clone()
    };
    let batch = meshprobe_core::api::OfflineBatch {
        reports: vec![
            offline(round, None),
            offline(round, Some(4_102_444_800_000)),
            offline(u64::MAX, Some(now_ms)),
            offline(round, Some(now_ms)),
        ],
    };
    let got: meshprobe_core::api::OfflineAccepted = http
        .post(format!("{base}/v1/reports/offline"))
        .json(&batch)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("answer");
    assert_eq!(got.accepted, 1, "{got:?}");
    assert_eq!(got.refused.len(), 3, "{got:?}");
    assert_eq!(c.offline_reports().len(), 1);
}

/// Issue 11: planning a round of 2,000 nodes (4,000 plans) happens off the lock and off
/// the async threads: `/healthz` and the agents' API answer meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planning_a_big_round_never_blocks_healthz() {
    use std::fmt::Write as _;
    let mut inv = String::from("cluster: {name: big}\nnodes:\n");
    for i in 0..2000 {
        let _ = writeln!(
            inv,
            "  - {{name: n{i}, internalIP: 10.1.{}.{}, podCIDR: 10.{}.{}.0/24}}",
            i / 250,
            i % 250 + 1,
            64 + i / 256,
            i % 256
        );
    }
    let topo = Topology::from_inventory(&inv).expect("valid inventory");
    let c = Coordinator::new(Box::new(StaticTopology::new(topo)), Settings::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router(c)).await });
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let post = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            http.post(format!("{base}/v1/rounds"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The agents' side of the API takes the coordinator's lock: it must not wait for
    // the planning (it did, for seconds, when rounds were planned under the lock).
    let agents = http
        .get(format!("{base}/v1/agents"))
        .timeout(Duration::from_millis(1500))
        .send()
        .await
        .expect("the API answers while the round is planned");
    assert_eq!(agents.status(), 200);
    let r = post
        .await
        .expect("task")
        .expect("a round is accepted at once");
    assert_eq!(r.status(), 202);
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let h = http
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .expect("healthz answers while the round is planned");
        assert_eq!(h.status(), 200);
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "2,000 nodes: round accepted and 20 healthz answered in {:?}; slowest healthz {slowest:?}",
        started.elapsed()
    );
}

/// Issue 11: rounds are rate-limited per client (a flood of round requests cannot make
/// the coordinator plan and keep round after round); the refusal says when to retry.
#[tokio::test]
async fn a_round_flood_is_rate_limited_per_client() {
    use meshprobe_coordinator::rounds::RoundLimit;
    use meshprobe_serve::{BoundedListener, Limits};
    let topo = Topology::from_inventory(INVENTORY).expect("valid inventory");
    let settings = Settings {
        silent_after: Duration::from_millis(100),
        round_limit: RoundLimit {
            burst: 3,
            per_round: Duration::from_secs(30),
        },
        ..Settings::default()
    };
    let c = Coordinator::new(Box::new(StaticTopology::new(topo)), settings);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let listener = BoundedListener::new(tcp, Limits::for_this_process());
    tokio::spawn(meshprobe_serve::serve(
        listener,
        router(c),
        std::future::pending(),
    ));
    // Past silent_after, a round with nobody polling ends at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = http
            .post(format!("{base}/v1/rounds"))
            .send()
            .await
            .expect("post");
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if status == 202 {
            let started: meshprobe_core::api::RoundStarted = r.json().await.expect("json");
            let done = http
                .get(format!("{base}/v1/rounds/{}?wait=5", started.round))
                .send()
                .await
                .expect("wait");
            assert_eq!(done.status(), 200);
        } else {
            assert!(retry.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| (1..=30).contains(&s))));
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [202, 202, 202, 429, 429]);
}

/// Issue 11: with credentials required, every agent acts for its own node only. A
/// forged report (no credential, a made-up one, another node's), a replayed one and a
/// node credential starting rounds are each refused, and the round's verdict is the one
/// the real agents' reports give.
#[tokio::test]
async fn reports_are_bound_to_the_node_whose_credential_sent_them() {
    use meshprobe_core::auth::{ClusterSecret, Subject};
    let secret = ClusterSecret::from_bytes(b"api-test-secret-0123456789").expect("secret");
    let cred = |n: &str| secret.credential(&Subject::Node(n.parse().expect("name")));
    let operator = secret.credential(&Subject::operator("tester").expect("name"));
    let (base, c) = start_with(meshprobe_coordinator::auth::Auth::required(
        Some(secret.clone()),
        None,
    ))
    .await;
    let http = reqwest::Client::new();
    let status_of = |req: reqwest::RequestBuilder| async move {
        let r = req.send().await.expect("send");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };

    // No credential, a made-up one, n1's credential renamed to n3: 401.
    let forged = empty_report(1, "n3");
    let renamed = cred("n1").replacen("mp1.node.n1.", "mp1.node.n3.", 1);
    for token in [None, Some("mp1.node.n3.00"), Some(renamed.as_str())] {
        let mut req = http.post(format!("{base}/v1/reports")).json(&forged);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let (s, body) = status_of(req).await;
        assert_eq!(s, 401, "{token:?}: {body}");
    }
    // n1's valid credential, polling or reporting as n3: 403, named.
    let (s, body) = status_of(
        http.get(format!(
            "{base}/v1/agents/n3/host/next?after=0&epoch=0&wait=0"
        ))
        .bearer_auth(cred("n1")),
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert!(
        body.contains("node n1") && body.contains("node n3"),
        "{body}"
    );
    // A node credential cannot start rounds; reads are open.
    let (s, body) = status_of(
        http.post(format!("{base}/v1/rounds"))
            .bearer_auth(cred("n1")),
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(
        status_of(http.get(format!("{base}/v1/agents"))).await.0,
        200
    );
    assert_eq!(status_of(http.get(format!("{base}/healthz"))).await.0, 200);

    // The real agents, each with its own node's credential.
    let agents = spawn_agents(&base, |n| Some(cred(n)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, body) = status_of(
        http.post(format!("{base}/v1/rounds"))
            .bearer_auth(&operator),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let round: meshprobe_core::api::RoundStarted = serde_json::from_str(&body).expect("started");
    // While it runs: n1's credential forging an all-fail report for n3 is refused.
    let mut all_fail = empty_report(round.round, "n3");
    all_fail.results = vec![ProbeResult {
        layer: Layer::Underlay,
        column: "n1".into(),
        sent: 20,
        ok: 0,
        rtt_ms: None,
        detail: Some("forged".into()),
        failure: Some(meshprobe_core::FailKind::Timeout),
    }];
    let (s, _) = status_of(
        http.post(format!("{base}/v1/reports"))
            .bearer_auth(cred("n1"))
            .json(&all_fail),
    )
    .await;
    assert_eq!(s, 403);
    for a in agents {
        a.await.expect("agent");
    }
    // A replay of n1's report with n1's own credential: 409.
    let (s, body) = status_of(
        http.post(format!("{base}/v1/reports"))
            .bearer_auth(cred("n1"))
            .json(&empty_report(round.round, "n1")),
    )
    .await;
    assert_eq!(s, 409, "{body}");
    let r = round_report(&http, &base, round.round).await;
    assert!(r.healthy, "the forgeries changed nothing: {:?}", r.findings);
    assert!(
        !r.warnings
            .iter()
            .any(|w| w == meshprobe_coordinator::rounds::INSECURE_WARNING),
        "{:?}",
        r.warnings
    );
    assert_eq!(c.agents().agents.len(), 6);
}

/// Issue 11: with `--auth-reads`, reads need a credential too (any valid one).
#[tokio::test]
async fn closed_reads_need_a_credential() {
    use meshprobe_core::auth::{ClusterSecret, Subject};
    let secret = ClusterSecret::from_bytes(b"api-test-secret-0123456789").expect("secret");
    let node = secret.credential(&Subject::Node("n2".parse().expect("name")));
    let (base, _c) = start_with(
        meshprobe_coordinator::auth::Auth::required(Some(secret), None).with_closed_reads(true),
    )
    .await;
    let http = reqwest::Client::new();
    for path in [
        "/v1/agents",
        "/v1/topology",
        "/metrics",
        "/v1/rounds/latest",
    ] {
        let r = http.get(format!("{base}{path}")).send().await.expect("get");
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers().contains_key("www-authenticate"), "{path}");
        let r = http
            .get(format!("{base}{path}"))
            .bearer_auth(&node)
            .send()
            .await
            .expect("get");
        assert_ne!(r.status(), 401, "{path}");
    }
    let r = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200, "liveness stays open");
}

/// Issue 11: in insecure mode every round says so.
#[tokio::test]
async fn an_insecure_coordinator_warns_in_every_round() {
    let (_base, c) = start().await;
    let id = c.trigger();
    let meshprobe_coordinator::rounds::RoundStatus::Done(r) =
        c.wait_for(id, Duration::from_secs(10)).await
    else {
        panic!("round {id} did not finish");
    };
    assert!(
        r.warnings
            .iter()
            .any(|w| w == meshprobe_coordinator::rounds::INSECURE_WARNING),
        "{:?}",
        r.warnings
    );
}

/// Issue 11: the coordinator serves TLS with the certificate it is given; a client that
/// trusts the CA gets through, one that trusts another CA does not, and plain HTTP to the
/// TLS port gets no answer.
#[tokio::test]
async fn tls_is_served_and_verified_against_the_ca() {
    use meshprobe_probe::client::{ClientOptions, CoordinatorClient, Credential};
    let dir = std::env::temp_dir().join(format!("meshprobe-tls-{}", std::process::id()));
    let other = dir.join("other");
    std::fs::create_dir_all(&other).expect("dir");
    let n1: meshprobe_core::NodeName = "n1".parse().expect("name");
    meshprobe_sandbox::creds::write(&dir, std::slice::from_ref(&n1), [127, 0, 0, 1].into())
        .expect("creds");
    meshprobe_sandbox::creds::write(&other, &[n1], [127, 0, 0, 1].into()).expect("creds");
    let topo = Topology::from_inventory(INVENTORY).expect("valid inventory");
    let c = Coordinator::new(Box::new(StaticTopology::new(topo)), Settings::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = meshprobe_coordinator::tls::server_config(
        &dir.join(meshprobe_sandbox::creds::CERT),
        &dir.join(meshprobe_sandbox::creds::KEY),
    )
    .expect("server config");
    let listener = meshprobe_serve::BoundedListener::new(
        listener,
        meshprobe_serve::Limits::for_this_process(),
    )
    .with_tls(config);
    tokio::spawn(meshprobe_serve::serve(
        listener,
        router(c),
        std::future::pending(),
    ));
    let ca = |d: &std::path::Path| {
        let path = d.join(meshprobe_sandbox::creds::CA);
        let pem = std::fs::read(&path).expect("ca");
        meshprobe_probe::transport::client_tls(&path.display().to_string(), &pem).expect("tls")
    };
    let url = format!("https://{addr}");
    let options = |tls, name: Option<&str>| ClientOptions {
        credential: Some(Credential::File(
            dir.join(meshprobe_sandbox::creds::OPERATOR),
        )),
        tls: Some(tls),
        server_name: name.map(str::to_owned),
    };
    let good = CoordinatorClient::with_options(&url, &options(ca(&dir), None)).expect("client");
    let started = good
        .start_round(&Default::default(), Duration::from_secs(5))
        .await
        .expect("a round over TLS");
    assert!(started.round >= 1);
    // By the certificate's DNS name (as agents reaching a ClusterIP verify the Service's
    // name), and not by a name it does not carry.
    let named =
        CoordinatorClient::with_options(&url, &options(ca(&dir), Some("meshprobe-coordinator")))
            .expect("client");
    named
        .start_round(&Default::default(), Duration::from_secs(5))
        .await
        .expect("verified by name");
    let misnamed = CoordinatorClient::with_options(&url, &options(ca(&dir), Some("evil.example")))
        .expect("client");
    assert!(
        misnamed
            .start_round(&Default::default(), Duration::from_secs(5))
            .await
            .is_err(),
        "a certificate for another name is refused"
    );
    let bad = CoordinatorClient::with_options(&url, &options(ca(&other), None)).expect("client");
    let err = bad
        .start_round(&Default::default(), Duration::from_secs(5))
        .await
        .expect_err("another CA's certificate is refused");
    assert!(err.to_string().contains("TLS"), "{err}");
    // https without a CA is refused before any connection.
    assert!(CoordinatorClient::new(&url).is_err());
    // Plain HTTP to the TLS port: never served, but told to use https (issue 23).
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("a plain HTTP answer");
    assert_eq!(plain.status(), 400);
    let said = plain.text().await.unwrap_or_default();
    assert!(said.contains("use https://"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 12: the web view's assets (with their CSP), the status it polls, the findings'
/// timeline and baselines (saving needs an operator; `latest-healthy` is computed).
#[tokio::test]
async fn the_view_status_history_and_baselines_are_served() {
    use meshprobe_core::auth::{ClusterSecret, Subject};
    let secret = ClusterSecret::from_bytes(b"api-test-secret-0123456789").expect("secret");
    let node = secret.credential(&Subject::Node("n1".parse().expect("name")));
    let operator = secret.credential(&Subject::operator("tester").expect("name"));
    let (base, c) = start_with(meshprobe_coordinator::auth::Auth::required(
        Some(secret),
        None,
    ))
    .await;
    let http = reqwest::Client::new();
    for (path, ct) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.expect("get");
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(
            h["content-type"].to_str().unwrap_or("").starts_with(ct),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap_or("");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
    }
    let status = status_now(&http, &base).await;
    assert_eq!((status.latest_round, status.leader), (None, true));

    // Two rounds with all six agents (healthy), one with nobody (not healthy).
    for _ in 0..2 {
        let agents = spawn_agents(&base, |n| Some(secret_cred(n)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let id = c.trigger();
        for a in agents {
            a.await.expect("agent");
        }
        assert!(round_report(&http, &base, id).await.healthy);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let id = c.trigger();
    let r = round_report(&http, &base, id).await;
    assert!(!r.healthy);
    let status = status_now(&http, &base).await;
    assert_eq!(
        (status.latest_round, status.healthy),
        (Some(id), Some(false))
    );
    assert!(status.latest_age_ms.is_some_and(|a| a < 10_000));

    let t: meshprobe_core::api::FindingsAnswer = http
        .get(format!("{base}/v1/findings?since=0"))
        .send()
        .await
        .expect("findings")
        .json()
        .await
        .expect("json");
    assert_eq!(t.newest_round, Some(id));
    assert!(
        t.findings
            .iter()
            .all(|f| f.last_round == id && f.first_round == id),
        "{t:?}"
    );
    assert!(!t.findings.is_empty());

    // Baselines: a node cannot save one, an operator can; latest-healthy is round 2.
    let put = |token: &str| {
        http.put(format!("{base}/v1/baselines/pre-upgrade"))
            .bearer_auth(token.to_owned())
            .json(&meshprobe_core::api::BaselineRequest { round: Some(1) })
            .send()
    };
    assert_eq!(put(&node).await.expect("put").status(), 403);
    assert_eq!(put(&operator).await.expect("put").status(), 200);
    let get = |name: &str| http.get(format!("{base}/v1/baselines/{name}")).send();
    let saved: CheckReport = get("pre-upgrade")
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(saved.round, 1);
    let healthy: CheckReport = get("latest-healthy")
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(healthy.round, 2);
    assert_eq!(get("nope").await.expect("get").status(), 404);
    assert_eq!(get("bad%20name").await.expect("get").status(), 400);
}

/// n's credential under the secret the view test uses.
fn secret_cred(n: &str) -> String {
    use meshprobe_core::auth::{ClusterSecret, Subject};
    ClusterSecret::from_bytes(b"api-test-secret-0123456789")
        .expect("secret")
        .credential(&Subject::Node(n.parse().expect("name")))
}

async fn status_now(http: &reqwest::Client, base: &str) -> meshprobe_core::api::StatusAnswer {
    http.get(format!("{base}/v1/status"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json")
}

/// Issue 22, row 3: offline reports. One node's 4,096-report batch evicts only its own;
/// the same report twice is kept once; the list is read in pages, and only with an
/// operator's credential, however reads are set.
#[tokio::test]
async fn one_nodes_offline_flood_keeps_the_others_reports() {
    use meshprobe_core::api::{OfflineAccepted, OfflineBatch, OfflineList};
    use meshprobe_core::auth::{ClusterSecret, Subject};
    let secret = ClusterSecret::from_bytes(b"api-test-secret-0123456789").expect("secret");
    let as_node = |n: &str| secret.credential(&Subject::Node(n.parse().expect("name")));
    let operator = secret.credential(&Subject::operator("op").expect("operator"));
    let (base, c) = start_with(meshprobe_coordinator::auth::Auth::required(
        Some(secret.clone()),
        None,
    ))
    .await;
    let http = reqwest::Client::new();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let offline = |node: &str, i: u64| AgentReport {
        offline_at_ms: Some(now_ms - 1_000_000 + i),
        ..empty_report(i + 1, node)
    };
    let post = |who: String, reports: Vec<AgentReport>| {
        let http = http.clone();
        let url = format!("{base}/v1/reports/offline");
        async move {
            http.post(url)
                .bearer_auth(who)
                .json(&OfflineBatch { reports })
                .send()
                .await
                .expect("post")
                .json::<OfflineAccepted>()
                .await
                .expect("answer")
        }
    };
    let n2 = post(as_node("n2"), vec![offline("n2", 0), offline("n2", 1)]).await;
    assert_eq!(n2.accepted, 2, "{n2:?}");
    let again = post(as_node("n2"), vec![offline("n2", 1)]).await;
    assert_eq!(
        again.accepted, 0,
        "a report kept already is refused: {again:?}"
    );
    assert_eq!(again.refused.len(), 1, "{again:?}");
    let flood: Vec<AgentReport> = (0..4096).map(|i| offline("n1", i)).collect();
    let n1 = post(as_node("n1"), flood).await;
    assert_eq!(n1.accepted, 4096);
    let kept = c.offline_reports();
    let of = |n: &str| kept.iter().filter(|r| r.node.as_str() == n).count();
    assert_eq!(of("n2"), 2, "n1's flood evicted n2's outage reports");
    assert_eq!(of("n1"), meshprobe_coordinator::offline::PER_AGENT);
    // Anonymous and node credentials cannot read agents' raw reports; an operator reads
    // them a page at a time.
    let url = format!("{base}/v1/reports/offline?limit=10");
    let anon = http.get(&url).send().await.expect("get");
    assert_eq!(anon.status(), 401);
    let node = http
        .get(&url)
        .bearer_auth(as_node("n2"))
        .send()
        .await
        .expect("get");
    assert_eq!(node.status(), 403);
    let page: OfflineList = http
        .get(&url)
        .bearer_auth(&operator)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("a page");
    assert_eq!(page.reports.len(), 10);
    let next = page.next.expect("more pages");
    let rest: OfflineList = http
        .get(format!("{base}/v1/reports/offline?after={next}&limit=1000"))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("a page");
    assert_eq!(page.reports.len() + rest.reports.len(), kept.len());
    assert_eq!(rest.next, None);
}

/// Issue 22, row 4: one node's credential cannot starve the others' reports. n1 opens 64
/// slow uploads (headers, then nothing): only two hold a turn, the rest are told at once
/// to come back; honest n2 and n3 reports are read and applied at once.
#[tokio::test]
async fn one_nodes_slow_uploads_hold_its_own_turns_only() {
    use meshprobe_core::auth::{ClusterSecret, Subject};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let secret = ClusterSecret::from_bytes(b"api-test-secret-0123456789").expect("secret");
    let as_node = |n: &str| secret.credential(&Subject::Node(n.parse().expect("name")));
    let (base, _c) = start_with(meshprobe_coordinator::auth::Auth::required(
        Some(secret.clone()),
        None,
    ))
    .await;
    let addr = base.trim_start_matches("http://").to_owned();
    let n1 = as_node("n1");
    let mut slow = Vec::new();
    let mut refused_at_once = 0;
    for _ in 0..64 {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(
            format!(
                "POST /v1/reports HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {n1}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        let mut answer = [0u8; 64];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), s.read(&mut answer)).await
            && String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 503")
        {
            refused_at_once += 1;
        }
        slow.push(s);
    }
    assert_eq!(
        refused_at_once,
        64 - meshprobe_coordinator::rounds::UPLOADS_PER_NODE,
        "past its node's share, an upload is refused at once"
    );
    let http = reqwest::Client::new();
    for n in ["n2", "n3"] {
        let started = std::time::Instant::now();
        let r = http
            .post(format!("{base}/v1/reports"))
            .bearer_auth(as_node(n))
            .json(&empty_report(1, n))
            .send()
            .await
            .expect("post");
        // No round runs: 409 says the report was read and applied, not kept waiting.
        assert_eq!(
            r.status(),
            409,
            "{n}: {}",
            r.text().await.unwrap_or_default()
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{n} waited {:?} behind n1's uploads",
            started.elapsed()
        );
    }
    drop(slow);
}

/// Issue 22, row 5: one lying observer. n1's agents, with n1's own credentials, report
/// every probe toward n3 dead while n2 and n3 report everything whole: the round's finding
/// names n1 (the observer), with n3 only as its peer, and no `meshprobe_finding` series,
/// node condition or Event (all raised from `nodes`) names n3.
#[tokio::test]
async fn one_lying_observer_is_one_nodes_word() {
    use meshprobe_core::auth::{ClusterSecret, Subject};
    let secret = ClusterSecret::from_bytes(b"api-test-secret-0123456789").expect("secret");
    let (base, c) = start_with(meshprobe_coordinator::auth::Auth::required(
        Some(secret.clone()),
        None,
    ))
    .await;
    let token = |n: &str| Some(secret.credential(&Subject::Node(n.parse().expect("name"))));
    let http = reqwest::Client::new();
    register_pod_agents(&http, &base, |n| token(n)).await;
    let mut agents = Vec::new();
    for (node, ip) in [
        ("n1", "10.42.1.10"),
        ("n2", "10.42.2.10"),
        ("n3", "10.42.3.10"),
    ] {
        let lie: Dead = (node == "n1").then_some((None, "n3"));
        for (kind, ip) in [("host", "0.0.0.0"), ("pod", ip)] {
            agents.push(tokio::spawn(fake_agent_as(
                base.clone(),
                node,
                kind,
                ip,
                lie,
                token(node),
            )));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let round = c.trigger();
    for a in agents {
        a.await.expect("agent");
    }
    let operator = secret.credential(&Subject::operator("op").expect("operator"));
    let r: meshprobe_core::CheckReport = http
        .get(format!("{base}/v1/rounds/{round}?wait=10"))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("report");
    assert!(!r.findings.is_empty(), "n1's failing cells are named");
    for f in &r.findings {
        assert!(
            !f.nodes.iter().any(|n| n.as_str() == "n3"),
            "a finding names n3 on n1's word alone: {} {:?} {}",
            f.cause,
            f.nodes,
            f.summary
        );
    }
    assert!(
        r.findings
            .iter()
            .any(|f| f.nodes.iter().any(|n| n.as_str() == "n1")
                && f.peers.iter().any(|n| n.as_str() == "n3")),
        "the observer is the party, its victim the peer: {:?}",
        r.findings
    );
    let metrics = c.metrics_text();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("meshprobe_finding{") && l.contains("node=\"n3\"")),
        "{metrics}"
    );
}

/// Issue 22, row 6: two nodes' host agents send reports just under the 4 MiB limit each
/// (the audit: an 18.9 MiB round report, and every `check` then exited 2). The round
/// report stays within its limit, says what it left out, and keeps its verdict.
#[tokio::test]
async fn big_reports_never_make_an_unreadable_round() {
    let (base, c) = start().await;
    let http = reqwest::Client::new();
    register_pod_agents(&http, &base, |_| None).await;
    let mut agents = Vec::new();
    for (node, ip) in [
        ("n1", "10.42.1.10"),
        ("n2", "10.42.2.10"),
        ("n3", "10.42.3.10"),
    ] {
        agents.push(tokio::spawn(fake_agent(
            base.clone(),
            node,
            "pod",
            ip,
            None,
        )));
    }
    agents.push(tokio::spawn(fake_agent(
        base.clone(),
        "n3",
        "host",
        "0.0.0.0",
        None,
    )));
    let big_host = |node: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let a: Assignment = http
                .get(format!(
                    "{base}/v1/agents/{node}/host/next?after=0&epoch=0&wait=10"
                ))
                .send()
                .await
                .expect("poll")
                .json()
                .await
                .expect("assignment");
            let mut report = empty_report(a.plan.round, node);
            report.results = a
                .plan
                .cells()
                .map(|(layer, column)| ProbeResult {
                    layer,
                    column: column.to_owned(),
                    sent: 20,
                    ok: 20,
                    rtt_ms: Some(0.3),
                    detail: None,
                    failure: None,
                })
                .collect();
            report.evidence = Some(meshprobe_core::evidence::NodeEvidence {
                unavailable: vec!["x".repeat((4 << 20) - 64 * 1024)],
                ..Default::default()
            });
            let r = http
                .post(format!("{base}/v1/reports"))
                .json(&report)
                .send()
                .await
                .expect("report");
            assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
        }
    };
    agents.push(tokio::spawn(big_host("n1")));
    agents.push(tokio::spawn(big_host("n2")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let round = c.trigger();
    for a in agents {
        a.await.expect("agent");
    }
    let body = http
        .get(format!("{base}/v1/rounds/{round}?wait=10"))
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert!(
        body.len() <= meshprobe_coordinator::rounds::MAX_ROUND_REPORT,
        "{} bytes",
        body.len()
    );
    let r: meshprobe_core::CheckReport = serde_json::from_slice(&body).expect("a report");
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("left out") && w.contains("evidence")),
        "{:?}",
        r.warnings
    );
    assert!(r.healthy, "the verdict stays: {:?}", r.findings);
}

/// Issue 22, row 7: 300 concurrent round requests (the audit: 111 numbers handed out, 15 of
/// which never existed and answered 410). Every number handed out is a round that ran and
/// can be read, from memory or from the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_round_number_handed_out_is_a_round_that_ran() {
    let (base, c) = start().await;
    // Past silent_after nobody is waited for: each round ends as soon as it starts.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut tasks = Vec::new();
    for i in 0..300u64 {
        let c = Arc::clone(&c);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(i * 150)).await;
            c.trigger()
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        ids.insert(t.await.expect("trigger"));
    }
    let http = reqwest::Client::new();
    for id in &ids {
        let r = http
            .get(format!("{base}/v1/rounds/{id}?wait=10"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "round {id} of {ids:?}");
    }
}

/// Issue 22, row 10: the smaller ones. A pod IP that is the pod range's network, broadcast
/// or gateway address is refused; a rebound Host is refused; a write from another site's
/// page is refused; an over-limit body's 413 is JSON; the 101st baseline is 409; another
/// operator cannot overwrite a baseline; rounds are budgeted per credential.
#[tokio::test]
async fn the_smaller_holes_are_closed() {
    use meshprobe_core::auth::{ClusterSecret, Subject};
    let secret = ClusterSecret::from_bytes(b"api-test-secret-0123456789").expect("secret");
    let (base, c) = start_with(meshprobe_coordinator::auth::Auth::required(
        Some(secret.clone()),
        None,
    ))
    .await;
    let http = reqwest::Client::new();
    let n1 = secret.credential(&Subject::Node("n1".parse().expect("name")));
    for ip in ["10.42.1.0", "10.42.1.255", "10.42.1.1"] {
        let r = http
            .get(format!(
                "{base}/v1/agents/n1/pod/next?after=0&epoch=0&wait=0&podIP={ip}"
            ))
            .bearer_auth(&n1)
            .send()
            .await
            .expect("poll");
        assert_eq!(r.status(), 400, "{ip}");
    }
    let alice = secret.credential(&Subject::operator("alice").expect("operator"));
    let bob = secret.credential(&Subject::operator("bob").expect("operator"));
    // DNS rebinding: the browser sends the attacker's name as the Host.
    let r = http
        .get(format!("{base}/v1/agents"))
        .header("host", "evil.example.com")
        .bearer_auth(&alice)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 421);
    let r = http
        .post(format!("{base}/v1/rounds"))
        .header("origin", "https://evil.example.com")
        .bearer_auth(&alice)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    // A body past the limit: JSON like every other error.
    let r = http
        .post(format!("{base}/v1/rounds"))
        .bearer_auth(&alice)
        .body(vec![b' '; 9 << 20])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let e: meshprobe_core::api::ApiError = r.json().await.expect("a JSON error");
    assert!(!e.error.is_empty());
    // The 101st baseline is a conflict, not a server error; a baseline is its operator's.
    // A finished round to save (past silent_after, nobody is waited for).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let id = c.trigger();
    let _ = c.wait_for(id, Duration::from_secs(10)).await;
    for i in 0..meshprobe_coordinator::history::MAX_BASELINES {
        let r = http
            .put(format!("{base}/v1/baselines/b{i}"))
            .bearer_auth(&alice)
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
    let r = http
        .put(format!("{base}/v1/baselines/one-more"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 409);
    let r = http
        .put(format!("{base}/v1/baselines/b0"))
        .bearer_auth(&bob)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap_or_default());
}

/// Issue 22, row 10: the round budget is per credential (`core/src/auth.rs` said so, the
/// coordinator kept it per address): two operators behind one address have one each.
#[tokio::test]
async fn round_budgets_are_per_credential() {
    use meshprobe_coordinator::rounds::{RoundClient, RoundLimit};
    let topo = Topology::from_inventory(INVENTORY).expect("valid inventory");
    let settings = Settings {
        silent_after: Duration::from_millis(50),
        round_limit: RoundLimit {
            burst: 2,
            per_round: Duration::from_secs(60),
        },
        ..Settings::default()
    };
    let c = Coordinator::new(Box::new(StaticTopology::new(topo)), settings);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let alice = RoundClient::Credential("operator alice".to_owned());
    let bob = RoundClient::Credential("operator bob".to_owned());
    let mut refused = None;
    for _ in 0..20 {
        match c.trigger_for(alice.clone(), false) {
            Ok(id) => {
                let _ = c.wait_for(id, Duration::from_secs(5)).await;
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("alice runs out of rounds");
    assert_eq!(e.client, alice);
    assert!(c.trigger_for(bob, false).is_ok(), "bob has his own budget");
}

/// Issue 22, row 4: one open poll per node and kind. A second poll for n1's host agent
/// (the agent again after its connection died, or a copy of its credential) ends the first
/// at once, which gives its slot back; n1's pod agent's poll is not touched.
#[tokio::test]
async fn a_new_poll_replaces_the_old_one() {
    let (base, _c) = start().await;
    let http = reqwest::Client::new();
    let poll = |kind: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            let r = http
                .get(format!(
                    "{base}/v1/agents/n1/{kind}/next?after=0&epoch=0&wait=10"
                ))
                .send()
                .await
                .expect("poll");
            (r.status(), t.elapsed())
        })
    };
    let first = poll("host");
    let pod = poll("pod");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = poll("host");
    let (status, took) = first.await.expect("first");
    assert_eq!(status, 204);
    assert!(
        took < Duration::from_secs(3),
        "the first poll held on for {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "the newest poll stays open");
    assert!(!pod.is_finished(), "another kind's poll is not touched");
    second.abort();
    pod.abort();
}

/// A host agent reads its node's entry (its relay's admission) with no round running; an
/// unknown node is 404 and a malformed name 400.
#[tokio::test]
async fn a_nodes_entry_is_answered_without_a_round() {
    let (base, _c) = start().await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{base}/v1/nodes/n2"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let a: meshprobe_core::api::NodeAnswer = r.json().await.expect("a node answer");
    assert_eq!(a.pod_cidr.to_string(), "10.42.2.0/24");
    assert_eq!(a.internal_ip.to_string(), "192.168.77.12");
    assert_eq!(a.gateway.to_string(), "10.42.2.1");
    for (path, want) in [("/v1/nodes/n9", 404), ("/v1/nodes/N%20x", 400)] {
        let r = http.get(format!("{base}{path}")).send().await.expect("get");
        assert_eq!(r.status(), want, "{path}");
    }
}

/// Issue 23, item 11: `/metrics` is OpenMetrics for a scraper that asks for it, and the
/// classic text format otherwise, which `promtool check metrics` (it reads only that)
/// passes, lint included, on a live coordinator after a round.
#[tokio::test]
async fn metrics_negotiate_the_classic_format_and_promtool_passes_it() {
    let (base, c) = start().await;
    let id = c.trigger();
    assert!(matches!(
        c.wait_for(id, Duration::from_secs(10)).await,
        meshprobe_coordinator::rounds::RoundStatus::Done(_)
    ));
    let http = reqwest::Client::new();
    let om = http
        .get(format!("{base}/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .send()
        .await
        .expect("metrics");
    assert!(
        om.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text")
    );
    let om = om.text().await.expect("text");
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    let classic = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert!(
        classic.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4")
    );
    let classic = classic.text().await.expect("text");
    assert!(
        !classic.contains("# EOF") && !classic.contains("# UNIT"),
        "{classic}"
    );
    assert!(
        classic.contains("# TYPE meshprobe_rounds_total counter"),
        "{classic}"
    );
    meshprobe_core::promtext::validate(&classic).unwrap_or_else(|e| panic!("{e}\n{classic}"));
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match promtool {
        Ok(c) => c,
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: promtool is not installed (Debian's prometheus has it)");
            return;
        }
        Err(e) => panic!("CI must install promtool: {e}"),
    };
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(classic.as_bytes()).expect("write");
    }
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics exited {:?}:\n{}{}\n{classic}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
