//! Benchmark: wall time of `meshprobe check` on an 8-node sandbox, and the agents' peak
//! RSS. Needs root. Run with `cargo bench --bench check` (release build); set
//! MESHPROBE_BENCH_NODES / MESHPROBE_BENCH_RUNS to change the size and the repetitions.
//!
//! Aims: a healthy 8-node check under 1 s, a check under a fault at most 2x the healthy
//! one (issue 9); every agent under 20 MB RSS (issue 2).

use std::process::Command;
use std::time::{Duration, Instant};

use meshprobe_sandbox::Fault;
use meshprobe_sandbox::lab::{Lab, LabSpec};

mod common;
use common::{cpu_seconds, env_or, peak_rss_kib};

const BIN: &str = env!("CARGO_BIN_EXE_meshprobe");

/// `meshprobe check --output json` from the control namespace.
fn run_check(ctl: &str, env: &[(&'static str, String)]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ctl, BIN, "check", "--output", "json"])
        .envs(env.iter().cloned())
        .output()
        .expect("run check")
}

/// Back-to-back rounds for 10 s (a busy overlay: every node pings every node's gateway and
/// pod, full-size too, 20 times a round): the agents' CPU while their capture sees it all.
fn busy_overlay(lab: &Lab, ctl: &str, url: &[(&'static str, String)]) {
    let agents = lab.pids("agent/");
    let before: Vec<f64> = agents.iter().map(|(_, p)| cpu_seconds(*p)).collect();
    let start = Instant::now();
    let (mut rounds, mut captured) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(10) {
        let out = run_check(ctl, url);
        rounds += 1;
        if let Ok(r) = serde_json::from_slice::<meshprobe_core::CheckReport>(&out.stdout) {
            captured += r
                .capture
                .values()
                .flat_map(|c| &c.peers)
                .map(|p| u64::from(p.packets_in + p.packets_out))
                .sum::<u64>();
        }
    }
    let wall = start.elapsed().as_secs_f64();
    for kind in ["host", "pod"] {
        let pct: Vec<f64> = agents
            .iter()
            .zip(&before)
            .filter(|((n, _), _)| n.ends_with(kind))
            .map(|((_, p), b)| (cpu_seconds(*p) - b) * 100.0 / wall)
            .collect();
        let max = pct.iter().copied().fold(0.0, f64::max);
        let mean = pct.iter().sum::<f64>() / pct.len().max(1) as f64;
        println!(
            "  busy overlay ({rounds} rounds in {wall:.0} s): {kind} agents' CPU mean {mean:.1}%, max {max:.1}% of one core"
        );
    }
    let nodes = lab.plan().nodes.len().max(1) as f64;
    println!(
        "  encapsulated packets each host agent's capture saw: {:.0}/s on average",
        captured as f64 / wall / nodes
    );
}

/// Runs `check` `runs` times; the wall times, sorted. `want` is the exit code every run
/// must give (0 healthy, 1 findings); a run that gives another is reported.
fn checks(ctl: &str, url: &[(&'static str, String)], runs: usize, want: i32) -> Vec<Duration> {
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let mut off = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let out = run_check(ctl, url);
        times.push(start.elapsed());
        if out.status.code() != Some(want) {
            off += 1;
        }
    }
    if off > 0 {
        println!("  ({off} of {runs} runs did not exit {want}!)");
    }
    times.sort();
    times
}

fn summary(what: &str, times: &[Duration], healthy_median_ms: f64) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = ms(times[times.len() / 2]);
    println!(
        "  {what}: median {median:.0} ms ({:.2}x healthy), min {:.0} ms, max {:.0} ms",
        median / healthy_median_ms,
        ms(times[0]),
        ms(times[times.len() - 1]),
    );
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` passes nothing. Either way
    // this is a measurement, not a test: it never runs under `cargo test`.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let nodes = env_or("MESHPROBE_BENCH_NODES", 8);
    let runs = env_or("MESHPROBE_BENCH_RUNS", 10);
    let mut spec = LabSpec::new(nodes, BIN.into());
    spec.state_root = std::env::temp_dir().join("meshprobe-bench-labs");
    let t = Instant::now();
    let mut lab = match Lab::up(spec) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench check: cannot build the lab: {e}");
            std::process::exit(2);
        }
    };
    let built = t.elapsed();
    if let Err(e) = lab.start_mesh() {
        eprintln!("bench check: mesh did not start: {e}");
        std::process::exit(2);
    }
    let meshed = t.elapsed() - built;
    let url = lab.client_env();
    let ctl = lab.plan().ctl_ns();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "meshprobe check on a {nodes}-node sandbox, {runs} runs each (lab up {:.2} s, mesh up {:.2} s)",
        built.as_secs_f64(),
        meshed.as_secs_f64()
    );
    // Issue 9: a healthy check, a check under a fault with a dead target, and a check with
    // one agent killed, each as its median and as a ratio to the healthy median.
    let healthy = checks(&ctl, &url, runs, 0);
    let healthy_median = ms(healthy[healthy.len() / 2]);
    summary("healthy", &healthy, healthy_median);
    let dead = Fault::DnsDown {
        pod: "coredns-b".into(),
    };
    lab.inject(dead.clone()).expect("inject dns-down");
    summary(
        "a dead target (dns-down on coredns-b)",
        &checks(&ctl, &url, runs, 1),
        healthy_median,
    );
    lab.heal(&dead).expect("heal dns-down");
    let _ = checks(&ctl, &url, 1, 0);
    let killed = format!("agent/n{nodes}/pod");
    lab.stop_process(&killed).expect("kill an agent");
    // Past the coordinator's silent_after (3 s): the agent is known silent.
    std::thread::sleep(Duration::from_secs(4));
    summary(
        &format!("one agent killed ({killed})"),
        &checks(&ctl, &url, runs, 1),
        healthy_median,
    );
    if let Err(e) = lab.down() {
        eprintln!("bench check: cleanup: {e}");
    }
    // The footprint and busy-overlay figures, on a fresh mesh.
    let mut spec = LabSpec::new(nodes, BIN.into());
    spec.state_root = std::env::temp_dir().join("meshprobe-bench-labs");
    let mut lab = Lab::up(spec).expect("lab up");
    lab.start_mesh().expect("mesh");
    let (ctl, url) = (lab.plan().ctl_ns(), lab.client_env());
    let _ = checks(&ctl, &url, 3, 0);
    for kind in ["host", "pod"] {
        let rss: Vec<u64> = lab
            .pids("agent/")
            .into_iter()
            .filter(|(name, _)| name.ends_with(kind))
            .filter_map(|(_, pid)| peak_rss_kib(pid))
            .collect();
        let max = rss.iter().max().copied().unwrap_or(0);
        let mean = rss.iter().sum::<u64>() / rss.len().max(1) as u64;
        println!(
            "  {kind} agents' peak RSS: max {:.1} MB, mean {:.1} MB ({} agents)",
            max as f64 / 1024.0,
            mean as f64 / 1024.0,
            rss.len()
        );
    }
    busy_overlay(&lab, &ctl, &url);
    if let Some((_, pid)) = lab.pids("coordinator").first() {
        println!(
            "  coordinator peak RSS: {:.1} MB",
            peak_rss_kib(*pid).unwrap_or(0) as f64 / 1024.0
        );
    }
    if let Err(e) = lab.down() {
        eprintln!("bench check: cleanup: {e}");
    }
}
