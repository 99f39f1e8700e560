//! Moves: how a change in a dependency (an inner shape) reaches the shapes
//! that depend on it. Pure state machines, driven by the consumers:
//!
//! inner shape's changes -> [`materializer`] (value counts; move-in on
//! 0 -> 1, move-out on 1 -> 0, per commit) -> [`queue`] (per outer consumer:
//! last op per value wins, redundant ops dropped, move-outs first) ->
//! move-out event, or a move-in query whose rows are spliced into the log at
//! the [`splice`] boundary.
//!
//! Each follows Electric's semantics (`materializer.ex`, `move_queue.ex`,
//! `active_move.ex` at `dc07a1e6`; see ARCHITECTURE.md, "Subquery shapes")
//! and asserts its own invariants; a violation of the strictness rules is
//! returned as a typed error for the consumer to treat as an engine
//! invariant violation.

pub mod materializer;
pub mod query;
pub mod queue;
pub mod splice;

#[cfg(test)]
mod tests;

use crate::schema::Value;

/// The values of a dependency's selected columns in one row (one value
/// for `x IN (SELECT a ...)`, several for a row form).
pub type Tuple = Vec<Value>;
