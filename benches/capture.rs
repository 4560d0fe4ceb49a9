//! Benchmark: decode throughput of the capture's packet decoder, over a generated pcap
//! file (VXLAN frames as the kernel filter hands them over: truncated to the snap length,
//! a mix of meshprobe probes, replies and other pod traffic). Run with
//! `cargo bench --bench capture`; MESHPROBE_BENCH_PACKETS changes the count.

use std::net::Ipv4Addr;
use std::time::Instant;

use meshprobe_core::capture::{CapturedPacket, pcap, to_hex};
use meshprobe_probe::capture::{SNAPLEN, decode};
use meshprobe_probe::icmp::MAGIC;

/// One VXLAN frame: outer IPv4/UDP 8472, inner IPv4 carrying ICMP (a probe when `probe`)
/// or TCP, of `inner_len` bytes, truncated to the snap length as captured.
fn frame(
    src: [u8; 4],
    dst: [u8; 4],
    round: u32,
    probe: bool,
    reply: bool,
    inner_len: u16,
) -> Vec<u8> {
    let mut l4 = vec![0u8; usize::from(inner_len) - 20];
    if probe {
        l4[0] = if reply { 0 } else { 8 };
        l4[8..12].copy_from_slice(&MAGIC);
        l4[16..20].copy_from_slice(&round.to_be_bytes());
    }
    let proto = if probe { 1 } else { 6 };
    let mut inner = vec![0u8; 12];
    inner.extend_from_slice(&[
        0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 10, 42, 1, 10, 10, 42, 2, 10,
    ]);
    inner[16..18].copy_from_slice(&inner_len.to_be_bytes());
    inner.extend_from_slice(&l4);
    let mut out = vec![0u8; 12];
    out.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
    let total = (20 + 8 + 8 + inner.len()) as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&[0x9a, 0x5c, 0x21, 0x18]);
    out.extend_from_slice(&((8 + 8 + inner.len()) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x08, 0, 0, 0, 0, 0, 1, 0]);
    out.extend_from_slice(&inner);
    out.truncate(SNAPLEN as usize);
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("MESHPROBE_BENCH_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut rng = fastrand::Rng::with_seed(1);
    let packets: Vec<CapturedPacket> = (0..n)
        .map(|i| {
            let probe = rng.u8(..) < 200;
            let f = frame(
                [192, 168, 77, 11],
                [192, 168, 77, 10 + rng.u8(2..16)],
                7,
                probe,
                rng.bool(),
                if rng.u8(..) < 64 { 1450 } else { 84 },
            );
            CapturedPacket {
                at_us: i as u64,
                orig_len: 0,
                peer_ip: Ipv4Addr::UNSPECIFIED,
                hex: to_hex(&f),
            }
        })
        .collect();
    let path = std::env::temp_dir().join("meshprobe-bench-capture.pcap");
    let bytes = pcap(&packets, SNAPLEN);
    if let Err(e) = std::fs::write(&path, &bytes) {
        eprintln!("bench capture: cannot write {}: {e}", path.display());
        std::process::exit(2);
    }
    drop(packets);
    // Read the file back as a capture tool would: 24-byte header, 16-byte record headers.
    let file = std::fs::read(&path).unwrap_or_default();
    let mut frames: Vec<&[u8]> = Vec::with_capacity(n);
    let mut at = 24;
    while at + 16 <= file.len() {
        let len =
            u32::from_le_bytes([file[at + 8], file[at + 9], file[at + 10], file[at + 11]]) as usize;
        frames.push(&file[at + 16..at + 16 + len]);
        at += 16 + len;
    }
    let mut best = f64::MAX;
    let mut probes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        probes = 0;
        for f in &frames {
            if let Some(d) = decode(f, 8472)
                && d.inner.and_then(|i| i.probe).is_some()
            {
                probes += 1;
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_file(&path);
    println!(
        "decode: {} frames from a {:.0} MB pcap, best of 5",
        frames.len(),
        file.len() as f64 / 1e6
    );
    println!(
        "  {:.1} M frames/s ({:.0} ns per frame); {probes} probes recognised",
        frames.len() as f64 / best / 1e6,
        best * 1e9 / frames.len() as f64
    );
}
