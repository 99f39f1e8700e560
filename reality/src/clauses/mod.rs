//! The WHERE differential: generated clauses evaluated on generated rows by
//! the engine (its parser, type checker, DNF plan and evaluator, with
//! subqueries answered by the engine's own views of its inner shapes), by
//! the oracle's independent evaluator, and by a real PostgreSQL
//! (`SELECT id FROM t WHERE <clause>`).
//!
//! Verdicts per clause:
//! - PostgreSQL and the engine accept it: the three row sets must be equal;
//! - PostgreSQL rejects it: the engine must refuse it with a 400 naming
//!   `where`;
//! - PostgreSQL accepts it and the engine refuses it: allowed (the engine
//!   supports a subset), counted by reason so a run shows how much was
//!   compared.

pub mod generate;

use engine::schema::{Catalog, TableName, Value};
use engine::shape::tags::{View, active_conditions, included};
use engine::shape::{Shape, ShapeRequest};
use rand::SeedableRng as _;
use rand_chacha::ChaCha8Rng;
use sim::oracle::where_eval::{self, TableRows, Tables};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Clauses per set of rows: the tables are reloaded between sets.
pub const CLAUSES_PER_ROUND: usize = 50;

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub clauses: usize,
    /// Accepted by both and evaluated by all three.
    pub compared: usize,
    /// Of those, clauses with subqueries.
    pub compared_with_subqueries: usize,
    /// Rows those comparisons covered (clauses x rows of `t`).
    pub rows_compared: usize,
    /// Clauses PostgreSQL rejected (and the engine too).
    pub both_rejected: usize,
    /// Clauses PostgreSQL accepted and the engine refused, by reason: how
    /// many, and the first such clause.
    pub engine_refused: BTreeMap<String, (usize, String)>,
    pub disagreements: Vec<String>,
}

impl Report {
    pub fn summary(&self) -> String {
        let refused: usize = self.engine_refused.values().map(|(n, _)| n).sum();
        format!(
            "{} clauses: {} compared ({} with subqueries; {} rows), {} rejected by both, {} refused by the engine only, {} disagreements",
            self.clauses,
            self.compared,
            self.compared_with_subqueries,
            self.rows_compared,
            self.both_rejected,
            refused,
            self.disagreements.len()
        )
    }
}

/// The tables' rows for one round, positional and by name.
struct Data {
    catalog: Catalog,
    rows: BTreeMap<String, Vec<Vec<Value>>>,
}

impl Data {
    fn new(rng: &mut ChaCha8Rng) -> Data {
        let catalog = generate::catalog();
        let mut rows = BTreeMap::new();
        for (name, n) in [
            ("t", generate::T_ROWS),
            ("p", generate::P_ROWS),
            ("q", generate::Q_ROWS),
        ] {
            let table = catalog.table(&TableName::public(name)).expect("table");
            rows.insert(name.to_string(), generate::rows(rng, table, n));
        }
        Data { catalog, rows }
    }

    fn load(&self, client: &mut postgres::Client) -> Result<(), postgres::Error> {
        let mut sql = String::from(
            "DROP TABLE IF EXISTS t, p, q;
             CREATE TABLE t (id int8 PRIMARY KEY, i int8, j int8 NOT NULL, s text, u text NOT NULL, b bool, c bool NOT NULL);
             CREATE TABLE p (id int8 PRIMARY KEY, k int8, m int8 NOT NULL, s text, b bool);
             CREATE TABLE q (id int8 PRIMARY KEY, pid int8 NOT NULL, b bool NOT NULL);",
        );
        for (table, rows) in &self.rows {
            for row in rows {
                let values: Vec<String> = row.iter().map(generate::literal).collect();
                sql.push_str(&format!(
                    "INSERT INTO {table} VALUES ({});",
                    values.join(", ")
                ));
            }
        }
        client.batch_execute(&sql)
    }
}

impl Tables for Data {
    fn rows(&self, schema: &str, table: &str) -> TableRows<'_> {
        assert_eq!(schema, "public", "the differential's tables are public");
        let definition = self
            .catalog
            .table(&TableName::public(table))
            .expect("table");
        TableRows {
            columns: definition.columns.iter().map(|c| c.name.as_str()).collect(),
            rows: self
                .rows
                .get(table)
                .unwrap_or_else(|| panic!("no table {table}"))
                .iter()
                .map(Vec::as_slice)
                .collect(),
        }
    }
}

/// Runs `cases` clauses from `seed` against the server behind `client`.
pub fn run(client: &mut postgres::Client, seed: u64, cases: usize) -> Report {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut report = Report::default();
    let mut data = None;
    for case in 0..cases {
        if case % CLAUSES_PER_ROUND == 0 {
            let fresh = Data::new(&mut rng);
            fresh
                .load(client)
                .unwrap_or_else(|e| panic!("loading the tables: {e}"));
            if case == 0 {
                invalid_alone(client, &fresh, &mut report);
            }
            data = Some(fresh);
        }
        let data = data.as_ref().expect("tables loaded");
        let clause = generate::clause(&mut rng);
        let checked = catch_unwind(AssertUnwindSafe(|| {
            check_clause(client, data, &clause, &mut report)
        }));
        if let Err(panic) = checked {
            report.disagreements.push(format!(
                "`{}` (seed {seed}, clause {case}): the check panicked: {}",
                clause.sql,
                crate::panic_text(&panic)
            ));
        }
    }
    report
}

/// Every clause of [`generate::INVALID`] alone: PostgreSQL rejects it and
/// the engine refuses it naming `where`.
fn invalid_alone(client: &mut postgres::Client, data: &Data, report: &mut Report) {
    for sql in generate::INVALID {
        let before = report.both_rejected;
        let clause = generate::Clause {
            sql: sql.to_string(),
            supported: false,
        };
        check_clause(client, data, &clause, report);
        if report.both_rejected == before && !report.disagreements.iter().any(|d| d.contains(sql)) {
            report.disagreements.push(format!(
                "`{sql}` is listed as invalid, but PostgreSQL accepts it"
            ));
        }
    }
}

fn check_clause(
    client: &mut postgres::Client,
    data: &Data,
    clause: &generate::Clause,
    report: &mut Report,
) {
    report.clauses += 1;
    let supported = clause.supported;
    let clause = clause.sql.as_str();
    let pg = pg_rows(client, clause);
    let request = ShapeRequest {
        table: "t".to_string(),
        where_clause: Some(clause.to_string()),
        ..ShapeRequest::default()
    };
    let shape = Shape::new(&data.catalog, &request);
    match (pg, shape) {
        (Err(_), Err(e)) if e.field() == "where" => report.both_rejected += 1,
        (Err(pg_error), Err(e)) => report.disagreements.push(format!(
            "`{clause}`: PostgreSQL rejects it ({pg_error}) and the engine refuses it naming `{}`, not `where`: {e}",
            e.field()
        )),
        (Err(pg_error), Ok(_)) => report.disagreements.push(format!(
            "`{clause}`: PostgreSQL rejects it ({pg_error}), the engine accepts it"
        )),
        (Ok(_), Err(e)) if supported => report.disagreements.push(format!(
            "`{clause}`: only supported constructs, PostgreSQL accepts it, the engine refuses it: {e}"
        )),
        (Ok(_), Err(e)) => {
            let entry = report
                .engine_refused
                .entry(refusal_kind(&e.to_string()))
                .or_insert_with(|| (0, clause.to_string()));
            entry.0 += 1;
        }
        (Ok(pg), Ok(shape)) => compare(data, clause, &shape, &pg, report),
    }
}

fn compare(data: &Data, clause: &str, shape: &Shape, pg: &BTreeSet<i64>, report: &mut Report) {
    let engine = catch_unwind(AssertUnwindSafe(|| engine_ids(data, shape)));
    let oracle = catch_unwind(AssertUnwindSafe(|| oracle_ids(data, clause)));
    let (engine, oracle) = match (engine, oracle) {
        (Ok(e), Ok(o)) => (e, o),
        (e, o) => {
            report.disagreements.push(format!(
                "`{clause}`: evaluation panicked (engine: {}, oracle: {})",
                e.is_err(),
                o.is_err()
            ));
            return;
        }
    };
    report.compared += 1;
    report.compared_with_subqueries += usize::from(shape.has_subquery());
    report.rows_compared += data.rows["t"].len();
    if engine == *pg && oracle == *pg {
        return;
    }
    let first = data.rows["t"]
        .iter()
        .map(|row| (row_id(row), row))
        .find(|(id, _)| {
            engine.contains(id) != pg.contains(id) || oracle.contains(id) != pg.contains(id)
        })
        .expect("some row differs");
    report.disagreements.push(format!(
        "`{clause}` on t row {:?}: PostgreSQL {}, engine {}, oracle {}",
        first.1,
        pg.contains(&first.0),
        engine.contains(&first.0),
        oracle.contains(&first.0)
    ));
}

fn row_id(row: &[Value]) -> i64 {
    match row[0] {
        Value::Int(id) => id,
        ref other => panic!("t.id is an integer, not {other:?}"),
    }
}

/// The ids of `t`'s rows in `shape`, as the engine decides it: a plain
/// clause by its evaluator, a subquery clause by its DNF plan over the views
/// of its inner shapes (each evaluated the same way, recursively).
fn engine_ids(data: &Data, shape: &Shape) -> BTreeSet<i64> {
    shape_rows(data, shape).iter().map(|r| row_id(r)).collect()
}

fn shape_rows(data: &Data, shape: &Shape) -> Vec<Vec<Value>> {
    let rows = &data.rows[&shape.table.name.name];
    let Some(plan) = shape.plan() else {
        return rows.iter().filter(|r| shape.includes(r)).cloned().collect();
    };
    let clause = &shape
        .where_clause
        .as_ref()
        .expect("a plan has a clause")
        .expr;
    let views: Vec<View> = shape
        .dependency_shapes(&data.catalog)
        .expect("an accepted shape's dependencies are shapes")
        .iter()
        .map(|inner| View::new(shape_rows(data, inner).iter().map(|r| inner.tuple(r))))
        .collect();
    rows.iter()
        .filter(|row| {
            let active = active_conditions(plan, &views, row);
            included(plan, &active, clause, &views, row)
        })
        .cloned()
        .collect()
}

fn oracle_ids(data: &Data, clause: &str) -> BTreeSet<i64> {
    let expr = where_eval::parse(clause).unwrap_or_else(|e| panic!("oracle parse: {e}"));
    let columns_of = |_: &str, table: &str| -> Vec<String> {
        let t = data.rows("public", table);
        t.columns.iter().map(|c| c.to_string()).collect()
    };
    let t = data.rows("public", "t");
    let filter = where_eval::Bound::new(&expr, &t.columns, &columns_of);
    t.rows
        .iter()
        .filter(|row| filter.holds_in(row, data))
        .map(|row| row_id(row))
        .collect()
}

/// The ids PostgreSQL selects, or its error message.
fn pg_rows(client: &mut postgres::Client, clause: &str) -> Result<BTreeSet<i64>, String> {
    let sql = format!("SELECT id FROM t WHERE {clause}");
    let messages = client
        .simple_query(&sql)
        .map_err(|e| match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        })?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => Some(
                row.get(0)
                    .expect("id is not null")
                    .parse()
                    .expect("id is an integer"),
            ),
            _ => None,
        })
        .collect())
}

/// A refusal's kind: its message up to the first quote or colon, so the
/// report groups refusals of one construct.
fn refusal_kind(message: &str) -> String {
    let message = message.split(" (at line").next().unwrap_or(message);
    let cut = message
        .char_indices()
        .skip(1)
        .find(|(_, c)| matches!(c, '`' | ':' | '"'))
        .map_or(message.len(), |(i, _)| i);
    message[..cut]
        .chars()
        .take(70)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The comparison can fail: a PostgreSQL answer that differs on one row
    /// is a disagreement naming the clause and the row.
    #[test]
    fn a_differing_row_is_a_disagreement() {
        let data = Data::new(&mut ChaCha8Rng::seed_from_u64(7));
        let request = ShapeRequest {
            table: "t".to_string(),
            where_clause: Some("c".to_string()),
            ..ShapeRequest::default()
        };
        let shape = Shape::new(&data.catalog, &request).expect("a valid clause");
        let mut pg = engine_ids(&data, &shape);
        let mut report = Report::default();
        compare(&data, "c", &shape, &pg, &mut report);
        assert!(
            report.disagreements.is_empty(),
            "{:?}",
            report.disagreements
        );
        let flipped = row_id(&data.rows["t"][3]);
        if !pg.remove(&flipped) {
            pg.insert(flipped);
        }
        compare(&data, "c", &shape, &pg, &mut report);
        assert_eq!(report.disagreements.len(), 1, "{:?}", report.disagreements);
        assert!(report.disagreements[0].starts_with("`c` on t row"));
    }
}
