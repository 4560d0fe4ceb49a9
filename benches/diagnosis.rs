//! Benchmark: diagnosis of a synthetic 5,000-node cluster (all layers) with 3 injected
//! faults. Reports wall time of `diagnose` and the process's peak RSS (which includes the
//! synthetic report itself). Run with `cargo bench --bench diagnosis`;
//! MESHPROBE_BENCH_NODES changes the size.
//!
//! Aim (issue 3): under 1 s and under 1 GB.

use std::time::Instant;

use meshprobe_core::plan::PlanSettings;
use meshprobe_diagnosis::synth::{self, Fault};
use meshprobe_diagnosis::{Settings, diagnose};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("MESHPROBE_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let settings = PlanSettings::default();
    let t0 = Instant::now();
    let topo = synth::topology(n);
    let faults = [
        Fault::VxlanIn(n / 3),
        Fault::ForwardOff(n / 2),
        Fault::Mtu(n - 2),
    ];
    let report = synth::report(&topo, &faults, 1, &settings);
    let built = t0.elapsed();
    let cells: usize = report.layers.values().map(|m| m.len()).sum();
    let matrix_mib = report
        .layers
        .values()
        .map(|m| m.heap_bytes())
        .sum::<usize>() as f64
        / (1024.0 * 1024.0);
    let rss_before = peak_rss_mib();

    let mut times = Vec::new();
    let mut found = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let d = diagnose(&topo, &report, &[], &Settings::default());
        times.push(t.elapsed());
        found = d
            .findings
            .iter()
            .map(|f| {
                format!(
                    "{} {}",
                    f.cause,
                    f.nodes.first().map(|n| n.as_str()).unwrap_or("")
                )
            })
            .collect();
    }
    times.sort();
    println!(
        "diagnosis of a synthetic {n}-node cluster, {cells} cells over {} layers, 3 faults",
        report.layers.len()
    );
    println!(
        "  synthetic round built in {:.2} s (plans, results, matrices)",
        built.as_secs_f64()
    );
    println!(
        "  diagnose: min {:.0} ms, median {:.0} ms, max {:.0} ms (5 runs)",
        times[0].as_secs_f64() * 1000.0,
        times[2].as_secs_f64() * 1000.0,
        times[4].as_secs_f64() * 1000.0
    );
    println!(
        "  peak RSS: {:.0} MiB (after building the round: {:.0} MiB; its matrices hold {matrix_mib:.0} MiB)",
        peak_rss_mib(),
        rss_before
    );
    println!("  findings: {}", found.join(", "));
    let want = [
        format!("vxlan-blocked n{}", n / 3 + 1),
        format!("ip-forward-disabled n{}", n / 2 + 1),
        format!("mtu-mismatch n{}", n - 1),
    ];
    for w in want {
        if !found.contains(&w) {
            eprintln!("bench diagnosis: expected finding {w:?} missing");
            std::process::exit(1);
        }
    }
}
