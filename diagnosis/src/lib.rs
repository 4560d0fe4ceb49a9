//! meshprobe's diagnosis: from per-layer matrices and node-local evidence to ranked
//! findings that name the broken node, hop and cause.
//!
//! Pure: no IO, no clock. [`diagnose`] reasons along the path a packet takes, comparing
//! layers on the same pair to find the first hop that breaks:
//!
//! ```text
//! underlay ─► gateway-from-host ─► gateway-from-pod ─► pod-to-pod ─► pod-to-pod-full-size
//! (node IP)   (the tunnel)         (source forwards)   (dest. forwards) (MTU)
//! ```
//!
//! Detectors run in that order. Each one claims the pairs it explains, so a later detector
//! never blames something an earlier one already accounts for (a CoreDNS pod is not
//! "down" when its node no longer forwards). A node is blamed only on the word of at least
//! `k` independent observers (other nodes), and only when most observers agree. A prober
//! whose own row is bad while everyone reaches it gets itself flagged, never its peers.
//! Evidence names the cause of a failure that the probes show. On its own, evidence is at
//! most a warning.

pub mod synth;

use std::collections::{BTreeSet, HashMap, HashSet};

use meshprobe_core::evidence::NodeEvidence;
use meshprobe_core::matrix::{AgentState, Cell, CellState, CheckReport, Finding, FindingKey};
use meshprobe_core::{Layer, NodeName, Topology};

/// Thresholds.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Independent observers needed to blame a node (default 2; fewer when fewer exist).
    pub min_observers: usize,
    /// A cell is "dead" at this loss or more (default 95%): a path that is cut, not lossy.
    pub dead_loss_pct: f64,
    /// Aggregate loss through a node that makes a `packet-loss` finding (default 10%).
    pub loss_finding_pct: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min_observers: 2,
            dead_loss_pct: 95.0,
            loss_finding_pct: 10.0,
        }
    }
}

/// The diagnosis of one round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diagnosis {
    /// Findings, most important first.
    pub findings: Vec<Finding>,
    /// Evidence without a failing probe behind it, and evidence that could not be read.
    pub warnings: Vec<String>,
}

/// Diagnoses one round. `previous` holds the finding keys of earlier rounds, newest last;
/// each finding's `rounds` counts how many consecutive rounds (this one included) made it.
pub fn diagnose(
    topology: &Topology,
    report: &CheckReport,
    previous: &[Vec<FindingKey>],
    settings: &Settings,
) -> Diagnosis {
    let mut cx = Cx::new(topology, report, settings);
    cx.unreachable();
    cx.tunnel_nodes();
    cx.tunnel_pairs();
    cx.forwarding();
    cx.mtu();
    cx.loss();
    cx.dns();
    cx.metrics();
    cx.nodeport();
    cx.ingress();
    cx.degraded_probers();
    cx.agents();
    let warnings = cx.evidence_warnings();
    let mut ranked = cx.found;
    ranked.sort_by(|a, b| a.rank.cmp(&b.rank).then(b.weight.cmp(&a.weight)));
    let mut findings: Vec<Finding> = ranked.into_iter().map(|r| r.finding).collect();
    for f in &mut findings {
        let key = f.key();
        f.rounds = 1 + previous
            .iter()
            .rev()
            .take_while(|keys| keys.contains(&key))
            .count() as u32;
    }
    Diagnosis { findings, warnings }
}

/// A finding and where it ranks: lower `rank` first, then larger `weight` (cells explained).
struct Ranked {
    rank: u8,
    weight: usize,
    finding: Finding,
}

/// Which part of a pair's path a detector has explained.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Part {
    /// Everything over the node network and the tunnel.
    Network,
    /// Traffic that pods send or receive (forwarding).
    Pods,
    /// Full-size packets.
    Big,
}

/// FxHash (rustc's hasher): the index's keys are small integers and our own strings, so a
/// fast non-cryptographic hash is right; SipHash would double the diagnosis time.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
}

type FxBuild = std::hash::BuildHasherDefault<Fx>;
type FxMap<K, V> = HashMap<K, V, FxBuild>;
type FxSet<K> = HashSet<K, FxBuild>;

/// The report's known cells, indexed for cheap lookups and per-node rows and columns, so
/// that every detector walks the cells that exist (N x peers), never all N x N pairs.
/// Node-column layers are held as sorted rows (at most a few dozen entries each, binary
/// searched); target columns (DNS, metrics, NodePort, ingress) in a hash map.
struct Index<'a> {
    names: Vec<&'a str>,
    pos: FxMap<&'a str, usize>,
    /// [layer][src] -> (dst, cell), sorted by dst.
    rows: Vec<Vec<Vec<(usize, &'a Cell)>>>,
    /// [layer][dst] -> srcs.
    cols: Vec<Vec<Vec<usize>>>,
    targets: FxMap<(Layer, usize, &'a str), &'a Cell>,
    tcols: FxMap<(Layer, &'a str), Vec<usize>>,
}

fn layer_ix(layer: Layer) -> usize {
    Layer::ALL.iter().position(|l| *l == layer).unwrap_or(0)
}

impl<'a> Index<'a> {
    fn new(r: &'a CheckReport) -> Self {
        let names: Vec<&str> = r.nodes.iter().map(|n| n.as_str()).collect();
        let pos: FxMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let n = names.len();
        let mut rows = vec![Vec::new(); Layer::ALL.len()];
        let mut cols = vec![Vec::new(); Layer::ALL.len()];
        let mut targets = FxMap::default();
        let mut tcols: FxMap<(Layer, &str), Vec<usize>> = FxMap::default();
        for (layer, m) in &r.layers {
            let li = layer_ix(*layer);
            if Layer::ICMP.contains(layer) {
                rows[li] = vec![Vec::new(); n];
                cols[li] = vec![Vec::new(); n];
            }
            for (src, row) in m {
                let Some(&s) = pos.get(src.as_str()) else {
                    continue;
                };
                for (dst, cell) in row {
                    if cell.state == CellState::Unknown {
                        continue;
                    }
                    match (Layer::ICMP.contains(layer), pos.get(dst.as_str()).copied()) {
                        (true, Some(d)) => {
                            rows[li][s].push((d, cell));
                            cols[li][d].push(s);
                        }
                        _ => {
                            targets.insert((*layer, s, dst.as_str()), cell);
                            tcols.entry((*layer, dst.as_str())).or_default().push(s);
                        }
                    }
                }
            }
        }
        for layer_rows in &mut rows {
            for row in layer_rows {
                row.sort_unstable_by_key(|(d, _)| *d);
            }
        }
        Index {
            names,
            pos,
            rows,
            cols,
            targets,
            tcols,
        }
    }
    fn get(&self, layer: Layer, s: usize, d: usize) -> Option<&'a Cell> {
        let row = self.rows[layer_ix(layer)].get(s)?;
        row.binary_search_by_key(&d, |(x, _)| *x)
            .ok()
            .map(|i| row[i].1)
    }
    fn col(&self, layer: Layer, d: usize) -> &[usize] {
        self.cols[layer_ix(layer)].get(d).map_or(&[], Vec::as_slice)
    }
    fn row_targets(&self, layer: Layer, s: usize) -> impl Iterator<Item = usize> + '_ {
        self.rows[layer_ix(layer)]
            .get(s)
            .into_iter()
            .flatten()
            .map(|(d, _)| *d)
    }
    fn row(&self, layer: Layer, s: usize) -> Vec<usize> {
        self.row_targets(layer, s).collect()
    }
    /// Every known cell of a node-column layer: (src, dst, cell).
    fn all(&self, layer: Layer) -> impl Iterator<Item = (usize, usize, &'a Cell)> + '_ {
        self.rows[layer_ix(layer)]
            .iter()
            .enumerate()
            .flat_map(|(s, row)| row.iter().map(move |(d, c)| (s, *d, *c)))
    }
    fn tcol<'s>(&'s self, layer: Layer, col: &'s str) -> &'s [usize] {
        self.tcols.get(&(layer, col)).map_or(&[], Vec::as_slice)
    }
}

struct Cx<'a> {
    t: &'a Topology,
    r: &'a CheckReport,
    s: &'a Settings,
    ix: Index<'a>,
    /// Pairs explained by a pair-level finding.
    explained: FxSet<(Part, usize, usize)>,
    /// Nodes whose every pair a node-level finding explains, per part.
    explained_nodes: FxSet<(Part, usize)>,
    /// Nodes with a node-level network finding, and its cause.
    broken: FxMap<usize, &'static str>,
    /// CoreDNS pods found down (their metrics failures need no finding of their own).
    dns_down: BTreeSet<String>,
    found: Vec<Ranked>,
}

fn name(s: &str) -> NodeName {
    // Names come from the report, which took them from a validated topology.
    NodeName::new(s).unwrap_or_else(|_| NodeName::new("unnamed").unwrap_or_else(|_| unreachable!()))
}

fn lost_of(c: &Cell) -> u32 {
    c.sent.saturating_sub(c.ok)
}

fn describe(c: &Cell) -> String {
    let what = c
        .detail
        .as_deref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    format!("{}/{} ok{what}", c.ok, c.sent)
}

impl<'a> Cx<'a> {
    fn new(t: &'a Topology, r: &'a CheckReport, s: &'a Settings) -> Self {
        Self {
            t,
            r,
            s,
            ix: Index::new(r),
            explained: FxSet::default(),
            explained_nodes: FxSet::default(),
            broken: FxMap::default(),
            dns_down: BTreeSet::new(),
            found: Vec::new(),
        }
    }

    fn n(&self) -> usize {
        self.ix.names.len()
    }
    fn nm(&self, i: usize) -> String {
        self.ix.names[i].to_owned()
    }
    fn cell(&self, layer: Layer, s: usize, d: usize) -> Option<&'a Cell> {
        self.ix.get(layer, s, d)
    }
    fn tcell(&self, layer: Layer, s: usize, col: &str) -> Option<&'a Cell> {
        self.ix.targets.get(&(layer, s, col)).copied()
    }
    fn is_dead(&self, c: Option<&Cell>) -> bool {
        c.is_some_and(|c| {
            c.state == CellState::Fail && c.loss_pct.unwrap_or(0.0) >= self.s.dead_loss_pct
        })
    }
    fn ok(&self, layer: Layer, s: usize, d: usize) -> bool {
        self.cell(layer, s, d)
            .is_some_and(|c| c.state == CellState::Ok)
    }
    fn dead(&self, layer: Layer, s: usize, d: usize) -> bool {
        self.is_dead(self.cell(layer, s, d))
    }
    fn failing(&self, layer: Layer, s: usize, d: usize) -> bool {
        self.cell(layer, s, d)
            .is_some_and(|c| c.state == CellState::Fail)
    }
    fn tfailing(&self, layer: Layer, s: usize, col: &str) -> bool {
        self.tcell(layer, s, col)
            .is_some_and(|c| c.state == CellState::Fail)
    }
    fn evidence(&self, node: usize) -> Option<&'a NodeEvidence> {
        self.r.evidence.get(&name(self.ix.names[node]))
    }
    fn is_explained(&self, part: Part, s: usize, d: usize) -> bool {
        self.explained_nodes.contains(&(part, s))
            || self.explained_nodes.contains(&(part, d))
            || self.explained.contains(&(part, s, d))
    }
    fn explain_node(&mut self, parts: &[Part], x: usize) {
        for p in parts {
            self.explained_nodes.insert((*p, x));
        }
    }
    fn explain_pair(&mut self, parts: &[Part], a: usize, b: usize) {
        for p in parts {
            self.explained.insert((*p, a, b));
            self.explained.insert((*p, b, a));
        }
    }
    /// Observers needed: `min_observers`, or all there are when fewer exist.
    fn k(&self, available: usize) -> usize {
        self.s.min_observers.min(available).max(1)
    }
    /// Enough independent observers, and most of those who looked.
    fn quorum(&self, agreeing: usize, looked: usize) -> bool {
        looked > 0 && agreeing >= self.k(looked) && agreeing * 2 > looked
    }
    fn node_ip(&self, x: usize) -> String {
        self.t
            .node(&name(self.ix.names[x]))
            .map(|n| n.internal_ip.to_string())
            .unwrap_or_default()
    }
    fn underlay_dev(&self, x: usize) -> String {
        self.evidence(x)
            .and_then(|e| e.overlay.as_ref())
            .and_then(|o| o.underlay.as_ref())
            .map(|d| d.name.clone())
            .unwrap_or_else(|| "<underlay interface>".to_owned())
    }
    /// Evidence lines "src -> dst layer: 0/20 ok (timeout)" for up to four cells.
    fn cite(&self, layer: Layer, pairs: &[(usize, usize)]) -> Vec<String> {
        let mut v: Vec<String> = pairs
            .iter()
            .take(4)
            .filter_map(|&(s, d)| {
                self.cell(layer, s, d)
                    .map(|c| format!("{} -> {} {layer}: {}", self.nm(s), self.nm(d), describe(c)))
            })
            .collect();
        if pairs.len() > 4 {
            v.push(format!(
                "... and {} more {layer} cells alike",
                pairs.len() - 4
            ));
        }
        v
    }
    fn tcite(&self, layer: Layer, col: &str, srcs: &[usize]) -> Vec<String> {
        let mut v: Vec<String> = srcs
            .iter()
            .take(4)
            .filter_map(|&s| {
                self.tcell(layer, s, col)
                    .map(|c| format!("{} -> {col} {layer}: {}", self.nm(s), describe(c)))
            })
            .collect();
        if srcs.len() > 4 {
            v.push(format!(
                "... and {} more {layer} cells alike",
                srcs.len() - 4
            ));
        }
        v
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "a finding has this many parts; a builder would only rename them"
    )]
    fn push(
        &mut self,
        rank: u8,
        weight: usize,
        cause: &str,
        nodes: Vec<usize>,
        peers: Vec<usize>,
        direction: &str,
        hop: String,
        summary: String,
        evidence: Vec<String>,
        fix: String,
    ) {
        let finding = Finding {
            cause: cause.to_owned(),
            nodes: nodes.iter().map(|&n| name(self.ix.names[n])).collect(),
            peers: peers.iter().map(|&n| name(self.ix.names[n])).collect(),
            direction: direction.to_owned(),
            hop,
            summary,
            evidence,
            fix,
            rounds: 1,
        };
        self.found.push(Ranked {
            rank,
            weight,
            finding,
        });
    }

    fn agent_state(&self, x: usize) -> Option<(AgentState, AgentState)> {
        self.r
            .agents
            .get(&name(self.ix.names[x]))
            .map(|a| (a.host, a.pod))
    }

    // ---- 1. the node network --------------------------------------------------------------

    fn unreachable(&mut self) {
        for x in 0..self.n() {
            let looked = self.ix.col(Layer::Underlay, x).to_vec();
            let dead: Vec<(usize, usize)> = looked
                .iter()
                .filter(|&&s| self.dead(Layer::Underlay, s, x))
                .map(|&s| (s, x))
                .collect();
            if !self.quorum(dead.len(), looked.len()) {
                continue;
            }
            let xn = self.nm(x);
            let mut evidence = self.cite(Layer::Underlay, &dead);
            if let Some((h, p)) = self.agent_state(x)
                && (h != AgentState::Reported || p != AgentState::Reported)
            {
                evidence.push(format!(
                    "{xn}'s agents are {}/{} (host/pod): consistent with {xn} being cut off",
                    format!("{h:?}").to_lowercase(),
                    format!("{p:?}").to_lowercase()
                ));
            }
            let ip = self.node_ip(x);
            self.broken.insert(x, "node-unreachable");
            self.explain_node(&[Part::Network, Part::Pods, Part::Big], x);
            self.push(
                0,
                dead.len() * 10,
                "node-unreachable",
                vec![x],
                vec![],
                "both",
                format!("underlay: * -> {xn} ({ip})"),
                format!("{xn} is unreachable on its node IP {ip} from {} of {} nodes", dead.len(), looked.len()),
                evidence,
                format!("check {xn}'s link and address (`ip -br link; ip -br addr` on {xn}), its switch port or cloud network interface; from a peer `ping -c3 {ip}`"),
            );
        }
        // Single links: one pair's underlay is cut while both nodes reach everyone else.
        let mut dead_links: Vec<(usize, usize)> = self
            .ix
            .all(Layer::Underlay)
            .filter(|(_, _, c)| self.is_dead(Some(c)))
            .map(|(s, d, _)| (s, d))
            .collect();
        dead_links.sort_unstable();
        for (s, d) in dead_links {
            if self.is_explained(Part::Network, s, d) || self.row_sick(s) {
                continue;
            }
            let both = self.dead(Layer::Underlay, d, s);
            self.explain_pair(&[Part::Network, Part::Pods, Part::Big], s, d);
            let evidence = self.cite(Layer::Underlay, &[(s, d), (d, s)]);
            let (sn, dn, ip) = (self.nm(s), self.nm(d), self.node_ip(d));
            self.push(
                5,
                2,
                "node-unreachable",
                vec![d],
                vec![s],
                if both { "both" } else { "inbound" },
                format!("underlay: {sn} -> {dn} ({ip})"),
                format!(
                    "the underlay link between {sn} and {dn} is cut; both reach the other nodes"
                ),
                evidence,
                format!(
                    "from {sn}: `ping -c3 {ip}` and `ip route get {ip}`; check ACLs between the two"
                ),
            );
        }
    }

    /// A prober whose underlay row is mostly dead while most others reach it.
    fn row_sick(&self, x: usize) -> bool {
        let row = self.ix.row(Layer::Underlay, x);
        let col = self.ix.col(Layer::Underlay, x);
        let row_dead = row
            .iter()
            .filter(|&&d| self.dead(Layer::Underlay, x, d))
            .count();
        let col_ok = col
            .iter()
            .filter(|&&s| self.ok(Layer::Underlay, s, x))
            .count();
        row.len() >= 2 && self.quorum(row_dead, row.len()) && col_ok * 2 > col.len()
    }

    // ---- 2. the tunnel --------------------------------------------------------------------

    /// The tunnel s -> d fails while the underlay between them works.
    fn tunnel_cut(&self, s: usize, d: usize) -> bool {
        s != d
            && self.dead(Layer::GatewayFromHost, s, d)
            && !self.failing(Layer::Underlay, s, d)
            && !self.is_explained(Part::Network, s, d)
    }

    fn tunnel_nodes(&mut self) {
        let port = self.t.cluster.overlay.port;
        let iface = self.t.cluster.overlay.interface.clone();
        for x in 0..self.n() {
            if self.broken.contains_key(&x) {
                continue;
            }
            let looked: Vec<usize> = self
                .ix
                .col(Layer::GatewayFromHost, x)
                .iter()
                .copied()
                .filter(|&s| s != x && !self.failing(Layer::Underlay, s, x))
                .collect();
            let cut_in: Vec<(usize, usize)> = looked
                .iter()
                .filter(|&&s| self.tunnel_cut(s, x))
                .map(|&s| (s, x))
                .collect();
            if !self.quorum(cut_in.len(), looked.len()) {
                continue;
            }
            let cut_out: Vec<(usize, usize)> = self
                .ix
                .row(Layer::GatewayFromHost, x)
                .iter()
                .filter(|&&d| self.tunnel_cut(x, d))
                .map(|&d| (x, d))
                .collect();
            let xn = self.nm(x);
            let dev = self.underlay_dev(x);
            let mut evidence = self.cite(Layer::GatewayFromHost, &cut_in);
            evidence.extend(self.cite(Layer::GatewayFromHost, &cut_out));
            let underlay_ok = self
                .ix
                .col(Layer::Underlay, x)
                .iter()
                .filter(|&&s| self.ok(Layer::Underlay, s, x))
                .count();
            evidence.push(format!(
                "the underlay to {xn} works: {underlay_ok} nodes reach {} by ICMP",
                self.node_ip(x)
            ));
            let observers: Vec<usize> = cut_in.iter().map(|p| p.0).collect();
            let captured = self.capture_direction(x, &observers);
            for &s in observers.iter().take(2) {
                evidence.extend(self.chain_line(s, x));
                evidence.extend(self.chain_line(x, s));
            }
            if let Some((_, why)) = &captured {
                evidence.push(why.clone());
            }
            let ev = self.evidence(x);
            let port_rules = ev.map(|e| e.overlay_port_rules.clone()).unwrap_or_default();
            let missing = ev
                .and_then(|e| e.overlay.as_ref())
                .map(|o| o.peers_missing())
                .unwrap_or_default();
            let device = ev
                .and_then(|e| e.overlay.as_ref())
                .map(|o| o.device.clone());
            let (cause, direction, summary, fix);
            if !port_rules.is_empty() {
                let inbound = port_rules
                    .iter()
                    .any(|r| matches!(r.chain.as_str(), "INPUT" | "PREROUTING"));
                let outbound = port_rules
                    .iter()
                    .any(|r| matches!(r.chain.as_str(), "OUTPUT" | "POSTROUTING"));
                // What the wire shows wins over what the rules suggest.
                direction = match (&captured, inbound, outbound) {
                    (Some((d, _)), _, _) => d,
                    (None, true, true) => "both",
                    (None, false, true) => "outbound",
                    _ => "inbound",
                };
                for r in &port_rules {
                    evidence.push(format!("{xn}: iptables -t {} {}", r.table, r.rule));
                }
                cause = "vxlan-blocked";
                summary = format!(
                    "VXLAN (UDP {port}) is dropped {direction} on {xn}: pods on {xn} are cut off from other nodes"
                );
                fix = format!(
                    "on {xn}: remove the rule (`iptables-save | grep {port}`), then `tcpdump -ni {dev} udp port {port}` on {xn} and a peer"
                );
            } else if matches!(device, Some(None)) || matches!(device, Some(Some(ref d)) if !d.up) {
                direction = "both";
                cause = "overlay-peer-missing";
                evidence.push(match device {
                    Some(Some(d)) => format!("{xn}: {} is down", d.name),
                    _ => format!("{xn}: {iface} does not exist"),
                });
                summary = format!("{xn}'s overlay device {iface} is missing or down");
                fix = format!(
                    "restart flannel on {xn} (`kubectl -n kube-flannel delete pod -l app=flannel --field-selector spec.nodeName={xn}`)"
                );
            } else if !missing.is_empty() && missing.len() * 2 >= cut_in.len().max(1) {
                direction = "outbound";
                cause = "overlay-peer-missing";
                evidence.extend(self.overlay_lines(x));
                summary = format!(
                    "{xn}'s overlay state lacks its peers: it cannot encapsulate toward them"
                );
                fix = format!(
                    "on {xn}: `ip route | grep {iface}; ip neigh show dev {iface}; bridge fdb show dev {iface}`; restart flannel on {xn}"
                );
            } else {
                direction = captured.as_ref().map_or("unknown", |c| c.0);
                cause = "vxlan-blocked";
                if let Some(ev) = ev {
                    evidence.push(format!("{xn}: no iptables rule drops UDP {port} and its overlay entries are complete: the drop is outside the node's firewall (security group, switch ACL) or in a host security agent"));
                    for a in &ev.security_agents {
                        evidence.push(format!("{xn}: security agent {a} is running"));
                    }
                } else {
                    evidence.push(format!("{xn}'s host agent did not report: this verdict rests on the other nodes' view"));
                }
                summary = format!(
                    "VXLAN (UDP {port}) to and from {xn} is lost while its node IP answers"
                );
                fix = format!(
                    "allow UDP {port} between the nodes (security group, firewalld, switch ACL); `tcpdump -ni {dev} udp port {port}` on {xn} and a peer shows which way it vanishes"
                );
            }
            self.broken.insert(x, cause);
            self.explain_node(&[Part::Network, Part::Pods, Part::Big], x);
            let hop = format!("overlay: * <-> {xn} {dev}, UDP {port} ({iface})");
            self.push(
                1,
                (cut_in.len() + cut_out.len()) * 10,
                cause,
                vec![x],
                vec![],
                direction,
                hop,
                summary,
                evidence,
                fix,
            );
        }
    }

    /// The capture's view of probes from `s` to `d`, from both ends: (left s's NIC, arrived
    /// at d's NIC, replies left d's NIC, replies arrived at s's NIC). `None` without a
    /// capture on both ends.
    fn chain(&self, s: usize, d: usize) -> Option<[meshprobe_core::capture::Sizes; 4]> {
        let (sn, dn) = (self.ix.names[s], self.ix.names[d]);
        let at_s = self.r.capture.get(&name(sn))?.peer(dn)?;
        let at_d = self.r.capture.get(&name(dn))?.peer(sn)?;
        Some([
            at_s.requests_out,
            at_d.requests_in,
            at_d.replies_out,
            at_s.replies_in,
        ])
    }

    /// Capture evidence for probes s -> d, in words, from both ends.
    fn chain_line(&self, s: usize, d: usize) -> Option<String> {
        let c = self.chain(s, d)?;
        let (sn, dn) = (self.nm(s), self.nm(d));
        let (si, di) = (self.capture_iface(s), self.capture_iface(d));
        Some(format!(
            "capture: {} probes left {sn}'s {si} toward {dn}; {dn}'s {di} saw {} arrive and {} replies leave; {sn} saw {} replies come back",
            c[0].total(),
            c[1].total(),
            c[2].total(),
            c[3].total()
        ))
    }

    fn capture_iface(&self, x: usize) -> String {
        self.r
            .capture
            .get(&name(self.ix.names[x]))
            .map(|c| c.interface.clone())
            .unwrap_or_else(|| "NIC".into())
    }

    /// Where the capture says encapsulated traffic to and from `x` dies, given peers `obs`
    /// whose tunnel to `x` is cut: `Some((direction, explanation))`.
    fn capture_direction(&self, x: usize, obs: &[usize]) -> Option<(&'static str, String)> {
        let xn = self.nm(x);
        let (mut leave_x, mut at_x_nic, mut looked) = (0, 0, false);
        for &s in obs {
            let (Some(into), Some(from)) = (self.chain(s, x), self.chain(x, s)) else {
                continue;
            };
            looked = true;
            leave_x += from[0].total() + into[2].total();
            at_x_nic += into[1].total() + from[3].total();
        }
        if !looked {
            return None;
        }
        let iface = self.capture_iface(x);
        Some(if leave_x == 0 {
            (
                "outbound",
                format!(
                    "capture: nothing encapsulated leaves {xn}'s {iface} toward those peers, though its agents probe them: the drop is inside {xn}, before its NIC"
                ),
            )
        } else if at_x_nic > 0 {
            (
                "inbound",
                format!(
                    "capture: {at_x_nic} encapsulated probes and replies reach {xn}'s {iface} and are never answered or delivered: they die inside {xn}, after its NIC"
                ),
            )
        } else {
            (
                "inbound",
                format!(
                    "capture: {xn}'s own probes leave its {iface}, but nothing from its peers arrives there: the drop is on the path into {xn} (security group, switch ACL)"
                ),
            )
        })
    }

    /// Whether `me`'s evidence shows overlay entries missing for `peer`.
    fn lacks(&self, me: usize, peer: usize) -> bool {
        let peer = self.ix.names[peer];
        self.evidence(me)
            .and_then(|e| e.overlay.as_ref())
            .is_some_and(|o| o.peers_missing().iter().any(|n| n.as_str() == peer))
    }

    fn overlay_lines(&self, x: usize) -> Vec<String> {
        let Some(o) = self.evidence(x).and_then(|e| e.overlay.as_ref()) else {
            return vec![];
        };
        let xn = self.nm(x);
        let iface = &self.t.cluster.overlay.interface;
        let list = |v: &[NodeName]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut v = Vec::new();
        if !o.missing_routes.is_empty() {
            v.push(format!(
                "{xn}: no route to the pod CIDR of {} via {iface}",
                list(&o.missing_routes)
            ));
        }
        if !o.missing_neighbours.is_empty() {
            v.push(format!(
                "{xn}: no permanent neighbour entry on {iface} for the VTEP of {}",
                list(&o.missing_neighbours)
            ));
        }
        if !o.missing_fdb.is_empty() {
            v.push(format!(
                "{xn}: no fdb entry on {iface} sending to {}",
                list(&o.missing_fdb)
            ));
        }
        if !o.wrong_vtep_mac.is_empty() {
            v.push(format!(
                "{xn}: the neighbour or fdb entry on {iface} for {} points at a MAC other than the VTEP MAC the node advertises (stale after its VXLAN device was recreated)",
                list(&o.wrong_vtep_mac)
            ));
        }
        v
    }

    fn tunnel_pairs(&mut self) {
        let mut cuts: Vec<(usize, usize)> = self
            .ix
            .all(Layer::GatewayFromHost)
            .filter(|(s, d, _)| self.tunnel_cut(*s, *d))
            .map(|(s, d, _)| (s.min(d), s.max(d)))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let iface = self.t.cluster.overlay.interface.clone();
        let port = self.t.cluster.overlay.port;
        for (a, b) in cuts {
            if self.is_explained(Part::Network, a, b) {
                continue;
            }
            let mut cited = self.cite(Layer::GatewayFromHost, &[(a, b), (b, a)]);
            cited.extend(self.cite(Layer::PodToPod, &[(a, b), (b, a)]));
            cited.extend(self.chain_line(a, b));
            cited.extend(self.chain_line(b, a));
            let (lacks_ab, lacks_ba) = (self.lacks(a, b), self.lacks(b, a));
            for (me, peer, lacking) in [(a, b, lacks_ab), (b, a, lacks_ba)] {
                if !lacking {
                    continue;
                }
                let (mn, pn) = (self.nm(me), self.nm(peer));
                let mut evidence = cited.clone();
                evidence.extend(
                    self.overlay_lines(me)
                        .into_iter()
                        .filter(|l| l.contains(pn.as_str())),
                );
                evidence.push(format!(
                    "{mn} and {pn} both reach the other nodes through the tunnel"
                ));
                let peer_ip = self.node_ip(peer);
                self.push(
                    5,
                    4,
                    "overlay-peer-missing",
                    vec![me],
                    vec![peer],
                    "outbound",
                    format!("overlay: {mn} {iface} -> {pn}"),
                    format!("{mn}'s overlay state lacks peer {pn}: traffic between them cannot be encapsulated"),
                    evidence,
                    format!("on {mn}: `ip route | grep {iface}; ip neigh show dev {iface}; bridge fdb show dev {iface} | grep {peer_ip}`; restart flannel on {mn}"),
                );
            }
            if !lacks_ab && !lacks_ba {
                let (an, bn) = (self.nm(a), self.nm(b));
                let mut evidence = cited;
                evidence.push(format!("{an} and {bn} reach the other nodes; no evidence shows either lacking the other's overlay entries"));
                self.push(
                    5,
                    4,
                    "vxlan-blocked",
                    vec![a],
                    vec![b],
                    "unknown",
                    format!("overlay: {an} <-> {bn}, UDP {port}"),
                    format!("VXLAN between {an} and {bn} is lost while both reach the other nodes"),
                    evidence,
                    format!("check ACLs between {an} and {bn} for UDP {port}; `tcpdump -ni <underlay> udp port {port}` on both"),
                );
            }
            self.explain_pair(&[Part::Network, Part::Pods, Part::Big], a, b);
        }
    }

    // ---- 3. forwarding --------------------------------------------------------------------

    fn forwarding(&mut self) {
        for x in 0..self.n() {
            if self.broken.contains_key(&x) {
                continue;
            }
            // Out: x's pod cannot reach remote gateways that x's host reaches, while it
            // reaches its own gateway (so the pod itself is fine).
            let (mut out, mut out_looked) = (Vec::new(), 0);
            if self.ok(Layer::GatewayFromPod, x, x) {
                for d in self.ix.row(Layer::GatewayFromPod, x) {
                    if d != x
                        && self.ok(Layer::GatewayFromHost, x, d)
                        && !self.is_explained(Part::Pods, x, d)
                    {
                        out_looked += 1;
                        if self.dead(Layer::GatewayFromPod, x, d) {
                            out.push((x, d));
                        }
                    }
                }
            }
            // In: other nodes' pods reach x's gateway but not x's pod.
            let (mut inbound, mut in_looked) = (Vec::new(), 0);
            for &s in self.ix.col(Layer::PodToPod, x) {
                if self.ok(Layer::GatewayFromPod, s, x) && !self.is_explained(Part::Pods, s, x) {
                    in_looked += 1;
                    if self.dead(Layer::PodToPod, s, x) {
                        inbound.push((s, x));
                    }
                }
            }
            let out_hit = self.quorum(out.len(), out_looked);
            let in_hit = self.quorum(inbound.len(), in_looked);
            if !out_hit && !in_hit {
                continue;
            }
            let xn = self.nm(x);
            let direction = match (out_hit, in_hit) {
                (true, true) => "both",
                (true, false) => "outbound",
                _ => "inbound",
            };
            let mut evidence = Vec::new();
            if out_hit {
                evidence.extend(self.cite(Layer::GatewayFromPod, &out));
                evidence.push(format!("{xn}'s host reaches those gateways and its pod reaches its own gateway: {xn} does not forward its pods' traffic"));
            }
            if in_hit {
                evidence.extend(self.cite(Layer::PodToPod, &inbound));
                if let Some(&(s, _)) = inbound.first() {
                    evidence.extend(self.chain_line(s, x));
                }
                evidence.push(format!(
                    "those pods reach {xn}'s gateway: {xn} does not forward traffic into its pods"
                ));
            }
            let ev = self.evidence(x);
            let ip_forward_off = ev.and_then(|e| e.ip_forward) == Some(false);
            let blocking = ev
                .and_then(|e| e.forward.as_ref())
                .map(|f| f.blocking_rules.clone())
                .unwrap_or_default();
            let prohibited = out.iter().chain(&inbound).any(|&(s, d)| {
                [Layer::GatewayFromPod, Layer::PodToPod].iter().any(|l| {
                    self.cell(*l, s, d)
                        .and_then(|c| c.detail.as_deref())
                        .is_some_and(|t| t.contains("prohibited"))
                })
            });
            let cause = if ip_forward_off {
                evidence.push(format!("{xn}: net.ipv4.ip_forward = 0"));
                "ip-forward-disabled"
            } else if !blocking.is_empty() || prohibited {
                for r in &blocking {
                    evidence.push(format!(
                        "{xn}: iptables {} (before the CNI's accept rules)",
                        r.rule
                    ));
                }
                for c in ev
                    .and_then(|e| e.forward.as_ref())
                    .map(|f| f.foreign_chains.clone())
                    .unwrap_or_default()
                {
                    evidence.push(format!("{xn}: non-Kubernetes chain {c} (firewalld/ufw)"));
                }
                if prohibited {
                    evidence.push("probes got ICMP \"administratively prohibited\": a REJECT rule answers them".to_owned());
                }
                "forward-rejected"
            } else if ev.is_some() {
                evidence.push(format!("{xn}: ip_forward is 1 and no REJECT/DROP precedes the CNI's FORWARD accepts; packets vanish silently (check a host security agent or nftables)"));
                "forward-rejected"
            } else {
                evidence.push(format!("{xn}'s host agent did not report; silent drops (no ICMP error) point at net.ipv4.ip_forward = 0"));
                "ip-forward-disabled"
            };
            for a in ev.map(|e| e.security_agents.clone()).unwrap_or_default() {
                evidence.push(format!("{xn}: security agent {a} is running"));
            }
            let fix = match cause {
                "ip-forward-disabled" => format!(
                    "on {xn}: `sysctl -w net.ipv4.ip_forward=1`, then find what resets it: `grep -rn ip_forward /etc/sysctl.conf /etc/sysctl.d/ /usr/lib/sysctl.d/`"
                ),
                _ => format!(
                    "on {xn}: `iptables -S FORWARD`; delete the REJECT above the CNI rules (`iptables -D FORWARD -j REJECT --reject-with icmp-host-prohibited`) or stop firewalld / trust the pod CIDR"
                ),
            };
            let summary = match direction {
                "outbound" => format!("{xn} does not forward: its pods cannot reach other nodes"),
                "inbound" => format!("{xn} does not forward: other nodes cannot reach its pods"),
                _ => format!(
                    "{xn} does not forward: its pods are cut off from other nodes both ways"
                ),
            };
            let weight = (out.len() + inbound.len()) * 10;
            self.broken.insert(x, cause);
            self.explain_node(&[Part::Pods, Part::Big], x);
            let hop = format!(
                "forwarding on {xn}: cni0 <-> {}",
                self.t.cluster.overlay.interface
            );
            self.push(
                2,
                weight,
                cause,
                vec![x],
                vec![],
                direction,
                hop,
                summary,
                evidence,
                fix,
            );
        }
    }

    // ---- 4. MTU ---------------------------------------------------------------------------

    /// Full-size fails where small passes, s -> d.
    fn big_lost(&self, s: usize, d: usize) -> Option<Layer> {
        if self.is_explained(Part::Big, s, d) {
            return None;
        }
        if self.dead(Layer::UnderlayFullSize, s, d) && self.ok(Layer::Underlay, s, d) {
            return Some(Layer::UnderlayFullSize);
        }
        if self.dead(Layer::PodToPodFullSize, s, d) && self.ok(Layer::PodToPod, s, d) {
            return Some(Layer::PodToPodFullSize);
        }
        None
    }

    fn mtu(&mut self) {
        let overlay = self.t.cluster.overlay.clone();
        let big = overlay.assumed_underlay_mtu();
        for x in 0..self.n() {
            if self.broken.contains_key(&x) {
                continue;
            }
            let mut observers: Vec<usize> = self.ix.col(Layer::UnderlayFullSize, x).to_vec();
            observers.extend(self.ix.col(Layer::PodToPodFullSize, x));
            observers.sort_unstable();
            observers.dedup();
            let hit: Vec<(usize, Layer)> = observers
                .iter()
                .filter_map(|&s| self.big_lost(s, x).map(|l| (s, l)))
                .collect();
            if !self.quorum(hit.len(), observers.len()) {
                continue;
            }
            let xn = self.nm(x);
            let mut evidence = Vec::new();
            for layer in [Layer::UnderlayFullSize, Layer::PodToPodFullSize] {
                let pairs: Vec<(usize, usize)> = hit
                    .iter()
                    .filter(|h| h.1 == layer)
                    .map(|h| (h.0, x))
                    .collect();
                evidence.extend(self.cite(layer, &pairs));
            }
            for &(s, _) in hit.iter().take(2) {
                if let Some(c) = self.chain(s, x) {
                    evidence.push(format!(
                        "capture: {} full-size encapsulated probes left {}'s {} toward {xn}; {xn}'s {} saw {} of them arrive (and {} of {} small ones)",
                        c[0].big,
                        self.nm(s),
                        self.capture_iface(s),
                        self.capture_iface(x),
                        c[1].big,
                        c[1].small,
                        c[0].small
                    ));
                }
            }
            evidence.push(format!(
                "84-byte probes on the same paths pass; {big}-byte underlay frames (overlay MTU {} + {} of encapsulation) do not",
                overlay.mtu,
                overlay.kind.overhead()
            ));
            if let Some(o) = self.evidence(x).and_then(|e| e.overlay.as_ref())
                && let (Some(dev), Some(under)) = (&o.device, &o.underlay)
            {
                evidence.push(format!(
                    "{xn}: {} MTU {}, {} MTU {}",
                    dev.name, dev.mtu, under.name, under.mtu
                ));
                if dev.mtu + u32::from(overlay.kind.overhead()) > under.mtu {
                    evidence.push(format!(
                        "{xn}: {} MTU {} + {} exceeds {} MTU {}",
                        dev.name,
                        dev.mtu,
                        overlay.kind.overhead(),
                        under.name,
                        under.mtu
                    ));
                }
            }
            let dev = self.underlay_dev(x);
            self.broken.insert(x, "mtu-mismatch");
            self.explain_node(&[Part::Big], x);
            self.push(
                3,
                hit.len() * 10,
                "mtu-mismatch",
                vec![x],
                vec![],
                "both",
                format!("underlay: * <-> {xn} {dev}: frames of {big} bytes vanish"),
                format!("full-size packets to and from {xn} are lost while small ones pass: {xn}'s underlay path carries less than {big} bytes"),
                evidence,
                format!("from a peer: `ping -M do -s {} {}`, then smaller sizes to find the path MTU; raise the MTU on {xn}'s path (switch port, NIC) or lower flannel's MTU in net-conf.json", big - 28, self.node_ip(x)),
            );
        }
        // Pair-level leftovers.
        let mut pairs: Vec<(usize, usize)> = self
            .ix
            .all(Layer::UnderlayFullSize)
            .chain(self.ix.all(Layer::PodToPodFullSize))
            .filter(|(_, _, c)| c.state == CellState::Fail)
            .map(|(s, d, _)| (s, d))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        for (s, d) in pairs {
            if let Some(layer) = self.big_lost(s, d) {
                let evidence = self.cite(layer, &[(s, d)]);
                self.explain_pair(&[Part::Big], s, d);
                let (sn, dn) = (self.nm(s), self.nm(d));
                self.push(
                    6,
                    1,
                    "mtu-mismatch",
                    vec![d],
                    vec![s],
                    "unknown",
                    format!("path {sn} -> {dn}: frames of {big} bytes vanish"),
                    format!("full-size packets from {sn} to {dn} are lost while small ones pass"),
                    evidence,
                    format!(
                        "from {sn}: `ping -M do -s {} {}`",
                        big - 28,
                        self.node_ip(d)
                    ),
                );
            }
        }
    }

    // ---- 5. loss --------------------------------------------------------------------------

    fn loss(&mut self) {
        let dead = self.s.dead_loss_pct;
        // Per node: (lost, sent) into it and from it, who saw loss into it; the cluster's total.
        let n = self.n();
        let mut into = vec![(0u64, 0u64); n];
        let mut from = vec![(0u64, 0u64); n];
        let mut who: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
        let mut total = (0u64, 0u64);
        for (s, d, c) in Layer::ICMP.iter().flat_map(|l| self.ix.all(*l)) {
            if s == d || c.loss_pct.unwrap_or(0.0) >= dead {
                continue;
            }
            let (l, t) = (u64::from(lost_of(c)), u64::from(c.sent));
            into[d].0 += l;
            into[d].1 += t;
            from[s].0 += l;
            from[s].1 += t;
            total.0 += l;
            total.1 += t;
            if l > 0 {
                who[d].insert(s);
            }
        }
        for x in 0..n {
            let (lost, sent) = into[x];
            if self.broken.contains_key(&x) || sent == 0 {
                continue;
            }
            let pct = lost as f64 * 100.0 / sent as f64;
            let looked = self.ix.col(Layer::Underlay, x).len();
            if pct < self.s.loss_finding_pct || !self.quorum(who[x].len(), looked) {
                continue;
            }
            // The rest of the cluster must be clean, or this is not x's doing.
            let rest_lost = total.0 - into[x].0 - from[x].0;
            let rest_sent = total.1 - into[x].1 - from[x].1;
            let base = if rest_sent == 0 {
                0.0
            } else {
                rest_lost as f64 * 100.0 / rest_sent as f64
            };
            if base * 3.0 > pct {
                continue;
            }
            let xn = self.nm(x);
            let mut worst: Vec<(usize, usize)> = self
                .ix
                .col(Layer::Underlay, x)
                .iter()
                .map(|&s| (s, x))
                .collect();
            worst.sort_by_key(|&(s, d)| {
                std::cmp::Reverse(self.cell(Layer::Underlay, s, d).map_or(0, lost_of))
            });
            let mut evidence = vec![format!(
                "{pct:.0}% of {sent} probes into {xn} lost, seen by {} nodes; {base:.1}% between the other nodes",
                who[x].len()
            )];
            evidence.extend(self.cite(Layer::Underlay, &worst));
            let dev = self.underlay_dev(x);
            self.broken.insert(x, "packet-loss");
            self.push(
                4,
                lost as usize,
                "packet-loss",
                vec![x],
                vec![],
                "both",
                format!("underlay: * <-> {xn} {dev}"),
                format!("{xn} loses {pct:.0}% of the packets through it; the rest of the cluster does not"),
                evidence,
                format!("on {xn}: `ip -s link show {dev}` (errors, drops), `ethtool -S {dev}`; from a peer: `mtr -n -c 100 {}`", self.node_ip(x)),
            );
        }
    }

    // ---- 6. services ----------------------------------------------------------------------

    /// The network path from `s` into `x`'s pods works this round (as far as we know).
    fn path_into_pods(&self, s: usize, x: usize) -> bool {
        s == x
            || (!self.is_explained(Part::Pods, s, x)
                && !self.is_explained(Part::Network, s, x)
                && !matches!(self.broken.get(&x), Some(c) if *c != "packet-loss")
                && !self.failing(Layer::PodToPod, s, x))
    }

    fn pos(&self, node: &NodeName) -> Option<usize> {
        self.ix.pos.get(node.as_str()).copied()
    }

    fn dns(&mut self) {
        for pod in self.t.core_dns.clone() {
            let Some(x) = self.pos(&pod.node) else {
                continue;
            };
            let looked = self.ix.tcol(Layer::DnsPod, &pod.name).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| {
                    self.tcell(Layer::DnsPod, s, &pod.name).is_some_and(|c| {
                        c.state == CellState::Fail && c.loss_pct.unwrap_or(0.0) >= 50.0
                    })
                })
                .collect();
            let with_path = failing
                .iter()
                .filter(|&&s| self.path_into_pods(s, x))
                .count();
            if !self.quorum(failing.len(), looked.len()) || with_path < self.k(looked.len()) {
                continue;
            }
            self.dns_down.insert(pod.name.clone());
            let xn = self.nm(x);
            let mut evidence = self.tcite(Layer::DnsPod, &pod.name, &failing);
            evidence.push(format!(
                "{with_path} of those nodes reach {xn}'s pods: the network to {} ({}) works",
                pod.name, pod.ip
            ));
            let metrics = self
                .ix
                .tcol(Layer::CorednsMetrics, &pod.name)
                .iter()
                .filter(|&&s| self.tfailing(Layer::CorednsMetrics, s, &pod.name))
                .count();
            if metrics > 0 {
                evidence.push(format!("its :9153/metrics fails too from {metrics} nodes: the process is down or wedged"));
            }
            self.push(
                7,
                failing.len() * 5,
                "dns-pod-down",
                vec![x],
                vec![],
                "none",
                format!("CoreDNS pod {} ({}:53) on {xn}", pod.name, pod.ip),
                format!("CoreDNS pod {} on {xn} does not answer DNS from any node", pod.name),
                evidence,
                format!(
                    "`kubectl -n kube-system describe pod {0}; kubectl -n kube-system logs {0}`; `dig @{1} kubernetes.default.svc.{2}` from a node",
                    pod.name, pod.ip, self.t.cluster.cluster_domain
                ),
            );
        }
        // The service IP fails for observers that reach every CoreDNS pod directly.
        let looked = self.ix.tcol(Layer::DnsService, "kube-dns").to_vec();
        let failing: Vec<usize> = looked
            .iter()
            .copied()
            .filter(|&s| self.tfailing(Layer::DnsService, s, "kube-dns"))
            .filter(|&s| {
                !self.t.core_dns.is_empty()
                    && self.t.core_dns.iter().all(|p| {
                        self.tcell(Layer::DnsPod, s, &p.name)
                            .is_some_and(|c| c.state == CellState::Ok)
                    })
            })
            .collect();
        if self.dns_down.is_empty() && self.quorum(failing.len(), looked.len()) {
            let ip = self
                .t
                .cluster
                .dns_service_ip
                .map(|i| i.to_string())
                .unwrap_or_default();
            let mut evidence = self.tcite(Layer::DnsService, "kube-dns", &failing);
            evidence.push("the same nodes get answers from every CoreDNS pod directly".to_owned());
            let names: Vec<String> = failing.iter().map(|&s| self.nm(s)).collect();
            self.push(
                7,
                failing.len() * 5,
                "dns-service-broken",
                failing.clone(),
                vec![],
                "none",
                format!("kube-proxy: kube-dns service {ip}:53 -> CoreDNS pods"),
                format!("the kube-dns service IP {ip} does not answer on {}, while the CoreDNS pods do", names.join(", ")),
                evidence,
                format!("on those nodes: `iptables-save -t nat | grep {ip}`; `kubectl -n kube-system get endpointslices -l k8s-app=kube-dns`; kube-proxy's logs"),
            );
        }
    }

    fn metrics(&mut self) {
        for pod in self.t.core_dns.clone() {
            let Some(x) = self.pos(&pod.node) else {
                continue;
            };
            if self.dns_down.contains(&pod.name) {
                continue;
            }
            let looked = self.ix.tcol(Layer::CorednsMetrics, &pod.name).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| self.tfailing(Layer::CorednsMetrics, s, &pod.name))
                .filter(|&s| self.path_into_pods(s, x) && !self.is_explained(Part::Big, s, x))
                .collect();
            if !self.quorum(failing.len(), looked.len()) {
                continue;
            }
            let xn = self.nm(x);
            let mut evidence = self.tcite(Layer::CorednsMetrics, &pod.name, &failing);
            evidence.push(format!(
                "DNS to {} answers: the pod runs, and :9153 is what fails",
                pod.name
            ));
            self.push(
                8,
                failing.len(),
                "metrics-unreachable",
                vec![x],
                vec![],
                "none",
                format!("CoreDNS pod {} {}:9153/metrics on {xn}", pod.name, pod.ip),
                format!("CoreDNS pod {}'s :9153/metrics cannot be fetched", pod.name),
                evidence,
                format!("`curl -sv http://{}:9153/metrics` from a node; check NetworkPolicies and the Corefile's `prometheus :9153`", pod.ip),
            );
        }
    }

    fn nodeport(&mut self) {
        let mut cols: Vec<&str> = self
            .ix
            .tcols
            .keys()
            .filter(|(l, _)| *l == Layer::Nodeport)
            .map(|(_, c)| *c)
            .collect();
        cols.sort_unstable();
        for col in cols {
            let node_name = col.split('/').next().unwrap_or(col);
            let Some(&x) = self.ix.pos.get(node_name) else {
                continue;
            };
            if self.broken.contains_key(&x) {
                continue;
            }
            let looked = self.ix.tcol(Layer::Nodeport, col).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| {
                    self.tcell(Layer::Nodeport, s, col)
                        .is_some_and(|c| c.ok == 0)
                })
                .filter(|&s| s == x || !self.failing(Layer::Underlay, s, x))
                .collect();
            if !self.quorum(failing.len(), looked.len()) {
                continue;
            }
            let xn = self.nm(x);
            let mut evidence = self.tcite(Layer::Nodeport, col, &failing);
            evidence.push(format!("{xn}'s node IP answers ICMP and its pods are reachable: kube-proxy's NodePort rules on {xn} are what fails"));
            let elsewhere = self
                .ix
                .tcols
                .keys()
                .filter(|(l, c)| *l == Layer::Nodeport && *c != col)
                .filter(|(_, c)| {
                    self.tcell(Layer::Nodeport, x, c)
                        .is_some_and(|cell| cell.state == CellState::Ok)
                })
                .count();
            if elsewhere > 0 {
                evidence.push(format!(
                    "from {xn}, NodePorts on {elsewhere} other nodes answer"
                ));
            }
            self.push(
                7,
                failing.len() * 5,
                "nodeport-broken",
                vec![x],
                vec![],
                "inbound",
                format!("kube-proxy on {xn}: NodePort {col} on {}", self.node_ip(x)),
                format!("the NodePort does not answer on {xn} from any node"),
                evidence,
                format!("on {xn}: `iptables-save -t nat | grep KUBE-NODEPORTS`; kube-proxy's logs on {xn}"),
            );
        }
    }

    fn ingress(&mut self) {
        for ing in self.t.ingresses.clone() {
            let col = format!(
                "{}{}",
                ing.host,
                if ing.path == "/" { "" } else { &ing.path }
            );
            let node = self
                .t
                .nodes
                .iter()
                .find(|n| n.internal_ip == ing.address)
                .and_then(|n| self.pos(&n.name));
            let looked = self.ix.tcol(Layer::Ingress, &col).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| {
                    self.tcell(Layer::Ingress, s, &col)
                        .is_some_and(|c| c.ok == 0)
                })
                .filter(|&s| node.is_none_or(|n| s == n || !self.failing(Layer::Underlay, s, n)))
                .collect();
            let node_down = node.is_some_and(|n| self.broken.get(&n) == Some(&"node-unreachable"));
            if node_down || !self.quorum(failing.len(), looked.len()) {
                continue;
            }
            let mut evidence = self.tcite(Layer::Ingress, &col, &failing);
            if let Some(n) = node {
                evidence.push(format!(
                    "the ingress node {} ({}) answers ICMP",
                    self.nm(n),
                    ing.address
                ));
            }
            let pod_paths_ok = self
                .ix
                .all(Layer::PodToPod)
                .all(|(_, _, c)| c.state == CellState::Ok);
            evidence.push(if pod_paths_ok {
                "pods are reachable across the cluster: the ingress controller itself is what fails"
                    .to_owned()
            } else {
                "some pod paths fail too (see the other findings)".to_owned()
            });
            self.push(
                7,
                failing.len() * 5,
                "ingress-broken",
                node.into_iter().collect(),
                vec![],
                "inbound",
                format!("ingress {}:{} Host {}{}", ing.address, ing.port, ing.host, ing.path),
                format!("the ingress for {} does not answer from any node", ing.host),
                evidence,
                format!(
                    "`curl -sv -H 'Host: {}' http://{}:{}{}`; check the ingress controller's pods and logs",
                    ing.host, ing.address, ing.port, ing.path
                ),
            );
        }
    }

    // ---- 7. the agents themselves ---------------------------------------------------------

    fn degraded_probers(&mut self) {
        for x in 0..self.n() {
            if self.broken.contains_key(&x) || !self.row_sick(x) {
                continue;
            }
            let dead: Vec<(usize, usize)> = self
                .ix
                .row(Layer::Underlay, x)
                .iter()
                .filter(|&&d| self.dead(Layer::Underlay, x, d))
                .map(|&d| (x, d))
                .collect();
            let xn = self.nm(x);
            let mut evidence = self.cite(Layer::Underlay, &dead);
            evidence.push(format!(
                "the other nodes reach {xn}: the fault is in {xn}'s prober, not in its peers"
            ));
            self.push(
                9,
                dead.len(),
                "agent-degraded",
                vec![x],
                vec![],
                "none",
                format!("meshprobe host agent on {xn}"),
                format!("{xn}'s agent sees its peers fail while they reach {xn}: its prober is unhealthy"),
                evidence,
                format!("read the host agent's log on {xn}; check its CPU limit and CAP_NET_RAW"),
            );
        }
    }

    fn agents(&mut self) {
        for x in 0..self.n() {
            let Some((h, p)) = self.agent_state(x) else {
                continue;
            };
            // A node that is not ready (cordoned, going away) may well have no agents.
            let unready = self
                .t
                .node(&name(self.ix.names[x]))
                .is_some_and(|n| !n.state.is_ready());
            if unready || self.broken.get(&x) == Some(&"node-unreachable") {
                continue;
            }
            let missing: Vec<(&str, AgentState)> = [("host", h), ("pod", p)]
                .into_iter()
                .filter(|(_, s)| *s != AgentState::Reported)
                .collect();
            if missing.is_empty() {
                continue;
            }
            let xn = self.nm(x);
            let kinds: Vec<&str> = missing.iter().map(|m| m.0).collect();
            let mut evidence: Vec<String> = missing
                .iter()
                .map(|(k, s)| format!("{xn}'s {k} agent: {}", format!("{s:?}").to_lowercase()))
                .collect();
            evidence.push(format!(
                "any verdict about {xn} comes from the other nodes' view of it"
            ));
            self.push(
                10,
                1,
                "agent-missing",
                vec![x],
                vec![],
                "none",
                format!("meshprobe {} agent on {xn}", kinds.join(" and ")),
                if kinds.len() == 2 {
                    format!("{xn}'s host and pod agents do not report")
                } else {
                    format!("{xn}'s {} agent does not report", kinds[0])
                },
                evidence,
                format!("`kubectl -n meshprobe get pods -o wide --field-selector spec.nodeName={xn}` and the agents' logs"),
            );
        }
    }

    // ---- 8. evidence without a failing probe ----------------------------------------------

    fn evidence_warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let named: BTreeSet<&str> = self
            .found
            .iter()
            .flat_map(|f| f.finding.nodes.iter().chain(&f.finding.peers))
            .map(|n| n.as_str())
            .collect();
        for (node, ev) in &self.r.evidence {
            let x = node.as_str();
            for u in &ev.unavailable {
                w.push(format!("{x}: evidence unavailable: {u}"));
            }
            for o in &ev.cidr_overlaps {
                w.push(format!("{x}: {o}"));
            }
            for a in &ev.security_agents {
                w.push(format!(
                    "{x}: host security agent {a} is running (known to hook the network stack)"
                ));
            }
            if named.contains(x) {
                continue;
            }
            if ev.ip_forward == Some(false) {
                w.push(format!(
                    "{x}: net.ipv4.ip_forward = 0, though no probe fails yet"
                ));
            }
            for r in ev.forward.iter().flat_map(|f| &f.blocking_rules) {
                w.push(format!(
                    "{x}: iptables {} precedes the CNI's accept rules, though no probe fails yet",
                    r.rule
                ));
            }
            for r in &ev.overlay_port_rules {
                w.push(format!(
                    "{x}: iptables {} drops the overlay port, though no probe fails yet",
                    r.rule
                ));
            }
            if let Some(i) = self.pos(node) {
                for l in self.overlay_lines(i) {
                    w.push(format!("{l}, though no probe fails yet"));
                }
            }
        }
        w
    }
}
