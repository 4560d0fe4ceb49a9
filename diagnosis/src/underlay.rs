//! The node network: unreachable nodes and cut links.

#![allow(unused_imports)]

use std::collections::BTreeSet;

use meshprobe_core::matrix::{AgentState, Cell, CellState};
use meshprobe_core::{Layer, NodeName};

use meshprobe_core::{Cause, Direction};

use crate::cx::*;
use crate::index::*;
use crate::*;

impl Cx<'_> {
    // ---- 1. the node network --------------------------------------------------------------

    pub(crate) fn unreachable(&mut self) {
        for x in 0..self.n() {
            let looked = self.ix.col(Layer::Underlay, x).to_vec();
            let dead: Vec<(usize, usize)> = looked
                .iter()
                .filter(|&&s| self.dead(Layer::Underlay, s, x))
                .map(|&s| (s, x))
                .collect();
            if !self.quorum(dead.len(), looked.len()) {
                continue;
            }
            let xn = self.nm(x);
            let mut evidence = self.cite(Layer::Underlay, &dead);
            if let Some((h, p)) = self.agent_state(x)
                && (h != AgentState::Reported || p != AgentState::Reported)
            {
                evidence.push(format!(
                    "{xn}'s agents are {}/{} (host/pod): consistent with {xn} being cut off",
                    format!("{h:?}").to_lowercase(),
                    format!("{p:?}").to_lowercase()
                ));
            }
            let ip = self.node_ip(x);
            self.broken.insert(x, Cause::NodeUnreachable);
            self.explain_node(&[Part::Network, Part::Pods, Part::Big], x);
            self.push(
                0,
                dead.len() * 10,
                Cause::NodeUnreachable,
                vec![x],
                vec![],
                Direction::Both,
                format!("underlay: * -> {xn} ({ip})"),
                format!("{xn} is unreachable on its node IP {ip} from {} of {} nodes", dead.len(), looked.len()),
                evidence,
                format!("check {xn}'s link and address (`ip -br link; ip -br addr` on {xn}), its switch port or cloud network interface; from a peer `ping -c3 {ip}`"),
            );
        }
        // Single links: one pair's underlay is cut while both nodes reach everyone else.
        let mut dead_links: Vec<(usize, usize)> = self
            .ix
            .all(Layer::Underlay)
            .filter(|(_, _, c)| self.is_dead(Some(c)))
            .map(|(s, d, _)| (s, d))
            .collect();
        dead_links.sort_unstable();
        for (s, d) in dead_links {
            if self.is_explained(Part::Network, s, d) || self.row_sick(s) {
                continue;
            }
            let both = self.dead(Layer::Underlay, d, s);
            self.explain_pair(&[Part::Network, Part::Pods, Part::Big], s, d);
            let evidence = self.cite(Layer::Underlay, &[(s, d), (d, s)]);
            let (sn, dn, ip) = (self.nm(s), self.nm(d), self.node_ip(d));
            self.push(
                5,
                2,
                Cause::NodeUnreachable,
                vec![d],
                vec![s],
                if both {
                    Direction::Both
                } else {
                    Direction::Inbound
                },
                format!("underlay: {sn} -> {dn} ({ip})"),
                format!(
                    "the underlay link between {sn} and {dn} is cut; both reach the other nodes"
                ),
                evidence,
                format!(
                    "from {sn}: `ping -c3 {ip}` and `ip route get {ip}`; check ACLs between the two"
                ),
            );
        }
    }

    /// A prober whose underlay row is mostly dead while most others reach it.
    pub(crate) fn row_sick(&self, x: usize) -> bool {
        let row = self.ix.row(Layer::Underlay, x);
        let col = self.ix.col(Layer::Underlay, x);
        let row_dead = row
            .iter()
            .filter(|&&d| self.dead(Layer::Underlay, x, d))
            .count();
        let col_ok = col
            .iter()
            .filter(|&&s| self.ok(Layer::Underlay, s, x))
            .count();
        row.len() >= 2 && self.quorum(row_dead, row.len()) && col_ok * 2 > col.len()
    }
}
