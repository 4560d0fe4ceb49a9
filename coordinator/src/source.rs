//! Where the topology comes from. Static mode reads the inventory once; Kubernetes
//! discovery (a later addition) implements the same trait from API watches.

use std::sync::Arc;

use meshprobe_core::Topology;

/// A source of the current topology. Each round takes one snapshot at its start.
pub trait TopologySource: Send + Sync + 'static {
    /// The topology to plan the next round from.
    fn current(&self) -> Arc<Topology>;
    /// Whether the source is up to date (false while the API server is unreachable and
    /// the last known topology is served).
    fn fresh(&self) -> bool {
        true
    }
}

/// A fixed topology, from an inventory file.
pub struct StaticTopology(Arc<Topology>);

impl StaticTopology {
    /// Wraps a validated topology.
    pub fn new(t: Topology) -> Self {
        Self(Arc::new(t))
    }
}

impl TopologySource for StaticTopology {
    fn current(&self) -> Arc<Topology> {
        Arc::clone(&self.0)
    }
}
