//! Recovery after a crash, and the contract it must meet: what a process
//! that was told something is durable may find after a restart.

use super::store::{self, SHAPES_DIR, expected_json, ops_in, shape_dir, slot_of, tx_op};
use engine::env::{Env, ManualClock, NoCrashPoints, NoEvents, Spawner, Storage};
use engine::log::{LogEntry, LogError, ShapeLog, Stream};
use engine::metadata::{MetaConfig, ShapeDb, SqliteConn};
use engine::offset::LogOffset;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What recovery found: equal on a real disk and on `MemStorage` for the
/// same workload crashed at the same point.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Per shape kept by the metadata's boot: its slot, its recovered last
    /// offset and durable offset, and the bytes recovery cut (log, index).
    pub shapes: BTreeMap<String, (usize, String, String, u64, u64)>,
    /// Rows whose snapshot never completed, deleted by the boot.
    pub incomplete: Vec<String>,
    /// Shape directories without a metadata row (a lost add).
    pub orphans: Vec<String>,
    /// Rows whose log is gone (a removal whose metadata removal was lost).
    pub missing: Vec<String>,
}

/// A recovery's outcome and what it read back.
pub struct Recovered {
    pub outcome: Outcome,
    /// Per kept shape: its main-log entries.
    pub entries: BTreeMap<String, (usize, Vec<Arc<LogEntry>>)>,
    /// Per kept shape: its snapshot rows.
    pub snapshot_rows: BTreeMap<String, Vec<Arc<LogEntry>>>,
}

/// Everything a run reported, over every run on one disk.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Shapes whose snapshot completion was reported committed.
    pub completed: BTreeSet<String>,
    /// Per shape: the highest durable offset reported.
    pub durable: BTreeMap<String, LogOffset>,
    /// Shapes whose removal started: nothing is promised for them.
    pub removing: BTreeSet<String>,
}

impl Ledger {
    pub fn record(&mut self, line: &str) {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["meta", "completed", handle] => {
                self.completed.insert(handle.to_string());
            }
            ["removing", handle] => {
                self.removing.insert(handle.to_string());
            }
            ["durable", handle, offset] => {
                let offset: LogOffset = offset.parse().expect("a reported offset");
                let entry = self.durable.entry(handle.to_string()).or_insert(offset);
                *entry = (*entry).max(offset);
            }
            _ => {}
        }
    }
}

struct NoSpawner;

impl Spawner for NoSpawner {
    fn spawn(&self, name: &'static str, _task: BoxFuture<'static, ()>) {
        panic!("the crash workload spawns no task ({name})");
    }
}

/// An environment over `storage` that never crashes.
pub fn env(storage: Arc<dyn Storage>) -> Env {
    Env {
        clock: Arc::new(ManualClock::new(0)),
        storage,
        spawner: Arc::new(NoSpawner),
        crash_points: Arc::new(NoCrashPoints),
        events: Arc::new(NoEvents),
    }
}

/// Recovers as a restarted process would: the metadata's boot, then every
/// kept log opened (trimmed) and read back.
pub async fn recover(env: &Env, conn: SqliteConn, planted: bool) -> Recovered {
    let db = ShapeDb::open(conn, MetaConfig::default()).expect("open the metadata");
    let (rows, deleted) = db.boot(0).expect("metadata boot");
    let mut recovered = Recovered {
        outcome: Outcome {
            incomplete: deleted.iter().map(|h| h.to_string()).collect(),
            ..Outcome::default()
        },
        entries: BTreeMap::new(),
        snapshot_rows: BTreeMap::new(),
    };
    for row in &rows {
        let dir = shape_dir(&row.handle);
        let writer = match ShapeLog::open(env, &dir, store::log_config(planted)).await {
            Ok(writer) => writer,
            Err(LogError::Missing(_)) => {
                recovered.outcome.missing.push(row.handle.to_string());
                continue;
            }
            Err(e) => panic!("a stored shape's log does not open: {dir}: {e}"),
        };
        let reader = writer.reader();
        let trimmed = writer.trimmed();
        let handle = row.handle.to_string();
        let last = reader.latest_offset();
        let durable = reader
            .durable_offset()
            .map_or("none".into(), |o| o.to_string());
        let slot = slot_of(row);
        recovered.outcome.shapes.insert(
            handle.clone(),
            (
                slot,
                last.to_string(),
                durable,
                trimmed.log_bytes,
                trimmed.index_bytes,
            ),
        );
        let Stream::Entries(entries) = reader
            .log_stream(LogOffset::SNAPSHOT_END, LogOffset::LAST)
            .await
            .expect("read the main log")
        else {
            panic!("a main-log read is never pending");
        };
        recovered.entries.insert(handle.clone(), (slot, entries));
        let mut snapshot = Vec::new();
        let mut after = LogOffset::BEFORE_ALL;
        loop {
            let Stream::Entries(chunk) = reader
                .log_stream(after, LogOffset::SNAPSHOT_END)
                .await
                .expect("read a snapshot chunk")
            else {
                panic!("a complete snapshot is never pending");
            };
            snapshot.extend(chunk);
            match reader.chunk_end(after) {
                Some(next) if next.as_snapshot_chunk().is_some() => after = next,
                _ => break,
            }
        }
        recovered.snapshot_rows.insert(handle, snapshot);
    }
    let kept: BTreeSet<String> = rows.iter().map(|r| r.handle.to_string()).collect();
    if env.storage.exists(SHAPES_DIR).await.expect("exists") {
        for name in env.storage.list(SHAPES_DIR).await.expect("list") {
            if !kept.contains(&name) {
                recovered.outcome.orphans.push(name);
            }
        }
    }
    recovered
}

/// The recovery contract; every breach, named.
pub fn check(recovered: &Recovered, ledger: &Ledger) -> Vec<String> {
    let mut breaches = Vec::new();
    for handle in &recovered.outcome.missing {
        if !ledger.removing.contains(handle) {
            breaches.push(format!(
                "shape {handle}: its metadata row survived, its log did not"
            ));
        }
    }
    for handle in ledger.completed.difference(&ledger.removing) {
        if !recovered.outcome.shapes.contains_key(handle) {
            breaches.push(format!(
                "shape {handle}: its snapshot completion was reported committed, the metadata lost it"
            ));
        }
    }
    for (handle, (slot, entries)) in &recovered.entries {
        breaches.extend(check_log(
            handle,
            *slot,
            entries,
            ledger.durable.get(handle),
        ));
        let rows = &recovered.snapshot_rows[handle];
        let expected: Vec<String> = (0..store::SNAPSHOT_ROWS)
            .map(|i| store::snapshot_json(*slot, i))
            .collect();
        let read: Vec<&String> = rows.iter().map(|e| &e.json).collect();
        if read.len() != expected.len() || read.iter().zip(&expected).any(|(a, b)| *a != b) {
            breaches.push(format!(
                "shape {handle}: its snapshot reads back as {} rows, not the {} written",
                rows.len(),
                expected.len()
            ));
        }
    }
    breaches
}

/// Whole transactions 1..=n in order, each record exactly as written, and
/// nothing reported durable missing.
fn check_log(
    handle: &str,
    slot: usize,
    entries: &[Arc<LogEntry>],
    durable: Option<&LogOffset>,
) -> Vec<String> {
    let mut breaches = Vec::new();
    let mut expected = (1, 0);
    for entry in entries {
        let Some((tx, op)) = tx_op(entry.offset) else {
            breaches.push(format!(
                "shape {handle}: a virtual offset {} in the main log",
                entry.offset
            ));
            continue;
        };
        if (tx, op) != expected {
            breaches.push(format!(
                "shape {handle}: record {} where {}_{} was due (a lost or partial transaction)",
                entry.offset, expected.0, expected.1
            ));
            return breaches;
        }
        if entry.json != expected_json(slot, entry.offset) {
            breaches.push(format!(
                "shape {handle}: record {} is not what was written: {}",
                entry.offset, entry.json
            ));
        }
        expected = if op + 1 == ops_in(tx) {
            (tx + 1, 0)
        } else {
            (tx, op + 1)
        };
    }
    if expected.1 != 0 {
        breaches.push(format!(
            "shape {handle}: transaction {} is partial",
            expected.0
        ));
    }
    let last = entries.last().map_or(LogOffset::SNAPSHOT_END, |e| e.offset);
    if let Some(&durable) = durable
        && last < durable
    {
        breaches.push(format!(
            "shape {handle}: {durable} was reported durable, recovery kept up to {last}"
        ));
    }
    breaches
}
