//! What the stages of one diagnosis pass record, and the stages themselves.
//!
//! The round is read through one read-only view (the report, its [`Index`](crate::index),
//! the nodes' evidence and their compared configuration); everything a stage decides goes
//! into the [`Ledger`]: the findings, the cells they claim, the pairs and nodes they
//! explain, the nodes they blame. A stage reads what earlier stages recorded there and
//! nowhere else, so the order of [`Stage::PIPELINE`] is the only coupling between them.

use meshprobe_core::Cause;

use crate::Part;
use crate::cx::Cx;
use crate::index::{CellKey, FxMap, FxSet};
use crate::model::Withdrawn;

/// Everything one pass has decided so far.
#[derive(Default)]
pub(crate) struct Ledger {
    /// Pairs explained by a pair-level finding.
    explained: FxSet<(Part, usize, usize)>,
    /// Nodes whose every pair a node-level finding explains, per part.
    explained_nodes: FxSet<(Part, usize)>,
    /// Nodes with a node-level network finding, and its cause.
    broken: FxMap<usize, Cause>,
    /// CoreDNS pods found down (their metrics failures need no finding of their own).
    pub(crate) dns_down: std::collections::BTreeSet<String>,
    /// The findings, ranked.
    pub(crate) found: Vec<crate::Ranked>,
    /// Failing cells some finding explains.
    claimed: FxSet<CellKey>,
    /// Cells claimed since the last finding was made: the next finding's.
    pending: Vec<CellKey>,
    /// Nodes whose ICMP is lost while TCP or UDP to their node IP gets through.
    icmp_only: FxSet<usize>,
    /// Findings the model withdrew: alternatives for whatever explains their cells.
    pub(crate) withdrawn: Vec<Withdrawn>,
    /// (cause, node) pairs an earlier pass withdrew: the detectors do not make them
    /// again, so that what they would have explained is left to the right explanation.
    veto: FxSet<(Cause, usize)>,
    /// Nodes whose odd evidence a finding accounts for without blaming them (the
    /// sufferers of another node's fault): no "though no probe fails yet" warning.
    pub(crate) accounted: FxSet<usize>,
    /// Set while the model makes a finding: the veto is for the detectors' findings.
    pub(crate) from_model: bool,
}

impl Ledger {
    /// An empty ledger for a pass that must not make the `veto`ed findings again.
    pub(crate) fn with_veto(veto: FxSet<(Cause, usize)>) -> Ledger {
        Ledger {
            veto,
            ..Ledger::default()
        }
    }

    /// Whether an earlier pass withdrew this finding.
    pub(crate) fn vetoed(&self, cause: &Cause, x: usize) -> bool {
        self.veto.contains(&(cause.clone(), x))
    }

    /// Whether a finding explains the cell.
    pub(crate) fn is_claimed(&self, k: &CellKey) -> bool {
        self.claimed.contains(k)
    }

    /// Claims cells for the next finding; returns how many were not claimed before.
    pub(crate) fn claim(&mut self, keys: impl IntoIterator<Item = CellKey>) -> usize {
        let mut n = 0;
        for k in keys {
            if self.claimed.insert(k) {
                n += 1;
            }
            self.pending.push(k);
        }
        n
    }

    /// Gives a cell back: its finding was withdrawn or vetoed.
    pub(crate) fn unclaim(&mut self, k: &CellKey) {
        self.claimed.remove(k);
    }

    /// The cells claimed since the last finding, for the finding being made.
    pub(crate) fn take_pending(&mut self) -> Vec<CellKey> {
        std::mem::take(&mut self.pending)
    }

    /// The cells claimed since the last finding, left in place.
    pub(crate) fn pending(&self) -> &[CellKey] {
        &self.pending
    }

    /// Whether a finding explains the pair (or either end as a whole), for `part`.
    pub(crate) fn is_explained(&self, part: Part, s: usize, d: usize) -> bool {
        self.explained_nodes.contains(&(part, s))
            || self.explained_nodes.contains(&(part, d))
            || self.explained.contains(&(part, s, d))
    }

    /// Records that a node-level finding explains every pair of `x`.
    pub(crate) fn explain_node(&mut self, parts: &[Part], x: usize) {
        for p in parts {
            self.explained_nodes.insert((*p, x));
        }
    }

    /// Records that a pair-level finding explains `a`–`b`, both ways.
    pub(crate) fn explain_pair(&mut self, parts: &[Part], a: usize, b: usize) {
        for p in parts {
            self.explained.insert((*p, a, b));
            self.explained.insert((*p, b, a));
        }
    }

    /// The cause a node-level finding blamed on `x`.
    pub(crate) fn broken(&self, x: usize) -> Option<&Cause> {
        self.broken.get(&x)
    }

    /// Whether a node-level finding blamed `x`.
    pub(crate) fn is_broken(&self, x: usize) -> bool {
        self.broken.contains_key(&x)
    }

    /// Every node a node-level finding blamed, with its cause.
    pub(crate) fn blamed(&self) -> impl Iterator<Item = (usize, &Cause)> + '_ {
        self.broken.iter().map(|(&x, c)| (x, c))
    }

    /// Records a node-level finding's cause on `x`.
    pub(crate) fn mark_broken(&mut self, x: usize, cause: Cause) {
        self.broken.insert(x, cause);
    }

    /// Forgets `x`'s node-level finding: it was withdrawn.
    pub(crate) fn clear_broken(&mut self, x: usize) {
        self.broken.remove(&x);
    }

    /// Records that `x` filters ICMP while its TCP and UDP get through.
    pub(crate) fn mark_icmp_only(&mut self, x: usize) {
        self.icmp_only.insert(x);
    }

    /// Whether `x` filters ICMP only.
    pub(crate) fn icmp_only(&self, x: usize) -> bool {
        self.icmp_only.contains(&x)
    }
}

/// One stage of a diagnosis pass, in path order: the nodes' own state first, then each
/// hop family from the underlay out to the services, then the datapath model's tests of
/// what was found and its cover of what is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The nodes' configuration compared across nodes (records facts, no findings).
    CompareConfigs,
    /// Nodes nobody reaches on the underlay, and nodes that filter ICMP only.
    Unreachable,
    /// A pod range another node has taken.
    RangeClaims,
    /// A node's tunnel, in or out.
    TunnelNodes,
    /// The tunnel between two nodes.
    TunnelPairs,
    /// A node's forwarding of its pods' traffic.
    Forwarding,
    /// Packet sizes.
    Mtu,
    /// A steady share lost.
    Loss,
    /// CoreDNS pods and the kube-dns service.
    Dns,
    /// CoreDNS's metrics port.
    Metrics,
    /// NodePorts.
    Nodeport,
    /// Ingresses.
    Ingress,
    /// The model's hypotheses that node evidence supports, before the backend readers.
    LocaliseSupported,
    /// A load-balanced service's backend.
    ServiceBackends,
    /// One node's pods failing services the others pass.
    PodServices,
    /// A node whose kube-proxy lacks what its peers have.
    LackingOutliers,
    /// A prober whose own row fails.
    DegradedProbers,
    /// Every finding tested against the passing cells.
    Verify,
    /// The fewest surviving hypotheses for what is left.
    Localise,
    /// What one observer alone sees about one peer, once everything else is explained.
    OneObserver,
}

impl Stage {
    /// The stages of a pass, in the order they run.
    pub(crate) const PIPELINE: [Stage; 20] = [
        Stage::CompareConfigs,
        Stage::Unreachable,
        Stage::RangeClaims,
        Stage::TunnelNodes,
        Stage::TunnelPairs,
        Stage::Forwarding,
        Stage::Mtu,
        Stage::Loss,
        Stage::Dns,
        Stage::Metrics,
        Stage::Nodeport,
        Stage::Ingress,
        Stage::LocaliseSupported,
        Stage::ServiceBackends,
        Stage::PodServices,
        Stage::LackingOutliers,
        Stage::DegradedProbers,
        Stage::Verify,
        Stage::Localise,
        Stage::OneObserver,
    ];

    /// Runs the stage on one pass.
    pub(crate) fn run(self, cx: &mut Cx<'_>) {
        match self {
            Stage::CompareConfigs => cx.compare_configs(),
            Stage::Unreachable => cx.unreachable(),
            Stage::RangeClaims => cx.range_claims(),
            Stage::TunnelNodes => cx.tunnel_nodes(),
            Stage::TunnelPairs => cx.tunnel_pairs(),
            Stage::Forwarding => cx.forwarding(),
            Stage::Mtu => cx.mtu(),
            Stage::Loss => cx.loss(),
            Stage::Dns => cx.dns(),
            Stage::Metrics => cx.metrics(),
            Stage::Nodeport => cx.nodeport(),
            Stage::Ingress => cx.ingress(),
            Stage::LocaliseSupported => cx.localise_supported(),
            Stage::ServiceBackends => cx.service_backends(),
            Stage::PodServices => cx.pod_services(),
            Stage::LackingOutliers => cx.lacking_outliers(),
            Stage::DegradedProbers => cx.degraded_probers(),
            Stage::OneObserver => cx.one_observer(),
            Stage::Verify => cx.verify(),
            Stage::Localise => cx.localise(),
        }
    }
}
