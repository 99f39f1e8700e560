//! Checked shapes, remembered per thread: checking a request (parsing its
//! WHERE, planning its subqueries, computing its identity) is a pure
//! function of the catalog and the request, and the same few requests are
//! checked again and again: at every boot (each stored shape, its layer,
//! its dependencies), on every creation, by every new stack after a
//! restart.
//!
//! Invariants:
//! - an answer is returned only for a catalog equal to the one it was
//!   computed against, and a request equal to the one it answers: a
//!   remembered answer is the answer the check would give now;
//! - bounded: at most `CATALOGS_MAX` catalogs, each with at most
//!   `REQUESTS_MAX` answers; past a bound the oldest catalog, or that
//!   catalog's answers, are forgotten;
//! - nothing is shared between threads, and nothing is iterated in an
//!   order that depends on anything but the keys (determinism).
//! - a shape is handed out shared (`Arc`), never copied: shapes are
//!   immutable once checked.
//!
//! Deliberately absent: invalidation. Catalogs are compared by value, so
//! a changed table is simply another catalog.

use super::{Shape, ShapeError, ShapeRequest};
use crate::schema::Catalog;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Catalogs remembered per thread (a run sees one, and one more per
/// schema change; the historic ones of a replay rarely come back).
const CATALOGS_MAX: usize = 4;
/// Answers remembered per catalog.
const REQUESTS_MAX: usize = 1024;

/// Which check answered: a client's shape, or a subquery's inner shape.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Role {
    Plain = 0,
    Inner = 1,
}

/// A check's answer; a shape is shared, never copied, by whoever asks.
pub(super) type Answer = Result<Arc<Shape>, ShapeError>;

/// One catalog's answers, by role (looked up by a borrowed request).
type Answers = [BTreeMap<ShapeRequest, Answer>; 2];

thread_local! {
    /// Most recently used catalog last.
    static MEMO: RefCell<Vec<(Catalog, Answers)>> = const { RefCell::new(Vec::new()) };
}

/// `check(catalog, request)`, or the answer it gave before for an equal
/// catalog and request.
pub(super) fn checked(
    role: Role,
    catalog: &Catalog,
    request: &ShapeRequest,
    check: impl FnOnce() -> Result<Shape, ShapeError>,
) -> Answer {
    let found = MEMO.with_borrow_mut(|memo| {
        let at = memo.iter().position(|(c, _)| c == catalog)?;
        let mut entry = memo.remove(at);
        // The caller's equal copy: the next check with it compares by
        // pointer (a restarted stack reads its catalog anew).
        entry.0 = catalog.clone();
        let answer = entry.1[role as usize].get(request).cloned();
        memo.push(entry);
        answer
    });
    if let Some(answer) = found {
        return answer;
    }
    // Checked outside the borrow: an inner shape's check checks its own
    // dependencies through here.
    let answer = check().map(Arc::new);
    MEMO.with_borrow_mut(|memo| {
        let at = match memo.iter().position(|(c, _)| c == catalog) {
            Some(at) => at,
            None => {
                if memo.len() >= CATALOGS_MAX {
                    memo.remove(0);
                }
                memo.push((catalog.clone(), Answers::default()));
                memo.len() - 1
            }
        };
        let answers = &mut memo[at].1;
        if answers.iter().map(BTreeMap::len).sum::<usize>() >= REQUESTS_MAX {
            answers.iter_mut().for_each(BTreeMap::clear);
        }
        answers[role as usize].insert(request.clone(), answer.clone());
        assert!(memo.len() <= CATALOGS_MAX, "the memo is bounded");
    });
    answer
}
