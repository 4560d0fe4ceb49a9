//! meshprobe's pure core.
//!
//! Everything in this crate is a function of its inputs: it opens no sockets, reads no
//! files and has no clock. The coordinator, the agents and the sandbox all share these
//! types, and the tests exercise them without a network.
//!
//! - [`inventory`] parses and validates the static inventory file into a [`Topology`].
//! - [`plan`] turns a topology into the probe plan of one agent.
//! - [`auth`] derives and verifies static-mode credentials (CONTRACT §4).
//! - [`api`] is the coordinator's HTTP API: every route, request and response.
//! - [`matrix`] turns plans and agent reports into per-layer matrices and a [`CheckReport`].
//! - [`promtext`] checks that a body is Prometheus text exposition format.
//! - [`render`] draws a report as text tables for people.

pub mod api;
pub mod auth;
pub mod capture;
pub mod catalogue;
pub mod cause;
pub mod compact;
pub mod datapath;
pub mod diff;
pub mod evidence;
pub mod failure;
pub mod fxhash;
pub mod ids;
pub mod inventory;
pub mod junit;
pub mod layer;
pub mod matrix;
pub mod plan;
pub mod promtext;
pub mod render;
pub mod text;

pub use cause::{Cause, Direction};
pub use failure::{FailKind, Failure};
pub use ids::{AgentKind, NodeName, PodCidr};
pub use inventory::{InventoryError, Topology};
pub use layer::Layer;
pub use matrix::{Cell, CellState, CheckReport, Finding};
pub use plan::{AgentReport, Plan, PlanSettings, ProbeResult};
