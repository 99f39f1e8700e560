//! What a subquery shape's rows carry (Electric's `get_row_metadata`): the
//! dependency views a consumer evaluates against, each row's `tags` and
//! `active_conditions`, and the value hashes move events match them by.
//!
//! - A view is the set of value tuples a dependency (an inner shape) holds
//!   now. Membership follows SQL: `x IN (S)` is TRUE on a match, else NULL
//!   if a comparison was unknown (a NULL on either side), else FALSE; so
//!   `x IN (empty)` is FALSE even for a NULL `x`.
//! - `active_conditions[p]` is whether position `p`'s literal is TRUE under
//!   three-valued logic (a negated position needs its atom FALSE, not
//!   NULL). A row is included iff some disjunct has all its positions
//!   active, which equals the whole clause being TRUE (De Morgan and
//!   distribution hold in three-valued logic); [`included`] asserts it.
//!   Electric takes NULL as false before negating; see ARCHITECTURE.md.
//! - `tags[d]` has one slot per position joined by `/`: empty when the
//!   position is not in disjunct `d`, `1` for an atom without a subquery,
//!   else the hash of the row's left-side values. Computed for every row,
//!   included or not.

use super::dnf::DnfPlan;
use super::eval::{SubqueryValues, eval};
use super::expr::{Expr, Subquery};
use crate::schema::Value;
use md5::{Digest, Md5};
use std::collections::BTreeSet;

/// The value tuples one dependency holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    tuples: BTreeSet<Vec<Value>>,
}

impl View {
    pub fn new(tuples: impl IntoIterator<Item = Vec<Value>>) -> View {
        View {
            tuples: tuples.into_iter().collect(),
        }
    }

    pub fn contains(&self, tuple: &[Value]) -> bool {
        self.tuples.contains(tuple)
    }

    pub fn insert(&mut self, tuple: Vec<Value>) -> bool {
        self.tuples.insert(tuple)
    }

    pub fn remove(&mut self, tuple: &[Value]) -> bool {
        self.tuples.remove(tuple)
    }

    /// The tuples, in order.
    pub fn tuples(&self) -> impl Iterator<Item = &Vec<Value>> {
        self.tuples.iter()
    }

    pub fn len(&self) -> usize {
        self.tuples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tuples.is_empty()
    }

    /// `row IN (view)` as SQL answers it: `Some(true)`, `Some(false)` or
    /// `None` (NULL).
    pub fn membership(&self, row: &[Value]) -> Option<bool> {
        if !row.iter().any(Value::is_null) && self.tuples.contains(row) {
            return Some(true);
        }
        let mut unknown = false;
        for tuple in &self.tuples {
            assert_eq!(
                tuple.len(),
                row.len(),
                "a view's tuples have the row's width"
            );
            let mut differs = false;
            let mut null = false;
            for (a, b) in tuple.iter().zip(row) {
                if a.is_null() || b.is_null() {
                    null = true;
                } else if a != b {
                    differs = true;
                    break;
                }
            }
            if !differs && !null {
                return Some(true);
            }
            unknown |= !differs && null;
        }
        if unknown { None } else { Some(false) }
    }
}

/// The views of a plan's dependencies, by dependency index.
pub struct Views<'a> {
    pub plan: &'a DnfPlan,
    pub views: &'a [View],
}

impl SubqueryValues for Views<'_> {
    fn membership(&self, subquery: &Subquery, row: &[Value]) -> Value {
        let index = self
            .plan
            .dependency_of(subquery)
            .unwrap_or_else(|| panic!("a subquery outside the plan: {subquery}"));
        self.views[index]
            .membership(row)
            .map_or(Value::Null, Value::Bool)
    }
}

/// The hash that tags and move patterns share: lowercase hex md5 of the
/// stack id, the shape's handle and the namespaced value (for a row,
/// `column:` and the namespaced value per column, without separators).
pub fn value_hash(stack_id: &str, handle: &str, columns: &[&str], values: &[Value]) -> String {
    use std::fmt::Write;
    assert_eq!(columns.len(), values.len());
    let mut input = String::with_capacity(stack_id.len() + handle.len() + 32);
    input.push_str(stack_id);
    input.push_str(handle);
    // `ns(value)`: `NULL`, or `v:` and the value's text (`Value::to_text`).
    let push_value = |input: &mut String, value: &Value| match value {
        Value::Null => input.push_str("NULL"),
        Value::Bool(b) => write!(input, "v:{b}").expect("formatting into a String"),
        Value::Int(i) => write!(input, "v:{i}").expect("formatting into a String"),
        Value::Text(text) => {
            input.push_str("v:");
            input.push_str(text);
        }
    };
    if let [value] = values {
        push_value(&mut input, value);
    } else {
        for (column, value) in columns.iter().zip(values) {
            input.push_str(column);
            input.push(':');
            push_value(&mut input, value);
        }
    }
    hex::encode(Md5::digest(input.as_bytes()))
}

/// The left side of a subquery atom: its columns' names and the row's values.
fn left_side<'a>(atom: &'a Expr, row: &[Value]) -> (Vec<&'a str>, Vec<Value>) {
    let Expr::InSubquery { columns, .. } = atom else {
        unreachable!("only subquery atoms have a left side")
    };
    columns
        .iter()
        .map(|c| match c {
            Expr::Column { index, name, .. } => (name.as_str(), row[*index].clone()),
            other => unreachable!("the checker lets only columns on the left: {other}"),
        })
        .unzip()
}

/// A move pattern's value: the hash `position`'s slot holds in the tags of
/// a row whose left side is `tuple` (the same hash, so a client matches
/// patterns against tags).
pub fn pattern(
    plan: &DnfPlan,
    stack_id: &str,
    handle: &str,
    position: usize,
    tuple: &[Value],
) -> String {
    let atom = &plan.positions[position].atom;
    let Expr::InSubquery { columns, .. } = atom else {
        unreachable!("only subquery positions have patterns")
    };
    let names: Vec<&str> = columns
        .iter()
        .map(|c| match c {
            Expr::Column { name, .. } => name.as_str(),
            other => unreachable!("the checker lets only columns on the left: {other}"),
        })
        .collect();
    value_hash(stack_id, handle, &names, tuple)
}

/// One tag per disjunct (see the module doc).
pub fn tags(plan: &DnfPlan, stack_id: &str, handle: &str, row: &[Value]) -> Vec<String> {
    let slots: Vec<String> = plan
        .positions
        .iter()
        .map(|position| match position.dependency {
            None => "1".to_string(),
            Some(_) => {
                let (columns, values) = left_side(&position.atom, row);
                value_hash(stack_id, handle, &columns, &values)
            }
        })
        .collect();
    plan.disjuncts
        .iter()
        .map(|members| {
            let tag: Vec<&str> = (0..plan.positions.len())
                .map(|p| match members.contains(&p) {
                    true => slots[p].as_str(),
                    false => "",
                })
                .collect();
            tag.join("/")
        })
        .collect()
}

/// Whether each position's literal is TRUE for `row` under `views`.
pub fn active_conditions(plan: &DnfPlan, views: &[View], row: &[Value]) -> Vec<bool> {
    assert_eq!(
        views.len(),
        plan.dependencies.len(),
        "one view per dependency"
    );
    let subqueries = Views { plan, views };
    plan.positions
        .iter()
        .map(|position| {
            let wanted = Value::Bool(!position.negated);
            eval(&position.atom, row, &subqueries) == wanted
        })
        .collect()
}

/// Whether some disjunct has every position active; equal, by
/// construction, to `clause` being TRUE for the row (asserted).
pub fn included(
    plan: &DnfPlan,
    active: &[bool],
    clause: &Expr,
    views: &[View],
    row: &[Value],
) -> bool {
    let by_plan = plan
        .disjuncts
        .iter()
        .any(|members| members.iter().all(|&p| active[p]));
    let by_clause = eval(clause, row, &Views { plan, views }) == Value::Bool(true);
    assert_eq!(
        by_plan, by_clause,
        "the DNF plan and the clause disagree on a row: {row:?}"
    );
    by_plan
}
