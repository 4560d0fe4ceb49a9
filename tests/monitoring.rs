//! Issue 13: the alerting rules in `deploy/monitoring/`, checked and unit-tested with a
//! real Prometheus toolchain (Debian's `promtool`), kept equal between the plain rules file
//! and the PrometheusRule, and written against metrics the coordinator really exposes.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/monitoring");

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(DIR).join(path)).expect("read");
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs promtool with `args` in deploy/monitoring; `None` when it is not installed
/// outside CI.
fn promtool(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("promtool")
        .args(args)
        .current_dir(DIR)
        .output()
    {
        Ok(o) => Some(o),
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: promtool is not installed (Debian's prometheus has it)");
            None
        }
        Err(e) => panic!("CI must install promtool (Debian's prometheus): {e}"),
    }
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let Some(out) = promtool(&["check", "rules", "rules.yaml"]) else {
        return;
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 15 rules found"), "{text}");
    let Some(out) = promtool(&["test", "rules", "rules.test.yaml"]) else {
        return;
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn the_prometheusrule_carries_the_rules_files_groups() {
    let plain = yaml("rules.yaml");
    let crd = yaml("prometheusrule.yaml");
    assert_eq!(crd["kind"], "PrometheusRule");
    assert_eq!(
        crd["spec"]["groups"], plain["groups"],
        "prometheusrule.yaml drifted from rules.yaml"
    );
    // Every alert has a severity, a summary and a description, and every alert the
    // README names is tested firing and not firing.
    let tests = std::fs::read_to_string(Path::new(DIR).join("rules.test.yaml")).expect("tests");
    for group in plain["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            assert!(rule["labels"]["severity"].is_string(), "{alert}");
            assert!(rule["annotations"]["summary"].is_string(), "{alert}");
            assert!(rule["annotations"]["description"].is_string(), "{alert}");
            runbook_exists(alert, &rule["annotations"]["runbook_url"]);
            let fired = tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            ));
            let quiet = tests.contains(&format!("alertname: {alert}, exp_alerts: []"))
                || tests.contains(&format!("alertname: {alert}\n        exp_alerts: []"));
            assert!(
                fired && quiet,
                "{alert}: tested firing {fired}, not firing {quiet}"
            );
        }
    }
}

/// Every `meshprobe_*` series the rules read is one the coordinator exposes.
#[test]
fn the_rules_read_metrics_the_coordinator_exposes() {
    use meshprobe_core::plan::PlanSettings;
    use meshprobe_diagnosis::synth::{self, Fault};
    let topo = synth::topology(4);
    let mut r = synth::report(&topo, &[Fault::ForwardOff(1)], 1, &PlanSettings::default());
    r.findings = meshprobe_diagnosis::diagnose(&topo, &r, &[], &Default::default()).findings;
    let m = meshprobe_coordinator::metrics::Metrics::default();
    m.observe(&r, true);
    let exposed = m.encode();
    let rules = std::fs::read_to_string(Path::new(DIR).join("rules.yaml")).expect("rules");
    let mut read = std::collections::BTreeSet::new();
    for (i, _) in rules.match_indices("meshprobe_") {
        if rules[..i].ends_with(':') || rules[..i].ends_with("meshprobe:") {
            continue;
        }
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        read.insert(name);
    }
    assert!(read.len() >= 6, "{read:?}");
    for name in &read {
        assert!(
            exposed
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the rules read {name}, which /metrics does not expose:\n{exposed}"
        );
    }
}

#[test]
fn kustomize_renders_the_monitoring_overlay() {
    let out = match Command::new("kubectl").args(["kustomize", DIR]).output() {
        Ok(o) => o,
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: kubectl is not installed");
            return;
        }
        Err(e) => panic!("CI must install kubectl: {e}"),
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_yaml_ng::from_slice(&out.stdout).expect("one document");
    assert_eq!(v["kind"], "PrometheusRule");
    assert_eq!(v["metadata"]["namespace"], "meshprobe");
    assert_eq!(v["spec"]["groups"], yaml("rules.yaml")["groups"]);
}

/// An alert's `runbook_url` is a section of docs/alerts.md, under the repository the
/// workspace's Cargo.toml names.
fn runbook_exists(alert: &str, url: &Value) {
    let url = url
        .as_str()
        .unwrap_or_else(|| panic!("{alert}: no runbook_url"));
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .expect("Cargo.toml");
    let repo = manifest
        .lines()
        .find_map(|l| l.strip_prefix("repository = "))
        .map(|v| v.trim_matches('"'))
        .expect("the workspace names its repository");
    let anchor = url
        .strip_prefix(&format!("{repo}/blob/main/docs/alerts.md#"))
        .unwrap_or_else(|| panic!("{alert}: {url} is not a section of docs/alerts.md"));
    assert_eq!(anchor, alert.to_lowercase(), "{alert}: {url}");
    let runbooks = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/alerts.md"))
        .expect("docs/alerts.md");
    assert!(
        runbooks.lines().any(|l| l == format!("## {alert}")),
        "docs/alerts.md has no section for {alert}"
    );
}
