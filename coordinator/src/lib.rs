//! The meshprobe coordinator.
//!
//! It owns the round: it plans every agent's probes from the topology ([`source`]), hands
//! plans to agents that long-poll for them, collects their reports, and builds the
//! per-layer matrices ([`meshprobe_core::matrix`]) when every live agent has reported or
//! the round's deadline passes. Clients trigger rounds and read results over the same
//! HTTP API ([`api`]).
//!
//! Invariant: the coordinator never blocks a round on an agent that is not polling; such
//! an agent's cells are `unknown`, never `fail`.

pub mod api;
pub mod auth;
pub mod discovery;
pub mod guard;
pub mod history;
pub mod kube_auth;
pub mod kube_source;
pub mod lease;
pub mod metrics;
pub mod node_signals;
pub mod offline;
pub mod rounds;
pub mod source;
pub mod tls;
pub mod web;

pub use api::router;
pub use rounds::{Coordinator, Settings};
pub use source::{StaticTopology, TopologySource};
