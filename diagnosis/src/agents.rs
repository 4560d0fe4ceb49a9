//! The agents themselves, and evidence without a failing probe.

#![allow(unused_imports)]

use std::collections::BTreeSet;

use meshprobe_core::matrix::{AgentState, CellState};
use meshprobe_core::{Layer, NodeName};

use meshprobe_core::{Cause, Direction};

use crate::cx::*;
use crate::index::*;
use crate::*;

impl Cx<'_> {
    // ---- 7. the agents themselves ---------------------------------------------------------

    pub(crate) fn degraded_probers(&mut self) {
        for x in 0..self.n() {
            if !self.ix.involved(x) {
                continue;
            }
            if self.ledger.is_broken(x) || !self.row_sick(x) {
                continue;
            }
            let dead: Vec<(usize, usize)> = self
                .ix
                .row(Layer::Underlay, x)
                .iter()
                .filter(|&&d| self.dead(Layer::Underlay, x, d))
                .map(|&d| (x, d))
                .collect();
            let xn = self.nm(x);
            let mut evidence = self.cite(Layer::Underlay, &dead);
            evidence.push(format!(
                "the other nodes reach {xn}: the fault is in {xn}'s prober, not in its peers"
            ));
            let xs = x;
            self.claim_where(|cx, k| {
                k.src == xs
                    && k.layer.vantage() == meshprobe_core::AgentKind::Host
                    && cx.ix.dst_node(k).is_some()
            });
            self.push(
                9,
                dead.len(),
                Cause::AgentDegraded,
                vec![x],
                vec![],
                Direction::None,
                format!("meshprobe host agent on {xn}"),
                format!("{xn}'s agent sees its peers fail while they reach {xn}: its prober is unhealthy"),
                evidence,
                format!("read the host agent's log on {xn}; check its CPU limit and CAP_NET_RAW"),
            );
        }
    }

    /// Failing cells from one node toward one peer that nobody corroborates: the peer
    /// does not see the pair fail (its probes toward the node pass, and a fault on the path
    /// between them would break round trips both ways, since each crosses both
    /// directions), and every other node that probes the same targets reaches them. That
    /// is one node's word about its peer: its prober, its own firewall toward the peer
    /// (new connections out, replies let through), or the peer's rules for it alone. The
    /// finding names the observer, with the peer as its peer, never the peer alone. Only
    /// cells toward the peer's own addresses count: a service on the peer that one node
    /// alone cannot reach is a filter `unexplained` names.
    pub(crate) fn one_observer(&mut self) {
        let mut by_pair: std::collections::BTreeMap<(usize, usize), Vec<CellKey>> =
            std::collections::BTreeMap::new();
        for k in self.ix.failing.iter().copied() {
            if self.ledger.is_claimed(&k) {
                continue;
            }
            if let Some(d) = self.ix.dst_node(k)
                && d != k.src
            {
                by_pair.entry((k.src, d)).or_default().push(k);
            }
        }
        for ((s, d), cells) in by_pair {
            // About the peer itself: its own addresses fail, not only a service on it (one
            // node's pods filtered from one CoreDNS pod is a filter, said as such by
            // `unexplained`).
            if !cells.iter().any(|k| matches!(k.col, Col::Node(_))) {
                continue;
            }
            // A failing cell another finding explains corroborates nothing here.
            let unexplained_failure = |cx: &Self, key: CellKey| {
                cx.ix.cell(key).is_some_and(|c| c.state == CellState::Fail)
                    && !cx.ledger.is_claimed(&key)
            };
            // The peer's own probes toward the observer, on any layer: none fails.
            let reverse: Vec<Layer> = Layer::ALL
                .iter()
                .copied()
                .filter(|&l| self.cell(l, d, s).is_some())
                .collect();
            if reverse.is_empty()
                || reverse.iter().any(|&l| {
                    unexplained_failure(
                        self,
                        CellKey {
                            layer: l,
                            src: d,
                            col: Col::Node(s),
                        },
                    )
                })
            {
                continue;
            }
            // Everyone else who probes the same targets reaches them, or fails for a
            // reason another finding gives.
            let mut others = BTreeSet::new();
            let corroborated = cells.iter().any(|k| {
                (0..self.n()).filter(|&o| o != s && o != d).any(|o| {
                    let key = CellKey { src: o, ..*k };
                    match self.ix.cell(key) {
                        Some(c) if c.state == CellState::Ok => {
                            others.insert(o);
                            false
                        }
                        Some(_) => unexplained_failure(self, key),
                        None => false,
                    }
                })
            });
            if corroborated || others.is_empty() {
                continue;
            }
            let (sn, dn) = (self.nm(s), self.nm(d));
            let layers: BTreeSet<Layer> = cells.iter().map(|k| k.layer).collect();
            let layer_list = layers
                .iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let mut evidence = self.cite_cells(&cells, 4);
            evidence.push(format!(
                "{} other nodes probe the same targets on {dn} and reach them",
                others.len()
            ));
            evidence.push(format!(
                "{dn}'s own probes toward {sn} pass ({} layers): a fault on the path between them would fail round trips both ways",
                reverse.len()
            ));
            let (s_ip, d_ip) = (self.node_ip(s), self.node_ip(d));
            self.ledger.claim(cells.iter().copied());
            self.push(
                9,
                cells.len(),
                Cause::AgentDegraded,
                vec![s],
                vec![d],
                Direction::Outbound,
                format!("{sn} -> {dn}: {sn}'s probes, or its path toward {dn} alone"),
                format!(
                    "only {sn} sees {dn} fail ({layer_list}), while the others reach {dn} and {dn} reaches {sn}: one observer's word, about {sn} or the path between them"
                ),
                evidence,
                format!(
                    "on {sn}: `ip route get {d_ip}; iptables-save | grep {d_ip}` and the host agent's log; on {dn}: `iptables-save | grep {s_ip}`"
                ),
            );
        }
    }

    pub(crate) fn agents(&mut self) {
        for x in 0..self.n() {
            let Some((h, p)) = self.agent_state(x) else {
                continue;
            };
            // A node that is not ready (cordoned, going away) may well have no agents.
            let unready = self
                .t
                .node(&name(self.ix.names[x]))
                .is_some_and(|n| !n.state.is_ready());
            if unready || self.ledger.broken(x) == Some(&Cause::NodeUnreachable) {
                continue;
            }
            let missing: Vec<(&str, AgentState)> = [("host", h), ("pod", p)]
                .into_iter()
                .filter(|(_, s)| *s != AgentState::Reported)
                .collect();
            if missing.is_empty() {
                continue;
            }
            let xn = self.nm(x);
            let kinds: Vec<&str> = missing.iter().map(|m| m.0).collect();
            let mut evidence: Vec<String> = missing
                .iter()
                .map(|(k, s)| format!("{xn}'s {k} agent: {}", format!("{s:?}").to_lowercase()))
                .collect();
            // Who else can see this node: with no agent reporting anywhere, there is no
            // other view of it either, and the cause is the deployment, not the node.
            let observed = (0..self.n()).any(|y| {
                y != x
                    && self.agent_state(y).is_some_and(|(h, p)| {
                        h == AgentState::Reported || p == AgentState::Reported
                    })
            });
            evidence.push(if observed {
                format!("any verdict about {xn} comes from the other nodes' view of it")
            } else {
                format!("no agent on any node reports: nothing reaches or leaves {xn} under test this round")
            });
            // A silent pod agent next to a reporting host agent talks to the coordinator
            // through the relay on its node's IP: what the node's own evidence says about
            // that path explains the silence.
            let mut fix = format!(
                "`kubectl -n meshprobe get pods -o wide --field-selector spec.nodeName={xn}` and the agents' logs"
            );
            if !observed {
                fix = "`kubectl -n meshprobe get daemonsets,pods -o wide` and one agent's log: with no agent reporting on any node, look at what they share (the DaemonSets, the credential, the coordinator's address)".to_owned();
            } else if h == AgentState::Reported && p != AgentState::Reported {
                if let Some(b) = self.bridge_down(x) {
                    evidence.push(format!(
                        "{xn}: {} is down: its pod agent has no path to the relay on {xn}'s node IP",
                        meshprobe_core::text::printable_line(&b.name, 32)
                    ));
                } else if self.cfg.is_odd(x, &[crate::consistency::Attr::Gateway]) {
                    evidence.push(format!("{xn}'s cni0 does not hold its pod gateway: its pod agent has no route to the relay on {xn}'s node IP"));
                } else if let Some(r) = self.evidence(x).and_then(|e| {
                    // The walk of the relay's own flow (TCP from the pod range to the node
                    // IP's relay port), or, from an agent that does not walk it, a
                    // catch-all INPUT rule in the overlay's walk.
                    e.relay_port_rules.first().or_else(|| {
                        e.overlay_port_rules
                            .iter()
                            .find(|r| r.chain == "INPUT" && catch_all(&r.rule))
                    })
                }) {
                    evidence.push(format!("{xn}: {} takes new connections from {xn}'s pods to its relay: its pod agent cannot reach the coordinator through it", r.shown()));
                    fix = format!(
                        "on {xn}: accept the relay port (the host agent's `--relay-listen`, 7071 by default) from the pod CIDR ahead of that rule, or open the overlay and the relay in firewalld"
                    );
                }
            }
            self.push(
                10,
                1,
                Cause::AgentMissing,
                vec![x],
                vec![],
                Direction::None,
                format!("meshprobe {} agent on {xn}", kinds.join(" and ")),
                if kinds.len() == 2 {
                    format!("{xn}'s host and pod agents do not report")
                } else {
                    format!("{xn}'s {} agent does not report", kinds[0])
                },
                evidence,
                fix,
            );
        }
    }

    // ---- 8. evidence without a failing probe ----------------------------------------------

    pub(crate) fn evidence_warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let named: BTreeSet<&str> = self
            .ledger
            .found
            .iter()
            .flat_map(|f| f.finding.nodes.iter().chain(&f.finding.peers))
            .map(|n| n.as_str())
            .chain(self.ledger.accounted.iter().map(|&x| self.ix.names[x]))
            .collect();
        w.extend(self.config_warnings(&named));
        for (node, ev) in &self.r.evidence {
            let x = node.as_str();
            for u in &ev.unavailable {
                w.push(format!("{x}: evidence unavailable: {u}"));
            }
            for o in &ev.cidr_overlaps {
                w.push(format!("{x}: {o}"));
            }
            for a in &ev.security_agents {
                w.push(format!(
                    "{x}: host security agent {a} is running (known to hook the network stack)"
                ));
            }
            if named.contains(x) {
                continue;
            }
            if ev.ip_forward == Some(false) {
                w.push(format!(
                    "{x}: net.ipv4.ip_forward = 0, though no probe fails yet"
                ));
            }
            for r in ev.forward.iter().flat_map(|f| &f.blocking_rules) {
                w.push(format!(
                    "{x}: {} precedes the CNI's accept rules, though no probe fails yet",
                    r.shown()
                ));
            }
            for r in &ev.overlay_port_rules {
                w.push(format!(
                    "{x}: {} drops the overlay port, though no probe fails yet",
                    r.shown()
                ));
            }
            if let Some(i) = self.pos(node) {
                for l in self.overlay_lines(i) {
                    w.push(format!("{l}, though no probe fails yet"));
                }
                for l in self.service_facts(i) {
                    w.push(format!("{l}, though no probe fails yet"));
                }
            }
        }
        w
    }
}

/// A DROP or REJECT with no match at all (or only a comment, a reject type): it takes
/// every new connection that gets that far, such as a distribution's `-A INPUT -j REJECT`.
fn catch_all(rule: &str) -> bool {
    let w: Vec<&str> = rule.split_whitespace().collect();
    let mut i = 2;
    while i < w.len() {
        match w[i] {
            "-j" | "-m" | "--comment" | "--reject-with" => i += 2,
            o if o.starts_with('-') => return false,
            _ => i += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::catch_all;

    #[test]
    fn a_catch_all_takes_everything_and_nothing_narrower_is_one() {
        assert!(catch_all(
            "-A INPUT -j REJECT --reject-with icmp-host-prohibited"
        ));
        assert!(catch_all(
            "-A INPUT -m comment --comment meshprobe-fault -j REJECT --reject-with icmp-host-prohibited"
        ));
        assert!(!catch_all("-A INPUT -p udp --dport 8472 -j DROP"));
        assert!(!catch_all("-A INPUT -s 192.168.77.14/32 -j DROP"));
        assert!(!catch_all("-A INPUT -m state --state NEW -j DROP"));
    }
}
