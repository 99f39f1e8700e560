//! One consumer per shape: the only writer of the shape's log.
//!
//! A new shape first takes its initial snapshot: the snapshot query runs while
//! transactions routed to the shape are buffered; the rows go into snapshot
//! chunks, then a `snapshot-end` control message. Afterwards, and from the
//! start for a restored shape, each routed transaction is
//! - skipped if it is a replay of what the log already holds (its last offset
//!   is at or below the log's last offset: the restart de-duplication of
//!   Electric #4668), or if the snapshot already reflects it (visibility);
//! - otherwise appended and committed, which wakes long-polling readers.
//!
//! After every transaction the consumer tells the flush tracker it applied
//! it, and after every transaction and flush up to which LSN it has made
//! everything it was sent durable. When its channel closes, the shape was
//! removed: the consumer deletes the storage (it owns the directory), and only
//! then releases the shape's hold on the acknowledged LSN.
//!
//! The consumer knows the stack only through [`Context`]: the environment, the
//! Postgres queries, the metadata database, the flush tracker and a
//! [`ShapeRemover`] to report its own failure. It reports what it does as
//! [`Event`]s.

use crate::env::events::{ConsumerFailure, RemovalReason, SkipReason};
use crate::env::{Env, Event, join};
use crate::flush_tracker::SharedTracker;
use crate::handle::ShapeHandle;
use crate::log::{LogError, Operation, ShapeLog, ShapeLogReader, ShapeLogWriter, SnapshotState};
use crate::metadata::ShapeDb;
use crate::offset::LogOffset;
use crate::replication::{Lsn, PostgresQueries, SnapshotQuery, SnapshotResult, Visibility};
use crate::router::ShapeTxn;
use crate::shape::Shape;
use crate::wire;
use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use futures::future::{self, Either};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Where shape logs live in storage: `shapes/<handle>`.
pub const SHAPES_DIR: &str = "shapes";

/// The directory a shape's consumer owns.
pub fn shape_dir(handle: &ShapeHandle) -> String {
    join(SHAPES_DIR, handle.as_str())
}

pub(crate) enum ConsumerMsg {
    Txn(ShapeTxn),
    /// Flush everything received, then reply (graceful shutdown).
    Drain(oneshot::Sender<()>),
}

pub(crate) enum Start {
    /// A new shape: take the snapshot first.
    New,
    /// A shape restored from storage at boot.
    Restored,
}

/// One live shape: what requests need to read it and the way to its consumer.
pub struct ShapeEntry {
    pub handle: ShapeHandle,
    pub shape: Arc<Shape>,
    pub reader: ShapeLogReader,
    pub(crate) tx: mpsc::Sender<ConsumerMsg>,
    /// Notified on new data, snapshot progress and removal.
    pub changed: event_listener::Event,
    removed: AtomicBool,
    /// The WAL position of the shape's snapshot (0 until it is known): the
    /// shape reflects a consistent state only once every transaction up to
    /// it has been applied.
    snapshot_lsn: AtomicU64,
    /// The `electric-schema` header of the shape's non-live responses,
    /// rendered once.
    pub schema_header: String,
}

impl ShapeEntry {
    /// `snapshot_lsn`: the snapshot's WAL position if it is known (a
    /// restored shape), else 0.
    pub(crate) fn new(
        handle: ShapeHandle,
        shape: Arc<Shape>,
        reader: ShapeLogReader,
        tx: mpsc::Sender<ConsumerMsg>,
        snapshot_lsn: Lsn,
    ) -> ShapeEntry {
        ShapeEntry {
            handle,
            schema_header: crate::wire::schema_header(&shape.table, &shape.selected),
            shape,
            reader,
            tx,
            changed: event_listener::Event::new(),
            removed: AtomicBool::new(false),
            snapshot_lsn: AtomicU64::new(snapshot_lsn),
        }
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// The WAL position of the shape's snapshot (0 until it is known).
    pub fn snapshot_lsn(&self) -> Lsn {
        self.snapshot_lsn.load(Ordering::SeqCst)
    }

    /// Marks the entry removed, wakes its readers and closes its consumer's
    /// channel (the consumer then deletes the storage).
    pub(crate) fn retire(&self) {
        self.removed.store(true, Ordering::SeqCst);
        self.changed.notify(usize::MAX);
        self.tx.clone().close_channel();
    }
}

/// Takes a shape out of service (implemented by the stack, which owns the
/// registry and the metadata). Idempotent.
pub(crate) trait ShapeRemover: Send + Sync + 'static {
    fn remove_shape(&self, handle: &ShapeHandle, reason: RemovalReason);
}

/// The consumer's share of the stack configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConsumerConfig {
    pub retry_backoff_ms: u64,
    /// Transactions buffered during a snapshot before the shape is dropped.
    pub queue_limit: usize,
    pub snapshot_timeout_ms: u64,
    #[cfg(feature = "plants")]
    pub plants: crate::plants::Plants,
}

/// Everything a consumer may touch.
pub(crate) struct Context {
    pub env: Env,
    pub config: ConsumerConfig,
    pub postgres: Arc<dyn PostgresQueries>,
    pub db: Arc<ShapeDb>,
    pub tracker: Arc<SharedTracker>,
    pub remover: Arc<dyn ShapeRemover>,
}

struct Consumer {
    ctx: Context,
    entry: Arc<ShapeEntry>,
    writer: ShapeLogWriter,
    rx: mpsc::Receiver<ConsumerMsg>,
    visibility: Option<Visibility>,
    /// Transactions and drains that arrived during the snapshot.
    buffered: Vec<ConsumerMsg>,
    last_received: Lsn,
    last_reported: Lsn,
    /// The durable offset last reported as an event.
    last_durable: Option<LogOffset>,
}

/// Why the consumer stopped.
enum Stop {
    /// The channel closed: the shape was removed.
    Removed,
    Failed(RemovalReason),
}

impl From<LogError> for Stop {
    fn from(e: LogError) -> Stop {
        Stop::Failed(RemovalReason::ConsumerFailed(ConsumerFailure::Storage(
            e.failure(),
        )))
    }
}

pub(crate) async fn run(
    ctx: Context,
    entry: Arc<ShapeEntry>,
    writer: ShapeLogWriter,
    start: Start,
    rx: mpsc::Receiver<ConsumerMsg>,
) {
    let last_durable = writer.durable_offset();
    let mut consumer = Consumer {
        ctx,
        entry,
        writer,
        rx,
        visibility: None,
        buffered: Vec::new(),
        last_received: 0,
        last_reported: 0,
        last_durable,
    };
    let stop = consumer.run(start).await;
    let Consumer {
        ctx, entry, writer, ..
    } = consumer;
    if let Stop::Failed(reason) = stop {
        ctx.remover.remove_shape(&entry.handle, reason);
    }
    drop(writer);
    // The removal must be durable before the shape stops holding back the
    // acknowledged LSN: a crash before it would restore the shape, and the
    // slot must then still replay what the shape lacks.
    let dir = shape_dir(&entry.handle);
    while ShapeLog::remove(&ctx.env, &dir).await.is_err() {
        ctx.env.clock.sleep_ms(ctx.config.retry_backoff_ms).await;
    }
    ctx.env.emit(Event::StorageRemoved {
        handle: entry.handle.clone(),
    });
    ctx.tracker
        .update(|tracker| tracker.remove_shape(entry.handle.as_str()));
}

impl Consumer {
    async fn run(&mut self, start: Start) -> Stop {
        let result = match start {
            Start::New => self.snapshot().await,
            Start::Restored => {
                let SnapshotState::Complete { visibility, .. } = &self.writer.meta().snapshot
                else {
                    unreachable!("only complete snapshots are restored")
                };
                self.visibility = Some(visibility.clone());
                self.entry
                    .snapshot_lsn
                    .store(visibility.wal_lsn, Ordering::SeqCst);
                Ok(())
            }
        };
        if let Err(stop) = result {
            return stop;
        }
        for msg in std::mem::take(&mut self.buffered) {
            if let Err(stop) = self.handle(msg).await {
                return stop;
            }
        }
        loop {
            let next = match self.writer.flush_deadline_ms() {
                None => Either::Left(self.rx.next().await),
                Some(deadline_ms) => {
                    let wait_ms = deadline_ms.saturating_sub(self.ctx.env.clock.now_ms());
                    let sleep = self.ctx.env.clock.sleep_ms(wait_ms);
                    match future::select(self.rx.next(), sleep).await {
                        Either::Left((msg, _)) => Either::Left(msg),
                        Either::Right(((), _)) => Either::Right(()),
                    }
                }
            };
            if self.entry.is_removed() {
                return Stop::Removed; // queued work for a removed shape is moot
            }
            let result = match next {
                Either::Left(None) => return Stop::Removed,
                Either::Left(Some(msg)) => self.handle(msg).await,
                Either::Right(()) => self.flush_if_due().await,
            };
            if let Err(stop) = result {
                return stop;
            }
        }
    }

    async fn flush_if_due(&mut self) -> Result<(), Stop> {
        self.writer.flush_if_due().await?;
        self.report_flush();
        Ok(())
    }

    async fn handle(&mut self, msg: ConsumerMsg) -> Result<(), Stop> {
        match msg {
            ConsumerMsg::Txn(txn) => self.append(txn).await,
            ConsumerMsg::Drain(reply) => {
                self.writer.flush().await?;
                self.report_flush();
                if reply.send(()).is_err() {
                    // The coordinator stopped waiting (its timeout passed);
                    // the flush stands either way.
                }
                Ok(())
            }
        }
    }

    /// Runs `work` while buffering what arrives; `Err(Removed)` if the channel closes.
    async fn buffering<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Stop> {
        let mut work = pin!(work);
        loop {
            match future::select(work.as_mut(), self.rx.next()).await {
                Either::Left((value, _)) => return Ok(value),
                Either::Right((Some(msg), _)) => {
                    // Electric drops a shape whose snapshot falls this far behind.
                    let queued = self.buffered.len();
                    if queued >= self.ctx.config.queue_limit {
                        let failure = ConsumerFailure::SnapshotBacklog { queued };
                        return Err(Stop::Failed(RemovalReason::ConsumerFailed(failure)));
                    }
                    self.buffered.push(msg);
                }
                Either::Right((None, _)) => return Err(Stop::Removed),
            }
        }
    }

    /// The snapshot query, retried (backing off up to a second) until the
    /// snapshot timeout: failures are transient (the network, a restarting
    /// Postgres).
    async fn snapshot_query(&mut self, query: SnapshotQuery) -> Result<SnapshotResult, Stop> {
        let config = self.ctx.config;
        let give_up_ms = self.ctx.env.clock.now_ms() + config.snapshot_timeout_ms;
        let mut backoff_ms = config.retry_backoff_ms;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (postgres, query) = (self.ctx.postgres.clone(), query.clone());
            match self
                .buffering(async move { postgres.snapshot(query).await })
                .await?
            {
                Ok(result) => return Ok(result),
                Err(e)
                    if self.ctx.env.clock.now_ms() >= give_up_ms || self.budget_spent(attempts) =>
                {
                    return Err(Stop::Failed(RemovalReason::SnapshotGaveUp(e)));
                }
                Err(_) => {
                    let backoff = self.ctx.env.clock.sleep_ms(backoff_ms);
                    self.buffering(backoff).await?;
                    if !crate::planted!(config, snapshot_attempt_budget) {
                        backoff_ms = (backoff_ms * 2).min(1_000);
                    }
                }
            }
        }
    }

    /// Planted real bug: the old policy gave up after ten attempts.
    fn budget_spent(&self, attempts: u32) -> bool {
        crate::planted!(self.ctx.config, snapshot_attempt_budget) && attempts >= 10
    }

    async fn snapshot(&mut self) -> Result<(), Stop> {
        let shape = self.entry.shape.clone();
        let handle = self.entry.handle.clone();
        let query = SnapshotQuery {
            table: shape.table.name.clone(),
            where_sql: shape.where_clause.as_ref().map(|w| w.expr.to_string()),
            dependencies: Vec::new(),
        };
        let result = self.snapshot_query(query).await?;
        let visibility = result.visibility;
        self.writer.start_snapshot(visibility.clone()).await?;
        self.entry
            .snapshot_lsn
            .store(visibility.wal_lsn, Ordering::SeqCst);
        self.ctx.env.emit(Event::SnapshotStarted {
            handle: handle.clone(),
        });
        self.ctx.db.mark_snapshot_started(&handle);
        let table = &shape.table;
        for row in &result.rows {
            let key = wire::row_key(table, row);
            let json = wire::snapshot_row(
                table,
                &key,
                wire::values(table, row, shape.selected.iter().copied()),
                None,
            );
            self.writer
                .append_snapshot_row(Operation::Insert, key, json)
                .await?;
            self.entry.changed.notify(usize::MAX);
        }
        let end = wire::snapshot_end(&visibility);
        self.writer
            .append_snapshot_row(Operation::Control, String::new(), end)
            .await?;
        let last_chunk = self.writer.finish_snapshot().await?;
        self.ctx.env.emit(Event::SnapshotCompleted {
            handle: handle.clone(),
            rows: result.rows.len() as u64,
            chunks: last_chunk + 1,
        });
        self.ctx.db.mark_snapshot_complete(&handle).await;
        self.entry.changed.notify(usize::MAX);
        self.visibility = Some(visibility);
        Ok(())
    }

    async fn append(&mut self, txn: ShapeTxn) -> Result<(), Stop> {
        assert!(
            txn.lsn > self.last_received,
            "transactions reach {} out of order",
            self.entry.handle
        );
        self.last_received = txn.lsn;
        let last = txn
            .entries
            .last()
            .expect("routed transactions are not empty")
            .offset;
        let replayed = !crate::planted!(self.ctx.config, skip_shape_dedup)
            && self.writer.last_appended().is_some_and(|l| last <= l);
        let ignore_xip = crate::planted!(self.ctx.config, ignore_xip);
        let in_snapshot = self.visibility.as_ref().is_some_and(|v| match ignore_xip {
            false => v.is_visible(txn.xid),
            true => txn.xid < v.xmax,
        });
        let skipped = match (replayed, in_snapshot) {
            (true, _) => Some(SkipReason::Replayed),
            (false, true) => Some(SkipReason::InSnapshot),
            (false, false) => None,
        };
        match skipped {
            Some(reason) => self.ctx.env.emit(Event::TxnSkipped {
                handle: self.entry.handle.clone(),
                lsn: txn.lsn,
                reason,
            }),
            None => {
                for entry in txn.entries {
                    self.writer.append(entry).await?;
                }
                self.writer.commit()?;
                if !crate::planted!(self.ctx.config, lost_wakeup) {
                    self.entry.changed.notify(usize::MAX);
                }
            }
        }
        let handle = self.entry.handle.as_str();
        self.ctx
            .tracker
            .with(|tracker| tracker.applied(handle, txn.lsn));
        self.report_flush();
        Ok(())
    }

    /// Tells the flush tracker how far this shape is durable: everything it was
    /// sent if nothing is waiting for a flush, else up to the durable offset.
    fn report_flush(&mut self) {
        let durable = self.writer.durable_offset();
        if durable != self.last_durable
            && let Some(offset) = durable
        {
            assert!(
                self.last_durable.is_none_or(|d| d < offset),
                "the durable offset of {} went backwards",
                self.entry.handle
            );
            self.last_durable = durable;
            self.ctx.env.emit(Event::ShapeDurable {
                handle: self.entry.handle.clone(),
                offset,
            });
        }
        let flushed = if durable == self.writer.last_committed() {
            self.last_received
        } else {
            durable.and_then(|d| d.tx()).unwrap_or(0)
        };
        if flushed > self.last_reported {
            self.last_reported = flushed;
            let handle = self.entry.handle.as_str();
            self.ctx
                .tracker
                .update(|tracker| tracker.flushed(handle, flushed));
        }
    }
}
