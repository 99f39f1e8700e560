//! Replication intake and acknowledgement.
//!
//! The intake task connects to the slot (reconnecting after any error; the
//! slot replays everything after its confirmed LSN), skips transactions at or
//! below the last one it processed (global de-duplication), routes each new
//! one to the shapes it touches, registers it with the flush tracker *before*
//! sending it (so no flush report can arrive for an unknown transaction), and
//! sends every shape its part. The acknowledgement task reports the flush
//! tracker's LSN to the slot whenever it advances.

use super::{Inner, Status};
use crate::consumer::ConsumerMsg;
use crate::flush_tracker::FlushTracker;
use crate::replication::{Connection, Lsn, ReplicationMessage, Transaction};
use crate::router;
use crate::schema::TableSchema;
use futures::SinkExt;
use futures::future::{self, Either};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub(super) async fn run(stack: Arc<Inner>) {
    let mut last_processed: Lsn = 0;
    'connect: loop {
        let stop = stack.stop_intake.listen();
        if stack.intake_stopping.load(Ordering::SeqCst) {
            break;
        }
        let start = std::pin::pin!(stack.host.source.start());
        let started = match future::select(start, stop).await {
            Either::Left((started, _)) => started,
            Either::Right(_) => break,
        };
        let Connection {
            confirmed_lsn: confirmed,
            wal_end_lsn,
            stream,
        } = match started {
            Ok(connected) => connected,
            Err(_) => {
                stack
                    .env()
                    .clock
                    .sleep_ms(stack.config.retry_backoff_ms)
                    .await;
                continue;
            }
        };
        {
            let mut tracker = stack.tracker();
            if tracker.is_none() {
                let mut fresh = FlushTracker::new(confirmed);
                if stack.config.plants.ack_past_unflushed {
                    fresh.plant_ack_past_unflushed();
                }
                *tracker = Some(fresh);
            }
        }
        last_processed = last_processed.max(confirmed);
        stack.upstream_lsn.fetch_max(wal_end_lsn, Ordering::SeqCst);
        *stack.stream.lock().expect("stream") = Some(stream.clone());
        if stack.status() == Status::Booting {
            stack.set_status(Status::Ready);
        }
        loop {
            let stop = stack.stop_intake.listen();
            if stack.intake_stopping.load(Ordering::SeqCst) {
                break 'connect;
            }
            let next = std::pin::pin!(stream.next());
            let message = match future::select(next, stop).await {
                Either::Left((message, _)) => message,
                Either::Right(_) => break 'connect,
            };
            match message {
                Err(_) => break,
                Ok(ReplicationMessage::Relation(table)) => relation(&stack, table).await,
                Ok(ReplicationMessage::Transaction(txn)) => {
                    if txn.commit_lsn <= last_processed {
                        continue;
                    }
                    last_processed = txn.commit_lsn;
                    stack
                        .upstream_lsn
                        .fetch_max(txn.commit_lsn, Ordering::SeqCst);
                    transaction(&stack, txn).await;
                }
            }
        }
        *stack.stream.lock().expect("stream") = None;
        stack
            .env()
            .clock
            .sleep_ms(stack.config.retry_backoff_ms)
            .await;
    }
    // The stream stays for the shutdown coordinator's final acknowledgement.
    stack.intake_stopped.store(true, Ordering::SeqCst);
    stack.status_changed.notify(usize::MAX);
}

/// A table's definition changed: shapes on it can no longer be maintained.
async fn relation(stack: &Arc<Inner>, table: TableSchema) {
    // Under the creation lock: no shape built from the old definition can
    // register after the removals below.
    let _creating = stack.creating.lock().await;
    let name = table.name.clone();
    let previous = stack.upsert_table(table.clone());
    if previous.is_some_and(|p| p != table) {
        for entry in stack.entries_for_table(&name) {
            stack.remove_shape(&entry.handle, "its table changed");
        }
    }
}

async fn transaction(stack: &Arc<Inner>, txn: Transaction) {
    let tables: BTreeSet<_> = txn.changes.iter().map(|c| c.table().clone()).collect();
    let mut routed = Vec::new();
    for table in &tables {
        for entry in stack.entries_for_table(table) {
            if let Some(part) = router::route(&entry.shape, &txn) {
                routed.push((entry, part));
            }
        }
    }
    if let Some(tracker) = stack.tracker().as_mut() {
        tracker.txn_routed(
            txn.commit_lsn,
            routed.iter().map(|(entry, _)| entry.handle.as_str()),
        );
    }
    stack.tracker_changed.notify(usize::MAX);
    for (entry, part) in routed {
        if entry.tx.clone().send(ConsumerMsg::Txn(part)).await.is_err() {
            stack.remove_shape(&entry.handle, "its consumer stopped");
        }
    }
}

/// Tells the slot what it may forget, whenever the flush tracker's LSN advances.
pub(super) async fn acknowledge(stack: Arc<Inner>) {
    let mut acknowledged: Option<Lsn> = None;
    loop {
        let changed = stack.tracker_changed.listen();
        let ack = stack.tracker().as_mut().map(FlushTracker::ack_lsn);
        let stream = stack.stream.lock().expect("stream").clone();
        if let (Some(ack), Some(stream)) = (ack, stream)
            && acknowledged.is_none_or(|a| ack > a)
            && stream.acknowledge(ack).await.is_ok()
        {
            acknowledged = Some(ack);
        }
        // Retry a failed acknowledgement now and then even without news.
        stack.wait(changed, 1_000).await;
    }
}
