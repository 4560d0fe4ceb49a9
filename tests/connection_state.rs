//! Issue 9: the agents' channel survives the change it measures. Real network changes
//! drop connection state (a conntrack flush, a firewall reload, a restarted coordinator
//! or host agent); a `check` started 1 s after each must be complete (every agent
//! reported: no `agent-missing`, nothing `unknown` for silence) and healthy. Every event
//! runs with the pod agents started both ways: with the relay's URL and with the
//! coordinator's own (through the node's masquerade). Needs root, like `tests/lab.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{TestLab, check, direct_lab_or_skip, lab_or_skip, not_ok};
use meshprobe_core::matrix::AgentState;
use meshprobe_core::{AgentKind, CheckReport};
use meshprobe_sandbox::Fault;

/// Every agent of every node reported, nothing is unknown, and the verdict is healthy.
fn assert_complete_and_healthy(what: &str, r: &CheckReport) {
    let silent: Vec<String> = r
        .agents
        .iter()
        .flat_map(|(n, a)| {
            [(AgentKind::Host, &a.host), (AgentKind::Pod, &a.pod)]
                .into_iter()
                .filter(|(_, s)| **s != AgentState::Reported)
                .map(move |(k, s)| format!("{n}/{k}: {s:?}"))
        })
        .collect();
    assert!(
        silent.is_empty(),
        "{what}: agents did not report: {silent:?}"
    );
    assert_eq!(
        r.agents.len(),
        r.nodes.len(),
        "{what}: agents of every node"
    );
    let (_, fail, unknown) = r.counts();
    assert!(
        r.healthy && fail == 0 && unknown == 0 && r.findings.is_empty(),
        "{what}: not complete and healthy:\n{}\nfindings: {:#?}",
        not_ok(r).join("\n"),
        r.findings
    );
}

/// Runs each event on a healthy lab, then a check 1 s later.
fn events_leave_the_mesh_complete(lab: &mut TestLab, how: &str) {
    common::check_until_healthy(lab, Duration::from_secs(15));
    let events = [
        Fault::ConntrackFlush { node: None },
        Fault::ConntrackFlush {
            node: Some("n2".into()),
        },
        Fault::FirewallReload { node: "n3".into() },
        Fault::CoordinatorRestart,
        Fault::HostAgentRestart { node: "n1".into() },
    ];
    for event in events {
        // One healthy round first, so the agents' connections are the long-lived kind the
        // event breaks.
        let (code, _) = check(lab);
        assert_eq!(code, 0, "{how}: before {event}");
        lab.inject(event.clone())
            .unwrap_or_else(|e| panic!("{how}: {event}: {e}"));
        std::thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        let (code, r) = check(lab);
        let took = started.elapsed();
        eprintln!("{how}: check 1 s after {event}: exit {code} in {took:?}");
        assert_complete_and_healthy(&format!("{how}: {event}"), &r);
        assert_eq!(code, 0, "{how}: {event}");
    }
}

#[test]
fn events_with_pod_agents_on_the_relay_url() {
    let Some(mut lab) = lab_or_skip(3) else {
        return;
    };
    events_leave_the_mesh_complete(&mut lab, "relay URL");
}

#[test]
fn events_with_pod_agents_on_the_coordinator_url() {
    let Some(mut lab) = direct_lab_or_skip(3) else {
        return;
    };
    events_leave_the_mesh_complete(&mut lab, "coordinator URL");
}

/// A pod agent given the coordinator's URL switches to its host agent's relay: so on a
/// node that stops forwarding, it still reports, and the diagnosis has the pod's view.
#[test]
fn a_pod_agent_on_a_node_that_does_not_forward_still_reports() {
    let Some(mut lab) = direct_lab_or_skip(3) else {
        return;
    };
    common::check_until_healthy(&lab, Duration::from_secs(15));
    let fault = Fault::IpForwardOff { node: "n2".into() };
    lab.inject(fault.clone()).expect("inject");
    let (code, r) = check(&lab);
    assert_eq!(code, 1);
    let n2 = meshprobe_core::NodeName::new("n2").expect("name");
    assert_eq!(
        r.agents[&n2].pod,
        AgentState::Reported,
        "n2's pod agent is silent: {:?}",
        r.agents
    );
    let top = r.findings.first().expect("a finding");
    assert_eq!(
        top.cause,
        meshprobe_core::Cause::IpForwardDisabled,
        "{:#?}",
        r.findings
    );
    assert_eq!(top.nodes, vec![n2]);
    lab.heal(&fault).expect("heal");
    common::check_until_healthy(&lab, Duration::from_secs(30));
}
