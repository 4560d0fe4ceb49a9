//! Services: CoreDNS, the kube-dns service, NodePorts, ingresses.
//!
//! A service's own cause (`dns-pod-down`, `nodeport-broken`, ...) is named only when
//! nothing on the path explains it: a node-local fact on the node it runs on (ip_forward
//! off, a FORWARD REJECT) wins, also when that node's agents are silent.

use std::collections::BTreeSet;

use meshprobe_core::matrix::CellState;
use meshprobe_core::{Cause, Direction, FailKind, Layer, NodeName};

use crate::Part;
use crate::cx::{Cx, POD_TRAFFIC};
use crate::index::Col;

impl Cx<'_> {
    /// The network path from `s` into `x`'s pods works this round (as far as we know).
    pub(crate) fn path_into_pods(&self, s: usize, x: usize) -> bool {
        s == x
            || (!self.ledger.is_explained(Part::Pods, s, x)
                && !self.ledger.is_explained(Part::Network, s, x)
                && !matches!(self.ledger.broken(x), Some(c) if *c != Cause::PacketLoss)
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
        if let Some(made) = self.ledger.broken(x).cloned() {
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
        if self.ledger.vetoed(&cause, x) {
            return false;
        }
        let fix = self.forwarding_fix(&cause, x);
        self.ledger.mark_broken(x, cause.clone());
        self.ledger.explain_node(&[Part::Pods, Part::Big], x);
        let cells = self.claim_node(x, POD_TRAFFIC) + self.claim_balanced_of(x);
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
            if self.ledger.vetoed(&Cause::DnsPodDown, x) {
                continue;
            }
            self.ledger.dns_down.insert(pod.name.clone());
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
        if !self.ledger.dns_down.is_empty() {
            return;
        }
        let looked = self.ix.tcol(id).to_vec();
        // s's pods reach some CoreDNS pods directly, and lose more of their queries to the
        // service IP than landing on the pods at the loss each shows directly would
        // (within three standard deviations): what fails is the service path itself. A
        // direct cell that passes with losses proves that share of delivery, not all of it
        // (a pod behind a lossy node). A pod on a node that a network finding already
        // blames for small packets too (anything but a size limit) counts as out of reach,
        // whatever its one sample showed.
        let beyond_the_pods = |cx: &Self, s: usize| {
            let probed: Vec<(bool, f64)> =
                cx.t.core_dns
                    .iter()
                    .filter_map(|p| {
                        let pid = cx.ix.target_id(Layer::DnsPod, &p.name)?;
                        let behind_a_fault = cx
                            .pos(&p.node)
                            .and_then(|x| cx.ledger.broken(x))
                            .is_some_and(|cause| *cause != Cause::MtuMismatch);
                        cx.tcell(pid, s)
                            .filter(|c| c.state != CellState::Unknown && c.sent > 0)
                            .map(|c| {
                                if behind_a_fault {
                                    return (false, 1.0);
                                }
                                let lost = f64::from(c.sent.saturating_sub(c.ok));
                                let loss = if c.state == CellState::Ok {
                                    lost / f64::from(c.sent)
                                } else {
                                    1.0
                                };
                                (c.state == CellState::Ok, loss)
                            })
                    })
                    .collect();
            let reached = probed.iter().filter(|(ok, _)| *ok).count();
            let Some(c) = cx.tcell(id, s) else {
                return false;
            };
            if probed.is_empty() || reached == 0 {
                return false;
            }
            // With half the queries lost landing on the pods or more, losing every query
            // is what that does once in a thousand rounds: not enough to blame the node.
            let share = probed.iter().map(|(_, loss)| loss).sum::<f64>() / probed.len() as f64;
            if share >= 0.5 {
                return false;
            }
            let (sent, lost) = (f64::from(c.sent), f64::from(c.sent.saturating_sub(c.ok)));
            crate::cx::beyond_share(sent, lost, share)
        };
        let failing: Vec<usize> = looked
            .iter()
            .copied()
            .filter(|&s| self.tfailing(id, s) && beyond_the_pods(self, s))
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
        // Nodes that resolve, or whose losses another finding already explains (their
        // queries landing on a pod behind a broken node).
        let resolving = looked
            .iter()
            .filter(|&&s| {
                !failing.contains(&s)
                    && (self.tok(id, s)
                        || self.ledger.is_claimed(&crate::index::CellKey {
                            layer: Layer::DnsService,
                            src: s,
                            col: Col::Target(id),
                        }))
            })
            .count();
        if resolving * 2 <= looked.len() - failing.len() || resolving == 0 {
            return;
        }
        for x in failing {
            let xn = self.nm(x);
            let mut evidence = self.tcite(id, &[x]);
            evidence.push(format!(
                "{xn}'s pods get answers from every CoreDNS pod directly, and {resolving} other nodes' pods resolve through {ip}: what fails is {xn}'s own service path"
            ));
            let facts = self.service_facts(x);
            let explained = !facts.is_empty();
            let fix = self.service_fix(x).unwrap_or_else(|| format!("on {xn}: `iptables-save -t nat | grep -e KUBE-SERVICES -e {ip}` against a healthy node's; kube-proxy's logs on {xn} (`kubectl -n kube-system logs -l k8s-app=kube-proxy --field-selector spec.nodeName={xn}`)"));
            evidence.extend(facts);
            // What x's evidence explains fails its pods' other service requests too.
            let cells = self.claim_where(|_, k| {
                k.src == x
                    && (k.col == Col::Target(id)
                        || (explained
                            && matches!(k.layer, Layer::NodeportFromPod | Layer::IngressFromPod)))
            });
            self.push(
                7,
                cells * 5,
                self.service_cause(x, Cause::DnsServiceBroken),
                vec![x],
                vec![],
                Direction::Outbound,
                format!("kube-proxy on {xn}: kube-dns service {ip}:53"),
                format!("pods on {xn} get no answer from the kube-dns service IP {ip}; other nodes' pods do"),
                evidence,
                fix,
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
            if self.ledger.dns_down.contains(&pod.name) {
                continue;
            }
            let looked = self.ix.tcol(id).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| self.tfailing(id, s))
                .filter(|&s| {
                    self.path_into_pods(s, x) && !self.ledger.is_explained(Part::Big, s, x)
                })
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
        // Each NodePort column's share of lost requests, host and pod views together, to
        // compare one node's port with the others'.
        let sent_lost = |cx: &Self, ids: &[usize]| -> (u64, u64) {
            let (mut sent, mut ok) = (0u64, 0u64);
            for &id in ids {
                for &s in cx.ix.tcol(id) {
                    if let Some(c) = cx.tcell(id, s).filter(|c| c.state != CellState::Unknown) {
                        sent += u64::from(c.sent);
                        ok += u64::from(c.ok);
                    }
                }
            }
            (sent, sent - ok)
        };
        let columns: Vec<(usize, Option<usize>)> = self
            .ix
            .targets_of(Layer::Nodeport)
            .into_iter()
            .map(|id| {
                let col = self.ix.targets[id].name;
                (id, self.ix.target_id(Layer::NodeportFromPod, col))
            })
            .collect();
        // Every column's (sent, lost) together, once: a column's peers are the rest.
        let mut all_sent_lost = None;
        for &(id, from_pods) in &columns {
            let Some(x) = self.ix.targets[id].node else {
                continue;
            };
            let col = self.ix.targets[id].name;
            if self.ledger.is_broken(x) || !self.ix.involved(x) {
                continue;
            }
            let looked = self.ix.tcol(id).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| self.tcell(id, s).is_some_and(|c| c.ok == 0))
                .filter(|&s| s == x || self.underlay_up(s, x))
                .collect();
            let xn = self.nm(x);
            if self.target_claimed(id)
                && from_pods.is_none_or(|p| self.target_claimed(p))
                && !self.refused(id, &failing)
            {
                continue;
            }
            let (cited, partial) = if self.quorum(failing.len(), looked.len())
                && !self.backends_explain(id, &failing, x)
            {
                (self.tcite(id, &failing), None)
            } else {
                // Most observers, from their hosts or their pods, lose most of their
                // requests to x's port, while the other nodes' ports answer: x's
                // kube-proxy passes some requests (those it keeps on x) and not the rest.
                let ids: Vec<usize> = [Some(id), from_pods].into_iter().flatten().collect();
                let mut observers: Vec<usize> = ids
                    .iter()
                    .flat_map(|&i| self.ix.tcol(i).iter().copied())
                    .collect();
                observers.sort_unstable();
                observers.dedup();
                let failing: Vec<usize> = observers
                    .iter()
                    .copied()
                    .filter(|&s| {
                        ids.iter()
                            .any(|&i| self.tcell(i, s).is_some_and(|c| c.state == CellState::Fail))
                    })
                    .filter(|&s| s == x || self.underlay_up(s, x))
                    .collect();
                if failing.is_empty() {
                    continue;
                }
                let (all_sent, all_lost) = *all_sent_lost.get_or_insert_with(|| {
                    let ids: Vec<usize> = columns
                        .iter()
                        .flat_map(|(o, p)| [Some(*o), *p])
                        .flatten()
                        .collect();
                    sent_lost(self, &ids)
                });
                let (sent, lost) = sent_lost(self, &ids);
                if sent == 0 || all_sent <= sent {
                    continue;
                }
                let here = lost as f64 / sent as f64;
                let elsewhere = (all_lost - lost) as f64 / (all_sent - sent) as f64;
                // A cut tunnel to x's pods (or from them) fails the requests x sends on
                // to them, which is that fault's, not kube-proxy's.
                let paths_whole = !self.ix.failing.iter().any(|k| {
                    let d = self.ix.dst_node(*k);
                    // Small packets: a request is a few hundred bytes.
                    matches!(
                        k.layer,
                        Layer::GatewayFromHost | Layer::GatewayFromPod | Layer::PodToPod
                    ) && (k.src == x || d == Some(x))
                        && d.is_none_or(|d| {
                            !self.ledger.is_explained(Part::Network, k.src, d)
                                && !self.ledger.is_explained(Part::Pods, k.src, d)
                        })
                });
                // x's evidence, against its peers', explains any failing request to it;
                // without it, most observers must lose most of theirs while the other
                // nodes' ports answer.
                let explained = self.service_odd(x).iter().any(|f| f.breaks_nodeports());
                let by_peers = self.quorum(failing.len(), observers.len())
                    && here >= 0.5
                    && elsewhere * 4.0 <= here;
                // What a broken node's backends explain is claimed already: only what is
                // left over is x's.
                // x's own evidence names the cause whatever else fails; the comparison
                // with the other nodes' ports holds only while x's own paths are whole.
                if failing.is_empty()
                    || !(explained || (paths_whole && by_peers))
                    || (self.target_claimed(id) && from_pods.is_none_or(|p| self.target_claimed(p)))
                {
                    continue;
                }
                let mut cited = self.tcite(id, &failing);
                if let Some(p) = from_pods {
                    cited.extend(self.tcite(p, &failing));
                }
                (cited, Some((here, elsewhere)))
            };
            if self.explained_by_fact(x, &format!("NodePort {col}"), cited.clone()) {
                continue;
            }
            let mut evidence = cited;
            if let Some((here, elsewhere)) = partial {
                evidence.push(format!(
                    "{:.0}% of the requests to {xn}'s NodePort are lost, {:.0}% of those to the other nodes': {xn}'s kube-proxy passes some requests and not the rest",
                    here * 100.0,
                    elsewhere * 100.0
                ));
            } else {
                evidence.push(format!("{xn}'s node IP answers and its pods are reachable: kube-proxy's NodePort rules on {xn} are what fails"));
            }
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
            evidence.extend(self.service_facts(x));
            let fix = self.service_fix(x).unwrap_or_else(|| {
                format!("on {xn}: `iptables-save -t nat | grep -e KUBE-NODEPORTS -e KUBE-POSTROUTING` against a healthy node's; kube-proxy's logs on {xn}")
            });
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
                if partial.is_some() {
                    format!("the NodePort on {xn} loses most requests from most nodes, while the other nodes' NodePorts answer")
                } else {
                    format!("the NodePort does not answer on {xn} from any node")
                },
                evidence,
                fix,
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
                node.is_some_and(|n| self.ledger.broken(n) == Some(&Cause::NodeUnreachable));
            if node_down
                || (self.target_claimed(id) && !self.refused(id, &failing))
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
    /// Every one of `failing`'s cells of target `id` was refused: nothing listens, no rule
    /// sends it on. That is the target's own fault, whatever else is broken.
    fn refused(&self, id: usize, failing: &[usize]) -> bool {
        !failing.is_empty()
            && failing.iter().all(|&s| {
                self.tcell(id, s)
                    .is_some_and(|c| c.failure == Some(FailKind::Refused))
            })
    }

    /// A load-balanced service that fails a share of requests from many nodes and through
    /// many entry nodes, while each of them also gets answers, has a backend that does not
    /// answer. Which backend, the probes cannot tell (a request does not say where it
    /// landed), so the finding names no node, and says how to find it.
    pub(crate) fn service_backends(&mut self) {
        let web = [
            Layer::Nodeport,
            Layer::NodeportFromPod,
            Layer::Ingress,
            Layer::IngressFromPod,
        ];
        if !self
            .ix
            .failing
            .iter()
            .any(|k| web.contains(&k.layer) && !self.ledger.is_claimed(k))
        {
            return;
        }
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
        // First the services whose losses are spread thin on their own; then, once a dead
        // backend is known this round, thinner partial losses of other services (an
        // ingress in front of that service, a NodePort with fewer samples) read the same.
        let mut dead_backend = false;
        for again in [false, true] {
            for ((ingress, service), ids) in &groups {
                let (ingress, ids) = (*ingress, ids.as_slice());
                let members: crate::index::FxSet<usize> = ids.iter().copied().collect();
                let in_group = |k: &crate::index::CellKey| matches!(k.col, Col::Target(id) if members.contains(&id));
                let open = self
                    .ix
                    .failing
                    .iter()
                    .filter(|k| !self.ledger.is_claimed(k) && in_group(k))
                    .count();
                if open == 0 && again {
                    continue;
                }
                let (mut sent, mut ok, mut cells, mut dead) = (0u64, 0u64, 0usize, 0usize);
                let (mut srcs, mut lossy_srcs) = (BTreeSet::new(), BTreeSet::new());
                let (mut entries, mut lossy_entries) = (BTreeSet::new(), BTreeSet::new());
                let mut upstream_errors = 0;
                let mut cited = Vec::new();
                for &id in ids {
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
                            if c.failure == Some(FailKind::UpstreamError) {
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
                // At one dead backend in n, a source loses a request in n; over three
                // requests a quarter of the sources (at a dozen nodes) see a loss.
                let spread = |lossy: usize, all: usize| lossy >= 2 && lossy * 4 >= all;
                let lost = sent - ok;
                // Most requests get through, and the lost ones are spread over the sources
                // and (NodePorts) the entry nodes: no one node's path explains them.
                let spread_out = spread(lossy_srcs.len(), srcs.len())
                    && (ingress || spread(lossy_entries.len(), entries.len()));
                // Nodes already found broken take their backends with them: only losses
                // beyond their share point at another backend.
                let broken_share = self
                    .ledger
                    .blamed()
                    .filter(|(_, c)| crate::cx::cuts_backends(c))
                    .count() as f64
                    / self.n().max(1) as f64;
                let thin = sent > 0
                    && lost * 4 <= sent * 3
                    && dead * 2 < cells
                    && crate::cx::beyond_share(sent as f64, lost as f64, broken_share);
                if thin && spread_out {
                    dead_backend = true;
                }
                if open == 0 || !thin || (!again && !spread_out) || (again && !dead_backend) {
                    continue;
                }
                let mut evidence = cited;
                if !spread_out {
                    evidence.push("a dead backend is already seen this round behind another service; these thinner losses fit it, and no node's own paths explain them".to_owned());
                }
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
    }

    /// Service requests from a node's pods that fail, where the node's own evidence
    /// explains it (br_netfilter off, kube-proxy's rules missing against its peers'): a
    /// finding on that node, whatever service the requests were for.
    pub(crate) fn pod_services(&mut self) {
        const FROM_PODS: [Layer; 3] = [
            Layer::DnsService,
            Layer::NodeportFromPod,
            Layer::IngressFromPod,
        ];
        // The open cells of each source, in one pass.
        let mut by_src: std::collections::BTreeMap<usize, Vec<crate::index::CellKey>> =
            std::collections::BTreeMap::new();
        for k in self.ix.failing.iter() {
            if FROM_PODS.contains(&k.layer) && !self.ledger.is_claimed(k) {
                by_src.entry(k.src).or_default().push(*k);
            }
        }
        for (x, open) in by_src {
            if self.ledger.is_broken(x) {
                continue;
            }
            if open.is_empty() {
                continue;
            }
            let facts = self.service_facts(x);
            let Some(fix) = self.service_fix(x).filter(|_| !facts.is_empty()) else {
                continue;
            };
            let xn = self.nm(x);
            let mut evidence: Vec<String> = open
                .iter()
                .take(4)
                .filter_map(|&k| {
                    self.ix.cell(k).map(|c| {
                        format!(
                            "{xn} -> {} {}: {}",
                            self.ix.col_name(k),
                            k.layer,
                            crate::cx::describe(c)
                        )
                    })
                })
                .collect();
            evidence.push(format!(
                "the other nodes' pods reach the same services: what differs is {xn}'s own evidence"
            ));
            evidence.extend(facts);
            let dns = open.iter().any(|k| k.layer == Layer::DnsService);
            let layers: BTreeSet<Layer> = open.iter().map(|k| k.layer).collect();
            let cause = self.service_cause(
                x,
                if dns {
                    Cause::DnsServiceBroken
                } else if layers.contains(&Layer::NodeportFromPod) {
                    Cause::NodeportBroken
                } else {
                    Cause::IngressBroken
                },
            );
            let cells = self.claim_where(|_, k| k.src == x && FROM_PODS.contains(&k.layer));
            self.push(
                7,
                cells * 5,
                cause,
                vec![x],
                vec![],
                Direction::Outbound,
                format!("kube-proxy's NAT for {xn}'s pods ({})", layers.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(", ")),
                format!("service requests from {xn}'s pods fail where the other nodes' pods' pass, and {xn}'s evidence says why"),
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
        let refused = self.refused(id, failing);
        let elsewhere = self
            .ledger
            .blamed()
            .any(|(n, c)| n != x && crate::cx::cuts_backends(c));
        elsewhere && !refused
    }
}
