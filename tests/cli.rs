//! Black-box tests of the `meshprobe` binary that need no privileges: bad input, an
//! unreachable coordinator, and `check` against a real coordinator process on port 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_meshprobe");

fn write_tmp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("meshprobe-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = dir.join("inventory.yaml");
    std::fs::write(&p, text).expect("write inventory");
    p
}

const GOOD: &str = "cluster:\n  name: t\n  dnsServiceIP: 10.43.0.10\nnodes:\n  - name: n1\n    internalIP: 127.0.0.11\n    podCIDR: 10.42.1.0/24\n  - name: n2\n    internalIP: 127.0.0.12\n    podCIDR: 10.42.2.0/24\n";

#[test]
fn inventory_syntax_error_names_the_line_and_exits_2() {
    let p = write_tmp(
        "syntax",
        "cluster:\n  name: t\nnodes:\n  - name: n1\n    internalIP: [unclosed\n",
    );
    let err = coordinator_refuses(&p);
    assert!(err.contains("line"), "error must name the line: {err}");
    assert!(
        err.contains(&p.display().to_string()),
        "error must name the file: {err}"
    );
}

#[test]
fn inventory_unknown_field_is_named_and_exits_2() {
    let p = write_tmp(
        "unknown",
        &GOOD.replace(
            "    podCIDR: 10.42.2.0/24",
            "    podCIDR: 10.42.2.0/24\n    hostname: n2.example",
        ),
    );
    let err = coordinator_refuses(&p);
    assert!(err.contains("unknown field `hostname`"), "{err}");
    assert!(err.contains("line 11"), "{err}");
}

#[test]
fn inventory_semantic_error_names_the_field() {
    let p = write_tmp("overlap", &GOOD.replace("10.42.2.0/24", "10.42.1.128/25"));
    let err = coordinator_refuses(&p);
    assert!(
        err.contains("nodes[1].podCIDR") && err.contains("overlaps"),
        "{err}"
    );
}

#[test]
fn an_inventory_that_is_not_a_regular_file_is_refused_at_once() {
    // A FIFO would block a reader for ever: it is refused without being opened for long.
    let dir = std::env::temp_dir().join(format!("meshprobe-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let made = Command::new("mkfifo").arg(&dir).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("mkfifo is not available: skipping");
        return;
    }
    // Nothing ever writes to it: a reader that opened it would wait for ever.
    let err = coordinator_refuses(&dir);
    let _ = std::fs::remove_file(&dir);
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn unreachable_coordinator_is_a_clear_error_and_exit_2() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let out = Command::new(BIN)
        .args([
            "check",
            "--coordinator",
            "http://127.0.0.1:1",
            "--timeout",
            "5s",
        ])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot reach the coordinator at http://127.0.0.1:1"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");
    let bad = Command::new(BIN)
        .args(["check", "--coordinator", "localhost:7070"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("http://"));
}

/// Runs the binary with `args`: it must exit 2. Returns what it said on stderr.
fn exits_2(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    err
}

/// Runs the binary with `args`: it must exit 2 and say `says` on stderr.
fn exits_2_saying(args: &[&str], says: &str) {
    let err = exits_2(args);
    assert!(err.contains(says), "{args:?} must say {says:?}: {err}");
}

/// `coordinator --inventory PATH`, which must exit 2; what it said.
fn coordinator_refuses(inventory: &std::path::Path) -> String {
    let path = inventory.to_str().expect("a UTF-8 temp path");
    exits_2(&[
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--inventory",
        path,
    ])
}

#[test]
fn bad_probe_arguments_exit_2_with_the_argument_named() {
    let probe = |node: &str, coordinator: &str, extra: &[&str], says: &str| {
        let mut args = vec!["probe", "--node", node, "--coordinator", coordinator];
        args.extend_from_slice(extra);
        exits_2_saying(&args, says);
    };
    let url = "http://127.0.0.1:1";
    probe("Bad_Name", url, &[], "--node: \"Bad_Name\"");
    probe("n1", url, &["--relay-listen", "nowhere"], "--relay-listen");
    // A DaemonSet whose pod started before the coordinator's Service existed.
    probe(
        "n1",
        "http://$(MESHPROBE_COORDINATOR_SERVICE_HOST):$(MESHPROBE_COORDINATOR_SERVICE_PORT)",
        &[],
        "did not expand",
    );
}

#[test]
fn bad_coordinator_api_options_exit_2_naming_the_option() {
    let coordinator = |extra: &[&str], says: &str| {
        let mut args = vec!["coordinator", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        exits_2_saying(&args, says);
    };
    coordinator(
        &["--kubeconfig", "/nonexistent/kubeconfig"],
        "--kubeconfig /nonexistent/kubeconfig",
    );
    coordinator(
        &[
            "--lease",
            "meshprobe-coordinator",
            "--identity",
            "a",
            "--lease-duration",
            "1500ms",
        ],
        "whole seconds",
    );
}

/// A coordinator process on 127.0.0.1:0, killed on drop.
struct Coord(std::process::Child, String);

impl Drop for Coord {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The cluster secret the tests' coordinators run with.
const SECRET: &str = "cli-test-secret-0123456789abcdef";

fn coordinator(inventory: &std::path::Path) -> Coord {
    let secret = inventory.with_file_name("cluster-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("secret");
    let mut child = Command::new(BIN)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--inventory"])
        .arg(inventory)
        .arg("--token-file")
        .arg(&secret)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn coordinator");
    let stderr = child.stderr.take().expect("stderr");
    // Guarded before anything can panic: a failed start must not leave it running.
    let mut coord = Coord(child, String::new());
    let mut lines = BufReader::new(stderr).lines();
    let line = lines.next().expect("a first line").expect("readable");
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    // Keep draining stderr so the coordinator never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    coord.1 = format!("http://{addr}");
    coord
}

/// Writes `text` as a token file next to `inventory`.
fn token_file(inventory: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = inventory.with_file_name(name);
    std::fs::write(&p, text).expect("token file");
    p
}

#[test]
fn a_coordinator_without_credentials_refuses_to_start() {
    let p = write_tmp("noauth", GOOD);
    let err = coordinator_refuses(&p);
    assert!(
        err.contains("refuses unauthenticated agents")
            && err.contains("--token-file")
            && err.contains("--insecure-no-auth"),
        "{err}"
    );
    // A weak secret is refused with its length named.
    let weak = token_file(&p, "weak", "hunter2\n");
    exits_2_saying(
        &[
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--inventory",
            p.to_str().expect("utf-8"),
            "--token-file",
            weak.to_str().expect("utf-8"),
        ],
        "has 7 bytes",
    );
    // --insecure-no-auth and a secret contradict each other.
    exits_2_saying(
        &[
            "coordinator",
            "--insecure-no-auth",
            "--token-file",
            weak.to_str().expect("utf-8"),
        ],
        "cannot be used with",
    );
}

#[test]
fn credentials_are_derived_per_node_and_checked_by_role() {
    let p = write_tmp("creds", GOOD);
    let secret = token_file(&p, "secret", &format!("{SECRET}\n"));
    let derive = |who: &[&str]| {
        let out = Command::new(BIN)
            .args(["credential", "--token-file"])
            .arg(&secret)
            .args(who)
            .output()
            .expect("credential");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let n1 = derive(&["--node", "n1"]);
    let n2 = derive(&["--node", "n2"]);
    let op = derive(&["--operator", "ci"]);
    assert!(
        n1.starts_with("mp1.node.n1.") && n2.starts_with("mp1.node.n2."),
        "{n1} {n2}"
    );
    assert_ne!(n1[12..], n2[12..], "each node's tag is its own");
    assert_eq!(derive(&["--node", "n1"]), n1, "derivation is deterministic");
    exits_2_saying(
        &[
            "credential",
            "--token-file",
            secret.to_str().expect("utf-8"),
            "--node",
            "Bad_Name",
        ],
        "--node",
    );

    let c = coordinator(&p);
    let check = |token: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "check",
            "--coordinator",
            &c.1,
            "--output",
            "json",
            "--timeout",
            "10s",
        ]);
        if let Some(t) = token {
            cmd.arg("--token-file").arg(token_file(&p, "presented", t));
        }
        cmd.output().expect("check")
    };
    // No credential: 401, named.
    let out = check(None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("401") && err.contains("requires a credential"),
        "{err}"
    );
    // A forged credential (n1's tag under n2's name): 401.
    let forged = format!("mp1.node.n2.{}", &n1["mp1.node.n1.".len()..]);
    let out = check(Some(&forged));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    // A node's credential cannot start rounds: 403, saying what can.
    let out = check(Some(&n1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("403") && err.contains("operator credential"),
        "{err}"
    );
    // An operator's credential can; so can the secret itself.
    for token in [op.as_str(), SECRET] {
        let out = check(Some(token));
        assert_eq!(
            out.status.code(),
            Some(1),
            "no agents: not healthy, but a report: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_with_no_agents_reports_unknown_exits_1_and_speaks_json() {
    let p = write_tmp("check", GOOD);
    let c = coordinator(&p);
    let op = token_file(&p, "operator", SECRET);
    let out = Command::new(BIN)
        .args(["check", "--coordinator", &c.1, "--output", "json"])
        .args(["--timeout", "10s", "--token-file"])
        .arg(&op)
        .output()
        .expect("run check");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("check --output json prints JSON");
    assert_eq!(v["healthy"], false);
    assert_eq!(v["nodes"], serde_json::json!(["n1", "n2"]));
    // The only findings: both nodes' agents are missing. No network verdict without observers.
    let causes: Vec<(&str, &str)> = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["cause"].as_str().unwrap_or(""),
                f["nodes"][0].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(causes, [("agent-missing", "n1"), ("agent-missing", "n2")]);
    assert_eq!(v["layers"]["underlay"]["n1"]["n2"]["state"], "unknown");
    junit_matches(&c.1, &op, &p);
    assert_eq!(v["agents"]["n2"]["host"], "absent");
    // The table says the same in words.
    let out = Command::new(BIN)
        .args(["check", "--coordinator", &c.1])
        .arg("--token-file")
        .arg(&op)
        .env("NO_COLOR", "1")
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("NOT HEALTHY") && text.contains("agents not reporting: n1/host absent"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn coordinator_without_inventory_or_api_access_says_so_and_exits_2() {
    let out = Command::new(BIN)
        .args(["coordinator", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no Kubernetes API access") && err.contains("--inventory"),
        "{err}"
    );
}

/// Issue 13: `check --junit FILE` writes a document a JUnit reader (quick-xml here) takes:
/// one testcase per layer and per finding, failing ones as failures, with the numbers the
/// JSON report gives.
fn junit_matches(url: &str, token: &std::path::Path, near: &std::path::Path) {
    let file = near.with_file_name("junit.xml");
    let out = Command::new(BIN)
        .args([
            "check",
            "--coordinator",
            url,
            "--output",
            "json",
            "--timeout",
            "10s",
        ])
        .arg("--token-file")
        .arg(token)
        .arg("--junit")
        .arg(&file)
        .output()
        .expect("check");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let xml = std::fs::read_to_string(&file).expect("junit file");
    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut suites, mut cases, mut failures) = (0, 0, 0);
    let mut names = Vec::new();
    loop {
        match reader
            .read_event()
            .unwrap_or_else(|e| panic!("not well-formed: {e}\n{xml}"))
        {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                match e.name().as_ref() {
                    b"testsuite" => suites += 1,
                    b"testcase" => {
                        cases += 1;
                        let name = e
                            .try_get_attribute("name")
                            .ok()
                            .flatten()
                            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
                            .unwrap_or_default();
                        names.push(name);
                    }
                    b"failure" => failures += 1,
                    _ => {}
                }
            }
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    let layers = v["layers"].as_object().expect("layers").len();
    let findings = v["findings"].as_array().expect("findings").len();
    assert_eq!(suites, 2, "{xml}");
    assert_eq!(cases, layers + findings, "{xml}");
    // No agents: every layer's cells are unknown, and every finding fails.
    assert_eq!(failures, layers + findings, "{xml}");
    assert!(names.iter().any(|n| n == "underlay"), "{names:?}");
    assert!(names.iter().any(|n| n == "agent-missing n1"), "{names:?}");
}

/// Issue 22, row 8: error lines kept a coordinator's raw newlines, so a fake "HEALTHY" line
/// could appear under an error. A hostile server's error body, with a newline, a bidi
/// override and an escape sequence, reaches stderr as one escaped line.
#[test]
fn a_hostile_error_body_stays_on_one_escaped_line() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        // `check` may retry: answer every request the same way, for a few seconds.
        listener.set_nonblocking(false).expect("blocking");
        for s in listener.incoming().take(4) {
            let Ok(mut s) = s else { break };
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = "{\"error\": \"boom\\nHEALTHY: 0 failing cells\\u202e\\u001b[2J\"}";
            let _ = write!(
                s,
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let out = Command::new(BIN)
        .args([
            "check",
            "--coordinator",
            &format!("http://{addr}"),
            "--timeout",
            "3s",
        ])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.contains("boom\\nHEALTHY"), "{err:?}");
    assert!(
        !err.contains('\u{202e}') && !err.contains('\u{1b}'),
        "{err:?}"
    );
    drop(server);
}
