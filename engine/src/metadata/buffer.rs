//! The metadata write buffer (Electric PR 3716): callers never wait for
//! SQLite. Operations queue in memory, in order; reads consult the buffer
//! first and SQLite second. Every read path is an index lookup:
//!
//! - `adds`: buffered shape rows by handle;
//! - `by_comparable`: buffered adds by comparable form (the PR review's "no
//!   full scans on the hot path");
//! - `tombstones`: handles removed but not yet deleted from SQLite, which hide
//!   the SQLite row;
//! - `completes`: snapshot completions not yet applied.
//!
//! The buffer is bounded ([`WriteBuffer::is_full`]); the caller applies
//! back-pressure when it is full.

use super::sqlite::{MetaOp, ShapeRow};
use crate::handle::ShapeHandle;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug)]
pub struct WriteBuffer {
    ops: VecDeque<MetaOp>,
    adds: BTreeMap<ShapeHandle, ShapeRow>,
    by_comparable: BTreeMap<String, ShapeHandle>,
    tombstones: BTreeSet<ShapeHandle>,
    completes: BTreeSet<ShapeHandle>,
    limit: usize,
}

/// What the buffer knows about a handle, before SQLite is asked.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<T> {
    /// Answered by the buffer.
    Buffered(T),
    /// Removed: SQLite's row (if any) is stale.
    Tombstoned,
    /// The buffer knows nothing: ask SQLite.
    Unknown,
}

impl WriteBuffer {
    pub fn new(limit: usize) -> WriteBuffer {
        assert!(
            limit > 0,
            "the write buffer needs room for at least one operation"
        );
        WriteBuffer {
            ops: VecDeque::new(),
            adds: BTreeMap::new(),
            by_comparable: BTreeMap::new(),
            tombstones: BTreeSet::new(),
            completes: BTreeSet::new(),
            limit,
        }
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.ops.len() >= self.limit
    }

    pub fn add(&mut self, row: ShapeRow) {
        assert!(
            !self.tombstones.contains(&row.handle),
            "handle {} reused after removal",
            row.handle
        );
        let previous = self
            .by_comparable
            .insert(row.comparable.clone(), row.handle.clone());
        assert!(
            previous.is_none(),
            "two buffered shapes with one comparable form: {}",
            row.comparable
        );
        self.adds.insert(row.handle.clone(), row.clone());
        self.ops.push_back(MetaOp::Add(row));
    }

    pub fn remove(&mut self, handle: &ShapeHandle) {
        if !self.tombstones.insert(handle.clone()) {
            return; // already removed: idempotent
        }
        if let Some(row) = self.adds.remove(handle) {
            self.by_comparable.remove(&row.comparable);
        }
        self.completes.remove(handle);
        self.ops.push_back(MetaOp::Remove(handle.clone()));
    }

    pub fn snapshot_complete(&mut self, handle: &ShapeHandle) {
        if self.tombstones.contains(handle) {
            return;
        }
        if let Some(row) = self.adds.get_mut(handle) {
            row.snapshot_complete = true;
        }
        self.completes.insert(handle.clone());
        self.ops.push_back(MetaOp::SnapshotComplete(handle.clone()));
    }

    pub fn handle_for_comparable(&self, comparable: &str) -> Option<&ShapeHandle> {
        self.by_comparable.get(comparable)
    }

    pub fn is_tombstoned(&self, handle: &ShapeHandle) -> bool {
        self.tombstones.contains(handle)
    }

    pub fn shape(&self, handle: &ShapeHandle) -> Lookup<&ShapeRow> {
        if self.tombstones.contains(handle) {
            Lookup::Tombstoned
        } else if let Some(row) = self.adds.get(handle) {
            Lookup::Buffered(row)
        } else {
            Lookup::Unknown
        }
    }

    /// Whether a snapshot completion is buffered for `handle`.
    pub fn completion_buffered(&self, handle: &ShapeHandle) -> bool {
        self.completes.contains(handle)
    }

    /// The oldest `max` operations, to apply in one SQLite transaction.
    pub fn batch(&self, max: usize) -> Vec<MetaOp> {
        self.ops.iter().take(max).cloned().collect()
    }

    /// The first `count` operations were committed to SQLite: drop them and
    /// the index entries that only they needed.
    pub fn applied(&mut self, count: usize) {
        for op in self.ops.drain(..count) {
            match op {
                MetaOp::Add(row) => {
                    // Still buffered only if no removal came after it.
                    if self.adds.remove(&row.handle).is_some() {
                        self.by_comparable.remove(&row.comparable);
                    }
                }
                MetaOp::Remove(handle) => {
                    self.tombstones.remove(&handle);
                }
                MetaOp::SnapshotComplete(handle) => {
                    self.completes.remove(&handle);
                }
            }
        }
    }
}
