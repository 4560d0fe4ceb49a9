//! The lab's processes: started inside a namespace, recorded by PID and start time, and
//! stopped by PID only after checking it is still the same process.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde::{Deserialize, Serialize};

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcSpec {
    /// The lab's name for it (`coordinator`, `agent/n1/host`, `pod/coredns-a`, ...).
    pub name: String,
    /// Namespace it runs in.
    pub ns: String,
    /// Arguments to the meshprobe binary.
    pub args: Vec<String>,
}

/// A started process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    /// What was started.
    pub spec: ProcSpec,
    /// Its PID.
    pub pid: i32,
    /// Its start time in clock ticks since boot (field 22 of /proc/PID/stat): with the
    /// PID, it identifies the process even if the PID is later reused.
    pub start_time: u64,
}

/// Starts `exe spec.args...` in `spec.ns`, output appended to `log`. The process gets its
/// own process group, so a Ctrl-C meant for the caller does not reach it; the caller
/// stops it by PID.
pub fn spawn(exe: &Path, spec: &ProcSpec, log: &Path) -> io::Result<(Child, ProcRecord)> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &spec.ns])
        .arg(exe)
        .args(&spec.args);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.env(
        "RUST_LOG",
        std::env::var("MESHPROBE_LAB_LOG").unwrap_or_else(|_| "info".to_owned()),
    );
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    let start_time = start_time(pid).unwrap_or(0);
    Ok((
        child,
        ProcRecord {
            spec: spec.clone(),
            pid,
            start_time,
        },
    ))
}

/// Field 22 (starttime) of /proc/PID/stat.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the recorded process is still running (same PID and start time).
pub fn alive(rec: &ProcRecord) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", rec.pid)) {
        // A zombie is not running.
        Ok(stat)
            if stat
                .rfind(')')
                .is_some_and(|i| stat[i..].starts_with(") Z")) =>
        {
            false
        }
        Ok(_) => start_time(rec.pid) == Some(rec.start_time),
        Err(_) => false,
    }
}

/// Stops the recorded process: SIGTERM, then SIGKILL after `grace`. Does nothing if the
/// PID now belongs to another process. Reaps it when `child` is ours.
pub fn stop(rec: &ProcRecord, mut child: Option<&mut Child>, grace: Duration) {
    if alive(rec)
        && let Some(pid) = Pid::from_raw(rec.pid)
    {
        let _ = kill_process(pid, Signal::TERM);
        let until = Instant::now() + grace;
        while alive(rec) && Instant::now() < until {
            if let Some(c) = child.as_deref_mut()
                && matches!(c.try_wait(), Ok(Some(_)))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(rec) {
            let _ = kill_process(pid, Signal::KILL);
        }
    }
    if let Some(c) = child {
        let _ = c.wait();
    }
}
