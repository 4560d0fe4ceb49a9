//! The `meshprobe` command: one binary for the coordinator, the agents, `check`, `demo`
//! and the sandbox lab. Each subcommand is a thin layer over the workspace's libraries.

pub mod check;
pub mod cli;
pub mod demo;
pub mod duration;
pub mod lab_cmd;
