//! The lab's address plan: a pure function of the lab's name and node count.

use std::net::Ipv4Addr;

use meshprobe_core::Topology;

/// Underlay: 192.168.77.0/24 (nodes from .11, the control namespace at .2).
pub const UNDERLAY_PREFIX: [u8; 3] = [192, 168, 77];
/// The cluster's pod network, 10.42.0.0/16, one /24 per node.
pub const CLUSTER_CIDR: &str = "10.42.0.0/16";
/// The service network.
pub const SERVICE_CIDR: &str = "10.43.0.0/16";
/// The `kubernetes` service IP.
pub const KUBERNETES_SVC: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 1);
/// The kube-dns service IP.
pub const KUBE_DNS_SVC: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
/// The web service's ClusterIP.
pub const WEB_SVC: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 80);
/// The web NodePort.
pub const NODE_PORT: u16 = 30080;
/// Port the web pods listen on.
pub const WEB_PORT: u16 = 8080;
/// The ingress's Host name.
pub const INGRESS_HOST: &str = "web.lab.local";
/// Port the host agents' relays listen on.
pub const RELAY_PORT: u16 = 7071;
/// Port the coordinator listens on.
pub const COORDINATOR_PORT: u16 = 7070;
/// VXLAN port and VNI, as flannel uses them.
pub const VXLAN_PORT: u16 = 8472;
/// Overlay MTU (flannel's 1500 - 50).
pub const OVERLAY_MTU: u16 = 1450;
/// Most nodes a lab may have (the underlay is one /24).
pub const MAX_NODES: usize = 200;

/// The kinds of pod the lab runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodKind {
    /// The pod-network probe agent (every node).
    Probe,
    /// The web app (every node).
    Web,
    /// CoreDNS (nodes 1 and 2).
    Dns,
}

impl PodKind {
    /// Suffix of the pod's namespace and host-side veth.
    pub fn suffix(self) -> &'static str {
        match self {
            PodKind::Probe => "probe",
            PodKind::Web => "web",
            PodKind::Dns => "dns",
        }
    }
    /// Last octet of the pod's IP in its node's /24.
    pub fn host_octet(self) -> u8 {
        match self {
            PodKind::Probe => 10,
            PodKind::Web => 20,
            PodKind::Dns => 53,
        }
    }
}

/// One node of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabNode {
    /// 1-based index.
    pub index: usize,
    /// `n1`, `n2`, ...
    pub name: String,
    /// The node's namespace.
    pub ns: String,
    /// InternalIP on the underlay.
    pub ip: Ipv4Addr,
    /// The node's /24 third octet (= index).
    pub subnet: u8,
    /// VTEP MAC of its `flannel.1`.
    pub vtep_mac: String,
    /// The pods it hosts.
    pub pods: Vec<PodKind>,
    /// The name of its CoreDNS pod, if any.
    pub coredns: Option<String>,
}

impl LabNode {
    /// The pod CIDR.
    pub fn pod_cidr(&self) -> String {
        format!("10.42.{}.0/24", self.subnet)
    }
    /// The pod-CIDR gateway (cni0).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 42, self.subnet, 1)
    }
    /// The VTEP address of flannel.1.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 42, self.subnet, 0)
    }
    /// The IP of one of its pods.
    pub fn pod_ip(&self, kind: PodKind) -> Ipv4Addr {
        Ipv4Addr::new(10, 42, self.subnet, kind.host_octet())
    }
    /// The namespace of one of its pods.
    pub fn pod_ns(&self, kind: PodKind) -> String {
        format!("{}-{}", self.ns, kind.suffix())
    }
    /// The node's port on the underlay switch.
    pub fn switch_port(&self) -> String {
        self.name.clone()
    }
}

/// The whole lab's names and addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabPlan {
    /// The lab's unique prefix (every namespace starts with it).
    pub prefix: String,
    /// The nodes.
    pub nodes: Vec<LabNode>,
    /// Index into `nodes` of the ingress node.
    pub ingress_node: usize,
}

impl LabPlan {
    /// Plans a lab of `n` nodes. `prefix` must be a short DNS-ish label.
    pub fn new(prefix: &str, n: usize) -> Result<Self, String> {
        if n == 0 || n > MAX_NODES {
            return Err(format!("a lab has 1 to {MAX_NODES} nodes, not {n}"));
        }
        let valid = !prefix.is_empty()
            && prefix.len() <= 24
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !prefix.starts_with('-');
        if !valid {
            return Err(format!(
                "lab name {prefix:?} must be 1-24 characters of a-z, 0-9 and '-'"
            ));
        }
        let nodes = (1..=n)
            .map(|i| {
                let mut pods = vec![PodKind::Probe, PodKind::Web];
                let coredns = match i {
                    1 => Some("coredns-a".to_owned()),
                    2 => Some("coredns-b".to_owned()),
                    _ => None,
                };
                if coredns.is_some() {
                    pods.push(PodKind::Dns);
                }
                LabNode {
                    index: i,
                    name: format!("n{i}"),
                    ns: format!("{prefix}-n{i}"),
                    ip: Ipv4Addr::new(
                        UNDERLAY_PREFIX[0],
                        UNDERLAY_PREFIX[1],
                        UNDERLAY_PREFIX[2],
                        10 + i as u8,
                    ),
                    subnet: i as u8,
                    vtep_mac: format!("0e:6d:70:00:{:02x}:{:02x}", i >> 8, i & 0xff),
                    pods,
                    coredns,
                }
            })
            .collect();
        Ok(Self {
            prefix: prefix.to_owned(),
            nodes,
            ingress_node: n - 1,
        })
    }

    /// The underlay switch's namespace.
    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.prefix)
    }
    /// The control namespace (where the coordinator runs).
    pub fn ctl_ns(&self) -> String {
        format!("{}-ctl", self.prefix)
    }
    /// The control namespace's underlay address.
    pub fn ctl_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(
            UNDERLAY_PREFIX[0],
            UNDERLAY_PREFIX[1],
            UNDERLAY_PREFIX[2],
            2,
        )
    }
    /// The coordinator's URL, as agents reach it.
    pub fn coordinator_url(&self) -> String {
        format!("https://{}:{COORDINATOR_PORT}", self.ctl_ip())
    }
    /// Every namespace, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.switch_ns(), self.ctl_ns()];
        for n in &self.nodes {
            v.push(n.ns.clone());
            v.extend(n.pods.iter().map(|p| n.pod_ns(*p)));
        }
        v
    }
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&LabNode> {
        self.nodes.iter().find(|n| n.name == name)
    }
    /// The node hosting the CoreDNS pod `name`.
    pub fn coredns_node(&self, name: &str) -> Option<&LabNode> {
        self.nodes
            .iter()
            .find(|n| n.coredns.as_deref() == Some(name))
    }
    /// The CoreDNS pods, in the inventory's order (the datapath model's target ids).
    pub fn coredns_pods(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter_map(|n| n.coredns.as_deref())
            .collect()
    }

    /// Where the lab's targets run, in the datapath model's ids (nodes by position).
    pub fn targets(&self) -> meshprobe_core::catalogue::Targets {
        let ix = |n: &LabNode| {
            self.nodes
                .iter()
                .position(|x| x.name == n.name)
                .unwrap_or(0)
        };
        meshprobe_core::catalogue::Targets {
            dns: self
                .coredns_pods()
                .iter()
                .filter_map(|p| self.coredns_node(p).map(ix))
                .collect(),
            ingress: self.ingress_node,
            node_port: NODE_PORT,
            ingress_port: 80,
            overlay_port: VXLAN_PORT,
        }
    }

    /// The ingress node.
    pub fn ingress(&self) -> &LabNode {
        &self.nodes[self.ingress_node]
    }

    /// Resolves a user's target (`n1`, `n1-probe`, `ctl`, `sw`, or a full namespace name)
    /// to a namespace of this lab.
    pub fn resolve_ns(&self, target: &str) -> Option<String> {
        let full = if target.starts_with(&format!("{}-", self.prefix)) {
            target.to_owned()
        } else {
            format!("{}-{target}", self.prefix)
        };
        self.namespaces().into_iter().find(|ns| *ns == full)
    }

    /// The inventory (CONTRACT §2) describing this lab.
    pub fn topology(&self) -> Topology {
        let mut text = format!(
            "cluster:\n  name: {}\n  clusterDomain: cluster.local\n  dnsServiceIP: {KUBE_DNS_SVC}\n  overlay: {{type: vxlan, port: {VXLAN_PORT}, vni: 1, interface: flannel.1, mtu: {OVERLAY_MTU}}}\nnodes:\n",
            self.prefix
        );
        for n in &self.nodes {
            text += &format!(
                "  - {{name: {}, internalIP: {}, podCIDR: {}, vtepMAC: \"{}\"}}\n",
                n.name,
                n.ip,
                n.pod_cidr(),
                n.vtep_mac
            );
        }
        text += "coreDNS:\n";
        for n in &self.nodes {
            if let Some(c) = &n.coredns {
                text += &format!(
                    "  - {{name: {c}, node: {}, ip: {}}}\n",
                    n.name,
                    n.pod_ip(PodKind::Dns)
                );
            }
        }
        text += &format!(
            "nodePorts:\n  - {{name: web, port: {NODE_PORT}, path: /}}\ningresses:\n  - {{host: {INGRESS_HOST}, address: {}, port: 80, path: /}}\n",
            self.ingress().ip
        );
        // The lab generates this text itself; a failure is a bug in the generator.
        Topology::from_inventory(&text)
            .unwrap_or_else(|e| panic!("lab inventory is invalid: {e}\n{text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_addresses_and_names() {
        let p = LabPlan::new("mp-test", 3).expect("valid");
        assert_eq!(p.nodes[2].ip, Ipv4Addr::new(192, 168, 77, 13));
        assert_eq!(
            p.nodes[1].pod_ip(PodKind::Dns),
            Ipv4Addr::new(10, 42, 2, 53)
        );
        assert_eq!(p.nodes[0].vtep_mac, "0e:6d:70:00:00:01");
        assert_eq!(
            p.resolve_ns("n2-probe").as_deref(),
            Some("mp-test-n2-probe")
        );
        assert_eq!(p.resolve_ns("n3-dns"), None, "only n1 and n2 run CoreDNS");
        assert_eq!(p.resolve_ns("ctl").as_deref(), Some("mp-test-ctl"));
        assert!(p.namespaces().iter().all(|ns| ns.starts_with("mp-test-")));
        let t = p.topology();
        assert_eq!(t.nodes.len(), 3);
        assert_eq!(t.core_dns.len(), 2);
        assert_eq!(t.ingresses[0].address, Ipv4Addr::new(192, 168, 77, 13));
        assert!(LabPlan::new("Bad Name", 3).is_err());
        assert!(LabPlan::new("ok", 0).is_err());
        assert_eq!(LabPlan::new("big", 16).expect("16 nodes").nodes.len(), 16);
    }
}
