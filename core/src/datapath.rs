//! The datapath model: for each probe kind, the ordered hops its packets cross, each
//! owned by a node, a pair of nodes, a target, or a load-balanced service.
//!
//! This is flannel's VXLAN datapath as the kernel runs it, on both legs of a round trip:
//!
//! ```text
//! pod on s ─ veth ─ cni0 ─ FORWARD(s) ─ route/neigh/fdb(s→d) ─ flannel.1(s) ─ wire(s→d)
//!   ─ flannel.1(d) ─ FORWARD(d) ─ cni0 ─ veth ─ pod on d          (and the reply back)
//! ```
//!
//! Traffic that ends on a node (its gateway address, its node IP) is delivered locally
//! (INPUT) instead of forwarded; a service adds kube-proxy's translation on a named node
//! and then a backend the probe cannot name. The diagnosis reads these paths to test its
//! hypotheses against the cells that pass; a later CNI or IP family adds hops here.
//!
//! Node and target ids are the caller's (the diagnosis's integer ids); nothing here looks
//! at names, so a path is a few dozen bytes and built on demand.

use crate::layer::Layer;

/// The transport a probe's packets use; a hop may fail for one only (a rule for one
/// protocol, a NIC offload that mangles one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// ICMP echo.
    Icmp,
    /// UDP (DNS).
    Udp,
    /// TCP (HTTP).
    Tcp,
}

impl Proto {
    /// The name people read.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Icmp => "ICMP",
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
        }
    }
}

/// How large a probe's packets are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Size {
    /// Well below every MTU.
    Small,
    /// At the path's MTU, DF set.
    Full,
    /// Twice the overlay MTU with DF clear: fragmented by the sender.
    Fragmented,
}

/// What a probe's packets are: protocol, destination port, size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    /// The transport.
    pub proto: Proto,
    /// The destination port (TCP and UDP).
    pub port: Option<u16>,
    /// The packet size.
    pub size: Size,
}

/// One hop's function. Which node, pair or target it sits on is the [`Site`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HopKind {
    /// The probe pod's veth pair and its own stack (the endpoint of pod probes).
    PodLink,
    /// The node's pod bridge (`cni0`), between the veths and the node's routing.
    Bridge,
    /// Traffic bridged between two pods of one node, through the FORWARD chain when
    /// `br_netfilter` hands bridged frames to iptables (as kube-proxy needs it to).
    BridgedForward,
    /// The node's own sends (OUTPUT).
    HostOut,
    /// Delivery to the node's own address from its NIC (INPUT from the underlay).
    HostIn,
    /// Delivery to the node's own addresses from the overlay device (INPUT from
    /// `flannel.1`): its gateway and overlay address, reached from other nodes.
    OverlayIn,
    /// Delivery to the node's own addresses from its pod bridge (INPUT from `cni0`): its
    /// own pods reaching their gateway or their node.
    BridgeIn,
    /// The node's pod gateway: the address on `cni0` that answers for the subnet.
    Gateway,
    /// The node forwarding its pods' traffic out (`ip_forward`, FORWARD).
    ForwardOut,
    /// The node forwarding traffic into its pods (`ip_forward`, FORWARD).
    ForwardIn,
    /// The route, neighbour and fdb entry the node uses toward one peer.
    OverlayRoute,
    /// Encapsulation on the node: the VXLAN device and the UDP port going out.
    Encap,
    /// The fabric between two nodes (switches, security groups, the other NIC).
    Wire,
    /// Decapsulation on the node: the UDP port coming in and the VXLAN device.
    Decap,
    /// kube-proxy's translation of a service address on the node.
    ServiceNat,
    /// The target itself: a CoreDNS pod, an ingress controller.
    Endpoint,
    /// Whichever backend a load-balanced request landed on: the probes cannot say which.
    Backend,
}

impl HopKind {
    /// The hop in words, for a finding's `hop` and `alternatives`.
    pub fn describe(self) -> &'static str {
        match self {
            HopKind::PodLink => "the probe pod's veth",
            HopKind::Bridge => "the pod bridge",
            HopKind::BridgedForward => "bridged traffic between its pods (FORWARD, br_netfilter)",
            HopKind::HostOut => "the node's own sends (OUTPUT)",
            HopKind::HostIn => "delivery to the node IP (INPUT from the NIC)",
            HopKind::OverlayIn => "delivery to the node's own addresses from the overlay (INPUT)",
            HopKind::BridgeIn => "delivery to the node's own addresses from its pods (INPUT)",
            HopKind::Gateway => "the pod gateway address",
            HopKind::ForwardOut => "forwarding out of its pods",
            HopKind::ForwardIn => "forwarding into its pods",
            HopKind::OverlayRoute => "the route, neighbour and fdb entry toward the peer",
            HopKind::Encap => "VXLAN encapsulation out",
            HopKind::Wire => "the underlay between the nodes",
            HopKind::Decap => "VXLAN decapsulation in",
            HopKind::ServiceNat => "kube-proxy's service rules",
            HopKind::Endpoint => "the target",
            HopKind::Backend => "a service backend",
        }
    }

    /// Whether a load-balanced request crosses hops of this kind on its way from the
    /// translation to whichever backend it landed on (the backend's node forwarding it
    /// into its pods, the tunnel, the bridge), so that a failing one may sit behind a
    /// service's open end.
    pub fn carries_backend_traffic(self) -> bool {
        matches!(
            self,
            HopKind::Bridge
                | HopKind::BridgedForward
                | HopKind::ForwardIn
                | HopKind::ForwardOut
                | HopKind::OverlayRoute
                | HopKind::Encap
                | HopKind::Wire
                | HopKind::Decap
                | HopKind::Backend
        )
    }
}

/// Where a hop sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Site {
    /// On one node.
    Node(usize),
    /// Between two nodes, one way (`from` sends to `to`).
    Pair {
        /// The sending node.
        from: usize,
        /// The receiving node.
        to: usize,
    },
    /// A target (a CoreDNS pod, an ingress), by the caller's target id.
    Target(usize),
    /// Some backend of a load-balanced service.
    Service,
}

/// A hop: what, where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hop {
    /// Its function.
    pub kind: HopKind,
    /// Its place.
    pub site: Site,
}

impl Hop {
    fn at(kind: HopKind, x: usize) -> Self {
        Hop {
            kind,
            site: Site::Node(x),
        }
    }
    fn pair(kind: HopKind, from: usize, to: usize) -> Self {
        Hop {
            kind,
            site: Site::Pair { from, to },
        }
    }
}

/// Where a probe is aimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// A node-column layer's column, or the node a NodePort is probed on.
    Node(usize),
    /// A target on a node (CoreDNS pod, ingress controller), by target id.
    Target {
        /// The target's id.
        id: usize,
        /// The node it runs on.
        node: usize,
    },
    /// A load-balanced service address whose entry is the source node (kube-dns).
    Service,
}

/// A probe's path: every hop its request and its reply cross, in order, and what its
/// packets are. A balanced path ends at a service's translation: which backend the
/// probe reached it cannot say, so its hops are the fixed ones only, and a passing probe
/// clears just those. Between the encapsulation and the decapsulation of a tunnelled
/// path the packet is the overlay's UDP datagram, whatever it carries
/// ([`Path::scope_at`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    /// The request's hops, source first.
    pub request: Vec<Hop>,
    /// The reply's hops, from the far end back to the source.
    pub reply: Vec<Hop>,
    /// Protocol, port and size.
    pub scope: Scope,
    /// Whether the path ends at a load-balanced backend.
    pub balanced: bool,
    /// Whether the request is addressed to a node itself (its node IP, its gateway),
    /// not to a pod. A node answers for its own addresses on any interface, so a route
    /// that sends them the wrong way still delivers them.
    pub request_to_node: bool,
    /// Whether the reply is addressed to a node itself (a host prober's own address).
    pub reply_to_node: bool,
    /// The node whose own stack holds the connection to the backend, on a balanced path:
    /// a node probing its own NodePort, or the host-network ingress proxy's node. The
    /// backend's replies are addressed to that node itself (INPUT), from the overlay or
    /// its bridge, wherever the backend is.
    pub backend_origin: Option<usize>,
}

impl Path {
    /// Whether the path crosses the overlay (its packets are encapsulated on the way).
    pub fn tunnelled(&self) -> bool {
        self.request.iter().any(|h| h.kind == HopKind::Encap)
    }

    /// What the packet is at `hop`: the probe's own scope, or, on the encapsulating
    /// hops of a tunnelled path, UDP to the overlay's `port` (a firewall or a fabric
    /// there sees only that).
    pub fn scope_at(&self, hop: Hop, overlay_port: u16) -> Scope {
        match hop.kind {
            HopKind::Encap | HopKind::Wire | HopKind::Decap if self.tunnelled() => Scope {
                proto: Proto::Udp,
                port: Some(overlay_port),
                size: self.scope.size,
            },
            _ => self.scope,
        }
    }

    /// Every hop with what the packet is there, request then reply: a reply's
    /// destination port is the prober's own (ephemeral) one, so a rule for the request's
    /// port does not match it.
    pub fn crossings(&self, overlay_port: u16) -> impl Iterator<Item = (Hop, Scope)> + '_ {
        let request = self
            .request
            .iter()
            .map(move |&h| (h, self.scope_at(h, overlay_port)));
        let reply = self.reply.iter().map(move |&h| {
            let mut s = self.scope_at(h, overlay_port);
            let outer = self.tunnelled()
                && matches!(h.kind, HopKind::Encap | HopKind::Wire | HopKind::Decap);
            if !outer {
                s.port = None;
            }
            (h, s)
        });
        request.chain(reply)
    }

    /// [`Path::crossings`] on the legs addressed to a pod only: what a route toward
    /// pods carries, when its node's own addresses are answered another way.
    pub fn crossings_to_pods(&self, overlay_port: u16) -> impl Iterator<Item = (Hop, Scope)> + '_ {
        let split = self.request.len();
        self.crossings(overlay_port)
            .enumerate()
            .filter(move |(i, _)| {
                if *i < split {
                    !self.request_to_node
                } else {
                    !self.reply_to_node
                }
            })
            .map(|(_, c)| c)
    }

    /// Every hop, request then reply (a hop crossed on both legs appears twice).
    pub fn hops(&self) -> impl Iterator<Item = Hop> + '_ {
        self.request.iter().chain(&self.reply).copied()
    }

    /// Whether the probe's packets cross `hop`.
    pub fn crosses(&self, hop: Hop) -> bool {
        self.hops().any(|h| h == hop)
    }
}

/// Ports a layer's probes use, from the topology (the caller's lookup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// The NodePort (or the ingress port) of the column.
    pub service: u16,
}

/// Hops between two nodes' stacks through the overlay: s's route toward d, its
/// encapsulation, the wire, d's decapsulation.
fn tunnel(v: &mut Vec<Hop>, s: usize, d: usize) {
    v.extend([
        Hop::pair(HopKind::OverlayRoute, s, d),
        Hop::at(HopKind::Encap, s),
        Hop::pair(HopKind::Wire, s, d),
        Hop::at(HopKind::Decap, d),
    ]);
}

/// A leg from a pod on `s` to a pod (or a pod-network target) on `d`: out of s's pod,
/// across (forwarded at both ends) unless both are on one node, where the bridge carries
/// it alone.
fn pod_leg(s: usize, d: usize, far: Hop) -> Vec<Hop> {
    let mut v = vec![Hop::at(HopKind::PodLink, s), Hop::at(HopKind::Bridge, s)];
    if s != d {
        v.push(Hop::at(HopKind::ForwardOut, s));
        tunnel(&mut v, s, d);
        v.push(Hop::at(HopKind::ForwardIn, d));
        v.push(Hop::at(HopKind::Bridge, d));
    } else {
        v.push(Hop::at(HopKind::BridgedForward, s));
    }
    v.push(far);
    v
}

/// A leg from a pod-network target on `d` back to a pod on `s`.
fn pod_leg_back(d: usize, s: usize, near: Hop) -> Vec<Hop> {
    let mut v = vec![near];
    if s != d {
        v.push(Hop::at(HopKind::Bridge, d));
        v.push(Hop::at(HopKind::ForwardOut, d));
        tunnel(&mut v, d, s);
        v.push(Hop::at(HopKind::ForwardIn, s));
    } else {
        v.push(Hop::at(HopKind::BridgedForward, s));
    }
    v.push(Hop::at(HopKind::Bridge, s));
    v.push(Hop::at(HopKind::PodLink, s));
    v
}

/// Where a NodePort or ingress request enters: the ingress controller, or kube-proxy's
/// translation on the node probed.
fn service_entry(dest: Dest, d: usize) -> Hop {
    match dest {
        Dest::Target { id, .. } => Hop {
            kind: HopKind::Endpoint,
            site: Site::Target(id),
        },
        _ => Hop::at(HopKind::ServiceNat, d),
    }
}

/// The scope of a layer's probes.
pub fn scope_of(layer: Layer, ports: Ports) -> Scope {
    use Layer::*;
    let (proto, port) = match layer {
        DnsService | DnsPod => (Proto::Udp, Some(53)),
        CorednsMetrics => (Proto::Tcp, Some(9153)),
        Nodeport | NodeportFromPod | Ingress | IngressFromPod => (Proto::Tcp, Some(ports.service)),
        _ => (Proto::Icmp, None),
    };
    let size = match layer {
        UnderlayFullSize | PodToPodFullSize => Size::Full,
        PodToPodFragmented => Size::Fragmented,
        _ => Size::Small,
    };
    Scope { proto, port, size }
}

/// The path of one probe of `layer` from node `s` to `dest`; `None` where the layer and
/// the destination do not go together.
pub fn path(layer: Layer, s: usize, dest: Dest, ports: Ports) -> Option<Path> {
    use Layer::*;
    let scope = scope_of(layer, ports);
    let at = Hop::at;
    let mut balanced = false;
    let (request, reply) = match (layer, dest) {
        (Underlay | UnderlayFullSize, Dest::Node(d)) => (
            vec![
                at(HopKind::HostOut, s),
                Hop::pair(HopKind::Wire, s, d),
                at(HopKind::HostIn, d),
            ],
            vec![
                at(HopKind::HostOut, d),
                Hop::pair(HopKind::Wire, d, s),
                at(HopKind::HostIn, s),
            ],
        ),
        (GatewayFromHost, Dest::Node(d)) => {
            let mut req = vec![at(HopKind::HostOut, s)];
            let mut rep = vec![at(HopKind::HostOut, d)];
            if s != d {
                tunnel(&mut req, s, d);
                tunnel(&mut rep, d, s);
                req.push(at(HopKind::OverlayIn, d));
                rep.push(at(HopKind::OverlayIn, s));
            }
            req.push(at(HopKind::Gateway, d));
            (req, rep)
        }
        (GatewayFromPod, Dest::Node(d)) => {
            let mut req = vec![at(HopKind::PodLink, s), at(HopKind::Bridge, s)];
            let mut rep = vec![at(HopKind::HostOut, d)];
            if s != d {
                req.push(at(HopKind::ForwardOut, s));
                tunnel(&mut req, s, d);
                tunnel(&mut rep, d, s);
                rep.push(at(HopKind::ForwardIn, s));
            }
            req.push(at(
                if s == d {
                    HopKind::BridgeIn
                } else {
                    HopKind::OverlayIn
                },
                d,
            ));
            req.push(at(HopKind::Gateway, d));
            rep.push(at(HopKind::Bridge, s));
            rep.push(at(HopKind::PodLink, s));
            (req, rep)
        }
        (PodToPod | PodToPodFullSize | PodToPodFragmented, Dest::Node(d)) => (
            pod_leg(s, d, at(HopKind::PodLink, d)),
            pod_leg_back(d, s, at(HopKind::PodLink, d)),
        ),
        (DnsPod, Dest::Target { id, node: d }) => {
            let far = Hop {
                kind: HopKind::Endpoint,
                site: Site::Target(id),
            };
            (pod_leg(s, d, far), pod_leg_back(d, s, far))
        }
        (CorednsMetrics, Dest::Target { id, node: d }) => {
            let far = Hop {
                kind: HopKind::Endpoint,
                site: Site::Target(id),
            };
            let mut req = vec![at(HopKind::HostOut, s)];
            let mut rep = vec![far, at(HopKind::Bridge, d)];
            if s != d {
                tunnel(&mut req, s, d);
                req.push(at(HopKind::ForwardIn, d));
                rep.push(at(HopKind::ForwardOut, d));
                tunnel(&mut rep, d, s);
            }
            req.push(at(HopKind::Bridge, d));
            req.push(far);
            rep.push(at(
                if s == d {
                    HopKind::BridgeIn
                } else {
                    HopKind::OverlayIn
                },
                s,
            ));
            (req, rep)
        }
        (DnsService, Dest::Service) => {
            balanced = true;
            (
                vec![
                    at(HopKind::PodLink, s),
                    at(HopKind::Bridge, s),
                    at(HopKind::ServiceNat, s),
                ],
                vec![at(HopKind::Bridge, s), at(HopKind::PodLink, s)],
            )
        }
        // A NodePort or an ingress from a host: the entry node's stack, its translation,
        // then a backend anywhere.
        (Nodeport | Ingress, Dest::Node(d) | Dest::Target { node: d, .. }) => {
            balanced = true;
            let entry = service_entry(dest, d);
            let mut req = vec![at(HopKind::HostOut, s)];
            let mut rep = vec![];
            if s != d {
                req.push(Hop::pair(HopKind::Wire, s, d));
                rep.push(Hop::pair(HopKind::Wire, d, s));
            }
            req.push(at(HopKind::HostIn, d));
            req.push(entry);
            rep.push(at(HopKind::HostIn, s));
            (req, rep)
        }
        // From a pod: the source node forwards (and masquerades) the request out first.
        (NodeportFromPod | IngressFromPod, Dest::Node(d) | Dest::Target { node: d, .. }) => {
            balanced = true;
            let entry = service_entry(dest, d);
            let mut req = vec![at(HopKind::PodLink, s), at(HopKind::Bridge, s)];
            let mut rep = vec![];
            if s != d {
                req.push(at(HopKind::ForwardOut, s));
                req.push(Hop::pair(HopKind::Wire, s, d));
                req.push(at(HopKind::HostIn, d));
                rep.push(Hop::pair(HopKind::Wire, d, s));
                rep.push(at(HopKind::ForwardIn, s));
            } else {
                req.push(at(HopKind::BridgeIn, d));
            }
            req.push(entry);
            rep.push(at(HopKind::Bridge, s));
            rep.push(at(HopKind::PodLink, s));
            (req, rep)
        }
        _ => return None,
    };
    let backend_origin = match (layer, dest) {
        (Nodeport, Dest::Node(d)) if d == s => Some(d),
        (Ingress | IngressFromPod, Dest::Target { node, .. }) => Some(node),
        _ => None,
    };
    let (request_to_node, reply_to_node) = match layer {
        Underlay | UnderlayFullSize | GatewayFromHost | Nodeport | Ingress => (true, true),
        GatewayFromPod | NodeportFromPod | IngressFromPod => (true, false),
        CorednsMetrics => (false, true),
        _ => (false, false),
    };
    Some(Path {
        request,
        reply,
        scope,
        balanced,
        request_to_node,
        reply_to_node,
        backend_origin,
    })
}

/// The path a pod agent's own traffic takes to its node's relay (TCP to the node's
/// address, over the bridge): when it is cut, the pod agent cannot report, and what its
/// probes saw is never known.
pub fn relay_path(x: usize) -> Path {
    let at = Hop::at;
    Path {
        request: vec![
            at(HopKind::PodLink, x),
            at(HopKind::Bridge, x),
            at(HopKind::BridgeIn, x),
        ],
        reply: vec![
            at(HopKind::HostOut, x),
            at(HopKind::Bridge, x),
            at(HopKind::PodLink, x),
        ],
        scope: Scope {
            proto: Proto::Tcp,
            port: None,
            size: Size::Small,
        },
        balanced: false,
        request_to_node: true,
        reply_to_node: false,
        backend_origin: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Ports = Ports { service: 30080 };

    fn hop(kind: HopKind, x: usize) -> Hop {
        Hop::at(kind, x)
    }

    #[test]
    fn pod_to_pod_crosses_both_nodes_forwarding_and_the_tunnel_both_ways() {
        let p = path(Layer::PodToPod, 0, Dest::Node(1), P).expect("path");
        for h in [
            hop(HopKind::ForwardOut, 0),
            hop(HopKind::ForwardIn, 1),
            hop(HopKind::ForwardOut, 1),
            hop(HopKind::ForwardIn, 0),
            hop(HopKind::Encap, 0),
            hop(HopKind::Decap, 1),
            hop(HopKind::Encap, 1),
            hop(HopKind::Decap, 0),
            Hop::pair(HopKind::OverlayRoute, 0, 1),
            Hop::pair(HopKind::OverlayRoute, 1, 0),
        ] {
            assert!(p.crosses(h), "{h:?}");
        }
        // It is forwarded, never delivered to either node.
        assert!(!p.crosses(hop(HopKind::OverlayIn, 1)));
        assert!(!p.crosses(hop(HopKind::HostIn, 1)));
        assert_eq!(p.scope.proto, Proto::Icmp);
        assert!(!p.balanced);
        // On the wire it is the overlay's UDP, whatever it carries.
        let wire = Hop::pair(HopKind::Wire, 0, 1);
        assert_eq!(p.scope_at(wire, 8472).proto, Proto::Udp);
        assert_eq!(
            p.scope_at(hop(HopKind::ForwardIn, 1), 8472).proto,
            Proto::Icmp
        );
        let under = path(Layer::Underlay, 0, Dest::Node(1), P).expect("path");
        assert_eq!(under.scope_at(wire, 8472).proto, Proto::Icmp);
        // A DNS reply is not to port 53; its encapsulation still is to the overlay's.
        let dns = path(Layer::DnsPod, 0, Dest::Target { id: 1, node: 1 }, P).expect("path");
        let reply: Vec<(Hop, Scope)> = dns.crossings(8472).skip(dns.request.len()).collect();
        assert!(
            reply
                .iter()
                .any(|(h, s)| h.kind == HopKind::ForwardIn && s.port.is_none())
        );
        assert!(
            reply
                .iter()
                .any(|(h, s)| h.kind == HopKind::Wire && s.port == Some(8472))
        );
        assert!(
            dns.crossings(8472)
                .any(|(h, s)| h.kind == HopKind::ForwardIn && s.port == Some(53))
        );
    }

    #[test]
    fn a_gateway_is_delivered_locally_and_the_far_node_forwards_nothing() {
        let p = path(Layer::GatewayFromPod, 0, Dest::Node(1), P).expect("path");
        assert!(p.crosses(hop(HopKind::OverlayIn, 1)));
        assert!(p.crosses(hop(HopKind::Gateway, 1)));
        assert!(p.crosses(hop(HopKind::ForwardOut, 0)));
        assert!(!p.crosses(hop(HopKind::ForwardIn, 1)));
        assert!(!p.crosses(hop(HopKind::ForwardOut, 1)));
        // One's own gateway: bridge and local delivery, no tunnel.
        let own = path(Layer::GatewayFromPod, 2, Dest::Node(2), P).expect("path");
        assert!(own.crosses(hop(HopKind::Gateway, 2)));
        assert!(own.crosses(hop(HopKind::BridgeIn, 2)));
        assert!(!own.crosses(hop(HopKind::OverlayIn, 2)));
        assert!(!own.crosses(hop(HopKind::Encap, 2)));
        assert!(!own.crosses(hop(HopKind::ForwardOut, 2)));
    }

    #[test]
    fn a_coredns_pod_on_the_same_node_is_reached_over_the_bridge_alone() {
        let d = Dest::Target { id: 7, node: 1 };
        let local = path(Layer::DnsPod, 1, d, P).expect("path");
        assert_eq!(local.scope.port, Some(53));
        assert!(!local.crosses(hop(HopKind::ForwardIn, 1)));
        assert!(local.crosses(Hop {
            kind: HopKind::Endpoint,
            site: Site::Target(7)
        }));
        let remote = path(Layer::DnsPod, 0, d, P).expect("path");
        assert!(remote.crosses(hop(HopKind::ForwardIn, 1)));
        assert!(remote.crosses(hop(HopKind::Decap, 1)));
    }

    #[test]
    fn a_route_toward_pods_is_tested_only_by_legs_addressed_to_pods() {
        // A host's metrics scrape is answered to the host's own address: only its
        // request travels to a pod.
        let scrape =
            path(Layer::CorednsMetrics, 0, Dest::Target { id: 1, node: 1 }, P).expect("path");
        assert_eq!(scrape.crossings_to_pods(8472).count(), scrape.request.len());
        let gw = path(Layer::GatewayFromHost, 0, Dest::Node(1), P).expect("path");
        assert_eq!(gw.crossings_to_pods(8472).count(), 0);
        let pods = path(Layer::PodToPod, 0, Dest::Node(1), P).expect("path");
        assert_eq!(
            pods.crossings_to_pods(8472).count(),
            pods.request.len() + pods.reply.len()
        );
    }

    #[test]
    fn services_fix_the_entry_and_leave_the_backend_open() {
        let np = path(Layer::Nodeport, 0, Dest::Node(2), P).expect("path");
        assert!(np.balanced);
        assert_eq!(np.scope.port, Some(30080));
        assert!(np.crosses(hop(HopKind::ServiceNat, 2)));
        assert!(np.crosses(hop(HopKind::HostIn, 2)));
        let dns = path(Layer::DnsService, 3, Dest::Service, P).expect("path");
        assert!(dns.crosses(hop(HopKind::ServiceNat, 3)));
        assert!(path(Layer::DnsService, 3, Dest::Node(1), P).is_none());
    }
}
