//! Text rendering of a [`CheckReport`] for people: findings first, then one table per layer.

use std::fmt::Write as _;

use crate::layer::Layer;
use crate::matrix::{AgentState, Cell, CellState, CheckReport};
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

fn cell_text(c: &Cell) -> String {
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

/// The most evidence lines the table prints per finding.
const MAX_EVIDENCE_LINES: usize = 12;

/// Remote text, on one line, control characters escaped, bounded.
fn esc(s: &str) -> String {
    printable_line(s, MAX_REMOTE_TEXT)
}

/// The whole report as text. Text that came from agents or the coordinator is printed
/// with its control characters escaped, one line each, bounded.
pub fn render(report: &CheckReport, style: Style) -> String {
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
            for e in f.evidence.iter().take(MAX_EVIDENCE_LINES) {
                let _ = writeln!(out, "   - {}", esc(e));
            }
            if f.evidence.len() > MAX_EVIDENCE_LINES {
                let _ = writeln!(
                    out,
                    "   - ... and {} more lines (--output json has them all)",
                    f.evidence.len() - MAX_EVIDENCE_LINES
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
        let mut columns: Vec<String> = Vec::new();
        if layer.columns_are_nodes() {
            // Node columns in topology order, then anything else (e.g. "n1/web").
            for n in &report.nodes {
                if matrix.values().any(|row| row.contains_key(n.as_str())) {
                    columns.push(n.to_string());
                }
            }
        }
        for row in matrix.values() {
            for c in row.keys() {
                if !columns.contains(c) {
                    columns.push(c.clone());
                }
            }
        }
        let rows: Vec<&str> = report
            .nodes
            .iter()
            .map(|n| n.as_str())
            .filter(|n| matrix.contains_key(*n))
            .collect();
        let first_w = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(7);
        let widths: Vec<usize> = columns
            .iter()
            .map(|c| {
                matrix
                    .values()
                    .filter_map(|row| row.get(c))
                    .map(|cell| cell_text(cell).len())
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
                let cell = matrix.get(*r).and_then(|row| row.get(c));
                let (text, painted) = match cell {
                    None => ("·".to_owned(), style.dim("·")),
                    Some(cell) => {
                        let t = cell_text(cell);
                        let p = match cell.state {
                            CellState::Ok if cell.loss_pct.unwrap_or(0.0) > 0.0 => style.yellow(&t),
                            CellState::Ok => style.green(&t),
                            CellState::Fail => style.red(&t),
                            CellState::Unknown => style.yellow(&t),
                        };
                        if cell.state != CellState::Ok {
                            notes.push(format!(
                                "{r} -> {}: {}/{} ok{}",
                                esc(c),
                                cell.ok,
                                cell.sent,
                                cell.detail
                                    .as_deref()
                                    .map(|d| format!(" ({})", esc(d)))
                                    .unwrap_or_default()
                            ));
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
                "evidence": [evil, "line\nforged line"], "fix": evil
            }],
            "warnings": [evil],
        });
        let report: CheckReport = serde_json::from_value(json).expect("a report");
        let out = render(&report, Style { color: false });
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out}");
        assert!(out.contains("\\u{1b}]0;pwned"), "{out}");
        assert!(!out.contains("\nforged line"), "{out}");
    }
}
