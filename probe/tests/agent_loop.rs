//! Issue 9: the agent without a lab. `run_plan` and the agent loop run in-process over
//! fake probers ([`Probers`]) against a fake coordinator on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::routing::{get, post};
use meshprobe_core::api::{Assignment, PollResult};
use meshprobe_core::evidence::{NodeEvidence, OverlayExpectation};
use meshprobe_core::plan::{AgentReport, HttpCheck, Plan, make_plan};
use meshprobe_core::{AgentKind, Layer, NodeName, PlanSettings, Topology};
use meshprobe_probe::dns::DnsOutcome;
use meshprobe_probe::icmp::{Outcome, Schedule, Target};
use meshprobe_probe::{AgentConfig, Probers, agent_loop, run_plan};
use tokio::time::Instant;

const INVENTORY: &str = "
cluster: {name: t, dnsServiceIP: 10.43.0.10}
nodes:
  - {name: n1, internalIP: 127.0.0.1, podCIDR: 10.42.1.0/24}
  - {name: n2, internalIP: 127.0.0.2, podCIDR: 10.42.2.0/24}
coreDNS: [{name: coredns-a, node: n2, ip: 10.42.2.53}]
nodePorts: [{name: web, port: 30080, path: /}]
";

/// Fake probers: every ICMP target answers except `dead_ip`, whose echoes are lost; DNS
/// answers unless `dns_hangs`; HTTP answers; evidence is empty.
#[derive(Default)]
struct Fake {
    dead_ip: Option<Ipv4Addr>,
    dns_hangs: bool,
}

impl Probers for Fake {
    async fn ping(&self, _round: u64, targets: &[Target], s: Schedule) -> Option<Vec<Outcome>> {
        Some(
            targets
                .iter()
                .map(|t| {
                    let ok = Some(t.ip) != self.dead_ip;
                    Outcome {
                        sent: u32::from(s.count),
                        received: if ok { u32::from(s.count) } else { 0 },
                        rtt_total: Duration::from_micros(300) * u32::from(s.count),
                        failure: (!ok).then(meshprobe_core::Failure::timeout),
                    }
                })
                .collect(),
        )
    }
    async fn dns(&self, _server: Ipv4Addr, _name: &str, _t: Duration) -> DnsOutcome {
        if self.dns_hangs {
            // A prober that ignores its own timeout: run_plan must still end on time.
            std::future::pending::<()>().await;
        }
        DnsOutcome::Answer {
            addrs: vec![Ipv4Addr::new(10, 43, 0, 1)],
            rtt: Duration::from_millis(1),
        }
    }
    async fn http(
        &self,
        _url: &str,
        _host: Option<&str>,
        _c: HttpCheck,
        _t: Duration,
    ) -> Result<Duration, meshprobe_core::Failure> {
        Ok(Duration::from_millis(2))
    }
    async fn evidence(&self, _e: Option<OverlayExpectation>, _t: Duration) -> Option<NodeEvidence> {
        Some(NodeEvidence::default())
    }
}

fn plan(kind: AgentKind, round: u64) -> Plan {
    let t = Topology::from_inventory(INVENTORY).expect("inventory");
    let pods = [
        (NodeName::new("n1").expect("n"), Ipv4Addr::new(10, 42, 1, 9)),
        (NodeName::new("n2").expect("n"), Ipv4Addr::new(10, 42, 2, 9)),
    ]
    .into_iter()
    .collect();
    let settings = PlanSettings {
        icmp_count: 3,
        ..PlanSettings::default()
    };
    make_plan(
        &t,
        &pods,
        &NodeName::new("n1").expect("n"),
        kind,
        round,
        &settings,
    )
}

#[tokio::test]
async fn run_plan_maps_every_prober_outcome_to_its_cell() {
    let p = plan(AgentKind::Pod, 1);
    let fake = Fake {
        dead_ip: Some(Ipv4Addr::new(10, 42, 2, 9)),
        ..Fake::default()
    };
    let r = run_plan(&p, &fake, &[], None).await;
    let cells: Vec<(Layer, String)> = p.cells().map(|(l, c)| (l, c.to_owned())).collect();
    assert_eq!(
        r.results.len(),
        cells.len() - p.unresolved.len(),
        "one result per probed cell"
    );
    let get = |l: Layer, c: &str| {
        r.results
            .iter()
            .find(|x| x.layer == l && x.column == c)
            .unwrap_or_else(|| panic!("no {l} {c}"))
    };
    let dead = get(Layer::PodToPod, "n2");
    assert_eq!(
        (dead.sent, dead.ok, dead.detail.as_deref(), dead.failure),
        (
            3,
            0,
            Some("timeout"),
            Some(meshprobe_core::FailKind::Timeout)
        )
    );
    let alive = get(Layer::GatewayFromPod, "n2");
    assert_eq!((alive.sent, alive.ok), (3, 3));
    let dns = get(Layer::DnsService, "kube-dns");
    assert_eq!(dns.ok, dns.sent);
    assert!(dns.sent >= 5, "{dns:?}");
    assert!(r.evidence.is_none(), "pod agents read no node evidence");
}

/// The plan's budget bounds the whole run, even when a prober never returns.
#[tokio::test]
async fn run_plan_ends_within_the_budget_when_a_prober_hangs() {
    let p = plan(AgentKind::Pod, 1);
    let fake = Fake {
        dns_hangs: true,
        ..Fake::default()
    };
    let started = Instant::now();
    let r = run_plan(&p, &fake, &[], None).await;
    let took = started.elapsed();
    let budget = Duration::from_millis(u64::from(p.budget_ms));
    assert!(
        took < budget + meshprobe_probe::agent::BUDGET_SLACK + Duration::from_millis(200),
        "took {took:?}, budget {budget:?}"
    );
    let dns = r
        .results
        .iter()
        .find(|x| x.layer == Layer::DnsService)
        .expect("dns cell");
    assert_eq!(dns.sent, 0);
    assert!(
        dns.detail.as_deref().is_some_and(|d| d.contains("budget")),
        "{dns:?}"
    );
}

/// What a fake coordinator saw.
#[derive(Default)]
struct Seen {
    polls: Vec<(Instant, String)>,
    /// Every report delivery attempt.
    attempts: Vec<Instant>,
    reports: Vec<(Instant, AgentReport)>,
}

#[derive(Clone)]
struct Fc {
    seen: Arc<Mutex<Seen>>,
    name: &'static str,
    plan: Plan,
    /// The first poll goes quiet after one heartbeat (a connection that died).
    first_poll_dies: bool,
    /// The first poll and the first report get 503 with `Retry-After: 1` (an overloaded
    /// coordinator).
    overloaded_once: bool,
}

fn told_to_come_back() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        "{\"error\": \"at the limit\"}",
    )
        .into_response()
}

async fn fc_poll(State(fc): State<Fc>, uri: axum::http::Uri) -> axum::response::Response {
    let n = {
        let mut s = fc.seen.lock().expect("lock");
        s.polls.push((Instant::now(), format!("{} {uri}", fc.name)));
        s.polls.len()
    };
    if fc.overloaded_once && n == 1 {
        return told_to_come_back();
    }
    axum::response::IntoResponse::into_response(fc_poll_body(&fc, n).await)
}

async fn fc_poll_body(fc: &Fc, n: usize) -> Body {
    if fc.first_poll_dies && n == 1 {
        // One heartbeat, then nothing, for ever: what a flushed NAT entry looks like.
        let s = futures_util::stream::unfold(0u8, |i| async move {
            if i > 0 {
                std::future::pending::<()>().await;
            }
            Some((Ok::<_, std::io::Error>(Bytes::from_static(b"\n")), i + 1))
        });
        return Body::from_stream(s);
    }
    let already = fc.seen.lock().expect("lock").reports.len();
    let assignment = (already == 0).then(|| Assignment {
        epoch: 7,
        plan: fc.plan.clone(),
    });
    if assignment.is_none() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Body::from(serde_json::to_vec(&PollResult { assignment }).expect("json"))
}

async fn fc_report(State(fc): State<Fc>, body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    let r: AgentReport = serde_json::from_slice(&body).expect("report");
    let mut s = fc.seen.lock().expect("lock");
    s.attempts.push(Instant::now());
    if fc.overloaded_once && s.attempts.len() == 1 {
        return told_to_come_back();
    }
    s.reports.push((Instant::now(), r));
    axum::http::StatusCode::ACCEPTED.into_response()
}

async fn fake_coordinator(fc: Fc) -> std::net::SocketAddr {
    let app = Router::new()
        .route(meshprobe_core::api::NEXT_PATTERN, get(fc_poll))
        .route(meshprobe_core::api::REPORTS, post(fc_report))
        .with_state(fc);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

async fn wait_for_report(seen: &Arc<Mutex<Seen>>, within: Duration) -> Instant {
    let until = Instant::now() + within;
    loop {
        if let Some((at, _)) = seen.lock().expect("lock").reports.first() {
            return *at;
        }
        assert!(Instant::now() < until, "no report within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A poll whose connection goes quiet is replaced within about a second (three missed
/// 300 ms heartbeats), not at the poll's 10 s timeout, and the round is not lost.
#[tokio::test]
async fn a_dead_poll_is_replaced_within_a_second() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let addr = fake_coordinator(Fc {
        seen: Arc::clone(&seen),
        name: "coordinator",
        plan: plan(AgentKind::Host, 5),
        first_poll_dies: true,
        overloaded_once: false,
    })
    .await;
    let cfg = AgentConfig::new(
        NodeName::new("n1").expect("n"),
        AgentKind::Host,
        format!("http://{addr}"),
    );
    let agent = tokio::spawn(async move { agent_loop(&cfg, &Fake::default(), vec![], None).await });
    wait_for_report(&seen, Duration::from_secs(8)).await;
    agent.abort();
    let s = seen.lock().expect("lock");
    assert!(s.polls.len() >= 2, "{:?}", s.polls);
    let gap = s.polls[1].0 - s.polls[0].0;
    eprintln!("the quiet poll was replaced {gap:?} after it began");
    assert!(
        gap >= Duration::from_millis(800) && gap < Duration::from_millis(1600),
        "the second poll came {gap:?} after the first"
    );
    assert!(s.polls[0].1.contains("heartbeatMs=300"), "{}", s.polls[0].1);
    assert_eq!(s.reports[0].1.round, 5);
}

/// A pod agent given the coordinator's URL switches to the relay its plan names: the
/// report and every later poll go there.
#[tokio::test]
async fn a_pod_agent_switches_to_the_relay_its_plan_names() {
    let relay_seen = Arc::new(Mutex::new(Seen::default()));
    let mut p = plan(AgentKind::Pod, 3);
    let relay = fake_coordinator(Fc {
        seen: Arc::clone(&relay_seen),
        name: "relay",
        plan: p.clone(),
        first_poll_dies: false,
        overloaded_once: false,
    })
    .await;
    let std::net::SocketAddr::V4(relay) = relay else {
        panic!("v4")
    };
    p.relay = Some(SocketAddrV4::new(*relay.ip(), relay.port()));
    let coord_seen = Arc::new(Mutex::new(Seen::default()));
    let coord = fake_coordinator(Fc {
        seen: Arc::clone(&coord_seen),
        name: "coordinator",
        plan: p,
        first_poll_dies: false,
        overloaded_once: false,
    })
    .await;
    let mut cfg = AgentConfig::new(
        NodeName::new("n1").expect("n"),
        AgentKind::Pod,
        format!("http://{coord}"),
    );
    cfg.pod_ip = Some(Ipv4Addr::new(10, 42, 1, 9));
    let agent = tokio::spawn(async move { agent_loop(&cfg, &Fake::default(), vec![], None).await });
    wait_for_report(&relay_seen, Duration::from_secs(8)).await;
    // Let it poll the relay at least once more.
    tokio::time::sleep(Duration::from_millis(700)).await;
    agent.abort();
    assert_eq!(coord_seen.lock().expect("lock").polls.len(), 1);
    assert!(
        coord_seen.lock().expect("lock").reports.is_empty(),
        "report went direct"
    );
    let r = relay_seen.lock().expect("lock");
    assert_eq!(r.reports[0].1.round, 3);
    assert!(!r.polls.is_empty(), "later polls go to the relay");
}

/// An overloaded coordinator's `Retry-After` is obeyed: the refused poll is repeated after
/// the second it asked for (not at once, not after the exponential backoff's pace), and a
/// refused report is delivered again after it, within the round.
#[tokio::test]
async fn an_agent_told_to_back_off_waits_as_told_and_still_reports() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let addr = fake_coordinator(Fc {
        seen: Arc::clone(&seen),
        name: "coordinator",
        plan: plan(AgentKind::Host, 4),
        first_poll_dies: false,
        overloaded_once: true,
    })
    .await;
    let cfg = AgentConfig::new(
        NodeName::new("n1").expect("n"),
        AgentKind::Host,
        format!("http://{addr}"),
    );
    let agent = tokio::spawn(async move { agent_loop(&cfg, &Fake::default(), vec![], None).await });
    wait_for_report(&seen, Duration::from_secs(10)).await;
    agent.abort();
    let s = seen.lock().expect("lock");
    let gap = s.polls[1].0 - s.polls[0].0;
    assert!(
        gap >= Duration::from_secs(1) && gap < Duration::from_millis(1400),
        "the refused poll was repeated {gap:?} later; Retry-After said 1 s"
    );
    assert_eq!(s.attempts.len(), 2, "one refused delivery, one accepted");
    let again = s.attempts[1] - s.attempts[0];
    assert!(
        again >= Duration::from_secs(1) && again < Duration::from_millis(1400),
        "the refused report was sent again {again:?} later"
    );
    assert_eq!(s.reports[0].1.round, 4);
}

/// A coordinator that stretched the heartbeat says so in `meshprobe-heartbeat-ms`, and the
/// client's dead-connection limit follows it: heartbeats 700 ms apart do not look dead to
/// a client that would give up after 400 ms of quiet, when the coordinator named 800 ms.
/// Without the header, the same stream is a dead connection.
#[tokio::test]
async fn a_stretched_heartbeat_named_by_the_coordinator_is_not_a_dead_connection() {
    async fn slow_stream(named: bool) -> axum::response::Response {
        use axum::response::IntoResponse;
        let s = futures_util::stream::unfold(0u8, |i| async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let chunk = if i < 2 {
                Bytes::from_static(b"\n")
            } else if i == 2 {
                Bytes::from(serde_json::to_vec(&PollResult { assignment: None }).expect("json"))
            } else {
                return None;
            };
            Some((Ok::<_, std::io::Error>(chunk), i + 1))
        });
        let mut r = Body::from_stream(s).into_response();
        if named {
            r.headers_mut().insert(
                meshprobe_core::api::HEARTBEAT_HEADER,
                axum::http::HeaderValue::from_static("800"),
            );
        }
        r
    }
    let app = Router::new()
        .route(
            "/v1/agents/n1/host/next",
            get(|| async { slow_stream(true).await }),
        )
        .route(
            "/v1/agents/n2/host/next",
            get(|| async { slow_stream(false).await }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    let client =
        meshprobe_probe::client::CoordinatorClient::new(&format!("http://{addr}")).expect("client");
    let poll = meshprobe_core::api::AgentPoll {
        wait: Some(5),
        heartbeat_ms: Some(100),
        heartbeat_max_ms: Some(2000),
        ..Default::default()
    };
    let quiet = Duration::from_millis(400);
    let named = client
        .poll(
            &NodeName::new("n1").expect("n"),
            AgentKind::Host,
            &poll,
            quiet,
        )
        .await;
    assert!(matches!(named, Ok(None)), "{named:?}");
    let unnamed = client
        .poll(
            &NodeName::new("n2").expect("n"),
            AgentKind::Host,
            &poll,
            quiet,
        )
        .await;
    assert!(
        matches!(
            unnamed,
            Err(meshprobe_probe::client::ClientError::Unreachable {
                source: meshprobe_probe::transport::TransportError::Idle(_),
                ..
            })
        ),
        "{unnamed:?}"
    );
}
