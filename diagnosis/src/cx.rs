//! The diagnosis's context: the round, its index, what detectors explained and found.

#![allow(unused_imports)]

use std::collections::BTreeSet;

use meshprobe_core::evidence::NodeEvidence;
use meshprobe_core::matrix::{
    AgentState, CellRef, CellState, CellView, CheckReport, Finding, MAX_FINDING_CELLS,
};
use meshprobe_core::{Layer, NodeName, Topology};

use meshprobe_core::{Cause, Direction};

use crate::consistency::Consistency;
use crate::index::*;
use crate::*;

pub(crate) struct Cx<'a> {
    pub(crate) t: &'a Topology,
    pub(crate) r: &'a CheckReport,
    pub(crate) s: &'a Settings,
    pub(crate) ix: Index<'a>,
    /// What this pass has decided: findings, claimed cells, explained pairs.
    pub(crate) ledger: crate::ledger::Ledger,
    /// The nodes' own configuration, compared across nodes.
    pub(crate) cfg: Consistency,
    /// Each target's endpoint id (one per CoreDNS pod or ingress across its layers),
    /// worked out once.
    pub(crate) endpoints: std::cell::OnceCell<Vec<usize>>,
    /// Each node's evidence, by index (looked up by name once).
    ev: Vec<Option<&'a NodeEvidence>>,
    /// What kube-proxy looks like on the nodes that report it (computed once).
    kube_proxy_norm: std::cell::OnceCell<KubeProxyNorm>,
    /// The evidence lines the citers made (a probe cell each, or their "... and N more"):
    /// a finding lists its other lines, the nodes' own evidence and the reasoning, first.
    cited: std::cell::RefCell<crate::index::FxSet<String>>,
}

/// kube-proxy's chains across the reporting nodes, to compare one node with its peers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KubeProxyNorm {
    reporting: usize,
    masquerading: usize,
    with_nodeports: usize,
    service_median: u32,
}

/// Every layer.
pub(crate) const ALL: &[Layer] = &Layer::ALL;

/// Layers whose packets cross the overlay between nodes.
pub(crate) const OVERLAY: &[Layer] = &[
    Layer::GatewayFromHost,
    Layer::GatewayFromPod,
    Layer::PodToPod,
    Layer::PodToPodFullSize,
    Layer::PodToPodFragmented,
    Layer::DnsPod,
    Layer::CorednsMetrics,
];

/// Layers whose packets a node forwards for its pods (or, for NodePorts and ingresses, to
/// a backend pod).
pub(crate) const POD_TRAFFIC: &[Layer] = &[
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

/// Layers whose target is load-balanced over pods on any node: a node whose pods are cut
/// off may be the backend a probe landed on.
pub(crate) const BALANCED: &[Layer] = &[
    Layer::DnsService,
    Layer::Nodeport,
    Layer::Ingress,
    Layer::NodeportFromPod,
    Layer::IngressFromPod,
];

pub(crate) fn name(s: &str) -> NodeName {
    // Names come from the report, which took them from a validated topology.
    NodeName::new(s).unwrap_or_else(|_| NodeName::new("unnamed").unwrap_or_else(|_| unreachable!()))
}

/// The next step for a node that does not forward, by cause.
pub(crate) fn lost_of(c: CellView<'_>) -> u32 {
    c.sent.saturating_sub(c.ok)
}

pub(crate) fn describe(c: CellView<'_>) -> String {
    let what = c.detail.map(|d| format!(" ({d})")).unwrap_or_default();
    format!("{}/{} ok{what}", c.ok, c.sent)
}

impl<'a> Cx<'a> {
    /// A context over `ix`, the round's index (built once per round: a diagnosis that
    /// runs again after a withdrawal reuses it).
    pub(crate) fn with_index(
        t: &'a Topology,
        r: &'a CheckReport,
        s: &'a Settings,
        ix: Index<'a>,
    ) -> Self {
        let ev = ix.names.iter().map(|n| r.evidence.get(&name(n))).collect();
        Self {
            t,
            r,
            s,
            ix,
            ev,
            kube_proxy_norm: std::cell::OnceCell::new(),
            cited: std::cell::RefCell::default(),
            ledger: crate::ledger::Ledger::default(),
            cfg: Consistency::default(),
            endpoints: std::cell::OnceCell::new(),
        }
    }

    /// Claims the failing cells `f` accepts; returns how many were new.
    pub(crate) fn claim_where(&mut self, f: impl Fn(&Self, CellKey) -> bool) -> usize {
        let keys: Vec<CellKey> = self
            .ix
            .failing
            .iter()
            .copied()
            .filter(|k| !self.ledger.is_claimed(k) && f(self, *k))
            .collect();
        let n = keys.len();
        self.ledger.claim(keys);
        n
    }

    /// Adds cells claimed for a finding already made (the first naming `x` with `cause`).
    pub(crate) fn attach_pending(&mut self, x: usize, cause: &Cause) {
        let cells = self.ledger.take_pending();
        let xn = self.ix.names[x];
        let refs = self.refs(&cells);
        if let Some(r) =
            self.ledger.found.iter_mut().find(|r| {
                r.finding.cause == *cause && r.finding.nodes.iter().any(|n| n.as_str() == xn)
            })
        {
            r.finding.cell_count += cells.len() as u32;
            let room = MAX_FINDING_CELLS.saturating_sub(r.finding.cells.len());
            r.finding.cells.extend(refs.into_iter().take(room));
            r.keys.extend(cells);
        }
    }

    fn refs(&self, cells: &[CellKey]) -> Vec<CellRef> {
        self.refs_max(cells, MAX_FINDING_CELLS)
    }

    /// At most `max` cells, by name.
    pub(crate) fn refs_max(&self, cells: &[CellKey], max: usize) -> Vec<CellRef> {
        cells
            .iter()
            .take(max)
            .map(|&k| CellRef {
                layer: k.layer,
                from: name(self.ix.names[k.src]),
                to: self.ix.col_name(k).to_owned(),
            })
            .collect()
    }

    /// Claims the failing cells of `layers` that leave `x` or are aimed at it.
    pub(crate) fn claim_node(&mut self, x: usize, layers: &[Layer]) -> usize {
        self.claim_where(|cx, k| {
            layers.contains(&k.layer) && (k.src == x || cx.ix.dst_node(k) == Some(x))
        })
    }

    /// Claims the failing cells of `layers` between `a` and `b`, both ways.
    pub(crate) fn claim_pair(&mut self, a: usize, b: usize, layers: &[Layer]) -> usize {
        self.claim_where(|cx, k| {
            let d = cx.ix.dst_node(k);
            layers.contains(&k.layer)
                && ((k.src == a && d == Some(b)) || (k.src == b && d == Some(a)))
        })
    }

    /// Claims the failing cells of load-balanced targets: a node whose pods are cut off
    /// may be the backend that any probe landed on.
    /// Claims the failing cells of load-balanced targets that a fault on node `x`
    /// explains: those sent from `x` or entering at `x`, and those whose loss the backends
    /// on broken nodes (`x` and those already found) account for: their share of the
    /// CoreDNS pods, or one in n of a web service's backends per broken node, within three
    /// standard deviations. Web targets are judged per column (three requests a cell say
    /// little), DNS per cell (ten queries). What loses more than that (a NodePort column
    /// losing most requests, all ten queries with half the pods reachable) has a cause of
    /// its own, left for the service detectors.
    pub(crate) fn claim_balanced_of(&mut self, x: usize) -> usize {
        self.claim_balanced_of_layers(x, |_| true)
    }

    /// [`Cx::claim_balanced_of`] for the balanced layers `layers` accepts only (a fault
    /// that breaks one protocol loses only that protocol's requests).
    pub(crate) fn claim_balanced_of_layers(
        &mut self,
        x: usize,
        layers: impl Fn(Layer) -> bool,
    ) -> usize {
        if !self
            .ix
            .failing
            .iter()
            .any(|k| BALANCED.contains(&k.layer) && !self.ledger.is_claimed(k))
        {
            return 0;
        }
        let n = self.n().max(1) as f64;
        let broken = |cx: &Self, i: usize| i == x || cx.ledger.broken(i).is_some_and(cuts_backends);
        let pods = self.t.core_dns.len();
        let dns_share = if pods == 0 {
            0.0
        } else {
            self.t
                .core_dns
                .iter()
                .filter(|p| self.pos(&p.node).is_some_and(|i| broken(self, i)))
                .count() as f64
                / pods as f64
        };
        let web_share = ((0..self.n()).filter(|&i| broken(self, i)).count() as f64 / n).min(1.0);
        // Per web target column: (sent, lost) over every source.
        let mut columns: FxMap<usize, (f64, f64)> = FxMap::default();
        for layer in BALANCED.iter().filter(|l| **l != Layer::DnsService) {
            for id in self.ix.targets_of(*layer) {
                let e = columns.entry(id).or_default();
                // Requests from broken nodes are theirs to explain, not the backends'.
                for &s in self.ix.tcol(id).iter().filter(|&&s| !broken(self, s)) {
                    if let Some(c) = self.tcell(id, s).filter(|c| c.state != CellState::Unknown) {
                        e.0 += f64::from(c.sent);
                        e.1 += f64::from(c.sent.saturating_sub(c.ok));
                    }
                }
            }
        }
        let within = |sent: f64, lost: f64, share: f64| !beyond_share(sent, lost, share);
        self.claim_where(|cx, k| {
            if !BALANCED.contains(&k.layer) || !layers(k.layer) {
                return false;
            }
            if k.src == x || cx.ix.dst_node(k) == Some(x) {
                return true;
            }
            match (k.layer, k.col) {
                // With half the CoreDNS pods behind broken nodes, losing every query is
                // what landing on them does once in a thousand: explained (the service
                // detector does not blame a source there either).
                (Layer::DnsService, _) => cx.ix.cell(k).is_some_and(|c| {
                    dns_share >= 0.5
                        || within(
                            f64::from(c.sent),
                            f64::from(c.sent.saturating_sub(c.ok)),
                            dns_share,
                        )
                }),
                (_, Col::Target(id)) => columns
                    .get(&id)
                    .is_some_and(|&(sent, lost)| within(sent, lost, web_share)),
                _ => false,
            }
        })
    }

    /// Claims the failing cells of load-balanced targets whose path may cross the pair
    /// `a`-`b`: a request enters at its source or its target node and goes on to a backend
    /// pod, so it crosses the pair only when one of those two is `a` or `b`.
    pub(crate) fn claim_balanced_near(&mut self, a: usize, b: usize) -> usize {
        self.claim_where(|cx, k| {
            let d = cx.ix.dst_node(k);
            BALANCED.contains(&k.layer)
                && ([a, b].contains(&k.src) || d.is_some_and(|d| d == a || d == b))
        })
    }

    /// Whether an earlier finding already claims every failing cell of target `id`: then
    /// the target's own fault is not needed to explain them.
    pub(crate) fn target_claimed(&self, id: usize) -> bool {
        let layer = self.ix.targets[id].layer;
        self.ix.tcol(id).iter().all(|&s| {
            let key = CellKey {
                layer,
                src: s,
                col: Col::Target(id),
            };
            !self.ix.failing.contains(&key) || self.ledger.is_claimed(&key)
        })
    }

    /// Claims the failing cells of one target column.
    pub(crate) fn claim_target(&mut self, id: usize) -> usize {
        self.claim_where(|_, k| k.col == Col::Target(id))
    }

    /// The node network from `s` to `d` works, as far as ICMP, TCP or UDP show.
    pub(crate) fn underlay_up(&self, s: usize, d: usize) -> bool {
        !self.failing(Layer::Underlay, s, d) || self.ledger.icmp_only(d)
    }

    /// A node-local fact that stops `x` from forwarding its pods' traffic, with the lines
    /// that say so: it explains failing pod, NodePort and CoreDNS probes through `x`, also
    /// when `x`'s own agents are silent.
    pub(crate) fn node_fact(&self, x: usize) -> Option<(Cause, Vec<String>)> {
        let ev = self.evidence(x)?;
        let xn = self.nm(x);
        if ev.ip_forward == Some(false) {
            return Some((
                Cause::IpForwardDisabled,
                vec![format!("{xn}: net.ipv4.ip_forward = 0")],
            ));
        }
        let rules = ev
            .forward
            .as_ref()
            .map(|f| f.blocking_rules.clone())
            .unwrap_or_default();
        if !rules.is_empty() {
            return Some((
                Cause::ForwardRejected,
                rules
                    .iter()
                    .map(|r| format!("{xn}: {} (before the CNI's accept rules)", r.shown()))
                    .collect(),
            ));
        }
        None
    }

    /// What `x`'s own evidence says about the services its traffic meets, against its
    /// peers': br_netfilter off, kube-proxy's masquerade or NodePort rules missing where
    /// the other nodes have them. Empty when nothing is odd (or nothing was read).
    pub(crate) fn service_facts(&self, x: usize) -> Vec<String> {
        let xn = self.nm(x);
        self.service_odd(x).iter().map(|f| f.line(&xn)).collect()
    }

    /// The typed form of [`Cx::service_facts`].
    pub(crate) fn service_odd(&self, x: usize) -> Vec<ServiceFact> {
        let Some(ev) = self.evidence(x) else {
            return vec![];
        };
        let mut v = Vec::new();
        if ev.bridge_nf_call_iptables == Some(false) {
            v.push(ServiceFact::BridgeNfOff);
        }
        let Some(kp) = &ev.kube_proxy else {
            return v;
        };
        let norm = *self.kube_proxy_norm.get_or_init(|| {
            let all: Vec<&meshprobe_core::evidence::KubeProxyEvidence> = self
                .ev
                .iter()
                .filter_map(|e| e.and_then(|e| e.kube_proxy.as_ref()))
                .collect();
            let mut counts: Vec<u32> = all.iter().map(|k| k.service_rules).collect();
            counts.sort_unstable();
            KubeProxyNorm {
                reporting: all.len(),
                masquerading: all.iter().filter(|k| k.masquerade).count(),
                with_nodeports: all.iter().filter(|k| k.nodeport_rules > 0).count(),
                service_median: counts.get(counts.len() / 2).copied().unwrap_or(0),
            }
        });
        // Its peers: everyone reporting but x (which reports, being here).
        let peers = norm.reporting - 1;
        let most = |with_x: usize, x_has: bool| {
            let with = with_x - usize::from(x_has);
            peers > 0 && with * 2 > peers
        };
        if !kp.masquerade && most(norm.masquerading, false) {
            v.push(ServiceFact::NoMasquerade);
        }
        if kp.nodeport_rules == 0 && most(norm.with_nodeports, false) {
            v.push(ServiceFact::NoNodeports);
        }
        if peers > 0 && kp.service_rules * 2 < norm.service_median {
            v.push(ServiceFact::ServicesBehind {
                have: kp.service_rules,
                peers: norm.service_median,
            });
        }
        v
    }

    /// The cause of a service failure on `x`'s own path: the node's bridge skipping
    /// iptables, by its evidence, whichever service showed it; else `service`'s own.
    pub(crate) fn service_cause(&self, x: usize, service: Cause) -> Cause {
        if self.service_odd(x).contains(&ServiceFact::BridgeNfOff) {
            Cause::BridgeNetfilterOff
        } else {
            service
        }
    }

    /// The fix for a service failure that [`Cx::service_facts`] explains on `x`.
    pub(crate) fn service_fix(&self, x: usize) -> Option<String> {
        let ev = self.evidence(x)?;
        let xn = self.nm(x);
        if ev.bridge_nf_call_iptables == Some(false) {
            return Some(format!(
                "on {xn}: `modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1`, and keep both across reboots (`/etc/modules-load.d/`, `/etc/sysctl.d/`)"
            ));
        }
        self.service_facts(x).first().map(|_| format!("on {xn}: `iptables-save -t nat | grep -e KUBE-POSTROUTING -e KUBE-NODEPORTS` against a healthy node's; restart kube-proxy on {xn} (`kubectl -n kube-system delete pod -l k8s-app=kube-proxy --field-selector spec.nodeName={xn}`) and read its logs"))
    }

    /// What to do about a node that does not forward, from the rule its evidence names.
    pub(crate) fn forwarding_fix(&self, cause: &Cause, x: usize) -> String {
        let xn = self.nm(x);
        if *cause == Cause::IpForwardDisabled {
            return format!(
                "on {xn}: `sysctl -w net.ipv4.ip_forward=1`, then find what resets it: `grep -rn ip_forward /etc/sysctl.conf /etc/sysctl.d/ /usr/lib/sysctl.d/`"
            );
        }
        let fwd = self.evidence(x).and_then(|e| e.forward.as_ref());
        let firewalld = fwd.is_some_and(|f| {
            f.foreign_chains
                .iter()
                .any(|c| c.starts_with("FORWARD_") || c.starts_with("FWD"))
        });
        let then = if firewalld {
            " or add the pod CIDR to firewalld's trusted zone (`firewall-cmd --permanent --zone=trusted --add-source=<pod CIDR>`)"
        } else {
            ""
        };
        // The chain is named only when it is a plain identifier, the rule only quoted.
        let list = |r: &meshprobe_core::evidence::FirewallRule| {
            r.list_command()
                .unwrap_or_else(|| format!("iptables -t {} -S FORWARD", r.table))
        };
        match fwd.and_then(|f| f.blocking_rules.first()) {
            Some(r) if r.delete_command().is_some() => format!(
                "on {xn}: `{}`; delete the rule above the CNI's accepts (`{}`){then}, and find what adds it",
                list(r),
                r.delete_command().unwrap_or_default()
            ),
            Some(r) if r.is_firewalld() => format!(
                "on {xn}: `{}`: firewalld rejects forwarded pod traffic; add the pod CIDR to its trusted zone (`firewall-cmd --permanent --zone=trusted --add-source=<pod CIDR> && firewall-cmd --reload`)",
                list(r)
            ),
            Some(_) => format!(
                "on {xn}: the FORWARD policy is DROP and no Kubernetes or CNI chain accepts pod traffic: restart the CNI so it adds its FORWARD accepts, or `iptables -P FORWARD ACCEPT`{then}"
            ),
            None => format!(
                "on {xn}: `iptables -S FORWARD` and `nft list ruleset`: forwarded pod traffic is dropped by something iptables does not show; check host security agents{then}"
            ),
        }
    }

    pub(crate) fn n(&self) -> usize {
        self.ix.names.len()
    }
    pub(crate) fn nm(&self, i: usize) -> String {
        self.ix.names[i].to_owned()
    }
    pub(crate) fn cell(&self, layer: Layer, s: usize, d: usize) -> Option<CellView<'a>> {
        self.ix.get(layer, s, d)
    }
    pub(crate) fn tcell(&self, id: usize, s: usize) -> Option<CellView<'a>> {
        self.ix.tget(id, s)
    }
    pub(crate) fn is_dead(&self, c: Option<CellView<'_>>) -> bool {
        c.is_some_and(|c| {
            c.state == CellState::Fail && c.loss_pct.unwrap_or(0.0) >= self.s.dead_loss_pct
        })
    }
    pub(crate) fn ok(&self, layer: Layer, s: usize, d: usize) -> bool {
        self.cell(layer, s, d)
            .is_some_and(|c| c.state == CellState::Ok)
    }
    pub(crate) fn dead(&self, layer: Layer, s: usize, d: usize) -> bool {
        self.is_dead(self.cell(layer, s, d))
    }
    pub(crate) fn failing(&self, layer: Layer, s: usize, d: usize) -> bool {
        self.cell(layer, s, d)
            .is_some_and(|c| c.state == CellState::Fail)
    }
    pub(crate) fn tfailing(&self, id: usize, s: usize) -> bool {
        self.tcell(id, s)
            .is_some_and(|c| c.state == CellState::Fail)
    }
    pub(crate) fn tok(&self, id: usize, s: usize) -> bool {
        self.tcell(id, s).is_some_and(|c| c.state == CellState::Ok)
    }
    pub(crate) fn evidence(&self, node: usize) -> Option<&'a NodeEvidence> {
        self.ev.get(node).copied().flatten()
    }
    /// Observers needed: `min_observers`, or all there are when fewer exist.
    pub(crate) fn k(&self, available: usize) -> usize {
        self.s.min_observers.min(available).max(1)
    }
    /// Enough independent observers, and most of those who looked.
    pub(crate) fn quorum(&self, agreeing: usize, looked: usize) -> bool {
        looked > 0 && agreeing >= self.k(looked) && agreeing * 2 > looked
    }
    pub(crate) fn node_ip(&self, x: usize) -> String {
        self.t
            .node(&name(self.ix.names[x]))
            .map(|n| n.internal_ip.to_string())
            .unwrap_or_default()
    }
    /// x's underlay device as its agent named it, for fix commands: only a name Linux could
    /// give a device (at most 15 bytes, one plain shell word), else a placeholder.
    pub(crate) fn underlay_dev(&self, x: usize) -> String {
        self.evidence(x)
            .and_then(|e| e.overlay.as_ref())
            .and_then(|o| o.underlay.as_ref())
            .map(|d| d.name.as_str())
            .filter(|n| n.len() <= 15 && meshprobe_core::evidence::is_plain_word(n))
            .map_or_else(|| "<underlay interface>".to_owned(), str::to_owned)
    }
    /// The first `max` of `cells`, each as "src -> column layer: what it got", and how many
    /// more there are.
    /// Remembers `lines` as probe citations (see [`Cx::push`]).
    pub(crate) fn mark_cited(&self, lines: &[String]) {
        self.cited.borrow_mut().extend(lines.iter().cloned());
    }

    pub(crate) fn cite_cells(&self, cells: &[CellKey], max: usize) -> Vec<String> {
        let mut v: Vec<String> = cells
            .iter()
            .take(max)
            .filter_map(|&k| {
                self.ix.cell(k).map(|c| {
                    format!(
                        "{} -> {} {}: {}",
                        self.nm(k.src),
                        self.ix.col_name(k),
                        k.layer,
                        describe(c)
                    )
                })
            })
            .collect();
        if cells.len() > max {
            v.push(format!("... and {} more cells", cells.len() - max));
        }
        self.mark_cited(&v);
        v
    }

    /// Evidence lines "src -> dst layer: 0/20 ok (timeout)" for up to four cells.
    pub(crate) fn cite(&self, layer: Layer, pairs: &[(usize, usize)]) -> Vec<String> {
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
        self.mark_cited(&v);
        v
    }
    pub(crate) fn tcite(&self, id: usize, srcs: &[usize]) -> Vec<String> {
        let (layer, col) = (self.ix.targets[id].layer, self.ix.targets[id].name);
        let mut v: Vec<String> = srcs
            .iter()
            .take(4)
            .filter_map(|&s| {
                self.tcell(id, s)
                    .map(|c| format!("{} -> {col} {layer}: {}", self.nm(s), describe(c)))
            })
            .collect();
        if srcs.len() > 4 {
            v.push(format!(
                "... and {} more {layer} cells alike",
                srcs.len() - 4
            ));
        }
        self.mark_cited(&v);
        v
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "a finding has this many parts; a builder would only rename them"
    )]
    pub(crate) fn push(
        &mut self,
        rank: u8,
        weight: usize,
        cause: Cause,
        nodes: Vec<usize>,
        peers: Vec<usize>,
        direction: Direction,
        hop: String,
        summary: String,
        evidence: Vec<String>,
        fix: String,
    ) {
        let mut cells = self.ledger.take_pending();
        if !self.ledger.from_model
            && nodes
                .first()
                .is_some_and(|&x| self.ledger.vetoed(&cause, x))
        {
            for k in &cells {
                self.ledger.unclaim(k);
            }
            return;
        }
        cells.sort_unstable();
        // The nodes' own evidence and the reasoning first, then the probe cells that
        // show it (issue 23: a REJECT rule or `ip_forward = 0` hid behind probe lines).
        let (probes, mut evidence): (Vec<String>, Vec<String>) = {
            let cited = self.cited.borrow();
            evidence.into_iter().partition(|l| cited.contains(l))
        };
        let evidence_cells = probes.len() as u32;
        evidence.extend(probes);
        let finding = Finding {
            cell_count: cells.len() as u32,
            cells: self.refs(&cells),
            cause,
            nodes: nodes.iter().map(|&n| name(self.ix.names[n])).collect(),
            peers: peers.iter().map(|&n| name(self.ix.names[n])).collect(),
            direction,
            hop,
            summary,
            evidence,
            evidence_cells,
            fix,
            rounds: 1,
            alternatives: Vec::new(),
        };
        self.ledger.found.push(Ranked {
            rank,
            weight,
            finding,
            keys: cells,
        });
    }

    pub(crate) fn agent_state(&self, x: usize) -> Option<(AgentState, AgentState)> {
        self.r
            .agents
            .get(&name(self.ix.names[x]))
            .map(|a| (a.host, a.pod))
    }
}

/// Something odd in a node's own service path, from its evidence against its peers'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServiceFact {
    /// `net.bridge.bridge-nf-call-iptables = 0`, or br_netfilter not loaded.
    BridgeNfOff,
    /// kube-proxy's `KUBE-POSTROUTING` has no MASQUERADE, while the peers' do.
    NoMasquerade,
    /// `KUBE-NODEPORTS` is empty, while the peers hold rules.
    NoNodeports,
    /// `KUBE-SERVICES` holds under half the rules the peers' do.
    ServicesBehind { have: u32, peers: u32 },
}

impl ServiceFact {
    /// Whether it breaks requests arriving at the node's NodePorts (rather than its own
    /// pods' requests).
    pub(crate) fn breaks_nodeports(self) -> bool {
        matches!(
            self,
            ServiceFact::NoMasquerade
                | ServiceFact::NoNodeports
                | ServiceFact::ServicesBehind { .. }
        )
    }

    pub(crate) fn line(self, xn: &str) -> String {
        match self {
            ServiceFact::BridgeNfOff => format!(
                "{xn}: net.bridge.bridge-nf-call-iptables = 0 (or br_netfilter is not loaded): a reply from a backend on {xn}'s own bridge skips kube-proxy's NAT, and the pod that asked drops it"
            ),
            ServiceFact::NoMasquerade => format!(
                "{xn}: kube-proxy's KUBE-POSTROUTING has no MASQUERADE rule, while the other nodes' do: a NodePort request {xn} sends on to a backend elsewhere is answered straight to the client, which drops the reply"
            ),
            ServiceFact::NoNodeports => {
                format!("{xn}: KUBE-NODEPORTS is empty, while the other nodes hold NodePort rules")
            }
            ServiceFact::ServicesBehind { have, peers } => format!(
                "{xn}: KUBE-SERVICES holds {have} rules, while the other nodes hold about {peers}: kube-proxy on {xn} has not synced its services"
            ),
        }
    }
}

/// Whether a node found broken this way loses the requests that land on its backends: a
/// lossy node or a full-size limit does not (a request is small, and mostly gets through).
pub(crate) fn cuts_backends(cause: &Cause) -> bool {
    !matches!(cause, Cause::PacketLoss | Cause::MtuMismatch)
}

/// Whether losing `lost` of `sent` requests is beyond what landing on a `share` of dead
/// backends explains: the binomial chance of losing that many or more is under 1 in
/// 100,000 (a round has a few dozen such tests; a false alarm must be rarer than the
/// faults it looks for).
pub(crate) fn beyond_share(sent: f64, lost: f64, share: f64) -> bool {
    const ALPHA: f64 = 1e-5;
    let (n, k) = (sent.round() as u64, lost.round() as u64);
    if k == 0 || n == 0 {
        return false;
    }
    if share <= 0.0 {
        return true;
    }
    if share >= 1.0 || k > n {
        return false;
    }
    // P(X >= k) for X ~ Binomial(n, share), summed in log space term by term.
    let (lp, lq) = (share.ln(), (1.0 - share).ln());
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut tail = 0.0f64;
    for i in 0..=n {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        if i >= k {
            tail += (ln_choose + i as f64 * lp + (n - i) as f64 * lq).exp();
        }
    }
    tail < ALPHA
}

#[cfg(test)]
mod tests {
    use super::beyond_share;

    #[test]
    fn the_binomial_tail_decides_what_a_share_of_dead_backends_explains() {
        // Half the pods dead: losing all ten queries happens once in 1,024 rounds.
        assert!(!beyond_share(10.0, 10.0, 0.5));
        // A quarter dead: all ten lost is about 1 in a million; a third dead, 1 in 59,000.
        assert!(beyond_share(10.0, 10.0, 0.25));
        assert!(!beyond_share(10.0, 10.0, 1.0 / 3.0));
        // One backend in six: 7 of 15 is rare (0.6%) but not rare enough; 12 of 15 is.
        assert!(!beyond_share(15.0, 7.0, 1.0 / 6.0));
        assert!(beyond_share(15.0, 12.0, 1.0 / 6.0));
        // Nothing dead explains no loss; nothing lost needs no explaining.
        assert!(beyond_share(3.0, 1.0, 0.0));
        assert!(!beyond_share(3.0, 0.0, 0.0));
        assert!(!beyond_share(3.0, 3.0, 1.0));
    }
}
