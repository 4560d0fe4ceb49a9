//! What the benchmarks share: reading another process's CPU time and peak memory.

#![allow(dead_code, unreachable_pub)]

/// VmHWM (peak resident set) of a process, in KiB.
pub fn peak_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: i32) -> f64 {
    stat_seconds(pid, false)
}

/// CPU seconds a process has used, with those of the children it waited for (the
/// commands an agent runs to read its node's evidence).
pub fn cpu_seconds_with_children(pid: i32) -> f64 {
    stat_seconds(pid, true)
}

fn stat_seconds(pid: i32, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<u64> = stat[close + 2..]
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 to 17 of the whole line: utime, stime, cutime, cstime, in USER_HZ (100
    // on Linux).
    let field = |i: usize| f.get(i).copied().unwrap_or(0);
    let own = field(11) + field(12);
    let waited = if children { field(13) + field(14) } else { 0 };
    (own + waited) as f64 / 100.0
}

/// A whole-number setting from the environment (`MESHPROBE_BENCH_*`), else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
