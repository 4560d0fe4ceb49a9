//! No silent NOT HEALTHY: every failing cell no detector claimed is named in an
//! `unexplained` finding, localised as far as the cells allow. The node most of them leave
//! or aim at is named first (its cells, the layers, which way, what its evidence shows),
//! then the next, until every cell is named.
//!
//! One node's word is one node's word: cells aimed at a node count toward naming it only
//! when at least `k` observers see them (the quorum every detector keeps). Cells that one
//! observer alone sees are about that observer or the path between the two: the finding
//! names the observer, with the other node as its peer, never the other node alone.

use std::collections::BTreeSet;

use meshprobe_core::{Cause, Direction, Layer};

use crate::cx::{BALANCED, Cx};
use crate::index::{CellKey, FxMap};

/// At most this many `unexplained` findings; the rest of the cells go in one last finding.
const MAX_UNEXPLAINED: usize = 8;

impl Cx<'_> {
    pub(crate) fn unexplained(&mut self) {
        let mut left: Vec<CellKey> = self
            .ix
            .failing
            .iter()
            .copied()
            .filter(|k| !self.ledger.is_claimed(k))
            .collect();
        let mut made = 0;
        // Enough observers to name the node they aim at.
        let k_needed = self.k(self.n().saturating_sub(1));
        while !left.is_empty() {
            let mut observers: FxMap<usize, std::collections::BTreeSet<usize>> = FxMap::default();
            for k in &left {
                if let Some(d) = self.ix.dst_node(*k)
                    && d != k.src
                {
                    observers.entry(d).or_default().insert(k.src);
                }
            }
            let seen_by_enough = |d: usize| observers.get(&d).is_some_and(|o| o.len() >= k_needed);
            // (cells, cells aimed at it) per node: the node in most cells is named first,
            // and between equals the one they are aimed at.
            let mut score: FxMap<usize, (usize, usize)> = FxMap::default();
            for k in &left {
                let d = self.ix.dst_node(*k);
                score.entry(k.src).or_default().0 += 1;
                if let Some(d) = d
                    && d != k.src
                    && seen_by_enough(d)
                {
                    let e = score.entry(d).or_default();
                    e.0 += 1;
                    e.1 += 1;
                }
            }
            let Some((&x, _)) = score.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) else {
                break;
            };
            let (mine, rest): (Vec<CellKey>, Vec<CellKey>) = if made + 1 < MAX_UNEXPLAINED {
                left.into_iter()
                    .partition(|k| k.src == x || self.ix.dst_node(*k) == Some(x))
            } else {
                (left, Vec::new())
            };
            left = rest;
            self.unexplained_finding(x, &mine);
            made += 1;
        }
    }

    fn unexplained_finding(&mut self, x: usize, cells: &[CellKey]) {
        let xn = self.nm(x);
        let out = cells.iter().filter(|k| k.src == x).count();
        let into = cells.len() - out;
        let direction = Direction::of(into > 0, out > 0);
        let layers: BTreeSet<Layer> = cells.iter().map(|k| k.layer).collect();
        let layer_list = layers
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut peers: Vec<usize> = cells
            .iter()
            .flat_map(|k| [Some(k.src), self.ix.dst_node(*k)])
            .flatten()
            .filter(|&n| n != x)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        let mut evidence = self.cite_cells(cells, 6);
        if let Some((_, lines)) = self.node_fact(x) {
            evidence.extend(lines);
        }
        let service_facts = self.service_facts(x);
        evidence.extend(service_facts.iter().cloned());
        evidence.extend(self.odd_lines(x, &[]));
        if let Some((h, p)) = self.agent_state(x) {
            evidence.push(format!(
                "{xn}'s agents are {}/{} (host/pod)",
                format!("{h:?}").to_lowercase(),
                format!("{p:?}").to_lowercase()
            ));
        }
        // A destination only x sees failing: the others' cells toward it pass, so this is
        // x's word about it, not the destination's fault.
        let mut lone: Vec<(usize, Layer)> = cells
            .iter()
            .filter(|k| k.src == x)
            .filter_map(|k| {
                self.ix
                    .dst_node(*k)
                    .filter(|&d| d != x)
                    .map(|d| (d, k.layer))
            })
            .collect();
        lone.sort_unstable();
        lone.dedup_by_key(|(d, _)| *d);
        for &(d, layer) in lone.iter().take(3) {
            let others: Vec<usize> = (0..self.n())
                .filter(|&s| s != x && s != d && self.cell(layer, s, d).is_some())
                .collect();
            let passing = others.iter().filter(|&&s| self.ok(layer, s, d)).count();
            if !others.is_empty() && passing == others.len() {
                evidence.push(format!(
                    "only {xn} sees {} fail: the {passing} other nodes that probe it ({layer}) reach it; one observer's word is about {xn} or the path between them",
                    self.nm(d)
                ));
            }
        }
        // What works between the same nodes narrows it: the path between their pods, and
        // the same target from the other nodes.
        let mut ends: Vec<(usize, usize)> = cells
            .iter()
            .filter_map(|k| self.ix.dst_node(*k).map(|d| (k.src, d)))
            .filter(|(s, d)| s != d)
            .collect();
        ends.sort_unstable();
        ends.dedup();
        for &(s, d) in ends.iter().take(3) {
            if self.ok(Layer::PodToPod, s, d) && self.ok(Layer::PodToPod, d, s) {
                evidence.push(format!(
                    "{}'s and {}'s pods reach each other (pod-to-pod): the path works, what fails is specific to {layer_list}",
                    self.nm(s),
                    self.nm(d)
                ));
            }
        }
        let dns_only = layers
            .iter()
            .all(|l| matches!(l, Layer::DnsPod | Layer::DnsService));
        let services_from_pods = out == cells.len() && layers.iter().all(|l| BALANCED.contains(l));
        let (summary, fix) = if dns_only && out == cells.len() {
            let pods: Vec<String> = cells
                .iter()
                .filter(|k| k.layer == Layer::DnsPod)
                .map(|k| self.ix.col_name(*k).to_string())
                .collect();
            (
                format!(
                    "{xn}'s pods get no DNS answer from {}, which answers the other nodes' pods: DNS between them is filtered",
                    if pods.is_empty() {
                        "the kube-dns service".to_owned()
                    } else {
                        pods.join(", ")
                    }
                ),
                format!(
                    "NetworkPolicies that select CoreDNS (`kubectl get networkpolicy -A`), the Corefile's `acl`, and the firewall of {xn} and of the CoreDNS pods' nodes; from a pod on {xn}: `dig @<CoreDNS pod IP> kubernetes.default.svc.{}`",
                    self.t.cluster.cluster_domain
                ),
            )
        } else if services_from_pods {
            (
                format!(
                    "{xn} fails {layer_list} toward {} targets that other nodes reach: a fault on {xn} that no rule names",
                    cells.len()
                ),
                self.service_fix(x).unwrap_or_else(|| format!(
                    "on {xn}: compare `iptables-save -t nat` with a healthy node's (kube-proxy's service and masquerade rules); kube-proxy's logs on {xn}"
                )),
            )
        } else {
            let way = match direction {
                Direction::Inbound => format!("aimed at {xn}"),
                Direction::Outbound => format!("from {xn}"),
                _ => format!("to and from {xn}"),
            };
            (
                format!(
                    "{} failing cells {way} ({layer_list}) that no rule explains",
                    cells.len()
                ),
                format!(
                    "`meshprobe check --output wide` for the cells; on {xn}: `ip route; ip neigh; iptables-save`, compared with a healthy node's"
                ),
            )
        };
        self.ledger.claim(cells.iter().copied());
        self.push(
            11,
            cells.len(),
            Cause::Unexplained,
            vec![x],
            if peers.len() <= 4 { peers } else { Vec::new() },
            direction,
            format!(
                "{layer_list}: {}",
                if into > 0 && out == 0 {
                    format!("* -> {xn}")
                } else {
                    format!("{xn} -> *")
                }
            ),
            summary,
            evidence,
            fix,
        );
    }
}
