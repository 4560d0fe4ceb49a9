//! The diagnosis on the sandbox: every fault kind injected on a randomly chosen node, at 3
//! and at 6 nodes; `check` must exit 1 and its top finding must name the cause, the node
//! and (for pair faults) the peer. Two faults at once are both found; a healthy lab and a
//! lab with 1% loss on a node give no finding. Needs root, like `tests/lab.rs`.
//!
//! The choice of nodes is random; the seed is printed, and MESHPROBE_TEST_SEED replays it.

mod common;

use std::time::Duration;

use common::{check, check_until_healthy, lab_or_skip, seed};
use meshprobe_core::catalogue::{Class, FaultKind, Role};
use meshprobe_core::{Cause, CheckReport};
use meshprobe_sandbox::{Fault, LabPlan};

/// What the top finding must say: cause, node, peer, from the fault catalogue's
/// declaration of the kind ("" for the kinds that are not datapath faults).
fn expected(plan: &LabPlan, f: &Fault) -> (&'static str, String, Option<String>) {
    let Some(want) = f.kind().spec().finding else {
        return ("", String::new(), None);
    };
    let node = match want.on {
        Role::Node => f.node().unwrap_or_default().to_owned(),
        Role::PodNode => f
            .pod()
            .and_then(|p| plan.coredns_node(p))
            .map(|n| n.name.clone())
            .unwrap_or_default(),
        Role::IngressNode => plan.ingress().name.clone(),
        Role::Nobody => String::new(),
    };
    let cause = match want.cause {
        Cause::Other(_) => "",
        ref c => Cause::KNOWN
            .iter()
            .find(|k| *k == c)
            .map_or("", |k| k.as_str()),
    };
    let peer = want
        .names_peer
        .then(|| f.peer().map(str::to_owned))
        .flatten();
    (cause, node, peer)
}

/// The nodes a finding may name under `f`: the fault's node, a CoreDNS pod's node, the
/// ingress node.
fn at_fault(plan: &LabPlan, f: &Fault) -> Vec<String> {
    let (_, node, _) = expected(plan, f);
    f.node()
        .map(str::to_owned)
        .into_iter()
        .chain([node])
        .collect()
}

/// One fault of every datapath kind in the catalogue, on nodes drawn from `rng`.
fn every_kind(plan: &LabPlan, rng: &mut fastrand::Rng) -> Vec<Fault> {
    let n = plan.nodes.len();
    // The kinds built with nftables need `nft` (CI installs it).
    let nft = common::nft_here();
    FaultKind::ALL
        .iter()
        .filter(|k| k.spec().class == Class::Datapath)
        .filter(|&&k| nft || !matches!(k, FaultKind::NftHostFirewall | FaultKind::Loss))
        .map(|&k| {
            let a = rng.usize(1..=n);
            let b = (a + rng.usize(1..n) - 1) % n + 1;
            // br_netfilter off shows where its pods' DNS lands on its own bridge half
            // the time: on a CoreDNS node.
            let a = if k == FaultKind::BridgeNfOff {
                rng.usize(1..=2)
            } else {
                a
            };
            let pod = if rng.bool() { "coredns-a" } else { "coredns-b" };
            let (node, peer) = (format!("n{a}"), format!("n{b}"));
            Fault::parse(k.id(), Some(&node), Some(&peer), Some(pod), None, Some(50))
                .unwrap_or_else(|e| panic!("{k}: {e}"))
        })
        .collect()
}

/// Faults that ride kube-proxy's random choice of backend: a round may miss them, so the
/// suite gives them a few.
fn rides_the_dice(f: &Fault) -> bool {
    matches!(
        f,
        Fault::BackendDown { .. } | Fault::MasqueradeMissing { .. } | Fault::BridgeNfOff { .. }
    )
}

fn summary(r: &CheckReport) -> String {
    r.findings
        .iter()
        .map(|f| {
            format!(
                "  {} nodes={:?} peers={:?} dir={}: {}",
                f.cause, f.nodes, f.peers, f.direction, f.summary
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Injects every kind in turn on one lab; collects every miss before failing.
fn suite(nodes: usize, test: &str) {
    let Some(mut lab) = lab_or_skip(nodes) else {
        return;
    };
    let mut rng = fastrand::Rng::with_seed(seed(test));
    check_until_healthy(&lab, Duration::from_secs(10));
    let mut misses = Vec::new();
    for fault in every_kind(lab.plan(), &mut rng) {
        let (cause, node, peer) = expected(lab.plan(), &fault);
        lab.inject(fault.clone())
            .unwrap_or_else(|e| panic!("inject {fault}: {e}"));
        let mut round = check(&lab);
        for _ in 1..if rides_the_dice(&fault) { 4 } else { 1 } {
            if round.0 == 1 {
                break;
            }
            round = check(&lab);
        }
        let (code, r) = round;
        let top = r.findings.first();
        let got = top.map(|f| {
            (
                f.cause.as_str(),
                f.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                f.peers.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
        });
        let ok = code == 1
            && got.as_ref().is_some_and(|(c, ns, ps)| {
                *c == cause
                    && (if node.is_empty() {
                        ns.is_empty()
                    } else {
                        ns.contains(&node)
                    })
                    && peer.as_ref().is_none_or(|p| ps.contains(p))
            });
        if !ok {
            misses.push(format!(
                "{fault}: want {cause} on {node}{} (exit 1), got exit {code}:\n{}",
                peer.map(|p| format!(" peer {p}")).unwrap_or_default(),
                summary(&r)
            ));
        }
        // Exactly right: no finding names a node other than the one at fault.
        let at_fault = at_fault(lab.plan(), &fault);
        if let Some(f) = r
            .findings
            .iter()
            .find(|f| f.nodes.iter().any(|n| !at_fault.contains(&n.to_string())))
        {
            misses.push(format!(
                "{fault}: {} names a healthy node {:?}:\n{}",
                f.cause,
                f.nodes,
                summary(&r)
            ));
        }
        let unclaimed = common::unclaimed(&r);
        if !unclaimed.is_empty() {
            misses.push(format!(
                "{fault}: failing cells no finding claims: {unclaimed:?}\n{}",
                summary(&r)
            ));
        }
        lab.heal(&fault)
            .unwrap_or_else(|e| panic!("heal {fault}: {e}"));
        check_until_healthy(&lab, Duration::from_secs(30));
    }
    assert!(
        misses.is_empty(),
        "{nodes} nodes: {} misdiagnoses:\n{}",
        misses.len(),
        misses.join("\n")
    );
}

#[test]
fn every_fault_is_diagnosed_at_3_nodes() {
    suite(3, "every_fault_is_diagnosed_at_3_nodes");
}

#[test]
fn every_fault_is_diagnosed_at_6_nodes() {
    suite(6, "every_fault_is_diagnosed_at_6_nodes");
}

#[test]
fn two_faults_on_different_nodes_are_both_found() {
    let Some(mut lab) = lab_or_skip(6) else {
        return;
    };
    let mut rng = fastrand::Rng::with_seed(seed("two_faults_on_different_nodes_are_both_found"));
    let mut nodes: Vec<usize> = (1..=6).collect();
    rng.shuffle(&mut nodes);
    let combos = [
        (
            Fault::VxlanDropIn {
                node: format!("n{}", nodes[0]),
            },
            Fault::IpForwardOff {
                node: format!("n{}", nodes[1]),
            },
        ),
        (
            Fault::UnderlayMtu {
                node: format!("n{}", nodes[2]),
                mtu: 1400,
            },
            Fault::ForwardReject {
                node: format!("n{}", nodes[3]),
            },
        ),
        (
            Fault::LinkDown {
                node: format!("n{}", nodes[4]),
            },
            Fault::NodeportRemoved {
                node: format!("n{}", nodes[5]),
            },
        ),
        // Two kinds from beyond the first list: a pair and a node-internal MTU.
        (
            Fault::VxlanPairDrop {
                node: format!("n{}", nodes[0]),
                peer: format!("n{}", nodes[1]),
            },
            Fault::BridgeMtu {
                node: format!("n{}", nodes[2]),
            },
        ),
    ];
    check_until_healthy(&lab, Duration::from_secs(10));
    let mut misses = Vec::new();
    for (a, b) in combos {
        lab.inject(a.clone()).expect("inject");
        lab.inject(b.clone()).expect("inject");
        let (code, r) = check(&lab);
        for f in [&a, &b] {
            let (cause, node, _) = expected(lab.plan(), f);
            let found = r
                .findings
                .iter()
                .any(|x| x.cause.as_str() == cause && x.nodes.iter().any(|n| n.as_str() == node));
            if code != 1 || !found {
                misses.push(format!(
                    "{a} + {b}: {f} not found as {cause} on {node} (exit {code}):\n{}",
                    summary(&r)
                ));
            }
        }
        lab.heal_all().expect("heal");
        check_until_healthy(&lab, Duration::from_secs(30));
    }
    assert!(misses.is_empty(), "{}", misses.join("\n"));
}

#[test]
fn healthy_and_one_percent_loss_give_no_finding() {
    let Some(mut lab) = lab_or_skip(3) else {
        return;
    };
    if !common::nft_here() {
        return;
    }
    let r = check_until_healthy(&lab, Duration::from_secs(10));
    assert!(r.findings.is_empty());
    let mut rng = fastrand::Rng::with_seed(seed("healthy_and_one_percent_loss_give_no_finding"));
    let node = format!("n{}", rng.usize(1..=3));
    lab.inject(Fault::Loss {
        node: node.clone(),
        percent: 1,
    })
    .expect("inject");
    // Several rounds: none may produce a finding or a failing cell.
    for _ in 0..3 {
        let (code, r) = check(&lab);
        assert!(
            r.findings.is_empty(),
            "1% loss on {node} gave findings:\n{}",
            summary(&r)
        );
        assert_eq!(code, 0, "1% loss on {node}: {:?}", common::not_ok(&r));
    }
}
