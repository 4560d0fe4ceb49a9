//! Discovery's watching half against a fixture Kubernetes API on 127.0.0.1: real list and
//! watch responses (newline-delimited watch events, resource versions, label and field
//! selectors), a node joining and leaving, 410 Gone on a watch, and the API going away
//! while the coordinator keeps serving the last known topology.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meshprobe_coordinator::discovery::DiscoverySettings;
use meshprobe_coordinator::kube_source::KubeTopology;
use meshprobe_coordinator::{Coordinator, Settings, TopologySource};
use meshprobe_core::inventory::NodeState;
use serde_json::{Value, json};

/// The fixture API's state.
#[derive(Default)]
struct Fixture {
    /// collection ("nodes", "pods", "services", "ingresses") -> objects.
    objects: Mutex<BTreeMap<&'static str, Vec<Value>>>,
    /// (resource version, collection, watch event).
    events: Mutex<Vec<(u64, &'static str, Value)>>,
    flannel: Mutex<Option<Value>>,
    rv: AtomicU64,
    down: AtomicBool,
    gone: AtomicBool,
    watches: AtomicU64,
}

fn fixture_items(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    v["items"].as_array().cloned().unwrap_or_default()
}

impl Fixture {
    fn new() -> Arc<Self> {
        let f = Fixture {
            rv: AtomicU64::new(2000),
            ..Fixture::default()
        };
        {
            let mut o = f.objects.lock().expect("lock");
            o.insert("nodes", fixture_items("nodes.json"));
            o.insert("pods", fixture_items("pods-coredns.json"));
            o.insert("services", fixture_items("services.json"));
            o.insert("ingresses", fixture_items("ingresses.json"));
        }
        let cm: Value = serde_json::from_str(
            &std::fs::read_to_string(format!(
                "{}/tests/fixtures/flannel-cm.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .expect("cm"),
        )
        .expect("json");
        *f.flannel.lock().expect("lock") = Some(cm);
        Arc::new(f)
    }

    /// Adds or replaces an object and records the watch event.
    fn apply(&self, collection: &'static str, mut obj: Value) {
        let rv = self.rv.fetch_add(1, Ordering::SeqCst) + 1;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let mut o = self.objects.lock().expect("lock");
        let list = o.entry(collection).or_default();
        let name = obj["metadata"]["name"].clone();
        let kind = match list.iter().position(|x| x["metadata"]["name"] == name) {
            Some(i) => {
                list[i] = obj.clone();
                "MODIFIED"
            }
            None => {
                list.push(obj.clone());
                "ADDED"
            }
        };
        self.events.lock().expect("lock").push((
            rv,
            collection,
            json!({ "type": kind, "object": obj }),
        ));
    }

    fn delete(&self, collection: &'static str, name: &str) {
        let rv = self.rv.fetch_add(1, Ordering::SeqCst) + 1;
        let mut o = self.objects.lock().expect("lock");
        let list = o.entry(collection).or_default();
        if let Some(i) = list.iter().position(|x| x["metadata"]["name"] == name) {
            let mut obj = list.remove(i);
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.events.lock().expect("lock").push((
                rv,
                collection,
                json!({ "type": "DELETED", "object": obj }),
            ));
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code })
}

/// Whether `obj` passes `labelSelector=k=v` / `fieldSelector=metadata.name=x` and namespace.
fn matches(obj: &Value, ns: Option<&str>, query: &BTreeMap<String, String>) -> bool {
    if let Some(ns) = ns
        && obj["metadata"]["namespace"] != ns
    {
        return false;
    }
    if let Some((k, v)) = query.get("labelSelector").and_then(|s| s.split_once('='))
        && obj["metadata"]["labels"][k] != v
    {
        return false;
    }
    if let Some(name) = query
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("metadata.name="))
        && obj["metadata"]["name"] != name
    {
        return false;
    }
    true
}

async fn api(State(f): State<Arc<Fixture>>, req: Request) -> Response {
    if f.down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(status(503, "ServiceUnavailable", "the API server is down")),
        )
            .into_response();
    }
    let path = req.uri().path().to_owned();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%2F", "/")))
        .collect();
    if path == "/version" {
        return axum::Json(json!({ "major": "1", "minor": "33", "gitVersion": "v1.33.1", "gitCommit": "x", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64" })).into_response();
    }
    if path == "/api/v1/namespaces/kube-flannel/configmaps/kube-flannel-cfg" {
        return match f.flannel.lock().expect("lock").clone() {
            Some(cm) => axum::Json(cm).into_response(),
            None => (
                StatusCode::NOT_FOUND,
                axum::Json(status(404, "NotFound", "not found")),
            )
                .into_response(),
        };
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (collection, ns, kind, api_version): (&'static str, Option<&str>, &str, &str) = match segs
        .as_slice()
    {
        ["api", "v1", "nodes"] => ("nodes", None, "NodeList", "v1"),
        ["api", "v1", "namespaces", ns, "pods"] => ("pods", Some(ns), "PodList", "v1"),
        ["api", "v1", "pods"] => ("pods", None, "PodList", "v1"),
        ["api", "v1", "namespaces", ns, "services"] => ("services", Some(ns), "ServiceList", "v1"),
        ["api", "v1", "services"] => ("services", None, "ServiceList", "v1"),
        ["apis", "networking.k8s.io", "v1", "ingresses"] => {
            ("ingresses", None, "IngressList", "networking.k8s.io/v1")
        }
        _ => {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(status(404, "NotFound", &path)),
            )
                .into_response();
        }
    };
    let ns = ns.map(str::to_owned);
    if query.get("watch").map(String::as_str) != Some("true")
        && query.get("watch").map(String::as_str) != Some("1")
    {
        let items: Vec<Value> = f
            .objects
            .lock()
            .expect("lock")
            .get(collection)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|o| matches(o, ns.as_deref(), &query))
            .collect();
        let rv = f.rv.load(Ordering::SeqCst).to_string();
        return axum::Json(json!({ "kind": kind, "apiVersion": api_version, "metadata": { "resourceVersion": rv }, "items": items }))
            .into_response();
    }
    f.watches.fetch_add(1, Ordering::SeqCst);
    if f.gone.swap(false, Ordering::SeqCst) {
        let line =
            json!({ "type": "ERROR", "object": status(410, "Expired", "too old resource version") })
                .to_string() + "\n";
        return Response::new(Body::from(line));
    }
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let lines: String = f
        .events
        .lock()
        .expect("lock")
        .iter()
        .filter(|(rv, c, ev)| {
            *rv > since && *c == collection && matches(&ev["object"], ns.as_deref(), &query)
        })
        .map(|(_, _, ev)| ev.to_string() + "\n")
        .collect();
    // Send what happened since, hold the watch open a moment, end it (the client re-watches).
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(lines) }).chain(
        futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(String::new())
        }),
    );
    Response::new(Body::from_stream(stream))
}

use futures_util::StreamExt;

async fn start() -> (Arc<Fixture>, KubeTopology) {
    let f = Fixture::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new().fallback(api).with_state(Arc::clone(&f));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = kube::Config::new(url.parse().expect("uri"));
    let client = kube::Client::try_from(config).expect("client");
    (f, KubeTopology::start(client, DiscoverySettings::default()))
}

/// Polls `cond` on the topology source for up to `secs`.
async fn until(src: &KubeTopology, secs: u64, what: &str, cond: impl Fn(&KubeTopology) -> bool) {
    for _ in 0..secs * 20 {
        if cond(src) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{what}: not within {secs}s; topology: {:?}",
        src.current()
            .nodes
            .iter()
            .map(|n| (n.name.to_string(), n.state))
            .collect::<Vec<_>>()
    );
}

fn names(src: &KubeTopology) -> Vec<String> {
    src.current()
        .nodes
        .iter()
        .map(|n| n.name.to_string())
        .collect()
}

#[tokio::test]
async fn watches_build_the_topology_and_follow_nodes_joining_and_leaving() {
    let (f, src) = start().await;
    until(&src, 10, "initial lists", |s| {
        names(s).len() == 5 && s.current().core_dns.len() == 2 && s.fresh()
    })
    .await;
    let t = src.current();
    assert_eq!(
        names(&src),
        ["worker-a", "worker-b", "worker-c", "worker-d", "worker-e"]
    );
    assert_eq!(
        t.nodes.iter().map(|n| n.state).collect::<Vec<_>>(),
        [
            NodeState::Ready,
            NodeState::Ready,
            NodeState::NotReady,
            NodeState::Cordoned,
            NodeState::Deleting
        ]
    );
    assert_eq!(
        t.cluster.dns_service_ip.map(|i| i.to_string()).as_deref(),
        Some("10.96.0.10")
    );
    assert_eq!(t.node_ports.len(), 1, "only the opted-in NodePort");
    assert_eq!(t.ingresses.len(), 1, "only the opted-in ingress");
    until(&src, 10, "flannel's port", |s| {
        s.current().cluster.overlay.port == 8475
    })
    .await;

    // A node joins: it is in the next plan.
    let mut new = fixture_items("nodes.json")
        .into_iter()
        .next()
        .expect("a node");
    new["metadata"]["name"] = json!("worker-f");
    new["spec"]["podCIDR"] = json!("10.244.6.0/24");
    new["spec"]["podCIDRs"] = json!(["10.244.6.0/24"]);
    new["status"]["addresses"][0]["address"] = json!("10.0.0.17");
    f.apply("nodes", new);
    until(&src, 5, "worker-f joins", |s| {
        names(s).contains(&"worker-f".to_owned())
    })
    .await;
    // Another is removed: it leaves.
    f.delete("nodes", "worker-b");
    until(&src, 5, "worker-b leaves", |s| {
        !names(s).contains(&"worker-b".to_owned())
    })
    .await;

    // 410 Gone on a watch: the watcher lists again and stays consistent.
    let watches = f.watches.load(Ordering::SeqCst);
    f.gone.store(true, Ordering::SeqCst);
    until(&src, 10, "re-watch after 410 Gone", |_| {
        f.watches.load(Ordering::SeqCst) > watches + 2
    })
    .await;
    f.delete("nodes", "worker-c");
    until(&src, 10, "changes still arrive after 410", |s| {
        !names(s).contains(&"worker-c".to_owned()) && s.fresh()
    })
    .await;
}

#[tokio::test]
async fn with_the_api_server_down_the_coordinator_keeps_the_last_topology_and_says_so() {
    let (f, src) = start().await;
    until(&src, 10, "initial lists", |s| {
        names(s).len() == 5 && s.fresh()
    })
    .await;
    f.down.store(true, Ordering::SeqCst);
    until(&src, 20, "staleness noticed", |s| !s.fresh()).await;
    assert_eq!(names(&src).len(), 5, "the last known topology is kept");

    // A coordinator on this source keeps planning rounds, and its reports say why.
    let c = Coordinator::new(Box::new(src), Settings::default());
    let id = c.trigger();
    let meshprobe_coordinator::rounds::RoundStatus::Done(report) =
        c.wait_for(id, Duration::from_secs(10)).await
    else {
        panic!("round {id} did not finish");
    };
    assert_eq!(report.nodes.len(), 5);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("Kubernetes API server is unreachable")),
        "{:?}",
        report.warnings
    );

    // The API comes back: fresh again.
    f.down.store(false, Ordering::SeqCst);
    for _ in 0..400 {
        if c.topology_fresh() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never fresh again after the API came back");
}
