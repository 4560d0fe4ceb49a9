//! A report as JUnit XML (`check --junit FILE`, `--output junit`), the shape CI systems
//! read (Jenkins, GitLab, GitHub's test reporters), as cilium-cli writes it: one testcase
//! per layer and one per finding.
//!
//! - Suite `layers`: a testcase per layer measured; it fails when any of its cells fails
//!   (`type="fail"`) or was not measured (`type="unknown"`, since `check` exits 1 for
//!   those too), with the first failing cells in the body.
//! - Suite `findings`: a testcase per finding, always failing, with its hop, evidence and
//!   fix. A healthy round has an empty `findings` suite.
//!
//! Text is escaped for XML, and characters XML 1.0 cannot carry are dropped.

use std::fmt::Write as _;

use crate::layer::Layer;
use crate::matrix::{CellState, CheckReport};

/// The most failing cells listed in one layer's failure body.
const MAX_CELLS: usize = 50;

/// `s` escaped for XML text and attributes, without characters XML 1.0 forbids, and with
/// what would rewrite a terminal or a CI log showing it (a carriage return, C1 controls,
/// bidirectional and invisible format characters) written out as `\u{..}` text. Tabs and
/// newlines stay: the failure bodies are lines.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 && c != '\r' || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c if c.is_control() || crate::text::is_invisible_format(c) => {
                out.extend(c.escape_default());
            }
            c => out.push(c),
        }
    }
    out
}

/// The report as a JUnit document.
pub fn to_junit(r: &CheckReport) -> String {
    let secs = r.duration_ms as f64 / 1000.0;
    let mut layers = String::new();
    let (mut layer_tests, mut layer_failures) = (0, 0);
    for layer in Layer::ALL {
        let Some(m) = r.layers.get(&layer) else {
            continue;
        };
        layer_tests += 1;
        let cells: Vec<(&str, &str, crate::matrix::CellView<'_>)> = m.iter().collect();
        let fail = cells
            .iter()
            .filter(|c| c.2.state == CellState::Fail)
            .count();
        let unknown = cells
            .iter()
            .filter(|c| c.2.state == CellState::Unknown)
            .count();
        let _ = write!(
            layers,
            "    <testcase classname=\"meshprobe.layer\" name=\"{}\" time=\"0\">",
            escape(layer.as_str())
        );
        if fail + unknown > 0 {
            layer_failures += 1;
            let kind = if fail > 0 { "fail" } else { "unknown" };
            let _ = write!(
                layers,
                "\n      <failure type=\"{kind}\" message=\"{}\">",
                escape(&format!(
                    "{fail} of {} cells fail, {unknown} unknown ({})",
                    cells.len(),
                    layer.describe()
                ))
            );
            for (from, to, c) in cells
                .iter()
                .filter(|c| c.2.state != CellState::Ok)
                .take(MAX_CELLS)
            {
                let _ = writeln!(
                    layers,
                    "{}",
                    escape(&format!(
                        "{from} -> {to}: {}, {}/{} ok{}",
                        match c.state {
                            CellState::Fail => "fail",
                            _ => "unknown",
                        },
                        c.ok,
                        c.sent,
                        c.detail.map(|d| format!(" ({d})")).unwrap_or_default()
                    ))
                );
            }
            layers.push_str("</failure>\n    ");
        }
        layers.push_str("</testcase>\n");
    }
    let mut findings = String::new();
    for f in &r.findings {
        let name = format!(
            "{} {}",
            f.cause,
            f.nodes
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let _ = write!(
            findings,
            "    <testcase classname=\"meshprobe.finding\" name=\"{}\" time=\"0\">\n      <failure type=\"{}\" message=\"{}\">",
            escape(&name),
            escape(f.cause.as_str()),
            escape(&f.summary)
        );
        let _ = writeln!(
            findings,
            "{}",
            escape(&format!("hop: {} ({})", f.hop, f.direction))
        );
        for e in &f.evidence {
            let _ = writeln!(findings, "{}", escape(e));
        }
        let _ = write!(findings, "{}", escape(&format!("next: {}", f.fix)));
        findings.push_str("</failure>\n    </testcase>\n");
    }
    let tests = layer_tests + r.findings.len();
    let failures = layer_failures + r.findings.len();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"meshprobe round {}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" time=\"{secs:.3}\">\n  <testsuite name=\"layers\" tests=\"{layer_tests}\" failures=\"{layer_failures}\" errors=\"0\" skipped=\"0\" time=\"{secs:.3}\">\n{layers}  </testsuite>\n  <testsuite name=\"findings\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\" time=\"0\">\n{findings}  </testsuite>\n</testsuites>\n",
        r.round,
        r.findings.len(),
        r.findings.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_the_document_well_formed() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("x\u{1b}[31my\u{7}"), "x[31my");
        assert_eq!(escape("tab\tnl\n"), "tab\tnl\n");
        // Issue 22, row 8: raw CR and C1 reached the document; bidi and format too.
        assert_eq!(escape("a\rb\u{9b}c"), "a\\rb\\u{9b}c");
        assert_eq!(escape("x\u{202e}y\u{feff}"), "x\\u{202e}y\\u{feff}");
    }
}
