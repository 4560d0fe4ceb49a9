//! Kubernetes-native signals, in discovery mode: a node condition and Events, so that
//! `kubectl describe node`, node-problem dashboards and anything that watches conditions
//! see what meshprobe found (Gardener's network-problem-detector does the same).
//!
//! - **Condition** `MeshprobeNetworkProblem` on every node a *persisting* finding names
//!   (made [`PERSIST_ROUNDS`] rounds in a row): `True`, reason the cause in CamelCase,
//!   message the summary. When no persisting finding names the node any more, it turns
//!   `False` (`NoNetworkProblem`). Patched with a strategic merge of `status.conditions`,
//!   which merges by type and leaves the kubelet's conditions alone.
//! - **Event** (`Warning`, on the Node) when a finding first persists.
//! - **Rate limits**: a node's condition is patched at most once per [`MIN_PATCH_GAP`]
//!   unless its state changes, and refreshed at most every [`REFRESH`]; at most
//!   [`MAX_WRITES_PER_ROUND`] condition patches and as many Events per round.
//!
//! Only the active replica writes. Failures are logged and retried next round: the API
//! server being down must not stop the rounds.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use meshprobe_core::{CheckReport, NodeName};
use tokio::time::Instant;

/// The condition's type.
pub const CONDITION: &str = "MeshprobeNetworkProblem";
/// A finding names a node in the condition once it has been made this many rounds in a
/// row (the alert's threshold too).
pub const PERSIST_ROUNDS: u32 = 3;
/// The least time between two patches of one node's condition in one state.
pub const MIN_PATCH_GAP: Duration = Duration::from_secs(60);
/// How often a `True` condition is refreshed (its heartbeat time).
pub const REFRESH: Duration = Duration::from_secs(600);
/// Condition patches, and Events, per round at most.
pub const MAX_WRITES_PER_ROUND: usize = 20;
/// The namespace Events about nodes are created in (as the kubelet does).
pub const EVENT_NAMESPACE: &str = "default";
/// How long one write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a node's condition says now.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Flag {
    reason: String,
    message: String,
    at: Instant,
}

/// The condition and Event writer.
pub struct NodeSignals {
    client: kube::Client,
    /// Nodes whose condition is `True`, with what it says.
    flagged: Mutex<BTreeMap<NodeName, Flag>>,
    /// One round at a time, in order.
    busy: tokio::sync::Mutex<()>,
}

/// `ip-forward-disabled` -> `IpForwardDisabled` (a condition reason is CamelCase).
pub fn reason(cause: &str) -> String {
    cause
        .split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

impl std::fmt::Debug for NodeSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSignals").finish_non_exhaustive()
    }
}

impl NodeSignals {
    /// A writer through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            flagged: Mutex::new(BTreeMap::new()),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    fn patch_body(status: &str, reason: &str, message: &str) -> serde_json::Value {
        let t = now();
        serde_json::json!({ "status": { "conditions": [{
            "type": CONDITION,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": t,
            "lastTransitionTime": t,
        }]}})
    }

    async fn patch(&self, node: &NodeName, body: serde_json::Value) -> bool {
        let api: Api<Node> = Api::all(self.client.clone());
        let (params, patch) = (PatchParams::default(), Patch::Strategic(body));
        let call = api.patch_status(node.as_str(), &params, &patch);
        match tokio::time::timeout(WRITE_TIMEOUT, call).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::warn!(%node, error = %e, "cannot set the node condition");
                false
            }
            Err(_) => {
                tracing::warn!(%node, "setting the node condition timed out");
                false
            }
        }
    }

    async fn event(&self, node: &NodeName, round: u64, reason: &str, message: &str) -> bool {
        let api: Api<Event> = Api::namespaced(self.client.clone(), EVENT_NAMESPACE);
        let t = now();
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{node}.meshprobe.{round}.{}",
                    reason.to_ascii_lowercase()
                )),
                namespace: Some(EVENT_NAMESPACE.to_owned()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(node.to_string()),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some("Warning".to_owned()),
            reporting_component: Some("meshprobe".to_owned()),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("meshprobe".to_owned()),
                host: None,
            }),
            first_timestamp: Some(t.clone()),
            last_timestamp: Some(t),
            count: Some(1),
            ..Event::default()
        };
        match tokio::time::timeout(WRITE_TIMEOUT, api.create(&PostParams::default(), &ev)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::warn!(%node, error = %e, "cannot create the Event");
                false
            }
            Err(_) => false,
        }
    }

    /// Brings conditions and Events in line with a finished round.
    pub async fn after_round(&self, report: &CheckReport) {
        let _one_at_a_time = self.busy.lock().await;
        // node -> (reason, message, first persisting round?)
        let mut want: BTreeMap<NodeName, (String, String, bool)> = BTreeMap::new();
        for f in report
            .findings
            .iter()
            .filter(|f| f.rounds >= PERSIST_ROUNDS)
        {
            let message = meshprobe_core::text::printable_line(&f.summary, 300);
            for n in &f.nodes {
                want.entry(n.clone()).or_insert((
                    reason(f.cause.as_str()),
                    message.clone(),
                    f.rounds == PERSIST_ROUNDS,
                ));
            }
        }
        let flagged = self
            .flagged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let (mut patches, mut events) = (0, 0);
        for (node, (reason, message, first)) in &want {
            let due = match flagged.get(node) {
                None => true,
                Some(f) if f.reason != *reason => f.at.elapsed() >= MIN_PATCH_GAP,
                Some(f) => f.at.elapsed() >= REFRESH,
            };
            if due && patches < MAX_WRITES_PER_ROUND {
                patches += 1;
                if self
                    .patch(node, Self::patch_body("True", reason, message))
                    .await
                {
                    self.flagged
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(
                            node.clone(),
                            Flag {
                                reason: reason.clone(),
                                message: message.clone(),
                                at: Instant::now(),
                            },
                        );
                }
            }
            if *first && events < MAX_WRITES_PER_ROUND {
                events += 1;
                self.event(node, report.round, reason, message).await;
            }
        }
        for node in flagged.keys().filter(|n| !want.contains_key(*n)) {
            if patches >= MAX_WRITES_PER_ROUND {
                break;
            }
            patches += 1;
            let cleared = self
                .patch(
                    node,
                    Self::patch_body(
                        "False",
                        "NoNetworkProblem",
                        "no persisting meshprobe finding names this node",
                    ),
                )
                .await;
            if cleared {
                self.flagged
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reasons_are_camel_case() {
        assert_eq!(super::reason("ip-forward-disabled"), "IpForwardDisabled");
        assert_eq!(super::reason("mtu-mismatch"), "MtuMismatch");
    }
}
