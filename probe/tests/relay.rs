//! Issue 22, row 1: the host agent's relay had no bounds at all (an idle connection open
//! at 40 s; 200 partial connections exhausted the agent's descriptors; 200 unfinished
//! 380 KB heads took it from 17.8 to 88.3 MB). Each attack, against the relay as the host
//! agent runs it, with the relay's own bounds and shortened deadlines.

use std::net::SocketAddr;
use std::time::Duration;

use meshprobe_core::PodCidr;
use meshprobe_probe::client::ClientOptions;
use meshprobe_probe::relay::{Admission, serve_with};
use tokio::io::AsyncWriteExt;

#[path = "../../serve/tests/common/mod.rs"]
mod common;
use common::{connect_from, read_to_close};

/// The relay with its own caps and 1 s deadlines, admitting `admitted`, in front of a
/// coordinator that is not there (an admitted request is answered by the relay itself).
async fn relay(admitted: Option<&str>) -> (SocketAddr, Admission) {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let admission = Admission::default();
    admission.set(admitted.map(|r| PodCidr::parse(r).expect("a range")));
    let limits = meshprobe_serve::Limits {
        first_bytes: Duration::from_secs(1),
        head: Duration::from_secs(1),
        ..meshprobe_serve::Limits::relay()
    };
    tokio::spawn(serve_with(
        tcp,
        "http://127.0.0.1:9".to_owned(),
        ClientOptions::default(),
        admission.clone(),
        limits,
    ));
    (addr, admission)
}

const POLL: &[u8] =
    b"GET /v1/agents/n1/pod/next?after=0 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

/// Only this node's pods: another address is closed unanswered, and before the first plan
/// names the range nobody is admitted.
#[tokio::test]
async fn the_relay_admits_its_own_nodes_pods_only() {
    let (addr, admission) = relay(Some("127.0.0.0/30")).await;
    let mut own = connect_from([127, 0, 0, 2], addr).await;
    own.write_all(POLL).await.expect("write");
    let (answer, _) = read_to_close(&mut own, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 "),
        "an admitted client is answered (here: the coordinator is away): {answer:?}"
    );
    let mut stranger = connect_from([127, 0, 0, 9], addr).await;
    let _ = stranger.write_all(POLL).await;
    let (answer, closed) = read_to_close(&mut stranger, Duration::from_secs(2)).await;
    assert_eq!(answer, "", "another node's pod gets nothing");
    assert!(closed);
    admission.set(None);
    let mut before_plan = connect_from([127, 0, 0, 2], addr).await;
    let _ = before_plan.write_all(POLL).await;
    let (answer, closed) = read_to_close(&mut before_plan, Duration::from_secs(2)).await;
    assert_eq!(answer, "");
    assert!(closed);
}

/// An idle connection (the audit: open at 40 s) is closed at the first-byte deadline.
#[tokio::test]
async fn an_idle_connection_is_closed() {
    let (addr, _) = relay(Some("127.0.0.0/30")).await;
    let mut idle = connect_from([127, 0, 0, 1], addr).await;
    let t = std::time::Instant::now();
    let (_, closed) = read_to_close(&mut idle, Duration::from_secs(4)).await;
    assert!(closed, "closed by the relay");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// 200 partial connections (the audit: the agent's own polls then failed with "Too many
/// open files") hold at most the relay's few slots: the rest are refused at once, and the
/// descriptors the process holds stay bounded.
#[tokio::test]
async fn partial_connections_cannot_exhaust_the_agents_descriptors() {
    let (addr, _) = relay(Some("127.0.0.0/30")).await;
    let fds = || {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = fds();
    let mut partial = Vec::new();
    for _ in 0..200 {
        let mut s = connect_from([127, 0, 0, 1], addr).await;
        let _ = s
            .write_all(b"GET /v1/agents/n1/pod/next HTTP/1.1\r\n")
            .await;
        partial.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // This process holds the 200 client ends; the relay's side holds at most its cap.
    let held = fds().saturating_sub(before + 200);
    let cap = meshprobe_serve::Limits::relay().per_source;
    assert!(
        held <= cap + 4,
        "the relay holds {held} connections for one address, cap {cap}"
    );
    let mut refused = 0;
    for s in &mut partial {
        let (answer, _) = read_to_close(s, Duration::from_millis(20)).await;
        if answer.starts_with("HTTP/1.1 503") {
            refused += 1;
        }
    }
    assert!(refused >= 200 - cap, "{refused} of 200 refused");
}

/// An unfinished 380 KB head (the audit: 200 of them added 70 MB) is refused with 431 once
/// the relay's 16 KiB head buffer is full.
#[tokio::test]
async fn a_huge_head_is_refused_at_the_relays_buffer() {
    let (addr, _) = relay(Some("127.0.0.0/30")).await;
    let mut s = connect_from([127, 0, 0, 1], addr).await;
    s.write_all(b"GET /v1/agents/n1/pod/next HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let line = format!("x-pad: {}\r\n", "a".repeat(1000));
    for _ in 0..380 {
        if s.write_all(line.as_bytes()).await.is_err() {
            break;
        }
    }
    let (answer, closed) = read_to_close(&mut s, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(closed);
}

/// The relay learns its node's pod range from the coordinator's topology at start, with no
/// round needed (CI: the pod agents of a discovering coordinator, whose first round was
/// planned before the topology loaded, waited 30 s for a plan and the lab gave up), and
/// retries while the coordinator is not answering yet.
#[tokio::test]
async fn the_relay_learns_its_pod_range_without_a_round() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/v1/nodes/{node}",
        axum::routing::get(
            move |axum::extract::Path(node): axum::extract::Path<String>| {
                let seen = std::sync::Arc::clone(&seen);
                async move {
                    if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new());
                    }
                    let body = serde_json::json!({
                        "node": node, "internalIP": "127.0.0.1",
                        "podCIDR": "127.0.0.0/30", "gateway": "127.0.0.1",
                    });
                    (axum::http::StatusCode::OK, body.to_string())
                }
            },
        ),
    );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", tcp.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(tcp, app).await });
    let client = meshprobe_probe::client::CoordinatorClient::new(&url).expect("client");
    let admission = Admission::default();
    assert!(!admission.admits([127, 0, 0, 2].into()));
    tokio::time::timeout(
        Duration::from_secs(10),
        meshprobe_probe::relay::learn_pod_range(
            client.clone(),
            "n1".parse().expect("name"),
            admission.clone(),
        ),
    )
    .await
    .expect("the range is learnt after a retry");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one refusal, one answer");
    assert!(admission.admits([127, 0, 0, 2].into()));
    assert!(!admission.admits([127, 0, 0, 9].into()));
    // A plan's range (newer) is not overwritten by the topology read.
    admission.set(Some(PodCidr::parse("127.0.1.0/30").expect("range")));
    meshprobe_probe::relay::learn_pod_range(client, "n1".parse().expect("name"), admission.clone())
        .await;
    assert!(admission.admits([127, 0, 1, 2].into()));
    assert!(!admission.admits([127, 0, 0, 2].into()));
}
