//! The commands that build a lab's datapath, as data. Nothing here runs anything, so the
//! flannel state each node gets can be checked line by line in unit tests.

use std::fmt::Write as _;

use crate::addr::{
    CLUSTER_CIDR, KUBE_DNS_SVC, LabNode, LabPlan, NODE_PORT, OVERLAY_MTU, PodKind, SERVICE_CIDR,
    VXLAN_PORT, WEB_PORT, WEB_SVC,
};

/// One thing to do to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Run `program args...`, inside `ns` when given (`ip -n`/`bridge -n` for those two
    /// tools, `ip netns exec` for the others), with `stdin` fed in.
    Run {
        /// Namespace, or `None` for the root namespace (only `ip netns add/del`).
        ns: Option<String>,
        /// `ip`, `bridge`, `iptables`, `iptables-restore`.
        program: &'static str,
        /// Arguments.
        args: Vec<String>,
        /// Standard input (batch files, rulesets).
        stdin: Option<String>,
    },
    /// Write a sysctl inside `ns`.
    Sysctl {
        /// Namespace.
        ns: String,
        /// Dotted key, e.g. `net.ipv4.ip_forward`.
        key: String,
        /// Value.
        value: String,
    },
}

impl Step {
    /// `program args...` inside `ns`.
    pub fn run(ns: &str, program: &'static str, args: &[&str]) -> Self {
        Step::Run {
            ns: Some(ns.to_owned()),
            program,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            stdin: None,
        }
    }
    /// `ip -n ns -batch -` with these lines.
    pub fn ip_batch(ns: &str, lines: String) -> Self {
        Step::Run {
            ns: Some(ns.to_owned()),
            program: "ip",
            args: vec!["-batch".into(), "-".into()],
            stdin: Some(lines),
        }
    }
    /// `bridge -n ns -batch -` with these lines.
    pub fn bridge_batch(ns: &str, lines: String) -> Self {
        Step::Run {
            ns: Some(ns.to_owned()),
            program: "bridge",
            args: vec!["-batch".into(), "-".into()],
            stdin: Some(lines),
        }
    }
    /// A sysctl.
    pub fn sysctl(ns: &str, key: &str, value: &str) -> Self {
        Step::Sysctl {
            ns: ns.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }
    /// For a step that deletes something (an iptables rule `-D`, a chain `-X`, an nftables
    /// table), the step that says whether it is still there: `iptables -C` / `iptables -L`
    /// / `nft list` succeed only if it is. A heal skips the deletion of what someone removed by hand already.
    pub fn presence_check(&self) -> Option<Step> {
        // `nft delete table F T`: `nft list table F T` fails once it is gone.
        if let Step::Run {
            ns,
            program: "nft",
            args,
            stdin: None,
        } = self
            && args.first().is_some_and(|a| a == "delete")
        {
            let mut check = args.clone();
            check[0] = "list".to_owned();
            return Some(Step::Run {
                ns: ns.clone(),
                program: "nft",
                args: check,
                stdin: None,
            });
        }
        let Step::Run {
            ns,
            program: "iptables",
            args,
            stdin: None,
        } = self
        else {
            return None;
        };
        let op = args.iter().position(|a| a == "-D" || a == "-X")?;
        let mut check = args.clone();
        if check[op] == "-D" {
            check[op] = "-C".to_owned();
        } else {
            // `-L CHAIN -n`: fails for a chain that does not exist.
            check[op] = "-L".to_owned();
            check.push("-n".to_owned());
        }
        Some(Step::Run {
            ns: ns.clone(),
            program: "iptables",
            args: check,
            stdin: None,
        })
    }

    /// `nft -f -` inside `ns` with this ruleset.
    pub fn nft(ns: &str, ruleset: &str) -> Self {
        Step::Run {
            ns: Some(ns.to_owned()),
            program: "nft",
            args: vec!["-f".into(), "-".into()],
            stdin: Some(ruleset.to_owned()),
        }
    }

    /// `iptables -w args...` inside `ns`.
    pub fn iptables(ns: &str, args: &str) -> Self {
        let mut v = vec!["-w".to_owned()];
        v.extend(args.split_whitespace().map(str::to_owned));
        Step::Run {
            ns: Some(ns.to_owned()),
            program: "iptables",
            args: v,
            stdin: None,
        }
    }
}

/// The switch: a bridge with one port per node and one for the control namespace.
pub fn switch(plan: &LabPlan) -> Step {
    let mut b = String::from("link set lo up\nlink add br0 type bridge\nlink set br0 up\n");
    for n in &plan.nodes {
        let _ = writeln!(
            b,
            "link add {} type veth peer name eth0 netns {}",
            n.switch_port(),
            n.ns
        );
        let _ = writeln!(b, "link set {} master br0 up", n.switch_port());
    }
    let _ = writeln!(
        b,
        "link add ctl type veth peer name eth0 netns {}",
        plan.ctl_ns()
    );
    let _ = writeln!(b, "link set ctl master br0 up");
    Step::ip_batch(&plan.switch_ns(), b)
}

/// The control namespace: just an address on the underlay.
pub fn ctl(plan: &LabPlan) -> Step {
    Step::ip_batch(
        &plan.ctl_ns(),
        format!(
            "link set lo up\naddr add {}/24 dev eth0\nlink set eth0 up\n",
            plan.ctl_ip()
        ),
    )
}

/// A node: underlay address, `cni0`, `flannel.1` and, for every peer, the route and the
/// neighbour entry exactly as flanneld's VXLAN backend writes them; the pods' veths.
pub fn node(plan: &LabPlan, n: &LabNode) -> Step {
    let mut b = String::new();
    let _ = writeln!(b, "link set lo up");
    let _ = writeln!(b, "addr add {}/24 dev eth0", n.ip);
    let _ = writeln!(b, "link set eth0 up");
    let _ = writeln!(b, "link add cni0 type bridge");
    let _ = writeln!(b, "addr add {}/24 dev cni0", n.gateway());
    let _ = writeln!(b, "link set cni0 up");
    b += &vxlan_device(plan, n, &Vxlan::of(n));
    // Real nodes reach the service range through their default route; the sandbox has
    // no default route (nothing may leave it), so it routes only the service range.
    let _ = writeln!(b, "route add {SERVICE_CIDR} dev cni0 src {}", n.gateway());
    for kind in &n.pods {
        let _ = writeln!(
            b,
            "link add veth-{0} type veth peer name eth0 netns {1}",
            kind.suffix(),
            n.pod_ns(*kind)
        );
        let _ = writeln!(
            b,
            "link set veth-{} mtu {OVERLAY_MTU} master cni0 up",
            kind.suffix()
        );
    }
    Step::ip_batch(&n.ns, b)
}

/// What flanneld gives a node's VXLAN device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vxlan {
    /// VNI.
    pub vni: u32,
    /// Destination UDP port.
    pub port: u16,
    /// The device's MAC (the node's VTEP MAC).
    pub mac: String,
}

impl Vxlan {
    /// The cluster's settings for node `n`.
    pub fn of(n: &LabNode) -> Self {
        Self {
            vni: 1,
            port: VXLAN_PORT,
            mac: n.vtep_mac.clone(),
        }
    }
}

/// `ip -batch` lines creating node `n`'s `flannel.1` with `v`, its address, and its routes
/// and neighbour entries for every peer (the fdb entries are `bridge`'s: [`fdb`]).
pub fn vxlan_device(plan: &LabPlan, n: &LabNode, v: &Vxlan) -> String {
    let mut b = String::new();
    let _ = writeln!(
        b,
        "link add flannel.1 type vxlan id {} local {} dev eth0 dstport {} nolearning",
        v.vni, n.ip, v.port
    );
    let _ = writeln!(b, "link set flannel.1 mtu {OVERLAY_MTU} address {}", v.mac);
    let _ = writeln!(b, "addr add {}/32 dev flannel.1", n.vtep_ip());
    let _ = writeln!(b, "link set flannel.1 up");
    for p in plan.nodes.iter().filter(|p| p.index != n.index) {
        let _ = writeln!(b, "{}", route_line(p));
        let _ = writeln!(b, "{}", neigh_line(p));
    }
    b
}

/// Node `n`'s `flannel.1` deleted and created again with `v`, as flanneld does when its
/// configuration changes: the device, its address, routes, neighbours and fdb entries.
pub fn recreate_vxlan(plan: &LabPlan, n: &LabNode, v: &Vxlan) -> Vec<Step> {
    let mut steps = vec![Step::ip_batch(
        &n.ns,
        format!("link del flannel.1\n{}", vxlan_device(plan, n, v)),
    )];
    steps.extend(fdb(plan, n));
    steps
}

/// flanneld's route to a peer's pod CIDR (`replace`, as flanneld's netlink calls do, so the
/// same line restores it over whatever the kernel left behind).
pub fn route_line(peer: &LabNode) -> String {
    format!(
        "route replace {} via {} dev flannel.1 onlink",
        peer.pod_cidr(),
        peer.vtep_ip()
    )
}

/// flanneld's permanent neighbour entry for a peer's VTEP.
pub fn neigh_line(peer: &LabNode) -> String {
    format!(
        "neigh replace {} lladdr {} dev flannel.1 nud permanent",
        peer.vtep_ip(),
        peer.vtep_mac
    )
}

/// flanneld's fdb entry: the peer's VTEP MAC lives behind the peer's node IP.
pub fn fdb_line(peer: &LabNode) -> String {
    format!(
        "fdb replace {} dev flannel.1 dst {} self permanent",
        peer.vtep_mac, peer.ip
    )
}

/// The node's fdb entries for every peer.
pub fn fdb(plan: &LabPlan, n: &LabNode) -> Option<Step> {
    let lines: String = plan
        .nodes
        .iter()
        .filter(|p| p.index != n.index)
        .map(|p| fdb_line(p) + "\n")
        .collect();
    (!lines.is_empty()).then(|| Step::bridge_batch(&n.ns, lines))
}

/// A pod: its end of the veth, its address and default route via the node's gateway.
pub fn pod(n: &LabNode, kind: PodKind) -> Step {
    Step::ip_batch(
        &n.pod_ns(kind),
        format!(
            "link set lo up\nlink set eth0 mtu {OVERLAY_MTU}\naddr add {}/24 dev eth0\nlink set eth0 up\nroute add default via {}\n",
            n.pod_ip(kind),
            n.gateway()
        ),
    )
}

/// Sysctls: nodes forward; pods may use unprivileged ICMP sockets (the namespaced sysctl
/// a Kubernetes pod sets through `securityContext.sysctls`).
pub fn sysctls(plan: &LabPlan) -> Vec<Step> {
    let mut v = Vec::new();
    for n in &plan.nodes {
        v.push(Step::sysctl(&n.ns, "net.ipv4.ip_forward", "1"));
        for kind in &n.pods {
            v.push(Step::sysctl(
                &n.pod_ns(*kind),
                "net.ipv4.ping_group_range",
                "0 2147483647",
            ));
        }
    }
    v
}

/// The rule that sends NodePort traffic to the web service (what the NodePort fault removes).
pub fn nodeport_rule() -> String {
    format!("-p tcp -m tcp --dport {NODE_PORT} -j KUBE-EXT-WEB")
}

/// A node's iptables: flanneld's FORWARD accepts and masquerading, and kube-proxy's
/// (iptables mode) service, NodePort and masquerade chains for kube-dns and web.
pub fn iptables(plan: &LabPlan, n: &LabNode) -> Step {
    let dns: Vec<_> = plan.nodes.iter().filter(|p| p.coredns.is_some()).collect();
    let web = &plan.nodes;
    let mut r = String::new();
    r += "*filter\n:FLANNEL-FWD - [0:0]\n";
    r += "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n";
    let _ = writeln!(
        r,
        "-A FLANNEL-FWD -s {CLUSTER_CIDR} -m comment --comment \"flanneld forward\" -j ACCEPT"
    );
    let _ = writeln!(
        r,
        "-A FLANNEL-FWD -d {CLUSTER_CIDR} -m comment --comment \"flanneld forward\" -j ACCEPT"
    );
    r += "COMMIT\n*nat\n";
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
        "KUBE-SVC-KUBEDNS",
        "KUBE-SVC-WEB",
        "KUBE-EXT-WEB",
        "FLANNEL-POSTRTG",
    ] {
        let _ = writeln!(r, ":{chain} - [0:0]");
    }
    for i in 1..=dns.len() {
        let _ = writeln!(r, ":KUBE-SEP-DNS-{i} - [0:0]");
    }
    for i in 1..=web.len() {
        let _ = writeln!(r, ":KUBE-SEP-WEB-{i} - [0:0]");
    }
    r += "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
    r += "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
    r += "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n";
    r += "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n";
    r += "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n";
    r += "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n";
    r += "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n";
    r += "-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n";
    let _ = writeln!(
        r,
        "-A KUBE-SERVICES -d {KUBE_DNS_SVC}/32 -p udp -m udp --dport 53 -j KUBE-SVC-KUBEDNS"
    );
    let _ = writeln!(
        r,
        "-A KUBE-SERVICES -d {WEB_SVC}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-WEB"
    );
    r += "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";
    let _ = writeln!(r, "-A KUBE-NODEPORTS {}", nodeport_rule());
    r += "-A KUBE-EXT-WEB -j KUBE-MARK-MASQ\n-A KUBE-EXT-WEB -j KUBE-SVC-WEB\n";
    let _ = writeln!(
        r,
        "-A KUBE-SVC-KUBEDNS ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
    );
    balance(&mut r, "KUBE-SVC-KUBEDNS", "DNS", dns.len());
    for (i, p) in dns.iter().enumerate() {
        let ip = p.pod_ip(PodKind::Dns);
        let _ = writeln!(r, "-A KUBE-SEP-DNS-{0} -s {ip}/32 -j KUBE-MARK-MASQ", i + 1);
        let _ = writeln!(
            r,
            "-A KUBE-SEP-DNS-{0} -p udp -m udp -j DNAT --to-destination {ip}:53",
            i + 1
        );
    }
    let _ = writeln!(r, "-A KUBE-SVC-WEB ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ");
    balance(&mut r, "KUBE-SVC-WEB", "WEB", web.len());
    for (i, p) in web.iter().enumerate() {
        let ip = p.pod_ip(PodKind::Web);
        let _ = writeln!(r, "-A KUBE-SEP-WEB-{0} -s {ip}/32 -j KUBE-MARK-MASQ", i + 1);
        let _ = writeln!(
            r,
            "-A KUBE-SEP-WEB-{0} -p tcp -m tcp -j DNAT --to-destination {ip}:{WEB_PORT}",
            i + 1
        );
    }
    let _ = writeln!(
        r,
        "-A FLANNEL-POSTRTG -s {CLUSTER_CIDR} -d {CLUSTER_CIDR} -m comment --comment \"flanneld masq\" -j RETURN"
    );
    let _ = writeln!(
        r,
        "-A FLANNEL-POSTRTG -s {CLUSTER_CIDR} ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully"
    );
    r += "COMMIT\n";
    Step::Run {
        ns: Some(n.ns.clone()),
        program: "iptables-restore",
        args: vec!["-w".into()],
        stdin: Some(r),
    }
}

/// kube-proxy's even split over `n` endpoints: endpoint i is taken with probability
/// 1/(n-i+1) among those left.
fn balance(r: &mut String, chain: &str, sep: &str, n: usize) {
    for i in 1..=n {
        if i < n {
            let p = 1.0 / (n - i + 1) as f64;
            let _ = writeln!(
                r,
                "-A {chain} -m statistic --mode random --probability {p:.5} -j KUBE-SEP-{sep}-{i}"
            );
        } else {
            let _ = writeln!(r, "-A {chain} -j KUBE-SEP-{sep}-{i}");
        }
    }
}

/// Everything `lab up` does to the kernel, in order.
pub fn setup(plan: &LabPlan) -> Vec<Step> {
    let mut v: Vec<Step> = plan
        .namespaces()
        .iter()
        .map(|ns| Step::Run {
            ns: None,
            program: "ip",
            args: vec!["netns".into(), "add".into(), ns.clone()],
            stdin: None,
        })
        .collect();
    v.push(switch(plan));
    v.push(ctl(plan));
    for n in &plan.nodes {
        v.push(node(plan, n));
        v.extend(fdb(plan, n));
        for kind in &n.pods {
            v.push(pod(n, *kind));
        }
        v.push(iptables(plan, n));
    }
    v.extend(sysctls(plan));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_gets_flannel_state_for_every_peer_only() {
        let plan = LabPlan::new("t", 3).expect("valid");
        let Step::Run {
            stdin: Some(batch),
            ns,
            ..
        } = node(&plan, &plan.nodes[1])
        else {
            panic!("batch")
        };
        assert_eq!(ns.as_deref(), Some("t-n2"));
        let lines: Vec<&str> = batch.lines().collect();
        assert!(lines.contains(&"link add flannel.1 type vxlan id 1 local 192.168.77.12 dev eth0 dstport 8472 nolearning"));
        assert!(lines.contains(&"link set flannel.1 mtu 1450 address 0e:6d:70:00:00:02"));
        assert!(lines.contains(&"route replace 10.42.1.0/24 via 10.42.1.0 dev flannel.1 onlink"));
        assert!(lines.contains(
            &"neigh replace 10.42.3.0 lladdr 0e:6d:70:00:00:03 dev flannel.1 nud permanent"
        ));
        assert!(
            !batch.contains("10.42.2.0/24 via"),
            "no route to its own CIDR"
        );
        assert!(
            !batch.contains("default"),
            "a node never gets a default route"
        );
        let Some(Step::Run {
            stdin: Some(fdb), ..
        }) = fdb(&plan, &plan.nodes[1])
        else {
            panic!("fdb")
        };
        assert_eq!(
            fdb,
            "fdb replace 0e:6d:70:00:00:01 dev flannel.1 dst 192.168.77.11 self permanent\nfdb replace 0e:6d:70:00:00:03 dev flannel.1 dst 192.168.77.13 self permanent\n"
        );
    }

    #[test]
    fn kube_proxy_balances_evenly_and_covers_every_endpoint() {
        let plan = LabPlan::new("t", 4).expect("valid");
        let Step::Run {
            stdin: Some(rules), ..
        } = iptables(&plan, &plan.nodes[0])
        else {
            panic!("rules")
        };
        assert!(rules.contains(
            "-A KUBE-SVC-WEB -m statistic --mode random --probability 0.25000 -j KUBE-SEP-WEB-1"
        ));
        assert!(rules.contains(
            "-A KUBE-SVC-WEB -m statistic --mode random --probability 0.50000 -j KUBE-SEP-WEB-3"
        ));
        assert!(rules.contains("-A KUBE-SVC-WEB -j KUBE-SEP-WEB-4"));
        assert!(
            rules
                .contains("-A KUBE-SEP-DNS-2 -p udp -m udp -j DNAT --to-destination 10.42.2.53:53")
        );
        assert!(rules.contains("-A KUBE-NODEPORTS -p tcp -m tcp --dport 30080 -j KUBE-EXT-WEB"));
        assert_eq!(rules.matches("COMMIT").count(), 2);
    }

    #[test]
    fn setup_creates_every_namespace_first_and_only_touches_root_for_that() {
        let plan = LabPlan::new("t", 2).expect("valid");
        let steps = setup(&plan);
        let roots: Vec<_> = steps
            .iter()
            .filter(|s| matches!(s, Step::Run { ns: None, .. }))
            .collect();
        assert_eq!(roots.len(), plan.namespaces().len());
        for s in &roots {
            let Step::Run { args, .. } = s else {
                unreachable!()
            };
            assert_eq!(&args[..2], ["netns", "add"]);
        }
        assert!(matches!(&steps[roots.len()], Step::Run { ns: Some(ns), .. } if ns == "t-sw"));
    }
}
