//! Helpers shared by the sandbox tests.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different subset"
)]

use std::ops::{Deref, DerefMut};
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use meshprobe_core::{CellState, CheckReport};
use meshprobe_sandbox::lab::{Lab, LabSpec};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshprobe");

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Labs bigger than this run alone in their test binary: a 16-node lab's 32 agents and
/// the small labs of the tests running beside it overload two cores in a debug build.
const SHARED_LAB_NODES: usize = 6;

static LABS: RwLock<()> = RwLock::new(());

enum Turn {
    Shared(#[allow(dead_code, reason = "held, not read")] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code, reason = "held, not read")] RwLockWriteGuard<'static, ()>),
}

/// A test's lab, and its turn on the machine (released after the lab is torn down).
pub struct TestLab {
    lab: Lab,
    _turn: Turn,
}

impl Deref for TestLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl DerefMut for TestLab {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

/// Whether `nft` is here, for the kinds built with nftables (`loss` at the switch,
/// `nft-host-firewall`). CI installs it, so there its absence fails the test; elsewhere the
/// test (or the kind) is skipped, and says so.
#[allow(dead_code)]
pub fn nft_here() -> bool {
    let here = std::process::Command::new("nft").arg("-v").output().is_ok();
    if !here {
        assert!(std::env::var_os("CI").is_none(), "CI must install nftables");
        eprintln!("no nft on this machine: nftables kinds (loss, nft-host-firewall) skipped");
    }
    here
}

/// A lab of `nodes` with the mesh running, or `None` when lab tests are skipped.
/// Without root this fails, unless MESHPROBE_SKIP_LAB_TESTS=1 says to skip.
pub fn lab_or_skip(nodes: usize) -> Option<TestLab> {
    lab_with(nodes, false, false)
}

/// [`lab_or_skip`], with the fake Kubernetes API and the coordinator discovering from it.
pub fn kube_lab_or_skip(nodes: usize) -> Option<TestLab> {
    lab_with(nodes, true, false)
}

/// [`lab_or_skip`], with the pod agents started with the coordinator's URL (through the
/// node's masquerade) instead of their relay's.
pub fn direct_lab_or_skip(nodes: usize) -> Option<TestLab> {
    lab_with(nodes, false, true)
}

fn lab_with(nodes: usize, kube_api: bool, pod_agents_direct: bool) -> Option<TestLab> {
    if !is_root() {
        if std::env::var_os("MESHPROBE_SKIP_LAB_TESTS").is_some() {
            eprintln!("skipped: lab tests need root");
            return None;
        }
        panic!(
            "lab tests need root (network namespaces); set MESHPROBE_SKIP_LAB_TESTS=1 to skip them"
        );
    }
    let mut spec = LabSpec::new(nodes, BIN.into());
    spec.state_root = std::env::temp_dir().join("meshprobe-test-labs");
    spec.kube_api = kube_api;
    spec.pod_agents_direct = pod_agents_direct;
    // A panicking test poisons the lock; the next one may still run.
    let turn = if nodes > SHARED_LAB_NODES {
        Turn::Alone(LABS.write().unwrap_or_else(|p| p.into_inner()))
    } else {
        Turn::Shared(LABS.read().unwrap_or_else(|p| p.into_inner()))
    };
    let mut lab = Lab::up(spec).unwrap_or_else(|e| panic!("lab up: {e}"));
    lab.start_mesh().unwrap_or_else(|e| panic!("mesh: {e}"));
    Some(TestLab { lab, _turn: turn })
}

/// Runs `meshprobe check --output json [extra...]` from the control namespace.
pub fn run_check(lab: &Lab, extra: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.plan().ctl_ns(),
            BIN,
            "check",
            "--output",
            "json",
            "--timeout",
            "30s",
        ])
        .envs(lab.client_env())
        .args(extra)
        .output()
        .expect("run check")
}

/// Runs `meshprobe check --output json` from the control namespace.
pub fn check(lab: &Lab) -> (i32, CheckReport) {
    let out = run_check(lab, &[]);
    let code = out.status.code().unwrap_or(-1);
    let report: CheckReport = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check exited {code} without a JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // No silent NOT HEALTHY, in every sandbox test: each failing cell is claimed by a
    // finding.
    let unclaimed = unclaimed(&report);
    assert!(
        unclaimed.is_empty(),
        "round {}: failing cells no finding claims: {unclaimed:?}\nfindings: {:#?}",
        report.round,
        report.findings
    );
    (code, report)
}

/// Checks until healthy (agents may need a moment to reconnect after a heal).
pub fn check_until_healthy(lab: &Lab, within: Duration) -> CheckReport {
    let until = Instant::now() + within;
    loop {
        let (code, r) = check(lab);
        if code == 0 && r.healthy {
            return r;
        }
        if Instant::now() > until {
            panic!(
                "not healthy after {within:?}:\n{}\nfindings: {:#?}",
                not_ok(&r).join("\n"),
                r.findings
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every cell that is not ok, in words.
pub fn not_ok(r: &CheckReport) -> Vec<String> {
    let mut v = Vec::new();
    for (layer, m) in &r.layers {
        for (src, dst, c) in m.iter() {
            if c.state != CellState::Ok {
                v.push(format!(
                    "{layer} {src}->{dst}: {:?} {:?} {:?}",
                    c.state, c.loss_pct, c.detail
                ));
            }
        }
    }
    v
}

/// A seed for random choices: MESHPROBE_TEST_SEED, or the clock (printed, to reproduce).
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("MESHPROBE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: MESHPROBE_TEST_SEED={seed}");
    seed
}

/// Failing cells of the report that no finding lists in its `cells`.
pub fn unclaimed(r: &CheckReport) -> Vec<String> {
    let claimed: std::collections::BTreeSet<(String, String, String)> = r
        .findings
        .iter()
        .flat_map(|f| &f.cells)
        .map(|c| (c.layer.to_string(), c.from.to_string(), c.to.clone()))
        .collect();
    let mut v = Vec::new();
    for (layer, m) in &r.layers {
        for (src, dst, c) in m.iter() {
            let key = (layer.to_string(), src.to_owned(), dst.to_owned());
            if c.state == CellState::Fail && !claimed.contains(&key) {
                v.push(format!("{layer} {src}->{dst}"));
            }
        }
    }
    v
}
