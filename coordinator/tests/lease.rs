//! Leader election between two coordinator replicas on a Lease (kube-lease-manager),
//! against the fake Kubernetes API (server-side apply with field ownership and conflicts,
//! merge patches, create, get): one leads, the standby is not ready and runs no rounds,
//! takes over within 15 s of a crash or a clean hand-over, and nobody changes role while
//! the API server is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams};
use meshprobe_coordinator::lease::{Election, LeaseSettings};
use meshprobe_coordinator::rounds::RoundStatus;
use meshprobe_coordinator::{Coordinator, Settings, StaticTopology, router};
use meshprobe_core::Topology;
use meshprobe_sandbox::kube_api::FakeApi;
use serde_json::json;

const INVENTORY: &str = "
cluster: {name: t}
nodes:
  - {name: n1, internalIP: 192.168.77.11, podCIDR: 10.42.1.0/24}
  - {name: n2, internalIP: 192.168.77.12, podCIDR: 10.42.2.0/24}
";
const LEASE: &str = "meshprobe-coordinator";
const NS: &str = "meshprobe";

async fn fake_api() -> (Arc<FakeApi>, kube::Client) {
    let api = FakeApi::new([]).expect("empty");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(Arc::clone(&api).serve(listener));
    let client =
        kube::Client::try_from(kube::Config::new(url.parse().expect("uri"))).expect("client");
    (api, client)
}

/// One replica: a coordinator following its own election, served on 127.0.0.1.
struct Replica {
    c: Arc<Coordinator>,
    election: Option<Election>,
    url: String,
}

async fn replica(client: &kube::Client, identity: &str) -> Replica {
    let topo = Topology::from_inventory(INVENTORY).expect("inventory");
    let c = Coordinator::new(Box::new(StaticTopology::new(topo)), Settings::default());
    let election = Election::start(client.clone(), LeaseSettings::new(LEASE, NS, identity));
    c.follow(election.leader());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = router(Arc::clone(&c));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Replica {
        c,
        election: Some(election),
        url,
    }
}

async fn status(url: &str, method: reqwest::Method, path: &str) -> u16 {
    reqwest::Client::new()
        .request(method, format!("{url}{path}"))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Waits until `r` leads; returns how long that took.
async fn until_leads(r: &Replica, within: Duration, what: &str) -> Duration {
    let t0 = Instant::now();
    while !r.c.is_leader() {
        assert!(
            t0.elapsed() < within,
            "{what}: not leading within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t0.elapsed()
}

fn holder(api: &FakeApi) -> Option<String> {
    api.get("Lease", Some(NS), LEASE)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

async fn assert_serving_roles(leader: &Replica, standby: &Replica) {
    assert!(leader.c.is_leader() && !standby.c.is_leader());
    assert_eq!(
        status(&leader.url, reqwest::Method::GET, "/readyz").await,
        200
    );
    assert_eq!(
        status(&standby.url, reqwest::Method::GET, "/readyz").await,
        503
    );
    assert_eq!(
        status(&standby.url, reqwest::Method::POST, "/v1/rounds").await,
        503,
        "a standby runs no rounds"
    );
    assert_eq!(
        status(
            &standby.url,
            reqwest::Method::GET,
            "/v1/agents/n1/host/next?wait=0"
        )
        .await,
        503,
        "a standby serves no plans"
    );
    assert_eq!(
        status(&standby.url, reqwest::Method::GET, "/healthz").await,
        200,
        "a standby is alive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_the_standby_takes_over_within_15s() {
    let (api, client) = fake_api().await;
    let mut a = replica(&client, "coordinator-a").await;
    until_leads(&a, Duration::from_secs(5), "the first replica").await;
    let mut b = replica(&client, "coordinator-b").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_serving_roles(&a, &b).await;
    assert_eq!(holder(&api).as_deref(), Some("coordinator-a"));
    // The leader runs rounds; the standby's schedule does nothing.
    let id = a.c.trigger();
    assert!(matches!(
        a.c.wait_for(id, Duration::from_secs(10)).await,
        RoundStatus::Done(_)
    ));
    b.c.tick();
    assert!(b.c.latest().is_none(), "the standby started a round");

    // The leader crashes (no release): the standby takes over within 15 s.
    a.election.take().expect("election").abandon();
    let took = until_leads(&b, Duration::from_secs(15), "after the leader crashed").await;
    eprintln!("standby took over {took:?} after the leader crashed");
    assert_eq!(status(&b.url, reqwest::Method::GET, "/readyz").await, 200);
    let id = b.c.trigger();
    assert!(matches!(
        b.c.wait_for(id, Duration::from_secs(10)).await,
        RoundStatus::Done(_)
    ));

    // A replacement joins as standby; the leader shuts down cleanly (releases the lease).
    let mut c = replica(&client, "coordinator-c").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_serving_roles(&b, &c).await;
    b.election.take().expect("election").release().await;
    assert!(!b.c.is_leader(), "a released replica is standby");
    let took = until_leads(&c, Duration::from_secs(15), "after a clean hand-over").await;
    eprintln!("standby took over {took:?} after the leader released");
    assert_eq!(holder(&api).as_deref(), Some("coordinator-c"));

    // The API server goes away for longer than the lease: nobody can renew or take it,
    // and nobody changes role, so the leader keeps running rounds.
    let d = replica(&client, "coordinator-d").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_serving_roles(&c, &d).await;
    api.set_down(true);
    for _ in 0..24 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            c.c.is_leader() && !d.c.is_leader(),
            "a role changed while the API server was down"
        );
    }
    let id = c.c.trigger();
    assert!(matches!(
        c.c.wait_for(id, Duration::from_secs(10)).await,
        RoundStatus::Done(_)
    ));
    api.set_down(false);
    // After it returns, exactly one leads (either may: the lease expired while nobody
    // could renew it).
    let t0 = Instant::now();
    loop {
        let (lc, ld) = (c.c.is_leader(), d.c.is_leader());
        if lc != ld && t0.elapsed() > Duration::from_secs(10) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(45),
            "no single leader after the API came back: c={lc} d={ld}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.election.take().expect("election").release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_never_both_lead() {
    let (api, client) = fake_api().await;
    let rs = [
        replica(&client, "r1").await,
        replica(&client, "r2").await,
        replica(&client, "r3").await,
    ];
    let mut settled = 0;
    for _ in 0..100 {
        let leaders = rs.iter().filter(|r| r.c.is_leader()).count();
        assert!(leaders <= 1, "{leaders} replicas lead at once");
        if leaders == 1 {
            settled += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(settled > 50, "no leader for most of 5 s");
    let leader = rs.iter().position(|r| r.c.is_leader()).expect("a leader");
    assert_eq!(holder(&api), Some(format!("r{}", leader + 1)));

    // What the election relies on: server-side apply refuses to take a field another
    // manager owns with a different value.
    let leases: Api<Lease> = Api::namespaced(client, NS);
    let grab = Patch::Apply(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "spec": { "holderIdentity": "intruder" },
    }));
    match leases
        .patch(LEASE, &PatchParams::apply("intruder"), &grab)
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("an apply over another manager's field must conflict: {other:?}"),
    }
    assert_eq!(holder(&api), Some(format!("r{}", leader + 1)));
}
