//! The fault catalogue: every kind of fault the sandbox injects, declared once.
//!
//! A kind's entry says what the CLI calls it, what it takes (a node, a pair, a CoreDNS
//! pod), whether it breaks the datapath or is an event, which finding it must produce
//! ([`Expected`]), and, where it is a hop of the datapath model failing, its [`Effect`]:
//! the hops that drop and the traffic they drop. The sandbox injects the kind, the
//! synthetic rounds simulate it, and the tests read what every cell must say from the
//! effect and the paths of [`crate::datapath`], so a kind stated as an effect is written
//! nowhere else.
//!
//! Node and target ids are the caller's, as in [`crate::datapath`]: CoreDNS pods are
//! numbered by their order in the topology, the ingress is [`INGRESS_TARGET`].

use std::fmt;

use crate::cause::Cause;
use crate::datapath::{self, Dest, Hop, HopKind, Path, Ports, Proto, Scope, Site};
use crate::layer::Layer;

/// The target id of the (first) ingress controller in [`Placement`] and paths.
pub const INGRESS_TARGET: usize = usize::MAX;

/// What a kind takes on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Args {
    /// Nothing.
    None,
    /// `--node`.
    Node,
    /// `--node`, optional (the whole lab without it).
    MaybeNode,
    /// `--node` and `--peer`.
    NodePeer,
    /// `--pod` (a CoreDNS pod).
    Pod,
    /// `--node` and `--mtu`.
    NodeMtu,
    /// `--node` and `--percent`.
    NodePercent,
}

/// What kind of thing a fault is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// It breaks the datapath until healed: a finding must name it.
    Datapath,
    /// It happens once and is over (a restart, a flush): nothing to heal, no finding.
    Event,
    /// It takes out meshprobe's own control plane or the API server: the mesh must keep
    /// answering, with no datapath finding.
    ControlPlane,
}

/// Whom the expected finding names in `nodes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The fault's `--node`.
    Node,
    /// The node the fault's CoreDNS pod runs on.
    PodNode,
    /// The ingress controller's node.
    IngressNode,
    /// No node: a dead service backend, which no probe can place, is named by service.
    Nobody,
}

/// The finding a single fault of a kind must produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Its cause.
    pub cause: Cause,
    /// Whom it names.
    pub on: Role,
    /// Whether it names the fault's `--peer` in `peers`.
    pub names_peer: bool,
}

/// One kind's declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The CLI's name.
    pub id: &'static str,
    /// What it takes.
    pub args: Args,
    /// What it is.
    pub class: Class,
    /// The finding a single fault of this kind produces (datapath kinds only).
    pub finding: Option<Expected>,
}

macro_rules! kinds {
    ( $( $(#[doc = $doc:literal])* $v:ident = $id:literal, $args:ident, $class:ident, $finding:expr; )* ) => {
        /// A kind of fault the sandbox injects.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum FaultKind { $( $(#[doc = $doc])* $v, )* }

        impl FaultKind {
            /// Every kind, in the catalogue's order.
            pub const ALL: &'static [FaultKind] = &[ $( FaultKind::$v, )* ];

            /// Its declaration.
            pub fn spec(self) -> Spec {
                match self {
                    $( FaultKind::$v => Spec {
                        id: $id,
                        args: Args::$args,
                        class: Class::$class,
                        finding: $finding,
                    }, )*
                }
            }

            /// The CLI's name.
            pub fn id(self) -> &'static str {
                match self { $( FaultKind::$v => $id, )* }
            }

            /// What it does, in the words of its declaration (the CLI's help), as doc
            /// lines joined: each begins with a space.
            fn doc(self) -> &'static str {
                match self { $( FaultKind::$v => concat!($($doc),*), )* }
            }

            /// The kind the CLI calls `id`.
            pub fn from_id(id: &str) -> Option<FaultKind> {
                match id { $( $id => Some(FaultKind::$v), )* _ => None }
            }
        }
    };
}

const fn on(cause: Cause) -> Option<Expected> {
    Some(Expected {
        cause,
        on: Role::Node,
        names_peer: false,
    })
}

const fn pair(cause: Cause) -> Option<Expected> {
    Some(Expected {
        cause,
        on: Role::Node,
        names_peer: true,
    })
}

const fn at(cause: Cause, on: Role) -> Option<Expected> {
    Some(Expected {
        cause,
        on,
        names_peer: false,
    })
}

kinds! {
    /// A security group or host firewall drops VXLAN arriving at the node.
    VxlanDropIn = "vxlan-drop-in", Node, Datapath, on(Cause::VxlanBlocked);
    /// VXLAN leaving the node is dropped.
    VxlanDropOut = "vxlan-drop-out", Node, Datapath, on(Cause::VxlanBlocked);
    /// A reboot reset `net.ipv4.ip_forward` to 0.
    IpForwardOff = "ip-forward-off", Node, Datapath, on(Cause::IpForwardDisabled);
    /// firewalld's FORWARD REJECT above the CNI's accepts.
    ForwardReject = "forward-reject", Node, Datapath, on(Cause::ForwardRejected);
    /// The node's VXLAN device lacks the fdb entry for a peer's VTEP.
    FdbMissing = "fdb-missing", NodePeer, Datapath, pair(Cause::OverlayPeerMissing);
    /// The node lacks the route to a peer's pod range.
    RouteMissing = "route-missing", NodePeer, Datapath, pair(Cause::OverlayPeerMissing);
    /// The node lacks the neighbour entry for a peer's VTEP.
    NeighMissing = "neigh-missing", NodePeer, Datapath, pair(Cause::OverlayPeerMissing);
    /// The node's entries for a peer hold a VTEP MAC the peer no longer has.
    VtepStale = "vtep-stale", NodePeer, Datapath, pair(Cause::OverlayPeerMissing);
    /// The node's underlay path carries less than the overlay needs.
    UnderlayMtu = "underlay-mtu", NodeMtu, Datapath, on(Cause::MtuMismatch);
    /// A CoreDNS pod is down.
    DnsDown = "dns-down", Pod, Datapath, at(Cause::DnsPodDown, Role::PodNode);
    /// A CoreDNS pod's metrics port is blocked.
    MetricsBlocked = "metrics-blocked", Pod, Datapath, at(Cause::MetricsUnreachable, Role::PodNode);
    /// The node's kube-proxy lost the NodePort's rules.
    NodeportRemoved = "nodeport-removed", Node, Datapath, on(Cause::NodeportBroken);
    /// The ingress controller is down.
    IngressDown = "ingress-down", None, Datapath, at(Cause::IngressBroken, Role::IngressNode);
    /// The node's underlay link is down.
    LinkDown = "link-down", Node, Datapath, on(Cause::NodeUnreachable);
    /// The node's link loses a share of its packets.
    Loss = "loss", NodePercent, Datapath, on(Cause::PacketLoss);
    /// The coordinator is stopped.
    CoordinatorDown = "coordinator-down", None, ControlPlane, None;
    /// The API server is stopped.
    ApiServerDown = "api-server-down", None, ControlPlane, None;
    /// conntrack is flushed (all nodes, or one).
    ConntrackFlush = "conntrack-flush", MaybeNode, Event, None;
    /// A firewall reload drops established flows for a moment.
    FirewallReload = "firewall-reload", Node, Event, None;
    /// The coordinator restarts.
    CoordinatorRestart = "coordinator-restart", None, Event, None;
    /// A host agent restarts.
    HostAgentRestart = "host-agent-restart", Node, Event, None;
    /// Echo requests to the node IP are filtered.
    IcmpBlocked = "icmp-blocked", Node, Datapath, on(Cause::IcmpBlocked);
    /// The node's NIC and overlay are set to jumbo frames the fabric does not carry.
    JumboMtu = "jumbo-mtu", Node, Datapath, on(Cause::MtuMismatch);
    /// The node's VXLAN device uses another UDP port than the cluster's.
    VxlanPort = "vxlan-port", Node, Datapath, on(Cause::VxlanConfigMismatch);
    /// The node's VXLAN device uses another VNI.
    VxlanVni = "vxlan-vni", Node, Datapath, on(Cause::VxlanConfigMismatch);
    /// The node's VXLAN device was recreated with a MAC its peers were never told of.
    VtepChanged = "vtep-changed", Node, Datapath, on(Cause::VxlanConfigMismatch);
    /// The node's kube-proxy lost the kube-dns service's rules.
    DnsRulesMissing = "dns-rules-missing", Node, Datapath, on(Cause::DnsServiceBroken);
    /// The node's firewall drops VXLAN to one peer.
    VxlanPairDrop = "vxlan-pair-drop", NodePeer, Datapath, pair(Cause::VxlanBlocked);
    /// A distribution's INPUT chain rejects VXLAN into the node.
    HostFirewall = "host-firewall", Node, Datapath, on(Cause::VxlanBlocked);
    /// A native nftables table in firewalld's shape (RHEL 8 and 9) rejects VXLAN into the
    /// node, where `iptables-save` shows nothing.
    NftHostFirewall = "nft-host-firewall", Node, Datapath, on(Cause::VxlanBlocked);
    /// The node's pod bridge has an MTU below the overlay's.
    BridgeMtu = "bridge-mtu", Node, Datapath, on(Cause::MtuMismatch);
    /// The web service's backend on the node does not answer.
    BackendDown = "backend-down", Node, Datapath, at(Cause::ServiceBackendDown, Role::Nobody);
    /// kube-proxy's masquerade rule is gone on the node.
    MasqueradeMissing = "masquerade-missing", Node, Datapath, on(Cause::NodeportBroken);
    /// `net.bridge.bridge-nf-call-iptables = 0` on the node.
    BridgeNfOff = "bridge-nf-off", Node, Datapath, on(Cause::BridgeNetfilterOff);
    /// The node's pod bridge lost its gateway address.
    BridgeAddrLost = "bridge-addr-lost", Node, Datapath, on(Cause::PodGatewayMissing);
    /// Nothing from the overlay is delivered to the node's own addresses.
    OverlayInputDrop = "overlay-input-drop", Node, Datapath, on(Cause::HostInputBlocked);
    /// The node's FORWARD chain drops ICMP to and from its pods.
    IcmpForwardDrop = "icmp-forward-drop", Node, Datapath, on(Cause::ForwardRejected);
    /// The node's OUTPUT chain drops ICMP (a policy against ping from hosts): its own
    /// echoes fail at the sender (EPERM), its echo replies vanish; forwarded traffic passes.
    IcmpOutputDrop = "icmp-output-drop", Node, Datapath, on(Cause::HostOutputBlocked);
    /// The CoreDNS pod's node drops forwarded DNS queries to it.
    DnsPortDrop = "dns-port-drop", Pod, Datapath, at(Cause::ForwardRejected, Role::PodNode);
    /// The node routes a peer's pod range over another interface.
    RouteHijack = "route-hijack", NodePeer, Datapath, pair(Cause::OverlayPeerMissing);
    /// The node holds an address and a route inside a peer's pod range, and the others'
    /// overlay entries for the peer point at it.
    PodCidrClaimed = "pod-cidr-claimed", NodePeer, Datapath, pair(Cause::PodCidrConflict);
    /// The node's pod bridge is down.
    BridgeDown = "bridge-down", Node, Datapath, on(Cause::PodDeviceDown);
}

impl FaultKind {
    /// What it does, in one line (`lab fault --help`).
    pub fn summary(self) -> &'static str {
        self.doc().trim()
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// The traffic a failing hop drops: everything (`None`s), one protocol, one destination
/// port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Traffic {
    /// Only this protocol.
    pub proto: Option<Proto>,
    /// Only this destination port.
    pub port: Option<u16>,
}

impl Traffic {
    /// Every packet.
    pub const ALL: Traffic = Traffic {
        proto: None,
        port: None,
    };

    /// One protocol, one port.
    pub const fn of(proto: Proto, port: Option<u16>) -> Traffic {
        Traffic {
            proto: Some(proto),
            port,
        }
    }

    /// Whether a packet of `scope` is dropped.
    pub fn covers(self, scope: Scope) -> bool {
        self.proto.is_none_or(|p| p == scope.proto)
            && self.port.is_none_or(|p| Some(p) == scope.port)
    }
}

/// Where one fault sits, in the caller's ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The cluster's size.
    pub nodes: usize,
    /// Its `--node`.
    pub node: Option<usize>,
    /// Its `--peer`.
    pub peer: Option<usize>,
    /// The target it is on (a CoreDNS pod, the ingress), with that target's node.
    pub target: Option<(usize, usize)>,
    /// The NodePort's port.
    pub node_port: u16,
    /// The overlay's UDP port.
    pub overlay_port: u16,
}

/// A fault as the datapath model sees it: hops that drop some traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    /// The hops that drop.
    pub hops: Vec<Hop>,
    /// What they drop.
    pub traffic: Traffic,
    /// The hops divert rather than drop: a request addressed to a node itself is
    /// answered where it lands (a node that claimed another's gateway answers for it);
    /// what is addressed to pods, and the replies to the node's own overlay address
    /// (which the claimant does not hold), are lost.
    pub diverts: bool,
}

/// What a probe does under an effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It passes.
    Pass,
    /// It fails.
    Fail,
    /// It rides a choice the probe cannot see (kube-proxy's backend, whether the agent
    /// behind it can report at all).
    Either,
}

fn node_hop(kind: HopKind, x: usize) -> Hop {
    Hop {
        kind,
        site: Site::Node(x),
    }
}

impl FaultKind {
    /// The kind as the datapath model's hops failing, where it is one; `None` for the
    /// kinds the tests still state cell by cell (sizes, loss, a silent node, the
    /// backends kube-proxy picks) and for events.
    pub fn effect(self, at: &Placement) -> Option<Effect> {
        use FaultKind as K;
        let x = at.node;
        let all = |hops: Vec<Hop>| Effect {
            hops,
            traffic: Traffic::ALL,
            diverts: false,
        };
        let some = |hops: Vec<Hop>, traffic| Effect {
            hops,
            traffic,
            diverts: false,
        };
        Some(match self {
            K::VxlanDropIn => all(vec![node_hop(HopKind::Decap, x?)]),
            K::VxlanDropOut => all(vec![node_hop(HopKind::Encap, x?)]),
            // The device itself no longer matches its peers: nothing it sends is
            // decapsulated by them, nothing they send is by it.
            K::VxlanPort | K::VxlanVni | K::VtepChanged => all(vec![
                node_hop(HopKind::Encap, x?),
                node_hop(HopKind::Decap, x?),
            ]),
            // ip_forward is routing's switch; bridged frames never see it.
            K::IpForwardOff => all(vec![
                node_hop(HopKind::ForwardIn, x?),
                node_hop(HopKind::ForwardOut, x?),
            ]),
            // A FORWARD rule also sees what the bridge hands to iptables.
            K::ForwardReject => all(vec![
                node_hop(HopKind::ForwardIn, x?),
                node_hop(HopKind::ForwardOut, x?),
                node_hop(HopKind::BridgedForward, x?),
            ]),
            K::IcmpForwardDrop => some(
                vec![
                    node_hop(HopKind::ForwardIn, x?),
                    node_hop(HopKind::ForwardOut, x?),
                    node_hop(HopKind::BridgedForward, x?),
                ],
                Traffic::of(Proto::Icmp, None),
            ),
            // OUTPUT sees only what the node itself sends: its own echoes and its replies.
            K::IcmpOutputDrop => some(
                vec![node_hop(HopKind::HostOut, x?)],
                Traffic::of(Proto::Icmp, None),
            ),
            K::DnsPortDrop => some(
                vec![node_hop(HopKind::ForwardIn, at.target?.1)],
                Traffic::of(Proto::Udp, Some(53)),
            ),
            K::FdbMissing | K::RouteMissing | K::NeighMissing | K::VtepStale => all(vec![Hop {
                kind: HopKind::OverlayRoute,
                site: Site::Pair {
                    from: x?,
                    to: at.peer?,
                },
            }]),
            // OUTPUT on the node drops the overlay's datagrams to the peer's node IP.
            K::VxlanPairDrop => some(
                vec![Hop {
                    kind: HopKind::Wire,
                    site: Site::Pair {
                        from: x?,
                        to: at.peer?,
                    },
                }],
                Traffic::of(Proto::Udp, Some(at.overlay_port)),
            ),
            K::DnsDown | K::IngressDown => {
                let id = match self {
                    K::IngressDown => INGRESS_TARGET,
                    _ => at.target?.0,
                };
                all(vec![Hop {
                    kind: HopKind::Endpoint,
                    site: Site::Target(id),
                }])
            }
            K::MetricsBlocked => some(
                vec![Hop {
                    kind: HopKind::Endpoint,
                    site: Site::Target(at.target?.0),
                }],
                Traffic::of(Proto::Tcp, Some(9153)),
            ),
            K::NodeportRemoved => some(
                vec![node_hop(HopKind::ServiceNat, x?)],
                Traffic::of(Proto::Tcp, Some(at.node_port)),
            ),
            K::DnsRulesMissing => some(
                vec![node_hop(HopKind::ServiceNat, x?)],
                Traffic::of(Proto::Udp, Some(53)),
            ),
            K::OverlayInputDrop => all(vec![node_hop(HopKind::OverlayIn, x?)]),
            K::BridgeDown => all(vec![node_hop(HopKind::Bridge, x?)]),
            // Every other node's route toward the owner's pods ends on the claimant.
            K::PodCidrClaimed => {
                let owner = at.peer?;
                Effect {
                    hops: (0..at.nodes)
                        .filter(|&s| s != owner)
                        .map(|s| Hop {
                            kind: HopKind::OverlayRoute,
                            site: Site::Pair { from: s, to: owner },
                        })
                        .collect(),
                    traffic: Traffic::ALL,
                    diverts: true,
                }
            }
            K::UnderlayMtu
            | K::LinkDown
            | K::Loss
            | K::IcmpBlocked
            | K::JumboMtu
            | K::HostFirewall
            | K::NftHostFirewall
            | K::BridgeMtu
            | K::BackendDown
            | K::MasqueradeMissing
            | K::BridgeNfOff
            | K::BridgeAddrLost
            | K::RouteHijack
            | K::CoordinatorDown
            | K::ApiServerDown
            | K::ConntrackFlush
            | K::FirewallReload
            | K::CoordinatorRestart
            | K::HostAgentRestart => return None,
        })
    }
}

impl Effect {
    /// Where the effect drops a probe on `path`: the position of the first dropping
    /// crossing on the request and on the reply.
    pub fn first_drops(&self, path: &Path, overlay_port: u16) -> (Option<usize>, Option<usize>) {
        let split = path.request.len();
        let mut req = None;
        let mut rep = None;
        for (i, (hop, scope)) in path.crossings(overlay_port).enumerate() {
            let (leg, slot, to_node) = if i < split {
                (i, &mut req, path.request_to_node)
            } else {
                (i - split, &mut rep, path.reply_to_node)
            };
            if slot.is_none()
                && !(self.diverts && i < split && to_node)
                && self.hops.contains(&hop)
                && self.traffic.covers(scope)
            {
                *slot = Some(leg);
            }
        }
        (req, rep)
    }

    /// Whether a probe on `path` is dropped.
    pub fn drops(&self, path: &Path, overlay_port: u16) -> bool {
        self.first_drops(path, overlay_port) != (None, None)
    }

    /// Whether the effect may sit behind a load-balanced path's open end: one of its
    /// hops carries a service's traffic to some backend, for the protocol the service
    /// speaks (the port changes at the translation, so a port-scoped drop may match).
    /// On the tunnel the backend's traffic is the overlay's UDP, whatever the service
    /// speaks; a node that holds the backend connection itself
    /// ([`Path::backend_origin`]) takes the replies in through its INPUT.
    fn behind_backends(&self, path: &Path, overlay_port: u16) -> bool {
        self.hops.iter().any(|h| {
            if matches!(h.kind, HopKind::OverlayIn | HopKind::BridgeIn)
                && path.backend_origin.is_some_and(|o| h.site == Site::Node(o))
            {
                return self.traffic.proto.is_none_or(|p| p == path.scope.proto);
            }
            if !h.kind.carries_backend_traffic() {
                return false;
            }
            if matches!(h.kind, HopKind::Encap | HopKind::Wire | HopKind::Decap) {
                self.traffic.proto.is_none_or(|p| p == Proto::Udp)
                    && self.traffic.port.is_none_or(|p| p == overlay_port)
            } else {
                self.traffic.proto.is_none_or(|p| p == path.scope.proto)
            }
        })
    }
}

/// The destinations and ports of one cluster, for [`predict`]: where each CoreDNS pod
/// and the ingress run, in the caller's ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    /// Each CoreDNS pod's node, by target id (its position).
    pub dns: Vec<usize>,
    /// The ingress controller's node.
    pub ingress: usize,
    /// The NodePort's port.
    pub node_port: u16,
    /// The ingress's port.
    pub ingress_port: u16,
    /// The overlay's UDP port.
    pub overlay_port: u16,
}

impl Targets {
    /// The destination of `layer`'s column: a node's id, or a CoreDNS pod's target id.
    pub fn dest(&self, layer: Layer, col: usize) -> Option<Dest> {
        use Layer::*;
        Some(match layer {
            DnsPod | CorednsMetrics => Dest::Target {
                id: col,
                node: *self.dns.get(col)?,
            },
            Ingress | IngressFromPod => Dest::Target {
                id: INGRESS_TARGET,
                node: self.ingress,
            },
            DnsService => Dest::Service,
            _ => Dest::Node(col),
        })
    }

    fn ports(&self, layer: Layer) -> Ports {
        Ports {
            service: match layer {
                Layer::Ingress | Layer::IngressFromPod => self.ingress_port,
                _ => self.node_port,
            },
        }
    }
}

/// What one probe of `layer` from node `s` to column `col` does under `effect`, from the
/// probe's path: it fails when the path crosses a dropping hop; a load-balanced probe
/// whose backends may sit behind one rides kube-proxy's choice; a probe from a pod whose
/// agent cannot reach its own node's relay may never be reported.
pub fn predict(
    effect: &Effect,
    t: &Targets,
    layer: Layer,
    s: usize,
    col: usize,
) -> Option<Outcome> {
    let dest = t.dest(layer, col)?;
    let path = datapath::path(layer, s, dest, t.ports(layer))?;
    if layer.vantage() == crate::AgentKind::Pod
        && effect.drops(&datapath::relay_path(s), t.overlay_port)
    {
        return Some(Outcome::Either);
    }
    if effect.drops(&path, t.overlay_port) {
        return Some(Outcome::Fail);
    }
    if layer == Layer::DnsService {
        // Each query lands on one CoreDNS pod.
        let behind = (0..t.dns.len())
            .any(|id| predict(effect, t, Layer::DnsPod, s, id).is_some_and(|o| o != Outcome::Pass));
        return Some(if behind {
            Outcome::Either
        } else {
            Outcome::Pass
        });
    }
    if path.balanced && effect.behind_backends(&path, t.overlay_port) {
        return Some(Outcome::Either);
    }
    Some(Outcome::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_reads_back_and_is_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for &k in FaultKind::ALL {
            assert_eq!(FaultKind::from_id(k.id()), Some(k));
            assert!(seen.insert(k.id()), "{k} twice");
            let s = k.spec();
            assert_eq!(s.finding.is_some(), s.class == Class::Datapath, "{k}");
        }
        assert_eq!(FaultKind::from_id("no-such-fault"), None);
    }

    #[test]
    fn every_kind_says_what_it_does_in_one_line() {
        for &k in FaultKind::ALL {
            let s = k.summary();
            assert!(s.len() > 10, "{k}: {s:?}");
            assert!(!s.contains("  ") && !s.contains('\n'), "{k}: {s:?}");
            assert!(s.ends_with('.'), "{k}: {s:?}");
        }
        // A declaration of two doc lines reads as one sentence.
        assert!(
            FaultKind::IcmpOutputDrop
                .summary()
                .contains("from hosts): its own echoes fail"),
            "{}",
            FaultKind::IcmpOutputDrop.summary()
        );
    }

    fn targets() -> Targets {
        Targets {
            dns: vec![0, 1],
            ingress: 2,
            node_port: 30080,
            ingress_port: 80,
            overlay_port: 8472,
        }
    }

    fn placed(node: usize, peer: Option<usize>) -> Placement {
        Placement {
            nodes: 3,
            node: Some(node),
            peer,
            target: None,
            node_port: 30080,
            overlay_port: 8472,
        }
    }

    #[test]
    fn a_missing_peer_entry_fails_the_pair_both_ways_and_nothing_else() {
        let e = FaultKind::RouteMissing
            .effect(&placed(0, Some(1)))
            .expect("an effect");
        let t = targets();
        let p = |l, s, c| predict(&e, &t, l, s, c).expect("a path");
        assert_eq!(p(Layer::PodToPod, 0, 1), Outcome::Fail);
        // 1's requests reach 0's pods; the replies take 0's broken route back.
        assert_eq!(p(Layer::PodToPod, 1, 0), Outcome::Fail);
        assert_eq!(p(Layer::PodToPod, 0, 2), Outcome::Pass);
        assert_eq!(p(Layer::PodToPod, 2, 1), Outcome::Pass);
        assert_eq!(p(Layer::Underlay, 0, 1), Outcome::Pass);
    }

    #[test]
    fn a_port_scoped_drop_spares_other_ports_and_services_on_other_protocols() {
        let e = FaultKind::NodeportRemoved
            .effect(&placed(2, None))
            .expect("an effect");
        let t = targets();
        let p = |l, s, c| predict(&e, &t, l, s, c).expect("a path");
        assert_eq!(p(Layer::Nodeport, 0, 2), Outcome::Fail);
        assert_eq!(p(Layer::NodeportFromPod, 1, 2), Outcome::Fail);
        // Translation on another node cannot reach node 2's rules.
        assert_eq!(p(Layer::Nodeport, 0, 1), Outcome::Pass);
        assert_eq!(p(Layer::DnsService, 2, 0), Outcome::Pass);
    }

    #[test]
    fn a_dead_coredns_pod_makes_the_service_ride_the_choice() {
        let mut at = placed(0, None);
        at.node = None;
        at.target = Some((1, 1));
        let e = FaultKind::DnsDown.effect(&at).expect("an effect");
        let t = targets();
        let p = |l, s, c| predict(&e, &t, l, s, c).expect("a path");
        assert_eq!(p(Layer::DnsPod, 0, 1), Outcome::Fail);
        assert_eq!(p(Layer::DnsPod, 0, 0), Outcome::Pass);
        assert_eq!(p(Layer::DnsService, 2, 0), Outcome::Either);
    }

    #[test]
    fn a_bridge_down_silences_the_nodes_pod_agent() {
        let e = FaultKind::BridgeDown
            .effect(&placed(1, None))
            .expect("an effect");
        let t = targets();
        let p = |l, s, c| predict(&e, &t, l, s, c).expect("a path");
        assert_eq!(p(Layer::PodToPod, 1, 0), Outcome::Either);
        assert_eq!(p(Layer::PodToPod, 0, 1), Outcome::Fail);
        assert_eq!(p(Layer::GatewayFromHost, 0, 1), Outcome::Pass);
        // Any NodePort may land on a backend behind node 1's bridge.
        assert_eq!(p(Layer::Nodeport, 0, 2), Outcome::Either);
    }
}
