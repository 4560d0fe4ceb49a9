//! Synthetic rounds for tests and benchmarks: a topology of any size, faults injected into
//! a model of the packet paths, and the report the agents would send. It goes through the
//! real planner ([`make_plan`]) and report builder ([`build_report`]), so it exercises the
//! same cells a live round has.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use meshprobe_core::capture::{CaptureSummary, PeerFlow, Sizes};
use meshprobe_core::catalogue::{Effect, FaultKind, Placement};
use meshprobe_core::datapath::{self, Dest, Hop, HopKind, Ports, Site};
use meshprobe_core::evidence::{
    DeviceState, FirewallRule, ForwardEvidence, KubeProxyEvidence, NeighbourEntry, NodeEvidence,
    OverlayConfig, OverlayEvidence,
};
use meshprobe_core::matrix::{RoundInput, build_report};
use meshprobe_core::plan::{AgentReport, Plan, PlanSettings, Planner, ProbeResult};
use meshprobe_core::{AgentKind, CheckReport, FailKind, Layer, NodeName, Topology};

/// A fault in the model. Node arguments are indices into the topology's nodes.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The node's underlay link is down: nothing reaches it, its agents are silent.
    LinkDown(usize),
    /// VXLAN into the node is dropped (iptables INPUT).
    VxlanIn(usize),
    /// VXLAN out of the node is dropped (iptables OUTPUT).
    VxlanOut(usize),
    /// `net.ipv4.ip_forward = 0`.
    ForwardOff(usize),
    /// A FORWARD REJECT above the CNI's accepts.
    ForwardReject(usize),
    /// The first node lacks the overlay entries for the second.
    PeerMissing(usize, usize),
    /// The node's underlay path drops full-size frames.
    Mtu(usize),
    /// The node loses this percentage each way.
    Loss(usize, u8),
    /// This CoreDNS pod is down.
    DnsDown(String),
    /// This CoreDNS pod's :9153 is blocked.
    MetricsBlocked(String),
    /// The node's NodePort rules are gone.
    NodeportRemoved(usize),
    /// The ingress controller is down.
    IngressDown,
    /// The node's agents are silent, its network fine.
    AgentsSilent(usize),
    /// The node's host agent's prober is broken: it sees every peer fail.
    SickProber(usize),
    /// The first node's agents report every probe toward the second node dead, while the
    /// datapath is whole (a lying or broken observer, issue 22): the fault is the
    /// observer's, or the link's, never the second node's alone.
    LiesAbout(usize, usize),
    /// A security group drops VXLAN on the path into the node (nothing on the node shows it).
    PathBlockedIn(usize),
    /// ICMP echo to the node's IP is filtered; TCP and UDP get through.
    IcmpBlocked(usize),
    /// The node's NIC and overlay are set to jumbo frames the fabric does not carry.
    JumboMtu(usize),
    /// The node's VXLAN device uses another UDP port than the cluster's.
    VxlanPort(usize),
    /// The node's VXLAN device was recreated with a new MAC its peers were never told of.
    VtepChanged(usize),
    /// The node's subnet was never published: every peer lacks its overlay entries.
    Unpublished(usize),
    /// The node's OUTPUT refuses this share (percent) of its own ICMP (a `statistic` or
    /// `limit` match, a full conntrack table): its own echoes fail with EPERM, and its
    /// echo replies to others vanish. Forwarded traffic and TCP pass.
    SendsRefused(usize, u8),
    /// The node's pod agent is silent (its pod is not running): its pod IP is unknown, so
    /// nobody probes it, and it probes nothing.
    PodSilent(usize),
    /// The node's kube-proxy lost the kube-dns service's rules: its pods cannot resolve
    /// through the service IP.
    DnsRulesMissing(usize),
    /// The first node's firewall drops VXLAN to the second's node IP (OUTPUT): their pods
    /// cannot reach each other, everyone else's can.
    PairBlocked(usize, usize),
    /// The node's `cni0` MTU is below the overlay's: full-size packets into its pods are
    /// refused (the senders learn a smaller path MTU); full-size frames still cross the
    /// underlay.
    BridgeMtu(usize),
    /// The service's backend pod on the node does not answer: NodePort and ingress
    /// requests that land on it (one in n) time out, from every node and through every
    /// node.
    BackendDown(usize),
    /// kube-proxy's masquerade rule is gone on the node: NodePort requests it sends on
    /// to a backend on another node are answered straight to the client, which drops the
    /// reply; those it keeps on its own backend pass.
    MasqueradeMissing(usize),
    /// `net.bridge.bridge-nf-call-iptables = 0` on the node: a service request from its
    /// pods that lands on a backend on its own bridge gets its reply un-NATed by nobody.
    BridgeNfOff(usize),
    /// The node's `cni0` lost its gateway address (NetworkManager flushed it): nothing
    /// answers for its pods' subnet, its pods have no gateway (its pod agent falls silent),
    /// and its own backends drop out of the services.
    GatewayLost(usize),
    /// DNS from the node's pods to this CoreDNS pod is filtered (a NetworkPolicy, the
    /// Corefile's `acl`); everything else between them works. No rule names this one: it
    /// is left to an `unexplained` finding that says what works.
    DnsFiltered(usize, String),
    /// A kind of the fault catalogue that is hops of the datapath model failing
    /// ([`FaultKind::effect`]): a fault no detector was written for, simulated from its
    /// effect on the paths. `forward_rule` is the FORWARD rule the node's agent reads
    /// for it, if any.
    Hops {
        /// The node it is on.
        node: usize,
        /// The catalogue's kind.
        kind: FaultKind,
        /// The hops that drop, and what.
        effect: Effect,
        /// The FORWARD rule the agent reports for it.
        forward_rule: Option<String>,
    },
}

fn on(kind: HopKind, x: usize) -> Hop {
    Hop {
        kind,
        site: Site::Node(x),
    }
}

impl Fault {
    /// One fault of every kind the model has, on node `x` (with `y` the other end of a
    /// pair, and `pod` a CoreDNS pod's name): each kind of the fault catalogue that the
    /// synthetic rounds simulate ([`Fault::of`]), then the conditions only they have (a
    /// silent agent, a sick prober, a fabric no node sees). The property tests draw from
    /// it, so a kind is drawn the day it is added.
    pub fn catalogue(t: &Topology, x: usize, y: usize, pod: &str, loss: u8) -> Vec<Fault> {
        let mut all: Vec<Fault> = Vec::new();
        for &k in FaultKind::ALL {
            if let Some(f) = Fault::of(k, t, x, y, pod, loss)
                && !all.contains(&f)
            {
                all.push(f);
            }
        }
        all.extend([
            Fault::AgentsSilent(x),
            Fault::SickProber(x),
            Fault::LiesAbout(x, y),
            Fault::PathBlockedIn(x),
            Fault::Unpublished(x),
            Fault::PodSilent(x),
            Fault::SendsRefused(x, loss.max(30)),
        ]);
        all
    }

    /// The synthetic rounds' fault for one kind of the catalogue, on node `x` (peer `y`,
    /// CoreDNS pod `pod`); `None` for the kinds they do not simulate: events and the
    /// control plane, and what needs evidence the model does not write (a VNI, an INPUT
    /// chain, a route over another device, a claimed range).
    pub fn of(
        k: FaultKind,
        t: &Topology,
        x: usize,
        y: usize,
        pod: &str,
        loss: u8,
    ) -> Option<Fault> {
        use FaultKind as K;
        let pod = pod.to_owned();
        Some(match k {
            K::VxlanDropIn => Fault::VxlanIn(x),
            K::VxlanDropOut => Fault::VxlanOut(x),
            K::IpForwardOff => Fault::ForwardOff(x),
            K::ForwardReject => Fault::ForwardReject(x),
            K::FdbMissing | K::RouteMissing | K::NeighMissing | K::VtepStale => {
                Fault::PeerMissing(x, y)
            }
            K::UnderlayMtu => Fault::Mtu(x),
            K::DnsDown => Fault::DnsDown(pod),
            K::MetricsBlocked => Fault::MetricsBlocked(pod),
            K::NodeportRemoved => Fault::NodeportRemoved(x),
            K::IngressDown => Fault::IngressDown,
            K::LinkDown => Fault::LinkDown(x),
            K::Loss => Fault::Loss(x, loss),
            K::IcmpBlocked => Fault::IcmpBlocked(x),
            K::JumboMtu => Fault::JumboMtu(x),
            K::VxlanPort => Fault::VxlanPort(x),
            K::VtepChanged => Fault::VtepChanged(x),
            K::DnsRulesMissing => Fault::DnsRulesMissing(x),
            K::VxlanPairDrop => Fault::PairBlocked(x, y),
            K::BridgeMtu => Fault::BridgeMtu(x),
            K::BackendDown => Fault::BackendDown(x),
            K::MasqueradeMissing => Fault::MasqueradeMissing(x),
            K::BridgeNfOff => Fault::BridgeNfOff(x),
            K::BridgeAddrLost => Fault::GatewayLost(x),
            K::OverlayInputDrop | K::BridgeDown | K::IcmpForwardDrop | K::IcmpOutputDrop => {
                Fault::hops(k, t, x, None)?
            }
            K::DnsPortDrop => Fault::hops(k, t, x, Some(&pod))?,
            K::VxlanVni
            | K::HostFirewall
            | K::NftHostFirewall
            | K::RouteHijack
            | K::PodCidrClaimed
            | K::CoordinatorDown
            | K::ApiServerDown
            | K::ConntrackFlush
            | K::FirewallReload
            | K::CoordinatorRestart
            | K::HostAgentRestart => return None,
        })
    }

    /// A catalogue kind simulated from its effect ([`Fault::Hops`]), on node `x` or on
    /// the CoreDNS pod `pod`; `None` for a kind that is not hops failing.
    pub fn hops(k: FaultKind, t: &Topology, x: usize, pod: Option<&str>) -> Option<Fault> {
        let pos = |name: &str| t.nodes.iter().position(|n| n.name.as_str() == name);
        let target = match pod {
            Some(p) => {
                let id = t.core_dns.iter().position(|d| d.name == p)?;
                Some((id, pos(t.core_dns[id].node.as_str())?))
            }
            None => None,
        };
        let at = Placement {
            nodes: t.nodes.len(),
            node: Some(x),
            peer: None,
            target,
            node_port: t.node_ports.first().map_or(0, |p| p.port),
            overlay_port: t.cluster.overlay.port,
        };
        let effect = k.effect(&at)?;
        let node = target.map_or(x, |(_, n)| n);
        // A drop on the node's forwarding is a FORWARD rule its agent reads.
        let forward_rule = effect
            .hops
            .iter()
            .any(|h| matches!(h.kind, HopKind::ForwardIn | HopKind::ForwardOut))
            .then(|| {
                let mut rule = String::from("-A FORWARD");
                if let Some(p) = effect.traffic.proto {
                    rule += &format!(" -p {}", p.as_str().to_ascii_lowercase());
                }
                if let Some(port) = effect.traffic.port {
                    rule += &format!(" --dport {port}");
                }
                rule + " -j DROP"
            });
        Some(Fault::Hops {
            node,
            kind: k,
            effect,
            forward_rule,
        })
    }

    /// The catalogue's kind of this fault, where it has one (the first, where several
    /// kinds are one fault here).
    pub fn kind(&self) -> Option<FaultKind> {
        use FaultKind as K;
        Some(match self {
            Fault::LinkDown(_) => K::LinkDown,
            Fault::VxlanIn(_) => K::VxlanDropIn,
            Fault::VxlanOut(_) => K::VxlanDropOut,
            Fault::ForwardOff(_) => K::IpForwardOff,
            Fault::ForwardReject(_) => K::ForwardReject,
            Fault::PeerMissing(..) => K::FdbMissing,
            Fault::Mtu(_) => K::UnderlayMtu,
            Fault::Loss(..) => K::Loss,
            Fault::DnsDown(_) => K::DnsDown,
            Fault::MetricsBlocked(_) => K::MetricsBlocked,
            Fault::NodeportRemoved(_) => K::NodeportRemoved,
            Fault::IngressDown => K::IngressDown,
            Fault::IcmpBlocked(_) => K::IcmpBlocked,
            Fault::JumboMtu(_) => K::JumboMtu,
            Fault::VxlanPort(_) => K::VxlanPort,
            Fault::VtepChanged(_) => K::VtepChanged,
            Fault::DnsRulesMissing(_) => K::DnsRulesMissing,
            Fault::PairBlocked(..) => K::VxlanPairDrop,
            Fault::BridgeMtu(_) => K::BridgeMtu,
            Fault::BackendDown(_) => K::BackendDown,
            Fault::MasqueradeMissing(_) => K::MasqueradeMissing,
            Fault::BridgeNfOff(_) => K::BridgeNfOff,
            Fault::GatewayLost(_) => K::BridgeAddrLost,
            Fault::Hops { kind, .. } => *kind,
            Fault::AgentsSilent(_)
            | Fault::SickProber(_)
            | Fault::LiesAbout(..)
            | Fault::PathBlockedIn(_)
            | Fault::Unpublished(_)
            | Fault::PodSilent(_)
            | Fault::SendsRefused(..)
            | Fault::DnsFiltered(..) => return None,
        })
    }
}

impl Fault {
    /// The nodes this fault is on (what a finding may name), given where the CoreDNS pods
    /// and the ingress live.
    pub fn nodes(&self, t: &Topology) -> Vec<usize> {
        let pos = |name: &str| t.nodes.iter().position(|n| n.name.as_str() == name);
        match self {
            Fault::LinkDown(x)
            | Fault::VxlanIn(x)
            | Fault::VxlanOut(x)
            | Fault::ForwardOff(x)
            | Fault::ForwardReject(x)
            | Fault::PeerMissing(x, _)
            | Fault::Mtu(x)
            | Fault::Loss(x, _)
            | Fault::NodeportRemoved(x)
            | Fault::AgentsSilent(x)
            | Fault::PodSilent(x)
            | Fault::SendsRefused(x, _)
            | Fault::SickProber(x)
            | Fault::LiesAbout(x, _)
            | Fault::PathBlockedIn(x)
            | Fault::IcmpBlocked(x)
            | Fault::JumboMtu(x)
            | Fault::VxlanPort(x)
            | Fault::VtepChanged(x)
            | Fault::Unpublished(x)
            | Fault::DnsRulesMissing(x)
            | Fault::PairBlocked(x, _)
            | Fault::BridgeMtu(x)
            | Fault::BackendDown(x)
            | Fault::MasqueradeMissing(x)
            | Fault::BridgeNfOff(x)
            | Fault::GatewayLost(x)
            | Fault::DnsFiltered(x, _)
            | Fault::Hops { node: x, .. } => vec![*x],
            Fault::DnsDown(p) | Fault::MetricsBlocked(p) => t
                .core_dns
                .iter()
                .find(|d| d.name == *p)
                .and_then(|d| pos(d.node.as_str()))
                .into_iter()
                .collect(),
            Fault::IngressDown => t
                .ingresses
                .first()
                .and_then(|g| t.nodes.iter().position(|n| n.internal_ip == g.address))
                .into_iter()
                .collect(),
        }
    }
}

/// A node's VTEP MAC in synthetic rounds (the one its peers know).
fn vtep_mac(i: usize) -> String {
    format!(
        "0e:5e:00:{:02x}:{:02x}:{:02x}",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

/// The MAC a [`Fault::VtepChanged`] node's recreated device has.
fn new_vtep_mac(i: usize) -> String {
    format!(
        "0e:5e:ff:{:02x}:{:02x}:{:02x}",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

/// A topology of `n` nodes (n1..), two CoreDNS pods on the first two nodes, a NodePort and
/// an ingress on the last node.
pub fn topology(n: usize) -> Topology {
    Topology::from_inventory(&inventory(n)).unwrap_or_else(|e| panic!("synthetic topology: {e}"))
}

/// The inventory file of [`topology`]`(n)` (CONTRACT §2).
pub fn inventory(n: usize) -> String {
    let ip = |i: usize| format!("10.{}.{}.{}", 1 + (i >> 16), (i >> 8) & 0xff, i & 0xff);
    let mut t = String::from("cluster: {name: synth, dnsServiceIP: 10.96.0.10}\nnodes:\n");
    for i in 0..n {
        let _ = writeln!(
            t,
            "  - {{name: n{}, internalIP: {}, podCIDR: 172.{}.{}.0/24}}",
            i + 1,
            ip(i),
            16 + (i >> 8),
            i & 0xff
        );
    }
    t += "coreDNS:\n  - {name: coredns-a, node: n1, ip: 172.16.0.53}\n";
    if n > 1 {
        t += "  - {name: coredns-b, node: n2, ip: 172.16.1.53}\n";
    }
    let _ = write!(
        t,
        "nodePorts: [{{name: web, port: 30080}}]\ningresses: [{{host: web.example, address: {}}}]\n",
        ip(n - 1)
    );
    t
}

struct World<'a> {
    faults: &'a [Fault],
    dns_nodes: BTreeMap<String, usize>,
    ingress_node: usize,
    ingress_port: u16,
    nodeport: u16,
    overlay_port: u16,
}

impl World<'_> {
    fn has(&self, f: impl Fn(&Fault) -> bool) -> bool {
        self.faults.iter().any(f)
    }
    fn down(&self, x: usize) -> bool {
        self.has(|f| *f == Fault::LinkDown(x))
    }
    fn under(&self, s: usize, d: usize) -> bool {
        !(self.down(s) || self.down(d))
    }
    fn tunnel(&self, s: usize, d: usize) -> bool {
        s == d
            || (self.under(s, d)
                && !self.has(|f| *f == Fault::GatewayLost(d))
                && !self.config_cut(s, d)
                && !self.has(|f| {
                    matches!(f, Fault::VxlanIn(x) | Fault::VxlanOut(x) | Fault::PathBlockedIn(x) if *x == s || *x == d)
                        || matches!(f, Fault::PeerMissing(a, b) | Fault::PairBlocked(a, b) if (*a == s && *b == d) || (*a == d && *b == s))
                }))
    }
    /// The VXLAN configuration of one end makes the other drop its packets.
    fn config_cut(&self, s: usize, d: usize) -> bool {
        self.has(|f| {
            matches!(f, Fault::VxlanPort(x) | Fault::VtepChanged(x) | Fault::Unpublished(x) if *x == s || *x == d)
        })
    }
    fn icmp_blocked(&self, d: usize) -> bool {
        self.has(|f| *f == Fault::IcmpBlocked(d))
    }

    /// One probe of `kind` from s to d, through each point a capture sees:
    /// [left s's NIC, arrived at d's NIC, reply left d's NIC, reply arrived at s's NIC].
    fn wire(&self, s: usize, d: usize, kind: ProbeKind) -> [bool; 4] {
        let big = kind == ProbeKind::PodPodBig;
        let pod = kind != ProbeKind::HostGw;
        let can_send = |from: usize, to: usize| {
            !self.down(from)
                && !self.has(|f| {
                    *f == Fault::VxlanOut(from)
                        || *f == Fault::PeerMissing(from, to)
                        || *f == Fault::PairBlocked(from, to)
                })
        };
        let path = |from: usize, to: usize| {
            self.under(from, to)
                && (!big || self.big(from, to))
                && !self.has(|f| *f == Fault::PathBlockedIn(to))
        };
        let left = can_send(s, d) && (!pod || self.forwards(s));
        let arrived = left && path(s, d);
        let answered = arrived
            && !self.config_cut(s, d)
            && !self.has(|f| *f == Fault::GatewayLost(d))
            && !self.has(|f| *f == Fault::VxlanIn(d))
            && (!matches!(kind, ProbeKind::PodPod | ProbeKind::PodPodBig) || self.forwards(d));
        let reply_left = answered && can_send(d, s);
        let back = reply_left && path(d, s);
        let mut seen = [left, arrived, reply_left, back];
        // A hop fault drops the packet where it sits: before the wire nothing is seen
        // leaving, after it the packet arrives and is never answered.
        let layer = match kind {
            ProbeKind::HostGw => Layer::GatewayFromHost,
            ProbeKind::PodGw => Layer::GatewayFromPod,
            ProbeKind::PodPod => Layer::PodToPod,
            ProbeKind::PodPodBig => Layer::PodToPodFullSize,
        };
        if self.has(|f| matches!(f, Fault::Hops { .. }))
            && let Some(p) = datapath::path(layer, s, Dest::Node(d), Ports { service: 0 })
        {
            let wire = |leg: &[Hop]| leg.iter().position(|h| h.kind == HopKind::Wire);
            let (req, rep) = self.hop_drops(&p);
            if let (Some(b), Some(w)) = (req, wire(&p.request)) {
                seen[0] &= b > w;
                seen[1] &= b > w;
                seen[2] = false;
                seen[3] = false;
            }
            if let (Some(b), Some(w)) = (rep, wire(&p.reply)) {
                seen[2] &= b > w;
                seen[3] &= b > w;
            }
        }
        seen
    }
    fn forwards(&self, x: usize) -> bool {
        !self.has(|f| matches!(f, Fault::ForwardOff(n) | Fault::ForwardReject(n) if *n == x))
    }
    fn big(&self, s: usize, d: usize) -> bool {
        !self.has(|f| matches!(f, Fault::Mtu(x) if *x == s || *x == d))
    }
    /// Loss each way on the path, in percent.
    fn loss(&self, s: usize, d: usize) -> f64 {
        let mut keep = 1.0;
        for f in self.faults {
            if let Fault::Loss(x, p) = f
                && (*x == s || *x == d)
            {
                let k = 1.0 - f64::from(*p) / 100.0;
                keep *= k * k;
            }
        }
        1.0 - keep
    }
    fn sick(&self, s: usize) -> bool {
        self.has(|f| *f == Fault::SickProber(s))
    }

    /// The datapath model's path of one probe of `layer` from node s to column `col`.
    fn path(&self, layer: Layer, s: usize, col: &str, d: Option<usize>) -> Option<datapath::Path> {
        use Layer::*;
        let dest = match layer {
            DnsService => Dest::Service,
            DnsPod | CorednsMetrics => Dest::Target {
                id: self.dns_nodes.keys().position(|p| p == col)?,
                node: *self.dns_nodes.get(col)?,
            },
            Ingress | IngressFromPod => Dest::Target {
                id: usize::MAX,
                node: self.ingress_node,
            },
            _ => Dest::Node(d?),
        };
        let service = match layer {
            Ingress | IngressFromPod => self.ingress_port,
            _ => self.nodeport,
        };
        datapath::path(layer, s, dest, Ports { service })
    }

    /// Where a [`Fault::Hops`] fault drops the probe's request and reply: the position of
    /// the first dropping hop on each leg.
    fn hop_drops(&self, path: &datapath::Path) -> (Option<usize>, Option<usize>) {
        let first = |a: Option<usize>, b: Option<usize>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.faults
            .iter()
            .filter_map(|f| match f {
                Fault::Hops { effect, .. } => Some(effect.first_drops(path, self.overlay_port)),
                _ => None,
            })
            .fold((None, None), |(r, p), (r2, p2)| {
                (first(r, r2), first(p, p2))
            })
    }

    fn hops_pass(&self, layer: Layer, s: usize, col: &str, d: Option<usize>) -> bool {
        if !self.has(|f| matches!(f, Fault::Hops { .. })) {
            return true;
        }
        self.path(layer, s, col, d)
            .is_none_or(|p| self.hop_drops(&p) == (None, None))
    }

    /// Whether one probe of `layer` from node s to column `col` works (ignoring loss).
    fn works(&self, layer: Layer, s: usize, col: &str, d: Option<usize>) -> bool {
        self.hops_pass(layer, s, col, d) && self.works_but_hops(layer, s, col, d)
    }

    fn works_but_hops(&self, layer: Layer, s: usize, col: &str, d: Option<usize>) -> bool {
        use Layer::*;
        let d_node = match layer {
            DnsPod | CorednsMetrics => self.dns_nodes.get(col).copied(),
            Ingress | IngressFromPod => Some(self.ingress_node),
            _ => d,
        };
        let Some(d) = d_node else {
            // The DNS service: works while some CoreDNS pod works from s, through s's own
            // service rules.
            return !self.has(|f| *f == Fault::DnsRulesMissing(s))
                && self
                    .dns_nodes
                    .keys()
                    .any(|pod| self.works(DnsPod, s, pod, None));
        };
        match layer {
            Underlay => !self.sick(s) && self.under(s, d) && !self.icmp_blocked(d),
            UnderlayFullSize => {
                !self.sick(s)
                    && self.under(s, d)
                    && self.big(s, d)
                    && !self.icmp_blocked(d)
                    && !self.has(|f| *f == Fault::JumboMtu(s))
            }
            GatewayFromHost => {
                self.tunnel(s, d) && !(s == d && self.has(|f| *f == Fault::GatewayLost(d)))
            }
            GatewayFromPod => self.tunnel(s, d) && (s == d || self.forwards(s)),
            PodToPod => self.tunnel(s, d) && self.forwards(s) && self.forwards(d),
            PodToPodFullSize => {
                self.tunnel(s, d)
                    && self.forwards(s)
                    && self.forwards(d)
                    && self.big(s, d)
                    && !self.has(|f| *f == Fault::BridgeMtu(d))
            }
            // Fragments fill the overlay MTU; a jumbo node's pods send (and answer) the
            // whole packet unfragmented, larger than the fabric carries.
            PodToPodFragmented => {
                self.tunnel(s, d)
                    && self.forwards(s)
                    && self.forwards(d)
                    && self.big(s, d)
                    && !self.has(|f| *f == Fault::BridgeMtu(d))
                    && !self.has(|f| matches!(f, Fault::JumboMtu(x) if *x == s || *x == d))
            }
            DnsPod => {
                !self.has(|f| matches!(f, Fault::DnsDown(p) if p == col))
                    && !self.has(|f| matches!(f, Fault::DnsFiltered(x, p) if *x == s && p == col))
                    && (s == d || (self.tunnel(s, d) && self.forwards(s) && self.forwards(d)))
            }
            CorednsMetrics => {
                !self.has(|f| matches!(f, Fault::DnsDown(p) | Fault::MetricsBlocked(p) if p == col))
                    && (s == d || (self.tunnel(s, d) && self.forwards(d) && self.big(s, d)))
            }
            // The NodePort's backends are pods on any node: d forwards to them.
            Nodeport => {
                self.under(s, d)
                    && self.forwards(d)
                    && !self.has(|f| *f == Fault::NodeportRemoved(d))
            }
            Ingress => self.under(s, d) && !self.has(|f| *f == Fault::IngressDown),
            // From a pod, the source node also forwards (and masquerades) the request.
            NodeportFromPod => {
                self.forwards(s)
                    && self.forwards(d)
                    && self.under(s, d)
                    && !self.has(|f| *f == Fault::NodeportRemoved(d))
            }
            IngressFromPod => {
                self.forwards(s) && self.under(s, d) && !self.has(|f| *f == Fault::IngressDown)
            }
            DnsService => unreachable!("handled above"),
        }
    }
}

/// The encapsulated probe kinds a round sends between two nodes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    HostGw,
    PodGw,
    PodPod,
    PodPodBig,
}

const KINDS: [ProbeKind; 4] = [
    ProbeKind::HostGw,
    ProbeKind::PodGw,
    ProbeKind::PodPod,
    ProbeKind::PodPodBig,
];

/// What node `s`'s capture shows of its peers' probes and its own, `count` per probe kind.
fn capture_of(
    t: &Topology,
    world: &World<'_>,
    s: usize,
    peers: &[usize],
    count: u32,
) -> CaptureSummary {
    let mut flows = Vec::new();
    for &d in peers {
        let node = &t.nodes[d];
        let mut f = PeerFlow::new(node.name.clone(), node.internal_ip);
        for kind in KINDS {
            let add = |sizes: &mut Sizes, yes: bool| {
                if yes {
                    if kind == ProbeKind::PodPodBig {
                        sizes.big += count;
                    } else {
                        sizes.small += count;
                    }
                }
            };
            let ours = world.wire(s, d, kind);
            let theirs = world.wire(d, s, kind);
            add(&mut f.requests_out, ours[0]);
            add(&mut f.replies_in, ours[3]);
            add(&mut f.requests_in, theirs[1]);
            add(&mut f.replies_out, theirs[2]);
        }
        f.packets_out = f.requests_out.total() + f.replies_out.total();
        f.packets_in = f.requests_in.total() + f.replies_in.total();
        flows.push(f);
    }
    CaptureSummary {
        interface: "eth0".into(),
        port: t.cluster.overlay.port,
        peers: flows,
    }
}

/// splitmix64's finaliser: a well-spread deterministic "random" number from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic "random" count of lost probes out of `sent` at `loss` (0..1).
fn lost(sent: u32, loss: f64, salt: u64) -> u32 {
    let exact = f64::from(sent) * loss;
    let base = exact.floor();
    // Spread the fraction deterministically so that totals match the rate.
    let frac = exact - base;
    let r = (salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    (base as u32 + u32::from(r < frac)).min(sent)
}

/// A cluster with faults, as its agents see it: what each agent would report for the
/// plan it was given. [`report`] runs it for every agent of a round; the scale benchmark
/// runs it inside thousands of simulated agents, on the plans the coordinator hands out.
pub struct Model<'a> {
    t: &'a Topology,
    faults: &'a [Fault],
    world: World<'a>,
    pos: BTreeMap<&'a str, usize>,
    icmp_count: u32,
}

impl<'a> Model<'a> {
    /// The model of `t` with `faults`.
    pub fn new(t: &'a Topology, faults: &'a [Fault], settings: &PlanSettings) -> Self {
        let pos: BTreeMap<&str, usize> = t
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let world = World {
            faults,
            dns_nodes: t
                .core_dns
                .iter()
                .map(|p| (p.name.clone(), pos[p.node.as_str()]))
                .collect(),
            ingress_node: t
                .ingresses
                .first()
                .and_then(|g| t.nodes.iter().position(|n| n.internal_ip == g.address))
                .unwrap_or(0),
            ingress_port: t.ingresses.first().map_or(80, |g| g.port),
            nodeport: t.node_ports.first().map_or(0, |p| p.port),
            overlay_port: t.cluster.overlay.port,
        };
        Self {
            t,
            faults,
            world,
            pos,
            icmp_count: u32::from(settings.icmp_count),
        }
    }

    /// The pod agents' IPs (the first host of each pod CIDR), without the silent ones.
    pub fn pod_ips(&self) -> BTreeMap<NodeName, std::net::Ipv4Addr> {
        self.t
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.faults.contains(&Fault::PodSilent(*i)))
            // The probe pod's own address: the one after the gateway (cni0 holds the first).
            .map(|(_, n)| {
                (
                    n.name.clone(),
                    std::net::Ipv4Addr::from(u32::from(n.pod_cidr.first_host()) + 1),
                )
            })
            .collect()
    }

    /// Whether the agent of `kind` on `node` is silent under the faults.
    pub fn silent(&self, node: &str, kind: AgentKind) -> bool {
        let Some(&s) = self.pos.get(node) else {
            return true;
        };
        self.world.down(s)
            || self.faults.contains(&Fault::AgentsSilent(s))
            || (kind == AgentKind::Pod
                && (self.faults.contains(&Fault::PodSilent(s))
                    || self.faults.contains(&Fault::GatewayLost(s))))
    }

    /// What the agent given `plan` reports; `None` when it is silent. `salt` spreads
    /// fractional loss over the cells (pass the same counter through a round's agents).
    pub fn agent_report(&self, plan: &Plan, salt: &mut u64) -> Option<AgentReport> {
        let (t, faults, world, pos) = (self.t, self.faults, &self.world, &self.pos);
        let kind = plan.kind;
        if self.silent(plan.node.as_str(), kind) {
            return None;
        }
        let s = *pos.get(plan.node.as_str())?;
        let mut results = Vec::new();
        for (layer, col) in plan.cells() {
            let d = pos.get(col).copied();
            let sent: u32 = match layer {
                Layer::DnsService | Layer::DnsPod => 10,
                Layer::CorednsMetrics => 1,
                Layer::Nodeport
                | Layer::Ingress
                | Layer::NodeportFromPod
                | Layer::IngressFromPod => 3,
                _ => self.icmp_count,
            };
            let works = world.works(layer, s, col, d);
            let path_loss = match (layer, d) {
                (Layer::DnsPod | Layer::CorednsMetrics, _) => {
                    world.dns_nodes.get(col).map_or(0.0, |&x| world.loss(s, x))
                }
                (_, Some(d)) => world.loss(s, d),
                _ => 0.0,
            };
            *salt = salt.wrapping_add(1);
            let mut ok = if works {
                sent - lost(sent, path_loss, *salt)
            } else {
                0
            };
            // Each request to a service lands on one of its backends, evenly: the web
            // service has one pod per node, kube-dns its CoreDNS pods.
            let backends: Vec<usize> = match layer {
                Layer::Nodeport
                | Layer::Ingress
                | Layer::NodeportFromPod
                | Layer::IngressFromPod => (0..t.nodes.len()).collect(),
                Layer::DnsService => world.dns_nodes.values().copied().collect(),
                _ => Vec::new(),
            };
            let dns_pods: Vec<&String> = world.dns_nodes.keys().collect();
            if !backends.is_empty() {
                let from_pod = matches!(
                    layer,
                    Layer::NodeportFromPod | Layer::IngressFromPod | Layer::DnsService
                );
                let entry = match layer {
                    Layer::Nodeport | Layer::NodeportFromPod => d,
                    _ => None,
                };
                // Where the request is sent on to its backend: the NodePort's node, the
                // ingress controller's node.
                let forwarder = match layer {
                    Layer::Ingress | Layer::IngressFromPod => Some(world.ingress_node),
                    _ => entry,
                };
                let lost_here = (0..ok)
                    .filter(|i| {
                        let pick = mix(salt.wrapping_mul(31).wrapping_add(u64::from(*i)));
                        let slot = (pick % backends.len() as u64) as usize;
                        let landed = backends[slot];
                        // A query kube-proxy sends to a CoreDNS pod the source cannot reach
                        // is lost (UDP: no failover).
                        (layer == Layer::DnsService
                            && !world.works(Layer::DnsPod, s, dns_pods[slot], None))
                            || (layer != Layer::DnsService
                            && (faults.contains(&Fault::BackendDown(landed))
                                || faults.contains(&Fault::GatewayLost(landed))))
                            || entry.is_some_and(|e| {
                                landed != e && faults.contains(&Fault::MasqueradeMissing(e))
                            })
                            || (from_pod && landed == s && faults.contains(&Fault::BridgeNfOff(s)))
                            // The forwarder's tunnel to the backend's node is cut, or that
                            // node does not forward into its pods.
                            || forwarder.is_some_and(|f| {
                                f != landed
                                    && (!world.tunnel(f, landed) || !world.forwards(landed))
                            })
                    })
                    .count() as u32;
                ok -= lost_here;
            }
            // A node's OUTPUT refusing its own ICMP: its echoes fail at the sender
            // (EPERM), and the echo replies it sends vanish.
            let refusing = |x: usize| {
                faults.iter().find_map(|f| match f {
                    Fault::SendsRefused(n, pct) if *n == x => Some(f64::from(*pct) / 100.0),
                    _ => None,
                })
            };
            // A request dropped at its sender's own OUTPUT is refused there: EPERM.
            let mut refused_own = ok < sent
                && kind == AgentKind::Host
                && world.path(layer, s, col, d).is_some_and(|p| {
                    world.hop_drops(&p).0 == Some(0)
                        && p.request.first().map(|h| h.kind) == Some(HopKind::HostOut)
                });
            if matches!(
                layer,
                Layer::Underlay | Layer::UnderlayFullSize | Layer::GatewayFromHost
            ) && let Some(q) = refusing(s)
            {
                *salt = salt.wrapping_add(1);
                let k = lost(ok, q, *salt);
                refused_own |= k > 0;
                ok -= k;
            }
            if matches!(
                layer,
                Layer::Underlay
                    | Layer::UnderlayFullSize
                    | Layer::GatewayFromHost
                    | Layer::GatewayFromPod
            ) && let Some(q) = d.and_then(refusing)
            {
                *salt = salt.wrapping_add(1);
                ok -= lost(ok, q, *salt);
            }
            // A lying observer says everything toward its victim is lost.
            let aimed_at = match layer {
                Layer::DnsPod | Layer::CorednsMetrics => world.dns_nodes.get(col).copied(),
                Layer::Ingress | Layer::IngressFromPod => Some(world.ingress_node),
                _ => d,
            };
            if aimed_at.is_some_and(|v| v != s && faults.contains(&Fault::LiesAbout(s, v))) {
                ok = 0;
            }
            // Nothing listening answers with a reset; a lost packet with silence.
            let refused = match layer {
                Layer::Nodeport | Layer::NodeportFromPod => {
                    d.is_some_and(|d| faults.contains(&Fault::NodeportRemoved(d)))
                }
                Layer::Ingress | Layer::IngressFromPod => faults.contains(&Fault::IngressDown),
                _ => false,
            };
            // A sender that learned a smaller path MTU refuses full-size packets itself.
            let refused_locally = matches!(layer, Layer::PodToPodFullSize)
                && d.is_some_and(|d| faults.contains(&Fault::BridgeMtu(d)));
            results.push(ProbeResult {
                layer,
                column: col.to_owned(),
                sent,
                ok,
                rtt_ms: (ok > 0).then_some(0.3),
                detail: (ok < sent).then(|| {
                    if refused {
                        "connect: Connection refused (os error 111)".to_owned()
                    } else if refused_locally {
                        "1450-byte packet refused locally: larger than the path MTU (EMSGSIZE)"
                            .to_owned()
                    } else if refused_own {
                        "send refused by a local firewall rule (EPERM)".to_owned()
                    } else {
                        "timeout".to_owned()
                    }
                }),
                failure: (ok < sent).then_some(if refused {
                    FailKind::Refused
                } else if refused_locally {
                    FailKind::TooBig
                } else if refused_own {
                    FailKind::LocalRefusal
                } else {
                    FailKind::Timeout
                }),
            });
        }
        let peers: Vec<usize> = plan
            .overlay
            .as_ref()
            .map(|o| {
                o.peers
                    .iter()
                    .filter_map(|p| pos.get(p.node.as_str()).copied())
                    .collect()
            })
            .unwrap_or_default();
        let evidence = (kind == AgentKind::Host).then(|| evidence_of(t, faults, s, &peers));
        let capture = plan
            .overlay
            .as_ref()
            .map(|_| capture_of(t, world, s, &peers, self.icmp_count));
        Some(AgentReport {
            round: plan.round,
            node: plan.node.clone(),
            kind,
            results,
            warnings: vec![],
            evidence,
            capture,
            packets: vec![],
            offline_at_ms: None,
        })
    }
}

/// The report of one round of a cluster with these faults.
pub fn report(t: &Topology, faults: &[Fault], round: u64, settings: &PlanSettings) -> CheckReport {
    let model = Model::new(t, faults, settings);
    let pod_ips = model.pod_ips();
    let mut plans = BTreeMap::new();
    let mut reports = BTreeMap::new();
    let mut salt = round;
    let planner = Planner::new(t, &pod_ips, round, settings);
    for node in &t.nodes {
        for kind in AgentKind::ALL {
            let plan = planner.plan(&node.name, kind);
            if let Some(r) = model.agent_report(&plan, &mut salt) {
                reports.insert((node.name.clone(), kind), r);
            }
            plans.insert((node.name.clone(), kind), plan);
        }
    }
    build_report(RoundInput {
        round,
        topology: t,
        plans: &plans,
        reports: &reports,
        live: &|_, _| true,
        duration_ms: 400,
        findings: vec![],
    })
}

/// What node `x`'s host agent would read locally under these faults.
fn evidence_of(t: &Topology, faults: &[Fault], x: usize, peers: &[usize]) -> NodeEvidence {
    let mut ev = NodeEvidence {
        ip_forward: Some(true),
        forward: Some(ForwardEvidence {
            policy: Some("ACCEPT".into()),
            ..ForwardEvidence::default()
        }),
        overlay: Some(OverlayEvidence {
            device: Some(DeviceState {
                name: t.cluster.overlay.interface.clone(),
                mtu: u32::from(t.cluster.overlay.mtu),
                up: true,
                no_carrier: false,
            }),
            underlay: Some(DeviceState {
                name: "eth0".into(),
                mtu: 1500,
                up: true,
                no_carrier: false,
            }),
            ..OverlayEvidence::default()
        }),
        ..NodeEvidence::default()
    };
    let port = t.cluster.overlay.port;
    let peer = |i: usize| -> NodeName { t.nodes[i].name.clone() };
    let mtu = u32::from(t.cluster.overlay.mtu);
    let node = &t.nodes[x];
    let changed = |i: usize| faults.contains(&Fault::VtepChanged(i));
    let mut cfg = OverlayConfig {
        vtep_mac: Some(if changed(x) {
            new_vtep_mac(x)
        } else {
            vtep_mac(x)
        }),
        vxlan_port: Some(if faults.contains(&Fault::VxlanPort(x)) {
            4789
        } else {
            port
        }),
        vni: Some(1),
        underlay_mtu: Some(1500),
        overlay_mtu: Some(mtu),
        bridge_mtu: Some(mtu),
        pod_mtus: vec![mtu],
        bridge_addrs: vec![format!(
            "{}/{}",
            node.gateway,
            node.pod_cidr.net().prefix_len()
        )],
        overlay_addrs: vec![format!("{}/32", node.pod_cidr.network())],
        neighbours: peers
            .iter()
            .filter(|&&p| !faults.contains(&Fault::Unpublished(p)))
            .map(|&p| NeighbourEntry {
                ip: Some(t.nodes[p].pod_cidr.network()),
                mac: Some(vtep_mac(p)),
            })
            .collect(),
        ..OverlayConfig::default()
    };
    if faults.contains(&Fault::GatewayLost(x)) {
        cfg.bridge_addrs.clear();
    }
    if faults.contains(&Fault::BridgeMtu(x)) {
        cfg.bridge_mtu = Some(mtu - 50);
    }
    if faults.contains(&Fault::JumboMtu(x)) {
        cfg.underlay_mtu = Some(9000);
        cfg.overlay_mtu = Some(8950);
        cfg.bridge_mtu = Some(8950);
        cfg.pod_mtus = vec![8950];
    }
    ev.config = Some(cfg);
    ev.bridge_nf_call_iptables = Some(!faults.contains(&Fault::BridgeNfOff(x)));
    ev.kube_proxy = Some(KubeProxyEvidence {
        service_rules: 3,
        nodeport_rules: 1,
        masquerade: !faults.contains(&Fault::MasqueradeMissing(x)),
    });
    for f in faults {
        match f {
            Fault::ForwardOff(n) if *n == x => ev.ip_forward = Some(false),
            Fault::ForwardReject(n) if *n == x => {
                if let Some(fwd) = ev.forward.as_mut() {
                    fwd.blocking_rules.push(FirewallRule::iptables(
                        "filter",
                        "FORWARD",
                        "-A FORWARD -j REJECT --reject-with icmp-host-prohibited",
                    ));
                    fwd.foreign_chains =
                        vec!["FORWARD_IN_ZONES".into(), "FORWARD_OUT_ZONES".into()];
                }
            }
            Fault::VxlanIn(n) | Fault::VxlanOut(n) if *n == x => {
                let chain = if matches!(f, Fault::VxlanIn(_)) {
                    "INPUT"
                } else {
                    "OUTPUT"
                };
                ev.overlay_port_rules.push(FirewallRule::iptables(
                    "filter",
                    chain,
                    &format!("-A {chain} -p udp -m udp --dport {port} -j DROP"),
                ));
            }
            Fault::PairBlocked(a, b) if *a == x => {
                ev.overlay_port_rules.push(FirewallRule::iptables(
                    "filter",
                    "OUTPUT",
                    &format!(
                        "-A OUTPUT -d {}/32 -p udp -m udp --dport {port} -j DROP",
                        t.nodes[*b].internal_ip
                    ),
                ));
            }
            Fault::Hops { node, effect, .. }
                if *node == x && effect.hops.contains(&on(HopKind::Bridge, x)) =>
            {
                if let Some(o) = ev.overlay.as_mut() {
                    o.bridge = Some(DeviceState {
                        name: "cni0".into(),
                        mtu,
                        up: false,
                        no_carrier: true,
                    });
                }
            }
            Fault::Hops {
                node,
                forward_rule: Some(rule),
                ..
            } if *node == x => {
                if let Some(fwd) = ev.forward.as_mut() {
                    fwd.blocking_rules
                        .push(FirewallRule::iptables("filter", "FORWARD", rule));
                }
            }
            Fault::PeerMissing(a, b) if *a == x => {
                if let Some(o) = ev.overlay.as_mut() {
                    o.missing_fdb.push(peer(*b));
                }
            }
            Fault::Unpublished(p) if *p != x && peers.contains(p) => {
                if let Some(o) = ev.overlay.as_mut() {
                    o.missing_routes.push(peer(*p));
                    o.missing_neighbours.push(peer(*p));
                    o.missing_fdb.push(peer(*p));
                }
            }
            Fault::JumboMtu(n) if *n == x => {
                if let Some(o) = ev.overlay.as_mut() {
                    if let Some(d) = o.device.as_mut() {
                        d.mtu = 8950;
                    }
                    if let Some(u) = o.underlay.as_mut() {
                        u.mtu = 9000;
                    }
                }
            }
            _ => {}
        }
    }
    ev
}
