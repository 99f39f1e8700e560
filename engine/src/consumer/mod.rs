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
//! Inner shapes (dependencies of subquery shapes) and subquery shapes are
//! sent whole transactions and route them themselves: see [`inner`] and
//! [`subquery`].
//!
//! The consumer knows the stack only through [`Context`]: the environment, the
//! Postgres queries, the metadata database, the flush tracker and a
//! [`ShapeRemover`] to report its own failure. It reports what it does as
//! [`Event`]s.

mod claims;
mod entry;
mod inner;
mod move_in;
mod restore;
mod snapshot;
mod subquery;

pub use entry::ShapeEntry;
pub(crate) use inner::{DepMoves, Published, Subscriber};
pub use subquery::STACK_ID;

use crate::env::events::{ConsumerFailure, RemovalReason, SkipReason};
use crate::env::{Env, Event, join};
use crate::flush_tracker::SharedTracker;
use crate::handle::ShapeHandle;
use crate::log::{LogError, ShapeLog, ShapeLogWriter};
use crate::metadata::ShapeDb;
use crate::moves::materializer::Materializer;
use crate::offset::LogOffset;
use crate::replication::{Lsn, PostgresQueries, Transaction, Visibility, Xid};
use crate::router::ShapeTxn;
use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use futures::future::{self, Either};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where shape logs live in storage: `shapes/<handle>`.
pub const SHAPES_DIR: &str = "shapes";

/// The directory a shape's consumer owns.
pub fn shape_dir(handle: &ShapeHandle) -> String {
    join(SHAPES_DIR, handle.as_str())
}

pub(crate) enum ConsumerMsg {
    Txn(ShapeTxn),
    /// A whole transaction, for an inner or subquery shape (which routes
    /// it itself); `taken` is answered once it is processed or buffered.
    Full(Arc<Transaction>, Option<oneshot::Sender<()>>),
    /// A dependency's moves (subquery shapes only).
    Moves(DepMoves),
    /// Flush everything received, then reply (graceful shutdown).
    Drain(oneshot::Sender<()>),
}

pub(crate) enum Start {
    /// A new shape: take the snapshot first.
    New,
    /// A shape restored from storage at boot; the slot streams what
    /// follows `resume_lsn` (everything at or below it is in every shape's
    /// durable state).
    Restored { resume_lsn: Lsn },
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
    pub delivered: Arc<Delivered>,
}

/// How far the intake has delivered: every transaction at or below `lsn`
/// routed to a consumer is in its channel (a move-in's boundary rule (b)).
#[derive(Default)]
pub(crate) struct Delivered {
    pub lsn: AtomicU64,
    pub changed: event_listener::Event,
}

impl Delivered {
    pub fn advance(&self, lsn: Lsn) {
        self.lsn.fetch_max(lsn, Ordering::SeqCst);
        self.changed.notify(usize::MAX);
    }
}

/// What woke a consumer's loop.
enum Wake {
    Message(Option<ConsumerMsg>),
    FlushDue,
    Delivered,
}

struct Consumer {
    ctx: Context,
    entry: Arc<ShapeEntry>,
    writer: ShapeLogWriter,
    rx: mpsc::Receiver<ConsumerMsg>,
    visibility: Option<Visibility>,
    /// Messages to handle before the channel's: those that arrived during
    /// the snapshot (a move-in takes them in first).
    inbox: VecDeque<ConsumerMsg>,
    last_received: Lsn,
    /// The last LSN applied and reported to the flush tracker.
    applied: Lsn,
    /// A subquery shape's own state.
    outer: Option<subquery::Outer>,
    /// An inner shape's materializer.
    materializer: Option<Materializer>,
    last_reported: Lsn,
    /// The durable offset last reported as an event.
    last_durable: Option<LogOffset>,
    /// A restored shape's durable state reflects every transaction up to
    /// here: one at or below it is a replay.
    replayed_through: Lsn,
    /// A subquery shape's claims (served once durable).
    claims: claims::Claims,
    /// The last offset of the last transaction written (not of a control
    /// event or a moved-in row after it).
    txn_end: Option<LogOffset>,
}

/// Why the consumer stopped.
enum Stop {
    /// The channel closed: the shape was removed.
    Removed,
    /// A graceful shutdown stopped it mid-way (a suspended move-in): the
    /// shape stays, as durable as the drain left it.
    Shutdown,
    /// A drain reached a move-in in flight (handled by the move-in).
    Drain(oneshot::Sender<()>),
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
    let outer = entry
        .shape
        .has_subquery()
        .then(|| subquery::Outer::new(entry.deps.clone(), entry.shape.dependency_tables()));
    let materializer = entry.shape.is_dependency().then(Materializer::default);
    let mut consumer = Consumer {
        ctx,
        entry,
        writer,
        rx,
        visibility: None,
        inbox: VecDeque::new(),
        last_received: 0,
        applied: 0,
        outer,
        materializer,
        last_reported: 0,
        last_durable,
        replayed_through: 0,
        claims: claims::Claims::default(),
        txn_end: None,
    };
    let stop = consumer.run(start).await;
    let Consumer {
        ctx,
        entry,
        writer,
        rx,
        inbox,
        ..
    } = consumer;
    match stop {
        Stop::Failed(reason) => {
            ctx.remover.remove_shape(&entry.handle, reason);
        }
        // Not removed: the next boot restores it. What waits on it (the
        // drain) was answered.
        // A removal during the drain (a dependency failed) is finished
        // here: nothing else deletes its storage.
        Stop::Shutdown if !entry.mark_stopped() => {}
        Stop::Shutdown => return,
        Stop::Drain(_) => unreachable!("a move-in handles the drain it meets"),
        Stop::Removed => {}
    }
    // What waits for this consumer (the intake, for a transaction it was
    // to take) must not wait through the storage removal below.
    drop(rx);
    drop(inbox);
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
            Start::New => match self.wait_for_dependencies().await {
                Ok(()) => self.snapshot().await,
                Err(stop) => Err(stop),
            },
            Start::Restored { resume_lsn } => match self.restore(resume_lsn).await {
                // What the catch-up found to re-derive.
                Ok(()) if self.outer.is_some() => self.drain_moves().await,
                other => other,
            },
        };
        if let Err(stop) = result {
            return stop;
        }
        loop {
            if self.outer.is_some() {
                self.settle().await;
            }
            if let Some(msg) = self.inbox.pop_front() {
                if let Err(stop) = self.handle(msg).await {
                    return stop;
                }
                continue;
            }
            let next = self.next_wake().await;
            if self.entry.is_removed() {
                return Stop::Removed; // queued work for a removed shape is moot
            }
            let result = match next {
                Wake::Message(None) => return Stop::Removed,
                Wake::Message(Some(msg)) => self.handle(msg).await,
                Wake::FlushDue => self.flush_if_due().await,
                Wake::Delivered => Ok(()), // a claim may be due (settled above)
            };
            if let Err(stop) = result {
                return stop;
            }
        }
    }

    /// Waits for a message, the flush deadline or (a subquery shape whose
    /// claim waits for the intake) more delivered.
    async fn next_wake(&mut self) -> Wake {
        let delivered = self.ctx.delivered.clone();
        let listener = delivered.changed.listen();
        let awaits_delivery = self.awaits_delivery();
        let clock = &self.ctx.env.clock;
        let wait_ms = self
            .writer
            .flush_deadline_ms()
            .map(|deadline_ms| deadline_ms.saturating_sub(clock.now_ms()));
        let other = async move {
            let sleep = async {
                match wait_ms {
                    Some(ms) => clock.sleep_ms(ms).await,
                    None => future::pending().await,
                }
            };
            let delivery = async {
                match awaits_delivery {
                    true => listener.await,
                    false => future::pending().await,
                }
            };
            match future::select(pin!(sleep), pin!(delivery)).await {
                Either::Left(_) => Wake::FlushDue,
                Either::Right(_) => Wake::Delivered,
            }
        };
        match future::select(self.rx.next(), pin!(other)).await {
            Either::Left((msg, _)) => Wake::Message(msg),
            Either::Right((wake, _)) => wake,
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
            ConsumerMsg::Full(txn, taken) => match self.outer.is_some() {
                true => self.outer_txn(txn, taken).await,
                false => self.inner_txn(txn, taken).await,
            },
            ConsumerMsg::Moves(moves) => {
                self.on_moves(moves);
                self.drain_moves().await
            }
            ConsumerMsg::Drain(reply) => self.drain(reply).await,
        }
    }

    async fn drain(&mut self, reply: oneshot::Sender<()>) -> Result<(), Stop> {
        // A subquery shape's state records all it processed.
        self.save_state();
        self.writer.flush().await?;
        if let Some(outer) = &self.outer {
            // A subquery shape reports "applied" only at its claims, which
            // may wait on dependencies the stopped intake no longer feeds.
            // Its durable log and state reflect everything it processed
            // (the next boot re-derives what it had not applied), and the
            // stack no longer serves: the slot need not replay it.
            let processed = outer.processed().min(self.last_received);
            if processed > self.applied {
                self.report_applied(processed);
            }
        }
        self.report_flush();
        if reply.send(()).is_err() {
            // The coordinator stopped waiting (its timeout passed); the
            // flush stands either way.
        }
        Ok(())
    }

    /// Whether the shape's snapshot already reflects transaction `xid`.
    fn in_snapshot(&self, xid: Xid) -> bool {
        let ignore_xip = crate::planted!(self.ctx.config, ignore_xip);
        self.visibility.as_ref().is_some_and(|v| match ignore_xip {
            false => v.is_visible(xid),
            true => xid < v.xmax,
        })
    }

    /// Runs `work` while buffering what arrives; `Err(Removed)` if the channel closes.
    async fn buffering<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Stop> {
        let mut work = pin!(work);
        loop {
            match future::select(work.as_mut(), self.rx.next()).await {
                Either::Left((value, _)) => return Ok(value),
                Either::Right((Some(msg), _)) => {
                    // Electric drops a shape whose snapshot falls this far behind.
                    let queued = self.inbox.len();
                    if queued >= self.ctx.config.queue_limit {
                        let failure = ConsumerFailure::SnapshotBacklog { queued };
                        return Err(Stop::Failed(RemovalReason::ConsumerFailed(failure)));
                    }
                    // Buffered counts as taken: the next layer may have it.
                    let msg = match msg {
                        ConsumerMsg::Full(txn, taken) => {
                            inner::tell_taken(taken);
                            ConsumerMsg::Full(txn, None)
                        }
                        other => other,
                    };
                    self.inbox.push_back(msg);
                }
                Either::Right((None, _)) => return Err(Stop::Removed),
            }
        }
    }

    async fn append(&mut self, txn: ShapeTxn) -> Result<(), Stop> {
        assert!(
            txn.lsn > self.last_received,
            "transactions reach {} out of order",
            self.entry.handle
        );
        self.last_received = txn.lsn;
        self.applied = txn.lsn;
        let last = txn
            .entries
            .last()
            .expect("routed transactions are not empty")
            .offset;
        let replayed = !crate::planted!(self.ctx.config, skip_shape_dedup)
            && self.writer.last_appended().is_some_and(|l| last <= l);
        let in_snapshot = self.in_snapshot(txn.xid);
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
                self.txn_end = self.writer.last_appended();
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
        if self.outer.is_some() {
            self.promote_claims();
        }
        // Planted `flush-boundary-exact-match` (Electric's bug 7): only a
        // durable offset that ends a transaction completes the flush, so
        // control events and moved-in rows after it pin the shape.
        if crate::planted!(self.ctx.config, flush_boundary_exact_match)
            && durable.is_some()
            && durable != self.txn_end
        {
            return;
        }
        let flushed = if durable == self.writer.last_committed() {
            self.applied
        } else {
            durable.and_then(|d| d.tx()).unwrap_or(0)
        };
        // Never past what it was sent: a subquery shape's events can sit at
        // its snapshot position, above transactions still to arrive (which
        // must then be reported again).
        let flushed = flushed.min(self.last_received);
        // Nor, for a subquery shape, past what its durable state records as
        // processed: a restore resumes from there, and the slot must still
        // hold what follows.
        let flushed = match self.writer.meta().outer.as_ref() {
            Some(state) => flushed.min(state.processed),
            None => flushed,
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
