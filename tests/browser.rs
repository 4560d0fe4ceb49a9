//! Issue 12: the web view in a real browser (Debian's chromium, driven over WebDriver by
//! chromedriver), against the sandbox. The page loads without console errors, a fault turns
//! cells red and brings its finding within a round, a clicked cell shows its probes, and a
//! screenshot goes to `target/web-view.png`.
//!
//! The browser runs in the root namespace and reaches the lab's coordinator through a
//! forwarder on loopback (as `demo --keep` serves it); it trusts no certificate it is not
//! told to (`acceptInsecureCerts` for the lab's own CA, made for this lab only).

mod common;

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{check, lab_or_skip};
use meshprobe_sandbox::Fault;
use serde_json::{Value, json};

/// chromedriver in a process group of its own, which the browsers it starts share: the
/// whole group is killed on drop, so a failing test leaves no browser behind.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is chromedriver's PID (`process_group(0)`): an exact id.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Session {
    http: reqwest::Client,
    base: String,
}

impl Session {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("webdriver json");
        if v["value"]["error"].is_string() {
            panic!("webdriver {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    async fn script(&self, js: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": js, "args": [] })),
        )
        .await
    }

    /// Polls `js` until it returns something truthy, for up to `secs`.
    async fn until(&self, js: &str, secs: u64, what: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.script(js).await;
            if v.as_bool() == Some(true) || v.as_u64().is_some_and(|n| n > 0) {
                return v;
            }
            if Instant::now() > deadline {
                let state = self
                    .script("return JSON.stringify({round: window.meshprobe && window.meshprobe.round, error: window.meshprobe && window.meshprobe.error})")
                    .await;
                panic!("{what}: not within {secs} s (page state {state})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[test]
fn the_web_view_shows_a_fault_and_a_cells_probes() {
    if !(have("chromium") && have("chromedriver")) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium and chromium-driver"
        );
        eprintln!("skipped: chromium and chromedriver are not installed");
        return;
    }
    let Some(mut lab) = lab_or_skip(3) else {
        return;
    };
    let (_, first) = check(&lab);
    assert!(first.healthy, "{:?}", first.findings);

    // The coordinator on loopback, as `demo --keep` serves it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let view = format!("https://{}/", listener.local_addr().expect("addr"));
    let (ns, target) = lab.coordinator_target();
    std::thread::spawn(move || meshprobe_sandbox::exec::forward(listener, &ns, target));

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let _driver = Driver(
        Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        // chromedriver takes a moment to listen.
        let mut created = None;
        for _ in 0..50 {
            let r = http
                .post(format!("{root}/session"))
                .json(&json!({ "capabilities": { "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": true,
                    "goog:loggingPrefs": { "browser": "ALL" },
                    "goog:chromeOptions": {
                        "binary": "/usr/bin/chromium",
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--window-size=1400,1000", "--disable-dev-shm-usage",
                                 "--disable-crash-reporter", "--disable-breakpad"],
                    },
                }}}))
                .send()
                .await;
            if let Ok(r) = r {
                created = Some(r.json::<Value>().await.expect("session json"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let created = created.expect("chromedriver answers");
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        let s = Session {
            http: http.clone(),
            base: format!("{root}/session/{id}"),
        };
        s.call(reqwest::Method::POST, "/url", Some(json!({ "url": view })))
            .await;
        // 1. It loads, shows the healthy round, and logs no error.
        s.until(
            "return !!(window.meshprobe && window.meshprobe.report)",
            15,
            "the page shows a round",
        )
        .await;
        let verdict = s
            .script("return document.getElementById('verdict').textContent")
            .await;
        assert!(
            verdict.as_str().unwrap_or("").starts_with("HEALTHY"),
            "{verdict}"
        );
        let logs = s
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({ "type": "browser" })),
            )
            .await;
        let errors: Vec<&Value> = logs
            .as_array()
            .map(|a| a.iter().filter(|e| e["level"] == "SEVERE").collect())
            .unwrap_or_default();
        assert!(errors.is_empty(), "console errors: {errors:?}");

        // 2. A fault: within one round the failing cells are red and the finding is up.
        lab.inject(Fault::IpForwardOff { node: "n2".into() })
            .expect("inject");
        let (code, broken) = check(&lab);
        assert_eq!(code, 1);
        s.until(
            &format!(
                "return window.meshprobe.round >= {} && document.querySelectorAll('#grid .cell.fail').length > 0 && document.querySelectorAll('#findings .finding').length > 0",
                broken.round
            ),
            10,
            "red cells and the finding",
        )
        .await;
        let finding = s
            .script("return document.querySelector('#findings .finding').dataset.cause")
            .await;
        assert_eq!(finding, "ip-forward-disabled");

        // 3. A clicked failing cell shows its probes.
        let el = s
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": "#grid .cell.fail" })),
            )
            .await;
        let eid = el
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element id")
            .to_owned();
        s.call(
            reqwest::Method::POST,
            &format!("/element/{eid}/click"),
            Some(json!({})),
        )
        .await;
        let detail = s
            .script("return document.getElementById('detail').hidden ? '' : document.getElementById('detail').textContent")
            .await;
        let detail = detail.as_str().unwrap_or("");
        assert!(
            detail.contains("probes") && detail.contains(" of ") && detail.contains("fail"),
            "{detail}"
        );

        // 4. A screenshot for the README.
        let png = s.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("png");
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-view.png");
        std::fs::write(&out, &bytes).expect("write the screenshot");
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
        s.call(reqwest::Method::DELETE, "", None).await;
    });
}
