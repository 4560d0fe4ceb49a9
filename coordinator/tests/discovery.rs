//! Discovery's pure half against the Kubernetes API's real JSON (list responses as the API
//! serves them, in `tests/fixtures/`): the topology equals the expected one, and the
//! lifecycle cases (NotReady, cordoned, being deleted, no pod CIDR yet, a pod without an
//! IP) appear as such.

use k8s_openapi::List;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use meshprobe_coordinator::discovery::{ClusterObjects, DiscoverySettings, build};
use meshprobe_core::inventory::{NodeState, OverlayKind};
use meshprobe_core::plan::{PlanSettings, make_plan};
use meshprobe_core::{AgentKind, Topology};
use pretty_assertions::assert_eq;

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture"))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn objects() -> ClusterObjects {
    ClusterObjects {
        nodes: fixture::<List<Node>>("nodes.json").items,
        coredns: fixture::<List<Pod>>("pods-coredns.json").items,
        services: fixture::<List<Service>>("services.json").items,
        ingresses: fixture::<List<Ingress>>("ingresses.json").items,
        flannel: Some(fixture::<ConfigMap>("flannel-cm.json")),
    }
}

/// The sandbox's cluster as API objects (what `lab up --kube-api` serves) gives exactly
/// the sandbox's own inventory, and every agent pod's IP.
#[test]
fn the_sandbox_as_api_objects_gives_the_sandbox_inventory() {
    use meshprobe_sandbox::LabPlan;
    use meshprobe_sandbox::addr::PodKind;
    let plan = LabPlan::new("mp-disc", 5).expect("plan");
    fn de<T: serde::de::DeserializeOwned>(o: serde_json::Value) -> T {
        serde_json::from_value(o).expect("a valid object")
    }
    let mut objs = ClusterObjects::default();
    let mut agents: Vec<k8s_openapi::api::core::v1::Pod> = Vec::new();
    for o in meshprobe_sandbox::kube_api::lab_objects(&plan) {
        let kind = o["kind"].as_str().unwrap_or_default().to_owned();
        let labels = &o["metadata"]["labels"];
        match kind.as_str() {
            "Node" => objs.nodes.push(de(o)),
            "Pod" if labels["k8s-app"] == "kube-dns" => objs.coredns.push(de(o)),
            "Pod" if labels["app.kubernetes.io/component"] == "agent-pod" => agents.push(de(o)),
            "Pod" => {}
            "Service" => objs.services.push(de(o)),
            "Ingress" => objs.ingresses.push(de(o)),
            "ConfigMap" => objs.flannel = Some(de(o)),
            other => panic!("unexpected kind {other}"),
        }
    }
    let d = build(
        &objs,
        &DiscoverySettings {
            cluster_name: "mp-disc".into(),
            ..DiscoverySettings::default()
        },
    );
    assert_eq!(d.notes, Vec::<String>::new());
    assert_eq!(d.topology, plan.topology());
    let ips = meshprobe_coordinator::discovery::agent_pod_ips(&agents);
    assert_eq!(ips.len(), 5);
    for n in &plan.nodes {
        assert_eq!(
            ips[&meshprobe_core::NodeName::new(n.name.clone()).expect("name")],
            n.pod_ip(PodKind::Probe)
        );
    }
}

#[test]
fn topology_from_the_api_equals_the_expected_inventory() {
    let d = build(
        &objects(),
        &DiscoverySettings {
            cluster_name: "prod".into(),
            ..DiscoverySettings::default()
        },
    );
    let want = Topology::from_inventory(
        r#"
cluster:
  name: prod
  dnsServiceIP: 10.96.0.10
  overlay: {type: vxlan, port: 8475, vni: 1, interface: flannel.1, mtu: 1450}
nodes:
  - {name: worker-a, internalIP: 10.0.0.11, podCIDR: 10.244.1.0/24, vtepMAC: "0e:6d:70:00:00:0a"}
  - {name: worker-b, internalIP: 10.0.0.12, podCIDR: 10.244.2.0/24, vtepMAC: "0e:6d:70:00:00:0b"}
  - {name: worker-c, internalIP: 10.0.0.13, podCIDR: 10.244.3.0/24, vtepMAC: "0e:6d:70:00:00:0c"}
  - {name: worker-d, internalIP: 10.0.0.14, podCIDR: 10.244.4.0/24, vtepMAC: "0e:6d:70:00:00:0d"}
  - {name: worker-e, internalIP: 10.0.0.15, podCIDR: 10.244.5.0/24, vtepMAC: "0e:6d:70:00:00:0e"}
coreDNS:
  - {name: coredns-7db6d8ff4d-q8w7e, node: worker-b, ip: 10.244.2.53}
  - {name: coredns-7db6d8ff4d-x2k9p, node: worker-a, ip: 10.244.1.53}
nodePorts:
  - {name: web, port: 30080, path: /healthz}
ingresses:
  - {host: shop.example.com, address: 10.0.0.11, port: 80, path: /}
"#,
    )
    .expect("expected inventory");
    let mut want = want;
    want.nodes[2].state = NodeState::NotReady;
    want.nodes[3].state = NodeState::Cordoned;
    want.nodes[4].state = NodeState::Deleting;
    assert_eq!(d.topology, want);
    assert_eq!(
        d.notes,
        [
            "node worker-new: no IPv4 InternalIP or pod CIDR yet; not probed",
            "CoreDNS pod coredns-7db6d8ff4d-pend1: no IP or node yet; not probed",
        ]
    );
}

#[test]
fn unready_nodes_produce_only_unknown_cells() {
    let d = build(&objects(), &DiscoverySettings::default());
    let a = d.topology.nodes[0].name.clone();
    let plan = make_plan(
        &d.topology,
        &Default::default(),
        &a,
        AgentKind::Host,
        1,
        &PlanSettings::default(),
    );
    for parked in ["worker-c", "worker-d", "worker-e"] {
        assert!(
            plan.icmp.iter().all(|t| t.column != parked),
            "{parked} is probed"
        );
        assert!(
            plan.unresolved.iter().any(|u| u.column == parked),
            "{parked} is not listed as unknown"
        );
    }
    assert!(plan.icmp.iter().any(|t| t.column == "worker-b"));
}

#[test]
fn flannel_backends_and_bad_config_are_handled() {
    let mut objs = objects();
    let cm = objs.flannel.as_mut().expect("cm");
    cm.data.as_mut().expect("data").insert(
        "net-conf.json".into(),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#.into(),
    );
    let d = build(&objs, &DiscoverySettings::default());
    assert_eq!(d.topology.cluster.overlay.kind, OverlayKind::HostGw);
    objs.flannel
        .as_mut()
        .expect("cm")
        .data
        .as_mut()
        .expect("data")
        .insert("net-conf.json".into(), "{not json".into());
    let d = build(&objs, &DiscoverySettings::default());
    assert_eq!(d.topology.cluster.overlay.port, 8472, "defaults stand");
    assert!(
        d.notes
            .iter()
            .any(|n| n.contains("net-conf.json is not JSON")),
        "{:?}",
        d.notes
    );
    objs.flannel = None;
    assert_eq!(
        build(&objs, &DiscoverySettings::default())
            .topology
            .cluster
            .overlay
            .kind,
        OverlayKind::Vxlan
    );
}
