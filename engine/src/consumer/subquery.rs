//! The consumer of a subquery shape (an outer shape): it routes whole
//! transactions itself, judged with its own views of its dependencies,
//! and turns its dependencies' moves into `move-out` events and spliced
//! move-ins (`move_in.rs`; ARCHITECTURE.md, "Serving subquery shapes").
//!
//! Its views are its own state: they start from what each inner shape
//! published when this shape subscribed (a restored shape: from the state
//! its metadata recorded, caught up with each inner shape by moves) and
//! change only by moves it applies, never by reading a materializer.
//! What it claims, and when, is `claims.rs`'s.

use super::inner::{DepMoves, feed, inner_changes, tell_taken};
use super::restore::CatchUp;
use super::{Consumer, Stop};
use crate::env::Event;
use crate::env::events::SkipReason;
use crate::handle::ShapeHandle;
use crate::log::{LogEntry, Operation, OuterState};
use crate::moves::Tuple;
use crate::moves::materializer::{InnerChange, MoveEvents, RowMeta};
use crate::moves::queue::{MoveBatch, MoveKind, MoveQueue};
use crate::offset::LogOffset;
use crate::replication::{Lsn, Transaction, Xid};
use crate::router::{self, Tagging};
use crate::schema::{TableName, Value};
use crate::shape::dnf::DnfPlan;
use crate::shape::tags::{self, View};
use crate::wire::{self, RowTags};
use futures::channel::oneshot;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The stack id in tag hashes (Electric's default).
pub const STACK_ID: &str = "single_stack";

/// Transactions a move-in may buffer before the shape is removed
/// (Electric's `subquery_buffer_max_transactions`).
pub const MOVE_IN_BUFFER_LIMIT: usize = 1_000;

/// An outer consumer's own state.
pub(crate) struct Outer {
    /// The inner shapes, in plan order.
    pub(super) deps: Vec<ShapeHandle>,
    pub(super) dep_tables: Vec<BTreeSet<TableName>>,
    /// Per dependency: the value tuples this shape has applied.
    pub views: Vec<View>,
    pub(super) queue: MoveQueue,
    /// Per dependency: how far its moves have arrived, and how far they
    /// must have for this shape to be consistent.
    pub(super) dep_through: Vec<Lsn>,
    pub(super) dep_needed: Vec<Lsn>,
    /// The last transaction processed (applied or skipped), and its xid.
    pub(super) processed: Lsn,
    pub(super) last_xid: Xid,
    /// The highest `cause` of the dependency moves received, and of those
    /// applied: the shape is consistent only once it has processed that far.
    pub(super) seen_cause: Lsn,
    pub(super) applied_cause: Lsn,
    /// Per dependency, while a restored shape follows it up to the
    /// position its state recorded (`None` once caught up, and for a new
    /// shape).
    pub(super) catch_up: Vec<Option<CatchUp>>,
}

impl Outer {
    pub fn new(deps: Vec<ShapeHandle>, dep_tables: Vec<BTreeSet<TableName>>) -> Outer {
        assert_eq!(deps.len(), dep_tables.len(), "one table set per dependency");
        let n = deps.len();
        Outer {
            deps,
            dep_tables,
            views: vec![View::default(); n],
            queue: MoveQueue::default(),
            dep_through: vec![0; n],
            dep_needed: vec![0; n],
            processed: 0,
            last_xid: 0,
            seen_cause: 0,
            applied_cause: 0,
            catch_up: vec![None; n],
        }
    }

    /// A restored shape resumes from `state` (written with its durable
    /// offset), having processed everything up to `processed`. Each view
    /// is followed by a catch-up with its dependency.
    pub fn resume(&mut self, state: &OuterState, processed: Lsn) {
        self.views = state
            .views
            .iter()
            .map(|v| View::new(v.iter().cloned()))
            .collect();
        self.dep_needed = (state.dep_through.iter().zip(&state.dep_needed))
            .map(|(&through, &needed)| through.max(needed))
            .collect();
        self.processed = processed;
        // Moves applied before their cause was processed: a claim waits
        // for that cause again (it is delivered again: it is past
        // `processed`).
        self.applied_cause = state.applied_cause;
        self.seen_cause = state.applied_cause;
        self.catch_up = state
            .dep_through
            .iter()
            .map(|&target| Some(CatchUp::new(target)))
            .collect();
    }

    /// The state to write with the log (the claim is the consumer's).
    pub fn state(&self) -> OuterState {
        let dep_through = (0..self.deps.len())
            .map(|d| match &self.catch_up[d] {
                Some(catch_up) => catch_up.target,
                None => self.dep_through[d],
            })
            .collect();
        OuterState {
            views: self
                .views
                .iter()
                .map(|v| v.tuples().cloned().collect())
                .collect(),
            dep_through,
            dep_needed: self.dep_needed.clone(),
            processed: self.processed,
            applied_cause: self.applied_cause,
            claim: None,
        }
    }

    /// The last transaction processed.
    pub fn processed(&self) -> Lsn {
        self.processed
    }

    /// Whether dependency `d` is still being caught up with.
    pub fn catching_up(&self, d: usize) -> bool {
        self.catch_up[d].is_some()
    }

    /// Planted `outer-view-from-materializer`: no catch-up; the view is
    /// taken from what the dependency publishes.
    pub fn forget_state(&mut self, d: usize) {
        self.catch_up[d] = None;
    }

    /// Dependency `d` subscribed with what it had `published`: the view
    /// starts there, and the shape reflects no earlier state than it.
    /// It must vouch for everything it was sent (up to `sent`).
    pub fn start_from(&mut self, d: usize, published: super::Published, sent: Lsn) {
        if let Some(catch_up) = &mut self.catch_up[d] {
            // A restored shape keeps its own view, and follows the inner
            // shape from here.
            catch_up.values = Some(published.values.into_iter().collect());
            catch_up.through = published.through;
            catch_up.cause = published.cause;
            catch_up.inner_at_subscribe = published.through;
            self.dep_needed[d] = self.dep_needed[d].max(sent);
            return;
        }
        self.views[d] = View::new(published.values);
        self.dep_through[d] = published.through;
        self.dep_needed[d] = self.dep_needed[d].max(sent);
        self.applied_cause = self.applied_cause.max(published.cause);
    }

    /// The snapshot was taken at `wal_lsn`: its rows reflect every
    /// transaction up to there (those still to come are skipped).
    pub fn snapshot_taken(&mut self, wal_lsn: Lsn) {
        self.processed = self.processed.max(wal_lsn);
    }

    /// What this shape's own moves reflect at most (see [`DepMoves::cause`]).
    pub fn cause(&self) -> Lsn {
        self.processed.max(self.seen_cause)
    }
}

impl Consumer {
    pub(super) fn outer(&mut self) -> &mut Outer {
        self.outer.as_mut().expect("a subquery shape's consumer")
    }

    pub(super) fn plan(&self) -> &DnfPlan {
        self.entry
            .shape
            .plan()
            .expect("a subquery shape has a plan")
    }

    /// The snapshot query's WHERE: the clause as written for a plain
    /// shape; for a subquery shape, with its views' values (its rows then
    /// agree with its views by construction).
    pub(super) fn snapshot_where(&self) -> Option<String> {
        let where_clause = self.entry.shape.where_clause.as_ref()?;
        Some(match &self.outer {
            None => where_clause.expr.to_string(),
            Some(outer) => crate::moves::query::where_with_views(self.plan(), &outer.views),
        })
    }

    /// Tags and active conditions of `row` under the current views.
    pub(super) fn row_tags(&self, row: &[Value]) -> Option<RowTags> {
        let outer = self.outer.as_ref()?;
        let plan = self.plan();
        Some(RowTags {
            tags: tags::tags(plan, STACK_ID, self.entry.handle.as_str(), row),
            active_conditions: tags::active_conditions(plan, &outer.views, row),
            removed_tags: None,
        })
    }

    /// The materializer's metadata of a row of this (nested inner) shape.
    pub(super) fn row_meta(&self, row: &[Value]) -> Option<RowMeta> {
        self.row_tags(row).map(|t| RowMeta {
            tags: t.tags,
            active: t.active_conditions,
        })
    }

    /// A whole transaction, in steady state.
    pub(super) async fn outer_txn(
        &mut self,
        txn: Arc<Transaction>,
        taken: Option<oneshot::Sender<()>>,
    ) -> Result<(), Stop> {
        self.received(&txn);
        self.apply_outer_txn(&txn).await?;
        tell_taken(taken);
        self.drain_moves().await
    }

    pub(super) fn received(&mut self, txn: &Transaction) {
        assert!(
            txn.commit_lsn > self.last_received,
            "transactions reach {} out of order",
            self.entry.handle
        );
        self.last_received = txn.commit_lsn;
    }

    /// Writes `txn` judged with the current views (or skips it), feeds the
    /// materializer and publishes its moves.
    pub(super) async fn apply_outer_txn(&mut self, txn: &Transaction) -> Result<(), Stop> {
        let lsn = txn.commit_lsn;
        if lsn <= self.replayed_through {
            // A restored shape's durable state already reflects it.
            self.skipped(lsn, SkipReason::Replayed);
            return Ok(());
        }
        // Its dependencies must vouch for it either way: the views must
        // reflect it before this shape claims anything at or past it.
        let outer = self.outer.as_mut().expect("a subquery shape");
        for (d, tables) in outer.dep_tables.iter().enumerate() {
            if txn.changes.iter().any(|c| tables.contains(c.table())) {
                outer.dep_needed[d] = outer.dep_needed[d].max(lsn);
            }
        }
        // Processed from here on: the state its commit records says so.
        outer.processed = outer.processed.max(lsn);
        outer.last_xid = txn.xid;
        if self.in_snapshot(txn.xid) {
            self.skipped(lsn, SkipReason::InSnapshot);
        } else if !self.write_outer_txn(txn).await? {
            self.skipped(lsn, SkipReason::NothingToWrite);
        }
        self.publish(vec![txn.xid], lsn).await;
        Ok(())
    }

    /// Routes and appends `txn` with the current views; whether it wrote.
    async fn write_outer_txn(&mut self, txn: &Transaction) -> Result<bool, Stop> {
        let shape = self.entry.shape.clone();
        let where_clause = shape.where_clause.as_ref().expect("a subquery shape");
        let outer = self.outer.as_ref().expect("a subquery shape");
        let tagging = Tagging {
            plan: self.plan(),
            clause: &where_clause.expr,
            views: &outer.views,
            stack_id: STACK_ID,
            handle: self.entry.handle.as_str(),
        };
        let part = router::route_tagged(&shape, txn, &tagging);
        if self.materializer.is_some() {
            let includes = |row: &[Value]| tagging.includes(row);
            let meta = |row: &[Value]| self.row_meta(row);
            let changes = inner_changes(&shape, txn, &includes, &meta);
            if let Some(materializer) = &mut self.materializer {
                feed(materializer, &self.entry.handle, changes);
            }
        }
        let Some(part) = part else {
            return Ok(false);
        };
        for entry in part.entries {
            self.writer.append(entry).await?;
        }
        self.txn_end = self.writer.last_appended();
        self.commit()?;
        Ok(true)
    }

    pub(super) fn commit(&mut self) -> Result<(), Stop> {
        self.writer.commit()?;
        self.save_state();
        self.entry.changed.notify(usize::MAX);
        Ok(())
    }

    /// Records the shape's state with its last commit: the metadata write
    /// that makes the commit durable carries it (see `OuterState`).
    pub(super) fn save_state(&mut self) {
        let Some(outer) = &self.outer else {
            return;
        };
        let mut state = outer.state();
        state.claim = self.claims.made;
        self.writer.set_outer_state(state);
    }

    /// A dependency's moves: noted, and queued (every one: they are changes
    /// from what the dependency published when this shape subscribed).
    pub(super) fn on_moves(&mut self, moves: DepMoves) {
        let outer = self.outer();
        let d = outer
            .deps
            .iter()
            .position(|h| *h == moves.dependency)
            .expect("moves come only from a dependency");
        if let Some(catch_up) = &mut outer.catch_up[d] {
            catch_up.follow(&moves.events, moves.through, moves.cause);
            catch_up.xids.extend(moves.xids.iter().copied());
            self.try_catch_up(d);
            return;
        }
        outer.dep_through[d] = outer.dep_through[d].max(moves.through);
        outer.seen_cause = outer.seen_cause.max(moves.cause);
        if moves.events.is_empty() {
            return;
        }
        outer.applied_cause = outer.applied_cause.max(moves.cause);
        let view = &outer.views[d];
        outer.queue.enqueue(d, &moves.events, view, &moves.xids);
    }

    /// Ends dependency `d`'s catch-up once the inner shape has reached the
    /// position this shape's state recorded: the difference between what
    /// it holds there (or later) and this shape's view is queued as moves.
    pub(super) fn try_catch_up(&mut self, d: usize) {
        let outer = self.outer.as_mut().expect("a subquery shape");
        if !outer.catch_up[d].as_ref().is_some_and(CatchUp::caught_up) {
            return;
        }
        let catch_up = outer.catch_up[d].take().expect("caught up");
        let values = catch_up.values.expect("caught up after subscribing");
        let view = &outer.views[d];
        let events = MoveEvents {
            move_in: values
                .iter()
                .filter(|t| !view.contains(t))
                .cloned()
                .collect(),
            move_out: view
                .tuples()
                .filter(|t| !values.contains(*t))
                .cloned()
                .collect(),
        };
        outer.dep_through[d] = outer.dep_through[d].max(catch_up.through);
        outer.seen_cause = outer.seen_cause.max(catch_up.cause);
        let moves = events.move_in.len() + events.move_out.len();
        if moves > 0 {
            outer.applied_cause = outer.applied_cause.max(catch_up.cause);
            let xids: Vec<Xid> = catch_up.xids.into_iter().collect();
            outer.queue.enqueue(d, &events, view, &xids);
        }
        self.ctx.env.emit(Event::ViewCaughtUp {
            handle: self.entry.handle.clone(),
            dependency: d,
            outer_through: catch_up.target,
            inner_through: catch_up.inner_at_subscribe,
            moves,
        });
    }

    /// Applies queued moves until the queue is empty.
    pub(super) async fn drain_moves(&mut self) -> Result<(), Stop> {
        while let Some(batch) = self.outer().queue.pop_next() {
            let polarity = self.plan().dependency_polarities[batch.dependency];
            match batch.kind.for_outer(polarity) {
                MoveKind::Out => self.move_out(batch).await?,
                MoveKind::In => self.move_in(batch).await?,
            }
        }
        Ok(())
    }

    /// Changes the view of `batch`'s dependency as the batch says.
    pub(super) fn change_view(&mut self, batch: &MoveBatch) {
        let view = &mut self.outer().views[batch.dependency];
        for tuple in &batch.tuples {
            let changed = match batch.kind {
                MoveKind::In => view.insert(tuple.clone()),
                MoveKind::Out => view.remove(tuple),
            };
            assert!(
                changed,
                "the move queue hands out only moves the view lacks"
            );
        }
    }

    /// `{pos, value}` patterns: every position of the dependency, every tuple.
    pub(super) fn patterns(&self, dependency: usize, tuples: &[Tuple]) -> Vec<(usize, String)> {
        let plan = self.plan();
        let handle = self.entry.handle.as_str();
        let mut out = Vec::new();
        for &position in &plan.dependency_positions[dependency] {
            for tuple in tuples {
                out.push((
                    position,
                    tags::pattern(plan, STACK_ID, handle, position, tuple),
                ));
            }
        }
        out
    }

    /// Where a control event or a moved-in row goes: just after the last
    /// record (Electric's `increment(last_seen_offset)`); before any
    /// record, at the snapshot's WAL position, where no transaction that
    /// is not skipped can sit.
    pub(super) fn next_offset(&self) -> LogOffset {
        match self.writer.last_appended() {
            Some(last) => last.increment(),
            None => {
                let wal = self
                    .visibility
                    .as_ref()
                    .expect("after the snapshot")
                    .wal_lsn;
                assert!(
                    wal > 0,
                    "a snapshot of an empty WAL has no place for events"
                );
                LogOffset::new(wal, 0)
            }
        }
    }

    pub(super) async fn append_control(&mut self, json: String) -> Result<(), Stop> {
        let entry = LogEntry {
            offset: self.next_offset(),
            operation: Operation::Control,
            key: String::new(),
            json,
        };
        self.writer.append(entry).await?;
        Ok(())
    }

    /// A nested inner shape's own move event, for its materializer.
    pub(super) fn feed_move(&mut self, kind: MoveKind, patterns: &[(usize, String)]) {
        if let Some(materializer) = &mut self.materializer {
            let change = InnerChange::Move {
                kind,
                patterns: patterns.to_vec(),
            };
            feed(materializer, &self.entry.handle, vec![change]);
        }
    }

    async fn move_out(&mut self, batch: MoveBatch) -> Result<(), Stop> {
        self.change_view(&batch);
        let patterns = self.patterns(batch.dependency, &batch.tuples);
        // Planted `move-out-not-written`: the view moves, the log does not.
        if !crate::planted!(self.ctx.config, move_out_not_written) {
            let event = wire::move_event(MoveKind::Out, &patterns, &batch.txids);
            self.append_control(event).await?;
            self.commit()?;
        }
        self.feed_move(MoveKind::Out, &patterns);
        self.ctx.env.emit(Event::MovedOut {
            handle: self.entry.handle.clone(),
            dependency: batch.dependency,
            values: batch.tuples.len(),
        });
        let through = self.outer().processed;
        self.publish(batch.txids.clone(), through).await;
        Ok(())
    }
}
