//! The coordinator's limits on what agents may ask of it at once, and how it says no: a
//! 503 with `Retry-After`, a counter, and a round that names who it turned away.

use std::sync::Arc;
use std::time::Duration;

use meshprobe_coordinator::rounds::AgentLimits;
use meshprobe_coordinator::{Coordinator, Settings, StaticTopology, router};
use meshprobe_core::Topology;
use meshprobe_core::plan::{AgentReport, Assignment};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INVENTORY: &str = "
cluster: {name: t, dnsServiceIP: 10.43.0.10}
nodes:
  - {name: n1, internalIP: 192.168.77.11, podCIDR: 10.42.1.0/24}
  - {name: n2, internalIP: 192.168.77.12, podCIDR: 10.42.2.0/24}
  - {name: n3, internalIP: 192.168.77.13, podCIDR: 10.42.3.0/24}
";

async fn start(limits: AgentLimits) -> (String, Arc<Coordinator>) {
    let topo = Topology::from_inventory(INVENTORY).expect("valid inventory");
    let settings = Settings {
        silent_after: Duration::from_millis(500),
        auth: meshprobe_coordinator::auth::Auth::insecure(),
        limits,
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

fn report_of(a: &Assignment) -> AgentReport {
    AgentReport {
        round: a.plan.round,
        node: a.plan.node.clone(),
        kind: a.plan.kind,
        results: vec![],
        warnings: vec![],
        evidence: None,
        capture: None,
        packets: vec![],
        offline_at_ms: None,
    }
}

fn poll_url(base: &str, node: &str) -> String {
    format!("{base}/v1/agents/{node}/host/next?after=0&epoch=0&wait=10")
}

fn backoffs(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("meshprobe_backoffs_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Two polls fill a limit of two; the third agent is told to come back in 1 to 5 s, is
/// counted, and the round it misses says so by name. The two inside get their plans.
#[tokio::test]
async fn polls_past_the_limit_are_told_to_back_off_and_the_round_names_them() {
    let (base, c) = start(AgentLimits {
        max_polls: 2,
        ..AgentLimits::default()
    })
    .await;
    let http = reqwest::Client::new();
    let held: Vec<_> = ["n1", "n2"]
        .into_iter()
        .map(|n| {
            let (http, url, base) = (http.clone(), poll_url(&base, n), base.clone());
            tokio::spawn(async move {
                let r = http.get(url).send().await.expect("poll");
                assert_eq!(r.status(), 200);
                let a: Assignment = r.json().await.expect("plan");
                let r = http
                    .post(format!("{base}/v1/reports"))
                    .json(&report_of(&a))
                    .send()
                    .await
                    .expect("report");
                assert_eq!(r.status(), 202);
            })
        })
        .collect();
    // Both polls are open when the coordinator has heard of both agents.
    for _ in 0..100 {
        if c.agents().agents.iter().filter(|a| a.polling).count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = http.get(poll_url(&base, "n3")).send().await.expect("poll");
    assert_eq!(refused.status(), 503);
    let retry: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    let body = refused.text().await.expect("body");
    assert!(body.contains("limit of 2 open polls"), "{body}");

    let id = c.trigger();
    for h in held {
        h.await.expect("agent");
    }
    let report = match c.wait_for(id, Duration::from_secs(10)).await {
        meshprobe_coordinator::rounds::RoundStatus::Done(r) => r,
        other => panic!("round {id}: {other:?}"),
    };
    let warning = report
        .warnings
        .iter()
        .find(|w| w.starts_with("overload:"))
        .unwrap_or_else(|| panic!("no overload warning in {:?}", report.warnings));
    assert!(
        warning.contains("1 agents") && warning.contains("n3/host"),
        "{warning}"
    );
    assert_eq!(backoffs(&c.metrics_text(), "polls"), 1);
    // A slot is given back when its poll ends: n3 gets in now.
    let r = http
        .get(format!("{}&wait=1", poll_url(&base, "n3")))
        .send()
        .await
        .expect("poll");
    assert_ne!(r.status(), 503);
}

/// A report larger than the limit gets 413 naming it, and the coordinator goes on.
#[tokio::test]
async fn a_report_over_the_size_limit_gets_413() {
    let (base, _c) = start(AgentLimits {
        max_report_bytes: 1024,
        ..AgentLimits::default()
    })
    .await;
    let http = reqwest::Client::new();
    let mut big = serde_json::to_value(report_of(&Assignment {
        epoch: 1,
        plan: meshprobe_core::plan::make_plan(
            &Topology::from_inventory(INVENTORY).expect("inventory"),
            &Default::default(),
            &"n1".parse().expect("name"),
            meshprobe_core::AgentKind::Host,
            1,
            &Default::default(),
        ),
    }))
    .expect("json");
    big["warnings"] = serde_json::json!(["x".repeat(2048)]);
    let r = http
        .post(format!("{base}/v1/reports"))
        .json(&big)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);
    assert!(r.text().await.expect("body").contains("at most 1024 bytes"));
    big["warnings"] = serde_json::json!([]);
    let r = http
        .post(format!("{base}/v1/reports"))
        .json(&big)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 409, "small enough, but no round is running");
}

/// With room to read one report at a time, a report that arrives while another is being
/// read waits its turn for `report_wait`, then is told to come back in a second; once the
/// first is done, reports get in again.
#[tokio::test]
async fn reports_past_the_limit_wait_their_turn_then_are_told_to_come_back() {
    let (base, c) = start(AgentLimits {
        max_uploads: 1,
        report_wait: Duration::from_millis(300),
        ..AgentLimits::default()
    })
    .await;
    let addr = base.trim_start_matches("http://").to_owned();
    // A slow sender: headers and half its body, then nothing. It holds the one upload turn.
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(
        format!(
            "POST /v1/reports HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{{\"round\": 1,"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let r = http
        .post(format!("{base}/v1/reports"))
        .body("{}")
        .send()
        .await
        .expect("post");
    let waited = started.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(
        waited >= Duration::from_millis(300),
        "told to come back after {waited:?}, before its turn could come"
    );
    assert_eq!(backoffs(&c.metrics_text(), "reports"), 1);
    // The slow sender finishes (with a body that is no report): its turn is given back.
    slow.write_all(b"        }").await.expect("write");
    let mut answer = vec![0; 512];
    let n = slow.read(&mut answer).await.expect("read");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 422"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    let r = http
        .post(format!("{base}/v1/reports"))
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 422, "a turn is free again");
}

/// The heartbeat is stretched with the polls open, within what each agent allows: with a
/// budget of one heartbeat a second, the first poll (alone) gets 1 s, the second 2 s, and
/// one that allows no stretching keeps its own period.
#[tokio::test]
async fn heartbeats_are_stretched_with_the_polls_open_within_what_agents_allow() {
    let (base, _c) = start(AgentLimits {
        heartbeats_per_s: 1,
        ..AgentLimits::default()
    })
    .await;
    let http = reqwest::Client::new();
    let poll = |node: &str, extra: &str| {
        format!("{base}/v1/agents/{node}/host/next?after=0&epoch=0&wait=10&heartbeatMs=100{extra}")
    };
    let header = |r: &reqwest::Response| -> Option<u64> {
        r.headers()
            .get(meshprobe_core::api::HEARTBEAT_HEADER)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    };
    let first = http
        .get(poll("n1", "&heartbeatMaxMs=3000"))
        .send()
        .await
        .expect("poll");
    assert_eq!(header(&first), Some(1000));
    let second = http
        .get(poll("n2", "&heartbeatMaxMs=1500"))
        .send()
        .await
        .expect("poll");
    assert_eq!(
        header(&second),
        Some(1500),
        "two open: 2 s, capped at what it allows"
    );
    let fixed = http.get(poll("n3", "")).send().await.expect("poll");
    assert_eq!(
        header(&fixed),
        Some(100),
        "no heartbeatMaxMs: its own period"
    );
}
