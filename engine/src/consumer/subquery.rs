//! The consumer of a subquery shape (an outer shape): it routes whole
//! transactions itself, judged with its own views of its dependencies,
//! and turns its dependencies' moves into `move-out` events and spliced
//! move-ins (ARCHITECTURE.md, "Serving subquery shapes").
//!
//! Its views are its own state: taken from its snapshot (in the same
//! Postgres snapshot as its rows) and changed only by moves it applies,
//! never read from a materializer. A move made by a transaction its
//! snapshot sees is skipped, as that transaction's changes are.
//!
//! What it may claim: the log up to the claimed offset holds exactly the
//! shape's rows as of the claimed LSN. It claims only when steady (no move
//! queued, no move-in in flight), when every dependency has vouched for
//! every transaction it received that touches the dependency's tables (a
//! dependency sends a transaction's moves before or with its vouching, so
//! they have been applied), and when it has processed the transaction each
//! applied move reflects; the flush tracker hears "applied" only then, so
//! `global_last_seen_lsn` never names an LSN whose moves it has not
//! applied.

use super::inner::{DepMoves, feed, inner_changes, tell_taken};
use super::restore::CatchUp;
use super::{Consumer, ConsumerMsg, Stop};
use crate::env::Event;
use crate::env::events::{ConsumerFailure, RemovalReason, SkipReason, SpliceRule};
use crate::handle::ShapeHandle;
use crate::log::{LogEntry, Operation, OuterState};
use crate::moves::Tuple;
use crate::moves::materializer::{InnerChange, MoveEvents, RowMeta};
use crate::moves::query::move_in_where;
use crate::moves::queue::{MoveBatch, MoveKind, MoveQueue};
use crate::moves::splice::{Boundary, BoundaryRule};
use crate::offset::LogOffset;
use crate::replication::{Lsn, SnapshotQuery, SnapshotResult, Transaction, Xid};
use crate::router::{self, Tagging};
use crate::schema::{TableName, Value};
use crate::shape::dnf::DnfPlan;
use crate::shape::tags::{self, View};
use crate::wire::{self, RowTags};
use futures::StreamExt;
use futures::channel::mpsc::TryRecvError;
use futures::channel::oneshot;
use futures::future::{self, Either};
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The stack id in tag hashes (Electric's default).
pub const STACK_ID: &str = "single_stack";

/// Transactions a move-in may buffer before the shape is removed
/// (Electric's `subquery_buffer_max_transactions`).
pub const MOVE_IN_BUFFER_LIMIT: usize = 1_000;

/// An outer consumer's own state.
pub(crate) struct Outer {
    /// The inner shapes, in plan order.
    deps: Vec<ShapeHandle>,
    dep_tables: Vec<BTreeSet<TableName>>,
    /// Per dependency: the value tuples this shape has applied.
    pub views: Vec<View>,
    queue: MoveQueue,
    /// Per dependency: how far its moves have arrived, and how far they
    /// must have for this shape to be consistent.
    dep_through: Vec<Lsn>,
    dep_needed: Vec<Lsn>,
    /// The last transaction processed (applied or skipped), and its xid.
    processed: Lsn,
    last_xid: Xid,
    /// The highest `cause` of the dependency moves received, and of those
    /// applied: the shape is consistent only once it has processed that far.
    seen_cause: Lsn,
    applied_cause: Lsn,
    /// Per dependency, while a restored shape follows it up to the
    /// position its state recorded (`None` once caught up, and for a new
    /// shape).
    catch_up: Vec<Option<CatchUp>>,
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

/// A subquery shape's claims. A claim is served only once the metadata
/// records it (written with the next flush): a restore resumes from the
/// recorded claim, so a client never holds rows of a claim a restart could
/// take back, nor sees the claim go backwards.
#[derive(Debug, Default)]
pub(super) struct Claims {
    /// The last claim made (recorded or not).
    pub made: Option<(LogOffset, Lsn)>,
}

impl Claims {
    fn make(&mut self, offset: LogOffset, lsn: Lsn) {
        self.made = Some((offset, lsn));
    }

    /// The LSN of the last claim made (0 before any).
    pub fn lsn(&self) -> Lsn {
        self.made.map_or(0, |(_, lsn)| lsn)
    }

    /// A claim restored at boot (recorded by construction).
    pub fn restored(&mut self, claim: Option<(LogOffset, Lsn)>) {
        self.made = claim;
    }
}

impl Consumer {
    /// Serves the claim the metadata records, once it is newer.
    pub(super) fn promote_claims(&mut self) {
        let recorded = self.writer.meta().outer.as_ref().and_then(|o| o.claim);
        if let Some((offset, lsn)) = recorded
            && self.entry.claim() != Some((offset, lsn))
        {
            self.entry.set_claim(offset, lsn);
            self.entry.changed.notify(usize::MAX);
        }
    }
}

/// A move-in in flight: the transactions it holds back and its boundary.
#[derive(Default)]
struct MoveIn {
    held: Vec<Arc<Transaction>>,
    boundary: Boundary,
}

impl Consumer {
    fn outer(&mut self) -> &mut Outer {
        self.outer.as_mut().expect("a subquery shape's consumer")
    }

    fn plan(&self) -> &DnfPlan {
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

    fn received(&mut self, txn: &Transaction) {
        assert!(
            txn.commit_lsn > self.last_received,
            "transactions reach {} out of order",
            self.entry.handle
        );
        self.last_received = txn.commit_lsn;
    }

    /// Writes `txn` judged with the current views (or skips it), feeds the
    /// materializer and publishes its moves.
    async fn apply_outer_txn(&mut self, txn: &Transaction) -> Result<(), Stop> {
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

    fn commit(&mut self) -> Result<(), Stop> {
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
    fn change_view(&mut self, batch: &MoveBatch) {
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
    fn patterns(&self, dependency: usize, tuples: &[Tuple]) -> Vec<(usize, String)> {
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
    fn next_offset(&self) -> LogOffset {
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

    async fn append_control(&mut self, json: String) -> Result<(), Stop> {
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
    fn feed_move(&mut self, kind: MoveKind, patterns: &[(usize, String)]) {
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

    /// A move-in: the query, the buffering, the splice.
    async fn move_in(&mut self, batch: MoveBatch) -> Result<(), Stop> {
        let before = self.outer().views.clone();
        self.change_view(&batch);
        let after = self.outer().views.clone();
        let where_sql = move_in_where(self.plan(), batch.dependency, &before, &after);
        let query = SnapshotQuery {
            table: self.entry.shape.table.name.clone(),
            where_sql: Some(where_sql),
            dependencies: Vec::new(),
        };
        let mut state = MoveIn::default();
        let (result, at, rule) = match self.prepare_move_in(query, &mut state).await {
            Ok(ready) => ready,
            Err(Stop::Drain(reply)) => return self.suspend_move_in(before, state, reply).await,
            Err(stop) => return Err(stop),
        };
        // Planted `splice-at-wrong-boundary`: one transaction early.
        let at = match crate::planted!(self.ctx.config, splice_at_wrong_boundary) {
            true => at.saturating_sub(1),
            false => at,
        };
        let MoveIn { held, .. } = state;
        self.outer().views = before;
        for txn in &held[..at] {
            self.apply_outer_txn(txn).await?;
        }
        let rows = self.write_move_in(&batch, after, &result).await?;
        self.ctx
            .env
            .crash_point(crate::env::CrashPoint::MoveInSplice)
            .await;
        for txn in &held[at..] {
            self.apply_outer_txn(txn).await?;
        }
        self.commit()?;
        let rule = match rule {
            BoundaryRule::FirstInvisible => SpliceRule::FirstInvisible,
            BoundaryRule::ReachedQueryLsn => SpliceRule::ReachedQueryLsn,
        };
        self.ctx.env.emit(Event::MovedIn {
            handle: self.entry.handle.clone(),
            dependency: batch.dependency,
            values: batch.tuples.len(),
            rows,
            rule,
        });
        Ok(())
    }

    /// Takes in what waits, runs the query and waits for the boundary:
    /// the query's result and where to splice.
    async fn prepare_move_in(
        &mut self,
        query: SnapshotQuery,
        state: &mut MoveIn,
    ) -> Result<(SnapshotResult, usize, BoundaryRule), Stop> {
        // What waits in the inbox (from the snapshot) came before anything
        // the channel holds: it is taken in first.
        while let Some(msg) = self.inbox.pop_front() {
            self.during_move_in(msg, state).await?;
        }
        let result = self.move_in_query(query, state).await?;
        state.boundary.snapshot_known(result.visibility.clone());
        loop {
            if let Some((at, rule)) = state.boundary.get() {
                return Ok((result, at, rule));
            }
            self.wait_for_boundary(state).await?;
        }
    }

    /// A graceful drain came during a move-in, whose boundary may need
    /// transactions the stopped intake will never deliver: the held
    /// transactions are written with the views before the move, which
    /// stays unapplied (the state written with them says so, and the next
    /// boot re-derives it); then the consumer stops.
    async fn suspend_move_in(
        &mut self,
        before: Vec<View>,
        state: MoveIn,
        reply: oneshot::Sender<()>,
    ) -> Result<(), Stop> {
        self.outer().views = before;
        let held = state.held.len();
        for txn in &state.held {
            self.apply_outer_txn(txn).await?;
        }
        self.commit()?;
        self.ctx.env.emit(Event::MoveInSuspended {
            handle: self.entry.handle.clone(),
            held,
        });
        self.drain(reply).await?;
        Err(Stop::Shutdown)
    }

    /// The `move-in` event, the moved-in rows (tagged with the views
    /// after the move, which become the views) and, if there were rows,
    /// `snapshot-end`. Returns the number of rows.
    async fn write_move_in(
        &mut self,
        batch: &MoveBatch,
        after: Vec<View>,
        result: &SnapshotResult,
    ) -> Result<usize, Stop> {
        let patterns = self.patterns(batch.dependency, &batch.tuples);
        self.append_control(wire::move_event(MoveKind::In, &patterns, &batch.txids))
            .await?;
        self.feed_move(MoveKind::In, &patterns);
        self.outer().views = after;
        let shape = self.entry.shape.clone();
        let table = &shape.table;
        for row in &result.rows {
            let key = wire::row_key(table, row);
            let tags = self.row_tags(row).expect("a subquery shape");
            let value = wire::values(table, row, shape.selected.iter().copied());
            let json = wire::move_in_row(table, &key, value, &tags);
            let entry = LogEntry {
                offset: self.next_offset(),
                operation: Operation::Insert,
                key: key.clone(),
                json,
            };
            self.writer.append(entry).await?;
            if self.materializer.is_some() {
                let change = InnerChange::Insert {
                    key,
                    value: shape.tuple(row),
                    meta: self.row_meta(row),
                };
                if let Some(materializer) = &mut self.materializer {
                    feed(materializer, &self.entry.handle, vec![change]);
                }
            }
        }
        if !result.rows.is_empty() {
            self.append_control(wire::snapshot_end(&result.visibility))
                .await?;
        }
        let through = self.outer().processed;
        self.publish(batch.txids.clone(), through).await;
        Ok(result.rows.len())
    }

    /// Runs the move-in query (retried like the snapshot query) while
    /// messages are buffered.
    async fn move_in_query(
        &mut self,
        query: SnapshotQuery,
        state: &mut MoveIn,
    ) -> Result<SnapshotResult, Stop> {
        let config = self.ctx.config;
        let give_up_ms = self.ctx.env.clock.now_ms() + config.snapshot_timeout_ms;
        loop {
            let (postgres, query) = (self.ctx.postgres.clone(), query.clone());
            let attempt = async move { postgres.snapshot(query).await };
            match self.while_moving(attempt, state).await? {
                Ok(result) => return Ok(result),
                Err(e) if self.ctx.env.clock.now_ms() >= give_up_ms => {
                    return Err(Stop::Failed(RemovalReason::SnapshotGaveUp(e)));
                }
                Err(_) => {
                    let backoff = self.ctx.env.clock.sleep_ms(config.retry_backoff_ms);
                    self.while_moving(backoff, state).await?;
                }
            }
        }
    }

    /// Waits until the intake has delivered more (rule (b) of the
    /// boundary), first taking in everything already delivered.
    async fn wait_for_boundary(&mut self, state: &mut MoveIn) -> Result<(), Stop> {
        let delivered = self.ctx.delivered.clone();
        let listener = delivered.changed.listen();
        let lsn = delivered.lsn.load(Ordering::SeqCst);
        loop {
            match self.rx.try_recv() {
                Ok(msg) => self.during_move_in(msg, state).await?,
                Err(TryRecvError::Closed) => return Err(Stop::Removed),
                Err(TryRecvError::Empty) => break,
            }
        }
        state.boundary.reached(lsn);
        if state.boundary.get().is_some() {
            return Ok(());
        }
        self.while_moving(listener, state).await
    }

    /// Runs `work` while taking in what arrives (buffered, or queued).
    async fn while_moving<T>(
        &mut self,
        work: impl Future<Output = T>,
        state: &mut MoveIn,
    ) -> Result<T, Stop> {
        let mut work = pin!(work);
        loop {
            match future::select(work.as_mut(), self.rx.next()).await {
                Either::Left((value, _)) => return Ok(value),
                Either::Right((Some(msg), _)) => self.during_move_in(msg, state).await?,
                Either::Right((None, _)) => return Err(Stop::Removed),
            }
        }
    }

    async fn during_move_in(&mut self, msg: ConsumerMsg, state: &mut MoveIn) -> Result<(), Stop> {
        match msg {
            ConsumerMsg::Full(txn, taken) => {
                self.received(&txn);
                tell_taken(taken);
                let queued = state.held.len();
                if queued >= MOVE_IN_BUFFER_LIMIT {
                    let failure = ConsumerFailure::MoveInBacklog { queued };
                    return Err(Stop::Failed(RemovalReason::ConsumerFailed(failure)));
                }
                state.boundary.buffer(txn.xid);
                state.held.push(txn);
            }
            ConsumerMsg::Moves(moves) => self.on_moves(moves),
            ConsumerMsg::Drain(reply) => return Err(Stop::Drain(reply)),
            ConsumerMsg::Txn(_) => unreachable!("a subquery shape is sent whole transactions"),
        }
        Ok(())
    }

    /// Claims the log as the shape's rows as of the last transaction
    /// processed, if the shape is consistent (see the module doc); a nested
    /// inner shape then tells its subscribers how far it vouches.
    pub(super) async fn settle(&mut self) {
        let advanced = self.claim_if_consistent();
        if advanced && self.materializer.is_some() {
            let xid = self.outer().last_xid;
            self.publish(vec![xid], self.vouched()).await;
        }
    }

    /// Whether the intake has yet to route everything up to what this
    /// shape processed (its snapshot's position may be ahead of it).
    pub(super) fn undelivered(&self) -> bool {
        let delivered = self.ctx.delivered.lsn.load(Ordering::SeqCst);
        self.outer.as_ref().is_some_and(|o| delivered < o.processed)
    }

    /// Whether this shape waits for the intake to deliver more: to claim
    /// what it processed, or to pass its moves' cause.
    pub(super) fn awaits_delivery(&self) -> bool {
        let delivered = self.ctx.delivered.lsn.load(Ordering::SeqCst);
        self.outer
            .as_ref()
            .is_some_and(|o| delivered < o.processed.max(o.applied_cause))
    }

    /// Moves whose cause was never routed here (a restored inner shape
    /// publishes what it holds as of where replication resumed): once the
    /// intake has delivered past that cause and every transaction routed
    /// here is taken in, there is nothing between `processed` and it that
    /// concerns this shape, so it has processed that far.
    fn pass_unrouted(&mut self) {
        let delivered = self.ctx.delivered.lsn.load(Ordering::SeqCst);
        let routed = self.entry.last_routed.load(Ordering::SeqCst);
        let idle = routed <= self.last_received && self.inbox.is_empty();
        let outer = self.outer.as_mut().expect("a subquery shape");
        if idle && outer.processed < outer.applied_cause && delivered >= outer.applied_cause {
            outer.processed = outer.applied_cause;
        }
    }

    /// Whether the claim advanced.
    fn claim_if_consistent(&mut self) -> bool {
        self.pass_unrouted();
        let outer = self.outer.as_ref().expect("a subquery shape");
        let behind = (0..outer.deps.len())
            .any(|d| outer.catching_up(d) || outer.dep_through[d] < outer.dep_needed[d])
            || outer.processed < outer.applied_cause;
        // Moves still in the channel are for transactions past what the
        // dependencies vouched for, so they need not be awaited here. What
        // waits in the inbox (taken in during the snapshot) may be a
        // transaction at or below the snapshot's position whose moves the
        // views lack: it is taken in first.
        // A transaction routed here but not received yet may be at or
        // below what it processed (its snapshot's position), with moves
        // its dependencies have not sent yet.
        let routed = self.entry.last_routed.load(Ordering::SeqCst);
        let in_flight = routed > self.last_received && outer.processed > self.last_received;
        // A transaction at or below what it processed (a snapshot's
        // position) that the intake has not routed yet may change a
        // dependency this shape's views do not reflect.
        let undelivered = self.undelivered();
        if behind || in_flight || undelivered || !outer.queue.is_empty() || !self.inbox.is_empty() {
            return false;
        }
        let processed = outer.processed;
        let advanced = self.claims.made.is_none_or(|(_, lsn)| lsn < processed);
        let claim = (self.entry.reader.latest_offset(), processed);
        if self.claims.made != Some(claim) {
            self.claims.make(claim.0, claim.1);
            self.save_state();
        }
        self.promote_claims();
        // Applied: every transaction it was sent, up to what it reflects.
        let applied = processed.min(self.last_received);
        let advanced = advanced || applied > self.applied;
        if applied > self.applied {
            self.report_applied(applied);
        }
        self.report_flush();
        self.entry.changed.notify(usize::MAX);
        advanced
    }
}
