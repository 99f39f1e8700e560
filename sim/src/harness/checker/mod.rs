//! The state checker (TigerBeetle's StateChecker pattern): it follows the
//! engine's event stream and the harness's own observations live, keeps an
//! independent model of what must be true, and fails the run the moment an
//! invariant breaks. Each invariant is a named failure class:
//!
//! - `ack-contract`: an acknowledgement never goes backwards (below the
//!   slot's confirmed LSN or an earlier one), never passes what the engine
//!   received, and never passes a transaction routed to a shape that the
//!   shape has neither skipped nor made durable (nor durably removed); and a
//!   shape restored after its removal began was not acknowledged past;
//! - `ack-liveness`: at quiescence the slot reaches the last committed
//!   transaction within the check deadline (see [`Checker::ack_holdup`]);
//! - `lost-shape`: a shape is removed for a reason the harness does not accept
//!   (see [`Checker::accepted`]), or boot drops one whose metadata said
//!   complete and whose storage was durable;
//! - `unexplained-409`, `prefix-mismatch`, `wire`, `latency`: the reads
//!   ([`reads`]).
//!
//! The model of each handle follows the metadata database exactly (from the
//! batches the engine reports written) and, at each kill, records what the
//! kill loses: a shape whose add was still buffered (metadata lost), or whose
//! completion was (snapshot incomplete). Those are the accepted 409s after a
//! crash or power loss; after a graceful restart nothing is lost, so no 409
//! is accepted.

mod acks;
mod reads;
mod removals;
mod view;

pub use reads::ReadContext;
use view::ShapeView;

use super::checks::Failure;
use super::coverage::Coverage;
use super::trace::{SharedTrace, record};
use crate::oracle::rows::{self, OracleRows};
use crate::pg::PgModel;
use crate::scenario::ShapeSpec;
use engine::env::events::{MetaChange, RemovalReason};
use engine::env::{Event, EventSink};
use engine::replication::Lsn;
use engine::replication::{Change, Transaction};
use engine::schema::Row;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// The first failure of a run, and a way to wait for it.
#[derive(Default)]
pub struct Verdict {
    failure: Mutex<Option<Failure>>,
    failed: event_listener::Event,
}

impl Verdict {
    /// Records a failure; the first one stands.
    pub fn fail(&self, failure: Failure) {
        let mut slot = self.failure.lock().expect("verdict");
        if slot.is_none() {
            *slot = Some(failure);
            self.failed.notify(usize::MAX);
        }
    }

    pub fn failure(&self) -> Option<Failure> {
        self.failure.lock().expect("verdict").clone()
    }

    /// Completes with the first failure.
    pub async fn wait(&self) -> Failure {
        loop {
            let listener = self.failed.listen();
            if let Some(failure) = self.failure() {
                return failure;
            }
            listener.await;
        }
    }
}

/// Why a handle is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fate {
    /// The engine removed it (at run time or at boot).
    Removed(RemovalReason),
    /// A kill lost it before the metadata database knew it durably: its add
    /// (`MetadataLost`) or its snapshot completion (`SnapshotIncomplete`).
    Lost(RemovalReason),
}

/// The checker's model of one handle.
#[derive(Clone, Debug, Default)]
struct HandleState {
    /// The metadata database holds its row (its add was written, its
    /// removal not).
    in_db: bool,
    /// The metadata database holds its snapshot completion.
    complete_in_db: bool,
    /// Its removal began (storage may be partly gone), when the engine had
    /// received up to this LSN.
    removed_at: Option<Lsn>,
    fate: Option<Fate>,
    /// The harness accepts its fate (a 409 for it is explained).
    explained: bool,
}

/// Per engine run: what was received, routed, durable and acknowledged.
#[derive(Default)]
struct RunState {
    /// The slot's confirmed LSN at the first connection.
    confirmed: Option<Lsn>,
    /// Everything at or below was received (routed, or confirmed).
    received: Lsn,
    /// The WAL end at connect: the run has caught up once it routed it.
    catch_up_to: Option<Lsn>,
    acked: Option<Lsn>,
    /// Per shape: routed transactions neither skipped nor durable yet.
    pending: BTreeMap<String, BTreeSet<Lsn>>,
    /// Per shape: the transaction part of its last durable offset (a
    /// routed transaction at or below it may still be reported skipped).
    durable_tx: BTreeMap<String, Lsn>,
    /// This boot dropped a shape for a reason the harness accepts: a
    /// subquery shape may then lose an inner shape (`dependency-lost`).
    explained_boot_drop: bool,
}

pub struct Checker {
    /// Electric's mode: boot drops subquery and inner shapes (else it
    /// must restore them).
    drops_subqueries: bool,
    pub(super) trace: SharedTrace,
    pub verdict: Arc<Verdict>,
    pg: PgModel,
    handles: BTreeMap<String, HandleState>,
    /// Which scenario shape a handle serves (learned from responses).
    handle_shape: BTreeMap<String, usize>,
    /// Per shape, the handle of its latest answer.
    latest_handle: Vec<Option<String>>,
    /// Per shape, the changes of a transaction whose last change has not
    /// arrived yet (with the handle and LSN they belong to).
    open_txns: Vec<Option<(String, Lsn, Vec<reads::WireChange>)>>,
    run: RunState,
    /// Removals the harness asked for.
    requested: BTreeSet<String>,
    /// Subquery shapes whose removal a shutdown declined although a
    /// reason the harness accepts stood (an inner shape failed): the next
    /// boot may drop them (`dependency-lost`).
    declined_explained: BTreeSet<String>,
    /// Shapes a shutdown released as not restored: boot must drop them.
    unrestored: BTreeSet<String>,
    /// Shapes (by handle) whose files got an injected I/O error.
    io_faulted: BTreeSet<String>,
    /// Shapes whose write, sync or rename failed: nothing may be reported
    /// durable for them any more.
    write_faulted: BTreeSet<String>,
    /// When the last I/O error was injected.
    last_io_fault_ms: Option<u64>,
    /// Windows in which Postgres was cut off from the engine.
    postgres_cuts: Vec<(u64, u64)>,
    /// When the last shape was removed at run time, and why.
    last_removal: Option<(u64, String)>,
    /// For the rare-path counters: shapes created while acknowledgements
    /// lagged and not yet durable; removals not yet durable; snapshots in
    /// progress.
    created_lagging: BTreeSet<String>,
    removing: BTreeSet<String>,
    snapshotting: BTreeSet<String>,
    pub coverage: Coverage,
    /// Per shape: its oracle rows after each commit that changed them.
    timelines: Vec<Vec<(Lsn, OracleRows)>>,
    /// Simulated time of each commit.
    commit_ms: BTreeMap<Lsn, u64>,
    /// Windows of simulated time in which a fault was active (end `None`:
    /// still open); latency is judged only outside them.
    faults: Vec<(u64, Option<u64>)>,
    /// Latency bound (milliseconds), `None` when latency is not judged.
    latency_bound_ms: Option<u64>,
    /// Per shape: its table, selected columns, WHERE and replica mode.
    views: Vec<ShapeView>,
}

pub type SharedChecker = Arc<Mutex<Checker>>;

use crate::host::now_ms;

impl Checker {
    pub fn new(
        trace: SharedTrace,
        pg: PgModel,
        shapes: Vec<ShapeSpec>,
        latency_bound_ms: Option<u64>,
        drops_subqueries: bool,
    ) -> Checker {
        let views: Vec<ShapeView> = shapes.iter().map(|s| ShapeView::new(&pg, s)).collect();
        let timelines = views
            .iter()
            .map(|v| vec![(pg.last_lsn(), rows::persistent(v.query(&pg)))])
            .collect();
        let latest_handle = vec![None; shapes.len()];
        let mut coverage = Coverage::default();
        for view in views.iter().filter(|v| v.depth > 0) {
            coverage.subquery(&format!("shapes_depth_{}", view.depth.min(3)));
        }
        let open_txns = (0..shapes.len()).map(|_| None).collect();
        Checker {
            drops_subqueries,
            open_txns,
            views,
            trace,
            verdict: Arc::default(),
            pg,
            latest_handle,
            handles: BTreeMap::new(),
            handle_shape: BTreeMap::new(),
            run: RunState::default(),
            requested: BTreeSet::new(),
            declined_explained: BTreeSet::new(),
            unrestored: BTreeSet::new(),
            io_faulted: BTreeSet::new(),
            write_faulted: BTreeSet::new(),
            last_io_fault_ms: None,
            postgres_cuts: Vec::new(),
            last_removal: None,
            created_lagging: BTreeSet::new(),
            removing: BTreeSet::new(),
            snapshotting: BTreeSet::new(),
            coverage,
            timelines,
            commit_ms: BTreeMap::new(),
            // The first boot is a fault window until it caught up.
            faults: vec![(0, None)],
            latency_bound_ms,
        }
    }

    fn fail(&self, check: &str, message: String, handle: Option<&str>) {
        let shape = handle.and_then(|h| self.handle_shape.get(h).copied());
        let failure = Failure::new(check, message, shape, &self.trace);
        record(
            &self.trace,
            format_args!("checker: {check}: {}", failure.message),
        );
        self.verdict.fail(failure);
    }

    /// The oracle's rows for shape `index` now.
    pub fn oracle_now(&self, index: usize) -> OracleRows {
        self.timelines[index]
            .last()
            .expect("a timeline starts with the seed")
            .1
            .clone()
    }

    /// The oracle's rows for shape `index` as of `lsn`.
    fn oracle_at(&self, index: usize, lsn: Lsn) -> OracleRows {
        let timeline = &self.timelines[index];
        let i = timeline.partition_point(|(l, _)| *l <= lsn);
        timeline[i.saturating_sub(1)].1.clone()
    }

    // ----- harness observations -------------------------------------------

    /// A transaction committed in the Postgres model now: each shape's
    /// oracle rows move on by its changes (the old row leaves, the new one
    /// enters if the shape's WHERE holds for it).
    pub fn committed(&mut self, txn: &Transaction) {
        self.commit_ms.insert(txn.commit_lsn, now_ms());
        for index in 0..self.views.len() {
            let view = &self.views[index];
            let inner_changed = txn
                .changes
                .iter()
                .any(|c| *c.table() != view.table && view.depends_on(c.table()));
            let current = if view.depth > 0 && (inner_changed || view.self_referencing) {
                // A subquery shape's rows move with its inner tables too.
                self.requeried(index, txn)
            } else {
                // Only the rows this commit wrote can have moved.
                self.applied(index, txn)
            };
            if let Some(current) = current {
                let view = &self.views[index];
                debug_assert!(
                    rows::same(&view.query(&self.pg), &current),
                    "the oracle's rows after a commit agree with a full query"
                );
                if current != self.oracle_now(index) {
                    self.timelines[index].push((txn.commit_lsn, current));
                }
            }
        }
    }

    /// Shape `index`'s rows after `txn`, by a query of the committed rows
    /// (`None`: the commit touched none of its tables).
    fn requeried(&self, index: usize, txn: &Transaction) -> Option<OracleRows> {
        let view = &self.views[index];
        if !txn.changes.iter().any(|c| view.depends_on(c.table())) {
            return None;
        }
        let written: BTreeSet<String> = txn
            .changes
            .iter()
            .filter(|c| *c.table() == view.table)
            .flat_map(|c| sides(c))
            .flatten()
            .map(|row| view.key(row))
            .collect();
        Some(view.requery(&self.pg, &self.oracle_now(index), &written))
    }

    /// Shape `index`'s rows after `txn`, from its rows before and the rows
    /// `txn` wrote to its table (`None`: the commit moved none of them).
    /// Only for a shape whose rows no other row decides: one without
    /// subqueries, or one whose subqueries read tables `txn` left alone.
    fn applied(&self, index: usize, txn: &Transaction) -> Option<OracleRows> {
        let view = &self.views[index];
        let previous = self.oracle_now(index);
        let changes: Vec<[Option<&Row>; 2]> = txn
            .changes
            .iter()
            .filter(|c| *c.table() == view.table)
            .map(sides)
            .collect();
        // Whether each change's new row is in the shape (one evaluation
        // of any subquery for all of them).
        let held = view.hold(
            &self.pg,
            changes.iter().filter_map(|[_, new]| new.map(Vec::as_slice)),
        );
        let mut held = held.into_iter();
        let news: Vec<Option<&Row>> = changes
            .iter()
            .map(|[_, new]| new.filter(|_| held.next().expect("one per new row")))
            .collect();
        let touched = changes.iter().zip(&news).any(|([old, _], new)| {
            new.is_some() || old.is_some_and(|row| previous.contains_key(&view.key(row)))
        });
        if !touched {
            return None;
        }
        let mut current = previous;
        for ([old, _], new) in changes.iter().zip(news) {
            if let Some(old) = old {
                current.remove(&view.key(old));
            }
            if let Some(new) = new {
                current.insert(view.key(new), Arc::new(view.render(new)));
            }
        }
        Some(current)
    }

    /// A table's definition changed at `lsn` (a column added): the shapes on
    /// it follow the new definition, and their rows as of `lsn` carry the
    /// new column (NULL).
    pub fn altered(&mut self, table: &engine::schema::TableName, lsn: Lsn) {
        let now = now_ms();
        self.commit_ms.insert(lsn, now);
        // Its clients get 409 and refetch: a fault window for latency.
        self.faults.push((now, Some(now)));
        for index in 0..self.views.len() {
            if self.views[index].table != *table {
                continue;
            }
            self.views[index].refresh(&self.pg);
            let rows = rows::persistent(self.views[index].query(&self.pg));
            if rows != self.oracle_now(index) {
                self.timelines[index].push((lsn, rows));
            }
        }
    }

    /// The engine was killed (`lossy`: without a clean shutdown). What the
    /// metadata database did not hold durably is lost.
    pub fn killed(&mut self, lossy: bool) {
        self.faults.push((now_ms(), None));
        let paths = &mut self.coverage.paths;
        paths.created_while_ack_lags += std::mem::take(&mut self.created_lagging).len() as u64;
        paths.killed_before_removal_durable += std::mem::take(&mut self.removing).len() as u64;
        self.snapshotting.clear();
        if !lossy {
            return;
        }
        for state in self.handles.values_mut().filter(|s| s.fate.is_none()) {
            let lost = if !state.in_db {
                RemovalReason::MetadataLost
            } else if !state.complete_in_db {
                RemovalReason::SnapshotIncomplete
            } else {
                continue;
            };
            state.fate = Some(Fate::Lost(lost));
            state.explained = true;
        }
    }

    /// A graceful shutdown began: a fault window until the next run caught up.
    pub fn shutdown_started(&mut self) {
        self.faults.push((now_ms(), None));
        self.coverage.paths.snapshot_in_progress_at_shutdown += self.snapshotting.len() as u64;
    }

    /// A partition of either link from `start_ms` to `end_ms`.
    pub fn partitioned(&mut self, start_ms: u64, end_ms: u64, postgres: bool) {
        self.faults.push((start_ms, Some(end_ms)));
        if postgres {
            self.postgres_cuts.push((start_ms, end_ms));
        }
    }

    /// Whether an injected I/O error or a cut between the engine and
    /// Postgres touched `from..=now`: either can keep a graceful shutdown
    /// from finishing cleanly (a failed shape, a snapshot that cannot end).
    pub fn faulted_since(&self, from: u64) -> bool {
        let now = now_ms();
        self.last_io_fault_ms.is_some_and(|at| at >= from)
            || self
                .postgres_cuts
                .iter()
                .any(|&(s, e)| s <= now && e >= from)
    }

    /// The harness asks the engine to remove this handle.
    pub fn removal_requested(&mut self, handle: &str) {
        self.requested.insert(handle.to_string());
    }

    /// Whether I/O errors were injected into `handle`'s files.
    pub fn io_faulted(&self, handle: &str) -> bool {
        self.io_faulted.contains(handle)
    }

    /// An I/O error was injected into `handle`'s files.
    pub fn io_injected(&mut self, handle: &str, op: super::faults::IoOp) {
        self.coverage.io_errors_injected += 1;
        self.io_faulted.insert(handle.to_string());
        if op != super::faults::IoOp::Read {
            self.write_faulted.insert(handle.to_string());
        }
        self.last_io_fault_ms = Some(now_ms());
    }

    /// The handle shape `index` was last served under, if any.
    pub fn latest_handle(&self, index: usize) -> Option<String> {
        self.latest_handle[index].clone()
    }

    // ----- the engine's events --------------------------------------------

    pub fn on_event(&mut self, event: &Event) {
        match event {
            Event::BootStarted { .. } => self.run = RunState::default(),
            Event::ShapeRestored { handle, .. } => self.restored(handle.as_str()),
            Event::BootDropped { handle, reason } => self.boot_dropped(handle.as_str(), reason),
            Event::ReplicationConnected {
                confirmed_lsn,
                wal_end_lsn,
            } => {
                if self.run.confirmed.is_some() {
                    self.coverage.paths.replication_reconnects += 1;
                }
                self.run.confirmed.get_or_insert(*confirmed_lsn);
                self.run.received = self.run.received.max(*confirmed_lsn);
                // Caught up once the last transaction at connect (not a
                // schema change, which is never routed) is routed.
                self.run.catch_up_to =
                    Some(self.pg.last_txn_at_or_below(*wal_end_lsn).unwrap_or(0));
                self.caught_up_maybe();
            }
            Event::ShapeCreated { handle } => {
                self.handle(handle.as_str());
                self.snapshotting.insert(handle.to_string());
                if self
                    .pg
                    .last_txn_lsn()
                    .is_some_and(|l| self.pg.slot_confirmed() < l)
                {
                    self.created_lagging.insert(handle.to_string());
                }
            }
            Event::SnapshotCompleted { handle, chunks, .. } => {
                self.snapshotting.remove(handle.as_str());
                self.coverage.paths.multi_chunk_snapshots += u64::from(*chunks > 1);
            }
            Event::ShapeRemoved { handle, reason } => self.removed(handle.as_str(), reason),
            Event::StorageRemoved { handle } => {
                self.run.pending.remove(handle.as_str());
                self.removing.remove(handle.as_str());
            }
            Event::TxnRouted { lsn, shapes } => self.routed(*lsn, shapes),
            Event::CaughtUp { wal_end } => self.caught_up(*wal_end),
            Event::TxnSkipped { handle, lsn, .. } => {
                let known = self
                    .run
                    .pending
                    .get_mut(handle.as_str())
                    .is_some_and(|p| p.remove(lsn));
                // A shape released at shutdown forgot what was routed to
                // it; one durable past it already retired it.
                let retired = self
                    .run
                    .durable_tx
                    .get(handle.as_str())
                    .is_some_and(|&tx| *lsn <= tx);
                if !known && !retired && !self.unrestored.contains(handle.as_str()) {
                    let why = format!("{handle} skipped lsn {lsn}, which was never routed to it");
                    self.fail("ack-contract", why, Some(handle.as_str()));
                }
            }
            Event::ShapeDurable { handle, offset } => self.durable(handle.as_str(), *offset),
            Event::Acknowledged { lsn } => self.acknowledged(*lsn),
            Event::MetadataWritten { changes } => self.metadata_written(changes),
            Event::CrashPointVisited { point } => self.coverage.point(*point).visited += 1,
            Event::MovedOut { .. } => self.coverage.subquery("move_outs"),
            Event::HoldReleased { handle } => {
                // Dropped at the next boot (accepted only for shapes that
                // are not plain ones clients hold): nothing it lacks is needed.
                self.run.pending.remove(handle.as_str());
                self.unrestored.insert(handle.to_string());
            }
            Event::MovedIn { rows, rule, .. } => {
                self.coverage.subquery("move_ins");
                self.coverage.subquery_add("move_in_rows", *rows as u64);
                self.coverage.subquery(match rule {
                    engine::env::events::SpliceRule::FirstInvisible => "splice_first_invisible",
                    engine::env::events::SpliceRule::ReachedQueryLsn => "splice_reached_query_lsn",
                });
            }
            Event::MaterializerRebuilt { .. } => self.coverage.subquery("materializers_rebuilt"),
            Event::ViewCaughtUp {
                outer_through,
                inner_through,
                moves,
                ..
            } => {
                self.coverage.subquery("restored_views");
                if outer_through != inner_through {
                    self.coverage.subquery("restored_inner_outer_apart");
                }
                self.coverage.subquery_add("restore_moves", *moves as u64);
            }
            Event::MoveInSuspended { .. } => self.coverage.subquery("move_ins_suspended"),
            Event::RemovalDeclined { handle, reason } => {
                self.coverage.subquery("teardown_removals_declined");
                if self.accepted(handle.as_str(), reason) {
                    self.declined_explained.insert(handle.to_string());
                }
            }
            Event::LogTrimmed { .. }
            | Event::ForeignDirRemoved { .. }
            | Event::Ready
            | Event::SnapshotStarted { .. }
            | Event::ShutdownStarted
            | Event::ShutdownFinished { .. } => {}
        }
    }

    fn metadata_written(&mut self, changes: &[MetaChange]) {
        for change in changes {
            match change {
                MetaChange::Added(h) => self.handle(h.as_str()).in_db = true,
                MetaChange::SnapshotCompleted(h) => self.handle(h.as_str()).complete_in_db = true,
                MetaChange::Removed(h) => {
                    let state = self.handle(h.as_str());
                    state.in_db = false;
                    state.complete_in_db = false;
                }
            }
        }
    }

    fn handle(&mut self, handle: &str) -> &mut HandleState {
        self.handles.entry(handle.to_string()).or_default()
    }
}

/// A change's old and new row (either may be absent).
fn sides(change: &Change) -> [Option<&Row>; 2] {
    match change {
        Change::Insert { new, .. } => [None, Some(new)],
        Change::Update { old, new, .. } => [Some(old), Some(new)],
        Change::Delete { old, .. } => [Some(old), None],
    }
}

/// The engine's event sink in the simulator: every event goes into the
/// trace (and its hash) and to the state checker.
pub struct CheckedEvents {
    pub checker: SharedChecker,
    pub trace: SharedTrace,
}

impl EventSink for CheckedEvents {
    fn emit(&self, event: Event) {
        record(&self.trace, format_args!("engine: {event}"));
        crate::harness::timeline::draw_engine_event(&self.trace, &event);
        lock(&self.checker).on_event(&event);
    }
}

pub fn lock(checker: &SharedChecker) -> MutexGuard<'_, Checker> {
    checker.lock().expect("checker")
}
