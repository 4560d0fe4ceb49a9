//! The datapath model: faults no detector was written for, stated as hops that drop
//! traffic (`synth::Fault::Hops`), must be found by testing hypotheses against what
//! passes, and every rejected explanation is listed with the passing cells that rejected
//! it. Regression tests for issue 21's rows.

use std::collections::BTreeSet;

use meshprobe_core::catalogue::FaultKind;
use meshprobe_core::plan::PlanSettings;
use meshprobe_core::{CellState, CheckReport, Finding};
use meshprobe_diagnosis::synth::{self, Fault};
use meshprobe_diagnosis::{Settings, diagnose};

fn run(n: usize, faults: &[Fault]) -> (CheckReport, Vec<Finding>) {
    let t = synth::topology(n);
    let r = synth::report(&t, faults, 1, &PlanSettings::default());
    let f = diagnose(&t, &r, &[], &Settings::default()).findings;
    (r, f)
}

/// The catalogue's `kind` on node `x` (or on CoreDNS pod `pod`) of an `n`-node cluster,
/// simulated from its effect.
fn hops(n: usize, kind: FaultKind, x: usize, pod: Option<&str>) -> Fault {
    Fault::hops(kind, &synth::topology(n), x, pod).unwrap_or_else(|| panic!("{kind} is hops"))
}

fn dump(f: &[Finding]) -> String {
    serde_json::to_string_pretty(f).unwrap_or_default()
}

/// Every failing cell is claimed by some finding.
fn all_claimed(r: &CheckReport, f: &[Finding]) {
    let claimed: BTreeSet<(String, String, String)> = f
        .iter()
        .flat_map(|f| &f.cells)
        .map(|c| (c.layer.to_string(), c.from.to_string(), c.to.clone()))
        .collect();
    for (layer, m) in &r.layers {
        for (src, dst, c) in m.iter() {
            if c.state == CellState::Fail {
                let k = (layer.to_string(), src.to_owned(), dst.to_owned());
                assert!(claimed.contains(&k), "unclaimed {k:?}\n{}", dump(f));
            }
        }
    }
}

/// The alternative of `f` with this cause on this node: it must name passing cells,
/// and each of them must pass in the report.
fn rejected(r: &CheckReport, f: &Finding, cause: &str, node: &str) -> String {
    let a = f
        .alternatives
        .iter()
        .find(|a| a.cause.as_str() == cause && a.nodes.iter().any(|n| n.as_str() == node))
        .unwrap_or_else(|| {
            panic!(
                "no alternative {cause} {node} in\n{}",
                dump(std::slice::from_ref(f))
            )
        });
    assert!(!a.rejecting_cells.is_empty(), "{a:?}");
    for c in &a.rejecting_cells {
        let cell = r
            .cell(c.layer, c.from.as_str(), &c.to)
            .unwrap_or_else(|| panic!("{c:?} is not in the report"));
        assert_eq!(
            cell.state,
            CellState::Ok,
            "{c:?} rejects {cause} but does not pass"
        );
    }
    let first = &a.rejecting_cells[0];
    assert!(
        a.rejected_by
            .contains(&format!("{} {} -> {}", first.layer, first.from, first.to)),
        "{}",
        a.rejected_by
    );
    a.rejected_by.clone()
}

fn layers_of(f: &Finding, cause: &str, node: &str) -> BTreeSet<String> {
    f.alternatives
        .iter()
        .filter(|a| a.cause.as_str() == cause && a.nodes.iter().any(|n| n.as_str() == node))
        .flat_map(|a| &a.rejecting_cells)
        .map(|c| c.layer.to_string())
        .collect()
}

/// Issue 21: "A VXLAN drop was reported where pod-to-pod traffic through the very same
/// tunnel worked. Only traffic that ends on the node's own addresses failed."
#[test]
fn issue_21_overlay_input_drop_is_local_delivery_not_vxlan() {
    for n in [3, 6] {
        for x in 0..n {
            let (r, f) = run(n, &[hops(n, FaultKind::OverlayInputDrop, x, None)]);
            let xn = format!("n{}", x + 1);
            assert_eq!(f[0].cause.as_str(), "host-input-blocked", "{}", dump(&f));
            assert_eq!(f[0].nodes[0].as_str(), xn);
            assert!(
                f.iter().all(|g| g.nodes.iter().all(|m| m.as_str() == xn)),
                "a healthy node named:\n{}",
                dump(&f)
            );
            all_claimed(&r, &f);
            // Not VXLAN: pod-to-pod through the same tunnel passes.
            let why = rejected(&r, &f[0], "vxlan-blocked", &xn);
            assert!(why.contains("VXLAN"), "{why}");
            assert!(
                layers_of(&f[0], "vxlan-blocked", &xn)
                    .iter()
                    .any(|l| l.starts_with("pod-to-pod") || l == "gateway-from-pod"),
                "{}",
                dump(&f)
            );
            // Not the gateway: its own pods reach it.
            rejected(&r, &f[0], "pod-gateway-missing", &xn);
        }
    }
}

/// Issue 21: "a firewall rule that drops one port to one pod reads as 'does not
/// forward'": a rule for one protocol is that protocol's, and "does not forward" is
/// rejected by what it does forward.
#[test]
fn issue_21_a_rule_for_one_protocol_is_not_does_not_forward() {
    for n in [3, 6] {
        for x in 0..n {
            let (r, f) = run(n, &[hops(n, FaultKind::IcmpForwardDrop, x, None)]);
            let xn = format!("n{}", x + 1);
            let top = &f[0];
            assert_eq!(
                (top.cause.as_str(), top.nodes[0].as_str()),
                ("forward-rejected", xn.as_str()),
                "{}",
                dump(&f)
            );
            assert!(top.hop.contains("ICMP"), "{}", top.hop);
            assert!(!top.summary.contains("does not forward"), "{}", top.summary);
            assert!(
                f.iter().all(|g| g.nodes.iter().all(|m| m.as_str() == xn)),
                "{}",
                dump(&f)
            );
            all_claimed(&r, &f);
            // "Does not forward" (any traffic) is rejected by the TCP and UDP it forwards.
            let layers = layers_of(top, "forward-rejected", &xn);
            assert!(
                layers
                    .iter()
                    .any(|l| l.starts_with("dns") || l.starts_with("nodeport")),
                "{layers:?}\n{}",
                dump(&f)
            );
        }
    }
}

/// Issue 21: "A CoreDNS pod was called 'down or wedged', although its own node's pods
/// resolved through it." A rule dropping DNS forwarded into that node's pods.
#[test]
fn issue_21_a_dns_port_rule_is_not_a_dead_coredns_pod() {
    for n in [3, 6] {
        // coredns-b lives on n2.
        let (r, f) = run(n, &[hops(n, FaultKind::DnsPortDrop, 0, Some("coredns-b"))]);
        let top = &f[0];
        assert_eq!(
            (top.cause.as_str(), top.nodes[0].as_str()),
            ("forward-rejected", "n2"),
            "{}",
            dump(&f)
        );
        assert!(top.hop.contains("UDP"), "{}", top.hop);
        assert!(top.summary.contains("UDP 53"), "{}", top.summary);
        assert!(
            f.iter().all(|g| g.nodes.iter().all(|m| m.as_str() == "n2")),
            "{}",
            dump(&f)
        );
        assert!(
            f.iter().all(|g| g.cause.as_str() != "dns-pod-down"),
            "{}",
            dump(&f)
        );
        all_claimed(&r, &f);
        // The pod answers its own node's pods: not down.
        let why = rejected(&r, top, "dns-pod-down", "n2");
        assert!(why.contains("dns-pod n2 -> coredns-b"), "{why}");
    }
}

/// Alternatives never list the finding itself, and every rejecting cell passes.
#[test]
fn alternatives_of_known_faults_name_passing_cells_only() {
    let faults = [
        Fault::ForwardOff(2),
        Fault::VxlanIn(1),
        Fault::GatewayLost(3),
        Fault::PeerMissing(0, 2),
        Fault::DnsDown("coredns-a".into()),
    ];
    for fault in faults {
        let (r, f) = run(6, std::slice::from_ref(&fault));
        assert!(!f.is_empty(), "{fault:?}");
        for g in &f {
            for a in &g.alternatives {
                assert!(
                    !(a.cause == g.cause && a.nodes == g.nodes && a.hop == g.hop),
                    "{fault:?}: {a:?} is the finding itself"
                );
                for c in &a.rejecting_cells {
                    let cell = r.cell(c.layer, c.from.as_str(), &c.to).expect("cell");
                    assert_eq!(cell.state, CellState::Ok, "{fault:?}: {c:?}");
                }
            }
        }
        // The finding for a fault the detectors know still carries alternatives: what
        // it is not.
        assert!(
            !f[0].alternatives.is_empty(),
            "{fault:?} has no alternatives:\n{}",
            dump(&f)
        );
    }
}

/// Issue 21: pods cut off by local state were called `forward-rejected` by elimination.
/// The bridge's own state explains every cell; the firewall is the rejected alternative.
#[test]
fn issue_21_a_bridge_that_is_down_is_not_a_firewall() {
    for n in [3, 6] {
        for x in 0..n {
            let (r, f) = run(n, &[hops(n, FaultKind::BridgeDown, x, None)]);
            let xn = format!("n{}", x + 1);
            assert_eq!(
                (f[0].cause.as_str(), f[0].nodes[0].as_str()),
                ("pod-device-down", xn.as_str()),
                "{}",
                dump(&f)
            );
            assert!(
                f[0].evidence.iter().any(|e| e.contains("cni0 is down")),
                "{}",
                dump(&f)
            );
            assert!(
                f.iter().all(|g| g.nodes.iter().all(|m| m.as_str() == xn)
                    && g.cause.as_str() != "forward-rejected"),
                "{}",
                dump(&f)
            );
            all_claimed(&r, &f);
        }
    }
}

/// Issue 21: "Four healthy nodes blamed": their entries for one peer resolved to a fifth
/// node that held an address inside that peer's pod range. One finding, on the fifth
/// node; the sufferers are evidence and a rejected alternative, never `nodes`.
#[test]
fn issue_21_a_claimed_pod_range_blames_the_claimant_not_the_sufferers() {
    use meshprobe_core::evidence::LocalAddress;
    for n in [3, 6] {
        let (claimant, owner) = (n - 1, 0);
        let t = synth::topology(n);
        // Every other node's route toward the owner's pods ends on the claimant.
        let at = meshprobe_core::catalogue::Placement {
            nodes: n,
            node: Some(claimant),
            peer: Some(owner),
            target: None,
            node_port: t.node_ports[0].port,
            overlay_port: t.cluster.overlay.port,
        };
        // Here the claimant holds another address of the range, not the owner's
        // gateway (the sandbox's kind): nothing addressed to the owner's node is
        // answered on the claimant either, so nothing is diverted, all is lost.
        let mut effect = FaultKind::PodCidrClaimed.effect(&at).expect("an effect");
        effect.diverts = false;
        let fault = Fault::Hops {
            node: claimant,
            kind: FaultKind::PodCidrClaimed,
            effect,
            forward_rule: None,
        };
        let mut r = synth::report(
            &t,
            std::slice::from_ref(&fault),
            1,
            &PlanSettings::default(),
        );
        let owner_cidr = t.nodes[owner].pod_cidr;
        let claimant_mac = r.evidence[&t.nodes[claimant].name]
            .config
            .as_ref()
            .and_then(|c| c.vtep_mac.clone())
            .expect("claimant's VTEP MAC");
        let stolen = std::net::Ipv4Addr::from(u32::from(owner_cidr.network()) + 200);
        for (name, ev) in r.evidence.iter_mut() {
            let cfg = ev.config.as_mut().expect("config");
            if *name == t.nodes[claimant].name {
                cfg.pod_range_addrs.push(LocalAddress {
                    dev: "dummy0".into(),
                    ip: stolen,
                    prefix_len: 32,
                });
            } else if *name != t.nodes[owner].name {
                for e in &mut cfg.neighbours {
                    if e.ip == Some(owner_cidr.network()) {
                        e.mac = Some(claimant_mac.clone());
                    }
                }
            }
        }
        let f = diagnose(&t, &r, &[], &Settings::default()).findings;
        let (cn, on) = (format!("n{}", claimant + 1), format!("n{}", owner + 1));
        assert_eq!(
            (
                f[0].cause.as_str(),
                f[0].nodes[0].as_str(),
                f[0].peers[0].as_str()
            ),
            ("pod-cidr-conflict", cn.as_str(), on.as_str()),
            "{}",
            dump(&f)
        );
        assert!(
            f.iter()
                .all(|g| g.nodes.iter().all(|m| m.as_str() == cn || m.as_str() == on)),
            "a sufferer is blamed:\n{}",
            dump(&f)
        );
        assert!(
            f[0].evidence
                .iter()
                .any(|e| e.contains(&stolen.to_string())),
            "{}",
            dump(&f)
        );
        assert!(
            f[0].alternatives
                .iter()
                .any(|a| a.cause.as_str() == "overlay-peer-missing"),
            "{}",
            dump(&f)
        );
        assert!(f[0].fix.contains("ip addr del"), "{}", f[0].fix);
        all_claimed(&r, &f);
    }
}
