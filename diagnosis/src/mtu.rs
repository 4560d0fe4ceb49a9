//! MTU: full-size packets lost where small ones pass.

#![allow(unused_imports)]

use std::collections::BTreeSet;

use meshprobe_core::matrix::{AgentState, CellState};
use meshprobe_core::{Layer, NodeName};

use meshprobe_core::{Cause, Direction, FailKind};

use crate::consistency::Attr;
use crate::cx::*;
use crate::index::*;
use crate::*;

impl Cx<'_> {
    // ---- 4. MTU ---------------------------------------------------------------------------

    /// Full-size fails where small passes, s -> d.
    pub(crate) fn big_lost(&self, s: usize, d: usize) -> Option<Layer> {
        if self.ledger.is_explained(Part::Big, s, d) {
            return None;
        }
        if self.dead(Layer::UnderlayFullSize, s, d) && self.ok(Layer::Underlay, s, d) {
            return Some(Layer::UnderlayFullSize);
        }
        [Layer::PodToPodFullSize, Layer::PodToPodFragmented]
            .into_iter()
            .find(|big| self.dead(*big, s, d) && self.ok(Layer::PodToPod, s, d))
    }

    pub(crate) fn mtu(&mut self) {
        let overlay = self.t.cluster.overlay.clone();
        let big = overlay.assumed_underlay_mtu();
        let big_layers = [
            Layer::UnderlayFullSize,
            Layer::PodToPodFullSize,
            Layer::PodToPodFragmented,
        ];
        for x in 0..self.n() {
            if !self.ix.involved(x) {
                continue;
            }
            if self.ledger.is_broken(x) {
                continue;
            }
            // Into x (its path carries less) and out of x (it sends more than its path
            // carries: a NIC set larger than the fabric).
            let mut into: Vec<usize> = big_layers
                .iter()
                .flat_map(|l| self.ix.col(*l, x).iter().copied())
                .filter(|&s| s != x)
                .collect();
            into.sort_unstable();
            into.dedup();
            let mut from: Vec<usize> = big_layers
                .iter()
                .flat_map(|l| self.ix.row_targets(*l, x))
                .filter(|&d| d != x)
                .collect();
            from.sort_unstable();
            from.dedup();
            let hit_in: Vec<(usize, Layer)> = into
                .iter()
                .filter_map(|&s| self.big_lost(s, x).map(|l| (s, l)))
                .collect();
            let hit_out: Vec<(usize, Layer)> = from
                .iter()
                .filter_map(|&d| self.big_lost(x, d).map(|l| (d, l)))
                .collect();
            let (in_q, out_q) = (
                self.quorum(hit_in.len(), into.len()),
                self.quorum(hit_out.len(), from.len()),
            );
            if !in_q && !out_q {
                continue;
            }
            let direction = Direction::of(in_q, out_q);
            let xn = self.nm(x);
            let mut evidence = Vec::new();
            for layer in big_layers {
                if in_q {
                    let pairs: Vec<(usize, usize)> = hit_in
                        .iter()
                        .filter(|h| h.1 == layer)
                        .map(|h| (h.0, x))
                        .collect();
                    evidence.extend(self.cite(layer, &pairs));
                }
                if out_q {
                    let pairs: Vec<(usize, usize)> = hit_out
                        .iter()
                        .filter(|h| h.1 == layer)
                        .map(|h| (x, h.0))
                        .collect();
                    evidence.extend(self.cite(layer, &pairs));
                }
            }
            for &(s, _) in hit_in.iter().take(2) {
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
                "small probes on the same paths pass; full-size ones ({big}-byte underlay frames: overlay MTU {} + {} of encapsulation, or the node's own larger MTU) do not",
                overlay.mtu,
                overlay.kind.overhead()
            ));
            let odd = self.odd_lines(
                x,
                &[
                    Attr::UnderlayMtu,
                    Attr::OverlayMtu,
                    Attr::BridgeMtu,
                    Attr::PodMtu,
                ],
            );
            evidence.extend(odd.iter().cloned());
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
            self.ledger.mark_broken(x, Cause::MtuMismatch);
            self.ledger.explain_node(&[Part::Big], x);
            let cells = self.claim_node(
                x,
                &[
                    Layer::UnderlayFullSize,
                    Layer::PodToPodFullSize,
                    Layer::PodToPodFragmented,
                    Layer::CorednsMetrics,
                    Layer::Nodeport,
                    Layer::Ingress,
                    Layer::NodeportFromPod,
                    Layer::IngressFromPod,
                ],
            );
            let ip = self.node_ip(x);
            // Its own full-size underlay probes are lost while its peers' reach it: it
            // sends more than the fabric carries (a NIC set larger than the rest).
            let sends_too_big = hit_out.iter().any(|h| h.1 == Layer::UnderlayFullSize)
                && !hit_in.iter().any(|h| h.1 == Layer::UnderlayFullSize);
            // Full-size frames cross the underlay to and from x (its full-size underlay
            // probes pass), yet full-size packets into its pods are lost: an MTU inside x,
            // between its overlay device and its pods, is smaller than the overlay's.
            let underlay_carries = !hit_in
                .iter()
                .chain(&hit_out)
                .any(|h| h.1 == Layer::UnderlayFullSize)
                && self
                    .ix
                    .col(Layer::UnderlayFullSize, x)
                    .iter()
                    .any(|&s| s != x && self.ok(Layer::UnderlayFullSize, s, x));
            let inner: Vec<&'static str> = {
                let mut v: Vec<&'static str> = self
                    .cfg
                    .of(x)
                    .filter(|o| matches!(o.attr, Attr::OverlayMtu | Attr::BridgeMtu | Attr::PodMtu))
                    .map(|o| o.attr.words())
                    .collect();
                v.dedup();
                v
            };
            // The senders' kernels refused the packet themselves: a hop on the way
            // answered "fragmentation needed" and they learned a smaller path MTU.
            let learned = hit_in.iter().any(|&(s, l)| {
                self.cell(l, s, x)
                    .is_some_and(|c| c.failure == Some(FailKind::TooBig))
            });
            if learned {
                evidence.push(format!(
                    "the senders' kernels refuse full-size packets toward {xn}'s pods themselves (EMSGSIZE): a hop on the way answered \"fragmentation needed\", and they keep that smaller path MTU for up to 10 minutes"
                ));
            }
            let reported = self.evidence(x).and_then(|e| e.config.as_ref()).is_some();
            let (hop, summary, fix) = if underlay_carries
                && learned
                && inner.is_empty()
                && reported
                && direction != Direction::Outbound
            {
                (
                    format!(
                        "senders' route cache -> {xn}'s pods: a learned path MTU below {}",
                        overlay.mtu
                    ),
                    format!(
                        "peers refuse full-size packets to {xn}'s pods (EMSGSIZE) though {xn}'s MTUs match the cluster's and full-size frames cross the underlay: they hold a path MTU a hop announced earlier"
                    ),
                    format!(
                        "in a sending pod: `ip route get <{xn} pod IP>` shows the learned `mtu`; `ip route flush cache` clears it (it expires by itself within 10 minutes). If it comes back, `tcpdump -ni any 'icmp[icmptype] == 3 and icmp[icmpcode] == 4'` on {xn} shows who announces it"
                    ),
                )
            } else if underlay_carries && !sends_too_big && direction != Direction::Outbound {
                let what = if inner.is_empty() {
                    format!("the path from {} to its pods", overlay.interface)
                } else {
                    inner.join(" and ")
                };
                (
                    format!(
                        "inside {xn}: {} -> cni0 -> pods: {what} smaller than the overlay's {}",
                        overlay.interface, overlay.mtu
                    ),
                    format!(
                        "full-size packets to {xn}'s pods are lost while small ones pass and full-size frames cross the underlay: {what} on {xn} is smaller than the overlay's MTU {}",
                        overlay.mtu
                    ),
                    format!(
                        "on {xn}: `ip link show cni0; ip -o link show master cni0`; set them back to {} (the CNI config's `mtu`, flannel's FLANNEL_MTU in /run/flannel/subnet.env); senders keep a learned path MTU for up to 10 minutes: `ip route get <pod IP>` in a sending pod shows it, `ip route flush cache` there clears it",
                        overlay.mtu
                    ),
                )
            } else if sends_too_big || direction == Direction::Outbound {
                (
                    format!(
                        "underlay: {xn} {dev} -> *: frames larger than the fabric carries vanish"
                    ),
                    format!(
                        "full-size packets from {xn} are lost while small ones pass, and its peers' reach it: {xn} sends frames larger than its path carries"
                    ),
                    format!(
                        "on {xn}: `ip link show {dev}; ip -d link show {}`: set the MTUs back to the cluster's (see the evidence) or raise the fabric's; from {xn}: `ping -M do -s <MTU-28> <peer IP>`",
                        overlay.interface
                    ),
                )
            } else {
                (
                    format!("underlay: * <-> {xn} {dev}: frames of {big} bytes vanish"),
                    format!(
                        "full-size packets to and from {xn} are lost while small ones pass: {xn}'s underlay path carries less than {big} bytes"
                    ),
                    format!(
                        "from a peer: `ping -M do -s {} {ip}`, then smaller sizes to find the path MTU; raise the MTU on {xn}'s path (switch port, NIC) or lower flannel's MTU in net-conf.json",
                        big - 28
                    ),
                )
            };
            self.push(
                3,
                (hit_in.len() + hit_out.len()) * 10 + cells,
                Cause::MtuMismatch,
                vec![x],
                vec![],
                direction,
                hop,
                summary,
                evidence,
                fix,
            );
        }
        // Pair-level leftovers.
        let mut pairs: Vec<(usize, usize)> = self
            .ix
            .all(Layer::UnderlayFullSize)
            .chain(self.ix.all(Layer::PodToPodFullSize))
            .chain(self.ix.all(Layer::PodToPodFragmented))
            .filter(|(_, _, c)| c.state == CellState::Fail)
            .map(|(s, d, _)| (s, d))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        for (s, d) in pairs {
            if let Some(layer) = self.big_lost(s, d) {
                let evidence = self.cite(layer, &[(s, d)]);
                self.ledger.explain_pair(&[Part::Big], s, d);
                self.claim_pair(
                    s,
                    d,
                    &[
                        Layer::UnderlayFullSize,
                        Layer::PodToPodFullSize,
                        Layer::PodToPodFragmented,
                        Layer::CorednsMetrics,
                    ],
                );
                self.claim_balanced_near(s, d);
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
