//! The meshprobe sandbox: an N-node, flannel-style Kubernetes data plane built on one
//! Linux machine from network namespaces and the real kernel datapath (bridges, VXLAN,
//! routes, neighbour and fdb entries, iptables), with faults that imitate real ones.
//!
//! - [`addr`]: the lab's address plan (pure).
//! - [`script`]: the commands that build the datapath and inject faults (pure).
//! - [`exec`]: runs those commands, and runs closures inside a namespace.
//! - [`procs`]: starts the lab's processes and stops them by PID.
//! - [`lab`]: the [`Lab`] itself, a guard that removes everything it created on drop.
//! - [`fault`]: the fault catalogue.
//! - [`kube_api`]: a fake Kubernetes API server (the real wire format) for tests and
//!   `lab up --kube-api`.
//! - [`servers`]: the CoreDNS, web and ingress stand-ins that run inside the lab.
//!
//! Rules: every namespace name starts with the lab's unique prefix; nothing routes out of
//! the sandbox (nodes have no default route, the underlay switch has no uplink); the root
//! namespace gets no address, route or device.

pub mod addr;
pub mod creds;
pub mod exec;
pub mod fault;
pub mod kube_api;
pub mod lab;
pub mod procs;
pub mod script;
pub mod servers;

pub use addr::LabPlan;
pub use fault::Fault;
pub use lab::{Lab, LabError, LabSpec};
