//! A typed client of the coordinator's API ([`meshprobe_core::api`]): the agents' polls,
//! reports and offline deliveries, and `check`'s rounds and packets. It is the only client
//! of the coordinator in the workspace, over the one transport ([`crate::transport`]).

use std::path::PathBuf;
use std::time::Duration;

use hyper::body::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use meshprobe_core::api::{
    self, AgentPoll, ApiError, Assignment, OfflineAccepted, OfflineBatch, PacketsAnswer,
    PollResult, RoundProgress, RoundRequest, RoundStarted,
};
use meshprobe_core::plan::AgentReport;
use meshprobe_core::{AgentKind, CheckReport, NodeName};
use serde::de::DeserializeOwned;

use crate::transport::{self, Answer, Base, TlsConfig, TransportError};

/// Longest token file read (a projected ServiceAccount token is about 1 KiB).
pub const MAX_TOKEN_FILE: u64 = 8192;

/// What a client presents as `Authorization: Bearer`.
#[derive(Clone)]
pub enum Credential {
    /// A token given directly.
    Token(HeaderValue),
    /// A token file, read at every request: kubelet rotates projected ServiceAccount
    /// tokens in place.
    File(PathBuf),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Token(_) => f.write_str("Token(..)"),
            Credential::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl Credential {
    /// A bearer token given as text (the token itself, whitespace trimmed).
    pub fn token(token: &str) -> Result<Self, ClientError> {
        Ok(Credential::Token(bearer(token.trim(), "the token")?))
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> Result<HeaderValue, ClientError> {
        match self {
            Credential::Token(v) => Ok(v.clone()),
            Credential::File(path) => {
                use std::io::Read as _;
                let shown = path.display().to_string();
                let fail = |reason: String| ClientError::Credential {
                    path: shown.clone(),
                    reason,
                };
                let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
                let mut text = String::new();
                file.take(MAX_TOKEN_FILE + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| fail(e.to_string()))?;
                if text.len() as u64 > MAX_TOKEN_FILE {
                    return Err(fail(format!("longer than {MAX_TOKEN_FILE} bytes")));
                }
                let token = text.trim();
                if token.is_empty() {
                    return Err(fail("is empty".to_owned()));
                }
                bearer(token, &shown)
            }
        }
    }
}

fn bearer(token: &str, what: &str) -> Result<HeaderValue, ClientError> {
    let mut v =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ClientError::Credential {
            path: what.to_owned(),
            reason: "holds characters a header cannot carry".to_owned(),
        })?;
    v.set_sensitive(true);
    Ok(v)
}

/// How a client reaches the coordinator: whom it trusts, and who it is.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// The credential presented with every request.
    pub credential: Option<Credential>,
    /// For `https://` URLs: the CA to verify the coordinator's certificate against.
    pub tls: Option<TlsConfig>,
    /// The name the coordinator's certificate must carry, when not the URL's host.
    pub server_name: Option<String>,
}

/// Longest error message kept from an answer body (a hostile or broken server may send
/// megabytes).
pub const MAX_ERROR_TEXT: usize = 300;

/// Talking to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is unusable.
    #[error(transparent)]
    Url(TransportError),
    /// No (whole) HTTP answer.
    #[error("cannot reach the coordinator at {url}: {source}")]
    Unreachable {
        /// The coordinator's base URL.
        url: String,
        /// Why.
        #[source]
        source: TransportError,
    },
    /// An HTTP answer that is not a success.
    #[error("coordinator {url} answered HTTP {status}: {message}")]
    Status {
        /// The request's URL.
        url: String,
        /// Status code.
        status: u16,
        /// The server's message (its `error` field, or the start of the body), with
        /// control characters escaped.
        message: String,
        /// How long the server asked us to wait before trying again (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The credential cannot be read or sent.
    #[error("credential {path}: {reason}")]
    Credential {
        /// The token file (or what the token was).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A success whose body does not parse.
    #[error("coordinator {url} sent an unreadable answer: {source}")]
    Garbled {
        /// The request's URL.
        url: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// Whether the coordinator refused the credential (401) or what it allows (403).
    pub fn is_auth(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }

    /// How long the coordinator asked to be left alone (503 with `Retry-After`: it is at a
    /// limit, and says when to come back).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, for errors that have one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What `GET /v1/rounds/{id}` said.
#[derive(Debug)]
pub enum RoundAnswer {
    /// Finished.
    Done(Box<CheckReport>),
    /// Still running.
    Running(RoundProgress),
}

/// A client of one coordinator (or of a relay in front of it).
#[derive(Clone, Debug)]
pub struct CoordinatorClient {
    url: String,
    base: Base,
    credential: Option<Credential>,
}

impl CoordinatorClient {
    /// `url` is like `http://10.0.0.1:7070`; no credential, no TLS.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        Self::with_options(url, &ClientOptions::default())
    }

    /// A client of `url` (`http://` or, with `options.tls`, `https://`) presenting
    /// `options.credential`.
    pub fn with_options(url: &str, options: &ClientOptions) -> Result<Self, ClientError> {
        let url = url.trim_end_matches('/').to_owned();
        let base =
            transport::parse_base(&url, options.tls.as_ref(), options.server_name.as_deref())
                .map_err(ClientError::Url)?;
        Ok(Self {
            url,
            base,
            credential: options.credential.clone(),
        })
    }

    /// A client of the relay at `addr` (plain HTTP to the node's own address), with this
    /// client's credential: the relay passes it on.
    pub fn relay(&self, addr: std::net::SocketAddrV4) -> Self {
        Self {
            url: format!("http://{addr}"),
            base: Base::plain(addr.into()),
            credential: self.credential.clone(),
        }
    }

    fn authorization(&self) -> Result<Option<HeaderValue>, ClientError> {
        self.credential.as_ref().map(Credential::header).transpose()
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn unreachable(&self, source: TransportError) -> ClientError {
        ClientError::Unreachable {
            url: self.url.clone(),
            source,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let auth = self.authorization()?;
        transport::send(
            &self.base,
            method,
            path,
            body.map(|b| ("application/json", b)),
            auth.as_ref(),
            timeout,
        )
        .await
        .map_err(|e| self.unreachable(e))
    }

    fn failed(&self, path: &str, a: &Answer) -> ClientError {
        let message = serde_json::from_slice::<ApiError>(&a.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&a.body).into_owned());
        ClientError::Status {
            url: format!("{}{path}", self.url),
            status: a.status.as_u16(),
            message: printable(message.trim(), MAX_ERROR_TEXT),
            retry_after: a.retry_after,
        }
    }

    fn parse<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|source| ClientError::Garbled {
            url: format!("{}{path}", self.url),
            source,
        })
    }

    /// Polls for the next plan. With `poll.heartbeat_ms` the answer is streamed, and a
    /// stream that goes quiet for `idle` is a dead connection (an error, at once); without
    /// it, the v1 long poll. `Ok(None)` when no round started within the poll's wait.
    pub async fn poll(
        &self,
        node: &NodeName,
        kind: AgentKind,
        poll: &AgentPoll,
        idle: Duration,
    ) -> Result<Option<Assignment>, ClientError> {
        let path = api::next_path(node, kind, poll);
        let overall = Duration::from_secs(poll.wait.unwrap_or(25) + 5);
        let a = match poll.heartbeat_ms {
            Some(_) => {
                let auth = self.authorization()?;
                let resp = transport::open(
                    &self.base,
                    Method::GET,
                    &path,
                    None,
                    auth.as_ref(),
                    idle.max(overall),
                )
                .await
                .map_err(|e| self.unreachable(e))?;
                // A coordinator that stretched the heartbeat (it holds many polls) says to
                // what; the dead-connection limit follows, never below the caller's.
                let idle = resp
                    .headers()
                    .get(api::HEARTBEAT_HEADER)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map(|ms| {
                        ms.clamp(
                            u64::from(*api::HEARTBEAT_MS.start()),
                            u64::from(*api::HEARTBEAT_MS.end()),
                        )
                    })
                    .map_or(idle, |ms| {
                        idle.max(api::idle_limit(Duration::from_millis(ms)))
                    });
                transport::collect_idle(&self.base.authority, resp, idle, overall)
                    .await
                    .map_err(|e| self.unreachable(e))?
            }
            None => self.send(Method::GET, &path, None, overall).await?,
        };
        match a.status {
            StatusCode::NO_CONTENT => Ok(None),
            StatusCode::OK if poll.heartbeat_ms.is_some() => {
                Ok(self.parse::<PollResult>(&path, &a.body)?.assignment)
            }
            StatusCode::OK => self.parse(&path, &a.body).map(Some),
            _ => Err(self.failed(&path, &a)),
        }
    }

    /// Posts a report.
    pub async fn report(&self, report: &AgentReport, timeout: Duration) -> Result<(), ClientError> {
        self.post(api::REPORTS, report, timeout).await.map(drop)
    }

    /// Delivers reports made while the coordinator was unreachable; returns how many it
    /// kept.
    pub async fn deliver_offline(&self, reports: &[AgentReport]) -> Result<usize, ClientError> {
        let batch = OfflineBatch {
            reports: reports.to_vec(),
        };
        let a = self
            .post(api::REPORTS_OFFLINE, &batch, Duration::from_secs(20))
            .await?;
        Ok(self
            .parse::<OfflineAccepted>(api::REPORTS_OFFLINE, &a.body)?
            .accepted)
    }

    /// Starts (or joins) a round.
    pub async fn start_round(
        &self,
        req: &RoundRequest,
        timeout: Duration,
    ) -> Result<RoundStarted, ClientError> {
        // A coordinator that rate-limits rounds says when to come back (429, Retry-After):
        // wait for it, within `timeout`.
        let until = tokio::time::Instant::now() + timeout;
        loop {
            match self.post(api::ROUNDS, req, timeout).await {
                Ok(a) => return self.parse(api::ROUNDS, &a.body),
                Err(e) if e.status() == Some(429) => {
                    let pause = Duration::from_secs(1);
                    if tokio::time::Instant::now() + pause >= until {
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Round `id`, waiting up to `wait` (whole seconds, at least 1) for it to finish.
    pub async fn round(&self, id: u64, wait: Duration) -> Result<RoundAnswer, ClientError> {
        let path = api::round_path(id, wait.as_secs().max(1));
        let a = self
            .send(Method::GET, &path, None, wait + Duration::from_secs(5))
            .await?;
        match a.status {
            StatusCode::OK => Ok(RoundAnswer::Done(self.parse(&path, &a.body)?)),
            StatusCode::ACCEPTED => Ok(RoundAnswer::Running(self.parse(&path, &a.body)?)),
            _ => Err(self.failed(&path, &a)),
        }
    }

    /// The packets `node` captured to and from `peer` in round `id`.
    pub async fn packets(
        &self,
        id: u64,
        node: &NodeName,
        peer: &NodeName,
        timeout: Duration,
    ) -> Result<PacketsAnswer, ClientError> {
        self.get(&api::packets_path(id, node, peer), timeout).await
    }

    /// What the coordinator's topology says of `node` (its pod range, for the relay).
    pub async fn node(
        &self,
        node: &NodeName,
        timeout: Duration,
    ) -> Result<api::NodeAnswer, ClientError> {
        self.get(&api::node_path(node), timeout).await
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let a = self.send(Method::GET, path, None, timeout).await?;
        if !a.status.is_success() {
            return Err(self.failed(path, &a));
        }
        self.parse(path, &a.body)
    }

    /// Saves round `round` (default: the latest) as baseline `name`.
    pub async fn save_baseline(
        &self,
        name: &str,
        round: Option<u64>,
        timeout: Duration,
    ) -> Result<api::BaselineSaved, ClientError> {
        let path = api::baseline_path(name);
        let a = self
            .write(Method::PUT, &path, &api::BaselineRequest { round }, timeout)
            .await?;
        self.parse(&path, &a.body)
    }

    /// Baseline `name`'s report (`latest-healthy`: the latest healthy round kept).
    pub async fn baseline(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<CheckReport, ClientError> {
        self.get(&api::baseline_path(name), timeout).await
    }

    /// The baselines saved, newest first.
    pub async fn baselines(&self, timeout: Duration) -> Result<api::BaselinesAnswer, ClientError> {
        self.get(api::BASELINES, timeout).await
    }

    /// The findings' timeline since round `since`.
    pub async fn findings(
        &self,
        since: u64,
        timeout: Duration,
    ) -> Result<api::FindingsAnswer, ClientError> {
        self.get(&format!("{}?since={since}", api::FINDINGS), timeout)
            .await
    }

    /// POSTs `body` as JSON to `path`; any non-2xx answer is an error.
    async fn post(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        self.write(Method::POST, path, body, timeout).await
    }

    /// Sends `body` as JSON to `path` with `method`; any non-2xx answer is an error.
    async fn write(
        &self,
        method: Method,
        path: &str,
        body: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let bytes =
            Bytes::from(
                serde_json::to_vec(body).map_err(|source| ClientError::Garbled {
                    url: format!("{}{path}", self.url),
                    source,
                })?,
            );
        let a = self.send(method, path, Some(bytes), timeout).await?;
        if a.status.is_success() {
            Ok(a)
        } else {
            Err(self.failed(path, &a))
        }
    }
}

pub use meshprobe_core::text::printable;
