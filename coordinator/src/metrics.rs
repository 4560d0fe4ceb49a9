//! The coordinator's Prometheus metrics: the continuous connectivity SLO.
//!
//! Per node and per layer, never per pair: a 5,000-node cluster exposes thousands of
//! series, not millions. Names are the constants below (counters gain `_total`).
//!
//! The SLIs are counters PromQL can rate: probes sent and probes answered, per layer (with
//! its SLO group), and per node as the probes' source and as their destination. Every
//! label value comes from a fixed set (layers, groups, directions, causes) or is a node
//! name. With N nodes the coordinator exposes `14·2 + 14·3 + 5N + F + C + A + 5` series:
//! probes per layer, cells per layer and state, four node-probe series and one
//! failing-cells series per node, F finding series (one per node a finding names), C
//! causes found, A (at most 6) agent states, and 5 single gauges and counters. That is
//! 5,000-odd at 1,000 nodes (the tests below check the formula).

use std::sync::atomic::AtomicU64;

use meshprobe_core::matrix::AgentState;
use meshprobe_core::{CellState, CheckReport, Layer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Rounds finished (a counter: exposed as `meshprobe_rounds_total`).
pub const ROUNDS: &str = "meshprobe_rounds";
/// How long the last round took.
pub const ROUND_DURATION: &str = "meshprobe_round_duration_seconds";
/// 1 when the last round was healthy.
pub const HEALTHY: &str = "meshprobe_healthy";
/// Cells of the last round, by `layer` and `state`.
pub const CELLS: &str = "meshprobe_cells";
/// Failing cells of the last round into or out of each `node`.
pub const NODE_FAILING_CELLS: &str = "meshprobe_node_failing_cells";
/// Findings of the last round, by `cause`.
pub const FINDINGS: &str = "meshprobe_findings";
/// Agents by `kind` and `state` (reported, silent, absent) in the last round.
pub const AGENTS: &str = "meshprobe_agents";
/// 1 while the topology source is current (0 while the API server is unreachable).
pub const TOPOLOGY_FRESH: &str = "meshprobe_topology_fresh";
/// 1 while this replica is the active coordinator (holds the Lease), 0 on the standby.
pub const LEADER: &str = "meshprobe_coordinator_leader";
/// Probes sent, by `layer` and its SLO `group` (a counter: `meshprobe_probes_total`).
pub const PROBES: &str = "meshprobe_probes";
/// Probes answered, by `layer` and `group` (`meshprobe_probes_ok_total`).
pub const PROBES_OK: &str = "meshprobe_probes_ok";
/// Probes sent, by `node` and `direction` (`out`: the node probed; `in`: it was probed),
/// over the node-to-node layers (`meshprobe_node_probes_total`).
pub const NODE_PROBES: &str = "meshprobe_node_probes";
/// Probes answered, likewise (`meshprobe_node_probes_ok_total`).
pub const NODE_PROBES_OK: &str = "meshprobe_node_probes_ok";
/// One series per finding of the last round, by `cause`, `node` (each node it names) and
/// `direction`: the value is how many rounds in a row it has been made. No free text: the
/// summary and fix quote agents' text and stay in the report.
pub const FINDING: &str = "meshprobe_finding";
/// Gauge: the last round's wall time per phase (`plan`, `collect`, `build`, `diagnose`,
/// `record`), in seconds.
pub const ROUND_PHASE: &str = "meshprobe_round_phase_seconds";
/// Counter: requests the coordinator told to come back later, by `reason`.
pub const BACKOFFS: &str = "meshprobe_backoffs";
/// Counter: history writes that failed, by `op` (`record`: a finished round; `reserve`:
/// the round-number high-water mark).
pub const HISTORY_ERRORS: &str = "meshprobe_history_errors";

/// A history write, as the metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryOp {
    /// Recording a finished round.
    Record,
    /// Reserving round numbers.
    Reserve,
}

impl HistoryOp {
    /// The `op` label.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryOp::Record => "record",
            HistoryOp::Reserve => "reserve",
        }
    }
}

type Labels = Vec<(String, String)>;

/// The registry and its metrics, owned by the coordinator (no global state).
pub struct Metrics {
    registry: Registry,
    rounds: Counter,
    duration: Gauge<f64, AtomicU64>,
    healthy: Gauge,
    cells: Family<Labels, Gauge>,
    node_failing: Family<Labels, Gauge>,
    findings: Family<Labels, Gauge>,
    agents: Family<Labels, Gauge>,
    fresh: Gauge,
    leader: Gauge,
    probes: Family<Labels, Counter>,
    probes_ok: Family<Labels, Counter>,
    node_probes: Family<Labels, Counter>,
    node_probes_ok: Family<Labels, Counter>,
    finding: Family<Labels, Gauge>,
    /// Seconds per phase of the last round.
    phases: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Requests told to back off, by reason.
    backoffs: Family<Labels, Counter>,
    /// History writes that failed, by operation.
    history_errors: Family<Labels, Counter>,
    /// The nodes of the last round (whose node counters exist).
    known_nodes: std::sync::Mutex<Vec<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            rounds: Counter::default(),
            duration: Gauge::default(),
            healthy: Gauge::default(),
            cells: Family::default(),
            node_failing: Family::default(),
            findings: Family::default(),
            agents: Family::default(),
            fresh: Gauge::default(),
            leader: Gauge::default(),
            probes: Family::default(),
            probes_ok: Family::default(),
            node_probes: Family::default(),
            node_probes_ok: Family::default(),
            finding: Family::default(),
            phases: Family::default(),
            backoffs: Family::default(),
            history_errors: Family::default(),
            known_nodes: std::sync::Mutex::new(Vec::new()),
            registry: Registry::default(),
        };
        m.leader.set(1);
        registry.register(
            LEADER,
            "1 while this replica is the active coordinator",
            m.leader.clone(),
        );
        registry.register(ROUNDS, "Rounds finished", m.rounds.clone());
        registry.register(
            ROUND_DURATION,
            "Duration of the last round in seconds",
            m.duration.clone(),
        );
        registry.register(
            HEALTHY,
            "1 when the last round was healthy",
            m.healthy.clone(),
        );
        registry.register(
            CELLS,
            "Cells of the last round by layer and state",
            m.cells.clone(),
        );
        registry.register(
            NODE_FAILING_CELLS,
            "Failing cells of the last round into or out of a node",
            m.node_failing.clone(),
        );
        registry.register(
            FINDINGS,
            "Findings of the last round by cause",
            m.findings.clone(),
        );
        registry.register(
            AGENTS,
            "Agents in the last round by kind and state",
            m.agents.clone(),
        );
        registry.register(
            TOPOLOGY_FRESH,
            "1 while the topology source is current",
            m.fresh.clone(),
        );
        registry.register(
            PROBES,
            "Probes sent, by layer and SLO group",
            m.probes.clone(),
        );
        registry.register(
            PROBES_OK,
            "Probes answered, by layer and SLO group",
            m.probes_ok.clone(),
        );
        registry.register(
            NODE_PROBES,
            "Node-to-node probes sent, by node as source (out) or destination (in)",
            m.node_probes.clone(),
        );
        registry.register(
            NODE_PROBES_OK,
            "Node-to-node probes answered, by node as source (out) or destination (in)",
            m.node_probes_ok.clone(),
        );
        registry.register(
            FINDING,
            "Findings of the last round by cause and node: rounds in a row it has been made",
            m.finding.clone(),
        );
        registry.register(
            ROUND_PHASE,
            "Wall time of the last round by phase (plan, collect, build, diagnose, record)",
            m.phases.clone(),
        );
        registry.register(
            BACKOFFS,
            "Requests told to come back later (503 with Retry-After), by reason",
            m.backoffs.clone(),
        );
        registry.register(
            HISTORY_ERRORS,
            "History writes that failed (a full or read-only disk), by operation",
            m.history_errors.clone(),
        );
        Metrics { registry, ..m }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Metrics {
    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Records a finished round.
    pub fn observe(&self, r: &CheckReport, topology_fresh: bool) {
        self.rounds.inc();
        self.duration.set(r.duration_ms as f64 / 1000.0);
        self.healthy.set(i64::from(r.healthy));
        self.fresh.set(i64::from(topology_fresh));
        // Series that vanish (a healed node, a resolved finding) must not linger.
        self.cells.clear();
        self.node_failing.clear();
        self.findings.clear();
        self.agents.clear();
        for layer in Layer::ALL {
            let Some(m) = r.layers.get(&layer) else {
                continue;
            };
            // One pass per layer: 1.5 million cells at 5,000 nodes.
            let mut by_state = [0usize; 3];
            for c in m.cells() {
                by_state[c.state as usize] += 1;
            }
            for state in [CellState::Ok, CellState::Fail, CellState::Unknown] {
                let n = by_state[state as usize];
                let s = match state {
                    CellState::Ok => "ok",
                    CellState::Fail => "fail",
                    CellState::Unknown => "unknown",
                };
                self.cells
                    .get_or_create(&labels(&[("layer", layer.as_str()), ("state", s)]))
                    .set(n as i64);
            }
        }
        // One pass over the cells (not one per node: that is N x cells at 5,000 nodes).
        // A failing cell counts for its row's node and, on another node, its column's.
        let mut failing: meshprobe_core::fxhash::FxMap<&str, i64> =
            r.nodes.iter().map(|n| (n.as_str(), 0)).collect();
        for (from, to, c) in r.layers.values().flat_map(|m| m.iter()) {
            if c.state != CellState::Fail {
                continue;
            }
            if let Some(n) = failing.get_mut(from) {
                *n += 1;
            }
            if to != from
                && let Some(n) = failing.get_mut(to)
            {
                *n += 1;
            }
        }
        for node in &r.nodes {
            self.node_failing
                .get_or_create(&labels(&[("node", node.as_str())]))
                .set(failing.get(node.as_str()).copied().unwrap_or(0));
        }
        for f in &r.findings {
            self.findings
                .get_or_create(&labels(&[("cause", f.cause.as_str())]))
                .inc();
        }
        self.finding.clear();
        // Validated identifiers only: a cause id, a node name (checked when it entered),
        // a direction. A finding's summary and fix quote what agents sent (a rule, a
        // device name), so they stay in the report, never in a label an alert quotes.
        for f in &r.findings {
            for node in &f.nodes {
                self.finding
                    .get_or_create(&labels(&[
                        ("cause", f.cause.as_str()),
                        ("node", node.as_str()),
                        ("direction", f.direction.as_str()),
                    ]))
                    .set(i64::from(f.rounds));
            }
        }
        self.count_probes(r);
        for a in r.agents.values() {
            for (kind, state) in [("host", a.host), ("pod", a.pod)] {
                let s = match state {
                    AgentState::Reported => "reported",
                    AgentState::Silent => "silent",
                    AgentState::Absent => "absent",
                };
                self.agents
                    .get_or_create(&labels(&[("kind", kind), ("state", s)]))
                    .inc();
            }
        }
    }

    /// Records where a round's time went; `record_ms` is the metrics and history.
    pub fn observe_phases(&self, t: &meshprobe_core::matrix::RoundTimings, record_ms: u64) {
        for (phase, ms) in [
            ("plan", t.plan_ms),
            ("collect", t.collect_ms),
            ("build", t.build_ms),
            ("diagnose", t.diagnose_ms),
            ("record", record_ms),
        ] {
            self.phases
                .get_or_create(&labels(&[("phase", phase)]))
                .set(ms as f64 / 1000.0);
        }
    }

    /// Counts a history write that failed.
    pub fn history_failed(&self, op: HistoryOp) {
        self.history_errors
            .get_or_create(&labels(&[("op", op.as_str())]))
            .inc();
    }

    /// Counts a request told to back off.
    pub fn backed_off(&self, reason: &str) {
        self.backoffs
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    /// Adds the round's probes to the SLI counters. Node counters cover the node-to-node
    /// layers (columns that are nodes); a node no longer in the round loses its series.
    fn count_probes(&self, r: &CheckReport) {
        let mut per_node: meshprobe_core::fxhash::FxMap<(&str, &str), (u64, u64)> =
            meshprobe_core::fxhash::FxMap::default();
        for (layer, m) in &r.layers {
            let (mut sent, mut ok) = (0u64, 0u64);
            for (from, to, c) in m.iter() {
                if c.state == CellState::Unknown {
                    continue;
                }
                let (s, o) = (u64::from(c.sent), u64::from(c.ok.min(c.sent)));
                sent += s;
                ok += o;
                if layer.columns_are_nodes() && from != to {
                    for key in [(from, "out"), (to, "in")] {
                        let e = per_node.entry(key).or_default();
                        e.0 += s;
                        e.1 += o;
                    }
                }
            }
            let l = labels(&[("layer", layer.as_str()), ("group", layer.slo_group())]);
            self.probes.get_or_create(&l).inc_by(sent);
            self.probes_ok.get_or_create(&l).inc_by(ok);
        }
        let known: std::collections::BTreeSet<&str> = r.nodes.iter().map(|n| n.as_str()).collect();
        for (&(node, direction), &(sent, ok)) in &per_node {
            if !known.contains(node) {
                continue;
            }
            let l = labels(&[("node", node), ("direction", direction)]);
            self.node_probes.get_or_create(&l).inc_by(sent);
            self.node_probes_ok.get_or_create(&l).inc_by(ok);
        }
        // Nodes that left the cluster: their counters go (a counter that vanishes is a
        // reset to PromQL, which rate() handles).
        let gone: Vec<Labels> = self
            .known_nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|n| !known.contains(n.as_str()))
            .flat_map(|n| ["out", "in"].map(|d| labels(&[("node", n.as_str()), ("direction", d)])))
            .collect();
        for family in [&self.node_probes, &self.node_probes_ok] {
            for l in &gone {
                family.remove(l);
            }
        }
        *self
            .known_nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            known.iter().map(|n| (*n).to_owned()).collect();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshprobe_core::plan::PlanSettings;
    use meshprobe_diagnosis::synth::{self, Fault};

    /// A synthetic round of `topo` with `faults`, diagnosed.
    fn round(topo: &meshprobe_core::Topology, faults: &[Fault], id: u64) -> CheckReport {
        let mut r = synth::report(topo, faults, id, &PlanSettings::default());
        r.findings =
            meshprobe_diagnosis::diagnose(topo, &r, &[], &meshprobe_diagnosis::Settings::default())
                .findings;
        r
    }

    /// The series a round leaves, by metric name.
    fn series(text: &str) -> std::collections::BTreeMap<String, usize> {
        let mut by = std::collections::BTreeMap::new();
        for l in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let name = l.split(['{', ' ']).next().unwrap_or("").to_owned();
            *by.entry(name).or_default() += 1;
        }
        by
    }

    /// Issue 13: the series count follows the documented formula at 8 and at 200 nodes,
    /// and the SLI counters add up to the round's probes.
    #[test]
    fn series_grow_with_n_not_n_squared() {
        // 1,000 nodes: `cargo bench --bench history` measures it (a debug build takes half
        // a minute to synthesise that round).
        for n in [8usize, 200] {
            let topo = synth::topology(n);
            // The findings' series are counted at 8 (diagnosis is for the other tests).
            let r = if n <= 8 {
                round(&topo, &[Fault::ForwardOff(1)], 1)
            } else {
                synth::report(&topo, &[Fault::ForwardOff(1)], 1, &PlanSettings::default())
            };
            assert!(n > 8 || !r.findings.is_empty());
            let m = Metrics::default();
            m.observe(&r, true);
            m.observe(&r, true);
            let text = m.encode();
            meshprobe_core::promtext::validate(&text).unwrap_or_else(|e| panic!("{e}"));
            let s = series(&text);
            let layers = r.layers.len();
            assert_eq!(s["meshprobe_probes_total"], layers, "{n}");
            assert_eq!(s["meshprobe_probes_ok_total"], layers, "{n}");
            assert_eq!(s["meshprobe_node_probes_total"], 2 * n, "{n}");
            assert_eq!(s["meshprobe_node_probes_ok_total"], 2 * n, "{n}");
            assert_eq!(s["meshprobe_node_failing_cells"], n, "{n}");
            let named: usize = r.findings.iter().map(|f| f.nodes.len()).sum();
            assert_eq!(
                s.get("meshprobe_finding").copied().unwrap_or(0),
                named,
                "{n}"
            );
            let total: usize = s.values().sum();
            // 2 per layer (probes) + 3 per layer (cells) + 4N + N + findings + causes
            // + agents (kind x state seen) + 5 singles.
            let agents = s.get("meshprobe_agents").copied().unwrap_or(0);
            let causes = s.get("meshprobe_findings").copied().unwrap_or(0);
            assert_eq!(
                total,
                2 * layers + 3 * layers + 5 * n + named + causes + agents + 5,
                "{n}: {s:?}"
            );
            eprintln!("{n} nodes: {total} series");
            // The counters hold two rounds' probes.
            let sent: u64 = r
                .layers
                .values()
                .flat_map(|m| m.cells())
                .filter(|c| c.state != CellState::Unknown)
                .map(|c| u64::from(c.sent))
                .sum();
            let counted: u64 = text
                .lines()
                .filter(|l| l.starts_with("meshprobe_probes_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
            assert_eq!(counted, 2 * sent);
        }
    }

    /// A node that leaves takes its series with it; a finding that clears leaves nothing.
    #[test]
    fn departed_nodes_and_cleared_findings_leave_no_series() {
        let big = synth::topology(5);
        let m = Metrics::default();
        m.observe(&round(&big, &[Fault::ForwardOff(4)], 1), true);
        assert!(m.encode().contains("node=\"n5\""));
        assert!(m.encode().contains("meshprobe_finding{"));
        let small = synth::topology(4);
        m.observe(&round(&small, &[], 2), true);
        let text = m.encode();
        assert!(!text.contains("node=\"n5\""), "{text}");
        assert!(!text.contains("meshprobe_finding{"), "{text}");
    }
}
