//! Leader election between coordinator replicas, on a `coordination.k8s.io/v1` Lease
//! (kube-lease-manager).
//!
//! Only the leader runs rounds and serves agents; the standby keeps its discovery watches
//! warm, so that it plans from the same topology the moment it takes over, and answers
//! `/readyz` with 503 so the Service sends agents to the leader only.
//!
//! Timing: the holder renews every `duration - grace` seconds. A standby sleeps until the
//! lease expires, so after a leader dies without releasing, it takes over within
//! `duration` plus up to one second of jitter; after a clean shutdown (the leader releases)
//! the same bound holds, because the standby only looks again at the expiry it last saw.
//!
//! While the API server is unreachable nobody can renew or take the lease: each replica
//! keeps the role it had (kube-lease-manager backs off and retries), so the leader keeps
//! running rounds from its last known topology. The price is a partition in which only
//! the leader loses the API: the standby takes over when the lease expires, both are ready
//! until the old leader reaches the API again and steps down, and agents split between them
//! for that while (each replica's rounds then show the other half `unknown`, never `fail`).

use std::time::Duration;

use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// What the election needs to know.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// The Lease's name (deploy/rbac.yaml grants this one only).
    pub name: String,
    /// Its namespace: the coordinator's own.
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a holder's lease stays valid after its last renewal (default 8 s).
    pub duration: Duration,
    /// How long before expiry the holder renews (default 3 s).
    pub grace: Duration,
}

impl LeaseSettings {
    /// The defaults for `name` in `namespace`, held by `identity`.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration: Duration::from_secs(8),
            grace: Duration::from_secs(3),
        }
    }

    /// Checks the timing: whole seconds (the Lease's unit), grace shorter than duration.
    pub fn validate(&self) -> Result<(), String> {
        let (d, g) = (self.duration.as_secs(), self.grace.as_secs());
        if self.duration.subsec_nanos() != 0 || self.grace.subsec_nanos() != 0 {
            return Err("lease duration and grace are whole seconds".into());
        }
        if d < 2 || g < 1 || g >= d {
            return Err(format!(
                "lease grace ({g}s) must be at least 1s and shorter than its duration ({d}s, at least 2s)"
            ));
        }
        if self.identity.is_empty() || self.name.is_empty() || self.namespace.is_empty() {
            return Err("lease name, namespace and identity must not be empty".into());
        }
        Ok(())
    }
}

/// A running election. [`Election::leader`] follows this replica's role.
pub struct Election {
    rx: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// How long to wait before retrying when the Lease cannot be read or created.
const RETRY: Duration = Duration::from_secs(2);
/// How long a release on shutdown may take before it is abandoned.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

impl Election {
    /// Starts campaigning (inside a Tokio runtime). The replica is standby until it holds
    /// the lease.
    pub fn start(client: kube::Client, s: LeaseSettings) -> Self {
        let (tx, rx) = watch::channel(false);
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                let built = LeaseManagerBuilder::new(client.clone(), &s.name)
                    .with_namespace(&s.namespace)
                    .with_identity(&s.identity)
                    .with_duration(s.duration.as_secs())
                    .with_grace(s.grace.as_secs())
                    .build();
                let manager = tokio::select! {
                    _ = &mut stopped => return,
                    m = built => m,
                };
                let manager = match manager {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(lease = %s.name, error = %describe(&e), "cannot use the lease yet; standby");
                        tokio::select! {
                            _ = &mut stopped => return,
                            () = tokio::time::sleep(RETRY) => continue,
                        }
                    }
                };
                let (mut role, handle) = manager.watch().await;
                loop {
                    tokio::select! {
                        biased;
                        _ = &mut stopped => {
                            // Dropping the last receiver makes the manager release the lease.
                            drop(role);
                            tx.send_replace(false);
                            if tokio::time::timeout(RELEASE_TIMEOUT, handle).await.is_err() {
                                tracing::warn!(lease = %s.name, "could not release the lease in time; the standby waits for it to expire");
                            }
                            return;
                        }
                        changed = role.changed() => {
                            if changed.is_err() {
                                // The manager ended (it only does on a channel error): campaign anew.
                                tx.send_replace(false);
                                break;
                            }
                            let leading = *role.borrow_and_update();
                            if tx.send_replace(leading) != leading {
                                if leading {
                                    tracing::info!(lease = %s.name, identity = %s.identity, "leading: this replica runs the rounds");
                                } else {
                                    tracing::warn!(lease = %s.name, identity = %s.identity, "lost the lease: standby");
                                }
                            }
                        }
                    }
                }
            }
        });
        Self {
            rx,
            stop: Some(stop),
            task,
        }
    }

    /// This replica's role: `true` while it holds the lease.
    pub fn leader(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Steps down and releases the lease (on shutdown), so the standby can take it.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Stops campaigning without releasing: what a crash looks like to the other replica.
    pub fn abandon(self) {
        self.task.abort();
    }
}

fn describe(e: &LeaseManagerError) -> String {
    match e {
        LeaseManagerError::KubeError(kube::Error::Api(s)) => {
            format!("{} ({} {})", s.message, s.code, s.reason)
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let s = LeaseSettings::new("l", "ns", "me");
        assert_eq!(s.validate(), Ok(()));
        let secs = Duration::from_secs;
        for (d, g, id, says) in [
            (secs(8), secs(8), "me", "shorter"),
            (Duration::from_millis(8500), secs(3), "me", "whole seconds"),
            (secs(8), secs(3), "", "must not be empty"),
        ] {
            let bad = LeaseSettings {
                duration: d,
                grace: g,
                identity: id.into(),
                ..s.clone()
            };
            let err = bad.validate().expect_err(says);
            assert!(err.contains(says), "{err}");
        }
    }
}
