//! The cluster's workloads inside the lab, run as `meshprobe lab serve ...` processes:
//! a CoreDNS stand-in (DNS on :53 answering the cluster names, Prometheus text on
//! `:9153/metrics`), the web pods, and a host-network ingress proxy.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::{TcpListener, UdpSocket};

/// Counters the CoreDNS stand-in exposes, named as CoreDNS names them.
#[derive(Default)]
struct DnsStats {
    requests: AtomicU64,
    noerror: AtomicU64,
    nxdomain: AtomicU64,
    refused: AtomicU64,
}

/// Answers A queries for `records` (names without the trailing dot), NXDOMAIN for other
/// names under `zone`, REFUSED for the rest (the sandbox has no upstream to forward to).
pub async fn coredns(
    name: String,
    listen: Ipv4Addr,
    zone: String,
    records: BTreeMap<String, Ipv4Addr>,
) -> std::io::Result<()> {
    let udp = UdpSocket::bind((listen, 53)).await?;
    let metrics = TcpListener::bind((listen, 9153)).await?;
    let stats = Arc::new(DnsStats::default());
    let records = Arc::new(records);
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/health", get(|| async { "OK" }))
        .with_state((Arc::clone(&stats), name.clone()));
    tokio::spawn(async move { axum::serve(metrics, app).await });
    tracing::info!(%name, %listen, "coredns stand-in serving");
    let mut buf = [0u8; 4096];
    loop {
        let (n, peer) = match udp.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "dns receive");
                continue;
            }
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let Ok(req) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let resp = answer(&req, &zone, &records);
        let counter = match resp.metadata.response_code {
            ResponseCode::NoError => &stats.noerror,
            ResponseCode::NXDomain => &stats.nxdomain,
            _ => &stats.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(bytes) = resp.to_vec() {
            let _ = udp.send_to(&bytes, peer).await;
        }
    }
}

/// The answer to one query (pure, for tests).
pub fn answer(req: &Message, zone: &str, records: &BTreeMap<String, Ipv4Addr>) -> Message {
    let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.authoritative = true;
    resp.add_queries(req.queries.clone());
    let Some(q) = req.queries.first() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp;
    };
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let zone = zone.trim_end_matches('.');
    match records.get(&name) {
        Some(ip) if q.query_type() == RecordType::A => {
            resp.add_answer(Record::from_rdata(q.name().clone(), 5, RData::A(A(*ip))));
        }
        Some(_) => {} // NOERROR, no data for other types
        None if name == zone || name.ends_with(&format!(".{zone}")) => {
            resp.metadata.response_code = ResponseCode::NXDomain;
        }
        None => resp.metadata.response_code = ResponseCode::Refused,
    }
    resp
}

async fn metrics_page(State((stats, name)): State<(Arc<DnsStats>, String)>) -> Response {
    let mut body = String::new();
    body += "# HELP coredns_build_info A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built.\n";
    body += "# TYPE coredns_build_info gauge\n";
    body += "coredns_build_info{goversion=\"go1.22\",revision=\"meshprobe-lab\",version=\"1.11.3\"} 1\n";
    body += "# HELP coredns_dns_requests_total Counter of DNS requests made per zone, protocol and family.\n";
    body += "# TYPE coredns_dns_requests_total counter\n";
    body += &format!(
        "coredns_dns_requests_total{{family=\"1\",proto=\"udp\",server=\"dns://:53\",type=\"A\",view=\"\",zone=\".\"}} {}\n",
        stats.requests.load(Ordering::Relaxed)
    );
    body += "# HELP coredns_dns_responses_total Counter of response status codes.\n";
    body += "# TYPE coredns_dns_responses_total counter\n";
    for (rcode, c) in [
        ("NOERROR", &stats.noerror),
        ("NXDOMAIN", &stats.nxdomain),
        ("REFUSED", &stats.refused),
    ] {
        body += &format!(
            "coredns_dns_responses_total{{plugin=\"kubernetes\",rcode=\"{rcode}\",server=\"dns://:53\",view=\"\",zone=\".\"}} {}\n",
            c.load(Ordering::Relaxed)
        );
    }
    // A histogram, as CoreDNS exposes one: it makes the page a few kilobytes, as the real
    // one is, so that a path that loses large segments breaks metrics as it would.
    body += "# HELP coredns_dns_request_duration_seconds Histogram of the time (in seconds) each request took per zone.\n";
    body += "# TYPE coredns_dns_request_duration_seconds histogram\n";
    let total = stats.requests.load(Ordering::Relaxed);
    for server in ["dns://:53", "dns://:1053"] {
        for le in [
            "0.00025", "0.0005", "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064",
            "0.128", "0.256", "0.512", "1.024", "2.048", "4.096", "8.192", "+Inf",
        ] {
            body += &format!(
                "coredns_dns_request_duration_seconds_bucket{{server=\"{server}\",type=\"A\",view=\"\",zone=\".\",le=\"{le}\"}} {total}\n"
            );
        }
    }
    body += &format!(
        "# HELP coredns_meshprobe_lab_pod The lab pod serving this page.\n# TYPE coredns_meshprobe_lab_pod gauge\ncoredns_meshprobe_lab_pod{{pod=\"{name}\"}} 1\n"
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// A web pod: answers every GET with its own name.
pub async fn web(name: String, listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let app = Router::new().fallback(move || {
        let name = name.clone();
        async move { format!("hello from {name}\n") }
    });
    tracing::info!(%listen, "web pod serving");
    axum::serve(listener, app).await
}

#[derive(Clone)]
struct Ingress {
    host: String,
    backends: Arc<Vec<SocketAddr>>,
    next: Arc<AtomicUsize>,
    http: reqwest::Client,
}

/// A host-network ingress proxy: requests whose Host is `host` go to the backends, round
/// robin, moving to the next backend on a connection error (as ingress-nginx's
/// `proxy_next_upstream error timeout` does); other hosts get 404.
pub async fn ingress(
    listen: SocketAddr,
    host: String,
    backends: Vec<SocketAddr>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(std::io::Error::other)?;
    let state = Ingress {
        host,
        backends: Arc::new(backends),
        next: Arc::new(AtomicUsize::new(0)),
        http,
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .fallback(proxy)
        .with_state(state);
    tracing::info!(%listen, "ingress serving");
    axum::serve(listener, app).await
}

async fn proxy(State(s): State<Ingress>, req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let host = host.split(':').next().unwrap_or("");
    if host != s.host {
        return (StatusCode::NOT_FOUND, "default backend - 404\n").into_response();
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let tries = s.backends.len().min(2);
    let mut last = String::new();
    for _ in 0..tries {
        let i = s.next.fetch_add(1, Ordering::Relaxed) % s.backends.len();
        let url = format!("http://{}{path}", s.backends[i]);
        match s.http.get(&url).send().await {
            Ok(resp) => {
                let status =
                    StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                let body = resp.bytes().await.unwrap_or_default();
                return (status, body).into_response();
            }
            Err(e) => last = format!("{}: {e}", s.backends[i]),
        }
    }
    (
        StatusCode::BAD_GATEWAY,
        format!("502 Bad Gateway: {last}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn ask(name: &str, ty: RecordType) -> Message {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), ty));
        m
    }

    #[test]
    fn answers_cluster_names_nxdomain_inside_refused_outside() {
        let records = BTreeMap::from([(
            "kubernetes.default.svc.cluster.local".to_owned(),
            Ipv4Addr::new(10, 43, 0, 1),
        )]);
        let r = answer(
            &ask("kubernetes.default.svc.cluster.local.", RecordType::A),
            "cluster.local",
            &records,
        );
        assert_eq!(r.metadata.id, 7);
        assert_eq!(r.answers.len(), 1);
        let r = answer(
            &ask("nope.default.svc.cluster.local.", RecordType::A),
            "cluster.local",
            &records,
        );
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        let r = answer(
            &ask("example.com.", RecordType::A),
            "cluster.local",
            &records,
        );
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        let r = answer(
            &ask("kubernetes.default.svc.cluster.local.", RecordType::AAAA),
            "cluster.local",
            &records,
        );
        assert_eq!(
            (r.metadata.response_code, r.answers.len()),
            (ResponseCode::NoError, 0)
        );
    }
}
