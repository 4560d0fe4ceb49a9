//! Issue 22, row 7: on a full disk, history writes failed with a log line only, and after a
//! restart the round numbers the old process had used were handed out again. Root only: a
//! 2 MiB tmpfs stands in for the disk, mounted and unmounted by its exact path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshprobe_coordinator::history::{History, Retention};
use meshprobe_coordinator::rounds::RoundStatus;
use meshprobe_coordinator::{Coordinator, Settings, StaticTopology};
use meshprobe_core::Topology;

const INVENTORY: &str = "
cluster: {name: t}
nodes:
  - {name: n1, internalIP: 192.168.77.11, podCIDR: 10.42.1.0/24}
  - {name: n2, internalIP: 192.168.77.12, podCIDR: 10.42.2.0/24}
";

/// A small tmpfs at `path`, unmounted (and its mount point removed) when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: PathBuf) -> Option<Self> {
        std::fs::create_dir_all(&path).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&path);
            return None;
        }
        Some(Self(path))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Writes until the file system says it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
    path
}

fn coordinator(h: Arc<History>) -> Arc<Coordinator> {
    let settings = Settings {
        silent_after: Duration::from_millis(50),
        history: Some(h),
        ..Settings::default()
    };
    let topo = Topology::from_inventory(INVENTORY).expect("inventory");
    Coordinator::new(Box::new(StaticTopology::new(topo)), settings)
}

async fn run_round(c: &Arc<Coordinator>) -> u64 {
    let id = c.trigger();
    let status = c.wait_for(id, Duration::from_secs(10)).await;
    assert!(
        matches!(status, RoundStatus::Done(_)),
        "round {id} did not finish"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_said_and_no_round_number_is_handed_out_twice() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a small disk needs root");
        return;
    }
    let at = std::env::temp_dir().join(format!("meshprobe-full-disk-{}", std::process::id()));
    let Some(disk) = SmallDisk::mount(at) else {
        eprintln!("skipped: cannot mount a tmpfs");
        return;
    };
    let h = Arc::new(History::open(Some(&disk.0), Retention::default()).expect("open"));
    let c = coordinator(Arc::clone(&h));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = run_round(&c).await;
    assert!(c.status_answer().history_error.is_none());
    let filler = fill(&disk.0);
    let mut last = first;
    for _ in 0..3 {
        last = run_round(&c).await;
    }
    let status = c.status_answer();
    let fault = status
        .history_error
        .expect("the failed writes are in /v1/status");
    assert_eq!(fault.op, "record");
    assert!(fault.failures >= 1, "{fault:?}");
    let metrics = c.metrics_text();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("meshprobe_history_errors_total{op=\"record\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    // The rounds after the first were never recorded: a restart numbers on past them.
    drop(c);
    drop(h);
    std::fs::remove_file(&filler).expect("free the disk");
    let h = Arc::new(History::open(Some(&disk.0), Retention::default()).expect("reopen"));
    let c = coordinator(Arc::clone(&h));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let next = run_round(&c).await;
    assert!(
        next > last,
        "round {next} after a restart; the old process had handed out up to {last}"
    );
    assert!(
        c.status_answer().history_error.is_none(),
        "a good write clears it"
    );
    drop(c);
    drop(h);
    drop(disk);
}
