//! Where the topology comes from. Static mode reads the inventory once; Kubernetes
//! discovery ([`crate::kube_source`]) implements the same trait from API watches.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use meshprobe_core::{NodeName, Topology};

/// A source of the current topology. Each round takes one snapshot at its start.
pub trait TopologySource: Send + Sync + 'static {
    /// The topology to plan the next round from.
    fn current(&self) -> Arc<Topology>;
    /// Whether the source is up to date (false while the API server is unreachable and
    /// the last known topology is served).
    fn fresh(&self) -> bool {
        true
    }
    /// The probe-pod IPs the source knows of (Kubernetes discovery watches the agents'
    /// pods). Empty for an inventory: there, pod agents tell their IP when they poll.
    fn agent_pod_ips(&self) -> BTreeMap<NodeName, Ipv4Addr> {
        BTreeMap::new()
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
