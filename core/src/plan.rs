//! Probe plans (coordinator → agent) and agent reports (agent → coordinator).
//!
//! [`make_plan`] is a pure function of the topology, the known probe-pod IPs and the
//! settings: given the same inputs every agent gets the same plan, which is what lets the
//! coordinator compute the expected cells of a round without waiting for anyone.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentKind, NodeName};
use crate::inventory::Topology;
use crate::layer::Layer;

/// Size of the IPv4 header plus the ICMP echo header.
pub const ICMP_OVERHEAD: u16 = 28;
/// Total IP packet size of a "small" probe (the classic 56-byte ping payload).
pub const SMALL_PACKET: u16 = 84;

/// Knobs of a round. Defaults are tuned so a healthy round finishes in well under a second
/// and a failing one within [`PlanSettings::budget_ms`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// A wire type: unknown fields are ignored, so that agents one version apart interoperate.
#[serde(rename_all = "camelCase", default)]
pub struct PlanSettings {
    /// ICMP echoes per target per round (default 20). Loss is measured over these.
    pub icmp_count: u16,
    /// Milliseconds between two sends to the same target (default 20).
    pub icmp_interval_ms: u32,
    /// How long to wait for the last echo reply (default 1000).
    pub icmp_timeout_ms: u32,
    /// How many times each DNS name is asked per target per round (default 5: ten
    /// queries, so one lost datagram does not fail a cell).
    pub dns_repeats: u8,
    /// Timeout of one DNS query (default 1000).
    pub dns_timeout_ms: u32,
    /// HTTP attempts per target per round (default 3 for NodePort/ingress, 1 for metrics).
    pub http_attempts: u8,
    /// Timeout of one HTTP request (default 1500).
    pub http_timeout_ms: u32,
    /// A cell fails when at least this share of its probes failed (default 25%).
    pub fail_loss_pct: f64,
    /// Up to this many nodes, every node probes every other one each round (default 100).
    pub full_mesh_max: u32,
    /// Above `full_mesh_max`, the peers each node probes per round (default 32): half are
    /// its successors on a ring (so every node has at least that many observers every
    /// round), half a sample that rotates with the round (so every pair is covered over
    /// time). Cells grow as N x 32, not N x N.
    pub peer_sample: u32,
}

impl Default for PlanSettings {
    fn default() -> Self {
        Self {
            icmp_count: 20,
            icmp_interval_ms: 20,
            icmp_timeout_ms: 1000,
            dns_repeats: 5,
            dns_timeout_ms: 1000,
            http_attempts: 3,
            http_timeout_ms: 1500,
            fail_loss_pct: 25.0,
            full_mesh_max: 100,
            peer_sample: 32,
        }
    }
}

impl PlanSettings {
    /// The peers (indices into `0..n`) that node `i` probes in `round`, in probing order.
    pub fn peers_of(&self, n: usize, i: usize, round: u64) -> Vec<usize> {
        if n <= self.full_mesh_max as usize {
            return (0..n).filter(|&j| j != i).collect();
        }
        let want = (self.peer_sample as usize).min(n - 1);
        let ring = want / 2;
        let mut out: Vec<usize> = (1..=ring).map(|k| (i + k) % n).collect();
        let mut seen: std::collections::HashSet<usize> = out.iter().copied().collect();
        seen.insert(i);
        let mut k = 0u64;
        while out.len() < want {
            let j = (splitmix64(round ^ (i as u64).rotate_left(32) ^ k.rotate_left(48)) % n as u64)
                as usize;
            k += 1;
            if seen.insert(j) {
                out.push(j);
            }
        }
        out
    }

    /// The longest a compliant agent can take to run a plan, in milliseconds.
    pub fn budget_ms(&self) -> u32 {
        // Everything runs concurrently: one dead target costs one timeout, not a sum.
        // Repeated DNS queries and HTTP attempts are spread by one ICMP interval each.
        let icmp = u32::from(self.icmp_count) * self.icmp_interval_ms + self.icmp_timeout_ms;
        let dns = u32::from(self.dns_repeats) * self.icmp_interval_ms + self.dns_timeout_ms;
        let http = u32::from(self.http_attempts) * self.icmp_interval_ms + self.http_timeout_ms;
        icmp.max(dns).max(http)
    }
}

/// What one agent must probe in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The round this plan belongs to.
    pub round: u64,
    /// The agent's node.
    pub node: NodeName,
    /// The agent's vantage point.
    pub kind: AgentKind,
    /// The agent should report within this many milliseconds of receiving the plan.
    pub budget_ms: u32,
    /// Settings the agent needs (intervals, timeouts).
    pub settings: PlanSettings,
    /// ICMP echo targets.
    pub icmp: Vec<IcmpTarget>,
    /// DNS targets.
    pub dns: Vec<DnsTarget>,
    /// HTTP targets.
    pub http: Vec<HttpTarget>,
    /// Cells this agent owns but cannot probe, with why (they become `unknown`).
    pub unresolved: Vec<Unresolved>,
    /// For host agents on a VXLAN overlay: the overlay state to check this node against.
    #[serde(default)]
    pub overlay: Option<crate::evidence::OverlayExpectation>,
    /// Host agents: include this round's captured overlay packets in the report (for
    /// `check --pcap`).
    #[serde(default)]
    pub capture_packets: bool,
    /// Pod agents: the host agent's relay on this node (node IP and the port the host agent
    /// advertised). The pod agent sends its polls and reports there from now on, whatever
    /// URL it was started with, so that they travel over the node's underlay and never
    /// cross the node's NAT or forwarding (CONTRACT §1's rule, by construction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<std::net::SocketAddrV4>,
    /// Host agents: this node's own pod range. Its relay admits clients from it only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<crate::PodCidr>,
}

/// An ICMP echo target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IcmpTarget {
    /// The layer the result lands in.
    pub layer: Layer,
    /// The column (destination node or target name).
    pub column: String,
    /// Address to ping.
    pub ip: Ipv4Addr,
    /// Total IP packet size in bytes (header included).
    pub size: u16,
}

/// A DNS target: a server and the names to ask it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsTarget {
    /// The layer the result lands in.
    pub layer: Layer,
    /// The column.
    pub column: String,
    /// The DNS server (service IP or pod IP), port 53.
    pub server: Ipv4Addr,
    /// Fully qualified names that must resolve to an A record.
    pub names: Vec<String>,
}

/// What makes an HTTP answer good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpCheck {
    /// Status 2xx and the body parses as Prometheus text exposition.
    PrometheusText,
    /// Status 2xx.
    Success,
}

/// An HTTP GET target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpTarget {
    /// The layer the result lands in.
    pub layer: Layer,
    /// The column.
    pub column: String,
    /// Full URL (with an IP literal: agents never need DNS to probe).
    pub url: String,
    /// Host header to send instead of the URL's, for ingresses.
    pub host: Option<String>,
    /// What counts as success.
    pub check: HttpCheck,
    /// Attempts this round.
    pub attempts: u8,
}

/// A cell an agent owns but cannot probe this round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unresolved {
    /// Layer of the cell.
    pub layer: Layer,
    /// Column of the cell.
    pub column: String,
    /// Why it cannot be probed.
    pub reason: String,
}

/// The outcome of one target's probes in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    /// Layer of the cell.
    pub layer: Layer,
    /// Column of the cell.
    pub column: String,
    /// Probes sent.
    pub sent: u32,
    /// Probes that succeeded.
    pub ok: u32,
    /// Mean round-trip time of the successful probes, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The last failure, in words ("timeout", "rcode NXDOMAIN", "HTTP 503", ...); left
    /// out when none (most results, and a report has a few hundred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What the last failure met, as a type (absent when none, and from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<crate::FailKind>,
}

/// Everything one agent reports for one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    /// The round.
    pub round: u64,
    /// The agent's node.
    pub node: NodeName,
    /// The agent's vantage point.
    pub kind: AgentKind,
    /// One result per planned target.
    pub results: Vec<ProbeResult>,
    /// Problems the agent had that are not probe results (no ICMP socket, ...).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Node-local evidence (host agents).
    #[serde(default)]
    pub evidence: Option<crate::evidence::NodeEvidence>,
    /// The overlay capture's view of the round (host agents with CAP_NET_RAW).
    #[serde(default)]
    pub capture: Option<crate::capture::CaptureSummary>,
    /// Captured packets of the round, when the plan asked for them.
    #[serde(default)]
    pub packets: Vec<crate::capture::CapturedPacket>,
    /// For reports made while the coordinator was unreachable (from the last plan): when,
    /// in milliseconds since the Unix epoch.
    #[serde(default)]
    pub offline_at_ms: Option<u64>,
}

/// Builds the plan of the `kind` agent on `node`. `pod_ips` holds the probe-pod IP of
/// every node whose pod agent has registered. To plan a whole round, make one
/// [`Planner`]: this makes one per plan.
pub fn make_plan(
    topology: &Topology,
    pod_ips: &BTreeMap<NodeName, Ipv4Addr>,
    node: &NodeName,
    kind: AgentKind,
    round: u64,
    settings: &PlanSettings,
) -> Plan {
    Planner::new(topology, pod_ips, round, settings).plan(node, kind)
}

/// Plans every agent of one round. What depends only on the topology (where each node
/// is, the aggregated pod networks, where each target lives) is worked out once here, so
/// that a plan costs its own targets, not a walk of the cluster: a 5,000-node round has
/// 10,000 plans, and a per-plan walk of 5,000 nodes made planning quadratic.
pub struct Planner<'t> {
    topology: &'t Topology,
    pod_ips: &'t BTreeMap<NodeName, Ipv4Addr>,
    round: u64,
    settings: &'t PlanSettings,
    /// Node name -> index in `topology.nodes`.
    index: crate::fxhash::FxMap<&'t str, usize>,
    /// The pod CIDRs, aggregated (a handful of networks, not one per node).
    pod_cidrs: Vec<crate::ids::PodCidr>,
    /// Ingress column -> the node its address is on.
    ingress_nodes: BTreeMap<String, &'t NodeName>,
}

impl<'t> Planner<'t> {
    /// The planner of `round` over `topology`.
    pub fn new(
        topology: &'t Topology,
        pod_ips: &'t BTreeMap<NodeName, Ipv4Addr>,
        round: u64,
        settings: &'t PlanSettings,
    ) -> Self {
        let index = topology
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let by_ip: std::collections::HashMap<Ipv4Addr, &NodeName> = topology
            .nodes
            .iter()
            .map(|n| (n.internal_ip, &n.name))
            .collect();
        Self {
            topology,
            pod_ips,
            round,
            settings,
            index,
            pod_cidrs: ipnet::Ipv4Net::aggregate(
                &topology.nodes.iter().map(|n| n.pod_cidr.net()).collect(),
            )
            .into_iter()
            .map(crate::ids::PodCidr::from_net)
            .collect(),
            ingress_nodes: topology
                .ingresses
                .iter()
                .filter_map(|g| Some((ingress_column(g), *by_ip.get(&g.address)?)))
                .collect(),
        }
    }

    fn node(&self, name: &str) -> Option<&'t crate::inventory::Node> {
        self.index.get(name).map(|&i| &self.topology.nodes[i])
    }

    /// [`target_node`], by index.
    fn target_node(&self, layer: Layer, column: &str) -> Option<&'t NodeName> {
        match layer {
            Layer::Ingress | Layer::IngressFromPod => self.ingress_nodes.get(column).copied(),
            Layer::Nodeport | Layer::NodeportFromPod => {
                self.node(nodeport_column_node(column)).map(|n| &n.name)
            }
            Layer::DnsPod | Layer::CorednsMetrics | Layer::DnsService => {
                target_node(self.topology, layer, column)
            }
            _ => self.node(column).map(|n| &n.name),
        }
    }

    /// The plan of the `kind` agent on `node`.
    pub fn plan(&self, node: &NodeName, kind: AgentKind) -> Plan {
        let (topology, pod_ips, round, settings) =
            (self.topology, self.pod_ips, self.round, self.settings);
        let mut plan = Plan {
            round,
            node: node.clone(),
            kind,
            budget_ms: settings.budget_ms(),
            settings: settings.clone(),
            icmp: Vec::new(),
            dns: Vec::new(),
            http: Vec::new(),
            unresolved: Vec::new(),
            overlay: None,
            capture_packets: false,
            relay: None,
            pod_cidr: None,
        };
        let overlay = &topology.cluster.overlay;
        let cluster_names = || {
            let d = topology.cluster.cluster_domain.trim_end_matches('.');
            vec![
                format!("kubernetes.default.svc.{d}."),
                format!("kube-dns.kube-system.svc.{d}."),
            ]
        };
        let icmp = |plan: &mut Plan, layer, column: &NodeName, ip, size| {
            plan.icmp.push(IcmpTarget {
                layer,
                column: column.to_string(),
                ip,
                size,
            });
        };
        // This node itself first, then the peers it probes this round.
        let sampled: Vec<&crate::inventory::Node> = match self.index.get(node.as_str()).copied() {
            Some(i) => std::iter::once(i)
                .chain(settings.peers_of(topology.nodes.len(), i, round))
                .map(|j| &topology.nodes[j])
                .collect(),
            None => Vec::new(),
        };

        match kind {
            AgentKind::Host => {
                plan.pod_cidr = self.node(node.as_str()).map(|me| me.pod_cidr);
                if overlay.kind == crate::inventory::OverlayKind::Vxlan
                    && let Some(me) = self.node(node.as_str())
                {
                    plan.overlay = Some(crate::evidence::OverlayExpectation {
                        node_ip: me.internal_ip,
                        interface: overlay.interface.clone(),
                        port: overlay.port,
                        mtu: overlay.mtu,
                        overhead: overlay.kind.overhead(),
                        // Aggregated: a handful of networks, not one CIDR per node.
                        pod_cidrs: self.pod_cidrs.clone(),
                        // The peers probed this round: a failing pair's entries are always checked,
                        // and with the rotating sample every peer is, over rounds.
                        peers: sampled
                            .iter()
                            .filter(|p| &p.name != node)
                            .map(|p| crate::evidence::OverlayPeer {
                                node: p.name.clone(),
                                ip: p.internal_ip,
                                pod_cidr: p.pod_cidr,
                                vtep_ip: p.pod_cidr.network(),
                                vtep_mac: p.vtep_mac.clone(),
                            })
                            .collect(),
                        relay: None,
                    });
                }
                for peer in sampled.iter().copied() {
                    if &peer.name != node {
                        icmp(
                            &mut plan,
                            Layer::Underlay,
                            &peer.name,
                            peer.internal_ip,
                            SMALL_PACKET,
                        );
                        icmp(
                            &mut plan,
                            Layer::UnderlayFullSize,
                            &peer.name,
                            peer.internal_ip,
                            overlay.assumed_underlay_mtu(),
                        );
                    }
                    icmp(
                        &mut plan,
                        Layer::GatewayFromHost,
                        &peer.name,
                        peer.gateway,
                        SMALL_PACKET,
                    );
                }
                for dns in &topology.core_dns {
                    plan.http.push(HttpTarget {
                        layer: Layer::CorednsMetrics,
                        column: dns.name.clone(),
                        url: format!("http://{}:9153/metrics", dns.ip),
                        host: None,
                        check: HttpCheck::PrometheusText,
                        attempts: 1,
                    });
                }
                web_targets(
                    &mut plan,
                    topology,
                    &sampled,
                    settings,
                    Layer::Nodeport,
                    Layer::Ingress,
                );
            }
            AgentKind::Pod => {
                for peer in sampled.iter().copied() {
                    icmp(
                        &mut plan,
                        Layer::GatewayFromPod,
                        &peer.name,
                        peer.gateway,
                        SMALL_PACKET,
                    );
                    if &peer.name == node {
                        continue;
                    }
                    match pod_ips.get(&peer.name) {
                        Some(&ip) => {
                            icmp(&mut plan, Layer::PodToPod, &peer.name, ip, SMALL_PACKET);
                            icmp(
                                &mut plan,
                                Layer::PodToPodFullSize,
                                &peer.name,
                                ip,
                                overlay.mtu,
                            );
                            icmp(
                                &mut plan,
                                Layer::PodToPodFragmented,
                                &peer.name,
                                ip,
                                overlay.mtu.saturating_mul(2),
                            );
                        }
                        None => {
                            for layer in [
                                Layer::PodToPod,
                                Layer::PodToPodFullSize,
                                Layer::PodToPodFragmented,
                            ] {
                                plan.unresolved.push(Unresolved {
                                layer,
                                column: peer.name.to_string(),
                                reason: format!("no running probe pod with an IP is known on {} (not scheduled, pending, or not yet polled)", peer.name),
                            });
                            }
                        }
                    }
                }
                if let Some(svc) = topology.cluster.dns_service_ip {
                    plan.dns.push(DnsTarget {
                        layer: Layer::DnsService,
                        column: "kube-dns".to_owned(),
                        server: svc,
                        names: cluster_names(),
                    });
                }
                for dns in &topology.core_dns {
                    plan.dns.push(DnsTarget {
                        layer: Layer::DnsPod,
                        column: dns.name.clone(),
                        server: dns.ip,
                        names: cluster_names(),
                    });
                }
                web_targets(
                    &mut plan,
                    topology,
                    &sampled,
                    settings,
                    Layer::NodeportFromPod,
                    Layer::IngressFromPod,
                );
            }
        }
        self.park_unready(&mut plan, node);
        plan
    }

    /// Moves every target on a node that is not ready (and, when this node itself is not
    /// ready, every target) to `unresolved`, with the reason: such cells are `unknown`,
    /// never `fail`, and never feed a finding.
    fn park_unready(&self, plan: &mut Plan, node: &NodeName) {
        let state_of = |name: &str| self.node(name).map(|n| n.state);
        let own = state_of(node.as_str()).unwrap_or_default();
        let node_of =
            |layer: Layer, column: &str| self.target_node(layer, column).map(|n| n.to_string());
        let reason = |layer: Layer, column: &str| -> Option<String> {
            if !own.is_ready() {
                return Some(format!("{node} is {}: not probed", own.as_str()));
            }
            let target = node_of(layer, column)?;
            let state = state_of(&target)?;
            (!state.is_ready()).then(|| format!("{target} is {}: not probed", state.as_str()))
        };
        let mut parked = Vec::new();
        let mut park = |layer: Layer, column: &str| match reason(layer, column) {
            Some(reason) => {
                parked.push(Unresolved {
                    layer,
                    column: column.to_owned(),
                    reason,
                });
                false
            }
            None => true,
        };
        plan.icmp.retain(|t| park(t.layer, &t.column));
        plan.dns.retain(|t| park(t.layer, &t.column));
        plan.http.retain(|t| park(t.layer, &t.column));
        plan.unresolved.extend(parked);
    }
}

/// The node a column's target lives on: the node itself for node columns and NodePorts,
/// a CoreDNS pod's node, an ingress address's node; `None` for the load-balanced kube-dns
/// service (and for names the topology does not know).
pub fn target_node<'t>(topology: &'t Topology, layer: Layer, column: &str) -> Option<&'t NodeName> {
    match layer {
        Layer::DnsPod | Layer::CorednsMetrics => topology
            .core_dns
            .iter()
            .find(|p| p.name == column)
            .map(|p| &p.node),
        Layer::Ingress | Layer::IngressFromPod => topology
            .ingresses
            .iter()
            .find(|g| ingress_column(g) == column)
            .and_then(|g| topology.nodes.iter().find(|n| n.internal_ip == g.address))
            .map(|n| &n.name),
        Layer::DnsService => None,
        Layer::Nodeport | Layer::NodeportFromPod => {
            let node = nodeport_column_node(column);
            topology
                .nodes
                .iter()
                .find(|n| n.name.as_str() == node)
                .map(|n| &n.name)
        }
        _ => topology
            .nodes
            .iter()
            .find(|n| n.name.as_str() == column)
            .map(|n| &n.name),
    }
}

/// A NodePort cell's column: the node, and the service when there are several.
pub fn nodeport_column(node: &NodeName, service: &str, services: usize) -> String {
    if services == 1 {
        node.to_string()
    } else {
        format!("{node}/{service}")
    }
}

/// The node of a NodePort cell's column: the inverse of [`nodeport_column`].
pub fn nodeport_column_node(column: &str) -> &str {
    column.split_once('/').map_or(column, |(n, _)| n)
}

/// An ingress cell's column: its host, and its path unless it is `/`.
pub fn ingress_column(ing: &crate::inventory::IngressPath) -> String {
    format!(
        "{}{}",
        ing.host,
        if ing.path == "/" { "" } else { &ing.path }
    )
}

/// NodePort targets on this node and the sampled peers, and every ingress.
fn web_targets(
    plan: &mut Plan,
    topology: &Topology,
    sampled: &[&crate::inventory::Node],
    settings: &PlanSettings,
    nodeport: Layer,
    ingress: Layer,
) {
    for svc in &topology.node_ports {
        for peer in sampled {
            plan.http.push(HttpTarget {
                layer: nodeport,
                // One column per node; with several NodePorts, per service too.
                column: nodeport_column(&peer.name, &svc.name, topology.node_ports.len()),
                url: format!("http://{}:{}{}", peer.internal_ip, svc.port, svc.path),
                host: None,
                check: HttpCheck::Success,
                attempts: settings.http_attempts,
            });
        }
    }
    for ing in &topology.ingresses {
        plan.http.push(HttpTarget {
            layer: ingress,
            column: ingress_column(ing),
            url: format!("http://{}:{}{}", ing.address, ing.port, ing.path),
            host: Some(ing.host.clone()),
            check: HttpCheck::Success,
            attempts: settings.http_attempts,
        });
    }
}

impl Plan {
    /// Every (layer, column) cell this plan owns, probed or not.
    pub fn cells(&self) -> impl Iterator<Item = (Layer, &str)> {
        self.icmp
            .iter()
            .map(|t| (t.layer, t.column.as_str()))
            .chain(self.dns.iter().map(|t| (t.layer, t.column.as_str())))
            .chain(self.http.iter().map(|t| (t.layer, t.column.as_str())))
            .chain(self.unresolved.iter().map(|t| (t.layer, t.column.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn topo() -> Topology {
        Topology::from_inventory(
            r#"
cluster: {name: t, dnsServiceIP: 10.43.0.10}
nodes:
  - {name: n1, internalIP: 192.168.77.11, podCIDR: 10.42.1.0/24}
  - {name: n2, internalIP: 192.168.77.12, podCIDR: 10.42.2.0/24}
  - {name: n3, internalIP: 192.168.77.13, podCIDR: 10.42.3.0/24}
coreDNS:
  - {name: coredns-a, node: n1, ip: 10.42.1.53}
nodePorts: [{name: web, port: 30080}]
ingresses: [{host: web.lab.local, address: 192.168.77.13}]
"#,
        )
        .expect("valid")
    }

    fn n(s: &str) -> NodeName {
        NodeName::new(s).expect("valid")
    }

    #[test]
    fn host_plan_covers_underlay_gateways_metrics_nodeports_ingress() {
        let plan = make_plan(
            &topo(),
            &BTreeMap::new(),
            &n("n2"),
            AgentKind::Host,
            7,
            &PlanSettings::default(),
        );
        let cells: Vec<String> = plan.cells().map(|(l, c)| format!("{l} {c}")).collect();
        assert_eq!(
            cells,
            [
                "gateway-from-host n2",
                "underlay n1",
                "underlay-full-size n1",
                "gateway-from-host n1",
                "underlay n3",
                "underlay-full-size n3",
                "gateway-from-host n3",
                "coredns-metrics coredns-a",
                "nodeport n2",
                "nodeport n1",
                "nodeport n3",
                "ingress web.lab.local",
            ]
        );
        let full = plan
            .icmp
            .iter()
            .find(|t| t.layer == Layer::UnderlayFullSize)
            .expect("full-size");
        assert_eq!(full.size, 1500, "overlay MTU 1450 + 50 bytes of VXLAN");
        assert_eq!(plan.http[2].url, "http://192.168.77.11:30080/");
        assert_eq!(plan.http[4].host.as_deref(), Some("web.lab.local"));
    }

    #[test]
    fn pod_plan_marks_peers_without_probe_pods_unresolved() {
        let pods = BTreeMap::from([(n("n3"), Ipv4Addr::new(10, 42, 3, 10))]);
        let plan = make_plan(
            &topo(),
            &pods,
            &n("n1"),
            AgentKind::Pod,
            1,
            &PlanSettings::default(),
        );
        let pod_targets: Vec<_> = plan
            .icmp
            .iter()
            .filter(|t| t.layer != Layer::GatewayFromPod)
            .map(|t| (t.layer, t.column.as_str(), t.ip, t.size))
            .collect();
        assert_eq!(
            pod_targets,
            [
                (Layer::PodToPod, "n3", Ipv4Addr::new(10, 42, 3, 10), 84),
                (
                    Layer::PodToPodFullSize,
                    "n3",
                    Ipv4Addr::new(10, 42, 3, 10),
                    1450
                ),
                (
                    Layer::PodToPodFragmented,
                    "n3",
                    Ipv4Addr::new(10, 42, 3, 10),
                    2900
                ),
            ]
        );
        assert_eq!(plan.unresolved.len(), 3);
        assert!(plan.unresolved[0].reason.contains("n2"));
        assert_eq!(
            plan.icmp
                .iter()
                .filter(|t| t.layer == Layer::GatewayFromPod)
                .count(),
            3
        );
        assert_eq!(
            plan.dns[0].names[0],
            "kubernetes.default.svc.cluster.local."
        );
        assert_eq!(
            plan.dns
                .iter()
                .map(|d| d.column.as_str())
                .collect::<Vec<_>>(),
            ["kube-dns", "coredns-a"]
        );
    }

    #[test]
    fn unready_nodes_are_planned_unknown_with_the_reason() {
        let mut t = topo();
        t.nodes[2].state = crate::inventory::NodeState::Cordoned;
        let plan = make_plan(
            &t,
            &BTreeMap::new(),
            &n("n1"),
            AgentKind::Host,
            1,
            &PlanSettings::default(),
        );
        assert!(
            plan.icmp.iter().all(|x| x.column != "n3"),
            "nothing sent to a cordoned node"
        );
        let parked: Vec<_> = plan
            .unresolved
            .iter()
            .filter(|u| u.column == "n3")
            .map(|u| u.layer)
            .collect();
        assert_eq!(
            parked,
            [
                Layer::Underlay,
                Layer::UnderlayFullSize,
                Layer::GatewayFromHost,
                Layer::Nodeport
            ]
        );
        assert!(
            plan.unresolved
                .iter()
                .all(|u| u.reason == "n3 is cordoned: not probed")
        );
        // The ingress lives on n3 too.
        assert!(plan.http.iter().all(|h| h.layer != Layer::Ingress));
        // A node that is not ready probes nothing.
        let own = make_plan(
            &t,
            &BTreeMap::new(),
            &n("n3"),
            AgentKind::Host,
            1,
            &PlanSettings::default(),
        );
        assert!(own.icmp.is_empty() && own.http.is_empty() && !own.unresolved.is_empty());
    }

    #[test]
    fn small_clusters_are_a_full_mesh() {
        let s = PlanSettings::default();
        assert_eq!(s.peers_of(4, 2, 9), [0, 1, 3]);
    }

    #[test]
    fn large_clusters_sample_peers_and_every_node_keeps_observers() {
        let s = PlanSettings::default();
        let n = 5000;
        let mut observers = vec![0usize; n];
        for i in 0..n {
            let peers = s.peers_of(n, i, 7);
            assert_eq!(peers.len(), 32);
            assert!(!peers.contains(&i));
            let unique: std::collections::HashSet<_> = peers.iter().collect();
            assert_eq!(unique.len(), 32, "node {i} probes a peer twice");
            for p in peers {
                observers[p] += 1;
            }
        }
        assert!(
            observers.iter().all(|&o| o >= 16),
            "every node is watched by its 16 ring predecessors"
        );
        assert_eq!(s.peers_of(n, 10, 7), s.peers_of(n, 10, 7), "deterministic");
        assert_ne!(
            s.peers_of(n, 10, 7),
            s.peers_of(n, 10, 8),
            "the sample rotates with the round"
        );
    }

    #[test]
    fn budget_is_the_slowest_family() {
        let s = PlanSettings::default();
        // HTTP is the slowest: 3 attempts 20 ms apart, then a 1.5 s timeout.
        assert_eq!(s.budget_ms(), 3 * 20 + 1500);
        let slow_icmp = PlanSettings {
            icmp_count: 100,
            ..PlanSettings::default()
        };
        assert_eq!(slow_icmp.budget_ms(), 100 * 20 + 1000);
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;

    /// Issue 9: a plan from a newer coordinator, with fields this agent does not know (at
    /// the top and inside the settings), is accepted and keeps what it does know.
    #[test]
    fn a_plan_with_an_extra_field_is_accepted() {
        let t = Topology::from_inventory(
            "cluster: {name: t}\nnodes:\n- {name: a, internalIP: 10.0.0.1, podCIDR: 10.42.1.0/24}\n- {name: b, internalIP: 10.0.0.2, podCIDR: 10.42.2.0/24}\n",
        )
        .expect("valid");
        let plan = make_plan(
            &t,
            &BTreeMap::new(),
            &NodeName::new("a").expect("name"),
            AgentKind::Host,
            4,
            &PlanSettings::default(),
        );
        let mut v = serde_json::to_value(Assignment {
            epoch: 9,
            plan: plan.clone(),
        })
        .expect("json");
        v["plan"]["probeWeather"] = serde_json::json!({"sunny": true});
        v["plan"]["settings"]["icmpJitterMs"] = serde_json::json!(5);
        v["servedBy"] = serde_json::json!("coordinator-7");
        let back: Assignment = serde_json::from_value(v).expect("unknown fields are ignored");
        assert_eq!(back.plan, plan);
        assert_eq!(back.epoch, 9);
    }
}

/// The coordinator's answer to an agent's "next round" poll.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// Changes whenever the coordinator restarts; agents send it back so that round
    /// numbers from before a restart are not mistaken for new ones.
    pub epoch: u64,
    /// The plan to run now.
    pub plan: Plan,
}

/// A small, well-mixed hash (SplitMix64), for the rotating peer sample.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
