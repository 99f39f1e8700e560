//! The consumer of an inner shape (a dependency of subquery shapes): it
//! routes whole transactions itself, feeds its [`Materializer`] with what
//! it writes, and after each transaction tells every subscribed outer
//! consumer what moved ([`DepMoves`], sent even when nothing moved: the
//! outer shape counts on knowing how far its dependency has got).
//!
//! Invariants: the materializer holds exactly the rows the inner log holds
//! (fed the same decisions, a strictness [`Violation`] is an engine
//! invariant violation, never skipped); a transaction's moves reach the
//! subscribers before the transaction is reported taken (the intake sends
//! it to the next layer only then).

use super::{Consumer, ConsumerMsg, Stop};
use crate::env::Event;
use crate::env::events::{RemovalReason, SkipReason};
use crate::handle::ShapeHandle;
use crate::moves::materializer::{InnerChange, Materializer, MoveEvents, RowMeta, Violation};
use crate::replication::{Change, Lsn, Transaction, Xid};
use crate::schema::Value;
use crate::shape::Shape;
use crate::wire;
use futures::SinkExt;
use futures::channel::{mpsc, oneshot};
use std::sync::Arc;

/// What one transaction (or one move of a nested inner shape) moved in a
/// dependency, for the outer shapes subscribed to it.
#[derive(Clone, Debug)]
pub(crate) struct DepMoves {
    pub dependency: ShapeHandle,
    /// The transactions that made the moves: an outer consumer whose
    /// snapshot sees every one of them already has them in its views.
    pub xids: Vec<Xid>,
    /// Every transaction at or below it routed to the dependency has been
    /// processed and its moves sent.
    pub through: Lsn,
    /// The moves reflect transactions up to here: an outer shape that
    /// applies them reflects no earlier state until it has processed the
    /// transaction at this LSN.
    pub cause: Lsn,
    pub events: MoveEvents,
}

/// What an inner shape has published so far: its values, how far it
/// vouches (as [`DepMoves::through`]) and what they reflect (as
/// [`DepMoves::cause`]). An outer shape reads it as it subscribes: its
/// views start from it, and every later move is a change from it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Published {
    pub values: Vec<crate::moves::Tuple>,
    pub through: Lsn,
    pub cause: Lsn,
}

/// An outer shape that wants an inner shape's moves.
#[derive(Clone)]
pub(crate) struct Subscriber {
    pub outer: ShapeHandle,
    pub tx: mpsc::Sender<ConsumerMsg>,
}

/// The materializer's view of one transaction's changes to `shape`:
/// inclusion decided by `includes`, row metadata by `meta`.
pub(super) fn inner_changes(
    shape: &Shape,
    txn: &Transaction,
    includes: &dyn Fn(&[Value]) -> bool,
    meta: &dyn Fn(&[Value]) -> Option<RowMeta>,
) -> Vec<InnerChange> {
    let table = &shape.table;
    let key = |row: &[Value]| wire::row_key(table, row);
    let insert = |row: &[Value]| InnerChange::Insert {
        key: key(row),
        value: shape.tuple(row),
        meta: meta(row),
    };
    let mut out = Vec::new();
    for change in txn.changes.iter().filter(|c| *c.table() == table.name) {
        match change {
            Change::Insert { new, .. } if includes(new) => out.push(insert(new)),
            Change::Delete { old, .. } if includes(old) => {
                out.push(InnerChange::Delete { key: key(old) })
            }
            Change::Update { old, new, .. } => match (includes(old), includes(new)) {
                (true, true) => out.push(InnerChange::Update {
                    old_key: key(old),
                    key: key(new),
                    value: shape.tuple(new),
                    meta: meta(new),
                }),
                (false, true) => out.push(insert(new)),
                (true, false) => out.push(InnerChange::Delete { key: key(old) }),
                (false, false) => {}
            },
            _ => {}
        }
    }
    out
}

/// Planted `materializer-counts-excluded`: a row the materializer holds
/// stays counted, with its new value, when it leaves the shape.
fn counting_excluded(
    shape: &Shape,
    txn: &Transaction,
    materializer: &Materializer,
) -> Vec<InnerChange> {
    let table = &shape.table;
    let key = |row: &[Value]| wire::row_key(table, row);
    let mut out = Vec::new();
    let mut held: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let holds = |k: &str, held: &std::collections::BTreeSet<String>| {
        held.contains(k) || materializer.holds(k)
    };
    for change in txn.changes.iter().filter(|c| *c.table() == table.name) {
        let (old, new) = match change {
            Change::Insert { new, .. } => (None, Some(new)),
            Change::Update { old, new, .. } => (Some(old), Some(new)),
            Change::Delete { old, .. } => (Some(old), None),
        };
        let old_held = old.is_some_and(|o| holds(&key(o), &held));
        match (old, new) {
            (Some(old), Some(new)) if old_held => {
                held.remove(&key(old));
                held.insert(key(new));
                out.push(InnerChange::Update {
                    old_key: key(old),
                    key: key(new),
                    value: shape.tuple(new),
                    meta: None,
                });
            }
            (Some(old), None) if old_held => out.push(InnerChange::Delete { key: key(old) }),
            (_, Some(new)) if shape.includes(new) => {
                held.insert(key(new));
                out.push(InnerChange::Insert {
                    key: key(new),
                    value: shape.tuple(new),
                    meta: None,
                });
            }
            _ => {}
        }
    }
    out
}

/// Applies `changes`, treating a strictness violation as the invariant
/// violation it is.
pub(super) fn feed(
    materializer: &mut Materializer,
    handle: &ShapeHandle,
    changes: Vec<InnerChange>,
) {
    for change in changes {
        if let Err(violation) = materializer.apply(change) {
            violated(handle, &violation);
        }
    }
}

fn violated(handle: &ShapeHandle, violation: &Violation) -> ! {
    panic!("invariant violated: the materializer of {handle}: {violation}")
}

impl Consumer {
    /// A plain inner shape's transaction: routed here, written, fed to the
    /// materializer, its moves published, then reported taken.
    pub(super) async fn inner_txn(
        &mut self,
        txn: Arc<Transaction>,
        taken: Option<oneshot::Sender<()>>,
    ) -> Result<(), Stop> {
        if txn.commit_lsn <= self.replayed_through {
            // Already in the restored log (and so in the materializer,
            // which must never see a change twice: Electric #4668).
            assert!(
                txn.commit_lsn > self.last_received,
                "transactions reach {} out of order",
                self.entry.handle
            );
            self.last_received = txn.commit_lsn;
            self.skipped(txn.commit_lsn, SkipReason::Replayed);
            self.report_applied(txn.commit_lsn);
            self.report_flush();
            self.publish(vec![txn.xid], txn.commit_lsn).await;
            tell_taken(taken);
            return Ok(());
        }
        let shape = self.entry.shape.clone();
        let visible = self.in_snapshot(txn.xid);
        if !visible && let Some(materializer) = &mut self.materializer {
            let changes = match crate::planted!(self.ctx.config, materializer_counts_excluded) {
                true => counting_excluded(&shape, &txn, materializer),
                false => inner_changes(&shape, &txn, &|row| shape.includes(row), &|_| None),
            };
            feed(materializer, &self.entry.handle, changes);
        }
        match crate::router::route(&shape, &txn) {
            Some(part) => self.append(part).await?,
            None => self.nothing_to_write(txn.commit_lsn),
        }
        self.publish(vec![txn.xid], txn.commit_lsn).await;
        tell_taken(taken);
        Ok(())
    }

    /// A routed transaction that writes nothing here was applied as it came.
    pub(super) fn nothing_to_write(&mut self, lsn: Lsn) {
        assert!(
            lsn > self.last_received,
            "transactions reach {} out of order",
            self.entry.handle
        );
        self.last_received = lsn;
        self.skipped(lsn, SkipReason::NothingToWrite);
        self.report_applied(lsn);
        self.report_flush();
    }

    /// How far a nested inner shape vouches: what it claimed (a claim
    /// waits until everything up to it is delivered and every transaction
    /// routed to it there is taken in, so a claim at its snapshot's
    /// position, above anything it received, is sound).
    pub(super) fn vouched(&self) -> Lsn {
        self.claims.lsn()
    }

    /// Tells the flush tracker it applied everything it was sent up to `lsn`.
    pub(super) fn report_applied(&mut self, lsn: Lsn) {
        assert!(lsn >= self.applied, "{} unapplied {lsn}", self.entry.handle);
        self.applied = lsn;
        let handle = self.entry.handle.as_str();
        self.ctx
            .tracker
            .with(|tracker| tracker.applied(handle, lsn));
    }

    pub(super) fn skipped(&self, lsn: Lsn, reason: SkipReason) {
        self.ctx.env.emit(Event::TxnSkipped {
            handle: self.entry.handle.clone(),
            lsn,
            reason,
        });
    }

    /// Sends the materializer's events since the last publication to every
    /// subscriber (nothing for a shape that is no dependency). A nested
    /// inner shape (itself a subquery shape) vouches only for what it has
    /// settled, never for what it merely processed.
    pub(super) async fn publish(&mut self, xids: Vec<Xid>, through: Lsn) {
        let (through, cause) = match &self.outer {
            // What it claimed: every transaction up to there is processed
            // (or reflected by its restored state) and its moves sent.
            Some(outer) => (self.vouched(), outer.cause().max(through)),
            // Never below its snapshot's position, which it vouched for at
            // the snapshot (a transaction the snapshot saw may come later).
            None => (through.max(self.entry.snapshot_lsn()), through),
        };
        let Some(materializer) = &mut self.materializer else {
            return;
        };
        let events = materializer.commit();
        let values = materializer.values().cloned().collect();
        self.entry.publish(Published {
            values,
            through,
            cause,
        });
        let subscribers = self.entry.subscribers();
        for subscriber in subscribers {
            let moves = DepMoves {
                dependency: self.entry.handle.clone(),
                xids: xids.clone(),
                through,
                cause,
                events: events.clone(),
            };
            let mut tx = subscriber.tx.clone();
            if tx.send(ConsumerMsg::Moves(moves)).await.is_err() {
                // Its consumer is gone: removed (the stack unsubscribes
                // it), or stopped for a shutdown. The stack is asked to
                // remove it; it declines the second (PR 4648's bug 6: a
                // teardown race deleted a healthy shape).
                let reason = RemovalReason::ConsumerGone;
                self.ctx.remover.remove_shape(&subscriber.outer, reason);
            }
        }
    }
}

/// Tells the intake the transaction was taken (processed or buffered).
pub(super) fn tell_taken(taken: Option<oneshot::Sender<()>>) {
    if let Some(taken) = taken
        && taken.send(()).is_err()
    {
        // The intake stopped waiting (the stack is stopping); nothing to do.
    }
}
