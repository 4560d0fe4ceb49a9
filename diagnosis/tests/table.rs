//! Table-driven tests of the diagnosis on synthetic rounds: every cause id, at 3 and 6
//! nodes, alone and in pairs, plus noise that must stay silent.

use meshprobe_core::Finding;
use meshprobe_core::plan::PlanSettings;
use meshprobe_diagnosis::synth::{self, Fault};
use meshprobe_diagnosis::{Settings, diagnose};
use pretty_assertions::assert_eq;

fn run(n: usize, faults: &[Fault]) -> (Vec<Finding>, Vec<String>) {
    let t = synth::topology(n);
    let r = synth::report(&t, faults, 1, &PlanSettings::default());
    let d = diagnose(&t, &r, &[], &Settings::default());
    (d.findings, d.warnings)
}

/// (cause, nodes, peers, direction) of a finding.
type Shape = (String, Vec<String>, Vec<String>, String);

/// The shape of each finding.
fn shape(f: &[Finding]) -> Vec<Shape> {
    f.iter()
        .map(|f| {
            (
                f.cause.to_string(),
                f.nodes.iter().map(|n| n.to_string()).collect(),
                f.peers.iter().map(|n| n.to_string()).collect(),
                f.direction.to_string(),
            )
        })
        .collect()
}

fn one(
    cause: &str,
    nodes: &[&str],
    peers: &[&str],
    direction: &str,
) -> Vec<(String, Vec<String>, Vec<String>, String)> {
    vec![(
        cause.to_owned(),
        nodes.iter().map(|s| (*s).to_owned()).collect(),
        peers.iter().map(|s| (*s).to_owned()).collect(),
        direction.to_owned(),
    )]
}

#[test]
fn healthy_cluster_has_no_findings_and_no_warnings() {
    for n in [1, 2, 3, 6] {
        let (f, w) = run(n, &[]);
        assert_eq!(shape(&f), vec![], "{n} nodes");
        assert_eq!(w, Vec::<String>::new());
    }
}

#[test]
fn each_single_fault_gives_exactly_its_cause() {
    // (fault, 0-based node indices are turned into names by the table)
    for n in [3, 6] {
        let last = format!("n{n}");
        let cases: Vec<(Fault, Vec<Shape>)> = vec![
            (
                Fault::LinkDown(1),
                one("node-unreachable", &["n2"], &[], "both"),
            ),
            (
                Fault::VxlanIn(2),
                one("vxlan-blocked", &["n3"], &[], "inbound"),
            ),
            (
                Fault::VxlanOut(0),
                one("vxlan-blocked", &["n1"], &[], "outbound"),
            ),
            (
                Fault::ForwardOff(1),
                one("ip-forward-disabled", &["n2"], &[], "both"),
            ),
            (
                Fault::ForwardOff(0),
                one("ip-forward-disabled", &["n1"], &[], "both"),
            ),
            (
                Fault::ForwardReject(2),
                one("forward-rejected", &["n3"], &[], "both"),
            ),
            (
                Fault::PeerMissing(0, 2),
                one("overlay-peer-missing", &["n1"], &["n3"], "outbound"),
            ),
            (
                Fault::PeerMissing(2, 1),
                one("overlay-peer-missing", &["n3"], &["n2"], "outbound"),
            ),
            (Fault::Mtu(1), one("mtu-mismatch", &["n2"], &[], "both")),
            (Fault::Loss(2, 50), one("packet-loss", &["n3"], &[], "both")),
            (
                Fault::DnsDown("coredns-a".into()),
                one("dns-pod-down", &["n1"], &[], "none"),
            ),
            (
                Fault::MetricsBlocked("coredns-b".into()),
                one("metrics-unreachable", &["n2"], &[], "none"),
            ),
            (
                Fault::NodeportRemoved(1),
                one("nodeport-broken", &["n2"], &[], "inbound"),
            ),
            (
                Fault::IngressDown,
                one("ingress-broken", &[last.as_str()], &[], "inbound"),
            ),
            (
                Fault::AgentsSilent(1),
                one("agent-missing", &["n2"], &[], "none"),
            ),
            (
                Fault::IcmpBlocked(2),
                one("icmp-blocked", &["n3"], &[], "inbound"),
            ),
            (
                Fault::JumboMtu(0),
                one("mtu-mismatch", &["n1"], &[], "both"),
            ),
            (
                Fault::VxlanPort(1),
                one("vxlan-config-mismatch", &["n2"], &[], "both"),
            ),
            (
                Fault::VtepChanged(2),
                one("vxlan-config-mismatch", &["n3"], &[], "both"),
            ),
            (
                Fault::Unpublished(1),
                one("overlay-peer-missing", &["n2"], &[], "both"),
            ),
            (
                Fault::DnsRulesMissing(0),
                one("dns-service-broken", &["n1"], &[], "outbound"),
            ),
            (
                Fault::PairBlocked(2, 0),
                one("vxlan-blocked", &["n3"], &["n1"], "outbound"),
            ),
            (
                Fault::PairBlocked(0, 1),
                one("vxlan-blocked", &["n1"], &["n2"], "outbound"),
            ),
            (
                Fault::BridgeMtu(1),
                one("mtu-mismatch", &["n2"], &[], "inbound"),
            ),
        ];
        for (fault, want) in cases {
            let (f, _) = run(n, std::slice::from_ref(&fault));
            assert_eq!(shape(&f), want, "{n} nodes, {fault:?}:\n{:#?}", f);
            assert!(
                !f[0].evidence.is_empty() && !f[0].fix.is_empty() && !f[0].hop.is_empty(),
                "{fault:?}"
            );
        }
    }
}

/// Faults outside the sandbox's first list, named by their mechanism: the hop, the rule
/// that explains it, and the command that fixes it come from the evidence, not the kind.
#[test]
fn beyond_the_list_the_hop_comes_from_the_evidence() {
    // A pair: only the end whose capture shows nothing leaving is blamed, with its rule.
    let (f, _) = run(6, &[Fault::PairBlocked(3, 4)]);
    let ev = f[0].evidence.join("\n");
    assert!(
        ev.contains("nothing encapsulated leaves n4's eth0 toward n5"),
        "{ev}"
    );
    assert!(ev.contains("-A OUTPUT -d 10.1.0.4/32"), "{ev}");
    assert!(
        f[0].fix
            .contains("iptables -t filter -D OUTPUT -d 10.1.0.4/32"),
        "{}",
        f[0].fix
    );
    // Without a capture, the rule naming the peer's address is what tells the ends apart.
    let t = synth::topology(6);
    let mut r = synth::report(&t, &[Fault::PairBlocked(3, 4)], 1, &PlanSettings::default());
    r.capture.clear();
    let d = diagnose(&t, &r, &[], &Settings::default());
    assert_eq!(
        shape(&d.findings),
        one("vxlan-blocked", &["n4"], &["n5"], "outbound")
    );
    // A bridge MTU below the overlay's: the hop is inside the node, not its underlay.
    let (f, _) = run(6, &[Fault::BridgeMtu(2)]);
    assert!(f[0].hop.starts_with("inside n3"), "{}", f[0].hop);
    let ev = f[0].evidence.join("\n");
    assert!(
        ev.contains("n3: cni0 MTU 1400, while 5 other nodes have 1450"),
        "{ev}"
    );
    assert!(ev.contains("EMSGSIZE"), "{ev}");
    // kube-proxy state that differs from the peers': the node, and the fact.
    for (fault, cause, node, fact) in [
        (
            Fault::MasqueradeMissing(3),
            "nodeport-broken",
            "n4",
            "KUBE-POSTROUTING has no MASQUERADE rule",
        ),
        (
            Fault::BridgeNfOff(0),
            "bridge-netfilter-off",
            "n1",
            "net.bridge.bridge-nf-call-iptables = 0",
        ),
    ] {
        let (f, _) = run(6, std::slice::from_ref(&fault));
        assert_eq!(
            shape(&f),
            one(
                cause,
                &[node],
                &[],
                if node == "n4" { "inbound" } else { "outbound" }
            ),
            "{fault:?}: {f:#?}"
        );
        assert!(
            f[0].evidence.iter().any(|e| e.contains(fact)),
            "{fault:?}: {:?}",
            f[0].evidence
        );
    }
    // A bridge that lost its gateway: the tunnel delivers, nothing answers behind it.
    let (f, _) = run(6, &[Fault::GatewayLost(4)]);
    assert_eq!(
        (f[0].cause.as_str(), f[0].nodes[0].as_str()),
        ("pod-gateway-missing", "n5"),
        "{f:#?}"
    );
    assert!(
        f[0].evidence
            .iter()
            .any(|e| e.contains("cni0 does not hold its pod gateway"))
    );
    assert!(
        f.iter().all(|x| x.nodes.iter().all(|n| n.as_str() == "n5")),
        "{f:#?}"
    );
    // DNS filtered between one node's pods and one CoreDNS pod: no rule names it, so it is
    // `unexplained`, on that node, saying what it is and what works.
    let (f, _) = run(6, &[Fault::DnsFiltered(3, "coredns-a".into())]);
    assert_eq!(
        (f[0].cause.as_str(), f[0].nodes[0].as_str()),
        ("unexplained", "n4"),
        "{f:#?}"
    );
    assert!(
        f[0].summary.contains("get no DNS answer from coredns-a"),
        "{}",
        f[0].summary
    );
    assert!(
        f[0].evidence
            .iter()
            .any(|e| e.contains("n4's and n1's pods reach each other")),
        "{:?}",
        f[0].evidence
    );
    assert!(f[0].fix.contains("NetworkPolic"), "{}", f[0].fix);
    // A dead backend: spread thin over every source and entry node, blamed on none. The
    // NodePort and the ingress both lead to it: a finding for each service that lost a
    // cell, none naming a node.
    for n in [3, 6] {
        let (f, _) = run(n, &[Fault::BackendDown(1)]);
        assert!(
            !f.is_empty()
                && f.iter()
                    .all(|f| f.cause.as_str() == "service-backend-down" && f.nodes.is_empty()),
            "{n} nodes: {:?}",
            shape(&f)
        );
    }
    let (f, _) = run(6, &[Fault::BackendDown(2)]);
    assert!(
        f[0].summary.contains("one of its backends does not answer"),
        "{}",
        f[0].summary
    );
    assert!(f[0].fix.contains("endpointslices"), "{}", f[0].fix);
}

#[test]
fn capture_on_both_ends_names_the_direction() {
    // (fault, node, direction, a phrase the capture evidence must hold)
    let cases = [
        (
            Fault::VxlanIn(2),
            "n3",
            "inbound",
            "die inside n3, after its NIC",
        ),
        (
            Fault::VxlanOut(1),
            "n2",
            "outbound",
            "nothing encapsulated leaves n2's eth0",
        ),
        (
            Fault::PathBlockedIn(0),
            "n1",
            "inbound",
            "on the path into n1",
        ),
    ];
    for n in [3, 6] {
        for (fault, node, direction, phrase) in &cases {
            let (f, _) = run(n, std::slice::from_ref(fault));
            assert_eq!(
                (
                    f[0].cause.as_str(),
                    f[0].nodes[0].as_str(),
                    f[0].direction.as_str()
                ),
                ("vxlan-blocked", *node, *direction),
                "{fault:?}"
            );
            let ev = f[0].evidence.join("\n");
            assert!(
                ev.contains(phrase),
                "{fault:?}: evidence lacks {phrase:?}:\n{ev}"
            );
            // Both ends of a pair are cited: probes leaving a peer, and what arrived at the node.
            assert!(
                ev.contains(&format!("toward {node}; {node}'s eth0 saw")),
                "{fault:?}:\n{ev}"
            );
        }
    }
    let (f, _) = run(3, &[Fault::Mtu(1)]);
    let ev = f[0].evidence.join("\n");
    assert!(
        ev.contains(
            "full-size encapsulated probes left n1's eth0 toward n2; n2's eth0 saw 0 of them arrive"
        ),
        "{ev}"
    );
}

#[test]
fn two_faults_on_different_nodes_are_both_found() {
    let pairs = [
        (
            Fault::VxlanIn(1),
            Fault::ForwardOff(4),
            ("vxlan-blocked", "n2"),
            ("ip-forward-disabled", "n5"),
        ),
        (
            Fault::LinkDown(5),
            Fault::DnsDown("coredns-a".into()),
            ("node-unreachable", "n6"),
            ("dns-pod-down", "n1"),
        ),
        (
            Fault::Mtu(2),
            Fault::ForwardReject(3),
            ("mtu-mismatch", "n3"),
            ("forward-rejected", "n4"),
        ),
        (
            Fault::PeerMissing(0, 3),
            Fault::NodeportRemoved(5),
            ("overlay-peer-missing", "n1"),
            ("nodeport-broken", "n6"),
        ),
        // A node whose pods are cut off may be any NodePort's backend: a NodePort that
        // refuses connections is still its own node's fault.
        (
            Fault::ForwardOff(1),
            Fault::NodeportRemoved(4),
            ("ip-forward-disabled", "n2"),
            ("nodeport-broken", "n5"),
        ),
    ];
    for (a, b, wa, wb) in pairs {
        let (f, _) = run(6, &[a.clone(), b.clone()]);
        let got: Vec<(String, String)> = f
            .iter()
            .map(|f| (f.cause.to_string(), f.nodes[0].to_string()))
            .collect();
        for (cause, node) in [wa, wb] {
            assert!(
                got.contains(&(cause.to_owned(), node.to_owned())),
                "{a:?} + {b:?}: missing {cause} on {node} in {got:?}"
            );
        }
        assert_eq!(got.len(), 2, "{a:?} + {b:?}: extra findings {got:?}");
    }
}

#[test]
fn one_percent_loss_is_not_a_finding() {
    for n in [3, 6] {
        for x in 0..n {
            let (f, _) = run(n, &[Fault::Loss(x, 1)]);
            assert_eq!(shape(&f), vec![], "{n} nodes, 1% loss on n{}", x + 1);
        }
    }
}

#[test]
fn a_sick_prober_never_gets_its_peers_blamed() {
    let (f, _) = run(6, &[Fault::SickProber(2)]);
    assert_eq!(shape(&f), one("agent-degraded", &["n3"], &[], "none"));
}

#[test]
fn evidence_alone_is_a_warning_not_a_finding() {
    let t = synth::topology(3);
    let mut r = synth::report(&t, &[], 1, &PlanSettings::default());
    let n2 = t.nodes[1].name.clone();
    r.evidence.get_mut(&n2).expect("host evidence").ip_forward = Some(false);
    let d = diagnose(&t, &r, &[], &Settings::default());
    assert!(d.findings.is_empty());
    assert_eq!(
        d.warnings,
        ["n2: net.ipv4.ip_forward = 0, though no probe fails yet"]
    );
}

#[test]
fn consecutive_rounds_are_counted() {
    let t = synth::topology(3);
    let r = synth::report(&t, &[Fault::VxlanIn(0)], 3, &PlanSettings::default());
    let first = diagnose(&t, &r, &[], &Settings::default());
    let key = first.findings[0].key();
    let again = diagnose(
        &t,
        &r,
        &[vec![], vec![key.clone()], vec![key]],
        &Settings::default(),
    );
    assert_eq!((first.findings[0].rounds, again.findings[0].rounds), (1, 3));
}

#[test]
fn findings_read_well() {
    // A snapshot of what a person reads first. Set UPDATE_SNAPSHOTS=1 to rewrite it.
    let (f, _) = run(3, &[Fault::ForwardReject(1)]);
    let text: String = f
        .iter()
        .map(|f| {
            format!(
                "{} [{}] nodes={:?} dir={}\n  hop: {}\n{}  fix: {}\n",
                f.summary,
                f.cause,
                f.nodes,
                f.direction,
                f.hop,
                f.evidence
                    .iter()
                    .map(|e| format!("  - {e}\n"))
                    .collect::<String>(),
                f.fix
            )
        })
        .collect();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/snapshots/forward_reject_3_nodes.txt"
    );
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &text).expect("write snapshot");
    }
    let want =
        std::fs::read_to_string(path).expect("snapshot exists (UPDATE_SNAPSHOTS=1 to create)");
    assert_eq!(text, want);
}

#[test]
fn a_cordoned_node_with_silent_agents_gives_no_finding() {
    let mut t = synth::topology(6);
    t.nodes[3].state = meshprobe_core::inventory::NodeState::Cordoned;
    // Its agents are gone (drained), and nobody probes it: no finding about anyone.
    let r = synth::report(&t, &[Fault::AgentsSilent(3)], 1, &PlanSettings::default());
    let d = diagnose(&t, &r, &[], &Settings::default());
    assert_eq!(shape(&d.findings), vec![]);
    let cell = r
        .cell(meshprobe_core::Layer::Underlay, "n1", "n4")
        .expect("planned");
    assert_eq!(cell.state, meshprobe_core::CellState::Unknown);
    assert_eq!(cell.detail, Some("n4 is cordoned: not probed"));
}

#[test]
fn evidence_beats_the_symptom_when_the_pod_agent_is_silent() {
    // n3's pod agent is silent, so nothing probes its pod; its NodePort fails from every
    // node. Its host agent reads ip_forward = 0: that is the finding, not nodeport-broken.
    for n in [3, 6] {
        let (f, _) = run(n, &[Fault::ForwardOff(2), Fault::PodSilent(2)]);
        let got = shape(&f);
        assert_eq!(
            got[0],
            one("ip-forward-disabled", &["n3"], &[], "both")[0],
            "{n} nodes:\n{f:#?}"
        );
        assert!(
            got.iter().all(|s| s.0 != "nodeport-broken"),
            "{n} nodes: {got:?}"
        );
    }
}

#[test]
fn several_nodes_lacking_one_peer_blame_the_peer() {
    // Every node lacks n4's overlay entries (its subnet was never published): one finding
    // on n4, none on the nodes that lack it.
    let (f, _) = run(6, &[Fault::Unpublished(3)]);
    let got = shape(&f);
    assert_eq!(got.len(), 1, "{f:#?}");
    assert_eq!(
        (got[0].0.as_str(), got[0].1.clone()),
        ("overlay-peer-missing", vec!["n4".to_owned()])
    );
}

/// A silent pod agent beside a reporting host agent: the host agent's walk of the relay's
/// own flow (TCP from the pods to the node IP) explains it, even with the overlay's port
/// open (so no overlay rule is left to read it from), and the fix is for the relay.
#[test]
fn the_relay_walk_explains_a_silent_pod_agent() {
    use meshprobe_core::evidence::FirewallRule;
    let t = synth::topology(3);
    let mut r = synth::report(&t, &[Fault::PodSilent(1)], 1, &PlanSettings::default());
    let reject = "-A INPUT -j REJECT --reject-with icmp-host-prohibited";
    let n2 = meshprobe_core::NodeName::new("n2").expect("name");
    let ev = r.evidence.get_mut(&n2).expect("n2's evidence");
    assert!(ev.overlay_port_rules.is_empty());
    ev.relay_port_rules
        .push(FirewallRule::iptables("filter", "INPUT", reject));
    let d = diagnose(&t, &r, &[], &Settings::default());
    let f = d
        .findings
        .iter()
        .find(|f| f.cause.to_string() == "agent-missing")
        .unwrap_or_else(|| panic!("{:#?}", d.findings));
    assert_eq!(f.nodes, vec![n2.clone()]);
    assert!(
        f.evidence
            .iter()
            .any(|l| l.contains(reject) && l.contains("relay")),
        "{:#?}",
        f.evidence
    );
    assert!(f.fix.contains("relay port"), "{}", f.fix);
    // Without the walk's rule, nothing on n2 says why.
    let mut r = synth::report(&t, &[Fault::PodSilent(1)], 1, &PlanSettings::default());
    r.evidence
        .get_mut(&n2)
        .expect("n2")
        .relay_port_rules
        .clear();
    let d = diagnose(&t, &r, &[], &Settings::default());
    let f = d
        .findings
        .iter()
        .find(|f| f.cause.to_string() == "agent-missing")
        .expect("agent-missing");
    assert!(!f.fix.contains("relay port"), "{}", f.fix);
}

/// No agent reports anywhere: each node's finding says so, not that the others' view of
/// it decides, and the fix points at what the agents share.
#[test]
fn no_agent_anywhere_is_said_as_such() {
    let faults: Vec<Fault> = (0..3).map(Fault::AgentsSilent).collect();
    let (f, _) = run(3, &faults);
    let missing: Vec<&Finding> = f
        .iter()
        .filter(|f| f.cause.to_string() == "agent-missing")
        .collect();
    assert_eq!(missing.len(), 3, "{f:#?}");
    for m in missing {
        assert!(
            m.evidence
                .iter()
                .any(|l| l.contains("no agent on any node reports")),
            "{:#?}",
            m.evidence
        );
        assert!(
            m.evidence.iter().all(|l| !l.contains("other nodes' view")),
            "{:#?}",
            m.evidence
        );
        assert!(m.fix.contains("daemonsets"), "{}", m.fix);
    }
    // One node silent: the others' view is what speaks for it.
    let (f, _) = run(3, &[Fault::AgentsSilent(1)]);
    assert!(
        f[0].evidence
            .iter()
            .any(|l| l.contains("other nodes' view")),
        "{:#?}",
        f[0].evidence
    );
}

/// Issue 23, row 10: a node whose OUTPUT refuses half its own ICMP (its echoes fail with
/// EPERM at the sender, its echo replies vanish) is that node's own sends, said with the
/// kernel's word and the OUTPUT chain to read, not packet loss on its NIC.
#[test]
fn sends_the_kernel_refused_are_not_packet_loss() {
    for n in [3, 6] {
        let (f, _) = run(n, &[Fault::SendsRefused(1, 50)]);
        let got = shape(&f);
        assert!(
            got.iter().all(|s| s.0 != "packet-loss"),
            "{n} nodes: {got:?}"
        );
        let out = f
            .iter()
            .find(|f| f.cause.to_string() == "host-output-blocked")
            .unwrap_or_else(|| panic!("{n} nodes: {f:#?}"));
        assert_eq!(
            out.nodes.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
            ["n2"]
        );
        assert!(
            out.fix.contains("OUTPUT") && !out.fix.contains("ethtool"),
            "{}",
            out.fix
        );
        assert!(
            out.evidence[0].contains("EPERM"),
            "the kernel's word comes before the probes: {:#?}",
            out.evidence
        );
        assert!(
            got.iter().all(|s| s.1.iter().all(|x| x == "n2")),
            "{n} nodes: only n2 is named: {got:?}"
        );
    }
}
