//! A pod range that another node has taken: one cause on one node, however many nodes
//! suffer from it.
//!
//! When node `f` holds an address inside `p`'s pod CIDR (a bridge address left from the
//! range it had before it was re-registered, a duplicate flannel lease, an address added
//! by hand), `f` routes `p`'s pods to itself, and every node whose overlay entry for `p`'s
//! VTEP resolves to `f`'s VTEP sends `p`'s pod traffic there. Each sufferer's own state
//! looks wrong for `p`, so a detector that reads nodes one by one blames each of them. The
//! model's reading: the hop that fails is the overlay route toward `p` on each sender, and
//! one fact outside them explains all of those hops at once; the passing cells through
//! the same hops must not contradict it.

use std::collections::BTreeMap;

use std::net::Ipv4Addr;

use meshprobe_core::datapath::{Hop, HopKind, Path, Site};
use meshprobe_core::matrix::Alternative;
use meshprobe_core::{Cause, Direction};

use crate::consistency::ForeignAddress;
use crate::cx::{Cx, describe, name};
use crate::index::{CellKey, FxSet};
use crate::{Part, Ranked};

/// What points at one node for another's pod range.
#[derive(Default)]
struct Claim {
    /// The claimant's addresses inside the range.
    addrs: Vec<ForeignAddress>,
    /// The nodes whose entries for the owner resolve to the claimant.
    holders: Vec<usize>,
}

/// Which legs through a sender's route toward the owner still arrive: those addressed
/// to an address of the owner's that the claimant holds and answers itself.
#[derive(Clone, Copy)]
struct Skip {
    /// The claimant holds the owner's gateway (requests to it are answered).
    gateway: bool,
    /// The claimant holds the owner's VTEP address (replies to its host probes arrive).
    vtep: bool,
}

impl Skip {
    /// Whether a leg of `path` crosses a hop `lost` says loses, and is lost there.
    fn fails(self, path: &Path, lost: impl Fn(&Hop) -> bool) -> bool {
        let request = path.request.iter().any(&lost) && !(path.request_to_node && self.gateway);
        let reply = path.reply.iter().any(&lost) && !(path.reply_to_node && self.vtep);
        request || reply
    }
}

/// An interface name as the kernel allows it (at most 15 bytes, no space or slash), safe
/// to put in a shell command; anything else is not quoted into one.
fn plain_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

impl Cx<'_> {
    /// Finds pod ranges taken by another node and makes one finding per (claimant, owner)
    /// whose prediction the failing cells bear out and the passing ones do not refute.
    pub(crate) fn range_claims(&mut self) {
        let mut claims: BTreeMap<(usize, usize), Claim> = BTreeMap::new();
        for f in &self.cfg.foreign {
            claims
                .entry((f.node, f.owner))
                .or_default()
                .addrs
                .push(f.clone());
        }
        for r in &self.cfg.redirects {
            let c = claims.entry((r.to, r.peer)).or_default();
            if !c.holders.contains(&r.holder) {
                c.holders.push(r.holder);
            }
        }
        for ((f, p), c) in claims {
            // Evidence on the claimant itself, or several nodes agreeing that it holds the
            // range: one node's stale entry is that node's.
            if (c.addrs.is_empty() && c.holders.len() < 2)
                || self.ledger.vetoed(&Cause::PodCidrConflict, f)
            {
                continue;
            }
            // The nodes that send p's pod traffic to f: the holders, and f itself when it
            // holds an address in the range (the kernel routes the range locally).
            let mut senders = c.holders.clone();
            if !c.addrs.is_empty() {
                senders.push(f);
            }
            // A sender's route toward p: looked up per hop, so that a claim with thousands
            // of sufferers costs a path's length per cell.
            let sending: FxSet<usize> = senders.iter().copied().collect();
            let toward_p = |h: &Hop| {
                h.kind == HopKind::OverlayRoute
                    && matches!(h.site, Site::Pair { from, to } if to == p && sending.contains(&from))
            };
            // What f answers itself: p's own addresses that f holds (p's gateway on a
            // stale bridge address) are delivered on f, so probes of them pass.
            let owner = self.t.node(&name(self.ix.names[p]));
            let held = |ip: Option<Ipv4Addr>| {
                ip.is_some_and(|ip| {
                    c.addrs
                        .iter()
                        .any(|a| a.addr.split('/').next() == Some(ip.to_string().as_str()))
                })
            };
            let skip = Skip {
                gateway: held(owner.map(|n| n.gateway)),
                vtep: held(owner.map(|n| n.pod_cidr.network())),
            };
            let predicted = |cx: &Self, k: CellKey| {
                cx.path_of(k)
                    .is_some_and(|path| skip.fails(&path, toward_p))
            };
            // A passing cell the claim says fails refutes it.
            let refuted = senders.iter().any(|&s| {
                self.cells_at(Site::Pair { from: s, to: p })
                    .into_iter()
                    .any(|k| self.clears(k) && predicted(self, k))
            });
            if refuted {
                continue;
            }
            if self.claim_where(|cx, k| predicted(cx, k)) == 0 {
                // Nothing fails yet: the configuration warnings say it.
                continue;
            }
            let cells = self.ledger.pending().to_vec();
            self.claim_finding(f, p, &c, &cells);
        }
    }

    fn claim_finding(&mut self, f: usize, p: usize, c: &Claim, cells: &[CellKey]) {
        let (fnm, pnm) = (self.nm(f), self.nm(p));
        let cidr = self
            .t
            .node(&name(self.ix.names[p]))
            .map(|n| n.pod_cidr.to_string())
            .unwrap_or_default();
        let holders: Vec<String> = c.holders.iter().map(|&h| self.nm(h)).collect();
        let mut evidence: Vec<String> = Vec::new();
        for a in &c.addrs {
            evidence.push(format!(
                "{fnm}: {} holds {}, inside {pnm}'s pod CIDR {cidr}",
                meshprobe_core::text::printable_line(&a.dev, 32),
                a.addr
            ));
        }
        for h in holders.iter().take(4) {
            evidence.push(format!(
                "{h}: its neighbour entry for {pnm}'s VTEP holds {fnm}'s VTEP MAC"
            ));
        }
        if holders.len() > 4 {
            evidence.push(format!(
                "and {} more nodes whose entries for {pnm} resolve to {fnm}",
                holders.len() - 4
            ));
        }
        for &k in cells.iter().take(4) {
            if let Some(cv) = self.ix.cell(k) {
                evidence.push(format!(
                    "{} {} -> {}: {}",
                    k.layer,
                    self.ix.names[k.src],
                    self.ix.col_name(k),
                    describe(cv)
                ));
            }
        }
        let via = match holders.len() {
            0 => String::new(),
            1 => format!("; {} sends them to {fnm}'s VTEP", holders[0]),
            n => format!(
                "; {n} nodes ({}) send them to {fnm}'s VTEP",
                holders
                    .iter()
                    .take(4)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let held = match c.addrs.first() {
            Some(a) => format!(", holding {}", a.addr),
            None => String::new(),
        };
        let summary = format!(
            "{fnm} takes the traffic for {pnm}'s pods ({cidr}){held}{via}: one cause on {fnm}, not one per node"
        );
        let lease = format!(
            "then compare {fnm}'s lease with its node: `cat /run/flannel/subnet.env` and `kubectl get node {fnm} -o jsonpath='{{.spec.podCIDR}}'`, and restart flanneld on {fnm} so the peers rewrite their entries for {pnm}"
        );
        let fix = match c.addrs.first() {
            Some(a) if plain_ifname(&a.dev) => {
                format!("on {fnm}: `ip addr del {} dev {}`; {lease}", a.addr, a.dev)
            }
            Some(a) => format!(
                "on {fnm}: remove {} from the interface `ip -br addr | grep {}` shows; {lease}",
                a.addr,
                a.addr.split('/').next().unwrap_or_default()
            ),
            None => format!("on {fnm}: {lease}"),
        };
        // Each sufferer's own state, restated: the explanation one node at a time.
        let rest = holders.len().saturating_sub(1);
        let alternatives: Vec<Alternative> = c
            .holders
            .iter()
            .take(2)
            .map(|&h| Alternative {
                cause: Cause::OverlayPeerMissing,
                nodes: vec![name(self.ix.names[h])],
                peers: vec![name(self.ix.names[p])],
                hop: format!("the route, neighbour and fdb entry toward {pnm} on {}", self.ix.names[h]),
                rejected_by: format!(
                    "not {}'s overlay state alone: its entry for {pnm} is there and resolves to {fnm}'s VTEP{}{}",
                    self.ix.names[h],
                    match rest {
                        0 => String::new(),
                        1 => ", as 1 other node's does".to_owned(),
                        n => format!(", as {n} other nodes' do"),
                    },
                    if c.addrs.is_empty() { String::new() } else { format!(", and {fnm} holds an address in {pnm}'s range") }
                ),
                rejecting_cells: Vec::new(),
            })
            .collect();
        for &s in c.holders.iter().chain(std::iter::once(&f)) {
            self.ledger.explain_pair(&[Part::Network, Part::Pods], s, p);
        }
        self.ledger.accounted.extend(c.holders.iter().copied());
        // (The predicted cells are claimed and pending already.)
        // Load-balanced requests that enter at or leave from the owner or a sender may
        // have a backend behind the claimed range, or come back to it.
        let mut weight = cells.len();
        for &s in c.holders.iter().chain(std::iter::once(&f)) {
            weight += self.claim_balanced_near(s, p);
        }
        let before = self.ledger.found.len();
        self.push(
            3,
            weight,
            Cause::PodCidrConflict,
            vec![f],
            vec![p],
            Direction::Inbound,
            format!("{pnm}'s pod CIDR {cidr}, which {fnm} holds"),
            summary,
            evidence,
            fix,
        );
        if let Some(Ranked { finding, .. }) = self.ledger.found.get_mut(before) {
            finding.alternatives = alternatives;
        }
    }
}
