//! The diagnosis's context: the round, its index, what detectors explained and found.

#![allow(unused_imports)]

use std::collections::BTreeSet;

use meshprobe_core::evidence::NodeEvidence;
use meshprobe_core::matrix::{AgentState, Cell, CellState, CheckReport, Finding};
use meshprobe_core::{Layer, NodeName, Topology};

use meshprobe_core::{Cause, Direction};

use crate::index::*;
use crate::*;

pub(crate) struct Cx<'a> {
    pub(crate) t: &'a Topology,
    pub(crate) r: &'a CheckReport,
    pub(crate) s: &'a Settings,
    pub(crate) ix: Index<'a>,
    /// Pairs explained by a pair-level finding.
    pub(crate) explained: FxSet<(Part, usize, usize)>,
    /// Nodes whose every pair a node-level finding explains, per part.
    pub(crate) explained_nodes: FxSet<(Part, usize)>,
    /// Nodes with a node-level network finding, and its cause.
    pub(crate) broken: FxMap<usize, Cause>,
    /// CoreDNS pods found down (their metrics failures need no finding of their own).
    pub(crate) dns_down: BTreeSet<String>,
    pub(crate) found: Vec<Ranked>,
}

pub(crate) fn name(s: &str) -> NodeName {
    // Names come from the report, which took them from a validated topology.
    NodeName::new(s).unwrap_or_else(|_| NodeName::new("unnamed").unwrap_or_else(|_| unreachable!()))
}

pub(crate) fn lost_of(c: &Cell) -> u32 {
    c.sent.saturating_sub(c.ok)
}

pub(crate) fn describe(c: &Cell) -> String {
    let what = c
        .detail
        .as_deref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    format!("{}/{} ok{what}", c.ok, c.sent)
}

impl<'a> Cx<'a> {
    pub(crate) fn new(t: &'a Topology, r: &'a CheckReport, s: &'a Settings) -> Self {
        Self {
            t,
            r,
            s,
            ix: Index::new(r),
            explained: FxSet::default(),
            explained_nodes: FxSet::default(),
            broken: FxMap::default(),
            dns_down: BTreeSet::new(),
            found: Vec::new(),
        }
    }

    pub(crate) fn n(&self) -> usize {
        self.ix.names.len()
    }
    pub(crate) fn nm(&self, i: usize) -> String {
        self.ix.names[i].to_owned()
    }
    pub(crate) fn cell(&self, layer: Layer, s: usize, d: usize) -> Option<&'a Cell> {
        self.ix.get(layer, s, d)
    }
    pub(crate) fn tcell(&self, layer: Layer, s: usize, col: &str) -> Option<&'a Cell> {
        self.ix.targets.get(&(layer, s, col)).copied()
    }
    pub(crate) fn is_dead(&self, c: Option<&Cell>) -> bool {
        c.is_some_and(|c| {
            c.state == CellState::Fail && c.loss_pct.unwrap_or(0.0) >= self.s.dead_loss_pct
        })
    }
    pub(crate) fn ok(&self, layer: Layer, s: usize, d: usize) -> bool {
        self.cell(layer, s, d)
            .is_some_and(|c| c.state == CellState::Ok)
    }
    pub(crate) fn dead(&self, layer: Layer, s: usize, d: usize) -> bool {
        self.is_dead(self.cell(layer, s, d))
    }
    pub(crate) fn failing(&self, layer: Layer, s: usize, d: usize) -> bool {
        self.cell(layer, s, d)
            .is_some_and(|c| c.state == CellState::Fail)
    }
    pub(crate) fn tfailing(&self, layer: Layer, s: usize, col: &str) -> bool {
        self.tcell(layer, s, col)
            .is_some_and(|c| c.state == CellState::Fail)
    }
    pub(crate) fn evidence(&self, node: usize) -> Option<&'a NodeEvidence> {
        self.r.evidence.get(&name(self.ix.names[node]))
    }
    pub(crate) fn is_explained(&self, part: Part, s: usize, d: usize) -> bool {
        self.explained_nodes.contains(&(part, s))
            || self.explained_nodes.contains(&(part, d))
            || self.explained.contains(&(part, s, d))
    }
    pub(crate) fn explain_node(&mut self, parts: &[Part], x: usize) {
        for p in parts {
            self.explained_nodes.insert((*p, x));
        }
    }
    pub(crate) fn explain_pair(&mut self, parts: &[Part], a: usize, b: usize) {
        for p in parts {
            self.explained.insert((*p, a, b));
            self.explained.insert((*p, b, a));
        }
    }
    /// Observers needed: `min_observers`, or all there are when fewer exist.
    pub(crate) fn k(&self, available: usize) -> usize {
        self.s.min_observers.min(available).max(1)
    }
    /// Enough independent observers, and most of those who looked.
    pub(crate) fn quorum(&self, agreeing: usize, looked: usize) -> bool {
        looked > 0 && agreeing >= self.k(looked) && agreeing * 2 > looked
    }
    pub(crate) fn node_ip(&self, x: usize) -> String {
        self.t
            .node(&name(self.ix.names[x]))
            .map(|n| n.internal_ip.to_string())
            .unwrap_or_default()
    }
    pub(crate) fn underlay_dev(&self, x: usize) -> String {
        self.evidence(x)
            .and_then(|e| e.overlay.as_ref())
            .and_then(|o| o.underlay.as_ref())
            .map(|d| d.name.clone())
            .unwrap_or_else(|| "<underlay interface>".to_owned())
    }
    /// Evidence lines "src -> dst layer: 0/20 ok (timeout)" for up to four cells.
    pub(crate) fn cite(&self, layer: Layer, pairs: &[(usize, usize)]) -> Vec<String> {
        let mut v: Vec<String> = pairs
            .iter()
            .take(4)
            .filter_map(|&(s, d)| {
                self.cell(layer, s, d)
                    .map(|c| format!("{} -> {} {layer}: {}", self.nm(s), self.nm(d), describe(c)))
            })
            .collect();
        if pairs.len() > 4 {
            v.push(format!(
                "... and {} more {layer} cells alike",
                pairs.len() - 4
            ));
        }
        v
    }
    pub(crate) fn tcite(&self, layer: Layer, col: &str, srcs: &[usize]) -> Vec<String> {
        let mut v: Vec<String> = srcs
            .iter()
            .take(4)
            .filter_map(|&s| {
                self.tcell(layer, s, col)
                    .map(|c| format!("{} -> {col} {layer}: {}", self.nm(s), describe(c)))
            })
            .collect();
        if srcs.len() > 4 {
            v.push(format!(
                "... and {} more {layer} cells alike",
                srcs.len() - 4
            ));
        }
        v
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "a finding has this many parts; a builder would only rename them"
    )]
    pub(crate) fn push(
        &mut self,
        rank: u8,
        weight: usize,
        cause: Cause,
        nodes: Vec<usize>,
        peers: Vec<usize>,
        direction: Direction,
        hop: String,
        summary: String,
        evidence: Vec<String>,
        fix: String,
    ) {
        let finding = Finding {
            cause,
            nodes: nodes.iter().map(|&n| name(self.ix.names[n])).collect(),
            peers: peers.iter().map(|&n| name(self.ix.names[n])).collect(),
            direction,
            hop,
            summary,
            evidence,
            fix,
            rounds: 1,
        };
        self.found.push(Ranked {
            rank,
            weight,
            finding,
        });
    }

    pub(crate) fn agent_state(&self, x: usize) -> Option<(AgentState, AgentState)> {
        self.r
            .agents
            .get(&name(self.ix.names[x]))
            .map(|a| (a.host, a.pod))
    }
}
