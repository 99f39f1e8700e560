//! Where a move-in's rows go among the transactions buffered while its
//! query ran (Electric's `ActiveMove` boundary). Fixed once set:
//!
//! (a) once the query's snapshot is known: the first buffered transaction
//!     the snapshot does not see (its effects are not in the moved-in rows,
//!     so it must follow them);
//! (b) otherwise, once every transaction up to the query's WAL position
//!     has reached this consumer (buffered, or not routed to it): every
//!     transaction buffered so far (the snapshot saw them all).
//!
//! Rule (b) is fed this consumer's own delivered LSN, not the LSN every
//! shape has applied: a buffering shape has not applied what it buffered,
//! so waiting on the global LSN would wait on itself.
//!
//! Transactions before the boundary are written with the view before the
//! move, the move-in event and rows next, then the rest with the view
//! after it.

use crate::replication::{Lsn, Visibility, Xid};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundaryRule {
    FirstInvisible,
    ReachedQueryLsn,
}

#[derive(Debug, Default)]
pub struct Boundary {
    snapshot: Option<Visibility>,
    buffered: Vec<Xid>,
    reached: Lsn,
    at: Option<(usize, BoundaryRule)>,
}

impl Boundary {
    /// The boundary, once set: how many buffered transactions precede the
    /// move-in, and by which rule.
    pub fn get(&self) -> Option<(usize, BoundaryRule)> {
        self.at
    }

    pub fn buffered(&self) -> usize {
        self.buffered.len()
    }

    /// A transaction was buffered while the move-in is in flight.
    pub fn buffer(&mut self, xid: Xid) {
        self.buffered.push(xid);
        self.settle();
    }

    /// The move-in query's snapshot (with its WAL position) is known.
    pub fn snapshot_known(&mut self, snapshot: Visibility) {
        assert!(self.snapshot.is_none(), "a move-in has one snapshot");
        self.snapshot = Some(snapshot);
        self.settle();
    }

    /// Every transaction up to `lsn` has reached this consumer.
    pub fn reached(&mut self, lsn: Lsn) {
        self.reached = self.reached.max(lsn);
        self.settle();
    }

    fn settle(&mut self) {
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        if self.at.is_some() {
            return;
        }
        if let Some(i) = self.buffered.iter().position(|&x| !snapshot.is_visible(x)) {
            self.at = Some((i, BoundaryRule::FirstInvisible));
        } else if self.reached >= snapshot.wal_lsn {
            self.at = Some((self.buffered.len(), BoundaryRule::ReachedQueryLsn));
        }
    }
}
