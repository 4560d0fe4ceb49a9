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
    self as wire, AgentPoll, ApiError, BaselineRequest, BaselineSaved, OfflineAccepted,
    OfflineBatch, PacketsAnswer, RoundProgress, RoundRequest, RoundStarted, RoundState,
    TopologyAnswer,
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
        .route(wire::NODE_PATTERN, get(node_entry))
        .route(wire::FINDINGS, get(findings))
        .route(wire::STATUS, get(status))
        .route(wire::PCAP_PATTERN, get(pcap))
        .route("/", get(crate::web::index))
        .route("/ui/app.js", get(crate::web::app))
        .route("/ui/style.css", get(crate::web::style))
        .route("/ui/favicon.svg", get(crate::web::icon))
        .route(wire::BASELINES, get(baselines))
        .route(wire::BASELINE_PATTERN, get(baseline).put(save_baseline))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::auth::layer,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::guard::layer,
        ))
        .with_state(state)
}

/// The 403 for a caller acting for a node its credential is not for.
fn not_for(caller: &Caller, node: &NodeName) -> Response {
    error(StatusCode::FORBIDDEN, caller.not_for(node))
}

/// The API's error answer: `status` with `{"error": message}`.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    error(status, message)
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
    let key = (node, kind);
    let slot = match c.poll_slot(&key) {
        Ok(s) => s,
        Err(e) => return overloaded(&e),
    };
    let (node, kind) = key;
    // A pod IP becomes every other node's pod-to-pod target: only a pod's address inside
    // the node's own pod CIDR is taken (not its network, broadcast or gateway address,
    // which would make everyone probe the node itself).
    if let Some(ip) = poll.pod_ip
        && let Some((cidr, gateway)) = c.topology().node(&node).map(|n| (n.pod_cidr, n.gateway))
    {
        let why = if !cidr.contains(ip) {
            Some("is not inside")
        } else if ip == cidr.net().network() || ip == cidr.net().broadcast() {
            Some("is the network or broadcast address of")
        } else if ip == gateway {
            Some("is the pod gateway of")
        } else {
            None
        };
        if let Some(why) = why {
            return error(
                StatusCode::BAD_REQUEST,
                format!("podIP {ip} {why} {node}'s pod CIDR {cidr}"),
            );
        }
    }
    let wait = Duration::from_secs(poll.wait.unwrap_or(25)).min(MAX_WAIT);
    match poll.heartbeat_ms {
        Some(ms) => {
            let (lo, hi) = (*wire::HEARTBEAT_MS.start(), *wire::HEARTBEAT_MS.end());
            let clamp = |ms: u32| Duration::from_millis(u64::from(ms.clamp(lo, hi)));
            let heartbeat = c.heartbeat_for(clamp(ms), poll.heartbeat_max_ms.map(clamp));
            // The poll's slot is held as long as its stream is.
            let stream = futures_util::StreamExt::map(
                c.next_stream((node, kind), poll, wait, heartbeat),
                move |item| {
                    let _held = &slot;
                    item
                },
            );
            (
                [
                    (
                        axum::http::header::CONTENT_TYPE,
                        "application/json".to_owned(),
                    ),
                    (
                        axum::http::HeaderName::from_static(wire::HEARTBEAT_HEADER),
                        heartbeat.as_millis().to_string(),
                    ),
                ],
                axum::body::Body::from_stream(stream),
            )
                .into_response()
        }
        None => {
            let answer = match c.next((node, kind), &poll, wait).await {
                Some(a) => Json(a).into_response(),
                None => StatusCode::NO_CONTENT.into_response(),
            };
            drop(slot);
            answer
        }
    }
}

/// 503 with `Retry-After`: the coordinator is at a limit; the agent waits as told.
fn overloaded(e: &crate::rounds::Overloaded) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(e.retry_after_s),
    );
    r
}

async fn report(
    State(c): State<Arc<Coordinator>>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: axum::body::Body,
) -> Response {
    if let Some(r) = standby(&c) {
        return r;
    }
    // A turn to send the body, of the caller's node's own (a node's slow uploads hold its
    // own turns only), then the body, then a turn to parse and apply it: a burst of
    // reports holds at most `max_uploads` bodies, and a slow one no parsing turn.
    let node = match &caller {
        Caller::Node(n) => Some(n),
        _ => None,
    };
    let upload = match c.upload_turn(node).await {
        Ok(t) => t,
        Err(e) => return overloaded(&e),
    };
    let limit = c.settings().limits.max_report_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_big {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("a report may be at most {limit} bytes"),
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the report: {e}"),
                )
            };
        }
    };
    // The body stays counted as received until it is applied.
    let _upload = upload;
    let _turn = match c.report_slot().await {
        Ok(t) => t,
        Err(e) => return overloaded(&e),
    };
    let report: AgentReport = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("not a report: {e}"),
            );
        }
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

/// `GET /v1/reports/offline?after=CURSOR&limit=N`: one page, built from the stored JSON
/// outside the lock; `next` is the following page's cursor when there is more.
async fn offline_list(
    State(c): State<Arc<Coordinator>>,
    query: Result<Query<OfflinePageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "after and limit must be whole numbers".to_owned(),
        );
    };
    let (page, next) = c.offline_page(q.after, q.limit);
    let mut body = Vec::with_capacity(page.iter().map(|j| j.len() + 1).sum::<usize>() + 64);
    body.extend_from_slice(b"{\"reports\":[");
    for (i, j) in page.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(j);
    }
    body.push(b']');
    if let Some(n) = next {
        body.extend_from_slice(format!(",\"next\":{n}").as_bytes());
    }
    body.push(b'}');
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct OfflinePageQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "offline_page_default")]
    limit: usize,
}

fn offline_page_default() -> usize {
    64
}

async fn trigger(
    State(c): State<Arc<Coordinator>>,
    caller: Option<axum::Extension<Caller>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<meshprobe_serve::PeerAddr>>>,
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
    // A credential's own budget; without one, the address's (without the peer's address,
    // a router served without connect info, all such clients share one budget).
    let client = match caller.map(|c| c.0) {
        Some(Caller::Operator(name)) => {
            crate::rounds::RoundClient::Credential(format!("operator {name}"))
        }
        Some(Caller::Node(n)) => crate::rounds::RoundClient::Credential(format!("node {n}")),
        Some(Caller::Cluster) => {
            crate::rounds::RoundClient::Credential("the cluster secret".to_owned())
        }
        _ => crate::rounds::RoundClient::Address(
            peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.0.0.0.ip()),
        ),
    };
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
    #[serde(default)]
    cells: Option<Cells>,
}

/// `?cells=`: which cells a report answer lists.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Cells {
    /// Every cell (CONTRACT §3 as is).
    All,
    /// Failing and unknown cells; the ok ones counted in `summary`.
    Failing,
}

#[derive(Deserialize)]
struct CellsQuery {
    #[serde(default)]
    cells: Option<Cells>,
}

/// A report as JSON: in full, or summarised when asked or, by default, above
/// [`SUMMARY_ABOVE`](meshprobe_core::matrix::SUMMARY_ABOVE) cells. A big report is
/// summarised and serialised off the async threads: 1.5 million cells take a while.
async fn report_answer(report: Arc<meshprobe_core::CheckReport>, cells: Option<Cells>) -> Response {
    let big = report.cell_count() > meshprobe_core::matrix::SUMMARY_ABOVE;
    let summarise = report.summary.is_none()
        && cells.unwrap_or(if big { Cells::Failing } else { Cells::All }) == Cells::Failing;
    if !big && !summarise {
        return Json(&*report).into_response();
    }
    let body = tokio::task::spawn_blocking(move || {
        if summarise {
            serde_json::to_vec(&report.summarised())
        } else {
            serde_json::to_vec(&*report)
        }
    })
    .await;
    match body {
        Ok(Ok(bytes)) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the report cannot be serialised",
        ),
    }
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
    let (wait, cells) = match query {
        Ok(Query(q)) => (Duration::from_secs(q.wait).min(MAX_WAIT), q.cells),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match c.wait_for(id, wait).await {
        RoundStatus::Done(report) => report_answer(report, cells).await,
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
        RoundStatus::Evicted => {
            // Out of memory's window, maybe still in the history.
            let kept = match c.history() {
                Some(h) => {
                    let h = Arc::clone(h);
                    tokio::task::spawn_blocking(move || h.round(id))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten()
                }
                None => None,
            };
            match kept {
                Some(report) => report_answer(Arc::new(report), cells).await,
                None => error(StatusCode::GONE, format!("round {id} is no longer kept")),
            }
        }
        RoundStatus::Unknown => error(StatusCode::NOT_FOUND, format!("round {id} does not exist")),
    }
}

#[derive(Deserialize)]
struct PacketsQuery {
    node: String,
    peer: String,
}

/// The packets `node` captured with `peer` in round `id` (the shared part of the packets
/// and pcap routes).
fn captured(
    c: &Coordinator,
    id: &str,
    query: Result<Query<PacketsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<PacketsAnswer, Box<Response>> {
    let Ok(id) = id.parse::<u64>() else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("round id {id:?} is not a number"),
        )));
    };
    let Query(q) = query.map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e.body_text())))?;
    let (Ok(node), Ok(peer)) = (NodeName::new(q.node), NodeName::new(q.peer)) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "node and peer must be node names",
        )));
    };
    let Some(peer_ip) = c.topology().node(&peer).map(|n| n.internal_ip) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no node {peer} in the topology"),
        )));
    };
    match c.packets(id, &node, peer_ip) {
        Some(packets) => Ok(PacketsAnswer {
            round: id,
            node,
            peer,
            packets,
        }),
        None => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("round {id} captured no packets (`check --pcap` asks for a capture round)"),
        ))),
    }
}

async fn packets(
    State(c): State<Arc<Coordinator>>,
    Path(id): Path<String>,
    query: Result<Query<PacketsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match captured(&c, &id, query) {
        Ok(answer) => Json(answer).into_response(),
        Err(r) => *r,
    }
}

async fn latest(
    State(c): State<Arc<Coordinator>>,
    query: Result<Query<CellsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let cells = match query {
        Ok(Query(q)) => q.cells,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match c.latest() {
        Some(r) => report_answer(r, cells).await,
        None => error(StatusCode::NOT_FOUND, "no round has finished yet"),
    }
}

/// `/metrics` in the format the scraper's `Accept` asks for: OpenMetrics for Prometheus,
/// the classic text format for everyone else (curl, `promtool check metrics`).
async fn metrics(State(c): State<Arc<Coordinator>>, headers: axum::http::HeaderMap) -> Response {
    use meshprobe_core::promtext::{Exposition, openmetrics_to_classic};
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = Exposition::negotiate(accept);
    let text = c.metrics_text();
    let body = match format {
        Exposition::OpenMetrics => text,
        Exposition::Classic => openmetrics_to_classic(&text),
    };
    (
        [
            (axum::http::header::CONTENT_TYPE, format.content_type()),
            (axum::http::header::VARY, "accept"),
        ],
        body,
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

/// One node's topology entry: a read, as the whole topology is.
async fn node_entry(State(c): State<Arc<Coordinator>>, Path(node): Path<String>) -> Response {
    let node = match NodeName::new(node) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let topology = c.topology();
    match topology.node(&node) {
        Some(n) => Json(wire::NodeAnswer {
            node: n.name.clone(),
            internal_ip: n.internal_ip,
            pod_cidr: n.pod_cidr,
            gateway: n.gateway,
        })
        .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("node {node} is not in the topology"),
        ),
    }
}

#[derive(Deserialize)]
struct SinceQuery {
    #[serde(default)]
    since: u64,
}

/// Runs a history read or write off the async threads; 503 without a history, 500 when
/// the database fails.
async fn with_history<T: Send + 'static>(
    c: &Coordinator,
    f: impl FnOnce(&crate::history::History) -> Result<T, crate::history::HistoryError> + Send + 'static,
) -> Result<T, Response> {
    let Some(h) = c.history().cloned() else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this coordinator keeps no history (its database could not be opened)",
        ));
    };
    match tokio::task::spawn_blocking(move || f(&h)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            use crate::history::HistoryError as E;
            let status = match &e {
                E::TooManyBaselines => StatusCode::CONFLICT,
                E::BaselineOwned { .. } => StatusCode::FORBIDDEN,
                E::NoRound(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            Err(error(status, e.to_string()))
        }
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn findings(
    State(c): State<Arc<Coordinator>>,
    query: Result<Query<SinceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let since = match query {
        Ok(Query(q)) => q.since,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match with_history(&c, move |h| h.findings_since(since)).await {
        Ok(a) => Json(a).into_response(),
        Err(r) => r,
    }
}

async fn baselines(State(c): State<Arc<Coordinator>>) -> Response {
    match with_history(&c, |h| h.baselines()).await {
        Ok(baselines) => Json(wire::BaselinesAnswer { baselines }).into_response(),
        Err(r) => r,
    }
}

fn bad_baseline_name(name: &str) -> Option<Response> {
    (!wire::is_baseline_name(name)).then(|| {
        error(
            StatusCode::BAD_REQUEST,
            format!(
                "baseline name {:?} must be 1 to 63 of a-z A-Z 0-9 - _ .",
                meshprobe_core::text::printable(name, 80)
            ),
        )
    })
}

async fn baseline(State(c): State<Arc<Coordinator>>, Path(name): Path<String>) -> Response {
    if let Some(r) = bad_baseline_name(&name) {
        return r;
    }
    let n = name.clone();
    let found = with_history(&c, move |h| {
        if n == wire::LATEST_HEALTHY {
            h.latest_healthy()
        } else {
            h.baseline(&n)
        }
    })
    .await;
    match found {
        Ok(Some(report)) => report_answer(Arc::new(report), None).await,
        Ok(None) if name == wire::LATEST_HEALTHY => {
            error(StatusCode::NOT_FOUND, "no healthy round is kept")
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no baseline {name} (save one with `check --save-baseline {name}`)"),
        ),
        Err(r) => r,
    }
}

async fn save_baseline(
    State(c): State<Arc<Coordinator>>,
    caller: Option<axum::Extension<Caller>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let owner = match caller.map(|c| c.0) {
        Some(Caller::Operator(name)) => Some(name),
        _ => None,
    };
    if let Some(r) = bad_baseline_name(&name) {
        return r;
    }
    if name == wire::LATEST_HEALTHY {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{} is computed, not saved", wire::LATEST_HEALTHY),
        );
    }
    let req: BaselineRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BaselineRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("baseline request: {e}")),
        }
    };
    let report = match req.round {
        None => c.latest(),
        Some(id) => match c.status(id) {
            RoundStatus::Done(r) => Some(r),
            _ => with_history(&c, move |h| h.round(id))
                .await
                .ok()
                .flatten()
                .map(Arc::new),
        },
    };
    let Some(report) = report else {
        return error(
            StatusCode::NOT_FOUND,
            match req.round {
                Some(id) => format!("round {id} is not kept"),
                None => "no round has finished yet".to_owned(),
            },
        );
    };
    let round = report.round;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let n = name.clone();
    match with_history(&c, move |h| {
        h.save_baseline(&n, &report, now_ms, owner.as_deref())
    })
    .await
    {
        Ok(()) => Json(BaselineSaved { name, round }).into_response(),
        Err(r) => r,
    }
}

async fn status(State(c): State<Arc<Coordinator>>) -> Response {
    Json(c.status_answer()).into_response()
}

/// The frames `node` captured with `peer` in round `id`, as a pcap file.
async fn pcap(
    State(c): State<Arc<Coordinator>>,
    Path(id): Path<String>,
    query: Result<Query<PacketsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match captured(&c, &id, query) {
        Ok(PacketsAnswer {
            round: id,
            node,
            peer,
            packets,
        }) => (
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "application/vnd.tcpdump.pcap".to_owned(),
                ),
                (
                    axum::http::header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"round-{id}-{node}-{peer}.at-{node}.pcap\""),
                ),
            ],
            meshprobe_core::capture::pcap(&packets, 65_535),
        )
            .into_response(),
        Err(r) => *r,
    }
}
