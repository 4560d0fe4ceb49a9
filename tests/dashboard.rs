//! Issue 13: every PromQL expression of the Grafana dashboard
//! (`deploy/monitoring/dashboard.json`) returns data from a real Prometheus (Debian's
//! package) that scrapes the sandbox's coordinator over TLS and evaluates the rules of
//! `deploy/monitoring/rules.yaml`.
//!
//! Prometheus runs inside the lab's control namespace, next to the coordinator; the test
//! asks it through the sandbox's namespace-entering HTTP client.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{check, lab_or_skip};
use meshprobe_sandbox::Fault;
use serde_json::Value;

const MONITORING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/monitoring");

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn every_dashboard_expression_returns_data_from_a_real_prometheus() {
    if Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install prometheus"
        );
        eprintln!("skipped: prometheus is not installed");
        return;
    }
    let Some(mut lab) = lab_or_skip(3) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("meshprobe-prom-{}", lab.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (ns, target) = lab.coordinator_target();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: ['{MONITORING}/rules.yaml']\nscrape_configs:\n  - job_name: meshprobe\n    scheme: https\n    tls_config: {{ca_file: '{}'}}\n    static_configs: [{{targets: ['{target}']}}]\n",
            lab.creds_file(meshprobe_sandbox::creds::CA).display()
        ),
    )
    .expect("config");
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 19090));
    let _prom = Prometheus(
        Command::new("ip")
            .args(["netns", "exec", &ns, "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("prometheus.log")).expect("log"),
            ))
            .spawn()
            .expect("prometheus"),
    );
    let get =
        |path: &str| meshprobe_sandbox::exec::http_get(&ns, listen, path, Duration::from_secs(5));
    let until = Instant::now() + Duration::from_secs(30);
    while !matches!(get("/-/ready"), Ok((200, _))) {
        assert!(
            Instant::now() < until,
            "prometheus not ready: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Rounds with a finding in force, spread over the scrapes.
    lab.inject(Fault::IpForwardOff { node: "n2".into() })
        .expect("inject");
    for _ in 0..3 {
        let (code, _) = check(&lab);
        assert_eq!(code, 1);
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(3));

    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{MONITORING}/dashboard.json")).expect("dashboard"),
    )
    .expect("json");
    let mut checked = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            let expr = t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "30s")
                .replace("$__range", "1h");
            let (status, body) = get(&format!("/api/v1/query?query={}", encode(&expr)))
                .unwrap_or_else(|e| panic!("query {expr}: {e}"));
            let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
            assert_eq!(
                (status, &v["status"]),
                (200, &Value::from("success")),
                "{expr}: {body}"
            );
            let n = v["data"]["result"].as_array().map_or(0, Vec::len);
            assert!(
                n > 0,
                "panel {:?}: {expr} returned no data: {body}",
                panel["title"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} expressions");
    let _ = std::fs::remove_dir_all(&dir);
}
