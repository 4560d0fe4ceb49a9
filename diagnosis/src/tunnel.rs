//! The tunnel: nodes and pairs whose encapsulated traffic is lost.

#![allow(unused_imports)]

use std::collections::BTreeSet;

use meshprobe_core::matrix::{AgentState, CellState};
use meshprobe_core::{Layer, NodeName};

use meshprobe_core::{Cause, Direction};

use meshprobe_core::evidence::FirewallRule;

use crate::consistency::Attr;
use crate::cx::*;
use crate::index::*;
use crate::*;

impl Cx<'_> {
    // ---- 2. the tunnel --------------------------------------------------------------------

    /// The tunnel s -> d fails while the underlay between them works.
    pub(crate) fn tunnel_cut(&self, s: usize, d: usize) -> bool {
        s != d
            && self.dead(Layer::GatewayFromHost, s, d)
            && self.underlay_up(s, d)
            && !self.ledger.is_explained(Part::Network, s, d)
    }

    pub(crate) fn tunnel_nodes(&mut self) {
        let port = self.t.cluster.overlay.port;
        let iface = self.t.cluster.overlay.interface.clone();
        for x in 0..self.n() {
            if !self.ix.involved(x) {
                continue;
            }
            if self.ledger.is_broken(x) {
                continue;
            }
            let looked: Vec<usize> = self
                .ix
                .col(Layer::GatewayFromHost, x)
                .iter()
                .copied()
                .filter(|&s| s != x && self.underlay_up(s, x))
                .collect();
            let cut_in: Vec<(usize, usize)> = looked
                .iter()
                .filter(|&&s| self.tunnel_cut(s, x))
                .map(|&s| (s, x))
                .collect();
            if !self.quorum(cut_in.len(), looked.len()) {
                continue;
            }
            let cut_out: Vec<(usize, usize)> = self
                .ix
                .row(Layer::GatewayFromHost, x)
                .iter()
                .filter(|&&d| self.tunnel_cut(x, d))
                .map(|&d| (x, d))
                .collect();
            let xn = self.nm(x);
            let dev = self.underlay_dev(x);
            let mut evidence = self.cite(Layer::GatewayFromHost, &cut_in);
            evidence.extend(self.cite(Layer::GatewayFromHost, &cut_out));
            let underlay_ok = self
                .ix
                .col(Layer::Underlay, x)
                .iter()
                .filter(|&&s| self.ok(Layer::Underlay, s, x))
                .count();
            evidence.push(format!(
                "the underlay to {xn} works: {underlay_ok} nodes reach {} by ICMP",
                self.node_ip(x)
            ));
            let observers: Vec<usize> = cut_in.iter().map(|p| p.0).collect();
            let captured = self.capture_direction(x, &observers);
            for &s in observers.iter().take(2) {
                evidence.extend(self.chain_line(s, x));
                evidence.extend(self.chain_line(x, s));
            }
            if let Some((_, why, _)) = &captured {
                evidence.push(why.clone());
            }
            let ev = self.evidence(x);
            let port_rules = ev.map(|e| e.overlay_port_rules.clone()).unwrap_or_default();
            let missing = ev
                .and_then(|e| e.overlay.as_ref())
                .map(|o| o.peers_missing())
                .unwrap_or_default();
            let device = ev
                .and_then(|e| e.overlay.as_ref())
                .map(|o| o.device.clone());
            let (cause, direction, summary, fix);
            if !port_rules.is_empty() {
                let inbound = port_rules
                    .iter()
                    .any(|r| matches!(r.chain.as_str(), "INPUT" | "PREROUTING"));
                let outbound = port_rules
                    .iter()
                    .any(|r| matches!(r.chain.as_str(), "OUTPUT" | "POSTROUTING"));
                // What the wire shows wins over what the rules suggest.
                direction = match (&captured, inbound, outbound) {
                    (Some((d, _, _)), _, _) => d.clone(),
                    (None, true, true) => Direction::Both,
                    (None, false, true) => Direction::Outbound,
                    _ => Direction::Inbound,
                };
                for r in &port_rules {
                    evidence.push(format!("{xn}: {}", r.shown()));
                }
                cause = Cause::VxlanBlocked;
                summary = format!(
                    "VXLAN (UDP {port}) is dropped {direction} on {xn}: pods on {xn} are cut off from other nodes"
                );
                let first = &port_rules[0];
                let names_port = first.rule.split_whitespace().any(|w| w == port.to_string());
                fix = if let Some(delete) = first.delete_command().filter(|_| names_port) {
                    format!(
                        "on {xn}: `{delete}`, then `tcpdump -ni {dev} udp port {port}` on {xn} and a peer"
                    )
                } else {
                    // A catch-all REJECT or a policy of DROP: open the port ahead of it, in
                    // the rule's own backend (firewalld's way for its tables).
                    let accept = first.accept_ahead("udp", port).unwrap_or_else(|| {
                        format!("iptables -I INPUT -p udp --dport {port} -j ACCEPT")
                    });
                    let firewalld = if first.is_firewalld() {
                        String::new()
                    } else {
                        format!(" (firewalld: `firewall-cmd --permanent --add-port={port}/udp`)")
                    };
                    format!(
                        "on {xn}: accept the overlay ahead of that rule, `{accept}`{firewalld}, as flannel's docs require; then `tcpdump -ni {dev} udp port {port}` on {xn}"
                    )
                };
            } else if self.cfg.is_odd(x, &[Attr::Gateway]) {
                // The tunnel delivers (the capture sees it arrive), but nothing on x holds
                // the address the gateway probes aim at, nor a route into its pods.
                direction = Direction::Both;
                cause = Cause::PodGatewayMissing;
                evidence.extend(self.odd_lines(x, &[Attr::Gateway]));
                let gw = self
                    .t
                    .node(&name(self.ix.names[x]))
                    .map(|n| format!("{}/{}", n.gateway, n.pod_cidr.net().prefix_len()))
                    .unwrap_or_default();
                summary = format!(
                    "{xn}'s cni0 lost its gateway address {gw}: its pods have no gateway, and traffic for them arrives at {xn} with no route"
                );
                fix = format!(
                    "on {xn}: `ip addr add {gw} dev cni0` (or restart flannel and the CNI); if NetworkManager manages cni0 and {iface}, mark them unmanaged (`[keyfile] unmanaged-devices=interface-name:cni0;interface-name:{iface}` in /etc/NetworkManager/conf.d/)"
                );
            } else if matches!(device, Some(None)) || matches!(device, Some(Some(ref d)) if !d.up) {
                direction = Direction::Both;
                cause = Cause::OverlayPeerMissing;
                evidence.push(match device {
                    Some(Some(d)) => format!("{xn}: {} is down", d.name),
                    _ => format!("{xn}: {iface} does not exist"),
                });
                summary = format!("{xn}'s overlay device {iface} is missing or down");
                fix = format!(
                    "restart flannel on {xn} (`kubectl -n kube-flannel delete pod -l app=flannel --field-selector spec.nodeName={xn}`)"
                );
            } else if self
                .cfg
                .is_odd(x, &[Attr::VxlanPort, Attr::Vni, Attr::VtepMac])
            {
                direction = Direction::Both;
                cause = Cause::VxlanConfigMismatch;
                evidence.extend(self.odd_lines(x, &[Attr::VxlanPort, Attr::Vni, Attr::VtepMac]));
                summary = format!(
                    "{xn}'s VXLAN device {iface} does not match the cluster's: encapsulated traffic to and from {xn} is dropped"
                );
                fix = format!(
                    "on {xn}: `ip -d link show {iface}` (vxlan id, dstport, address) against a healthy node's; restart flannel on {xn} so it recreates {iface} and republishes its VTEP MAC, then `ip neigh show dev {iface}` on a peer"
                );
            } else if self.peers_lack(x, &observers) {
                direction = Direction::Both;
                cause = Cause::OverlayPeerMissing;
                let lackers: Vec<String> = observers
                    .iter()
                    .filter(|&&s| self.lacks(s, x))
                    .map(|&s| self.nm(s))
                    .collect();
                evidence.push(format!(
                    "{} nodes ({}) lack overlay entries for {xn}, and {xn} lacks none of theirs: {xn} is the node that changed",
                    lackers.len(),
                    lackers.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
                ));
                for &s in observers.iter().take(2) {
                    evidence.extend(self.overlay_lines_for(s, Some(xn.as_str())));
                }
                summary = format!(
                    "the other nodes' overlay state lacks {xn}: {xn}'s subnet or VTEP was not published to them"
                );
                fix = format!(
                    "`kubectl get node {xn} -o yaml | grep flannel` (backend-data VtepMAC, public-ip); restart flannel on {xn} to republish, and check flanneld's logs on a peer"
                );
            } else if !missing.is_empty() && missing.len() * 2 >= cut_in.len().max(1) {
                direction = Direction::Outbound;
                cause = Cause::OverlayPeerMissing;
                evidence.extend(self.overlay_lines(x));
                summary = format!(
                    "{xn}'s overlay state lacks its peers: it cannot encapsulate toward them"
                );
                fix = format!(
                    "on {xn}: `ip route | grep {iface}; ip neigh show dev {iface}; bridge fdb show dev {iface}`; restart flannel on {xn}"
                );
            } else {
                direction = captured
                    .as_ref()
                    .map_or(Direction::Unknown, |c| c.0.clone());
                cause = Cause::VxlanBlocked;
                // The capture says whether the node's own stack drops it: its NIC sees the
                // traffic (inbound) or never sees its own (outbound).
                let inside = captured
                    .as_ref()
                    .is_some_and(|c| c.0 != Direction::Inbound || c.2 == DropAt::AfterNic);
                if let Some(ev) = ev {
                    evidence.push(if inside {
                        format!("{xn}: no iptables rule drops UDP {port} and its overlay entries are complete, yet the capture puts the drop inside {xn}: look at nftables, eBPF/XDP programs and host security agents")
                    } else {
                        format!("{xn}: no iptables rule drops UDP {port} and its overlay entries are complete: the drop is outside the node's firewall (security group, switch ACL) or in a host security agent")
                    });
                    for a in &ev.security_agents {
                        evidence.push(format!("{xn}: security agent {a} is running"));
                    }
                } else {
                    evidence.push(format!("{xn}'s host agent did not report: this verdict rests on the other nodes' view"));
                }
                summary = format!(
                    "VXLAN (UDP {port}) to and from {xn} is lost while its node IP answers"
                );
                fix = if inside {
                    format!(
                        "on {xn}: `nft list ruleset | grep -n {port}`, `bpftool net show dev {dev}` and the host security agents' policies; `tcpdump -ni {dev} udp port {port}` on {xn} and a peer shows which way it vanishes"
                    )
                } else {
                    format!(
                        "allow UDP {port} between the nodes (security group, firewalld, switch ACL); `tcpdump -ni {dev} udp port {port}` on {xn} and a peer shows which way it vanishes"
                    )
                };
            }
            if self.ledger.vetoed(&cause, x) {
                continue;
            }
            self.ledger.mark_broken(x, cause.clone());
            self.ledger
                .explain_node(&[Part::Network, Part::Pods, Part::Big], x);
            let cells = self.claim_node(x, OVERLAY) + self.claim_balanced_of(x);
            let hop = format!("overlay: * <-> {xn} {dev}, UDP {port} ({iface})");
            self.push(
                1,
                (cut_in.len() + cut_out.len()) * 10 + cells,
                cause,
                vec![x],
                vec![],
                direction,
                hop,
                summary,
                evidence,
                fix,
            );
        }
    }

    /// The capture's view of probes from `s` to `d`, from both ends: (left s's NIC, arrived
    /// at d's NIC, replies left d's NIC, replies arrived at s's NIC). `None` without a
    /// capture on both ends.
    pub(crate) fn chain(&self, s: usize, d: usize) -> Option<[meshprobe_core::capture::Sizes; 4]> {
        let (sn, dn) = (self.ix.names[s], self.ix.names[d]);
        let at_s = self.r.capture.get(&name(sn))?.peer(dn)?;
        let at_d = self.r.capture.get(&name(dn))?.peer(sn)?;
        Some([
            at_s.requests_out,
            at_d.requests_in,
            at_d.replies_out,
            at_s.replies_in,
        ])
    }

    /// Capture evidence for probes s -> d, in words, from both ends.
    pub(crate) fn chain_line(&self, s: usize, d: usize) -> Option<String> {
        let c = self.chain(s, d)?;
        let (sn, dn) = (self.nm(s), self.nm(d));
        let (si, di) = (self.capture_iface(s), self.capture_iface(d));
        Some(format!(
            "capture: {} probes left {sn}'s {si} toward {dn}; {dn}'s {di} saw {} arrive and {} replies leave; {sn} saw {} replies come back",
            c[0].total(),
            c[1].total(),
            c[2].total(),
            c[3].total()
        ))
    }

    pub(crate) fn capture_iface(&self, x: usize) -> String {
        self.r
            .capture
            .get(&name(self.ix.names[x]))
            .map(|c| c.interface.clone())
            .unwrap_or_else(|| "NIC".into())
    }

    /// Where the capture says encapsulated traffic to and from `x` dies, given peers `obs`
    /// whose tunnel to `x` is cut: `Some((direction, explanation))`.
    /// Which way the capture shows x's VXLAN dying: (direction, the line that says so,
    /// where on x's side of the wire).
    pub(crate) fn capture_direction(
        &self,
        x: usize,
        obs: &[usize],
    ) -> Option<(Direction, String, DropAt)> {
        let xn = self.nm(x);
        let (mut leave_x, mut at_x_nic, mut looked) = (0, 0, false);
        for &s in obs {
            let (Some(into), Some(from)) = (self.chain(s, x), self.chain(x, s)) else {
                continue;
            };
            looked = true;
            leave_x += from[0].total() + into[2].total();
            at_x_nic += into[1].total() + from[3].total();
        }
        if !looked {
            return None;
        }
        let iface = self.capture_iface(x);
        Some(if leave_x == 0 {
            (
                Direction::Outbound,
                format!(
                    "capture: nothing encapsulated leaves {xn}'s {iface} toward those peers, though its agents probe them: the drop is inside {xn}, before its NIC"
                ),
                DropAt::BeforeNic,
            )
        } else if at_x_nic > 0 {
            (
                Direction::Inbound,
                format!(
                    "capture: {at_x_nic} encapsulated probes and replies reach {xn}'s {iface} and are never answered or delivered: they die inside {xn}, after its NIC"
                ),
                DropAt::AfterNic,
            )
        } else {
            (
                Direction::Inbound,
                format!(
                    "capture: {xn}'s own probes leave its {iface}, but nothing from its peers arrives there: the drop is on the path into {xn} (security group, switch ACL)"
                ),
                DropAt::OnPath,
            )
        })
    }

    /// Which end of the pair a-b drops their VXLAN, by the capture at both ends, or by
    /// the firewall rules of one end when there is no capture.
    pub(crate) fn pair_drop(&self, a: usize, b: usize) -> Option<PairDrop> {
        if let (Some(ab), Some(ba)) = (self.chain(a, b), self.chain(b, a)) {
            let t = |c: &[meshprobe_core::capture::Sizes; 4], i: usize| c[i].total();
            for (x, y, xy, yx) in [(a, b, &ab, &ba), (b, a, &ba, &ab)] {
                let (xn, yn) = (self.nm(x), self.nm(y));
                let iface = self.capture_iface(x);
                // Nothing x sends toward y leaves its NIC, while y's probes reach it.
                let left_x = t(xy, 0) + t(yx, 2);
                let reached_x = t(yx, 1) + t(xy, 3);
                if left_x == 0 && reached_x > 0 {
                    return Some(PairDrop {
                        at: x,
                        other: y,
                        direction: Direction::Outbound,
                        why: format!(
                            "capture: nothing encapsulated leaves {xn}'s {iface} toward {yn}, though {yn}'s {reached_x} probes arrive there: the drop is inside {xn}, on its way out"
                        ),
                    });
                }
                // y's probes reach x's NIC and are never answered, while x's own reach y.
                if t(yx, 1) > 0 && t(yx, 2) == 0 && t(xy, 1) > 0 {
                    return Some(PairDrop {
                        at: x,
                        other: y,
                        direction: Direction::Inbound,
                        why: format!(
                            "capture: {} probes from {yn} reach {xn}'s {iface} and are never answered, while {xn}'s own reach {yn}: the drop is inside {xn}, after its NIC",
                            t(yx, 1)
                        ),
                    });
                }
            }
            return None;
        }
        let (ra, rb) = (self.rules_toward(a, b), self.rules_toward(b, a));
        let direction = |rules: &[FirewallRule]| {
            if rules
                .iter()
                .all(|r| matches!(r.chain.as_str(), "OUTPUT" | "POSTROUTING"))
            {
                Direction::Outbound
            } else {
                Direction::Inbound
            }
        };
        let line = |x: usize, y: usize, n: usize| {
            format!(
                "{} has {n} firewall rule(s) that drop VXLAN naming {}'s address, and {} none naming {}'s",
                self.nm(x),
                self.nm(y),
                self.nm(y),
                self.nm(x)
            )
        };
        match (ra.is_empty(), rb.is_empty()) {
            (false, true) => Some(PairDrop {
                at: a,
                other: b,
                direction: direction(&ra),
                why: line(a, b, ra.len()),
            }),
            (true, false) => Some(PairDrop {
                at: b,
                other: a,
                direction: direction(&rb),
                why: line(b, a, rb.len()),
            }),
            _ => None,
        }
    }

    /// `x`'s rules that drop the overlay's traffic and name `y`'s node IP (or a range
    /// holding it).
    pub(crate) fn rules_toward(&self, x: usize, y: usize) -> Vec<FirewallRule> {
        let Ok(ip) = self.node_ip(y).parse::<std::net::Ipv4Addr>() else {
            return vec![];
        };
        self.evidence(x)
            .map(|e| {
                e.overlay_port_rules
                    .iter()
                    .filter(|r| names_address(&r.rule, ip))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A node whose own evidence says it lacks a peer's overlay entries, while the tunnel
    /// between them fails and few other nodes lack that peer, is at fault too, even when
    /// another finding already claims the pair's cells (a peer that is itself broken hides
    /// it). Evidence explains symptoms: the entry is missing whatever else is wrong.
    pub(crate) fn lacking_outliers(&mut self) {
        let reporting = (0..self.n())
            .filter(|&s| self.evidence(s).and_then(|e| e.overlay.as_ref()).is_some())
            .count();
        for s in 0..self.n() {
            let Some(missing) = self
                .evidence(s)
                .and_then(|e| e.overlay.as_ref())
                .map(|o| o.peers_missing())
            else {
                continue;
            };
            for peer in missing {
                let Some(p) = self.pos(&peer) else { continue };
                let (sn, pn) = (self.nm(s), self.nm(p));
                let named = self.ledger.found.iter().any(|f| {
                    f.finding.cause == Cause::OverlayPeerMissing
                        && f.finding.nodes.iter().any(|n| n.as_str() == sn)
                });
                let cut = self.failing(Layer::GatewayFromHost, s, p)
                    || self.failing(Layer::GatewayFromHost, p, s);
                let lackers = (0..self.n()).filter(|&o| self.lacks(o, p)).count();
                if named || !cut || lackers * 2 >= reporting {
                    continue;
                }
                let mut evidence = self.cite(Layer::GatewayFromHost, &[(s, p), (p, s)]);
                evidence.extend(self.overlay_lines_for(s, Some(pn.as_str())));
                evidence.push(format!(
                    "{lackers} of {reporting} nodes lack {pn}'s entries: {sn}'s state is the odd one, whatever else is wrong with {pn}"
                ));
                self.claim_pair(s, p, OVERLAY);
                self.push_peer_missing(s, p, evidence);
            }
        }
        // The same for a firewall rule that drops VXLAN naming a peer's address.
        let port = self.t.cluster.overlay.port;
        let with_rules: Vec<usize> = (0..self.n())
            .filter(|&s| {
                self.evidence(s)
                    .is_some_and(|e| !e.overlay_port_rules.is_empty())
            })
            .collect();
        for s in with_rules {
            // The peers s's tunnel fails with, either way: a handful, not every node.
            let mut peers: Vec<usize> = self
                .ix
                .row(Layer::GatewayFromHost, s)
                .iter()
                .chain(self.ix.col(Layer::GatewayFromHost, s))
                .copied()
                .filter(|&p| {
                    p != s
                        && (self.failing(Layer::GatewayFromHost, s, p)
                            || self.failing(Layer::GatewayFromHost, p, s))
                })
                .collect();
            peers.sort_unstable();
            peers.dedup();
            for p in peers {
                let rules = self.rules_toward(s, p);
                let cut = self.failing(Layer::GatewayFromHost, s, p)
                    || self.failing(Layer::GatewayFromHost, p, s);
                let (sn, pn) = (self.nm(s), self.nm(p));
                let named = self.ledger.found.iter().any(|f| {
                    f.finding.cause == Cause::VxlanBlocked
                        && f.finding.nodes.iter().any(|n| n.as_str() == sn)
                });
                if rules.is_empty() || !cut || named {
                    continue;
                }
                let mut evidence = self.cite(Layer::GatewayFromHost, &[(s, p), (p, s)]);
                for r in &rules {
                    evidence.push(format!("{sn}: {}", r.shown()));
                }
                evidence.push(format!(
                    "the rule names {pn}'s address: it drops VXLAN between them whatever else is wrong with {pn}"
                ));
                self.claim_pair(s, p, OVERLAY);
                let first = &rules[0];
                self.push(
                    5,
                    4,
                    Cause::VxlanBlocked,
                    vec![s],
                    vec![p],
                    if matches!(first.chain.as_str(), "OUTPUT" | "POSTROUTING") {
                        Direction::Outbound
                    } else {
                        Direction::Inbound
                    },
                    format!("overlay: {sn} <-> {pn}, UDP {port}"),
                    format!("{sn}'s firewall drops VXLAN (UDP {port}) between it and {pn}"),
                    evidence,
                    if let Some(delete) = first.delete_command() {
                        format!("on {sn}: `{delete}`")
                    } else {
                        format!(
                            "on {sn}: `iptables-save | grep -e {port} -e {}`",
                            self.node_ip(p)
                        )
                    },
                );
            }
        }
    }

    /// The finding that `me`'s overlay state lacks `peer` (its cells claimed already).
    fn push_peer_missing(&mut self, me: usize, peer: usize, evidence: Vec<String>) {
        let iface = self.t.cluster.overlay.interface.clone();
        let (mn, pn, peer_ip) = (self.nm(me), self.nm(peer), self.node_ip(peer));
        self.push(
            5,
            4,
            Cause::OverlayPeerMissing,
            vec![me],
            vec![peer],
            Direction::Outbound,
            format!("overlay: {mn} {iface} -> {pn}"),
            format!("{mn}'s overlay state lacks peer {pn}: traffic between them cannot be encapsulated"),
            evidence,
            format!("on {mn}: `ip route | grep {iface}; ip neigh show dev {iface}; bridge fdb show dev {iface} | grep {peer_ip}`; restart flannel on {mn}"),
        );
    }

    /// Whether `me`'s evidence shows overlay entries missing for `peer`.
    pub(crate) fn lacks(&self, me: usize, peer: usize) -> bool {
        let stale = self
            .cfg
            .stale_for
            .get(&peer)
            .is_some_and(|h| h.iter().any(|(h, _)| *h == me));
        let peer = self.ix.names[peer];
        stale
            || self
                .evidence(me)
                .and_then(|e| e.overlay.as_ref())
                .is_some_and(|o| o.peers_missing().iter().any(|n| n.as_str() == peer))
    }

    /// Most of `observers` lack overlay entries for `x` (by their own evidence), and `x`
    /// lacks none of theirs: the one thing they share is `x`.
    pub(crate) fn peers_lack(&self, x: usize, observers: &[usize]) -> bool {
        let lacking = observers.iter().filter(|&&s| self.lacks(s, x)).count();
        let x_lacks = observers.iter().filter(|&&s| self.lacks(x, s)).count();
        lacking >= 2 && self.quorum(lacking, observers.len()) && x_lacks * 2 < lacking
    }

    pub(crate) fn overlay_lines(&self, x: usize) -> Vec<String> {
        self.overlay_lines_for(x, None)
    }

    /// [`Cx::overlay_lines`] about one peer only (by name, never by matching the words).
    pub(crate) fn overlay_lines_for(&self, x: usize, only: Option<&str>) -> Vec<String> {
        let Some(o) = self.evidence(x).and_then(|e| e.overlay.as_ref()) else {
            return vec![];
        };
        let xn = self.nm(x);
        let iface = &self.t.cluster.overlay.interface;
        let keep = |n: &NodeName| only.is_none_or(|p| n.as_str() == p);
        let pick =
            |v: &[NodeName]| -> Vec<NodeName> { v.iter().filter(|n| keep(n)).cloned().collect() };
        let (missing_routes, missing_neighbours, missing_fdb, wrong_vtep_mac) = (
            pick(&o.missing_routes),
            pick(&o.missing_neighbours),
            pick(&o.missing_fdb),
            pick(&o.wrong_vtep_mac),
        );
        let list = |v: &[NodeName]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut v = Vec::new();
        if !missing_routes.is_empty() {
            v.push(format!(
                "{xn}: no route to the pod CIDR of {} via {iface}",
                list(&missing_routes)
            ));
        }
        if !missing_neighbours.is_empty() {
            v.push(format!(
                "{xn}: no permanent neighbour entry on {iface} for the VTEP of {}",
                list(&missing_neighbours)
            ));
        }
        if !missing_fdb.is_empty() {
            v.push(format!(
                "{xn}: no fdb entry on {iface} sending to {}",
                list(&missing_fdb)
            ));
        }
        if !wrong_vtep_mac.is_empty() {
            v.push(format!(
                "{xn}: the neighbour or fdb entry on {iface} for {} points at a MAC other than the VTEP MAC the node advertises (stale after its VXLAN device was recreated)",
                list(&wrong_vtep_mac)
            ));
        }
        for m in o.misrouted.iter().filter(|m| keep(&m.node)).take(4) {
            v.push(format!(
                "{xn}: the kernel routes {} ({}'s pods) over {}{}, not {iface}: `ip route get {}` on {xn}",
                m.address,
                m.node,
                m.dev,
                m.gateway
                    .as_deref()
                    .map(|g| format!(" via {g}"))
                    .unwrap_or_default(),
                m.address
            ));
        }
        v
    }

    /// Blame the outlier, never the victims: when several nodes' tunnels to one peer are
    /// cut, the fault is at that peer, one finding naming it, with the others as peers.
    /// Their own evidence says how: they lack overlay entries for it, or nothing on them
    /// explains it.
    fn shared_peers(&mut self, cuts: &[(usize, usize)]) {
        let mut by_node: FxMap<usize, Vec<usize>> = FxMap::default();
        for &(a, b) in cuts {
            if self.ledger.is_explained(Part::Network, a, b) {
                continue;
            }
            // A pair whose own evidence says which end is at fault (one lacks the other's
            // entries, or the capture shows one end dropping) is that end's, not a
            // shared peer's.
            if self.lacks(a, b) || self.lacks(b, a) || self.pair_drop(a, b).is_some() {
                continue;
            }
            by_node.entry(a).or_default().push(b);
            by_node.entry(b).or_default().push(a);
        }
        let mut order: Vec<(usize, Vec<usize>)> =
            by_node.into_iter().filter(|(_, v)| v.len() >= 2).collect();
        order.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        let iface = self.t.cluster.overlay.interface.clone();
        let port = self.t.cluster.overlay.port;
        for (p, sufferers) in order {
            let sufferers: Vec<usize> = sufferers
                .into_iter()
                .filter(|&s| !self.ledger.is_explained(Part::Network, s, p))
                .collect();
            if sufferers.len() < 2 {
                continue;
            }
            let pn = self.nm(p);
            let lacking: Vec<usize> = sufferers
                .iter()
                .copied()
                .filter(|&s| self.lacks(s, p))
                .collect();
            let pairs: Vec<(usize, usize)> = sufferers.iter().map(|&s| (s, p)).collect();
            let mut evidence = self.cite(Layer::GatewayFromHost, &pairs);
            let names = |v: &[usize]| {
                v.iter()
                    .take(6)
                    .map(|&s| self.nm(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            evidence.push(format!(
                "{} nodes ({}) lose the tunnel to {pn}, and each reaches the other nodes: what they share is {pn}",
                sufferers.len(),
                names(&sufferers)
            ));
            let (cause, summary, fix) = if lacking.len() * 2 > sufferers.len() {
                for &s in lacking.iter().take(2) {
                    evidence.extend(self.overlay_lines_for(s, Some(pn.as_str())));
                }
                evidence.extend(self.odd_lines(p, &[Attr::VtepMac]));
                (
                    Cause::OverlayPeerMissing,
                    format!(
                        "{} nodes lack overlay entries for {pn}: {pn}'s subnet or VTEP was not published to them",
                        lacking.len()
                    ),
                    format!(
                        "`kubectl get node {pn} -o yaml | grep flannel` (backend-data VtepMAC, public-ip); restart flannel on {pn} to republish, and read flanneld's logs on {}",
                        self.nm(lacking[0])
                    ),
                )
            } else {
                evidence.extend(self.odd_lines(p, &[]));
                (
                    Cause::VxlanBlocked,
                    format!(
                        "VXLAN between {pn} and {} nodes is lost while their node IPs answer",
                        sufferers.len()
                    ),
                    format!(
                        "check ACLs and security groups between {pn} and {} for UDP {port}; `tcpdump -ni <underlay> udp port {port}` on {pn}",
                        names(&sufferers)
                    ),
                )
            };
            let mut cells = 0;
            for &s in &sufferers {
                self.ledger
                    .explain_pair(&[Part::Network, Part::Pods, Part::Big], s, p);
                cells += self.claim_pair(s, p, OVERLAY) + self.claim_balanced_near(s, p);
            }
            self.push(
                5,
                cells.max(sufferers.len() * 4),
                cause,
                vec![p],
                sufferers,
                Direction::Unknown,
                format!("overlay: {{peers}} <-> {pn} {iface}, UDP {port}"),
                summary,
                evidence,
                fix,
            );
        }
    }

    pub(crate) fn tunnel_pairs(&mut self) {
        // A cut between two nodes fails round trips both ways (each crosses both
        // directions): one end alone seeing it is that end's word, not the pair's fault.
        let mut cuts: Vec<(usize, usize)> = self
            .ix
            .all(Layer::GatewayFromHost)
            .filter(|(s, d, _)| {
                self.tunnel_cut(*s, *d)
                    && (self.cell(Layer::GatewayFromHost, *d, *s).is_none()
                        || self.dead(Layer::GatewayFromHost, *d, *s))
            })
            .map(|(s, d, _)| (s.min(d), s.max(d)))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let port = self.t.cluster.overlay.port;
        self.shared_peers(&cuts);
        for (a, b) in cuts {
            if self.ledger.is_explained(Part::Network, a, b) {
                continue;
            }
            let mut cited = self.cite(Layer::GatewayFromHost, &[(a, b), (b, a)]);
            cited.extend(self.cite(Layer::PodToPod, &[(a, b), (b, a)]));
            cited.extend(self.chain_line(a, b));
            cited.extend(self.chain_line(b, a));
            let (lacks_ab, lacks_ba) = (self.lacks(a, b), self.lacks(b, a));
            self.claim_pair(a, b, OVERLAY);
            self.claim_balanced_near(a, b);
            for (me, peer, lacking) in [(a, b, lacks_ab), (b, a, lacks_ba)] {
                if !lacking {
                    continue;
                }
                let (mn, pn) = (self.nm(me), self.nm(peer));
                let mut evidence = cited.clone();
                evidence.extend(self.overlay_lines_for(me, Some(pn.as_str())));
                evidence.push(format!(
                    "{mn} and {pn} both reach the other nodes through the tunnel"
                ));
                self.push_peer_missing(me, peer, evidence);
            }
            if !lacks_ab && !lacks_ba {
                let (an, bn) = (self.nm(a), self.nm(b));
                let mut evidence = cited;
                evidence.push(format!("{an} and {bn} reach the other nodes; no evidence shows either lacking the other's overlay entries"));
                let (node, peer, direction, summary, fix) = match self.pair_drop(a, b) {
                    Some(PairDrop {
                        at,
                        other,
                        direction,
                        why,
                    }) => {
                        let (xn, on) = (self.nm(at), self.nm(other));
                        evidence.push(why);
                        let rules = self.rules_toward(at, other);
                        for r in &rules {
                            evidence.push(format!("{xn}: {}", r.shown()));
                        }
                        let way = if direction == Direction::Outbound {
                            "to"
                        } else {
                            "from"
                        };
                        let fix = match rules.first().and_then(FirewallRule::delete_command) {
                            Some(delete) => format!(
                                "on {xn}: `{delete}`, then `tcpdump -ni {} udp port {port}` on {xn} and {on}",
                                self.underlay_dev(at)
                            ),
                            _ => format!(
                                "on {xn}: `iptables-save | grep -e {port} -e {ip}`, `nft list ruleset | grep {port}` and its host security agents: something drops VXLAN {way} {on} ({ip})",
                                ip = self.node_ip(other)
                            ),
                        };
                        (
                            at,
                            other,
                            direction,
                            format!(
                                "{xn} drops VXLAN (UDP {port}) {way} {on}: pods on the two nodes cannot reach each other"
                            ),
                            fix,
                        )
                    }
                    None => (
                        a,
                        b,
                        Direction::Unknown,
                        format!(
                            "VXLAN between {an} and {bn} is lost while both reach the other nodes"
                        ),
                        format!(
                            "check ACLs between {an} and {bn} for UDP {port}; `tcpdump -ni <underlay> udp port {port}` on both"
                        ),
                    ),
                };
                let (xn, on) = (self.nm(node), self.nm(peer));
                self.push(
                    5,
                    4,
                    Cause::VxlanBlocked,
                    vec![node],
                    vec![peer],
                    direction,
                    format!("overlay: {xn} <-> {on}, UDP {port}"),
                    summary,
                    evidence,
                    fix,
                );
            }
            self.ledger
                .explain_pair(&[Part::Network, Part::Pods, Part::Big], a, b);
        }
    }
}

/// Where the capture puts a node's VXLAN drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DropAt {
    /// Inside the node, before its NIC: nothing it sends leaves.
    BeforeNic,
    /// Inside the node, after its NIC: what arrives is never answered or delivered.
    AfterNic,
    /// On the path into the node: nothing arrives at its NIC.
    OnPath,
}

/// One end of a pair found to drop their VXLAN.
pub(crate) struct PairDrop {
    pub(crate) at: usize,
    pub(crate) other: usize,
    pub(crate) direction: Direction,
    pub(crate) why: String,
}

/// Whether an iptables rule's `-s`/`-d` match names `ip`, alone or inside a range (not
/// `0.0.0.0/0`, which names everyone).
pub(crate) fn names_address(rule: &str, ip: std::net::Ipv4Addr) -> bool {
    let w: Vec<&str> = rule.split_whitespace().collect();
    w.windows(2).any(|p| {
        matches!(p[0], "-s" | "--source" | "-d" | "--destination")
            && p[1].split(',').any(|net| {
                net.parse::<ipnet::Ipv4Net>()
                    .map_or(true, |n| n.prefix_len() > 0)
                    && meshprobe_core::evidence::ipv4_net_holds(net, ip) == Some(true)
            })
    })
}
