//! Kubernetes discovery, the pure half: from the API's objects to a [`Topology`].
//!
//! The watching half (kube-rs reflectors, one watch per resource type for the whole
//! cluster) feeds [`ClusterObjects`]; [`build`] turns them into the same topology the
//! inventory file gives, with each node's lifecycle state, and notes on what it could not
//! use (a node without a pod CIDR, a CoreDNS pod without an IP).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use meshprobe_core::inventory::{
    Cluster, CoreDnsPod, IngressPath, Node as TopoNode, NodePortService, NodeState, Overlay,
    OverlayKind,
};
use meshprobe_core::{NodeName, PodCidr, Topology};

/// Services and Ingresses carrying this label, set to "true", are probed.
pub const OPT_IN_LABEL: &str = "meshprobe.io/probe";
/// An annotation naming the HTTP path to probe (default `/`).
pub const PATH_ANNOTATION: &str = "meshprobe.io/path";
/// flannel's node annotation holding the VXLAN backend's data (`VtepMAC`).
pub const FLANNEL_BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// The label selector of meshprobe's own pods (deploy/): one watch serves both the pod
/// agents' IPs and the binding of agents' tokens to their nodes ([`crate::kube_auth`]).
pub const MESHPROBE_PODS_SELECTOR: &str = "app.kubernetes.io/name=meshprobe";
/// The label that tells meshprobe's pods apart.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// [`COMPONENT_LABEL`] of the pod-network agents (deploy/agent-pod.yaml).
pub const AGENT_POD: &str = "agent-pod";
/// [`COMPONENT_LABEL`] of the host-network agents (deploy/agent-host.yaml).
pub const AGENT_HOST: &str = "agent-host";

/// The pod's [`COMPONENT_LABEL`].
pub fn component(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(COMPONENT_LABEL))
        .map(String::as_str)
}

/// What the watches hold at one moment.
#[derive(Clone, Debug, Default)]
pub struct ClusterObjects {
    /// Every node.
    pub nodes: Vec<Node>,
    /// CoreDNS pods (`k8s-app=kube-dns` in kube-system).
    pub coredns: Vec<Pod>,
    /// The kube-dns Service and the opted-in NodePort Services.
    pub services: Vec<Service>,
    /// The opted-in Ingresses.
    pub ingresses: Vec<Ingress>,
    /// flannel's `kube-flannel-cfg`, if flannel is installed.
    pub flannel: Option<ConfigMap>,
}

/// Cluster settings discovery cannot read from the API.
#[derive(Clone, Debug)]
pub struct DiscoverySettings {
    /// A label for people.
    pub cluster_name: String,
    /// The DNS suffix of services (kubelet's `clusterDomain`), default `cluster.local`.
    pub cluster_domain: String,
    /// The overlay MTU when flannel does not say (default 1450).
    pub overlay_mtu: u16,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            cluster_name: "kubernetes".into(),
            cluster_domain: "cluster.local".into(),
            overlay_mtu: 1450,
        }
    }
}

/// The topology, and what was left out and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Discovered {
    /// The topology to plan from.
    pub topology: Topology,
    /// Objects that could not be used, in words.
    pub notes: Vec<String>,
}

fn opted_in(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(OPT_IN_LABEL))
        .is_some_and(|v| v == "true")
}

/// The probe-pod IP of every node whose pod-network agent (of `pods`, the others are
/// skipped) is running with an IP: the
/// targets of the pod-to-pod layers. A pod that is pending, has no IP yet, is being
/// deleted or has finished is left out, so peers report its node's pod cells `unknown`
/// with the reason rather than `fail`. With two agents on one node (a rolling update), the
/// newer one wins.
pub fn agent_pod_ips<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeMap<NodeName, Ipv4Addr> {
    let mut best: BTreeMap<NodeName, (Option<k8s_openapi::jiff::Timestamp>, Ipv4Addr)> =
        BTreeMap::new();
    for p in pods {
        if component(p) != Some(AGENT_POD) {
            continue;
        }
        let status = p.status.as_ref();
        if p.metadata.deletion_timestamp.is_some()
            || status.and_then(|s| s.phase.as_deref()) != Some("Running")
        {
            continue;
        }
        let Some(ip) = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|i| i.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let Some(node) = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .and_then(|n| NodeName::new(n).ok())
        else {
            continue;
        };
        // A pod without a creation time counts as the oldest.
        let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        match best.get(&node) {
            Some((c, _)) if *c > created => {}
            _ => {
                best.insert(node, (created, ip));
            }
        }
    }
    best.into_iter().map(|(n, (_, ip))| (n, ip)).collect()
}

/// Builds the topology. Nodes are sorted by name, so the result does not depend on the
/// order the watches delivered them in.
pub fn build(objs: &ClusterObjects, s: &DiscoverySettings) -> Discovered {
    let mut notes = Vec::new();
    let mut nodes: Vec<TopoNode> = Vec::new();
    for n in &objs.nodes {
        let Some(name) = n.metadata.name.clone() else {
            continue;
        };
        let Ok(node_name) = NodeName::new(name.clone()) else {
            notes.push(format!("node {name:?}: not a valid node name"));
            continue;
        };
        let status = n.status.as_ref();
        let ip = status
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| {
                a.iter()
                    .find(|a| a.type_ == "InternalIP" && a.address.parse::<Ipv4Addr>().is_ok())
            })
            .and_then(|a| a.address.parse::<Ipv4Addr>().ok());
        let spec = n.spec.as_ref();
        let cidr = spec
            .and_then(|sp| {
                sp.pod_cidrs
                    .as_ref()
                    .and_then(|c| c.iter().find(|c| !c.contains(':')).cloned())
                    .or(sp.pod_cidr.clone())
            })
            .and_then(|c| PodCidr::parse(&c).ok());
        let (Some(ip), Some(cidr)) = (ip, cidr) else {
            notes.push(format!(
                "node {name}: no IPv4 InternalIP or pod CIDR yet; not probed"
            ));
            continue;
        };
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let state = if n.metadata.deletion_timestamp.is_some() {
            NodeState::Deleting
        } else if spec.and_then(|sp| sp.unschedulable).unwrap_or(false) {
            NodeState::Cordoned
        } else if !ready {
            NodeState::NotReady
        } else {
            NodeState::Ready
        };
        // flannel's annotation: {"VNI":1,"VtepMAC":"0e:..."} (vxlan backend only).
        let vtep_mac = n
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(FLANNEL_BACKEND_DATA))
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .and_then(|v| v["VtepMAC"].as_str().map(str::to_owned))
            .and_then(|m| match meshprobe_core::inventory::parse_mac(&m) {
                Ok(m) => Some(m),
                Err(e) => {
                    notes.push(format!("node {name}: {FLANNEL_BACKEND_DATA}: {e}"));
                    None
                }
            });
        nodes.push(TopoNode {
            name: node_name,
            internal_ip: ip,
            pod_cidr: cidr,
            gateway: cidr.first_host(),
            state,
            vtep_mac,
        });
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));

    let mut core_dns = Vec::new();
    for p in &objs.coredns {
        let name = p.metadata.name.clone().unwrap_or_default();
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|i| i.parse::<Ipv4Addr>().ok());
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .and_then(|n| NodeName::new(n).ok());
        match (ip, node) {
            (Some(ip), Some(node)) if nodes.iter().any(|n| n.name == node) => {
                core_dns.push(CoreDnsPod { name, node, ip })
            }
            _ => notes.push(format!("CoreDNS pod {name}: no IP or node yet; not probed")),
        }
    }
    core_dns.sort_by(|a, b| a.name.cmp(&b.name));

    let mut dns_service_ip = None;
    let mut node_ports = Vec::new();
    for svc in &objs.services {
        let meta = &svc.metadata;
        let spec = svc.spec.as_ref();
        if meta.name.as_deref() == Some("kube-dns")
            && meta.namespace.as_deref() == Some("kube-system")
        {
            dns_service_ip = spec
                .and_then(|s| s.cluster_ip.as_deref())
                .and_then(|i| i.parse().ok());
            continue;
        }
        if !opted_in(meta.labels.as_ref()) {
            continue;
        }
        let path = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(PATH_ANNOTATION))
            .cloned()
            .unwrap_or_else(|| "/".into());
        for port in spec.and_then(|s| s.ports.as_ref()).into_iter().flatten() {
            if let Some(np) = port.node_port {
                let base = meta.name.clone().unwrap_or_default();
                let name = match &port.name {
                    Some(p) if !p.is_empty() => format!("{base}-{p}"),
                    _ => base,
                };
                node_ports.push(NodePortService {
                    name,
                    port: np as u16,
                    path: path.clone(),
                });
            }
        }
    }

    let mut ingresses = Vec::new();
    for ing in &objs.ingresses {
        if !opted_in(ing.metadata.labels.as_ref()) {
            continue;
        }
        let name = ing.metadata.name.clone().unwrap_or_default();
        let address = ing
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .and_then(|i| {
                i.iter()
                    .find_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok())
            });
        let Some(address) = address else {
            notes.push(format!(
                "ingress {name}: no IPv4 address in its status yet; not probed"
            ));
            continue;
        };
        for rule in ing
            .spec
            .as_ref()
            .and_then(|s| s.rules.as_ref())
            .into_iter()
            .flatten()
        {
            let Some(host) = rule.host.clone() else {
                continue;
            };
            let path = rule
                .http
                .as_ref()
                .and_then(|h| h.paths.first())
                .and_then(|p| p.path.clone())
                .unwrap_or_else(|| "/".into());
            ingresses.push(IngressPath {
                host,
                address,
                port: 80,
                path,
            });
        }
    }

    let mut overlay = Overlay {
        kind: OverlayKind::Vxlan,
        port: 8472,
        vni: 1,
        interface: "flannel.1".into(),
        mtu: s.overlay_mtu,
    };
    if let Some(cm) = &objs.flannel {
        match cm
            .data
            .as_ref()
            .and_then(|d| d.get("net-conf.json"))
            .map(|t| serde_json::from_str::<serde_json::Value>(t))
        {
            Some(Ok(v)) => {
                let backend = &v["Backend"];
                match backend["Type"].as_str().unwrap_or("vxlan") {
                    "vxlan" => {
                        overlay.port = backend["Port"].as_u64().map_or(8472, |p| p as u16);
                        overlay.vni = backend["VNI"].as_u64().map_or(1, |p| p as u32);
                        overlay.interface = format!("flannel.{}", overlay.vni);
                    }
                    "host-gw" => {
                        overlay.kind = OverlayKind::HostGw;
                        overlay.mtu = s.overlay_mtu + 50;
                    }
                    other => notes.push(format!("flannel backend {other:?}: probed as VXLAN")),
                }
            }
            Some(Err(e)) => notes.push(format!("kube-flannel-cfg net-conf.json is not JSON: {e}")),
            None => notes.push("kube-flannel-cfg has no net-conf.json".into()),
        }
    }

    Discovered {
        topology: Topology {
            cluster: Cluster {
                name: s.cluster_name.clone(),
                cluster_domain: s.cluster_domain.clone(),
                dns_service_ip,
                overlay,
            },
            nodes,
            core_dns,
            node_ports,
            ingresses,
            index: Default::default(),
        },
        notes,
    }
}
