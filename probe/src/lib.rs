//! The meshprobe probe agent.
//!
//! An agent runs on every node at one of two vantage points ([`AgentKind`]): the host
//! network, or the pod network. It never talks to the Kubernetes API: it long-polls the
//! coordinator for its next plan, runs every probe of the plan concurrently with bounded
//! timeouts, and posts one report per round.
//!
//! - [`icmp`]: all ICMP echo targets in flight at once from one socket and one task.
//! - [`dns`]: one query per probe through hickory-proto's codec, no cache, no retries.
//! - [`http`]: GETs for CoreDNS metrics, NodePorts and ingresses.
//! - [`relay`]: the host agent forwards its pod agent's traffic to the coordinator, so pod
//!   reports travel over the node's underlay even when pod forwarding is broken.
//! - [`transport`]: HTTP to the coordinator with a clamped TCP MSS, so reports cross an
//!   underlay that black-holes full-size frames.
//! - [`probers`]: the IO of a round behind one trait, so the loop is tested with fakes.
//! - [`client`]: the typed client of the coordinator's API (also `check`'s).
//! - [`agent`]: the loop that ties them together.

pub mod agent;
pub mod capture;
pub mod client;
pub mod dns;
pub mod evidence;
pub mod firewall;
pub mod http;
pub mod icmp;
pub mod probers;
pub mod relay;
pub mod transport;

pub use agent::{AgentConfig, agent_loop, run, run_plan};
pub use meshprobe_core::AgentKind;
pub use probers::{Probers, RealProbers};
