//! DNS probes: one A query per probe, each from its own UDP socket (a fresh source port,
//! so kube-proxy balances each one independently, as it does a real resolver's), with no
//! cache or search list to hide a failure. Like a stub resolver (glibc's `attempts`, dig's
//! `+tries`), a query unanswered at half its timeout is sent once more on the same socket:
//! one datagram lost to background loss is not a failed lookup, while a server that is
//! filtered, down or wedged fails both sends.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use meshprobe_core::{FailKind, Failure};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout};

/// The answer to one query.
#[derive(Clone, Debug, PartialEq)]
pub enum DnsOutcome {
    /// NOERROR with at least one A record.
    Answer {
        /// The addresses.
        addrs: Vec<Ipv4Addr>,
        /// Round-trip time.
        rtt: Duration,
    },
    /// Anything else: what it met, and in words.
    Failed(Failure),
}

/// Asks `server:53` for the A record of `name` (fully qualified), sending the query again
/// once if no answer came in half of `limit`.
pub async fn query_a(server: Ipv4Addr, name: &str, limit: Duration) -> DnsOutcome {
    query_a_at(SocketAddr::from((server, 53)), name, limit).await
}

async fn query_a_at(server: SocketAddr, name: &str, limit: Duration) -> DnsOutcome {
    match timeout(limit, exchange(server, name, limit / 2)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => DnsOutcome::Failed(e),
        Err(_) => DnsOutcome::Failed(Failure::timeout()),
    }
}

async fn exchange(
    server: SocketAddr,
    name: &str,
    resend_after: Duration,
) -> Result<DnsOutcome, Failure> {
    let local = |what: String| Failure::new(FailKind::LocalError, what);
    let qname = Name::from_ascii(name).map_err(|e| local(format!("bad name {name:?}: {e}")))?;
    let id = fastrand::u16(..);
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(qname.clone(), RecordType::A));
    let bytes = msg.to_vec().map_err(|e| local(format!("encode: {e}")))?;

    let sock = UdpSocket::bind(("0.0.0.0", 0))
        .await
        .map_err(|e| Failure::io("bind", &e))?;
    sock.connect(server)
        .await
        .map_err(|e| Failure::io("connect", &e))?;
    let start = Instant::now();
    sock.send(&bytes)
        .await
        .map_err(|e| Failure::io("send", &e))?;
    let mut buf = [0u8; 4096];
    let mut resend = Some(start + resend_after);
    loop {
        let received = match resend {
            Some(at) => match tokio::time::timeout_at(at, sock.recv(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    // The same id: an answer to either send is the answer.
                    resend = None;
                    sock.send(&bytes)
                        .await
                        .map_err(|e| Failure::io("send", &e))?;
                    continue;
                }
            },
            None => sock.recv(&mut buf).await,
        };
        let n = received.map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Failure::new(
                FailKind::Refused,
                "ICMP port unreachable (nothing listens on :53)",
            ),
            _ => Failure::io("receive", &e),
        })?;
        let rtt = start.elapsed();
        match read_answer(&buf[..n], id) {
            None => continue, // not ours; keep waiting within the timeout
            Some(Err(why)) => return Ok(DnsOutcome::Failed(why)),
            Some(Ok(addrs)) => return Ok(DnsOutcome::Answer { addrs, rtt }),
        }
    }
}

/// Reads a datagram as the answer to query `id`: `None` when it is not one (garbage, or
/// another query's), else the A records, or why there are none.
pub fn read_answer(datagram: &[u8], id: u16) -> Option<Result<Vec<Ipv4Addr>, Failure>> {
    let resp = Message::from_vec(datagram).ok()?;
    if resp.metadata.id != id || resp.metadata.message_type != MessageType::Response {
        return None;
    }
    let rcode = resp.metadata.response_code;
    if rcode != ResponseCode::NoError {
        return Some(Err(Failure::new(
            FailKind::DnsRcode,
            format!("rcode {rcode}"),
        )));
    }
    let addrs: Vec<Ipv4Addr> = resp
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    Some(if addrs.is_empty() {
        Err(Failure::new(
            FailKind::DnsNoAnswer,
            "NOERROR without an A record",
        ))
    } else {
        Ok(addrs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::A;

    /// A one-shot fake server on 127.0.0.1 that answers with `rcode` and an A record.
    async fn fake_server(rcode: ResponseCode) -> (u16, tokio::task::JoinHandle<()>) {
        fake_server_ignoring(rcode, 0).await
    }

    /// A fake server that drops the first `ignore` queries it receives and answers the next.
    async fn fake_server_ignoring(
        rcode: ResponseCode,
        ignore: usize,
    ) -> (u16, tokio::task::JoinHandle<()>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let port = sock.local_addr().expect("addr").port();
        let h = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            for _ in 0..ignore {
                sock.recv_from(&mut buf).await.expect("recv");
            }
            let (n, peer) = sock.recv_from(&mut buf).await.expect("recv");
            let q = Message::from_vec(&buf[..n]).expect("query");
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.response_code = rcode;
            r.add_queries(q.queries.clone());
            if rcode == ResponseCode::NoError {
                r.add_answer(Record::from_rdata(
                    q.queries[0].name().clone(),
                    5,
                    RData::A(A::new(10, 43, 0, 1)),
                ));
            }
            sock.send_to(&r.to_vec().expect("encode"), peer)
                .await
                .expect("send");
        });
        (port, h)
    }

    #[tokio::test]
    async fn answer_and_rcode_are_reported() {
        let (port, h) = fake_server(ResponseCode::NoError).await;
        let out = timeout(
            Duration::from_secs(2),
            exchange(
                SocketAddr::from(([127, 0, 0, 1], port)),
                "kubernetes.default.svc.cluster.local.",
                Duration::from_secs(1),
            ),
        )
        .await
        .expect("in time")
        .expect("exchange");
        h.await.expect("server");
        assert!(
            matches!(out, DnsOutcome::Answer { ref addrs, .. } if addrs == &[Ipv4Addr::new(10, 43, 0, 1)]),
            "{out:?}"
        );

        let (port, h) = fake_server(ResponseCode::NXDomain).await;
        let out = exchange(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "nope.cluster.local.",
            Duration::from_secs(1),
        )
        .await
        .expect("exchange");
        h.await.expect("server");
        assert_eq!(
            out,
            DnsOutcome::Failed(Failure::new(
                FailKind::DnsRcode,
                "rcode Non-Existent Domain"
            ))
        );
    }

    #[tokio::test]
    async fn silence_is_a_timeout() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        let Ipv4Addr { .. } = Ipv4Addr::LOCALHOST;
        let out = timeout(
            Duration::from_millis(200),
            exchange(addr, "a.b.", Duration::from_millis(50)),
        )
        .await;
        assert!(
            out.is_err(),
            "a server that never answers must hit the timeout"
        );
        drop(sock);
    }

    #[tokio::test]
    async fn one_lost_query_is_sent_again_and_two_are_a_failure() {
        let ask = |port: u16| {
            query_a_at(
                SocketAddr::from(([127, 0, 0, 1], port)),
                "kubernetes.default.svc.cluster.local.",
                Duration::from_millis(400),
            )
        };
        // The first send is lost: the second, on the same socket and id, is answered.
        let (port, h) = fake_server_ignoring(ResponseCode::NoError, 1).await;
        let out = ask(port).await;
        assert!(matches!(out, DnsOutcome::Answer { .. }), "{out:?}");
        h.await.expect("server");
        // Both sends lost: the lookup fails at the timeout, and is not sent a third time.
        let (port, h) = fake_server_ignoring(ResponseCode::NoError, 2).await;
        let out = ask(port).await;
        assert_eq!(out, DnsOutcome::Failed(Failure::timeout()));
        h.abort();
    }
}
