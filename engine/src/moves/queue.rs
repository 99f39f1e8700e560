//! An outer consumer's move queue (Electric's `MoveQueue`), per dependency:
//! within one materializer flush the outs come before the ins; across
//! everything queued for a dependency the last op per tuple wins; an op
//! that the consumer's view already reflects (a move-in of a tuple in the
//! view, a move-out of one not in it) is dropped. `pop_next` hands out
//! every move-out before any move-in, lowest dependency first, one
//! dependency's whole batch of one kind at a time.
//!
//! Invariant: no queued op of a dependency is redundant against the view
//! it is queued against (asserted over the dependency's whole queue at
//! every enqueue: the consumer's view changes only by what it pops).

use super::Tuple;
use super::materializer::MoveEvents;
use crate::replication::Xid;
use crate::shape::dnf::Polarity;
use crate::shape::tags::View;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MoveKind {
    In,
    Out,
}

impl MoveKind {
    /// What a dependency's move does to the outer shape: the same for
    /// `IN`, the opposite for `NOT IN`.
    pub fn for_outer(self, polarity: Polarity) -> MoveKind {
        match (self, polarity) {
            (kind, Polarity::Positive) => kind,
            (MoveKind::In, Polarity::Negated) => MoveKind::Out,
            (MoveKind::Out, Polarity::Negated) => MoveKind::In,
        }
    }
}

/// One popped batch: a dependency's tuples of one kind, and the
/// transactions that moved them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveBatch {
    pub dependency: usize,
    pub kind: MoveKind,
    pub tuples: Vec<Tuple>,
    pub txids: Vec<Xid>,
}

#[derive(Debug, Default)]
struct DependencyQueue {
    ops: BTreeMap<Tuple, MoveKind>,
    /// The transactions behind the queued ops, per kind: every flush's
    /// txids go to both, and a pop takes its kind's.
    txids: BTreeMap<MoveKind, BTreeSet<Xid>>,
}

/// Whether the view already reflects `kind` of `tuple`.
fn redundant(view: &View, tuple: &Tuple, kind: MoveKind) -> bool {
    match kind {
        MoveKind::In => view.contains(tuple),
        MoveKind::Out => !view.contains(tuple),
    }
}

#[derive(Debug, Default)]
pub struct MoveQueue {
    dependencies: BTreeMap<usize, DependencyQueue>,
}

impl MoveQueue {
    pub fn is_empty(&self) -> bool {
        self.dependencies.is_empty()
    }

    /// Queues one materializer flush of `dependency`, judged against the
    /// consumer's `view` of it (the view after an in-flight move-in).
    pub fn enqueue(&mut self, dependency: usize, events: &MoveEvents, view: &View, txids: &[Xid]) {
        let queue = self.dependencies.entry(dependency).or_default();
        let outs = events.move_out.iter().map(|t| (t, MoveKind::Out));
        let ins = events.move_in.iter().map(|t| (t, MoveKind::In));
        for (tuple, kind) in outs.chain(ins) {
            if redundant(view, tuple, kind) {
                queue.ops.remove(tuple);
            } else {
                queue.ops.insert(tuple.clone(), kind);
            }
        }
        assert!(
            queue.ops.iter().all(|(t, &k)| !redundant(view, t, k)),
            "a queued op the view already reflects"
        );
        for kind in [MoveKind::In, MoveKind::Out] {
            queue
                .txids
                .entry(kind)
                .or_default()
                .extend(txids.iter().copied());
        }
        if queue.ops.is_empty() {
            self.dependencies.remove(&dependency);
        }
    }

    /// The next batch: every move-out before any move-in.
    pub fn pop_next(&mut self) -> Option<MoveBatch> {
        let kind = match self.has(MoveKind::Out) {
            true => MoveKind::Out,
            false => MoveKind::In,
        };
        let (&dependency, queue) = self
            .dependencies
            .iter_mut()
            .find(|(_, q)| q.ops.values().any(|&k| k == kind))?;
        let tuples: Vec<Tuple> = queue
            .ops
            .iter()
            .filter(|(_, k)| **k == kind)
            .map(|(t, _)| t.clone())
            .collect();
        queue.ops.retain(|_, k| *k != kind);
        let txids = queue
            .txids
            .remove(&kind)
            .unwrap_or_default()
            .into_iter()
            .collect();
        if queue.ops.is_empty() {
            self.dependencies.remove(&dependency);
        }
        Some(MoveBatch {
            dependency,
            kind,
            tuples,
            txids,
        })
    }

    fn has(&self, kind: MoveKind) -> bool {
        self.dependencies
            .values()
            .any(|q| q.ops.values().any(|&k| k == kind))
    }
}
