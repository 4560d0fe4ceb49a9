//! The agent's side of the coordinator API (`/v1/agents/...`, `/v1/reports`).

use std::net::Ipv4Addr;
use std::time::Duration;

use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use meshprobe_core::plan::{AgentReport, Assignment};
use meshprobe_core::{AgentKind, NodeName};

use crate::transport::{self, TransportError};

/// Talking to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No HTTP answer at all.
    #[error("coordinator {url} unreachable: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        source: TransportError,
    },
    /// An HTTP answer that is not a success, or that does not parse.
    #[error("coordinator {url} answered HTTP {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// Status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

/// A client of one coordinator (or of a relay in front of it).
#[derive(Clone)]
pub struct CoordinatorClient {
    base: String,
}

impl CoordinatorClient {
    /// `base` is like `http://10.0.0.1:7070`.
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// Long-polls for the next round after `after`. `Ok(None)` when none started within
    /// `wait`.
    pub async fn next(
        &self,
        node: &NodeName,
        kind: AgentKind,
        after: u64,
        epoch: u64,
        pod_ip: Option<Ipv4Addr>,
        wait: Duration,
    ) -> Result<Option<Assignment>, ClientError> {
        let mut path = format!(
            "/v1/agents/{node}/{kind}/next?after={after}&epoch={epoch}&wait={}",
            wait.as_secs()
        );
        if let Some(ip) = pod_ip {
            path += &format!("&podIP={ip}");
        }
        let url = format!("{}{path}", self.base);
        let a = transport::send(
            &self.base,
            Method::GET,
            &path,
            None,
            wait + Duration::from_secs(5),
        )
        .await
        .map_err(|source| ClientError::Unreachable {
            url: url.clone(),
            source,
        })?;
        match a.status {
            StatusCode::NO_CONTENT => Ok(None),
            StatusCode::OK => {
                serde_json::from_slice(&a.body)
                    .map(Some)
                    .map_err(|e| ClientError::Status {
                        url,
                        status: 200,
                        body: format!("unreadable assignment: {e}"),
                    })
            }
            s => Err(ClientError::Status {
                url,
                status: s.as_u16(),
                body: body_start(&a.body),
            }),
        }
    }

    /// Delivers reports made while the coordinator was unreachable.
    pub async fn deliver_offline(&self, reports: &[AgentReport]) -> Result<(), ClientError> {
        let body = serde_json::json!({ "reports": reports });
        self.post_json("/v1/reports/offline", &body, Duration::from_secs(20))
            .await
    }

    /// Posts a report.
    pub async fn report(&self, report: &AgentReport) -> Result<(), ClientError> {
        self.post_json("/v1/reports", report, Duration::from_secs(10))
            .await
    }

    /// POSTs `body` as JSON to `path`; any non-2xx answer is an error.
    async fn post_json(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let url = format!("{}{path}", self.base);
        let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let a = transport::send(
            &self.base,
            Method::POST,
            path,
            Some(("application/json".to_owned(), bytes)),
            timeout,
        )
        .await
        .map_err(|source| ClientError::Unreachable {
            url: url.clone(),
            source,
        })?;
        if a.status.is_success() {
            Ok(())
        } else {
            Err(ClientError::Status {
                url,
                status: a.status.as_u16(),
                body: body_start(&a.body),
            })
        }
    }
}

fn body_start(b: &[u8]) -> String {
    String::from_utf8_lossy(b).chars().take(200).collect()
}
