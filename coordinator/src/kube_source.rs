//! Kubernetes discovery, the watching half: one watch per resource type for the whole
//! cluster (kube-rs reflectors), and the [`TopologySource`] built on their stores.
//!
//! The stores keep their last state when the API server goes away (the watchers retry
//! with backoff, and a 410 Gone makes them list again), so the coordinator keeps planning
//! from the last known topology; [`TopologySource::fresh`] says whether it is current.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use meshprobe_core::{NodeName, Topology};

use crate::discovery::{
    ClusterObjects, DiscoverySettings, MESHPROBE_PODS_SELECTOR, OPT_IN_LABEL, agent_pod_ips, build,
};
use crate::source::TopologySource;

/// How often the API server's health is checked (`GET /version`), and how long it gets.
/// The watches alone cannot tell: kube-client retries 429/503/504 with backoff for
/// minutes before a watch reports an error.
pub const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// Timeout of one health check.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// How often flannel's ConfigMap is read (it is polled with `get`, which is all the RBAC
/// grants on it: it changes on a reconfiguration, not every minute).
pub const FLANNEL_POLL: Duration = Duration::from_secs(60);

/// The topology from the Kubernetes API.
pub struct KubeTopology {
    nodes: Store<Node>,
    coredns: Store<Pod>,
    kube_dns: Store<Service>,
    services: Store<Service>,
    ingresses: Store<Ingress>,
    agents: Store<Pod>,
    flannel: Arc<Mutex<Option<ConfigMap>>>,
    healthy: Vec<Arc<AtomicBool>>,
    settings: DiscoverySettings,
}

/// Starts a reflector for `api` and keeps it running; `healthy` follows its last event.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
) -> (Store<K>, Arc<AtomicBool>)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    tokio::spawn(async move {
        let mut stream =
            Box::pin(reflector::reflector(writer, watcher(api, config)).default_backoff());
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => flag.store(true, Ordering::Relaxed),
                Err(e) => {
                    if flag.swap(false, Ordering::Relaxed) {
                        tracing::warn!(resource = what, error = %e, "watch failed; serving the last known state");
                    }
                }
            }
        }
    });
    (reader, healthy)
}

impl KubeTopology {
    /// The watch of meshprobe's pods (agents' tokens are bound to nodes through it).
    pub fn meshprobe_pods(&self) -> Store<Pod> {
        self.agents.clone()
    }

    /// Starts the watches (must be called inside a Tokio runtime).
    pub fn start(client: kube::Client, settings: DiscoverySettings) -> Self {
        let (nodes, h1) = reflect(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            "nodes",
        );
        let (coredns, h2) = reflect(
            Api::<Pod>::namespaced(client.clone(), "kube-system"),
            watcher::Config::default().labels("k8s-app=kube-dns"),
            "CoreDNS pods",
        );
        let (kube_dns, h3) = reflect(
            Api::<Service>::namespaced(client.clone(), "kube-system"),
            watcher::Config::default().fields("metadata.name=kube-dns"),
            "the kube-dns service",
        );
        let opt_in = format!("{OPT_IN_LABEL}=true");
        let (services, h4) = reflect(
            Api::<Service>::all(client.clone()),
            watcher::Config::default().labels(&opt_in),
            "services",
        );
        let (ingresses, h5) = reflect(
            Api::<Ingress>::all(client.clone()),
            watcher::Config::default().labels(&opt_in),
            "ingresses",
        );
        let (agents, h6) = reflect(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(MESHPROBE_PODS_SELECTOR),
            "meshprobe's pods",
        );
        let api_up = Arc::new(AtomicBool::new(false));
        let up = Arc::clone(&api_up);
        let health_client = client.clone();
        tokio::spawn(async move {
            loop {
                let ok = matches!(
                    tokio::time::timeout(HEALTH_TIMEOUT, health_client.apiserver_version()).await,
                    Ok(Ok(_))
                );
                if up.swap(ok, Ordering::Relaxed) != ok {
                    if ok {
                        tracing::info!("the Kubernetes API server answers again");
                    } else {
                        tracing::warn!(
                            "the Kubernetes API server does not answer; serving the last known topology"
                        );
                    }
                }
                tokio::time::sleep(HEALTH_EVERY).await;
            }
        });
        let flannel = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&flannel);
        tokio::spawn(async move {
            loop {
                for ns in ["kube-flannel", "kube-system"] {
                    match Api::<ConfigMap>::namespaced(client.clone(), ns)
                        .get_opt("kube-flannel-cfg")
                        .await
                    {
                        Ok(Some(cm)) => {
                            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(cm);
                            break;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(namespace = ns, error = %e, "kube-flannel-cfg not readable")
                        }
                    }
                }
                tokio::time::sleep(FLANNEL_POLL).await;
            }
        });
        Self {
            nodes,
            coredns,
            kube_dns,
            services,
            ingresses,
            agents,
            flannel,
            healthy: vec![api_up, h1, h2, h3, h4, h5, h6],
            settings,
        }
    }

    /// The objects the stores hold now.
    pub fn objects(&self) -> ClusterObjects {
        fn own<K: Clone>(v: Vec<Arc<K>>) -> Vec<K> {
            v.into_iter().map(|a| (*a).clone()).collect()
        }
        let mut services = own(self.kube_dns.state());
        services.extend(own(self.services.state()));
        ClusterObjects {
            nodes: own(self.nodes.state()),
            coredns: own(self.coredns.state()),
            services,
            ingresses: own(self.ingresses.state()),
            flannel: self
                .flannel
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

impl TopologySource for KubeTopology {
    fn current(&self) -> Arc<Topology> {
        let d = build(&self.objects(), &self.settings);
        for n in &d.notes {
            tracing::debug!(note = %n, "discovery");
        }
        Arc::new(d.topology)
    }

    fn fresh(&self) -> bool {
        self.healthy.iter().all(|h| h.load(Ordering::Relaxed))
    }

    fn agent_pod_ips(&self) -> BTreeMap<NodeName, Ipv4Addr> {
        agent_pod_ips(self.agents.state().iter().map(AsRef::as_ref))
    }
}
