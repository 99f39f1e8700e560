//! Subquery clauses, engine against oracle: for Electric's oracle-test
//! subquery shapes over table states a workload reached, the rows the
//! engine's DNF plan includes (its views computed by the engine's own
//! evaluator, nested subqueries included) are exactly the rows the oracle's
//! evaluator selects from the Postgres model. `tags::included` also asserts
//! that the plan agrees with the engine's evaluation of the whole clause.
#![cfg(madsim)]

use engine::moves::query::move_in_where;
use engine::schema::{Catalog, Value};
use engine::shape::dnf::DnfPlan;
use engine::shape::eval::{SubqueryValues, eval};
use engine::shape::expr::Subquery;
use engine::shape::tags::{View, active_conditions, included};
use engine::shape::{Shape, ShapeRequest};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::pg::PgModel;
use sim::scenario::generate::expand;
use sim::scenario::subqueries::subquery_clause;
use sim::scenario::{Knobs, Op};
use sim::standard;
use std::collections::BTreeSet;

/// Subqueries evaluated by the engine's evaluator over the model's rows.
struct EngineViews<'a> {
    pg: &'a PgModel,
    catalog: &'a Catalog,
}

impl EngineViews<'_> {
    fn view(&self, subquery: &Subquery) -> View {
        let table = self.catalog.table(&subquery.table).expect("table");
        let columns: Vec<usize> = subquery
            .columns
            .iter()
            .map(|(c, _)| table.column_index(c).expect("column"))
            .collect();
        let holds = |row: &Vec<Value>| {
            subquery
                .where_clause
                .as_ref()
                .is_none_or(|w| eval(w, row, self) == Value::Bool(true))
        };
        View::new(
            self.pg
                .rows(&subquery.table)
                .into_iter()
                .filter(holds)
                .map(|row| columns.iter().map(|&i| row[i].clone()).collect()),
        )
    }
}

impl SubqueryValues for EngineViews<'_> {
    fn membership(&self, subquery: &Subquery, row: &[Value]) -> Value {
        self.view(subquery)
            .membership(row)
            .map_or(Value::Null, Value::Bool)
    }
}

/// Runs `check` on the seed state and after each batch of one seed's
/// workload.
fn for_each_state(seed: u64, check: &mut dyn FnMut(&PgModel)) {
    let scenario = expand(seed, &Knobs::default());
    let pg = standard::seeded_postgres(&scenario.seed_rows);
    check(&pg);
    for batch in &scenario.batches {
        for txn in batch {
            let mutations: Vec<_> = txn
                .iter()
                .filter(|op| op.is_statement())
                .filter_map(|op: &Op| standard::mutation(&pg, op))
                .collect();
            pg.commit(&mutations);
        }
        check(&pg);
    }
}

/// The views of the plan's dependencies, by the engine's evaluator.
fn views_of(pg: &PgModel, catalog: &Catalog, plan: &DnfPlan) -> Vec<View> {
    let engine_views = EngineViews { pg, catalog };
    plan.dependencies
        .iter()
        .map(|d| engine_views.view(d))
        .collect()
}

/// A `level_4` shape filtered by `clause`, which must have a plan.
fn subquery_shape(catalog: &Catalog, clause: &str) -> std::sync::Arc<Shape> {
    let request = ShapeRequest {
        table: "level_4".into(),
        where_clause: Some(clause.to_string()),
        ..Default::default()
    };
    let shape = Shape::new(catalog, &request).unwrap_or_else(|e| panic!("{clause}: {e}"));
    let planned = shape
        .where_clause
        .as_ref()
        .is_some_and(|w| w.plan.is_some());
    assert!(planned, "{clause}: a subquery clause has a plan");
    shape
}

#[test]
fn the_engines_plan_includes_exactly_the_rows_the_oracle_selects() {
    let catalog = standard::catalog();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut clauses, mut rows_in, mut rows_out) = (0, 0, 0);
    let mut check = |pg: &PgModel| {
        for _ in 0..25 {
            let clause = subquery_clause(&mut rng, 3);
            let shape = subquery_shape(&catalog, &clause);
            let where_clause = shape.where_clause.as_ref().expect("a clause");
            let plan = where_clause.plan.as_ref().expect("a plan");
            let views = views_of(pg, &catalog, plan);
            let level4 = standard::level(4);
            let by_engine: BTreeSet<Vec<Value>> = pg
                .rows(&level4)
                .into_iter()
                .filter(|row| {
                    let active = active_conditions(plan, &views, row);
                    included(plan, &active, &where_clause.expr, &views, row)
                })
                .collect();
            let by_oracle: BTreeSet<Vec<Value>> =
                pg.query(&level4, Some(&clause)).into_iter().collect();
            assert_eq!(by_engine, by_oracle, "{clause}");
            clauses += 1;
            rows_in += by_oracle.len();
            rows_out += pg.rows(&level4).len() - by_oracle.len();
        }
    };
    for seed in 0..3 {
        for_each_state(seed, &mut check);
    }
    assert!(
        clauses >= 500 && rows_in > 1_000 && rows_out > 1_000,
        "{clauses} clauses, {rows_in} rows in, {rows_out} out"
    );
}

/// The `level_4` rows the plan includes under `views`.
fn included_rows(
    pg: &PgModel,
    plan: &DnfPlan,
    clause: &engine::shape::expr::Expr,
    views: &[View],
) -> BTreeSet<Vec<Value>> {
    pg.rows(&standard::level(4))
        .into_iter()
        .filter(|row| {
            included(
                plan,
                &active_conditions(plan, views, row),
                clause,
                views,
                row,
            )
        })
        .collect()
}

#[test]
fn a_move_in_query_selects_exactly_the_rows_the_move_brings_in() {
    let catalog = standard::catalog();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (mut queries, mut moved_in) = (0, 0);
    let mut check = |pg: &PgModel| {
        for _ in 0..15 {
            let clause = subquery_clause(&mut rng, 3);
            let shape = subquery_shape(&catalog, &clause);
            let where_clause = shape.where_clause.as_ref().expect("a clause");
            let plan = where_clause.plan.as_ref().expect("a plan");
            let now = views_of(pg, &catalog, plan);
            for dependency in 0..plan.dependencies.len() {
                // Before the move the view lacked some of its tuples, or
                // held some it no longer holds (a NOT IN move-in).
                let dep = &plan.dependencies[dependency];
                let table = catalog.table(&dep.table).expect("table");
                let columns: Vec<usize> = dep
                    .columns
                    .iter()
                    .map(|(c, _)| table.column_index(c).expect("column"))
                    .collect();
                let candidates: Vec<Vec<Value>> = pg
                    .rows(&dep.table)
                    .into_iter()
                    .map(|row| columns.iter().map(|&i| row[i].clone()).collect())
                    .collect();
                let mut before = now.clone();
                let changed = View::new(
                    candidates
                        .into_iter()
                        .filter(|t| now[dependency].contains(t) != rng.random_bool(0.5)),
                );
                before[dependency] = changed;
                let expected: BTreeSet<Vec<Value>> =
                    included_rows(pg, plan, &where_clause.expr, &now)
                        .difference(&included_rows(pg, plan, &where_clause.expr, &before))
                        .cloned()
                        .collect();
                let sql = move_in_where(plan, dependency, &before, &now);
                let selected: BTreeSet<Vec<Value>> = pg
                    .query(&standard::level(4), Some(&sql))
                    .into_iter()
                    .collect();
                assert_eq!(
                    selected, expected,
                    "{clause}\nmove-in of dependency {dependency}: {sql}"
                );
                queries += 1;
                moved_in += expected.len();
            }
        }
    };
    for seed in 0..3 {
        for_each_state(seed, &mut check);
    }
    assert!(
        queries >= 300 && moved_in > 300,
        "{queries} move-in queries, {moved_in} rows moved in"
    );
}
