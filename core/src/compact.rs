//! A layer's matrix as small fixed-size records.
//!
//! A 5,000-node round has over a million cells. Held as maps of maps keyed by names, with
//! each cell's own heap strings, it took about 560 bytes a cell (729 MiB a round). Here a
//! cell is a 24-byte [`Rec`]: integer row and column ids into one sorted name table, the
//! loss in hundredths of a percent, the RTT in microseconds, the counts, and an id into
//! the matrix's table of distinct details ("timeout" is stored once per layer, not once
//! per cell). Names appear only at the JSON edge: [`Matrix`] serialises to, and reads
//! from, exactly the nested `{"src": {"dst": cell}}` maps of CONTRACT §3.
//!
//! The encoding is lossless for every cell [`Cell::from_result`] makes: it already rounds
//! loss to hundredths and RTT to microseconds. Counts above 65,535 probes a cell saturate.

use crate::fxhash::FxMap;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::failure::FailKind;
use crate::matrix::{Cell, CellState};

const NONE_U16: u16 = u16::MAX;
const NONE_U32: u32 = u32::MAX;

/// One cell as a fixed-size record (24 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rec {
    from: u32,
    to: u32,
    /// Mean RTT in microseconds; [`NONE_U32`]: none.
    rtt_us: u32,
    /// Index into [`Matrix::details`]; [`NONE_U32`]: none.
    detail: u32,
    /// Loss in hundredths of a percent; [`NONE_U16`]: none.
    loss_cpct: u16,
    sent: u16,
    ok: u16,
    state: CellState,
    /// [`FailKind::code`]; 0: none. Fills the record's last byte.
    failure: u8,
}

/// A cell read out of a [`Matrix`]: the fields of [`Cell`], its detail borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CellView<'a> {
    /// ok / fail / unknown.
    pub state: CellState,
    /// Share of probes that failed, in percent.
    pub loss_pct: Option<f64>,
    /// Mean RTT of the successful probes, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Probes sent.
    pub sent: u32,
    /// Probes that succeeded.
    pub ok: u32,
    /// The last failure or why the cell is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
    /// What the last failure met, as a type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailKind>,
}

impl CellView<'_> {
    /// The owned cell.
    pub fn to_cell(&self) -> Cell {
        Cell {
            state: self.state,
            loss_pct: self.loss_pct,
            rtt_ms: self.rtt_ms,
            sent: self.sent,
            ok: self.ok,
            detail: self.detail.map(str::to_owned),
            failure: self.failure,
        }
    }
}

/// One layer's matrix: rows are source nodes, columns nodes or targets, in name order.
///
/// Build a large one with [`MatrixBuilder`]; [`Matrix::insert`] is for small edits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matrix {
    /// Every row and column name, sorted and distinct: ids are positions here, so id
    /// order is name order.
    names: Vec<Box<str>>,
    /// Sorted by (from, to), one per cell.
    recs: Vec<Rec>,
    /// Distinct details, sorted.
    details: Vec<Box<str>>,
}

impl Matrix {
    /// Cells in the matrix.
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// Whether it has no cell.
    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// Bytes the matrix holds on the heap (for the benchmarks' accounting).
    pub fn heap_bytes(&self) -> usize {
        let strs =
            |v: &[Box<str>]| v.iter().map(|s| s.len()).sum::<usize>() + std::mem::size_of_val(v);
        strs(&self.names) + strs(&self.details) + std::mem::size_of_val(self.recs.as_slice())
    }

    fn id(&self, name: &str) -> Option<u32> {
        self.names
            .binary_search_by(|n| (**n).cmp(name))
            .ok()
            .map(|i| i as u32)
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    fn view(&self, r: &Rec) -> CellView<'_> {
        CellView {
            state: r.state,
            loss_pct: (r.loss_cpct != NONE_U16).then(|| f64::from(r.loss_cpct) / 100.0),
            rtt_ms: (r.rtt_us != NONE_U32).then(|| f64::from(r.rtt_us) / 1000.0),
            sent: u32::from(r.sent),
            ok: u32::from(r.ok),
            detail: (r.detail != NONE_U32).then(|| &*self.details[r.detail as usize]),
            failure: FailKind::from_code(r.failure),
        }
    }

    /// The records of row `from`.
    fn row_recs(&self, from: u32) -> &[Rec] {
        let lo = self.recs.partition_point(|r| r.from < from);
        let hi = self.recs.partition_point(|r| r.from <= from);
        &self.recs[lo..hi]
    }

    /// The cell at (from, to).
    pub fn get(&self, from: &str, to: &str) -> Option<CellView<'_>> {
        self.position(from, to).map(|p| self.at(p))
    }

    /// The position of the cell at (from, to), for [`Matrix::at`].
    pub fn position(&self, from: &str, to: &str) -> Option<usize> {
        let (f, t) = (self.id(from)?, self.id(to)?);
        self.recs
            .binary_search_by(|r| (r.from, r.to).cmp(&(f, t)))
            .ok()
    }

    /// The cell at a position (`0..len()`, in (row, column) name order).
    ///
    /// # Panics
    /// When `pos` is out of range, as slice indexing does.
    pub fn at(&self, pos: usize) -> CellView<'_> {
        self.view(&self.recs[pos])
    }

    /// Every cell as (row, column, cell), in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, CellView<'_>)> + '_ {
        self.recs
            .iter()
            .map(|r| (self.name(r.from), self.name(r.to), self.view(r)))
    }

    /// Every cell.
    pub fn cells(&self) -> impl Iterator<Item = CellView<'_>> + '_ {
        self.recs.iter().map(|r| self.view(r))
    }

    /// Whether `from` has a row.
    pub fn has_row(&self, from: &str) -> bool {
        self.id(from).is_some_and(|f| !self.row_recs(f).is_empty())
    }

    /// Row `from` as (column, cell), in column order; empty when it has none.
    pub fn row(&self, from: &str) -> impl Iterator<Item = (&str, CellView<'_>)> + '_ {
        let recs = self.id(from).map_or(&[][..], |f| self.row_recs(f));
        recs.iter().map(|r| (self.name(r.to), self.view(r)))
    }

    /// The rows' names, in order.
    pub fn row_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.recs
            .chunk_by(|a, b| a.from == b.from)
            .map(|row| self.name(row[0].from))
    }

    /// Sets the cell at (from, to). Rebuilds the matrix: for small edits (tests, fixtures);
    /// build a large matrix with [`MatrixBuilder`].
    pub fn insert(&mut self, from: &str, to: &str, cell: &Cell) {
        let mut b = MatrixBuilder::default();
        for (f, t, c) in self.iter() {
            b.push_view(f, t, c);
        }
        b.push(from, to, cell);
        *self = b.finish();
    }
}

/// Builds a [`Matrix`] from cells in any order; a later cell at the same place replaces
/// an earlier one.
#[derive(Default)]
pub struct MatrixBuilder {
    names: FxMap<Box<str>, u32>,
    details: FxMap<Box<str>, u32>,
    recs: Vec<Rec>,
}

fn intern(table: &mut FxMap<Box<str>, u32>, s: &str) -> u32 {
    if let Some(&id) = table.get(s) {
        return id;
    }
    let id = table.len() as u32;
    table.insert(s.into(), id);
    id
}

fn sat16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX - 1)
}

impl MatrixBuilder {
    /// Adds a cell.
    pub fn push(&mut self, from: &str, to: &str, cell: &Cell) {
        self.push_fields(
            from,
            to,
            (cell.state, cell.loss_pct, cell.rtt_ms),
            (cell.sent, cell.ok),
            (cell.detail.as_deref(), cell.failure),
        );
    }

    /// Adds a cell read out of another matrix.
    pub fn push_view(&mut self, from: &str, to: &str, cell: CellView<'_>) {
        self.push_fields(
            from,
            to,
            (cell.state, cell.loss_pct, cell.rtt_ms),
            (cell.sent, cell.ok),
            (cell.detail, cell.failure),
        );
    }

    fn push_fields(
        &mut self,
        from: &str,
        to: &str,
        (state, loss, rtt): (CellState, Option<f64>, Option<f64>),
        (sent, ok): (u32, u32),
        (detail, failure): (Option<&str>, Option<FailKind>),
    ) {
        let from = intern(&mut self.names, from);
        let to = intern(&mut self.names, to);
        let detail = detail.map_or(NONE_U32, |d| intern(&mut self.details, d));
        // Both clamps keep clear of the "none" markers.
        let loss_cpct = loss.map_or(NONE_U16, |l| {
            (l * 100.0).round().clamp(0.0, 10_000.0) as u16
        });
        let rtt_us = rtt.map_or(NONE_U32, |r| {
            (r * 1000.0).round().clamp(0.0, f64::from(NONE_U32 - 1)) as u32
        });
        self.recs.push(Rec {
            from,
            to,
            rtt_us,
            detail,
            loss_cpct,
            sent: sat16(sent),
            ok: sat16(ok),
            state,
            failure: failure.map_or(0, FailKind::code),
        });
    }

    /// Cells added so far (counting replaced ones).
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// The matrix, in canonical form: equal contents give equal matrices.
    pub fn finish(self) -> Matrix {
        let (names, name_map) = sorted(self.names);
        let (details, detail_map) = sorted(self.details);
        let mut recs = self.recs;
        for r in &mut recs {
            r.from = name_map[r.from as usize];
            r.to = name_map[r.to as usize];
            if r.detail != NONE_U32 {
                r.detail = detail_map[r.detail as usize];
            }
        }
        // Stable: among equal places the last pushed is last, and is the one kept.
        recs.sort_by_key(|r| (r.from, r.to));
        let mut kept: Vec<Rec> = Vec::with_capacity(recs.len());
        for r in recs {
            match kept.last_mut() {
                Some(k) if (k.from, k.to) == (r.from, r.to) => *k = r,
                _ => kept.push(r),
            }
        }
        kept.shrink_to_fit();
        // A replaced cell may leave a detail nobody uses: harmless, and rare.
        Matrix {
            names,
            recs: kept,
            details,
        }
    }
}

/// The table's strings sorted, and each old id's new id.
fn sorted(table: FxMap<Box<str>, u32>) -> (Vec<Box<str>>, Vec<u32>) {
    let mut entries: Vec<(Box<str>, u32)> = table.into_iter().collect();
    entries.sort_unstable();
    let mut map = vec![0; entries.len()];
    let mut out = Vec::with_capacity(entries.len());
    for (new, (s, old)) in entries.into_iter().enumerate() {
        map[old as usize] = new as u32;
        out.push(s);
    }
    (out, map)
}

struct Row<'a>(&'a Matrix, &'a [Rec]);

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.1.len()))?;
        for r in self.1 {
            map.serialize_entry(self.0.name(r.to), &self.0.view(r))?;
        }
        map.end()
    }
}

impl Serialize for Matrix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let rows = self.recs.chunk_by(|a, b| a.from == b.from);
        let mut map = s.serialize_map(None)?;
        for row in rows {
            map.serialize_entry(self.name(row[0].from), &Row(self, row))?;
        }
        map.end()
    }
}

struct RowSeed<'b> {
    from: &'b str,
    b: &'b mut MatrixBuilder,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row: a map of column name to cell")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some((to, cell)) = map.next_entry::<String, Cell>()? {
            self.b.push(self.from, &to, &cell);
        }
        Ok(())
    }
}

struct MatrixVisitor;

impl<'de> Visitor<'de> for MatrixVisitor {
    type Value = Matrix;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a matrix: a map of row name to row")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Matrix, A::Error> {
        let mut b = MatrixBuilder::default();
        while let Some(from) = map.next_key::<String>()? {
            map.next_value_seed(RowSeed {
                from: &from,
                b: &mut b,
            })?;
        }
        Ok(b.finish())
    }
}

impl<'de> Deserialize<'de> for Matrix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MatrixVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn cell(state: CellState, loss: Option<f64>, rtt: Option<f64>, detail: Option<&str>) -> Cell {
        Cell {
            state,
            loss_pct: loss,
            rtt_ms: rtt,
            sent: 20,
            ok: 15,
            failure: detail.map(|_| crate::FailKind::Timeout),
            detail: detail.map(str::to_owned),
        }
    }

    #[test]
    fn a_record_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Rec>(), 24);
    }

    #[test]
    fn cells_round_trip_exactly_and_in_name_order() {
        let cells = [
            (
                "b",
                "a",
                cell(CellState::Fail, Some(33.33), None, Some("timeout")),
            ),
            ("a", "c", cell(CellState::Ok, Some(0.0), Some(0.123), None)),
            (
                "a",
                "b",
                cell(CellState::Ok, Some(5.0), Some(1234.567), None),
            ),
            (
                "c",
                "a",
                cell(CellState::Unknown, None, None, Some("not running")),
            ),
            (
                "b",
                "c",
                cell(CellState::Fail, Some(100.0), None, Some("timeout")),
            ),
        ];
        let mut b = MatrixBuilder::default();
        for (f, t, c) in &cells {
            b.push(f, t, c);
        }
        let m = b.finish();
        assert_eq!(m.len(), 5);
        assert_eq!(m.details.len(), 2, "one copy of each distinct detail");
        for (f, t, c) in &cells {
            assert_eq!(
                m.get(f, t).map(|v| v.to_cell()).as_ref(),
                Some(c),
                "{f}->{t}"
            );
        }
        let order: Vec<(&str, &str)> = m.iter().map(|(f, t, _)| (f, t)).collect();
        assert_eq!(
            order,
            [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a")]
        );
        assert_eq!(m.row_names().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(m.row("b").map(|(t, _)| t).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(m.get("a", "a"), None);
        assert_eq!(m.get("x", "a"), None);
        assert!(m.has_row("c") && !m.has_row("x"));
    }

    #[test]
    fn json_is_the_contracts_nested_maps_and_reads_back_equal() {
        let mut m = Matrix::default();
        m.insert(
            "n2",
            "n1",
            &cell(CellState::Fail, Some(25.0), None, Some("timeout")),
        );
        m.insert(
            "n1",
            "n2",
            &cell(CellState::Ok, Some(0.0), Some(0.25), None),
        );
        let v = serde_json::to_value(&m).expect("serialise");
        assert_eq!(
            v,
            serde_json::json!({
                "n1": {"n2": {"state": "ok", "lossPct": 0.0, "rttMs": 0.25, "sent": 20, "ok": 15}},
                "n2": {"n1": {"state": "fail", "lossPct": 25.0, "rttMs": null, "sent": 20, "ok": 15, "detail": "timeout", "failure": "timeout"}}
            })
        );
        let back: Matrix = serde_json::from_value(v).expect("deserialise");
        assert_eq!(back, m);
    }

    #[test]
    fn a_later_cell_replaces_an_earlier_one_and_order_does_not_matter() {
        let ok = cell(CellState::Ok, Some(0.0), Some(0.5), None);
        let bad = cell(CellState::Fail, Some(50.0), None, Some("refused"));
        let mut x = MatrixBuilder::default();
        x.push("a", "b", &bad);
        x.push("a", "b", &ok);
        x.push("b", "a", &ok);
        let mut y = MatrixBuilder::default();
        y.push("b", "a", &ok);
        y.push("a", "b", &ok);
        let (x, y) = (x.finish(), y.finish());
        assert_eq!(x.len(), 2);
        assert_eq!(x.get("a", "b").map(|c| c.state), Some(CellState::Ok));
        assert_eq!(x.iter().collect::<Vec<_>>(), y.iter().collect::<Vec<_>>());
    }

    #[test]
    fn every_failure_kind_survives_the_record_and_the_json() {
        for kind in crate::FailKind::ALL {
            let mut c = cell(CellState::Fail, Some(100.0), None, Some("words"));
            c.failure = Some(kind);
            let mut m = Matrix::default();
            m.insert("a", "b", &c);
            assert_eq!(m.get("a", "b").and_then(|v| v.failure), Some(kind));
            let back: Matrix = serde_json::from_value(serde_json::to_value(&m).expect("serialise"))
                .expect("deserialise");
            assert_eq!(back, m, "{kind}");
        }
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let mut c = cell(CellState::Ok, Some(0.0), None, None);
        c.sent = 70_000;
        c.ok = 70_000;
        let mut m = Matrix::default();
        m.insert("a", "b", &c);
        let v = m.get("a", "b").expect("present");
        assert_eq!((v.sent, v.ok), (65_534, 65_534));
    }
}
