//! The static inventory file (CONTRACT §2): parse raw, then validate into a [`Topology`].
//!
//! Parsing is strict: an unknown field is an error that names the field and its line, and
//! every semantic error names the field path (`nodes[2].podCIDR`) it is about.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeName, PodCidr};

/// Why an inventory was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InventoryError {
    /// The text is not valid YAML/JSON, or has an unknown or missing field.
    #[error("{message}")]
    Syntax {
        /// The parser's message, which names the field and the line.
        message: String,
        /// 1-based line of the error, where the parser knows it.
        line: Option<usize>,
    },
    /// The document is larger than [`MAX_INVENTORY_BYTES`].
    #[error("the inventory is {bytes} bytes; the most accepted is {max}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The document nests deeper than any inventory does (line is 1-based).
    #[error("line {line}: nested {depth} levels deep; an inventory needs at most {max}")]
    TooDeep {
        /// Where.
        line: usize,
        /// How deep.
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// The document parsed but a value is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// The path of the offending field, e.g. `nodes[1].podCIDR`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InventoryError {
    InventoryError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

// ---- raw, as written in the file ---------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawInventory {
    cluster: RawCluster,
    nodes: Vec<RawNode>,
    #[serde(default, rename = "coreDNS")]
    core_dns: Vec<RawCoreDns>,
    #[serde(default)]
    node_ports: Vec<RawNodePort>,
    #[serde(default)]
    ingresses: Vec<RawIngress>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCluster {
    name: String,
    #[serde(default = "default_domain")]
    cluster_domain: String,
    #[serde(rename = "dnsServiceIP")]
    dns_service_ip: Option<String>,
    #[serde(default)]
    overlay: RawOverlay,
}

fn default_domain() -> String {
    "cluster.local".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOverlay {
    #[serde(rename = "type", default = "default_overlay_type")]
    kind: String,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default = "default_vni")]
    vni: u32,
    #[serde(default = "default_interface")]
    interface: String,
    #[serde(default = "default_mtu")]
    mtu: u16,
}

impl Default for RawOverlay {
    fn default() -> Self {
        Self {
            kind: default_overlay_type(),
            port: default_port(),
            vni: default_vni(),
            interface: default_interface(),
            mtu: default_mtu(),
        }
    }
}

fn default_overlay_type() -> String {
    "vxlan".to_owned()
}
fn default_port() -> u16 {
    8472
}
fn default_vni() -> u32 {
    1
}
fn default_interface() -> String {
    "flannel.1".to_owned()
}
fn default_mtu() -> u16 {
    1450
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawNode {
    name: String,
    #[serde(rename = "internalIP")]
    internal_ip: String,
    #[serde(rename = "podCIDR")]
    pod_cidr: String,
    gateway: Option<String>,
    #[serde(rename = "vtepMAC")]
    vtep_mac: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoreDns {
    name: String,
    node: String,
    ip: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodePort {
    name: String,
    port: u16,
    #[serde(default = "default_path")]
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngress {
    host: String,
    address: String,
    #[serde(default = "default_http_port")]
    port: u16,
    #[serde(default = "default_path")]
    path: String,
}

fn default_path() -> String {
    "/".to_owned()
}
fn default_http_port() -> u16 {
    80
}

// ---- validated -----------------------------------------------------------------------------

/// A validated cluster description: what the coordinator plans probes from. Static mode
/// builds it from the inventory file; Kubernetes discovery builds the same type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// Cluster-wide settings.
    pub cluster: Cluster,
    /// The nodes, in file order.
    pub nodes: Vec<Node>,
    /// The CoreDNS pods.
    #[serde(rename = "coreDNS")]
    pub core_dns: Vec<CoreDnsPod>,
    /// NodePort services to probe on every node IP.
    pub node_ports: Vec<NodePortService>,
    /// Ingress paths to probe.
    pub ingresses: Vec<IngressPath>,
    /// Node name -> position in `nodes`, built on first use: the coordinator looks a node
    /// up on every poll and report, 10,000 times a round at 5,000 nodes. A stale entry
    /// (after `nodes` was edited) is caught and falls back to a scan.
    #[serde(skip)]
    pub index: NodeIndex,
}

/// The lazily built name index of a [`Topology`]; equal to any other (it is a cache).
#[derive(Clone, Debug, Default)]
pub struct NodeIndex(std::sync::OnceLock<std::collections::HashMap<NodeName, usize>>);

impl PartialEq for NodeIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for NodeIndex {}

/// Cluster-wide settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// A label for people; not used for probing.
    pub name: String,
    /// The DNS suffix of services, `cluster.local` by default.
    pub cluster_domain: String,
    /// The kube-dns ClusterIP; DNS-through-the-service probes are skipped without it.
    #[serde(rename = "dnsServiceIP")]
    pub dns_service_ip: Option<Ipv4Addr>,
    /// The overlay network.
    pub overlay: Overlay,
}

/// The overlay's kind, as flannel names its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverlayKind {
    /// VXLAN encapsulation (flannel's default backend).
    Vxlan,
    /// Direct routes to each node's pod CIDR, no encapsulation.
    HostGw,
    /// No overlay (pods routed natively).
    None,
}

impl OverlayKind {
    /// Bytes of encapsulation the overlay adds to every packet on the underlay.
    pub fn overhead(self) -> u16 {
        match self {
            OverlayKind::Vxlan => 50,
            OverlayKind::HostGw | OverlayKind::None => 0,
        }
    }
}

/// The overlay network's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Overlay {
    /// Backend type.
    #[serde(rename = "type")]
    pub kind: OverlayKind,
    /// UDP port of the encapsulation (8472 for flannel VXLAN).
    pub port: u16,
    /// VXLAN network identifier.
    pub vni: u32,
    /// The overlay device on every node.
    pub interface: String,
    /// The MTU pods get; full-size probes fill it.
    pub mtu: u16,
}

impl Overlay {
    /// The MTU the overlay assumes the underlay carries: overlay MTU + encapsulation.
    pub fn assumed_underlay_mtu(&self) -> u16 {
        self.mtu + self.kind.overhead()
    }
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// The node's name.
    pub name: NodeName,
    /// The node's InternalIP (its underlay address).
    #[serde(rename = "internalIP")]
    pub internal_ip: Ipv4Addr,
    /// The node's pod CIDR.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: PodCidr,
    /// The pod-CIDR gateway (`cni0`), the CIDR's first address unless overridden.
    pub gateway: Ipv4Addr,
    /// Where the node is in its lifecycle (discovery sets it; inventory nodes are ready).
    #[serde(default, skip_serializing_if = "NodeState::is_ready")]
    pub state: NodeState,
    /// The MAC address of the node's VXLAN device as the cluster advertises it (flannel's
    /// `VtepMAC` node annotation), lower case. Peers' neighbour and fdb entries must
    /// point at it.
    #[serde(rename = "vtepMAC", default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
}

/// Checks and normalises a MAC address (`0e:6d:70:00:00:01`, any case).
pub fn parse_mac(s: &str) -> Result<String, String> {
    let t = s.trim().to_ascii_lowercase();
    let parts: Vec<&str> = t.split(':').collect();
    if parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        Ok(t)
    } else {
        Err(format!(
            "{s:?} is not a MAC address (like 0e:6d:70:00:00:01)"
        ))
    }
}

/// A node's lifecycle, as Kubernetes reports it. Only ready nodes are probed: the others
/// appear in every matrix as `unknown`, with the reason, and never in a network finding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Ready and schedulable.
    #[default]
    Ready,
    /// The Ready condition is not True.
    NotReady,
    /// `spec.unschedulable` (kubectl cordon / drain).
    Cordoned,
    /// Has a deletion timestamp.
    Deleting,
}

impl NodeState {
    /// Whether the node is probed.
    pub fn is_ready(&self) -> bool {
        *self == NodeState::Ready
    }

    /// `ready`, `not-ready`, `cordoned`, `deleting`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::NotReady => "not-ready",
            NodeState::Cordoned => "cordoned",
            NodeState::Deleting => "deleting",
        }
    }
}

/// One CoreDNS pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreDnsPod {
    /// Pod name.
    pub name: String,
    /// Node it runs on.
    pub node: NodeName,
    /// Pod IP.
    pub ip: Ipv4Addr,
}

/// A NodePort service to probe on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePortService {
    /// Service name (a column label).
    pub name: String,
    /// The node port.
    pub port: u16,
    /// HTTP path to GET.
    pub path: String,
}

/// An ingress path to probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressPath {
    /// The Host header.
    pub host: String,
    /// The address the ingress controller listens on.
    pub address: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// HTTP path to GET.
    pub path: String,
}

/// The largest inventory accepted: a 5,000-node inventory is about 600 KB.
pub const MAX_INVENTORY_BYTES: usize = 16 << 20;

/// The deepest nesting accepted (flow brackets, or indentation columns plus block
/// sequence dashes). An inventory needs about 8; parsers take time that grows faster than
/// the depth, so a hostile document is refused before it is parsed.
pub const MAX_NESTING: usize = 64;

/// The deepest nesting of any line of `text`, and that line (1-based): `[`/`{` open
/// outside quotes and comments, counted as the scan meets them (a balanced `[[[…]]]` on
/// one line is as deep as it gets in the middle, not at its end), and for block structure
/// the indentation plus the dashes that open nested sequences on the line. One pass, one
/// look at each character.
fn nesting(text: &str) -> (usize, usize) {
    let (mut flow, mut worst, mut at) = (0usize, 0usize, 0usize);
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        let mut rest = line.trim_start();
        let mut dashes = 0;
        while let Some(r) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
            dashes += 1;
            rest = r.trim_start();
        }
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    flow += 1;
                    if flow > worst {
                        (worst, at) = (flow, i + 1);
                    }
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
        }
        let depth = flow.max(indent / 2 + dashes);
        if depth > worst {
            (worst, at) = (depth, i + 1);
        }
    }
    (worst, at)
}

impl Topology {
    /// Parses and validates an inventory document (YAML, or JSON). A leading byte-order
    /// mark is ignored; documents larger than [`MAX_INVENTORY_BYTES`] or nested deeper
    /// than [`MAX_NESTING`] are refused before they are parsed.
    pub fn from_inventory(text: &str) -> Result<Self, InventoryError> {
        if text.len() > MAX_INVENTORY_BYTES {
            return Err(InventoryError::TooLarge {
                bytes: text.len(),
                max: MAX_INVENTORY_BYTES,
            });
        }
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let (depth, line) = nesting(text);
        if depth > MAX_NESTING {
            return Err(InventoryError::TooDeep {
                line,
                depth,
                max: MAX_NESTING,
            });
        }
        let raw: RawInventory =
            serde_yaml_ng::from_str(text).map_err(|e| InventoryError::Syntax {
                line: e.location().map(|l| l.line()),
                message: e.to_string(),
            })?;
        validate(raw)
    }

    /// The node called `name`.
    pub fn node(&self, name: &NodeName) -> Option<&Node> {
        let index = self.index.0.get_or_init(|| {
            self.nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.clone(), i))
                .collect()
        });
        match index.get(name).and_then(|&i| self.nodes.get(i)) {
            Some(n) if &n.name == name => Some(n),
            _ => self.nodes.iter().find(|n| &n.name == name),
        }
    }

    /// Node names in inventory order.
    pub fn node_names(&self) -> Vec<NodeName> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Renders the topology back into inventory YAML (what `lab up` writes).
    pub fn to_inventory_yaml(&self) -> String {
        // Serialising our own plain structs cannot fail.
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }
}

fn parse_ip(field: &str, s: &str) -> Result<Ipv4Addr, InventoryError> {
    s.trim()
        .parse()
        .map_err(|_| invalid(field, format!("{s:?} is not an IPv4 address")))
}

fn validate(raw: RawInventory) -> Result<Topology, InventoryError> {
    let c = raw.cluster;
    if c.name.trim().is_empty() {
        return Err(invalid("cluster.name", "must not be empty"));
    }
    // Names and paths end up in terminals, logs and HTTP requests: no control characters.
    let texts = [("cluster.name".to_owned(), &c.name)]
        .into_iter()
        .chain(raw.node_ports.iter().enumerate().flat_map(|(i, p)| {
            [
                (format!("nodePorts[{i}].name"), &p.name),
                (format!("nodePorts[{i}].path"), &p.path),
            ]
        }))
        .chain(raw.ingresses.iter().enumerate().flat_map(|(i, g)| {
            [
                (format!("ingresses[{i}].host"), &g.host),
                (format!("ingresses[{i}].path"), &g.path),
            ]
        }))
        .chain(
            raw.core_dns
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("coreDNS[{i}].name"), &d.name)),
        )
        .chain([("cluster.overlay.interface".to_owned(), &c.overlay.interface)]);
    for (field, text) in texts {
        if text
            .chars()
            .any(|ch| ch.is_control() || crate::text::is_invisible_format(ch))
        {
            return Err(invalid(
                field,
                format!(
                    "{:?} contains a control character",
                    crate::text::printable_line(text, 80)
                ),
            ));
        }
    }
    // It is a device name, and fix commands name it: what Linux accepts for one.
    let iface = &c.overlay.interface;
    if iface.is_empty() || iface.len() > 15 || !crate::evidence::is_plain_word(iface) {
        return Err(invalid(
            "cluster.overlay.interface",
            format!(
                "{:?} is not a network device name (1 to 15 letters, digits, `-_.`)",
                crate::text::printable_line(iface, 40)
            ),
        ));
    }
    if c.cluster_domain.trim().is_empty() || c.cluster_domain.contains(' ') {
        return Err(invalid(
            "cluster.clusterDomain",
            format!("{:?} is not a DNS domain", c.cluster_domain),
        ));
    }
    let dns_service_ip = match &c.dns_service_ip {
        Some(s) => Some(parse_ip("cluster.dnsServiceIP", s)?),
        None => None,
    };
    let kind = match c.overlay.kind.as_str() {
        "vxlan" => OverlayKind::Vxlan,
        "host-gw" => OverlayKind::HostGw,
        "none" => OverlayKind::None,
        other => {
            return Err(invalid(
                "cluster.overlay.type",
                format!("unknown overlay type {other:?} (expected vxlan, host-gw or none)"),
            ));
        }
    };
    if c.overlay.port == 0 {
        return Err(invalid("cluster.overlay.port", "must be 1-65535"));
    }
    if !(576..=9000).contains(&c.overlay.mtu) {
        return Err(invalid(
            "cluster.overlay.mtu",
            format!("{} is outside 576-9000", c.overlay.mtu),
        ));
    }
    if kind == OverlayKind::Vxlan && c.overlay.vni > 0x00FF_FFFF {
        return Err(invalid("cluster.overlay.vni", "a VXLAN VNI has 24 bits"));
    }
    let overlay = Overlay {
        kind,
        port: c.overlay.port,
        vni: c.overlay.vni,
        interface: c.overlay.interface,
        mtu: c.overlay.mtu,
    };

    if raw.nodes.is_empty() {
        return Err(invalid("nodes", "at least one node is needed"));
    }
    let mut nodes: Vec<Node> = Vec::with_capacity(raw.nodes.len());
    // What earlier nodes hold, looked up rather than scanned (linear in the nodes: 40,000
    // nodes took 10 s compared pairwise). Pod CIDRs by their first address: the ones kept
    // never overlap, so a new one overlaps one only if it overlaps its neighbours.
    let mut by_name: std::collections::HashMap<NodeName, usize> = Default::default();
    let mut by_ip: std::collections::HashMap<Ipv4Addr, usize> = Default::default();
    let mut by_mac: std::collections::HashMap<String, usize> = Default::default();
    let mut by_cidr: BTreeMap<u32, (u32, usize)> = BTreeMap::new();
    for (i, n) in raw.nodes.into_iter().enumerate() {
        let at = |f: &str| format!("nodes[{i}].{f}");
        let name = NodeName::new(n.name).map_err(|m| invalid(at("name"), m))?;
        let internal_ip = parse_ip(&at("internalIP"), &n.internal_ip)?;
        let pod_cidr = PodCidr::parse(n.pod_cidr.trim()).map_err(|m| invalid(at("podCIDR"), m))?;
        let gateway = match n.gateway {
            Some(g) => {
                let g = parse_ip(&at("gateway"), &g)?;
                if !pod_cidr.contains(g) {
                    return Err(invalid(
                        at("gateway"),
                        format!("{g} is outside podCIDR {pod_cidr}"),
                    ));
                }
                g
            }
            None => pod_cidr.first_host(),
        };
        let vtep_mac = match &n.vtep_mac {
            Some(m) => Some(parse_mac(m).map_err(|e| invalid(at("vtepMAC"), e))?),
            None => None,
        };
        if by_name.contains_key(&name) {
            return Err(invalid(at("name"), format!("duplicate node name {name}")));
        }
        if let Some(&j) = by_ip.get(&internal_ip) {
            return Err(invalid(
                at("internalIP"),
                format!("{internal_ip} is also node {}'s", nodes[j].name),
            ));
        }
        if let Some(&j) = vtep_mac.as_ref().and_then(|m| by_mac.get(m)) {
            return Err(invalid(
                at("vtepMAC"),
                format!(
                    "{} is also node {}'s (cloned machines?)",
                    vtep_mac.as_deref().unwrap_or_default(),
                    nodes[j].name
                ),
            ));
        }
        let (start, end) = (
            u32::from(pod_cidr.net().network()),
            u32::from(pod_cidr.net().broadcast()),
        );
        let before = by_cidr
            .range(..=start)
            .next_back()
            .filter(|(_, (e, _))| *e >= start);
        let after = by_cidr.range(start..).next().filter(|(s, _)| **s <= end);
        if let Some((_, (_, j))) = before.or(after) {
            let prev = &nodes[*j];
            return Err(invalid(
                at("podCIDR"),
                format!("{pod_cidr} overlaps node {}'s {}", prev.name, prev.pod_cidr),
            ));
        }
        by_name.insert(name.clone(), i);
        by_ip.insert(internal_ip, i);
        if let Some(m) = &vtep_mac {
            by_mac.insert(m.clone(), i);
        }
        by_cidr.insert(start, (end, i));
        if pod_cidr.contains(internal_ip) {
            return Err(invalid(
                at("podCIDR"),
                format!("{pod_cidr} contains the node's own IP {internal_ip}"),
            ));
        }
        nodes.push(Node {
            state: NodeState::Ready,
            name,
            internal_ip,
            pod_cidr,
            gateway,
            vtep_mac,
        });
    }

    let mut core_dns = Vec::with_capacity(raw.core_dns.len());
    let mut seen = BTreeSet::new();
    for (i, d) in raw.core_dns.into_iter().enumerate() {
        let at = |f: &str| format!("coreDNS[{i}].{f}");
        if d.name.trim().is_empty() || !seen.insert(d.name.clone()) {
            return Err(invalid(
                at("name"),
                format!("{:?} is empty or used twice", d.name),
            ));
        }
        let node = NodeName::new(d.node).map_err(|m| invalid(at("node"), m))?;
        let Some(host) = nodes.iter().find(|n| n.name == node) else {
            return Err(invalid(
                at("node"),
                format!("no node named {node} in nodes"),
            ));
        };
        let ip = parse_ip(&at("ip"), &d.ip)?;
        if !host.pod_cidr.contains(ip) {
            return Err(invalid(
                at("ip"),
                format!("{ip} is outside node {node}'s podCIDR {}", host.pod_cidr),
            ));
        }
        core_dns.push(CoreDnsPod {
            name: d.name,
            node,
            ip,
        });
    }

    let mut node_ports = Vec::with_capacity(raw.node_ports.len());
    for (i, p) in raw.node_ports.into_iter().enumerate() {
        if p.port == 0 {
            return Err(invalid(format!("nodePorts[{i}].port"), "must be 1-65535"));
        }
        if !p.path.starts_with('/') {
            return Err(invalid(
                format!("nodePorts[{i}].path"),
                "must start with '/'",
            ));
        }
        node_ports.push(NodePortService {
            name: p.name,
            port: p.port,
            path: p.path,
        });
    }

    let mut ingresses = Vec::with_capacity(raw.ingresses.len());
    for (i, g) in raw.ingresses.into_iter().enumerate() {
        let at = |f: &str| format!("ingresses[{i}].{f}");
        if g.host.trim().is_empty() {
            return Err(invalid(at("host"), "must not be empty"));
        }
        if !g.path.starts_with('/') {
            return Err(invalid(at("path"), "must start with '/'"));
        }
        if g.port == 0 {
            return Err(invalid(at("port"), "must be 1-65535"));
        }
        let address = parse_ip(&at("address"), &g.address)?;
        ingresses.push(IngressPath {
            host: g.host,
            address,
            port: g.port,
            path: g.path,
        });
    }

    Ok(Topology {
        cluster: Cluster {
            name: c.name,
            cluster_domain: c.cluster_domain,
            dns_service_ip,
            overlay,
        },
        nodes,
        core_dns,
        node_ports,
        ingresses,
        index: NodeIndex::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    const EXAMPLE: &str = r#"
cluster:
  name: lab
  clusterDomain: cluster.local
  dnsServiceIP: 10.43.0.10        # kube-dns ClusterIP
  overlay:
    type: vxlan                    # vxlan | host-gw | none
    port: 8472
    vni: 1
    interface: flannel.1
    mtu: 1450
nodes:
  - name: n1
    internalIP: 192.168.77.11
    podCIDR: 10.42.1.0/24          # gateway defaults to the first address (flannel cni0 .1)
  - name: n2
    internalIP: 192.168.77.12
    podCIDR: 10.42.2.0/24
    gateway: 10.42.2.1             # optional override
coreDNS:
  - {name: coredns-a, node: n1, ip: 10.42.1.53}
  - {name: coredns-b, node: n2, ip: 10.42.2.53}
nodePorts:
  - {name: web, port: 30080, path: /}
ingresses:
  - {host: web.lab.local, address: 192.168.77.11, port: 80, path: /}
"#;

    #[test]
    fn contract_example_parses() {
        let t = Topology::from_inventory(EXAMPLE).expect("contract example is valid");
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.nodes[0].gateway, Ipv4Addr::new(10, 42, 1, 1));
        assert_eq!(t.cluster.overlay.assumed_underlay_mtu(), 1500);
        assert_eq!(t.core_dns[1].node.as_str(), "n2");
        assert_eq!(t.ingresses[0].host, "web.lab.local");
        // What we write back reads in again as the same topology.
        let again = Topology::from_inventory(&t.to_inventory_yaml()).expect("round trip");
        assert_eq!(again, t);
    }

    /// The pairwise checks became lookups (issue 22, row 9): what they refused is still
    /// refused, whichever neighbour the overlap is with.
    #[test]
    fn duplicates_and_overlaps_are_found_by_lookup() {
        let doc = |extra: &str| {
            format!(
                "cluster: {{name: t}}\nnodes:\n  - {{name: a, internalIP: 10.0.0.1, podCIDR: 10.42.4.0/24}}\n  - {{name: b, internalIP: 10.0.0.2, podCIDR: 10.42.8.0/22}}\n{extra}"
            )
        };
        let refused = |extra: &str, field: &str| {
            let e = Topology::from_inventory(&doc(extra)).expect_err(extra);
            assert!(e.to_string().contains(field), "{extra}: {e}");
        };
        assert!(Topology::from_inventory(&doc("")).is_ok());
        // Inside the range that starts before it, and over the one that starts after it.
        refused(
            "  - {name: c, internalIP: 10.0.0.3, podCIDR: 10.42.9.0/24}\n",
            "overlaps node b's",
        );
        refused(
            "  - {name: c, internalIP: 10.0.0.3, podCIDR: 10.42.0.0/21}\n",
            "overlaps node a's",
        );
        refused(
            "  - {name: c, internalIP: 10.0.0.3, podCIDR: 10.42.4.0/24}\n",
            "overlaps node a's",
        );
        refused(
            "  - {name: a, internalIP: 10.0.0.3, podCIDR: 10.42.5.0/24}\n",
            "duplicate node name a",
        );
        refused(
            "  - {name: c, internalIP: 10.0.0.2, podCIDR: 10.42.5.0/24}\n",
            "is also node b's",
        );
        // Adjacent ranges do not overlap.
        assert!(Topology::from_inventory(&doc("  - {name: c, internalIP: 10.0.0.3, podCIDR: 10.42.5.0/24}\n  - {name: d, internalIP: 10.0.0.4, podCIDR: 10.42.12.0/24}\n")).is_ok());
    }

    #[test]
    fn hostile_documents_are_refused_quickly_and_by_name() {
        // A byte-order mark is not "missing field `nodes`".
        let bom = format!("\u{feff}{EXAMPLE}");
        assert!(Topology::from_inventory(&bom).is_ok());
        // Deep nesting, flow or block, is refused before the parser sees it.
        let started = std::time::Instant::now();
        let flow = format!("cluster: {}", "[".repeat(100_000));
        assert!(matches!(
            Topology::from_inventory(&flow),
            Err(InventoryError::TooDeep { line: 1, .. })
        ));
        let block: String = (0..600)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert!(matches!(
            Topology::from_inventory(&block),
            Err(InventoryError::TooDeep { .. })
        ));
        // Issue 22, row 9: balanced on one line, nesting is still nesting.
        let balanced = format!(
            "cluster: {{name: t}}\nnodes: []\nx: {}{}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(matches!(
            Topology::from_inventory(&balanced),
            Err(InventoryError::TooDeep { line: 3, .. })
        ));
        let dashes = format!("nodes:\n{}x\n", "- ".repeat(1_000));
        assert!(matches!(
            Topology::from_inventory(&dashes),
            Err(InventoryError::TooDeep { .. })
        ));
        let huge = "#".repeat(MAX_INVENTORY_BYTES + 1);
        assert!(matches!(
            Topology::from_inventory(&huge),
            Err(InventoryError::TooLarge { .. })
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Port 0 and control characters are named.
        let port0 = EXAMPLE.replace("port: 80,", "port: 0,");
        let e = Topology::from_inventory(&port0).expect_err("port 0");
        assert!(e.to_string().contains("ingresses[0].port"), "{e}");
        let escape = EXAMPLE.replace("host: web.lab.local", "host: \"web\\e[31m\"");
        let e = Topology::from_inventory(&escape).expect_err("control character");
        assert!(e.to_string().contains("ingresses[0].host"), "{e}");
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
        // Issue 22, row 9: CoreDNS names and the overlay device took control characters.
        let bell = EXAMPLE.replace("interface: flannel.1", "interface: \"flannel.1\\a\"");
        let e = Topology::from_inventory(&bell).expect_err("control character");
        assert!(e.to_string().contains("cluster.overlay.interface"), "{e}");
        let shell = EXAMPLE.replace("interface: flannel.1", "interface: \"x;reboot\"");
        let e = Topology::from_inventory(&shell).expect_err("not a device name");
        assert!(e.to_string().contains("not a network device name"), "{e}");
        let bidi = EXAMPLE.replacen("name: coredns-a,", "name: \"\\u202Ecoredns-a\",", 1);
        assert_ne!(bidi, EXAMPLE);
        let e = Topology::from_inventory(&bidi).expect_err("format character");
        assert!(e.to_string().contains("coreDNS[0].name"), "{e}");
    }

    #[test]
    fn json_is_accepted() {
        let json = r#"{"cluster":{"name":"j"},"nodes":[{"name":"a","internalIP":"10.0.0.1","podCIDR":"10.42.0.0/24"}]}"#;
        let t = Topology::from_inventory(json).expect("json inventory");
        assert_eq!(t.cluster.overlay.port, 8472);
        assert_eq!(t.cluster.cluster_domain, "cluster.local");
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let text = EXAMPLE.replace("    podCIDR: 10.42.2.0/24", "    podCidr: 10.42.2.0/24");
        let err = Topology::from_inventory(&text).expect_err("unknown field");
        let msg = err.to_string();
        assert!(msg.contains("podCidr"), "{msg}");
        match err {
            InventoryError::Syntax { line, .. } => assert_eq!(line, Some(18)),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn syntax_error_names_the_line() {
        let text = "cluster:\n  name: x\nnodes: [\n";
        let err = Topology::from_inventory(text).expect_err("broken yaml");
        assert!(
            matches!(err, InventoryError::Syntax { line: Some(_), .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("line"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            (
                "podCIDR: 10.42.2.0/24",
                "podCIDR: 10.42.1.0/23",
                "nodes[1].podCIDR",
            ),
            (
                "internalIP: 192.168.77.12",
                "internalIP: 192.168.77.11",
                "nodes[1].internalIP",
            ),
            (
                "internalIP: 192.168.77.12",
                "internalIP: 192.168.77.x",
                "nodes[1].internalIP",
            ),
            (
                "gateway: 10.42.2.1 ",
                "gateway: 10.42.9.1 ",
                "nodes[1].gateway",
            ),
            (
                "node: n2, ip: 10.42.2.53",
                "node: n9, ip: 10.42.2.53",
                "coreDNS[1].node",
            ),
            (
                "node: n2, ip: 10.42.2.53",
                "node: n2, ip: 10.42.1.53",
                "coreDNS[1].ip",
            ),
            ("type: vxlan ", "type: wireguard ", "cluster.overlay.type"),
            ("mtu: 1450", "mtu: 100", "cluster.overlay.mtu"),
            ("- name: n2", "- name: N2", "nodes[1].name"),
            ("port: 30080", "port: 0", "nodePorts[0].port"),
        ];
        for (from, to, field) in cases {
            assert!(EXAMPLE.contains(from), "fixture lacks {from:?}");
            let err = Topology::from_inventory(&EXAMPLE.replace(from, to)).expect_err(to);
            match &err {
                InventoryError::Invalid { field: f, .. } => assert_eq!(f, field, "{err}"),
                other => panic!("{to}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn vtep_macs_are_checked_normalised_and_unique() {
        let with = |a: &str, b: &str| {
            EXAMPLE
                .replace(
                    "podCIDR: 10.42.1.0/24 ",
                    &format!("podCIDR: 10.42.1.0/24\n    vtepMAC: \"{a}\" "),
                )
                .replace(
                    "    podCIDR: 10.42.2.0/24\n",
                    &format!("    podCIDR: 10.42.2.0/24\n    vtepMAC: \"{b}\"\n"),
                )
        };
        let t = Topology::from_inventory(&with("0E:6D:70:00:00:01", "0e:6d:70:00:00:02"))
            .expect("valid MACs");
        assert_eq!(t.nodes[0].vtep_mac.as_deref(), Some("0e:6d:70:00:00:01"));
        assert_eq!(
            Topology::from_inventory(&t.to_inventory_yaml()).expect("round trip"),
            t
        );
        for (a, b, field, says) in [
            (
                "0e:6d:70:00:00",
                "0e:6d:70:00:00:02",
                "nodes[0].vtepMAC",
                "not a MAC",
            ),
            (
                "0e:6d:70:00:00:01",
                "0e:6d:70:00:00:01",
                "nodes[1].vtepMAC",
                "cloned",
            ),
        ] {
            match Topology::from_inventory(&with(a, b)).expect_err(a) {
                InventoryError::Invalid { field: f, message } => {
                    assert_eq!(f, field);
                    assert!(message.contains(says), "{message}");
                }
                other => panic!("expected Invalid, got {other:?}"),
            }
        }
    }
}
