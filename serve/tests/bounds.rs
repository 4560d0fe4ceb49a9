//! Issue 22, rows 1 and 2: the attacks of the hostile-client audit, each against the one
//! bounded server, each asserting its bound (time, bytes, status) and that honest clients
//! are still served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use meshprobe_serve::{BoundedListener, Limits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

mod common;
use common::{connect_from, read_to_close};

fn app() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/echo",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route("/big", get(|| async { vec![b'a'; 64 << 20] }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        )
}

/// Short deadlines, so that each attack's bound shows within seconds.
fn limits() -> Limits {
    Limits {
        max_connections: 64,
        per_source: 0,
        first_bytes: Duration::from_secs(1),
        head: Duration::from_secs(1),
        head_bytes: 16 << 10,
        idle: Duration::from_secs(3),
        body_min_rate: 2_000,
        body_grace: Duration::from_secs(1),
        body_bytes_per_source: 0,
        body_bytes_total: 0,
        shutdown_grace: Duration::from_secs(1),
    }
}

async fn start(limits: Limits) -> SocketAddr {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    tokio::spawn(serve(
        BoundedListener::new(tcp, limits),
        app(),
        std::future::pending(),
    ));
    addr
}

async fn healthz_from(source: [u8; 4], addr: SocketAddr) -> String {
    healthz_within(source, addr, Duration::from_secs(5)).await
}

async fn healthz_within(source: [u8; 4], addr: SocketAddr, within: Duration) -> String {
    let mut s = connect_from(source, addr).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    read_to_close(&mut s, within).await.0
}

/// Row 2 (and issue 11): silent connections hold no slot for long. With a cap of 8 and
/// 1 s to the first byte, 40 clients that connect and say nothing are closed, and a real
/// request gets through.
#[tokio::test]
async fn silent_connections_are_closed_at_the_first_byte_deadline() {
    let addr = start(Limits {
        max_connections: 8,
        ..limits()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Queued behind 40 silent ones, 8 at a time, each closed after 1 s.
    let answer = healthz_within([127, 0, 0, 1], addr, Duration::from_secs(15)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let (_, closed) = read_to_close(&mut idle[0], Duration::from_secs(3)).await;
    assert!(closed, "a silent client is closed by the server");
}

/// Row 2: a request line followed by one byte at a time (the audit: still open at 130 s)
/// is closed at the head deadline; the same inside one connection after a first request.
#[tokio::test]
async fn a_head_dripped_a_byte_at_a_time_is_closed_at_the_head_deadline() {
    let addr = start(limits()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let t = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("write");
    let mut closed_after = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if s.write_all(b"x").await.is_err() {
            closed_after = Some(t.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            closed_after = Some(t.elapsed());
            break;
        }
    }
    let after = closed_after.expect("the server closes a dripped head");
    assert!(
        after < Duration::from_secs(3),
        "closed after {after:?}, with a 1 s head deadline"
    );
}

/// Row 1 and 2: a head larger than the buffer (the audit: 380 KB each, 200 of them took
/// the agent from 17.8 to 88.3 MB) is answered 431 once 16 KiB are in, and closed.
#[tokio::test]
async fn a_head_larger_than_the_buffer_is_refused_with_431() {
    let addr = start(limits()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let line = format!("x-pad: {}\r\n", "a".repeat(1000));
    let mut sent = 0usize;
    for _ in 0..380 {
        if s.write_all(line.as_bytes()).await.is_err() {
            break;
        }
        sent += line.len();
    }
    let (answer, closed) = read_to_close(&mut s, Duration::from_secs(3)).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "after {sent} bytes: {answer:?}"
    );
    assert!(closed);
}

/// Row 2: a body dripped a byte at a time (the audit: a slow report body held the
/// coordinator) ends once it falls below the rate floor after the grace.
#[tokio::test]
async fn a_body_below_the_rate_floor_is_cut_off() {
    let addr = start(limits()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let t = Instant::now();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
        .await
        .expect("write");
    let drip = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(&[b'a'; 10]).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), drip).await;
    let (answer, closed) = read_to_close(&mut s, Duration::from_secs(2)).await;
    assert!(
        answer.starts_with("HTTP/1.1 4"),
        "a refused body, not a served one: {answer:?}"
    );
    assert!(closed, "the connection ends with the body");
    assert!(t.elapsed() < Duration::from_secs(7), "{:?}", t.elapsed());
    // An honest body at full speed is served.
    let ok = reqwest::Client::new()
        .post(format!("http://{addr}/echo"))
        .body(vec![b'a'; 1 << 20])
        .send()
        .await
        .expect("post");
    assert_eq!(ok.text().await.expect("body"), (1 << 20).to_string());
}

/// Row 2: at the cap of one source address, a new connection from it is answered 503 at
/// once, and another address (the kubelet's `/healthz`) is still served (the audit: at the
/// connection cap, `/healthz` stopped answering for the whole hold).
#[tokio::test]
async fn one_address_cannot_take_every_slot() {
    let addr = start(Limits {
        per_source: 4,
        first_bytes: Duration::from_secs(30),
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from([127, 0, 0, 1], addr).await);
    }
    let mut fifth = connect_from([127, 0, 0, 1], addr).await;
    let (answer, closed) = read_to_close(&mut fifth, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("retry-after"), "{answer:?}");
    assert!(closed);
    let other = healthz_from([127, 0, 0, 2], addr).await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other:?}");
    // A held slot given back is free again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = healthz_from([127, 0, 0, 1], addr).await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again:?}");
}

/// Row 1 and 4: one address's bodies in flight are capped: a second slow upload from it is
/// refused while the first holds its bytes; another address uploads freely.
#[tokio::test]
async fn one_address_cannot_hold_more_than_its_body_budget() {
    let addr = start(Limits {
        body_bytes_per_source: 1 << 20,
        body_min_rate: 0,
        ..limits()
    })
    .await;
    let first = post_partly([127, 0, 0, 1], addr, 2_000_000, 900_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = post_partly([127, 0, 0, 1], addr, 500_000, 500_000).await;
    let (answer, _) = read_to_close(&mut second, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer:?}");
    let mut other = post_partly([127, 0, 0, 2], addr, 500_000, 500_000).await;
    let (answer, _) = read_to_close(&mut other, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("500000"), "{answer:?}");
    drop(first);
}

/// Many addresses' uploads together are capped too: with 1 MiB in all, a second address's
/// upload is refused while a first holds 900 KB, and served once the first is gone.
#[tokio::test]
async fn all_addresses_together_cannot_pass_the_total_body_budget() {
    let addr = start(Limits {
        body_bytes_total: 1 << 20,
        body_min_rate: 0,
        ..limits()
    })
    .await;
    let first = post_partly([127, 0, 0, 1], addr, 2_000_000, 900_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = post_partly([127, 0, 0, 2], addr, 500_000, 500_000).await;
    let (answer, _) = read_to_close(&mut second, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer:?}");
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = post_partly([127, 0, 0, 3], addr, 500_000, 500_000).await;
    let (answer, _) = read_to_close(&mut third, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

/// A POST /echo from `source` announcing `length` bytes and sending `send` of them.
async fn post_partly(source: [u8; 4], addr: SocketAddr, length: usize, send: usize) -> TcpStream {
    let mut s = connect_from(source, addr).await;
    let close = if send == length {
        "connection: close\r\n"
    } else {
        ""
    };
    s.write_all(
        format!("POST /echo HTTP/1.1\r\nhost: x\r\n{close}content-length: {length}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let _ = s.write_all(&vec![b'a'; send]).await;
    s
}

/// Row 2: with a slow request open, shutdown ends at its grace (the audit: still running
/// 100 s after SIGTERM), and the port is closed from the moment it begins.
#[tokio::test]
async fn shutdown_ends_at_its_grace_whatever_is_open() {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(BoundedListener::new(tcp, limits()), app(), async {
        let _ = stopped.await;
    }));
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut drip = TcpStream::connect(addr).await.expect("connect");
    drip.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\na")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    stop.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns at the grace")
        .expect("no panic");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the port is closed"
    );
}

/// A client that asks for an answer and stops reading it holds its connection for the
/// quiet limit only: the server's writes stall, and it closes.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_when_quiet() {
    let addr = start(limits()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    // Quiet limit 3 s: by then the server has given up on the stalled answer.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got += n,
            Err(_) => break false,
        }
    };
    assert!(closed, "closed by the server");
    assert!(got < 64 << 20, "the answer was cut off, {got} bytes read");
}

/// A TLS listener on loopback with a fresh CA, and a client configuration that trusts it.
async fn start_tls() -> (SocketAddr, Arc<rustls::ClientConfig>) {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("key"))
            .expect("ca");
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("server config");
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    tokio::spawn(serve(
        BoundedListener::new(tcp, limits()).with_tls(Arc::new(server)),
        app(),
        std::future::pending(),
    ));
    (addr, Arc::new(client))
}

/// Issue 23, row 12: `http://` sent to the TLS port is answered in plain HTTP with the
/// hint to use https (not a TLS alert that reads "invalid HTTP version"), and TLS clients
/// on the same port are served as before.
#[tokio::test]
async fn plain_http_on_the_tls_port_is_told_to_use_https() {
    let (addr, client) = start_tls().await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let (got, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "closed after the answer: {got:?}");
    assert!(got.starts_with("HTTP/1.1 400 "), "{got:?}");
    assert!(got.contains("use https://"), "{got:?}");
    let (head, body) = got.split_once("\r\n\r\n").expect("a head and a body");
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head:?} for a body of {} bytes",
        body.len()
    );

    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .expect("the TLS handshake still completes");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(answer.ends_with("ok"), "{answer:?}");
}
