//! Electric's oracle-test subquery shapes (`where_clause_gen`, its subquery
//! forms; ARCHITECTURE.md, "Subquery shapes"): `level_4` rows filtered
//! through `level_3`, `level_2`, `level_1` and the tag tables, one to three
//! levels deep, with `IN` and `NOT IN`, mixed with plain predicates.
//!
//! A subquery is used with one polarity only (the engine refuses a clause
//! that uses one both ways): `NOT IN` forms filter on `active`, `NOT
//! active` or `level_2_id IN (...)`, `IN` forms on `active = true|false` or
//! `level_2_id = ...`, so the two never coincide; a `NOT (...)` over an
//! `IN` subquery is drawn only in a clause with no other subquery.

use super::generate::atomic;
use crate::standard::{LEVEL_IDS, TAGS};
use rand::RngExt as _;
use rand::seq::IndexedRandom as _;
use rand_chacha::ChaCha8Rng;

/// A WHERE clause on `level_4` with at least one subquery, its subqueries
/// nested at most `max_depth` levels (1..=3).
pub fn subquery_clause(rng: &mut ChaCha8Rng, max_depth: u32) -> String {
    match rng.random_range(0..9) {
        0 | 1 => subquery(rng, max_depth),
        2 => format!("({}) OR ({})", subquery(rng, max_depth), atomic(rng)),
        3 => format!("({}) AND ({})", subquery(rng, max_depth), atomic(rng)),
        4 => format!(
            "({} OR {}) AND ({} OR {})",
            subquery(rng, max_depth),
            subquery(rng, max_depth),
            subquery(rng, max_depth),
            atomic(rng)
        ),
        5 => not_in(rng),
        // Negated positions in plans of several disjuncts.
        6 => format!("({}) OR ({})", not_in(rng), atomic(rng)),
        7 => format!("({}) AND ({})", subquery(rng, max_depth), not_in(rng)),
        _ => format!("NOT ({}) OR ({})", subquery(rng, max_depth), atomic(rng)),
    }
}

/// `level_3_id IN (...)` through 1..=`max_depth` levels.
fn subquery(rng: &mut ChaCha8Rng, max_depth: u32) -> String {
    let depth = rng.random_range(1..=max_depth.clamp(1, 3));
    let tags = rng.random_bool(0.3);
    let inner = match (depth, tags) {
        (1, false) => format!("SELECT id FROM level_3 WHERE {}", level_filter(rng, 3)),
        (1, true) => format!("SELECT level_3_id FROM level_3_tags WHERE {}", tag(rng)),
        (2, false) => format!(
            "SELECT id FROM level_3 WHERE active = {} AND level_2_id IN (SELECT id FROM level_2 WHERE {})",
            boolean(rng),
            level_filter(rng, 2)
        ),
        (2, true) => format!(
            "SELECT id FROM level_3 WHERE level_2_id IN (SELECT level_2_id FROM level_2_tags WHERE {})",
            tag(rng)
        ),
        (_, false) => format!(
            "SELECT id FROM level_3 WHERE level_2_id IN (SELECT id FROM level_2 WHERE level_1_id IN (SELECT id FROM level_1 WHERE active = {}))",
            boolean(rng)
        ),
        (_, true) => format!(
            "SELECT id FROM level_3 WHERE level_2_id IN (SELECT id FROM level_2 WHERE level_1_id IN (SELECT level_1_id FROM level_1_tags WHERE {}))",
            tag(rng)
        ),
    };
    format!("level_3_id IN ({inner})")
}

/// `level_3_id NOT IN (SELECT id FROM level_3 WHERE [NOT] active | level_2_id = ...)`.
fn not_in(rng: &mut ChaCha8Rng) -> String {
    let filter = match rng.random_range(0..3) {
        0 => "active".to_string(),
        1 => "NOT active".to_string(),
        _ => format!("level_2_id IN ({}, {})", id(rng, 2), id(rng, 2)),
    };
    format!("level_3_id NOT IN (SELECT id FROM level_3 WHERE {filter})")
}

/// `active = b` or the parent's id, on `level_<n>`.
fn level_filter(rng: &mut ChaCha8Rng, n: u8) -> String {
    match rng.random_bool(0.5) {
        true => format!("active = {}", boolean(rng)),
        false => format!("level_{}_id = {}", n - 1, id(rng, n - 1)),
    }
}

fn tag(rng: &mut ChaCha8Rng) -> String {
    format!("tag = '{}'", TAGS.choose(rng).expect("tags"))
}

fn id(rng: &mut ChaCha8Rng, level: u8) -> String {
    format!("'l{level}-{}'", rng.random_range(1..=LEVEL_IDS))
}

fn boolean(rng: &mut ChaCha8Rng) -> bool {
    rng.random_bool(0.5)
}
