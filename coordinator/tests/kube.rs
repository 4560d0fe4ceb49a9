//! Discovery's watching half against a fixture Kubernetes API on 127.0.0.1: real list and
//! watch responses (newline-delimited watch events, resource versions, label and field
//! selectors), a node joining and leaving, 410 Gone on a watch, and the API going away
//! while the coordinator keeps serving the last known topology. The fixture is the
//! sandbox's fake API server (`meshprobe_sandbox::kube_api`), serving the API's JSON from
//! `tests/fixtures/`.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use meshprobe_coordinator::discovery::DiscoverySettings;
use meshprobe_coordinator::kube_source::KubeTopology;
use meshprobe_coordinator::{Coordinator, Settings, TopologySource};
use meshprobe_core::NodeName;
use meshprobe_core::inventory::NodeState;
use meshprobe_sandbox::kube_api::FakeApi;
use serde_json::{Value, json};

fn fixture_items(name: &str, kind: &str) -> Vec<Value> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    // Items of a list carry no kind; the list does.
    v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut i| {
            i["kind"] = json!(kind);
            i
        })
        .collect()
}

/// meshprobe's pod agents: running with an IP on worker-a, pending on worker-b.
fn agent_pods() -> Vec<Value> {
    let pod = |node: &str, phase: &str, ip: Option<&str>| {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("meshprobe-agent-pod-{node}"), "namespace": "meshprobe",
                "creationTimestamp": "2026-11-20T08:00:00Z",
                "labels": { "app.kubernetes.io/name": "meshprobe", "app.kubernetes.io/component": "agent-pod" },
            },
            "spec": { "nodeName": node, "containers": [{ "name": "agent", "image": "meshprobe" }] },
            "status": { "phase": phase },
        });
        if let Some(ip) = ip {
            p["status"]["podIP"] = json!(ip);
        }
        p
    };
    let mut host = pod("worker-b", "Running", Some("192.168.1.12"));
    host["metadata"]["name"] = json!("meshprobe-agent-host-worker-b");
    host["metadata"]["labels"]["app.kubernetes.io/component"] = json!("agent-host");
    // The host agent is running with the node's IP: it is no pod-network agent.
    vec![
        host,
        pod("worker-a", "Running", Some("10.244.1.10")),
        pod("worker-b", "Pending", None),
    ]
}

async fn start() -> (Arc<FakeApi>, KubeTopology) {
    let (f, src, _) = start_with_client().await;
    (f, src)
}

async fn start_with_client() -> (Arc<FakeApi>, KubeTopology, kube::Client) {
    let mut objects = fixture_items("nodes.json", "Node");
    objects.extend(fixture_items("pods-coredns.json", "Pod"));
    objects.extend(fixture_items("services.json", "Service"));
    objects.extend(fixture_items("ingresses.json", "Ingress"));
    objects.extend(agent_pods());
    let mut cm: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/fixtures/flannel-cm.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("cm"),
    )
    .expect("json");
    cm["kind"] = json!("ConfigMap");
    objects.push(cm);
    let f = FakeApi::new(objects).expect("fixture objects");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(Arc::clone(&f).serve(listener));
    let config = kube::Config::new(url.parse().expect("uri"));
    let client = kube::Client::try_from(config).expect("client");
    let src = KubeTopology::start(client.clone(), DiscoverySettings::default());
    (f, src, client)
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
    // meshprobe's own pod agents: the running one gives its node's probe-pod IP; the
    // pending one gives nothing (its node's pod cells are unknown, not failing).
    let pod_ips = |s: &KubeTopology| -> Vec<(String, Ipv4Addr)> {
        s.agent_pod_ips()
            .into_iter()
            .map(|(n, ip)| (n.to_string(), ip))
            .collect()
    };
    until(&src, 5, "agent pods", |s| !pod_ips(s).is_empty()).await;
    assert_eq!(
        pod_ips(&src),
        [("worker-a".to_owned(), Ipv4Addr::new(10, 244, 1, 10))]
    );
    // The pending one starts running: its IP arrives through the watch.
    let mut running = agent_pods().pop().expect("worker-b's agent");
    running["status"] = json!({ "phase": "Running", "podIP": "10.244.2.10" });
    f.apply(running).expect("a pod");
    until(&src, 5, "worker-b's agent gets its IP", |s| {
        s.agent_pod_ips()
            .get(&NodeName::new("worker-b").expect("name"))
            == Some(&Ipv4Addr::new(10, 244, 2, 10))
    })
    .await;

    // A node joins: it is in the next plan.
    let mut new = fixture_items("nodes.json", "Node")
        .into_iter()
        .next()
        .expect("a node");
    new["metadata"]["name"] = json!("worker-f");
    new["spec"]["podCIDR"] = json!("10.244.6.0/24");
    new["spec"]["podCIDRs"] = json!(["10.244.6.0/24"]);
    new["status"]["addresses"][0]["address"] = json!("10.0.0.17");
    f.apply(new).expect("a node");
    until(&src, 5, "worker-f joins", |s| {
        names(s).contains(&"worker-f".to_owned())
    })
    .await;
    // Another is removed: it leaves.
    assert!(f.delete("Node", None, "worker-b"));
    until(&src, 5, "worker-b leaves", |s| {
        !names(s).contains(&"worker-b".to_owned())
    })
    .await;

    // 410 Gone on a watch: the watcher lists again and stays consistent.
    let watches = f.watches();
    f.compact();
    until(&src, 10, "re-watch after 410 Gone", |_| {
        f.watches() > watches + 2
    })
    .await;
    assert!(f.delete("Node", None, "worker-c"));
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
    f.set_down(true);
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
    f.set_down(false);
    for _ in 0..400 {
        if c.topology_fresh() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never fresh again after the API came back");
}

/// Issue 11: an agent's projected ServiceAccount token is verified with a TokenReview
/// (the fixture answers with the pod claims a real API server sends) and bound to the
/// node its pod runs on, from the coordinator's own watch; verdicts are cached, and a
/// known token keeps working while the API server is down.
#[tokio::test]
async fn agent_tokens_are_reviewed_and_bound_to_their_pods_node() {
    use meshprobe_coordinator::auth::{ReviewError, TokenReviewer as _};
    use meshprobe_coordinator::kube_auth::{AUDIENCE, KubeReviewer};
    let (f, src, client) = start_with_client().await;
    until(&src, 10, "agent pods watched", |s| {
        s.fresh() && s.meshprobe_pods().state().len() == 3
    })
    .await;
    let reviewer = KubeReviewer::new(client, src.meshprobe_pods());
    let node = |n: &str| NodeName::new(n).expect("name");
    let pod_a = f.issue_token(
        "meshprobe",
        "meshprobe-agent-pod-worker-a",
        "meshprobe-agent",
        AUDIENCE,
    );
    let host_b = f.issue_token(
        "meshprobe",
        "meshprobe-agent-host-worker-b",
        "meshprobe-agent",
        AUDIENCE,
    );
    assert_eq!(
        reviewer.review(&pod_a).await.expect("pod agent"),
        node("worker-a")
    );
    assert_eq!(
        reviewer.review(&host_b).await.expect("host agent"),
        node("worker-b")
    );

    // A token for another audience, a made-up token, a token of a pod that is not an
    // agent (CoreDNS on worker-a): refused, each saying why.
    let wrong_aud = f.issue_token(
        "meshprobe",
        "meshprobe-agent-pod-worker-a",
        "meshprobe-agent",
        "kubernetes",
    );
    assert!(
        matches!(reviewer.review(&wrong_aud).await, Err(ReviewError::Rejected(m)) if m.contains("audiences"))
    );
    assert!(matches!(
        reviewer.review("eyJmade.up.token").await,
        Err(ReviewError::Rejected(_))
    ));
    let dns = f.issue_token(
        "kube-system",
        "coredns-7db6d8ff4d-x2k9p",
        "coredns",
        AUDIENCE,
    );
    assert!(
        matches!(reviewer.review(&dns).await, Err(ReviewError::NotAnAgent(m)) if m.contains("not a meshprobe agent pod")),
    );

    // Cached: asking again costs the API server nothing.
    let reviews = f.reviews();
    for _ in 0..10 {
        assert_eq!(
            reviewer.review(&pod_a).await.expect("cached"),
            node("worker-a")
        );
    }
    assert_eq!(f.reviews(), reviews, "every repeat came from the cache");

    // The API server goes away: a known token still works; a new one cannot be verified
    // (503 at the coordinator, which agents treat as unreachable).
    f.set_down(true);
    assert_eq!(
        reviewer.review(&host_b).await.expect("known token"),
        node("worker-b")
    );
    let new = f.issue_token(
        "meshprobe",
        "meshprobe-agent-pod-worker-b",
        "meshprobe-agent",
        AUDIENCE,
    );
    assert!(matches!(
        reviewer.review(&new).await,
        Err(ReviewError::Unavailable { .. })
    ));
    f.set_down(false);
}

/// Issue 13: a finding persisting 3 rounds sets `MeshprobeNetworkProblem` on its node
/// (merged beside the kubelet's conditions) and creates one Event; repeats within the
/// rate limit write nothing; a cleared finding turns the condition False.
#[tokio::test]
async fn persisting_findings_set_a_node_condition_and_an_event() {
    use meshprobe_coordinator::node_signals::{CONDITION, NodeSignals};
    let (f, _src, client) = start_with_client().await;
    let signals = NodeSignals::new(client);
    let report = |rounds: u32, broken: bool| -> meshprobe_core::CheckReport {
        let findings = if broken {
            json!([{
                "cause": "ip-forward-disabled", "nodes": ["worker-a"], "peers": [],
                "direction": "both", "hop": "forwarding on worker-a",
                "summary": "worker-a does not forward", "evidence": [],
                "fix": "sysctl -w net.ipv4.ip_forward=1", "rounds": rounds,
            }])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "healthy": !broken, "round": rounds, "nodes": ["worker-a", "worker-b"],
            "layers": {}, "findings": findings,
        }))
        .expect("report")
    };
    let condition = || {
        f.get("Node", None, "worker-a").expect("node")["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let ours = || condition().into_iter().find(|c| c["type"] == CONDITION);
    let ready_before = condition().iter().any(|c| c["type"] == "Ready");
    assert!(
        ready_before,
        "the fixture's node has the kubelet's Ready condition"
    );

    signals.after_round(&report(2, true)).await;
    assert!(ours().is_none(), "two rounds do not persist");
    signals.after_round(&report(3, true)).await;
    let c = ours().expect("the condition is set");
    assert_eq!(
        (
            c["status"].as_str(),
            c["reason"].as_str(),
            c["message"].as_str()
        ),
        (
            Some("True"),
            Some("IpForwardDisabled"),
            Some("worker-a does not forward")
        )
    );
    assert!(
        condition().iter().any(|c| c["type"] == "Ready"),
        "the kubelet's conditions stay: {:?}",
        condition()
    );
    let events = f.list("Event");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["involvedObject"]["name"], "worker-a");
    assert_eq!(events[0]["reason"], "IpForwardDisabled");
    assert_eq!(events[0]["type"], "Warning");

    // The next rounds: nothing new to write (rate limit and no new finding).
    let rv = f.get("Node", None, "worker-a").expect("node")["metadata"]["resourceVersion"].clone();
    signals.after_round(&report(4, true)).await;
    signals.after_round(&report(5, true)).await;
    assert_eq!(
        f.get("Node", None, "worker-a").expect("node")["metadata"]["resourceVersion"],
        rv
    );
    assert_eq!(f.list("Event").len(), 1);

    // Cleared.
    signals.after_round(&report(6, false)).await;
    let c = ours().expect("still there, now False");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "NoNetworkProblem");
}
