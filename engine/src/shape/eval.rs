//! Evaluation of a checked WHERE clause with PostgreSQL semantics:
//!
//! - three-valued logic: every expression yields TRUE, FALSE or NULL, and a row
//!   is in the shape only when the clause is TRUE;
//! - NULL propagates through comparisons, LIKE and BETWEEN; `AND`/`OR` follow
//!   the SQL truth tables (`NULL AND FALSE` is FALSE, `NULL OR TRUE` is TRUE);
//! - `x IN (list)` is TRUE on a match, else NULL if `x` or any item is NULL,
//!   else FALSE; so `x NOT IN (1, NULL)` is never TRUE;
//! - text compares bytewise (the "C" collation): `'B' < 'a'`, and ILIKE folds
//!   ASCII letters only.

use super::expr::{CmpOp, Expr, Subquery};
use super::like::like_matches;
use crate::schema::Value;
use std::borrow::Cow;
use std::cmp::Ordering;

/// Answers `row IN (subquery)` as an SQL truth value (TRUE, FALSE or NULL;
/// `row` has one value per subquery column). The subquery work implements
/// it over a dependency's current values.
pub trait SubqueryValues {
    fn membership(&self, subquery: &Subquery, row: &[Value]) -> Value;
}

/// For shapes without subqueries. Reaching a subquery here is a caller bug:
/// shapes with subqueries must be evaluated with their dependencies' values.
pub struct NoSubqueries;

impl SubqueryValues for NoSubqueries {
    fn membership(&self, subquery: &Subquery, _row: &[Value]) -> Value {
        panic!(
            "subquery on {} evaluated without dependency values",
            subquery.table
        )
    }
}

/// Whether `row` is in the shape: the clause is TRUE (not FALSE, not NULL).
pub fn matches(expr: &Expr, row: &[Value]) -> bool {
    *value(expr, row, &NoSubqueries) == Value::Bool(true)
}

/// The value of `expr` for `row`. Type errors cannot happen: the parser checked
/// every node, so a mismatch here is an invariant violation and panics.
pub fn eval(expr: &Expr, row: &[Value], subqueries: &dyn SubqueryValues) -> Value {
    value(expr, row, subqueries).into_owned()
}

/// [`eval`], borrowing columns and literals instead of copying them (a
/// computed truth value is owned, and allocates nothing).
fn value<'a>(expr: &'a Expr, row: &'a [Value], subqueries: &dyn SubqueryValues) -> Cow<'a, Value> {
    let eval = |e: &'a Expr| value(e, row, subqueries);
    let eval_bool = |e: &'a Expr| truth(&value(e, row, subqueries));
    let owned = Cow::Owned;
    match expr {
        Expr::Literal { value, .. } => Cow::Borrowed(value),
        Expr::Column { index, name, .. } => Cow::Borrowed(
            row.get(*index)
                .unwrap_or_else(|| panic!("row has no column {index} ({name})")),
        ),
        Expr::Compare { op, left, right } => {
            let (l, r) = (eval(left), eval(right));
            owned(from_truth(compare(&l, &r).map(|ord| op_holds(*op, ord))))
        }
        Expr::And(a, b) => owned(from_truth(match (eval_bool(a), eval_bool(b)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        })),
        Expr::Or(a, b) => owned(from_truth(match (eval_bool(a), eval_bool(b)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        })),
        Expr::Not(e) => owned(from_truth(eval_bool(e).map(|b| !b))),
        Expr::IsNull { expr, negated } => owned(Value::Bool(eval(expr).is_null() != *negated)),
        Expr::IsBool {
            expr,
            value,
            negated,
        } => owned(Value::Bool((eval_bool(expr) == *value) != *negated)),
        Expr::Like {
            expr,
            pattern,
            case_insensitive,
            negated,
        } => owned(match &*eval(expr) {
            Value::Null => Value::Null,
            Value::Text(text) => {
                Value::Bool(like_matches(&pattern.tokens, text, *case_insensitive) != *negated)
            }
            other => panic!("LIKE on non-text value {other:?}"),
        }),
        Expr::Between {
            expr,
            low,
            high,
            negated,
        } => {
            let x = eval(expr);
            let ge_low = compare(&x, &eval(low)).map(|o| o != Ordering::Less);
            let le_high = compare(&x, &eval(high)).map(|o| o != Ordering::Greater);
            let between = match (ge_low, le_high) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            };
            owned(from_truth(between.map(|b| b != *negated)))
        }
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let x = eval(expr);
            let mut saw_null = false;
            let mut found = false;
            for item in list {
                match compare(&x, &eval(item)) {
                    Some(Ordering::Equal) => found = true,
                    Some(_) => {}
                    None => saw_null = true,
                }
            }
            let membership = if found {
                Some(true)
            } else if saw_null {
                None
            } else {
                Some(false)
            };
            owned(from_truth(membership.map(|b| b != *negated)))
        }
        Expr::InSubquery {
            columns,
            subquery,
            negated,
        } => {
            let values: Vec<Value> = columns.iter().map(|c| eval(c).into_owned()).collect();
            let membership = truth(&subqueries.membership(subquery, &values));
            owned(from_truth(membership.map(|b| b != *negated)))
        }
    }
}

/// SQL truth value as `Option<bool>`: `None` is NULL (unknown).
fn truth(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Null => None,
        other => panic!("boolean expected, got {other:?}"),
    }
}

fn from_truth(t: Option<bool>) -> Value {
    t.map_or(Value::Null, Value::Bool)
}

/// `None` when either side is NULL. Text compares bytewise (C collation).
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => None,
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Text(x), Value::Text(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (x, y) => panic!("type checker let through a comparison of {x:?} with {y:?}"),
    }
}

fn op_holds(op: CmpOp, ord: Ordering) -> bool {
    match op {
        CmpOp::Eq => ord == Ordering::Equal,
        CmpOp::NotEq => ord != Ordering::Equal,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::LtEq => ord != Ordering::Greater,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::GtEq => ord != Ordering::Less,
    }
}
