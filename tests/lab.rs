//! End-to-end tests on the sandbox: real namespaces, the real kernel datapath, the real
//! binary for coordinator, agents and `check`. Each test builds its own lab (unique
//! names) and the `Lab` guard removes it, also when the test fails.
//!
//! These need root. Without root they fail, unless MESHPROBE_SKIP_LAB_TESTS=1 says to skip.

mod common;

use std::time::Duration;

use common::{check, check_until_healthy, lab_or_skip};
use meshprobe_core::catalogue::{self, Outcome};
use meshprobe_core::{CellState, Layer};
use meshprobe_sandbox::{Fault, LabPlan};

/// What a cell must say under a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exp {
    Ok,
    Fail,
    Unknown,
    /// Rides kube-proxy's random choice of backend, or a statistically lossy path.
    Any,
}

/// A cell's expectation from the fault catalogue: for a kind stated as hops failing
/// ([`FaultKind::effect`]), what the datapath model predicts for the cell's path
/// ([`catalogue::predict`], the same function the synthetic rounds' faults follow).
fn model_expect(p: &LabPlan, f: &Fault, layer: Layer, s: &str, d: &str) -> Option<Exp> {
    use Layer::*;
    let effect = f.kind().effect(&f.placement(p))?;
    let ix = |n: &str| p.nodes.iter().position(|x| x.name == n);
    let col = match layer {
        DnsPod | CorednsMetrics => p.coredns_pods().iter().position(|c| *c == d)?,
        Ingress | IngressFromPod | DnsService => 0,
        _ => ix(d)?,
    };
    Some(
        match catalogue::predict(&effect, &p.targets(), layer, ix(s)?, col)? {
            Outcome::Pass => Exp::Ok,
            Outcome::Fail => Exp::Fail,
            Outcome::Either => Exp::Any,
        },
    )
}

/// The expectation for one cell, derived from the path its packets take.
fn expect(p: &LabPlan, f: &Fault, layer: Layer, s: &str, d: &str) -> Exp {
    use Layer::*;
    if let Some(e) = model_expect(p, f, layer, s, d) {
        return e;
    }
    // The node the destination lives on ("" for the load-balanced service IP).
    let dn: String = match layer {
        DnsPod | CorednsMetrics => p
            .coredns_node(d)
            .map(|n| n.name.clone())
            .unwrap_or_default(),
        Ingress => p.ingress().name.clone(),
        DnsService => String::new(),
        _ => d.to_owned(),
    };
    let dn = dn.as_str();
    let cross = !dn.is_empty() && s != dn;
    let overlay = matches!(
        layer,
        GatewayFromHost
            | GatewayFromPod
            | PodToPod
            | PodToPodFullSize
            | PodToPodFragmented
            | DnsPod
            | CorednsMetrics
    );
    let yes = |b: bool| if b { Exp::Fail } else { Exp::Ok };
    // From a pod, NodePorts and the ingress also depend on the source node forwarding and
    // on kube-proxy's random backend: only the faults aimed at them are predictable.
    if matches!(layer, NodeportFromPod | IngressFromPod) {
        return match f {
            Fault::IcmpBlocked { .. } => Exp::Ok,
            _ => Exp::Any,
        };
    }
    match f {
        // The peer's node owns its gateway address and answers ARP for it on the
        // underlay, so the gateway layers still pass; its pods do not.
        Fault::RouteHijack { node, peer } => {
            let pair = cross && ((s == node && dn == peer) || (s == peer && dn == node));
            match layer {
                PodToPod | PodToPodFullSize | PodToPodFragmented | DnsPod | CorednsMetrics => {
                    yes(pair)
                }
                // The node's gateway answers the peer's pod over the stolen route.
                GatewayFromPod => yes(s == peer && dn == node),
                _ if overlay => Exp::Ok,
                _ => Exp::Any,
            }
        }
        Fault::UnderlayMtu { node: x, .. } => match layer {
            UnderlayFullSize | PodToPodFullSize | PodToPodFragmented => yes(s == x || dn == x),
            // Metrics pages are several full-size TCP segments.
            CorednsMetrics if cross && (s == x || dn == x) => Exp::Any,
            Nodeport | Ingress => Exp::Any,
            _ => Exp::Ok,
        },
        // Echo requests to x's node IP; NodePorts (TCP) and the tunnel (UDP) get through.
        Fault::IcmpBlocked { node: x } => {
            yes(matches!(layer, Underlay | UnderlayFullSize) && dn == x)
        }
        // x's full-size underlay probes go at its 9000-byte MTU and vanish; TCP adapts
        // (MSS), and the overlay's probes stay within 1450.
        Fault::JumboMtu { node: x } => match layer {
            UnderlayFullSize => yes(s == x),
            // Its pods send (and answer) the 2,900-byte echo whole.
            PodToPodFragmented => yes(cross && (s == x || dn == x)),
            CorednsMetrics | Nodeport | Ingress => Exp::Any,
            _ => Exp::Ok,
        },
        // A distribution's INPUT chain: ICMP and replies pass, VXLAN into x does not, in
        // either direction (the replies come back encapsulated too). x's pod agent talks
        // to its relay on x's node IP, which the chain rejects as well, so its own cells
        // may be unknown.
        Fault::HostFirewall { node: x } | Fault::NftHostFirewall { node: x } => match layer {
            Underlay | UnderlayFullSize => Exp::Ok,
            GatewayFromPod | PodToPod | PodToPodFullSize | PodToPodFragmented | DnsPod
                if s == x =>
            {
                Exp::Any
            }
            _ if overlay => yes(cross && (s == x || dn == x)),
            _ => Exp::Any,
        },
        // cni0 below the overlay's MTU: full-size echoes into x's pods get "fragmentation
        // needed" from x, and the senders then refuse them themselves. Fragments are
        // reassembled and fragmented again to fit; small packets and x's own pods' full-size
        // echoes (their replies) pass; TCP adapts through PMTU discovery.
        Fault::BridgeMtu { node: x } => match layer {
            PodToPodFullSize => yes(cross && dn == x),
            CorednsMetrics if cross && dn == x => Exp::Any,
            Nodeport | Ingress | DnsService => Exp::Any,
            _ => Exp::Ok,
        },
        // Requests land on the dead backend at random: see `fault_backend_down`.
        Fault::BackendDown { .. } => match layer {
            Nodeport | Ingress => Exp::Any,
            _ => Exp::Ok,
        },
        // Requests into x's NodePort fail when kube-proxy sends them on to another node.
        Fault::MasqueradeMissing { .. } => match layer {
            Nodeport => Exp::Any,
            _ => Exp::Ok,
        },
        // x's pods' service requests fail when they land on a backend on x's bridge.
        Fault::BridgeNfOff { node: x } => match layer {
            DnsService if s == x => Exp::Any,
            Nodeport | Ingress => Exp::Any,
            _ => Exp::Ok,
        },
        // Nothing on x answers for its pod CIDR: the tunnel delivers into a node with no
        // gateway and no route to its pods (x's own host included). x's pods have no
        // gateway either, so its pod agent loses its relay.
        Fault::BridgeAddrLost { node: x } => match layer {
            Underlay | UnderlayFullSize => Exp::Ok,
            GatewayFromHost | CorednsMetrics => yes(dn == x),
            GatewayFromPod | PodToPod | PodToPodFullSize | PodToPodFragmented | DnsPod
                if s == x =>
            {
                Exp::Any
            }
            _ if overlay => yes(cross && dn == x),
            _ => Exp::Any,
        },
        Fault::CoordinatorDown | Fault::ApiServerDown => Exp::Any,
        // Stated as hops in the catalogue: `model_expect` answered above.
        Fault::VxlanDropIn { .. }
        | Fault::VxlanDropOut { .. }
        | Fault::VxlanPort { .. }
        | Fault::VxlanVni { .. }
        | Fault::VtepChanged { .. }
        | Fault::IpForwardOff { .. }
        | Fault::ForwardReject { .. }
        | Fault::FdbMissing { .. }
        | Fault::RouteMissing { .. }
        | Fault::NeighMissing { .. }
        | Fault::VtepStale { .. }
        | Fault::VxlanPairDrop { .. }
        | Fault::DnsDown { .. }
        | Fault::MetricsBlocked { .. }
        | Fault::NodeportRemoved { .. }
        | Fault::IngressDown
        | Fault::DnsRulesMissing { .. }
        | Fault::OverlayInputDrop { .. }
        | Fault::IcmpForwardDrop { .. }
        | Fault::IcmpOutputDrop { .. }
        | Fault::DnsPortDrop { .. }
        | Fault::BridgeDown { .. }
        | Fault::PodCidrClaimed { .. } => Exp::Any,
        // Events are over once injected: the datapath is whole again
        // (tests/connection_state.rs checks that the mesh says so at once).
        Fault::ConntrackFlush { .. }
        | Fault::FirewallReload { .. }
        | Fault::CoordinatorRestart
        | Fault::HostAgentRestart { .. } => Exp::Ok,
        Fault::LinkDown { node: x } => {
            if s == x {
                return Exp::Unknown; // its agents cannot report
            }
            match layer {
                Nodeport if d == x => Exp::Fail,
                Ingress if dn == x => Exp::Fail,
                Nodeport | Ingress | DnsService => Exp::Any,
                _ => yes(cross && dn == x),
            }
        }
        Fault::Loss { node: x, .. } => {
            if s == x {
                return Exp::Any;
            }
            match layer {
                Underlay | UnderlayFullSize => yes(dn == x),
                Nodeport | Ingress | DnsService => Exp::Any,
                _ if cross && dn == x => Exp::Any,
                _ => Exp::Ok,
            }
        }
    }
}

/// Injects `fault`, checks that every cell says what the path predicts, heals, and checks
/// that the cluster is healthy again.
fn fault_round_trip(fault: Fault) {
    fault_round_trip_reading(fault, |_| {});
}

/// [`fault_round_trip`], with `read` given the broken round's report before the heal.
fn fault_round_trip_reading(fault: Fault, read: impl FnOnce(&meshprobe_core::CheckReport)) {
    let Some(mut lab) = lab_or_skip(3) else {
        return;
    };
    check_until_healthy(&lab, Duration::from_secs(10));
    lab.inject(fault.clone())
        .unwrap_or_else(|e| panic!("inject {fault}: {e}"));
    let (code, r) = check(&lab);
    assert_eq!(code, 1, "{fault}: check must exit 1");
    assert!(!r.healthy);
    let mut wrong = Vec::new();
    let (mut fails, mut oks) = (0, 0);
    for (layer, m) in &r.layers {
        for (src, dst, c) in m.iter() {
            let want = expect(lab.plan(), &fault, *layer, src, dst);
            let ok = match (want, c.state) {
                (Exp::Any, _) => true,
                (Exp::Ok, CellState::Ok) => {
                    oks += 1;
                    true
                }
                (Exp::Fail, CellState::Fail) => {
                    fails += 1;
                    true
                }
                (Exp::Unknown, CellState::Unknown) => true,
                _ => false,
            };
            if !ok {
                wrong.push(format!(
                    "{layer} {src}->{dst}: want {want:?}, got {:?} (loss {:?}, {:?})",
                    c.state, c.loss_pct, c.detail
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{fault}: {} cells wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        fails > 0,
        "{fault}: no cell was expected to fail; the test would prove nothing"
    );
    let unclaimed = common::unclaimed(&r);
    assert!(
        unclaimed.is_empty(),
        "{fault}: failing cells no finding claims: {unclaimed:?}"
    );
    assert!(oks > 10, "{fault}: only {oks} cells were expected ok");
    read(&r);
    lab.heal(&fault)
        .unwrap_or_else(|e| panic!("heal {fault}: {e}"));
    check_until_healthy(&lab, Duration::from_secs(30));
}

fn on(node: &str) -> String {
    node.to_owned()
}

#[test]
fn healthy_lab_is_all_ok() {
    let Some(lab) = lab_or_skip(3) else { return };
    let r = check_until_healthy(&lab, Duration::from_secs(10));
    let (ok, fail, unknown) = r.counts();
    assert_eq!((fail, unknown), (0, 0));
    // 3 nodes, per node: host ICMP 2+2+3, pod ICMP 3+2+2+2, DNS 1+2, metrics 2, NodePort 3
    // and ingress 1 from the host, and the same from the pod.
    assert_eq!(
        ok,
        3 * (2 + 2 + 3) + 3 * (3 + 2 + 2 + 2) + 3 * 3 + 3 * (2 + 3 + 1) + 3 * (3 + 1),
        "cells: {:?}",
        r.layers.keys()
    );
    assert!(r.findings.is_empty());
    assert_eq!(r.nodes.len(), 3);
}

#[test]
fn sixteen_node_lab_is_healthy() {
    let Some(lab) = lab_or_skip(16) else { return };
    let r = check_until_healthy(&lab, Duration::from_secs(30));
    assert_eq!(r.nodes.len(), 16);
    assert_eq!(r.layers[&Layer::PodToPod].row("n16").count(), 15);
}

#[test]
fn fault_vxlan_drop_in() {
    fault_round_trip(Fault::VxlanDropIn { node: on("n3") });
}

#[test]
fn fault_vxlan_drop_out() {
    fault_round_trip(Fault::VxlanDropOut { node: on("n1") });
}

#[test]
fn fault_ip_forward_off() {
    fault_round_trip(Fault::IpForwardOff { node: on("n2") });
}

#[test]
fn fault_forward_reject() {
    fault_round_trip(Fault::ForwardReject { node: on("n1") });
}

#[test]
fn fault_fdb_missing() {
    fault_round_trip(Fault::FdbMissing {
        node: on("n1"),
        peer: on("n3"),
    });
}

#[test]
fn fault_route_missing() {
    fault_round_trip(Fault::RouteMissing {
        node: on("n2"),
        peer: on("n1"),
    });
}

#[test]
fn fault_neigh_missing() {
    fault_round_trip(Fault::NeighMissing {
        node: on("n3"),
        peer: on("n2"),
    });
}

#[test]
fn fault_vtep_stale() {
    fault_round_trip(Fault::VtepStale {
        node: on("n1"),
        peer: on("n3"),
    });
}

#[test]
fn fault_underlay_mtu() {
    fault_round_trip(Fault::UnderlayMtu {
        node: on("n2"),
        mtu: 1400,
    });
}

#[test]
fn fault_dns_down() {
    fault_round_trip(Fault::DnsDown {
        pod: "coredns-a".into(),
    });
}

#[test]
fn fault_metrics_blocked() {
    fault_round_trip(Fault::MetricsBlocked {
        pod: "coredns-b".into(),
    });
}

#[test]
fn fault_nodeport_removed() {
    fault_round_trip(Fault::NodeportRemoved { node: on("n1") });
}

#[test]
fn fault_ingress_down() {
    fault_round_trip(Fault::IngressDown);
}

#[test]
fn fault_link_down() {
    fault_round_trip(Fault::LinkDown { node: on("n2") });
}

#[test]
fn fault_loss() {
    if !common::nft_here() {
        return;
    }
    fault_round_trip(Fault::Loss {
        node: on("n3"),
        percent: 50,
    });
}

#[test]
fn fault_icmp_blocked() {
    fault_round_trip(Fault::IcmpBlocked { node: on("n2") });
}

#[test]
fn fault_jumbo_mtu() {
    fault_round_trip(Fault::JumboMtu { node: on("n3") });
}

#[test]
fn fault_vxlan_port() {
    fault_round_trip(Fault::VxlanPort { node: on("n1") });
}

#[test]
fn fault_vxlan_vni() {
    fault_round_trip(Fault::VxlanVni { node: on("n2") });
}

#[test]
fn fault_vtep_changed() {
    fault_round_trip(Fault::VtepChanged { node: on("n3") });
}

#[test]
fn fault_dns_rules_missing() {
    fault_round_trip(Fault::DnsRulesMissing { node: on("n1") });
}

#[test]
fn fault_vxlan_pair_drop() {
    fault_round_trip(Fault::VxlanPairDrop {
        node: on("n2"),
        peer: on("n3"),
    });
}

#[test]
fn fault_host_firewall() {
    fault_round_trip(Fault::HostFirewall { node: on("n1") });
}

/// Row 13 of issue 23: firewalld's native nftables, which `iptables-save` does not show.
/// The finding quotes the nft rule and opens the port in nft, and the heal removes the
/// table by name.
#[test]
fn fault_nft_host_firewall() {
    if !common::nft_here() {
        return;
    }
    fault_round_trip_reading(Fault::NftHostFirewall { node: on("n1") }, |r| {
        let f = r
            .findings
            .iter()
            .find(|f| f.cause.as_str() == "vxlan-blocked")
            .unwrap_or_else(|| panic!("{:#?}", r.findings));
        assert_eq!(
            f.nodes,
            [meshprobe_core::NodeName::new("n1").expect("name")]
        );
        assert!(
            f.evidence.iter().any(|e| e.contains(
                "nft inet meshprobe_fw filter_INPUT: reject with icmpx admin-prohibited"
            )),
            "{:#?}",
            f.evidence
        );
        assert!(
            f.fix
                .contains("nft insert rule inet meshprobe_fw filter_INPUT udp dport 8472 accept"),
            "{}",
            f.fix
        );
    });
}

#[test]
fn fault_bridge_mtu() {
    fault_round_trip(Fault::BridgeMtu { node: on("n2") });
}

/// A fault that rides kube-proxy's random choice of backend: every cell it cannot touch
/// stays ok in every round, and within five rounds a failing cell appears, every failing
/// cell is claimed, and each finding has `cause` and names exactly `nodes`.
fn random_fault_round_trip(fault: Fault, cause: &str, nodes: &[&str]) {
    let Some(mut lab) = lab_or_skip(3) else {
        return;
    };
    check_until_healthy(&lab, Duration::from_secs(10));
    lab.inject(fault.clone()).expect("inject");
    let mut seen = None;
    for _ in 0..5 {
        let (code, r) = check(&lab);
        let mut wrong = Vec::new();
        for (layer, m) in &r.layers {
            for (src, dst, c) in m.iter() {
                if expect(lab.plan(), &fault, *layer, src, dst) == Exp::Ok
                    && c.state != CellState::Ok
                {
                    wrong.push(format!("{layer} {src}->{dst}: {:?}", c.state));
                }
            }
        }
        assert!(wrong.is_empty(), "{fault}: cells wrong: {wrong:?}");
        if code == 1 {
            seen = Some(r);
            break;
        }
    }
    let r = seen.unwrap_or_else(|| panic!("{fault}: five rounds without a failing cell"));
    let unclaimed = common::unclaimed(&r);
    assert!(unclaimed.is_empty(), "{fault}: unclaimed {unclaimed:?}");
    let shapes: Vec<(&str, Vec<&str>)> = r
        .findings
        .iter()
        .map(|f| {
            (
                f.cause.as_str(),
                f.nodes.iter().map(|n| n.as_str()).collect(),
            )
        })
        .collect();
    assert!(
        !shapes.is_empty() && shapes.iter().all(|(c, n)| *c == cause && n == nodes),
        "{fault}: want {cause} on {nodes:?}, got {shapes:?}"
    );
    lab.heal(&fault).expect("heal");
    check_until_healthy(&lab, Duration::from_secs(30));
}

/// A dead backend (one in three) fails requests from every node: named, on no node.
#[test]
fn fault_backend_down() {
    random_fault_round_trip(
        Fault::BackendDown { node: on("n2") },
        "service-backend-down",
        &[],
    );
}

#[test]
fn fault_masquerade_missing() {
    random_fault_round_trip(
        Fault::MasqueradeMissing { node: on("n3") },
        "nodeport-broken",
        &["n3"],
    );
}

/// n1 runs coredns-a: half its pods' queries to the service IP land there.
#[test]
fn fault_bridge_nf_off() {
    random_fault_round_trip(
        Fault::BridgeNfOff { node: on("n1") },
        "bridge-netfilter-off",
        &["n1"],
    );
}

#[test]
fn fault_bridge_addr_lost() {
    fault_round_trip(Fault::BridgeAddrLost { node: on("n2") });
}

/// issue 21: a route to most of a peer's pod range over another device. The kernel's
/// own route lookup shows it, whatever flannel's route in the table says.
#[test]
fn fault_route_hijack() {
    fault_round_trip(Fault::RouteHijack {
        node: on("n3"),
        peer: on("n1"),
    });
}

/// issue 21, written after the model: another node holds the peer's pod range on its
/// bridge, and the other nodes' entries for the peer point at it. One cause on the
/// claimant, never one per sufferer.
#[test]
fn fault_pod_cidr_claimed() {
    random_fault_round_trip(
        Fault::PodCidrClaimed {
            node: on("n2"),
            peer: on("n3"),
        },
        "pod-cidr-conflict",
        &["n2"],
    );
}

/// issue 21: pods cut off by local state. The bridge is down; the evidence says so, and
/// the finding is not a firewall read by elimination.
#[test]
fn fault_bridge_down() {
    fault_round_trip(Fault::BridgeDown { node: on("n3") });
}

/// Written after the datapath model, found by it: a host firewall that drops what arrives
/// from the overlay is local delivery, not VXLAN (pod-to-pod through the tunnel passes).
#[test]
fn fault_overlay_input_drop() {
    fault_round_trip(Fault::OverlayInputDrop { node: on("n2") });
}

/// ICMP dropped in FORWARD: TCP and UDP through the node pass, so it is not "does not
/// forward".
#[test]
fn fault_icmp_forward_drop() {
    fault_round_trip(Fault::IcmpForwardDrop { node: on("n3") });
}

/// Issue 23, row 10: the node's own sends refused (EPERM) are its OUTPUT chain's, not
/// packet loss.
#[test]
fn fault_icmp_output_drop() {
    fault_round_trip(Fault::IcmpOutputDrop { node: on("n2") });
}

/// DNS to coredns-b dropped for other nodes' pods: its own node's pods resolve, so the
/// pod is not down.
#[test]
fn fault_dns_port_drop() {
    random_fault_round_trip(
        Fault::DnsPortDrop {
            pod: "coredns-b".into(),
        },
        "forward-rejected",
        &["n2"],
    );
}

#[test]
fn lab_down_removes_every_namespace_and_process() {
    let Some(mut lab) = lab_or_skip(2) else {
        return;
    };
    let namespaces = lab.plan().namespaces();
    let pids: Vec<i32> = lab.processes().iter().map(|p| p.1).collect();
    assert!(
        pids.len() > 4 + 2 + 2,
        "agents, web pods, coredns, ingress, coordinator: {pids:?}"
    );
    lab.down().expect("down");
    for ns in namespaces {
        assert!(
            !std::path::Path::new("/run/netns").join(&ns).exists(),
            "{ns} left behind"
        );
    }
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "process {pid} still running"
        );
    }
}

/// The meshprobe binary run as a user runs it, on the test's lab, with a PATH that has no
/// meshprobe on it (as after `cargo run -- demo`).
fn lab_cli(lab: &meshprobe_sandbox::lab::Lab, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::BIN)
        .arg("lab")
        .args(args)
        .env(
            "MESHPROBE_LAB_DIR",
            std::env::temp_dir().join("meshprobe-test-labs"),
        )
        .env("MESHPROBE_LAB", lab.name())
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .expect("run meshprobe lab")
}

/// Issue 23, items 5 and 6: `lab exec ... -- meshprobe check`, as `lab up` and `demo`
/// print it, runs this binary with no meshprobe on PATH; a command that is not installed
/// exits 127 with a hint (1 would read as NOT HEALTHY). A fault fixed by hand heals
/// (`lab heal KIND` finds the one in force without --node), can be injected again, and
/// `--forget` drops one without touching the datapath.
#[test]
fn lab_exec_and_heal_work_as_printed() {
    let Some(lab) = lab_or_skip(2) else {
        return;
    };
    let out = lab_cli(
        &lab,
        &[
            "exec",
            "ctl",
            "--",
            "meshprobe",
            "check",
            "--output",
            "json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: meshprobe_core::CheckReport =
        serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert!(report.healthy, "{:?}", report.findings);
    let out = lab_cli(
        &lab,
        &["exec", "ctl", "--", "no-such-command-meshprobe-test"],
    );
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("command not found"), "{err}");

    // Inject, then fix by hand the way the finding's fix says: delete the rule.
    let out = lab_cli(&lab, &["fault", "icmp-blocked", "--node", "n2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns = lab.plan().node("n2").expect("n2").ns.clone();
    let rules = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "iptables", "-w", "-S", "INPUT"])
        .output()
        .expect("iptables -S");
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    let rule = rules
        .lines()
        .find(|l| l.contains("-p icmp") && l.contains("-j DROP"))
        .unwrap_or_else(|| panic!("the fault's rule in {rules}"));
    let undo = rule.replacen("-A ", "-D ", 1);
    let mut delete = vec!["netns", "exec", &ns, "iptables", "-w"];
    delete.extend(undo.split_whitespace());
    let fixed = std::process::Command::new("ip")
        .args(&delete)
        .status()
        .expect("iptables -D");
    assert!(fixed.success(), "{delete:?}");
    let out = lab_cli(&lab, &["heal", "icmp-blocked"]);
    assert!(
        out.status.success(),
        "a fault fixed by hand heals: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("healed"));
    let out = lab_cli(&lab, &["fault", "icmp-blocked", "--node", "n2"]);
    assert!(
        out.status.success(),
        "not 'already in force' after the heal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lab_cli(&lab, &["heal", "--forget"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("forgotten"));
    let saved = meshprobe_sandbox::lab::Lab::open(
        lab.name(),
        &std::env::temp_dir().join("meshprobe-test-labs"),
    )
    .expect("the lab's saved state");
    assert!(saved.faults().is_empty(), "{:?}", saved.faults());
    let still = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "iptables", "-w", "-S", "INPUT"])
        .output()
        .expect("iptables -S");
    assert!(
        String::from_utf8_lossy(&still.stdout).contains("-j DROP"),
        "--forget leaves the datapath as it is"
    );
}
