//! Issue 22, row 5: one lying observer. A node whose agents report every probe toward
//! one victim dead, while everything else (the victim's other observers included) passes,
//! is one node's word: the finding is about the observer or the link between the two, and
//! never names the victim alone in `nodes`, where node conditions, Events and alerts are
//! raised from.

use meshprobe_core::PlanSettings;
use meshprobe_diagnosis::synth::{self, Fault};
use meshprobe_diagnosis::{Settings, diagnose};

#[test]
fn one_lying_observer_never_pins_a_finding_on_its_victim() {
    let mut bad = Vec::new();
    for n in [3usize, 4, 6, 9] {
        let t = synth::topology(n);
        for liar in 0..n {
            for victim in 0..n {
                if liar == victim {
                    continue;
                }
                let r = synth::report(
                    &t,
                    &[Fault::LiesAbout(liar, victim)],
                    1,
                    &PlanSettings::default(),
                );
                let d = diagnose(&t, &r, &[], &Settings::default());
                let (ln, vn) = (&t.nodes[liar].name, &t.nodes[victim].name);
                assert!(
                    !d.findings.is_empty(),
                    "{n} nodes, {ln} lies about {vn}: its failing cells must be named"
                );
                for f in &d.findings {
                    if f.nodes.contains(vn) && !f.nodes.contains(ln) {
                        bad.push(format!(
                            "{n} nodes, {ln} lies about {vn}: {} nodes={:?} peers={:?}: {}",
                            f.cause, f.nodes, f.peers, f.summary
                        ));
                    }
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} blamed victims:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
