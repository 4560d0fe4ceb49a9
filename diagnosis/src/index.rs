//! The report's known cells, indexed by integer node ids.

use std::collections::{HashMap, HashSet};

use meshprobe_core::Layer;
use meshprobe_core::matrix::{Cell, CellState, CheckReport};

/// FxHash (rustc's hasher): the index's keys are small integers and our own strings, so a
/// fast non-cryptographic hash is right; SipHash would double the diagnosis time.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
}

pub(crate) type FxBuild = std::hash::BuildHasherDefault<Fx>;
pub(crate) type FxMap<K, V> = HashMap<K, V, FxBuild>;
pub(crate) type FxSet<K> = HashSet<K, FxBuild>;

/// The report's known cells, indexed for cheap lookups and per-node rows and columns, so
/// that every detector walks the cells that exist (N x peers), never all N x N pairs.
/// Node-column layers are held as sorted rows (at most a few dozen entries each, binary
/// searched); target columns (DNS, metrics, NodePort, ingress) in a hash map.
pub(crate) struct Index<'a> {
    pub(crate) names: Vec<&'a str>,
    pub(crate) pos: FxMap<&'a str, usize>,
    /// [layer][src] -> (dst, cell), sorted by dst.
    pub(crate) rows: Vec<Vec<Vec<(usize, &'a Cell)>>>,
    /// [layer][dst] -> srcs.
    pub(crate) cols: Vec<Vec<Vec<usize>>>,
    pub(crate) targets: FxMap<(Layer, usize, &'a str), &'a Cell>,
    pub(crate) tcols: FxMap<(Layer, &'a str), Vec<usize>>,
}

pub(crate) fn layer_ix(layer: Layer) -> usize {
    Layer::ALL.iter().position(|l| *l == layer).unwrap_or(0)
}

impl<'a> Index<'a> {
    pub(crate) fn new(r: &'a CheckReport) -> Self {
        let names: Vec<&str> = r.nodes.iter().map(|n| n.as_str()).collect();
        let pos: FxMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let n = names.len();
        let mut rows = vec![Vec::new(); Layer::ALL.len()];
        let mut cols = vec![Vec::new(); Layer::ALL.len()];
        let mut targets = FxMap::default();
        let mut tcols: FxMap<(Layer, &str), Vec<usize>> = FxMap::default();
        for (layer, m) in &r.layers {
            let li = layer_ix(*layer);
            if Layer::ICMP.contains(layer) {
                rows[li] = vec![Vec::new(); n];
                cols[li] = vec![Vec::new(); n];
            }
            for (src, row) in m {
                let Some(&s) = pos.get(src.as_str()) else {
                    continue;
                };
                for (dst, cell) in row {
                    if cell.state == CellState::Unknown {
                        continue;
                    }
                    match (Layer::ICMP.contains(layer), pos.get(dst.as_str()).copied()) {
                        (true, Some(d)) => {
                            rows[li][s].push((d, cell));
                            cols[li][d].push(s);
                        }
                        _ => {
                            targets.insert((*layer, s, dst.as_str()), cell);
                            tcols.entry((*layer, dst.as_str())).or_default().push(s);
                        }
                    }
                }
            }
        }
        for layer_rows in &mut rows {
            for row in layer_rows {
                row.sort_unstable_by_key(|(d, _)| *d);
            }
        }
        Index {
            names,
            pos,
            rows,
            cols,
            targets,
            tcols,
        }
    }
    pub(crate) fn get(&self, layer: Layer, s: usize, d: usize) -> Option<&'a Cell> {
        let row = self.rows[layer_ix(layer)].get(s)?;
        row.binary_search_by_key(&d, |(x, _)| *x)
            .ok()
            .map(|i| row[i].1)
    }
    pub(crate) fn col(&self, layer: Layer, d: usize) -> &[usize] {
        self.cols[layer_ix(layer)].get(d).map_or(&[], Vec::as_slice)
    }
    pub(crate) fn row_targets(&self, layer: Layer, s: usize) -> impl Iterator<Item = usize> + '_ {
        self.rows[layer_ix(layer)]
            .get(s)
            .into_iter()
            .flatten()
            .map(|(d, _)| *d)
    }
    pub(crate) fn row(&self, layer: Layer, s: usize) -> Vec<usize> {
        self.row_targets(layer, s).collect()
    }
    /// Every known cell of a node-column layer: (src, dst, cell).
    pub(crate) fn all(&self, layer: Layer) -> impl Iterator<Item = (usize, usize, &'a Cell)> + '_ {
        self.rows[layer_ix(layer)]
            .iter()
            .enumerate()
            .flat_map(|(s, row)| row.iter().map(move |(d, c)| (s, *d, *c)))
    }
    pub(crate) fn tcol<'s>(&'s self, layer: Layer, col: &'s str) -> &'s [usize] {
        self.tcols.get(&(layer, col)).map_or(&[], Vec::as_slice)
    }
}
