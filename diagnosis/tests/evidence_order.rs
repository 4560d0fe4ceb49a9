//! Issue 23, item 1: a finding's decisive evidence (the node's own: a REJECT rule,
//! `ip_forward = 0`) comes before the probe cells that show it, and the table prints all of
//! it, capping only probe lines, at any cluster size.

use meshprobe_core::plan::PlanSettings;
use meshprobe_core::render::{Style, render, render_wide};
use meshprobe_diagnosis::synth::{self, Fault};
use meshprobe_diagnosis::{Settings, diagnose};

/// The round of `n` nodes with `fault`, diagnosed.
fn round(n: usize, fault: Fault) -> meshprobe_core::CheckReport {
    let t = synth::topology(n);
    let mut r = synth::report(&t, &[fault], 1, &PlanSettings::default());
    r.findings = diagnose(&t, &r, &[], &Settings::default()).findings;
    r
}

#[test]
fn the_nodes_own_evidence_comes_first_and_is_never_cut() {
    for (n, fault, node, decisive) in [
        // synth numbers nodes from 0: n7 is index 6.
        (10, Fault::ForwardOff(6), "n7", "ip_forward"),
        (10, Fault::ForwardReject(3), "n4", "REJECT"),
        (3, Fault::ForwardReject(1), "n2", "REJECT"),
    ] {
        let r = round(n, fault);
        let f = r
            .findings
            .iter()
            .find(|f| f.nodes.iter().any(|x| x.as_str() == node))
            .unwrap_or_else(|| panic!("{n} nodes: no finding on {node}: {:#?}", r.findings));
        let cells = f.evidence_cells as usize;
        assert!(cells > 0, "{n} nodes: the probe lines are counted: {f:#?}");
        let (facts, probes) = f.evidence.split_at(f.evidence.len() - cells);
        let at = facts
            .iter()
            .position(|l| l.contains(decisive))
            .unwrap_or_else(|| panic!("{n} nodes: {decisive} is not among the facts: {f:#?}"));
        assert!(
            probes
                .iter()
                .all(|l| l.contains(" -> ") || l.starts_with("... and ")),
            "{n} nodes: only probe lines after the facts: {probes:#?}"
        );
        let table = render(&r, Style { color: false });
        assert!(
            table.contains(&facts[at]),
            "{n} nodes: the table hides the decisive line {:?}:\n{table}",
            facts[at]
        );
        let wide = render_wide(&r, Style { color: false });
        for line in &f.evidence {
            assert!(
                wide.contains(line.as_str()),
                "--output wide misses {line:?}"
            );
        }
    }
}
