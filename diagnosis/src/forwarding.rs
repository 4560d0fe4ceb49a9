//! Forwarding: nodes that do not pass their pods' traffic.

#![allow(unused_imports)]

use std::collections::BTreeSet;

use meshprobe_core::matrix::{AgentState, CellState};
use meshprobe_core::{Layer, NodeName};

use meshprobe_core::{Cause, Direction, FailKind};

use crate::cx::*;
use crate::index::*;
use crate::*;

impl Cx<'_> {
    // ---- 3. forwarding --------------------------------------------------------------------

    pub(crate) fn forwarding(&mut self) {
        for x in 0..self.n() {
            if !self.ix.involved(x) {
                continue;
            }
            if self.ledger.is_broken(x) {
                continue;
            }
            // Out: x's pod cannot reach remote gateways that x's host reaches, while it
            // reaches its own gateway (so the pod itself is fine).
            let (mut out, mut out_looked) = (Vec::new(), 0);
            if self.ok(Layer::GatewayFromPod, x, x) {
                for d in self.ix.row(Layer::GatewayFromPod, x) {
                    if d != x
                        && self.ok(Layer::GatewayFromHost, x, d)
                        && !self.ledger.is_explained(Part::Pods, x, d)
                    {
                        out_looked += 1;
                        if self.dead(Layer::GatewayFromPod, x, d) {
                            out.push((x, d));
                        }
                    }
                }
            }
            // In: other nodes' pods reach x's gateway but not x's pod.
            let (mut inbound, mut in_looked) = (Vec::new(), 0);
            for &s in self.ix.col(Layer::PodToPod, x) {
                if self.ok(Layer::GatewayFromPod, s, x)
                    && !self.ledger.is_explained(Part::Pods, s, x)
                {
                    in_looked += 1;
                    if self.dead(Layer::PodToPod, s, x) {
                        inbound.push((s, x));
                    }
                }
            }
            let out_hit = self.quorum(out.len(), out_looked);
            let in_hit = self.quorum(inbound.len(), in_looked);
            if !out_hit && !in_hit {
                continue;
            }
            let xn = self.nm(x);
            let direction = match (out_hit, in_hit) {
                (true, true) => Direction::Both,
                (true, false) => Direction::Outbound,
                _ => Direction::Inbound,
            };
            let mut evidence = Vec::new();
            if out_hit {
                evidence.extend(self.cite(Layer::GatewayFromPod, &out));
                evidence.push(format!("{xn}'s host reaches those gateways and its pod reaches its own gateway: {xn} does not forward its pods' traffic"));
            }
            if in_hit {
                evidence.extend(self.cite(Layer::PodToPod, &inbound));
                if let Some(&(s, _)) = inbound.first() {
                    evidence.extend(self.chain_line(s, x));
                }
                evidence.push(format!(
                    "those pods reach {xn}'s gateway: {xn} does not forward traffic into its pods"
                ));
            }
            let ev = self.evidence(x);
            let prohibited = out.iter().chain(&inbound).any(|&(s, d)| {
                [Layer::GatewayFromPod, Layer::PodToPod].iter().any(|l| {
                    self.cell(*l, s, d)
                        .is_some_and(|c| c.failure == Some(FailKind::Prohibited))
                })
            });
            let fact = self.node_fact(x);
            let named = fact.is_some() || prohibited;
            let cause = match fact {
                Some((cause, lines)) => {
                    evidence.extend(lines);
                    cause
                }
                None if prohibited => Cause::ForwardRejected,
                None if ev.is_some() => {
                    evidence.push(format!("{xn}: ip_forward is 1 and no REJECT/DROP precedes the CNI's FORWARD accepts; packets vanish silently (check a host security agent or nftables)"));
                    Cause::ForwardRejected
                }
                None => {
                    evidence.push(format!("{xn}'s host agent did not report; silent drops (no ICMP error) point at net.ipv4.ip_forward = 0"));
                    Cause::IpForwardDisabled
                }
            };
            if cause == Cause::ForwardRejected && named {
                for c in ev
                    .and_then(|e| e.forward.as_ref())
                    .map(|f| f.foreign_chains.clone())
                    .unwrap_or_default()
                {
                    evidence.push(format!("{xn}: non-Kubernetes chain {c} (firewalld/ufw)"));
                }
                if prohibited {
                    evidence.push("probes got ICMP \"administratively prohibited\": a REJECT rule answers them".to_owned());
                }
            }
            for a in ev.map(|e| e.security_agents.clone()).unwrap_or_default() {
                evidence.push(format!("{xn}: security agent {a} is running"));
            }
            let fix = self.forwarding_fix(&cause, x);
            let summary = match direction {
                Direction::Outbound => {
                    format!("{xn} does not forward: its pods cannot reach other nodes")
                }
                Direction::Inbound => {
                    format!("{xn} does not forward: other nodes cannot reach its pods")
                }
                _ => format!(
                    "{xn} does not forward: its pods are cut off from other nodes both ways"
                ),
            };
            let weight = (out.len() + inbound.len()) * 10;
            if self.ledger.vetoed(&cause, x) {
                continue;
            }
            self.ledger.mark_broken(x, cause.clone());
            self.ledger.explain_node(&[Part::Pods, Part::Big], x);
            let weight = weight + self.claim_node(x, POD_TRAFFIC) + self.claim_balanced_of(x);
            let hop = format!(
                "forwarding on {xn}: cni0 <-> {}",
                self.t.cluster.overlay.interface
            );
            self.push(
                2,
                weight,
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
}
