//! The agent's side of the coordinator API (`/v1/agents/...`, `/v1/reports`).

use std::net::Ipv4Addr;
use std::time::Duration;

use meshprobe_core::plan::{AgentReport, Assignment};
use meshprobe_core::{AgentKind, NodeName};

/// Talking to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No HTTP answer at all.
    #[error("coordinator {url} unreachable: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// An HTTP answer that is not a success.
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
    http: reqwest::Client,
}

impl CoordinatorClient {
    /// `base` is like `http://10.0.0.1:7070`.
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
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
        let url = format!("{}/v1/agents/{node}/{kind}/next", self.base);
        let mut query = vec![
            ("after", after.to_string()),
            ("epoch", epoch.to_string()),
            ("wait", wait.as_secs().to_string()),
        ];
        if let Some(ip) = pod_ip {
            query.push(("podIP", ip.to_string()));
        }
        let full = format!(
            "{url}?{}",
            query
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        );
        let resp = self
            .http
            .get(&full)
            .timeout(wait + Duration::from_secs(10))
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        match resp.status().as_u16() {
            204 => Ok(None),
            200 => resp
                .json()
                .await
                .map(Some)
                .map_err(|source| ClientError::Unreachable { url, source }),
            status => Err(ClientError::Status {
                url,
                status,
                body: body_start(resp).await,
            }),
        }
    }

    /// Posts a report.
    pub async fn report(&self, report: &AgentReport) -> Result<(), ClientError> {
        let url = format!("{}/v1/reports", self.base);
        let resp = self
            .http
            .post(&url)
            .json(report)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            let status = resp.status().as_u16();
            Err(ClientError::Status {
                url,
                status,
                body: body_start(resp).await,
            })
        }
    }
}

async fn body_start(resp: reqwest::Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    text.chars().take(200).collect()
}
