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
//! After every transaction and every flush the consumer tells the flush
//! tracker up to which LSN it has made everything it was sent durable.
//! When its channel closes, the shape was removed: the consumer deletes the
//! storage (it owns the directory), and only then releases the shape's hold on
//! the acknowledged LSN.

use crate::log::{LogError, Operation, ShapeLog, ShapeLogWriter, SnapshotState};
use crate::replication::{Lsn, SnapshotQuery, Visibility};
use crate::router::ShapeTxn;
use crate::stack::{Inner, ShapeEntry};
use crate::wire;
use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use futures::future::{self, Either};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

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

struct Consumer {
    stack: Arc<Inner>,
    entry: Arc<ShapeEntry>,
    writer: ShapeLogWriter,
    rx: mpsc::Receiver<ConsumerMsg>,
    visibility: Option<Visibility>,
    /// Transactions and drains that arrived during the snapshot.
    buffered: Vec<ConsumerMsg>,
    last_received: Lsn,
    last_reported: Lsn,
}

/// Why the consumer stopped.
enum Stop {
    /// The channel closed: the shape was removed.
    Removed,
    Failed(String),
}

impl From<LogError> for Stop {
    fn from(e: LogError) -> Stop {
        Stop::Failed(e.to_string())
    }
}

pub(crate) async fn run(
    stack: Arc<Inner>,
    entry: Arc<ShapeEntry>,
    writer: ShapeLogWriter,
    start: Start,
    rx: mpsc::Receiver<ConsumerMsg>,
) {
    let mut consumer = Consumer {
        stack,
        entry,
        writer,
        rx,
        visibility: None,
        buffered: Vec::new(),
        last_received: 0,
        last_reported: 0,
    };
    let stop = consumer.run(start).await;
    let Consumer {
        stack,
        entry,
        writer,
        ..
    } = consumer;
    if let Stop::Failed(_why) = stop {
        stack.remove_shape(&entry.handle, "its consumer failed");
    }
    drop(writer);
    // The removal must be durable before the shape stops holding back the
    // acknowledged LSN: a crash before it would restore the shape, and the
    // slot must then still replay what the shape lacks.
    let dir = Inner::shape_dir(&entry.handle);
    while ShapeLog::remove(stack.env(), &dir).await.is_err() {
        stack
            .env()
            .clock
            .sleep_ms(stack.config.retry_backoff_ms)
            .await;
    }
    if let Some(tracker) = stack.tracker().as_mut() {
        tracker.remove_shape(entry.handle.as_str());
    }
    stack.tracker_changed.notify(usize::MAX);
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
            let deadline = self.writer.flush_deadline_ms();
            let next = match deadline {
                None => Either::Left(self.rx.next().await),
                Some(deadline_ms) => {
                    let wait_ms = deadline_ms.saturating_sub(self.stack.now_ms());
                    let sleep = self.stack.env().clock.sleep_ms(wait_ms);
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
                let _ = reply.send(());
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
                    if self.buffered.len() >= self.stack.config.consumer_queue {
                        return Err(Stop::Failed(
                            "too many transactions during the snapshot".into(),
                        ));
                    }
                    self.buffered.push(msg);
                }
                Either::Right((None, _)) => return Err(Stop::Removed),
            }
        }
    }

    async fn snapshot(&mut self) -> Result<(), Stop> {
        let shape = self.entry.shape.clone();
        let query = SnapshotQuery {
            table: shape.table.name.clone(),
            where_sql: shape.where_clause.as_ref().map(|w| w.expr.to_string()),
        };
        // Failures are transient (the network, a restarting Postgres): retry,
        // backing off up to a second, until the snapshot timeout has passed.
        let give_up_ms = self.stack.now_ms() + self.stack.config.snapshot_timeout_ms;
        let mut backoff_ms = self.stack.config.retry_backoff_ms;
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            let postgres = self.stack.host.postgres.clone();
            let query = query.clone();
            match self
                .buffering(async move { postgres.snapshot(query).await })
                .await?
            {
                Ok(result) => break result,
                Err(e) if self.stack.now_ms() >= give_up_ms || self.budget_spent(attempts) => {
                    return Err(Stop::Failed(format!("snapshot query: {e}")));
                }
                Err(_) => {
                    let backoff = self.stack.env().clock.sleep_ms(backoff_ms);
                    self.buffering(backoff).await?;
                    if !self.stack.config.plants.snapshot_attempt_budget {
                        backoff_ms = (backoff_ms * 2).min(1_000);
                    }
                }
            }
        };
        let visibility = result.visibility;
        self.writer.start_snapshot(visibility.clone()).await?;
        self.stack.db.mark_snapshot_started(&self.entry.handle);
        let table = &shape.table;
        for row in &result.rows {
            let key = wire::row_key(table, row);
            let json = wire::snapshot_row(
                table,
                &key,
                wire::values(table, row, shape.selected.iter().copied()),
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
        self.writer.finish_snapshot().await?;
        self.stack
            .db
            .mark_snapshot_complete(&self.entry.handle)
            .await;
        self.entry.changed.notify(usize::MAX);
        self.visibility = Some(visibility);
        Ok(())
    }

    /// Planted real bug: the old policy gave up after ten attempts.
    fn budget_spent(&self, attempts: u32) -> bool {
        self.stack.config.plants.snapshot_attempt_budget && attempts >= 10
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
        let replayed = !self.stack.config.plants.skip_shape_dedup
            && self.writer.last_appended().is_some_and(|l| last <= l);
        let in_snapshot = self
            .visibility
            .as_ref()
            .is_some_and(|v| v.is_visible(txn.xid));
        if !replayed && !in_snapshot {
            for entry in txn.entries {
                self.writer.append(entry).await?;
            }
            self.writer.commit()?;
            self.entry.changed.notify(usize::MAX);
        }
        self.report_flush();
        Ok(())
    }

    /// Tells the flush tracker how far this shape is durable: everything it was
    /// sent if nothing is waiting for a flush, else up to the durable offset.
    fn report_flush(&mut self) {
        let durable = self.writer.durable_offset();
        let flushed = if durable == self.writer.last_committed() {
            self.last_received
        } else {
            durable.and_then(|d| d.tx()).unwrap_or(0)
        };
        if flushed > self.last_reported {
            self.last_reported = flushed;
            if let Some(tracker) = self.stack.tracker().as_mut() {
                tracker.flushed(self.entry.handle.as_str(), flushed);
            }
            self.stack.tracker_changed.notify(usize::MAX);
        }
    }
}
