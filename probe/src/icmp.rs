//! ICMP echo probing: every target in flight at once, from one socket and one task.
//!
//! The socket is an unprivileged ICMP datagram socket where `net.ipv4.ping_group_range`
//! allows it (the pod agent needs no capability), and a raw socket otherwise (the host
//! agent has CAP_NET_RAW). On a datagram socket the kernel rewrites the echo id to the
//! socket's port and delivers only our replies; on a raw socket we see every ICMP packet
//! of the namespace. So replies are matched on a signature in the payload, which both
//! kinds echo back untouched: `MSHP`, a per-process nonce, the round, the target index and
//! the probe number. The same signature lets a packet capture follow one probe.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use meshprobe_core::{FailKind, Failure};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::time::{Instant, sleep_until};

/// The first bytes of every probe payload.
pub const MAGIC: [u8; 4] = *b"MSHP";
const SIGNATURE_LEN: usize = 16;
const IPV4_HEADER: usize = 20;
const ICMP_HEADER: usize = 8;

/// Which kind of ICMP socket the pinger got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_DGRAM`/`IPPROTO_ICMP`, allowed by `net.ipv4.ping_group_range`.
    Unprivileged,
    /// `SOCK_RAW`, needs CAP_NET_RAW.
    Raw,
}

/// Opening the ICMP socket failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open an ICMP socket: unprivileged ({unprivileged}) and raw ({raw}); \
     allow ping with the sysctl net.ipv4.ping_group_range=\"0 2147483647\" or grant CAP_NET_RAW"
)]
pub struct OpenError {
    unprivileged: io::Error,
    raw: io::Error,
}

/// One echo target of a run.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Address to ping.
    pub ip: Ipv4Addr,
    /// Total IP packet size, header included.
    pub size: u16,
    /// Whether the packet may be fragmented (DF clear). Every other probe is sent with DF
    /// set, so that a path that carries less than its size shows.
    pub fragment: bool,
}

/// The outcome for one target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Echo requests sent (or attempted).
    pub sent: u32,
    /// Echo replies received in time.
    pub received: u32,
    /// Sum of the RTTs of the replies, for the mean.
    pub rtt_total: Duration,
    /// The last error seen: a send error or an ICMP error from the path.
    pub failure: Option<Failure>,
}

impl Outcome {
    /// Mean RTT in milliseconds, if any reply came.
    pub fn mean_rtt_ms(&self) -> Option<f64> {
        (self.received > 0)
            .then(|| self.rtt_total.as_secs_f64() * 1000.0 / f64::from(self.received))
    }
}

/// How a run paces its probes.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Echoes per target.
    pub count: u16,
    /// Gap between two waves of sends.
    pub interval: Duration,
    /// How long to wait for replies after the last wave.
    pub timeout: Duration,
}

/// An ICMP echo socket, reused across rounds.
pub struct Pinger {
    socket: UdpSocket,
    kind: SocketKind,
    nonce: u32,
    raw_id: u16,
}

impl Pinger {
    /// Opens the socket: unprivileged first, raw as the fallback. Must be called inside a
    /// Tokio runtime.
    pub fn open() -> Result<Self, OpenError> {
        let (socket, kind) = match open_socket(Type::DGRAM) {
            Ok(s) => (s, SocketKind::Unprivileged),
            Err(unprivileged) => match open_socket(Type::RAW) {
                Ok(s) => (s, SocketKind::Raw),
                Err(raw) => return Err(OpenError { unprivileged, raw }),
            },
        };
        let socket =
            UdpSocket::from_std(std::net::UdpSocket::from(socket)).map_err(|e| OpenError {
                unprivileged: io::Error::other("not attempted"),
                raw: e,
            })?;
        Ok(Self {
            socket,
            kind,
            nonce: fastrand::u32(..),
            raw_id: fastrand::u16(..),
        })
    }

    /// The kind of socket in use.
    pub fn kind(&self) -> SocketKind {
        self.kind
    }

    /// Sets or clears DF on the socket's packets. When it cannot be cleared, fragmentable
    /// probes go with DF set and fail with "message too long", which names the reason.
    fn set_df(&self, df: bool) {
        use rustix::net::sockopt::{Ipv4PathMtuDiscovery, set_ip_mtu_discover};
        let mode = if df {
            Ipv4PathMtuDiscovery::DO
        } else {
            Ipv4PathMtuDiscovery::DONT
        };
        if let Err(e) = set_ip_mtu_discover(&self.socket, mode) {
            tracing::debug!(error = %e, df, "cannot set IP_MTU_DISCOVER");
        }
    }

    /// Pings every target `schedule.count` times, all at once, and returns one outcome per
    /// target (same order). Never takes longer than
    /// `count * interval + timeout`.
    pub async fn run(&self, round: u64, targets: &[Target], schedule: Schedule) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::default(); targets.len()];
        if targets.is_empty() || schedule.count == 0 {
            return outcomes;
        }
        // sent_at[target][probe] is Some(instant) while a reply is awaited.
        let mut sent_at: Vec<Vec<Option<Instant>>> =
            vec![vec![None; usize::from(schedule.count)]; targets.len()];
        let mut outstanding = 0usize;
        let round32 = round as u32;
        self.drain_stale();

        let start = Instant::now();
        let mut wave: u16 = 0;
        let mut next_wave = start;
        // The reply window runs from when the last wave actually left: on a starved CPU
        // the waves slip, and a window counted from their schedule would close early.
        let mut last_sent = start;
        let mut buf = vec![0u8; 65_536];
        let mut tally = Tally {
            sent_at: &mut sent_at,
            outcomes: &mut outcomes,
            outstanding: &mut outstanding,
        };
        loop {
            let sending = wave < schedule.count;
            if !sending && *tally.outstanding == 0 {
                break;
            }
            let wake = if sending {
                next_wave
            } else {
                last_sent + schedule.timeout
            };
            tokio::select! {
                // Replies first: a reply already queued must not lose to a due timer.
                biased;
                res = self.socket.recv_from(&mut buf) => {
                    if let Ok((len, from)) = res {
                        self.account(&buf[..len], from, round32, &mut tally);
                    }
                }
                () = sleep_until(wake) => {
                    if !sending {
                        // Count what is queued already, then stop waiting.
                        while let Ok((len, from)) = self.socket.try_recv_from(&mut buf) {
                            self.account(&buf[..len], from, round32, &mut tally);
                        }
                        break;
                    }
                    // DF is per socket: cleared around the sends that may fragment (one
                    // task sends, so no other send sees it cleared).
                    let mut df = true;
                    for (t, target) in targets.iter().enumerate() {
                        if target.fragment == df {
                            df = !target.fragment;
                            self.set_df(df);
                        }
                        let seq = wave;
                        let packet = self.echo_request(round32, t as u32, seq, target.size);
                        let dest = SocketAddr::V4(SocketAddrV4::new(target.ip, 0));
                        tally.outcomes[t].sent += 1;
                        match self.socket.send_to(&packet, dest).await {
                            Ok(_) => {
                                tally.sent_at[t][usize::from(seq)] = Some(Instant::now());
                                *tally.outstanding += 1;
                            }
                            Err(e) => tally.outcomes[t].failure = Some(describe_send_error(&e, target.size)),
                        }
                    }
                    if !df {
                        self.set_df(true);
                    }
                    wave += 1;
                    next_wave += schedule.interval;
                    last_sent = Instant::now();
                }
            }
        }
        for (o, pending) in outcomes.iter_mut().zip(&sent_at) {
            if pending.iter().any(Option::is_some) && o.failure.is_none() {
                o.failure = Some(Failure::timeout());
            }
        }
        outcomes
    }

    /// Accounts one received ICMP packet against the probes in flight.
    fn account(&self, packet: &[u8], from: SocketAddr, round: u32, t: &mut Tally<'_>) {
        let now = Instant::now();
        match self.parse(packet, round) {
            Some(Parsed::Reply { target, seq }) => {
                if let Some(at) = take_slot(t.sent_at, target, seq) {
                    *t.outstanding -= 1;
                    t.outcomes[target].received += 1;
                    t.outcomes[target].rtt_total += now - at;
                }
            }
            Some(Parsed::Error {
                target,
                seq,
                message,
            }) => {
                if take_slot(t.sent_at, target, seq).is_some() {
                    *t.outstanding -= 1;
                }
                if let Some(o) = t.outcomes.get_mut(target) {
                    o.failure = Some(Failure::new(
                        message.kind,
                        format!("{} from {}", message.detail, from.ip()),
                    ));
                }
            }
            None => {}
        }
    }

    /// Drops replies that arrived after the previous run's timeout.
    fn drain_stale(&self) {
        let mut buf = [0u8; 2048];
        while self.socket.try_recv_from(&mut buf).is_ok() {}
    }

    fn echo_request(&self, round: u32, target: u32, seq: u16, size: u16) -> Vec<u8> {
        let total = usize::from(size).max(IPV4_HEADER + ICMP_HEADER + SIGNATURE_LEN);
        let mut p = vec![0u8; total - IPV4_HEADER];
        p[0] = 8; // echo request
        p[4..6].copy_from_slice(&self.raw_id.to_be_bytes()); // the kernel replaces it on DGRAM
        p[6..8].copy_from_slice(&seq.to_be_bytes());
        let sig = &mut p[ICMP_HEADER..ICMP_HEADER + SIGNATURE_LEN];
        sig[0..4].copy_from_slice(&MAGIC);
        sig[4..8].copy_from_slice(&self.nonce.to_be_bytes());
        sig[8..12].copy_from_slice(&round.to_be_bytes());
        sig[12..16].copy_from_slice(&target.to_be_bytes());
        // The padding counts 0..251 over and over (a prime period, so it lines up with
        // no word size), copied a period at a time: a full-size echo is built 20 times a
        // round per peer.
        for chunk in p[ICMP_HEADER + SIGNATURE_LEN..].chunks_mut(PAD.len()) {
            chunk.copy_from_slice(&PAD[..chunk.len()]);
        }
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
        p
    }

    fn parse(&self, packet: &[u8], round: u32) -> Option<Parsed> {
        let icmp = match self.kind {
            SocketKind::Unprivileged => packet,
            SocketKind::Raw => skip_ipv4_header(packet)?,
        };
        match *icmp.first()? {
            0 => {
                let (target, seq) = self.match_echo(icmp, round)?;
                Some(Parsed::Reply { target, seq })
            }
            3 | 11 | 12 => {
                // An ICMP error quotes our IP header and the start of our echo request.
                let quoted = skip_ipv4_header(icmp.get(ICMP_HEADER..)?)?;
                let (target, seq) = self.match_echo(quoted, round)?;
                Some(Parsed::Error {
                    target,
                    seq,
                    message: describe_icmp_error(icmp[0], icmp[1]),
                })
            }
            _ => None,
        }
    }

    /// Checks the echo's signature; returns (target index, probe number).
    fn match_echo(&self, icmp: &[u8], round: u32) -> Option<(usize, u16)> {
        let sig = icmp.get(ICMP_HEADER..ICMP_HEADER + SIGNATURE_LEN)?;
        if sig[0..4] != MAGIC
            || sig[4..8] != self.nonce.to_be_bytes()
            || sig[8..12] != round.to_be_bytes()
        {
            return None;
        }
        if self.kind == SocketKind::Raw && icmp[0] == 0 && icmp[4..6] != self.raw_id.to_be_bytes() {
            return None;
        }
        let target = u32::from_be_bytes([sig[12], sig[13], sig[14], sig[15]]) as usize;
        let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
        Some((target, seq))
    }
}

/// A run's bookkeeping: when each probe left, the outcomes, how many are awaited.
struct Tally<'a> {
    sent_at: &'a mut [Vec<Option<Instant>>],
    outcomes: &'a mut [Outcome],
    outstanding: &'a mut usize,
}

/// Marks probe `seq` of `target` answered; its send time if it was still awaited.
/// Indices come from the wire, so anything out of range is ignored.
fn take_slot(sent_at: &mut [Vec<Option<Instant>>], target: usize, seq: u16) -> Option<Instant> {
    sent_at.get_mut(target)?.get_mut(usize::from(seq))?.take()
}

enum Parsed {
    Reply {
        target: usize,
        seq: u16,
    },
    Error {
        target: usize,
        seq: u16,
        message: Failure,
    },
}

fn open_socket(ty: Type) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, ty, Some(Protocol::ICMPV4))?;
    s.set_nonblocking(true)?;
    if ty == Type::RAW {
        set_icmp_filter(&s)?;
    }
    // Full-size probes must not be fragmented: DF on, and EMSGSIZE when a known path MTU
    // is smaller, which is itself the evidence we want.
    rustix::net::sockopt::set_ip_mtu_discover(&s, rustix::net::sockopt::Ipv4PathMtuDiscovery::DO)?;
    // Many targets reply at once; keep them all. Forcing past rmem_max needs
    // CAP_NET_ADMIN; without it, take what the limit allows.
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(&s, 4 << 20).is_err() {
        let _ = s.set_recv_buffer_size(4 << 20);
    }
    Ok(s)
}

/// A raw ICMP socket gets a copy of every ICMP packet the namespace receives, including
/// every other node's echo requests to this one: on a busy node they would crowd our
/// replies out of the receive queue. ICMP_FILTER (raw(7)) drops, in the kernel, every type
/// but echo reply and the errors that quote our probes.
#[expect(
    unsafe_code,
    reason = "ICMP_FILTER has no safe wrapper in rustix, socket2 or nix"
)]
fn set_icmp_filter(s: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const SOL_RAW: libc::c_int = 255;
    const ICMP_FILTER: libc::c_int = 1;
    // A set bit filters the type out.
    let keep: u32 = (1 << 0) | (1 << 3) | (1 << 11) | (1 << 12);
    let mask: u32 = !keep;
    // SAFETY: the fd belongs to `s`, which outlives the call; the option value points to
    // a u32 on this stack frame and its exact size is passed, as raw(7) specifies.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            SOL_RAW,
            ICMP_FILTER,
            (&raw const mask).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn skip_ipv4_header(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < IPV4_HEADER {
        return None;
    }
    packet.get(ihl..)
}

/// One period of an echo's padding.
const PAD: [u8; 251] = {
    let mut a = [0u8; 251];
    let mut i = 0;
    while i < 251 {
        a[i] = i as u8;
        i += 1;
    }
    a
};

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    // Whole words first (a loop the compiler vectorises), then an odd last byte. A u64
    // cannot overflow: 65,535 bytes sum to at most 2^31.
    let words = data.chunks_exact(2);
    let odd = words.remainder().first().map_or(0, |&b| u64::from(b) << 8);
    let sum64: u64 = words
        .map(|c| u64::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u64>()
        + odd;
    let mut sum = sum64;
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn describe_send_error(e: &io::Error, size: u16) -> Failure {
    let kind = FailKind::of_io(e);
    let detail = match kind {
        FailKind::TooBig => {
            format!("{size}-byte packet refused locally: larger than the path MTU (EMSGSIZE)")
        }
        FailKind::LocalRefusal => "send refused by a local firewall rule (EPERM)".to_owned(),
        _ => format!("send failed: {e}"),
    };
    Failure::new(kind, detail)
}

fn describe_icmp_error(ty: u8, code: u8) -> Failure {
    use FailKind::*;
    let (kind, words) = match (ty, code) {
        (3, 0) => (Unreachable, "ICMP net unreachable".to_owned()),
        (3, 1) => (Unreachable, "ICMP host unreachable".to_owned()),
        (3, 3) => (Refused, "ICMP port unreachable".to_owned()),
        (3, 4) => (TooBig, "ICMP fragmentation needed".to_owned()),
        (3, 9 | 10) => (
            Prohibited,
            "ICMP host administratively prohibited".to_owned(),
        ),
        (3, 13) => (
            Prohibited,
            "ICMP communication administratively prohibited".to_owned(),
        ),
        (3, c) => (
            Unreachable,
            format!("ICMP destination unreachable (code {c})"),
        ),
        (11, _) => (
            TimeExceeded,
            "ICMP time exceeded (routing loop?)".to_owned(),
        ),
        (t, c) => (Unrecognised, format!("ICMP type {t} code {c}")),
    };
    Failure::new(kind, words)
}

/// The MTU of the route to `ip` (`IP_MTU` on a connected UDP socket): the outgoing
/// interface's MTU, or a smaller path MTU the kernel learned. Connecting a UDP socket sends
/// nothing.
pub fn route_mtu(ip: Ipv4Addr) -> Option<u16> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None).ok()?;
    sock.connect(&std::net::SocketAddrV4::new(ip, 9).into())
        .ok()?;
    let mtu = rustix::net::sockopt::ip_mtu(&sock).ok()?;
    Some(u16::try_from(mtu).unwrap_or(u16::MAX))
}

#[cfg(test)]
mod tests {

    #[test]
    fn route_mtu_reads_the_outgoing_interfaces_mtu() {
        // Loopback's MTU (65536) is larger than a u16: it saturates.
        assert_eq!(route_mtu(Ipv4Addr::LOCALHOST), Some(u16::MAX));
    }

    use super::*;

    #[test]
    fn checksum_of_a_known_packet() {
        // Echo request, id 1, seq 1, payload "abcd": checksum computed by hand.
        let mut p = vec![8, 0, 0, 0, 0, 1, 0, 1, b'a', b'b', b'c', b'd'];
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!(sum, 0x3337); // !(0x0800 + 0x0001 + 0x0001 + 0x6162 + 0x6364)
        // An odd last byte is the high half of a word padded with zero.
        assert_eq!(checksum(&[0x01]), !0x0100);
        // 0x0800 + 0xff00 = 0x1_0700, folded: 0x0701.
        assert_eq!(checksum(&[0x08, 0x00, 0xff]), !0x0701);
        // Carries fold back in: 0xffff + 0x0002 = 0x1_0001 -> 0x0002.
        assert_eq!(checksum(&[0xff, 0xff, 0x00, 0x02]), !0x0002);
    }

    /// A pinger over a plain UDP socket: opening an ICMP socket may need privileges, and
    /// these tests only exercise building and parsing packets. Keep the runtime alive.
    fn pinger(kind: SocketKind, nonce: u32) -> (tokio::runtime::Runtime, Pinger) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let p = {
            let _guard = rt.enter();
            let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            std_sock.set_nonblocking(true).expect("nonblocking");
            Pinger {
                socket: UdpSocket::from_std(std_sock).expect("tokio socket"),
                kind,
                nonce,
                raw_id: 7,
            }
        };
        (rt, p)
    }

    #[test]
    fn parses_only_replies_carrying_our_signature() {
        let (_rt, p) = pinger(SocketKind::Unprivileged, 0xdead_beef);
        let mut req = p.echo_request(5, 3, 9, 84);
        assert_eq!(req.len(), 64);
        req[0] = 0; // turn it into the reply the kernel would deliver
        assert!(matches!(
            p.parse(&req, 5),
            Some(Parsed::Reply { target: 3, seq: 9 })
        ));
        assert!(
            p.parse(&req, 6).is_none(),
            "another round's reply is ignored"
        );
        req[9] ^= 1; // someone else's ping
        assert!(p.parse(&req, 5).is_none());
        assert!(p.parse(&[], 5).is_none() && p.parse(&[0; 10], 5).is_none());
    }

    #[test]
    fn icmp_errors_quoting_our_probe_are_matched() {
        let (_rt, p) = pinger(SocketKind::Raw, 1);
        let req = p.echo_request(2, 1, 4, 84);
        let mut ip = vec![
            0x45u8, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let mut err = vec![3u8, 10, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&ip);
        err.extend_from_slice(&req);
        ip.extend_from_slice(&err);
        match p.parse(&ip, 2) {
            Some(Parsed::Error {
                target: 1,
                seq: 4,
                message,
            }) => assert_eq!(message.kind, FailKind::Prohibited, "{message}"),
            _ => panic!("ICMP error not matched"),
        }
    }
}
