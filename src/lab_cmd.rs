//! `meshprobe lab ...`: the sandbox cluster from the command line.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use clap::Subcommand;
use meshprobe_sandbox::lab::{Lab, LabSpec, default_state_root, unique_name};
use meshprobe_sandbox::{Fault, fault::KINDS};

/// `lab` subcommands.
#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build a lab and start the mesh in it (coordinator and agents).
    Up {
        /// Number of nodes (1-200).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The lab's name (prefix of its namespaces); unique by default.
        #[arg(long)]
        name: Option<String>,
        /// Build the cluster only, without coordinator and agents.
        #[arg(long)]
        no_mesh: bool,
        /// Also serve the cluster as a fake Kubernetes API (in the control namespace), and
        /// run the coordinator in discovery mode against it instead of from the inventory.
        #[arg(long)]
        kube_api: bool,
    },
    /// Remove a lab: stop its processes by PID, delete its namespaces.
    Down {
        /// The lab (default: the only one).
        #[arg(long, env = "MESHPROBE_LAB")]
        name: Option<String>,
        /// Remove every lab.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// List labs, their processes and the faults in force.
    Status,
    /// Inject a fault.
    Fault {
        /// One of the fault kinds (see `meshprobe lab fault --help`).
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(KINDS.iter()))]
        kind: String,
        /// Where the fault goes.
        #[command(flatten)]
        target: FaultTarget,
    },
    /// Heal a fault, or all of them.
    Heal {
        /// The fault kind to heal; heals every fault in force when omitted.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(KINDS.iter()))]
        kind: Option<String>,
        /// Where the fault goes.
        #[command(flatten)]
        target: FaultTarget,
    },
    /// Run a command inside one of the lab's namespaces (n1, n1-probe, n1-web, n1-dns, ctl, sw).
    Exec {
        /// The lab (default: the only one).
        #[arg(long, env = "MESHPROBE_LAB")]
        name: Option<String>,
        /// Namespace: n1, n2-probe, ctl, ...
        target: String,
        /// The command and its arguments (after --).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run one of the lab's workloads (used by the lab itself).
    #[command(hide = true)]
    Serve {
        /// What to serve.
        #[command(subcommand)]
        what: Serve,
    },
}

/// Where a fault goes.
#[derive(clap::Args, Debug)]
pub struct FaultTarget {
    /// The lab (default: the only one).
    #[arg(long, env = "MESHPROBE_LAB")]
    name: Option<String>,
    /// The node (n1, n2, ...).
    #[arg(long)]
    node: Option<String>,
    /// The peer node, for fdb-missing, route-missing, neigh-missing.
    #[arg(long)]
    peer: Option<String>,
    /// The CoreDNS pod, for dns-down and metrics-blocked (default coredns-b).
    #[arg(long)]
    pod: Option<String>,
    /// The switch port's MTU, for underlay-mtu (default 1400).
    #[arg(long)]
    mtu: Option<u16>,
    /// Percent lost each way, for loss (default 50).
    #[arg(long)]
    percent: Option<u8>,
}

impl FaultTarget {
    fn fault(&self, kind: &str) -> Result<Fault, meshprobe_sandbox::fault::FaultError> {
        Fault::parse(
            kind,
            self.node.as_deref(),
            self.peer.as_deref(),
            self.pod.as_deref(),
            self.mtu,
            self.percent,
        )
    }
}

/// Hidden workloads.
#[derive(Subcommand, Debug)]
pub enum Serve {
    /// A CoreDNS stand-in.
    Coredns {
        /// Pod name.
        #[arg(long)]
        name: String,
        /// Address for :53 and :9153.
        #[arg(long)]
        listen: Ipv4Addr,
        /// Cluster zone.
        #[arg(long, default_value = "cluster.local")]
        zone: String,
        /// NAME=IP records.
        #[arg(long = "record")]
        records: Vec<String>,
    },
    /// A web pod.
    Web {
        /// Pod name.
        #[arg(long)]
        name: String,
        /// Address.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The fake Kubernetes API server.
    KubeApi {
        /// The objects to serve (a JSON array).
        #[arg(long)]
        objects: PathBuf,
        /// Address.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The ingress proxy.
    Ingress {
        /// Address.
        #[arg(long)]
        listen: SocketAddr,
        /// Host header routed to the backends.
        #[arg(long)]
        host: String,
        /// Backends.
        #[arg(long = "backend")]
        backends: Vec<SocketAddr>,
    },
}

/// Picks the lab: the named one, or the only one there is.
fn pick(name: Option<String>) -> Result<Lab, String> {
    let root = default_state_root();
    let name = match name {
        Some(n) => n,
        None => {
            let labs = Lab::list(&root);
            match labs.as_slice() {
                [one] => one.clone(),
                [] => return Err("no lab is running (meshprobe lab up)".to_owned()),
                many => {
                    return Err(format!(
                        "several labs exist ({}); pass --name",
                        many.join(", ")
                    ));
                }
            }
        }
    };
    Lab::open(&name, &root).map_err(|e| e.to_string())
}

fn exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the meshprobe binary: {e}"))
}

/// Runs a `lab` subcommand; returns the exit code.
pub fn run(cmd: LabCommand) -> u8 {
    match run_inner(cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("meshprobe lab: error: {}", crate::cli::error_line(e));
            2
        }
    }
}

fn run_inner(cmd: LabCommand) -> Result<(), String> {
    match cmd {
        LabCommand::Up {
            nodes,
            name,
            no_mesh,
            kube_api,
        } => {
            let mut spec = LabSpec::new(nodes, exe()?);
            spec.name = name.unwrap_or_else(unique_name);
            spec.kube_api = kube_api;
            let mut lab = Lab::up(spec).map_err(|e| e.to_string())?;
            if !no_mesh {
                lab.start_mesh().map_err(|e| e.to_string())?;
            }
            let p = lab.plan();
            println!(
                "lab {} is up: {} nodes on 192.168.77.0/24",
                lab.name(),
                p.nodes.len()
            );
            for n in &p.nodes {
                println!(
                    "  {:4} {:15} pods {}{}",
                    n.name,
                    n.ip,
                    n.pod_cidr(),
                    n.coredns
                        .as_deref()
                        .map(|c| format!(", runs {c}"))
                        .unwrap_or_default()
                );
            }
            println!("inventory: {}", lab.inventory_path().display());
            if lab.has_kube_api() {
                println!(
                    "fake Kubernetes API: {} in the control namespace (kubeconfig {}); the coordinator discovers the cluster from it",
                    meshprobe_sandbox::lab::KUBE_API_ADDR,
                    lab.kubeconfig_path().display()
                );
            }
            let coord = p.coordinator_url();
            let name = lab.name().to_owned();
            lab.keep();
            println!("\nnext:");
            if !no_mesh {
                println!("  meshprobe lab exec --name {name} ctl -- meshprobe check");
                println!(
                    "    (lab exec sets MESHPROBE_COORDINATOR={coord}, MESHPROBE_TOKEN_FILE and MESHPROBE_CA_FILE)"
                );
            }
            println!("  meshprobe lab fault --name {name} vxlan-drop-in --node n2");
            println!("  meshprobe lab heal --name {name}");
            println!("  meshprobe lab down --name {name}");
            Ok(())
        }
        LabCommand::Down { name, all } => {
            let names = if all {
                Lab::list(&default_state_root())
            } else {
                vec![pick(name)?.name().to_owned()]
            };
            for n in names {
                let mut lab = Lab::open(&n, &default_state_root()).map_err(|e| e.to_string())?;
                lab.down().map_err(|e| e.to_string())?;
                println!("lab {n} removed");
            }
            Ok(())
        }
        LabCommand::Status => {
            let labs = Lab::list(&default_state_root());
            if labs.is_empty() {
                println!("no labs");
            }
            for n in labs {
                let lab = Lab::open(&n, &default_state_root()).map_err(|e| e.to_string())?;
                println!(
                    "lab {n}: {} nodes, coordinator {}",
                    lab.plan().nodes.len(),
                    lab.plan().coordinator_url()
                );
                let procs = lab.processes();
                let dead: Vec<_> = procs
                    .iter()
                    .filter(|p| !p.2)
                    .map(|p| p.0.as_str())
                    .collect();
                println!(
                    "  processes: {} running{}",
                    procs.len() - dead.len(),
                    if dead.is_empty() {
                        String::new()
                    } else {
                        format!(", stopped: {}", dead.join(", "))
                    }
                );
                for f in lab.faults() {
                    println!("  fault in force: {f}");
                }
            }
            Ok(())
        }
        LabCommand::Fault { kind, target } => {
            let fault = target.fault(&kind).map_err(|e| e.to_string())?;
            let mut lab = pick(target.name.clone())?;
            lab.inject(fault.clone()).map_err(|e| e.to_string())?;
            println!("injected: {fault}");
            Ok(())
        }
        LabCommand::Heal { kind, target } => {
            let mut lab = pick(target.name.clone())?;
            match kind {
                Some(k) => {
                    let fault = target.fault(&k).map_err(|e| e.to_string())?;
                    lab.heal(&fault).map_err(|e| e.to_string())?;
                    println!("healed: {fault}");
                }
                None => {
                    for f in lab.heal_all().map_err(|e| e.to_string())? {
                        println!("healed: {f}");
                    }
                }
            }
            Ok(())
        }
        LabCommand::Exec {
            name,
            target,
            command,
        } => {
            let lab = pick(name)?;
            let ns = lab.namespace(&target).ok_or_else(|| {
                format!(
                    "no namespace {target:?} in lab {} (try n1, n1-probe, n1-web, n1-dns, ctl, sw)",
                    lab.name()
                )
            })?;
            // The coordinator's URL, the operator's credential and the lab's CA, for a
            // `meshprobe check` with no flags (flags given win over these).
            let err = std::process::Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(&command)
                .envs(lab.client_env())
                .exec();
            Err(format!("cannot run ip netns exec: {err}"))
        }
        LabCommand::Serve { what } => serve(what),
    }
}

fn serve(what: Serve) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        match what {
            Serve::Coredns {
                name,
                listen,
                zone,
                records,
            } => {
                let mut map = BTreeMap::new();
                for r in records {
                    let (n, ip) = r
                        .split_once('=')
                        .ok_or_else(|| format!("--record {r:?} is not NAME=IP"))?;
                    let ip: Ipv4Addr = ip
                        .parse()
                        .map_err(|_| format!("--record {r:?}: {ip:?} is not an IPv4 address"))?;
                    map.insert(n.trim_end_matches('.').to_ascii_lowercase(), ip);
                }
                meshprobe_sandbox::servers::coredns(name, listen, zone, map).await
            }
            Serve::Web { name, listen } => meshprobe_sandbox::servers::web(name, listen).await,
            Serve::Ingress {
                listen,
                host,
                backends,
            } => meshprobe_sandbox::servers::ingress(listen, host, backends).await,
            Serve::KubeApi { objects, listen } => {
                let text = std::fs::read_to_string(&objects)
                    .map_err(|e| format!("--objects {}: {e}", objects.display()))?;
                let list: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| {
                    format!("--objects {}: not a JSON array: {e}", objects.display())
                })?;
                let api = meshprobe_sandbox::kube_api::FakeApi::new(list)
                    .map_err(|e| format!("--objects {}: {e}", objects.display()))?;
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
                api.serve(listener).await
            }
        }
        .map_err(|e| e.to_string())
    })
}
