//! The coordinator's HTTP API (version 1), serving the routes and types of
//! [`meshprobe_core::api`].
//!
//! Agents:
//! - `GET  /v1/agents/{node}/{kind}/next?after=R&epoch=E&wait=S[&podIP=IP][&heartbeatMs=H][&relayPort=P]`:
//!   the poll for the next plan; with `heartbeatMs`, a heartbeat-streamed answer.
//! - `POST /v1/reports`: an agent report; 202, or 409 when its round is not running.
//!
//! Clients:
//! - `POST /v1/rounds`: start a round now (or queue it); 202 `{"round": N}`.
//! - `GET  /v1/rounds/{id}?wait=S`: 200 with the report when done; 202 with progress.
//! - `GET  /v1/rounds/latest`, `GET /v1/agents`, `GET /v1/topology`, `GET /healthz`.
//! - `GET  /readyz`: 200 on the active replica, 503 `standby` on the other (with leader
//!   election, [`crate::lease`]); a standby answers agents and round requests with 503.
//!
//! Every malformed request gets a 4xx with a message; bodies are capped at [`MAX_BODY`].
//! Every request passes [`crate::auth::layer`] first: agents act only for their own node,
//! writes need an operator's credential (401/403 otherwise).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use meshprobe_core::api::{
    self as wire, AgentPoll, ApiError, OfflineAccepted, OfflineBatch, PacketsAnswer, RoundProgress,
    RoundRequest, RoundStarted, RoundState, TopologyAnswer,
};
use meshprobe_core::plan::AgentReport;
use meshprobe_core::{AgentKind, NodeName};
use serde::Deserialize;

use crate::auth::Caller;
use crate::rounds::{Coordinator, RoundStatus};

/// Largest accepted request body.
pub const MAX_BODY: usize = 8 << 20;
/// Longest a client or agent may ask the coordinator to hold a request.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The API's routes over shared coordinator state.
pub fn router(state: Arc<Coordinator>) -> Router {
    Router::new()
        .route(wire::HEALTHZ, get(|| async { "ok\n" }))
        // Ready = the active coordinator: the Service sends agents to the leader only.
        .route(wire::READYZ, get(readyz))
        .route(wire::METRICS, get(metrics))
        .route(wire::AGENTS, get(agents))
        .route(wire::NEXT_PATTERN, get(next))
        .route(wire::REPORTS, post(report))
        .route(wire::REPORTS_OFFLINE, post(offline).get(offline_list))
        .route(wire::ROUNDS, post(trigger))
        .route(wire::ROUNDS_LATEST, get(latest))
        .route(wire::ROUND_PATTERN, get(round))
        .route(wire::PACKETS_PATTERN, get(packets))
        .route(wire::TOPOLOGY, get(topology))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::auth::layer,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The 403 for a caller acting for a node its credential is not for.
fn not_for(caller: &Caller, node: &NodeName) -> Response {
    error(StatusCode::FORBIDDEN, caller.not_for(node))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn readyz(State(c): State<Arc<Coordinator>>) -> Response {
    if c.is_leader() {
        "ok\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "standby\n").into_response()
    }
}

/// The answer of a standby replica to what only the leader does (agents' polls and
/// reports, round requests). Agents treat it as an unreachable coordinator: they keep
/// probing with their last plan and deliver the results to the leader.
fn standby(c: &Coordinator) -> Option<Response> {
    (!c.is_leader()).then(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this coordinator replica is the standby; the leader (the holder of the Lease) serves agents and rounds",
        )
    })
}

async fn next(
    State(c): State<Arc<Coordinator>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((node, kind)): Path<(String, String)>,
    query: Result<Query<AgentPoll>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(r) = standby(&c) {
        return r;
    }
    let Query(poll) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let node = match NodeName::new(node) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if !caller.may_act_for(&node) {
        return not_for(&caller, &node);
    }
    let kind: AgentKind = match kind.parse() {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if c.topology().node(&node).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!("node {node} is not in the topology"),
        );
    }
    // A pod IP becomes every other node's pod-to-pod target: only one inside the node's
    // own pod CIDR is taken.
    if let Some(ip) = poll.pod_ip
        && let Some(cidr) = c.topology().node(&node).map(|n| n.pod_cidr)
        && !cidr.contains(ip)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("podIP {ip} is not inside {node}'s pod CIDR {cidr}"),
        );
    }
    let wait = Duration::from_secs(poll.wait.unwrap_or(25)).min(MAX_WAIT);
    match poll.heartbeat_ms {
        Some(ms) => {
            let (lo, hi) = (*wire::HEARTBEAT_MS.start(), *wire::HEARTBEAT_MS.end());
            let heartbeat = Duration::from_millis(u64::from(ms.clamp(lo, hi)));
            let stream = c.next_stream((node, kind), poll, wait, heartbeat);
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                axum::body::Body::from_stream(stream),
            )
                .into_response()
        }
        None => match c.next((node, kind), &poll, wait).await {
            Some(a) => Json(a).into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        },
    }
}

async fn report(
    State(c): State<Arc<Coordinator>>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<AgentReport>, JsonRejection>,
) -> Response {
    if let Some(r) = standby(&c) {
        return r;
    }
    let Json(report) = match body {
        Ok(b) => b,
        Err(e) => return error(e.status(), e.body_text()),
    };
    if !caller.may_act_for(&report.node) {
        return not_for(&caller, &report.node);
    }
    match c.report(report) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(
            e @ (crate::rounds::ReportError::NotRunning { .. }
            | crate::rounds::ReportError::Duplicate { .. }),
        ) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn offline(
    State(c): State<Arc<Coordinator>>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<OfflineBatch>, JsonRejection>,
) -> Response {
    if let Some(r) = standby(&c) {
        return r;
    }
    let Json(batch) = match body {
        Ok(b) => b,
        Err(e) => return error(e.status(), e.body_text()),
    };
    if let Some(r) = batch.reports.iter().find(|r| !caller.may_act_for(&r.node)) {
        return not_for(&caller, &r.node);
    }
    let topology = c.topology();
    if let Some(r) = batch
        .reports
        .iter()
        .find(|r| topology.node(&r.node).is_none())
    {
        return error(
            StatusCode::NOT_FOUND,
            format!("node {} is not in the topology", r.node),
        );
    }
    let (accepted, refused) = c.offline(batch.reports);
    let refused: Vec<String> = refused.iter().take(16).map(ToString::to_string).collect();
    (
        StatusCode::ACCEPTED,
        Json(OfflineAccepted { accepted, refused }),
    )
        .into_response()
}

async fn offline_list(State(c): State<Arc<Coordinator>>) -> Response {
    Json(OfflineBatch {
        reports: c.offline_reports(),
    })
    .into_response()
}

async fn trigger(
    State(c): State<Arc<Coordinator>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<crate::listener::PeerAddr>>>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = standby(&c) {
        return r;
    }
    let req: RoundRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RoundRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("round request: {e}")),
        }
    };
    // Without the peer's address (a router served without connect info), all clients
    // share one budget.
    let client = peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.0.0.0.ip());
    match c.trigger_for(client, req.capture) {
        Ok(round) => (StatusCode::ACCEPTED, Json(RoundStarted { round })).into_response(),
        Err(e) => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, e.to_string());
            if let Ok(v) = axum::http::HeaderValue::from_str(&e.retry_after_s.to_string()) {
                r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
            r
        }
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait: u64,
}

async fn round(
    State(c): State<Arc<Coordinator>>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("round id {id:?} is not a number"),
        );
    };
    let wait = match query {
        Ok(Query(q)) => Duration::from_secs(q.wait).min(MAX_WAIT),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match c.wait_for(id, wait).await {
        RoundStatus::Done(report) => Json(&*report).into_response(),
        RoundStatus::Pending { reported, expected } => (
            StatusCode::ACCEPTED,
            Json(RoundProgress {
                round: id,
                state: RoundState::Running,
                reported,
                expected,
            }),
        )
            .into_response(),
        RoundStatus::Evicted => error(StatusCode::GONE, format!("round {id} is no longer kept")),
        RoundStatus::Unknown => error(StatusCode::NOT_FOUND, format!("round {id} does not exist")),
    }
}

#[derive(Deserialize)]
struct PacketsQuery {
    node: String,
    peer: String,
}

async fn packets(
    State(c): State<Arc<Coordinator>>,
    Path(id): Path<String>,
    query: Result<Query<PacketsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("round id {id:?} is not a number"),
        );
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (Ok(node), Ok(peer)) = (NodeName::new(q.node), NodeName::new(q.peer)) else {
        return error(StatusCode::BAD_REQUEST, "node and peer must be node names");
    };
    let Some(peer_ip) = c.topology().node(&peer).map(|n| n.internal_ip) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no node {peer} in the topology"),
        );
    };
    match c.packets(id, &node, peer_ip) {
        Some(packets) => Json(PacketsAnswer {
            round: id,
            node,
            peer,
            packets,
        })
        .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("round {id} captured no packets (`check --pcap` asks for a capture round)"),
        ),
    }
}

async fn latest(State(c): State<Arc<Coordinator>>) -> Response {
    match c.latest() {
        Some(r) => Json(&*r).into_response(),
        None => error(StatusCode::NOT_FOUND, "no round has finished yet"),
    }
}

async fn metrics(State(c): State<Arc<Coordinator>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        c.metrics_text(),
    )
        .into_response()
}

async fn agents(State(c): State<Arc<Coordinator>>) -> Response {
    Json(c.agents()).into_response()
}

async fn topology(State(c): State<Arc<Coordinator>>) -> Response {
    let topology = c.topology();
    Json(TopologyAnswer {
        fresh: c.topology_fresh(),
        topology: &topology,
    })
    .into_response()
}
