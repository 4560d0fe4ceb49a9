//! The matrix layers: one per kind of path a packet takes. Their names are part of the
//! JSON contract (`layers.<name>`), so they never change once published.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::AgentKind;

/// One layer of the connectivity matrix. Rows are always source nodes; columns are
/// destination nodes, or named targets where [`Layer::columns_are_nodes`] is false.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layer {
    /// Host agent → every other node's InternalIP, small ICMP echo. Pure underlay.
    Underlay,
    /// Host agent → every other node's InternalIP, ICMP filling the MTU the overlay assumes
    /// of the underlay (overlay MTU + encapsulation), DF set.
    UnderlayFullSize,
    /// Host agent → every node's pod-CIDR gateway (`cni0`), small ICMP. Crosses the tunnel
    /// for remote nodes, but no node forwards.
    GatewayFromHost,
    /// Pod agent → every node's pod-CIDR gateway, small ICMP. The source node forwards.
    GatewayFromPod,
    /// Pod agent → every other node's probe pod, small ICMP. Both nodes forward.
    PodToPod,
    /// Pod agent → every other node's probe pod, ICMP filling the overlay MTU, DF set.
    PodToPodFullSize,
    /// Pod agent → every other node's probe pod, ICMP of twice the overlay MTU with DF
    /// clear: the pod's kernel fragments it and the peer reassembles it. Fails where
    /// fragments are dropped, or where a node sends more than the fabric carries.
    PodToPodFragmented,
    /// Pod agent → the kube-dns service IP: cluster names resolved through kube-proxy.
    DnsService,
    /// Pod agent → each CoreDNS pod IP directly.
    DnsPod,
    /// Host agent → each CoreDNS pod's `:9153/metrics`, parsed as Prometheus text.
    CorednsMetrics,
    /// Host agent → every node's InternalIP on each NodePort.
    Nodeport,
    /// Host agent → each ingress (address, port, Host header, path).
    Ingress,
    /// Pod agent → every node's InternalIP on each NodePort (the source node forwards and
    /// masquerades).
    NodeportFromPod,
    /// Pod agent → each ingress.
    IngressFromPod,
}

impl Layer {
    /// Every layer, in the order people read them: from the wire up.
    pub const ALL: [Layer; 14] = [
        Layer::Underlay,
        Layer::UnderlayFullSize,
        Layer::GatewayFromHost,
        Layer::GatewayFromPod,
        Layer::PodToPod,
        Layer::PodToPodFullSize,
        Layer::PodToPodFragmented,
        Layer::DnsService,
        Layer::DnsPod,
        Layer::CorednsMetrics,
        Layer::Nodeport,
        Layer::Ingress,
        Layer::NodeportFromPod,
        Layer::IngressFromPod,
    ];

    /// The SLO group the layer counts toward (a fixed set: `node-network`, `pod-network`,
    /// `dns`, `services`), each with its own objective (docs/slo.md).
    pub fn slo_group(self) -> &'static str {
        match self {
            Layer::Underlay | Layer::UnderlayFullSize => "node-network",
            Layer::GatewayFromHost
            | Layer::GatewayFromPod
            | Layer::PodToPod
            | Layer::PodToPodFullSize
            | Layer::PodToPodFragmented => "pod-network",
            Layer::DnsService | Layer::DnsPod | Layer::CorednsMetrics => "dns",
            Layer::Nodeport | Layer::Ingress | Layer::NodeportFromPod | Layer::IngressFromPod => {
                "services"
            }
        }
    }

    /// The ICMP echo layers: node to node, where loss is measured over many probes.
    pub const ICMP: [Layer; 7] = [
        Layer::Underlay,
        Layer::UnderlayFullSize,
        Layer::GatewayFromHost,
        Layer::GatewayFromPod,
        Layer::PodToPod,
        Layer::PodToPodFullSize,
        Layer::PodToPodFragmented,
    ];

    /// The name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Underlay => "underlay",
            Layer::UnderlayFullSize => "underlay-full-size",
            Layer::GatewayFromHost => "gateway-from-host",
            Layer::GatewayFromPod => "gateway-from-pod",
            Layer::PodToPod => "pod-to-pod",
            Layer::PodToPodFullSize => "pod-to-pod-full-size",
            Layer::PodToPodFragmented => "pod-to-pod-fragmented",
            Layer::DnsService => "dns-service",
            Layer::DnsPod => "dns-pod",
            Layer::CorednsMetrics => "coredns-metrics",
            Layer::Nodeport => "nodeport",
            Layer::Ingress => "ingress",
            Layer::NodeportFromPod => "nodeport-from-pod",
            Layer::IngressFromPod => "ingress-from-pod",
        }
    }

    /// Which agent probes this layer.
    pub fn vantage(self) -> AgentKind {
        match self {
            Layer::Underlay
            | Layer::UnderlayFullSize
            | Layer::GatewayFromHost
            | Layer::CorednsMetrics
            | Layer::Nodeport
            | Layer::Ingress => AgentKind::Host,
            Layer::GatewayFromPod
            | Layer::PodToPod
            | Layer::PodToPodFullSize
            | Layer::PodToPodFragmented
            | Layer::DnsService
            | Layer::DnsPod
            | Layer::NodeportFromPod
            | Layer::IngressFromPod => AgentKind::Pod,
        }
    }

    /// Whether the columns are node names (a node × node matrix).
    pub fn columns_are_nodes(self) -> bool {
        !matches!(
            self,
            Layer::DnsService
                | Layer::DnsPod
                | Layer::CorednsMetrics
                | Layer::Ingress
                | Layer::IngressFromPod
        )
    }

    /// The loss at which a cell of this layer fails, given the threshold for one packet
    /// each way. A fragmented echo is two fragments each way and is lost when any of its
    /// four packets is, so it fails at the loss four packets at `base` give
    /// (1 - (1 - base)^4: 68% for 25%); 1% loss must not make it fail.
    pub fn fail_loss_pct(self, base: f64) -> f64 {
        match self {
            Layer::PodToPodFragmented => {
                let keep = 1.0 - (base / 100.0).clamp(0.0, 1.0);
                (1.0 - keep.powi(4)) * 100.0
            }
            _ => base,
        }
    }

    /// One line for table headings.
    pub fn describe(self) -> &'static str {
        match self {
            Layer::Underlay => "host -> node IP (ICMP, small)",
            Layer::UnderlayFullSize => "host -> node IP (ICMP, overlay MTU + encapsulation, DF)",
            Layer::GatewayFromHost => "host -> pod-CIDR gateway (ICMP, through the tunnel)",
            Layer::GatewayFromPod => "pod -> pod-CIDR gateway (ICMP, forwarded by the source node)",
            Layer::PodToPod => "pod -> peer probe pod (ICMP, small)",
            Layer::PodToPodFullSize => "pod -> peer probe pod (ICMP, overlay MTU, DF)",
            Layer::PodToPodFragmented => "pod -> peer probe pod (ICMP, 2x overlay MTU, fragmented)",
            Layer::DnsService => "pod -> kube-dns service IP (DNS)",
            Layer::DnsPod => "pod -> each CoreDNS pod IP (DNS)",
            Layer::CorednsMetrics => "host -> CoreDNS :9153/metrics (HTTP)",
            Layer::Nodeport => "host -> NodePort on every node IP (HTTP)",
            Layer::Ingress => "host -> ingress (HTTP with Host header)",
            Layer::NodeportFromPod => "pod -> NodePort on every node IP (HTTP)",
            Layer::IngressFromPod => "pod -> ingress (HTTP with Host header)",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Layer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Layer::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("unknown layer {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_layers_are_the_node_to_node_echo_layers() {
        assert!(Layer::ICMP.iter().all(
            |l| l.columns_are_nodes() && !matches!(l, Layer::Nodeport | Layer::NodeportFromPod)
        ));
        assert_eq!(
            Layer::ICMP[..],
            Layer::ALL[..7],
            "from the wire up, as ALL lists them"
        );
    }

    #[test]
    fn a_fragmented_echo_fails_at_the_loss_four_packets_give() {
        assert!((Layer::PodToPodFragmented.fail_loss_pct(25.0) - 68.359_375).abs() < 1e-9);
        assert_eq!(Layer::PodToPod.fail_loss_pct(25.0), 25.0);
    }

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for layer in Layer::ALL {
            let json = serde_json::to_string(&layer).expect("serialise");
            assert_eq!(json, format!("\"{}\"", layer.as_str()));
            assert_eq!(layer.as_str().parse::<Layer>(), Ok(layer));
        }
    }
}
