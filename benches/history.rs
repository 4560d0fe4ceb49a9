//! Benchmark: what the coordinator's history costs, per round, at 8 and at 1,000 nodes
//! (synthetic rounds through the real planner and report builder, one node broken), and
//! how long recording a round takes; and the series `/metrics` exposes at each size. Run
//! with `cargo bench --bench history`.

use std::time::Instant;

use meshprobe_coordinator::history::{DB_FILE, History, Retention};
use meshprobe_core::plan::PlanSettings;
use meshprobe_diagnosis::synth::{self, Fault};

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    const ROUNDS: u64 = 10;
    println!("history: {ROUNDS} rounds recorded per size, one node's forwarding broken");
    for n in [8usize, 1000] {
        let topo = synth::topology(n);
        let report = synth::report(&topo, &[Fault::ForwardOff(1)], 1, &PlanSettings::default());
        let json = serde_json::to_vec(&report).map(|v| v.len()).unwrap_or(0);
        let cells = {
            let (ok, fail, unknown) = report.counts();
            ok + fail + unknown
        };
        let dir = std::env::temp_dir().join(format!("meshprobe-bench-history-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        let h = History::open(Some(&dir), Retention::default()).expect("open");
        let t = Instant::now();
        for round in 1..=ROUNDS {
            let mut r = report.clone();
            r.round = round;
            h.record(&r, round * 30_000).expect("record");
        }
        let per = t.elapsed() / ROUNDS as u32;
        drop(h);
        // Checkpointed: the WAL folded into the file.
        let h = History::open(Some(&dir), Retention::default()).expect("reopen");
        drop(h);
        let bytes = dir_bytes(&dir);
        println!(
            "  {n:>5} nodes: {cells} cells, report JSON {:.1} KiB, on disk {:.1} KiB per round ({}), recording {:.1} ms per round",
            json as f64 / 1024.0,
            bytes as f64 / ROUNDS as f64 / 1024.0,
            dir.join(DB_FILE).display(),
            per.as_secs_f64() * 1000.0
        );
        let _ = std::fs::remove_dir_all(&dir);
        let m = meshprobe_coordinator::metrics::Metrics::default();
        m.observe(&report, true);
        let series = m
            .encode()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        println!("         /metrics: {series} series");
    }
}
