//! The report's known cells, indexed by integer node ids.

use meshprobe_core::matrix::{CellState, CellView, CheckReport, Matrix};
use meshprobe_core::plan::{nodeport_column_node, target_node};
use meshprobe_core::{Layer, Topology};

pub(crate) use meshprobe_core::fxhash::{FxMap, FxSet};

/// A cell's column: another node, or a named target (an index into [`Index::targets`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Col {
    /// A node column (the ICMP layers).
    Node(usize),
    /// A target column (DNS, metrics, NodePort, ingress).
    Target(usize),
}

/// One cell of the round, by integer ids: names appear only at the JSON edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct CellKey {
    pub(crate) layer: Layer,
    pub(crate) src: usize,
    pub(crate) col: Col,
}

/// A target column: its layer, its name, and the node it lives on (none for the
/// load-balanced kube-dns service).
pub(crate) struct Target<'a> {
    pub(crate) layer: Layer,
    pub(crate) name: &'a str,
    pub(crate) node: Option<usize>,
}

/// The report's known cells, indexed for cheap lookups and per-node rows and columns, so
/// that every detector walks the cells that exist (N x peers), never all N x N pairs.
/// Node-column layers are held as sorted rows (at most a few dozen entries each, binary
/// searched); target columns (DNS, metrics, NodePort, ingress) by target id.
pub(crate) struct Index<'a> {
    pub(crate) names: Vec<&'a str>,
    pub(crate) pos: FxMap<&'a str, usize>,
    /// Each layer's matrix, where the cells live.
    mats: Vec<Option<&'a Matrix>>,
    /// [layer][src] -> (dst, the cell's position in its matrix), sorted by dst.
    pub(crate) rows: Vec<Vec<Vec<(u32, u32)>>>,
    /// [layer][dst] -> srcs.
    pub(crate) cols: Vec<Vec<Vec<usize>>>,
    /// Every target column, in the report's order.
    pub(crate) targets: Vec<Target<'a>>,
    target_pos: FxMap<(Layer, &'a str), usize>,
    /// (target, src) -> the cell's position in its layer's matrix.
    tcells: FxMap<(usize, usize), u32>,
    /// [target] -> srcs.
    tcols: Vec<Vec<usize>>,
    /// [src] -> the targets it probed.
    trows: Vec<Vec<usize>>,
    /// [node] -> the targets that live on it.
    targets_on: Vec<Vec<usize>>,
    /// Every failing cell, in (layer, src, column) order.
    pub(crate) failing: Vec<CellKey>,
    /// Per node: whether it is the source or the destination of a failing cell. A node
    /// that is neither cannot be the subject of a finding built on failing cells, so the
    /// per-node detectors skip it: their work follows the failures, not the cluster.
    involved: Vec<bool>,
    /// Per node: its failing cells whose sends its own kernel refused (EPERM from the
    /// host network: the node's OUTPUT, or a full conntrack table). Such probes never
    /// left the node.
    pub(crate) refused_sends: Vec<u32>,
}

pub(crate) fn layer_ix(layer: Layer) -> usize {
    Layer::ALL.iter().position(|l| *l == layer).unwrap_or(0)
}

impl<'a> Index<'a> {
    pub(crate) fn new(t: &'a Topology, r: &'a CheckReport) -> Self {
        let names: Vec<&str> = r.nodes.iter().map(|n| n.as_str()).collect();
        let pos: FxMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let n = names.len();
        let mut ix = Index {
            names,
            pos,
            mats: vec![None; Layer::ALL.len()],
            rows: vec![Vec::new(); Layer::ALL.len()],
            cols: vec![Vec::new(); Layer::ALL.len()],
            targets: Vec::new(),
            target_pos: FxMap::default(),
            tcells: FxMap::default(),
            tcols: Vec::new(),
            trows: vec![Vec::new(); n],
            targets_on: vec![Vec::new(); n],
            failing: Vec::new(),
            involved: vec![false; n],
            refused_sends: vec![0; n],
        };
        for (layer, m) in &r.layers {
            let li = layer_ix(*layer);
            ix.mats[li] = Some(m);
            let node_cols = Layer::ICMP.contains(layer);
            if node_cols {
                ix.rows[li] = vec![Vec::new(); n];
                ix.cols[li] = vec![Vec::new(); n];
            }
            // Rows come in name order: look each source up once.
            let mut src: Option<(&str, Option<usize>)> = None;
            for (p, (from, dst, cell)) in m.iter().enumerate() {
                if cell.state == CellState::Unknown {
                    continue;
                }
                let s = match src {
                    Some((name, s)) if name == from => s,
                    _ => {
                        let s = ix.pos.get(from).copied();
                        src = Some((from, s));
                        s
                    }
                };
                let Some(s) = s else {
                    continue;
                };
                let p = p as u32;
                let col = match (node_cols, ix.pos.get(dst).copied()) {
                    (true, Some(d)) => {
                        ix.rows[li][s].push((d as u32, p));
                        ix.cols[li][d].push(s);
                        Col::Node(d)
                    }
                    (true, None) => continue,
                    (false, _) => {
                        let id = ix.target(t, *layer, dst);
                        ix.tcells.insert((id, s), p);
                        ix.tcols[id].push(s);
                        ix.trows[s].push(id);
                        Col::Target(id)
                    }
                };
                if cell.state == CellState::Fail {
                    if cell.failure == Some(meshprobe_core::FailKind::LocalRefusal)
                        && layer.vantage() == meshprobe_core::AgentKind::Host
                    {
                        ix.refused_sends[s] += 1;
                    }
                    ix.failing.push(CellKey {
                        layer: *layer,
                        src: s,
                        col,
                    });
                }
            }
        }
        for layer_rows in &mut ix.rows {
            for row in layer_rows {
                row.sort_unstable_by_key(|(d, _)| *d);
            }
        }
        ix.failing.sort_unstable();
        for (id, t) in ix.targets.iter().enumerate() {
            if let Some(x) = t.node {
                ix.targets_on[x].push(id);
            }
        }
        for i in 0..ix.failing.len() {
            let k = ix.failing[i];
            ix.involved[k.src] = true;
            if let Some(d) = ix.dst_node(k) {
                ix.involved[d] = true;
            }
        }
        ix
    }

    /// Whether node `x` is the source or the destination of a failing cell.
    pub(crate) fn involved(&self, x: usize) -> bool {
        self.involved.get(x).copied().unwrap_or(false)
    }

    /// The id of a target column, added on first sight.
    fn target(&mut self, t: &Topology, layer: Layer, name: &'a str) -> usize {
        if let Some(&id) = self.target_pos.get(&(layer, name)) {
            return id;
        }
        let node = match layer {
            // One column per node: looked up by name, not by a scan of the topology.
            Layer::Nodeport | Layer::NodeportFromPod => {
                self.pos.get(nodeport_column_node(name)).copied()
            }
            _ => target_node(t, layer, name).and_then(|n| self.pos.get(n.as_str()).copied()),
        };
        let id = self.targets.len();
        self.targets.push(Target { layer, name, node });
        self.target_pos.insert((layer, name), id);
        self.tcols.push(Vec::new());
        id
    }
    /// The cell at a position of a layer's matrix.
    fn at(&self, layer: Layer, p: u32) -> Option<CellView<'a>> {
        self.mats[layer_ix(layer)].map(|m| m.at(p as usize))
    }
    pub(crate) fn get(&self, layer: Layer, s: usize, d: usize) -> Option<CellView<'a>> {
        let row = self.rows[layer_ix(layer)].get(s)?;
        let i = row.binary_search_by_key(&(d as u32), |(x, _)| *x).ok()?;
        self.at(layer, row[i].1)
    }
    pub(crate) fn col(&self, layer: Layer, d: usize) -> &[usize] {
        self.cols[layer_ix(layer)].get(d).map_or(&[], Vec::as_slice)
    }
    pub(crate) fn row_targets(&self, layer: Layer, s: usize) -> impl Iterator<Item = usize> + '_ {
        self.rows[layer_ix(layer)]
            .get(s)
            .into_iter()
            .flatten()
            .map(|(d, _)| *d as usize)
    }
    pub(crate) fn row(&self, layer: Layer, s: usize) -> Vec<usize> {
        self.row_targets(layer, s).collect()
    }
    /// Every known cell of a node-column layer: (src, dst, cell).
    pub(crate) fn all(
        &self,
        layer: Layer,
    ) -> impl Iterator<Item = (usize, usize, CellView<'a>)> + '_ {
        let m = self.mats[layer_ix(layer)];
        self.rows[layer_ix(layer)]
            .iter()
            .enumerate()
            .flat_map(move |(s, row)| {
                row.iter()
                    .filter_map(move |&(d, p)| Some((s, d as usize, m?.at(p as usize))))
            })
    }
    /// A target column's id.
    pub(crate) fn target_id(&self, layer: Layer, name: &str) -> Option<usize> {
        self.target_pos.get(&(layer, name)).copied()
    }
    /// Target ids of a layer.
    pub(crate) fn targets_of(&self, layer: Layer) -> Vec<usize> {
        (0..self.targets.len())
            .filter(|&i| self.targets[i].layer == layer)
            .collect()
    }
    /// The targets `s` probed.
    pub(crate) fn trow(&self, s: usize) -> &[usize] {
        self.trows.get(s).map_or(&[], Vec::as_slice)
    }
    /// The targets that live on node `x`.
    pub(crate) fn targets_on(&self, x: usize) -> &[usize] {
        self.targets_on.get(x).map_or(&[], Vec::as_slice)
    }
    /// The sources that probed a target.
    pub(crate) fn tcol(&self, id: usize) -> &[usize] {
        self.tcols.get(id).map_or(&[], Vec::as_slice)
    }
    /// A target cell.
    pub(crate) fn tget(&self, id: usize, s: usize) -> Option<CellView<'a>> {
        let p = *self.tcells.get(&(id, s))?;
        self.at(self.targets[id].layer, p)
    }
    /// Any cell by key.
    pub(crate) fn cell(&self, k: CellKey) -> Option<CellView<'a>> {
        match k.col {
            Col::Node(d) => self.get(k.layer, k.src, d),
            Col::Target(id) => self.tget(id, k.src),
        }
    }
    /// The node a cell's packets are aimed at, when it is one node.
    pub(crate) fn dst_node(&self, k: CellKey) -> Option<usize> {
        match k.col {
            Col::Node(d) => Some(d),
            Col::Target(id) => self.targets[id].node,
        }
    }
    /// A cell's column, as the report names it.
    pub(crate) fn col_name(&self, k: CellKey) -> &'a str {
        match k.col {
            Col::Node(d) => self.names[d],
            Col::Target(id) => self.targets[id].name,
        }
    }
}
