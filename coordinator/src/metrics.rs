//! The coordinator's Prometheus metrics: the continuous connectivity SLO.
//!
//! Per node and per layer, never per pair: a 5,000-node cluster exposes thousands of
//! series, not millions. Names are the constants below (counters gain `_total`).

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
            for state in [CellState::Ok, CellState::Fail, CellState::Unknown] {
                let n = m
                    .values()
                    .flat_map(|row| row.values())
                    .filter(|c| c.state == state)
                    .count();
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
        for node in &r.nodes {
            let out = r
                .layers
                .values()
                .flat_map(|m| m.get(node.as_str()))
                .flat_map(|row| row.values());
            let into = r
                .layers
                .values()
                .flat_map(|m| m.iter().filter(|(s, _)| *s != node.as_str()))
                .flat_map(|(_, row)| row.get(node.as_str()));
            let n = out
                .chain(into)
                .filter(|c| c.state == CellState::Fail)
                .count();
            self.node_failing
                .get_or_create(&labels(&[("node", node.as_str())]))
                .set(n as i64);
        }
        for f in &r.findings {
            self.findings
                .get_or_create(&labels(&[("cause", f.cause.as_str())]))
                .inc();
        }
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

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}
