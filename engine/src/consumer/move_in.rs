//! A subquery shape's move-in (ARCHITECTURE.md, "Serving subquery
//! shapes", 4): the view changes, the move-in query runs while whole
//! transactions are held back, and the rows are spliced at the boundary;
//! a graceful drain meeting one suspends it for the next boot.

use super::inner::{feed, tell_taken};
use super::subquery::MOVE_IN_BUFFER_LIMIT;
use super::{Consumer, ConsumerMsg, Stop};
use crate::env::Event;
use crate::env::events::{ConsumerFailure, RemovalReason, SpliceRule};
use crate::log::{LogEntry, Operation};
use crate::moves::materializer::InnerChange;
use crate::moves::query::move_in_where;
use crate::moves::queue::{MoveBatch, MoveKind};
use crate::moves::splice::{Boundary, BoundaryRule};
use crate::replication::{SnapshotQuery, SnapshotResult, Transaction};
use crate::shape::tags::View;
use crate::wire;
use futures::StreamExt;
use futures::channel::mpsc::TryRecvError;
use futures::channel::oneshot;
use futures::future::{self, Either};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A move-in in flight: the transactions it holds back and its boundary.
#[derive(Default)]
struct MoveIn {
    held: Vec<Arc<Transaction>>,
    boundary: Boundary,
}

impl Consumer {
    /// A move-in: the query, the buffering, the splice.
    pub(super) async fn move_in(&mut self, batch: MoveBatch) -> Result<(), Stop> {
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
            let value = wire::RowValues::new(table, row, shape.selected.iter().copied());
            let json = wire::move_in_row(table, &key, &value, &tags);
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
}
