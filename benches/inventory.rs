//! Benchmark: parsing and validating inventories of 10,000 to 80,000 nodes, to show the
//! time grows with the document, not with its square (issue 22, row 9: pairwise checks
//! made 40,000 nodes take 10 s). Run with `cargo bench --bench inventory`.

use std::fmt::Write as _;
use std::time::Instant;

use meshprobe_core::Topology;

fn inventory(n: usize) -> String {
    let mut doc = String::from("cluster: {name: bench}\nnodes:\n");
    for i in 0..n {
        let _ = writeln!(
            doc,
            "  - {{name: n{i}, internalIP: 10.{}.{}.{}, podCIDR: 11.{}.{}.0/24}}",
            i / 65536,
            (i / 256) % 256,
            i % 256,
            i / 256,
            i % 256
        );
    }
    doc
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut last: Option<(usize, f64)> = None;
    for n in [10_000usize, 20_000, 40_000, 80_000] {
        let doc = inventory(n);
        let runs: Vec<f64> = (0..3)
            .map(|_| {
                let t = Instant::now();
                let topo = Topology::from_inventory(&doc).expect("a valid inventory");
                assert_eq!(topo.nodes.len(), n);
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        let best = runs.iter().copied().fold(f64::INFINITY, f64::min);
        let growth = last.map_or(String::new(), |(m, t)| {
            format!(", x{:.1} for x{} nodes", best / t, n / m)
        });
        println!(
            "{n} nodes ({} KiB): best of 3 {best:.0} ms{growth}",
            doc.len() >> 10
        );
        last = Some((n, best));
    }
}
