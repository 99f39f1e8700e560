//! Replication intake and acknowledgement.
//!
//! Boot takes the slot first ([`acquire_slot`]); the intake task streams from
//! it (reconnecting after any error; the slot replays everything after its
//! confirmed LSN), skips transactions at or
//! below the last one it processed (global de-duplication), routes each new
//! one to the shapes it touches, registers it with the flush tracker *before*
//! sending it (so no flush report can arrive for an unknown transaction), and
//! sends every shape its part (inner and subquery shapes the whole
//! transaction), layer by layer ([`deliver`]), then advances the
//! `delivered` LSN. The acknowledgement task reports the flush
//! tracker's LSN to the slot whenever it advances.

use super::{Inner, Status};
use crate::consumer::{ConsumerMsg, ShapeEntry};
use crate::env::Event;
use crate::env::events::RemovalReason;
use crate::flush_tracker::FlushTracker;
use crate::replication::{Connection, Lsn, ReplicationMessage, ReplicationStream, Transaction};
use crate::router;
use crate::schema::TableSchema;
use crate::shape::Shape;
use futures::SinkExt;
use futures::channel::oneshot;
use futures::future::{self, Either};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Streams from the slot, starting with the connection boot acquired, and
/// reconnects whenever the stream fails, until the intake is told to stop.
pub(super) async fn run(stack: Arc<Inner>, first: Connection) {
    let mut last_processed: Lsn = 0;
    let mut next = Some(first);
    loop {
        let connection = match next.take() {
            Some(connection) => connection,
            None => match establish(&stack).await {
                Some(connection) => connection,
                None => break,
            },
        };
        let stream = adopt(&stack, connection, &mut last_processed);
        if !stream_until_lost(&stack, &*stream, &mut last_processed).await {
            break;
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

/// Takes the replication slot: connects, retrying while it fails (Postgres
/// unreachable, or the slot still held by another instance, as during a
/// rolling restart). Boot holds it before it touches storage, so two
/// instances never recover or write one disk at the same time.
pub(super) async fn acquire_slot(stack: &Inner) -> Connection {
    loop {
        match stack.host.source.start().await {
            Ok(connection) => return connection,
            Err(_) => {
                stack
                    .env()
                    .clock
                    .sleep_ms(stack.config.retry_backoff_ms)
                    .await
            }
        }
    }
}

/// Connects to the slot again (retrying); `None` if the intake is stopping.
async fn establish(stack: &Arc<Inner>) -> Option<Connection> {
    loop {
        let stop = stack.stop_intake.listen();
        if stack.intake_stopping.load(Ordering::SeqCst) {
            return None;
        }
        let start = std::pin::pin!(stack.host.source.start());
        match future::select(start, stop).await {
            Either::Left((Ok(connection), _)) => return Some(connection),
            Either::Left((Err(_), _)) => {
                stack
                    .env()
                    .clock
                    .sleep_ms(stack.config.retry_backoff_ms)
                    .await
            }
            Either::Right(_) => return None,
        }
    }
}

/// Starts serving from a connection: sets up the flush tracker on the first
/// one, and the stack is ready.
fn adopt(
    stack: &Inner,
    connection: Connection,
    last_processed: &mut Lsn,
) -> Arc<dyn ReplicationStream> {
    let Connection {
        confirmed_lsn,
        wal_end_lsn,
        stream,
    } = connection;
    stack.env().emit(Event::ReplicationConnected {
        confirmed_lsn,
        wal_end_lsn,
    });
    {
        let mut tracker = stack.tracker.lock();
        if tracker.is_none() {
            #[allow(unused_mut)] // mutated only by a planted bug
            let mut fresh = FlushTracker::new(confirmed_lsn);
            #[cfg(feature = "plants")]
            if stack.config.plants.ack_past_unflushed {
                fresh.plant_ack_past_unflushed();
            }
            *tracker = Some(fresh);
        }
    }
    *last_processed = (*last_processed).max(confirmed_lsn);
    // Nothing at or below the confirmed LSN is streamed again: every
    // shape's durable state reflects it (a restored move-in's boundary
    // may wait for exactly that).
    stack.delivered.advance(confirmed_lsn);
    stack.upstream_lsn.fetch_max(wal_end_lsn, Ordering::SeqCst);
    *stack.stream.lock().expect("stream") = Some(stream.clone());
    if stack.status() == Status::Booting {
        stack.set_status(Status::Ready);
        stack.env().emit(Event::Ready);
    }
    stream
}

/// Processes the stream until it fails (true: reconnect) or the intake is
/// told to stop (false).
async fn stream_until_lost(
    stack: &Arc<Inner>,
    stream: &dyn ReplicationStream,
    last_processed: &mut Lsn,
) -> bool {
    loop {
        let stop = stack.stop_intake.listen();
        if stack.intake_stopping.load(Ordering::SeqCst) {
            return false;
        }
        let next = std::pin::pin!(stream.next());
        let message = match future::select(next, stop).await {
            Either::Left((message, _)) => message,
            Either::Right(_) => return false,
        };
        match message {
            Err(_) => return true,
            Ok(ReplicationMessage::Relation(table)) => relation(stack, table).await,
            Ok(ReplicationMessage::Keepalive { wal_end }) => {
                if wal_end > *last_processed {
                    *last_processed = wal_end;
                    stack.upstream_lsn.fetch_max(wal_end, Ordering::SeqCst);
                    stack.tracker.update(|tracker| tracker.caught_up(wal_end));
                    stack.env().emit(Event::CaughtUp { wal_end });
                    stack.delivered.advance(wal_end);
                }
            }
            Ok(ReplicationMessage::Transaction(txn)) => {
                if txn.commit_lsn <= *last_processed {
                    continue;
                }
                *last_processed = txn.commit_lsn;
                stack
                    .upstream_lsn
                    .fetch_max(txn.commit_lsn, Ordering::SeqCst);
                transaction(stack, txn).await;
            }
        }
    }
}

/// A table's definition changed: shapes on it can no longer be maintained.
async fn relation(stack: &Arc<Inner>, table: TableSchema) {
    // Under the creation lock: no shape built from the old definition can
    // register after the removals below.
    let _creating = stack.creating.lock().await;
    let name = table.name.clone();
    let previous = stack.upsert_table(table.clone());
    if previous.is_some_and(|p| p != table) {
        // A subquery shape on another table goes with its inner shape
        // (removed here), for that reason.
        let own = stack.entries_for_table(&name);
        for entry in own.into_iter().filter(|e| e.shape.table.name == name) {
            let (table, oid) = (name.to_string(), entry.shape.table.oid);
            stack.remove_shape(&entry.handle, RemovalReason::TableChanged { table, oid });
        }
    }
}

async fn transaction(stack: &Arc<Inner>, txn: Transaction) {
    let lsn = txn.commit_lsn;
    let txn = Arc::new(txn);
    let routed = route_all(stack, &txn);
    stack.tracker.update(|tracker| {
        tracker.txn_routed(lsn, routed.iter().map(|(entry, _)| entry.handle.as_str()))
    });
    stack.env().emit(Event::TxnRouted {
        lsn,
        shapes: routed
            .iter()
            .map(|(entry, _)| entry.handle.clone())
            .collect(),
    });
    deliver(stack, routed).await;
    stack.delivered.advance(lsn);
}

/// What each shape the transaction touches is sent: its part, or (an
/// inner or subquery shape, which routes it itself) all of it.
fn route_all(stack: &Inner, txn: &Arc<Transaction>) -> Vec<(Arc<ShapeEntry>, ConsumerMsg)> {
    let tables: BTreeSet<_> = txn.changes.iter().map(|c| c.table().clone()).collect();
    // A subquery shape is listed under several tables: once is enough.
    let mut entries = BTreeMap::new();
    for table in &tables {
        for entry in stack.entries_for_table(table) {
            entries.insert(entry.handle.clone(), entry);
        }
    }
    let mut routed = Vec::new();
    for entry in entries.into_values() {
        entry.routed(txn.commit_lsn);
        if entry.shape.has_subquery() || entry.shape.is_dependency() {
            routed.push((entry, ConsumerMsg::Full(txn.clone(), None)));
        } else if let Some(part) = route(stack, &entry.shape, txn) {
            routed.push((entry, ConsumerMsg::Txn(part)));
        }
    }
    routed
}

/// Sends layer by layer: a layer gets the transaction only once every
/// inner shape of the layers below has taken it (processed it, sending
/// its moves first, or buffered it), so an outer shape sees a
/// dependency's moves before the transaction that made them. An inner
/// shape still taking its snapshot is not waited for (its moves come
/// later either way; outer shapes wait for its vouching, not for this).
async fn deliver(stack: &Arc<Inner>, routed: Vec<(Arc<ShapeEntry>, ConsumerMsg)>) {
    let mut by_layer: BTreeMap<usize, Vec<_>> = BTreeMap::new();
    for (entry, msg) in routed {
        by_layer
            .entry(entry.shape.layer())
            .or_default()
            .push((entry, msg));
    }
    for (_, layer) in by_layer {
        let mut taken = Vec::new();
        for (entry, msg) in layer {
            let msg = match msg {
                ConsumerMsg::Full(txn, None)
                    if entry.shape.is_dependency() && entry.snapshot_done() =>
                {
                    let (tx, rx) = oneshot::channel();
                    taken.push(rx);
                    ConsumerMsg::Full(txn, Some(tx))
                }
                other => other,
            };
            if entry.tx.clone().send(msg).await.is_err() {
                stack.remove_shape(&entry.handle, RemovalReason::ConsumerGone);
            }
        }
        for rx in taken {
            if rx.await.is_err() {
                // The consumer stopped (its shape was removed) without
                // taking it: its outer shapes are removed with it.
            }
        }
    }
}

/// The router, with the planted bug `wrong-old-value` switchable.
#[cfg(feature = "plants")]
fn route(stack: &Inner, shape: &Shape, txn: &Transaction) -> Option<router::ShapeTxn> {
    router::route_planted(shape, txn, &stack.config.plants)
}

/// The router.
#[cfg(not(feature = "plants"))]
fn route(_stack: &Inner, shape: &Shape, txn: &Transaction) -> Option<router::ShapeTxn> {
    router::route(shape, txn)
}

/// Tells the slot what it may forget, whenever the flush tracker's LSN advances.
/// A new connection is told again (its slot may not have heard the last
/// acknowledgement before the old one broke).
pub(super) async fn acknowledge(stack: Arc<Inner>) {
    let mut acknowledged: Option<(Arc<dyn ReplicationStream>, Lsn)> = None;
    loop {
        let changed = stack.tracker.changed.listen();
        let ack = stack.tracker.with(FlushTracker::ack_lsn);
        let stream = stack.stream.lock().expect("stream").clone();
        if let (Some(ack), Some(stream)) = (ack, stream)
            && acknowledged
                .as_ref()
                .is_none_or(|(s, a)| !Arc::ptr_eq(s, &stream) || ack > *a)
            && !crate::planted!(stack.config, never_ack)
        {
            stack.env().emit(Event::Acknowledged { lsn: ack });
            if stream.acknowledge(ack).await.is_ok() {
                acknowledged = Some((stream, ack));
            }
        }
        // Retry a failed acknowledgement now and then even without news.
        stack.wait(changed, 1_000).await;
    }
}
