//! The datapath model at work: every explanation is a hypothesis about a hop
//! ([`meshprobe_core::datapath`]), and a hypothesis is tested against the cells that pass.
//!
//! - **Exoneration.** A cell that passes clears every hop its request and reply cross,
//!   for what its packets are there (protocol, port, size; the overlay's UDP on the
//!   encapsulating hops). A hypothesis that passing cells contradict is not the answer.
//! - **Verification** ([`Cx::verify`]). Each finding the detectors made is restated as
//!   the hops it blames. When passing cells clear all of them, the finding is withdrawn,
//!   its cells are released and it is kept as an alternative; when they clear some (one
//!   direction of two), the finding is narrowed to the rest.
//! - **The smallest explanation** ([`Cx::localise`]). The cells no finding explains are
//!   covered greedily by the hypotheses that survive exoneration: the hop that explains
//!   the most cells first, at the widest scope the passing cells allow (any traffic, one
//!   protocol, one port, one size), node evidence and the number of independent
//!   observers breaking ties. A node is blamed only on the word of enough observers or
//!   its own evidence; what is left is `unexplained`.
//! - **Alternatives** ([`Cx::alternatives`]). Each finding lists the nearest other
//!   explanations of its cells and the passing cells that rejected them.

use std::collections::BTreeSet;

use meshprobe_core::datapath::{self, Dest, Hop, HopKind, Path, Ports, Proto, Scope, Site, Size};
use meshprobe_core::matrix::{Alternative, CellState, Finding, MAX_ALTERNATIVE_CELLS};
use meshprobe_core::{Cause, Direction, Layer};

use crate::Ranked;
use crate::cx::{Cx, describe, name};
use crate::index::{CellKey, Col, FxMap, FxSet};

/// What traffic a hypothesis says a hop breaks: everything (all `None`), or only one
/// protocol, port or size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Narrow {
    pub(crate) proto: Option<Proto>,
    pub(crate) port: Option<u16>,
    pub(crate) size: Option<Size>,
}

impl Narrow {
    /// Every kind of traffic.
    pub(crate) const ANY: Narrow = Narrow {
        proto: None,
        port: None,
        size: None,
    };

    fn proto(p: Proto) -> Narrow {
        Narrow {
            proto: Some(p),
            ..Narrow::ANY
        }
    }

    /// Whether traffic of scope `s` is what this breaks.
    pub(crate) fn covers(self, s: Scope) -> bool {
        self.proto.is_none_or(|p| p == s.proto)
            && self.port.is_none_or(|p| Some(p) == s.port)
            && self.size.is_none_or(|z| z == s.size)
    }

    /// How many constraints it has (0: any traffic): fewer is a wider explanation.
    fn rank(self) -> u8 {
        u8::from(self.proto.is_some())
            + u8::from(self.port.is_some())
            + u8::from(self.size.is_some())
    }

    /// The scopes a failing probe's hop may be blamed at, widest first.
    fn of(s: Scope) -> Vec<Narrow> {
        let mut v = vec![Narrow::ANY, Narrow::proto(s.proto)];
        if s.port.is_some() {
            v.push(Narrow {
                proto: Some(s.proto),
                port: s.port,
                size: None,
            });
        }
        if s.size != Size::Small {
            v.push(Narrow {
                size: Some(s.size),
                ..Narrow::ANY
            });
        }
        v
    }

    /// In words, for a finding: "" for any traffic.
    pub(crate) fn words(self) -> String {
        let mut w = Vec::new();
        if let Some(z) = self.size {
            w.push(
                match z {
                    Size::Small => "small",
                    Size::Full => "full-size",
                    Size::Fragmented => "fragmented",
                }
                .to_owned(),
            );
        }
        match (self.proto, self.port) {
            (Some(p), Some(port)) => w.push(format!("{} {port}", p.as_str())),
            (Some(p), None) => w.push(p.as_str().to_owned()),
            _ => {}
        }
        w.join(" ")
    }
}

/// A hypothesis: this hop fails for this traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Hyp {
    pub(crate) hop: Hop,
    pub(crate) narrow: Narrow,
}

impl Hyp {
    fn any(hop: Hop) -> Self {
        Hyp {
            hop,
            narrow: Narrow::ANY,
        }
    }
}

/// The most unexplained cells the localiser reads (a round so broken that more are left
/// has its worst already named; the rest go to `unexplained`).
const MAX_LOCALISED_CELLS: usize = 4096;
/// The most hypotheses the localiser accepts in one round.
const MAX_PICKS: usize = 32;
/// Alternatives listed per finding.
const MAX_ALTERNATIVES: usize = 3;

/// The hypotheses the localiser chose that name one cause at one place.
struct Group {
    /// The first chosen (it covered the most cells).
    main: Hyp,
    /// The same hop or cause at other scopes.
    also: Vec<Hyp>,
    /// The cells they cover.
    cells: Vec<CellKey>,
    /// The same fault's other hops that cover the same cells (the other direction).
    twins: Vec<Hyp>,
}

/// A finding the verification withdrew: what it said, and what cleared it.
pub(crate) struct Withdrawn {
    pub(crate) alternative: Alternative,
    pub(crate) keys: Vec<CellKey>,
}

fn at(kind: HopKind, x: usize) -> Hop {
    Hop {
        kind,
        site: Site::Node(x),
    }
}

impl Cx<'_> {
    // ---- the model's view of a cell ------------------------------------------------------

    /// The port a target column's probes go to.
    fn ports_of(&self, k: CellKey) -> Ports {
        let service = match k.col {
            Col::Target(id) => {
                let t = &self.ix.targets[id];
                match t.layer {
                    Layer::Nodeport | Layer::NodeportFromPod => {
                        let svc = t.name.split_once('/').map(|(_, s)| s);
                        self.t
                            .node_ports
                            .iter()
                            .find(|p| svc.is_none_or(|s| s == p.name))
                            .map_or(0, |p| p.port)
                    }
                    Layer::Ingress | Layer::IngressFromPod => self
                        .t
                        .ingresses
                        .iter()
                        .find(|g| meshprobe_core::plan::ingress_column(g) == t.name)
                        .map_or(80, |g| g.port),
                    _ => 0,
                }
            }
            Col::Node(_) => 0,
        };
        Ports { service }
    }

    /// One id per target across layers: a CoreDNS pod's DNS and metrics columns are one
    /// endpoint, as are an ingress's host and pod columns.
    fn endpoint(&self, id: usize) -> usize {
        let ends = self.endpoints.get_or_init(|| {
            let family = |l: Layer| match l {
                Layer::DnsPod | Layer::CorednsMetrics => 1u8,
                Layer::Ingress | Layer::IngressFromPod => 2,
                _ => 0,
            };
            let mut first: FxMap<(u8, &str), usize> = FxMap::default();
            self.ix
                .targets
                .iter()
                .enumerate()
                .map(|(i, t)| match family(t.layer) {
                    0 => i,
                    f => *first.entry((f, t.name)).or_insert(i),
                })
                .collect()
        });
        ends.get(id).copied().unwrap_or(id)
    }

    /// The path a cell's probes take.
    pub(crate) fn path_of(&self, k: CellKey) -> Option<Path> {
        let dest = match k.col {
            Col::Node(d) => Dest::Node(d),
            Col::Target(id) => {
                let t = &self.ix.targets[id];
                match (t.layer, t.node) {
                    (Layer::DnsService, _) => Dest::Service,
                    (Layer::Nodeport | Layer::NodeportFromPod, Some(d)) => Dest::Node(d),
                    (_, Some(d)) => Dest::Target {
                        id: self.endpoint(id),
                        node: d,
                    },
                    (_, None) => return None,
                }
            }
        };
        datapath::path(k.layer, k.src, dest, self.ports_of(k))
    }

    /// Whether cell `k`'s packets cross the hypothesis's hop as the traffic it breaks.
    fn crosses(&self, k: CellKey, h: Hyp) -> bool {
        self.crosses_on(k, h, false)
    }

    /// [`Cx::crosses`], counting only the legs addressed to pods when `pods_only`.
    pub(crate) fn crosses_on(&self, k: CellKey, h: Hyp, pods_only: bool) -> bool {
        let port = self.t.cluster.overlay.port;
        let hit = |(x, s): (Hop, Scope)| x == h.hop && h.narrow.covers(s);
        self.path_of(k).is_some_and(|p| {
            if pods_only {
                p.crossings_to_pods(port).any(hit)
            } else {
                p.crossings(port).any(hit)
            }
        })
    }

    /// The known cells whose paths may cross a hop at `site`.
    pub(crate) fn cells_at(&self, site: Site) -> Vec<CellKey> {
        let mut v = Vec::new();
        let node = |x: usize, v: &mut Vec<CellKey>| {
            for layer in Layer::ICMP {
                for d in self.ix.row_targets(layer, x) {
                    v.push(CellKey {
                        layer,
                        src: x,
                        col: Col::Node(d),
                    });
                }
                for &s in self.ix.col(layer, x) {
                    if s != x {
                        v.push(CellKey {
                            layer,
                            src: s,
                            col: Col::Node(x),
                        });
                    }
                }
            }
            for &id in self.ix.trow(x) {
                v.push(CellKey {
                    layer: self.ix.targets[id].layer,
                    src: x,
                    col: Col::Target(id),
                });
            }
            for &id in self.ix.targets_on(x) {
                for &s in self.ix.tcol(id) {
                    if s != x {
                        v.push(CellKey {
                            layer: self.ix.targets[id].layer,
                            src: s,
                            col: Col::Target(id),
                        });
                    }
                }
            }
        };
        match site {
            Site::Node(x) => node(x, &mut v),
            Site::Pair { from, to } => {
                node(from, &mut v);
                v.retain(|k| k.src == to || self.ix.dst_node(*k) == Some(to));
            }
            Site::Target(id) => {
                for (tid, t) in self.ix.targets.iter().enumerate() {
                    if self.endpoint(tid) == id {
                        v.extend(self.ix.tcol(tid).iter().map(|&s| CellKey {
                            layer: t.layer,
                            src: s,
                            col: Col::Target(tid),
                        }));
                    }
                }
            }
            Site::Service => {}
        }
        v
    }

    /// Whether a cell passed well enough to clear what it crosses: ok, and most of its
    /// probes answered.
    pub(crate) fn clears(&self, k: CellKey) -> bool {
        self.ix
            .cell(k)
            .is_some_and(|c| c.state == CellState::Ok && c.ok > 0 && c.ok * 2 >= c.sent)
    }

    /// The passing cells that cross the hypothesis's hop as the traffic it breaks: what
    /// says it is wrong.
    pub(crate) fn exonerating(&self, h: Hyp) -> Vec<CellKey> {
        // The kernel routes per address: when the node's own lookup says the peer's pods
        // go elsewhere, a probe of an address the peer owns itself (its gateway, which it
        // answers on any interface) proves nothing about the route to its pods.
        let misrouted = match (h.hop.kind, h.hop.site) {
            (HopKind::OverlayRoute, Site::Pair { from, to }) => {
                let peer = self.ix.names[to];
                self.evidence(from)
                    .and_then(|e| e.overlay.as_ref())
                    .is_some_and(|o| o.misrouted.iter().any(|m| m.node.as_str() == peer))
            }
            _ => false,
        };
        self.exonerating_on(h, misrouted)
    }

    /// [`Cx::exonerating`], counting only the legs addressed to pods when `pods_only`.
    pub(crate) fn exonerating_on(&self, h: Hyp, pods_only: bool) -> Vec<CellKey> {
        let mut v: Vec<CellKey> = self
            .cells_at(h.hop.site)
            .into_iter()
            .filter(|&k| self.clears(k) && self.crosses_on(k, h, pods_only))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether any probe whose packets cross `hop` got an answer: a hop that carries some
    /// of them is lossy, not cut.
    pub(crate) fn carries(&self, hop: Hop) -> bool {
        let h = Hyp::any(hop);
        self.cells_at(hop.site)
            .into_iter()
            .any(|k| self.ix.cell(k).is_some_and(|c| c.ok > 0) && self.crosses(k, h))
    }

    /// Passing cells in words: "pod-to-pod n1 -> n3 passes 10/10, ...".
    fn passing_words(&self, cells: &[CellKey]) -> String {
        let mut parts: Vec<String> = cells
            .iter()
            .take(3)
            .filter_map(|&k| {
                let c = self.ix.cell(k)?;
                Some(format!(
                    "{} {} -> {} passes {}/{}",
                    k.layer,
                    self.ix.names[k.src],
                    self.ix.col_name(k),
                    c.ok,
                    c.sent
                ))
            })
            .collect();
        if cells.len() > 3 {
            parts.push(format!("and {} more passing cells", cells.len() - 3));
        }
        parts.join(", ")
    }

    /// The explanation `cause` on `nodes` (at hop `h`), rejected by the passing cells `ex`.
    fn alternative(
        &self,
        cause: Cause,
        nodes: Vec<meshprobe_core::NodeName>,
        peers: Vec<meshprobe_core::NodeName>,
        h: Hyp,
        ex: &[CellKey],
    ) -> Alternative {
        Alternative {
            cause,
            nodes,
            peers,
            hop: self.hop_words(h),
            rejected_by: format!(
                "not {}: {}, through that hop",
                self.hop_words(h),
                self.passing_words(ex)
            ),
            rejecting_cells: self.refs_max(ex, MAX_ALTERNATIVE_CELLS),
        }
    }

    /// A hop in words, with its place.
    pub(crate) fn hop_words(&self, h: Hyp) -> String {
        let place = match h.hop.site {
            Site::Node(x) => format!("on {}", self.ix.names[x]),
            Site::Pair { from, to } => {
                format!("from {} to {}", self.ix.names[from], self.ix.names[to])
            }
            Site::Target(id) => format!("at {}", self.ix.targets[id].name),
            Site::Service => "behind the service".to_owned(),
        };
        let what = h.narrow.words();
        let scope = if what.is_empty() {
            String::new()
        } else {
            format!(" ({what})")
        };
        format!("{} {place}{scope}", h.hop.kind.describe())
    }

    // ---- findings as hypotheses ----------------------------------------------------------

    /// The hops a finding blames; `None` for findings the model does not restate (loss,
    /// MTU, agents, configuration, what is already unexplained, pair findings the wire
    /// localised).
    fn hyps_of(&self, r: &Ranked) -> Option<Vec<Hyp>> {
        let f = &r.finding;
        let x = f.nodes.first().and_then(|n| self.pos(n))?;
        let peers: Vec<usize> = f.peers.iter().filter_map(|p| self.pos(p)).collect();
        let overlay = Narrow {
            proto: Some(Proto::Udp),
            port: Some(self.t.cluster.overlay.port),
            size: None,
        };
        let dir = |d: &Direction, out: Hop, inn: Hop| match d {
            Direction::Outbound => vec![out],
            Direction::Inbound => vec![inn],
            _ => vec![out, inn],
        };
        let targets = |layer: Layer| -> Vec<Hyp> {
            let ids: BTreeSet<usize> = r
                .keys
                .iter()
                .filter(|k| k.layer == layer)
                .filter_map(|k| match k.col {
                    Col::Target(id) => Some(self.endpoint(id)),
                    Col::Node(_) => None,
                })
                .collect();
            let narrow = datapath::scope_of(layer, Ports { service: 0 });
            ids.into_iter()
                .map(|id| Hyp {
                    hop: Hop {
                        kind: HopKind::Endpoint,
                        site: Site::Target(id),
                    },
                    narrow: Narrow {
                        proto: Some(narrow.proto),
                        port: narrow.port,
                        size: None,
                    },
                })
                .collect()
        };
        let hyps: Vec<Hyp> = match f.cause {
            Cause::VxlanBlocked if peers.is_empty() => {
                dir(&f.direction, at(HopKind::Encap, x), at(HopKind::Decap, x))
                    .into_iter()
                    .map(|hop| Hyp {
                        hop,
                        narrow: overlay,
                    })
                    .collect()
            }
            Cause::ForwardRejected => dir(
                &f.direction,
                at(HopKind::ForwardOut, x),
                at(HopKind::ForwardIn, x),
            )
            .into_iter()
            .map(Hyp::any)
            .collect(),
            Cause::OverlayPeerMissing if !peers.is_empty() => peers
                .iter()
                .map(|&p| {
                    Hyp::any(Hop {
                        kind: HopKind::OverlayRoute,
                        site: Site::Pair { from: x, to: p },
                    })
                })
                .collect(),
            Cause::PodGatewayMissing => vec![Hyp::any(at(HopKind::Gateway, x))],
            Cause::DnsPodDown => targets(Layer::DnsPod),
            Cause::MetricsUnreachable => targets(Layer::CorednsMetrics),
            _ => return None,
        };
        (!hyps.is_empty()).then_some(hyps)
    }

    /// Tests every finding against the cells that pass: withdraws those passing cells
    /// clear entirely, narrows those they clear in part.
    pub(crate) fn verify(&mut self) {
        let mut keep = Vec::with_capacity(self.ledger.found.len());
        for mut r in std::mem::take(&mut self.ledger.found) {
            let Some(hyps) = self.hyps_of(&r) else {
                keep.push(r);
                continue;
            };
            let tested: Vec<(Hyp, Vec<CellKey>)> =
                hyps.into_iter().map(|h| (h, self.exonerating(h))).collect();
            let standing: Vec<Hyp> = tested
                .iter()
                .filter(|(_, ex)| ex.is_empty())
                .map(|(h, _)| *h)
                .collect();
            // Standing, but on no evidence, where another hop of the same cells has it (a
            // bridge that is down, read by elimination as a firewall): the evidence wins.
            let supplanted = if !standing.is_empty() && !standing.iter().any(|h| self.supported(*h))
            {
                self.better_supported(&r, &standing)
            } else {
                None
            };
            if standing.is_empty() || supplanted.is_some() {
                let f = &r.finding;
                for k in &r.keys {
                    self.ledger.unclaim(k);
                }
                if let Some(x) = f.nodes.first().and_then(|n| self.pos(n)) {
                    self.ledger.clear_broken(x);
                }
                let alternative = match supplanted {
                    Some(better) => Alternative {
                        cause: f.cause.clone(),
                        nodes: f.nodes.clone(),
                        peers: f.peers.clone(),
                        hop: self.hop_words(standing[0]),
                        rejected_by: format!(
                            "not {}: no evidence on the node shows it, while {} explains every one of its cells and the node's own state shows it",
                            self.hop_words(standing[0]),
                            self.hop_words(better)
                        ),
                        rejecting_cells: Vec::new(),
                    },
                    None => {
                        let (h, ex) = &tested[0];
                        self.alternative(f.cause.clone(), f.nodes.clone(), f.peers.clone(), *h, ex)
                    }
                };
                self.ledger.withdrawn.push(Withdrawn {
                    alternative,
                    keys: std::mem::take(&mut r.keys),
                });
                continue;
            }
            if standing.len() < tested.len() {
                // One direction of two stands: the finding is about that one.
                for (h, ex) in tested.iter().filter(|(_, ex)| !ex.is_empty()) {
                    let f = &r.finding;
                    let a =
                        self.alternative(f.cause.clone(), f.nodes.clone(), f.peers.clone(), *h, ex);
                    r.finding.alternatives.push(a);
                }
                let out = standing
                    .iter()
                    .any(|h| matches!(h.hop.kind, HopKind::Encap | HopKind::ForwardOut));
                let inn = standing
                    .iter()
                    .any(|h| matches!(h.hop.kind, HopKind::Decap | HopKind::ForwardIn));
                r.finding.direction = Direction::of(inn, out);
            }
            keep.push(r);
        }
        self.ledger.found = keep;
    }

    // ---- the smallest explanation --------------------------------------------------------

    /// Whether node-local evidence supports the hypothesis.
    fn supported(&self, h: Hyp) -> bool {
        let node = |x: usize| self.evidence(x);
        match (h.hop.kind, h.hop.site) {
            (HopKind::ForwardOut | HopKind::ForwardIn, Site::Node(x)) => node(x).is_some_and(|e| {
                e.ip_forward == Some(false)
                    || e.forward
                        .as_ref()
                        .is_some_and(|f| !f.blocking_rules.is_empty())
            }),
            (HopKind::Encap | HopKind::Decap, Site::Node(x)) => {
                node(x).is_some_and(|e| !e.overlay_port_rules.is_empty())
            }
            (HopKind::Gateway, Site::Node(x)) => node(x)
                .is_some_and(|e| e.config.as_ref().is_some_and(|c| c.bridge_addrs.is_empty())),
            (HopKind::OverlayRoute, Site::Pair { from, to }) => {
                let peer = self.ix.names[to];
                node(from)
                    .and_then(|e| e.overlay.as_ref())
                    .is_some_and(|o| o.peers_missing().iter().any(|p| p.as_str() == peer))
            }
            (HopKind::ServiceNat, Site::Node(x)) => !self.service_odd(x).is_empty(),
            (HopKind::Bridge, Site::Node(x)) => self.bridge_down(x).is_some(),
            // The kernel said so: the node's own sends were refused before they left.
            (HopKind::HostOut, Site::Node(x)) => self.ix.refused_sends[x] > 0,
            _ => false,
        }
    }

    /// The node's pod bridge, when its evidence shows it down or without carrier.
    pub(crate) fn bridge_down(&self, x: usize) -> Option<&meshprobe_core::evidence::DeviceState> {
        self.evidence(x)
            .and_then(|e| e.overlay.as_ref())
            .and_then(|o| o.bridge.as_ref())
            .filter(|b| !b.up || b.no_carrier)
    }

    /// A hop with node evidence behind it that explains every cell of a finding no
    /// evidence supports, and that no passing cell clears: the better explanation.
    fn better_supported(&self, r: &Ranked, own: &[Hyp]) -> Option<Hyp> {
        let first = *r.keys.first()?;
        let path = self.path_of(first)?;
        let hops: BTreeSet<Hop> = path.hops().collect();
        hops.into_iter().map(Hyp::any).find(|h| {
            !own.iter().any(|o| o.hop == h.hop)
                && self.supported(*h)
                && self.cause_of(*h).is_some()
                && r.keys.iter().all(|&k| {
                    // A load-balanced probe may have landed anywhere: it proves nothing.
                    self.path_of(k).is_none_or(|p| p.balanced) || self.crosses(k, *h)
                })
                && self.exonerating(*h).is_empty()
        })
    }

    /// The distinct other nodes whose cells a hypothesis at node `x` explains.
    fn observers(&self, x: usize, cells: &[CellKey]) -> usize {
        let mut o: FxSet<usize> = FxSet::default();
        for &k in cells {
            if k.src != x {
                o.insert(k.src);
            } else if let Some(d) = self.ix.dst_node(k).filter(|&d| d != x) {
                o.insert(d);
            }
        }
        o.len()
    }

    /// Covers the failing cells no finding claims with the fewest hypotheses that survive
    /// exoneration, and makes a finding of each that names a cause.
    pub(crate) fn localise(&mut self) {
        self.localise_with(false);
    }

    /// [`Cx::localise`] with only the hypotheses node evidence supports: run before the
    /// detectors that read what is left as nobody's (a service's backends), so that a
    /// node whose own state explains its cells is named first.
    pub(crate) fn localise_supported(&mut self) {
        self.localise_with(true);
    }

    fn localise_with(&mut self, only_supported: bool) {
        let left: Vec<CellKey> = self
            .ix
            .failing
            .iter()
            .copied()
            .filter(|k| !self.ledger.is_claimed(k))
            .take(MAX_LOCALISED_CELLS)
            .collect();
        if left.is_empty() {
            return;
        }
        let port = self.t.cluster.overlay.port;
        let mut cands: FxMap<Hyp, Vec<CellKey>> = FxMap::default();
        let mut backed: FxMap<Hop, bool> = FxMap::default();
        for &k in &left {
            let Some(p) = self.path_of(k) else { continue };
            let mut seen: FxSet<Hyp> = FxSet::default();
            for (hop, scope) in p.crossings(port) {
                if only_supported
                    && !*backed
                        .entry(hop)
                        .or_insert_with(|| self.supported(Hyp::any(hop)))
                {
                    continue;
                }
                for narrow in Narrow::of(scope) {
                    let h = Hyp { hop, narrow };
                    if seen.insert(h) {
                        cands.entry(h).or_default().push(k);
                    }
                }
            }
        }
        let mut cleared: FxMap<Hyp, bool> = FxMap::default();
        let mut uncovered: FxSet<CellKey> = left.iter().copied().collect();
        let mut picks: Vec<(Hyp, Vec<CellKey>, Vec<Hyp>)> = Vec::new();
        while !uncovered.is_empty() && picks.len() < MAX_PICKS {
            // Most uncovered cells, then evidence, then the widest scope, then the hop
            // order (deterministic).
            let mut order: Vec<(&Hyp, usize)> = cands
                .iter()
                .map(|(h, ks)| (h, ks.iter().filter(|k| uncovered.contains(k)).count()))
                .filter(|(_, n)| *n > 0)
                .collect();
            order.sort_by(|a, b| {
                b.1.cmp(&a.1)
                    .then(self.supported(*b.0).cmp(&self.supported(*a.0)))
                    .then(a.0.narrow.rank().cmp(&b.0.narrow.rank()))
                    .then(a.0.cmp(b.0))
            });
            let mut chosen: Option<(Hyp, usize)> = None;
            let mut rivals: Vec<Hyp> = Vec::new();
            for (h, n) in order {
                if chosen.is_some_and(|(_, best)| n < best) {
                    break;
                }
                let ok = *cleared
                    .entry(*h)
                    .or_insert_with(|| self.exonerating(*h).is_empty());
                if !ok || self.cause_of(*h).is_none() || (only_supported && !self.supported(*h)) {
                    continue;
                }
                match chosen {
                    None => chosen = Some((*h, n)),
                    Some(_) => rivals.push(*h),
                }
            }
            let Some((h, _)) = chosen else { break };
            let cells: Vec<CellKey> = cands.remove(&h).unwrap_or_default();
            for k in &cells {
                uncovered.remove(k);
            }
            // Another hop, at another place or with another cause, explains the same cells
            // as well, and no evidence picks between them: the probes cannot tell which,
            // so the cells stay for `unexplained`, localised no further than that.
            let who = |h: Hyp| self.cause_of(h).map(|(c, x, p, _)| (c, x, p));
            let ambiguous = !self.supported(h)
                && rivals.iter().any(|r| {
                    who(*r) != who(h)
                        && cands
                            .get(r)
                            .is_some_and(|ks| cells.iter().all(|k| ks.contains(k)))
                });
            if !ambiguous {
                // The same fault's other hops that explain these cells as well (the other
                // direction of a round trip): the finding names them together.
                let twins: Vec<Hyp> = rivals
                    .iter()
                    .filter(|r| {
                        r.hop != h.hop
                            && who(**r) == who(h)
                            && cands
                                .get(r)
                                .is_some_and(|ks| cells.iter().all(|k| ks.contains(k)))
                    })
                    .copied()
                    .fold(Vec::<Hyp>::new(), |mut v, t| {
                        if !v.iter().any(|o| o.hop == t.hop) {
                            v.push(t);
                        }
                        v
                    });
                picks.push((h, cells, twins));
            }
        }
        // One finding per fault: hypotheses naming the same cause at the same place (one
        // hop at several scopes, say full-size and UDP) are one finding.
        let who = |cx: &Self, h: Hyp| cx.cause_of(h).map(|(c, x, p, _)| (c, x, p));
        let mut groups: Vec<Group> = Vec::new();
        for (h, cells, twins) in picks {
            match groups
                .iter_mut()
                .find(|g| who(self, g.main) == who(self, h))
            {
                Some(g) => {
                    g.also.push(h);
                    g.cells.extend(cells);
                    g.twins
                        .extend(twins.into_iter().filter(|t| t.hop != g.main.hop));
                }
                None => groups.push(Group {
                    main: h,
                    also: Vec::new(),
                    cells,
                    twins,
                }),
            }
        }
        for Group {
            main: h,
            also,
            cells,
            twins,
        } in groups
        {
            let mut cells: Vec<CellKey> = cells
                .into_iter()
                .filter(|k| !self.ledger.is_claimed(k))
                .collect();
            cells.sort_unstable();
            cells.dedup();
            if cells.is_empty() {
                continue;
            }
            if let Site::Node(x) = h.hop.site {
                let available = self.n().saturating_sub(1);
                if self.observers(x, &cells) < self.k(available) && !self.supported(h) {
                    // One observer's word: not enough to blame a node; `unexplained`
                    // names the cells.
                    continue;
                }
            }
            self.model_finding(h, &cells, &twins, &also);
        }
    }

    /// The cause a hypothesis names, with the node at fault, the peer and the direction;
    /// `None` for hops the probes cannot tell a cause of (a veth, a bridge, the node's own
    /// sends: left to `unexplained`).
    fn cause_of(&self, h: Hyp) -> Option<(Cause, usize, Option<usize>, Direction)> {
        use HopKind::*;
        Some(match (h.hop.kind, h.hop.site) {
            (OverlayIn | BridgeIn, Site::Node(x)) => {
                (Cause::HostInputBlocked, x, None, Direction::Inbound)
            }
            (HostIn, Site::Node(x)) if h.narrow.proto == Some(Proto::Icmp) => {
                (Cause::IcmpBlocked, x, None, Direction::Inbound)
            }
            (Gateway, Site::Node(x)) => (Cause::PodGatewayMissing, x, None, Direction::Inbound),
            (HostOut, Site::Node(x)) if self.ix.refused_sends[x] > 0 => {
                (Cause::HostOutputBlocked, x, None, Direction::Outbound)
            }
            (Bridge, Site::Node(x)) if self.bridge_down(x).is_some() => {
                (Cause::PodDeviceDown, x, None, Direction::Both)
            }
            (ForwardOut, Site::Node(x)) => (self.forward_cause(x), x, None, Direction::Outbound),
            (ForwardIn, Site::Node(x)) => (self.forward_cause(x), x, None, Direction::Inbound),
            (OverlayRoute, Site::Pair { from, to }) => (
                Cause::OverlayPeerMissing,
                from,
                Some(to),
                Direction::Outbound,
            ),
            (Encap, Site::Node(x)) => (Cause::VxlanBlocked, x, None, Direction::Outbound),
            (Decap, Site::Node(x)) => (Cause::VxlanBlocked, x, None, Direction::Inbound),
            (Wire, Site::Pair { from, to }) if h.narrow.proto == Some(Proto::Udp) => {
                (Cause::VxlanBlocked, to, Some(from), Direction::Inbound)
            }
            (ServiceNat, Site::Node(x)) if h.narrow.port == Some(53) => {
                (Cause::DnsServiceBroken, x, None, Direction::None)
            }
            (ServiceNat, Site::Node(x)) => (Cause::NodeportBroken, x, None, Direction::None),
            (Endpoint, Site::Target(id)) => {
                let t = &self.ix.targets[id];
                let x = t.node?;
                let cause = match (t.layer, h.narrow.proto) {
                    (Layer::DnsPod | Layer::CorednsMetrics, Some(Proto::Tcp)) => {
                        Cause::MetricsUnreachable
                    }
                    (Layer::DnsPod | Layer::CorednsMetrics, _) => Cause::DnsPodDown,
                    (Layer::Ingress | Layer::IngressFromPod, _) => Cause::IngressBroken,
                    _ => return None,
                };
                (cause, x, None, Direction::None)
            }
            _ => return None,
        })
    }

    fn forward_cause(&self, x: usize) -> Cause {
        if self
            .evidence(x)
            .is_some_and(|e| e.ip_forward == Some(false))
        {
            Cause::IpForwardDisabled
        } else {
            Cause::ForwardRejected
        }
    }

    /// The finding of one hypothesis the localiser chose.
    fn model_finding(&mut self, h: Hyp, cells: &[CellKey], twins: &[Hyp], also: &[Hyp]) {
        let Some((cause, x, peer, mut direction)) = self.cause_of(h) else {
            return;
        };
        let both = twins
            .iter()
            .filter_map(|t| self.cause_of(*t))
            .any(|(_, _, _, d)| d != direction);
        if both {
            direction = Direction::Both;
        }
        let xn = self.nm(x);
        let mut scope = h.narrow.words();
        if !also.is_empty() {
            let narrows: BTreeSet<Narrow> = std::iter::once(h)
                .chain(also.iter().copied())
                .map(|x| x.narrow)
                .collect();
            scope = if narrows.contains(&Narrow::ANY) {
                String::new()
            } else {
                narrows
                    .into_iter()
                    .map(Narrow::words)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
        }
        // One protocol, and every failing probe of it went to one port: say so (the rule
        // may name the port; the probes cannot tell).
        if also.is_empty() && h.narrow.proto.is_some() && h.narrow.port.is_none() {
            let ports: BTreeSet<Option<u16>> = cells
                .iter()
                .filter_map(|&k| self.path_of(k).map(|p| p.scope.port))
                .collect();
            if let [Some(p)] = ports.into_iter().collect::<Vec<_>>()[..] {
                scope = format!("{scope} (every failing probe of it is to port {p})");
            }
        }
        let mut hop = if also.is_empty() {
            self.hop_words(h)
        } else if scope.is_empty() {
            self.hop_words(Hyp::any(h.hop))
        } else {
            format!("{} ({scope})", self.hop_words(Hyp::any(h.hop)))
        };
        for t in twins {
            hop = format!("{hop}, and {}", self.hop_words(*t));
        }
        let mut evidence: Vec<String> = cells
            .iter()
            .take(4)
            .filter_map(|&k| {
                self.ix.cell(k).map(|c| {
                    format!(
                        "{} {} -> {}: {}",
                        k.layer,
                        self.ix.names[k.src],
                        self.ix.col_name(k),
                        describe(c)
                    )
                })
            })
            .collect();
        if cells.len() > 4 {
            evidence.push(format!(
                "and {} more failing cells, all of whose paths cross {hop}",
                cells.len() - 4
            ));
        }
        // These are the probes; what the nodes' own evidence adds below goes first.
        self.mark_cited(&evidence);
        if matches!(h.hop.kind, HopKind::ForwardOut | HopKind::ForwardIn)
            && let Some((_, lines)) = self.node_fact(x)
        {
            evidence.extend(lines);
        }
        if h.hop.kind == HopKind::HostOut {
            evidence.push(format!(
                "{xn}'s own kernel refused the sends of {} failing cells (EPERM): those probes never left {xn}",
                self.ix.refused_sends[x]
            ));
        }
        if h.hop.kind == HopKind::Bridge
            && let Some(o) = self.evidence(x).and_then(|e| e.overlay.as_ref())
        {
            if let Some(b) = &o.bridge {
                evidence.push(format!(
                    "{xn}: {} is {}{}",
                    meshprobe_core::text::printable_line(&b.name, 32),
                    if b.up { "up" } else { "down" },
                    if b.no_carrier { ", no carrier" } else { "" }
                ));
            }
            if !o.pod_links_down.is_empty() {
                evidence.push(format!(
                    "{xn}: pod veths down or without carrier: {}",
                    o.pod_links_down
                        .iter()
                        .take(4)
                        .map(|d| meshprobe_core::text::printable_line(d, 32))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let only = if scope.is_empty() {
            String::new()
        } else {
            format!("{scope} ")
        };
        let (summary, fix) = match h.hop.kind {
            HopKind::OverlayIn | HopKind::BridgeIn => (
                format!(
                    "{xn} drops {only}traffic to its own addresses that arrives from {} (INPUT), while it forwards pod traffic through the same path",
                    if h.hop.kind == HopKind::OverlayIn {
                        "the overlay"
                    } else {
                        "its own pods"
                    }
                ),
                format!(
                    "on {xn}: `iptables -S INPUT; nft list ruleset | grep -i input` and look for a rule on {} or the pod range ahead of the accepts",
                    if h.hop.kind == HopKind::OverlayIn {
                        self.t.cluster.overlay.interface.as_str()
                    } else {
                        "cni0"
                    }
                ),
            ),
            HopKind::Bridge => {
                let dev = self
                    .bridge_down(x)
                    .map(|b| meshprobe_core::text::printable_line(&b.name, 32))
                    .unwrap_or_else(|| "cni0".to_owned());
                (
                    format!(
                        "{xn}'s pod bridge {dev} is down: its pods are cut off from their gateway, the node and the overlay, while {xn}'s own network works"
                    ),
                    format!(
                        "on {xn}: `ip -d link show cni0` and `ip link set cni0 up`; then find what set it down (NetworkManager or systemd-networkd managing the CNI's devices: `nmcli device status`, `networkctl`)"
                    ),
                )
            }
            HopKind::HostOut => (
                format!(
                    "{xn}'s kernel refuses {only}sends of its own (OUTPUT, or a full conntrack table): they never leave {xn}, while traffic to it passes"
                ),
                format!(
                    "on {xn}: `iptables -S OUTPUT; iptables -t raw -S OUTPUT; nft list ruleset | grep -i output` for a rule matching {}; `sysctl net.netfilter.nf_conntrack_count net.netfilter.nf_conntrack_max` and `dmesg | grep -i conntrack` for a full table",
                    if scope.is_empty() {
                        "them"
                    } else {
                        scope.as_str()
                    }
                ),
            ),
            HopKind::ForwardOut | HopKind::ForwardIn if !scope.is_empty() => (
                format!(
                    "{xn} forwards its pods' traffic but drops {scope} {}",
                    match direction {
                        Direction::Both => "to and from them",
                        Direction::Inbound => "into them",
                        _ => "out of them",
                    }
                ),
                format!(
                    "on {xn}: `iptables -S FORWARD; nft list ruleset` and look for a rule matching {scope}{}",
                    self.target_hint(cells)
                ),
            ),
            HopKind::Endpoint if !scope.is_empty() => (
                format!(
                    "{} on {xn} does not answer {scope}, though its other traffic passes",
                    self.col_names(cells)
                ),
                format!(
                    "a rule or policy for {scope} to {} (a NetworkPolicy, the node's FORWARD chain), or the process's listener: `kubectl -n kube-system logs` for it",
                    self.col_names(cells)
                ),
            ),
            _ => (
                format!("{hop} fails"),
                format!("on {xn}: check {}", h.hop.kind.describe()),
            ),
        };
        self.ledger.claim(cells.iter().copied());
        let mut weight = cells.len();
        // A node hop that load-balanced requests cross when they land on x's backends
        // (its forwarding into its pods, its decapsulation, its bridge) loses its share
        // of them, for the traffic it breaks.
        if matches!(h.hop.site, Site::Node(_)) && h.hop.kind.carries_backend_traffic() {
            let narrow = h.narrow;
            let ports = Ports {
                service: self.t.node_ports.first().map_or(0, |p| p.port),
            };
            weight +=
                self.claim_balanced_of_layers(x, |l| narrow.covers(datapath::scope_of(l, ports)));
        }
        // A pair's route or wire loses the balanced requests that cross the pair.
        if let Site::Pair { from, to } = h.hop.site
            && h.narrow == Narrow::ANY
        {
            weight += self.claim_balanced_near(from, to);
        }
        self.ledger.from_model = true;
        self.push(
            3,
            weight,
            cause,
            vec![x],
            peer.into_iter().collect(),
            direction,
            hop,
            summary,
            evidence,
            fix,
        );
        self.ledger.from_model = false;
    }

    /// The target columns of some cells, for a fix.
    fn col_names(&self, cells: &[CellKey]) -> String {
        let names: BTreeSet<&str> = cells.iter().map(|&k| self.ix.col_name(k)).collect();
        names.into_iter().take(3).collect::<Vec<_>>().join(", ")
    }

    fn target_hint(&self, cells: &[CellKey]) -> String {
        let targets: BTreeSet<&str> = cells
            .iter()
            .filter(|k| matches!(k.col, Col::Target(_)))
            .map(|&k| self.ix.col_name(k))
            .collect();
        if targets.is_empty() {
            String::new()
        } else {
            format!(
                " toward {}",
                targets.into_iter().take(3).collect::<Vec<_>>().join(", ")
            )
        }
    }

    // ---- alternatives ------------------------------------------------------------------

    /// Gives each finding the nearest explanations of its cells that passing cells
    /// rejected: the findings the verification withdrew first, then the other hops its
    /// cells cross.
    pub(crate) fn alternatives(&mut self) {
        let withdrawn = std::mem::take(&mut self.ledger.withdrawn);
        let mut all = std::mem::take(&mut self.ledger.found);
        for r in &mut all {
            if r.finding.alternatives.len() >= MAX_ALTERNATIVES || r.keys.is_empty() {
                continue;
            }
            let mine: FxSet<CellKey> = r.keys.iter().copied().collect();
            for w in &withdrawn {
                if r.finding.alternatives.len() < MAX_ALTERNATIVES
                    && w.keys.iter().any(|k| mine.contains(k))
                {
                    r.finding.alternatives.push(w.alternative.clone());
                }
            }
            // The hops its first cells cross, nearest first: crossed by the most of them.
            let mut count: FxMap<Hop, (usize, Narrow)> = FxMap::default();
            for &k in r.keys.iter().take(16) {
                if let Some(p) = self.path_of(k) {
                    let hops: FxSet<Hop> = p.hops().collect();
                    let own = Narrow {
                        proto: Some(p.scope.proto),
                        port: p.scope.port,
                        size: None,
                    };
                    for hop in hops {
                        count.entry(hop).or_insert((0, own)).0 += 1;
                    }
                }
            }
            let mut hops: Vec<(Hop, (usize, Narrow))> = count.into_iter().collect();
            hops.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
            let own = self.own_causes(&r.finding);
            for (hop, (_, traffic)) in hops {
                if r.finding.alternatives.len() >= MAX_ALTERNATIVES {
                    break;
                }
                let h = Hyp::any(hop);
                // The cause it would be for these cells' traffic (kube-proxy's rules for
                // DNS are the DNS service's, for a NodePort the NodePort's).
                let Some((cause, x, peer, _)) = self.cause_of(Hyp {
                    hop,
                    narrow: traffic,
                }) else {
                    continue;
                };
                let nodes = vec![name(self.ix.names[x])];
                let peers: Vec<_> = peer.map(|p| name(self.ix.names[p])).into_iter().collect();
                if own.contains(&(cause.clone(), nodes.clone()))
                    || r.finding
                        .alternatives
                        .iter()
                        .any(|a| a.cause == cause && a.nodes == nodes)
                {
                    continue;
                }
                let ex = self.exonerating(h);
                if ex.is_empty() {
                    continue;
                }
                r.finding
                    .alternatives
                    .push(self.alternative(cause, nodes, peers, h, &ex));
            }
        }
        self.ledger.found = all;
    }

    /// A finding's own (cause, nodes), so that it is not its own alternative.
    fn own_causes(&self, f: &Finding) -> Vec<(Cause, Vec<meshprobe_core::NodeName>)> {
        let mut v = vec![(f.cause.clone(), f.nodes.clone())];
        // Forwarding's two causes are one hop: the evidence picks the id.
        if matches!(f.cause, Cause::ForwardRejected | Cause::IpForwardDisabled) {
            v.push((Cause::ForwardRejected, f.nodes.clone()));
            v.push((Cause::IpForwardDisabled, f.nodes.clone()));
        }
        v
    }
}
