//! Cross-node consistency: each host agent reports its node's own overlay identity and
//! configuration (VTEP MAC, VXLAN port and VNI, MTUs, addresses, routes, neighbour and fdb
//! entries), and the nodes are compared with each other and with the plan. The suspect is
//! the node whose state differs from its peers' or contradicts another node's. No
//! inventory field is needed: the nodes themselves are the reference.
//!
//! Consistency names suspects and explains symptoms; like all evidence, it never makes a
//! finding without a failing probe behind it (see [`Cx::config_warnings`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use meshprobe_core::Topology;
use meshprobe_core::evidence::OverlayConfig;

use crate::cx::Cx;
use crate::index::Index;

/// One attribute's value per reporting node: (node, value).
type Values = Vec<(usize, u64)>;

/// A configuration value compared across nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Attr {
    /// The VXLAN device's UDP port.
    VxlanPort,
    /// The VXLAN device's VNI.
    Vni,
    /// The VTEP MAC, against what the cluster knows it as.
    VtepMac,
    /// The underlay NIC's MTU.
    UnderlayMtu,
    /// The overlay device's MTU.
    OverlayMtu,
    /// The pods' bridge's MTU.
    BridgeMtu,
    /// The pods' veths' MTU.
    PodMtu,
    /// An address on the bridge or the overlay device.
    Address,
    /// The node's own pod gateway, missing from its bridge.
    Gateway,
    /// A route into another node's pod CIDR.
    Route,
}

impl Attr {
    pub(crate) fn words(self) -> &'static str {
        match self {
            Attr::VxlanPort => "VXLAN port",
            Attr::Vni => "VXLAN VNI",
            Attr::VtepMac => "VTEP MAC",
            Attr::UnderlayMtu => "underlay MTU",
            Attr::OverlayMtu => "overlay MTU",
            Attr::BridgeMtu => "cni0 MTU",
            Attr::PodMtu => "pod veth MTU",
            Attr::Address => "address",
            Attr::Gateway => "pod gateway",
            Attr::Route => "route",
        }
    }
}

/// A node whose configuration differs from its peers' or contradicts another node's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Oddity {
    /// The node whose state is odd.
    pub(crate) node: usize,
    /// What is odd.
    pub(crate) attr: Attr,
    /// In words, with the values.
    pub(crate) line: String,
}

/// What the comparison found.
#[derive(Clone, Debug, Default)]
pub(crate) struct Consistency {
    /// Odd values, by node.
    pub(crate) odd: Vec<Oddity>,
    /// For a node: the peers whose neighbour entry for its VTEP holds a MAC it does not
    /// have, and that MAC.
    pub(crate) stale_for: BTreeMap<usize, Vec<(usize, String)>>,
    /// Overlay entries on `holder` for `peer`'s VTEP that resolve to another node's VTEP
    /// (`to`): the holder sends `peer`'s pod traffic to `to`.
    pub(crate) redirects: Vec<Redirect>,
    /// Local addresses inside another node's pod CIDR.
    pub(crate) foreign: Vec<ForeignAddress>,
}

/// `holder`'s neighbour entry for `peer`'s VTEP holds `to`'s VTEP MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Redirect {
    pub(crate) holder: usize,
    pub(crate) peer: usize,
    pub(crate) to: usize,
}

/// `node` holds `addr` (on `dev`) inside `owner`'s pod CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ForeignAddress {
    pub(crate) node: usize,
    pub(crate) owner: usize,
    pub(crate) dev: String,
    pub(crate) addr: String,
}

impl Consistency {
    /// Compares the nodes' reported configuration.
    pub(crate) fn new(t: &Topology, ix: &Index<'_>, configs: &[Option<&OverlayConfig>]) -> Self {
        let mut c = Consistency::default();
        let names = &ix.names;
        let reporting = configs.iter().flatten().count();
        if reporting == 0 {
            return c;
        }
        let overlay = &t.cluster.overlay;
        let scalar = |f: &dyn Fn(&OverlayConfig) -> Option<u64>| -> Vec<(usize, u64)> {
            configs
                .iter()
                .enumerate()
                .filter_map(|(i, cf)| cf.and_then(f).map(|v| (i, v)))
                .collect()
        };
        let attrs: [(Attr, Values, Option<u64>); 6] = [
            (
                Attr::VxlanPort,
                scalar(&|cf| cf.vxlan_port.map(u64::from)),
                Some(u64::from(overlay.port)),
            ),
            (Attr::Vni, scalar(&|cf| cf.vni.map(u64::from)), None),
            (
                Attr::UnderlayMtu,
                scalar(&|cf| cf.underlay_mtu.map(u64::from)),
                None,
            ),
            (
                Attr::OverlayMtu,
                scalar(&|cf| cf.overlay_mtu.map(u64::from)),
                Some(u64::from(overlay.mtu)),
            ),
            (
                Attr::BridgeMtu,
                scalar(&|cf| cf.bridge_mtu.map(u64::from)),
                None,
            ),
            (
                Attr::PodMtu,
                scalar(&|cf| cf.pod_mtus.last().map(|m| u64::from(*m))),
                None,
            ),
        ];
        for (attr, values, plan) in attrs {
            let Some(usual) = usual(&values, plan) else {
                continue;
            };
            let agreeing = values.iter().filter(|(_, v)| *v == usual).count();
            for &(i, v) in values.iter().filter(|(_, v)| *v != usual) {
                c.odd.push(Oddity {
                    node: i,
                    attr,
                    line: format!(
                        "{}: {} {v}, while {agreeing} other nodes have {usual}",
                        names[i],
                        attr.words()
                    ),
                });
            }
        }
        // Within a node: pods that may send more than the overlay carries.
        for (i, cf) in configs.iter().enumerate() {
            let Some(cf) = cf else { continue };
            if let (Some(pod), Some(dev)) = (cf.pod_mtus.last(), cf.overlay_mtu)
                && *pod > dev
                && !c.odd.iter().any(|o| o.node == i && o.attr == Attr::PodMtu)
            {
                c.odd.push(Oddity {
                    node: i,
                    attr: Attr::PodMtu,
                    line: format!(
                        "{}: pod veth MTU {pod} exceeds its overlay device's MTU {dev}",
                        names[i]
                    ),
                });
            }
        }
        // Identity: each node's VTEP MAC against what the cluster knows it as (its
        // annotation) and what its peers hold for it. One pass over the topology, one over
        // the entries: linear in nodes x peers.
        let mut vtep_owner: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        let mut annotated: Vec<Option<&str>> = vec![None; names.len()];
        for n in &t.nodes {
            if let Some(&i) = ix.pos.get(n.name.as_str()) {
                vtep_owner.insert(n.pod_cidr.network(), i);
                annotated[i] = n.vtep_mac.as_deref();
            }
        }
        let mac_of: Vec<Option<&str>> = configs
            .iter()
            .map(|cf| cf.and_then(|cf| cf.vtep_mac.as_deref()))
            .collect();
        let mac_owner: BTreeMap<&str, usize> = mac_of
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.map(|m| (m, i)))
            .collect();
        let mut holding: BTreeMap<usize, usize> = BTreeMap::new();
        for (h, hcf) in configs.iter().enumerate() {
            let Some(hcf) = hcf else { continue };
            for e in &hcf.neighbours {
                let (Some(ip), Some(mac)) = (e.ip, e.mac.as_deref()) else {
                    continue;
                };
                let Some(&p) = vtep_owner.get(&ip) else {
                    continue;
                };
                let Some(mine) = mac_of[p] else { continue };
                if p == h {
                    continue;
                }
                *holding.entry(p).or_default() += 1;
                if mac.eq_ignore_ascii_case(mine) {
                    continue;
                }
                if let Some(&q) = mac_owner.get(mac)
                    && q != p
                {
                    c.redirects.push(Redirect {
                        holder: h,
                        peer: p,
                        to: q,
                    });
                    c.odd.push(Oddity {
                        node: h,
                        attr: Attr::VtepMac,
                        line: format!(
                            "{}: its neighbour entry for {}'s VTEP {ip} holds {mac}, which is {}'s VTEP MAC",
                            names[h], names[p], names[q]
                        ),
                    });
                } else {
                    c.stale_for.entry(p).or_default().push((h, mac.to_owned()));
                }
            }
        }
        for (p, mine) in mac_of.iter().enumerate() {
            if let (Some(mine), Some(a)) = (mine, annotated[p])
                && !a.eq_ignore_ascii_case(mine)
            {
                c.odd.push(Oddity {
                    node: p,
                    attr: Attr::VtepMac,
                    line: format!(
                        "{}: its {} has MAC {mine}, while the cluster knows its VTEP as {a}",
                        names[p], overlay.interface
                    ),
                });
            }
        }
        for (p, holders) in &c.stale_for {
            let total = holding.get(p).copied().unwrap_or_default();
            if holders.len() < 2 || holders.len() * 2 <= total {
                // A few peers hold an old MAC for p while the rest hold p's own: those few
                // are stale.
                for (h, mac) in holders {
                    c.odd.push(Oddity {
                        node: *h,
                        attr: Attr::VtepMac,
                        line: format!(
                            "{}: its neighbour entry for {}'s VTEP holds {mac}, a MAC {} does not have",
                            names[*h], names[*p], names[*p]
                        ),
                    });
                }
            } else {
                // Most of those holding an entry for p hold another MAC than p's own: p is
                // the one that changed.
                let mine = configs[*p]
                    .and_then(|cf| cf.vtep_mac.clone())
                    .unwrap_or_default();
                c.odd.push(Oddity {
                    node: *p,
                    attr: Attr::VtepMac,
                    line: format!(
                        "{}: its {} has MAC {mine}, while {} peers ({}) send to {}",
                        names[*p],
                        overlay.interface,
                        holders.len(),
                        holders
                            .iter()
                            .take(4)
                            .map(|(h, _)| names[*h])
                            .collect::<Vec<_>>()
                            .join(", "),
                        holders[0].1
                    ),
                });
            }
        }
        // Addresses and routes that belong to another node.
        // Pod CIDRs by their first address, to find an address's owner in log time.
        let cidrs: BTreeMap<u32, (&meshprobe_core::PodCidr, usize)> = t
            .nodes
            .iter()
            .filter_map(|n| {
                let i = ix.pos.get(n.name.as_str()).copied()?;
                Some((u32::from(n.pod_cidr.network()), (&n.pod_cidr, i)))
            })
            .collect();
        let owner_of = |ip: Ipv4Addr| -> Option<usize> {
            cidrs
                .range(..=u32::from(ip))
                .next_back()
                .filter(|(_, (c, _))| c.contains(ip))
                .map(|(_, (_, i))| *i)
        };
        // Each node's bridge holds its own gateway (what its pods route through, and what
        // every node's gateway probes aim at). NetworkManager flushing cni0 removes it.
        let gateway: Vec<Option<Ipv4Addr>> = {
            let mut g = vec![None; names.len()];
            for n in &t.nodes {
                if let Some(&i) = ix.pos.get(n.name.as_str()) {
                    g[i] = Some(n.gateway);
                }
            }
            g
        };
        for (i, cf) in configs.iter().enumerate() {
            let (Some(cf), Some(gw)) = (cf, gateway[i]) else {
                continue;
            };
            let holds = cf
                .bridge_addrs
                .iter()
                .any(|a| a.split('/').next().and_then(|s| s.parse::<Ipv4Addr>().ok()) == Some(gw));
            if cf.bridge_mtu.is_some() && !holds {
                c.odd.push(Oddity {
                    node: i,
                    attr: Attr::Gateway,
                    line: format!(
                        "{}: cni0 does not hold its pod gateway {gw} (it holds {})",
                        names[i],
                        if cf.bridge_addrs.is_empty() {
                            "no address".to_owned()
                        } else {
                            cf.bridge_addrs.join(", ")
                        }
                    ),
                });
            }
        }
        for (i, cf) in configs.iter().enumerate() {
            let Some(cf) = cf else { continue };
            // Every interface's addresses when the agent reads them (any device may take a
            // pod range's traffic); the bridge's and the overlay's from an older agent.
            let addrs: Vec<(&str, String)> = if cf.pod_range_addrs.is_empty() {
                cf.bridge_addrs
                    .iter()
                    .map(|a| ("cni0", a.clone()))
                    .chain(
                        cf.overlay_addrs
                            .iter()
                            .map(|a| (overlay.interface.as_str(), a.clone())),
                    )
                    .collect()
            } else {
                cf.pod_range_addrs
                    .iter()
                    .map(|a| (a.dev.as_str(), format!("{}/{}", a.ip, a.prefix_len)))
                    .collect()
            };
            for (dev, a) in addrs {
                let Some(ip) = a.split('/').next().and_then(|s| s.parse::<Ipv4Addr>().ok()) else {
                    continue;
                };
                match owner_of(ip) {
                    Some(o) if o != i => {
                        c.odd.push(Oddity {
                            node: i,
                            attr: Attr::Address,
                            line: format!(
                                "{}: {} holds {a}, inside {}'s pod CIDR",
                                names[i],
                                meshprobe_core::text::printable_line(dev, 32),
                                names[o]
                            ),
                        });
                        c.foreign.push(ForeignAddress {
                            node: i,
                            owner: o,
                            dev: dev.to_owned(),
                            addr: a,
                        });
                    }
                    _ => {}
                }
            }
            for r in &cf.routes {
                let (Some(gw), Some(dst)) = (r.gateway, r.dst.split('/').next()) else {
                    continue;
                };
                let (Some(to), Some(via)) = (
                    dst.parse::<Ipv4Addr>().ok().and_then(owner_of),
                    owner_of(gw),
                ) else {
                    continue;
                };
                if to != via {
                    c.odd.push(Oddity {
                        node: i,
                        attr: Attr::Route,
                        line: format!(
                            "{}: routes {}'s pod CIDR {} via {gw}, {}'s VTEP",
                            names[i], names[to], r.dst, names[via]
                        ),
                    });
                }
            }
        }
        c.odd.sort_by_key(|o| (o.node, o.attr));
        c.odd.dedup_by(|a, b| a.node == b.node && a.line == b.line);
        c
    }

    /// The odd values of one node.
    pub(crate) fn of(&self, x: usize) -> impl Iterator<Item = &Oddity> + '_ {
        self.odd.iter().filter(move |o| o.node == x)
    }

    /// Whether `x` is odd in any of `attrs`.
    pub(crate) fn is_odd(&self, x: usize, attrs: &[Attr]) -> bool {
        self.of(x).any(|o| attrs.contains(&o.attr))
    }
}

/// The cluster's value: held by more than half of the nodes that report it and by at least
/// two of them; with no such majority, the plan's value when some node has it.
fn usual(values: &[(usize, u64)], plan: Option<u64>) -> Option<u64> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, v) in values {
        *counts.entry(*v).or_default() += 1;
    }
    let (&top, &n) = counts.iter().max_by_key(|(_, n)| **n)?;
    if n >= 2 && n * 2 > values.len() {
        return Some(top);
    }
    plan.filter(|p| counts.contains_key(p))
}

impl Cx<'_> {
    /// Compares the nodes' configuration (once, before the detectors run).
    pub(crate) fn compare_configs(&mut self) {
        let configs: Vec<Option<&OverlayConfig>> = (0..self.n())
            .map(|x| self.evidence(x).and_then(|e| e.config.as_ref()))
            .collect();
        self.cfg = Consistency::new(self.t, &self.ix, &configs);
    }

    /// The lines saying how `x`'s configuration differs, for `attrs` (all when empty).
    pub(crate) fn odd_lines(&self, x: usize, attrs: &[Attr]) -> Vec<String> {
        self.cfg
            .of(x)
            .filter(|o| attrs.is_empty() || attrs.contains(&o.attr))
            .map(|o| o.line.clone())
            .collect()
    }

    /// Odd configuration on nodes no finding names: a warning, never a finding.
    pub(crate) fn config_warnings(&self, named: &std::collections::BTreeSet<&str>) -> Vec<String> {
        self.cfg
            .odd
            .iter()
            .filter(|o| !named.contains(self.ix.names[o.node]))
            .map(|o| format!("{}, though no probe fails yet", o.line))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_value_is_a_majority_of_at_least_two_or_the_plans() {
        assert_eq!(usual(&[(0, 1500), (1, 1500), (2, 9000)], None), Some(1500));
        assert_eq!(usual(&[(0, 1500), (1, 9000)], None), None);
        assert_eq!(usual(&[(0, 8472), (1, 4789)], Some(8472)), Some(8472));
        assert_eq!(usual(&[(0, 4789)], Some(8472)), None);
        assert_eq!(usual(&[], Some(8472)), None);
    }
}
