//! meshprobe's diagnosis: from per-layer matrices and node-local evidence to ranked
//! findings that name the broken node, hop and cause.
//!
//! Pure: no IO, no clock. [`diagnose`] reasons along the path a packet takes, comparing
//! layers on the same pair to find the first hop that breaks:
//!
//! ```text
//! underlay ─► gateway-from-host ─► gateway-from-pod ─► pod-to-pod ─► pod-to-pod-full-size
//! (node IP)   (the tunnel)         (source forwards)   (dest. forwards) (MTU)
//! ```
//!
//! Detectors run in that order. Each one claims the pairs it explains, so a later detector
//! never blames something an earlier one already accounts for (a CoreDNS pod is not
//! "down" when its node no longer forwards). A node is blamed only on the word of at least
//! `k` independent observers (other nodes), and only when most observers agree. A prober
//! whose own row is bad while everyone reaches it gets itself flagged, never its peers.
//! Evidence names the cause of a failure that the probes show. On its own, evidence is at
//! most a warning.

pub mod synth;

mod agents;
mod claims;
mod consistency;
mod cx;
mod forwarding;
mod index;
mod ledger;
mod loss;
mod model;
mod mtu;
mod services;
mod tunnel;
mod underlay;
mod unexplained;

use cx::Cx;
use meshprobe_core::Topology;
use meshprobe_core::matrix::{CheckReport, Finding, FindingKey};

/// Thresholds.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Independent observers needed to blame a node (default 2; fewer when fewer exist).
    pub min_observers: usize,
    /// A cell is "dead" at this loss or more (default 95%): a path that is cut, not lossy.
    pub dead_loss_pct: f64,
    /// Aggregate loss through a node that makes a `packet-loss` finding (default 10%).
    pub loss_finding_pct: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min_observers: 2,
            dead_loss_pct: 95.0,
            loss_finding_pct: 10.0,
        }
    }
}

/// The diagnosis of one round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diagnosis {
    /// Findings, most important first.
    pub findings: Vec<Finding>,
    /// Evidence without a failing probe behind it, and evidence that could not be read.
    pub warnings: Vec<String>,
}

/// Diagnoses one round. `previous` holds the finding keys of earlier rounds, newest last;
/// each finding's `rounds` counts how many consecutive rounds (this one included) made it.
pub fn diagnose(
    topology: &Topology,
    report: &CheckReport,
    previous: &[Vec<FindingKey>],
    settings: &Settings,
) -> Diagnosis {
    // Findings the model withdraws are vetoed and the round diagnosed again, so that
    // the detectors after them see their cells as unexplained (a few passes at most:
    // each withdraws at least one more).
    let mut veto = index::FxSet::default();
    let mut withdrawn = Vec::new();
    let mut pass = 0;
    let mut ix = index::Index::new(topology, report);
    let mut cx = loop {
        let mut cx = Cx::with_index(topology, report, settings, ix);
        cx.ledger = ledger::Ledger::with_veto(veto.clone());
        cx.detect();
        pass += 1;
        if cx.ledger.withdrawn.is_empty() || pass == MAX_PASSES {
            cx.ledger.withdrawn.append(&mut withdrawn);
            break cx;
        }
        for w in &cx.ledger.withdrawn {
            if let Some(x) = w
                .alternative
                .nodes
                .first()
                .and_then(|n| cx.ix.pos.get(n.as_str()))
            {
                veto.insert((w.alternative.cause.clone(), *x));
            }
        }
        withdrawn.append(&mut cx.ledger.withdrawn);
        ix = cx.ix;
    };
    cx.agents();
    cx.unexplained();
    cx.alternatives();
    let warnings = cx.evidence_warnings();
    let mut ranked = cx.ledger.found;
    ranked.sort_by(|a, b| a.rank.cmp(&b.rank).then(b.weight.cmp(&a.weight)));
    let mut findings: Vec<Finding> = ranked.into_iter().map(|r| r.finding).collect();
    for f in &mut findings {
        let key = f.key();
        f.rounds = 1 + previous
            .iter()
            .rev()
            .take_while(|keys| keys.contains(&key))
            .count() as u32;
    }
    Diagnosis { findings, warnings }
}

/// The most times a round is diagnosed (each pass after the first vetoes what the one
/// before withdrew).
const MAX_PASSES: usize = 4;

impl Cx<'_> {
    /// The detectors, in path order, then the model's verification and localisation.
    fn detect(&mut self) {
        for stage in ledger::Stage::PIPELINE {
            stage.run(self);
        }
    }
}

/// A finding and where it ranks: lower `rank` first, then larger `weight` (cells explained).
pub(crate) struct Ranked {
    pub(crate) rank: u8,
    pub(crate) weight: usize,
    pub(crate) finding: Finding,
    /// Every failing cell it claims (the finding lists at most 256).
    pub(crate) keys: Vec<index::CellKey>,
}

/// Which part of a pair's path a detector has explained.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Part {
    /// Everything over the node network and the tunnel.
    Network,
    /// Traffic that pods send or receive (forwarding).
    Pods,
    /// Full-size packets.
    Big,
}
