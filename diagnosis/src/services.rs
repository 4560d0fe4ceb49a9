//! Services: CoreDNS, the kube-dns service, NodePorts, ingresses.
//!
//! A service's own cause (`dns-pod-down`, `nodeport-broken`, ...) is named only when
//! nothing on the path explains it: a node-local fact on the node it runs on (ip_forward
//! off, a FORWARD REJECT) wins, also when that node's agents are silent.

use std::collections::BTreeSet;

use meshprobe_core::matrix::CellState;
use meshprobe_core::{Cause, Direction, Layer, NodeName};

use crate::Part;
use crate::cx::{Cx, POD_TRAFFIC};
use crate::index::Col;

impl Cx<'_> {
    /// The network path from `s` into `x`'s pods works this round (as far as we know).
    pub(crate) fn path_into_pods(&self, s: usize, x: usize) -> bool {
        s == x
            || (!self.is_explained(Part::Pods, s, x)
                && !self.is_explained(Part::Network, s, x)
                && !matches!(self.broken.get(&x), Some(c) if *c != Cause::PacketLoss)
                && !self.failing(Layer::PodToPod, s, x))
    }

    pub(crate) fn pos(&self, node: &NodeName) -> Option<usize> {
        self.ix.pos.get(node.as_str()).copied()
    }

    /// Failing probes toward a service on `x` (`symptom`, cited from `cells`) that a fact
    /// on `x` explains: the finding names the fact's cause, not the symptom's. Returns
    /// whether it did.
    fn explained_by_fact(&mut self, x: usize, symptom: &str, cited: Vec<String>) -> bool {
        let Some((cause, lines)) = self.node_fact(x) else {
            return false;
        };
        if let Some(made) = self.broken.get(&x).cloned() {
            self.claim_node(x, POD_TRAFFIC);
            self.attach_pending(x, &made);
            return true;
        }
        let xn = self.nm(x);
        let mut evidence = cited;
        evidence.extend(lines);
        evidence.push(format!(
            "{symptom} runs behind {xn}'s forwarding: what {xn}'s evidence shows explains it"
        ));
        if let Some((h, p)) = self.agent_state(x) {
            evidence.push(format!(
                "{xn}'s agents are {}/{} (host/pod)",
                format!("{h:?}").to_lowercase(),
                format!("{p:?}").to_lowercase()
            ));
        }
        let fix = self.forwarding_fix(&cause, x);
        self.broken.insert(x, cause.clone());
        self.explain_node(&[Part::Pods, Part::Big], x);
        let cells = self.claim_node(x, POD_TRAFFIC) + self.claim_balanced();
        self.push(
            2,
            cells * 10,
            cause,
            vec![x],
            vec![],
            Direction::Both,
            format!(
                "forwarding on {xn}: cni0 <-> {}",
                self.t.cluster.overlay.interface
            ),
            format!("{xn} does not forward: {symptom} fails"),
            evidence,
            fix,
        );
        true
    }

    pub(crate) fn dns(&mut self) {
        for pod in self.t.core_dns.clone() {
            let (Some(x), Some(id)) = (
                self.pos(&pod.node),
                self.ix.target_id(Layer::DnsPod, &pod.name),
            ) else {
                continue;
            };
            let looked = self.ix.tcol(id).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| {
                    self.tcell(id, s).is_some_and(|c| {
                        c.state == CellState::Fail && c.loss_pct.unwrap_or(0.0) >= 50.0
                    })
                })
                .collect();
            let with_path = failing
                .iter()
                .filter(|&&s| self.path_into_pods(s, x))
                .count();
            if !self.quorum(failing.len(), looked.len()) || with_path < self.k(looked.len()) {
                continue;
            }
            let metrics = self.ix.target_id(Layer::CorednsMetrics, &pod.name);
            let cited = self.tcite(id, &failing);
            if failing.iter().any(|&s| s != x)
                && self.explained_by_fact(
                    x,
                    &format!("DNS to CoreDNS pod {}", pod.name),
                    cited.clone(),
                )
            {
                continue;
            }
            self.dns_down.insert(pod.name.clone());
            let xn = self.nm(x);
            let mut evidence = cited;
            evidence.push(format!(
                "{with_path} of those nodes reach {xn}'s pods: the network to {} ({}) works",
                pod.name, pod.ip
            ));
            let metrics_failing = metrics.map_or(0, |m| {
                self.ix
                    .tcol(m)
                    .iter()
                    .filter(|&&s| self.tfailing(m, s))
                    .count()
            });
            if metrics_failing > 0 {
                evidence.push(format!("its :9153/metrics fails too from {metrics_failing} nodes: the process is down or wedged"));
            }
            let mut cells = self.claim_target(id);
            if let Some(m) = metrics {
                cells += self.claim_target(m);
            }
            // The service balances onto this pod too.
            cells += self.claim_where(|_, k| k.layer == Layer::DnsService);
            self.push(
                7,
                cells * 5,
                Cause::DnsPodDown,
                vec![x],
                vec![],
                Direction::None,
                format!("CoreDNS pod {} ({}:53) on {xn}", pod.name, pod.ip),
                format!("CoreDNS pod {} on {xn} does not answer DNS from any node", pod.name),
                evidence,
                format!(
                    "`kubectl -n kube-system describe pod {0}; kubectl -n kube-system logs {0}`; `dig @{1} kubernetes.default.svc.{2}` from a node",
                    pod.name, pod.ip, self.t.cluster.cluster_domain
                ),
            );
        }
        self.dns_service();
    }

    /// The kube-dns service IP fails for pods that get answers from every CoreDNS pod
    /// directly. Most nodes: the service (its endpoints, kube-proxy everywhere). A few
    /// nodes while the rest resolve: each of those nodes' own kube-proxy rules.
    fn dns_service(&mut self) {
        let Some(id) = self.ix.target_id(Layer::DnsService, "kube-dns") else {
            return;
        };
        if !self.dns_down.is_empty() {
            return;
        }
        let looked = self.ix.tcol(id).to_vec();
        let reaches_all_pods = |cx: &Self, s: usize| {
            !cx.t.core_dns.is_empty()
                && cx.t.core_dns.iter().all(|p| {
                    cx.ix
                        .target_id(Layer::DnsPod, &p.name)
                        .is_some_and(|pid| cx.tok(pid, s))
                })
        };
        let failing: Vec<usize> = looked
            .iter()
            .copied()
            .filter(|&s| self.tfailing(id, s) && reaches_all_pods(self, s))
            .collect();
        if failing.is_empty() {
            return;
        }
        let ip = self
            .t
            .cluster
            .dns_service_ip
            .map(|i| i.to_string())
            .unwrap_or_default();
        if self.quorum(failing.len(), looked.len()) {
            let mut evidence = self.tcite(id, &failing);
            evidence.push("the same nodes get answers from every CoreDNS pod directly".to_owned());
            let names: Vec<String> = failing.iter().map(|&s| self.nm(s)).collect();
            let cells = self.claim_where(|_, k| k.col == Col::Target(id));
            self.push(
                7,
                cells * 5,
                Cause::DnsServiceBroken,
                failing.clone(),
                vec![],
                Direction::None,
                format!("kube-proxy: kube-dns service {ip}:53 -> CoreDNS pods"),
                format!("the kube-dns service IP {ip} does not answer on {}, while the CoreDNS pods do", names.join(", ")),
                evidence,
                format!("on those nodes: `iptables-save -t nat | grep {ip}`; `kubectl -n kube-system get endpointslices -l k8s-app=kube-dns`; kube-proxy's logs"),
            );
            return;
        }
        let resolving = looked.iter().filter(|&&s| self.tok(id, s)).count();
        if resolving * 2 <= looked.len() - failing.len() || resolving == 0 {
            return;
        }
        for x in failing {
            let xn = self.nm(x);
            let mut evidence = self.tcite(id, &[x]);
            evidence.push(format!(
                "{xn}'s pods get answers from every CoreDNS pod directly, and {resolving} other nodes' pods resolve through {ip}: what fails is {xn}'s own service rules"
            ));
            let cells = self.claim_where(|_, k| k.col == Col::Target(id) && k.src == x);
            self.push(
                7,
                cells * 5,
                Cause::DnsServiceBroken,
                vec![x],
                vec![],
                Direction::Outbound,
                format!("kube-proxy on {xn}: kube-dns service {ip}:53"),
                format!("pods on {xn} get no answer from the kube-dns service IP {ip}; other nodes' pods do"),
                evidence,
                format!("on {xn}: `iptables-save -t nat | grep -e KUBE-SERVICES -e {ip}` against a healthy node's; kube-proxy's logs on {xn} (`kubectl -n kube-system logs -l k8s-app=kube-proxy --field-selector spec.nodeName={xn}`)"),
            );
        }
    }

    pub(crate) fn metrics(&mut self) {
        for pod in self.t.core_dns.clone() {
            let (Some(x), Some(id)) = (
                self.pos(&pod.node),
                self.ix.target_id(Layer::CorednsMetrics, &pod.name),
            ) else {
                continue;
            };
            if self.dns_down.contains(&pod.name) {
                continue;
            }
            let looked = self.ix.tcol(id).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| self.tfailing(id, s))
                .filter(|&s| self.path_into_pods(s, x) && !self.is_explained(Part::Big, s, x))
                .collect();
            if !self.quorum(failing.len(), looked.len()) {
                continue;
            }
            let cited = self.tcite(id, &failing);
            if failing.iter().any(|&s| s != x)
                && self.explained_by_fact(
                    x,
                    &format!("CoreDNS pod {}'s :9153/metrics", pod.name),
                    cited.clone(),
                )
            {
                continue;
            }
            let xn = self.nm(x);
            let mut evidence = cited;
            evidence.push(format!(
                "DNS to {} answers: the pod runs, and :9153 is what fails",
                pod.name
            ));
            let cells = self.claim_target(id);
            self.push(
                8,
                cells,
                Cause::MetricsUnreachable,
                vec![x],
                vec![],
                Direction::None,
                format!("CoreDNS pod {} {}:9153/metrics on {xn}", pod.name, pod.ip),
                format!("CoreDNS pod {}'s :9153/metrics cannot be fetched", pod.name),
                evidence,
                format!("`curl -sv http://{}:9153/metrics` from a node; check NetworkPolicies and the Corefile's `prometheus :9153`", pod.ip),
            );
        }
    }

    pub(crate) fn nodeport(&mut self) {
        for id in self.ix.targets_of(Layer::Nodeport) {
            let Some(x) = self.ix.targets[id].node else {
                continue;
            };
            let col = self.ix.targets[id].name;
            if self.broken.contains_key(&x) {
                continue;
            }
            let looked = self.ix.tcol(id).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| self.tcell(id, s).is_some_and(|c| c.ok == 0))
                .filter(|&s| s == x || self.underlay_up(s, x))
                .collect();
            if !self.quorum(failing.len(), looked.len()) || self.backends_explain(id, &failing, x) {
                continue;
            }
            let cited = self.tcite(id, &failing);
            if self.explained_by_fact(x, &format!("NodePort {col}"), cited.clone()) {
                continue;
            }
            let xn = self.nm(x);
            let mut evidence = cited;
            evidence.push(format!("{xn}'s node IP answers and its pods are reachable: kube-proxy's NodePort rules on {xn} are what fails"));
            let elsewhere = self
                .ix
                .targets_of(Layer::Nodeport)
                .into_iter()
                .filter(|&o| o != id && self.tok(o, x))
                .count();
            if elsewhere > 0 {
                evidence.push(format!(
                    "from {xn}, NodePorts on {elsewhere} other nodes answer"
                ));
            }
            let from_pods = self.ix.target_id(Layer::NodeportFromPod, col);
            let mut cells = self.claim_target(id);
            if let Some(p) = from_pods {
                cells += self.claim_target(p);
            }
            self.push(
                7,
                cells * 5,
                Cause::NodeportBroken,
                vec![x],
                vec![],
                Direction::Inbound,
                format!("kube-proxy on {xn}: NodePort {col} on {}", self.node_ip(x)),
                format!("the NodePort does not answer on {xn} from any node"),
                evidence,
                format!("on {xn}: `iptables-save -t nat | grep KUBE-NODEPORTS`; kube-proxy's logs on {xn}"),
            );
        }
    }

    pub(crate) fn ingress(&mut self) {
        for ing in self.t.ingresses.clone() {
            let col = meshprobe_core::plan::ingress_column(&ing);
            let Some(id) = self.ix.target_id(Layer::Ingress, &col) else {
                continue;
            };
            let node = self.ix.targets[id].node;
            let looked = self.ix.tcol(id).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| self.tcell(id, s).is_some_and(|c| c.ok == 0))
                .filter(|&s| node.is_none_or(|n| s == n || self.underlay_up(s, n)))
                .collect();
            let node_down =
                node.is_some_and(|n| self.broken.get(&n) == Some(&Cause::NodeUnreachable));
            if node_down
                || !self.quorum(failing.len(), looked.len())
                || self.backends_explain(id, &failing, node.unwrap_or(usize::MAX))
            {
                continue;
            }
            let mut evidence = self.tcite(id, &failing);
            if let Some(n) = node {
                evidence.push(format!(
                    "the ingress node {} ({}) answers",
                    self.nm(n),
                    ing.address
                ));
            }
            let pod_paths_ok = self
                .ix
                .all(Layer::PodToPod)
                .all(|(_, _, c)| c.state == CellState::Ok);
            evidence.push(if pod_paths_ok {
                "pods are reachable across the cluster: the ingress controller itself is what fails"
                    .to_owned()
            } else {
                "some pod paths fail too (see the other findings)".to_owned()
            });
            let mut cells = self.claim_target(id);
            if let Some(p) = self.ix.target_id(Layer::IngressFromPod, &col) {
                cells += self.claim_target(p);
            }
            self.push(
                7,
                cells * 5,
                Cause::IngressBroken,
                node.into_iter().collect(),
                vec![],
                Direction::Inbound,
                format!("ingress {}:{} Host {}{}", ing.address, ing.port, ing.host, ing.path),
                format!("the ingress for {} does not answer from any node", ing.host),
                evidence,
                format!(
                    "`curl -sv -H 'Host: {}' http://{}:{}{}`; check the ingress controller's pods and logs",
                    ing.host, ing.address, ing.port, ing.path
                ),
            );
        }
    }
}

impl Cx<'_> {
    /// A load-balanced service that fails a share of requests from many nodes and through
    /// many entry nodes, while each of them also gets answers, has a backend that does not
    /// answer. Which backend, the probes cannot tell (a request does not say where it
    /// landed), so the finding names no node, and says how to find it.
    pub(crate) fn service_backends(&mut self) {
        let single = (self.t.node_ports.len() == 1).then(|| self.t.node_ports[0].name.clone());
        let mut groups: std::collections::BTreeMap<(bool, String), Vec<usize>> =
            std::collections::BTreeMap::new();
        for layer in [
            Layer::Nodeport,
            Layer::NodeportFromPod,
            Layer::Ingress,
            Layer::IngressFromPod,
        ] {
            let ingress = matches!(layer, Layer::Ingress | Layer::IngressFromPod);
            for id in self.ix.targets_of(layer) {
                let name = self.ix.targets[id].name;
                let service = if ingress {
                    name.to_owned()
                } else {
                    name.split_once('/')
                        .map(|(_, s)| s.to_owned())
                        .or_else(|| single.clone())
                        .unwrap_or_else(|| name.to_owned())
                };
                groups.entry((ingress, service)).or_default().push(id);
            }
        }
        for ((ingress, service), ids) in groups {
            let in_group =
                |k: &crate::index::CellKey| matches!(k.col, Col::Target(id) if ids.contains(&id));
            let open = self
                .ix
                .failing
                .iter()
                .filter(|k| !self.claimed.contains(k) && in_group(k))
                .count();
            if open == 0 {
                continue;
            }
            let (mut sent, mut ok, mut cells, mut dead) = (0u64, 0u64, 0usize, 0usize);
            let (mut srcs, mut lossy_srcs) = (BTreeSet::new(), BTreeSet::new());
            let (mut entries, mut lossy_entries) = (BTreeSet::new(), BTreeSet::new());
            let mut upstream_errors = 0;
            let mut cited = Vec::new();
            for &id in &ids {
                let entry = self.ix.targets[id].node;
                for &s in self.ix.tcol(id) {
                    let Some(c) = self.tcell(id, s) else { continue };
                    if c.state == CellState::Unknown || c.sent == 0 {
                        continue;
                    }
                    cells += 1;
                    sent += u64::from(c.sent);
                    ok += u64::from(c.ok);
                    srcs.insert(s);
                    entries.extend(entry);
                    if c.ok < c.sent {
                        lossy_srcs.insert(s);
                        lossy_entries.extend(entry);
                        if c.detail.is_some_and(|d| {
                            ["HTTP 502", "HTTP 503", "HTTP 504"]
                                .iter()
                                .any(|e| d.contains(e))
                        }) {
                            upstream_errors += 1;
                        }
                        if c.state == CellState::Fail && cited.len() < 4 {
                            cited.extend(self.tcite(id, &[s]));
                        }
                    }
                    if c.ok == 0 {
                        dead += 1;
                    }
                }
            }
            let spread = |lossy: usize, all: usize| lossy >= 2 && lossy * 2 >= all;
            let lost = sent - ok;
            // Most requests get through, and the lost ones are spread over the sources
            // and (NodePorts) the entry nodes: no one node's path explains them.
            if sent == 0
                || lost * 4 > sent * 3
                || dead * 2 >= cells
                || !spread(lossy_srcs.len(), srcs.len())
                || (!ingress && !spread(lossy_entries.len(), entries.len()))
            {
                continue;
            }
            let mut evidence = cited;
            let pct = lost as f64 * 100.0 / sent as f64;
            evidence.push(if ingress {
                format!(
                    "{lost} of {sent} requests ({pct:.0}%) failed, from {} of {} nodes, and each of those nodes also got answers",
                    lossy_srcs.len(),
                    srcs.len()
                )
            } else {
                format!(
                    "{lost} of {sent} requests ({pct:.0}%) failed, from {} of {} nodes and through {} of {} nodes' NodePorts, and each of them also got answers",
                    lossy_srcs.len(),
                    srcs.len(),
                    lossy_entries.len(),
                    entries.len()
                )
            });
            if upstream_errors > 0 {
                evidence.push(format!(
                    "{upstream_errors} cells got HTTP 502/503/504: the ingress answered and reached no backend for those requests"
                ));
            }
            evidence.push(format!(
                "no node's own paths explain it: about 1 request in {:.0} lands on a backend that does not answer (kube-proxy spreads requests evenly over the endpoints)",
                (sent as f64 / lost.max(1) as f64).max(1.0)
            ));
            let cells = self.claim_where(|_, k| in_group(&k));
            let (hop, summary, fix) = if ingress {
                (
                    format!("ingress {service} -> its backends"),
                    format!(
                        "the ingress for {service} fails {pct:.0}% of requests from most nodes: one of its backends does not answer"
                    ),
                    format!(
                        "`kubectl get ingress -A | grep {service}` for its service, then `kubectl get endpointslices -A -l kubernetes.io/service-name=<service> -o wide` and `curl -sv http://<endpoint IP>:<port>/` from a node for each endpoint; the controller's logs name the failing upstream"
                    ),
                )
            } else {
                (
                    format!("service {service}: NodePort -> its backends"),
                    format!(
                        "NodePort {service} fails {pct:.0}% of requests from most nodes and through most nodes: one of its backends does not answer"
                    ),
                    format!(
                        "`kubectl get endpointslices -A -l kubernetes.io/service-name={service} -o wide`, then `curl -sv http://<endpoint IP>:<target port>/` from a node for each endpoint: the one that times out is the backend; `kubectl describe pod` it and check its node's pod network"
                    ),
                )
            };
            self.push(
                7,
                cells * 5,
                Cause::ServiceBackendDown,
                vec![],
                vec![],
                Direction::None,
                hop,
                summary,
                evidence,
                fix,
            );
        }
    }

    /// A load-balanced target on `x` fails by timing out while another node's pods are
    /// cut off: the requests may have landed on a backend there, which that node's
    /// finding explains (and claims). Only a refused connection (nothing listens, no rule
    /// sends it on) is the target's own fault.
    fn backends_explain(&self, id: usize, failing: &[usize], x: usize) -> bool {
        let refused = failing.iter().all(|&s| {
            self.tcell(id, s)
                .and_then(|c| c.detail)
                .is_some_and(|d| d.to_ascii_lowercase().contains("refused"))
        });
        let elsewhere = self
            .broken
            .iter()
            .any(|(n, c)| *n != x && !matches!(c, Cause::PacketLoss | Cause::MtuMismatch));
        elsewhere && !refused
    }
}
