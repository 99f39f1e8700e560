//! The WHERE of a move-in query (Electric's `move_in_where`): the rows the
//! move brings in are those some disjunct that uses the moved dependency
//! makes TRUE with the views after the move, and that no disjunct made
//! TRUE with the views before it. Subquery atoms are rendered with the
//! consumer's view values (Postgres does not re-run the inner query), as
//! `a IN (...)` or, for a row form, an OR of ANDed equalities (the same
//! three-valued result). "Not before" is `(...) IS NOT TRUE`: a row whose
//! earlier clause was NULL was not in the shape either (Electric's `NOT`
//! would leave it out).

use crate::schema::Value;
use crate::shape::dnf::DnfPlan;
use crate::shape::expr::{Expr, quote_literal};
use crate::shape::tags::View;

/// SQL for the move-in of `dependency` from the views `before` to `after`.
pub fn move_in_where(plan: &DnfPlan, dependency: usize, before: &[View], after: &[View]) -> String {
    assert_eq!(
        before.len(),
        plan.dependencies.len(),
        "one view per dependency"
    );
    assert_eq!(
        after.len(),
        plan.dependencies.len(),
        "one view per dependency"
    );
    let impacted = &plan.dependency_disjuncts[dependency];
    let all: Vec<usize> = (0..plan.disjuncts.len()).collect();
    format!(
        "({}) AND (({}) IS NOT TRUE)",
        disjuncts(plan, impacted, after),
        disjuncts(plan, &all, before)
    )
}

/// The whole clause with every subquery atom written with `views`' values
/// (a subquery shape's snapshot query, judged with the views its
/// dependencies published).
pub fn where_with_views(plan: &DnfPlan, views: &[View]) -> String {
    assert_eq!(
        views.len(),
        plan.dependencies.len(),
        "one view per dependency"
    );
    let all: Vec<usize> = (0..plan.disjuncts.len()).collect();
    disjuncts(plan, &all, views)
}

fn disjuncts(plan: &DnfPlan, which: &[usize], views: &[View]) -> String {
    if which.is_empty() {
        return "false".to_string();
    }
    let rendered: Vec<String> = which
        .iter()
        .map(|&d| {
            let literals: Vec<String> = plan.disjuncts[d]
                .iter()
                .map(|&p| literal(plan, p, views))
                .collect();
            format!("({})", literals.join(" AND "))
        })
        .collect();
    rendered.join(" OR ")
}

fn literal(plan: &DnfPlan, position: usize, views: &[View]) -> String {
    let position = &plan.positions[position];
    let atom = match (&position.atom, position.dependency) {
        (Expr::InSubquery { columns, .. }, Some(d)) => in_values(columns, &views[d]),
        (atom, _) => atom.to_string(),
    };
    match position.negated {
        true => format!("(NOT {atom})"),
        false => atom,
    }
}

/// `columns IN (view)` with the view's values written out.
fn in_values(columns: &[Expr], view: &View) -> String {
    if view.is_empty() {
        return "false".to_string();
    }
    if let [column] = columns {
        let values: Vec<String> = view.tuples().map(|t| sql_value(&t[0])).collect();
        return format!("({column} IN ({}))", values.join(", "));
    }
    let rows: Vec<String> = view
        .tuples()
        .map(|tuple| {
            let equalities: Vec<String> = columns
                .iter()
                .zip(tuple)
                .map(|(c, v)| format!("({c} = {})", sql_value(v)))
                .collect();
            format!("({})", equalities.join(" AND "))
        })
        .collect();
    format!("({})", rows.join(" OR "))
}

fn sql_value(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Text(s) => quote_literal(s),
    }
}
