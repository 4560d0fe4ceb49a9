//! The command line (CONTRACT §1, plus `lab`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
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
    #[arg(long, env = "MESHPROBE_INVENTORY")]
    inventory: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "MESHPROBE_LISTEN", default_value = "0.0.0.0:7070")]
    listen: SocketAddr,
    /// Connections one client address may hold open at once (0: no cap); more are
    /// answered 503 and closed.
    #[arg(long, env = "MESHPROBE_CONNECTIONS_PER_SOURCE", default_value_t = meshprobe_serve::Limits::for_this_process().per_source)]
    connections_per_source: usize,
    /// A host name the coordinator answers to (repeat for more), besides IP addresses,
    /// localhost and in-cluster Service names: requests naming another host get 421, so
    /// that no other site's page can read it by DNS rebinding.
    #[arg(
        long = "allowed-host",
        env = "MESHPROBE_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
    /// Run a round this often even when nobody asks (continuous mode).
    #[arg(long, env = "MESHPROBE_INTERVAL", default_value = "30s", value_parser = crate::duration::parse)]
    interval: Duration,
    /// Discovery: the cluster's DNS domain (kubelet's clusterDomain).
    #[arg(
        long,
        env = "MESHPROBE_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    cluster_domain: String,
    /// Discovery: a name for the cluster, for people.
    #[arg(long, env = "MESHPROBE_CLUSTER_NAME", default_value = "kubernetes")]
    cluster_name: String,
    /// The kubeconfig to reach the API with (default: in-cluster config, else KUBECONFIG
    /// or ~/.kube/config).
    #[arg(long, env = "MESHPROBE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Leader election: run as one of several replicas, the one holding this Lease being
    /// active (the others are standby: not ready, no rounds).
    #[arg(long, env = "MESHPROBE_LEASE")]
    lease: Option<String>,
    /// The Lease's namespace (the coordinator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "meshprobe")]
    lease_namespace: String,
    /// This replica's identity in the Lease (default: its pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the Lease stays valid after the leader's last renewal (whole seconds).
    #[arg(long, env = "MESHPROBE_LEASE_DURATION", default_value = "8s", value_parser = crate::duration::parse)]
    lease_duration: Duration,
    /// What every round's plans carry, and how rounds end.
    #[command(flatten)]
    round: RoundFlags,
    /// Who may talk to the coordinator, and over what.
    #[command(flatten)]
    auth: ServeAuthFlags,
    /// Keep rounds, findings and baselines in DIR (a SQLite database that survives
    /// restarts); without it they are kept in memory.
    #[arg(long, env = "MESHPROBE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Rounds and findings older than this many hours leave the history (default: 7 days).
    #[arg(long, env = "MESHPROBE_HISTORY_HOURS", default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=87_600))]
    history_hours: u64,
    /// The rounds' reports kept at most, in MiB (older rounds keep their verdict and
    /// findings, not their report).
    #[arg(long, env = "MESHPROBE_HISTORY_MIB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    history_mib: u64,
}

/// The coordinator's authentication and TLS (CONTRACT §4).
#[derive(clap::Args, Debug)]
pub struct ServeAuthFlags {
    /// The cluster secret (at least 16 printable bytes): agents and clients present it or
    /// a credential derived from it (`meshprobe credential`).
    #[arg(long, env = "MESHPROBE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Accept everyone, unauthenticated (v1 behaviour): for experiments only; every round
    /// warns.
    #[arg(
        long,
        env = "MESHPROBE_INSECURE_NO_AUTH",
        conflicts_with = "token_file"
    )]
    insecure_no_auth: bool,
    /// Reads (the GET endpoints, /metrics) need a credential too (default: open, guarded
    /// by a NetworkPolicy and port-forward as cluster dashboards are).
    #[arg(long, env = "MESHPROBE_AUTH_READS")]
    auth_reads: bool,
    /// Serve HTTPS with this certificate (PEM, chain first); needs --tls-key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        env = "MESHPROBE_TLS_CERT"
    )]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM); needs --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        env = "MESHPROBE_TLS_KEY"
    )]
    tls_key: Option<PathBuf>,
}

/// How an agent or `check` reaches the coordinator (CONTRACT §4).
#[derive(clap::Args, Debug, Clone)]
pub struct ClientFlags {
    /// A file holding this client's credential: a node's (agents), an operator's
    /// (`check`), the cluster secret (the lab), or a projected ServiceAccount token
    /// (agents in Kubernetes). Read at every request, so rotation needs no restart.
    #[arg(long, env = "MESHPROBE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The CA certificate(s) (PEM) that signed the coordinator's certificate: needed for
    /// an https:// coordinator URL.
    #[arg(long, env = "MESHPROBE_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// The name the coordinator's certificate must carry, when the URL's host is not it
    /// (agents reach the Service by its ClusterIP, to need no DNS, and verify its DNS
    /// name).
    #[arg(long, env = "MESHPROBE_TLS_SERVER_NAME", value_name = "NAME")]
    tls_server_name: Option<String>,
}

impl ClientFlags {
    /// The client options these flags describe; the token file must be readable now.
    pub fn options(&self) -> anyhow::Result<meshprobe_probe::client::ClientOptions> {
        use meshprobe_probe::client::Credential;
        let credential = match &self.token_file {
            Some(path) => {
                let c = Credential::File(path.clone());
                c.header().with_context(|| "--token-file")?;
                Some(c)
            }
            None => None,
        };
        let tls = match &self.ca_file {
            Some(path) => {
                let pem = read_small(path, 1 << 20).with_context(|| "--ca-file")?;
                Some(meshprobe_probe::transport::client_tls(
                    &path.display().to_string(),
                    &pem,
                )?)
            }
            None => None,
        };
        Ok(meshprobe_probe::client::ClientOptions {
            credential,
            tls,
            server_name: self.tls_server_name.clone(),
        })
    }
}

/// Reads a regular file of at most `max` bytes; the error names it.
pub fn read_small(path: &std::path::Path, max: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a regular file", path.display());
    anyhow::ensure!(
        meta.len() <= max,
        "{} is {} bytes; the most accepted is {max}",
        path.display(),
        meta.len()
    );
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max).read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

/// Reads the cluster secret from `path`.
pub fn read_secret(path: &std::path::Path) -> anyhow::Result<meshprobe_core::auth::ClusterSecret> {
    let bytes = read_small(path, meshprobe_core::auth::MAX_SECRET_BYTES as u64 + 64)?;
    meshprobe_core::auth::ClusterSecret::from_bytes(&bytes)
        .with_context(|| format!("cluster secret {}", path.display()))
}

/// What to say about a cluster secret file every user may read: said, not refused (a
/// Kubernetes Secret volume is 0644 unless its defaultMode says otherwise; deploy/ sets 0440
/// with the pod's fsGroup).
fn secret_mode_warning(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o007 != 0).then(|| {
        format!(
            "meshprobe coordinator: WARNING: the cluster secret {} is readable by every user (mode {:o}): `chmod 600` it, or mount it with defaultMode 0440 and the pod's fsGroup",
            path.display(),
            mode & 0o777
        )
    })
}

/// The round's settings (`PlanSettings` and the round engine's), each a flag and an env
/// var; the defaults are those of `meshprobe_core::PlanSettings` and
/// `meshprobe_coordinator::Settings`.
#[derive(clap::Args, Debug)]
pub struct RoundFlags {
    /// ICMP echoes per target per round (loss is measured over these).
    #[arg(long, env = "MESHPROBE_ICMP_COUNT", default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    icmp_count: u16,
    /// Gap between two echoes to one target (also spreads DNS and HTTP attempts).
    #[arg(long, env = "MESHPROBE_ICMP_INTERVAL", default_value = "20ms", value_parser = crate::duration::parse)]
    icmp_interval: Duration,
    /// How long to wait for the last echo reply.
    #[arg(long, env = "MESHPROBE_ICMP_TIMEOUT", default_value = "1s", value_parser = crate::duration::parse)]
    icmp_timeout: Duration,
    /// How many times each DNS name is asked per target per round.
    #[arg(long, env = "MESHPROBE_DNS_REPEATS", default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=50))]
    dns_repeats: u8,
    /// Timeout of one DNS query.
    #[arg(long, env = "MESHPROBE_DNS_TIMEOUT", default_value = "1s", value_parser = crate::duration::parse)]
    dns_timeout: Duration,
    /// HTTP attempts per NodePort/ingress target per round (metrics: 1).
    #[arg(long, env = "MESHPROBE_HTTP_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=20))]
    http_attempts: u8,
    /// Timeout of one HTTP request.
    #[arg(long, env = "MESHPROBE_HTTP_TIMEOUT", default_value = "1500ms", value_parser = crate::duration::parse)]
    http_timeout: Duration,
    /// A cell fails when at least this share (percent) of its probes failed.
    #[arg(long, env = "MESHPROBE_FAIL_LOSS_PCT", default_value_t = 25.0)]
    fail_loss_pct: f64,
    /// Up to this many nodes, every node probes every other one each round.
    #[arg(long, env = "MESHPROBE_FULL_MESH_MAX", default_value_t = 100)]
    full_mesh_max: u32,
    /// Above --full-mesh-max, the peers each node probes per round.
    #[arg(long, env = "MESHPROBE_PEER_SAMPLE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..))]
    peer_sample: u32,
    /// Time an agent gets beyond the plan's budget to deliver its report.
    #[arg(long, env = "MESHPROBE_GRACE", default_value = "1500ms", value_parser = crate::duration::parse)]
    grace: Duration,
    /// An agent with no poll open and not heard from for this long is known silent: no
    /// round waits for it.
    #[arg(long, env = "MESHPROBE_SILENT_AFTER", default_value = "3s", value_parser = crate::duration::parse)]
    silent_after: Duration,
    /// Finished rounds kept for clients to read.
    #[arg(long, env = "MESHPROBE_KEEP_ROUNDS", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    keep_rounds: u64,
    /// Agents' polls held open at once; past it an agent is told to come back in 1-5 s
    /// (503 with Retry-After). Default: both agents of 10,000 nodes.
    #[arg(long, env = "MESHPROBE_MAX_POLLS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_polls: u64,
    /// Reports parsed at once, after their bodies arrived; the others wait their turn up
    /// to 5 s, then are told to come back in a second.
    #[arg(long, env = "MESHPROBE_MAX_REPORTS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_reports: u64,
    /// Report bodies received at once (each node's credential at most 2 of them); the
    /// others wait their turn up to 5 s, then are told to come back in a second.
    #[arg(long, env = "MESHPROBE_MAX_UPLOADS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_uploads: u64,
    /// The largest report body accepted, in KiB (larger gets 413).
    #[arg(long, env = "MESHPROBE_MAX_REPORT_KIB", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(16..=65_536))]
    max_report_kib: u64,
}

impl RoundFlags {
    /// The coordinator's settings; an error names the flag that is out of range.
    pub fn settings(&self) -> anyhow::Result<meshprobe_coordinator::Settings> {
        let ms = |d: Duration, flag: &str| -> anyhow::Result<u32> {
            let v = d.as_millis();
            anyhow::ensure!(
                (1..=60_000).contains(&v),
                "--{flag} {d:?} must be between 1ms and 60s"
            );
            Ok(v as u32)
        };
        anyhow::ensure!(
            self.fail_loss_pct > 0.0 && self.fail_loss_pct <= 100.0,
            "--fail-loss-pct {} must be more than 0 and at most 100",
            self.fail_loss_pct
        );
        let plan = meshprobe_core::PlanSettings {
            icmp_count: self.icmp_count,
            icmp_interval_ms: ms(self.icmp_interval, "icmp-interval")?,
            icmp_timeout_ms: ms(self.icmp_timeout, "icmp-timeout")?,
            dns_repeats: self.dns_repeats,
            dns_timeout_ms: ms(self.dns_timeout, "dns-timeout")?,
            http_attempts: self.http_attempts,
            http_timeout_ms: ms(self.http_timeout, "http-timeout")?,
            fail_loss_pct: self.fail_loss_pct,
            full_mesh_max: self.full_mesh_max,
            peer_sample: self.peer_sample,
        };
        Ok(meshprobe_coordinator::Settings {
            plan,
            grace: self.grace,
            silent_after: self.silent_after,
            keep_rounds: self.keep_rounds as usize,
            limits: meshprobe_coordinator::rounds::AgentLimits {
                max_polls: self.max_polls as usize,
                max_reports: self.max_reports as usize,
                max_uploads: self.max_uploads as usize,
                max_report_bytes: (self.max_report_kib as usize) << 10,
                ..meshprobe_coordinator::rounds::AgentLimits::default()
            },
            ..meshprobe_coordinator::Settings::default()
        })
    }
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
    #[arg(long, env = "MESHPROBE_POD")]
    pod: bool,
    /// The pod agent's IP (default: env POD_IP, else the source address toward the coordinator).
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<Ipv4Addr>,
    /// Where the host agent serves the relay for its pod agent: ADDR:PORT, or
    /// node-ip:PORT for the node's own address (env HOST_IP, else the address the node
    /// reaches the coordinator from), or "off". It admits this node's pods only.
    #[arg(long, env = "MESHPROBE_RELAY_LISTEN", default_value = "node-ip:7071")]
    relay_listen: String,
    /// Keep the last plan here (a volume), to keep probing after a restart while the
    /// coordinator is unreachable.
    #[arg(long, env = "MESHPROBE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// While the coordinator is unreachable, probe with the last plan this often.
    #[arg(long, env = "MESHPROBE_OFFLINE_INTERVAL", default_value = "30s", value_parser = crate::duration::parse)]
    offline_interval: Duration,
    /// How long one poll for the next round may be held by the coordinator.
    #[arg(long, env = "MESHPROBE_POLL_WAIT", default_value = "10s", value_parser = crate::duration::parse)]
    poll_wait: Duration,
    /// The poll's heartbeat period, or "off" (v1 long polls). Three missed heartbeats mark
    /// the connection dead, and the agent polls again at once.
    #[arg(long, env = "MESHPROBE_HEARTBEAT", default_value = "300ms")]
    heartbeat: String,
    /// The credential and the coordinator's CA.
    #[command(flatten)]
    client: ClientFlags,
}

/// What `check`'s exit code says (its `--help` ends with it).
const CHECK_EXIT_CODES: &str = "\
Exit codes:
  0  healthy: every cell passed, no finding
  1  NOT HEALTHY: a cell failed or is unknown, or there are findings
  2  no verdict: bad arguments, the coordinator unreachable or refusing, a timeout";

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the coordinator.
    Coordinator(Box<CoordinatorArgs>),
    /// Run one probe agent.
    Probe(ProbeArgs),
    /// Ask the coordinator for a fresh round and print matrices and findings.
    #[command(after_help = CHECK_EXIT_CODES)]
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
        /// The credential (the cluster secret or an operator's) and the coordinator's CA.
        #[command(flatten)]
        client: ClientFlags,
        /// Save this round as baseline NAME (on the coordinator, in its history).
        #[arg(long, value_name = "NAME", value_parser = baseline_name)]
        save_baseline: Option<String>,
        /// Print what changed since baseline NAME (or `latest-healthy`) before the report:
        /// cells that broke, cells that recovered, latency shifts (`meshprobe baselines`
        /// lists the names).
        #[arg(long, value_name = "NAME", value_parser = baseline_name)]
        baseline: Option<String>,
        /// Also write the round as JUnit XML (a testcase per layer and per finding) to FILE.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
    },
    /// List the baselines the coordinator keeps (for `check --baseline NAME`), newest first.
    Baselines {
        /// Coordinator URL.
        #[arg(long, env = "MESHPROBE_COORDINATOR")]
        coordinator: String,
        /// Print JSON (`{"baselines": [{"name", "round", "savedMs", "owner"}]}`).
        #[arg(long)]
        json: bool,
        /// Give up (exit 2) after this long.
        #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
        timeout: Duration,
        /// The credential and the coordinator's CA.
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Print a credential derived from the cluster secret: a node's (for its host and pod
    /// agents only) or an operator's (for `check`).
    #[command(group(clap::ArgGroup::new("role").required(true).args(["node", "operator"])))]
    Credential {
        /// The file holding the cluster secret (the coordinator's --token-file).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// The node whose agents the credential is for (this, or --operator).
        #[arg(long)]
        node: Option<String>,
        /// An operator's name (a person or a CI job): the credential starts rounds (this,
        /// or --node).
        #[arg(long)]
        operator: Option<String>,
    },
    /// Build a sandbox cluster on this machine, run the mesh and a check, clean up.
    Demo {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Leave the lab (with the fault in force) and the web view running, at
        /// https://127.0.0.1:7070/, until Ctrl-C; then remove everything.
        #[arg(long)]
        keep: bool,
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

/// Runs a client command (`check`, `baselines`) on a one-thread runtime with the client
/// options `flags` describe; exit 2 when either cannot be had.
fn with_client<F>(
    flags: &ClientFlags,
    f: impl FnOnce(meshprobe_probe::client::ClientOptions) -> F,
) -> u8
where
    F: std::future::Future<Output = u8>,
{
    match (runtime(false), flags.options()) {
        (Ok(rt), Ok(options)) => rt.block_on(f(options)),
        (Err(e), _) => {
            eprintln!(
                "meshprobe: error: cannot start the runtime: {}",
                error_line(e)
            );
            2
        }
        (_, Err(e)) => {
            eprintln!("meshprobe: error: {}", error_line(format!("{e:#}")));
            2
        }
    }
}

/// Entry point: parse, dispatch, map errors to exit codes (2: could not run).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let code = match cli.command {
        Command::Coordinator(args) => report(run_coordinator(*args)),
        Command::Probe(args) => report(run_probe(args)),
        Command::Check {
            coordinator,
            output,
            timeout,
            pcap,
            client,
            save_baseline,
            baseline,
            junit,
        } => with_client(&client, |client| {
            crate::check::run(CheckArgs {
                coordinator,
                output,
                timeout,
                pcap,
                client,
                save_baseline,
                baseline,
                junit,
            })
        }),
        Command::Baselines {
            coordinator,
            json,
            timeout,
            client,
        } => with_client(&client, |client| async move {
            crate::check::list_baselines(&coordinator, &client, json, timeout).await
        }),
        Command::Credential {
            token_file,
            node,
            operator,
        } => report(print_credential(&token_file, node, operator)),
        Command::Demo { nodes, keep } => crate::demo::run(nodes, keep),
        Command::Lab { command } => crate::lab_cmd::run(command),
    };
    ExitCode::from(code)
}

fn baseline_name(s: &str) -> Result<String, String> {
    if meshprobe_core::api::is_baseline_name(s) {
        Ok(s.to_owned())
    } else {
        Err("a baseline name is 1 to 63 of a-z A-Z 0-9 - _ .".to_owned())
    }
}

fn print_credential(
    token_file: &std::path::Path,
    node: Option<String>,
    operator: Option<String>,
) -> anyhow::Result<()> {
    use meshprobe_core::auth::Subject;
    let secret = read_secret(token_file)?;
    let subject = match (node, operator) {
        (Some(n), _) => {
            Subject::Node(NodeName::new(n).map_err(|e| anyhow::anyhow!("--node: {e}"))?)
        }
        (None, Some(o)) => Subject::operator(&o).context("--operator")?,
        (None, None) => anyhow::bail!("give --node NAME or --operator NAME"),
    };
    println!("{}", secret.credential(&subject));
    Ok(())
}

/// An error as one line for stderr: its text may carry what a coordinator or an agent
/// sent, so control, bidi and format characters are escaped and newlines are written out
/// (a fake "HEALTHY" line can never appear under an error).
pub(crate) fn error_line(e: impl std::fmt::Display) -> String {
    meshprobe_core::text::printable_line(&e.to_string(), 4000)
}

fn report(r: anyhow::Result<()>) -> u8 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            // `{:#}`: each context, then its cause, on one line.
            eprintln!("meshprobe: error: {}", error_line(format!("{e:#}")));
            2
        }
    }
}

/// Loads and validates an inventory file; the error names the file, and the line or field.
///
/// Only a regular file is read (a FIFO or a device would block or never end), and at most
/// [`MAX_INVENTORY_BYTES`] of it.
pub fn load_inventory(path: &PathBuf) -> anyhow::Result<Topology> {
    use meshprobe_core::inventory::MAX_INVENTORY_BYTES;
    use std::io::Read as _;
    // stat before open: opening a FIFO would block until a writer comes.
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read inventory {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!(
            "inventory {} is not a regular file (a FIFO, a device or a directory)",
            path.display()
        );
    }
    if meta.len() > MAX_INVENTORY_BYTES as u64 {
        anyhow::bail!(
            "inventory {} is {} bytes; the most accepted is {MAX_INVENTORY_BYTES}",
            path.display(),
            meta.len()
        );
    }
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read inventory {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_INVENTORY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read inventory {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("inventory {} is not UTF-8: {e}", path.display()))?;
    Topology::from_inventory(&text).with_context(|| format!("inventory {}", path.display()))
}

/// A Kubernetes client: from `--kubeconfig`, else in-cluster, else the kubeconfig.
async fn kube_client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!("no Kubernetes API access ({e}); run in a cluster, set KUBECONFIG, pass --kubeconfig, or pass --inventory FILE")
        })?,
    };
    kube::Client::try_from(config).context("Kubernetes client")
}

fn run_coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let topology = args.inventory.as_ref().map(load_inventory).transpose()?;
    let lease = match &args.lease {
        Some(name) => {
            let identity = match &args.identity {
                Some(i) => i.clone(),
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .with_context(|| {
                        format!("--lease {name}: no --identity or POD_NAME, and no host name")
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
            s.validate()
                .map_err(|e| anyhow::anyhow!("--lease {name}: {e}"))?;
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
    let mut settings = args.round.settings()?;
    // Polls past the limit are told to come back (503); connections past the listener's
    // cap would wait unseen in the kernel's backlog. So polls meet their limit first, with
    // a quarter of the connections left for reports, clients and Prometheus.
    let limits = meshprobe_serve::Limits {
        per_source: args.connections_per_source,
        ..meshprobe_serve::Limits::for_this_process()
    };
    let connections = limits.max_connections;
    if settings.limits.max_polls > connections / 4 * 3 {
        // Expected with the default and a modest `ulimit -n`: said at info, not a warning.
        tracing::info!(
            max_polls = settings.limits.max_polls,
            connections,
            "open polls capped at three quarters of the connections the file-descriptor limit allows (raise `ulimit -n` for more)"
        );
        settings.limits.max_polls = (connections / 4 * 3).max(1);
    }
    let secret = args
        .auth
        .token_file
        .as_deref()
        .map(read_secret)
        .transpose()?;
    if secret.is_none() && !args.auth.insecure_no_auth && topology.is_some() {
        anyhow::bail!(
            "the coordinator refuses unauthenticated agents: pass --token-file FILE (the cluster \
             secret; agents and clients present it, or a credential from `meshprobe credential`), \
             or --insecure-no-auth for an experiment (see docs/security.md)"
        );
    }
    let tls = match (&args.auth.tls_cert, &args.auth.tls_key) {
        (Some(cert), Some(key)) => Some(
            meshprobe_coordinator::tls::server_config(cert, key).context("--tls-cert/--tls-key")?,
        ),
        _ => None,
    };
    let history = meshprobe_coordinator::history::History::open(
        args.data_dir.as_deref(),
        meshprobe_coordinator::history::Retention {
            max_age: Duration::from_secs(args.history_hours * 3600),
            max_report_bytes: args.history_mib << 20,
        },
    )?;
    settings.history = Some(Arc::new(history));
    settings.allowed_hosts = args.allowed_hosts.clone();
    settings.tls = tls.is_some();
    let (insecure, auth_reads) = (args.auth.insecure_no_auth, args.auth.auth_reads);
    // Said after the "listening on" line, which scripts read first.
    let mut warnings: Vec<String> = Vec::new();
    if insecure {
        warnings.push(
            "meshprobe coordinator: WARNING: --insecure-no-auth: anyone who reaches this port can forge reports and start rounds".to_owned(),
        );
    } else if tls.is_none() {
        warnings.push(
            "meshprobe coordinator: WARNING: serving plain HTTP: credentials travel in clear (pass --tls-cert and --tls-key)".to_owned(),
        );
    }
    warnings.extend(
        args.auth
            .token_file
            .as_deref()
            .and_then(secret_mode_warning),
    );
    let rt = runtime(true).context("cannot start the runtime")?;
    rt.block_on(async move {
        let needs_api = topology.is_none() || lease.is_some();
        let client = if needs_api {
            Some(kube_client(args.kubeconfig.as_ref()).await?)
        } else {
            None
        };
        let mut reviewer: Option<std::sync::Arc<dyn meshprobe_coordinator::auth::TokenReviewer>> =
            None;
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
                        .context("Kubernetes discovery needs an API client")?;
                    let source = meshprobe_coordinator::kube_source::KubeTopology::start(
                        client.clone(),
                        discovery,
                    );
                    reviewer = Some(meshprobe_coordinator::kube_auth::KubeReviewer::new(
                        client.clone(),
                        source.meshprobe_pods(),
                    ));
                    settings.signals = Some(Arc::new(
                        meshprobe_coordinator::node_signals::NodeSignals::new(client),
                    ));
                    (Box::new(source), "Kubernetes discovery".to_owned())
                }
            };
        settings.auth = if insecure {
            meshprobe_coordinator::auth::Auth::insecure()
        } else {
            meshprobe_coordinator::auth::Auth::required(secret, reviewer)
                .with_closed_reads(auth_reads)
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let bound = listener
            .local_addr()
            .context("cannot read the bound address")?;
        // Printed (not logged) so that scripts and tests binding port 0 learn the port.
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!("meshprobe coordinator listening on {bound} ({what}, {scheme})");
        for w in &warnings {
            eprintln!("{w}");
        }
        let c = meshprobe_coordinator::Coordinator::new(source, settings);
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
        let stopping = Arc::clone(&c);
        tracing::info!(
            max_connections = limits.max_connections,
            per_source = limits.per_source,
            "connections capped (the file-descriptor limit leaves room for this many)"
        );
        let mut listener = meshprobe_serve::BoundedListener::new(listener, limits);
        if let Some(tls) = tls {
            listener = listener.with_tls(tls);
        }
        meshprobe_serve::serve(listener, meshprobe_coordinator::router(c), async move {
            shutdown().await;
            // Open polls end now, so the graceful shutdown does not wait for them.
            stopping.shut_down();
        })
        .await;
        // Hand over at once rather than after the Lease expires.
        if let Some(e) = election {
            e.release().await;
        }
        Ok(())
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

/// `--relay-listen`'s address: `node-ip:PORT` is the node's own address (env HOST_IP,
/// else the source address toward the coordinator), never the wildcard.
fn relay_address(given: &str, coordinator: &str) -> anyhow::Result<SocketAddr> {
    let bad = || anyhow::anyhow!("--relay-listen {given:?} is not ADDR:PORT, node-ip:PORT or off");
    if let Some(port) = given.strip_prefix("node-ip:") {
        let port: u16 = port.parse().map_err(|_| bad())?;
        let ip = match std::env::var("HOST_IP") {
            Ok(v) if !v.is_empty() => v.parse::<std::net::IpAddr>().map_err(|_| {
                anyhow::anyhow!("--relay-listen node-ip: HOST_IP {v:?} is not an IP address")
            })?,
            _ => meshprobe_probe::agent::source_ip_toward(coordinator)
                .map(std::net::IpAddr::V4)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--relay-listen node-ip: set HOST_IP, or give the address (the coordinator URL {coordinator:?} names no IPv4 address to find the node's from)"
                    )
                })?,
        };
        return Ok(SocketAddr::new(ip, port));
    }
    given.parse::<SocketAddr>().map_err(|_| bad())
}

fn run_probe(args: ProbeArgs) -> anyhow::Result<()> {
    let ProbeArgs {
        node,
        coordinator,
        pod,
        pod_ip,
        relay_listen,
        state_dir,
        offline_interval,
        poll_wait,
        heartbeat,
        client,
    } = args;
    let client = client.options()?;
    let node = NodeName::new(node).map_err(|e| anyhow::anyhow!("--node: {e}"))?;
    let heartbeat = match heartbeat.as_str() {
        "off" => None,
        s => {
            let d = crate::duration::parse(s).map_err(|e| anyhow::anyhow!("--heartbeat: {e}"))?;
            let ms = d.as_millis();
            let range = meshprobe_core::api::HEARTBEAT_MS;
            if !(u128::from(*range.start())..=u128::from(*range.end())).contains(&ms) {
                anyhow::bail!(
                    "--heartbeat {s:?} must be between {}ms and {}ms, or off",
                    range.start(),
                    range.end()
                );
            }
            Some(d)
        }
    };
    if !(1..=60).contains(&poll_wait.as_secs()) {
        anyhow::bail!("--poll-wait {poll_wait:?} must be between 1s and 60s");
    }
    if coordinator.contains("$(") {
        anyhow::bail!(
            "--coordinator {coordinator:?} holds a variable the kubelet did not expand: the \
             meshprobe-coordinator Service did not exist when this pod started; the restarted \
             container will have it"
        );
    }
    if !(coordinator.starts_with("http://") || coordinator.starts_with("https://")) {
        anyhow::bail!("--coordinator {coordinator:?} must be an http:// or https:// URL");
    }
    let relay_listen = match relay_listen.as_str() {
        "off" | "" => None,
        s => Some(relay_address(s, &coordinator)?),
    };
    let cfg = meshprobe_probe::AgentConfig {
        pod_ip,
        relay_listen,
        poll_wait,
        heartbeat,
        state_dir,
        offline_interval,
        client,
        ..meshprobe_probe::AgentConfig::new(
            node,
            if pod { AgentKind::Pod } else { AgentKind::Host },
            coordinator,
        )
    };
    // One thread is plenty for an IO-bound agent and keeps its footprint small.
    let rt = runtime(false).context("cannot start the runtime")?;
    rt.block_on(async move {
        tokio::select! {
            r = meshprobe_probe::run(cfg) => r.map_err(anyhow::Error::from),
            () = shutdown() => Ok(()),
        }
    })
}

#[cfg(test)]
mod flag_tests {
    use clap::CommandFactory as _;

    /// Issue 23: every coordinator and agent flag has an environment variable (a
    /// Deployment sets them in `env:`), as docs/usage.md says.
    #[test]
    fn every_coordinator_and_agent_flag_has_an_environment_variable() {
        let cli = super::Cli::command();
        for sub in ["coordinator", "probe"] {
            let cmd = cli.find_subcommand(sub).expect("the subcommand");
            let missing: Vec<String> = cmd
                .get_arguments()
                .filter(|a| a.get_long().is_some_and(|l| l != "help" && l != "version"))
                .filter(|a| a.get_env().is_none())
                .map(|a| format!("--{}", a.get_long().unwrap_or_default()))
                .collect();
            assert!(
                missing.is_empty(),
                "{sub}: no environment variable for {missing:?}"
            );
        }
    }

    /// `check --help` ends with the exit codes; `credential` with neither role names both.
    #[test]
    fn check_help_lists_exit_codes_and_credential_names_both_roles() {
        let mut cli = super::Cli::command();
        let help = cli
            .find_subcommand_mut("check")
            .expect("check")
            .render_long_help()
            .to_string();
        for code in ["0  healthy", "1  NOT HEALTHY", "2  no verdict"] {
            assert!(help.contains(code), "{help}");
        }
        let err = super::Cli::command()
            .try_get_matches_from(["meshprobe", "credential", "--token-file", "/x"])
            .expect_err("a role is required");
        let text = err.to_string();
        assert!(
            text.contains("--node") && text.contains("--operator"),
            "{text}"
        );
    }

    /// Issue 23, row 12: `lab fault --help` says what every kind does, and each option
    /// lists every kind that takes it (both from the catalogue).
    #[test]
    fn lab_fault_help_describes_every_kind_and_who_takes_each_option() {
        use meshprobe_core::catalogue::{Args, FaultKind};
        let mut cli = super::Cli::command();
        let help = cli
            .find_subcommand_mut("lab")
            .and_then(|lab| lab.find_subcommand_mut("fault"))
            .expect("lab fault")
            .render_long_help()
            .to_string();
        // clap wraps long lines: compare with whitespace collapsed.
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for &k in FaultKind::ALL {
            let line = format!("{}: {}", k.id(), k.summary());
            assert!(flat.contains(&line), "{line:?} missing from:\n{help}");
        }
        for (option, args) in [
            ("--peer", Args::NodePeer),
            ("--pod", Args::Pod),
            ("--mtu", Args::NodeMtu),
            ("--percent", Args::NodePercent),
        ] {
            let at = flat.find(&format!("{option} <")).expect(option);
            let said = &flat[at..];
            let said = &said[..said.find(" --").unwrap_or(said.len())];
            for k in FaultKind::ALL.iter().filter(|k| k.spec().args == args) {
                assert!(said.contains(k.id()), "{option} does not name {k}: {said}");
            }
        }
    }
}
