//! Independence from the control plane, on the sandbox: with the coordinator down, agents
//! keep probing with their last plan (kept on disk) and buffer the results; when it comes
//! back they deliver them. Needs root, like `tests/lab.rs`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{check_until_healthy, lab_or_skip};
use meshprobe_sandbox::Fault;
use meshprobe_sandbox::exec::http_get;

#[test]
fn agents_probe_through_a_coordinator_outage_and_deliver_afterwards() {
    let Some(mut lab) = lab_or_skip(3) else {
        return;
    };
    check_until_healthy(&lab, Duration::from_secs(10));
    // Every agent kept its plan where a pod keeps its volume.
    for n in ["n1", "n2", "n3"] {
        for kind in ["host", "pod"] {
            let plan = lab
                .agent_state_dir(n, kind)
                .join(format!("plan-{kind}.json"));
            assert!(plan.exists(), "{} missing", plan.display());
        }
    }
    lab.inject(Fault::CoordinatorDown)
        .expect("stop the coordinator");
    std::thread::sleep(Duration::from_secs(6));
    lab.heal(&Fault::CoordinatorDown)
        .expect("start the coordinator");
    lab.wait_agents(Duration::from_secs(20))
        .expect("agents come back");

    // The restarted coordinator holds what the agents measured while it was away.
    let addr = SocketAddr::from((lab.plan().ctl_ip(), 7070));
    let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..40 {
        let (status, body) = http_get(
            &lab.plan().ctl_ns(),
            addr,
            "/v1/reports/offline",
            Duration::from_secs(2),
        )
        .expect("GET");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        per_agent.clear();
        for r in v["reports"].as_array().expect("reports") {
            assert!(
                r["offlineAtMs"].as_u64().is_some(),
                "an offline report carries its time: {r}"
            );
            assert!(
                !r["results"].as_array().expect("results").is_empty(),
                "an offline report has results"
            );
            *per_agent
                .entry(format!(
                    "{}/{}",
                    r["node"].as_str().unwrap_or(""),
                    r["kind"].as_str().unwrap_or("")
                ))
                .or_default() += 1;
        }
        if per_agent.len() == 6 && per_agent.values().all(|&c| c >= 3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(per_agent.len(), 6, "every agent delivers: {per_agent:?}");
    assert!(
        per_agent.values().all(|&c| c >= 3),
        "several rounds each while the coordinator was down: {per_agent:?}"
    );
    // And the mesh is whole again.
    check_until_healthy(&lab, Duration::from_secs(30));
}
