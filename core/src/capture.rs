//! What a host agent's packet capture says about one round, and pcap output.
//!
//! The agent captures the overlay's encapsulated traffic on the node's underlay interface.
//! Per peer it counts all encapsulated packets and bytes, and meshprobe's own probes of the
//! round (recognised by the payload signature, whose round number they carry): requests and
//! replies, leaving and arriving, small and full-size. With the counts from both ends of a
//! pair, the diagnosis follows one probe: left this node? arrived at the peer? did a reply
//! leave the peer? did it arrive back?

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::ids::NodeName;

/// Probe packets by size: `small` (84 bytes) and `big` (full-size).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    /// Small probes.
    pub small: u32,
    /// Full-size probes.
    pub big: u32,
}

impl Sizes {
    /// Both sizes together.
    pub fn total(&self) -> u32 {
        self.small + self.big
    }
}

/// One peer's encapsulated traffic as seen on this node's underlay interface in a round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerFlow {
    /// The peer node.
    pub peer: NodeName,
    /// The peer's underlay address.
    pub peer_ip: Ipv4Addr,
    /// Encapsulated packets sent to the peer during the round window.
    pub packets_out: u32,
    /// Their bytes (outer IP length).
    pub bytes_out: u64,
    /// Encapsulated packets received from the peer.
    pub packets_in: u32,
    /// Their bytes.
    pub bytes_in: u64,
    /// Probe requests of this round leaving toward the peer.
    pub requests_out: Sizes,
    /// Probe requests of this round arriving from the peer.
    pub requests_in: Sizes,
    /// Probe replies leaving toward the peer.
    pub replies_out: Sizes,
    /// Probe replies arriving from the peer.
    pub replies_in: Sizes,
}

/// A round's capture on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureSummary {
    /// The underlay interface captured on (found from the node IP).
    pub interface: String,
    /// The overlay's UDP port (the kernel filter's only port).
    pub port: u16,
    /// Per peer, only peers with traffic or planned probes.
    pub peers: Vec<PeerFlow>,
}

impl PeerFlow {
    /// An empty flow with `peer`.
    pub fn new(peer: NodeName, peer_ip: Ipv4Addr) -> Self {
        Self {
            peer,
            peer_ip,
            packets_out: 0,
            bytes_out: 0,
            packets_in: 0,
            bytes_in: 0,
            requests_out: Sizes::default(),
            requests_in: Sizes::default(),
            replies_out: Sizes::default(),
            replies_in: Sizes::default(),
        }
    }
}

impl CaptureSummary {
    /// The flow with `peer`, if any traffic or probe was planned.
    pub fn peer(&self, peer: &str) -> Option<&PeerFlow> {
        self.peers.iter().find(|p| p.peer.as_str() == peer)
    }
}

/// One captured frame (truncated to the capture's snap length).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapturedPacket {
    /// Capture time, microseconds since the Unix epoch.
    pub at_us: u64,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// The other end's underlay address.
    pub peer_ip: Ipv4Addr,
    /// The captured bytes, hex.
    pub hex: String,
}

/// Hex encoding for packet bytes in JSON.
pub fn to_hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for byte in b {
        s.push(DIGITS[usize::from(byte >> 4)] as char);
        s.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    s
}

/// Decodes [`to_hex`]; `None` on odd length or a non-hex digit.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    b.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// A classic pcap file (LINKTYPE_ETHERNET, microsecond timestamps) of these packets, as
/// tcpdump and Wireshark read it. Packets whose hex does not decode are skipped.
pub fn pcap(packets: &[CapturedPacket], snaplen: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + packets.len() * 200);
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&snaplen.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
    for p in packets {
        let Some(data) = from_hex(&p.hex) else {
            continue;
        };
        out.extend_from_slice(&((p.at_us / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((p.at_us % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&p.orig_len.max(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let b = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(to_hex(&b), "00017f80ff");
        assert_eq!(from_hex("00017f80ff").as_deref(), Some(&b[..]));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
    }

    #[test]
    fn pcap_layout() {
        let p = CapturedPacket {
            at_us: 1_500_000,
            orig_len: 1514,
            peer_ip: Ipv4Addr::LOCALHOST,
            hex: to_hex(&[0xaa; 4]),
        };
        let f = pcap(&[p], 160);
        assert_eq!(f.len(), 24 + 16 + 4);
        assert_eq!(&f[0..4], &0xa1b2_c3d4u32.to_le_bytes());
        assert_eq!(&f[24..28], &1u32.to_le_bytes(), "seconds");
        assert_eq!(&f[28..32], &500_000u32.to_le_bytes(), "microseconds");
        assert_eq!(&f[32..36], &4u32.to_le_bytes(), "captured length");
        assert_eq!(&f[36..40], &1514u32.to_le_bytes(), "length on the wire");
    }
}
