//! The [`Lab`]: builds the sandbox, runs its processes, injects and heals faults, and
//! removes everything it created when dropped (also when a test panics).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use meshprobe_core::api;
use serde::{Deserialize, Serialize};

use crate::addr::{
    COORDINATOR_PORT, INGRESS_HOST, KUBE_DNS_SVC, KUBERNETES_SVC, LabPlan, PodKind, RELAY_PORT,
    WEB_PORT, WEB_SVC,
};
use crate::exec::{self, ExecError};
use crate::fault::{Action, Fault};
use crate::procs::{self, ProcRecord, ProcSpec};
use crate::script;

/// Where the fake Kubernetes API listens: the control namespace's own loopback (only the
/// coordinator, in the same namespace, talks to it).
pub const KUBE_API_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6443);

/// What went wrong with a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The spec is invalid.
    #[error("{0}")]
    Spec(String),
    /// A fault the lab does not allow.
    #[error(transparent)]
    Fault(#[from] crate::fault::FaultError),
    /// The lab needs root (network namespaces, iptables).
    #[error(
        "the sandbox needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces; run it with sudo"
    )]
    NotRoot,
    /// A kernel command failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A file in the lab's state directory.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A lab with this name exists already.
    #[error("a lab named {0} exists already (meshprobe lab down --name {0})")]
    Exists(String),
    /// No lab with this name.
    #[error("no lab named {0:?} (meshprobe lab status lists them)")]
    NotFound(String),
    /// Something did not come up in time.
    #[error("{0}")]
    NotReady(String),
    /// The lab's credentials or certificates.
    #[error(transparent)]
    Creds(#[from] crate::creds::CredsError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How to build a lab.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// The lab's name, the prefix of every namespace. Unique per run by default.
    pub name: String,
    /// Number of nodes (default 3).
    pub nodes: usize,
    /// The meshprobe binary the lab's processes run.
    pub exe: PathBuf,
    /// Where lab state lives (default `/run/meshprobe/labs`, env `MESHPROBE_LAB_DIR`).
    pub state_root: PathBuf,
    /// Serve the cluster as a fake Kubernetes API ([`crate::kube_api`]) in the control
    /// namespace, and run the coordinator in discovery mode against it.
    pub kube_api: bool,
    /// Start the pod agents with the coordinator's URL (through the node's forwarding and
    /// masquerade, as a user following the contract literally would) instead of their
    /// host agent's relay. Either way they switch to the relay their plan names.
    pub pod_agents_direct: bool,
}

impl LabSpec {
    /// A spec with a fresh unique name (`mp-` and six hex digits).
    pub fn new(nodes: usize, exe: PathBuf) -> Self {
        Self {
            name: unique_name(),
            nodes,
            exe,
            state_root: default_state_root(),
            kube_api: false,
            pod_agents_direct: false,
        }
    }
}

/// A fresh lab name: `mp-` and six random hex digits.
pub fn unique_name() -> String {
    format!("mp-{:06x}", fastrand::u32(..0x0100_0000))
}

/// `MESHPROBE_LAB_DIR`, or `/run/meshprobe/labs`.
pub fn default_state_root() -> PathBuf {
    std::env::var_os("MESHPROBE_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/meshprobe/labs"))
}

/// What is saved in `<state_root>/<name>/state.json`, so that another invocation
/// (`lab fault`, `lab down`) can act on a lab.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    name: String,
    nodes: usize,
    exe: PathBuf,
    namespaces: Vec<String>,
    processes: BTreeMap<String, ProcRecord>,
    faults: Vec<Fault>,
    /// Whether the lab serves a fake Kubernetes API (`lab up --kube-api`).
    #[serde(default)]
    kube_api: bool,
    /// Whether pod agents were given the coordinator's URL rather than the relay's.
    #[serde(default)]
    pod_agents_direct: bool,
}

/// A running lab. Dropping it tears it down unless [`Lab::keep`] was called.
pub struct Lab {
    plan: LabPlan,
    dir: PathBuf,
    state: State,
    children: BTreeMap<String, Child>,
    keep: bool,
}

impl Lab {
    /// Builds the datapath and starts the cluster's servers (CoreDNS, web, ingress).
    pub fn up(spec: LabSpec) -> Result<Lab, LabError> {
        if !rustix::process::geteuid().is_root() {
            return Err(LabError::NotRoot);
        }
        let plan = LabPlan::new(&spec.name, spec.nodes).map_err(LabError::Spec)?;
        let dir = spec.state_root.join(&spec.name);
        if dir.join("state.json").exists() {
            return Err(LabError::Exists(spec.name));
        }
        for ns in plan.namespaces() {
            if Path::new("/run/netns").join(&ns).exists() {
                return Err(LabError::Exists(spec.name));
            }
        }
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut lab = Lab {
            state: State {
                name: spec.name.clone(),
                nodes: spec.nodes,
                exe: spec.exe,
                namespaces: Vec::new(),
                processes: BTreeMap::new(),
                faults: Vec::new(),
                kube_api: spec.kube_api,
                pod_agents_direct: spec.pod_agents_direct,
            },
            plan,
            dir,
            children: BTreeMap::new(),
            keep: false,
        };
        // From here on, a failure drops `lab`, which removes what was created.
        lab.save()?;
        for step in script::setup(&lab.plan) {
            if let script::Step::Run { ns: None, args, .. } = &step
                && let Some(ns) = args.get(2)
            {
                lab.state.namespaces.push(ns.clone());
                lab.save()?;
            }
            exec::run(&step)?;
        }
        let inventory = lab.dir.join("inventory.yaml");
        std::fs::write(&inventory, lab.plan.topology().to_inventory_yaml())
            .map_err(io_err(&inventory))?;
        let names: Vec<meshprobe_core::NodeName> = lab
            .plan
            .topology()
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect();
        crate::creds::write(&lab.dir, &names, lab.plan.ctl_ip())?;
        if lab.state.kube_api {
            let objects = lab.dir.join("kube-objects.json");
            let text = serde_json::to_string_pretty(&crate::kube_api::lab_objects(&lab.plan))
                .map_err(|e| LabError::Spec(e.to_string()))?;
            std::fs::write(&objects, text).map_err(io_err(&objects))?;
            let kubeconfig = lab.kubeconfig_path();
            std::fs::write(
                &kubeconfig,
                crate::kube_api::kubeconfig(&format!("http://{KUBE_API_ADDR}")),
            )
            .map_err(io_err(&kubeconfig))?;
        }
        lab.start_servers()?;
        Ok(lab)
    }

    /// Opens a lab that another process created (for `lab fault/heal/down/status`).
    pub fn open(name: &str, state_root: &Path) -> Result<Lab, LabError> {
        let dir = state_root.join(name);
        let path = dir.join("state.json");
        let text =
            std::fs::read_to_string(&path).map_err(|_| LabError::NotFound(name.to_owned()))?;
        let state: State = serde_json::from_str(&text).map_err(|e| LabError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let plan = LabPlan::new(&state.name, state.nodes).map_err(LabError::Spec)?;
        Ok(Lab {
            plan,
            dir,
            state,
            children: BTreeMap::new(),
            keep: true,
        })
    }

    /// Names of the labs under `state_root`.
    pub fn list(state_root: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(state_root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("state.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    }

    fn save(&self) -> Result<(), LabError> {
        let path = self.dir.join("state.json");
        let tmp = self.dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(&self.state).unwrap_or_default();
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// The lab's names and addresses.
    pub fn plan(&self) -> &LabPlan {
        &self.plan
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The inventory file the lab wrote.
    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join("inventory.yaml")
    }

    /// The faults in force.
    pub fn faults(&self) -> &[Fault] {
        &self.state.faults
    }

    /// The lab's processes, with whether each is alive.
    pub fn processes(&self) -> Vec<(String, i32, bool)> {
        self.state
            .processes
            .values()
            .map(|r| (r.spec.name.clone(), r.pid, procs::alive(r)))
            .collect()
    }

    /// PIDs of processes whose name starts with `prefix` (e.g. `agent/`).
    pub fn pids(&self, prefix: &str) -> Vec<(String, i32)> {
        self.state
            .processes
            .values()
            .filter(|r| r.spec.name.starts_with(prefix))
            .map(|r| (r.spec.name.clone(), r.pid))
            .collect()
    }

    /// Keep the lab after this handle is dropped (`lab up` from the command line).
    pub fn keep(mut self) {
        self.keep = true;
        // Children are detached: their own process group, reaped by init once we exit.
        self.children.clear();
    }

    fn start(&mut self, spec: ProcSpec) -> Result<(), LabError> {
        let log = self.log_path(&spec.name);
        let (child, rec) = procs::spawn(&self.state.exe, &spec, &log).map_err(io_err(&log))?;
        self.children.insert(spec.name.clone(), child);
        self.state.processes.insert(spec.name.clone(), rec);
        self.save()
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.log", name.replace('/', "_")))
    }

    /// The last `lines` lines of a process's log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops one lab process by name (an agent killed, in a benchmark), unlike a fault
    /// not recorded as anything to heal.
    pub fn stop_process(&mut self, name: &str) -> Result<(), LabError> {
        if !self.state.processes.contains_key(name) {
            return Err(LabError::Spec(format!("no lab process {name}")));
        }
        self.stop(name);
        self.save()
    }

    fn stop(&mut self, name: &str) {
        if let Some(rec) = self.state.processes.remove(name) {
            procs::stop(&rec, self.children.get_mut(name), Duration::from_secs(2));
            self.children.remove(name);
        }
    }

    fn server_specs(&self) -> Vec<ProcSpec> {
        let p = &self.plan;
        let mut v = Vec::new();
        for n in &p.nodes {
            v.push(ProcSpec {
                name: format!("pod/web-{}", n.name),
                ns: n.pod_ns(PodKind::Web),
                args: vec![
                    "lab".into(),
                    "serve".into(),
                    "web".into(),
                    "--name".into(),
                    format!("web-{}", n.name),
                    "--listen".into(),
                    format!("{}:{WEB_PORT}", n.pod_ip(PodKind::Web)),
                ],
            });
            if let Some(c) = &n.coredns {
                let mut args: Vec<String> = ["lab", "serve", "coredns", "--name", c, "--listen"]
                    .map(String::from)
                    .to_vec();
                args.push(n.pod_ip(PodKind::Dns).to_string());
                for (name, ip) in [
                    ("kubernetes.default.svc.cluster.local", KUBERNETES_SVC),
                    ("kube-dns.kube-system.svc.cluster.local", KUBE_DNS_SVC),
                    ("web.default.svc.cluster.local", WEB_SVC),
                ] {
                    args.push("--record".into());
                    args.push(format!("{name}={ip}"));
                }
                v.push(ProcSpec {
                    name: format!("pod/{c}"),
                    ns: n.pod_ns(PodKind::Dns),
                    args,
                });
            }
        }
        let ing = p.ingress();
        let mut args: Vec<String> = vec![
            "lab".into(),
            "serve".into(),
            "ingress".into(),
            "--listen".into(),
        ];
        args.push(format!("{}:80", ing.ip));
        args.push("--host".into());
        args.push(INGRESS_HOST.into());
        for n in &p.nodes {
            args.push("--backend".into());
            args.push(format!("{}:{WEB_PORT}", n.pod_ip(PodKind::Web)));
        }
        v.push(ProcSpec {
            name: "ingress".into(),
            ns: ing.ns.clone(),
            args,
        });
        v
    }

    fn readiness(&self, name: &str) -> Option<(String, SocketAddr, &'static str)> {
        let p = &self.plan;
        if let Some(node) = name.strip_prefix("pod/web-") {
            let n = p.node(node)?;
            return Some((
                n.pod_ns(PodKind::Web),
                SocketAddr::from((n.pod_ip(PodKind::Web), WEB_PORT)),
                "/",
            ));
        }
        if let Some(pod) = name.strip_prefix("pod/") {
            let n = p.coredns_node(pod)?;
            return Some((
                n.pod_ns(PodKind::Dns),
                SocketAddr::from((n.pod_ip(PodKind::Dns), 9153)),
                "/metrics",
            ));
        }
        match name {
            "ingress" => Some((
                p.ingress().ns.clone(),
                SocketAddr::from((p.ingress().ip, 80)),
                "/healthz",
            )),
            "coordinator" => Some((
                p.ctl_ns(),
                SocketAddr::from((p.ctl_ip(), COORDINATOR_PORT)),
                "/healthz",
            )),
            "kube-api" => Some((p.ctl_ns(), KUBE_API_ADDR, "/version")),
            _ => None,
        }
    }

    fn wait_ready(&self, names: &[String], timeout: Duration) -> Result<(), LabError> {
        let until = Instant::now() + timeout;
        for name in names {
            let Some((ns, addr, path)) = self.readiness(name) else {
                continue;
            };
            loop {
                let answer = if name == "coordinator" {
                    self.coordinator_get(path, Duration::from_millis(300))
                } else {
                    exec::http_get(&ns, addr, path, Duration::from_millis(300))
                };
                if matches!(answer, Ok((s, _)) if s < 500) {
                    break;
                }
                if Instant::now() > until {
                    return Err(LabError::NotReady(format!(
                        "{name} did not answer on {addr} within {timeout:?}; its log:\n{}",
                        self.log_tail(name, 20)
                    )));
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        }
        Ok(())
    }

    fn start_servers(&mut self) -> Result<(), LabError> {
        let specs = self.server_specs();
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        for s in specs {
            self.start(s)?;
        }
        self.wait_ready(&names, Duration::from_secs(10))
    }

    /// Starts the coordinator (in the control namespace, from the lab's inventory) and a
    /// host agent and a pod agent on every node, and waits until every agent has polled.
    pub fn start_mesh(&mut self) -> Result<(), LabError> {
        let p = self.plan.clone();
        if let Some(spec) = self.kube_api_spec() {
            self.start(spec)?;
            self.wait_ready(&["kube-api".to_owned()], Duration::from_secs(10))?;
        }
        self.start(self.coordinator_spec())?;
        self.wait_ready(&["coordinator".to_owned()], Duration::from_secs(10))?;
        for n in &p.nodes {
            for kind in ["host", "pod"] {
                if let Some(spec) = self.agent_spec(&n.name, kind) {
                    self.start(spec)?;
                }
            }
        }
        self.wait_agents(Duration::from_secs(15))
    }

    /// The process of `node`'s agent of `kind` (`host` or `pod`).
    fn agent_spec(&self, node: &str, kind: &str) -> Option<ProcSpec> {
        let p = &self.plan;
        let n = p.node(node)?;
        let state_dir = self.agent_state_dir(&n.name, kind).display().to_string();
        let mut args: Vec<String> = vec!["probe".into(), "--node".into(), n.name.clone()];
        let ns = match kind {
            "host" => {
                args.extend([
                    "--coordinator".into(),
                    p.coordinator_url(),
                    "--relay-listen".into(),
                    format!("{}:{RELAY_PORT}", n.ip),
                ]);
                n.ns.clone()
            }
            "pod" => {
                let url = if self.state.pod_agents_direct {
                    p.coordinator_url()
                } else {
                    format!("http://{}:{RELAY_PORT}", n.ip)
                };
                args.extend(["--pod".into(), "--coordinator".into(), url]);
                n.pod_ns(PodKind::Probe)
            }
            _ => return None,
        };
        args.extend([
            "--state-dir".into(),
            state_dir,
            "--offline-interval".into(),
            "1s".into(),
            "--token-file".into(),
            crate::creds::node_credential_path(&self.dir, &n.name)
                .display()
                .to_string(),
            "--ca-file".into(),
            self.dir.join(crate::creds::CA).display().to_string(),
        ]);
        Some(ProcSpec {
            name: format!("agent/{}/{kind}", n.name),
            ns,
            args,
        })
    }

    /// The spec of any lab process, by name.
    fn spec_of(&self, name: &str) -> Option<ProcSpec> {
        if let Some(rest) = name.strip_prefix("agent/") {
            let (node, kind) = rest.split_once('/')?;
            return self.agent_spec(node, kind);
        }
        self.server_specs()
            .into_iter()
            .chain(std::iter::once(self.coordinator_spec()))
            .chain(self.kube_api_spec())
            .find(|s| s.name == name)
    }

    fn coordinator_spec(&self) -> ProcSpec {
        let p = &self.plan;
        let source = if self.state.kube_api {
            vec![
                "--kubeconfig".into(),
                self.kubeconfig_path().display().to_string(),
                "--cluster-name".into(),
                p.prefix.clone(),
            ]
        } else {
            vec![
                "--inventory".into(),
                self.inventory_path().display().to_string(),
            ]
        };
        let mut args = vec!["coordinator".into()];
        args.extend(source);
        let file = |f: &str| self.dir.join(f).display().to_string();
        args.extend([
            "--listen".into(),
            format!("{}:{COORDINATOR_PORT}", p.ctl_ip()),
            "--token-file".into(),
            file(crate::creds::SECRET),
            "--tls-cert".into(),
            file(crate::creds::CERT),
            "--tls-key".into(),
            file(crate::creds::KEY),
            "--data-dir".into(),
            self.data_dir().display().to_string(),
        ]);
        ProcSpec {
            name: "coordinator".into(),
            ns: p.ctl_ns(),
            args,
        }
    }

    /// The fake Kubernetes API's process, when the lab has one.
    fn kube_api_spec(&self) -> Option<ProcSpec> {
        self.state.kube_api.then(|| ProcSpec {
            name: "kube-api".into(),
            ns: self.plan.ctl_ns(),
            args: vec![
                "lab".into(),
                "serve".into(),
                "kube-api".into(),
                "--objects".into(),
                self.dir.join("kube-objects.json").display().to_string(),
                "--listen".into(),
                KUBE_API_ADDR.to_string(),
            ],
        })
    }

    /// A GET of the coordinator's `path` from the control namespace, over TLS verified
    /// with the lab's CA, as the operator.
    pub fn coordinator_get(&self, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
        let tls = crate::creds::client_tls(&self.dir).map_err(std::io::Error::other)?;
        let addr = SocketAddr::from((self.plan.ctl_ip(), COORDINATOR_PORT));
        // As the lab's operator: some reads (agents' raw offline reports) need a credential.
        let token = std::fs::read_to_string(self.dir.join(crate::creds::OPERATOR))?;
        exec::https_get(
            &self.plan.ctl_ns(),
            addr,
            path,
            &tls,
            Some(token.trim()),
            timeout,
        )
    }

    /// What a client in the control namespace needs to reach the coordinator: its URL,
    /// the operator's credential and the lab's CA, as environment variables (the same
    /// ones `check`'s flags read).
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        let file = |f: &str| self.dir.join(f).display().to_string();
        vec![
            ("MESHPROBE_COORDINATOR", self.plan.coordinator_url()),
            ("MESHPROBE_TOKEN_FILE", file(crate::creds::OPERATOR)),
            ("MESHPROBE_CA_FILE", file(crate::creds::CA)),
        ]
    }

    /// The coordinator's namespace and address (what [`exec::forward`] serves on
    /// loopback, for a browser on this machine).
    pub fn coordinator_target(&self) -> (String, SocketAddr) {
        (
            self.plan.ctl_ns(),
            SocketAddr::from((self.plan.ctl_ip(), COORDINATOR_PORT)),
        )
    }

    /// Where the coordinator keeps its history (`--data-dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `node`'s credential file.
    pub fn node_credential(&self, node: &str) -> PathBuf {
        crate::creds::node_credential_path(&self.dir, node)
    }

    /// A file of the lab's credentials ([`crate::creds`]), by name.
    pub fn creds_file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The kubeconfig that reaches the lab's fake API (from the control namespace).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Whether the lab serves a fake Kubernetes API.
    pub fn has_kube_api(&self) -> bool {
        self.state.kube_api
    }

    /// Where an agent keeps its last plan (the lab's stand-in for the pod's volume).
    pub fn agent_state_dir(&self, node: &str, kind: &str) -> PathBuf {
        self.dir.join(format!("state-{node}-{kind}"))
    }

    /// Waits until every agent has polled the coordinator.
    pub fn wait_agents(&self, timeout: Duration) -> Result<(), LabError> {
        let p = &self.plan;
        let want = p.nodes.len() * 2;
        let until = Instant::now() + timeout;
        loop {
            let seen = self
                .coordinator_get(api::AGENTS, Duration::from_secs(1))
                .ok()
                .and_then(|(_, body)| serde_json::from_str::<api::AgentsList>(&body).ok())
                .map_or(0, |list| {
                    list.agents
                        .iter()
                        .filter(|a| a.pod_ip.is_some() || a.kind == meshprobe_core::AgentKind::Host)
                        .count()
                });
            if seen >= want {
                return Ok(());
            }
            if Instant::now() > until {
                let logs: Vec<String> = self
                    .pids("agent/")
                    .iter()
                    .map(|(n, _)| format!("--- {n}\n{}", self.log_tail(n, 5)))
                    .collect();
                return Err(LabError::NotReady(format!(
                    "only {seen} of {want} agents reached the coordinator within {timeout:?}\n{}",
                    logs.join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The namespace for a user's target name (`n1`, `n1-probe`, `ctl`, `sw`).
    pub fn namespace(&self, target: &str) -> Option<String> {
        self.plan.resolve_ns(target)
    }

    fn act(&mut self, action: Action) -> Result<(), LabError> {
        match action {
            Action::Steps(steps) => steps.iter().try_for_each(exec::run).map_err(LabError::from),
            Action::Stop(name) => {
                self.stop(&name);
                self.save()
            }
            Action::Start(name) => {
                if self.state.processes.get(&name).is_some_and(procs::alive) {
                    return Ok(());
                }
                let spec = self
                    .spec_of(&name)
                    .ok_or_else(|| LabError::Spec(format!("no lab process {name}")))?;
                self.start(spec)?;
                self.wait_ready(&[name], Duration::from_secs(10))
            }
            Action::Restart(name) => {
                if self.spec_of(&name).is_none() {
                    return Err(LabError::Spec(format!("no lab process {name}")));
                }
                self.act(Action::Stop(name.clone()))?;
                self.act(Action::Start(name))
            }
            Action::Pause(d) => {
                std::thread::sleep(d);
                Ok(())
            }
            Action::Sequence(actions) => actions.into_iter().try_for_each(|a| self.act(a)),
        }
    }

    /// Injects a fault and records it.
    pub fn inject(&mut self, fault: Fault) -> Result<(), LabError> {
        fault.validate(&self.plan)?;
        if fault == Fault::ApiServerDown && !self.state.kube_api {
            return Err(LabError::Spec(
                "api-server-down needs a lab with a fake API server (lab up --kube-api)".into(),
            ));
        }
        if self.state.faults.contains(&fault) {
            return Err(LabError::Spec(format!("{fault} is already in force")));
        }
        self.act(fault.inject(&self.plan))?;
        if fault.is_event() {
            // It happened and is over: nothing is in force, nothing to heal.
            return Ok(());
        }
        self.state.faults.push(fault);
        self.save()
    }

    /// Heals one fault in force. What was undone by hand already (a rule deleted, an
    /// address put back) is left as it is: the heal deletes only what is still there and
    /// sets the rest to its healthy value, so it succeeds after a manual fix.
    pub fn heal(&mut self, fault: &Fault) -> Result<(), LabError> {
        let Some(i) = self.state.faults.iter().position(|f| f == fault) else {
            return Err(LabError::Spec(format!("{fault} is not in force")));
        };
        let action = fault.heal(&self.plan);
        self.act_undo(action)?;
        self.state.faults.remove(i);
        self.save()
    }

    /// Forgets a fault without touching the datapath: for one healed by other means, or
    /// whose heal cannot succeed (the lab's record of it goes, nothing else).
    pub fn forget(&mut self, fault: &Fault) -> Result<(), LabError> {
        let Some(i) = self.state.faults.iter().position(|f| f == fault) else {
            return Err(LabError::Spec(format!("{fault} is not in force")));
        };
        self.state.faults.remove(i);
        self.save()
    }

    /// [`Lab::act`] for an undo: each deletion runs only if what it deletes is there.
    fn act_undo(&mut self, action: Action) -> Result<(), LabError> {
        match action {
            Action::Steps(steps) => {
                for step in &steps {
                    if let Some(check) = step.presence_check() {
                        match exec::run(&check) {
                            Ok(()) => {}
                            // Not there: removed by hand already.
                            Err(ExecError::Failed { .. }) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    exec::run(step)?;
                }
                Ok(())
            }
            Action::Sequence(actions) => actions.into_iter().try_for_each(|a| self.act_undo(a)),
            other => self.act(other),
        }
    }

    /// Heals every fault in force, newest first.
    pub fn heal_all(&mut self) -> Result<Vec<Fault>, LabError> {
        let mut healed = Vec::new();
        while let Some(f) = self.state.faults.last().cloned() {
            self.heal(&f)?;
            healed.push(f);
        }
        Ok(healed)
    }

    /// Stops every process and deletes every namespace and the state directory. Safe to
    /// call more than once; carries on past errors and reports the first.
    pub fn down(&mut self) -> Result<(), LabError> {
        let mut first_err = None;
        // Agents first, then the coordinator, then the cluster's servers.
        let mut names: Vec<String> = self.state.processes.keys().cloned().collect();
        names.sort_by_key(|n| (!n.starts_with("agent/"), n != "coordinator", n.clone()));
        for n in names {
            self.stop(&n);
        }
        for ns in std::mem::take(&mut self.state.namespaces).into_iter().rev() {
            if let Err(e) = exec::run(&script::Step::Run {
                ns: None,
                program: "ip",
                args: vec!["netns".into(), "del".into(), ns.clone()],
                stdin: None,
            }) && Path::new("/run/netns").join(&ns).exists()
            {
                first_err.get_or_insert(LabError::from(e));
            }
        }
        self.state.faults.clear();
        if self.dir.exists()
            && let Err(source) = std::fs::remove_dir_all(&self.dir)
        {
            first_err.get_or_insert(LabError::Io {
                path: self.dir.clone(),
                source,
            });
        }
        self.keep = true; // nothing left to drop
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = self.down()
        {
            eprintln!("meshprobe lab {}: cleanup incomplete: {e}", self.state.name);
        }
    }
}
