//! The command line (CONTRACT §1, plus `lab`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use meshprobe_core::{AgentKind, NodeName, Topology};

use crate::check::{CheckArgs, Output};
use crate::lab_cmd::LabCommand;

/// meshprobe: a network probe mesh for Kubernetes that pinpoints the broken hop.
#[derive(Parser, Debug)]
#[command(name = "meshprobe", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The coordinator's options.
#[derive(clap::Args, Debug)]
pub struct CoordinatorArgs {
    /// Static mode: take the cluster from this inventory file (YAML or JSON). Without it,
    /// discover the cluster from the Kubernetes API.
    #[arg(long)]
    inventory: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7070")]
    listen: SocketAddr,
    /// Run a round this often even when nobody asks (continuous mode).
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
    interval: Duration,
    /// Discovery: the cluster's DNS domain (kubelet's clusterDomain).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Discovery: a name for the cluster, for people.
    #[arg(long, default_value = "kubernetes")]
    cluster_name: String,
    /// The kubeconfig to reach the API with (default: in-cluster config, else KUBECONFIG
    /// or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Leader election: run as one of several replicas, the one holding this Lease being
    /// active (the others are standby: not ready, no rounds).
    #[arg(long)]
    lease: Option<String>,
    /// The Lease's namespace (the coordinator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "meshprobe")]
    lease_namespace: String,
    /// This replica's identity in the Lease (default: its pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the Lease stays valid after the leader's last renewal (whole seconds).
    #[arg(long, default_value = "8s", value_parser = crate::duration::parse)]
    lease_duration: Duration,
}

/// A probe agent's options.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Coordinator URL. A pod agent points at its host agent's relay
    /// (http://$HOST_IP:7071), so its reports travel over the node's underlay.
    #[arg(long, env = "MESHPROBE_COORDINATOR")]
    coordinator: String,
    /// Run as the pod-network agent (default: host-network agent).
    #[arg(long)]
    pod: bool,
    /// The pod agent's IP (default: env POD_IP, else the source address toward the coordinator).
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<Ipv4Addr>,
    /// Where the host agent serves the relay for its pod agent, or "off".
    #[arg(long, default_value = "0.0.0.0:7071")]
    relay_listen: String,
    /// Keep the last plan here (a volume), to keep probing after a restart while the
    /// coordinator is unreachable.
    #[arg(long, env = "MESHPROBE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// While the coordinator is unreachable, probe with the last plan this often.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
    offline_interval: Duration,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the coordinator.
    Coordinator(CoordinatorArgs),
    /// Run one probe agent.
    Probe(ProbeArgs),
    /// Ask the coordinator for a fresh round and print matrices and findings.
    Check {
        /// Coordinator URL.
        #[arg(long, env = "MESHPROBE_COORDINATOR")]
        coordinator: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Give up (exit 2) after this long.
        #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
        timeout: Duration,
        /// Capture this round and write the failing pairs' overlay packets, as each end saw
        /// them, as pcap files into DIR.
        #[arg(long, value_name = "DIR")]
        pcap: Option<PathBuf>,
    },
    /// Build a sandbox cluster on this machine, run the mesh and a check, clean up.
    Demo {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// The sandbox cluster: build, break, heal and remove it.
    Lab {
        /// What to do.
        #[command(subcommand)]
        command: LabCommand,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in files and `kubectl logs`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn runtime(multi: bool) -> std::io::Result<tokio::runtime::Runtime> {
    if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
}

/// Entry point: parse, dispatch, map errors to exit codes (2: could not run).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let code = match cli.command {
        Command::Coordinator(args) => report(run_coordinator(args)),
        Command::Probe(args) => report(run_probe(args)),
        Command::Check {
            coordinator,
            output,
            timeout,
            pcap,
        } => match runtime(false) {
            Ok(rt) => rt.block_on(crate::check::run(CheckArgs {
                coordinator,
                output,
                timeout,
                pcap,
            })),
            Err(e) => {
                eprintln!("meshprobe: error: cannot start the runtime: {e}");
                2
            }
        },
        Command::Demo { nodes } => crate::demo::run(nodes),
        Command::Lab { command } => crate::lab_cmd::run(command),
    };
    ExitCode::from(code)
}

fn report(r: Result<(), String>) -> u8 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("meshprobe: error: {e}");
            2
        }
    }
}

/// Loads and validates an inventory file; the error names the file, and the line or field.
pub fn load_inventory(path: &PathBuf) -> Result<Topology, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read inventory {}: {e}", path.display()))?;
    Topology::from_inventory(&text).map_err(|e| format!("inventory {}: {e}", path.display()))
}

/// A Kubernetes client: from `--kubeconfig`, else in-cluster, else the kubeconfig.
async fn kube_client(kubeconfig: Option<&PathBuf>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!("no Kubernetes API access ({e}); run in a cluster, set KUBECONFIG, pass --kubeconfig, or pass --inventory FILE")
        })?,
    };
    kube::Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

fn run_coordinator(args: CoordinatorArgs) -> Result<(), String> {
    let topology = args.inventory.as_ref().map(load_inventory).transpose()?;
    let lease = match &args.lease {
        Some(name) => {
            let identity = match &args.identity {
                Some(i) => i.clone(),
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .map_err(|e| {
                        format!("--lease {name}: no --identity or POD_NAME, and no host name ({e})")
                    })?,
            };
            let s = meshprobe_coordinator::lease::LeaseSettings {
                duration: args.lease_duration,
                grace: Duration::from_secs((args.lease_duration.as_secs() * 3 / 8).max(1)),
                ..meshprobe_coordinator::lease::LeaseSettings::new(
                    name,
                    &args.lease_namespace,
                    identity,
                )
            };
            s.validate().map_err(|e| format!("--lease {name}: {e}"))?;
            Some(s)
        }
        None => None,
    };
    let discovery = meshprobe_coordinator::discovery::DiscoverySettings {
        cluster_name: args.cluster_name.clone(),
        cluster_domain: args.cluster_domain.clone(),
        ..Default::default()
    };
    let (listen, interval) = (args.listen, args.interval);
    let rt = runtime(true).map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let needs_api = topology.is_none() || lease.is_some();
        let client = if needs_api {
            Some(kube_client(args.kubeconfig.as_ref()).await?)
        } else {
            None
        };
        let (source, what): (Box<dyn meshprobe_coordinator::TopologySource>, String) =
            match topology {
                Some(t) => {
                    let what = format!("{} nodes, static inventory", t.nodes.len());
                    (
                        Box::new(meshprobe_coordinator::StaticTopology::new(t)),
                        what,
                    )
                }
                None => {
                    let client = client
                        .clone()
                        .ok_or("Kubernetes discovery needs an API client")?;
                    let source =
                        meshprobe_coordinator::kube_source::KubeTopology::start(client, discovery);
                    (Box::new(source), "Kubernetes discovery".to_owned())
                }
            };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        // Printed (not logged) so that scripts and tests binding port 0 learn the port.
        eprintln!("meshprobe coordinator listening on {bound} ({what})");
        let c = meshprobe_coordinator::Coordinator::new(
            source,
            meshprobe_coordinator::Settings::default(),
        );
        let election = match (lease, client) {
            (Some(s), Some(client)) => {
                eprintln!(
                    "meshprobe coordinator: standby until it holds Lease {}/{} as {}",
                    s.namespace, s.name, s.identity
                );
                let e = meshprobe_coordinator::lease::Election::start(client, s);
                c.follow(e.leader());
                Some(e)
            }
            _ => None,
        };
        tokio::spawn(Arc::clone(&c).schedule(interval));
        let served = axum::serve(listener, meshprobe_coordinator::router(c))
            .with_graceful_shutdown(shutdown())
            .await
            .map_err(|e| format!("server: {e}"));
        // Hand over at once rather than after the Lease expires.
        if let Some(e) = election {
            e.release().await;
        }
        served
    })
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn run_probe(args: ProbeArgs) -> Result<(), String> {
    let ProbeArgs {
        node,
        coordinator,
        pod,
        pod_ip,
        relay_listen,
        state_dir,
        offline_interval,
    } = args;
    let node = NodeName::new(node).map_err(|e| format!("--node: {e}"))?;
    if coordinator.contains("$(") {
        return Err(format!(
            "--coordinator {coordinator:?} holds a variable the kubelet did not expand: the \
             meshprobe-coordinator Service did not exist when this pod started; the restarted \
             container will have it"
        ));
    }
    if !(coordinator.starts_with("http://") || coordinator.starts_with("https://")) {
        return Err(format!(
            "--coordinator {coordinator:?} must be an http:// or https:// URL"
        ));
    }
    let relay_listen = match relay_listen.as_str() {
        "off" | "" => None,
        s => Some(
            s.parse::<SocketAddr>()
                .map_err(|_| format!("--relay-listen {s:?} is not ADDR:PORT or off"))?,
        ),
    };
    let cfg = meshprobe_probe::AgentConfig {
        node,
        kind: if pod { AgentKind::Pod } else { AgentKind::Host },
        coordinator,
        pod_ip,
        relay_listen,
        poll_wait: Duration::from_secs(10),
        state_dir,
        offline_interval,
    };
    // One thread is plenty for an IO-bound agent and keeps its footprint small.
    let rt = runtime(false).map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        tokio::select! {
            r = meshprobe_probe::run(cfg) => r.map_err(|e| e.to_string()),
            () = shutdown() => Ok(()),
        }
    })
}
