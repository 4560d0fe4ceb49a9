//! The round engine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use meshprobe_core::api::{AgentEntry, AgentPoll, AgentsList, PollResult};
use meshprobe_core::matrix::{RoundInput, build_report};
use meshprobe_core::plan::{AgentReport, Assignment, Plan, PlanSettings, Planner};
use meshprobe_core::{AgentKind, CheckReport, NodeName};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::source::TopologySource;

type Key = (NodeName, AgentKind);

/// The warning every round carries while authentication is off.
pub const INSECURE_WARNING: &str = "auth: the coordinator runs with --insecure-no-auth; reports are not authenticated and anyone who reaches it can forge them";

/// Coordinator settings, with their defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    /// What every plan carries.
    pub plan: PlanSettings,
    /// Time an agent gets beyond its plan's budget to deliver its report (default 1.5 s).
    pub grace: Duration,
    /// A pod agent's registered IP is used for planning until it has not been heard from
    /// for this long (default 40 s); after that the API's word (or nothing) is used.
    pub stale_after: Duration,
    /// An agent with no poll open and not heard from (poll, heartbeat, report) for this
    /// long is known silent: no round waits for it (default 3 s: ten heartbeats of an
    /// agent's default 300 ms, and more than its 2 s longest reconnect pause).
    pub silent_after: Duration,
    /// Rounds kept for clients to read (default 32).
    pub keep_rounds: usize,
    /// Diagnosis thresholds.
    pub diagnosis: meshprobe_diagnosis::Settings,
    /// Rounds a client may start: `burst` at once, then one per `per_round` (default 20,
    /// then four a second: above what back-to-back rounds of about a second each take,
    /// so that only a flood meets it). A request that coalesces into a round already
    /// queued is free.
    pub round_limit: RoundLimit,
    /// Who may do what ([`crate::auth`]); the default is authentication off, for tests
    /// and embedding (the binary sets it from its flags).
    pub auth: crate::auth::Auth,
    /// Where finished rounds, findings and baselines are kept ([`crate::history`]);
    /// `None`: an in-memory history.
    pub history: Option<Arc<crate::history::History>>,
    /// Node conditions and Events in discovery mode ([`crate::node_signals`]).
    pub signals: Option<Arc<crate::node_signals::NodeSignals>>,
    /// What the coordinator takes on at once from agents.
    pub limits: AgentLimits,
    /// Finished rounds kept in memory hold at most this many cells in all (default
    /// 4,000,000: 32 rounds at 100 nodes, 3 at 5,000); older ones are read from the
    /// history.
    pub keep_cells: usize,
    /// Host names the coordinator answers to besides IP addresses, `localhost` and
    /// in-cluster Service names (`--allowed-host`): a request naming another host is
    /// refused, so that a page on another site cannot read the API by DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Whether it serves TLS (its answers then carry `Strict-Transport-Security`).
    pub tls: bool,
}

/// What the coordinator takes on at once from agents, and how it says no: a request past
/// a limit gets 503 with `Retry-After`, is counted in `meshprobe_backoffs_total`, and a
/// round that misses the agent's report says so in its warnings. Agents wait as told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentLimits {
    /// Polls held open at once (default 20,000: both agents of 10,000 nodes). A poll past
    /// it is told to come back in 1 to 5 s (spread by node, so the retries do not arrive
    /// together).
    pub max_polls: usize,
    /// Reports parsed and applied at once (default 64), once their bodies have arrived:
    /// the rest wait for a turn, for at most `report_wait`, then are told to come back in
    /// 1 s.
    pub max_reports: usize,
    /// Report bodies received at once (default 64), each node credential at most
    /// [`UPLOADS_PER_NODE`] of them: a node's slow uploads hold its own turns, not the
    /// others'. The rest wait for a turn, for at most `report_wait`. This bounds the
    /// memory a burst of 10,000 reports takes to 64 bodies (256 MiB at the 4 MiB report
    /// limit, within the deployed 512 Mi).
    pub max_uploads: usize,
    /// How long a report waits for its turn (default 5 s).
    pub report_wait: Duration,
    /// The largest report body (default 4 MiB: a capture round's report carries up to a
    /// few thousand frames); larger gets 413.
    pub max_report_bytes: usize,
    /// Heartbeats a second the coordinator aims to send over all open polls (default
    /// 4,000). An agent that allows it (`heartbeatMaxMs`) gets its period stretched to
    /// open polls / this, within what it allows: 10,000 polls at 300 ms took 1.4 cores.
    pub heartbeats_per_s: u32,
}

impl Default for AgentLimits {
    fn default() -> Self {
        Self {
            max_polls: 20_000,
            max_reports: 64,
            max_uploads: 64,
            report_wait: Duration::from_secs(5),
            max_report_bytes: 4 << 20,
            heartbeats_per_s: 4_000,
        }
    }
}

/// A request the coordinator has no room for now: come back after `retry_after_s`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the coordinator is at its limit of {limit} {what} at once: retry in {retry_after_s} s")]
pub struct Overloaded {
    /// What ran out ("open polls", "reports").
    pub what: &'static str,
    /// The limit.
    pub limit: usize,
    /// When to come back.
    pub retry_after_s: u64,
}

/// A per-client token bucket on starting rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoundLimit {
    /// Rounds a client may start at once.
    pub burst: u32,
    /// Time for one more.
    pub per_round: Duration,
}

impl Default for RoundLimit {
    fn default() -> Self {
        Self {
            burst: 20,
            per_round: Duration::from_millis(250),
        }
    }
}

/// Clients whose round budget is tracked; past this, the longest-idle is forgotten.
const TRACKED_CLIENTS: usize = 4096;

/// Whose budget a round request spends: its credential's when it presented one (so that
/// many operators behind one NAT do not share a budget, and one credential cannot spend
/// from many addresses), else its address's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RoundClient {
    /// An authenticated caller, by who it is (`operator NAME`, `node NAME`, `cluster`).
    Credential(String),
    /// No credential (authentication off): the source address.
    Address(std::net::IpAddr),
}

impl std::fmt::Display for RoundClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoundClient::Credential(who) => f.write_str(who),
            RoundClient::Address(ip) => write!(f, "{ip}"),
        }
    }
}

/// A client asked for more rounds than its budget allows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("too many rounds from {client}: try again in {retry_after_s} s")]
pub struct RateLimited {
    /// The client.
    pub client: RoundClient,
    /// When a round may be started again.
    pub retry_after_s: u64,
}

/// A refused poll counts against the rounds that start within this long after it.
const REFUSAL_COUNTS: Duration = Duration::from_secs(10);

/// Rounds of finding history kept (for each finding's `rounds` count).
const HISTORY: usize = 16;

impl Default for Settings {
    fn default() -> Self {
        Self {
            plan: PlanSettings::default(),
            grace: Duration::from_millis(1500),
            stale_after: Duration::from_secs(40),
            silent_after: Duration::from_secs(3),
            keep_rounds: 32,
            diagnosis: meshprobe_diagnosis::Settings::default(),
            round_limit: RoundLimit::default(),
            auth: crate::auth::Auth::default(),
            history: None,
            signals: None,
            limits: AgentLimits::default(),
            keep_cells: 4_000_000,
            allowed_hosts: Vec::new(),
            tls: false,
        }
    }
}

#[derive(Clone, Debug)]
struct Seen {
    /// Last poll, heartbeat or report.
    at: Instant,
    pod_ip: Option<Ipv4Addr>,
    /// Polls held open right now (a poll's guard decrements it when the poll ends or its
    /// connection is dropped).
    polling: u32,
    /// A host agent's relay port, as it advertised it.
    relay_port: Option<u16>,
    /// The newest open poll's wake-up: a new poll for the same agent ends the one before
    /// (one open poll per node and kind, whoever holds the credential).
    newest_poll: Option<Arc<Notify>>,
}

struct Running {
    id: u64,
    started: Instant,
    /// How long its plans took to make.
    plan_ms: u64,
    topology: Arc<meshprobe_core::Topology>,
    plans: BTreeMap<Key, Plan>,
    /// The agents the round waits for: live at the start, or handed their plan since.
    live: BTreeSet<Key>,
    /// How many of `live` have reported (so that each report checks "all in" in O(1):
    /// a walk of `live` per report made 10,000 reports cost 10^8 lookups).
    live_reported: usize,
    /// When each agent was handed its plan.
    assigned: BTreeMap<Key, Instant>,
    reports: BTreeMap<Key, AgentReport>,
    all_in: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    agents: BTreeMap<Key, Seen>,
    /// When each agent was last told to back off (its poll refused at the limit).
    backed_off: BTreeMap<Key, Instant>,
    /// Reports told to come back later since the running round started.
    reports_refused: u64,
    last_id: u64,
    running: Option<Running>,
    queued: bool,
    /// A round whose plans are being made (it starts when they are).
    planning: Option<u64>,
    /// Each client's round budget: (tokens, when last counted).
    budgets: std::collections::HashMap<RoundClient, (f64, Instant)>,
    done: VecDeque<Arc<CheckReport>>,
    /// Finding keys of recent rounds, oldest first: how long each finding has persisted.
    history: VecDeque<Vec<meshprobe_core::matrix::FindingKey>>,
    /// When the newest round in `done` finished.
    latest_at: Option<Instant>,
    /// A round taken out of `running` whose report is being built (outside the lock).
    finishing: Option<u64>,
    /// The next round captures packets (for `check --pcap`).
    capture_next: bool,
    /// Reports agents made while they could not reach the coordinator, per agent.
    offline: crate::offline::OfflineStore,
    /// Packets of recent capture rounds: round -> node -> packets.
    packets: VecDeque<(
        u64,
        BTreeMap<NodeName, Vec<meshprobe_core::capture::CapturedPacket>>,
    )>,
}

/// An open poll, registered in the agent's [`Seen::polling`] until dropped.
struct PollGuard<'a> {
    c: &'a Coordinator,
    key: Key,
    /// Woken when a newer poll for the same agent arrives.
    superseded: Arc<Notify>,
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.c.lock().agents.get_mut(&self.key) {
            s.polling = s.polling.saturating_sub(1);
            s.at = Instant::now();
            if s.newest_poll
                .as_ref()
                .is_some_and(|n| Arc::ptr_eq(n, &self.superseded))
            {
                s.newest_poll = None;
            }
        }
    }
}

/// Offline reports kept (from all agents together).
pub const OFFLINE_KEPT: usize = crate::offline::KEPT;

/// The most bytes of offline reports kept (their JSON), from all agents together.
pub const OFFLINE_BYTES: usize = crate::offline::BYTES;

/// Offline reports older than this are not kept: an agent buffers 64 rounds (about half
/// an hour at the default offline interval), so anything older is not plausible.
pub const OFFLINE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// The largest round report kept and served (its compact JSON): half of the 16 MiB that
/// `check` and the agents' client read, so that a round is always readable, whatever its
/// agents sent.
pub const MAX_ROUND_REPORT: usize = 8 << 20;

/// No round number past this is plausible.
pub const MAX_ROUND: u64 = 1 << 40;

/// How far ahead of the coordinator's clock an agent's clock may be.
pub const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// Capture rounds whose packets are kept.
const PACKET_ROUNDS: usize = 4;

/// Why a report was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// The report's round is not the one running.
    #[error("round {got} is not running (running: {running:?}); report discarded")]
    NotRunning {
        /// The report's round.
        got: u64,
        /// The running round, if any.
        running: Option<u64>,
    },
    /// No plan exists for this agent in this round.
    #[error("no {kind} agent on node {node} was planned in round {round}")]
    NotPlanned {
        /// Node.
        node: NodeName,
        /// Kind.
        kind: AgentKind,
        /// Round.
        round: u64,
    },
    /// This agent already reported this round: the first report stands.
    #[error(
        "the {kind} agent on node {node} already reported round {round}; the first report stands"
    )]
    Duplicate {
        /// Node.
        node: NodeName,
        /// Kind.
        kind: AgentKind,
        /// Round.
        round: u64,
    },
}

/// Why an offline report was not kept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfflineRefusal {
    /// It carries no time of its own.
    #[error("{node}/{kind}: an offline report needs offlineAtMs")]
    Untimed {
        /// Node.
        node: NodeName,
        /// Kind.
        kind: AgentKind,
    },
    /// Its time is in the future or older than [`OFFLINE_MAX_AGE`].
    #[error("{node}/{kind}: offlineAtMs {at_ms} is outside the last {max_age_s} s")]
    Implausible {
        /// Node.
        node: NodeName,
        /// Kind.
        kind: AgentKind,
        /// Its time.
        at_ms: u64,
        /// The window.
        max_age_s: u64,
    },
    /// The same report (node, kind, round, offline time) is kept already.
    #[error("{node}/{kind}: round {round} at {at_ms} is kept already")]
    Duplicate {
        /// Node.
        node: NodeName,
        /// Kind.
        kind: AgentKind,
        /// Its round.
        round: u64,
        /// Its time.
        at_ms: u64,
    },
    /// Its JSON alone is larger than an agent's share of the store.
    #[error("{node}/{kind}: {bytes} bytes, more than one agent's share of {share}")]
    TooLarge {
        /// Node.
        node: NodeName,
        /// Kind.
        kind: AgentKind,
        /// Its size.
        bytes: usize,
        /// The share.
        share: usize,
    },
    /// Its plan's round is past this coordinator's and past any that could exist.
    #[error("{node}/{kind}: round {round} cannot have existed (this coordinator's last: {last})")]
    FutureRound {
        /// Node.
        node: NodeName,
        /// Kind.
        kind: AgentKind,
        /// Its round.
        round: u64,
        /// The last round planned.
        last: u64,
    },
}

/// The state of a round, for clients.
#[derive(Debug, Clone)]
pub enum RoundStatus {
    /// Finished: here is the report.
    Done(Arc<CheckReport>),
    /// Started or queued; `reported` of `expected` live agents are in.
    Pending {
        /// Agents reported so far.
        reported: usize,
        /// Live agents the round waits for.
        expected: usize,
    },
    /// Too old: dropped from the history.
    Evicted,
    /// Never existed.
    Unknown,
}

/// The coordinator's shared state.
pub struct Coordinator {
    inner: Mutex<Inner>,
    /// Rounds, findings and baselines kept ([`crate::history`]); `None` only when not even
    /// an in-memory database could be opened.
    history: Option<Arc<crate::history::History>>,
    metrics: crate::metrics::Metrics,
    source: Box<dyn TopologySource>,
    settings: Settings,
    epoch: u64,
    started_tx: watch::Sender<u64>,
    done_tx: watch::Sender<u64>,
    /// Whether this replica is the active one (always, without leader election).
    leading: AtomicBool,
    /// When this coordinator started: until `silent_after` has passed it cannot know which
    /// agents are silent, so its rounds wait for every planned agent that may still poll.
    born: Instant,
    /// Set when the process shuts down: open polls end at once, so the server can stop.
    stopping: watch::Sender<bool>,
    /// One permit per poll held open ([`AgentLimits::max_polls`]).
    polls: Arc<tokio::sync::Semaphore>,
    /// One permit per report being parsed and applied ([`AgentLimits::max_reports`]).
    reports_in: Arc<tokio::sync::Semaphore>,
    /// One permit per report body being received ([`AgentLimits::max_uploads`]).
    uploads: Arc<tokio::sync::Semaphore>,
    /// Report bodies being received per node credential ([`UPLOADS_PER_NODE`]).
    uploads_by_node: Mutex<std::collections::HashMap<NodeName, usize>>,
    /// The history's last failed write and how many there were (shown in `/v1/status`,
    /// `/metrics` and the view, never only logged).
    history_fault: Mutex<HistoryFault>,
}

/// The history's health, as [`Coordinator::status_answer`] tells it.
#[derive(Default)]
struct HistoryFault {
    last: Option<(crate::metrics::HistoryOp, String, Instant)>,
    failures: u64,
}

/// Report bodies one node's credential may be sending at once: its host agent's and its
/// pod agent's.
pub const UPLOADS_PER_NODE: usize = 2;

/// A report body's turn to be received: one of its node's, and a global permit.
pub struct UploadTurn<'a> {
    _share: Option<NodeShare<'a>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// One of a node's [`UPLOADS_PER_NODE`], given back when dropped.
struct NodeShare<'a> {
    c: &'a Coordinator,
    node: NodeName,
}

impl Drop for NodeShare<'_> {
    fn drop(&mut self) {
        let mut by = self
            .c
            .uploads_by_node
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = by.get_mut(&self.node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by.remove(&self.node);
            }
        }
    }
}

/// Whether an agent that has not reported may still report in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outlook {
    /// It reported.
    Reported,
    /// It has its plan, or is polling or was heard from moments ago, or the coordinator is
    /// too young to tell.
    MayReport,
    /// Known silent.
    Silent,
}

impl Coordinator {
    /// A slot for one open poll; past [`AgentLimits::max_polls`], how long the agent is
    /// to wait (1 to 5 s, spread by node and kind so that retries do not come together).
    pub fn poll_slot(&self, key: &Key) -> Result<tokio::sync::OwnedSemaphorePermit, Overloaded> {
        Arc::clone(&self.polls).try_acquire_owned().map_err(|_| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut h);
            self.metrics.backed_off("polls");
            self.lock().backed_off.insert(key.clone(), Instant::now());
            Overloaded {
                what: "open polls",
                limit: self.settings.limits.max_polls,
                retry_after_s: 1 + h.finish() % 5,
            }
        })
    }

    /// A turn to receive one report body from `node`'s credential (`None`: a credential
    /// for any node, which has no share of its own): refused at once when that node has
    /// [`UPLOADS_PER_NODE`] bodies on their way, else a global turn, waiting up to
    /// [`AgentLimits::report_wait`].
    pub async fn upload_turn(&self, node: Option<&NodeName>) -> Result<UploadTurn<'_>, Overloaded> {
        let refused = |what, limit| {
            self.metrics.backed_off("reports");
            self.lock().reports_refused += 1;
            Overloaded {
                what,
                limit,
                retry_after_s: 1,
            }
        };
        let share = match node {
            Some(node) => {
                let mut by = self
                    .uploads_by_node
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let n = by.entry(node.clone()).or_default();
                if *n >= UPLOADS_PER_NODE {
                    drop(by);
                    return Err(refused("report uploads from one node", UPLOADS_PER_NODE));
                }
                *n += 1;
                Some(NodeShare {
                    c: self,
                    node: node.clone(),
                })
            }
            None => None,
        };
        let turn = Arc::clone(&self.uploads).acquire_owned();
        match tokio::time::timeout(self.settings.limits.report_wait, turn).await {
            Ok(Ok(permit)) => Ok(UploadTurn {
                _share: share,
                _permit: permit,
            }),
            _ => Err(refused("report uploads", self.settings.limits.max_uploads)),
        }
    }

    /// A turn to parse and apply one report, waiting up to [`AgentLimits::report_wait`];
    /// after that, the agent is to come back in a second.
    pub async fn report_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Overloaded> {
        let turn = Arc::clone(&self.reports_in).acquire_owned();
        match tokio::time::timeout(self.settings.limits.report_wait, turn).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.metrics.backed_off("reports");
                self.lock().reports_refused += 1;
                Err(Overloaded {
                    what: "reports",
                    limit: self.settings.limits.max_reports,
                    retry_after_s: 1,
                })
            }
        }
    }

    /// The heartbeat period for a poll that asked for `asked` and allows up to `max`:
    /// stretched so that all open polls together send about
    /// [`AgentLimits::heartbeats_per_s`].
    pub fn heartbeat_for(&self, asked: Duration, max: Option<Duration>) -> Duration {
        let Some(max) = max else {
            return asked;
        };
        let open = self
            .settings
            .limits
            .max_polls
            .saturating_sub(self.polls.available_permits()) as u64;
        let per_s = u64::from(self.settings.limits.heartbeats_per_s.max(1));
        let spread = Duration::from_millis(open.saturating_mul(1000) / per_s);
        spread.clamp(asked, max.max(asked))
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Who may do what.
    pub fn auth(&self) -> &crate::auth::Auth {
        &self.settings.auth
    }

    /// A coordinator planning from `source`.
    pub fn new(source: Box<dyn TopologySource>, settings: Settings) -> Arc<Self> {
        let history = settings.history.clone().or_else(|| {
            crate::history::History::open(None, crate::history::Retention::default())
                .map_err(
                    |e| tracing::warn!(error = %e, "no history: cannot open an in-memory database"),
                )
                .ok()
                .map(Arc::new)
        });
        // Round numbers go on from the history's, so that a restarted coordinator's rounds
        // never reuse a number the history (and a client) already knows.
        let last_id = history
            .as_ref()
            .map_or(Ok(0), |h| h.last_round())
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the history's last round");
                0
            });
        Arc::new(Self {
            inner: Mutex::new(Inner {
                last_id,
                ..Inner::default()
            }),
            history,
            metrics: crate::metrics::Metrics::default(),
            source,
            // Never zero, so an agent that has never seen an epoch always differs.
            epoch: fastrand::u64(1..),
            started_tx: watch::channel(0).0,
            done_tx: watch::channel(0).0,
            leading: AtomicBool::new(true),
            born: Instant::now(),
            stopping: watch::channel(false).0,
            polls: Arc::new(tokio::sync::Semaphore::new(settings.limits.max_polls)),
            reports_in: Arc::new(tokio::sync::Semaphore::new(settings.limits.max_reports)),
            uploads: Arc::new(tokio::sync::Semaphore::new(
                settings.limits.max_uploads.max(1),
            )),
            uploads_by_node: Mutex::default(),
            history_fault: Mutex::default(),
            settings,
        })
    }

    /// The process is shutting down: every open poll ends now (agents poll again, and find
    /// the next coordinator).
    pub fn shut_down(&self) {
        self.stopping.send_replace(true);
    }

    fn outlook(&self, inner: &Inner, r: &Running, key: &Key, now: Instant) -> Outlook {
        if r.reports.contains_key(key) {
            return Outlook::Reported;
        }
        let budget = Duration::from_millis(u64::from(self.settings.plan.budget_ms()));
        if let Some(at) = r.assigned.get(key) {
            return if now < *at + budget + self.settings.grace {
                Outlook::MayReport
            } else {
                Outlook::Silent
            };
        }
        let heard = inner.agents.get(key).is_some_and(|s| {
            s.polling > 0 || now.duration_since(s.at) < self.settings.silent_after
        });
        let young = now.duration_since(self.born) < self.settings.silent_after;
        if heard || young {
            Outlook::MayReport
        } else {
            Outlook::Silent
        }
    }

    /// Whether round `id` has nothing more to wait for: every agent it waits for reported
    /// or is known silent.
    fn settled(&self, id: u64) -> bool {
        let inner = self.lock();
        let Some(r) = inner.running.as_ref().filter(|r| r.id == id) else {
            return true;
        };
        let now = Instant::now();
        r.live
            .iter()
            .all(|k| self.outlook(&inner, r, k, now) != Outlook::MayReport)
    }

    /// Follows a leader election: while `role` says false this replica is the standby (it
    /// runs no rounds, and the API refuses agents and round requests with 503).
    pub fn follow(self: &Arc<Self>, mut role: watch::Receiver<bool>) {
        let set = |me: &Self, leading: bool| {
            me.leading.store(leading, Ordering::SeqCst);
            me.metrics.set_leader(leading);
        };
        set(self, *role.borrow_and_update());
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while role.changed().await.is_ok() {
                let Some(me) = me.upgrade() else { return };
                let leading = *role.borrow_and_update();
                set(&me, leading);
                if leading {
                    // Take over at once rather than at the next tick.
                    me.tick();
                }
            }
        });
    }

    /// Whether this replica is the active coordinator.
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than stopping the service would; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The topology the next round will use.
    pub fn topology(&self) -> Arc<meshprobe_core::Topology> {
        self.source.current()
    }

    /// Whether the topology source is current.
    pub fn topology_fresh(&self) -> bool {
        self.source.fresh()
    }

    /// Starts a round now, or queues one to start when the running one ends. Returns the
    /// id of the round that will hold fresh results.
    pub fn trigger(self: &Arc<Self>) -> u64 {
        self.trigger_with(false)
    }

    /// [`Coordinator::trigger_with`] for a client: a request that starts or queues a
    /// round spends one of the client's [`RoundLimit`]; one that joins a round already
    /// queued is free (a burst coalesces into one round).
    pub fn trigger_for(
        self: &Arc<Self>,
        client: RoundClient,
        capture: bool,
    ) -> Result<u64, RateLimited> {
        {
            let mut inner = self.lock();
            if let Some(current) = Self::busy(&inner)
                && inner.queued
            {
                inner.capture_next |= capture;
                return Ok(current + 1);
            }
            let limit = self.settings.round_limit;
            let now = Instant::now();
            if !inner.budgets.contains_key(&client) && inner.budgets.len() >= TRACKED_CLIENTS {
                let oldest = inner
                    .budgets
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(who, _)| who.clone());
                if let Some(ip) = oldest {
                    inner.budgets.remove(&ip);
                }
            }
            let (tokens, at) = inner
                .budgets
                .entry(client.clone())
                .or_insert((f64::from(limit.burst), now));
            let per = limit.per_round.as_secs_f64().max(1e-3);
            *tokens =
                (*tokens + now.duration_since(*at).as_secs_f64() / per).min(f64::from(limit.burst));
            *at = now;
            if *tokens < 1.0 {
                let wait = ((1.0 - *tokens) * per).ceil() as u64;
                return Err(RateLimited {
                    client,
                    retry_after_s: wait.max(1),
                });
            }
            *tokens -= 1.0;
        }
        Ok(self.trigger_with(capture))
    }

    /// [`Coordinator::trigger`], asking host agents to send the round's captured packets.
    pub fn trigger_with(self: &Arc<Self>, capture: bool) -> u64 {
        let mut inner = self.lock();
        inner.capture_next |= capture;
        if let Some(current) = Self::busy(&inner) {
            inner.queued = true;
            return current + 1;
        }
        self.start_locked(&mut inner)
    }

    /// Starts a round unless one is running or this replica is the standby (for the
    /// periodic schedule).
    pub fn tick(self: &Arc<Self>) {
        if !self.is_leader() {
            return;
        }
        let mut inner = self.lock();
        if Self::busy(&inner).is_none() {
            self.start_locked(&mut inner);
        }
    }

    /// Reserves the next round and plans it off the lock (and, within a runtime, off the
    /// async threads): planning thousands of nodes takes a while, and polls, reports and
    /// `/healthz` must be served meanwhile. The round starts when its plans are made.
    fn start_locked(self: &Arc<Self>, inner: &mut Inner) -> u64 {
        inner.last_id += 1;
        let id = inner.last_id;
        // Reserved before anyone learns the number, so that no restart hands it out again.
        if let Some(h) = &self.history {
            let reserved = h.reserve_round(id);
            self.history_wrote(crate::metrics::HistoryOp::Reserve, reserved);
        }
        inner.planning = Some(id);
        let pod_ips = self.pod_ips(inner);
        let capture = std::mem::take(&mut inner.capture_next);
        let me = Arc::clone(self);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || me.plan_and_start(id, &pod_ips, capture));
            }
            // The coordinator always runs in a Tokio runtime; a round cannot run without
            // (and its number is not spent).
            Err(_) => {
                tracing::error!(round = id, "a round needs a Tokio runtime: not started");
                inner.planning = None;
                inner.last_id -= 1;
            }
        }
        id
    }

    /// Probe-pod IPs: what a live pod agent said when it polled, else what the API says
    /// (so a new leader plans pod targets before every agent has polled it), else what an
    /// agent said before it went quiet.
    fn pod_ips(&self, inner: &Inner) -> BTreeMap<NodeName, Ipv4Addr> {
        let now = Instant::now();
        let registered = |live: bool| {
            inner
                .agents
                .iter()
                .filter(move |((_, k), s)| {
                    *k == AgentKind::Pod
                        && (now.duration_since(s.at) < self.settings.stale_after) == live
                })
                .filter_map(|((n, _), s)| s.pod_ip.map(|ip| (n.clone(), ip)))
        };
        let mut pod_ips: BTreeMap<NodeName, Ipv4Addr> = registered(false).collect();
        pod_ips.extend(self.source.agent_pod_ips());
        pod_ips.extend(registered(true));
        pod_ips
    }

    /// Plans round `id` (no lock held), then starts it.
    fn plan_and_start(
        self: &Arc<Self>,
        id: u64,
        pod_ips: &BTreeMap<NodeName, Ipv4Addr>,
        capture: bool,
    ) {
        let planning = std::time::Instant::now();
        let topology = self.source.current();
        let mut plans = BTreeMap::new();
        let planner = Planner::new(&topology, pod_ips, id, &self.settings.plan);
        for node in &topology.nodes {
            for kind in AgentKind::ALL {
                let mut plan = planner.plan(&node.name, kind);
                plan.capture_packets = capture && kind == AgentKind::Host;
                plans.insert((node.name.clone(), kind), plan);
            }
        }
        let plan_ms = planning.elapsed().as_millis() as u64;
        let mut inner = self.lock();
        self.begin_locked(&mut inner, id, topology, (plans, plan_ms), capture);
    }

    fn begin_locked(
        self: &Arc<Self>,
        inner: &mut Inner,
        id: u64,
        topology: Arc<meshprobe_core::Topology>,
        (plans, plan_ms): (BTreeMap<Key, meshprobe_core::Plan>, u64),
        capture: bool,
    ) {
        inner.planning = None;
        let now = Instant::now();
        let mut running = Running {
            id,
            started: now,
            plan_ms,
            topology,
            plans,
            live: BTreeSet::new(),
            live_reported: 0,
            assigned: BTreeMap::new(),
            reports: BTreeMap::new(),
            all_in: Arc::new(Notify::new()),
        };
        running.live = running
            .plans
            .keys()
            .filter(|k| self.outlook(inner, &running, k, now) == Outlook::MayReport)
            .cloned()
            .collect();
        let all_in = Arc::clone(&running.all_in);
        if running.live.is_empty() {
            // Nobody to wait for: every cell is unknown, and saying so now beats waiting.
            all_in.notify_one();
        }
        inner.running = Some(running);
        inner.reports_refused = 0;
        // Capture rounds carry up to thousands of frames per host agent: more time to send.
        let capture_grace = if capture {
            Duration::from_secs(3)
        } else {
            Duration::ZERO
        };
        let deadline = now
            + Duration::from_millis(u64::from(self.settings.plan.budget_ms()))
            + self.settings.grace
            + capture_grace;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            // The round ends at its deadline, when the last agent reports, or as soon as
            // every agent still missing is known silent (checked a few times a second).
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    () = all_in.notified() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        if me.settled(id) {
                            break;
                        }
                    }
                }
            }
            // Building and diagnosing a 5,000-node round takes a while: off the async
            // threads, so that polls, heartbeats and /healthz are served meanwhile.
            let _ = tokio::task::spawn_blocking(move || me.finish(id)).await;
        });
        tracing::debug!(round = id, "round started");
        self.started_tx.send_replace(id);
    }

    fn finish(self: &Arc<Self>, id: u64) {
        // Take the round out, then build and diagnose it without holding the lock: at
        // thousands of nodes that takes a while, and agents and clients keep being served.
        let (r, live, history, overload) = {
            let mut inner = self.lock();
            let Some(r) = inner.running.take_if(|r| r.id == id) else {
                return;
            };
            let overload = self.overload_warnings(&inner, &r);
            inner.finishing = Some(id);
            // Agents that did not report are `silent` when the coordinator has heard from
            // them lately, `absent` when it never has (or not for long).
            let now = Instant::now();
            let heard: BTreeSet<Key> = r
                .plans
                .keys()
                .filter(|k| {
                    inner.agents.get(*k).is_some_and(|s| {
                        s.polling > 0 || now.duration_since(s.at) < self.settings.stale_after
                    })
                })
                .cloned()
                .collect();
            (
                r,
                heard,
                inner.history.iter().cloned().collect::<Vec<_>>(),
                overload,
            )
        };
        let captured: BTreeMap<NodeName, Vec<meshprobe_core::capture::CapturedPacket>> = r
            .reports
            .iter()
            .filter(|(_, rep)| !rep.packets.is_empty())
            .map(|((n, _), rep)| (n.clone(), rep.packets.clone()))
            .collect();
        let collect_ms = r.started.elapsed().as_millis() as u64;
        let phase = std::time::Instant::now();
        let mut report = build_report(RoundInput {
            round: r.id,
            topology: &r.topology,
            plans: &r.plans,
            reports: &r.reports,
            live: &|n, k| live.contains(&(n.clone(), k)),
            duration_ms: collect_ms,
            findings: Vec::new(),
        });
        let build_ms = phase.elapsed().as_millis() as u64;
        let reported = r.reports.len();
        // The reports are in the matrices now: free them before the diagnosis allocates.
        drop(r.reports);
        report.warnings.extend(overload);
        if !self.source.fresh() {
            report.warnings.push(
                "topology: the Kubernetes API server is unreachable; planning from the last known topology".to_owned(),
            );
        }
        if self.settings.auth.is_insecure() {
            tracing::warn!(
                round = id,
                "authentication is off (--insecure-no-auth): anyone who reaches the coordinator can forge this round's reports"
            );
            report.warnings.push(INSECURE_WARNING.to_owned());
        }
        let phase = std::time::Instant::now();
        let diagnosis =
            meshprobe_diagnosis::diagnose(&r.topology, &report, &history, &self.settings.diagnosis);
        report.timings = meshprobe_core::matrix::RoundTimings {
            plan_ms: r.plan_ms,
            collect_ms,
            build_ms,
            diagnose_ms: phase.elapsed().as_millis() as u64,
        };
        let keys = diagnosis.findings.iter().map(|f| f.key()).collect();
        report.findings = diagnosis.findings;
        report.warnings.extend(diagnosis.warnings);
        report.healthy = report.healthy && report.findings.is_empty();
        // What clients read whole: cut to the limit once the diagnosis has read it all.
        if !report.fit_within(MAX_ROUND_REPORT) {
            tracing::warn!(
                round = id,
                bytes = report.encoded_len(),
                "the round report is over its limit even with evidence and details cut"
            );
        }
        tracing::info!(
            round = id,
            healthy = report.healthy,
            findings = report.findings.len(),
            reported,
            expected = r.live.len(),
            "round done"
        );
        let phase = std::time::Instant::now();
        self.metrics.observe(&report, self.source.fresh());
        if let Some(h) = &self.history {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let recorded = h.record(&report, now_ms);
            self.history_wrote(crate::metrics::HistoryOp::Record, recorded);
        }
        self.metrics
            .observe_phases(&report.timings, phase.elapsed().as_millis() as u64);
        let report = Arc::new(report);
        if let (Some(s), true) = (&self.settings.signals, self.is_leader())
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (s, r) = (Arc::clone(s), Arc::clone(&report));
            rt.spawn(async move { s.after_round(&r).await });
        }
        let mut inner = self.lock();
        inner.finishing = None;
        inner.history.push_back(keys);
        while inner.history.len() > HISTORY {
            inner.history.pop_front();
        }
        if r.plans.values().any(|p| p.capture_packets) {
            inner.packets.push_back((id, captured));
            while inner.packets.len() > PACKET_ROUNDS {
                inner.packets.pop_front();
            }
        }
        inner.done.push_back(report);
        inner.latest_at = Some(Instant::now());
        // Kept by count and by size: at thousands of nodes a round holds over a million
        // cells, and older rounds are in the history anyway.
        let cells = |r: &CheckReport| r.layers.values().map(|m| m.len()).sum::<usize>();
        while inner.done.len() > self.settings.keep_rounds
            || (inner.done.len() > 1
                && inner.done.iter().map(|r| cells(r)).sum::<usize>() > self.settings.keep_cells)
        {
            inner.done.pop_front();
        }
        self.done_tx.send_replace(id);
        // A round the schedule started meanwhile has the queued request's fresh results.
        if std::mem::take(&mut inner.queued) && Self::busy(&inner).is_none() {
            self.start_locked(&mut inner);
        }
    }

    /// The round in hand, planning, running or having its report built: a request for a
    /// round then queues the next one (its number is this one's plus one), and nothing
    /// starts another beside it.
    fn busy(inner: &Inner) -> Option<u64> {
        inner
            .running
            .as_ref()
            .map(|r| r.id)
            .or(inner.planning)
            .or(inner.finishing)
    }

    /// Notes how a history write went: a failure is logged, counted in `/metrics` and kept
    /// for `/v1/status` (and so the view's banner); a success clears what is kept.
    fn history_wrote(
        &self,
        op: crate::metrics::HistoryOp,
        result: Result<(), crate::history::HistoryError>,
    ) {
        let mut fault = self
            .history_fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(()) => {
                if fault.last.as_ref().is_some_and(|(o, _, _)| *o == op) {
                    fault.last = None;
                }
            }
            Err(e) => {
                tracing::warn!(op = op.as_str(), error = %e, "history write failed");
                self.metrics.history_failed(op);
                fault.failures += 1;
                fault.last = Some((op, e.to_string(), Instant::now()));
            }
        }
    }

    /// What a round says about the agents and reports the limits turned away: nobody is
    /// dropped silently.
    fn overload_warnings(&self, inner: &Inner, r: &Running) -> Vec<String> {
        let mut out = Vec::new();
        let refused: Vec<&Key> = r
            .plans
            .keys()
            .filter(|k| {
                !r.reports.contains_key(*k)
                    // Refused during the round, or shortly before it (told to come
                    // back in at most 5 s, it may not have got in by the start).
                    && inner
                        .backed_off
                        .get(*k)
                        .is_some_and(|t| *t + REFUSAL_COUNTS >= r.started)
            })
            .collect();
        if !refused.is_empty() {
            let names: Vec<String> = refused
                .iter()
                .take(8)
                .map(|(n, k)| format!("{n}/{k}"))
                .collect();
            out.push(format!(
                "overload: {} agents were told to back off (the coordinator is at its limit of {} open polls) and did not report: {}{}",
                refused.len(),
                self.settings.limits.max_polls,
                names.join(", "),
                if refused.len() > names.len() { ", ..." } else { "" }
            ));
        }
        if inner.reports_refused > 0 {
            out.push(format!(
                "overload: {} reports were told to come back later (the coordinator reads at most {} at once)",
                inner.reports_refused, self.settings.limits.max_reports
            ));
        }
        out
    }

    /// Records that an agent is alive (and its pod IP or relay port, when it says).
    fn touch(
        &self,
        inner: &mut Inner,
        key: &Key,
        pod_ip: Option<Ipv4Addr>,
        relay_port: Option<u16>,
    ) {
        let e = inner.agents.entry(key.clone()).or_insert(Seen {
            at: Instant::now(),
            pod_ip,
            polling: 0,
            relay_port,
            newest_poll: None,
        });
        e.at = Instant::now();
        if pod_ip.is_some() {
            e.pod_ip = pod_ip;
        }
        if relay_port.is_some() {
            e.relay_port = relay_port;
        }
    }

    /// The assignment for an agent: the running round's plan if the agent has not run it
    /// yet, waiting up to `wait` for one to start. `None` when nothing started in time.
    pub async fn next(&self, key: Key, poll: &AgentPoll, wait: Duration) -> Option<Assignment> {
        let polling = self.polling(&key, poll);
        let superseded = polling.superseded.notified();
        tokio::pin!(superseded);
        superseded.as_mut().enable();
        let mut started = self.started_tx.subscribe();
        let mut stopping = self.stopping.subscribe();
        let deadline = Instant::now() + wait;
        // A different epoch means the agent's round numbers are from before a restart.
        let after = if poll.epoch == self.epoch {
            poll.after
        } else {
            0
        };
        loop {
            if let Some(a) = self.assignment(&key, after, poll) {
                return Some(a);
            }
            started.borrow_and_update();
            tokio::select! {
                changed = tokio::time::timeout_at(deadline, started.changed()) => {
                    if matches!(changed, Ok(Ok(()))) {
                        continue;
                    }
                }
                _ = stopping.wait_for(|s| *s) => {}
                // A newer poll for this agent: this one (a dead connection, or a copy of
                // the credential) gives up its slot.
                () = &mut superseded => {}
            }
            self.touch(&mut self.lock(), &key, poll.pod_ip, poll.relay_port);
            return None;
        }
    }

    /// Registers an open poll; the guard unregisters it when dropped (the poll answered,
    /// or its connection went away mid-stream).
    fn polling(&self, key: &Key, poll: &AgentPoll) -> PollGuard<'_> {
        let mut inner = self.lock();
        self.touch(&mut inner, key, poll.pod_ip, poll.relay_port);
        let superseded = Arc::new(Notify::new());
        if let Some(s) = inner.agents.get_mut(key) {
            s.polling += 1;
            if let Some(older) = s.newest_poll.replace(Arc::clone(&superseded)) {
                older.notify_waiters();
            }
        }
        PollGuard {
            c: self,
            key: key.clone(),
            superseded,
        }
    }

    /// The running round's plan for `key`, if it has not run it yet; the agent is then
    /// waited for (until its plan's budget and the grace have passed).
    fn assignment(&self, key: &Key, after: u64, poll: &AgentPoll) -> Option<Assignment> {
        let mut inner = self.lock();
        self.touch(&mut inner, key, poll.pod_ip, poll.relay_port);
        // Pod agents report through their host agent's relay, wherever they were told
        // to connect: its address, as the host agent advertised it most recently.
        let relay = (key.1 == AgentKind::Pod)
            .then(|| {
                let port = inner
                    .agents
                    .get(&(key.0.clone(), AgentKind::Host))?
                    .relay_port?;
                let r = inner.running.as_ref()?;
                let ip = r.topology.node(&key.0)?.internal_ip;
                Some(std::net::SocketAddrV4::new(ip, port))
            })
            .flatten();
        let r = inner.running.as_mut()?;
        if r.id <= after || r.reports.contains_key(key) {
            return None;
        }
        let mut plan = r.plans.get(key)?.clone();
        plan.relay = relay;
        r.assigned.insert(key.clone(), Instant::now());
        r.live.insert(key.clone());
        Some(Assignment {
            epoch: self.epoch,
            plan,
        })
    }

    /// [`Coordinator::next`] as a heartbeat stream (see [`meshprobe_core::api`]): a newline
    /// every `heartbeat`, then the JSON [`PollResult`]. Dropping the stream (the agent's
    /// connection went away) ends the poll.
    pub fn next_stream(
        self: &Arc<Self>,
        key: Key,
        poll: AgentPoll,
        wait: Duration,
        heartbeat: Duration,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static
    {
        let me = Arc::clone(self);
        let answer: std::pin::Pin<
            Box<dyn std::future::Future<Output = Option<Assignment>> + Send>,
        > = Box::pin(async move { me.next(key, &poll, wait).await });
        // A heartbeat takes no lock: while the poll is open (its guard holds `polling`),
        // the agent counts as heard from; 10,000 agents send 33,000 heartbeats a second.
        futures_util::stream::unfold(Some(answer), move |state| async move {
            let mut answer = state?;
            tokio::select! {
                assignment = &mut answer => {
                    let body = serde_json::to_vec(&PollResult { assignment }).unwrap_or_default();
                    Some((Ok(Bytes::from(body)), None))
                }
                () = tokio::time::sleep(heartbeat) => {
                    Some((Ok(Bytes::from_static(b"\n")), Some(answer)))
                }
            }
        })
    }

    /// Accepts an agent's report for the running round.
    pub fn report(&self, report: AgentReport) -> Result<(), ReportError> {
        let mut inner = self.lock();
        let key = (report.node.clone(), report.kind);
        let Some(r) = inner.running.as_mut() else {
            return Err(ReportError::NotRunning {
                got: report.round,
                running: None,
            });
        };
        if r.id != report.round {
            return Err(ReportError::NotRunning {
                got: report.round,
                running: Some(r.id),
            });
        }
        if !r.plans.contains_key(&key) {
            return Err(ReportError::NotPlanned {
                node: report.node,
                kind: report.kind,
                round: r.id,
            });
        }
        if r.reports.contains_key(&key) {
            return Err(ReportError::Duplicate {
                node: report.node,
                kind: report.kind,
                round: r.id,
            });
        }
        r.reports.insert(key.clone(), report);
        if r.live.contains(&key) {
            r.live_reported += 1;
        }
        if r.live_reported >= r.live.len() {
            r.all_in.notify_one();
        }
        // Only a planned agent's accepted report counts as hearing from it.
        self.touch(&mut inner, &key, None, None);
        Ok(())
    }

    /// The status of round `id`.
    pub fn status(&self, id: u64) -> RoundStatus {
        let inner = self.lock();
        if let Some(rep) = inner.done.iter().find(|r| r.round == id) {
            return RoundStatus::Done(Arc::clone(rep));
        }
        if inner.finishing == Some(id) || inner.planning == Some(id) {
            // Its plans are being made, or its report built: a moment more, never "gone".
            return RoundStatus::Pending {
                reported: 0,
                expected: 0,
            };
        }
        match &inner.running {
            Some(r) if r.id == id => {
                return RoundStatus::Pending {
                    reported: r.reports.len(),
                    expected: r.live.len(),
                };
            }
            Some(r) if id == r.id + 1 && inner.queued => {
                return RoundStatus::Pending {
                    reported: 0,
                    expected: 0,
                };
            }
            _ => {}
        }
        // Queued behind a round whose report is being built (running is empty then).
        if inner.queued && id == inner.last_id + 1 {
            return RoundStatus::Pending {
                reported: 0,
                expected: 0,
            };
        }
        if id == 0 || id > inner.last_id {
            RoundStatus::Unknown
        } else {
            RoundStatus::Evicted
        }
    }

    /// Waits up to `wait` for round `id` to finish.
    pub async fn wait_for(&self, id: u64, wait: Duration) -> RoundStatus {
        let mut done = self.done_tx.subscribe();
        let deadline = Instant::now() + wait;
        loop {
            done.borrow_and_update();
            let status = self.status(id);
            if !matches!(status, RoundStatus::Pending { .. }) {
                return status;
            }
            if tokio::time::timeout_at(deadline, done.changed())
                .await
                .is_err()
            {
                return self.status(id);
            }
        }
    }

    /// Packets captured at `node` in round `id` to or from `peer_ip`; `None` when the
    /// round captured no packets (or is no longer kept).
    pub fn packets(
        &self,
        id: u64,
        node: &NodeName,
        peer_ip: Ipv4Addr,
    ) -> Option<Vec<meshprobe_core::capture::CapturedPacket>> {
        let inner = self.lock();
        let (_, by_node) = inner.packets.iter().find(|(r, _)| *r == id)?;
        Some(
            by_node
                .get(node)
                .map(|v| v.iter().filter(|p| p.peer_ip == peer_ip).cloned().collect())
                .unwrap_or_default(),
        )
    }

    /// Stores reports an agent made while it could not reach the coordinator (at most
    /// [`OFFLINE_KEPT`]; the oldest go first). Returns how many were taken.
    ///
    /// Only plausible reports are kept: timed within the last [`OFFLINE_MAX_AGE`] (and not
    /// ahead of this clock by more than [`CLOCK_SKEW`]), for a round that could exist. The
    /// store is bounded by count ([`OFFLINE_KEPT`]) and by bytes ([`OFFLINE_BYTES`]).
    pub fn offline(&self, reports: Vec<AgentReport>) -> (usize, Vec<OfflineRefusal>) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let oldest = now_ms.saturating_sub(OFFLINE_MAX_AGE.as_millis() as u64);
        let newest = now_ms + CLOCK_SKEW.as_millis() as u64;
        let mut inner = self.lock();
        let (mut taken, mut refused) = (0, Vec::new());
        for r in reports {
            let (node, kind) = (r.node.clone(), r.kind);
            let refusal = match r.offline_at_ms {
                None => Some(OfflineRefusal::Untimed { node, kind }),
                Some(at) if at < oldest || at > newest => Some(OfflineRefusal::Implausible {
                    node,
                    kind,
                    at_ms: at,
                    max_age_s: OFFLINE_MAX_AGE.as_secs(),
                }),
                // A restarted coordinator counts rounds from 1 again, so a round past its
                // own is plausible, up to a bound no cluster reaches (a round a second
                // for 34,000 years).
                Some(_) if r.round > inner.last_id && r.round > MAX_ROUND => {
                    Some(OfflineRefusal::FutureRound {
                        node,
                        kind,
                        round: r.round,
                        last: inner.last_id,
                    })
                }
                Some(_) => None,
            };
            if let Some(why) = refusal {
                refused.push(why);
                continue;
            }
            let key = (r.node.clone(), r.kind);
            self.touch(&mut inner, &key, None, None);
            let Ok(json) = serde_json::to_vec(&r) else {
                continue;
            };
            let bytes = json.len();
            match inner.offline.insert(&r, json) {
                Ok(()) => taken += 1,
                Err(crate::offline::Rejected::Duplicate) => {
                    refused.push(OfflineRefusal::Duplicate {
                        node: r.node,
                        kind: r.kind,
                        round: r.round,
                        at_ms: r.offline_at_ms.unwrap_or_default(),
                    });
                }
                Err(crate::offline::Rejected::TooLarge) => {
                    refused.push(OfflineRefusal::TooLarge {
                        node: r.node,
                        kind: r.kind,
                        bytes,
                        share: crate::offline::PER_AGENT_BYTES,
                    });
                }
            }
        }
        (taken, refused)
    }

    /// One page of the reports agents delivered after an outage, in delivery order, as
    /// their stored JSON (shared, not copied), and the next page's cursor.
    pub fn offline_page(&self, after: u64, limit: usize) -> (Vec<Arc<[u8]>>, Option<u64>) {
        self.lock().offline.page(after, limit)
    }

    /// Every report agents delivered after an outage, oldest first (decoded: for tests
    /// and tools; the API serves pages).
    pub fn offline_reports(&self) -> Vec<AgentReport> {
        let mut out = Vec::new();
        let mut cursor = 0;
        loop {
            let (page, next) = self.offline_page(cursor, crate::offline::PAGE_MAX);
            out.extend(page.iter().filter_map(|j| serde_json::from_slice(j).ok()));
            match next {
                Some(n) => cursor = n,
                None => return out,
            }
        }
    }

    /// The Prometheus text exposition of the last round.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// The latest finished round (from the history after a restart).
    pub fn latest(&self) -> Option<Arc<CheckReport>> {
        if let Some(r) = self.lock().done.back().cloned() {
            return Some(r);
        }
        self.history
            .as_ref()
            .and_then(|h| h.latest().ok().flatten())
            .map(Arc::new)
    }

    /// The state the web view polls.
    pub fn status_answer(&self) -> meshprobe_core::api::StatusAnswer {
        let (latest, at, capture_rounds) = {
            let inner = self.lock();
            (
                inner.done.back().cloned(),
                inner.latest_at,
                inner.packets.iter().map(|(id, _)| *id).collect(),
            )
        };
        // After a restart, before the first round: the history's last verdict (its row,
        // not its report).
        let verdict = match latest {
            Some(r) => Some((r.round, r.healthy)),
            None => self.history.as_ref().and_then(|h| {
                h.latest_verdict()
                    .map_err(|e| tracing::warn!(error = %e, "cannot read the history's last round"))
                    .ok()
                    .flatten()
            }),
        };
        meshprobe_core::api::StatusAnswer {
            latest_round: verdict.map(|v| v.0),
            latest_age_ms: at.map(|t| t.elapsed().as_millis() as u64),
            healthy: verdict.map(|v| v.1),
            leader: self.is_leader(),
            topology_fresh: self.topology_fresh(),
            insecure: self.settings.auth.is_insecure(),
            history_error: {
                let fault = self
                    .history_fault
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                fault
                    .last
                    .as_ref()
                    .map(|(op, error, at)| meshprobe_core::api::HistoryFailure {
                        op: op.as_str().to_owned(),
                        error: error.clone(),
                        age_ms: at.elapsed().as_millis() as u64,
                        failures: fault.failures,
                    })
            },
            capture_rounds,
        }
    }

    /// The history, if one could be opened.
    pub fn history(&self) -> Option<&Arc<crate::history::History>> {
        self.history.as_ref()
    }

    /// Every agent heard from.
    pub fn agents(&self) -> AgentsList {
        let now = Instant::now();
        AgentsList {
            agents: self
                .lock()
                .agents
                .iter()
                .map(|((n, k), s)| AgentEntry {
                    node: n.clone(),
                    kind: *k,
                    // An open poll is hearing from the agent now.
                    last_seen_seconds_ago: if s.polling > 0 {
                        0.0
                    } else {
                        now.duration_since(s.at).as_secs_f64()
                    },
                    pod_ip: s.pod_ip,
                    polling: s.polling > 0,
                    relay_port: s.relay_port,
                })
                .collect(),
        }
    }

    /// Runs a round every `interval` until the process ends (continuous mode).
    pub async fn schedule(self: Arc<Self>, interval: Duration) {
        let mut t = tokio::time::interval(interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            self.tick();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator() -> Arc<Coordinator> {
        let t = meshprobe_core::Topology::from_inventory(
            "cluster: {name: t}\nnodes: [{name: a, internalIP: 10.0.0.1, podCIDR: 10.42.1.0/24}]\n",
        )
        .expect("valid");
        Coordinator::new(
            Box::new(crate::source::StaticTopology::new(t)),
            Settings::default(),
        )
    }

    /// Regression: a round whose report was being built outside the lock read as "evicted"
    /// (410) for a moment, and `check` gave up with exit 2.
    #[test]
    fn a_finishing_round_reads_as_pending_not_gone() {
        let c = coordinator();
        {
            let mut inner = c.lock();
            inner.last_id = 3;
            inner.finishing = Some(3);
        }
        assert!(
            matches!(c.status(3), RoundStatus::Pending { .. }),
            "{:?}",
            c.status(3)
        );
        // Regression (issue 9): a round queued behind one being built read as unknown (404).
        c.lock().queued = true;
        assert!(
            matches!(c.status(4), RoundStatus::Pending { .. }),
            "{:?}",
            c.status(4)
        );
        c.lock().queued = false;
        c.lock().finishing = None;
        assert!(matches!(c.status(3), RoundStatus::Evicted));
        assert!(matches!(c.status(4), RoundStatus::Unknown));
    }
}
