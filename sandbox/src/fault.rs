//! The fault catalogue: each fault imitates a real cause from the operators' field notes,
//! and knows how to undo itself.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::addr::{
    KUBE_DNS_SVC, LabNode, LabPlan, NODE_PORT, OVERLAY_MTU, PodKind, VXLAN_PORT, WEB_PORT,
};
use meshprobe_core::catalogue::{Args, FaultKind, Placement};

use crate::script::{Step, Vxlan, fdb_line, neigh_line, nodeport_rule, recreate_vxlan, route_line};

/// A fault the lab can inject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// A security group or host firewall drops VXLAN (UDP 8472) arriving at the node.
    VxlanDropIn {
        /// Node.
        node: String,
    },
    /// VXLAN leaving the node is dropped.
    VxlanDropOut {
        /// Node.
        node: String,
    },
    /// A reboot reset `net.ipv4.ip_forward` to 0.
    IpForwardOff {
        /// Node.
        node: String,
    },
    /// firewalld left `-A FORWARD -j REJECT --reject-with icmp-host-prohibited` above the
    /// CNI's accept rules, with its zone chains.
    ForwardReject {
        /// Node.
        node: String,
    },
    /// The node's `flannel.1` lacks the fdb entry for a peer's VTEP.
    FdbMissing {
        /// Node whose state is damaged.
        node: String,
        /// The peer it can no longer reach.
        peer: String,
    },
    /// The node lacks the route to a peer's pod CIDR.
    RouteMissing {
        /// Node.
        node: String,
        /// Peer.
        peer: String,
    },
    /// The node lacks the neighbour entry for a peer's VTEP.
    NeighMissing {
        /// Node.
        node: String,
        /// Peer.
        peer: String,
    },
    /// The node's neighbour and fdb entries for a peer hold a VTEP MAC the peer no longer
    /// advertises (flanneld missed the peer recreating its VXLAN device).
    VtepStale {
        /// Node.
        node: String,
        /// Peer.
        peer: String,
    },
    /// The node's switch port carries less than the overlay assumes (default 1400 < 1500):
    /// full-size encapsulated packets vanish, small ones pass.
    UnderlayMtu {
        /// Node.
        node: String,
        /// The port's MTU.
        mtu: u16,
    },
    /// A CoreDNS pod's process stopped.
    DnsDown {
        /// CoreDNS pod name (`coredns-a`, `coredns-b`).
        pod: String,
    },
    /// `:9153` blocked in front of a CoreDNS pod.
    MetricsBlocked {
        /// CoreDNS pod name.
        pod: String,
    },
    /// kube-proxy's NodePort rules are gone on a node.
    NodeportRemoved {
        /// Node.
        node: String,
    },
    /// The ingress controller stopped.
    IngressDown,
    /// The node's underlay link is down (switch port down).
    LinkDown {
        /// Node.
        node: String,
    },
    /// The coordinator is down (a control-plane outage): agents keep probing with their
    /// last plan and deliver the results when it is back.
    CoordinatorDown,
    /// The Kubernetes API server is down (labs with `--kube-api`): the coordinator keeps
    /// planning from the last known topology and says so.
    ApiServerDown,
    /// The node's underlay drops a random share of packets each way.
    Loss {
        /// Node.
        node: String,
        /// Percent dropped in each direction.
        percent: u8,
    },
    /// The node's host firewall drops ICMP echo requests arriving on its node IP (some
    /// environments forbid ping); TCP and UDP get through.
    IcmpBlocked {
        /// Node.
        node: String,
    },
    /// The node's NIC is set to jumbo frames (9000) and flannel followed (overlay, bridge
    /// and pods at 8950), while the fabric carries 1500: large non-TCP packets from the
    /// node vanish. The other half of `underlay-mtu`.
    JumboMtu {
        /// Node.
        node: String,
    },
    /// The node's `flannel.1` was recreated with another UDP port (4789, the IANA one)
    /// than the cluster's 8472.
    VxlanPort {
        /// Node.
        node: String,
    },
    /// The node's `flannel.1` was recreated with another VNI than the cluster's.
    VxlanVni {
        /// Node.
        node: String,
    },
    /// The node's `flannel.1` was recreated with a new MAC and its peers were never told:
    /// they still send to the old one (a missed VtepMAC annotation update).
    VtepChanged {
        /// Node.
        node: String,
    },
    /// kube-proxy on the node lost the kube-dns service's rule: only that node's pods
    /// cannot resolve through the service IP. A fault seen by one node only.
    DnsRulesMissing {
        /// Node.
        node: String,
    },
    /// The node's firewall drops VXLAN to one peer's node IP only (a security agent's or
    /// an operator's rule for one address): those two nodes' pods cannot reach each
    /// other, everyone else's can.
    VxlanPairDrop {
        /// The node whose firewall holds the rule.
        node: String,
        /// The peer whose address it names.
        peer: String,
    },
    /// The node's host firewall is a distribution's default: replies, ICMP, loopback and
    /// ssh accepted, then `-A INPUT -j REJECT --reject-with icmp-host-prohibited`. Nobody
    /// opened flannel's UDP 8472, and no rule names it.
    HostFirewall {
        /// Node.
        node: String,
    },
    /// The node's host firewall is native nftables in firewalld's shape (RHEL 8 and 9): a
    /// table of its own hooked at input, accepting replies, loopback, ICMP and ssh, then
    /// `reject with icmpx admin-prohibited`. `iptables-save` shows none of it.
    NftHostFirewall {
        /// Node.
        node: String,
    },
    /// The node's `cni0` MTU set below the overlay's (1400 < 1450): full-size packets into
    /// its pods are refused, and their senders learn a smaller path MTU. Full-size frames
    /// still cross the underlay.
    BridgeMtu {
        /// Node.
        node: String,
    },
    /// The web pod on the node stops answering (its port dropped in the pod): NodePort
    /// and ingress requests that land on it, one in n, time out, from every node and
    /// through every node.
    BackendDown {
        /// Node.
        node: String,
    },
    /// kube-proxy's `KUBE-POSTROUTING` lost its MASQUERADE rule on the node: a NodePort
    /// request it sends on to a backend on another node is answered straight to the
    /// client, which drops the reply.
    MasqueradeMissing {
        /// Node.
        node: String,
    },
    /// `net.bridge.bridge-nf-call-iptables = 0` on the node (br_netfilter unloaded or the
    /// sysctl reset): a service request from its pods that lands on a backend on its own
    /// bridge is answered un-NATed, and dropped.
    BridgeNfOff {
        /// Node.
        node: String,
    },
    /// The node's `cni0` lost its gateway address (NetworkManager managing the CNI's
    /// devices flushed it): traffic for its pods arrives and has no route, and its pods
    /// have no gateway.
    BridgeAddrLost {
        /// Node.
        node: String,
    },
    /// The node's INPUT chain drops whatever arrives from `flannel.1` (a host firewall
    /// that trusts only its NIC and `cni0`): its gateway and overlay address answer
    /// nobody on other nodes, while pod traffic through the same tunnel is forwarded.
    OverlayInputDrop {
        /// Node.
        node: String,
    },
    /// The node's FORWARD chain drops ICMP ahead of the CNI's accepts (a security policy
    /// against ping): its pods' TCP and UDP are forwarded, their ICMP is not.
    IcmpForwardDrop {
        /// Node.
        node: String,
    },
    /// The node's OUTPUT chain drops ICMP (a host hardening policy against ping): its own
    /// echoes are refused at the socket (EPERM), its echo replies never leave, and the ICMP
    /// it forwards for pods passes.
    IcmpOutputDrop {
        /// Node.
        node: String,
    },
    /// A FORWARD rule on a CoreDNS pod's node drops DNS arriving from the overlay for that
    /// pod: its own node's pods resolve through it, the other nodes' do not.
    DnsPortDrop {
        /// The CoreDNS pod.
        pod: String,
    },
    /// A more specific route on the node for the lower half of the peer's pod CIDR over
    /// the underlay device (a VPN or a static route someone added): flannel's own route is
    /// still in the table, the kernel picks the other.
    RouteHijack {
        /// The node holding the route.
        node: String,
        /// The peer whose pods it takes.
        peer: String,
    },
    /// The node holds an address inside the peer's pod CIDR on its bridge (the range it
    /// had before it was re-registered, or a duplicate flannel lease) and routes that
    /// range to its own pods, and every other node's neighbour entry for the peer's VTEP
    /// holds this node's VTEP MAC (what flanneld writes for a lease that claims the
    /// peer's subnet): the peer's pod traffic from everywhere lands here.
    PodCidrClaimed {
        /// The node that claims the range.
        node: String,
        /// The node that owns it.
        peer: String,
    },
    /// The node's pod bridge (`cni0`) is set down (NetworkManager managing the CNI's
    /// devices, a CNI plugin's DEL gone wrong): its pods are cut off; its own network works.
    BridgeDown {
        /// Node.
        node: String,
    },
    /// Event: `conntrack -F` on one node, or on every node (what a kube-proxy or CNI
    /// restart, or an operator, does): every NATed flow loses its mapping.
    ConntrackFlush {
        /// The node; `None`: every node.
        node: Option<String>,
    },
    /// Event: a firewall reload on the node that drops established flows for a second
    /// (rules flushed and re-added around a conntrack-state DROP).
    FirewallReload {
        /// Node.
        node: String,
    },
    /// Event: the coordinator restarts (a rollout, an eviction).
    CoordinatorRestart,
    /// Event: the node's host agent restarts under its running pod agent (a DaemonSet
    /// rollout), so the relay goes away for a moment.
    HostAgentRestart {
        /// Node.
        node: String,
    },
}

/// How long [`Fault::FirewallReload`] drops established flows.
pub const FIREWALL_RELOAD_GAP: std::time::Duration = std::time::Duration::from_secs(1);

/// What injecting or healing a fault does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Kernel commands.
    Steps(Vec<Step>),
    /// Stop the named lab process.
    Stop(String),
    /// Start the named lab process again.
    Start(String),
    /// Stop the named lab process and start it again at once.
    Restart(String),
    /// Wait this long.
    Pause(std::time::Duration),
    /// These, in order.
    Sequence(Vec<Action>),
}

/// The names of every fault kind, as the CLI takes them (the catalogue's order).
pub static KINDS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| FaultKind::ALL.iter().map(|k| k.id()).collect());

/// A fault the CLI's words or the lab do not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    /// No such kind.
    #[error("unknown fault {0:?}; known: {known}", known = KINDS.join(", "))]
    UnknownKind(String),
    /// The kind needs an argument that was not given.
    #[error("fault {kind} needs --{arg}")]
    Missing {
        /// The kind.
        kind: FaultKind,
        /// The argument.
        arg: &'static str,
    },
    /// A loss outside 1-100 %.
    #[error("--percent must be 1-100, not {0}")]
    Percent(u8),
    /// An MTU the switch port cannot take.
    #[error("--mtu must be 576-1500, not {0}")]
    Mtu(u16),
    /// A node the lab does not have.
    #[error("no node {name:?} in this lab (n1..n{nodes})")]
    NoNode {
        /// The name given.
        name: String,
        /// The lab's size.
        nodes: usize,
    },
    /// A peer the lab does not have.
    #[error("no peer node {0:?} in this lab")]
    NoPeer(String),
    /// A pair fault with both ends on one node.
    #[error("--peer must differ from --node")]
    SamePeer,
    /// A CoreDNS pod the lab does not run.
    #[error("no CoreDNS pod {0:?} (coredns-a, coredns-b)")]
    NoPod(String),
}

const TAG: &str = "-m comment --comment meshprobe-fault";

/// The MAC a peer's VTEP had before its device was recreated (the 4th byte set to 0xff).
fn stale_mac(mac: &str) -> String {
    let mut parts: Vec<&str> = mac.split(':').collect();
    if parts.len() == 6 {
        parts[3] = "ff";
    }
    parts.join(":")
}

/// The MAC a recreated VTEP gets (the 4th byte set to 0xee).
fn changed_mac(mac: &str) -> String {
    let mut parts: Vec<&str> = mac.split(':').collect();
    if parts.len() == 6 {
        parts[3] = "ee";
    }
    parts.join(":")
}

impl Fault {
    /// Builds a fault from the CLI's words, by the catalogue's declaration of the kind.
    /// `pod` defaults to `coredns-b`, `mtu` to 1400, `percent` to 50.
    pub fn parse(
        kind: &str,
        node: Option<&str>,
        peer: Option<&str>,
        pod: Option<&str>,
        mtu: Option<u16>,
        percent: Option<u8>,
    ) -> Result<Self, FaultError> {
        use FaultKind as K;
        let k = FaultKind::from_id(kind).ok_or_else(|| FaultError::UnknownKind(kind.to_owned()))?;
        let need = |v: Option<&str>, arg| {
            v.map(str::to_owned)
                .ok_or(FaultError::Missing { kind: k, arg })
        };
        let args = k.spec().args;
        let node_ = match args {
            Args::Node | Args::NodePeer | Args::NodeMtu | Args::NodePercent => need(node, "node")?,
            _ => String::new(),
        };
        let peer_ = match args {
            Args::NodePeer => need(peer, "peer")?,
            _ => String::new(),
        };
        let pod = pod.unwrap_or("coredns-b").to_owned();
        let maybe_node = node.map(str::to_owned);
        let (node, peer) = (node_, peer_);
        Ok(match k {
            K::VxlanDropIn => Fault::VxlanDropIn { node },
            K::VxlanDropOut => Fault::VxlanDropOut { node },
            K::IpForwardOff => Fault::IpForwardOff { node },
            K::ForwardReject => Fault::ForwardReject { node },
            K::FdbMissing => Fault::FdbMissing { node, peer },
            K::RouteMissing => Fault::RouteMissing { node, peer },
            K::NeighMissing => Fault::NeighMissing { node, peer },
            K::VtepStale => Fault::VtepStale { node, peer },
            K::UnderlayMtu => Fault::UnderlayMtu {
                node,
                mtu: mtu.unwrap_or(1400),
            },
            K::DnsDown => Fault::DnsDown { pod },
            K::MetricsBlocked => Fault::MetricsBlocked { pod },
            K::NodeportRemoved => Fault::NodeportRemoved { node },
            K::IngressDown => Fault::IngressDown,
            K::CoordinatorDown => Fault::CoordinatorDown,
            K::ApiServerDown => Fault::ApiServerDown,
            K::LinkDown => Fault::LinkDown { node },
            K::ConntrackFlush => Fault::ConntrackFlush { node: maybe_node },
            K::FirewallReload => Fault::FirewallReload { node },
            K::CoordinatorRestart => Fault::CoordinatorRestart,
            K::HostAgentRestart => Fault::HostAgentRestart { node },
            K::IcmpBlocked => Fault::IcmpBlocked { node },
            K::JumboMtu => Fault::JumboMtu { node },
            K::VxlanPort => Fault::VxlanPort { node },
            K::VxlanVni => Fault::VxlanVni { node },
            K::VtepChanged => Fault::VtepChanged { node },
            K::DnsRulesMissing => Fault::DnsRulesMissing { node },
            K::VxlanPairDrop => Fault::VxlanPairDrop { node, peer },
            K::HostFirewall => Fault::HostFirewall { node },
            K::NftHostFirewall => Fault::NftHostFirewall { node },
            K::BridgeMtu => Fault::BridgeMtu { node },
            K::BackendDown => Fault::BackendDown { node },
            K::MasqueradeMissing => Fault::MasqueradeMissing { node },
            K::BridgeNfOff => Fault::BridgeNfOff { node },
            K::BridgeAddrLost => Fault::BridgeAddrLost { node },
            K::OverlayInputDrop => Fault::OverlayInputDrop { node },
            K::IcmpForwardDrop => Fault::IcmpForwardDrop { node },
            K::IcmpOutputDrop => Fault::IcmpOutputDrop { node },
            K::DnsPortDrop => Fault::DnsPortDrop { pod },
            K::RouteHijack => Fault::RouteHijack { node, peer },
            K::PodCidrClaimed => Fault::PodCidrClaimed { node, peer },
            K::BridgeDown => Fault::BridgeDown { node },
            K::Loss => {
                let percent = percent.unwrap_or(50);
                if !(1..=100).contains(&percent) {
                    return Err(FaultError::Percent(percent));
                }
                Fault::Loss { node, percent }
            }
        })
    }

    /// The node this fault is on, if it is on one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Fault::VxlanDropIn { node }
            | Fault::VxlanDropOut { node }
            | Fault::IpForwardOff { node }
            | Fault::ForwardReject { node }
            | Fault::FdbMissing { node, .. }
            | Fault::RouteMissing { node, .. }
            | Fault::RouteHijack { node, .. }
            | Fault::PodCidrClaimed { node, .. }
            | Fault::BridgeDown { node }
            | Fault::NeighMissing { node, .. }
            | Fault::VtepStale { node, .. }
            | Fault::UnderlayMtu { node, .. }
            | Fault::NodeportRemoved { node }
            | Fault::LinkDown { node }
            | Fault::FirewallReload { node }
            | Fault::HostAgentRestart { node }
            | Fault::IcmpBlocked { node }
            | Fault::JumboMtu { node }
            | Fault::VxlanPort { node }
            | Fault::VxlanVni { node }
            | Fault::VtepChanged { node }
            | Fault::DnsRulesMissing { node }
            | Fault::VxlanPairDrop { node, .. }
            | Fault::HostFirewall { node }
            | Fault::NftHostFirewall { node }
            | Fault::BridgeMtu { node }
            | Fault::BackendDown { node }
            | Fault::MasqueradeMissing { node }
            | Fault::BridgeNfOff { node }
            | Fault::BridgeAddrLost { node }
            | Fault::OverlayInputDrop { node }
            | Fault::IcmpForwardDrop { node }
            | Fault::IcmpOutputDrop { node }
            | Fault::Loss { node, .. } => Some(node),
            Fault::ConntrackFlush { node } => node.as_deref(),
            Fault::DnsDown { .. }
            | Fault::MetricsBlocked { .. }
            | Fault::DnsPortDrop { .. }
            | Fault::IngressDown
            | Fault::CoordinatorDown
            | Fault::CoordinatorRestart
            | Fault::ApiServerDown => None,
        }
    }

    /// Whether this is an event (it happens once, is never "in force", and has nothing
    /// to heal) rather than a lasting fault.
    pub fn is_event(&self) -> bool {
        matches!(
            self,
            Fault::ConntrackFlush { .. }
                | Fault::FirewallReload { .. }
                | Fault::CoordinatorRestart
                | Fault::HostAgentRestart { .. }
        )
    }

    /// The fault's kind in the catalogue.
    pub fn kind(&self) -> FaultKind {
        use FaultKind as K;
        match self {
            Fault::VxlanDropIn { .. } => K::VxlanDropIn,
            Fault::VxlanDropOut { .. } => K::VxlanDropOut,
            Fault::IpForwardOff { .. } => K::IpForwardOff,
            Fault::ForwardReject { .. } => K::ForwardReject,
            Fault::FdbMissing { .. } => K::FdbMissing,
            Fault::RouteMissing { .. } => K::RouteMissing,
            Fault::NeighMissing { .. } => K::NeighMissing,
            Fault::VtepStale { .. } => K::VtepStale,
            Fault::UnderlayMtu { .. } => K::UnderlayMtu,
            Fault::DnsDown { .. } => K::DnsDown,
            Fault::MetricsBlocked { .. } => K::MetricsBlocked,
            Fault::NodeportRemoved { .. } => K::NodeportRemoved,
            Fault::IngressDown => K::IngressDown,
            Fault::LinkDown { .. } => K::LinkDown,
            Fault::Loss { .. } => K::Loss,
            Fault::CoordinatorDown => K::CoordinatorDown,
            Fault::ApiServerDown => K::ApiServerDown,
            Fault::ConntrackFlush { .. } => K::ConntrackFlush,
            Fault::FirewallReload { .. } => K::FirewallReload,
            Fault::CoordinatorRestart => K::CoordinatorRestart,
            Fault::HostAgentRestart { .. } => K::HostAgentRestart,
            Fault::IcmpBlocked { .. } => K::IcmpBlocked,
            Fault::JumboMtu { .. } => K::JumboMtu,
            Fault::VxlanPort { .. } => K::VxlanPort,
            Fault::VxlanVni { .. } => K::VxlanVni,
            Fault::VtepChanged { .. } => K::VtepChanged,
            Fault::DnsRulesMissing { .. } => K::DnsRulesMissing,
            Fault::VxlanPairDrop { .. } => K::VxlanPairDrop,
            Fault::HostFirewall { .. } => K::HostFirewall,
            Fault::NftHostFirewall { .. } => K::NftHostFirewall,
            Fault::BridgeMtu { .. } => K::BridgeMtu,
            Fault::BackendDown { .. } => K::BackendDown,
            Fault::MasqueradeMissing { .. } => K::MasqueradeMissing,
            Fault::BridgeNfOff { .. } => K::BridgeNfOff,
            Fault::BridgeAddrLost { .. } => K::BridgeAddrLost,
            Fault::OverlayInputDrop { .. } => K::OverlayInputDrop,
            Fault::IcmpForwardDrop { .. } => K::IcmpForwardDrop,
            Fault::IcmpOutputDrop { .. } => K::IcmpOutputDrop,
            Fault::DnsPortDrop { .. } => K::DnsPortDrop,
            Fault::RouteHijack { .. } => K::RouteHijack,
            Fault::PodCidrClaimed { .. } => K::PodCidrClaimed,
            Fault::BridgeDown { .. } => K::BridgeDown,
        }
    }

    /// The peer of a pair fault.
    pub fn peer(&self) -> Option<&str> {
        match self {
            Fault::FdbMissing { peer, .. }
            | Fault::RouteMissing { peer, .. }
            | Fault::RouteHijack { peer, .. }
            | Fault::PodCidrClaimed { peer, .. }
            | Fault::NeighMissing { peer, .. }
            | Fault::VtepStale { peer, .. }
            | Fault::VxlanPairDrop { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// The CoreDNS pod a fault is on.
    pub fn pod(&self) -> Option<&str> {
        match self {
            Fault::DnsDown { pod } | Fault::MetricsBlocked { pod } | Fault::DnsPortDrop { pod } => {
                Some(pod)
            }
            _ => None,
        }
    }

    /// Where the fault sits in the lab, in the ids of the datapath model (nodes by
    /// position, CoreDNS pods by [`LabPlan::coredns_pods`] order).
    pub fn placement(&self, plan: &LabPlan) -> Placement {
        let ix = |n: &str| plan.nodes.iter().position(|x| x.name == n);
        let target = self.pod().and_then(|pod| {
            let id = plan.coredns_pods().iter().position(|p| *p == pod)?;
            Some((id, ix(&plan.coredns_node(pod)?.name)?))
        });
        Placement {
            nodes: plan.nodes.len(),
            node: self.node().and_then(ix),
            peer: self.peer().and_then(ix),
            target,
            node_port: NODE_PORT,
            overlay_port: VXLAN_PORT,
        }
    }

    /// Checks the fault's names against the lab.
    pub fn validate(&self, plan: &LabPlan) -> Result<(), FaultError> {
        if let Some(n) = self.node()
            && plan.node(n).is_none()
        {
            return Err(FaultError::NoNode {
                name: n.to_owned(),
                nodes: plan.nodes.len(),
            });
        }
        if let Some(peer) = self.peer() {
            plan.node(peer)
                .ok_or_else(|| FaultError::NoPeer(peer.to_owned()))?;
            if self.node() == Some(peer) {
                return Err(FaultError::SamePeer);
            }
        }
        if let Some(pod) = self.pod() {
            plan.coredns_node(pod)
                .ok_or_else(|| FaultError::NoPod(pod.to_owned()))?;
        }
        if let Fault::UnderlayMtu { mtu, .. } = self
            && !(576..=1500).contains(mtu)
        {
            return Err(FaultError::Mtu(*mtu));
        }
        Ok(())
    }

    /// What injecting it does. Call [`Fault::validate`] first.
    pub fn inject(&self, plan: &LabPlan) -> Action {
        self.actions(plan, true)
    }

    /// What healing it does.
    pub fn heal(&self, plan: &LabPlan) -> Action {
        self.actions(plan, false)
    }

    fn actions(&self, plan: &LabPlan, inject: bool) -> Action {
        let op = if inject { "-I" } else { "-D" };
        let node = |n: &str| plan.node(n).cloned();
        if self.is_event() && !inject {
            return Action::Steps(Vec::new());
        }
        let steps = match self {
            Fault::ConntrackFlush { node: n } => plan
                .nodes
                .iter()
                .filter(|x| n.as_deref().is_none_or(|n| n == x.name))
                .map(|x| Step::Run {
                    ns: Some(x.ns.clone()),
                    program: "conntrack",
                    args: vec!["-F".into()],
                    stdin: None,
                })
                .collect(),
            Fault::FirewallReload { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                let rules = |op: &str| -> Vec<Step> {
                    ["INPUT", "FORWARD", "OUTPUT"]
                        .iter()
                        .map(|chain| {
                            Step::iptables(
                                &ns,
                                &format!(
                                    "{op} {chain} -m conntrack --ctstate ESTABLISHED,RELATED {TAG} -j DROP"
                                ),
                            )
                        })
                        .collect()
                };
                return Action::Sequence(vec![
                    Action::Steps(rules("-I")),
                    Action::Pause(FIREWALL_RELOAD_GAP),
                    Action::Steps(rules("-D")),
                ]);
            }
            Fault::CoordinatorRestart => return Action::Restart("coordinator".into()),
            Fault::HostAgentRestart { node } => {
                return Action::Restart(format!("agent/{node}/host"));
            }
            Fault::OverlayInputDrop { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                vec![Step::iptables(
                    &ns,
                    &format!("{op} INPUT -i flannel.1 {TAG} -j DROP"),
                )]
            }
            Fault::IcmpForwardDrop { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                vec![Step::iptables(
                    &ns,
                    &format!("{op} FORWARD -p icmp {TAG} -j DROP"),
                )]
            }
            Fault::IcmpOutputDrop { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                vec![Step::iptables(
                    &ns,
                    &format!("{op} OUTPUT -p icmp {TAG} -j DROP"),
                )]
            }
            Fault::DnsPortDrop { pod } => {
                let Some(n) = plan.coredns_node(pod) else {
                    return Action::Steps(vec![]);
                };
                vec![Step::iptables(
                    &n.ns,
                    &format!(
                        "{op} FORWARD -i flannel.1 -d {}/32 -p udp --dport 53 {TAG} -j DROP",
                        n.pod_ip(PodKind::Dns)
                    ),
                )]
            }
            Fault::IcmpBlocked { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                vec![Step::iptables(
                    &ns,
                    &format!("{op} INPUT -i eth0 -p icmp --icmp-type echo-request {TAG} -j DROP"),
                )]
            }
            Fault::JumboMtu { node: n } => {
                let Some(n) = node(n) else {
                    return Action::Steps(vec![]);
                };
                let (nic, inner) = if inject {
                    (9000, 8950)
                } else {
                    (1500, OVERLAY_MTU)
                };
                // Raised from the pods out, lowered from the NIC in, so that no device is
                // ever larger than the one it hands packets to.
                let mut pods: Vec<Step> = n
                    .pods
                    .iter()
                    .map(|k| Step::ip_batch(&n.pod_ns(*k), format!("link set eth0 mtu {inner}\n")))
                    .collect();
                let veths: String = n
                    .pods
                    .iter()
                    .map(|k| format!("link set veth-{} mtu {inner}\n", k.suffix()))
                    .collect();
                let node_side = Step::ip_batch(
                    &n.ns,
                    if inject {
                        // A VXLAN device is never larger than its lower device allows.
                        format!(
                            "{veths}link set cni0 mtu {inner}\nlink set eth0 mtu {nic}\nlink set flannel.1 mtu {inner}\n"
                        )
                    } else {
                        format!(
                            "link set flannel.1 mtu {inner}\nlink set eth0 mtu {nic}\nlink set cni0 mtu {inner}\n{veths}"
                        )
                    },
                );
                if inject {
                    pods.push(node_side);
                    pods
                } else {
                    let mut v = vec![node_side];
                    v.extend(pods);
                    v
                }
            }
            Fault::VxlanPort { node: n }
            | Fault::VxlanVni { node: n }
            | Fault::VtepChanged { node: n } => {
                let Some(n) = node(n) else {
                    return Action::Steps(vec![]);
                };
                let mut v = Vxlan::of(&n);
                if inject {
                    match self {
                        Fault::VxlanPort { .. } => v.port = 4789,
                        Fault::VxlanVni { .. } => v.vni = 2,
                        _ => v.mac = changed_mac(&n.vtep_mac),
                    }
                }
                recreate_vxlan(plan, &n, &v)
            }
            Fault::DnsRulesMissing { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                let rule = format!(
                    "KUBE-SERVICES -d {KUBE_DNS_SVC}/32 -p udp -m udp --dport 53 -j KUBE-SVC-KUBEDNS"
                );
                vec![Step::iptables(
                    &ns,
                    &if inject {
                        format!("-t nat -D {rule}")
                    } else {
                        format!("-t nat -I {rule}")
                    },
                )]
            }
            Fault::VxlanPairDrop { node: n, peer } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                let ip = node(peer).map(|p| p.ip.to_string()).unwrap_or_default();
                vec![Step::iptables(
                    &ns,
                    &format!("{op} OUTPUT -d {ip}/32 -p udp --dport {VXLAN_PORT} {TAG} -j DROP"),
                )]
            }
            Fault::HostFirewall { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                // Appended in this order on injection, deleted by their exact text.
                let rules = [
                    format!("INPUT -m state --state RELATED,ESTABLISHED {TAG} -j ACCEPT"),
                    format!("INPUT -p icmp {TAG} -j ACCEPT"),
                    format!("INPUT -i lo {TAG} -j ACCEPT"),
                    format!("INPUT -p tcp -m state --state NEW -m tcp --dport 22 {TAG} -j ACCEPT"),
                    format!("INPUT {TAG} -j REJECT --reject-with icmp-host-prohibited"),
                ];
                let op = if inject { "-A" } else { "-D" };
                rules
                    .iter()
                    .map(|r| Step::iptables(&ns, &format!("{op} {r}")))
                    .collect()
            }
            Fault::NftHostFirewall { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                if inject {
                    vec![Step::nft(&ns, &nft_host_firewall())]
                } else {
                    vec![Step::run(
                        &ns,
                        "nft",
                        &["delete", "table", "inet", NFT_TABLE],
                    )]
                }
            }
            Fault::BridgeMtu { node: n } => {
                let Some(n) = node(n) else {
                    return Action::Steps(vec![]);
                };
                let mtu = if inject {
                    OVERLAY_MTU - 50
                } else {
                    OVERLAY_MTU
                };
                let mut v = vec![Step::ip_batch(&n.ns, format!("link set cni0 mtu {mtu}\n"))];
                if !inject {
                    // Senders learned the smaller path MTU from cni0's "fragmentation
                    // needed"; a real cluster forgets it within 10 minutes, the lab at once.
                    v.extend(plan.nodes.iter().flat_map(|x| {
                        x.pods
                            .iter()
                            .map(|k| Step::ip_batch(&x.pod_ns(*k), "route flush cache\n".into()))
                            .chain([Step::ip_batch(&x.ns, "route flush cache\n".into())])
                            .collect::<Vec<_>>()
                    }));
                }
                v
            }
            Fault::MasqueradeMissing { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                let op = if inject { "-D" } else { "-A" };
                vec![Step::iptables(
                    &ns,
                    &format!("-t nat {op} KUBE-POSTROUTING -j MASQUERADE --random-fully"),
                )]
            }
            Fault::BridgeNfOff { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                vec![Step::sysctl(
                    &ns,
                    "net.bridge.bridge-nf-call-iptables",
                    if inject { "0" } else { "1" },
                )]
            }
            Fault::BridgeAddrLost { node: n } => {
                let Some(n) = node(n) else {
                    return Action::Steps(vec![]);
                };
                // Replace, not add: the address may have been put back by hand.
                let op = if inject { "del" } else { "replace" };
                vec![Step::ip_batch(
                    &n.ns,
                    format!("addr {op} {}/24 dev cni0\n", n.gateway()),
                )]
            }
            Fault::BackendDown { node: n } => {
                let ns = node(n).map(|n| n.pod_ns(PodKind::Web)).unwrap_or_default();
                vec![Step::iptables(
                    &ns,
                    &format!("{op} INPUT -p tcp --dport {WEB_PORT} {TAG} -j DROP"),
                )]
            }
            Fault::VxlanDropIn { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                vec![Step::iptables(
                    &ns,
                    &format!("{op} INPUT -p udp --dport {VXLAN_PORT} {TAG} -j DROP"),
                )]
            }
            Fault::VxlanDropOut { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                vec![Step::iptables(
                    &ns,
                    &format!("{op} OUTPUT -p udp --dport {VXLAN_PORT} {TAG} -j DROP"),
                )]
            }
            Fault::IpForwardOff { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                vec![Step::sysctl(
                    &ns,
                    "net.ipv4.ip_forward",
                    if inject { "0" } else { "1" },
                )]
            }
            Fault::ForwardReject { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                let zones = ["FORWARD_IN_ZONES", "FORWARD_OUT_ZONES"];
                if inject {
                    let mut v: Vec<Step> = zones
                        .iter()
                        .map(|z| Step::iptables(&ns, &format!("-N {z}")))
                        .collect();
                    v.push(Step::iptables(
                        &ns,
                        "-I FORWARD 1 -j REJECT --reject-with icmp-host-prohibited",
                    ));
                    v
                } else {
                    let mut v = vec![Step::iptables(
                        &ns,
                        "-D FORWARD -j REJECT --reject-with icmp-host-prohibited",
                    )];
                    v.extend(
                        zones
                            .iter()
                            .map(|z| Step::iptables(&ns, &format!("-X {z}"))),
                    );
                    v
                }
            }
            Fault::FdbMissing { node: n, peer } => {
                let (Some(n), Some(p)) = (node(n), node(peer)) else {
                    return Action::Steps(vec![]);
                };
                let line = if inject {
                    format!("fdb del {} dev flannel.1 dst {} self", p.vtep_mac, p.ip)
                } else {
                    fdb_line(&p)
                };
                vec![Step::bridge_batch(&n.ns, line + "\n")]
            }
            Fault::RouteMissing { node: n, peer } => {
                let (Some(n), Some(p)) = (node(n), node(peer)) else {
                    return Action::Steps(vec![]);
                };
                let line = if inject {
                    format!("route del {}", p.pod_cidr())
                } else {
                    route_line(&p)
                };
                vec![Step::ip_batch(&n.ns, line + "\n")]
            }
            Fault::RouteHijack { node: n, peer } => {
                let (Some(n), Some(p)) = (node(n), node(peer)) else {
                    return Action::Steps(vec![]);
                };
                let verb = if inject { "add" } else { "del" };
                vec![Step::ip_batch(
                    &n.ns,
                    format!("route {verb} 10.42.{}.0/25 dev eth0\n", p.subnet),
                )]
            }
            Fault::PodCidrClaimed { node: n, peer } => {
                let (Some(n), Some(p)) = (node(n), node(peer)) else {
                    return Action::Steps(vec![]);
                };
                let claim = format!("{}/24 dev cni0", p.gateway());
                let mut steps = vec![Step::ip_batch(
                    &n.ns,
                    if inject {
                        format!("route del {}\naddr add {claim}\n", p.pod_cidr())
                    } else {
                        format!("addr del {claim}\n{}\n", route_line(&p))
                    },
                )];
                let imposter = LabNode {
                    vtep_mac: n.vtep_mac.clone(),
                    ..p.clone()
                };
                for h in plan
                    .nodes
                    .iter()
                    .filter(|h| h.name != n.name && h.name != p.name)
                {
                    let to = if inject { &imposter } else { &p };
                    steps.push(Step::ip_batch(&h.ns, neigh_line(to) + "\n"));
                }
                steps
            }
            Fault::BridgeDown { node: n } => {
                let Some(n) = node(n) else {
                    return Action::Steps(vec![]);
                };
                let state = if inject { "down" } else { "up" };
                // Down removes the bridge's connected route; up has the kernel restore it.
                vec![Step::ip_batch(&n.ns, format!("link set cni0 {state}\n"))]
            }
            Fault::NeighMissing { node: n, peer } => {
                let (Some(n), Some(p)) = (node(n), node(peer)) else {
                    return Action::Steps(vec![]);
                };
                let line = if inject {
                    format!("neigh del {} dev flannel.1", p.vtep_ip())
                } else {
                    neigh_line(&p)
                };
                vec![Step::ip_batch(&n.ns, line + "\n")]
            }
            Fault::VtepStale { node: n, peer } => {
                let (Some(n), Some(p)) = (node(n), node(peer)) else {
                    return Action::Steps(vec![]);
                };
                // The old MAC: what the peer's device had before it was recreated.
                let old = LabNode {
                    vtep_mac: stale_mac(&p.vtep_mac),
                    ..p.clone()
                };
                let (from, to) = if inject { (&p, &old) } else { (&old, &p) };
                vec![
                    Step::ip_batch(&n.ns, neigh_line(to) + "\n"),
                    Step::bridge_batch(
                        &n.ns,
                        format!(
                            "fdb del {} dev flannel.1 dst {} self\n{}\n",
                            from.vtep_mac,
                            p.ip,
                            fdb_line(to)
                        ),
                    ),
                ]
            }
            Fault::UnderlayMtu { node: n, mtu } => {
                let port = node(n).map(|n| n.switch_port()).unwrap_or_default();
                let mtu = if inject { *mtu } else { 1500 };
                vec![Step::ip_batch(
                    &plan.switch_ns(),
                    format!("link set {port} mtu {mtu}\n"),
                )]
            }
            Fault::DnsDown { pod } => {
                let name = format!("pod/{pod}");
                return if inject {
                    Action::Stop(name)
                } else {
                    Action::Start(name)
                };
            }
            Fault::MetricsBlocked { pod } => {
                let ns = plan
                    .coredns_node(pod)
                    .map(|n| n.pod_ns(PodKind::Dns))
                    .unwrap_or_default();
                vec![Step::iptables(
                    &ns,
                    &format!("{op} INPUT -p tcp --dport 9153 {TAG} -j DROP"),
                )]
            }
            Fault::NodeportRemoved { node: n } => {
                let ns = node(n).map(|n| n.ns).unwrap_or_default();
                if inject {
                    vec![Step::iptables(&ns, "-t nat -F KUBE-NODEPORTS")]
                } else {
                    vec![Step::iptables(
                        &ns,
                        &format!("-t nat -A KUBE-NODEPORTS {}", nodeport_rule()),
                    )]
                }
            }
            Fault::IngressDown => {
                return if inject {
                    Action::Stop("ingress".into())
                } else {
                    Action::Start("ingress".into())
                };
            }
            Fault::CoordinatorDown => {
                return if inject {
                    Action::Stop("coordinator".into())
                } else {
                    Action::Start("coordinator".into())
                };
            }
            Fault::ApiServerDown => {
                return if inject {
                    Action::Stop("kube-api".into())
                } else {
                    Action::Start("kube-api".into())
                };
            }
            Fault::LinkDown { node: n } => {
                let port = node(n).map(|n| n.switch_port()).unwrap_or_default();
                let state = if inject { "down" } else { "up" };
                vec![Step::ip_batch(
                    &plan.switch_ns(),
                    format!("link set {port} {state}\n"),
                )]
            }
            Fault::Loss { node: n, percent } => {
                let Some(x) = node(n) else {
                    return Action::Steps(vec![]);
                };
                // The wire loses them: the switch drops a share of the frames to and from
                // x's port (nftables' bridge family, no netem). A rule in x's own OUTPUT
                // would have x's kernel refuse its sends (EPERM), and one at the receivers
                // would be in their firewalls: neither is a lossy link.
                let table = format!("meshprobe_loss_{}", x.name.replace('-', "_"));
                let port = x.switch_port();
                if inject {
                    vec![Step::nft(
                        &plan.switch_ns(),
                        &format!(
                            "table bridge {table} {{\n\
                             \tchain forward {{\n\
                             \t\ttype filter hook forward priority 0; policy accept;\n\
                             \t\tiifname \"{port}\" numgen random mod 100 < {percent} drop\n\
                             \t\toifname \"{port}\" numgen random mod 100 < {percent} drop\n\
                             \t}}\n\
                             }}\n"
                        ),
                    )]
                } else {
                    vec![Step::run(
                        &plan.switch_ns(),
                        "nft",
                        &["delete", "table", "bridge", &table],
                    )]
                }
            }
        };
        Action::Steps(steps)
    }
}

/// The lab's native nftables table (`nft-host-firewall`).
pub const NFT_TABLE: &str = "meshprobe_fw";

/// A firewalld-shaped input chain in a table of its own: what RHEL's default zone lets in,
/// then a reject (written from firewalld's documented behaviour, not its files).
fn nft_host_firewall() -> String {
    format!(
        "table inet {NFT_TABLE} {{\n\
         \tchain filter_INPUT {{\n\
         \t\ttype filter hook input priority filter + 10; policy accept;\n\
         \t\tct state {{ established, related }} accept\n\
         \t\tiifname \"lo\" accept\n\
         \t\tjump filter_IN_public\n\
         \t\treject with icmpx admin-prohibited\n\
         \t}}\n\
         \tchain filter_IN_public {{\n\
         \t\tmeta l4proto {{ icmp, ipv6-icmp }} accept\n\
         \t\ttcp dport 22 ct state {{ new, untracked }} accept\n\
         \t}}\n\
         }}\n"
    )
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::VxlanDropIn { node } => write!(f, "vxlan-drop-in on {node}"),
            Fault::VxlanDropOut { node } => write!(f, "vxlan-drop-out on {node}"),
            Fault::IpForwardOff { node } => write!(f, "ip-forward-off on {node}"),
            Fault::ForwardReject { node } => write!(f, "forward-reject on {node}"),
            Fault::FdbMissing { node, peer } => write!(f, "fdb-missing on {node} for {peer}"),
            Fault::RouteMissing { node, peer } => write!(f, "route-missing on {node} for {peer}"),
            Fault::NeighMissing { node, peer } => write!(f, "neigh-missing on {node} for {peer}"),
            Fault::UnderlayMtu { node, mtu } => {
                write!(f, "underlay-mtu {mtu} on {node}'s switch port")
            }
            Fault::DnsDown { pod } => write!(f, "dns-down on {pod}"),
            Fault::MetricsBlocked { pod } => write!(f, "metrics-blocked on {pod}"),
            Fault::NodeportRemoved { node } => {
                write!(f, "nodeport-removed on {node} (port {NODE_PORT})")
            }
            Fault::IngressDown => write!(f, "ingress-down"),
            Fault::CoordinatorDown => write!(f, "coordinator-down"),
            Fault::VtepStale { node, peer } => write!(f, "vtep-stale on {node} for {peer}"),
            Fault::ApiServerDown => write!(f, "api-server-down"),
            Fault::LinkDown { node } => write!(f, "link-down on {node}"),
            Fault::Loss { node, percent } => write!(f, "loss {percent}% each way on {node}"),
            Fault::ConntrackFlush { node: Some(node) } => write!(f, "conntrack-flush on {node}"),
            Fault::ConntrackFlush { node: None } => write!(f, "conntrack-flush on every node"),
            Fault::FirewallReload { node } => write!(f, "firewall-reload on {node}"),
            Fault::CoordinatorRestart => write!(f, "coordinator-restart"),
            Fault::HostAgentRestart { node } => write!(f, "host-agent-restart on {node}"),
            Fault::IcmpBlocked { node } => write!(f, "icmp-blocked on {node}"),
            Fault::OverlayInputDrop { node } => write!(f, "overlay-input-drop on {node}"),
            Fault::IcmpForwardDrop { node } => write!(f, "icmp-forward-drop on {node}"),
            Fault::IcmpOutputDrop { node } => write!(f, "icmp-output-drop on {node}"),
            Fault::DnsPortDrop { pod } => write!(f, "dns-port-drop toward {pod}"),
            Fault::RouteHijack { node, peer } => {
                write!(f, "route-hijack on {node}: half of {peer}'s pods over eth0")
            }
            Fault::PodCidrClaimed { node, peer } => {
                write!(f, "pod-cidr-claimed: {node} holds {peer}'s pod range")
            }
            Fault::BridgeDown { node } => write!(f, "bridge-down (cni0) on {node}"),
            Fault::JumboMtu { node } => write!(f, "jumbo-mtu (9000) on {node}"),
            Fault::VxlanPort { node } => write!(f, "vxlan-port 4789 on {node}"),
            Fault::VxlanVni { node } => write!(f, "vxlan-vni 2 on {node}"),
            Fault::VtepChanged { node } => write!(f, "vtep-changed on {node}"),
            Fault::DnsRulesMissing { node } => write!(f, "dns-rules-missing on {node}"),
            Fault::VxlanPairDrop { node, peer } => {
                write!(f, "vxlan-pair-drop on {node} toward {peer}")
            }
            Fault::HostFirewall { node } => write!(f, "host-firewall on {node}"),
            Fault::NftHostFirewall { node } => write!(f, "nft-host-firewall on {node}"),
            Fault::BridgeMtu { node } => write!(f, "bridge-mtu (cni0 at 1400) on {node}"),
            Fault::BackendDown { node } => write!(f, "backend-down (web pod) on {node}"),
            Fault::MasqueradeMissing { node } => write!(f, "masquerade-missing on {node}"),
            Fault::BridgeNfOff { node } => write!(f, "bridge-nf-off on {node}"),
            Fault::BridgeAddrLost { node } => write!(f, "bridge-addr-lost (cni0) on {node}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshprobe_core::catalogue::Class;

    #[test]
    fn every_kind_parses_validates_and_heals_what_it_injects() {
        let plan = LabPlan::new("t", 3).expect("valid");
        for kind in KINDS.iter().copied() {
            let f = Fault::parse(kind, Some("n3"), Some("n1"), None, None, None).expect(kind);
            f.validate(&plan).expect(kind);
            assert_eq!(f.kind().id(), kind, "parse and kind agree");
            assert_eq!(
                f.is_event(),
                f.kind().spec().class == Class::Event,
                "{kind}"
            );
            let (inj, heal) = (f.inject(&plan), f.heal(&plan));
            assert_ne!(inj, heal, "{kind}: heal must differ from inject");
            if f.is_event() {
                // Events happen once: nothing to heal, something to do.
                assert_eq!(heal, Action::Steps(vec![]), "{kind}");
                assert!(
                    matches!(&inj, Action::Steps(s) if !s.is_empty())
                        || matches!(inj, Action::Restart(_) | Action::Sequence(_)),
                    "{kind}: {inj:?}"
                );
                continue;
            }
            match (&inj, &heal) {
                (Action::Steps(a), Action::Steps(b)) => {
                    assert!(!a.is_empty() && !b.is_empty(), "{kind}")
                }
                (Action::Stop(a), Action::Start(b)) => assert_eq!(a, b),
                other => panic!("{kind}: mismatched actions {other:?}"),
            }
        }
    }

    #[test]
    fn bad_fault_words_are_named() {
        let plan = LabPlan::new("t", 3).expect("valid");
        assert_eq!(
            Fault::parse("vxlan-drop-in", None, None, None, None, None).expect_err("no node"),
            FaultError::Missing {
                kind: FaultKind::VxlanDropIn,
                arg: "node"
            }
        );
        assert!(
            Fault::parse("nope", None, None, None, None, None)
                .expect_err("kind")
                .to_string()
                .contains("unknown fault")
        );
        let f =
            Fault::parse("fdb-missing", Some("n1"), Some("n9"), None, None, None).expect("parses");
        assert_eq!(
            f.validate(&plan).expect_err("peer"),
            FaultError::NoPeer("n9".into())
        );
        let f =
            Fault::parse("dns-down", None, None, Some("coredns-z"), None, None).expect("parses");
        assert!(f.validate(&plan).is_err());
    }

    #[test]
    fn loss_table_is_deleted_by_the_name_it_was_made_with() {
        let plan = LabPlan::new("t", 2).expect("valid");
        let f = Fault::Loss {
            node: "n1".into(),
            percent: 30,
        };
        let (Action::Steps(i), Action::Steps(h)) = (f.inject(&plan), f.heal(&plan)) else {
            panic!()
        };
        let (
            Step::Run {
                ns: Some(ins),
                program: "nft",
                stdin: Some(ruleset),
                ..
            },
            Step::Run {
                ns: Some(hns),
                program: "nft",
                args,
                ..
            },
        ) = (&i[0], &h[0])
        else {
            panic!("{i:?} / {h:?}")
        };
        // At the switch, never in a node's own firewall.
        assert_eq!((ins, hns), (&plan.switch_ns(), &plan.switch_ns()));
        assert!(
            ruleset.contains("table bridge meshprobe_loss_n1 {"),
            "{ruleset}"
        );
        assert!(
            ruleset.contains("iifname \"n1\" numgen random mod 100 < 30 drop"),
            "{ruleset}"
        );
        assert!(
            ruleset.contains("oifname \"n1\" numgen random mod 100 < 30 drop"),
            "{ruleset}"
        );
        assert_eq!(args.join(" "), "delete table bridge meshprobe_loss_n1");
        assert!(
            h[0].presence_check().is_some(),
            "a heal by hand is tolerated"
        );
    }
}
