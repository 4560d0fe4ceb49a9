//! The agent's IO behind one trait, so that [`crate::agent::run_plan`] and the agent loop
//! are tested in-process with fake probers ([`Probers`]), and run for real with
//! [`RealProbers`].

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use meshprobe_core::evidence::{NodeEvidence, OverlayExpectation};
use meshprobe_core::plan::HttpCheck;

use crate::dns::DnsOutcome;
use crate::icmp::{Outcome, Pinger, Schedule, Target};

/// What an agent does to the network and the node. Every call is bounded by the caller's
/// timeouts; implementations must not block the async threads.
pub trait Probers: Send + Sync {
    /// Pings every target `schedule.count` times, all at once; one outcome per target, in
    /// order. `None` when the agent has no ICMP socket.
    fn ping(
        &self,
        round: u64,
        targets: &[Target],
        schedule: Schedule,
    ) -> impl Future<Output = Option<Vec<Outcome>>> + Send;
    /// One DNS A query to `server:53`.
    fn dns(
        &self,
        server: Ipv4Addr,
        name: &str,
        timeout: Duration,
    ) -> impl Future<Output = DnsOutcome> + Send;
    /// One HTTP GET; the RTT, or why it failed.
    fn http(
        &self,
        url: &str,
        host: Option<&str>,
        check: HttpCheck,
        timeout: Duration,
    ) -> impl Future<Output = Result<Duration, meshprobe_core::Failure>> + Send;
    /// The MTU of the route to `ip`, as the kernel sees it (the interface's, or a learned
    /// path MTU), when it can be read. The underlay's full-size probes are sent at least
    /// this large, so that a node whose NIC is set larger than the fabric carries shows.
    fn route_mtu(&self, _ip: Ipv4Addr) -> Option<u16> {
        None
    }

    /// The node-local evidence (host agents), within `timeout`.
    fn evidence(
        &self,
        expect: Option<OverlayExpectation>,
        timeout: Duration,
    ) -> impl Future<Output = Option<NodeEvidence>> + Send;
}

/// The real network and node.
pub struct RealProbers {
    pinger: Option<Pinger>,
    http: reqwest::Client,
}

impl RealProbers {
    /// Probers over `pinger` (none: ICMP cells are reported as not probed).
    pub fn new(pinger: Option<Pinger>) -> Self {
        Self {
            pinger,
            http: crate::http::client(),
        }
    }
}

impl Probers for RealProbers {
    async fn ping(
        &self,
        round: u64,
        targets: &[Target],
        schedule: Schedule,
    ) -> Option<Vec<Outcome>> {
        match &self.pinger {
            Some(p) => Some(p.run(round, targets, schedule).await),
            None => None,
        }
    }

    async fn dns(&self, server: Ipv4Addr, name: &str, timeout: Duration) -> DnsOutcome {
        crate::dns::query_a(server, name, timeout).await
    }

    async fn http(
        &self,
        url: &str,
        host: Option<&str>,
        check: HttpCheck,
        timeout: Duration,
    ) -> Result<Duration, meshprobe_core::Failure> {
        crate::http::probe(&self.http, url, host, check, timeout).await
    }

    fn route_mtu(&self, ip: Ipv4Addr) -> Option<u16> {
        crate::icmp::route_mtu(ip)
    }

    async fn evidence(
        &self,
        expect: Option<OverlayExpectation>,
        timeout: Duration,
    ) -> Option<NodeEvidence> {
        // The commands run off the async threads, each killed at the deadline, so a hung
        // iptables-save costs one budget and no thread for ever.
        let host = crate::evidence::RealHost::with_deadline(std::time::Instant::now() + timeout);
        let work =
            tokio::task::spawn_blocking(move || crate::evidence::collect(&host, expect.as_ref()));
        match tokio::time::timeout(timeout + Duration::from_millis(100), work).await {
            Ok(Ok(ev)) => Some(ev),
            _ => None,
        }
    }
}
