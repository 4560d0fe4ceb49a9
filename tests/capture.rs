//! Packet capture on the sandbox: the capture on both ends of a failing pair names the
//! direction; `check --pcap` writes files tcpdump reads; without CAP_NET_RAW the agent
//! carries on with a clear warning. Needs root, like `tests/lab.rs`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, check, check_until_healthy, lab_or_skip, run_check, seed};
use meshprobe_sandbox::Fault;

#[test]
fn capture_on_both_ends_names_the_direction_and_the_mtu_hop() {
    let Some(mut lab) = lab_or_skip(3) else {
        return;
    };
    let mut rng = fastrand::Rng::with_seed(seed(
        "capture_on_both_ends_names_the_direction_and_the_mtu_hop",
    ));
    check_until_healthy(&lab, Duration::from_secs(10));
    let x = format!("n{}", rng.usize(1..=3));
    let cases = [
        (
            Fault::VxlanDropIn { node: x.clone() },
            "vxlan-blocked",
            "inbound",
            format!("die inside {x}, after its NIC"),
        ),
        (
            Fault::VxlanDropOut { node: x.clone() },
            "vxlan-blocked",
            "outbound",
            format!("nothing encapsulated leaves {x}'s eth0"),
        ),
        (
            Fault::UnderlayMtu {
                node: x.clone(),
                mtu: 1400,
            },
            "mtu-mismatch",
            "both",
            format!("{x}'s eth0 saw 0 of them arrive"),
        ),
    ];
    let mut misses = Vec::new();
    for (fault, cause, direction, phrase) in cases {
        lab.inject(fault.clone()).expect("inject");
        let (code, r) = check(&lab);
        match r.findings.first() {
            Some(f) => {
                let ev = f.evidence.join("\n");
                // Both ends: a line about what left a peer toward x and what x's NIC saw.
                let both_ends = ev.lines().any(|l| {
                    l.starts_with("capture:")
                        && l.contains(&format!("toward {x}"))
                        && l.contains(&format!("{x}'s eth0 saw"))
                });
                if code != 1
                    || f.cause.as_str() != cause
                    || f.direction.as_str() != direction
                    || !ev.contains(&phrase)
                    || !both_ends
                {
                    misses.push(format!("{fault}: want {cause}/{direction} with {phrase:?} and both ends, got {}/{} (exit {code}):\n{ev}", f.cause, f.direction));
                }
            }
            None => misses.push(format!("{fault}: no finding (exit {code})")),
        }
        lab.heal(&fault).expect("heal");
        check_until_healthy(&lab, Duration::from_secs(30));
    }
    assert!(misses.is_empty(), "{}", misses.join("\n\n"));
}

#[test]
fn check_pcap_writes_files_tcpdump_reads() {
    let Some(mut lab) = lab_or_skip(3) else {
        return;
    };
    check_until_healthy(&lab, Duration::from_secs(10));
    lab.inject(Fault::VxlanDropIn { node: "n2".into() })
        .expect("inject");
    let dir = std::env::temp_dir().join(format!("meshprobe-pcap-{}", lab.name()));
    let out = run_check(&lab, &["--pcap", &dir.display().to_string()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: meshprobe_core::CheckReport =
        serde_json::from_slice(&out.stdout).expect("check --output json");
    for (node, a) in &report.agents {
        assert_eq!(
            a.host,
            meshprobe_core::matrix::AgentState::Reported,
            "{node}'s host agent must deliver its packets in time"
        );
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("pcap dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    // n2's two failing pairs, each seen from both ends.
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        names.iter().any(|n| n.ends_with("-n1-n2.at-n2.pcap")),
        "{names:?}"
    );
    for f in &files {
        let t = Command::new("tcpdump")
            .arg("-nr")
            .arg(f)
            .output()
            .expect("tcpdump is installed (CI installs it)");
        assert!(
            t.status.success(),
            "tcpdump -r {}: {}",
            f.display(),
            String::from_utf8_lossy(&t.stderr)
        );
        let text = String::from_utf8_lossy(&t.stdout);
        assert!(
            text.lines().count() > 10,
            "{}: only {} packets",
            f.display(),
            text.lines().count()
        );
        assert!(
            text.contains(".8472: ") && text.contains("192.168.77.12"),
            "{}:\n{}",
            f.display(),
            &text[..text.len().min(400)]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_cap_net_raw_the_agent_warns_and_keeps_reporting() {
    let Some(lab) = lab_or_skip(2) else { return };
    // A second host agent for n2 would compete with the lab's; run one for a node the lab
    // does not have, in n2's namespace, without CAP_NET_RAW: the coordinator will not plan
    // it, so ask it to probe as n2 against a coordinator of our own on the control side.
    let inv = std::env::temp_dir().join(format!("{}-nocap.yaml", lab.name()));
    std::fs::write(
        &inv,
        "cluster: {name: nocap}\nnodes:\n  - {name: n2, internalIP: 192.168.77.12, podCIDR: 10.42.2.0/24}\n",
    )
    .expect("inventory");
    let ctl = lab.plan().ctl_ns();
    let mut coord = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ctl,
            BIN,
            "coordinator",
            "--listen",
            "192.168.77.2:7075",
            "--inventory",
        ])
        .arg(&inv)
        .arg("--token-file")
        .arg(lab.creds_file(meshprobe_sandbox::creds::SECRET))
        .stderr(Stdio::null())
        .spawn()
        .expect("coordinator");
    let mut agent = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.plan().nodes[1].ns,
            "setpriv",
            "--bounding-set=-net_raw",
            "--inh-caps=-net_raw",
            BIN,
        ])
        .args([
            "probe",
            "--node",
            "n2",
            "--coordinator",
            "http://192.168.77.2:7075",
            "--relay-listen",
            "off",
        ])
        .arg("--token-file")
        .arg(lab.node_credential("n2"))
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    std::thread::sleep(Duration::from_secs(2));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ctl,
            BIN,
            "check",
            "--output",
            "json",
            "--coordinator",
            "http://192.168.77.2:7075",
        ])
        .arg("--token-file")
        .arg(lab.creds_file(meshprobe_sandbox::creds::OPERATOR))
        .output()
        .expect("check");
    let _ = agent.kill();
    let _ = coord.kill();
    let _ = agent.wait();
    let _ = coord.wait();
    let _ = std::fs::remove_file(&inv);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(
        v["agents"]["n2"]["host"], "reported",
        "the agent keeps reporting: {v}"
    );
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("packet capture needs CAP_NET_RAW"),
        "{warnings}"
    );
}
