//! Removals and boot: which removal reasons the harness accepts, and what
//! a boot may drop or restore (`lost-shape`).

use super::{Checker, Fate, now_ms};
use engine::env::events::{RemovalReason, StorageFailureKind};

impl Checker {
    /// Boot restored a shape. One whose removal had begun (its tombstone
    /// was lost with the write buffer) is back in service, but it was routed
    /// nothing after its removal: the slot must still hold all of that.
    pub(super) fn restored(&mut self, handle: &str) {
        // A new writer, from what its files hold durably.
        self.write_faulted.remove(handle);
        let confirmed = self.pg.slot_confirmed();
        if self.unrestored.contains(handle) {
            let why = format!(
                "boot restored {handle}, which the shutdown released as a shape the next boot drops: the acknowledgement may have passed what it lacks"
            );
            self.fail("ack-contract", why, Some(handle));
        }
        let state = self.handle(handle);
        let removed_at = state.removed_at;
        (state.fate, state.removed_at, state.explained) = (None, None, false);
        if let Some(removed_at) = removed_at.filter(|&r| confirmed > r) {
            let why = format!(
                "boot restored {handle}, removed at lsn {removed_at}, but the slot was acknowledged to {confirmed}: what it missed since can never be replayed"
            );
            self.fail("ack-contract", why, Some(handle));
        }
    }

    /// Whether the harness accepts `reason` for removing `handle` (the
    /// accepted 409s): its table changed, the harness asked, or an I/O
    /// error was injected into its files.
    pub(super) fn accepted(&self, handle: &str, reason: &RemovalReason) -> bool {
        match reason {
            RemovalReason::TableChanged { oid, .. } => self
                .pg
                .altered_tables()
                .iter()
                .any(|t| self.pg.table(t).oid == *oid),
            RemovalReason::Requested => self.requested.contains(handle),
            // In Electric's mode, boot drops subquery shapes and inner
            // shapes (no client ever holds an inner shape's handle),
            // nothing else; otherwise it restores them.
            RemovalReason::SubqueryNotRestored => {
                self.drops_subqueries
                    && self
                        .handle_shape
                        .get(handle)
                        .is_none_or(|&i| self.views[i].depth > 0)
            }
            // An inner shape did not survive: dropped earlier in this boot
            // for an accepted reason (inner shapes are restored first).
            RemovalReason::DependencyLost => {
                self.run.explained_boot_drop || self.declined_explained.contains(handle)
            }
            // An inner shape no subquery shape uses: no client holds it.
            RemovalReason::Unused => !self.handle_shape.contains_key(handle),
            RemovalReason::DependencyRemoved { dependency } => self
                .handles
                .get(dependency.as_str())
                .is_some_and(|s| s.explained),
            other => other.storage_failure().is_some_and(|f| {
                matches!(f.kind, StorageFailureKind::Io(_)) && self.io_faulted.contains(handle)
            }),
        }
    }

    pub(super) fn removed(&mut self, handle: &str, reason: &RemovalReason) {
        self.last_removal = Some((now_ms(), reason.name().to_string()));
        self.removing.insert(handle.to_string());
        self.snapshotting.remove(handle);
        self.created_lagging.remove(handle);
        let accepted = self.accepted(handle, reason);
        // Before replication connects (a removal during boot), what the
        // slot confirmed is what the shape had.
        let received = self.run.received.max(self.pg.slot_confirmed());
        let state = self.handle(handle);
        state.removed_at.get_or_insert(received);
        state.fate = Some(Fate::Removed(reason.clone()));
        state.explained = accepted;
        if !accepted {
            let why = format!("the engine removed live shape {handle}: {reason}");
            self.fail("lost-shape", why, Some(handle));
        }
    }

    pub(super) fn boot_dropped(&mut self, handle: &str, reason: &RemovalReason) {
        let accepted = self.accepted(handle, reason);
        let state = self.handle(handle).clone();
        // What the metadata database says explains some drops by itself; a
        // shape whose removal had begun may be dropped for any reason.
        let explained = match reason {
            RemovalReason::MetadataLost => !state.in_db,
            RemovalReason::SnapshotIncomplete => !state.complete_in_db,
            _ => false,
        } || state.removed_at.is_some();
        // Before replication connects (a removal during boot), what the
        // slot confirmed is what the shape had.
        let received = self.run.received.max(self.pg.slot_confirmed());
        let state = self.handle(handle);
        // Its storage is being removed: a kill may leave it partly gone.
        state.removed_at.get_or_insert(received);
        if *reason == RemovalReason::SnapshotIncomplete {
            // Boot deleted the row from the metadata database itself.
            (state.in_db, state.complete_in_db) = (false, false);
        }
        if state.fate.is_none() {
            state.fate = Some(Fate::Removed(reason.clone()));
            state.explained = accepted || explained;
        }
        self.run.explained_boot_drop |= accepted || explained;
        if !accepted && !explained {
            let why = format!(
                "boot dropped {handle} ({reason}) although its metadata was complete and its storage durable"
            );
            self.fail("lost-shape", why, Some(handle));
        }
    }
}
