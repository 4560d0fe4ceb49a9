//! What earlier rounds saw: rounds, findings and baselines in SQLite (`--data-dir`, a file
//! that survives restarts; without it, an in-memory database with the same code path).
//!
//! - `rounds`: one row per finished round (its time and verdict) with its report as JSON.
//!   Reports are the bulk: past [`Retention::max_report_bytes`] the oldest lose their JSON
//!   and keep their row, so the timeline stays whole while the space stays bounded.
//! - `findings`: one row per finding per round (cause, nodes, peers, summary): a finding's
//!   first and last seen and its rounds come from here.
//! - `baselines`: named copies of a round's report (`check --save-baseline`), kept apart
//!   from round retention; at most [`MAX_BASELINES`].
//!
//! Round numbers are never handed out twice, even across restarts when the database could
//! not be written (a full disk): beside the database, `round-seq` holds a high-water mark
//! of the numbers reserved, [`SEQ_BLOCK`] at a time. It is one fixed-size block, written
//! in place and synced, so that rewriting it needs no new space on the file system.
//!
//! Rows older than [`Retention::max_age`] go. The database runs in WAL mode with
//! `synchronous=NORMAL`: a crash (kill -9, power) loses at most the last round, never the
//! file's integrity.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use meshprobe_core::api::{FindingHistory, FindingsAnswer, MAX_FINDING_ROUNDS};
use meshprobe_core::{CheckReport, NodeName};
use rusqlite::{Connection, OptionalExtension, params};

/// The database's file name in `--data-dir`.
pub const DB_FILE: &str = "meshprobe.sqlite3";
/// The round-number high-water mark's file name in `--data-dir`.
pub const SEQ_FILE: &str = "round-seq";
/// Round numbers reserved at a time: one synced write per this many rounds; a restart
/// skips at most this many numbers.
pub const SEQ_BLOCK: u64 = 100;
/// The high-water mark's record: the number, right-aligned, and a newline.
const SEQ_LEN: usize = 21;
/// Baselines kept at most.
pub const MAX_BASELINES: usize = 100;
/// Findings answered at most by one `/v1/findings` query.
pub const MAX_FINDINGS_ANSWERED: usize = 1000;

/// How much history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Rounds and findings older than this go (default 7 days).
    pub max_age: Duration,
    /// The reports' JSON kept at most, newest first (default 256 MiB); older rounds keep
    /// their row and findings, not their report.
    pub max_report_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_report_bytes: 256 << 20,
        }
    }
}

/// The history store failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The database (open, schema, a statement).
    #[error("history database {path}: {source}")]
    Db {
        /// The file, or `:memory:`.
        path: String,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The data directory cannot be made.
    #[error("--data-dir {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A stored report does not parse (written by another version?).
    #[error("round {round}'s stored report does not parse: {source}")]
    Corrupt {
        /// The round.
        round: u64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The round-number high-water mark could not be read or written.
    #[error("round numbers file {path}: {source}")]
    Seq {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The round-number high-water mark holds something else than a number.
    #[error("round numbers file {path} does not hold a number")]
    SeqCorrupt {
        /// The file.
        path: PathBuf,
    },
    /// No such round kept (with its report).
    #[error("round {0} is not kept (or no longer has its report)")]
    NoRound(u64),
    /// Too many baselines.
    #[error("{MAX_BASELINES} baselines are kept at most; overwrite one")]
    TooManyBaselines,
    /// Another operator saved this baseline.
    #[error("baseline {name} is operator {owner}'s: save yours under another name")]
    BaselineOwned {
        /// The baseline.
        name: String,
        /// Who saved it.
        owner: String,
    },
}

/// The store.
pub struct History {
    conn: Mutex<Connection>,
    path: String,
    retention: Retention,
    /// With a data directory: the round numbers reserved so far, and their file.
    seq: Option<Mutex<RoundSeq>>,
}

/// The round-number high-water mark (see the module's documentation).
struct RoundSeq {
    file: std::fs::File,
    path: PathBuf,
    reserved: u64,
}

impl RoundSeq {
    fn open(dir: &Path) -> Result<Self, HistoryError> {
        use std::io::Read;
        let path = dir.join(SEQ_FILE);
        let io = |source| HistoryError::Seq {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut text = String::new();
        (&mut file)
            .take(SEQ_LEN as u64 * 2)
            .read_to_string(&mut text)
            .map_err(io)?;
        let reserved = match text.trim() {
            "" => 0,
            t => t
                .parse::<u64>()
                .map_err(|_| HistoryError::SeqCorrupt { path: path.clone() })?,
        };
        let mut seq = Self {
            file,
            path,
            reserved,
        };
        // The block is written once now, so that later writes only overwrite it.
        seq.write(reserved)?;
        Ok(seq)
    }

    fn write(&mut self, value: u64) -> Result<(), HistoryError> {
        use std::os::unix::fs::FileExt;
        let record = format!("{value:>20}\n");
        self.file
            .write_all_at(record.as_bytes(), 0)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| HistoryError::Seq {
                path: self.path.clone(),
                source,
            })?;
        self.reserved = value;
        Ok(())
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("path", &self.path).finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    healthy INTEGER NOT NULL,
    report TEXT
);
CREATE TABLE IF NOT EXISTS findings (
    cause TEXT NOT NULL,
    nodes TEXT NOT NULL,
    peers TEXT NOT NULL,
    round INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (cause, nodes, peers, round)
);
CREATE INDEX IF NOT EXISTS findings_by_round ON findings (round);
CREATE TABLE IF NOT EXISTS baselines (
    name TEXT PRIMARY KEY,
    round INTEGER NOT NULL,
    saved_ms INTEGER NOT NULL,
    report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS baseline_owners (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL
);
";

/// What the history keeps of a report: the report, or above
/// [`SUMMARY_ABOVE`](meshprobe_core::matrix::SUMMARY_ABOVE) cells its summary (failing and
/// unknown cells listed, ok ones counted): a 5,000-node round is 170 MB of JSON in full.
fn kept_form(report: &CheckReport) -> std::borrow::Cow<'_, CheckReport> {
    if report.cell_count() > meshprobe_core::matrix::SUMMARY_ABOVE {
        std::borrow::Cow::Owned(report.summarised())
    } else {
        std::borrow::Cow::Borrowed(report)
    }
}

fn join(names: &[NodeName]) -> String {
    names
        .iter()
        .map(NodeName::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

fn split(s: &str) -> Vec<NodeName> {
    s.split(',')
        .filter(|n| !n.is_empty())
        .filter_map(|n| NodeName::new(n).ok())
        .collect()
}

impl History {
    /// Opens (or creates) the history in `dir`, or in memory without one.
    pub fn open(dir: Option<&Path>, retention: Retention) -> Result<Self, HistoryError> {
        let (conn, path) = match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|source| HistoryError::Dir {
                    path: d.to_owned(),
                    source,
                })?;
                let file = d.join(DB_FILE);
                let path = file.display().to_string();
                let conn = Connection::open(&file).map_err(|source| HistoryError::Db {
                    path: path.clone(),
                    source,
                })?;
                (conn, path)
            }
            None => (
                Connection::open_in_memory().map_err(|source| HistoryError::Db {
                    path: ":memory:".into(),
                    source,
                })?,
                ":memory:".to_owned(),
            ),
        };
        let db = |source| HistoryError::Db {
            path: path.clone(),
            source,
        };
        // auto_vacuum must be set before the first table: freed pages are returned to the
        // file system by `incremental_vacuum` after pruning.
        conn.execute_batch(
            "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        let seq = dir.map(RoundSeq::open).transpose()?.map(Mutex::new);
        Ok(Self {
            conn: Mutex::new(conn),
            path,
            retention,
            seq,
        })
    }

    /// Round `id` is about to be handed out: past the numbers reserved so far, the next
    /// [`SEQ_BLOCK`] are reserved first (one synced write), so that no restart hands it
    /// out again. Without a data directory there is nothing to keep (and nothing to fail).
    pub fn reserve_round(&self, id: u64) -> Result<(), HistoryError> {
        let Some(seq) = &self.seq else {
            return Ok(());
        };
        let mut seq = seq
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if id <= seq.reserved {
            return Ok(());
        }
        seq.write(id + SEQ_BLOCK)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn db(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Where the history lives (a file, or `:memory:`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The newest round kept (0 when none): a restarted coordinator numbers on from it.
    pub fn last_round(&self) -> Result<u64, HistoryError> {
        let kept = self
            .lock()
            .query_row("SELECT COALESCE(MAX(id), 0) FROM rounds", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|v| v.max(0) as u64)
            .map_err(|e| self.db(e))?;
        let reserved = self.seq.as_ref().map_or(0, |s| {
            s.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .reserved
        });
        Ok(kept.max(reserved))
    }

    /// Records a finished round at `at_ms`, then applies the retention.
    /// Big reports are kept summarised ([`kept_form`]).
    pub fn record(&self, report: &CheckReport, at_ms: u64) -> Result<(), HistoryError> {
        let report = kept_form(report);
        let json = serde_json::to_string(&*report).map_err(|source| HistoryError::Corrupt {
            round: report.round,
            source,
        })?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.db(e))?;
        tx.execute(
            "INSERT OR REPLACE INTO rounds (id, at_ms, healthy, report) VALUES (?1, ?2, ?3, ?4)",
            params![report.round as i64, at_ms as i64, report.healthy, json],
        )
        .map_err(|e| self.db(e))?;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO findings (cause, nodes, peers, round, at_ms, summary) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(|e| self.db(e))?;
            for f in &report.findings {
                ins.execute(params![
                    f.cause.as_str(),
                    join(&f.nodes),
                    join(&f.peers),
                    report.round as i64,
                    at_ms as i64,
                    f.summary
                ])
                .map_err(|e| self.db(e))?;
            }
        }
        prune(&tx, at_ms, self.retention).map_err(|e| self.db(e))?;
        tx.commit().map_err(|e| self.db(e))?;
        conn.execute_batch("PRAGMA incremental_vacuum;")
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The report of the row `sql` selects (round, JSON) with `arg`.
    fn report_where(
        &self,
        sql: &str,
        arg: impl rusqlite::ToSql,
    ) -> Result<Option<CheckReport>, HistoryError> {
        let row: Option<(i64, String)> = self
            .lock()
            .query_row(sql, [arg], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(|e| self.db(e))?;
        row.map(|(round, json)| {
            serde_json::from_str(&json).map_err(|source| HistoryError::Corrupt {
                round: round as u64,
                source,
            })
        })
        .transpose()
    }

    /// Round `id`'s report, if kept.
    pub fn round(&self, id: u64) -> Result<Option<CheckReport>, HistoryError> {
        self.report_where(
            "SELECT id, report FROM rounds WHERE id = ?1 AND report IS NOT NULL",
            id as i64,
        )
    }

    /// The newest round's report.
    pub fn latest(&self) -> Result<Option<CheckReport>, HistoryError> {
        self.report_where(
            "SELECT id, report FROM rounds WHERE report IS NOT NULL AND id > ?1 ORDER BY id DESC LIMIT 1",
            0,
        )
    }

    /// The newest round's number and verdict, without reading its report (what
    /// `/v1/status` needs after a restart, every two seconds).
    pub fn latest_verdict(&self) -> Result<Option<(u64, bool)>, HistoryError> {
        self.lock()
            .query_row(
                "SELECT id, healthy FROM rounds ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? != 0)),
            )
            .optional()
            .map_err(|e| self.db(e))
    }

    /// The newest healthy round's report.
    pub fn latest_healthy(&self) -> Result<Option<CheckReport>, HistoryError> {
        self.report_where(
            "SELECT id, report FROM rounds WHERE report IS NOT NULL AND healthy = 1 AND id > ?1 ORDER BY id DESC LIMIT 1",
            0,
        )
    }

    /// Saves `report` as baseline `name` (replacing one of that name), for operator `owner` (`None`: the cluster secret,
    /// which may overwrite anyone's). A baseline an operator saved is theirs: another
    /// operator cannot overwrite it.
    pub fn save_baseline(
        &self,
        name: &str,
        report: &CheckReport,
        at_ms: u64,
        owner: Option<&str>,
    ) -> Result<(), HistoryError> {
        let report = kept_form(report);
        let json = serde_json::to_string(&*report).map_err(|source| HistoryError::Corrupt {
            round: report.round,
            source,
        })?;
        let conn = self.lock();
        let (count, exists): (i64, bool) = conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(name = ?1), 0) > 0 FROM baselines",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.db(e))?;
        if !exists && count as usize >= MAX_BASELINES {
            return Err(HistoryError::TooManyBaselines);
        }
        let held: Option<String> = conn
            .query_row(
                "SELECT owner FROM baseline_owners WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        if let (Some(held), Some(me)) = (&held, owner)
            && held != me
        {
            return Err(HistoryError::BaselineOwned {
                name: name.to_owned(),
                owner: held.clone(),
            });
        }
        conn.execute(
            "INSERT OR REPLACE INTO baselines (name, round, saved_ms, report) VALUES (?1, ?2, ?3, ?4)",
            params![name, report.round as i64, at_ms as i64, json],
        )
        .map_err(|e| self.db(e))?;
        if let (None, Some(me)) = (&held, owner) {
            conn.execute(
                "INSERT OR REPLACE INTO baseline_owners (name, owner) VALUES (?1, ?2)",
                params![name, me],
            )
            .map_err(|e| self.db(e))?;
        }
        Ok(())
    }

    /// Baseline `name`'s report.
    pub fn baseline(&self, name: &str) -> Result<Option<CheckReport>, HistoryError> {
        self.report_where("SELECT round, report FROM baselines WHERE name = ?1", name)
    }

    /// Every baseline saved, newest first: name, round, when and by whom (not the reports).
    pub fn baselines(&self) -> Result<Vec<meshprobe_core::api::BaselineInfo>, HistoryError> {
        let conn = self.lock();
        let db = |e| self.db(e);
        let mut q = conn
            .prepare_cached(
                "SELECT b.name, b.round, b.saved_ms, o.owner FROM baselines b
                 LEFT JOIN baseline_owners o ON o.name = b.name
                 ORDER BY b.saved_ms DESC, b.name LIMIT ?1",
            )
            .map_err(db)?;
        let rows = q
            .query_map([MAX_BASELINES as i64], |r| {
                Ok(meshprobe_core::api::BaselineInfo {
                    name: r.get(0)?,
                    round: r.get::<_, i64>(1)?.max(0) as u64,
                    saved_ms: r.get::<_, i64>(2)?.max(0) as u64,
                    owner: r.get(3)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    /// Every finding made in a round after `since`, most recently seen first, with its
    /// first and last sighting among the rounds kept.
    pub fn findings_since(&self, since: u64) -> Result<FindingsAnswer, HistoryError> {
        let conn = self.lock();
        let db = |e| self.db(e);
        let (oldest, newest): (Option<i64>, Option<i64>) = conn
            .query_row("SELECT MIN(id), MAX(id) FROM rounds", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(db)?;
        let mut keys = conn
            .prepare_cached(
                "SELECT cause, nodes, peers, MIN(round), MAX(round) FROM findings
                 GROUP BY cause, nodes, peers HAVING MAX(round) > ?1
                 ORDER BY MAX(round) DESC, cause, nodes LIMIT ?2",
            )
            .map_err(db)?;
        let rows: Vec<(String, String, String, i64, i64)> = keys
            .query_map(params![since as i64, MAX_FINDINGS_ANSWERED as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        let mut at = conn
            .prepare_cached(
                "SELECT at_ms, summary FROM findings WHERE cause = ?1 AND nodes = ?2 AND peers = ?3 AND round = ?4",
            )
            .map_err(db)?;
        let mut rounds_of = conn
            .prepare_cached(
                "SELECT round FROM findings WHERE cause = ?1 AND nodes = ?2 AND peers = ?3 ORDER BY round DESC LIMIT ?4",
            )
            .map_err(db)?;
        let mut findings = Vec::with_capacity(rows.len());
        for (cause, nodes, peers, first, last) in rows {
            let (first_ms, _): (i64, String) = at
                .query_row(params![cause, nodes, peers, first], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(db)?;
            let (last_ms, summary): (i64, String) = at
                .query_row(params![cause, nodes, peers, last], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(db)?;
            let mut rounds: Vec<u64> = rounds_of
                .query_map(
                    params![cause, nodes, peers, MAX_FINDING_ROUNDS as i64],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(db)?
                .map(|r| r.map(|v| v as u64))
                .collect::<Result<_, _>>()
                .map_err(db)?;
            rounds.reverse();
            findings.push(FindingHistory {
                cause: meshprobe_core::Cause::from(cause),
                nodes: split(&nodes),
                peers: split(&peers),
                summary,
                first_round: first as u64,
                first_seen_ms: first_ms as u64,
                last_round: last as u64,
                last_seen_ms: last_ms as u64,
                rounds,
            });
        }
        Ok(FindingsAnswer {
            oldest_round: oldest.map(|v| v as u64),
            newest_round: newest.map(|v| v as u64),
            findings,
        })
    }

    /// The bytes of report JSON kept (rounds and baselines).
    pub fn report_bytes(&self) -> Result<u64, HistoryError> {
        self.lock()
            .query_row(
                "SELECT COALESCE((SELECT SUM(LENGTH(report)) FROM rounds), 0) + COALESCE((SELECT SUM(LENGTH(report)) FROM baselines), 0)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v.max(0) as u64)
            .map_err(|e| self.db(e))
    }

    /// `PRAGMA integrity_check`'s answer (`ok` when whole).
    pub fn integrity(&self) -> Result<String, HistoryError> {
        self.lock()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.db(e))
    }
}

/// Drops what is older than the retention's age, and the oldest reports' JSON past its
/// bytes (the newest report is always kept).
fn prune(tx: &rusqlite::Transaction<'_>, now_ms: u64, r: Retention) -> rusqlite::Result<()> {
    let cutoff = now_ms.saturating_sub(r.max_age.as_millis() as u64) as i64;
    tx.execute("DELETE FROM rounds WHERE at_ms < ?1", [cutoff])?;
    tx.execute("DELETE FROM findings WHERE at_ms < ?1", [cutoff])?;
    // The newest reports that fit the budget keep their JSON; the first that does not, and
    // every older one, lose it.
    let mut stmt = tx.prepare_cached(
        "SELECT id, LENGTH(report) FROM rounds WHERE report IS NOT NULL ORDER BY id DESC",
    )?;
    let sizes: Vec<(i64, i64)> = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut total = 0u64;
    let mut cut = None;
    for (i, (id, len)) in sizes.iter().enumerate() {
        total += *len as u64;
        if total > r.max_report_bytes && i > 0 {
            cut = Some(*id);
            break;
        }
    }
    if let Some(id) = cut {
        tx.execute(
            "UPDATE rounds SET report = NULL WHERE id <= ?1 AND report IS NOT NULL",
            [id],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshprobe_core::{Cause, Direction, Finding};

    fn report(round: u64, finding_on: Option<&str>) -> CheckReport {
        let n = |s: &str| NodeName::new(s).expect("name");
        CheckReport {
            healthy: finding_on.is_none(),
            round,
            nodes: vec![n("n1"), n("n2")],
            layers: Default::default(),
            timings: Default::default(),
            summary: None,
            findings: finding_on
                .map(|node| Finding {
                    cause: Cause::IpForwardDisabled,
                    nodes: vec![n(node)],
                    peers: vec![],
                    direction: Direction::Both,
                    hop: "forwarding".into(),
                    summary: format!("{node} does not forward (round {round})"),
                    evidence: vec![],
                    evidence_cells: 0,
                    fix: "sysctl".into(),
                    rounds: 1,
                    cells: vec![],
                    cell_count: 0,
                    alternatives: vec![],
                })
                .into_iter()
                .collect(),
            agents: Default::default(),
            warnings: vec![],
            duration_ms: 1,
            evidence: Default::default(),
            capture: Default::default(),
        }
    }

    #[test]
    fn reserved_round_numbers_survive_reopening_without_a_recorded_round() {
        let dir = std::env::temp_dir().join(format!("meshprobe-seq-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let h = History::open(Some(&dir), Retention::default()).expect("open");
            assert_eq!(h.last_round().expect("last"), 0);
            for id in 1..=3 {
                h.reserve_round(id).expect("reserve");
            }
        }
        let h = History::open(Some(&dir), Retention::default()).expect("reopen");
        assert_eq!(h.last_round().expect("last"), 1 + SEQ_BLOCK);
        // One fixed-size record, rewritten in place.
        h.reserve_round(2 + SEQ_BLOCK).expect("reserve");
        let text = std::fs::read_to_string(dir.join(SEQ_FILE)).expect("seq");
        assert_eq!(text.len(), SEQ_LEN, "{text:?}");
        assert_eq!(text.trim(), (2 + 2 * SEQ_BLOCK).to_string());
        std::fs::write(dir.join(SEQ_FILE), "not a number").expect("corrupt");
        assert!(matches!(
            History::open(Some(&dir), Retention::default()),
            Err(HistoryError::SeqCorrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn findings_have_a_first_and_last_sighting_that_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("meshprobe-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let h = History::open(Some(&dir), Retention::default()).expect("open");
            for (round, f) in [
                (1, None),
                (2, Some("n2")),
                (3, Some("n2")),
                (4, None),
                (5, Some("n2")),
            ] {
                h.record(&report(round, f), 1_000 * round).expect("record");
            }
            h.save_baseline("before", &report(1, None), 10, None)
                .expect("baseline");
        }
        let h = History::open(Some(&dir), Retention::default()).expect("reopen");
        assert_eq!(h.last_round().expect("last"), 5);
        let a = h.findings_since(0).expect("findings");
        assert_eq!((a.oldest_round, a.newest_round), (Some(1), Some(5)));
        assert_eq!(a.findings.len(), 1);
        let f = &a.findings[0];
        assert_eq!((f.first_round, f.last_round), (2, 5));
        assert_eq!((f.first_seen_ms, f.last_seen_ms), (2_000, 5_000));
        assert_eq!(f.rounds, [2, 3, 5]);
        assert_eq!(f.summary, "n2 does not forward (round 5)");
        assert!(h.findings_since(5).expect("none newer").findings.is_empty());
        assert_eq!(h.latest_healthy().expect("q").map(|r| r.round), Some(4));
        assert_eq!(h.baseline("before").expect("q").map(|r| r.round), Some(1));
        assert_eq!(h.round(3).expect("q").map(|r| r.round), Some(3));
        assert_eq!(h.integrity().expect("check"), "ok");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retention_drops_old_rows_and_the_oldest_reports_past_the_byte_budget() {
        let one = serde_json::to_string(&report(1, Some("n1")))
            .expect("json")
            .len() as u64;
        let h = History::open(
            None,
            Retention {
                max_age: Duration::from_secs(60),
                max_report_bytes: 3 * one + one / 2,
            },
        )
        .expect("open");
        for round in 1..=10u64 {
            h.record(&report(round, Some("n1")), round * 10_000)
                .expect("record");
        }
        // Rounds 1..=4 are older than 60 s at round 10 (100 s): gone.
        let a = h.findings_since(0).expect("findings");
        assert_eq!(
            a.oldest_round,
            Some(4),
            "at_ms 40,000 is exactly at the cutoff"
        );
        // Only the newest three keep their report.
        assert!(h.round(10).expect("q").is_some());
        assert!(h.round(8).expect("q").is_some());
        assert!(
            h.round(7).expect("q").is_none(),
            "its JSON is past the budget"
        );
        assert!(h.report_bytes().expect("bytes") <= 3 * one + one / 2);
        // A round without its report keeps its findings.
        assert!(a.findings[0].rounds.contains(&7));
    }

    #[test]
    fn baselines_are_bounded() {
        let h = History::open(None, Retention::default()).expect("open");
        for i in 0..MAX_BASELINES {
            h.save_baseline(&format!("b{i}"), &report(1, None), 1, None)
                .expect("save");
        }
        assert!(matches!(
            h.save_baseline("one-more", &report(1, None), 1, None),
            Err(HistoryError::TooManyBaselines)
        ));
        h.save_baseline("b0", &report(2, None), 1, None)
            .expect("overwriting is fine");
        assert_eq!(h.baseline("b0").expect("q").map(|r| r.round), Some(2));
    }

    /// Issue 23, row 12: the baselines are listed, newest first, with their round, time
    /// and owner.
    #[test]
    fn baselines_are_listed_newest_first() {
        let h = History::open(None, Retention::default()).expect("open");
        assert!(h.baselines().expect("list").is_empty());
        h.save_baseline("pre-upgrade", &report(3, None), 1_000, Some("alice"))
            .expect("save");
        h.save_baseline("after", &report(7, None), 5_000, None)
            .expect("save");
        let listed = h.baselines().expect("list");
        let got: Vec<(&str, u64, u64, Option<&str>)> = listed
            .iter()
            .map(|b| (b.name.as_str(), b.round, b.saved_ms, b.owner.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("after", 7, 5_000, None),
                ("pre-upgrade", 3, 1_000, Some("alice"))
            ]
        );
    }

    /// Issue 22, row 10: any operator could overwrite another's baseline.
    #[test]
    fn an_operators_baseline_is_theirs() {
        let h = History::open(None, Retention::default()).expect("open");
        h.save_baseline("before", &report(1, None), 1, Some("alice"))
            .expect("save");
        h.save_baseline("before", &report(2, None), 2, Some("alice"))
            .expect("its owner overwrites it");
        assert!(matches!(
            h.save_baseline("before", &report(3, None), 3, Some("bob")),
            Err(HistoryError::BaselineOwned { ref owner, .. }) if owner == "alice"
        ));
        assert_eq!(h.baseline("before").expect("q").map(|r| r.round), Some(2));
        // The cluster secret may overwrite anyone's; the owner stays.
        h.save_baseline("before", &report(4, None), 4, None)
            .expect("the cluster secret");
        assert!(
            h.save_baseline("before", &report(5, None), 5, Some("bob"))
                .is_err()
        );
    }
}
