//! Independence from the control plane, on the sandbox: with the coordinator down, agents
//! keep probing with their last plan (kept on disk) and buffer the results; when it comes
//! back they deliver them; with discovery from the (fake) Kubernetes API, the API going
//! away mid-run changes nothing but a warning. Needs root, like `tests/lab.rs`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{check, check_until_healthy, kube_lab_or_skip, lab_or_skip};
use meshprobe_sandbox::Fault;

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
    assert_every_agent_delivered(&lab, 3);
    // And the mesh is whole again.
    check_until_healthy(&lab, Duration::from_secs(30));
}

/// Waits until every agent's reports made while the coordinator was away (at least `min`
/// rounds each) are at the coordinator.
fn assert_every_agent_delivered(lab: &meshprobe_sandbox::Lab, min: usize) {
    let want = lab.plan().nodes.len() * 2;
    let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..40 {
        per_agent.clear();
        // Every page, from the first.
        let mut reports = Vec::new();
        let mut path = "/v1/reports/offline?limit=16".to_owned();
        loop {
            let (status, body) = lab
                .coordinator_get(&path, Duration::from_secs(2))
                .expect("GET");
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            reports.extend(v["reports"].as_array().expect("reports").iter().cloned());
            match v["next"].as_u64() {
                Some(next) => path = format!("/v1/reports/offline?limit=16&after={next}"),
                None => break,
            }
        }
        for r in &reports {
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
        if per_agent.len() == want && per_agent.values().all(|&c| c >= min) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("not every agent delivered {min} offline rounds: {per_agent:?}");
}

const API_DOWN: &str = "Kubernetes API server is unreachable";

#[test]
fn discovery_survives_the_api_server_and_then_the_coordinator_going_away() {
    let Some(mut lab) = kube_lab_or_skip(3) else {
        return;
    };
    // The coordinator plans from the fake API's objects (nodes, CoreDNS and agent pods,
    // kube-dns, the opted-in NodePort and Ingress, flannel's ConfigMap): the same healthy
    // mesh the inventory gives.
    let r = check_until_healthy(&lab, Duration::from_secs(20));
    assert_eq!(r.nodes.len(), 3);
    assert!(
        !r.warnings.iter().any(|w| w.contains(API_DOWN)),
        "{:?}",
        r.warnings
    );

    // The API server goes away mid-run: the coordinator keeps planning rounds from the
    // last known topology, the mesh stays healthy, and the check says why it is stale.
    lab.inject(Fault::ApiServerDown)
        .expect("stop the API server");
    let mut said = false;
    for _ in 0..30 {
        let (code, r) = check(&lab);
        assert_eq!(
            code, 0,
            "still healthy without the API server: {:?}",
            r.findings
        );
        if r.warnings.iter().any(|w| w.contains(API_DOWN)) {
            said = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(said, "the check never said the API server is unreachable");

    // The coordinator goes down too: agents keep probing with their last plan.
    lab.inject(Fault::CoordinatorDown)
        .expect("stop the coordinator");
    std::thread::sleep(Duration::from_secs(6));
    // Both come back: agents deliver what they measured meanwhile.
    lab.heal(&Fault::ApiServerDown)
        .expect("start the API server");
    lab.heal(&Fault::CoordinatorDown)
        .expect("start the coordinator");
    lab.wait_agents(Duration::from_secs(20))
        .expect("agents come back");
    assert_every_agent_delivered(&lab, 3);
    let r = check_until_healthy(&lab, Duration::from_secs(30));
    assert!(
        !r.warnings.iter().any(|w| w.contains(API_DOWN)),
        "fresh again: {:?}",
        r.warnings
    );
}
