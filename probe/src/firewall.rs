//! The firewall as the kernel walks it: rules from `iptables-save` (either backend) and
//! from native nftables (`nft -j list ruleset`: firewalld on RHEL 8 and 9, a hand-written
//! `nft -f` file) read into one typed form ([`Rule`]), and walked for a [`Flow`] as a new
//! packet of it would be.
//!
//! A packet meets every base chain hooked where it passes, in every table and in both
//! iptables backends: an accept ends one chain's say, a drop or reject ends the packet's
//! way. So each base chain is walked on its own, and what drops the flow anywhere counts.

use std::net::Ipv4Addr;

use meshprobe_core::evidence::{FirewallBackend, FirewallRule, MAX_CONFIG_ENTRIES};
use serde_json::Value;

/// Chains that belong to Kubernetes or a CNI (the field notes' `egrep -v "KUBE|CNI|DOCKER"`).
pub(crate) fn is_cluster_chain(name: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "KUBE-", "CNI-", "FLANNEL", "DOCKER", "cali-", "CILIUM", "WEAVE", "ANTREA", "KUBE_",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// nftables tables that belong to Kubernetes or a CNI (kube-proxy's nftables mode,
/// flannel's, Calico's and Cilium's own tables): their rules are the cluster's, as the
/// cluster chains are in iptables.
fn is_cluster_table(name: &str) -> bool {
    const NAMES: [&str; 6] = ["kube-proxy", "flannel", "calico", "cilium", "antrea", "cni"];
    let lower = name.to_ascii_lowercase();
    NAMES.iter().any(|n| lower.starts_with(n))
}

pub(crate) fn is_builtin_chain(name: &str) -> bool {
    matches!(
        name,
        "INPUT" | "FORWARD" | "OUTPUT" | "PREROUTING" | "POSTROUTING"
    )
}

/// The protocol of a [`Flow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// UDP (VXLAN).
    Udp,
    /// TCP (the relay).
    Tcp,
    /// Any protocol (pods' traffic through FORWARD).
    Any,
}

impl Proto {
    /// How a protocol match (`-p VALUE`, nft's `meta l4proto`; a comma-separated list of
    /// alternatives) meets this protocol.
    fn covered_by(self, value: &str) -> Covers {
        let mut covers = Covers::Nothing;
        for v in value.split(',') {
            let c = match (self, v) {
                (_, "all" | "0") => Covers::All,
                (Proto::Udp, "udp" | "17") | (Proto::Tcp, "tcp" | "6") => Covers::All,
                (Proto::Any, _) => Covers::Part,
                _ => Covers::Nothing,
            };
            covers = covers.max(c);
        }
        covers
    }

    fn name(self) -> &'static str {
        match self {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
            Proto::Any => "forwarded traffic",
        }
    }
}

/// A flow the firewall walk follows as the kernel would: new packets of one protocol to
/// one port (or any), from an arbitrary source port, between the addresses given.
#[derive(Debug, Clone)]
pub struct Flow {
    /// The protocol.
    pub proto: Proto,
    /// The destination port (`None`: any).
    pub port: Option<u16>,
    /// Where its packets may come from (`(address, prefix length)`; empty: anywhere).
    pub sources: Vec<(Ipv4Addr, u8)>,
    /// Where they go (likewise).
    pub destinations: Vec<(Ipv4Addr, u8)>,
    /// The interfaces they arrive on, when known (empty: any).
    pub in_interfaces: Vec<String>,
}

impl Flow {
    /// The overlay's own traffic: UDP to `port` between the node IPs (empty: unknown).
    pub fn overlay(port: u16, node_ips: &[Ipv4Addr]) -> Self {
        let ips: Vec<(Ipv4Addr, u8)> = node_ips.iter().map(|ip| (*ip, 32)).collect();
        Flow {
            proto: Proto::Udp,
            port: Some(port),
            sources: ips.clone(),
            destinations: ips,
            in_interfaces: Vec::new(),
        }
    }

    /// The host agent's relay, as its node's pods reach it: TCP from the pod range to the
    /// node IP's relay port.
    pub fn relay(pod_cidr: meshprobe_core::PodCidr, node_ip: Ipv4Addr, port: u16) -> Self {
        Flow {
            proto: Proto::Tcp,
            port: Some(port),
            sources: vec![(pod_cidr.network(), pod_cidr.net().prefix_len())],
            destinations: vec![(node_ip, 32)],
            // Pods reach their node through the CNI's bridge.
            in_interfaces: vec!["cni0".to_owned()],
        }
    }

    /// Pods' traffic forwarded between the pod networks `pods`, arriving on `ifaces` (the
    /// CNI's bridge and overlay device).
    pub fn forwarded(pods: &[(Ipv4Addr, u8)], ifaces: &[&str]) -> Self {
        Flow {
            proto: Proto::Any,
            port: None,
            sources: pods.to_vec(),
            destinations: pods.to_vec(),
            in_interfaces: ifaces.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn describe(&self) -> String {
        match self.port {
            Some(p) => format!("{} {p}", self.proto.name()),
            None => self.proto.name().to_owned(),
        }
    }

    /// Whether an address match takes every one of `nets` (so the rule is no narrower than
    /// the flow there).
    fn takes_all(nets: &[(Ipv4Addr, u8)], value: &str) -> bool {
        !nets.is_empty()
            && nets.iter().all(|&(addr, len)| {
                value
                    .split(',')
                    .any(|net| net_holds(net, addr, len) == Some(true))
            })
    }

    /// Whether an address match (`10.0.0.0/8`, `192.168.1.5/32`, `1.2.3.4`, a
    /// comma-separated list) may take some of `nets`.
    fn may_take(nets: &[(Ipv4Addr, u8)], value: &str) -> bool {
        nets.is_empty()
            || value.split(',').any(|net| {
                // A name, a dotted mask or IPv6: cannot tell, so it may.
                nets.iter()
                    .any(|&(addr, len)| net_overlaps(net, addr, len).unwrap_or(true))
            })
    }

    fn addresses(nets: &[(Ipv4Addr, u8)], value: &str) -> Covers {
        if !Self::may_take(nets, value) {
            Covers::Nothing
        } else if Self::takes_all(nets, value) {
            Covers::All
        } else {
            Covers::Part
        }
    }

    /// How an input-interface match (`eth0`, `cni+`) meets the flow's interfaces.
    fn interface_covers(&self, value: &str) -> Covers {
        if value == "lo" {
            return Covers::Nothing;
        }
        if self.in_interfaces.is_empty() {
            return Covers::Part;
        }
        let takes = |dev: &str| match value.strip_suffix('+') {
            Some(prefix) => dev.starts_with(prefix),
            None => dev == value,
        };
        match self.in_interfaces.iter().filter(|d| takes(d)).count() {
            0 => Covers::Nothing,
            n if n == self.in_interfaces.len() => Covers::All,
            _ => Covers::Part,
        }
    }

    /// How much of the flow one match takes, before its negation.
    fn covers(&self, m: &Match) -> Covers {
        match m {
            Match::Proto(v) => self.proto.covered_by(v),
            Match::Source(v) => Self::addresses(&self.sources, v),
            Match::Destination(v) => Self::addresses(&self.destinations, v),
            Match::DestinationPort(v) => match self.port {
                None => Covers::Part,
                Some(port) if port_in(v, port) => Covers::All,
                Some(_) => Covers::Nothing,
            },
            Match::InInterface(v) => self.interface_covers(v),
            Match::OutInterface(v) if v == "lo" => Covers::Nothing,
            // The flow's first packet is never a reply: only a match that takes NEW
            // packets sees it.
            Match::ConnState(states) if states.iter().any(|s| s == "new") => Covers::All,
            Match::ConnState(_) => Covers::Nothing,
            Match::Never => Covers::Nothing,
            Match::OutInterface(_) | Match::Narrows => Covers::Part,
        }
    }

    /// How much of the flow a rule takes: all its matches together.
    pub(crate) fn covered_by(&self, rule: &Rule) -> Covers {
        let mut covers = Covers::All;
        for c in &rule.conditions {
            let one = match (c.negated, &c.matches) {
                // What the walk cannot read narrows the rule, negated or not.
                (_, Match::Narrows) => Covers::Part,
                (false, m) => self.covers(m),
                (true, m) => self.covers(m).negated(),
            };
            covers = covers.min(one);
            if covers == Covers::Nothing {
                break;
            }
        }
        covers
    }
}

/// Whether `port` is in a port match (`8472`, `1000:2000`, `53,8472`).
fn port_in(value: &str, port: u16) -> bool {
    value.split(',').any(|p| match p.split_once([':', '-']) {
        Some((lo, hi)) => {
            let lo = lo.parse::<u16>().unwrap_or(0);
            let hi = hi.parse::<u16>().unwrap_or(u16::MAX);
            (lo..=hi).contains(&port)
        }
        None => p.parse::<u16>().ok() == Some(port),
    })
}

/// Whether the address `net` (`a.b.c.d` or `a.b.c.d/len`) holds all of `addr/len`;
/// `None` when `net` is not one.
fn net_holds(net: &str, addr: Ipv4Addr, len: u8) -> Option<bool> {
    let (a, l) = net.split_once('/').unwrap_or((net, "32"));
    let (a, l) = (a.parse::<Ipv4Addr>().ok()?, l.parse::<u8>().ok()?);
    if l > 32 {
        return None;
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(l)).unwrap_or(0);
    Some(l <= len && u32::from(a) & mask == u32::from(addr) & mask)
}

/// Whether the address `net` (`a.b.c.d` or `a.b.c.d/len`) and `addr/len` share an
/// address; `None` when `net` is not one.
fn net_overlaps(net: &str, addr: Ipv4Addr, len: u8) -> Option<bool> {
    let (a, l) = net.split_once('/').unwrap_or((net, "32"));
    let (a, l) = (a.parse::<Ipv4Addr>().ok()?, l.parse::<u32>().ok()?);
    if l > 32 {
        return None;
    }
    let shorter = l.min(u32::from(len));
    let mask = u32::MAX.checked_shl(32 - shorter).unwrap_or(0);
    Some(u32::from(a) & mask == u32::from(addr) & mask)
}

/// How much of a flow a rule's match covers (ordered: nothing, part, all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Covers {
    Nothing,
    Part,
    All,
}

impl Covers {
    fn negated(self) -> Self {
        match self {
            Covers::Nothing => Covers::All,
            Covers::Part => Covers::Part,
            Covers::All => Covers::Nothing,
        }
    }
}

/// What one match of a rule tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Match {
    /// The layer-4 protocol (alternatives comma-separated).
    Proto(String),
    /// The source address (networks comma-separated).
    Source(String),
    /// The destination address.
    Destination(String),
    /// The destination port (`8472`, `1:100`, alternatives comma-separated).
    DestinationPort(String),
    /// The interface the packet arrived on (`cni+`: a prefix).
    InInterface(String),
    /// The interface it leaves on.
    OutInterface(String),
    /// Conntrack states (lower case).
    ConnState(Vec<String>),
    /// A match no IPv4 packet passes (an IPv6 header field).
    Never,
    /// A match the walk cannot evaluate (a set, a mark, a rate, a source port): it may
    /// take some of the flow.
    Narrows,
}

/// One match, perhaps negated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condition {
    negated: bool,
    matches: Match,
}

impl Condition {
    fn is(m: Match) -> Self {
        Condition {
            negated: false,
            matches: m,
        }
    }
}

/// What a rule does with what it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Accept,
    Drop,
    Reject,
    Return,
    /// Jump to a chain (goto is walked as a jump: what it finds is the same).
    Jump(String),
    /// Anything else (a log, a mark, a NAT target), or no verdict: the walk goes on.
    Continue,
}

/// One rule in typed form, with the words it was read from.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) table: String,
    pub(crate) chain: String,
    pub(crate) conditions: Vec<Condition>,
    pub(crate) verdict: Verdict,
    /// As iptables-save prints it, or nft's words for it.
    pub(crate) text: String,
    handle: Option<u64>,
}

/// A chain where packets enter: an iptables built-in chain, or an nftables base chain.
#[derive(Debug, Clone)]
struct Base {
    table: String,
    chain: String,
    hook: Hook,
    /// `DROP` or `ACCEPT`.
    policy_drops: bool,
}

/// Where in the stack a base chain is hooked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    fn of(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "prerouting" => Hook::Prerouting,
            "input" => Hook::Input,
            "forward" => Hook::Forward,
            "output" => Hook::Output,
            "postrouting" => Hook::Postrouting,
            _ => return None,
        })
    }
}

/// A firewall read from one source: its rules, and the chains packets enter by.
#[derive(Debug, Clone)]
pub(crate) struct Ruleset {
    pub(crate) backend: FirewallBackend,
    pub(crate) rules: Vec<Rule>,
    bases: Vec<Base>,
}

/// Where a chain leaves the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Accepted,
    Dropped,
    /// Fell off the end of a user chain, or was returned from it.
    Continues,
}

/// Most rules one walk of a base chain looks at, user chains included.
const WALK_BUDGET: u32 = 20_000;

/// The most rules a ruleset keeps (a host with more is walked on the first ones).
const MAX_RULES: usize = 100_000;

/// The most characters of one rule's words kept.
const MAX_RULE_TEXT: usize = 400;

impl Ruleset {
    /// `iptables-save`'s output, as `backend` holds it.
    pub(crate) fn from_iptables_save(text: &str, backend: FirewallBackend) -> Self {
        let mut rules = Vec::new();
        let mut bases = Vec::new();
        for line in save_lines(text) {
            match line {
                SaveLine::Chain {
                    table,
                    chain,
                    policy,
                } => {
                    if let Some(hook) = is_builtin_chain(chain).then(|| Hook::of(chain)).flatten() {
                        bases.push(Base {
                            table: table.to_owned(),
                            chain: chain.to_owned(),
                            hook,
                            policy_drops: policy == "DROP",
                        });
                    }
                }
                SaveLine::Rule { table, line, .. } if rules.len() < MAX_RULES => {
                    rules.push(iptables_rule(table, line));
                }
                SaveLine::Rule { .. } => {}
            }
        }
        Ruleset {
            backend,
            rules,
            bases,
        }
    }

    /// `nft -j list ruleset`'s output: the IPv4 families' tables, except the cluster's own
    /// and, when `iptables_nft_read`, those iptables-nft keeps (read from
    /// `iptables-nft-save` already, in iptables' words). `None` when it is not nft's JSON.
    pub(crate) fn from_nft_json(text: &str, iptables_nft_read: bool) -> Option<Self> {
        const IPTABLES_TABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];
        let v: Value = serde_json::from_str(text).ok()?;
        let items = v.get("nftables")?.as_array()?;
        let mut rules = Vec::new();
        let mut bases = Vec::new();
        for item in items {
            let (kind, o) = match item.as_object().and_then(|o| o.iter().next()) {
                Some((k, o)) => (k.as_str(), o),
                None => continue,
            };
            if !matches!(kind, "chain" | "rule") {
                continue;
            }
            let (Some(family), Some(name)) = (o["family"].as_str(), o["table"].as_str()) else {
                continue;
            };
            if !matches!(family, "ip" | "inet")
                || is_cluster_table(name)
                || (iptables_nft_read && family == "ip" && IPTABLES_TABLES.contains(&name))
            {
                continue;
            }
            let table = format!("{family} {name}");
            match kind {
                "chain" => {
                    let (Some(chain), Some(hook)) =
                        (o["name"].as_str(), o["hook"].as_str().and_then(Hook::of))
                    else {
                        continue;
                    };
                    // Filter chains only: a NAT or route chain does not drop.
                    if o["type"].as_str().is_some_and(|t| t != "filter") {
                        continue;
                    }
                    bases.push(Base {
                        table,
                        chain: chain.to_owned(),
                        hook,
                        policy_drops: o["policy"].as_str() == Some("drop"),
                    });
                }
                _ => {
                    let (Some(chain), Some(expr)) = (o["chain"].as_str(), o["expr"].as_array())
                    else {
                        continue;
                    };
                    let handle = o["handle"].as_u64();
                    for r in nft_rules(&table, chain, expr, handle) {
                        if rules.len() < MAX_RULES {
                            rules.push(r);
                        }
                    }
                }
            }
        }
        Some(Ruleset {
            backend: FirewallBackend::Nftables,
            rules,
            bases,
        })
    }

    /// Its rules by chain, in order.
    fn by_chain(&self) -> ByChain<'_> {
        let mut by: ByChain<'_> = std::collections::HashMap::new();
        for r in &self.rules {
            by.entry((r.table.as_str(), r.chain.as_str()))
                .or_default()
                .push(r);
        }
        by
    }

    /// Every rule that may drop or reject `flow` before something accepts all of it, in
    /// the base chains hooked at `hooks` (and in iptables, only those of `tables`; empty:
    /// any), at most [`MAX_CONFIG_ENTRIES`].
    pub(crate) fn drops(&self, flow: &Flow, hooks: &[(Hook, &str)]) -> Vec<FirewallRule> {
        let by = self.by_chain();
        let mut out: Vec<FirewallRule> = Vec::new();
        for &(hook, iptables_table) in hooks {
            for base in self.bases.iter().filter(|b| {
                b.hook == hook
                    && (self.backend == FirewallBackend::Nftables || b.table == iptables_table)
            }) {
                let mut found = Vec::new();
                let mut budget = WALK_BUDGET;
                self.walk(
                    &by,
                    base,
                    flow,
                    (&base.table, &base.chain),
                    0,
                    &mut found,
                    &mut budget,
                );
                for r in found {
                    if !out.contains(&r) && out.len() < MAX_CONFIG_ENTRIES {
                        out.push(r);
                    }
                }
            }
        }
        out
    }

    fn shown(&self, r: &Rule) -> FirewallRule {
        FirewallRule {
            table: r.table.clone(),
            chain: r.chain.clone(),
            rule: r.text.clone(),
            backend: self.backend,
            handle: r.handle,
        }
    }

    /// Walks `chain` as the kernel would for `flow`, pushing every drop or reject that may
    /// take it before something accepts all of it.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        by: &ByChain<'_>,
        base: &Base,
        flow: &Flow,
        (table, chain): (&str, &str),
        depth: u8,
        found: &mut Vec<FirewallRule>,
        budget: &mut u32,
    ) -> Fate {
        for &rule in by.get(&(table, chain)).map_or(&[][..], Vec::as_slice) {
            // Chains that jump into each other many times over cannot make the walk long.
            if *budget == 0 || found.len() >= MAX_CONFIG_ENTRIES {
                return Fate::Continues;
            }
            *budget -= 1;
            let covers = flow.covered_by(rule);
            if covers == Covers::Nothing {
                continue;
            }
            match &rule.verdict {
                Verdict::Accept if covers == Covers::All => return Fate::Accepted,
                Verdict::Drop | Verdict::Reject => {
                    found.push(self.shown(rule));
                    if covers == Covers::All {
                        return Fate::Dropped;
                    }
                }
                Verdict::Return if covers == Covers::All => return Fate::Continues,
                Verdict::Jump(user)
                    if depth < 4 && !is_builtin_chain(user) && !is_cluster_chain(user) =>
                {
                    let fate = self.walk(by, base, flow, (table, user), depth + 1, found, budget);
                    if covers == Covers::All && fate != Fate::Continues {
                        return fate;
                    }
                }
                _ => {}
            }
        }
        if depth == 0 && base.policy_drops {
            found.push(FirewallRule {
                table: table.to_owned(),
                chain: chain.to_owned(),
                rule: format!(
                    ":{chain} DROP (policy) and no rule accepts {}",
                    flow.describe()
                ),
                backend: self.backend,
                handle: None,
            });
            return Fate::Dropped;
        }
        Fate::Continues
    }
}

/// The rules of each (table, chain), in order, indexed once for the walk.
type ByChain<'a> = std::collections::HashMap<(&'a str, &'a str), Vec<&'a Rule>>;

/// One line of iptables-save's output that matters, with the table it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SaveLine<'a> {
    /// `:CHAIN POLICY [counters]` (a user chain's policy is `-`).
    Chain {
        table: &'a str,
        chain: &'a str,
        policy: &'a str,
    },
    /// `-A CHAIN ...`, the whole line.
    Rule {
        table: &'a str,
        chain: &'a str,
        line: &'a str,
    },
}

/// The chain declarations and rules of an iptables-save dump, in order.
pub(crate) fn save_lines(text: &str) -> impl Iterator<Item = SaveLine<'_>> {
    let mut table = "";
    text.lines().map(str::trim).filter_map(move |line| {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
            None
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut it = decl.split_whitespace();
            Some(SaveLine::Chain {
                table,
                chain: it.next()?,
                policy: it.next()?,
            })
        } else {
            let rest = line.strip_prefix("-A ")?;
            Some(SaveLine::Rule {
                table,
                chain: rest.split_whitespace().next().unwrap_or(""),
                line,
            })
        }
    })
}

/// The jump target of an iptables rule (`-j X` or `-g X`, the last one).
pub(crate) fn jump_target(rule: &str) -> Option<&str> {
    let words: Vec<&str> = rule.split_whitespace().collect();
    words
        .windows(2)
        .rev()
        .find(|w| w[0] == "-j" || w[0] == "-g")
        .map(|w| w[1])
}

/// One `-A CHAIN ...` line of iptables-save in typed form.
fn iptables_rule(table: &str, line: &str) -> Rule {
    let w: Vec<&str> = line.split_whitespace().collect();
    let chain = w.get(1).copied().unwrap_or("").to_owned();
    let mut conditions = Vec::new();
    // Skip `-A CHAIN`.
    let mut i = 2;
    while i < w.len() {
        let negated = w[i] == "!";
        if negated {
            i += 1;
        }
        let Some(&opt) = w.get(i) else { break };
        let val = w.get(i + 1).copied().unwrap_or("");
        let m = match opt {
            "-p" | "--protocol" => Some(Match::Proto(val.to_ascii_lowercase())),
            "-s" | "--source" => Some(Match::Source(val.to_owned())),
            "-d" | "--destination" => Some(Match::Destination(val.to_owned())),
            "--dport" | "--dports" | "--destination-port" | "--destination-ports" => {
                Some(Match::DestinationPort(val.to_owned()))
            }
            "-i" | "--in-interface" => Some(Match::InInterface(val.to_owned())),
            "-o" | "--out-interface" => Some(Match::OutInterface(val.to_owned())),
            "--ctstate" | "--state" => Some(Match::ConnState(
                val.split(',').map(str::to_ascii_lowercase).collect(),
            )),
            // Modules, verdicts and their options: not matches.
            "-m" | "--match" | "-j" | "--jump" | "-g" | "--goto" | "--comment"
            | "--reject-with" => None,
            // Any other option (a source port, a range, a set, a mark, a rate) narrows
            // the rule.
            o if o.starts_with('-') => Some(Match::Narrows),
            _ => {
                i += 1;
                continue;
            }
        };
        if let Some(m) = m {
            conditions.push(Condition {
                negated,
                matches: m,
            });
        }
        i += 2;
    }
    let verdict = match jump_target(line) {
        Some("ACCEPT") => Verdict::Accept,
        Some("DROP") => Verdict::Drop,
        Some("REJECT") => Verdict::Reject,
        Some("RETURN") => Verdict::Return,
        Some(t) => Verdict::Jump(t.to_owned()),
        None => Verdict::Continue,
    };
    Rule {
        table: table.to_owned(),
        chain,
        conditions,
        verdict,
        text: line.to_owned(),
        handle: None,
    }
}

/// One nftables rule (its `expr` list) in typed form: one rule, or, for a verdict map
/// (`ct state vmap { invalid : drop, established : accept }`), one rule per entry.
fn nft_rules(table: &str, chain: &str, expr: &[Value], handle: Option<u64>) -> Vec<Rule> {
    let mut conditions = Vec::new();
    let mut words = Vec::new();
    let mut verdict = Verdict::Continue;
    let mut vmap: Vec<(Condition, Verdict)> = Vec::new();
    for stmt in expr {
        let Some((kind, o)) = stmt.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        match kind.as_str() {
            "match" => {
                let op = o["op"].as_str().unwrap_or("==");
                let (left, right) = (&o["left"], &o["right"]);
                words.push(format!(
                    "{}{} {}",
                    nft_words(left),
                    match op {
                        "==" | "in" => String::new(),
                        other => format!(" {other}"),
                    },
                    nft_words(right)
                ));
                let negated = op == "!=";
                if !matches!(op, "==" | "!=" | "in") {
                    conditions.push(Condition::is(Match::Narrows));
                    continue;
                }
                conditions.extend(nft_match(left, right).into_iter().map(|m| Condition {
                    negated: negated && m != Match::Narrows,
                    matches: m,
                }));
            }
            "vmap" => {
                let key = &o["key"];
                let entries = o["data"]["set"].as_array().cloned().unwrap_or_default();
                let mut shown = Vec::new();
                for e in &entries {
                    let (Some(k), Some(v)) = (e.get(0), e.get(1)) else {
                        continue;
                    };
                    let to = nft_verdict(v);
                    shown.push(format!("{} : {}", nft_words(k), nft_words(v)));
                    let ms = nft_match(key, k);
                    let cond = match ms.as_slice() {
                        [one] => Condition::is(one.clone()),
                        _ => Condition::is(Match::Narrows),
                    };
                    if let Some(to) = to {
                        vmap.push((cond, to));
                    }
                }
                words.push(format!(
                    "{} vmap {{ {} }}",
                    nft_words(key),
                    shown.join(", ")
                ));
            }
            // A rate or quota limit takes only some packets.
            "limit" | "quota" => {
                conditions.push(Condition::is(Match::Narrows));
                words.push(kind.clone());
            }
            "counter" => {}
            // iptables' own matches and targets inside nft (`xt`): not readable here.
            "xt" => {
                conditions.push(Condition::is(Match::Narrows));
                words.push("xt".to_owned());
            }
            _ => match nft_verdict(stmt) {
                Some(v) => {
                    words.push(nft_words(stmt));
                    verdict = v;
                }
                None => words.push(kind.clone()),
            },
        }
    }
    let mut text = words.join(" ");
    if text.chars().count() > MAX_RULE_TEXT {
        text = meshprobe_core::text::clip(&text, MAX_RULE_TEXT);
    }
    let rule = |extra: Option<Condition>, verdict: Verdict| Rule {
        table: table.to_owned(),
        chain: chain.to_owned(),
        conditions: conditions.iter().cloned().chain(extra).collect(),
        verdict,
        text: text.clone(),
        handle,
    };
    if vmap.is_empty() {
        vec![rule(None, verdict)]
    } else {
        vmap.into_iter().map(|(c, v)| rule(Some(c), v)).collect()
    }
}

/// A verdict statement (`{"accept": null}`, `{"jump": {"target": "x"}}`).
fn nft_verdict(v: &Value) -> Option<Verdict> {
    let (kind, o) = v.as_object().and_then(|o| o.iter().next())?;
    Some(match kind.as_str() {
        "accept" => Verdict::Accept,
        "drop" => Verdict::Drop,
        "reject" => Verdict::Reject,
        "return" => Verdict::Return,
        "jump" | "goto" => Verdict::Jump(o["target"].as_str()?.to_owned()),
        _ => return None,
    })
}

/// What a match of `left` against `right` tests (more than one: `udp dport 53` also tests
/// the protocol).
fn nft_match(left: &Value, right: &Value) -> Vec<Match> {
    if let Some(p) = left.get("payload") {
        let (proto, field) = (
            p["protocol"].as_str().unwrap_or(""),
            p["field"].as_str().unwrap_or(""),
        );
        return match (proto, field) {
            ("ip", "saddr") => {
                vec![nft_list(right, nft_addr).map_or(Match::Narrows, Match::Source)]
            }
            ("ip", "daddr") => {
                vec![nft_list(right, nft_addr).map_or(Match::Narrows, Match::Destination)]
            }
            ("ip6", _) => vec![Match::Never],
            ("udp" | "tcp" | "sctp" | "dccp", "dport") => vec![
                Match::Proto(proto.to_owned()),
                nft_list(right, nft_port).map_or(Match::Narrows, Match::DestinationPort),
            ],
            ("th", "dport") => {
                vec![nft_list(right, nft_port).map_or(Match::Narrows, Match::DestinationPort)]
            }
            ("udp" | "tcp" | "sctp" | "dccp", _) => {
                vec![Match::Proto(proto.to_owned()), Match::Narrows]
            }
            _ => vec![Match::Narrows],
        };
    }
    if let Some(m) = left.get("meta") {
        let strings = || nft_list(right, |v| v.as_str().map(str::to_owned));
        return vec![match m["key"].as_str().unwrap_or("") {
            "l4proto" => strings().map_or(Match::Narrows, Match::Proto),
            "iifname" | "iif" => match right.as_str() {
                Some(name) => Match::InInterface(nft_interface(name)),
                None => Match::Narrows,
            },
            "oifname" | "oif" => match right.as_str() {
                Some(name) => Match::OutInterface(nft_interface(name)),
                None => Match::Narrows,
            },
            "nfproto" if right.as_str() == Some("ipv6") => Match::Never,
            "nfproto" if right.as_str() == Some("ipv4") => return Vec::new(),
            _ => Match::Narrows,
        }];
    }
    if left.get("ct").and_then(|c| c["key"].as_str()) == Some("state") {
        let states: Vec<String> = match right {
            Value::String(s) => vec![s.to_ascii_lowercase()],
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_ascii_lowercase)
                .collect(),
            other => other["set"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_ascii_lowercase)
                .collect(),
        };
        return vec![Match::ConnState(states)];
    }
    vec![Match::Narrows]
}

/// nft's interface wildcard (`cni*`) in iptables' form (`cni+`).
fn nft_interface(name: &str) -> String {
    match name.strip_suffix('*') {
        Some(prefix) => format!("{prefix}+"),
        None => name.to_owned(),
    }
}

/// A value or a set of values as a comma-separated list, each read by `one`; `None` when
/// any is not readable (a named set, a map).
fn nft_list(v: &Value, one: impl Fn(&Value) -> Option<String>) -> Option<String> {
    match v.get("set").and_then(Value::as_array) {
        Some(items) => items
            .iter()
            .map(&one)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        None => one(v),
    }
}

/// An IPv4 address or prefix.
fn nft_addr(v: &Value) -> Option<String> {
    if let Some(s) = v.as_str() {
        return s.parse::<Ipv4Addr>().ok().map(|a| a.to_string());
    }
    let p = v.get("prefix")?;
    let addr = p["addr"].as_str()?.parse::<Ipv4Addr>().ok()?;
    Some(format!("{addr}/{}", p["len"].as_u64()?))
}

/// A port or a range of ports.
fn nft_port(v: &Value) -> Option<String> {
    if let Some(n) = v.as_u64() {
        return u16::try_from(n).ok().map(|p| p.to_string());
    }
    let r = v.get("range")?.as_array()?;
    let (lo, hi) = (r.first()?.as_u64()?, r.get(1)?.as_u64()?);
    Some(format!(
        "{}:{}",
        u16::try_from(lo).ok()?,
        u16::try_from(hi).ok()?
    ))
}

/// nft's words for an expression, for people (short, and escaped where shown).
fn nft_words(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => meshprobe_core::text::clip(s, 64),
        Value::Array(a) => a.iter().map(nft_words).collect::<Vec<_>>().join(","),
        Value::Object(o) => {
            let Some((k, inner)) = o.iter().next() else {
                return String::new();
            };
            match k.as_str() {
                "payload" => format!(
                    "{} {}",
                    nft_words(&inner["protocol"]),
                    nft_words(&inner["field"])
                ),
                "meta" => format!("meta {}", nft_words(&inner["key"])),
                "ct" => format!("ct {}", nft_words(&inner["key"])),
                "prefix" => format!("{}/{}", nft_words(&inner["addr"]), nft_words(&inner["len"])),
                "range" => format!("{}-{}", nft_words(&inner[0]), nft_words(&inner[1])),
                "set" => format!("{{ {} }}", nft_words(inner).replace(',', ", ")),
                "accept" | "drop" | "return" => k.clone(),
                "reject" => match (inner["type"].as_str(), inner["expr"].as_str()) {
                    (Some(t), Some(e)) => format!("reject with {t} {e}"),
                    _ => "reject".to_owned(),
                },
                "jump" | "goto" => format!("{k} {}", nft_words(&inner["target"])),
                other => other.to_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A firewalld-shaped ruleset (zones, a catch-all reject, a verdict map) written with
    /// `nft -f` in a scratch namespace and listed with `nft -j list ruleset`, with a rule
    /// iptables-nft added in `ip filter`.
    const FIREWALLD: &str = include_str!("../tests/fixtures/nft-firewalld.json");

    fn node_ips() -> Vec<Ipv4Addr> {
        vec![
            Ipv4Addr::new(192, 168, 77, 11),
            Ipv4Addr::new(192, 168, 77, 12),
        ]
    }

    fn hooks() -> [(Hook, &'static str); 3] {
        [
            (Hook::Prerouting, "raw"),
            (Hook::Input, "filter"),
            (Hook::Output, "filter"),
        ]
    }

    #[test]
    fn firewalld_rejects_the_overlay_at_its_zones_end() {
        let fw = Ruleset::from_nft_json(FIREWALLD, true).expect("nft json");
        // VXLAN on 4789 (not the allowed 8472) from a node outside the allowed /24.
        let flow = Flow::overlay(4789, &[Ipv4Addr::new(10, 9, 0, 1)]);
        let found = fw.drops(&flow, &hooks());
        let shown: Vec<String> = found.iter().map(FirewallRule::shown).collect();
        assert_eq!(
            shown,
            ["nft inet firewalld filter_INPUT: reject with icmpx admin-prohibited (handle 20)"],
            "{found:#?}"
        );
        assert!(found[0].is_firewalld());
        // The tables iptables-nft keeps are read from iptables-nft-save, not twice.
        assert!(fw.rules.iter().all(|r| r.table != "ip filter"));
    }

    #[test]
    fn an_accept_in_one_table_does_not_save_a_flow_another_rejects() {
        let fw = Ruleset::from_nft_json(FIREWALLD, true).expect("nft json");
        // allow_vx accepts 8472 from the /24; firewalld's own chain still rejects it.
        let found = fw.drops(&Flow::overlay(8472, &node_ips()), &hooks());
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].table, "inet firewalld");
        // Once firewalld's zone allows it, nothing drops it.
        let opened = FIREWALLD.replace("\"right\": 9090", "\"right\": 8472");
        let opened = Ruleset::from_nft_json(&opened, true).expect("nft json");
        let udp9090 = opened.drops(&Flow::overlay(8472, &node_ips()), &hooks());
        assert_eq!(udp9090.len(), 1, "tcp 8472 is not udp: {udp9090:#?}");
        let opened = FIREWALLD.replace(
            "{\"payload\": {\"protocol\": \"udp\", \"field\": \"dport\"}}, \"right\": 53",
            "{\"payload\": {\"protocol\": \"udp\", \"field\": \"dport\"}}, \"right\": 8472",
        );
        let opened = Ruleset::from_nft_json(&opened, true).expect("nft json");
        assert!(
            opened
                .drops(&Flow::overlay(8472, &node_ips()), &hooks())
                .is_empty(),
            "udp 8472 allowed in the zone"
        );
    }

    #[test]
    fn the_relay_and_forwarded_pods_meet_firewalld_too() {
        let fw = Ruleset::from_nft_json(FIREWALLD, true).expect("nft json");
        let pods = meshprobe_core::PodCidr::parse("10.244.1.0/24").expect("cidr");
        let relay = Flow::relay(pods, node_ips()[0], 7071);
        let found = fw.drops(
            &relay,
            &[(Hook::Prerouting, "raw"), (Hook::Input, "filter")],
        );
        assert_eq!(found.len(), 1, "{found:#?}");
        let fwd = Flow::forwarded(
            &[(Ipv4Addr::new(10, 244, 0, 0), 16)],
            &["cni0", "flannel.1"],
        );
        let found = fw.drops(&fwd, &[(Hook::Forward, "filter")]);
        assert!(
            found
                .iter()
                .any(|r| r.chain == "filter_FORWARD" && r.rule.starts_with("reject")),
            "{found:#?}"
        );
        // The IPv6-only reject does not take IPv4 pods.
        assert!(found.iter().all(|r| !r.rule.contains("ip6")), "{found:#?}");
    }

    #[test]
    fn iptables_nft_tables_are_read_when_iptables_nft_save_was_not() {
        let fw = Ruleset::from_nft_json(FIREWALLD, false).expect("nft json");
        let found = fw.drops(&Flow::overlay(8472, &node_ips()), &hooks());
        assert!(
            found
                .iter()
                .any(|r| r.table == "ip filter" && r.rule == "udp dport 8472 drop"),
            "{found:#?}"
        );
        assert_eq!(
            Ruleset::from_nft_json("not json", false).map(|r| r.rules.len()),
            None
        );
        assert_eq!(
            Ruleset::from_nft_json("{\"nftables\": []}", false).map(|r| r.rules.len()),
            Some(0)
        );
    }

    #[test]
    fn a_verdict_map_is_a_rule_per_entry() {
        let expr: Value = serde_json::from_str(
            r#"[{"vmap": {"key": {"ct": {"key": "state"}}, "data": {"set": [["invalid", {"drop": null}], ["new", {"jump": {"target": "zones"}}]]}}}]"#,
        )
        .expect("json");
        let rules = nft_rules("inet t", "input", expr.as_array().expect("array"), Some(4));
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].verdict, Verdict::Drop);
        assert_eq!(rules[1].verdict, Verdict::Jump("zones".into()));
        assert_eq!(
            rules[0].text,
            "ct state vmap { invalid : drop, new : jump zones }"
        );
        let flow = Flow::overlay(8472, &[]);
        assert_eq!(
            flow.covered_by(&rules[0]),
            Covers::Nothing,
            "new is not invalid"
        );
        assert_eq!(flow.covered_by(&rules[1]), Covers::All);
    }
}
