//! Services: CoreDNS, the kube-dns service, NodePorts, ingresses.

#![allow(unused_imports)]

use std::collections::BTreeSet;

use meshprobe_core::matrix::{AgentState, Cell, CellState};
use meshprobe_core::{Layer, NodeName};

use meshprobe_core::{Cause, Direction};

use crate::cx::*;
use crate::index::*;
use crate::*;

impl Cx<'_> {
    // ---- 6. services ----------------------------------------------------------------------

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

    pub(crate) fn dns(&mut self) {
        for pod in self.t.core_dns.clone() {
            let Some(x) = self.pos(&pod.node) else {
                continue;
            };
            let looked = self.ix.tcol(Layer::DnsPod, &pod.name).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| {
                    self.tcell(Layer::DnsPod, s, &pod.name).is_some_and(|c| {
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
            self.dns_down.insert(pod.name.clone());
            let xn = self.nm(x);
            let mut evidence = self.tcite(Layer::DnsPod, &pod.name, &failing);
            evidence.push(format!(
                "{with_path} of those nodes reach {xn}'s pods: the network to {} ({}) works",
                pod.name, pod.ip
            ));
            let metrics = self
                .ix
                .tcol(Layer::CorednsMetrics, &pod.name)
                .iter()
                .filter(|&&s| self.tfailing(Layer::CorednsMetrics, s, &pod.name))
                .count();
            if metrics > 0 {
                evidence.push(format!("its :9153/metrics fails too from {metrics} nodes: the process is down or wedged"));
            }
            self.push(
                7,
                failing.len() * 5,
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
        // The service IP fails for observers that reach every CoreDNS pod directly.
        let looked = self.ix.tcol(Layer::DnsService, "kube-dns").to_vec();
        let failing: Vec<usize> = looked
            .iter()
            .copied()
            .filter(|&s| self.tfailing(Layer::DnsService, s, "kube-dns"))
            .filter(|&s| {
                !self.t.core_dns.is_empty()
                    && self.t.core_dns.iter().all(|p| {
                        self.tcell(Layer::DnsPod, s, &p.name)
                            .is_some_and(|c| c.state == CellState::Ok)
                    })
            })
            .collect();
        if self.dns_down.is_empty() && self.quorum(failing.len(), looked.len()) {
            let ip = self
                .t
                .cluster
                .dns_service_ip
                .map(|i| i.to_string())
                .unwrap_or_default();
            let mut evidence = self.tcite(Layer::DnsService, "kube-dns", &failing);
            evidence.push("the same nodes get answers from every CoreDNS pod directly".to_owned());
            let names: Vec<String> = failing.iter().map(|&s| self.nm(s)).collect();
            self.push(
                7,
                failing.len() * 5,
                Cause::DnsServiceBroken,
                failing.clone(),
                vec![],
                Direction::None,
                format!("kube-proxy: kube-dns service {ip}:53 -> CoreDNS pods"),
                format!("the kube-dns service IP {ip} does not answer on {}, while the CoreDNS pods do", names.join(", ")),
                evidence,
                format!("on those nodes: `iptables-save -t nat | grep {ip}`; `kubectl -n kube-system get endpointslices -l k8s-app=kube-dns`; kube-proxy's logs"),
            );
        }
    }

    pub(crate) fn metrics(&mut self) {
        for pod in self.t.core_dns.clone() {
            let Some(x) = self.pos(&pod.node) else {
                continue;
            };
            if self.dns_down.contains(&pod.name) {
                continue;
            }
            let looked = self.ix.tcol(Layer::CorednsMetrics, &pod.name).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| self.tfailing(Layer::CorednsMetrics, s, &pod.name))
                .filter(|&s| self.path_into_pods(s, x) && !self.is_explained(Part::Big, s, x))
                .collect();
            if !self.quorum(failing.len(), looked.len()) {
                continue;
            }
            let xn = self.nm(x);
            let mut evidence = self.tcite(Layer::CorednsMetrics, &pod.name, &failing);
            evidence.push(format!(
                "DNS to {} answers: the pod runs, and :9153 is what fails",
                pod.name
            ));
            self.push(
                8,
                failing.len(),
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
        let mut cols: Vec<&str> = self
            .ix
            .tcols
            .keys()
            .filter(|(l, _)| *l == Layer::Nodeport)
            .map(|(_, c)| *c)
            .collect();
        cols.sort_unstable();
        for col in cols {
            let node_name = col.split('/').next().unwrap_or(col);
            let Some(&x) = self.ix.pos.get(node_name) else {
                continue;
            };
            if self.broken.contains_key(&x) {
                continue;
            }
            let looked = self.ix.tcol(Layer::Nodeport, col).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| {
                    self.tcell(Layer::Nodeport, s, col)
                        .is_some_and(|c| c.ok == 0)
                })
                .filter(|&s| s == x || !self.failing(Layer::Underlay, s, x))
                .collect();
            if !self.quorum(failing.len(), looked.len()) {
                continue;
            }
            let xn = self.nm(x);
            let mut evidence = self.tcite(Layer::Nodeport, col, &failing);
            evidence.push(format!("{xn}'s node IP answers ICMP and its pods are reachable: kube-proxy's NodePort rules on {xn} are what fails"));
            let elsewhere = self
                .ix
                .tcols
                .keys()
                .filter(|(l, c)| *l == Layer::Nodeport && *c != col)
                .filter(|(_, c)| {
                    self.tcell(Layer::Nodeport, x, c)
                        .is_some_and(|cell| cell.state == CellState::Ok)
                })
                .count();
            if elsewhere > 0 {
                evidence.push(format!(
                    "from {xn}, NodePorts on {elsewhere} other nodes answer"
                ));
            }
            self.push(
                7,
                failing.len() * 5,
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
            let col = format!(
                "{}{}",
                ing.host,
                if ing.path == "/" { "" } else { &ing.path }
            );
            let node = self
                .t
                .nodes
                .iter()
                .find(|n| n.internal_ip == ing.address)
                .and_then(|n| self.pos(&n.name));
            let looked = self.ix.tcol(Layer::Ingress, &col).to_vec();
            let failing: Vec<usize> = looked
                .iter()
                .copied()
                .filter(|&s| {
                    self.tcell(Layer::Ingress, s, &col)
                        .is_some_and(|c| c.ok == 0)
                })
                .filter(|&s| node.is_none_or(|n| s == n || !self.failing(Layer::Underlay, s, n)))
                .collect();
            let node_down =
                node.is_some_and(|n| self.broken.get(&n) == Some(&Cause::NodeUnreachable));
            if node_down || !self.quorum(failing.len(), looked.len()) {
                continue;
            }
            let mut evidence = self.tcite(Layer::Ingress, &col, &failing);
            if let Some(n) = node {
                evidence.push(format!(
                    "the ingress node {} ({}) answers ICMP",
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
            self.push(
                7,
                failing.len() * 5,
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
