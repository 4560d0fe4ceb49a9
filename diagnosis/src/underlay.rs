//! The node network: unreachable nodes and cut links. ICMP alone never condemns a node:
//! some environments filter it. A node is unreachable only when TCP (its NodePorts) and
//! UDP (the overlay's encapsulated probes, sent to its node IP) fail too; when only ICMP
//! is lost, the finding says exactly that.

use meshprobe_core::matrix::{AgentState, CellState};
use meshprobe_core::{Cause, Direction, Layer};

use crate::Part;
use crate::cx::{ALL, Cx};
use crate::index::Col;

/// What TCP and UDP to a node's IP showed, from the observers whose ICMP to it is dead.
struct Corroboration {
    /// Observers whose TCP or UDP to the node got through.
    through: Vec<String>,
    /// Observers whose TCP or UDP was measured.
    measured: usize,
}

impl Cx<'_> {
    /// TCP (the host agents' NodePort probes) and UDP (the tunnel's encapsulated probes)
    /// from each of `observers` to `x`'s node IP.
    fn corroborate(&self, x: usize, observers: &[usize]) -> Corroboration {
        let nodeports: Vec<usize> = self
            .ix
            .targets_of(Layer::Nodeport)
            .into_iter()
            .filter(|&id| self.ix.targets[id].node == Some(x))
            .collect();
        let mut c = Corroboration {
            through: Vec::new(),
            measured: 0,
        };
        for &s in observers {
            let tcp: Vec<bool> = nodeports
                .iter()
                .filter_map(|&id| self.tcell(id, s).map(|c| c.state == CellState::Ok))
                .collect();
            let udp = self
                .cell(Layer::GatewayFromHost, s, x)
                .map(|c| c.state == CellState::Ok);
            if tcp.is_empty() && udp.is_none() {
                continue;
            }
            c.measured += 1;
            let sn = self.nm(s);
            if tcp.iter().any(|ok| *ok) {
                c.through
                    .push(format!("{sn} reaches {} by TCP (NodePort)", self.nm(x)));
            } else if udp == Some(true) {
                c.through.push(format!(
                    "{sn} reaches {} by UDP (VXLAN to port {})",
                    self.nm(x),
                    self.t.cluster.overlay.port
                ));
            }
        }
        c
    }

    pub(crate) fn unreachable(&mut self) {
        for x in 0..self.n() {
            if !self.ix.involved(x) {
                continue;
            }
            let looked = self.ix.col(Layer::Underlay, x).to_vec();
            let dead: Vec<(usize, usize)> = looked
                .iter()
                .filter(|&&s| self.dead(Layer::Underlay, s, x))
                .map(|&s| (s, x))
                .collect();
            if !self.quorum(dead.len(), looked.len()) {
                continue;
            }
            let observers: Vec<usize> = dead.iter().map(|p| p.0).collect();
            let corroboration = self.corroborate(x, &observers);
            if !corroboration.through.is_empty() {
                self.icmp_blocked(x, &dead, corroboration);
                continue;
            }
            let xn = self.nm(x);
            let mut evidence = self.cite(Layer::Underlay, &dead);
            evidence.push(if corroboration.measured > 0 {
                format!(
                    "TCP and UDP to {xn} fail too, from {} nodes",
                    corroboration.measured
                )
            } else {
                format!("no TCP or UDP probe to {xn} could corroborate: this rests on ICMP")
            });
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
            self.ledger.mark_broken(x, Cause::NodeUnreachable);
            self.ledger
                .explain_node(&[Part::Network, Part::Pods, Part::Big], x);
            let cells = self.claim_node(x, ALL) + self.claim_balanced_of(x);
            self.push(
                0,
                cells.max(dead.len()) * 10,
                Cause::NodeUnreachable,
                vec![x],
                vec![],
                Direction::Both,
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
            .filter(|(_, _, c)| self.is_dead(Some(*c)))
            .map(|(s, d, _)| (s, d))
            .collect();
        dead_links.sort_unstable();
        for (s, d) in dead_links {
            if self.ledger.is_explained(Part::Network, s, d)
                || self.row_sick(s)
                || self.ledger.icmp_only(d)
            {
                continue;
            }
            if !self.corroborate(d, &[s]).through.is_empty() {
                // Only ICMP is lost on this link: claimed by no finding of its own; the
                // unexplained finding names it if nothing else does.
                continue;
            }
            // A link that carries some of the probes that cross it (another layer's, the
            // other size's) is lossy, not cut: left to the loss detector.
            let wire = meshprobe_core::datapath::Hop {
                kind: meshprobe_core::datapath::HopKind::Wire,
                site: meshprobe_core::datapath::Site::Pair { from: s, to: d },
            };
            if self.carries(wire) {
                continue;
            }
            let both = self.dead(Layer::Underlay, d, s);
            self.ledger
                .explain_pair(&[Part::Network, Part::Pods, Part::Big], s, d);
            let cells = self.claim_pair(s, d, ALL) + self.claim_balanced_near(s, d);
            let evidence = self.cite(Layer::Underlay, &[(s, d), (d, s)]);
            let (sn, dn, ip) = (self.nm(s), self.nm(d), self.node_ip(d));
            self.push(
                5,
                cells.max(2),
                Cause::NodeUnreachable,
                vec![d],
                vec![s],
                if both {
                    Direction::Both
                } else {
                    Direction::Inbound
                },
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

    /// ICMP to `x` is lost while TCP or UDP to the same address gets through.
    fn icmp_blocked(&mut self, x: usize, dead: &[(usize, usize)], c: Corroboration) {
        self.ledger.mark_icmp_only(x);
        let xn = self.nm(x);
        let ip = self.node_ip(x);
        let mut evidence = self.cite(Layer::Underlay, dead);
        evidence.extend(c.through.iter().take(4).cloned());
        evidence.push(format!(
            "{} of {} nodes whose ICMP to {xn} is lost reach it by TCP or UDP: the node is up, ICMP echo to it is filtered",
            c.through.len(),
            dead.len()
        ));
        let cells = self.claim_where(|_, k| {
            matches!(k.layer, Layer::Underlay | Layer::UnderlayFullSize) && k.col == Col::Node(x)
        });
        self.push(
            4,
            cells * 10,
            Cause::IcmpBlocked,
            vec![x],
            vec![],
            Direction::Inbound,
            format!("ICMP echo: * -> {xn} ({ip})"),
            format!("ICMP echo to {xn} is dropped; TCP and UDP to its node IP {ip} get through"),
            evidence,
            format!("on {xn}: `iptables-save | grep -i icmp` (and nft list ruleset); check the security group or host firewall for ICMP echo-request. meshprobe's underlay layers need ICMP echo to {ip}"),
        );
    }

    /// A prober whose underlay row is mostly dead while most others reach it.
    pub(crate) fn row_sick(&self, x: usize) -> bool {
        let row = self.ix.row(Layer::Underlay, x);
        let col = self.ix.col(Layer::Underlay, x);
        let row_dead = row
            .iter()
            .filter(|&&d| self.dead(Layer::Underlay, x, d) && !self.ledger.icmp_only(d))
            .count();
        let col_ok = col
            .iter()
            .filter(|&&s| self.ok(Layer::Underlay, s, x))
            .count();
        row.len() >= 2 && self.quorum(row_dead, row.len()) && col_ok * 2 > col.len()
    }
}
