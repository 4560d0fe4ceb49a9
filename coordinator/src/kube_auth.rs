//! Agents' identity in Kubernetes: a projected ServiceAccount token (audience
//! [`AUDIENCE`], rotated by the kubelet), verified with a `TokenReview`, and bound to a
//! node through the pod claims the API server puts in it.
//!
//! The review names the pod (`authentication.kubernetes.io/pod-name` and `pod-uid`); the
//! coordinator looks that pod up in its own watch of agent pods and takes the node from
//! the pod's `spec.nodeName`. A token of any other pod (not an agent, or a deleted and
//! recreated one with another uid) is refused. The node-name claim, when the API server
//! sends one (1.32+), must agree.
//!
//! Reviews are cached by the token's SHA-256: [`FRESH`] for a verdict, and, while the API
//! server cannot be reached, a known-good token is honoured for [`STALE`] more, so that an
//! API outage does not silence the mesh. At most [`MAX_CACHED`] tokens are kept, and at
//! most [`MAX_REVIEWS_IN_FLIGHT`] reviews run at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use meshprobe_core::NodeName;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::auth::{ReviewError, ReviewFuture, TokenReviewer};
use crate::discovery::{AGENT_HOST, AGENT_POD, component};

/// The audience agents' tokens must carry.
pub const AUDIENCE: &str = "meshprobe";
/// How long a review's verdict is reused.
pub const FRESH: Duration = Duration::from_secs(60);
/// How much longer a known-good token is honoured while the API server is unreachable.
pub const STALE: Duration = Duration::from_secs(600);
/// Tokens whose verdicts are cached.
pub const MAX_CACHED: usize = 4096;
/// How long one TokenReview may take (the client retries 503s with backoff for minutes;
/// an agent's request cannot wait that long).
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// TokenReviews sent at once (a flood of made-up tokens waits, it does not flood the API).
pub const MAX_REVIEWS_IN_FLIGHT: usize = 8;

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";

type Digest = [u8; 32];

#[derive(Clone)]
struct Verdict {
    at: Instant,
    node: Result<NodeName, String>,
}

/// Verifies agents' ServiceAccount tokens with the API server.
pub struct KubeReviewer {
    client: kube::Client,
    agents: Store<Pod>,
    cache: Mutex<HashMap<Digest, Verdict>>,
    in_flight: Semaphore,
}

impl KubeReviewer {
    /// A reviewer asking through `client`, binding tokens to the pods in `agents` (the
    /// coordinator's watch of agent pods).
    pub fn new(client: kube::Client, agents: Store<Pod>) -> Arc<Self> {
        Arc::new(Self {
            client,
            agents,
            cache: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
        })
    }

    fn cached(&self, key: &Digest) -> Option<Verdict> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn remember(&self, key: Digest, node: Result<NodeName, String>) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= MAX_CACHED && !cache.contains_key(&key) {
            let now = Instant::now();
            cache.retain(|_, v| now.duration_since(v.at) < FRESH);
            if cache.len() >= MAX_CACHED
                && let Some(oldest) = cache.iter().min_by_key(|(_, v)| v.at).map(|(k, _)| *k)
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(
            key,
            Verdict {
                at: Instant::now(),
                node,
            },
        );
    }

    async fn ask(&self, token: &str) -> Result<NodeName, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|e| ReviewError::Unavailable {
                    source: Box::new(e),
                })?
                .map_err(|e| ReviewError::Unavailable {
                    source: Box::new(e),
                })?;
        bind(&answer, &self.agents)
    }

    async fn review_token(&self, token: &str) -> Result<NodeName, ReviewError> {
        let key: Digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        let cached = self.cached(&key);
        if let Some(v) = &cached
            && v.at.elapsed() < FRESH
        {
            return v.node.clone().map_err(ReviewError::Rejected);
        }
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|e| ReviewError::Unavailable {
                source: Box::new(e),
            })?;
        match self.ask(token).await {
            Ok(node) => {
                self.remember(key, Ok(node.clone()));
                Ok(node)
            }
            Err(ReviewError::Unavailable { source }) => match cached {
                Some(Verdict { at, node: Ok(node) }) if at.elapsed() < FRESH + STALE => {
                    tracing::warn!(error = %source, %node, "TokenReview failed; honouring the token's last good review");
                    Ok(node)
                }
                _ => Err(ReviewError::Unavailable { source }),
            },
            Err(e) => {
                self.remember(key, Err(e.to_string()));
                Err(e)
            }
        }
    }
}

impl TokenReviewer for KubeReviewer {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a> {
        Box::pin(self.review_token(token))
    }
}

/// The node of the agent pod a reviewed token belongs to.
pub fn bind(answer: &TokenReview, agents: &Store<Pod>) -> Result<NodeName, ReviewError> {
    let status = answer.status.as_ref();
    if status.and_then(|s| s.authenticated) != Some(true) {
        let why = status
            .and_then(|s| s.error.clone())
            .unwrap_or_else(|| "not authenticated".to_owned());
        return Err(ReviewError::Rejected(meshprobe_core::text::printable(
            &why, 200,
        )));
    }
    if let Some(aud) = status.and_then(|s| s.audiences.as_ref())
        && !aud.iter().any(|a| a == AUDIENCE)
    {
        return Err(ReviewError::Rejected(format!(
            "the token is not for audience {AUDIENCE}"
        )));
    }
    let user = status.and_then(|s| s.user.as_ref());
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or("");
    let namespace = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
        .map(|(ns, _)| ns)
        .ok_or_else(|| {
            ReviewError::NotAnAgent(format!(
                "{} is not a ServiceAccount",
                meshprobe_core::text::printable(username, 100)
            ))
        })?;
    let claim = |k: &str| {
        user.and_then(|u| u.extra.as_ref())
            .and_then(|e| e.get(k))
            .and_then(|v| v.first())
            .map(String::as_str)
    };
    let (Some(pod), Some(uid)) = (claim(POD_NAME), claim(POD_UID)) else {
        return Err(ReviewError::NotAnAgent(
            "the token carries no pod claims: agents need a projected ServiceAccount token (audience meshprobe)".to_owned(),
        ));
    };
    let found = agents
        .get(&ObjectRef::new(pod).within(namespace))
        .filter(|p| p.metadata.uid.as_deref() == Some(uid))
        .filter(|p| matches!(component(p), Some(AGENT_HOST | AGENT_POD)));
    let Some(found) = found else {
        return Err(ReviewError::NotAnAgent(format!(
            "pod {}/{} is not a meshprobe agent pod the coordinator knows",
            meshprobe_core::text::printable(namespace, 64),
            meshprobe_core::text::printable(pod, 64)
        )));
    };
    let node = found
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .and_then(|n| NodeName::new(n).ok())
        .ok_or_else(|| ReviewError::NotAnAgent(format!("agent pod {pod} is not scheduled yet")))?;
    if let Some(claimed) = claim(NODE_NAME)
        && claimed != node.as_str()
    {
        return Err(ReviewError::NotAnAgent(format!(
            "the token's node claim {} disagrees with pod {pod}'s node {node}",
            meshprobe_core::text::printable(claimed, 64)
        )));
    }
    Ok(node)
}
