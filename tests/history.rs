//! Issue 12: the coordinator's history in the sandbox. Findings keep their first sighting
//! across a coordinator restart, round numbers go on, and a kill -9 while rounds are being
//! written leaves a database that `sqlite3`'s `PRAGMA integrity_check` calls whole.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{BIN, check, lab_or_skip};
use meshprobe_sandbox::Fault;

/// `GET /v1/findings?since=0` through the lab.
fn findings(lab: &meshprobe_sandbox::Lab) -> meshprobe_core::api::FindingsAnswer {
    let (status, body) = lab
        .coordinator_get("/v1/findings?since=0", Duration::from_secs(5))
        .expect("GET /v1/findings");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a findings answer")
}

/// `PRAGMA integrity_check` by Debian's `sqlite3` (CI installs it); without it, outside
/// CI, by the same SQLite compiled into meshprobe.
fn integrity(db: &std::path::Path) -> String {
    let out = match Command::new("sqlite3")
        .arg(db)
        .arg("PRAGMA integrity_check;")
        .output()
    {
        Ok(o) => o,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("sqlite3 is not installed ({e}); checking with the bundled SQLite");
            let dir = db.parent().expect("a directory");
            return meshprobe_coordinator::history::History::open(Some(dir), Default::default())
                .and_then(|h| h.integrity())
                .expect("integrity check");
        }
        Err(e) => panic!("CI must install sqlite3: {e}"),
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn history_survives_a_restart_and_a_kill_9_mid_write() {
    let Some(mut lab) = lab_or_skip(3) else {
        return;
    };
    let (_, healthy) = check(&lab);
    assert!(healthy.healthy, "{:?}", healthy.findings);
    let fault = Fault::IpForwardOff { node: "n2".into() };
    lab.inject(fault.clone()).expect("inject");
    let (code, broken) = check(&lab);
    assert_eq!(code, 1);
    let before = findings(&lab);
    let seen = before
        .findings
        .iter()
        .find(|f| f.cause.as_str() == "ip-forward-disabled")
        .unwrap_or_else(|| panic!("{before:?}"))
        .clone();
    assert_eq!(seen.last_round, broken.round);

    // A baseline of the healthy round, then a restart.
    let out = common::run_check(&lab, &["--save-baseline", "before-change"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.inject(Fault::CoordinatorRestart).expect("restart");
    lab.wait_agents(Duration::from_secs(15))
        .expect("agents back");
    let after = findings(&lab);
    let kept = after
        .findings
        .iter()
        .find(|f| f.cause == seen.cause && f.nodes == seen.nodes)
        .unwrap_or_else(|| panic!("the finding survived the restart: {after:?}"));
    assert_eq!(kept.first_round, seen.first_round);
    assert_eq!(kept.first_seen_ms, seen.first_seen_ms);
    let (_, again) = check(&lab);
    assert!(
        again.round > broken.round,
        "round numbers go on after a restart: {} after {}",
        again.round,
        broken.round
    );

    // Before and after: heal, and compare with the broken baseline.
    lab.heal(&fault).expect("heal");
    let out = common::run_check(&lab, &["--baseline", "before-change"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        v["baseline"]["recoveredCount"].as_u64().unwrap_or(0) > 0,
        "healing n2 recovers its cells: {}",
        v["baseline"]
    );
    assert_eq!(
        v["baseline"]["goneFindings"][0]["cause"], "ip-forward-disabled",
        "{}",
        v["baseline"]
    );
    // The diff names its baseline and when it was saved; `meshprobe baselines` lists it.
    assert_eq!(v["baseline"]["baselineName"], "before-change");
    let saved_ms = v["baseline"]["baselineSavedMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("the saved time: {}", v["baseline"]));
    let listed = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.plan().ctl_ns(),
            BIN,
            "baselines",
            "--json",
        ])
        .envs(lab.client_env())
        .output()
        .expect("meshprobe baselines");
    assert_eq!(
        listed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: meshprobe_core::api::BaselinesAnswer =
        serde_json::from_slice(&listed.stdout).expect("a baselines answer");
    let entry = listed
        .baselines
        .iter()
        .find(|b| b.name == "before-change")
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(entry.saved_ms, saved_ms);
    assert_eq!(
        entry.round,
        v["baseline"]["baselineRound"].as_u64().unwrap_or(0)
    );

    // kill -9 while rounds are written back to back, then the file is whole.
    let hammer = {
        let env = lab.client_env();
        let ns = lab.plan().ctl_ns();
        std::thread::spawn(move || {
            for _ in 0..6 {
                let _ = Command::new("ip")
                    .args(["netns", "exec", &ns, BIN, "check", "--output", "json"])
                    .envs(env.iter().cloned())
                    .output();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let (_, pid) = lab
        .pids("coordinator")
        .into_iter()
        .next()
        .expect("coordinator pid");
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let _ = hammer.join();
    let db = lab.data_dir().join(meshprobe_coordinator::history::DB_FILE);
    assert_eq!(integrity(&db), "ok");
    lab.inject(Fault::CoordinatorRestart)
        .expect("restart after kill -9");
    lab.wait_agents(Duration::from_secs(15))
        .expect("agents back");
    assert!(
        findings(&lab)
            .findings
            .iter()
            .any(|f| f.cause == seen.cause && f.first_round == seen.first_round),
        "the history outlived the kill"
    );
}
