//! A dependency's materializer: a strict reducer over the inner shape's
//! changes. It holds each included row's value tuple by key and counts the
//! rows per tuple; a tuple whose count goes 0 -> 1 moves in, 1 -> 0 moves
//! out. Events of one transaction are flushed at its commit, after
//! cancelling ins against outs of the same tuple as a multiset (0 -> 1 ->
//! 0 -> 1 in one transaction is one move-in).
//!
//! Strict (Electric raises; so does this): an insert of a key already held,
//! and an update or delete of a key not held, are [`Violation`]s, never
//! skipped. Invariant: every count is positive and the counts sum to the
//! number of rows held (asserted after every change).
//!
//! Rows of an inner shape that is itself a subquery shape carry their tags
//! and active conditions ([`RowMeta`]); its move events flip the matched
//! positions, and a row no disjunct of which stays fully active leaves the
//! index (a later insert brings it back).

use super::Tuple;
use crate::moves::queue::MoveKind;
use std::collections::BTreeMap;

/// A nested inner row's tags (one per disjunct, `/`-joined slots) and
/// active conditions (one per position).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowMeta {
    pub tags: Vec<String>,
    pub active: Vec<bool>,
}

impl RowMeta {
    fn slot(&self, disjunct: usize, position: usize) -> &str {
        self.tags[disjunct].split('/').nth(position).unwrap_or("")
    }

    /// Some disjunct has every one of its positions active.
    fn included(&self) -> bool {
        (0..self.tags.len())
            .any(|d| (0..self.active.len()).all(|p| self.slot(d, p).is_empty() || self.active[p]))
    }

    /// Sets the positions whose slot holds one of `patterns` to `to`;
    /// whether any matched.
    fn flip(&mut self, patterns: &[(usize, String)], to: bool) -> bool {
        let mut matched = false;
        for (position, hash) in patterns {
            if (0..self.tags.len()).any(|d| self.slot(d, *position) == hash) {
                self.active[*position] = to;
                matched = true;
            }
        }
        matched
    }
}

/// One change of the inner shape's log, reduced to what the materializer
/// needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InnerChange {
    Insert {
        key: String,
        value: Tuple,
        meta: Option<RowMeta>,
    },
    /// `old_key` differs from `key` when the primary key changed.
    Update {
        old_key: String,
        key: String,
        value: Tuple,
        meta: Option<RowMeta>,
    },
    Delete {
        key: String,
    },
    /// A move event of a nested inner shape: `(position, hash)` patterns.
    Move {
        kind: MoveKind,
        patterns: Vec<(usize, String)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("insert of key {0}, which the materializer already holds")]
    DuplicateInsert(String),
    #[error("{op} of key {key}, which the materializer does not hold")]
    UnknownKey { op: &'static str, key: String },
}

/// What one committed transaction moved, each list sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoveEvents {
    pub move_in: Vec<Tuple>,
    pub move_out: Vec<Tuple>,
}

impl MoveEvents {
    pub fn is_empty(&self) -> bool {
        self.move_in.is_empty() && self.move_out.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Materializer {
    rows: BTreeMap<String, (Tuple, Option<RowMeta>)>,
    counts: BTreeMap<Tuple, usize>,
    pending: MoveEvents,
}

impl Materializer {
    /// The tuples some included row holds now.
    pub fn values(&self) -> impl Iterator<Item = &Tuple> {
        self.counts.keys()
    }

    /// Whether a row with `key` is held.
    pub fn holds(&self, key: &str) -> bool {
        self.rows.contains_key(key)
    }

    pub fn apply(&mut self, change: InnerChange) -> Result<(), Violation> {
        match change {
            InnerChange::Insert { key, value, meta } => self.insert(key, value, meta)?,
            InnerChange::Update {
                old_key,
                key,
                value,
                meta,
            } => {
                if !self.rows.contains_key(&old_key) {
                    return Err(Violation::UnknownKey {
                        op: "update",
                        key: old_key,
                    });
                }
                // Refused before anything changes: a failed change leaves
                // the materializer as it was.
                if key != old_key && self.rows.contains_key(&key) {
                    return Err(Violation::DuplicateInsert(key));
                }
                self.remove(&old_key);
                self.insert(key, value, meta)?;
            }
            InnerChange::Delete { key } => {
                if !self.remove(&key) {
                    return Err(Violation::UnknownKey { op: "delete", key });
                }
            }
            InnerChange::Move { kind, patterns } => self.moved(kind, &patterns),
        }
        self.assert_counts();
        Ok(())
    }

    /// The transaction committed: its events, ins and outs of one tuple
    /// cancelled pairwise.
    pub fn commit(&mut self) -> MoveEvents {
        let MoveEvents {
            mut move_in,
            mut move_out,
        } = std::mem::take(&mut self.pending);
        move_in.sort();
        move_out.sort();
        // A merge of the two sorted lists; equal tuples cancel pairwise.
        let (mut ins, mut outs) = (Vec::new(), Vec::new());
        let mut rest = move_out.into_iter().peekable();
        for tuple in move_in {
            while let Some(out) = rest.next_if(|out| *out < tuple) {
                outs.push(out);
            }
            if rest.next_if_eq(&tuple).is_none() {
                ins.push(tuple);
            }
        }
        outs.extend(rest);
        MoveEvents {
            move_in: ins,
            move_out: outs,
        }
    }

    fn insert(
        &mut self,
        key: String,
        value: Tuple,
        meta: Option<RowMeta>,
    ) -> Result<(), Violation> {
        if self.rows.contains_key(&key) {
            return Err(Violation::DuplicateInsert(key));
        }
        self.increment(&value);
        self.rows.insert(key, (value, meta));
        Ok(())
    }

    /// Removes `key` if held; whether it was.
    fn remove(&mut self, key: &str) -> bool {
        match self.rows.remove(key) {
            Some((value, _)) => {
                self.decrement(&value);
                true
            }
            None => false,
        }
    }

    fn moved(&mut self, kind: MoveKind, patterns: &[(usize, String)]) {
        let to = kind == MoveKind::In;
        let mut excluded = Vec::new();
        for (key, (_, meta)) in &mut self.rows {
            let Some(meta) = meta else { continue };
            if meta.flip(patterns, to) && !meta.included() {
                excluded.push(key.clone());
            }
        }
        for key in excluded {
            self.remove(&key);
        }
    }

    fn increment(&mut self, value: &Tuple) {
        let count = self.counts.entry(value.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.pending.move_in.push(value.clone());
        }
    }

    fn decrement(&mut self, value: &Tuple) {
        let count = self
            .counts
            .get_mut(value)
            .unwrap_or_else(|| panic!("invariant violated: no count for a held tuple {value:?}"));
        *count -= 1;
        if *count == 0 {
            self.counts.remove(value);
            self.pending.move_out.push(value.clone());
        }
    }

    fn assert_counts(&self) {
        let total: usize = self.counts.values().sum();
        assert_eq!(total, self.rows.len(), "the counts sum to the rows held");
        assert!(
            self.counts.values().all(|&c| c > 0),
            "every count is positive"
        );
    }
}
