//! Loss: a node whose traffic loses a share of its packets.

#![allow(unused_imports)]

use std::collections::BTreeSet;

use meshprobe_core::matrix::{AgentState, CellState};
use meshprobe_core::{Layer, NodeName};

use meshprobe_core::{Cause, Direction};

use crate::cx::*;
use crate::index::*;
use crate::*;

impl Cx<'_> {
    // ---- 5. loss --------------------------------------------------------------------------

    pub(crate) fn loss(&mut self) {
        let dead = self.s.dead_loss_pct;
        // Per node: (lost, sent) into it and from it, who saw loss into it; the cluster's total.
        let n = self.n();
        let mut into = vec![(0u64, 0u64); n];
        let mut from = vec![(0u64, 0u64); n];
        let mut who: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
        let mut total = (0u64, 0u64);
        for (s, d, c) in Layer::ICMP.iter().flat_map(|l| self.ix.all(*l)) {
            // Sends the kernel refused on the sender never met the path: not loss.
            if s == d
                || c.loss_pct.unwrap_or(0.0) >= dead
                || c.failure == Some(meshprobe_core::FailKind::LocalRefusal)
            {
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
            // A node whose kernel refuses its own sends (EPERM) loses its echo replies
            // the same way: the round trips through it lost are its OUTPUT's, which the
            // model tests against what passes, not its NIC's.
            if self.ledger.is_broken(x) || sent == 0 || self.ix.refused_sends[x] > 0 {
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
            self.ledger.mark_broken(x, Cause::PacketLoss);
            // Its cells, as far as the loss explains them: a cell that lost every probe
            // is that loss's doing only if so many in a row is not beyond chance (20 echoes
            // all lost at 51% round-trip loss happens once in 700,000 rounds: a cut, or an
            // observer's word, with a cause of its own).
            let q = pct / 100.0;
            self.claim_where(|cx, k| {
                (k.src == x || cx.ix.dst_node(k) == Some(x))
                    && cx.ix.cell(k).is_some_and(|c| {
                        !(c.ok == 0 && c.sent > 0 && q.powi(c.sent as i32) < LOSS_ALPHA)
                    })
            });
            // Load-balanced targets may land on x's pods.
            self.claim_balanced_of(x);
            self.push(
                4,
                lost as usize,
                Cause::PacketLoss,
                vec![x],
                vec![],
                Direction::Both,
                format!("underlay: * <-> {xn} {dev}"),
                format!("{xn} loses {pct:.0}% of the packets through it; the rest of the cluster does not"),
                evidence,
                format!("on {xn}: `ip -s link show {dev}` (errors, drops), `ethtool -S {dev}`; from a peer: `mtr -n -c 100 {}`", self.node_ip(x)),
            );
        }
    }
}

/// Below this chance, a cell that lost every probe is not the node's loss.
const LOSS_ALPHA: f64 = 1e-5;
