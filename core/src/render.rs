//! Text rendering of a [`CheckReport`] for people: the verdict and the findings first,
//! then the layers. [`render`] is the compact view (`check`'s default): a layer whose
//! cells are all ok is one line, and a layer with failures is a grid of one mark per cell
//! that fits 100 columns at 16 nodes. [`render_wide`] prints every layer's full matrix
//! with RTTs (`check --output wide`).

use std::fmt::Write as _;

use crate::layer::Layer;
use crate::matrix::{AgentState, CellState, CellView, CheckReport};
use crate::text::{MAX_REMOTE_TEXT, printable_line};

/// How to draw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    /// ANSI colours (only on a terminal).
    pub color: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    fn green(self, t: &str) -> String {
        self.paint("32", t)
    }
    fn red(self, t: &str) -> String {
        self.paint("1;31", t)
    }
    fn yellow(self, t: &str) -> String {
        self.paint("33", t)
    }
    fn bold(self, t: &str) -> String {
        self.paint("1", t)
    }
    fn dim(self, t: &str) -> String {
        self.paint("2", t)
    }
}

fn cell_text(c: &CellView<'_>) -> String {
    match c.state {
        CellState::Ok => match (c.rtt_ms, c.loss_pct) {
            (Some(rtt), Some(loss)) if loss > 0.0 => format!("{rtt:.2}ms {loss:.0}%"),
            (Some(rtt), _) => format!("{rtt:.2}ms"),
            _ => "ok".to_owned(),
        },
        CellState::Fail => match c.loss_pct {
            Some(l) if l < 100.0 => format!("LOSS {l:.0}%"),
            _ => "FAIL".to_owned(),
        },
        CellState::Unknown => "?".to_owned(),
    }
}

/// The most rejected alternatives the table prints per finding (JSON has them all).
const MAX_ALTERNATIVE_LINES: usize = 2;

/// The most lines of a finding's own evidence (the nodes' evidence and the reasoning)
/// the table prints; `--output wide` prints every one.
const MAX_FACT_LINES: usize = 16;

/// The most probe-cell lines the table prints per finding, after its own evidence.
const MAX_PROBE_LINES: usize = 3;

/// Remote text, on one line, control characters escaped, bounded.
fn esc(s: &str) -> String {
    printable_line(s, MAX_REMOTE_TEXT)
}

/// The report, compact: verdict, findings, agents, warnings, then one line per healthy
/// layer and a grid per layer with failures. Text that came from agents or the
/// coordinator is printed with its control characters escaped, one line each, bounded.
pub fn render(report: &CheckReport, style: Style) -> String {
    let mut out = head(report, style, Detail::Compact);
    compact_layers(report, style, &mut out);
    out
}

/// The report with every layer's full matrix (RTT and loss per cell), and every line of
/// every finding's evidence.
pub fn render_wide(report: &CheckReport, style: Style) -> String {
    let mut out = head(report, style, Detail::Full);
    wide_layers(report, style, &mut out);
    out
}

/// How much of a finding the table prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detail {
    /// Its own evidence, a few probe cells, two alternatives.
    Compact,
    /// Everything (`--output wide`).
    Full,
}

/// A finding's evidence lines as the table prints them: every line of the nodes' own
/// evidence and the reasoning (up to [`MAX_FACT_LINES`]), then a few of the probe cells
/// that show it, each cut said with where to see the rest.
fn evidence_lines(f: &crate::Finding, detail: Detail) -> Vec<String> {
    let cells = (f.evidence_cells as usize).min(f.evidence.len());
    let (facts, probes) = f.evidence.split_at(f.evidence.len() - cells);
    if detail == Detail::Full {
        return f.evidence.iter().map(|l| esc(l)).collect();
    }
    let mut out: Vec<String> = facts.iter().take(MAX_FACT_LINES).map(|l| esc(l)).collect();
    let more = |n: usize, one: &str, many: &str| {
        format!(
            "... and {n} more {} (--output wide shows them all)",
            if n == 1 { one } else { many }
        )
    };
    if facts.len() > MAX_FACT_LINES {
        out.push(more(
            facts.len() - MAX_FACT_LINES,
            "line of evidence",
            "lines of evidence",
        ));
    }
    out.extend(probes.iter().take(MAX_PROBE_LINES).map(|l| esc(l)));
    if probes.len() > MAX_PROBE_LINES {
        out.push(more(
            probes.len() - MAX_PROBE_LINES,
            "probe line",
            "probe lines",
        ));
    }
    out
}

/// The most failing cells listed under a compact grid.
const MAX_GRID_NOTES: usize = 8;

/// The mark of a cell in the compact grid.
fn mark(c: &CellView<'_>, style: Style) -> String {
    match c.state {
        CellState::Ok if c.loss_pct.unwrap_or(0.0) > 0.0 => style.yellow("~"),
        CellState::Ok => style.green("."),
        CellState::Fail => style.red("X"),
        CellState::Unknown => style.yellow("?"),
    }
}

/// A layer's columns: node columns in topology order, then anything else.
fn columns_of(report: &CheckReport, layer: Layer, matrix: &crate::matrix::Matrix) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut in_order: Vec<&str> = Vec::new();
    for (_, to, _) in matrix.iter() {
        if seen.insert(to) {
            in_order.push(to);
        }
    }
    let mut columns: Vec<String> = Vec::new();
    if layer.columns_are_nodes() {
        for n in &report.nodes {
            if seen.remove(n.as_str()) {
                columns.push(n.to_string());
            }
        }
    }
    columns.extend(
        in_order
            .into_iter()
            .filter(|c| seen.contains(c))
            .map(str::to_owned),
    );
    columns
}

/// A layer's rows, in topology order.
fn rows_of<'a>(report: &'a CheckReport, matrix: &crate::matrix::Matrix) -> Vec<&'a str> {
    report
        .nodes
        .iter()
        .map(|n| n.as_str())
        .filter(|n| matrix.has_row(n))
        .collect()
}

fn note(r: &str, c: &str, cell: &CellView<'_>) -> String {
    format!(
        "{r} -> {}: {}/{} ok{}",
        esc(c),
        cell.ok,
        cell.sent,
        cell.detail
            .map(|d| format!(" ({})", esc(d)))
            .unwrap_or_default()
    )
}

fn compact_layers(report: &CheckReport, style: Style, out: &mut String) {
    let _ = writeln!(
        out,
        "
{} {}",
        style.bold("Layers"),
        style.dim("(. ok  ~ ok with loss  X fail  ? unknown; --output wide for RTTs)")
    );
    for layer in Layer::ALL {
        let Some(matrix) = report.layers.get(&layer) else {
            continue;
        };
        let cells: Vec<CellView<'_>> = matrix.cells().collect();
        let bad = cells.iter().filter(|c| c.state != CellState::Ok).count();
        if bad == 0 {
            let mut rtts: Vec<f64> = cells.iter().filter_map(|c| c.rtt_ms).collect();
            rtts.sort_by(f64::total_cmp);
            let rtt = match (rtts.get(rtts.len() / 2), rtts.last()) {
                (Some(m), Some(x)) => format!(", RTT median {m:.2} ms, max {x:.2} ms"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {} {:<24} {} cells{rtt}",
                style.green("ok  "),
                layer.as_str(),
                cells.len()
            );
            continue;
        }
        let _ = writeln!(
            out,
            "  {} {:<24} {bad} of {} cells fail or unknown {}",
            style.red("FAIL"),
            layer.as_str(),
            cells.len(),
            style.dim(&format!("({})", layer.describe()))
        );
        let columns = columns_of(report, layer, matrix);
        let rows = rows_of(report, matrix);
        let first_w = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(4);
        // Columns by number, named once below the grid.
        let _ = write!(out, "    {:first_w$}", "");
        for i in 1..=columns.len() {
            let _ = write!(out, "{i:>3}");
        }
        out.push('\n');
        let mut notes = Vec::new();
        for r in &rows {
            let _ = write!(out, "    {r:first_w$}");
            for c in &columns {
                let m = match matrix.get(r, c) {
                    None => " ".to_owned(),
                    Some(cell) => {
                        if cell.state != CellState::Ok {
                            notes.push(note(r, c, &cell));
                        }
                        mark(&cell, style)
                    }
                };
                let _ = write!(out, "  {m}");
            }
            out.push('\n');
        }
        let names: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{}={}", i + 1, esc(c)))
            .collect();
        let _ = writeln!(
            out,
            "    {}",
            style.dim(&format!("columns: {}", names.join(" ")))
        );
        for n in notes.iter().take(MAX_GRID_NOTES) {
            let _ = writeln!(out, "    {}", style.dim(n));
        }
        if notes.len() > MAX_GRID_NOTES {
            let _ = writeln!(
                out,
                "    {}",
                style.dim(&format!(
                    "... and {} more cells",
                    notes.len() - MAX_GRID_NOTES
                ))
            );
        }
    }
}

/// The verdict, the findings, the agents not reporting and the warnings.
fn head(report: &CheckReport, style: Style, detail: Detail) -> String {
    let mut out = String::new();
    let (ok, fail, unknown) = report.counts();
    let total = ok + fail + unknown;
    let verdict = if report.healthy {
        style.green(&format!("HEALTHY: all {total} cells ok"))
    } else {
        style.red(&format!(
            "NOT HEALTHY: {fail} of {total} cells fail, {unknown} unknown"
        ))
    };
    let _ = writeln!(
        out,
        "{} round {}, {} nodes, {:.2} s: {verdict}",
        style.bold("meshprobe check:"),
        report.round,
        report.nodes.len(),
        report.duration_ms as f64 / 1000.0
    );

    if !report.findings.is_empty() {
        let _ = writeln!(out, "\n{}", style.bold("Findings"));
        for (i, f) in report.findings.iter().enumerate() {
            let _ = writeln!(
                out,
                "{}. {} [{}]",
                i + 1,
                style.red(&esc(&f.summary)),
                esc(f.cause.as_str())
            );
            let _ = writeln!(
                out,
                "   hop: {} (direction: {})",
                esc(&f.hop),
                esc(f.direction.as_str())
            );
            for e in evidence_lines(f, detail) {
                let _ = writeln!(out, "   - {e}");
            }
            let alternatives = match detail {
                Detail::Compact => MAX_ALTERNATIVE_LINES,
                Detail::Full => usize::MAX,
            };
            for a in f.alternatives.iter().take(alternatives) {
                let _ = writeln!(
                    out,
                    "   ruled out {} on {}: {}",
                    esc(a.cause.as_str()),
                    esc(&a
                        .nodes
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")),
                    esc(&a.rejected_by)
                );
            }
            let _ = writeln!(out, "   next: {}", esc(&f.fix));
        }
    }

    let troubled: Vec<String> = report
        .agents
        .iter()
        .flat_map(|(node, a)| {
            [("host", a.host), ("pod", a.pod)]
                .into_iter()
                .filter_map(move |(kind, s)| match s {
                    AgentState::Reported => None,
                    AgentState::Silent => Some(format!("{node}/{kind} silent")),
                    AgentState::Absent => Some(format!("{node}/{kind} absent")),
                })
        })
        .collect();
    if !troubled.is_empty() {
        let _ = writeln!(
            out,
            "\n{} {}",
            style.yellow("agents not reporting:"),
            troubled.join(", ")
        );
    }
    for w in &report.warnings {
        let _ = writeln!(out, "{} {}", style.yellow("warning:"), esc(w));
    }
    out
}

fn wide_layers(report: &CheckReport, style: Style, out: &mut String) {
    for layer in Layer::ALL {
        let Some(matrix) = report.layers.get(&layer) else {
            continue;
        };
        let _ = writeln!(
            out,
            "\n{} {}",
            style.bold(layer.as_str()),
            style.dim(&format!("({})", layer.describe()))
        );
        let columns = columns_of(report, layer, matrix);
        let rows = rows_of(report, matrix);
        let first_w = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(7);
        let widths: Vec<usize> = columns
            .iter()
            .map(|c| {
                matrix
                    .iter()
                    .filter(|(_, to, _)| to == c)
                    .map(|(_, _, cell)| cell_text(&cell).len())
                    .max()
                    .unwrap_or(1)
                    .max(c.len())
            })
            .collect();
        let _ = write!(out, "  {:first_w$}", "from\\to");
        for (c, w) in columns.iter().zip(&widths) {
            let _ = write!(out, "  {:>w$}", esc(c));
        }
        out.push('\n');
        let mut notes = Vec::new();
        for r in &rows {
            let _ = write!(out, "  {r:first_w$}");
            for (c, w) in columns.iter().zip(&widths) {
                let cell = matrix.get(r, c);
                let (text, painted) = match cell {
                    None => ("·".to_owned(), style.dim("·")),
                    Some(cell) => {
                        let t = cell_text(&cell);
                        let p = match cell.state {
                            CellState::Ok if cell.loss_pct.unwrap_or(0.0) > 0.0 => style.yellow(&t),
                            CellState::Ok => style.green(&t),
                            CellState::Fail => style.red(&t),
                            CellState::Unknown => style.yellow(&t),
                        };
                        if cell.state != CellState::Ok {
                            notes.push(note(r, c, &cell));
                        }
                        (t, p)
                    }
                };
                let pad = w.saturating_sub(text.chars().count());
                let _ = write!(out, "  {}{painted}", " ".repeat(pad));
            }
            out.push('\n');
        }
        for n in notes {
            let _ = writeln!(out, "    {}", style.dim(&n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: at 16 nodes with a node down, the compact table fits 100 columns, leads
    /// with the verdict, and gives healthy layers one line each.
    #[test]
    fn the_compact_table_fits_100_columns_at_16_nodes() {
        let nodes: Vec<String> = (1..=16).map(|i| format!("worker-{i:02}")).collect();
        let mut layers = serde_json::Map::new();
        for (layer, broken) in [("underlay", false), ("pod-to-pod", true)] {
            let mut m = serde_json::Map::new();
            for a in &nodes {
                let mut row = serde_json::Map::new();
                for b in &nodes {
                    let fail = broken && (b == "worker-07" || a == "worker-07") && a != b;
                    row.insert(
                        b.clone(),
                        serde_json::json!({
                            "state": if fail { "fail" } else { "ok" },
                            "lossPct": if fail { 100.0 } else { 0.0 },
                            "rttMs": if fail { None } else { Some(0.42) },
                            "sent": 20, "ok": if fail { 0 } else { 20 },
                            "detail": if fail { Some("timeout") } else { None },
                        }),
                    );
                }
                m.insert(a.clone(), serde_json::Value::Object(row));
            }
            layers.insert(layer.to_owned(), serde_json::Value::Object(m));
        }
        let report: CheckReport = serde_json::from_value(serde_json::json!({
            "healthy": false, "round": 9, "nodes": nodes, "layers": layers, "findings": [],
        }))
        .expect("a report");
        let out = render(&report, Style { color: false });
        let widest = out.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        let grid = out
            .lines()
            .filter(|l| l.trim_start().starts_with("worker-") && !l.contains("->"))
            .count();
        assert!(out.starts_with("meshprobe check: round 9"), "{out}");
        assert_eq!(grid, 16, "one grid, for the failing layer only: {out}");
        assert!(out.contains("ok   underlay"), "{out}");
        // The grid lines fit; the column legend may wrap only past them.
        let grid_widest = out
            .lines()
            .filter(|l| l.trim_start().starts_with("worker-") || l.trim_start().starts_with('1'))
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0);
        assert!(grid_widest <= 100, "{grid_widest} columns: {out}");
        assert!(widest < 400, "{widest}");
        assert!(
            out.contains("... and"),
            "at most {MAX_GRID_NOTES} cells listed: {out}"
        );
        assert!(render_wide(&report, Style { color: false }).lines().count() > out.lines().count());
    }

    #[test]
    fn remote_text_never_reaches_the_terminal_as_escape_sequences() {
        let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J";
        let json = serde_json::json!({
            "healthy": false,
            "round": 1,
            "nodes": ["n1", "n2"],
            "layers": {"dns-service": {"n1": {"kube-dns\u{1b}[31m": {
                "state": "fail", "lossPct": 100.0, "sent": 3, "ok": 0,
                "detail": evil
            }}}},
            "findings": [{
                "cause": format!("x{evil}"), "nodes": ["n1"], "peers": [],
                "direction": "inbound", "hop": evil, "summary": evil,
                "evidence": [evil, "line\nforged line"], "fix": evil,
                "alternatives": [{"cause": evil, "nodes": ["n2"], "rejectedBy": evil}]
            }],
            "warnings": [evil],
        });
        let report: CheckReport = serde_json::from_value(json).expect("a report");
        for out in [
            render(&report, Style { color: false }),
            render_wide(&report, Style { color: false }),
        ] {
            assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out}");
            assert!(out.contains("\\u{1b}]0;pwned"), "{out}");
            assert!(!out.contains("\nforged line"), "{out}");
            assert!(out.contains("   ruled out \\u{1b}]0;pwned"), "{out}");
        }
    }
}
