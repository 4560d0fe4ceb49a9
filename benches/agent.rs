//! Benchmark: what one real host agent costs with a 5,000-node plan, in continuous mode.
//!
//! The real `meshprobe probe` binary runs as node n17 of a synthetic 5,000-node cluster
//! (so its plan samples 32 peers), against a real coordinator running rounds every 10 s.
//! Both live in a network namespace this benchmark creates, where every node and pod
//! address is local (`ip route add local 10.0.0.0/8 dev lo`, and 172.16.0.0/12): the
//! agent's pings, TCP connects, DNS queries and HTTP requests are answered or refused by
//! that namespace's own kernel, and nothing leaves it. It reads its node's evidence
//! (`ip`, `iptables`, sysctls) and captures on its node interface, as it would on a node.
//!
//! Prints the agent's CPU as a share of one core over the run, and its peak RSS.
//! `cargo bench --bench agent` (root; release); `MESHPROBE_BENCH_SECONDS` sets the run
//! (default 60), `MESHPROBE_BENCH_NODES` the cluster (default 5,000).
//!
//! Aim (issue 14): under 1% of a core and under 30 MB at a 10 s interval.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cpu_seconds, cpu_seconds_with_children, env_or, peak_rss_kib};

const BIN: &str = env!("CARGO_BIN_EXE_meshprobe");

/// The namespace and the processes in it: killed by pid and removed by exact name.
struct Bench {
    ns: String,
    dir: std::path::PathBuf,
    children: Vec<Child>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("bench agent: needs root (a network namespace of its own); skipped");
        return;
    }
    let nodes: usize = env_or("MESHPROBE_BENCH_NODES", 5000);
    let seconds = env_or("MESHPROBE_BENCH_SECONDS", 60);
    let ns = format!("mpbench-agent-{}", std::process::id());
    let dir = std::env::temp_dir().join(&ns);
    std::fs::create_dir_all(dir.join("state")).expect("temp dir");
    let mut bench = Bench {
        ns: ns.clone(),
        dir: dir.clone(),
        children: Vec::new(),
    };
    // n17's node IP (synth: 10.1.0.16) on an interface of its own (one end of a veth pair
    // inside the namespace), for the capture.
    let ok = ip(&["netns", "add", &ns])
        // A node's NIC MTU, not loopback's 64 KiB: the agent sends its full-size underlay
        // probes at the kernel's MTU for the route, and the routes here go through `lo`.
        && ip(&["-n", &ns, "link", "set", "lo", "mtu", "1500"])
        && ip(&["-n", &ns, "link", "set", "lo", "up"])
        && ip(&["-n", &ns, "route", "add", "local", "10.0.0.0/8", "dev", "lo"])
        && ip(&["-n", &ns, "route", "add", "local", "172.16.0.0/12", "dev", "lo"])
        && ip(&["-n", &ns, "link", "add", "mpb0", "type", "veth", "peer", "name", "mpb1"])
        && ip(&["-n", &ns, "link", "set", "mpb1", "up"])
        && ip(&["-n", &ns, "addr", "add", "10.1.0.16/32", "dev", "mpb0"])
        && ip(&["-n", &ns, "link", "set", "mpb0", "up"]);
    if !ok {
        eprintln!("bench agent: cannot set up namespace {ns}");
        drop(bench);
        std::process::exit(2);
    }
    let inventory = dir.join("inventory.yaml");
    std::fs::write(&inventory, meshprobe_diagnosis::synth::inventory(nodes)).expect("inventory");
    let in_ns = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns, BIN]).args(args);
        c.env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let coordinator = in_ns(&[
        "coordinator",
        "--listen",
        "127.0.0.1:7070",
        "--insecure-no-auth",
        "--interval",
        "10s",
    ])
    .arg("--inventory")
    .arg(&inventory)
    .spawn()
    .expect("start the coordinator");
    bench.children.push(coordinator);
    let agent = in_ns(&[
        "probe",
        "--node",
        "n17",
        "--coordinator",
        "http://127.0.0.1:7070",
        "--relay-listen",
        "off",
    ])
    .arg("--state-dir")
    .arg(dir.join("state"))
    .spawn()
    .expect("start the agent");
    // `ip netns exec` execs the binary: the child's pid is the agent's.
    let pid = agent.id() as i32;
    bench.children.push(agent);
    // The first round plans 10,000 agents; start measuring once the agent has run one.
    std::thread::sleep(Duration::from_secs(12));
    let (cpu0, all0, t0) = (
        cpu_seconds(pid),
        cpu_seconds_with_children(pid),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(seconds));
    let cpu = cpu_seconds(pid) - cpu0;
    let all = cpu_seconds_with_children(pid) - all0;
    let elapsed = t0.elapsed().as_secs_f64();
    let rss = peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
    let plan = std::fs::read_dir(dir.join("state"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    println!(
        "agent: host agent of n17 in a {nodes}-node cluster, rounds every 10 s, measured over {elapsed:.0} s"
    );
    println!(
        "  CPU {cpu:.2} s = {:.2}% of one core ({:.2}% with the evidence commands it runs); peak RSS {rss:.1} MiB; its saved plan {plan} bytes",
        cpu / elapsed * 100.0,
        all / elapsed * 100.0
    );
    drop(bench);
}
