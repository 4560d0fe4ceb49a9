//! MTU: full-size packets lost where small ones pass.

#![allow(unused_imports)]

use std::collections::BTreeSet;

use meshprobe_core::matrix::{AgentState, Cell, CellState};
use meshprobe_core::{Layer, NodeName};

use meshprobe_core::{Cause, Direction};

use crate::cx::*;
use crate::index::*;
use crate::*;

impl Cx<'_> {
    // ---- 4. MTU ---------------------------------------------------------------------------

    /// Full-size fails where small passes, s -> d.
    pub(crate) fn big_lost(&self, s: usize, d: usize) -> Option<Layer> {
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

    pub(crate) fn mtu(&mut self) {
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
            self.broken.insert(x, Cause::MtuMismatch);
            self.explain_node(&[Part::Big], x);
            self.push(
                3,
                hit.len() * 10,
                Cause::MtuMismatch,
                vec![x],
                vec![],
                Direction::Both,
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
                    Cause::MtuMismatch,
                    vec![d],
                    vec![s],
                    Direction::Unknown,
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
}
