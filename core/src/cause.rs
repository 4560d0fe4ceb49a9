//! What a finding says went wrong ([`Cause`]) and which way ([`Direction`]). Their ids are
//! the contract's (CONTRACT §3 and `docs/contract-additions.md`), so they never change once
//! published.
//!
//! Both read any string: a cause or direction this build does not know (from a newer
//! coordinator) is kept as [`Cause::Other`] / [`Direction::Other`] and printed as sent,
//! so an older `check` still reads a newer coordinator's report.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! ids {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $id:literal, )* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// An id this build does not know, kept as it was sent.
            Other(String),
        }

        impl $name {
            /// Every id this build knows, in the order of the tables.
            pub const KNOWN: &'static [$name] = &[ $( $name::$variant, )* ];

            /// The contract's id.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $id, )*
                    $name::Other(s) => s,
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match s.as_str() {
                    $( $id => $name::$variant, )*
                    _ => $name::Other(s),
                }
            }
        }

        impl From<$name> for String {
            fn from(c: $name) -> String {
                match c {
                    $name::Other(s) => s,
                    known => known.as_str().to_owned(),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

ids! {
    /// A finding's cause id.
    pub enum Cause {
        /// The node cannot be reached on its node IP, by ICMP, TCP or UDP.
        NodeUnreachable = "node-unreachable",
        /// Only ICMP to the node is lost; TCP or UDP to the same address works.
        IcmpBlocked = "icmp-blocked",
        /// A node's agent does not report.
        AgentMissing = "agent-missing",
        /// A node's prober sees its peers fail while they all reach it.
        AgentDegraded = "agent-degraded",
        /// Encapsulated traffic is dropped into or out of the node.
        VxlanBlocked = "vxlan-blocked",
        /// The node's VXLAN device uses a port or VNI unlike the cluster's.
        VxlanConfigMismatch = "vxlan-config-mismatch",
        /// The node does not forward (`net.ipv4.ip_forward = 0`).
        IpForwardDisabled = "ip-forward-disabled",
        /// The node's firewall rejects or drops forwarded pod traffic.
        ForwardRejected = "forward-rejected",
        /// The node's overlay state lacks a peer (route, neighbour or fdb entry).
        OverlayPeerMissing = "overlay-peer-missing",
        /// The node's pod bridge lost its gateway address: its pods have no gateway, and
        /// traffic for them arrives with no route.
        PodGatewayMissing = "pod-gateway-missing",
        /// The node drops traffic from the overlay or its own pods to its own addresses
        /// (INPUT: its pod gateway, its overlay address), while it forwards pod traffic
        /// through the same tunnel.
        HostInputBlocked = "host-input-blocked",
        /// The node's kernel refuses its own sends (EPERM on the host network: a DROP or
        /// REJECT in its OUTPUT chain, a full conntrack table), so its probes never leave
        /// it, while traffic to it and through it passes.
        HostOutputBlocked = "host-output-blocked",
        /// Another node holds addresses inside the node's pod CIDR, and peers' overlay
        /// entries for that range resolve to it: the other node takes the pods' traffic
        /// (a stale bridge address from before the node was re-registered, a duplicate
        /// flannel lease, an address added by hand).
        PodCidrConflict = "pod-cidr-conflict",
        /// A device every pod path on the node crosses is down or has no carrier (the
        /// pods' bridge), while the node's own network works.
        PodDeviceDown = "pod-device-down",
        /// Bridged traffic skips iptables on the node (`bridge-nf-call-iptables = 0`,
        /// br_netfilter not loaded): its pods' service requests that land on a backend on
        /// its own bridge get replies kube-proxy never un-NATs, whatever the service.
        BridgeNetfilterOff = "bridge-netfilter-off",
        /// Small packets pass, full-size ones are lost.
        MtuMismatch = "mtu-mismatch",
        /// A node or path loses a fraction of packets.
        PacketLoss = "packet-loss",
        /// A CoreDNS pod does not answer DNS.
        DnsPodDown = "dns-pod-down",
        /// The kube-dns service IP does not answer while the CoreDNS pods do.
        DnsServiceBroken = "dns-service-broken",
        /// A CoreDNS pod's `:9153/metrics` cannot be fetched.
        MetricsUnreachable = "metrics-unreachable",
        /// A NodePort does not answer on a node.
        NodeportBroken = "nodeport-broken",
        /// An ingress path does not answer.
        IngressBroken = "ingress-broken",
        /// A load-balanced service (a NodePort, an ingress) fails a share of requests from
        /// many nodes and through many nodes, while no node's own paths fail: one of its
        /// backends does not answer.
        ServiceBackendDown = "service-backend-down",
        /// Failing cells no rule explains, localised as far as the probes allow.
        Unexplained = "unexplained",
    }
}

ids! {
    /// Which way a fault acts, seen from the node at fault.
    pub enum Direction {
        /// Traffic into the node.
        Inbound = "inbound",
        /// Traffic out of the node.
        Outbound = "outbound",
        /// Both ways.
        Both = "both",
        /// Not a path fault (a process, a service).
        None = "none",
        /// The probes cannot tell; a packet capture can.
        Unknown = "unknown",
    }
}

impl Direction {
    /// The direction of two observations: in, out, or both.
    pub fn of(inbound: bool, outbound: bool) -> Self {
        match (inbound, outbound) {
            (true, true) => Direction::Both,
            (true, false) => Direction::Inbound,
            (false, true) => Direction::Outbound,
            (false, false) => Direction::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ones_are_kept() {
        for c in Cause::KNOWN {
            let json = serde_json::to_string(c).expect("serialises");
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            let back: Cause = serde_json::from_str(&json).expect("parses");
            assert_eq!(&back, c);
        }
        let newer: Cause = serde_json::from_str("\"bgp-session-down\"").expect("parses");
        assert_eq!(newer, Cause::Other("bgp-session-down".into()));
        assert_eq!(
            serde_json::to_string(&newer).expect("serialises"),
            "\"bgp-session-down\""
        );
        let d: Direction = serde_json::from_str("\"inbound\"").expect("parses");
        assert_eq!(d, Direction::Inbound);
        assert_eq!(Direction::of(true, true), Direction::Both);
    }
}
