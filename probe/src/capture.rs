//! Overlay packet capture: the operator's `tcpdump -i <underlay> udp port 8472`, always
//! on, bounded, and summarised per round.
//!
//! An AF_PACKET socket (CAP_NET_RAW) with a classic BPF filter in the kernel, so that only
//! the underlay interface's UDP packets on the overlay port reach userspace, truncated to
//! [`SNAPLEN`] bytes. A thread reads them, decodes outer IPv4/UDP, VXLAN and the inner packet
//! ([`decode`]), and keeps bounded state: per-peer counters, per-round counts of
//! meshprobe's own probes (recognised by their payload signature), and a ring of recent
//! frames for pcap export. Without CAP_NET_RAW, [`Capture::start`] fails with a clear
//! error and the agent carries on without capture.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use meshprobe_core::NodeName;
use meshprobe_core::capture::{CaptureSummary, CapturedPacket, PeerFlow, Sizes, to_hex};
use socket2::{Domain, Protocol, SockFilter, Socket, Type};

use crate::icmp::MAGIC;

/// Bytes kept of each frame: outer Ethernet+IPv4+UDP+VXLAN (50), inner Ethernet+IPv4+ICMP
/// (42) and the probe signature (16) fit, with room for IP options.
pub const SNAPLEN: u32 = 160;
/// Frames kept for pcap export (about 1.3 MB at the snap length).
pub const RING_FRAMES: usize = 8192;
/// Rounds whose probe counts are kept.
pub const ROUNDS_KEPT: usize = 8;
/// Inner packets longer than this count as full-size.
pub const BIG: u16 = 576;

/// A meshprobe probe inside a VXLAN packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Echo reply (else request).
    pub reply: bool,
    /// The round in the signature.
    pub round: u32,
}

/// The inner packet of a VXLAN frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inner {
    /// Inner source.
    pub src: Ipv4Addr,
    /// Inner destination.
    pub dst: Ipv4Addr,
    /// Inner IPv4 total length.
    pub len: u16,
    /// The meshprobe probe it carries, if any.
    pub probe: Option<Probe>,
}

/// A decoded overlay frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Outer source (a node IP).
    pub src: Ipv4Addr,
    /// Outer destination.
    pub dst: Ipv4Addr,
    /// Outer IPv4 total length.
    pub len: u16,
    /// The VXLAN network identifier, if the payload is VXLAN.
    pub vni: Option<u32>,
    /// The inner IPv4 packet, if any.
    pub inner: Option<Inner>,
}

/// Decodes an Ethernet frame (possibly truncated) carrying UDP on `port`. Never panics,
/// whatever the bytes: anything it cannot read is `None` at that level.
pub fn decode(frame: &[u8], port: u16) -> Option<Decoded> {
    let outer = LaxSlicedPacket::from_ethernet(frame).ok()?;
    let Some(LaxNetSlice::Ipv4(ip)) = &outer.net else {
        return None;
    };
    let h = ip.header();
    let Some(TransportSlice::Udp(udp)) = &outer.transport else {
        return None;
    };
    if udp.source_port() != port && udp.destination_port() != port {
        return None;
    }
    let mut d = Decoded {
        src: Ipv4Addr::from(h.source()),
        dst: Ipv4Addr::from(h.destination()),
        len: h.total_len(),
        vni: None,
        inner: None,
    };
    let payload = udp.payload();
    // VXLAN (RFC 7348): flags (I bit 0x08), 3 reserved, VNI (24 bits), 1 reserved.
    let (Some(&flags), Some(vni)) = (payload.first(), payload.get(4..7)) else {
        return Some(d);
    };
    if flags & 0x08 == 0 {
        return Some(d);
    }
    d.vni = Some(u32::from(vni[0]) << 16 | u32::from(vni[1]) << 8 | u32::from(vni[2]));
    let Some(inner_frame) = payload.get(8..) else {
        return Some(d);
    };
    let Ok(inner) = LaxSlicedPacket::from_ethernet(inner_frame) else {
        return Some(d);
    };
    let Some(LaxNetSlice::Ipv4(iip)) = &inner.net else {
        return Some(d);
    };
    let ih = iip.header();
    let probe = match &inner.transport {
        Some(TransportSlice::Icmpv4(icmp)) if matches!(icmp.type_u8(), 0 | 8) => {
            let p = icmp.payload();
            (p.get(0..4) == Some(&MAGIC[..]))
                .then(|| p.get(8..12))
                .flatten()
                .map(|r| Probe {
                    reply: icmp.type_u8() == 0,
                    round: u32::from_be_bytes([r[0], r[1], r[2], r[3]]),
                })
        }
        _ => None,
    };
    d.inner = Some(Inner {
        src: Ipv4Addr::from(ih.source()),
        dst: Ipv4Addr::from(ih.destination()),
        len: ih.total_len(),
        probe,
    });
    Some(d)
}

/// One classic BPF instruction (linux/filter.h `struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

// Classic BPF opcodes used here.
const LD_W_ABS: u16 = 0x20;
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const LDX_B_MSH: u16 = 0xb1;
const LD_H_IND: u16 = 0x48;
const JEQ: u16 = 0x15;
const JSET: u16 = 0x45;
const RET: u16 = 0x06;
/// SKF_AD_OFF + SKF_AD_IFINDEX: the ancillary load of the receiving interface's index.
const SKF_AD_IFINDEX: u32 = 0xffff_f000 + 8;

/// The kernel filter: frames on interface `ifindex`, IPv4, UDP, not a later fragment,
/// source or destination port `port`; accept at most [`SNAPLEN`] bytes of them.
pub fn program(ifindex: u32, port: u16) -> Vec<Insn> {
    let i = |code, jt, jf, k| Insn { code, jt, jf, k };
    let p = u32::from(port);
    // Jumps are relative to the next instruction: 13 drops, 14 accepts.
    vec![
        i(LD_W_ABS, 0, 0, SKF_AD_IFINDEX), // 0: A = ifindex
        i(JEQ, 0, 11, ifindex),            // 1: another interface -> 13
        i(LD_H_ABS, 0, 0, 12),             // 2: A = ethertype
        i(JEQ, 0, 9, 0x0800),              // 3: not IPv4 -> 13
        i(LD_B_ABS, 0, 0, 23),             // 4: A = IP protocol
        i(JEQ, 0, 7, 17),                  // 5: not UDP -> 13
        i(LD_H_ABS, 0, 0, 20),             // 6: A = flags + fragment offset
        i(JSET, 5, 0, 0x1fff),             // 7: a later fragment -> 13
        i(LDX_B_MSH, 0, 0, 14),            // 8: X = IP header length
        i(LD_H_IND, 0, 0, 14),             // 9: A = UDP source port
        i(JEQ, 3, 0, p),                   // 10: ours -> 14
        i(LD_H_IND, 0, 0, 16),             // 11: A = UDP destination port
        i(JEQ, 1, 0, p),                   // 12: ours -> 14
        i(RET, 0, 0, 0),                   // 13: drop
        i(RET, 0, 0, SNAPLEN),             // 14: accept, truncated
    ]
}

/// [`program`] as socket2 wants it.
pub fn filter(ifindex: u32, port: u16) -> Vec<SockFilter> {
    program(ifindex, port)
        .into_iter()
        .map(|i| SockFilter::new(i.code, i.jt, i.jf, i.k))
        .collect()
}

/// Capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// No interface holds the node IP.
    #[error("no interface holds the node IP {0}: cannot tell which one is the underlay")]
    NoInterface(Ipv4Addr),
    /// The socket needs CAP_NET_RAW.
    #[error("packet capture needs CAP_NET_RAW ({0}); running without it")]
    Permission(io::Error),
    /// Another socket error.
    #[error("packet capture on {iface}: {source}")]
    Socket {
        /// Interface.
        iface: String,
        /// Why.
        source: io::Error,
    },
}

#[derive(Default, Clone, Copy)]
struct Totals {
    packets_out: u32,
    bytes_out: u64,
    packets_in: u32,
    bytes_in: u64,
}

#[derive(Default, Clone, Copy)]
struct ProbeCounts {
    requests_out: Sizes,
    requests_in: Sizes,
    replies_out: Sizes,
    replies_in: Sizes,
}

struct Frame {
    at_us: u64,
    orig_len: u32,
    peer: Ipv4Addr,
    round: Option<u32>,
    data: Vec<u8>,
}

#[derive(Default)]
struct State {
    /// When the capture thread last found its socket empty (µs since the epoch): every
    /// frame that arrived before that has been recorded.
    drained_at_us: u64,
    /// Why the capture thread stopped, if it did.
    stopped: Option<String>,
    totals: BTreeMap<Ipv4Addr, Totals>,
    reported: BTreeMap<Ipv4Addr, Totals>,
    probes: BTreeMap<u32, BTreeMap<Ipv4Addr, ProbeCounts>>,
    ring: VecDeque<Frame>,
}

impl State {
    /// Accounts one frame seen on the interface holding `me`.
    fn record(&mut self, me: Ipv4Addr, frame: &[u8], port: u16, at_us: u64) {
        let Some(d) = decode(frame, port) else { return };
        let (out, peer) = if d.src == me {
            (true, d.dst)
        } else if d.dst == me {
            (false, d.src)
        } else {
            return;
        };
        let t = self.totals.entry(peer).or_default();
        if out {
            t.packets_out += 1;
            t.bytes_out += u64::from(d.len);
        } else {
            t.packets_in += 1;
            t.bytes_in += u64::from(d.len);
        }
        let round = d.inner.and_then(|i| i.probe.map(|p| (i, p)));
        if let Some((inner, probe)) = round {
            let c = self
                .probes
                .entry(probe.round)
                .or_default()
                .entry(peer)
                .or_default();
            let slot = match (probe.reply, out) {
                (false, true) => &mut c.requests_out,
                (false, false) => &mut c.requests_in,
                (true, true) => &mut c.replies_out,
                (true, false) => &mut c.replies_in,
            };
            if inner.len > BIG {
                slot.big += 1;
            } else {
                slot.small += 1;
            }
            while self.probes.len() > ROUNDS_KEPT {
                self.probes.pop_first();
            }
        }
        if self.ring.len() == RING_FRAMES {
            self.ring.pop_front();
        }
        self.ring.push_back(Frame {
            at_us,
            orig_len: 14 + u32::from(d.len),
            peer,
            round: round.map(|(_, p)| p.round),
            data: frame.to_vec(),
        });
    }
}

/// Interfaces from `ip -j -4 addr show`: (name, ifindex, IPv4 addresses).
pub fn interfaces_from_ip_json(text: &str) -> Vec<(String, u32, Vec<Ipv4Addr>)> {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let addrs = l["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["local"].as_str()?.parse().ok())
                .collect();
            Some((
                l["ifname"].as_str()?.to_owned(),
                l["ifindex"].as_u64()? as u32,
                addrs,
            ))
        })
        .collect()
}

/// A running capture. Dropping it stops the thread.
pub struct Capture {
    interface: String,
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Capture {
    /// Starts capturing the overlay port on the interface that holds `node_ip`, found among
    /// `interfaces` (name, ifindex, IPv4 addresses).
    pub fn start(
        node_ip: Ipv4Addr,
        port: u16,
        interfaces: &[(String, u32, Vec<Ipv4Addr>)],
    ) -> Result<Capture, CaptureError> {
        let (iface, ifindex) = interfaces
            .iter()
            .find(|(_, _, addrs)| addrs.contains(&node_ip))
            .map(|(n, i, _)| (n.clone(), *i))
            .ok_or(CaptureError::NoInterface(node_ip))?;
        // ETH_P_ALL in network byte order: every protocol; the filter narrows it.
        let proto = Protocol::from(i32::from(0x0003u16.to_be()));
        let sock =
            Socket::new(Domain::PACKET, Type::RAW, Some(proto)).map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => CaptureError::Permission(e),
                _ => CaptureError::Socket {
                    iface: iface.clone(),
                    source: e,
                },
            })?;
        let err = |source| CaptureError::Socket {
            iface: iface.clone(),
            source,
        };
        sock.attach_filter(&filter(ifindex, port)).map_err(err)?;
        // Short, so the thread notices an empty socket soon (see `drained_since`).
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(err)?;
        let _ = sock.set_recv_buffer_size(2 << 20);
        // Frames queued before the filter was attached may be anything: drop them.
        sock.set_nonblocking(true).map_err(err)?;
        let std_sock = std::net::UdpSocket::from(sock);
        let mut scratch = [0u8; 2048];
        while std_sock.recv(&mut scratch).is_ok() {}
        std_sock.set_nonblocking(false).map_err(err)?;

        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                let mut buf = [0u8; SNAPLEN as usize];
                let now_us = || {
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as u64)
                };
                let mut errors = 0u32;
                while !sp.load(Ordering::Relaxed) {
                    match std_sock.recv(&mut buf) {
                        Ok(n) => {
                            errors = 0;
                            let at = now_us();
                            let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                            s.record(node_ip, &buf[..n], port, at);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) =>
                        {
                            st.lock().unwrap_or_else(|p| p.into_inner()).drained_at_us = now_us();
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            // Transient (the interface bouncing): retry a while before giving up.
                            errors += 1;
                            if errors > 50 {
                                tracing::warn!(error = %e, "capture stopped");
                                st.lock().unwrap_or_else(|p| p.into_inner()).stopped =
                                    Some(e.to_string());
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map_err(err)?;
        tracing::info!(interface = %iface, port, "capturing overlay traffic");
        Ok(Capture {
            interface: iface,
            port,
            state,
            stop,
        })
    }

    /// The interface captured on.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Whether every frame that reached the socket up to `at_us` has been recorded (the
    /// thread found the socket empty after it). On a busy or starved node the thread can
    /// lag behind the kernel; a round's summary must wait for it.
    pub fn drained_since(&self, at_us: u64) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drained_at_us
            >= at_us
    }

    /// Why the capture stopped, if it did.
    pub fn stopped(&self) -> Option<String> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stopped
            .clone()
    }

    /// This round's view: all encapsulated traffic per peer since the previous summary,
    /// and this round's probes. `peers` names the underlay IPs.
    pub fn summary(&self, round: u64, peers: &[(NodeName, Ipv4Addr)]) -> CaptureSummary {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let probes = s.probes.get(&(round as u32)).cloned().unwrap_or_default();
        let mut out = Vec::new();
        for (name, ip) in peers {
            let now = s.totals.get(ip).copied().unwrap_or_default();
            let before = s.reported.insert(*ip, now).unwrap_or_default();
            let p = probes.get(ip).copied().unwrap_or_default();
            let mut f = PeerFlow::new(name.clone(), *ip);
            f.packets_out = now.packets_out - before.packets_out;
            f.bytes_out = now.bytes_out - before.bytes_out;
            f.packets_in = now.packets_in - before.packets_in;
            f.bytes_in = now.bytes_in - before.bytes_in;
            f.requests_out = p.requests_out;
            f.requests_in = p.requests_in;
            f.replies_out = p.replies_out;
            f.replies_in = p.replies_in;
            out.push(f);
        }
        CaptureSummary {
            interface: self.interface.clone(),
            port: self.port,
            peers: out,
        }
    }

    /// The frames of this round's probes, and other overlay frames captured since
    /// `since_us`, at most `limit`.
    pub fn packets(&self, round: u64, since_us: u64, limit: usize) -> Vec<CapturedPacket> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.ring
            .iter()
            .filter(|f| f.round == Some(round as u32) || (f.round.is_none() && f.at_us >= since_us))
            .take(limit)
            .map(|f| CapturedPacket {
                at_us: f.at_us,
                orig_len: f.orig_len,
                peer_ip: f.peer,
                hex: to_hex(&f.data),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VXLAN frame from `src` to `dst` carrying an ICMP probe of `round` with an inner
    /// packet of `inner_len` bytes.
    pub(crate) fn frame(
        src: [u8; 4],
        dst: [u8; 4],
        round: u32,
        reply: bool,
        inner_len: u16,
    ) -> Vec<u8> {
        let icmp_len = usize::from(inner_len) - 20;
        let mut icmp = vec![0u8; icmp_len];
        icmp[0] = if reply { 0 } else { 8 };
        icmp[8..12].copy_from_slice(&MAGIC);
        icmp[16..20].copy_from_slice(&round.to_be_bytes());
        let mut inner_ip = vec![
            0x45u8, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 42, 1, 10, 10, 42, 2, 10,
        ];
        inner_ip[2..4].copy_from_slice(&inner_len.to_be_bytes());
        let mut inner = vec![0u8; 12];
        inner.extend_from_slice(&[0x08, 0x00]);
        inner.extend_from_slice(&inner_ip);
        inner.extend_from_slice(&icmp);
        let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        vxlan.extend_from_slice(&inner);
        let udp_len = (8 + vxlan.len()) as u16;
        let mut udp = vec![0x9a, 0x5c, 0x21, 0x18]; // 39516 -> 8472
        udp.extend_from_slice(&udp_len.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&vxlan);
        let total = (20 + udp.len()) as u16;
        let mut ip = vec![0x45u8, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&udp);
        f
    }

    #[test]
    fn decodes_a_probe_even_truncated_to_the_snap_length() {
        let f = frame([192, 168, 77, 11], [192, 168, 77, 13], 42, false, 1450);
        let d = decode(&f[..SNAPLEN as usize], 8472).expect("decodes");
        assert_eq!(
            (d.src, d.dst, d.vni),
            (
                Ipv4Addr::new(192, 168, 77, 11),
                Ipv4Addr::new(192, 168, 77, 13),
                Some(1)
            )
        );
        assert_eq!(d.len, 1500);
        let inner = d.inner.expect("inner");
        assert_eq!(
            (inner.len, inner.probe),
            (
                1450,
                Some(Probe {
                    reply: false,
                    round: 42
                })
            )
        );
        assert!(decode(&f, 4789).is_none(), "another port");
    }

    #[test]
    fn state_counts_probes_per_round_peer_direction_and_size() {
        let me = Ipv4Addr::new(192, 168, 77, 11);
        let mut s = State::default();
        s.record(
            me,
            &frame([192, 168, 77, 11], [192, 168, 77, 13], 5, false, 84),
            8472,
            1,
        );
        s.record(
            me,
            &frame([192, 168, 77, 11], [192, 168, 77, 13], 5, false, 1450),
            8472,
            2,
        );
        s.record(
            me,
            &frame([192, 168, 77, 13], [192, 168, 77, 11], 5, true, 84),
            8472,
            3,
        );
        s.record(
            me,
            &frame([192, 168, 77, 12], [192, 168, 77, 13], 5, true, 84),
            8472,
            4,
        ); // not ours
        let c = s.probes[&5][&Ipv4Addr::new(192, 168, 77, 13)];
        assert_eq!(
            (c.requests_out, c.replies_in),
            (Sizes { small: 1, big: 1 }, Sizes { small: 1, big: 0 })
        );
        assert_eq!(s.totals[&Ipv4Addr::new(192, 168, 77, 13)].packets_out, 2);
        assert_eq!(s.ring.len(), 3);
    }

    #[test]
    fn the_decoder_never_panics_on_random_or_mangled_bytes() {
        let mut rng = fastrand::Rng::with_seed(7);
        let good = frame([10, 0, 0, 1], [10, 0, 0, 2], 9, true, 84);
        for i in 0..200_000 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                let len = rng.usize(0..300);
                (0..len).map(|_| rng.u8(..)).collect()
            } else {
                // A valid frame with a few bytes changed and a random cut.
                let mut b = good.clone();
                for _ in 0..rng.usize(1..6) {
                    let at = rng.usize(..b.len());
                    b[at] = rng.u8(..);
                }
                b.truncate(rng.usize(0..=b.len()));
                b
            };
            let _ = decode(&bytes, 8472);
        }
    }

    /// A classic BPF interpreter for the opcodes [`program`] uses: what the kernel does
    /// with each frame. Returns the bytes accepted (0 = dropped).
    fn run(prog: &[Insn], frame: &[u8], ifindex: u32) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |at: usize, n: usize| -> Option<u32> {
            frame
                .get(at..at + n)
                .map(|b| b.iter().fold(0u32, |v, byte| v << 8 | u32::from(*byte)))
        };
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS if i.k == SKF_AD_IFINDEX => a = ifindex,
                LD_W_ABS => a = load(i.k as usize, 4).unwrap_or_default(),
                LD_H_ABS => match load(i.k as usize, 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LD_B_ABS => match load(i.k as usize, 1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LDX_B_MSH => match load(i.k as usize, 1) {
                    Some(v) => x = 4 * (v & 0xf),
                    None => return 0,
                },
                LD_H_IND => match load((x + i.k) as usize, 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                JEQ => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                JSET => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
                RET => return i.k,
                other => panic!("opcode {other:#x} not interpreted"),
            }
        }
    }

    #[test]
    fn the_kernel_filter_keeps_exactly_overlay_udp_on_the_underlay() {
        let prog = program(3, 8472);
        let vxlan = frame([10, 0, 0, 1], [10, 0, 0, 2], 9, false, 84);
        assert_eq!(
            run(&prog, &vxlan, 3),
            SNAPLEN,
            "overlay UDP on the underlay: kept, truncated"
        );
        assert_eq!(run(&prog, &vxlan, 4), 0, "another interface");
        let mut other_port = vxlan.clone();
        other_port[36..38].copy_from_slice(&4789u16.to_be_bytes());
        assert_eq!(run(&prog, &other_port, 3), 0, "another UDP port");
        let mut by_source = other_port.clone();
        by_source[34..36].copy_from_slice(&8472u16.to_be_bytes());
        assert_eq!(
            run(&prog, &by_source, 3),
            SNAPLEN,
            "overlay port as the source"
        );
        let mut tcp = vxlan.clone();
        tcp[23] = 6;
        assert_eq!(run(&prog, &tcp, 3), 0, "not UDP");
        let mut arp = vxlan.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(run(&prog, &arp, 3), 0, "not IPv4");
        let mut fragment = vxlan.clone();
        fragment[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
        assert_eq!(
            run(&prog, &fragment, 3),
            0,
            "a later fragment has no UDP header"
        );
        let mut options = vxlan.clone();
        options[14] = 0x46; // a 24-byte IP header: ports move by 4
        options.splice(34..34, [1, 1, 1, 1]);
        assert_eq!(run(&prog, &options, 3), SNAPLEN, "IP options are skipped");
        assert_eq!(
            run(&prog, &vxlan[..30], 3),
            0,
            "too short to read the ports"
        );
    }
}
