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

/// Saves the page as a PNG at `path`, and says where (the test's output links it).
async fn screenshot(s: &Session, path: &std::path::Path) {
    let png = s.call(reqwest::Method::GET, "/screenshot", None).await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().expect("base64"))
        .expect("png");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(path, &bytes).expect("write the screenshot");
    println!("screenshot: {}", path.display());
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

        // 4. Issue 23: the node strip names n2 as blamed, and the page opened on a layer
        // where n2's cells fail; rows and columns share one node order.
        let strip = s
            .script("return Array.from(document.querySelectorAll('#nodes .node')).map((b) => b.dataset.node + ':' + b.dataset.state).join(' ')")
            .await;
        let strip = strip.as_str().unwrap_or("").to_owned();
        assert!(strip.contains("n2:blamed"), "{strip}");
        assert!(!strip.contains("n1:blamed") && !strip.contains("n3:blamed"), "{strip}");
        let on_n2 = s
            .script("return Array.from(document.querySelectorAll('#grid .cell.fail')).some((c) => c.dataset.from === 'n2' || c.dataset.to === 'n2')")
            .await;
        assert_eq!(on_n2, true, "the layer shown has n2's failing cells");
        let orders = s
            .script("const rows = Array.from(document.querySelectorAll('#grid .label')).slice(1).map((e) => e.textContent); const cols = Array.from(document.querySelectorAll('#grid .collabel')).map((e) => e.textContent).filter((c) => rows.includes(c)); return JSON.stringify([rows, cols])")
            .await;
        let (rows, cols): (Vec<String>, Vec<String>) =
            serde_json::from_str(orders.as_str().expect("json")).expect("two lists");
        assert_eq!(rows, cols, "one node order for rows and columns");
        // The node's own evidence comes first, and every probe line is on the page (three
        // shown, the rest behind "more", which opens).
        let first = s
            .script("const li = document.querySelector('#findings .finding .evidence li'); return li.className + '|' + li.textContent")
            .await;
        let first = first.as_str().unwrap_or("").to_owned();
        assert!(
            !first.starts_with("probe|"),
            "the first evidence line is the node's own, not a probe line: {first}"
        );
        let probes = s
            .script("const f = window.meshprobe.report.findings[0]; const n = document.querySelectorAll('#findings .finding:first-child li.probe').length; const more = document.querySelector('#findings .finding:first-child details.more'); if (more) more.open = true; return JSON.stringify([f.evidenceCells || 0, n, !!more, more ? more.open : false])")
            .await;
        let (cells, shown, has_more, open): (u64, u64, bool, bool) =
            serde_json::from_str(probes.as_str().expect("json")).expect("four values");
        assert_eq!(cells, shown, "every probe line is on the page");
        assert_eq!(has_more, cells > 3);
        assert_eq!(open, has_more);
        let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        screenshot(&s, &shots.join("web-view.png")).await;

        // 5. At 375 px (a phone): no sideways scroll of the page, findings read as lines
        // (not a word per line), and no column is kept for the hidden detail panel.
        s.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": 375, "height": 812 })),
        )
        .await;
        let layout = s
            .script("const d = document.documentElement; const f = document.querySelector('#findings .summary').getBoundingClientRect(); const g = document.getElementById('grid-wrap').getBoundingClientRect(); return JSON.stringify([window.innerWidth, d.scrollWidth, f.width, g.width])")
            .await;
        let (inner, scroll, finding_w, grid_w): (f64, f64, f64, f64) =
            serde_json::from_str(layout.as_str().expect("json")).expect("four numbers");
        assert!(inner <= 400.0, "the window is phone-sized: {inner}");
        assert!(scroll <= inner + 1.0, "the page scrolls sideways: {scroll} > {inner}");
        assert!(finding_w >= inner * 0.6, "findings are squeezed: {finding_w} of {inner}");
        assert!(grid_w >= inner * 0.8, "the grid keeps a column for a hidden panel: {grid_w} of {inner}");
        screenshot(&s, &shots.join("web-view-375.png")).await;
        s.call(reqwest::Method::DELETE, "", None).await;
    });
}
