//! Flush tracking: the LSN the engine may acknowledge to the replication slot,
//! and the LSN every shape has applied (what `global_last_seen_lsn` may say).
//!
//! Acknowledging LSN `A` lets Postgres forget every transaction committed at or
//! below `A`, so `A` must stay below the oldest transaction that some shape has
//! been sent but has not yet made durable. Per pending shape we keep the last
//! LSN sent to it, the last LSN it has applied (appended and committed, or
//! skipped) and the last LSN it reported durable; a shape that becomes
//! pending at LSN `L` counts as applied and durable up to `L - 1` (it needed
//! nothing before). The acknowledgement is the least durable LSN of those, or
//! the last LSN seen when no shape is pending (Electric's FlushTracker,
//! section 5.3). The visible LSN is the same over applied LSNs: every
//! transaction at or below it is readable in every shape it was sent to
//! (the fix of Electric bug 8, which published the last LSN *seen*).

use crate::replication::Lsn;
use event_listener::Event;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    last_sent: Lsn,
    last_applied: Lsn,
    last_flushed: Lsn,
}

#[derive(Debug)]
pub struct FlushTracker {
    last_seen: Lsn,
    last_ack: Lsn,
    last_visible: Lsn,
    pending: BTreeMap<String, Pending>,
    /// Planted bug `ack-past-unflushed`: acknowledge what was seen, flushed or not.
    #[cfg(feature = "plants")]
    ack_past_unflushed: bool,
}

impl FlushTracker {
    /// Starts from the slot's confirmed LSN: everything at or below it is durable.
    pub fn new(confirmed_lsn: Lsn) -> FlushTracker {
        FlushTracker {
            last_seen: confirmed_lsn,
            last_ack: confirmed_lsn,
            last_visible: confirmed_lsn,
            pending: BTreeMap::new(),
            #[cfg(feature = "plants")]
            ack_past_unflushed: false,
        }
    }

    #[cfg(feature = "plants")]
    pub fn plant_ack_past_unflushed(&mut self) {
        self.ack_past_unflushed = true;
    }

    /// A transaction was processed and sent to `shapes` (possibly none).
    pub fn txn_routed<'a>(&mut self, lsn: Lsn, shapes: impl IntoIterator<Item = &'a str>) {
        assert!(
            lsn > self.last_seen,
            "transactions must arrive in LSN order: {lsn} after {}",
            self.last_seen
        );
        for handle in shapes {
            let entry = self.pending.entry(handle.to_string()).or_insert(Pending {
                last_sent: lsn,
                last_applied: lsn - 1,
                last_flushed: lsn - 1,
            });
            if entry.last_applied == entry.last_sent {
                // It had applied all it was sent, and nothing was sent to it
                // since: it has applied everything up to here.
                entry.last_applied = lsn - 1;
            }
            entry.last_sent = lsn;
        }
        self.last_seen = lsn;
    }

    /// Postgres has sent every transaction at or below `lsn` (a keepalive):
    /// what was seen moves there, so with no shape pending both the
    /// visible and the acknowledgeable LSN may reach it.
    pub fn caught_up(&mut self, lsn: Lsn) {
        self.last_seen = self.last_seen.max(lsn);
    }

    /// A removed shape whose storage is not durably gone: until
    /// [`FlushTracker::remove_shape`], the acknowledgement stays at or below
    /// what was seen now. A crash before the removal is durable may restore
    /// the shape, which then needs every transaction it was not sent after
    /// its removal replayed.
    pub fn hold_removed(&mut self, handle: &str) {
        let seen = self.last_seen;
        let entry = self.pending.entry(handle.to_string()).or_insert(Pending {
            last_sent: seen,
            last_applied: seen,
            last_flushed: seen,
        });
        entry.last_flushed = entry.last_flushed.min(seen);
        // Never reached by a flush report: only remove_shape releases it.
        entry.last_sent = Lsn::MAX;
        entry.last_applied = Lsn::MAX;
    }

    /// `handle` applied (committed to its log, or skipped) every transaction
    /// sent to it at or below `lsn`.
    pub fn applied(&mut self, handle: &str, lsn: Lsn) {
        if let Some(entry) = self.pending.get_mut(handle) {
            assert!(
                lsn <= entry.last_sent,
                "{handle} applied {lsn}, past the last LSN sent to it ({})",
                entry.last_sent
            );
            entry.last_applied = entry.last_applied.max(lsn);
        }
    }

    /// `handle` made durable every transaction sent to it at or below `lsn`.
    pub fn flushed(&mut self, handle: &str, lsn: Lsn) {
        let Some(entry) = self.pending.get_mut(handle) else {
            return;
        };
        if lsn >= entry.last_sent {
            self.pending.remove(handle);
        } else {
            entry.last_flushed = entry.last_flushed.max(lsn);
            entry.last_applied = entry.last_applied.max(lsn);
        }
    }

    /// A removed shape holds nothing back any more.
    pub fn remove_shape(&mut self, handle: &str) {
        self.pending.remove(handle);
    }

    /// Whether every shape has made durable everything it was sent.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn last_seen(&self) -> Lsn {
        self.last_seen
    }

    /// The highest LSN every shape has applied: each transaction at or below
    /// it is readable in every shape it was sent to.
    pub fn visible_lsn(&mut self) -> Lsn {
        let lagging = self
            .pending
            .values()
            .filter(|p| p.last_applied < p.last_sent);
        let visible = lagging
            .map(|p| p.last_applied)
            .min()
            .unwrap_or(self.last_seen);
        assert!(visible <= self.last_seen, "visible past what was seen");
        assert!(
            visible >= self.last_visible,
            "the visible LSN went backwards: {visible} < {}",
            self.last_visible
        );
        self.last_visible = visible;
        visible
    }

    /// The shape holding the acknowledgement back the most, if any, with the
    /// LSN it has made durable.
    pub fn oldest_pending(&self) -> Option<(&str, Lsn)> {
        self.pending
            .iter()
            .min_by_key(|(_, p)| p.last_flushed)
            .map(|(h, p)| (h.as_str(), p.last_flushed))
    }

    /// The LSN that may be acknowledged now. Never decreases.
    pub fn ack_lsn(&mut self) -> Lsn {
        let safe = self
            .pending
            .values()
            .map(|p| p.last_flushed)
            .min()
            .unwrap_or(self.last_seen);
        #[cfg(feature = "plants")]
        let safe = if self.ack_past_unflushed {
            self.last_seen
        } else {
            safe
        };
        assert!(
            safe >= self.last_ack,
            "acknowledgement went backwards: {safe} < {}",
            self.last_ack
        );
        assert!(safe <= self.last_seen, "acknowledgement past what was seen");
        self.last_ack = safe;
        safe
    }
}

/// The tracker as the stack shares it: `None` until replication first
/// connects, and an event notified whenever it may have moved.
#[derive(Default)]
pub struct SharedTracker {
    tracker: Mutex<Option<FlushTracker>>,
    pub changed: Event,
}

impl SharedTracker {
    pub fn lock(&self) -> MutexGuard<'_, Option<FlushTracker>> {
        self.tracker.lock().expect("flush tracker poisoned")
    }

    /// Runs `f` on the tracker if there is one.
    pub fn with<T>(&self, f: impl FnOnce(&mut FlushTracker) -> T) -> Option<T> {
        self.lock().as_mut().map(f)
    }

    /// Runs `f` on the tracker if there is one, then wakes its watchers (the
    /// acknowledgement may have moved).
    pub fn update(&self, f: impl FnOnce(&mut FlushTracker)) {
        self.with(f);
        self.changed.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Clone, Debug)]
    enum Op {
        Txn {
            gap: u64,
            shapes: Vec<usize>,
        },
        Apply {
            shape: usize,
            pick: usize,
        },
        Flush {
            shape: usize,
            pick: usize,
        },
        /// The shape is removed: it is routed nothing more and holds the
        /// acknowledgement until its storage is gone (`Release`).
        Hold {
            shape: usize,
        },
        Release {
            shape: usize,
        },
        /// A keepalive: the WAL moved on without a transaction.
        Keepalive {
            gap: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..4, prop::collection::vec(0usize..4, 0..3)).prop_map(|(gap, shapes)| Op::Txn { gap, shapes }),
            2 => (0usize..4, any::<usize>()).prop_map(|(shape, pick)| Op::Apply { shape, pick }),
            3 => (0usize..4, any::<usize>()).prop_map(|(shape, pick)| Op::Flush { shape, pick }),
            1 => (0usize..4).prop_map(|shape| Op::Hold { shape }),
            1 => (0usize..4).prop_map(|shape| Op::Release { shape }),
            1 => (0u64..4).prop_map(|gap| Op::Keepalive { gap }),
        ]
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(1_000))]

        /// Against a model that remembers every unapplied and unflushed
        /// transaction of every shape, and every removal not yet durable:
        /// the acknowledgement is never at or above an unflushed one nor
        /// past a pending removal, the visible LSN never at or above an
        /// unapplied one; neither passes what was seen nor decreases, and
        /// both catch up once all is done.
        #[test]
        fn ack_never_passes_an_unflushed_transaction(start in 0u64..100, ops in prop::collection::vec(op(), 1..60)) {
            let mut tracker = FlushTracker::new(start);
            let mut unapplied: Vec<BTreeSet<Lsn>> = vec![BTreeSet::new(); 4];
            let mut unflushed: Vec<BTreeSet<Lsn>> = vec![BTreeSet::new(); 4];
            let mut sent: Vec<Vec<Lsn>> = vec![Vec::new(); 4];
            let mut held: Vec<Option<Lsn>> = vec![None; 4];
            let mut lsn = start;
            let mut last_ack = start;
            let mut last_visible = start;
            for op in ops {
                match op {
                    Op::Txn { gap, shapes } => {
                        lsn += gap;
                        let shapes: BTreeSet<usize> =
                            shapes.into_iter().filter(|&s| held[s].is_none()).collect();
                        let names: Vec<String> = shapes.iter().map(|s| format!("s{s}")).collect();
                        tracker.txn_routed(lsn, names.iter().map(String::as_str));
                        for s in shapes {
                            unapplied[s].insert(lsn);
                            unflushed[s].insert(lsn);
                            sent[s].push(lsn);
                        }
                    }
                    Op::Apply { shape, pick } => {
                        if sent[shape].is_empty() { continue; }
                        let up_to = sent[shape][pick % sent[shape].len()];
                        tracker.applied(&format!("s{shape}"), up_to);
                        unapplied[shape].retain(|&l| l > up_to);
                    }
                    Op::Flush { shape, pick } => {
                        if sent[shape].is_empty() { continue; }
                        let up_to = sent[shape][pick % sent[shape].len()];
                        tracker.flushed(&format!("s{shape}"), up_to);
                        unapplied[shape].retain(|&l| l > up_to);
                        unflushed[shape].retain(|&l| l > up_to);
                    }
                    Op::Hold { shape } => {
                        tracker.hold_removed(&format!("s{shape}"));
                        unapplied[shape].clear(); // a removed shape holds no reader back
                        held[shape].get_or_insert(lsn);
                    }
                    Op::Keepalive { gap } => {
                        lsn += gap;
                        tracker.caught_up(lsn);
                    }
                    Op::Release { shape } => {
                        tracker.remove_shape(&format!("s{shape}"));
                        unapplied[shape].clear();
                        unflushed[shape].clear();
                        sent[shape].clear();
                        held[shape] = None;
                    }
                }
                let visible = tracker.visible_lsn();
                let oldest_unapplied = unapplied.iter().flatten().min();
                prop_assert!(oldest_unapplied.is_none_or(|&u| visible < u), "visible {} at or past unapplied {:?}", visible, oldest_unapplied);
                prop_assert!(visible <= lsn && visible >= last_visible, "visible {} after {}", visible, last_visible);
                if oldest_unapplied.is_none() {
                    prop_assert_eq!(visible, lsn, "nothing unapplied: everything seen is visible");
                }
                last_visible = visible;
                let ack = tracker.ack_lsn();
                let oldest_unflushed = unflushed.iter().flatten().min();
                prop_assert!(oldest_unflushed.is_none_or(|&u| ack < u), "ack {} at or past unflushed {:?}", ack, oldest_unflushed);
                prop_assert!(ack <= lsn && ack >= last_ack);
                let hold = held.iter().flatten().min();
                prop_assert!(hold.is_none_or(|&h| ack <= h), "ack {} past a removal at {:?}", ack, hold);
                if oldest_unflushed.is_none() && hold.is_none() {
                    prop_assert_eq!(ack, lsn, "nothing pending: everything seen is acknowledged");
                    prop_assert!(tracker.is_idle());
                }
                last_ack = ack;
            }
        }
    }

    #[cfg(feature = "plants")]
    #[test]
    fn the_planted_bug_acknowledges_past_an_unflushed_transaction() {
        let mut tracker = FlushTracker::new(10);
        tracker.plant_ack_past_unflushed();
        tracker.txn_routed(11, ["a"]);
        assert_eq!(
            tracker.ack_lsn(),
            11,
            "with the plant, shape a's unflushed 11 is acknowledged"
        );
        let mut honest = FlushTracker::new(10);
        honest.txn_routed(11, ["a"]);
        assert_eq!(honest.ack_lsn(), 10);
    }
}
