//! A subquery shape's claims (ARCHITECTURE.md, "Serving subquery shapes",
//! 5): its log up to the claimed offset holds exactly the shape's rows as
//! of the claimed LSN. It claims only when steady (no move queued, no
//! move-in in flight, nothing waiting in its inbox or routed to it and not
//! received), when the intake has delivered everything up to what it
//! processed, when every dependency has vouched for every transaction it
//! received that touches the dependency's tables (a dependency sends a
//! transaction's moves before or with its vouching), when every restored
//! view has caught up, and when it has processed the transaction each
//! applied move reflects. The flush tracker hears "applied" only then, so
//! `global_last_seen_lsn` never names an LSN whose moves it lacks. A claim
//! is served only once the metadata records it.

use super::Consumer;
use crate::offset::LogOffset;
use crate::replication::Lsn;
use std::sync::atomic::Ordering;

/// A subquery shape's claims. A claim is served only once the metadata
/// records it (written with the next flush): a restore resumes from the
/// recorded claim, so a client never holds rows of a claim a restart could
/// take back, nor sees the claim go backwards.
#[derive(Debug, Default)]
pub(super) struct Claims {
    /// The last claim made (recorded or not).
    pub made: Option<(LogOffset, Lsn)>,
}

impl Claims {
    fn make(&mut self, offset: LogOffset, lsn: Lsn) {
        self.made = Some((offset, lsn));
    }

    /// The LSN of the last claim made (0 before any).
    pub fn lsn(&self) -> Lsn {
        self.made.map_or(0, |(_, lsn)| lsn)
    }

    /// A claim restored at boot (recorded by construction).
    pub fn restored(&mut self, claim: Option<(LogOffset, Lsn)>) {
        self.made = claim;
    }
}

impl Consumer {
    /// Serves the claim the metadata records, once it is newer.
    pub(super) fn promote_claims(&mut self) {
        let recorded = self.writer.meta().outer.as_ref().and_then(|o| o.claim);
        if let Some((offset, lsn)) = recorded
            && self.entry.claim() != Some((offset, lsn))
        {
            self.entry.set_claim(offset, lsn);
            self.entry.changed.notify(usize::MAX);
        }
    }
}

impl Consumer {
    /// Claims the log as the shape's rows as of the last transaction
    /// processed, if the shape is consistent (see the module doc); a nested
    /// inner shape then tells its subscribers how far it vouches.
    pub(super) async fn settle(&mut self) {
        let advanced = self.claim_if_consistent();
        if advanced && self.materializer.is_some() {
            let xid = self.outer().last_xid;
            self.publish(vec![xid], self.vouched()).await;
        }
    }

    /// Whether the intake has yet to route everything up to what this
    /// shape processed (its snapshot's position may be ahead of it).
    pub(super) fn undelivered(&self) -> bool {
        let delivered = self.ctx.delivered.lsn.load(Ordering::SeqCst);
        self.outer.as_ref().is_some_and(|o| delivered < o.processed)
    }

    /// Whether this shape waits for the intake to deliver more: to claim
    /// what it processed, or to pass its moves' cause.
    pub(super) fn awaits_delivery(&self) -> bool {
        let delivered = self.ctx.delivered.lsn.load(Ordering::SeqCst);
        self.outer
            .as_ref()
            .is_some_and(|o| delivered < o.processed.max(o.applied_cause))
    }

    /// Moves whose cause was never routed here (a restored inner shape
    /// publishes what it holds as of where replication resumed): once the
    /// intake has delivered past that cause and every transaction routed
    /// here is taken in, there is nothing between `processed` and it that
    /// concerns this shape, so it has processed that far.
    fn pass_unrouted(&mut self) {
        let delivered = self.ctx.delivered.lsn.load(Ordering::SeqCst);
        let routed = self.entry.last_routed.load(Ordering::SeqCst);
        let idle = routed <= self.last_received && self.inbox.is_empty();
        let outer = self.outer.as_mut().expect("a subquery shape");
        if idle && outer.processed < outer.applied_cause && delivered >= outer.applied_cause {
            outer.processed = outer.applied_cause;
        }
    }

    /// Whether the claim advanced.
    fn claim_if_consistent(&mut self) -> bool {
        self.pass_unrouted();
        let outer = self.outer.as_ref().expect("a subquery shape");
        // A dependency routed a transaction at or below what this shape
        // would claim must vouch for it: its moves (caused by a table of
        // its own dependencies, which is never routed here) may be on
        // their way.
        let dep_lags = |d: usize| {
            let routed = self.entry.dep_entries[d].last_routed.load(Ordering::SeqCst);
            outer.dep_through[d] < routed.min(outer.processed)
        };
        let behind = (0..outer.deps.len()).any(|d| {
            outer.catching_up(d) || outer.dep_through[d] < outer.dep_needed[d] || dep_lags(d)
        }) || outer.processed < outer.applied_cause;
        // Moves still in the channel are for transactions past what the
        // dependencies vouched for, so they need not be awaited here. What
        // waits in the inbox (taken in during the snapshot) may be a
        // transaction at or below the snapshot's position whose moves the
        // views lack: it is taken in first.
        // A transaction routed here but not received yet may be at or
        // below what it processed (its snapshot's position), with moves
        // its dependencies have not sent yet.
        let routed = self.entry.last_routed.load(Ordering::SeqCst);
        let in_flight = routed > self.last_received && outer.processed > self.last_received;
        // A transaction at or below what it processed (a snapshot's
        // position) that the intake has not routed yet may change a
        // dependency this shape's views do not reflect.
        let undelivered = self.undelivered();
        if behind || in_flight || undelivered || !outer.queue.is_empty() || !self.inbox.is_empty() {
            return false;
        }
        let processed = outer.processed;
        let advanced = self.claims.made.is_none_or(|(_, lsn)| lsn < processed);
        let claim = (self.entry.reader.latest_offset(), processed);
        if self.claims.made != Some(claim) {
            self.claims.make(claim.0, claim.1);
            self.save_state();
        }
        self.promote_claims();
        // Applied: every transaction it was sent, up to what it reflects.
        let applied = processed.min(self.last_received);
        let advanced = advanced || applied > self.applied;
        if applied > self.applied {
            self.report_applied(applied);
        }
        self.report_flush();
        self.entry.changed.notify(usize::MAX);
        advanced
    }
}
