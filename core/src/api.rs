//! The coordinator's HTTP API, version 1: every route, every request and every response.
//!
//! The coordinator (server), the agents, the host agent's relay and `check` (clients) all
//! build their paths and read their bodies through this module, so a route or a field is
//! written once. It is pure: paths are strings, bodies are serde types.
//!
//! Wire types *ignore unknown fields*: an agent one version behind or ahead of the
//! coordinator keeps working during a rolling upgrade. (Configuration and the inventory
//! do the opposite and reject them.)
//!
//! ## The agents' poll
//!
//! `GET /v1/agents/{node}/{kind}/next` with [`AgentPoll`] as its query. Two answers:
//! - without `heartbeatMs` (v1 agents): 200 with an [`Assignment`], or 204 when no round
//!   started within `wait` seconds;
//! - with `heartbeatMs`: 200 at once, and a body that is a stream of newlines (one every
//!   `heartbeatMs`, the heartbeat) ended by one JSON [`PollResult`]. JSON allows leading
//!   white space, so the whole body is one JSON document. A client that reads nothing for
//!   a few heartbeats knows the connection is dead (a flushed conntrack entry, a firewall
//!   reload, a restarted coordinator) and polls again, instead of waiting for the poll's
//!   timeout.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentKind, NodeName};
use crate::plan::AgentReport;
pub use crate::plan::Assignment;

/// `GET`: liveness of the process.
pub const HEALTHZ: &str = "/healthz";
/// `GET`: 200 on the active coordinator, 503 on a standby.
pub const READYZ: &str = "/readyz";
/// `GET`: Prometheus/OpenMetrics text.
pub const METRICS: &str = "/metrics";
/// `GET`: every agent heard from ([`AgentsList`]).
pub const AGENTS: &str = "/v1/agents";
/// `GET`: an agent's long poll (the router's pattern; build paths with [`next_path`]).
pub const NEXT_PATTERN: &str = "/v1/agents/{node}/{kind}/next";
/// `POST`: one [`AgentReport`].
pub const REPORTS: &str = "/v1/reports";
/// `POST` an [`OfflineBatch`]; `GET` the [`OfflineList`].
pub const REPORTS_OFFLINE: &str = "/v1/reports/offline";
/// `POST` a [`RoundRequest`]: start a round ([`RoundStarted`]).
pub const ROUNDS: &str = "/v1/rounds";
/// `GET`: the latest finished round.
pub const ROUNDS_LATEST: &str = "/v1/rounds/latest";
/// `GET`: one round (the router's pattern; build paths with [`round_path`]).
pub const ROUND_PATTERN: &str = "/v1/rounds/{id}";
/// `GET`: one round's captured packets (pattern; build paths with [`packets_path`]).
pub const PACKETS_PATTERN: &str = "/v1/rounds/{id}/packets";
/// `GET`: the topology the next round plans from ([`TopologyAnswer`]).
pub const TOPOLOGY: &str = "/v1/topology";
/// `GET`: one node's entry in the topology ([`NodeAnswer`]; build paths with
/// [`node_path`]). A host agent reads it at start, so that its relay admits its node's pods
/// before the first round's plan arrives.
pub const NODE_PATTERN: &str = "/v1/nodes/{node}";
/// `GET`: the findings' timeline since a round (`?since=R`; 0 for everything kept).
pub const FINDINGS: &str = "/v1/findings";
/// `PUT` `{"round": N}` saves round N (default: the latest) as baseline `name`; `GET`
/// answers the saved round's report (`latest-healthy`: the latest healthy round kept).
pub const BASELINE_PATTERN: &str = "/v1/baselines/{name}";
/// `GET`: the baselines saved ([`BaselinesAnswer`]), newest first.
pub const BASELINES: &str = "/v1/baselines";
/// `GET`: the coordinator's state in a few bytes (what the web view polls).
pub const STATUS: &str = "/v1/status";
/// `GET ?node=A&peer=B`: the frames A captured with B in a capture round, as a pcap file.
pub const PCAP_PATTERN: &str = "/v1/rounds/{id}/pcap";
/// The baseline name that always means the latest healthy round kept.
pub const LATEST_HEALTHY: &str = "latest-healthy";

/// Heartbeat periods a poll may ask for, in milliseconds (clamped into this range).
pub const HEARTBEAT_MS: std::ops::RangeInclusive<u32> = 100..=5_000;

/// The response header of a streamed poll naming the heartbeat period the coordinator
/// chose, in milliseconds.
pub const HEARTBEAT_HEADER: &str = "meshprobe-heartbeat-ms";

/// Heartbeats a reader may miss before it calls the connection dead.
pub const HEARTBEATS_MISSED: u32 = 3;

/// How long a streamed poll may go quiet before its reader calls the connection dead:
/// [`HEARTBEATS_MISSED`] periods and a little slack.
pub fn idle_limit(heartbeat: std::time::Duration) -> std::time::Duration {
    heartbeat * HEARTBEATS_MISSED + std::time::Duration::from_millis(100)
}

/// The query of an agent's poll for its next plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPoll {
    /// The last round the agent ran (0: none).
    #[serde(default)]
    pub after: u64,
    /// The coordinator epoch `after` belongs to (0: none).
    #[serde(default)]
    pub epoch: u64,
    /// How long the coordinator may hold the poll, in seconds (default 25, at most 60).
    #[serde(default)]
    pub wait: Option<u64>,
    /// A pod agent's own IP (a probe target for every other node).
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<Ipv4Addr>,
    /// Stream a heartbeat this often while holding the poll (see the module docs).
    #[serde(default)]
    pub heartbeat_ms: Option<u32>,
    /// The longest heartbeat period the agent accepts: a coordinator holding thousands of
    /// polls may stretch the period up to this, and says which it chose in the
    /// [`HEARTBEAT_HEADER`] of its answer (agents that do not send this keep theirs).
    #[serde(default)]
    pub heartbeat_max_ms: Option<u32>,
    /// A host agent's relay port: the coordinator tells the node's pod agent to report
    /// through `node IP:relayPort`.
    #[serde(default)]
    pub relay_port: Option<u16>,
}

impl AgentPoll {
    /// The query string, without the `?`.
    pub fn to_query(&self) -> String {
        let mut q = format!("after={}&epoch={}", self.after, self.epoch);
        if let Some(w) = self.wait {
            let _ = write!(q, "&wait={w}");
        }
        if let Some(ip) = self.pod_ip {
            let _ = write!(q, "&podIP={ip}");
        }
        if let Some(h) = self.heartbeat_ms {
            let _ = write!(q, "&heartbeatMs={h}");
        }
        if let Some(h) = self.heartbeat_max_ms {
            let _ = write!(q, "&heartbeatMaxMs={h}");
        }
        if let Some(p) = self.relay_port {
            let _ = write!(q, "&relayPort={p}");
        }
        q
    }
}

/// The path (and query) of an agent's poll.
pub fn next_path(node: &NodeName, kind: AgentKind, poll: &AgentPoll) -> String {
    format!("/v1/agents/{node}/{kind}/next?{}", poll.to_query())
}

/// The path of `node`'s topology entry.
pub fn node_path(node: &NodeName) -> String {
    format!("/v1/nodes/{node}")
}

/// The path of round `id`, held up to `wait` seconds until it finishes.
pub fn round_path(id: u64, wait_s: u64) -> String {
    format!("/v1/rounds/{id}?wait={wait_s}")
}

/// The path of the packets `node` captured to and from `peer` in round `id`.
pub fn packets_path(id: u64, node: &NodeName, peer: &NodeName) -> String {
    format!("/v1/rounds/{id}/packets?node={node}&peer={peer}")
}

/// The end of a heartbeat-streamed poll.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollResult {
    /// The plan to run now; `None` when no round started within the poll's wait.
    #[serde(default)]
    pub assignment: Option<Assignment>,
}

/// `POST /v1/rounds` body (optional: an empty body is `capture: false`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundRequest {
    /// Ask host agents for the round's captured packets (`check --pcap`).
    #[serde(default)]
    pub capture: bool,
}

/// `POST /v1/rounds` answer (202).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundStarted {
    /// The round that will hold fresh results.
    pub round: u64,
}

/// The state of a round that has not finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RoundState {
    /// Started or queued.
    Running,
}

/// `GET /v1/rounds/{id}` answer while the round runs (202).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundProgress {
    /// The round.
    pub round: u64,
    /// Always `running`.
    pub state: RoundState,
    /// Agents that reported so far.
    pub reported: usize,
    /// Agents the round waits for.
    pub expected: usize,
}

/// `POST /v1/reports/offline` body: reports an agent made while it could not reach the
/// coordinator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfflineBatch {
    /// The reports, oldest first.
    pub reports: Vec<AgentReport>,
}

/// `POST /v1/reports/offline` answer (202).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfflineAccepted {
    /// Reports kept.
    pub accepted: usize,
    /// Why the others were not kept (implausible times, rounds not yet planned).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

/// `GET /v1/reports/offline[?after=CURSOR&limit=N]` answer: one page of what agents
/// delivered after an outage, in delivery order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfflineList {
    /// The reports of this page.
    pub reports: Vec<AgentReport>,
    /// The cursor of the next page (`after=`), when there is more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// One agent, as `GET /v1/agents` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentEntry {
    /// Its node.
    pub node: NodeName,
    /// Its vantage point.
    pub kind: AgentKind,
    /// Seconds since the coordinator last heard from it.
    pub last_seen_seconds_ago: f64,
    /// A pod agent's IP.
    #[serde(rename = "podIP")]
    pub pod_ip: Option<Ipv4Addr>,
    /// Whether it holds a poll open right now.
    #[serde(default)]
    pub polling: bool,
    /// A host agent's relay port, as it advertised it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_port: Option<u16>,
}

/// `GET /v1/agents` answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentsList {
    /// Every agent heard from.
    pub agents: Vec<AgentEntry>,
}

/// `GET /v1/topology` answer.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologyAnswer<'a> {
    /// Whether the topology source is current (false: the API server is unreachable).
    pub fresh: bool,
    /// The topology.
    pub topology: &'a crate::Topology,
}

/// `GET /v1/nodes/{node}` answer: what the coordinator's topology says of one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAnswer {
    /// The node.
    pub node: NodeName,
    /// Its underlay address.
    #[serde(rename = "internalIP")]
    pub internal_ip: Ipv4Addr,
    /// Its pod range.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: crate::PodCidr,
    /// Its pods' gateway.
    pub gateway: Ipv4Addr,
}

/// `GET /v1/rounds/{id}/packets` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PacketsAnswer {
    /// The round.
    pub round: u64,
    /// Where the packets were captured.
    pub node: NodeName,
    /// The other end.
    pub peer: NodeName,
    /// The frames.
    pub packets: Vec<crate::capture::CapturedPacket>,
}

/// The path of baseline `name`.
pub fn baseline_path(name: &str) -> String {
    format!("/v1/baselines/{name}")
}

/// Whether `name` may name a baseline: 1 to 63 of `a-z A-Z 0-9 - _ .`, and not only dots.
pub fn is_baseline_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.bytes().all(|b| b == b'.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// One finding's life in the history: when it was first and last made, and in which
/// rounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FindingHistory {
    /// Its cause.
    pub cause: crate::Cause,
    /// The node(s) at fault.
    pub nodes: Vec<NodeName>,
    /// The other end(s).
    pub peers: Vec<NodeName>,
    /// Its summary when last made.
    pub summary: String,
    /// The first round kept that made it.
    pub first_round: u64,
    /// When (Unix milliseconds).
    pub first_seen_ms: u64,
    /// The last round that made it.
    pub last_round: u64,
    /// When (Unix milliseconds).
    pub last_seen_ms: u64,
    /// The rounds that made it, newest last (at most [`MAX_FINDING_ROUNDS`]).
    pub rounds: Vec<u64>,
}

/// The most rounds listed per finding in [`FindingHistory::rounds`].
pub const MAX_FINDING_ROUNDS: usize = 500;

/// `GET /v1/findings?since=R`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FindingsAnswer {
    /// The oldest round kept.
    pub oldest_round: Option<u64>,
    /// The newest round kept.
    pub newest_round: Option<u64>,
    /// Findings made in a round after `since`, most recently seen first.
    pub findings: Vec<FindingHistory>,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusAnswer {
    /// The newest finished round.
    pub latest_round: Option<u64>,
    /// How long ago it finished, in milliseconds (unknown after a restart until the next
    /// round: `null`).
    pub latest_age_ms: Option<u64>,
    /// Its verdict.
    pub healthy: Option<bool>,
    /// Whether this replica is the active one.
    pub leader: bool,
    /// Whether the topology is current (the API server answers, or static mode).
    pub topology_fresh: bool,
    /// Whether authentication is off.
    pub insecure: bool,
    /// Whether the history is being written: `null` while it is, else its last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_error: Option<HistoryFailure>,
    /// Rounds whose captured packets are kept (`GET /v1/rounds/{id}/pcap`).
    #[serde(default)]
    pub capture_rounds: Vec<u64>,
}

/// The history's last failed write (`/v1/status`'s `historyError`), cleared by the next
/// write that succeeds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryFailure {
    /// What failed: `record` (a finished round) or `reserve` (round numbers).
    pub op: String,
    /// The error, in words (the coordinator's own, never remote text).
    pub error: String,
    /// How long ago, in milliseconds.
    pub age_ms: u64,
    /// Failed writes since the process started.
    pub failures: u64,
}

/// `PUT /v1/baselines/{name}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineRequest {
    /// The round to save (default: the latest finished).
    #[serde(default)]
    pub round: Option<u64>,
}

/// The answer to saving a baseline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineSaved {
    /// Its name.
    pub name: String,
    /// The round saved.
    pub round: u64,
}

/// One saved baseline, as `GET /v1/baselines` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineInfo {
    /// Its name.
    pub name: String,
    /// The round it holds.
    pub round: u64,
    /// When it was saved (milliseconds since the Unix epoch).
    pub saved_ms: u64,
    /// The operator who saved it (none for a cluster-secret or open coordinator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The answer to `GET /v1/baselines`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselinesAnswer {
    /// Every baseline saved, newest first (at most the coordinator's 100).
    pub baselines: Vec<BaselineInfo>,
}

/// Every 4xx and 5xx answer's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    /// What was wrong, for people.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query string the clients build names every field exactly as serde (and so the
    /// server's query parser) spells it.
    #[test]
    fn poll_query_uses_the_serde_names() {
        let poll = AgentPoll {
            after: 7,
            epoch: 99,
            wait: Some(10),
            pod_ip: Some(Ipv4Addr::new(10, 42, 1, 9)),
            heartbeat_ms: Some(500),
            heartbeat_max_ms: Some(2000),
            relay_port: Some(7071),
        };
        let q = poll.to_query();
        assert_eq!(
            q,
            "after=7&epoch=99&wait=10&podIP=10.42.1.9&heartbeatMs=500&heartbeatMaxMs=2000&relayPort=7071"
        );
        let from_query: std::collections::BTreeMap<String, serde_json::Value> = q
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
            .collect();
        let from_serde = serde_json::to_value(&poll).expect("json");
        let serde_keys: Vec<&String> = from_serde.as_object().expect("object").keys().collect();
        let query_keys: Vec<&String> = from_query.keys().collect();
        let mut serde_sorted = serde_keys.clone();
        serde_sorted.sort();
        assert_eq!(query_keys, serde_sorted);
        assert_eq!(
            next_path(
                &NodeName::new("n1").expect("name"),
                AgentKind::Pod,
                &AgentPoll::default()
            ),
            "/v1/agents/n1/pod/next?after=0&epoch=0"
        );
    }

    /// Issue 9: agents one version apart keep working; wire types ignore unknown fields.
    #[test]
    fn wire_types_accept_unknown_fields() {
        let p: PollResult =
            serde_json::from_str(r#"{"assignment": null, "fromTheFuture": [1, 2]}"#)
                .expect("unknown field ignored");
        assert_eq!(p.assignment, None);
        let r: RoundProgress = serde_json::from_str(
            r#"{"round": 3, "state": "running", "reported": 1, "expected": 6, "eta": 1}"#,
        )
        .expect("unknown field ignored");
        assert_eq!(r.expected, 6);
        let e: ApiError =
            serde_json::from_str(r#"{"error": "x", "code": 7}"#).expect("unknown field ignored");
        assert_eq!(e.error, "x");
    }
}
