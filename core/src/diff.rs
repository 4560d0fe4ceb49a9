//! Before and after a change: what differs between a baseline round and a new one
//! (`check --baseline NAME`).
//!
//! - **Broke**: a cell `ok` in the baseline and `fail` now.
//! - **Recovered**: `fail` in the baseline and `ok` now.
//! - **Latency shifts**: a cell `ok` in both whose mean RTT moved by at least
//!   [`RTT_SHIFT_MS`] *and* by a factor of at least [`RTT_SHIFT_RATIO`] either way. Both
//!   must hold: sub-millisecond RTTs double on noise alone, and a 2 ms move on a 100 ms
//!   path is noise too.
//! - Findings that are new, and findings that are gone (by cause and nodes).
//!
//! Cells only one of the two rounds has (a node joined or left) are counted, not listed.

use serde::{Deserialize, Serialize};

use crate::matrix::{CellState, CellView, CheckReport};
use crate::{Cause, Layer, NodeName};

/// The least RTT change, in milliseconds, that counts as a shift.
pub const RTT_SHIFT_MS: f64 = 2.0;
/// The least RTT ratio (after/before or before/after) that counts as a shift.
pub const RTT_SHIFT_RATIO: f64 = 1.5;
/// The most cells listed per kind of change (the counts have them all).
pub const MAX_LISTED: usize = 200;

/// One cell that changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CellChange {
    /// Its layer.
    pub layer: Layer,
    /// Its row.
    pub from: String,
    /// Its column.
    pub to: String,
    /// Its mean RTT in the baseline.
    pub before_rtt_ms: Option<f64>,
    /// Its mean RTT now.
    pub after_rtt_ms: Option<f64>,
    /// Its loss now.
    pub after_loss_pct: Option<f64>,
    /// The last failure now (or in the baseline, for a recovered cell).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A finding by what identifies it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FindingId {
    /// Its cause.
    pub cause: Cause,
    /// Its nodes.
    pub nodes: Vec<NodeName>,
    /// Its peers.
    pub peers: Vec<NodeName>,
    /// Its summary (from the round that has it).
    pub summary: String,
}

/// What changed from `baseline_round` to `round`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportDiff {
    /// The baseline's name, where the caller knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_name: Option<String>,
    /// When the baseline was saved (milliseconds since the Unix epoch), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_saved_ms: Option<u64>,
    /// The baseline's round.
    pub baseline_round: u64,
    /// The new round.
    pub round: u64,
    /// Cells that broke (at most [`MAX_LISTED`]).
    pub broke: Vec<CellChange>,
    /// How many broke.
    pub broke_count: usize,
    /// Cells that recovered (at most [`MAX_LISTED`]).
    pub recovered: Vec<CellChange>,
    /// How many recovered.
    pub recovered_count: usize,
    /// Cells whose latency shifted (at most [`MAX_LISTED`], biggest ratio first, slower
    /// or faster: see [`CellChange::slower`]).
    pub latency: Vec<CellChange>,
    /// How many shifted.
    pub latency_count: usize,
    /// How many of them got slower (the rest got faster).
    #[serde(default)]
    pub latency_slower: usize,
    /// Cells in only one of the two rounds.
    pub unmatched_cells: usize,
    /// Findings the new round has and the baseline had not.
    pub new_findings: Vec<FindingId>,
    /// Findings the baseline had and the new round has not.
    pub gone_findings: Vec<FindingId>,
}

impl CellChange {
    /// Its RTT ratio, now over the baseline's (above 1: slower), where both are known.
    pub fn rtt_ratio(&self) -> Option<f64> {
        match (self.before_rtt_ms, self.after_rtt_ms) {
            (Some(b), Some(a)) if b > 0.0 && a > 0.0 => Some(a / b),
            _ => None,
        }
    }

    /// Whether it got slower than the baseline.
    pub fn slower(&self) -> bool {
        matches!((self.before_rtt_ms, self.after_rtt_ms), (Some(b), Some(a)) if a > b)
    }
}

impl ReportDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.broke_count == 0
            && self.recovered_count == 0
            && self.latency_count == 0
            && self.new_findings.is_empty()
            && self.gone_findings.is_empty()
    }
}

fn shifted(before: f64, after: f64) -> bool {
    let (lo, hi) = if before <= after {
        (before, after)
    } else {
        (after, before)
    };
    hi - lo >= RTT_SHIFT_MS && (lo <= 0.0 || hi / lo >= RTT_SHIFT_RATIO)
}

fn ids(r: &CheckReport) -> Vec<FindingId> {
    let mut v: Vec<FindingId> = r
        .findings
        .iter()
        .map(|f| FindingId {
            cause: f.cause.clone(),
            nodes: f.nodes.clone(),
            peers: f.peers.clone(),
            summary: f.summary.clone(),
        })
        .collect();
    v.sort();
    v
}

/// What changed from `before` to `after`.
pub fn compare(before: &CheckReport, after: &CheckReport) -> ReportDiff {
    let mut d = ReportDiff {
        baseline_round: before.round,
        round: after.round,
        ..ReportDiff::default()
    };
    let mut latency: Vec<(f64, CellChange)> = Vec::new();
    // A summarised report lists only the cells that are not ok: one it leaves out of a
    // layer whose ok cells it counted was ok (with no RTT to compare), not unmatched.
    let implied_ok = |r: &CheckReport, layer: &Layer| {
        r.summary
            .as_ref()
            .is_some_and(|s| s.ok_cells_omitted.get(layer).is_some_and(|&n| n > 0))
    };
    let ok_cell = CellView {
        state: CellState::Ok,
        loss_pct: Some(0.0),
        rtt_ms: None,
        sent: 0,
        ok: 0,
        detail: None,
        failure: None,
    };
    for (layer, matrix) in &after.layers {
        {
            for (from, to, now) in matrix.iter() {
                let was = before
                    .layers
                    .get(layer)
                    .and_then(|m| m.get(from, to))
                    .or_else(|| implied_ok(before, layer).then_some(ok_cell));
                let Some(was) = was else {
                    d.unmatched_cells += 1;
                    continue;
                };
                let change = |detail: Option<&str>| CellChange {
                    layer: *layer,
                    from: from.to_owned(),
                    to: to.to_owned(),
                    before_rtt_ms: was.rtt_ms,
                    after_rtt_ms: now.rtt_ms,
                    after_loss_pct: now.loss_pct,
                    detail: detail.map(str::to_owned),
                };
                match (was.state, now.state) {
                    (CellState::Ok, CellState::Fail) => {
                        d.broke_count += 1;
                        if d.broke.len() < MAX_LISTED {
                            d.broke.push(change(now.detail));
                        }
                    }
                    (CellState::Fail, CellState::Ok) => {
                        d.recovered_count += 1;
                        if d.recovered.len() < MAX_LISTED {
                            d.recovered.push(change(was.detail));
                        }
                    }
                    (CellState::Ok, CellState::Ok) => {
                        if let (Some(b), Some(a)) = (was.rtt_ms, now.rtt_ms)
                            && shifted(b, a)
                        {
                            let ratio = if b > 0.0 && a > 0.0 {
                                (a / b).max(b / a)
                            } else {
                                f64::INFINITY
                            };
                            latency.push((ratio, change(None)));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    for (layer, matrix) in &before.layers {
        for (from, to, was) in matrix.iter() {
            let in_after = after
                .layers
                .get(layer)
                .is_some_and(|m| m.position(from, to).is_some());
            if in_after {
                continue;
            }
            if !implied_ok(after, layer) {
                d.unmatched_cells += 1;
            } else if was.state == CellState::Fail {
                d.recovered_count += 1;
                if d.recovered.len() < MAX_LISTED {
                    d.recovered.push(CellChange {
                        layer: *layer,
                        from: from.to_owned(),
                        to: to.to_owned(),
                        before_rtt_ms: was.rtt_ms,
                        after_rtt_ms: None,
                        after_loss_pct: Some(0.0),
                        detail: was.detail.map(str::to_owned),
                    });
                }
            }
        }
    }
    d.latency_count = latency.len();
    d.latency_slower = latency.iter().filter(|(_, c)| c.slower()).count();
    // Biggest change first; equal ones in the matrix's order (layer, row, column).
    latency.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| (a.1.layer, &a.1.from, &a.1.to).cmp(&(b.1.layer, &b.1.from, &b.1.to)))
    });
    d.latency = latency
        .into_iter()
        .take(MAX_LISTED)
        .map(|(_, c)| c)
        .collect();
    let (was, now) = (ids(before), ids(after));
    let key = |f: &FindingId| (f.cause.clone(), f.nodes.clone(), f.peers.clone());
    d.new_findings = now
        .iter()
        .filter(|f| !was.iter().any(|w| key(w) == key(f)))
        .cloned()
        .collect();
    d.gone_findings = was
        .iter()
        .filter(|f| !now.iter().any(|n| key(n) == key(f)))
        .cloned()
        .collect();
    d
}

/// The diff for people: counts first, then the cells (at most `limit` of each kind).
pub fn render_diff(d: &ReportDiff, limit: usize) -> String {
    let p = |s: &str| crate::text::printable_line(s, crate::text::MAX_REMOTE_TEXT);
    use std::fmt::Write as _;
    let mut out = String::new();
    let baseline = match (&d.baseline_name, d.baseline_saved_ms) {
        (Some(name), Some(at)) => format!(
            "baseline {} (round {}, saved {})",
            p(name),
            d.baseline_round,
            crate::text::utc(at)
        ),
        (Some(name), None) => format!("baseline {} (round {})", p(name), d.baseline_round),
        (None, _) => format!("baseline round {}", d.baseline_round),
    };
    let _ = writeln!(
        out,
        "Since {baseline}: {} cells broke, {} recovered, {} latency shifts{} (>= {RTT_SHIFT_MS} ms and x{RTT_SHIFT_RATIO}){}",
        d.broke_count,
        d.recovered_count,
        d.latency_count,
        if d.latency_count > 0 {
            format!(
                ", {} slower and {} faster",
                d.latency_slower,
                d.latency_count - d.latency_slower.min(d.latency_count)
            )
        } else {
            String::new()
        },
        if d.unmatched_cells > 0 {
            format!(
                ", {} cells in only one of the two rounds",
                d.unmatched_cells
            )
        } else {
            String::new()
        }
    );
    if d.is_empty() {
        let _ = writeln!(out, "  nothing changed");
    }
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}ms"));
    let mut section =
        |title: &str, cells: &[CellChange], count: usize, line: &dyn Fn(&CellChange) -> String| {
            if count == 0 {
                return;
            }
            let _ = writeln!(out, "  {title}:");
            for c in cells.iter().take(limit) {
                let _ = writeln!(
                    out,
                    "    {} {} -> {}: {}",
                    c.layer,
                    p(&c.from),
                    p(&c.to),
                    line(c)
                );
            }
            if count > limit.min(cells.len()) {
                let _ = writeln!(
                    out,
                    "    ... and {} more (--output json lists them)",
                    count - limit.min(cells.len())
                );
            }
        };
    section("broke", &d.broke, d.broke_count, &|c| {
        format!(
            "was ok ({}), now fails{}",
            ms(c.before_rtt_ms),
            c.detail
                .as_deref()
                .map(|x| format!(" ({})", p(x)))
                .unwrap_or_default()
        )
    });
    section("recovered", &d.recovered, d.recovered_count, &|c| {
        format!("failed, now ok ({})", ms(c.after_rtt_ms))
    });
    section(
        "latency, biggest change first",
        &d.latency,
        d.latency_count,
        &|c| {
            let how = match c.rtt_ratio() {
                Some(r) if r >= 1.0 => format!("x{r:.1} slower"),
                Some(r) => format!("x{:.1} faster", 1.0 / r),
                None if c.slower() => "slower".to_owned(),
                None => "faster".to_owned(),
            };
            format!("{} -> {} ({how})", ms(c.before_rtt_ms), ms(c.after_rtt_ms))
        },
    );
    for (title, list) in [
        ("new findings", &d.new_findings),
        ("gone findings", &d.gone_findings),
    ] {
        if !list.is_empty() {
            let _ = writeln!(out, "  {title}:");
            for f in list {
                let _ = writeln!(out, "    [{}] {}", f.cause, p(&f.summary));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Cell;

    fn cell(state: CellState, rtt: Option<f64>) -> Cell {
        Cell {
            state,
            loss_pct: Some(if state == CellState::Fail { 100.0 } else { 0.0 }),
            rtt_ms: rtt,
            sent: 20,
            ok: if state == CellState::Fail { 0 } else { 20 },
            detail: (state == CellState::Fail).then(|| "timeout".to_owned()),
            failure: (state == CellState::Fail).then_some(crate::FailKind::Timeout),
        }
    }

    fn report(round: u64, cells: &[(&str, &str, CellState, Option<f64>)]) -> CheckReport {
        let mut r: CheckReport = serde_json::from_str(&format!(
            r#"{{"healthy": true, "round": {round}, "nodes": [], "layers": {{}}, "findings": []}}"#
        ))
        .expect("minimal report");
        for (from, to, state, rtt) in cells {
            r.layers
                .entry(Layer::Underlay)
                .or_default()
                .insert(from, to, &cell(*state, *rtt));
        }
        r
    }

    /// A summarised report (a big cluster's default) diffs as its full self would: a
    /// cell it leaves out was ok, so a cell failing now broke, and one failing before and
    /// left out now recovered; nothing is "unmatched".
    #[test]
    fn a_summarised_report_diffs_as_if_its_ok_cells_were_listed() {
        let ok = CellState::Ok;
        let fail = CellState::Fail;
        let before = report(
            1,
            &[
                ("a", "b", ok, Some(0.5)),
                ("a", "c", fail, None),
                ("b", "c", ok, Some(0.5)),
            ],
        );
        let after = report(
            2,
            &[
                ("a", "b", fail, None),
                ("a", "c", ok, Some(0.5)),
                ("b", "c", ok, Some(0.5)),
            ],
        );
        let full = compare(&before, &after);
        for (b, a) in [
            (before.summarised(), after.clone()),
            (before.clone(), after.summarised()),
            (before.summarised(), after.summarised()),
        ] {
            let d = compare(&b, &a);
            assert_eq!(
                (d.broke_count, d.recovered_count, d.unmatched_cells),
                (1, 1, 0)
            );
            assert_eq!(d.broke[0].to, full.broke[0].to);
            assert_eq!(d.recovered[0].to, full.recovered[0].to);
        }
        let s = after.summarised();
        assert_eq!(s.cell_count(), 1, "only the failing cell is listed");
        assert_eq!(
            s.counts(),
            after.counts(),
            "the ok cells are counted all the same"
        );
        assert_eq!(
            s.summary
                .as_ref()
                .map(|x| x.ok_cells_omitted[&Layer::Underlay]),
            Some(2)
        );
        assert_eq!(s.is_healthy(), after.is_healthy());
    }

    #[test]
    fn broke_recovered_and_shifted_cells_are_told_apart() {
        use CellState::{Fail, Ok};
        let before = report(
            1,
            &[
                ("n1", "n2", Ok, Some(0.4)),
                ("n1", "n3", Fail, None),
                ("n2", "n1", Ok, Some(0.3)),
                ("n2", "n3", Ok, Some(0.2)),
                ("n3", "n1", Ok, Some(50.0)),
                ("n3", "n2", Ok, Some(1.0)),
            ],
        );
        let after = report(
            2,
            &[
                ("n1", "n2", Fail, None),
                ("n1", "n3", Ok, Some(0.5)),
                // 0.3 -> 0.9 ms: three times, but under 2 ms: noise.
                ("n2", "n1", Ok, Some(0.9)),
                // 0.2 -> 12 ms: a shift.
                ("n2", "n3", Ok, Some(12.0)),
                // 50 -> 53 ms: 3 ms, but x1.06: noise.
                ("n3", "n1", Ok, Some(53.0)),
                ("n4", "n1", Ok, Some(1.0)),
            ],
        );
        let d = compare(&before, &after);
        let cells = |v: &[CellChange]| -> Vec<(String, String)> {
            v.iter().map(|c| (c.from.clone(), c.to.clone())).collect()
        };
        assert_eq!(cells(&d.broke), [("n1".into(), "n2".into())]);
        assert_eq!(cells(&d.recovered), [("n1".into(), "n3".into())]);
        assert_eq!(cells(&d.latency), [("n2".into(), "n3".into())]);
        // n4 -> n1 is new, n3 -> n2 is gone.
        assert_eq!(d.unmatched_cells, 2);
        let text = render_diff(&d, 10);
        assert!(
            text.contains("1 cells broke, 1 recovered, 1 latency shifts"),
            "{text}"
        );
        assert!(
            text.contains("underlay n2 -> n3: 0.20ms -> 12.00ms"),
            "{text}"
        );
        assert!(compare(&before, &before).is_empty());
    }

    /// Issue 23, row 12: the shifts come biggest first with their direction, and the
    /// header names the baseline and when it was saved.
    #[test]
    fn shifts_are_sorted_by_size_and_say_which_way() {
        use CellState::Ok;
        let before = report(
            1,
            &[
                ("n1", "n2", Ok, Some(1.0)),
                ("n1", "n3", Ok, Some(30.0)),
                ("n2", "n1", Ok, Some(1.0)),
                ("n2", "n3", Ok, Some(2.0)),
            ],
        );
        let after = report(
            2,
            &[
                // x3 slower, x10 faster, x20 slower, x4 slower.
                ("n1", "n2", Ok, Some(3.0)),
                ("n1", "n3", Ok, Some(3.0)),
                ("n2", "n1", Ok, Some(20.0)),
                ("n2", "n3", Ok, Some(8.0)),
            ],
        );
        let mut d = compare(&before, &after);
        let order: Vec<(&str, &str, bool)> = d
            .latency
            .iter()
            .map(|c| (c.from.as_str(), c.to.as_str(), c.slower()))
            .collect();
        assert_eq!(
            order,
            [
                ("n2", "n1", true),
                ("n1", "n3", false),
                ("n2", "n3", true),
                ("n1", "n2", true)
            ]
        );
        assert_eq!((d.latency_count, d.latency_slower), (4, 3));
        d.baseline_name = Some("pre-upgrade".into());
        d.baseline_saved_ms = Some(1_796_418_307_000);
        let text = render_diff(&d, 10);
        assert!(
            text.starts_with(
                "Since baseline pre-upgrade (round 1, saved 2026-12-04 21:05:07 UTC): "
            ),
            "{text}"
        );
        assert!(
            text.contains("4 latency shifts, 3 slower and 1 faster"),
            "{text}"
        );
        assert!(
            text.contains("n2 -> n1: 1.00ms -> 20.00ms (x20.0 slower)"),
            "{text}"
        );
        assert!(
            text.contains("n1 -> n3: 30.00ms -> 3.00ms (x10.0 faster)"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        let at = |needle: &str| lines.iter().position(|l| l.contains(needle)).expect(needle);
        assert!(at("n2 -> n1") < at("n1 -> n3") && at("n1 -> n3") < at("n1 -> n2"));
    }
}
