//! `meshprobe lab ...`: the sandbox cluster from the command line.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use clap::Subcommand;
use meshprobe_core::catalogue::{Args as KindArgs, FaultKind};
use meshprobe_sandbox::Fault;
use meshprobe_sandbox::lab::{Lab, LabSpec, default_state_root, unique_name};

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
    /// Inject a fault: a real change to the lab's datapath, as the field meets it.
    ///
    /// Each kind names what it takes (--node, --peer, --pod, --mtu, --percent); `meshprobe
    /// lab status` lists the faults in force and `meshprobe lab heal` undoes them.
    Fault {
        /// The fault kind.
        #[arg(value_parser = kind_parser())]
        kind: String,
        /// Where the fault goes.
        #[command(flatten)]
        target: FaultTarget,
    },
    /// Heal a fault, or all of them. What was already fixed by hand is left as it is.
    Heal {
        /// The fault kind to heal; heals every fault in force when omitted. With no
        /// --node (or other target), the one fault of this kind in force.
        #[arg(value_parser = kind_parser())]
        kind: Option<String>,
        /// Where the fault goes.
        #[command(flatten)]
        target: FaultTarget,
        /// Only forget the fault (or all of them): the lab stops counting it in force,
        /// and nothing in the datapath is touched.
        #[arg(long)]
        forget: bool,
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
    /// The peer node.
    #[arg(long, help = taking("The peer node", KindArgs::NodePeer, ""))]
    peer: Option<String>,
    /// The CoreDNS pod.
    #[arg(long, help = taking("The CoreDNS pod", KindArgs::Pod, " (default coredns-b)"))]
    pod: Option<String>,
    /// The switch port's MTU.
    #[arg(long, help = taking("The switch port's MTU", KindArgs::NodeMtu, " (default 1400)"))]
    mtu: Option<u16>,
    /// Percent lost each way.
    #[arg(long, help = taking("Percent lost each way", KindArgs::NodePercent, " (default 50)"))]
    percent: Option<u8>,
}

/// The fault kinds, each with what it does (shown by `--help`), from the catalogue.
fn kind_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        FaultKind::ALL
            .iter()
            .map(|k| clap::builder::PossibleValue::new(k.id()).help(k.summary())),
    )
}

/// An option's help: what it is, and the kinds that take it (from the catalogue, so that a
/// new kind is listed where it belongs).
fn taking(what: &str, args: KindArgs, default: &str) -> String {
    let kinds: Vec<&str> = FaultKind::ALL
        .iter()
        .filter(|k| k.spec().args == args)
        .map(|k| k.id())
        .collect();
    format!("{what}, for {}{default}", kinds.join(", "))
}

impl FaultTarget {
    /// Whether a target beyond the lab's name was given.
    fn is_given(&self) -> bool {
        self.node.is_some()
            || self.peer.is_some()
            || self.pod.is_some()
            || self.mtu.is_some()
            || self.percent.is_some()
    }

    /// The fault of `kind` in force that this target names: with no target, the only one
    /// of that kind.
    fn in_force(&self, lab: &Lab, kind: &str) -> Result<Fault, String> {
        if self.is_given() {
            return self.fault(kind).map_err(|e| e.to_string());
        }
        let of_kind: Vec<&Fault> = lab
            .faults()
            .iter()
            .filter(|f| f.kind().id() == kind)
            .collect();
        match of_kind.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!(
                "no {kind} fault is in force in lab {} (meshprobe lab status lists them)",
                lab.name()
            )),
            many => Err(format!(
                "{} {kind} faults are in force ({}); say which with --node (or --peer, --pod)",
                many.len(),
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

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

/// Why a `lab` subcommand failed, as its exit code tells it.
#[derive(Debug)]
enum LabFailure {
    /// Anything else: exit 2.
    Other(String),
    /// `lab exec`'s command is not installed: exit 127, as a shell says it.
    CommandNotFound(String),
}

impl From<String> for LabFailure {
    fn from(e: String) -> Self {
        LabFailure::Other(e)
    }
}

/// Runs a `lab` subcommand; returns the exit code.
pub fn run(cmd: LabCommand) -> u8 {
    match run_inner(cmd) {
        Ok(()) => 0,
        Err(LabFailure::Other(e)) => {
            eprintln!("meshprobe lab: error: {}", crate::cli::error_line(e));
            2
        }
        Err(LabFailure::CommandNotFound(program)) => {
            eprintln!(
                "meshprobe lab exec: {}: command not found on PATH (give its full path; `meshprobe` itself is always this binary)",
                crate::cli::error_line(program)
            );
            127
        }
    }
}

/// How to run this binary again from a shell: `meshprobe` when that is what PATH finds,
/// else its full path (after `cargo run -- demo`, nothing named meshprobe is on PATH).
pub fn invocation() -> String {
    let me = std::env::current_exe().ok();
    let on_path = find_on_path("meshprobe", std::env::var_os("PATH").as_deref())
        .and_then(|p| std::fs::canonicalize(p).ok());
    match me {
        Some(me) if on_path.as_deref() != std::fs::canonicalize(&me).ok().as_deref() => {
            let s = me.display().to_string();
            if s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
            {
                s
            } else {
                format!("'{}'", s.replace('\'', "'\\''"))
            }
        }
        _ => "meshprobe".to_owned(),
    }
}

/// Where `program` is on `path` (a name without a slash), if anywhere.
fn find_on_path(program: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::split_paths(path?)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn run_inner(cmd: LabCommand) -> Result<(), LabFailure> {
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
            let me = invocation();
            println!("\nnext:");
            if !no_mesh {
                println!("  {me} lab exec --name {name} ctl -- meshprobe check");
                println!(
                    "    (lab exec sets MESHPROBE_COORDINATOR={coord}, MESHPROBE_TOKEN_FILE and MESHPROBE_CA_FILE)"
                );
            }
            println!("  {me} lab fault --name {name} vxlan-drop-in --node n2");
            println!("  {me} lab heal --name {name}");
            println!("  {me} lab down --name {name}");
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
        LabCommand::Heal {
            kind,
            target,
            forget,
        } => {
            let mut lab = pick(target.name.clone())?;
            let faults: Vec<Fault> = match kind {
                Some(k) => vec![target.in_force(&lab, &k)?],
                None => lab.faults().iter().rev().cloned().collect(),
            };
            for fault in faults {
                if forget {
                    lab.forget(&fault).map_err(|e| e.to_string())?;
                    println!("forgotten: {fault} (the datapath was not touched)");
                } else {
                    lab.heal(&fault).map_err(|e| e.to_string())?;
                    println!("healed: {fault}");
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
            // `meshprobe` is this binary, wherever it was started from (`cargo run --
            // demo` puts nothing on PATH), and its directory goes first on PATH for the
            // scripts the command runs.
            let me = exe()?;
            let mut command = command;
            let path = std::env::var_os("PATH");
            if command[0] == "meshprobe" {
                command[0] = me.display().to_string();
            } else if find_on_path(&command[0], path.as_deref()).is_none() {
                return Err(LabFailure::CommandNotFound(command[0].clone()));
            }
            let mut dirs: Vec<PathBuf> = me.parent().map(PathBuf::from).into_iter().collect();
            dirs.extend(
                path.as_deref()
                    .map(std::env::split_paths)
                    .into_iter()
                    .flatten(),
            );
            let path = std::env::join_paths(dirs)
                .map_err(|e| format!("cannot put the binary's directory on PATH: {e}"))?;
            // The coordinator's URL, the operator's credential and the lab's CA, for a
            // `meshprobe check` with no flags (flags given win over these).
            let err = std::process::Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(&command)
                .env("PATH", path)
                .envs(lab.client_env())
                .exec();
            Err(format!("cannot run ip netns exec: {err}").into())
        }
        LabCommand::Serve { what } => serve(what).map_err(LabFailure::from),
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
