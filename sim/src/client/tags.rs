//! Tag tracking as Electric's Elixir client does it (`tag_tracker.ex`), for
//! subquery shapes, written from its description, not from engine code:
//!
//! - each row's change carries `tags` (one per disjunct: `/`-joined slots,
//!   empty where a position is not in the disjunct, `1` for a plain atom,
//!   else a value hash), on updates `removed_tags`, and `active_conditions`
//!   (one per position);
//! - a key's tags become (current - removed) + new; a delete, or no tags
//!   left, forgets the key;
//! - the disjuncts' positions are read once, from the first tagged message
//!   (a tag's non-empty slots);
//! - a `move-out` event with `{pos, value}` patterns sets the matched
//!   positions of every key that has that hash there to false; a key with
//!   no disjunct left fully true is deleted by the client itself (a
//!   synthetic delete: the server writes no per-row deletes);
//! - a `move-in` event sets the matched positions of tracked keys to true
//!   (its rows arrive as ordinary inserts).
//!
//! Malformed tag headers are `wire` violations.

use super::{Violation, violation};
use std::collections::{BTreeMap, BTreeSet};

/// A `move-in` or `move-out` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveEvent {
    In,
    Out,
}

#[derive(Clone, Debug)]
struct KeyTags {
    tags: BTreeSet<String>,
    active: Vec<bool>,
}

#[derive(Clone, Debug, Default)]
pub struct TagTracker {
    keys: BTreeMap<String, KeyTags>,
    /// Each disjunct's positions, from the first tagged message.
    disjuncts: Option<Vec<Vec<usize>>>,
}

/// The slots of one tag.
fn slots(tag: &str) -> Vec<&str> {
    tag.split('/').collect()
}

impl TagTracker {
    pub fn clear(&mut self) {
        *self = TagTracker::default();
    }

    /// A change of `key` (`operation` as the wire names it) with its tag
    /// headers. Untagged changes (a shape without subqueries) are ignored.
    pub fn change(
        &mut self,
        key: &str,
        operation: &str,
        tags: &[String],
        removed: &[String],
        active: Option<&[bool]>,
    ) -> Result<(), Violation> {
        if tags.is_empty() && removed.is_empty() && active.is_none() {
            return Ok(());
        }
        let bad = |why: String| Err(violation("wire", format!("tags of {key}: {why}")));
        let Some(active) = active else {
            return bad("tags without active_conditions".to_string());
        };
        self.learn_disjuncts(tags);
        let positions = active.len();
        for tag in tags.iter().chain(removed) {
            if tag.split('/').count() != positions {
                return bad(format!("tag {tag:?} has not {positions} slots"));
            }
        }
        if operation == "delete" {
            self.keys.remove(key);
            return Ok(());
        }
        let mut entries = self.keys.remove(key).map(|k| k.tags).unwrap_or_default();
        for tag in removed {
            entries.remove(tag);
        }
        entries.extend(tags.iter().cloned());
        if !entries.is_empty() {
            let active = active.to_vec();
            self.keys.insert(
                key.to_string(),
                KeyTags {
                    tags: entries,
                    active,
                },
            );
        }
        Ok(())
    }

    /// The positions of each disjunct, read from the first tags seen.
    fn learn_disjuncts(&mut self, tags: &[String]) {
        if self.disjuncts.is_none() && !tags.is_empty() {
            let disjuncts = tags
                .iter()
                .map(|tag| {
                    let slots = slots(tag);
                    (0..slots.len()).filter(|&p| !slots[p].is_empty()).collect()
                })
                .collect();
            self.disjuncts = Some(disjuncts);
        }
    }

    /// A move event; the keys a move-out leaves with no disjunct fully
    /// true (the client deletes them). A pattern past the shape's positions
    /// is a `wire` violation.
    pub fn moved(
        &mut self,
        event: MoveEvent,
        patterns: &[(usize, String)],
    ) -> Result<Vec<String>, Violation> {
        if let Some(data) = self.keys.values().next()
            && let Some((position, _)) = patterns.iter().find(|(p, _)| *p >= data.active.len())
        {
            let why = format!(
                "{event:?} pattern for position {position} of {}",
                data.active.len()
            );
            return Err(violation("wire", why));
        }
        let mut deleted = Vec::new();
        for (key, data) in &mut self.keys {
            let mut matched = false;
            for (position, hash) in patterns {
                let hit = data
                    .tags
                    .iter()
                    .any(|tag| tag.split('/').nth(*position) == Some(hash.as_str()));
                if hit {
                    data.active[*position] = event == MoveEvent::In;
                    matched = true;
                }
            }
            if matched
                && event == MoveEvent::Out
                && !included(self.disjuncts.as_deref(), &data.active)
            {
                deleted.push(key.clone());
            }
        }
        for key in &deleted {
            self.keys.remove(key);
        }
        Ok(deleted)
    }
}

/// Some disjunct has all its positions active.
fn included(disjuncts: Option<&[Vec<usize>]>, active: &[bool]) -> bool {
    let Some(disjuncts) = disjuncts else {
        return active.iter().all(|&a| a);
    };
    disjuncts
        .iter()
        .any(|positions| positions.iter().all(|&p| active.get(p) == Some(&true)))
}
