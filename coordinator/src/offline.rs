//! The reports agents made while they could not reach the coordinator: kept per agent, so
//! that one node's credential can neither fill the store nor evict the others' outage
//! reports, de-duplicated, and read back in pages from their stored encoding, never
//! cloned or serialised under the coordinator's lock.
//!
//! - Each agent (node, kind) keeps at most [`PER_AGENT`] reports and [`PER_AGENT_BYTES`];
//!   past that, its own oldest go.
//! - All together, at most [`KEPT`] reports and [`BYTES`]; past that, the oldest of the
//!   agent holding the most bytes goes, so a flood evicts the flooder's reports first.
//! - A report already kept (same node, kind, round and offline time) is refused.
//! - [`OfflineStore::page`] hands out the stored JSON (shared, not copied) from a cursor.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use meshprobe_core::plan::AgentReport;
use meshprobe_core::{AgentKind, NodeName};

type Key = (NodeName, AgentKind);

/// Reports kept from all agents together.
pub const KEPT: usize = 4096;
/// Bytes (their JSON) kept from all agents together.
pub const BYTES: usize = 64 << 20;
/// Reports kept per agent: what an agent itself buffers.
pub const PER_AGENT: usize = 64;
/// Bytes kept per agent.
pub const PER_AGENT_BYTES: usize = 8 << 20;
/// Reports in one page at most.
pub const PAGE_MAX: usize = 256;
/// Bytes in one page at most (one report larger than this is a page of its own).
pub const PAGE_BYTES: usize = 8 << 20;

/// One kept report.
struct Kept {
    key: Key,
    round: u64,
    at_ms: u64,
    json: Arc<[u8]>,
}

/// What one agent holds.
#[derive(Default)]
struct Share {
    seqs: VecDeque<u64>,
    bytes: usize,
}

/// Why a report was not kept by the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The same report is kept already.
    Duplicate,
    /// It alone is larger than an agent's share.
    TooLarge,
}

/// The store.
#[derive(Default)]
pub struct OfflineStore {
    /// Every kept report by its sequence number (delivery order).
    by_seq: BTreeMap<u64, Kept>,
    shares: HashMap<Key, Share>,
    ids: HashSet<(Key, u64, u64)>,
    bytes: usize,
    next_seq: u64,
}

impl OfflineStore {
    /// Keeps `report`, whose JSON is `json`, evicting as the bounds require.
    pub fn insert(&mut self, report: &AgentReport, json: Vec<u8>) -> Result<(), Rejected> {
        let key = (report.node.clone(), report.kind);
        let at_ms = report.offline_at_ms.unwrap_or_default();
        let id = (key.clone(), report.round, at_ms);
        if self.ids.contains(&id) {
            return Err(Rejected::Duplicate);
        }
        let size = json.len();
        if size > PER_AGENT_BYTES {
            return Err(Rejected::TooLarge);
        }
        // The agent's own share first: its oldest go.
        while let Some(share) = self.shares.get(&key)
            && (share.seqs.len() >= PER_AGENT || share.bytes + size > PER_AGENT_BYTES)
        {
            if !self.evict_oldest_of(&key) {
                break;
            }
        }
        // Then the whole store: the largest share pays.
        while !self.by_seq.is_empty() && (self.by_seq.len() >= KEPT || self.bytes + size > BYTES) {
            let Some(largest) = self
                .shares
                .iter()
                .max_by_key(|(_, s)| s.bytes)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if !self.evict_oldest_of(&largest) {
                break;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ids.insert(id);
        let share = self.shares.entry(key.clone()).or_default();
        share.seqs.push_back(seq);
        share.bytes += size;
        self.bytes += size;
        self.by_seq.insert(
            seq,
            Kept {
                key,
                round: report.round,
                at_ms,
                json: json.into(),
            },
        );
        Ok(())
    }

    fn evict_oldest_of(&mut self, key: &Key) -> bool {
        let Some(share) = self.shares.get_mut(key) else {
            return false;
        };
        let Some(seq) = share.seqs.pop_front() else {
            self.shares.remove(key);
            return false;
        };
        if let Some(k) = self.by_seq.remove(&seq) {
            share.bytes -= k.json.len();
            self.bytes -= k.json.len();
            self.ids.remove(&(k.key, k.round, k.at_ms));
        }
        if share.seqs.is_empty() {
            self.shares.remove(key);
        }
        true
    }

    /// Reports kept.
    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    /// Bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Reports kept for one agent.
    pub fn count_of(&self, node: &NodeName, kind: AgentKind) -> usize {
        self.shares
            .get(&(node.clone(), kind))
            .map_or(0, |s| s.seqs.len())
    }

    /// Up to `limit` (at most [`PAGE_MAX`]) reports after cursor `after` (0: from the
    /// start), at most [`PAGE_BYTES`] together, as their stored JSON; and the cursor of the
    /// next page when there is more.
    pub fn page(&self, after: u64, limit: usize) -> (Vec<Arc<[u8]>>, Option<u64>) {
        let limit = limit.clamp(1, PAGE_MAX);
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut last = None;
        for (&seq, k) in self.by_seq.range(after..) {
            if out.len() == limit || (!out.is_empty() && bytes + k.json.len() > PAGE_BYTES) {
                return (out, last.map(|l: u64| l + 1));
            }
            bytes += k.json.len();
            out.push(Arc::clone(&k.json));
            last = Some(seq);
        }
        (out, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, round: u64, at_ms: u64, pad: usize) -> (AgentReport, Vec<u8>) {
        let r = AgentReport {
            node: NodeName::new(node).expect("name"),
            kind: AgentKind::Host,
            round,
            results: Vec::new(),
            warnings: Vec::new(),
            evidence: None,
            capture: None,
            packets: Vec::new(),
            offline_at_ms: Some(at_ms),
        };
        let mut json = serde_json::to_vec(&r).expect("json");
        json.resize(json.len() + pad, b' ');
        (r, json)
    }

    #[test]
    fn one_agents_flood_evicts_its_own_reports_only() {
        let mut s = OfflineStore::default();
        for (i, n) in ["n2", "n3"].iter().enumerate() {
            let (r, j) = report(n, 1, 1000 + i as u64, 0);
            s.insert(&r, j).expect("kept");
        }
        let n1 = NodeName::new("n1").expect("name");
        for i in 0..KEPT as u64 {
            let (r, j) = report("n1", i + 1, 5000 + i, 0);
            s.insert(&r, j).expect("kept");
        }
        assert_eq!(s.count_of(&n1, AgentKind::Host), PER_AGENT);
        for n in ["n2", "n3"] {
            let n = NodeName::new(n).expect("name");
            assert_eq!(s.count_of(&n, AgentKind::Host), 1, "{n} keeps its report");
        }
    }

    #[test]
    fn the_store_is_bounded_by_bytes_and_the_largest_share_pays() {
        let mut s = OfflineStore::default();
        // 16 agents at their byte share fill the store; one more evicts the largest's oldest.
        let big = PER_AGENT_BYTES / 2 - 1024;
        for n in 0..16 {
            for round in 1..=2 {
                let (r, j) = report(&format!("n{n}"), round, round, big);
                s.insert(&r, j).expect("kept");
            }
        }
        assert!(s.bytes() <= BYTES);
        let (r, j) = report("late", 1, 1, 1000);
        s.insert(&r, j).expect("kept");
        assert!(s.bytes() <= BYTES, "{} > {BYTES}", s.bytes());
        let late = NodeName::new("late").expect("name");
        assert_eq!(s.count_of(&late, AgentKind::Host), 1);
    }

    #[test]
    fn the_same_report_twice_is_kept_once() {
        let mut s = OfflineStore::default();
        let (r, j) = report("n1", 7, 1234, 0);
        s.insert(&r, j.clone()).expect("kept");
        assert_eq!(s.insert(&r, j), Err(Rejected::Duplicate));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn pages_walk_every_report_once_in_order() {
        let mut s = OfflineStore::default();
        for i in 0..600u64 {
            let (r, j) = report(&format!("n{}", i % 20), i + 1, i, 0);
            s.insert(&r, j).expect("kept");
        }
        let mut seen = Vec::new();
        let mut cursor = 0;
        loop {
            let (page, next) = s.page(cursor, 1000);
            assert!(page.len() <= PAGE_MAX);
            for j in page {
                let r: AgentReport = serde_json::from_slice(&j).expect("json");
                seen.push(r.round);
            }
            match next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        let want: Vec<u64> = (1..=600).collect();
        assert_eq!(seen, want);
    }
}
