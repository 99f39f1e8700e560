//! The acknowledgement model: what each shape was routed and made
//! durable, and what the engine may acknowledge (`ack-contract`,
//! `ack-liveness`).

use super::Checker;
use super::now_ms;
use engine::offset::LogOffset;
use engine::replication::Lsn;

impl Checker {
    /// Why the slot has not reached `target`: the shape holding it back, or
    /// what the engine failed to do.
    pub fn ack_holdup(&self, target: Lsn) -> String {
        if self.run.received < target {
            return format!(
                "the engine received transactions only up to lsn {} (of {target})",
                self.run.received
            );
        }
        let oldest = self
            .run
            .pending
            .iter()
            .filter_map(|(h, p)| p.first().map(|l| (*l, h)))
            .min();
        match oldest {
            Some((lsn, handle)) => {
                let shape = self.handle_shape.get(handle.as_str());
                format!(
                    "shape {} ({handle}) holds it back: lsn {lsn} was routed to it and is not durable there",
                    shape.map_or("?".to_string(), |s| s.to_string())
                )
            }
            None => format!(
                "no shape holds it back: every shape made lsn {target} durable, the engine last acknowledged {:?}",
                self.run.acked
            ),
        }
    }

    pub(super) fn caught_up_maybe(&mut self) {
        let caught_up = self
            .run
            .catch_up_to
            .is_some_and(|end| self.run.received >= end);
        if caught_up {
            self.run.catch_up_to = None;
            let now = now_ms();
            for window in self.faults.iter_mut().filter(|(_, end)| end.is_none()) {
                window.1 = Some(now);
            }
        }
    }

    /// A keepalive reached the engine: nothing at or below `wal_end` is
    /// still to come, and no WAL the model has not written is claimed.
    pub(super) fn caught_up(&mut self, wal_end: Lsn) {
        assert!(
            wal_end <= self.pg.last_lsn(),
            "a keepalive for lsn {wal_end}, past the WAL's end {}",
            self.pg.last_lsn()
        );
        self.run.received = self.run.received.max(wal_end);
    }

    pub(super) fn routed(&mut self, lsn: Lsn, shapes: &[engine::handle::ShapeHandle]) {
        self.run.received = self.run.received.max(lsn);
        for handle in shapes {
            // A log already durable past it (a subquery shape's events sit
            // at its snapshot position) needs nothing more for it.
            let durable = self.run.durable_tx.get(handle.as_str());
            if durable.is_some_and(|&tx| lsn <= tx) {
                continue;
            }
            self.run
                .pending
                .entry(handle.to_string())
                .or_default()
                .insert(lsn);
        }
        self.caught_up_maybe();
    }

    pub(super) fn durable(&mut self, handle: &str, offset: LogOffset) {
        self.created_lagging.remove(handle);
        if self.write_faulted.contains(handle) {
            let why = format!(
                "{handle} reported durable to {offset} after a write or sync of its files failed: what the failure covered may never reach the disk"
            );
            return self.fail("durability", why, Some(handle));
        }
        let tx = offset.tx().unwrap_or(0);
        let durable_tx = self.run.durable_tx.entry(handle.to_string()).or_default();
        *durable_tx = (*durable_tx).max(tx);
        if let Some(pending) = self.run.pending.get_mut(handle) {
            pending.retain(|&lsn| lsn > tx);
        }
    }

    pub(super) fn acknowledged(&mut self, lsn: Lsn) {
        self.coverage.checks.acks += 1;
        let floor = self.run.acked.or(self.run.confirmed);
        if let Some(floor) = floor.filter(|&f| lsn < f) {
            return self.fail(
                "ack-contract",
                format!("acknowledged lsn {lsn} after {floor}: backwards"),
                None,
            );
        }
        if lsn > self.run.received {
            let why = format!(
                "acknowledged lsn {lsn}, past everything received ({})",
                self.run.received
            );
            return self.fail("ack-contract", why, None);
        }
        let unflushed = self
            .run
            .pending
            .iter()
            .filter_map(|(h, p)| p.first().filter(|&&l| l <= lsn).map(|l| (*l, h.clone())))
            .min();
        if let Some((pending, handle)) = unflushed {
            let why = format!(
                "acknowledged lsn {lsn} while lsn {pending}, routed to {handle}, is not durable there"
            );
            return self.fail("ack-contract", why, Some(&handle));
        }
        self.run.acked = Some(lsn);
    }
}
