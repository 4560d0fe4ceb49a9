//! Per-layer matrices and the check report (CONTRACT §3).
//!
//! [`build_report`] is the single place that decides what a cell says: `ok` and `fail`
//! come only from a report the agent actually sent; a silent agent's cells are `unknown`,
//! never `fail`, so one dead agent cannot paint its peers red.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cause::{Cause, Direction};
use crate::ids::{AgentKind, NodeName};
use crate::inventory::Topology;
use crate::layer::Layer;
use crate::plan::{AgentReport, Plan, ProbeResult};

/// The verdict of one cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellState {
    /// Probes succeeded (loss below the failure threshold).
    Ok,
    /// Probes failed at or above the threshold.
    Fail,
    /// Nobody measured it this round.
    Unknown,
}

/// One cell: one source node's view of one destination in one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cell {
    /// ok / fail / unknown.
    pub state: CellState,
    /// Share of probes that failed, in percent; `null` when unknown.
    pub loss_pct: Option<f64>,
    /// Mean RTT of the successful probes, in milliseconds; `null` when none succeeded.
    pub rtt_ms: Option<f64>,
    /// Probes sent (extension to CONTRACT §3).
    pub sent: u32,
    /// Probes that succeeded (extension).
    pub ok: u32,
    /// The last failure or why the cell is unknown (extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What the last failure met, as a type (extension; `docs/contract-additions.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<crate::FailKind>,
}

impl Cell {
    /// An unknown cell with the reason.
    pub fn unknown(reason: impl Into<String>) -> Self {
        Self {
            state: CellState::Unknown,
            loss_pct: None,
            rtt_ms: None,
            sent: 0,
            ok: 0,
            detail: Some(reason.into()),
            failure: None,
        }
    }

    /// The cell a probe result gives: failing at `fail_loss_pct` percent loss and at least
    /// two failed probes (one, when only one was sent), so that a single lost attempt of
    /// three (a SYN and its retry both lost to 1% loss) is a lossy cell, not a failing one.
    pub fn from_result(r: &ProbeResult, fail_loss_pct: f64) -> Self {
        if r.sent == 0 {
            return Self::unknown(r.detail.clone().unwrap_or_else(|| "not probed".to_owned()));
        }
        let lost = r.sent.saturating_sub(r.ok);
        let loss = round2(f64::from(lost) * 100.0 / f64::from(r.sent));
        Self {
            state: if loss >= fail_loss_pct && lost >= r.sent.min(2) {
                CellState::Fail
            } else {
                CellState::Ok
            },
            loss_pct: Some(loss),
            rtt_ms: r.rtt_ms.map(round3),
            sent: r.sent,
            ok: r.ok,
            detail: if lost > 0 { r.detail.clone() } else { None },
            failure: if lost > 0 { r.failure } else { None },
        }
    }
}

/// The size of `v`'s compact JSON, counted without building it.
pub fn json_len<T: Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    match serde_json::to_writer(&mut n, v) {
        Ok(()) => n.0,
        Err(_) => usize::MAX,
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A diagnosis: where the fault is and why (CONTRACT §3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Cause id from the contract's table.
    pub cause: Cause,
    /// Node(s) at fault.
    pub nodes: Vec<NodeName>,
    /// The other end(s), for pair faults.
    pub peers: Vec<NodeName>,
    /// Which way, seen from `nodes`.
    pub direction: Direction,
    /// The hop, in words.
    pub hop: String,
    /// One line a person reads first.
    pub summary: String,
    /// Facts with numbers: the nodes' own evidence and the reasoning first, then the
    /// probe cells that show it (the last `evidenceCells` lines).
    pub evidence: Vec<String>,
    /// Extension: how many of `evidence`'s lines, at its end, cite probe cells (a view
    /// shows every other line, and a few of these).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub evidence_cells: u32,
    /// What to check or run next.
    pub fix: String,
    /// Extension: consecutive rounds this finding has been made, this one included.
    #[serde(default = "one")]
    pub rounds: u32,
    /// Extension: the failing cells this finding explains, at most
    /// [`MAX_FINDING_CELLS`] of them (`cellCount` has them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cells: Vec<CellRef>,
    /// Extension: how many failing cells this finding explains.
    #[serde(default)]
    pub cell_count: u32,
    /// The nearest explanations the diagnosis rejected, and what rejected them (CONTRACT
    /// §5, v1.2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<Alternative>,
}

/// An explanation the diagnosis considered for a finding's cells and rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alternative {
    /// The cause it would have been.
    pub cause: Cause,
    /// The node(s) it would have blamed.
    #[serde(default)]
    pub nodes: Vec<NodeName>,
    /// The other end(s).
    #[serde(default)]
    pub peers: Vec<NodeName>,
    /// The hop it names, in words (extension).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hop: String,
    /// What ruled it out: the passing cells (with their counts) or the evidence.
    pub rejected_by: String,
    /// Extension: the passing cells that rule it out, at most
    /// [`MAX_ALTERNATIVE_CELLS`] of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejecting_cells: Vec<CellRef>,
}

/// The most cells an alternative lists in `rejectingCells`.
pub const MAX_ALTERNATIVE_CELLS: usize = 8;

/// The most cells a finding lists in `cells` (a node's finding at 5,000 nodes explains a
/// few hundred; `cellCount` always has the total).
pub const MAX_FINDING_CELLS: usize = 256;

/// One cell of a layer's matrix, by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CellRef {
    /// The layer.
    pub layer: Layer,
    /// The row: the source node.
    pub from: NodeName,
    /// The column: a node or a target.
    pub to: String,
}

fn one() -> u32 {
    1
}

/// serde's `skip_serializing_if` passes a reference.
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What identifies a finding from one round to the next.
pub type FindingKey = (Cause, Vec<NodeName>, Vec<NodeName>);

impl Finding {
    /// Its identity across rounds: cause, nodes and peers.
    pub fn key(&self) -> FindingKey {
        (self.cause.clone(), self.nodes.clone(), self.peers.clone())
    }
}

/// How an agent took part in a round (extension to CONTRACT §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Reported this round.
    Reported,
    /// Is registered and was polling, but did not report in time.
    Silent,
    /// Has not contacted the coordinator recently (or ever).
    Absent,
}

/// Both agents of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAgents {
    /// The host-network agent.
    pub host: AgentState,
    /// The pod-network agent.
    pub pod: AgentState,
}

pub use crate::compact::{CellView, Matrix, MatrixBuilder};

/// The result of one round (CONTRACT §3, plus the documented extensions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// True only when every cell is ok and there are no findings.
    pub healthy: bool,
    /// The round number.
    pub round: u64,
    /// Node names in topology order.
    pub nodes: Vec<NodeName>,
    /// Layer name → matrix.
    pub layers: BTreeMap<Layer, Matrix>,
    /// Diagnoses, most important first.
    pub findings: Vec<Finding>,
    /// Extension: how each node's agents took part.
    #[serde(default)]
    pub agents: BTreeMap<NodeName, NodeAgents>,
    /// Extension: problems agents reported that are not probe results.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Extension: how long the round took, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// Extension: node-local evidence from each host agent.
    #[serde(default)]
    pub evidence: BTreeMap<NodeName, crate::evidence::NodeEvidence>,
    /// Extension: each host agent's overlay capture of the round.
    #[serde(default)]
    pub capture: BTreeMap<NodeName, crate::capture::CaptureSummary>,
    /// Extension: where the coordinator's time went.
    #[serde(default)]
    pub timings: RoundTimings,
    /// Extension: present when this copy of the report is summarised
    /// ([`CheckReport::summarised`]): its matrices list only the cells that are not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}

/// Above this many cells, the coordinator answers and keeps a report summarised: about
/// 11 MB of JSON, a 100-node full mesh. A 5,000-node round has 1.5 million cells, 170 MB
/// of JSON, almost all of them ok.
pub const SUMMARY_ABOVE: usize = 100_000;

/// What a summarised report left out (extension).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The ok cells left out, per layer. Every failing and unknown cell is listed.
    pub ok_cells_omitted: BTreeMap<Layer, u64>,
}

/// Where the coordinator's wall time went in one round, in milliseconds (extension).
/// Planning happens before the round starts; `collectMs` is the agents' time (their
/// probing and their reports), the rest is the coordinator's own work on the results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundTimings {
    /// Making every agent's plan.
    pub plan_ms: u64,
    /// From the round's start to its last report (or its deadline).
    pub collect_ms: u64,
    /// Building the matrices from the reports.
    pub build_ms: u64,
    /// The diagnosis.
    pub diagnose_ms: u64,
}

impl CheckReport {
    /// What `healthy` means, from the report's own content: some nodes, every cell ok,
    /// no finding. A round of no nodes proved nothing, so it is never healthy.
    pub fn is_healthy(&self) -> bool {
        let (_, fail, unknown) = self.counts();
        !self.nodes.is_empty() && fail == 0 && unknown == 0 && self.findings.is_empty()
    }

    /// Counts of (ok, fail, unknown) cells over all layers (a summarised report's ok cells
    /// included: it counts them instead of listing them).
    pub fn counts(&self) -> (usize, usize, usize) {
        let omitted: u64 = self
            .summary
            .iter()
            .flat_map(|s| s.ok_cells_omitted.values())
            .sum();
        let mut c = (omitted as usize, 0, 0);
        for cell in self.layers.values().flat_map(Matrix::cells) {
            match cell.state {
                CellState::Ok => c.0 += 1,
                CellState::Fail => c.1 += 1,
                CellState::Unknown => c.2 += 1,
            }
        }
        c
    }

    /// The size of its compact JSON, counted without building it.
    pub fn encoded_len(&self) -> usize {
        json_len(self)
    }

    /// Shrinks what clients read by default (the report, or its summary above
    /// [`SUMMARY_ABOVE`] cells: a 5,000-node round's ok cells alone are far past any limit)
    /// to at most `max` bytes of JSON (its findings, matrices' states
    /// and agents always stay), cutting what is bulkiest and least needed first: nodes'
    /// evidence, largest first; then capture summaries; then warnings past the first 64
    /// and cell details past 80 characters. Each cut is said in `warnings`. Run after the
    /// diagnosis, which reads everything. Returns whether the report fits.
    pub fn fit_within(&mut self, max: usize) -> bool {
        let total = self.served_len();
        if total <= max {
            return true;
        }
        let mut over = total - max;
        // Room for the lines that say what was cut.
        over += 4096;
        let mut cut = Vec::new();
        let mut by_size: Vec<(usize, NodeName)> = self
            .evidence
            .iter()
            .map(|(n, e)| (json_len(e), n.clone()))
            .collect();
        by_size.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (bytes, node) in by_size {
            if over == 0 {
                break;
            }
            self.evidence.remove(&node);
            over = over.saturating_sub(bytes);
            cut.push(format!("{node}'s evidence ({bytes} bytes)"));
        }
        if over > 0 && !self.capture.is_empty() {
            let bytes: usize = self.capture.values().map(json_len).sum();
            self.capture.clear();
            over = over.saturating_sub(bytes);
            cut.push(format!("the capture summaries ({bytes} bytes)"));
        }
        if over > 0 {
            let kept = 64.min(self.warnings.len());
            let dropped = self.warnings.len() - kept;
            if dropped > 0 {
                self.warnings.truncate(kept);
                cut.push(format!("{dropped} warnings"));
            }
            for w in &mut self.warnings {
                *w = crate::text::clip(w, 300);
            }
            let mut clipped = 0usize;
            for m in self.layers.values_mut() {
                let long = m
                    .cells()
                    .any(|c| c.detail.is_some_and(|d| d.chars().count() > 80));
                if !long {
                    continue;
                }
                let mut b = MatrixBuilder::default();
                for (from, to, c) in m.iter() {
                    let mut cell = c.to_cell();
                    if let Some(d) = &cell.detail
                        && d.chars().count() > 80
                    {
                        cell.detail = Some(crate::text::clip(d, 80));
                        clipped += 1;
                    }
                    b.push(from, to, &cell);
                }
                *m = b.finish();
            }
            if clipped > 0 {
                cut.push(format!("the detail of {clipped} cells past 80 characters"));
            }
        }
        if !cut.is_empty() {
            self.warnings.push(format!(
                "report: {total} bytes is over the round report's limit of {max}: left out {}",
                cut.join(", ")
            ));
        }
        self.served_len() <= max
    }

    /// The size of what a client gets by default: the whole report, or above
    /// [`SUMMARY_ABOVE`] cells its summary (whose ok cells are counted, not listed). What
    /// [`Self::fit_within`] cuts (evidence, captures, warnings, failing cells' details) is
    /// in both alike.
    fn served_len(&self) -> usize {
        if self.cell_count() > SUMMARY_ABOVE {
            self.summarised().encoded_len()
        } else {
            self.encoded_len()
        }
    }

    /// Cells in all layers.
    pub fn cell_count(&self) -> usize {
        self.layers.values().map(Matrix::len).sum()
    }

    /// This report with its ok cells counted instead of listed: every failing and unknown
    /// cell, every finding, the agents, warnings, evidence and timings stay. What a client
    /// gets by default above [`SUMMARY_ABOVE`] cells, and what the history keeps.
    pub fn summarised(&self) -> CheckReport {
        let mut summary = self.summary.clone().unwrap_or_default();
        let layers = self
            .layers
            .iter()
            .map(|(layer, m)| {
                let mut b = MatrixBuilder::default();
                let mut ok = 0u64;
                for (from, to, c) in m.iter() {
                    if c.state == CellState::Ok {
                        ok += 1;
                    } else {
                        b.push_view(from, to, c);
                    }
                }
                *summary.ok_cells_omitted.entry(*layer).or_default() += ok;
                (*layer, b.finish())
            })
            .collect();
        CheckReport {
            healthy: self.healthy,
            round: self.round,
            nodes: self.nodes.clone(),
            layers,
            findings: self.findings.clone(),
            agents: self.agents.clone(),
            warnings: self.warnings.clone(),
            duration_ms: self.duration_ms,
            evidence: self.evidence.clone(),
            capture: self.capture.clone(),
            timings: self.timings,
            summary: Some(summary),
        }
    }

    /// The cell at (layer, src, dst), if planned.
    pub fn cell(&self, layer: Layer, src: &str, dst: &str) -> Option<CellView<'_>> {
        self.layers.get(&layer)?.get(src, dst)
    }
}

/// Everything a round produced, as the coordinator hands it to [`build_report`].
pub struct RoundInput<'a> {
    /// Round number.
    pub round: u64,
    /// The topology the plans were made from.
    pub topology: &'a Topology,
    /// The plan of every (node, kind), whether or not its agent is alive.
    pub plans: &'a BTreeMap<(NodeName, AgentKind), Plan>,
    /// The reports that arrived.
    pub reports: &'a BTreeMap<(NodeName, AgentKind), AgentReport>,
    /// Agents that were polling when the round started (the others are absent).
    pub live: &'a dyn Fn(&NodeName, AgentKind) -> bool,
    /// Round duration, measured by the caller.
    pub duration_ms: u64,
    /// Findings from the diagnosis (empty until it runs).
    pub findings: Vec<Finding>,
}

/// Builds the report of one round.
pub fn build_report(input: RoundInput<'_>) -> CheckReport {
    let mut layers: BTreeMap<Layer, MatrixBuilder> = BTreeMap::new();
    let mut agents = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut evidence = BTreeMap::new();
    let mut capture = BTreeMap::new();
    let fail_at = |plan: &Plan| plan.settings.fail_loss_pct;

    for node in &input.topology.nodes {
        let mut states = [AgentState::Absent; 2];
        for (i, kind) in AgentKind::ALL.into_iter().enumerate() {
            let key = (node.name.clone(), kind);
            let Some(plan) = input.plans.get(&key) else {
                continue;
            };
            let report = input.reports.get(&key);
            states[i] = match (report, (input.live)(&node.name, kind)) {
                (Some(_), _) => AgentState::Reported,
                (None, true) => AgentState::Silent,
                (None, false) => AgentState::Absent,
            };
            let results: BTreeMap<(Layer, &str), &ProbeResult> = report
                .map(|r| {
                    r.results
                        .iter()
                        .map(|p| ((p.layer, p.column.as_str()), p))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(r) = report {
                warnings.extend(
                    r.warnings
                        .iter()
                        .map(|w| format!("{}/{}: {w}", node.name, kind)),
                );
                if let Some(ev) = &r.evidence {
                    evidence.insert(node.name.clone(), ev.clone());
                }
                if let Some(c) = &r.capture {
                    capture.insert(node.name.clone(), c.clone());
                }
            }
            let unresolved: BTreeMap<(Layer, &str), &str> = plan
                .unresolved
                .iter()
                .map(|u| ((u.layer, u.column.as_str()), u.reason.as_str()))
                .collect();
            // One cell per target: the silent agent's reason is written once, not per cell.
            let missing = report.is_none().then(|| {
                Cell::unknown(match states[i] {
                    AgentState::Silent => {
                        format!("{kind} agent on {} did not report in time", node.name)
                    }
                    _ => format!("{kind} agent on {} is not running", node.name),
                })
            });
            for (layer, column) in plan.cells() {
                let made;
                let cell = if let Some(reason) = unresolved.get(&(layer, column)) {
                    made = Cell::unknown(*reason);
                    &made
                } else if let Some(missing) = &missing {
                    missing
                } else {
                    made = match results.get(&(layer, column)) {
                        Some(r) => Cell::from_result(r, r.layer.fail_loss_pct(fail_at(plan))),
                        None => Cell::unknown("the agent's report lacks this target"),
                    };
                    &made
                };
                layers
                    .entry(layer)
                    .or_default()
                    .push(node.name.as_str(), column, cell);
            }
        }
        agents.insert(
            node.name.clone(),
            NodeAgents {
                host: states[0],
                pod: states[1],
            },
        );
    }

    let mut report = CheckReport {
        healthy: false,
        round: input.round,
        nodes: input.topology.node_names(),
        layers: layers.into_iter().map(|(l, b)| (l, b.finish())).collect(),
        findings: input.findings,
        agents,
        warnings,
        duration_ms: input.duration_ms,
        evidence,
        capture,
        timings: RoundTimings::default(),
        summary: None,
    };
    report.healthy = report.is_healthy();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlanSettings, make_plan};
    use pretty_assertions::assert_eq;

    fn topo() -> Topology {
        Topology::from_inventory(
            "cluster: {name: t}\nnodes:\n  - {name: a, internalIP: 10.0.0.1, podCIDR: 10.42.1.0/24}\n  - {name: b, internalIP: 10.0.0.2, podCIDR: 10.42.2.0/24}\n",
        )
        .expect("valid")
    }

    fn all_ok(plan: &Plan) -> AgentReport {
        AgentReport {
            round: plan.round,
            node: plan.node.clone(),
            kind: plan.kind,
            results: plan
                .cells()
                .map(|(layer, column)| ProbeResult {
                    layer,
                    column: column.to_owned(),
                    sent: 20,
                    ok: 20,
                    rtt_ms: Some(0.25),
                    detail: None,
                    failure: None,
                })
                .collect(),
            warnings: vec![],
            evidence: None,
            capture: None,
            packets: vec![],
            offline_at_ms: None,
        }
    }

    fn plans(t: &Topology) -> BTreeMap<(NodeName, AgentKind), Plan> {
        let pods = t
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.pod_cidr.first_host()))
            .collect();
        let mut m = BTreeMap::new();
        for n in &t.nodes {
            for k in AgentKind::ALL {
                m.insert(
                    (n.name.clone(), k),
                    make_plan(t, &pods, &n.name, k, 1, &PlanSettings::default()),
                );
            }
        }
        m
    }

    #[test]
    fn all_reports_ok_is_healthy() {
        let t = topo();
        let plans = plans(&t);
        let reports = plans.iter().map(|(k, p)| (k.clone(), all_ok(p))).collect();
        let r = build_report(RoundInput {
            round: 1,
            topology: &t,
            plans: &plans,
            reports: &reports,
            live: &|_, _| true,
            duration_ms: 5,
            findings: vec![],
        });
        assert!(r.healthy);
        assert_eq!(r.counts().1 + r.counts().2, 0);
        assert_eq!(
            r.cell(Layer::Underlay, "a", "b").map(|c| c.state),
            Some(CellState::Ok)
        );
        assert_eq!(
            r.cell(Layer::Underlay, "a", "a"),
            None,
            "no self cell on the underlay"
        );
    }

    /// Issue 22, row 6: two nodes' reports just under the per-agent limit made an 18.9 MiB
    /// round report that no `check` could read. The round report is cut to its limit,
    /// evidence first, with the cut said, and every cell's state and every finding kept.
    #[test]
    fn a_round_report_is_cut_to_its_limit_and_says_what_it_left_out() {
        let t = topo();
        let plans = plans(&t);
        let mut reports: BTreeMap<_, _> =
            plans.iter().map(|(k, p)| (k.clone(), all_ok(p))).collect();
        for (node, fill) in [("a", 'x'), ("b", 'y')] {
            let host = reports
                .get_mut(&(NodeName::new(node).expect("name"), AgentKind::Host))
                .expect("present");
            host.evidence = Some(crate::evidence::NodeEvidence {
                unavailable: vec![fill.to_string().repeat(3 << 20)],
                ..Default::default()
            });
            for r in &mut host.results {
                r.ok = 0;
                r.detail = Some(format!("{}{}", r.column, "z".repeat(200_000)));
            }
        }
        let mut r = build_report(RoundInput {
            round: 3,
            topology: &t,
            plans: &plans,
            reports: &reports,
            live: &|_, _| true,
            duration_ms: 5,
            findings: vec![],
        });
        let before = r.encoded_len();
        let states: Vec<CellState> = r
            .layers
            .values()
            .flat_map(|m| m.cells().map(|c| c.state))
            .collect();
        assert!(before > 6 << 20, "{before}");
        assert!(r.fit_within(1 << 20));
        assert!(r.encoded_len() <= 1 << 20, "{}", r.encoded_len());
        let after: Vec<CellState> = r
            .layers
            .values()
            .flat_map(|m| m.cells().map(|c| c.state))
            .collect();
        assert_eq!(states, after, "every cell's state stays");
        let said = r.warnings.last().expect("a warning");
        assert!(said.contains("evidence"), "{said}");
        assert!(said.contains("detail"), "{said}");
        // A report within the limit is left alone.
        let mut small = r.clone();
        let len = small.encoded_len();
        assert!(small.fit_within(len));
        assert_eq!(small, r);
    }

    #[test]
    fn silent_agent_is_unknown_never_fail_and_loss_threshold_applies() {
        let t = topo();
        let plans = plans(&t);
        let a = NodeName::new("a").expect("valid");
        let b = NodeName::new("b").expect("valid");
        let mut reports: BTreeMap<_, _> =
            plans.iter().map(|(k, p)| (k.clone(), all_ok(p))).collect();
        reports.remove(&(b.clone(), AgentKind::Host));
        let host_a = reports
            .get_mut(&(a.clone(), AgentKind::Host))
            .expect("present");
        for r in &mut host_a.results {
            if r.layer == Layer::Underlay {
                r.ok = 15; // 25% loss: fails at the default threshold
                r.detail = Some("timeout".into());
            }
            if r.layer == Layer::GatewayFromHost && r.column == "b" {
                r.ok = 16; // 20% loss: below the threshold
            }
        }
        let r = build_report(RoundInput {
            round: 2,
            topology: &t,
            plans: &plans,
            reports: &reports,
            live: &|n, k| !(n.as_str() == "b" && k == AgentKind::Host),
            duration_ms: 5,
            findings: vec![],
        });
        assert!(!r.healthy);
        let cell = r.cell(Layer::Underlay, "a", "b").expect("planned");
        assert_eq!(
            (cell.state, cell.loss_pct, cell.detail),
            (CellState::Fail, Some(25.0), Some("timeout"))
        );
        assert_eq!(
            r.cell(Layer::GatewayFromHost, "a", "b").map(|c| c.state),
            Some(CellState::Ok)
        );
        let silent = r.cell(Layer::Underlay, "b", "a").expect("planned");
        assert_eq!(silent.state, CellState::Unknown);
        assert!(silent.detail.unwrap_or("").contains("not running"));
        assert_eq!(
            r.agents[&b],
            NodeAgents {
                host: AgentState::Absent,
                pod: AgentState::Reported
            }
        );
    }

    #[test]
    fn one_failed_attempt_of_three_is_lossy_not_failing() {
        let r = |sent, ok| ProbeResult {
            layer: Layer::Nodeport,
            column: "b".into(),
            sent,
            ok,
            rtt_ms: None,
            detail: None,
            failure: Some(crate::FailKind::Timeout),
        };
        assert_eq!(Cell::from_result(&r(3, 2), 25.0).state, CellState::Ok);
        assert_eq!(Cell::from_result(&r(3, 1), 25.0).state, CellState::Fail);
        assert_eq!(
            Cell::from_result(&r(1, 0), 25.0).state,
            CellState::Fail,
            "one attempt, failed"
        );
        assert_eq!(Cell::from_result(&r(20, 15), 25.0).state, CellState::Fail);
    }

    #[test]
    fn json_matches_the_contract_shape() {
        let t = topo();
        let plans = plans(&t);
        let reports = plans.iter().map(|(k, p)| (k.clone(), all_ok(p))).collect();
        let r = build_report(RoundInput {
            round: 3,
            topology: &t,
            plans: &plans,
            reports: &reports,
            live: &|_, _| true,
            duration_ms: 5,
            findings: vec![],
        });
        let v = serde_json::to_value(&r).expect("serialise");
        assert_eq!(v["healthy"], true);
        assert_eq!(v["round"], 3);
        assert_eq!(v["nodes"], serde_json::json!(["a", "b"]));
        assert_eq!(v["layers"]["underlay"]["a"]["b"]["state"], "ok");
        assert_eq!(v["layers"]["underlay"]["a"]["b"]["lossPct"], 0.0);
        assert_eq!(v["layers"]["underlay"]["a"]["b"]["rttMs"], 0.25);
        assert_eq!(v["findings"], serde_json::json!([]));
        let back: CheckReport = serde_json::from_value(v).expect("deserialise");
        assert_eq!(back, r);
    }
}
