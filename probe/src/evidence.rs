//! Node-local evidence, read by the host agent each round.
//!
//! Sources: `/proc/sys` for sysctls, `iptables-save` for the firewall, iproute2's JSON
//! (`ip -j addr|route|neigh`, `bridge -j fdb`) for the overlay's state, `/proc/*/comm` for
//! host security agents, `/run/flannel/subnet.env`. All reads go through [`Host`], so the
//! parsers are tested on fixtures; a missing tool becomes an `unavailable` note, never an
//! error.

use std::io;
use std::net::Ipv4Addr;
use std::process::Command;

use meshprobe_core::evidence::{
    DeviceState, FdbEntry, FirewallBackend, FirewallRule, FirewallSource, ForwardEvidence,
    KubeProxyEvidence, LocalAddress, MAX_CONFIG_ENTRIES, MisroutedPeer, NeighbourEntry,
    NodeEvidence, OverlayConfig, OverlayEvidence, OverlayExpectation, OverlayPeer, RouteEntry,
};
use serde_json::Value;

pub use crate::firewall::{Flow, Proto};
use crate::firewall::{
    Hook, Ruleset, SaveLine, is_builtin_chain, is_cluster_chain, jump_target, save_lines,
};

/// Security agents that hook the host's network stack, as the field notes name them
/// (process names, which the kernel truncates to 15 characters in `comm`).
pub const SECURITY_AGENTS: [&str; 11] = [
    "qaxsafed",
    "sangfor_watchdog",
    "YDservice",
    "Symantec",
    "start360su_safed",
    "gov_defence_service",
    "gov_defence_guard",
    "wsssr_defence_daemon",
    "wsssr_defence_service",
    "wsssr_defence_agent",
    "kesl",
];

/// Where evidence is read from.
pub trait Host {
    /// Reads a file.
    fn read(&self, path: &str) -> io::Result<String>;
    /// Runs a program and returns its standard output (an error if it fails).
    fn run(&self, program: &str, args: &[&str]) -> io::Result<String>;
    /// The `comm` of every process visible.
    fn process_names(&self) -> Vec<String>;
}

/// The real host. Commands are killed at the deadline, so evidence never outlives the
/// round's budget (a hung `iptables-save` waiting on the xtables lock, say).
#[derive(Clone, Copy, Debug)]
pub struct RealHost {
    deadline: std::time::Instant,
}

impl RealHost {
    /// A host whose commands must finish by `deadline`.
    pub fn with_deadline(deadline: std::time::Instant) -> Self {
        Self { deadline }
    }

    /// A host whose commands get `limit` each from now.
    pub fn within(limit: std::time::Duration) -> Self {
        Self::with_deadline(std::time::Instant::now() + limit)
    }
}

/// Runs `program`, killing it at `deadline`; its output, read on a helper thread so a
/// chatty program cannot fill the pipe and hang.
fn output_by(
    program: &str,
    args: &[&str],
    deadline: std::time::Instant,
) -> io::Result<std::process::Output> {
    use std::process::Stdio;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let read = |pipe: Option<Box<dyn io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                // At most 16 MiB: evidence is small; a runaway program is cut off.
                let _ = io::Read::read_to_end(&mut io::Read::take(&mut p, 16 << 20), &mut buf);
            }
            buf
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn io::Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn io::Read + Send>),
    );
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{program} did not finish within the round's budget (killed)"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

impl Host for RealHost {
    fn read(&self, path: &str) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn run(&self, program: &str, args: &[&str]) -> io::Result<String> {
        let out = output_by(program, args, self.deadline)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ))
        }
    }
    fn process_names(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
            .map(|s| s.trim().to_owned())
            .collect()
    }
}

/// Reads everything. Cheap: a few files and five short commands.
pub fn collect(host: &dyn Host, expect: Option<&OverlayExpectation>) -> NodeEvidence {
    let mut ev = NodeEvidence::default();
    match host.read("/proc/sys/net/ipv4/ip_forward") {
        Ok(v) => ev.ip_forward = Some(v.trim() == "1"),
        Err(e) => ev.unavailable.push(format!("net.ipv4.ip_forward: {e}")),
    }
    read_firewall(host, expect, &mut ev);
    if let Some(exp) = expect {
        let json = |args: &[&str]| {
            host.run("ip", args)
                .map_err(|e| format!("ip {}: {e}", args.join(" ")))
        };
        match (
            json(&["-d", "-j", "addr", "show"]),
            json(&["-j", "-4", "route", "show"]),
        ) {
            (Ok(addrs), Ok(routes)) => {
                let neigh = json(&["-j", "-4", "neigh", "show", "dev", &exp.interface])
                    .unwrap_or_else(|_| "[]".into());
                let fdb = host.run("bridge", &["-j", "fdb", "show", "dev", &exp.interface]);
                if let Err(e) = &fdb {
                    ev.unavailable.push(format!("bridge fdb: {e}"));
                }
                let mut overlay = check_overlay(
                    exp,
                    &addrs,
                    &routes,
                    &neigh,
                    fdb.as_ref().ok().map(String::as_str),
                );
                // The kernel's own choice toward each peer's pods: one lookup a peer
                // (the plan's peers, at most 32 above 100 nodes).
                for p in exp.peers.iter().take(MAX_CONFIG_ENTRIES) {
                    let addr = p.pod_cidr.first_host().to_string();
                    if let Ok(out) = host.run("ip", &["-j", "route", "get", &addr]) {
                        overlay.misrouted.extend(route_choice(exp, p, &addr, &out));
                    }
                }
                ev.overlay = Some(overlay);
                ev.cidr_overlaps = cidr_overlaps(exp, &addrs, &routes);
                ev.config = Some(overlay_config(
                    exp,
                    &addrs,
                    &routes,
                    &neigh,
                    fdb.as_ref().map_or("[]", String::as_str),
                ));
            }
            (Err(e), _) | (_, Err(e)) => ev.unavailable.push(e),
        }
    }
    ev.bridge_nf_call_iptables = match host.read("/proc/sys/net/bridge/bridge-nf-call-iptables") {
        Ok(v) => Some(v.trim() == "1"),
        // br_netfilter is not loaded: bridged traffic skips iptables, which kube-proxy's
        // iptables mode needs (kubeadm's preflight checks for this file).
        Err(_) if ev.kube_proxy.is_some() => Some(false),
        Err(_) => None,
    };
    if let Ok(text) = host.read("/run/flannel/subnet.env") {
        ev.subnet_env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
    }
    ev.security_agents = security_agents(&host.process_names());
    ev
}

/// The iptables backend the host's own `iptables` uses (`iptables -V`: "(nf_tables)" or
/// "(legacy)"), when it says.
fn default_backend(host: &dyn Host) -> Option<Backend> {
    let v = host.run("iptables", &["-V"]).ok()?;
    if v.contains("nf_tables") {
        Some(Backend::Nft)
    } else if v.contains("legacy") {
        Some(Backend::Legacy)
    } else {
        None
    }
}

/// The kernel's two iptables backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Legacy,
    Nft,
}

/// How many rules an `iptables-save` dump holds, counting a chain's DROP policy as one
/// (what iptables-wrapper counts to tell which backend is in use).
fn rule_count(text: &str) -> u32 {
    let n = save_lines(text)
        .filter(|l| {
            matches!(
                l,
                SaveLine::Rule { .. } | SaveLine::Chain { policy: "DROP", .. }
            )
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Reads the firewall from every source the host has, as iptables-wrapper tells the
/// backends apart: both iptables backends (a packet meets the rules of both, so rules in
/// the one the host's `iptables` does not show count too), and native nftables tables
/// (`nft -j list ruleset`: firewalld on RHEL 8 and 9), each walked on its own.
fn read_firewall(host: &dyn Host, expect: Option<&OverlayExpectation>, ev: &mut NodeEvidence) {
    let traffic = OverlayTraffic::of(expect);
    let relay = expect.and_then(|e| {
        e.relay
            .as_ref()
            .map(|r| Flow::relay(r.pod_cidr, e.node_ip, r.port))
    });
    let default = default_backend(host);
    let mut dumps: Vec<(Backend, String)> = Vec::new();
    let mut last_error = None;
    for (program, backend) in [
        ("iptables-legacy-save", Backend::Legacy),
        ("iptables-nft-save", Backend::Nft),
    ] {
        match host.run(program, &[]) {
            Ok(text) => dumps.push((backend, text)),
            Err(e) => last_error = Some(format!("{program}: {e}")),
        }
    }
    let nft_read = dumps.iter().any(|(b, _)| *b == Backend::Nft);
    let holding: Vec<&(Backend, String)> =
        dumps.iter().filter(|(_, t)| rule_count(t) > 0).collect();
    // Each backend that holds rules, named as the host's `iptables` would be when it is
    // that one (or when only one holds any and the host does not say which it uses).
    let mut sources: Vec<(FirewallBackend, &str)> = holding
        .iter()
        .map(|(b, text)| {
            let tag = match (b, default) {
                (b, Some(d)) if *b == d => FirewallBackend::Iptables,
                (_, None) if holding.len() == 1 => FirewallBackend::Iptables,
                (Backend::Legacy, _) => FirewallBackend::IptablesLegacy,
                (Backend::Nft, _) => FirewallBackend::IptablesNft,
            };
            (tag, text.as_str())
        })
        .collect();
    let plain;
    if sources.is_empty() {
        // Nothing held anywhere: read the host's own dump (empty tables say ACCEPT), or,
        // without either variant, plain `iptables-save`.
        match dumps
            .iter()
            .find(|(b, _)| Some(*b) == default)
            .or(dumps.first())
        {
            Some((_, text)) => sources.push((FirewallBackend::Iptables, text.as_str())),
            None => match host.run("iptables-save", &[]) {
                Ok(text) => {
                    plain = text;
                    sources.push((FirewallBackend::Iptables, plain.as_str()));
                }
                Err(e) => ev.unavailable.push(format!(
                    "iptables-save: {e}{}",
                    last_error.map(|l| format!(" ({l})")).unwrap_or_default()
                )),
            },
        }
    }
    for (backend, text) in sources {
        let paths = parse_iptables_save_as(text, backend, &traffic, relay.as_ref());
        let fwd = ev.forward.get_or_insert_with(ForwardEvidence::default);
        // A DROP policy in either backend drops.
        if fwd.policy.is_none() || paths.forward.policy.as_deref() == Some("DROP") {
            fwd.policy = paths.forward.policy;
        }
        extend_unique(&mut fwd.blocking_rules, paths.forward.blocking_rules);
        for c in paths.forward.foreign_chains {
            if !fwd.foreign_chains.contains(&c) {
                fwd.foreign_chains.push(c);
            }
        }
        extend_unique(&mut ev.overlay_port_rules, paths.overlay);
        extend_unique(&mut ev.relay_port_rules, paths.relay);
        if ev.kube_proxy.is_none() {
            ev.kube_proxy = parse_kube_proxy(text);
        }
        ev.firewall_sources.push(FirewallSource {
            backend,
            rules: rule_count(text),
        });
    }
    match host.run("nft", &["-j", "list", "ruleset"]) {
        Ok(json) => match Ruleset::from_nft_json(&json, nft_read) {
            Some(set) => read_nft(&set, expect, &traffic, relay.as_ref(), ev),
            None => ev
                .unavailable
                .push("nft -j list ruleset: not nftables' JSON".to_owned()),
        },
        // No nft on this host: its nftables tables, if any, are iptables-nft's.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => ev.unavailable.push(format!("nft -j list ruleset: {e}")),
    }
}

/// What native nftables tables drop: the overlay, the relay, and pods' forwarded traffic.
fn read_nft(
    set: &Ruleset,
    expect: Option<&OverlayExpectation>,
    traffic: &OverlayTraffic,
    relay: Option<&Flow>,
    ev: &mut NodeEvidence,
) {
    if set.rules.is_empty() {
        return;
    }
    let overlay = set.drops(
        &Flow::from(traffic),
        &[
            (Hook::Prerouting, ""),
            (Hook::Input, ""),
            (Hook::Output, ""),
        ],
    );
    extend_unique(&mut ev.overlay_port_rules, overlay);
    if let Some(flow) = relay {
        let found = set.drops(flow, &[(Hook::Prerouting, ""), (Hook::Input, "")]);
        extend_unique(&mut ev.relay_port_rules, found);
    }
    let pods: Vec<(Ipv4Addr, u8)> = expect
        .map(|e| {
            e.pod_cidrs
                .iter()
                .map(|c| (c.network(), c.net().prefix_len()))
                .collect()
        })
        .unwrap_or_default();
    let dev = expect.map_or("flannel.1", |e| e.interface.as_str());
    let forwarded = set.drops(
        &Flow::forwarded(&pods, &["cni0", dev]),
        &[(Hook::Forward, "")],
    );
    if !forwarded.is_empty() {
        let fwd = ev.forward.get_or_insert_with(ForwardEvidence::default);
        extend_unique(&mut fwd.blocking_rules, forwarded);
    }
    ev.firewall_sources.push(FirewallSource {
        backend: FirewallBackend::Nftables,
        rules: u32::try_from(set.rules.len()).unwrap_or(u32::MAX),
    });
}

/// kube-proxy's iptables-mode NAT chains, counted; `None` when it does not run in that
/// mode here (no `KUBE-SERVICES` in the nat table).
pub fn parse_kube_proxy(text: &str) -> Option<KubeProxyEvidence> {
    let mut seen = false;
    let mut kp = KubeProxyEvidence::default();
    for line in save_lines(text) {
        match line {
            SaveLine::Chain {
                table: "nat",
                chain: "KUBE-SERVICES",
                ..
            } => seen = true,
            SaveLine::Rule {
                table: "nat",
                chain,
                line,
            } => match chain {
                "KUBE-SERVICES" => kp.service_rules += 1,
                "KUBE-NODEPORTS" => kp.nodeport_rules += 1,
                "KUBE-POSTROUTING" if jump_target(line) == Some("MASQUERADE") => {
                    kp.masquerade = true;
                }
                _ => {}
            },
            _ => {}
        }
    }
    seen.then_some(kp)
}

/// The overlay's own traffic, as the firewall sees it: UDP to `port` between node IPs.
#[derive(Debug, Clone, Default)]
pub struct OverlayTraffic {
    /// The VXLAN port.
    pub port: u16,
    /// Every node's IP, this node's included. Empty: unknown, any address may be a node's.
    pub node_ips: Vec<Ipv4Addr>,
}

impl OverlayTraffic {
    /// The overlay of `exp`, or flannel's default port with unknown node IPs.
    pub fn of(exp: Option<&OverlayExpectation>) -> Self {
        match exp {
            Some(e) => Self {
                port: e.port,
                node_ips: std::iter::once(e.node_ip)
                    .chain(e.peers.iter().map(|p| p.ip))
                    .collect(),
            },
            None => Self {
                port: 8472,
                node_ips: Vec::new(),
            },
        }
    }
}

impl From<&OverlayTraffic> for Flow {
    fn from(t: &OverlayTraffic) -> Self {
        Flow::overlay(t.port, &t.node_ips)
    }
}

/// What `iptables-save` says about the FORWARD path and the overlay's traffic.
///
/// The overlay's rules are those that drop or reject its UDP port by name, anywhere, and
/// those a VXLAN packet between nodes would meet in order in `INPUT`, `OUTPUT` and the raw
/// table before something accepts it (a distribution's `-A INPUT -j REJECT` after its
/// own accepts, a policy of DROP).
pub fn parse_iptables_save(
    text: &str,
    traffic: &OverlayTraffic,
) -> (ForwardEvidence, Vec<FirewallRule>) {
    let (fwd, overlay, _) = parse_iptables_save_with(text, traffic, None);
    (fwd, overlay)
}

/// [`parse_iptables_save`], and the rules a connection of `relay` (the host agent's relay,
/// from its node's pods) meets in the raw table's PREROUTING and in INPUT before something
/// accepts it.
pub fn parse_iptables_save_with(
    text: &str,
    traffic: &OverlayTraffic,
    relay: Option<&Flow>,
) -> (ForwardEvidence, Vec<FirewallRule>, Vec<FirewallRule>) {
    let f = parse_iptables_save_as(text, FirewallBackend::Iptables, traffic, relay);
    (f.forward, f.overlay, f.relay)
}

/// What one firewall source says about the three paths the evidence follows.
#[derive(Debug, Clone, Default)]
pub struct FirewallPaths {
    /// The FORWARD path.
    pub forward: ForwardEvidence,
    /// What may drop the overlay's traffic.
    pub overlay: Vec<FirewallRule>,
    /// What may drop a pod's connection to the relay.
    pub relay: Vec<FirewallRule>,
}

/// [`parse_iptables_save_with`] for the rules of one iptables `backend`.
pub fn parse_iptables_save_as(
    text: &str,
    backend: FirewallBackend,
    traffic: &OverlayTraffic,
    relay: Option<&Flow>,
) -> FirewallPaths {
    let rule = |table: &str, chain: &str, text: &str| FirewallRule {
        backend,
        ..FirewallRule::iptables(table, chain, text)
    };
    let mut fwd = ForwardEvidence::default();
    let mut port_rules = Vec::new();
    // filter table: chain -> its rules, in order.
    let mut filter: Vec<(String, String)> = Vec::new();
    let port = traffic.port.to_string();
    for line in save_lines(text) {
        match line {
            SaveLine::Chain {
                table,
                chain,
                policy,
            } => {
                if table == "filter" && chain == "FORWARD" {
                    fwd.policy = Some(policy.to_owned());
                }
                if !is_builtin_chain(chain)
                    && !is_cluster_chain(chain)
                    && !fwd.foreign_chains.iter().any(|c| c == chain)
                {
                    fwd.foreign_chains.push(chain.to_owned());
                }
            }
            SaveLine::Rule { table, chain, line } => {
                let blocks = matches!(jump_target(line), Some("DROP" | "REJECT"));
                let words: Vec<&str> = line.split_whitespace().collect();
                let on_port = words.windows(2).any(|w| {
                    matches!(w[0], "--dport" | "--sport" | "--dports" | "--sports")
                        && w[1].split(',').any(|p| p == port)
                }) && line.contains("-p udp");
                if blocks && on_port {
                    port_rules.push(rule(table, chain, line));
                }
                if table == "filter" {
                    filter.push((chain.to_owned(), line.to_owned()));
                }
            }
        }
    }
    // Walk FORWARD in order until it hands pod traffic to the cluster's chains: a REJECT or
    // DROP before that point (directly, or in a foreign chain it jumps to) shadows the
    // CNI's accept rules, as firewalld's `-A FORWARD -j REJECT` does.
    fn rules_of<'a>(
        filter: &'a [(String, String)],
        c: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        filter
            .iter()
            .filter(move |(ch, _)| ch == c)
            .map(|(_, r)| r.as_str())
    }
    let mut cluster_accept_seen = false;
    for r in rules_of(&filter, "FORWARD") {
        match jump_target(r) {
            Some(t) if is_cluster_chain(t) => {
                cluster_accept_seen = true;
                break;
            }
            Some("DROP" | "REJECT") if !is_conntrack_invalid(r) => {
                fwd.blocking_rules.push(rule("filter", "FORWARD", r));
            }
            Some(t) if !is_builtin_chain(t) && !matches!(t, "ACCEPT" | "RETURN" | "LOG") => {
                for inner in rules_of(&filter, t) {
                    if matches!(jump_target(inner), Some("DROP" | "REJECT"))
                        && !is_conntrack_invalid(inner)
                    {
                        fwd.blocking_rules.push(rule("filter", t, inner));
                    }
                }
            }
            _ => {}
        }
    }
    if !cluster_accept_seen && fwd.policy.as_deref() == Some("DROP") {
        fwd.blocking_rules.push(rule(
            "filter",
            "FORWARD",
            ":FORWARD DROP (policy) and no Kubernetes/CNI chain accepts pod traffic",
        ));
    }
    let set = Ruleset::from_iptables_save(text, backend);
    let overlay_hooks = [
        (Hook::Prerouting, "raw"),
        (Hook::Output, "raw"),
        (Hook::Input, "filter"),
        (Hook::Output, "filter"),
    ];
    extend_unique(
        &mut port_rules,
        set.drops(&Flow::from(traffic), &overlay_hooks),
    );
    let relay_rules = relay.map_or_else(Vec::new, |flow| {
        set.drops(flow, &[(Hook::Prerouting, "raw"), (Hook::Input, "filter")])
    });
    fwd.blocking_rules.truncate(MAX_CONFIG_ENTRIES);
    FirewallPaths {
        forward: fwd,
        overlay: port_rules,
        relay: relay_rules,
    }
}

/// Appends the rules of `more` that `to` does not hold, up to [`MAX_CONFIG_ENTRIES`].
fn extend_unique(to: &mut Vec<FirewallRule>, more: Vec<FirewallRule>) {
    for r in more {
        if !to.contains(&r) && to.len() < MAX_CONFIG_ENTRIES {
            to.push(r);
        }
    }
}

/// `-m conntrack --ctstate INVALID -j DROP` is hygiene every distribution ships, not a block.
fn is_conntrack_invalid(rule: &str) -> bool {
    rule.contains("--ctstate INVALID")
}

fn arr(text: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn device(link: &Value) -> Option<DeviceState> {
    let flags = link["flags"].as_array()?;
    Some(DeviceState {
        name: link["ifname"].as_str()?.to_owned(),
        mtu: link["mtu"].as_u64()? as u32,
        up: flags.iter().any(|f| f == "UP") && link["operstate"] != "DOWN",
        no_carrier: flags.iter().any(|f| f == "NO-CARRIER")
            || link["operstate"] == "LOWERLAYERDOWN",
    })
}

/// Every local IPv4 address inside the cluster's pod networks, on any interface (from
/// `ip -j addr`), at most [`MAX_CONFIG_ENTRIES`].
pub fn pod_range_addrs(exp: &OverlayExpectation, addrs: &str) -> Vec<LocalAddress> {
    let mut out = Vec::new();
    for link in arr(addrs) {
        let Some(dev) = link["ifname"].as_str() else {
            continue;
        };
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let Some(ip) = a["local"].as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let Some(prefix_len) = a["prefixlen"].as_u64().and_then(|l| u8::try_from(l).ok())
            else {
                continue;
            };
            if exp.pod_cidrs.iter().any(|c| c.contains(ip)) && out.len() < MAX_CONFIG_ENTRIES {
                out.push(LocalAddress {
                    dev: dev.to_owned(),
                    ip,
                    prefix_len,
                });
            }
        }
    }
    out
}

/// What `ip -j route get ADDR` answered for an address in `peer`'s pod CIDR, when it is
/// not the overlay device toward the peer's VTEP.
pub fn route_choice(
    exp: &OverlayExpectation,
    peer: &OverlayPeer,
    addr: &str,
    route_get: &str,
) -> Option<MisroutedPeer> {
    let routes = arr(route_get);
    let r = routes.first()?;
    let dev = r["dev"].as_str()?;
    let gateway = r["gateway"].as_str();
    let vtep = peer.vtep_ip.to_string();
    if dev == exp.interface && gateway == Some(vtep.as_str()) {
        return None;
    }
    Some(MisroutedPeer {
        node: peer.node.clone(),
        address: addr.to_owned(),
        dev: dev.chars().take(32).collect(),
        gateway: gateway.map(|g| g.chars().take(64).collect()),
    })
}

/// Checks the overlay device, routes, neighbours and fdb against the expectation.
pub fn check_overlay(
    exp: &OverlayExpectation,
    addrs: &str,
    routes: &str,
    neigh: &str,
    fdb: Option<&str>,
) -> OverlayEvidence {
    let links = arr(addrs);
    let node_ip = exp.node_ip.to_string();
    let mut ev = OverlayEvidence {
        device: links
            .iter()
            .find(|l| l["ifname"] == exp.interface.as_str())
            .and_then(device),
        underlay: links
            .iter()
            .find(|l| {
                l["addr_info"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["local"] == node_ip.as_str()))
            })
            .and_then(device),
        bridge: links
            .iter()
            .find(|l| l["ifname"] == "cni0")
            .and_then(device),
        pod_links_down: links
            .iter()
            .filter(|l| l["master"] == "cni0" && l["ifname"] != "cni0")
            .filter_map(device)
            .filter(|d| !d.up || d.no_carrier)
            .map(|d| d.name)
            .take(MAX_CONFIG_ENTRIES)
            .collect(),
        ..OverlayEvidence::default()
    };
    let routes = arr(routes);
    let neigh = arr(neigh);
    let fdb = fdb.map(arr);
    for p in &exp.peers {
        let cidr = p.pod_cidr.to_string();
        let vtep = p.vtep_ip.to_string();
        let has_route = routes.iter().any(|r| {
            r["dst"] == cidr.as_str()
                && r["dev"] == exp.interface.as_str()
                && r["gateway"] == vtep.as_str()
        });
        if !has_route {
            ev.missing_routes.push(p.node.clone());
        }
        let entry = neigh.iter().find(|n| n["dst"] == vtep.as_str());
        let usable = entry.is_some_and(|n| {
            n["lladdr"].is_string()
                && n["state"].as_array().is_some_and(|s| {
                    s.iter().any(|x| {
                        matches!(
                            x.as_str(),
                            Some("PERMANENT" | "REACHABLE" | "STALE" | "DELAY" | "PROBE")
                        )
                    })
                })
        });
        if !usable {
            ev.missing_neighbours.push(p.node.clone());
        }
        if let Some(fdb) = &fdb {
            let peer_ip = p.ip.to_string();
            let mac = entry.and_then(|n| n["lladdr"].as_str());
            let ok = fdb
                .iter()
                .any(|f| f["dst"] == peer_ip.as_str() && mac.is_none_or(|m| f["mac"] == m));
            if !ok {
                ev.missing_fdb.push(p.node.clone());
            }
        }
        // Entries that exist but point at a MAC the peer no longer advertises.
        if let Some(want) = &p.vtep_mac {
            let peer_ip = p.ip.to_string();
            let other = |m: Option<&str>| m.is_some_and(|m| !m.eq_ignore_ascii_case(want));
            let neigh_wrong = other(entry.and_then(|n| n["lladdr"].as_str()));
            let fdb_wrong = fdb.as_ref().is_some_and(|fdb| {
                let to_peer: Vec<&Value> = fdb
                    .iter()
                    .filter(|f| f["dst"] == peer_ip.as_str())
                    .collect();
                !to_peer.is_empty() && to_peer.iter().all(|f| other(f["mac"].as_str()))
            });
            if neigh_wrong || fdb_wrong {
                ev.wrong_vtep_mac.push(p.node.clone());
            }
        }
    }
    ev
}

/// The node's own overlay identity and configuration, from iproute2's JSON (`ip -d -j addr`,
/// `ip -j -4 route`, `ip -j -4 neigh` and `bridge -j fdb` on the overlay device), for the
/// coordinator to compare across nodes. Entries are kept only for the cluster's pod
/// networks and the plan's peers, at most [`MAX_CONFIG_ENTRIES`] of each kind.
pub fn overlay_config(
    exp: &OverlayExpectation,
    addrs: &str,
    routes: &str,
    neigh: &str,
    fdb: &str,
) -> OverlayConfig {
    let links = arr(addrs);
    let node_ip = exp.node_ip.to_string();
    let by_name = |name: &str| links.iter().find(|l| l["ifname"] == name);
    let mtu = |l: &Value| l["mtu"].as_u64().and_then(|m| u32::try_from(m).ok());
    let addrs_of = |l: &Value| -> Vec<String> {
        l["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["family"].as_str().is_none_or(|f| f == "inet"))
            .filter_map(|a| {
                Some(format!(
                    "{}/{}",
                    a["local"].as_str()?,
                    a["prefixlen"].as_u64()?
                ))
            })
            .take(MAX_CONFIG_ENTRIES)
            .collect()
    };
    let overlay = by_name(&exp.interface);
    let bridge = by_name("cni0");
    let underlay = links.iter().find(|l| {
        l["addr_info"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["local"] == node_ip.as_str()))
    });
    let info = overlay.map(|o| &o["linkinfo"]["info_data"]);
    let mut pod_mtus: Vec<u32> = links
        .iter()
        .filter(|l| l["master"] == "cni0" && l["ifname"].as_str().is_some_and(|n| n != "cni0"))
        .filter_map(mtu)
        .collect();
    pod_mtus.sort_unstable();
    pod_mtus.dedup();
    let pod_nets: Vec<(Ipv4Addr, u8)> = exp
        .pod_cidrs
        .iter()
        .map(|c| (c.network(), c.net().prefix_len()))
        .collect();
    let in_pods = |dst: &str| {
        parse_cidr(dst)
            .is_some_and(|(ip, len)| pod_nets.iter().any(|n| len >= n.1 && contains(*n, ip)))
    };
    let vteps: Vec<Ipv4Addr> = exp.peers.iter().map(|p| p.vtep_ip).collect();
    let peer_ips: Vec<Ipv4Addr> = exp.peers.iter().map(|p| p.ip).collect();
    let ip = |v: &Value| v.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok());
    let lower = |v: &Value| v.as_str().map(str::to_ascii_lowercase);
    OverlayConfig {
        vtep_mac: overlay.and_then(|o| lower(&o["address"])),
        vxlan_port: info
            .and_then(|i| i["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok()),
        vni: info
            .and_then(|i| i["id"].as_u64())
            .and_then(|p| u32::try_from(p).ok()),
        underlay_mtu: underlay.and_then(mtu),
        overlay_mtu: overlay.and_then(mtu),
        bridge_mtu: bridge.and_then(mtu),
        pod_mtus,
        bridge_addrs: bridge.map(addrs_of).unwrap_or_default(),
        overlay_addrs: overlay.map(addrs_of).unwrap_or_default(),
        routes: arr(routes)
            .iter()
            .filter(|r| r["dst"].as_str().is_some_and(in_pods))
            .take(MAX_CONFIG_ENTRIES)
            .map(|r| RouteEntry {
                dst: r["dst"].as_str().unwrap_or_default().to_owned(),
                gateway: ip(&r["gateway"]),
                dev: r["dev"].as_str().map(str::to_owned),
            })
            .collect(),
        neighbours: arr(neigh)
            .iter()
            .filter(|n| ip(&n["dst"]).is_some_and(|a| vteps.contains(&a)))
            .take(MAX_CONFIG_ENTRIES)
            .map(|n| NeighbourEntry {
                ip: ip(&n["dst"]),
                mac: lower(&n["lladdr"]),
            })
            .collect(),
        fdb: arr(fdb)
            .iter()
            .filter(|f| ip(&f["dst"]).is_some_and(|a| peer_ips.contains(&a)))
            .take(MAX_CONFIG_ENTRIES)
            .filter_map(|f| {
                Some(FdbEntry {
                    mac: lower(&f["mac"])?,
                    dst: ip(&f["dst"]),
                })
            })
            .collect(),
        pod_range_addrs: pod_range_addrs(exp, addrs),
    }
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    Some((ip.parse().ok()?, len.parse().ok()?))
}

fn contains(net: (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = if net.1 == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(net.1.min(32)))
    };
    u32::from(net.0) & mask == u32::from(ip) & mask
}

/// Host addresses and routes that overlap the pod CIDRs (outside the overlay and `cni0`).
pub fn cidr_overlaps(exp: &OverlayExpectation, addrs: &str, routes: &str) -> Vec<String> {
    let ours =
        |dev: &str| dev == exp.interface || dev == "cni0" || dev.starts_with("veth") || dev == "lo";
    let mut out = Vec::new();
    for link in arr(addrs) {
        let dev = link["ifname"].as_str().unwrap_or("");
        if ours(dev) {
            continue;
        }
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let Some(ip) = a["local"].as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            for c in &exp.pod_cidrs {
                if c.contains(ip) {
                    out.push(format!("{dev} has address {ip}, inside pod CIDR {c}"));
                }
            }
        }
    }
    for r in arr(routes) {
        let dev = r["dev"].as_str().unwrap_or("");
        if ours(dev) {
            continue;
        }
        let Some(dst) = r["dst"].as_str().and_then(parse_cidr) else {
            continue;
        };
        for c in &exp.pod_cidrs {
            let net = c.net();
            // Only routes at least as specific as the pod CIDR take its traffic away.
            if dst.1 >= net.prefix_len() && contains((net.network(), net.prefix_len()), dst.0) {
                out.push(format!(
                    "route {}/{} via {dev} overlaps pod CIDR {c}",
                    dst.0, dst.1
                ));
            }
        }
    }
    out
}

/// Known security agents among the running processes.
pub fn security_agents(comms: &[String]) -> Vec<String> {
    let mut found: Vec<String> = SECURITY_AGENTS
        .iter()
        .filter(|name| {
            // comm holds at most 15 characters.
            let short: String = name.chars().take(15).collect();
            comms.iter().any(|c| c == &short || c.starts_with(*name))
        })
        .map(|s| (*s).to_owned())
        .collect();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshprobe_core::evidence::OverlayPeer;

    /// Issue 9: evidence commands are bounded by the round's budget: a hung command is
    /// killed at the deadline.
    #[test]
    fn a_command_past_the_deadline_is_killed() {
        let started = std::time::Instant::now();
        let host = RealHost::within(std::time::Duration::from_millis(200));
        let err = host.run("sleep", &["30"]).expect_err("killed");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let out = RealHost::within(std::time::Duration::from_secs(5))
            .run("echo", &["hi"])
            .expect("echo");
        assert_eq!(out, "hi\n");
    }
    use meshprobe_core::{NodeName, PodCidr};
    use pretty_assertions::assert_eq;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).expect("valid")
    }

    fn expectation() -> OverlayExpectation {
        let peer = |name: &str, i: u8| OverlayPeer {
            node: n(name),
            ip: Ipv4Addr::new(192, 168, 77, 10 + i),
            pod_cidr: PodCidr::parse(&format!("10.42.{i}.0/24")).expect("cidr"),
            vtep_ip: Ipv4Addr::new(10, 42, i, 0),
            vtep_mac: Some(format!("0E:6D:70:00:00:0{i}")),
        };
        OverlayExpectation {
            node_ip: Ipv4Addr::new(192, 168, 77, 11),
            interface: "flannel.1".into(),
            port: 8472,
            mtu: 1450,
            overhead: 50,
            pod_cidrs: (1..=3)
                .map(|i| PodCidr::parse(&format!("10.42.{i}.0/24")).expect("cidr"))
                .collect(),
            peers: vec![peer("n2", 2), peer("n3", 3)],
            relay: None,
        }
    }

    // Captured from a sandbox node (n1 of 3) with `ip -j` and `bridge -j`.
    const ADDRS: &str = r#"[{"ifname":"lo","mtu":65536,"operstate":"UNKNOWN","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[{"local":"127.0.0.1","prefixlen":8}]},
      {"ifname":"eth0","mtu":1500,"operstate":"UP","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"addr_info":[{"local":"192.168.77.11","prefixlen":24}]},
      {"ifname":"cni0","mtu":1450,"operstate":"UP","flags":["UP"],"addr_info":[{"local":"10.42.1.1","prefixlen":24}]},
      {"ifname":"flannel.1","mtu":1450,"operstate":"UNKNOWN","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"addr_info":[{"local":"10.42.1.0","prefixlen":32}]}]"#;
    const ROUTES: &str = r#"[{"dst":"10.42.1.0/24","dev":"cni0","protocol":"kernel","scope":"link","prefsrc":"10.42.1.1","flags":[]},{"dst":"10.42.2.0/24","gateway":"10.42.2.0","dev":"flannel.1","flags":["onlink"]},{"dst":"10.42.3.0/24","gateway":"10.42.3.0","dev":"flannel.1","flags":["onlink"]},{"dst":"192.168.77.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.168.77.11","flags":[]}]"#;
    const NEIGH: &str = r#"[{"dst":"10.42.2.0","lladdr":"0e:6d:70:00:00:02","state":["PERMANENT"]},{"dst":"10.42.3.0","lladdr":"0e:6d:70:00:00:03","state":["PERMANENT"]}]"#;
    const FDB: &str = r#"[{"mac":"0e:6d:70:00:00:03","dst":"192.168.77.13","flags":["self"],"state":"permanent"},{"mac":"0e:6d:70:00:00:02","dst":"192.168.77.12","flags":["self"],"state":"permanent"}]"#;

    #[test]
    fn healthy_overlay_has_nothing_missing() {
        let ev = check_overlay(&expectation(), ADDRS, ROUTES, NEIGH, Some(FDB));
        assert_eq!(ev.peers_missing(), Vec::<NodeName>::new());
        assert_eq!(
            ev.device,
            Some(DeviceState {
                name: "flannel.1".into(),
                mtu: 1450,
                up: true,
                no_carrier: false,
            })
        );
        assert_eq!(
            ev.underlay.map(|d| (d.name, d.mtu)),
            Some(("eth0".to_owned(), 1500))
        );
        assert!(cidr_overlaps(&expectation(), ADDRS, ROUTES).is_empty());
    }

    #[test]
    fn each_missing_entry_names_its_peer() {
        let routes = ROUTES.replace(
            r#"{"dst":"10.42.3.0/24","gateway":"10.42.3.0","dev":"flannel.1","flags":["onlink"]},"#,
            "",
        );
        let ev = check_overlay(&expectation(), ADDRS, &routes, NEIGH, Some(FDB));
        assert_eq!(ev.missing_routes, [n("n3")]);
        let neigh = NEIGH.replace(
            r#""lladdr":"0e:6d:70:00:00:02","state":["PERMANENT"]"#,
            r#""state":["FAILED"]"#,
        );
        let ev = check_overlay(&expectation(), ADDRS, ROUTES, &neigh, Some(FDB));
        assert_eq!(ev.missing_neighbours, [n("n2")]);
        let fdb = FDB.replace("192.168.77.12", "192.168.77.99");
        let ev = check_overlay(&expectation(), ADDRS, ROUTES, NEIGH, Some(&fdb));
        assert_eq!(ev.missing_fdb, [n("n2")]);
        let ev = check_overlay(
            &expectation(),
            &ADDRS.replace("flannel.1", "flannel.9"),
            ROUTES,
            NEIGH,
            Some(FDB),
        );
        assert_eq!(ev.device, None);
    }

    #[test]
    fn entries_pointing_at_an_old_vtep_mac_name_their_peer() {
        // n3 recreated its VXLAN device: it now advertises another MAC, and this node's
        // neighbour and fdb entries (consistent with each other) still hold the old one.
        let mut exp = expectation();
        exp.peers[1].vtep_mac = Some("0e:6d:70:00:aa:03".into());
        let ev = check_overlay(&exp, ADDRS, ROUTES, NEIGH, Some(FDB));
        assert_eq!(ev.wrong_vtep_mac, [n("n3")]);
        assert!(ev.missing_fdb.is_empty() && ev.missing_neighbours.is_empty());
        assert_eq!(ev.peers_missing(), [n("n3")]);
        // Only the fdb entry is stale.
        let fdb = FDB.replace("0e:6d:70:00:00:02", "0e:6d:70:00:bb:02");
        let ev = check_overlay(&expectation(), ADDRS, ROUTES, NEIGH, Some(&fdb));
        assert_eq!(ev.wrong_vtep_mac, [n("n2")]);
        // Without an advertised MAC nothing is compared.
        let mut exp = expectation();
        for p in &mut exp.peers {
            p.vtep_mac = None;
        }
        let ev = check_overlay(&exp, ADDRS, ROUTES, NEIGH, Some(&fdb));
        assert!(ev.wrong_vtep_mac.is_empty());
    }

    #[test]
    fn firewalld_reject_above_the_cni_accepts_is_blocking() {
        let text = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:FLANNEL-FWD - [0:0]\n:FORWARD_IN_ZONES - [0:0]\n:FORWARD_OUT_ZONES - [0:0]\n-A FORWARD -j REJECT --reject-with icmp-host-prohibited\n-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n-A FLANNEL-FWD -s 10.42.0.0/16 -j ACCEPT\n-A INPUT -p udp -m udp --dport 8472 -m comment --comment x -j DROP\nCOMMIT\n";
        let (fwd, port) = parse_iptables_save(text, &OverlayTraffic::of(None));
        assert_eq!(fwd.policy.as_deref(), Some("ACCEPT"));
        assert_eq!(fwd.blocking_rules.len(), 1);
        assert_eq!(
            fwd.blocking_rules[0].rule,
            "-A FORWARD -j REJECT --reject-with icmp-host-prohibited"
        );
        assert_eq!(
            fwd.foreign_chains,
            ["FORWARD_IN_ZONES", "FORWARD_OUT_ZONES"]
        );
        assert_eq!(port.len(), 1);
        assert_eq!(port[0].chain, "INPUT");
    }

    #[test]
    fn reject_after_the_cni_accepts_and_conntrack_hygiene_are_not_blocking() {
        let text = "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m conntrack --ctstate INVALID -j DROP\n-A FORWARD -j KUBE-FORWARD\n-A FORWARD -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n";
        let (fwd, port) = parse_iptables_save(text, &OverlayTraffic::of(None));
        assert!(fwd.blocking_rules.is_empty(), "{:?}", fwd.blocking_rules);
        assert!(port.is_empty());
        let (fwd, _) = parse_iptables_save(
            "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n",
            &OverlayTraffic::of(None),
        );
        assert_eq!(
            fwd.blocking_rules.len(),
            1,
            "policy DROP with nothing accepting pods blocks"
        );
    }

    /// A RHEL-style host firewall: ICMP, ssh and replies accepted, then everything else
    /// rejected. VXLAN (always NEW: the two directions are separate flows) is rejected,
    /// though no rule names its port.
    #[test]
    fn a_catch_all_reject_after_the_accepts_drops_vxlan() {
        let traffic = OverlayTraffic {
            port: 8472,
            node_ips: vec![
                Ipv4Addr::new(192, 168, 77, 11),
                Ipv4Addr::new(192, 168, 77, 12),
            ],
        };
        let text = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\n-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT\n-A INPUT -p icmp -j ACCEPT\n-A INPUT -i lo -j ACCEPT\n-A INPUT -s 203.0.113.0/24 -j DROP\n-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT\n-A INPUT -j REJECT --reject-with icmp-host-prohibited\n-A KUBE-FIREWALL -m mark --mark 0x8000/0x8000 -j DROP\nCOMMIT\n";
        let (_, rules) = parse_iptables_save(text, &traffic);
        let texts: Vec<&str> = rules.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(
            texts,
            ["-A INPUT -j REJECT --reject-with icmp-host-prohibited"],
            "the blocklist holds no node, the cluster's own chain is not ours to judge"
        );
        // Opening the port first, as the flannel docs say, makes it harmless.
        let opened = text.replace(
            "-A INPUT -p icmp -j ACCEPT\n",
            "-A INPUT -p icmp -j ACCEPT\n-A INPUT -p udp -m udp --dport 8472 -j ACCEPT\n",
        );
        assert!(parse_iptables_save(&opened, &traffic).1.is_empty());
        // A policy of DROP with nothing accepting the port drops it too.
        let policy = "*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n";
        let (_, rules) = parse_iptables_save(policy, &traffic);
        assert_eq!(rules.len(), 1);
        assert!(
            rules[0].rule.starts_with(":INPUT DROP (policy)"),
            "{rules:?}"
        );
    }

    /// The relay's own flow (TCP from the node's pods to the node IP's relay port) is
    /// walked apart from VXLAN: opening the overlay's port leaves the relay rejected, and
    /// only an accept that takes the pods' connections clears it. A rule for other sources
    /// or another protocol does not.
    #[test]
    fn the_relay_from_the_pods_is_walked_on_its_own() {
        let traffic = OverlayTraffic {
            port: 8472,
            node_ips: vec![Ipv4Addr::new(192, 168, 77, 11)],
        };
        let pods = PodCidr::parse("10.42.1.0/24").expect("cidr");
        let relay = Flow::relay(pods, Ipv4Addr::new(192, 168, 77, 11), 7071);
        let rhel = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT\n-A INPUT -p icmp -j ACCEPT\n-A INPUT -p udp -m udp --dport 8472 -j ACCEPT\n-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT\nACCEPTS\n-A INPUT -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n";
        let walk = |accepts: &str| {
            parse_iptables_save_with(&rhel.replace("ACCEPTS\n", accepts), &traffic, Some(&relay))
        };
        let (_, overlay, rules) = walk("");
        assert!(overlay.is_empty(), "VXLAN is open: {overlay:?}");
        let texts: Vec<&str> = rules.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(
            texts,
            ["-A INPUT -j REJECT --reject-with icmp-host-prohibited"]
        );
        assert_eq!(
            (rules[0].table.as_str(), rules[0].chain.as_str()),
            ("filter", "INPUT")
        );
        for beside in [
            "-A INPUT -s 10.42.2.0/24 -p tcp --dport 7071 -j ACCEPT\n",
            "-A INPUT -p udp --dport 7071 -j ACCEPT\n",
            "-A INPUT -p tcp --dport 7072 -j ACCEPT\n",
        ] {
            assert_eq!(
                walk(beside).2.len(),
                1,
                "{beside} does not take the relay's flow"
            );
        }
        // A negated source: it takes the pods' connections when it excludes others.
        assert!(
            walk("-A INPUT ! -s 10.42.2.0/24 -p tcp --dport 7071 -j ACCEPT\n")
                .2
                .is_empty()
        );
        let (_, _, rules) = walk("-A INPUT ! -s 10.42.1.0/24 -j DROP\n");
        assert!(
            rules.len() == 1 && rules[0].rule.contains("REJECT"),
            "a drop of everyone but the pods is not theirs: {rules:?}"
        );
        for opens in [
            "-A INPUT -s 10.42.1.0/24 -p tcp -m tcp --dport 7071 -j ACCEPT\n",
            "-A INPUT -s 10.42.0.0/16 -d 192.168.77.11/32 -p tcp --dport 7071 -j ACCEPT\n",
            "-A INPUT -i cni0 -j ACCEPT\n",
        ] {
            assert!(walk(opens).2.is_empty(), "{opens} accepts the relay's flow");
        }
        // A raw-table drop of the pods' range is met first, whatever INPUT says.
        let raw = format!(
            "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -s 10.42.1.0/24 -j DROP\nCOMMIT\n{}",
            rhel.replace("ACCEPTS\n", "-A INPUT -i cni0 -j ACCEPT\n")
        );
        let (_, _, rules) = parse_iptables_save_with(&raw, &traffic, Some(&relay));
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(
            (rules[0].table.as_str(), rules[0].chain.as_str()),
            ("raw", "PREROUTING")
        );
    }

    /// A rule for one peer's address is kept (the diagnosis matches it to the pair); one
    /// for a user chain is followed; a port range and a ctstate of NEW count.
    #[test]
    fn partial_vxlan_drops_are_kept_in_order() {
        let traffic = OverlayTraffic {
            port: 8472,
            node_ips: vec![
                Ipv4Addr::new(192, 168, 77, 11),
                Ipv4Addr::new(192, 168, 77, 13),
            ],
        };
        let text = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:SEC-OUT - [0:0]\n-A OUTPUT -j SEC-OUT\n-A SEC-OUT -d 192.168.77.13/32 -p udp -m udp --dport 8472 -j DROP\n-A SEC-OUT -p udp -m multiport --dports 8000:9000 -m conntrack --ctstate NEW -j REJECT\n-A SEC-OUT -p udp --dport 53 -j DROP\nCOMMIT\n";
        let (_, rules) = parse_iptables_save(text, &traffic);
        let texts: Vec<&str> = rules.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(
            texts,
            [
                "-A SEC-OUT -d 192.168.77.13/32 -p udp -m udp --dport 8472 -j DROP",
                "-A SEC-OUT -p udp -m multiport --dports 8000:9000 -m conntrack --ctstate NEW -j REJECT",
            ]
        );
        assert!(rules.iter().all(|r| r.chain == "SEC-OUT"));
    }

    /// User chains that jump into each other end at the depth limit; hundreds of
    /// per-address drops are cut at the report's bound.
    #[test]
    fn the_walk_is_bounded() {
        let looped = "*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A INPUT -j A\n-A A -j B\n-A B -j A\nCOMMIT\n";
        let (_, rules) = parse_iptables_save(looped, &OverlayTraffic::of(None));
        assert!(rules.is_empty(), "{rules:?}");
        let mut many = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
        for i in 0..400 {
            many += &format!(
                "-A INPUT -s 10.0.{}.{}/32 -p udp -j DROP\n",
                i / 250,
                i % 250
            );
        }
        many += "COMMIT\n";
        let (_, rules) = parse_iptables_save(&many, &OverlayTraffic::of(None));
        assert_eq!(rules.len(), MAX_CONFIG_ENTRIES);
    }

    #[test]
    fn kube_proxy_chains_are_counted() {
        let text = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n-A KUBE-SERVICES -d 10.43.0.10/32 -p udp -m udp --dport 53 -j KUBE-SVC-KUBEDNS\n-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n-A KUBE-NODEPORTS -p tcp -m tcp --dport 30080 -j KUBE-EXT-WEB\n-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n-A KUBE-POSTROUTING -j MASQUERADE --random-fully\nCOMMIT\n";
        assert_eq!(
            parse_kube_proxy(text),
            Some(KubeProxyEvidence {
                service_rules: 2,
                nodeport_rules: 1,
                masquerade: true,
            })
        );
        let unmasked = text.replace("-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n", "");
        assert_eq!(
            parse_kube_proxy(&unmasked).map(|k| k.masquerade),
            Some(false)
        );
        // ipvs, nftables or eBPF: nothing to say.
        assert_eq!(
            parse_kube_proxy("*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"),
            None
        );
    }

    #[test]
    fn overlaps_and_security_agents() {
        let addrs = ADDRS.replace(
            r#""local":"192.168.77.11","prefixlen":24"#,
            r#""local":"192.168.77.11","prefixlen":24},{"local":"10.42.3.7","prefixlen":24"#,
        );
        let found = cidr_overlaps(&expectation(), &addrs, ROUTES);
        assert_eq!(
            found,
            ["eth0 has address 10.42.3.7, inside pod CIDR 10.42.3.0/24"]
        );
        let comms = ["systemd", "kesl", "wsssr_defence_d", "sshd"].map(String::from);
        assert_eq!(security_agents(&comms), ["wsssr_defence_daemon", "kesl"]);
    }

    #[test]
    fn overlay_config_reads_identity_mtus_and_entries() {
        let addrs = r#"[{"ifname":"eth0","mtu":9000,"operstate":"UP","flags":["UP"],"addr_info":[{"family":"inet","local":"192.168.77.11","prefixlen":24}]},
          {"ifname":"cni0","mtu":1450,"operstate":"UP","flags":["UP"],"addr_info":[{"family":"inet","local":"10.42.1.1","prefixlen":24}]},
          {"ifname":"veth-web","mtu":1400,"master":"cni0","operstate":"UP","flags":["UP"],"addr_info":[]},
          {"ifname":"veth-dns","mtu":1450,"master":"cni0","operstate":"UP","flags":["UP"],"addr_info":[]},
          {"ifname":"flannel.1","mtu":1450,"address":"0E:6D:70:00:00:01","operstate":"UNKNOWN","flags":["UP"],
           "linkinfo":{"info_kind":"vxlan","info_data":{"id":1,"port":4789,"local":"192.168.77.11"}},
           "addr_info":[{"family":"inet","local":"10.42.1.0","prefixlen":32}]}]"#;
        let c = overlay_config(&expectation(), addrs, ROUTES, NEIGH, FDB);
        assert_eq!(c.vtep_mac.as_deref(), Some("0e:6d:70:00:00:01"));
        assert_eq!((c.vxlan_port, c.vni), (Some(4789), Some(1)));
        assert_eq!(
            (c.underlay_mtu, c.overlay_mtu, c.bridge_mtu),
            (Some(9000), Some(1450), Some(1450))
        );
        assert_eq!(c.pod_mtus, [1400, 1450]);
        assert_eq!(c.bridge_addrs, ["10.42.1.1/24"]);
        assert_eq!(c.overlay_addrs, ["10.42.1.0/32"]);
        // The node's own pod CIDR (on cni0) and the two peers' routes; not the node network.
        let dsts: Vec<&str> = c.routes.iter().map(|r| r.dst.as_str()).collect();
        assert_eq!(dsts, ["10.42.1.0/24", "10.42.2.0/24", "10.42.3.0/24"]);
        assert_eq!(c.neighbours.len(), 2);
        assert_eq!(c.fdb.len(), 2);
        assert_eq!(c.fdb[0].dst, Some("192.168.77.13".parse().expect("ip")));
    }

    /// issue 21: every local address inside the pod networks, on any interface, and the
    /// state of the bridge and its ports (a bridge that is down cuts its pods off).
    #[test]
    fn issue_21_addresses_in_pod_ranges_and_the_bridges_state_are_read() {
        let addrs = r#"[{"ifname":"eth0","mtu":1500,"operstate":"UP","flags":["UP","LOWER_UP"],"addr_info":[{"local":"192.168.77.11","prefixlen":24}]},
          {"ifname":"cni0","mtu":1450,"operstate":"DOWN","flags":["NO-CARRIER","BROADCAST"],"addr_info":[{"local":"10.42.1.1","prefixlen":24},{"local":"10.42.3.1","prefixlen":24}]},
          {"ifname":"veth-a","mtu":1450,"master":"cni0","operstate":"LOWERLAYERDOWN","flags":["UP"],"addr_info":[]},
          {"ifname":"veth-b","mtu":1450,"master":"cni0","operstate":"UP","flags":["UP","LOWER_UP"],"addr_info":[]},
          {"ifname":"dummy0","mtu":1500,"operstate":"UNKNOWN","flags":["UP"],"addr_info":[{"local":"10.42.2.200","prefixlen":32}]}]"#;
        let found = pod_range_addrs(&expectation(), addrs);
        let got: Vec<(&str, String)> = found
            .iter()
            .map(|a| (a.dev.as_str(), format!("{}/{}", a.ip, a.prefix_len)))
            .collect();
        assert_eq!(
            got,
            [
                ("cni0", "10.42.1.1/24".to_owned()),
                ("cni0", "10.42.3.1/24".to_owned()),
                ("dummy0", "10.42.2.200/32".to_owned())
            ]
        );
        let ev = check_overlay(&expectation(), addrs, ROUTES, NEIGH, Some(FDB));
        let bridge = ev.bridge.expect("cni0 read");
        assert!(!bridge.up && bridge.no_carrier, "{bridge:?}");
        assert_eq!(ev.pod_links_down, ["veth-a"]);
        let healthy = check_overlay(&expectation(), ADDRS, ROUTES, NEIGH, Some(FDB));
        assert!(healthy.bridge.is_some_and(|b| b.up && !b.no_carrier));
        assert!(healthy.pod_links_down.is_empty());
    }

    /// issue 21: "A route to most of a peer's pod range over an interface that is not the
    /// CNI's went unseen". The kernel's answer is read, not the table by device name.
    #[test]
    fn issue_21_the_kernels_route_choice_is_read_per_peer() {
        let exp = expectation();
        let n3 = &exp.peers[1];
        let good = r#"[{"dst":"10.42.3.1","gateway":"10.42.3.0","dev":"flannel.1","prefsrc":"10.42.1.0","flags":["onlink"],"uid":0,"cache":[]}]"#;
        assert_eq!(route_choice(&exp, n3, "10.42.3.1", good), None);
        // A /25 over eth0 wins over flannel's /24.
        let hijacked =
            r#"[{"dst":"10.42.3.1","dev":"eth0","prefsrc":"192.168.77.11","uid":0,"cache":[]}]"#;
        let m = route_choice(&exp, n3, "10.42.3.1", hijacked).expect("misrouted");
        assert_eq!(
            (m.node.as_str(), m.dev.as_str(), m.gateway),
            ("n3", "eth0", None)
        );
        // Through the overlay device, but toward another node's VTEP.
        let other = r#"[{"dst":"10.42.3.1","gateway":"10.42.2.0","dev":"flannel.1"}]"#;
        let m = route_choice(&exp, n3, "10.42.3.1", other).expect("misrouted");
        assert_eq!(m.gateway.as_deref(), Some("10.42.2.0"));
        // Unreadable output says nothing.
        assert_eq!(route_choice(&exp, n3, "10.42.3.1", "garbage"), None);
        let mut ev = OverlayEvidence::default();
        ev.misrouted.push(m);
        assert_eq!(ev.peers_missing(), [n("n3")]);
    }

    struct Fake;
    impl Host for Fake {
        fn read(&self, path: &str) -> io::Result<String> {
            match path {
                "/proc/sys/net/ipv4/ip_forward" => Ok("0\n".into()),
                _ => Err(io::Error::from(io::ErrorKind::NotFound)),
            }
        }
        fn run(&self, program: &str, args: &[&str]) -> io::Result<String> {
            match (program, args.get(1)) {
                ("ip", _) if args.contains(&"addr") => Ok(ADDRS.into()),
                ("ip", Some(&"-4")) if args.contains(&"route") => Ok(ROUTES.into()),
                ("ip", Some(&"-4")) => Ok(NEIGH.into()),
                _ => Err(io::Error::other(format!("{program}: not installed"))),
            }
        }
        fn process_names(&self) -> Vec<String> {
            vec!["init".into()]
        }
    }

    #[test]
    fn collect_reads_what_it_can_and_notes_the_rest() {
        let ev = collect(&Fake, Some(&expectation()));
        assert_eq!(ev.ip_forward, Some(false));
        assert!(ev.forward.is_none());
        assert!(
            ev.unavailable
                .iter()
                .any(|u| u.starts_with("iptables-save")),
            "{:?}",
            ev.unavailable
        );
        assert!(
            ev.unavailable.iter().any(|u| u.starts_with("bridge fdb")),
            "{:?}",
            ev.unavailable
        );
        let overlay = ev.overlay.expect("overlay read");
        assert!(overlay.missing_routes.is_empty() && overlay.missing_fdb.is_empty());
    }

    /// A host whose firewall commands answer from a table: `(program, output)`; any other
    /// program is not installed.
    struct Firewalls(Vec<(&'static str, String)>);

    impl Host for Firewalls {
        fn read(&self, _: &str) -> io::Result<String> {
            Err(io::Error::from(io::ErrorKind::NotFound))
        }
        fn run(&self, program: &str, _: &[&str]) -> io::Result<String> {
            self.0
                .iter()
                .find(|(p, _)| *p == program)
                .map(|(_, out)| out.clone())
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
        fn process_names(&self) -> Vec<String> {
            Vec::new()
        }
    }

    const NFT_DEFAULT: &str = "iptables v1.8.9 (nf_tables)\n";
    const KUBE_ONLY: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n-A FORWARD -j KUBE-FORWARD\nCOMMIT\n";

    /// Issue 23, row 13: on a host whose `iptables` is the nft one, a rule a legacy image
    /// left in iptables-legacy still drops the overlay. It was invisible (iptables-save
    /// succeeded on the nft side); now both backends are read, and the rule's fix names
    /// its own backend.
    #[test]
    fn rules_in_the_other_iptables_backend_are_read_too() {
        let legacy =
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p udp -m udp --dport 8472 -j DROP\nCOMMIT\n";
        let host = Firewalls(vec![
            ("iptables", NFT_DEFAULT.into()),
            ("iptables-legacy-save", legacy.into()),
            ("iptables-nft-save", KUBE_ONLY.into()),
        ]);
        let ev = collect(&host, Some(&expectation()));
        let r = ev.overlay_port_rules.first().expect("the legacy rule");
        assert_eq!(r.backend, FirewallBackend::IptablesLegacy);
        assert_eq!(
            r.delete_command().as_deref(),
            Some("iptables-legacy -t filter -D INPUT -p udp -m udp --dport 8472 -j DROP")
        );
        assert_eq!(
            ev.firewall_sources,
            [
                FirewallSource {
                    backend: FirewallBackend::IptablesLegacy,
                    rules: 1
                },
                FirewallSource {
                    backend: FirewallBackend::Iptables,
                    rules: 1
                }
            ]
        );
        // Where the host's `iptables` is the legacy one, the same rule is plain iptables.
        let host = Firewalls(vec![
            ("iptables", "iptables v1.8.9 (legacy)\n".into()),
            ("iptables-legacy-save", legacy.into()),
            ("iptables-nft-save", KUBE_ONLY.into()),
        ]);
        let ev = collect(&host, Some(&expectation()));
        assert_eq!(ev.overlay_port_rules[0].backend, FirewallBackend::Iptables);
        assert_eq!(ev.firewall_sources[1].backend, FirewallBackend::IptablesNft);
        // Without either variant, plain iptables-save as before.
        let host = Firewalls(vec![("iptables-save", legacy.into())]);
        let ev = collect(&host, Some(&expectation()));
        assert_eq!(ev.overlay_port_rules.len(), 1);
        assert_eq!(ev.overlay_port_rules[0].backend, FirewallBackend::Iptables);
    }

    /// Issue 23, row 13: firewalld's native nftables table rejects the overlay where
    /// `iptables-save` shows an empty filter table.
    #[test]
    fn a_native_nftables_reject_is_read_from_nft() {
        let host = Firewalls(vec![
            ("iptables", NFT_DEFAULT.into()),
            ("iptables-nft-save", KUBE_ONLY.into()),
            (
                "nft",
                include_str!("../tests/fixtures/nft-firewalld.json").into(),
            ),
        ]);
        let ev = collect(&host, Some(&expectation()));
        let nft: Vec<&FirewallRule> = ev
            .overlay_port_rules
            .iter()
            .filter(|r| r.backend == FirewallBackend::Nftables)
            .collect();
        assert_eq!(nft.len(), 1, "{:#?}", ev.overlay_port_rules);
        assert_eq!(nft[0].table, "inet firewalld");
        assert!(nft[0].is_firewalld());
        assert!(
            ev.overlay_port_rules.iter().all(|r| r.table != "ip filter"),
            "iptables-nft's own table is read from iptables-nft-save"
        );
        let fwd = ev.forward.expect("forward");
        assert!(
            fwd.blocking_rules
                .iter()
                .any(|r| r.backend == FirewallBackend::Nftables && r.chain == "filter_FORWARD"),
            "{fwd:#?}"
        );
        assert!(
            ev.firewall_sources
                .iter()
                .any(|s| s.backend == FirewallBackend::Nftables && s.rules > 10),
            "{:?}",
            ev.firewall_sources
        );
        // A host without nft says nothing about it.
        let host = Firewalls(vec![("iptables-nft-save", KUBE_ONLY.into())]);
        let ev = collect(&host, Some(&expectation()));
        assert!(
            ev.unavailable.iter().all(|u| !u.contains("nft")),
            "{:?}",
            ev.unavailable
        );
    }
}
