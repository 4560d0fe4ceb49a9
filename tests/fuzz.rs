//! Fuzzing on stable Rust: every parser of outside input is a target, a plain function of
//! bytes that must never panic, run over the seed corpus in `fuzz/corpus/<target>/` (and
//! seeds generated from synthetic rounds) and then over mutations of it: bits flipped,
//! bytes set, inserted and deleted, ranges repeated, inputs spliced and cut.
//!
//! The targets: the inventory parser, the report and plan JSON, the DNS answer decoder,
//! the capture decoder, the iptables-save parser, the `ip -j` parsers, the host agent's
//! relay (raw bytes on its port, then a good request must still be answered) and the
//! offline store (bytes as a sequence of inserts and page reads, its bounds checked after
//! each). The functions have libFuzzer's shape (`fn(&[u8])`), so a cargo-fuzz target can
//! call them as they are.
//!
//! `cargo test --test fuzz` runs 20,000 mutations per target (CI, a few seconds). For longer runs:
//! `MESHPROBE_FUZZ_SECS=600 cargo test --release --test fuzz -- --nocapture` spends that
//! long on each target and prints how many inputs it ran. `MESHPROBE_TEST_SEED` replays.

use std::time::{Duration, Instant};

use meshprobe_core::evidence::{OverlayExpectation, OverlayPeer};
use meshprobe_core::plan::{AgentReport, Assignment, PlanSettings, make_plan};
use meshprobe_core::{AgentKind, CheckReport, NodeName, PodCidr, Topology};
use meshprobe_diagnosis::synth;

/// Mutations per target in a plain `cargo test`.
const ITERATIONS: u64 = 20_000;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn mutate(rng: &mut fastrand::Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.usize(..seeds.len())].clone();
    for _ in 0..rng.usize(1..=8) {
        let len = d.len();
        match rng.u8(..7) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                d[i] ^= 1 << rng.u8(..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                d[i] = [0, 0xff, b'{', b'[', b'"', b'\n', b':', b'-', b'\\'][rng.usize(..9)];
            }
            2 => {
                let i = rng.usize(..=len);
                let b = rng.u8(..);
                d.insert(i, b);
            }
            3 if len > 1 => {
                let a = rng.usize(..len);
                let b = (a + rng.usize(1..=16)).min(len);
                d.drain(a..b);
            }
            4 if len > 1 => {
                let a = rng.usize(..len);
                let b = (a + rng.usize(1..=32)).min(len);
                let piece = d[a..b].to_vec();
                for _ in 0..rng.usize(1..=64) {
                    d.splice(a..a, piece.iter().copied());
                }
            }
            5 => {
                let other = &seeds[rng.usize(..seeds.len())];
                if !other.is_empty() {
                    let a = rng.usize(..other.len());
                    let at = rng.usize(..=len);
                    d.splice(at..at, other[a..].iter().copied());
                }
            }
            _ if len > 0 => d.truncate(rng.usize(..len)),
            _ => {}
        }
    }
    d
}

/// Runs `target` over its seeds, then over mutations of them.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: impl Fn(&[u8])) {
    assert!(!seeds.is_empty(), "{name}: no seed corpus");
    for s in &seeds {
        target(s);
    }
    let seed = std::env::var("MESHPROBE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d65_7368);
    let mut rng = fastrand::Rng::with_seed(seed);
    let budget = std::env::var("MESHPROBE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let started = Instant::now();
    let mut n = 0u64;
    loop {
        match budget {
            Some(b) if started.elapsed() >= b => break,
            None if n >= ITERATIONS => break,
            _ => {}
        }
        target(&mutate(&mut rng, &seeds));
        n += 1;
    }
    eprintln!(
        "fuzz {name}: {n} inputs in {:.1} s, seed {seed}",
        started.elapsed().as_secs_f64()
    );
}

fn text(d: &[u8]) -> String {
    String::from_utf8_lossy(d).into_owned()
}

#[test]
fn inventory_parser() {
    fuzz("inventory", corpus("inventory"), |d| {
        let _ = Topology::from_inventory(&text(d));
    });
}

#[test]
fn report_and_plan_json() {
    let t = synth::topology(3);
    let r = synth::report(
        &t,
        &[synth::Fault::ForwardOff(1)],
        1,
        &PlanSettings::default(),
    );
    let plan = make_plan(
        &t,
        &Default::default(),
        &t.nodes[0].name,
        AgentKind::Host,
        1,
        &PlanSettings::default(),
    );
    let seeds = vec![
        serde_json::to_vec(&r).expect("report"),
        serde_json::to_vec(&Assignment { epoch: 1, plan }).expect("plan"),
    ];
    fuzz("json", seeds, |d| {
        let _ = serde_json::from_slice::<CheckReport>(d);
        let _ = serde_json::from_slice::<AgentReport>(d);
        let _ = serde_json::from_slice::<Assignment>(d);
        if let Ok(r) = serde_json::from_slice::<CheckReport>(d) {
            // What `check` does with a coordinator's answer.
            let _ = meshprobe_core::render::render(&r, Default::default());
        }
    });
}

#[test]
fn dns_answer_decoder() {
    fuzz("dns", corpus("dns"), |d| {
        let id = d.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let _ = meshprobe_probe::dns::read_answer(d, id);
    });
}

#[test]
fn capture_decoder() {
    fuzz("capture", corpus("capture"), |d| {
        let _ = meshprobe_probe::capture::decode(d, 8472);
    });
}

#[test]
fn iptables_save_parser() {
    fuzz("iptables", corpus("iptables"), |d| {
        let _ = meshprobe_probe::evidence::parse_iptables_save(&text(d), &Default::default());
    });
}

#[test]
fn ip_json_parsers() {
    let n = |s: &str| NodeName::new(s).expect("name");
    let exp = OverlayExpectation {
        node_ip: "192.168.77.11".parse().expect("ip"),
        interface: "flannel.1".into(),
        port: 8472,
        mtu: 1450,
        overhead: 50,
        pod_cidrs: vec![PodCidr::parse("10.42.0.0/16").expect("cidr")],
        peers: vec![OverlayPeer {
            node: n("n2"),
            ip: "192.168.77.12".parse().expect("ip"),
            pod_cidr: PodCidr::parse("10.42.2.0/24").expect("cidr"),
            vtep_ip: "10.42.2.0".parse().expect("ip"),
            vtep_mac: Some("0e:6d:70:00:00:02".into()),
        }],
        relay: None,
    };
    fuzz("ip-json", corpus("ip-json"), |d| {
        let s = text(d);
        let _ = meshprobe_probe::evidence::check_overlay(&exp, &s, &s, &s, Some(&s));
        let _ = meshprobe_probe::evidence::overlay_config(&exp, &s, &s, &s, &s);
        let _ = meshprobe_probe::evidence::cidr_overlaps(&exp, &s, &s);
    });
}

/// The relay as the host agent serves it, in front of a coordinator that answers every
/// poll "no round" and every report 202: raw bytes from a client on its port (a request
/// line, headers, a body, chunks, garbage, cut anywhere) must never take it down; after
/// each batch a good poll is still answered.
#[test]
fn relay_request_handling() {
    use std::io::{Read, Write};
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (relay, upstream) = rt.block_on(async {
        let up = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let upstream = up.local_addr().expect("addr");
        let app = axum::Router::new()
            .route(
                meshprobe_core::api::NEXT_PATTERN,
                axum::routing::get(|| async { axum::http::StatusCode::NO_CONTENT }),
            )
            .route(
                meshprobe_core::api::REPORTS,
                axum::routing::post(|| async { axum::http::StatusCode::ACCEPTED }),
            )
            .route(
                meshprobe_core::api::REPORTS_OFFLINE,
                axum::routing::post(|| async { axum::http::StatusCode::ACCEPTED }),
            );
        tokio::spawn(async move { axum::serve(up, app).await });
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let relay = tcp.local_addr().expect("addr");
        let admission = meshprobe_probe::relay::Admission::default();
        admission.set(Some(PodCidr::parse("127.0.0.0/30").expect("range")));
        let limits = meshprobe_serve::Limits {
            per_source: 0,
            first_bytes: Duration::from_secs(2),
            head: Duration::from_secs(2),
            ..meshprobe_serve::Limits::relay()
        };
        tokio::spawn(meshprobe_probe::relay::serve_with(
            tcp,
            format!("http://{upstream}"),
            meshprobe_probe::client::ClientOptions::default(),
            admission,
            limits,
        ));
        (relay, upstream)
    });
    let good = |relay: std::net::SocketAddr| {
        let mut s = std::net::TcpStream::connect(relay).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /v1/agents/n1/pod/next?after=0&epoch=0&wait=1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .expect("write");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(
        good(relay).starts_with("HTTP/1.1 204"),
        "upstream {upstream}"
    );
    let n = std::cell::Cell::new(0u64);
    let check_every = 200;
    // Fewer inputs than the in-process targets: each is a connection.
    let seeds = corpus("relay");
    for s in &seeds {
        let mut c = std::net::TcpStream::connect(relay).expect("connect");
        let _ = c.write_all(s);
    }
    let mut rng = fastrand::Rng::with_seed(0x7265_6c61);
    for _ in 0..2_000 {
        let input = mutate(&mut rng, &seeds);
        let mut c = std::net::TcpStream::connect(relay).expect("connect");
        let _ = c.write_all(&input);
        let _ = c.shutdown(std::net::Shutdown::Write);
        n.set(n.get() + 1);
        if n.get().is_multiple_of(check_every) {
            let answer = good(relay);
            assert!(
                answer.starts_with("HTTP/1.1 204"),
                "after {} inputs: {answer:?}",
                n.get()
            );
        }
    }
    eprintln!("fuzz relay: {} connections", n.get());
    drop(rt);
}

/// The offline store: each input is a sequence of operations (a report from one of 16
/// agents, of some size, round and time; or a page read), and after each the store keeps
/// its bounds and a walk over its pages sees every report once.
#[test]
fn offline_store() {
    use meshprobe_coordinator::offline::{self, OfflineStore};
    let seeds = vec![
        (0u8..=255).collect::<Vec<u8>>(),
        vec![7; 64],
        b"\x01\x02\x03\x04\xff\xfe\x80\x00".repeat(16),
    ];
    let report = |agent: u8, round: u64, at: u64| AgentReport {
        round,
        node: NodeName::new(format!("n{}", agent % 16)).expect("name"),
        kind: if agent & 0x10 == 0 {
            AgentKind::Host
        } else {
            AgentKind::Pod
        },
        results: vec![],
        warnings: vec![],
        evidence: None,
        capture: None,
        packets: vec![],
        offline_at_ms: Some(at),
    };
    fuzz("offline-store", seeds, |d| {
        let mut s = OfflineStore::default();
        for op in d.chunks(4).take(24) {
            let &[a, b, c, e] = op else { break };
            if a & 0xe0 == 0xe0 {
                let (page, next) = s.page(u64::from(b), usize::from(c));
                assert!(page.len() <= offline::PAGE_MAX);
                assert!(next.is_none() || !page.is_empty());
                continue;
            }
            let r = report(a, u64::from(b % 8), u64::from(c % 4));
            let mut json = serde_json::to_vec(&r).expect("json");
            // Mostly small; one in 32 up to 1.6 MB, so that the byte bounds are met too.
            let pad = if e >= 0xf8 {
                usize::from(e - 0xf7) * 200_000
            } else {
                usize::from(e) * 40
            };
            json.resize(json.len() + pad, b' ');
            let _ = s.insert(&r, json);
            assert!(s.len() <= offline::KEPT);
            assert!(s.bytes() <= offline::BYTES);
            for agent in 0..32u8 {
                let r = report(agent, 0, 0);
                assert!(s.count_of(&r.node, r.kind) <= offline::PER_AGENT);
            }
        }
        let mut seen = 0;
        let mut cursor = 0;
        loop {
            let (page, next) = s.page(cursor, offline::PAGE_MAX);
            seen += page.len();
            match next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        assert_eq!(seen, s.len());
    });
}
