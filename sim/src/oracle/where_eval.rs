//! The oracle's WHERE evaluator: small and direct on purpose. It shares no
//! code with the engine's parser, type checker or evaluator (only the SQL
//! tokenizer/AST library), so a bug in the engine's evaluation cannot hide by
//! being repeated here. Semantics: PostgreSQL's three-valued logic, bytewise
//! ("C") text order, ASCII-only case folding for ILIKE, untyped string
//! literals taking the type of what they are compared with. A subquery
//! `x [NOT] IN (SELECT c FROM t WHERE ...)` (or its row form) is evaluated
//! as a set over the other table's committed rows ([`Tables`]), nested as
//! deep as written: TRUE on a match, else NULL if a comparison was unknown,
//! else FALSE (so `NOT IN` a set holding NULL is never TRUE).
//!
//! A clause is bound to its table's columns first ([`Bound`], `bind`), so
//! a row is read by position.

pub use super::bind::ColumnsOf;
use super::bind::{Node, Subquery, bind};
use engine::schema::Value;
use sqlparser::ast::{BinaryOperator as Op, Expr};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::cmp::Ordering;
use std::rc::Rc;

pub use super::bind::subquery_tables;

/// Parses a WHERE clause the harness generated (or the engine's canonical text).
pub fn parse(sql: &str) -> Result<Expr, String> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| e.to_string())
}

/// A table as subqueries read it: its columns' (unquoted, lowercase)
/// names in table order, and its rows, borrowed.
pub struct TableRows<'a> {
    pub columns: Vec<&'a str>,
    pub rows: Vec<&'a [Value]>,
}

/// A value as the evaluator reads it, borrowed from the row, the clause or
/// a subquery's tuples: evaluating a clause copies nothing per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datum<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Text(&'a str),
}

impl<'a> From<&'a Value> for Datum<'a> {
    fn from(value: &'a Value) -> Datum<'a> {
        match value {
            Value::Null => Datum::Null,
            Value::Bool(b) => Datum::Bool(*b),
            Value::Int(i) => Datum::Int(*i),
            Value::Text(t) => Datum::Text(t),
        }
    }
}

/// The committed rows of every table, for subqueries.
pub trait Tables {
    /// Every row of `schema.table`.
    fn rows(&self, schema: &str, table: &str) -> TableRows<'_>;

    /// The tuples of the subquery whose bound node is at address `node`,
    /// as `compute` finds them; an implementation serving one query may
    /// remember them by that address (the oracle's subqueries are
    /// uncorrelated, the tables do not change meanwhile, and the bound
    /// clause outlives the query).
    fn selected(&self, _node: usize, compute: &dyn Fn() -> Vec<Vec<Value>>) -> Rc<Vec<Vec<Value>>> {
        Rc::new(compute())
    }
}

/// For clauses without subqueries: reaching one is a harness bug.
pub struct NoTables;

impl Tables for NoTables {
    fn rows(&self, schema: &str, table: &str) -> TableRows<'_> {
        panic!("oracle: a subquery on {schema}.{table} evaluated without tables")
    }
}

/// A WHERE clause bound to one table's columns.
#[derive(Debug)]
pub struct Bound(Node);

impl Bound {
    /// Binds `expr` to a table whose columns are `columns` (unquoted,
    /// lowercase names, table order), and its subqueries to the tables
    /// they read (`columns_of` names their columns).
    pub fn new(expr: &Expr, columns: &[&str], columns_of: &ColumnsOf) -> Bound {
        Bound(bind(expr, columns, columns_of))
    }

    /// Whether the clause is TRUE for `row` (every column, table order).
    pub fn holds(&self, row: &[Value]) -> bool {
        self.holds_in(row, &NoTables)
    }

    /// [`Bound::holds`], with subqueries evaluated over `tables`.
    pub fn holds_in(&self, row: &[Value], tables: &dyn Tables) -> bool {
        eval(&self.0, row, tables) == Datum::Bool(true)
    }
}

fn eval<'a>(node: &'a Node, row: &'a [Value], tables: &dyn Tables) -> Datum<'a> {
    let ev = |n: &'a Node| eval(n, row, tables);
    match node {
        Node::Column(at) => Datum::from(&row[*at]),
        Node::Const(value) => Datum::from(value),
        Node::Not(n) => not(ev(n)),
        Node::Negate(n) => match ev(n) {
            Datum::Int(i) => Datum::Int(-i),
            other => panic!("oracle: minus on {other:?}"),
        },
        Node::And(l, r) => and(ev(l), ev(r)),
        Node::Or(l, r) => not(and(not(ev(l)), not(ev(r)))),
        Node::Compare(op, l, r) => {
            let holds = |o: Ordering| match op {
                Op::Eq => o == Ordering::Equal,
                Op::NotEq => o != Ordering::Equal,
                Op::Lt => o == Ordering::Less,
                Op::LtEq => o != Ordering::Greater,
                Op::Gt => o == Ordering::Greater,
                Op::GtEq => o != Ordering::Less,
                other => panic!("oracle: unsupported operator {other}"),
            };
            compare(ev(l), ev(r)).map_or(Datum::Null, |o| Datum::Bool(holds(o)))
        }
        Node::IsNull { node, negated } => Datum::Bool((ev(node) == Datum::Null) != *negated),
        Node::IsBool {
            node,
            value,
            negated,
            literal,
        } => {
            // A literal's untyped string is read as a boolean here (a text
            // column never gets here: PostgreSQL and the engine reject it).
            let v = match (literal, ev(node)) {
                (true, Datum::Text(t)) => Datum::Bool(pg_bool(t)),
                (_, other) => other,
            };
            Datum::Bool((v == Datum::Bool(*value)) != *negated)
        }
        Node::Between {
            node,
            low,
            high,
            negated,
        } => {
            let x = ev(node);
            let ge = compare(x, ev(low))
                .map(|o| Datum::Bool(o != Ordering::Less))
                .unwrap_or(Datum::Null);
            let le = compare(x, ev(high))
                .map(|o| Datum::Bool(o != Ordering::Greater))
                .unwrap_or(Datum::Null);
            negate_if(*negated, and(ge, le))
        }
        Node::InList {
            node,
            list,
            negated,
        } => {
            let x = ev(node);
            let mut result = Datum::Bool(false);
            for item in list {
                match compare(x, ev(item)) {
                    Some(Ordering::Equal) => result = Datum::Bool(true),
                    None if result != Datum::Bool(true) => result = Datum::Null,
                    _ => {}
                }
            }
            negate_if(*negated, result)
        }
        Node::Like {
            node,
            pattern,
            escape,
            fold,
            negated,
        } => {
            let escape = escape.as_deref().map(ev);
            like(ev(node), ev(pattern), escape, *fold, *negated)
        }
        Node::InSubquery {
            left,
            subquery,
            negated,
        } => {
            let left: Vec<Datum<'a>> = left.iter().map(ev).collect();
            negate_if(*negated, in_subquery(&left, subquery, tables))
        }
    }
}

/// `left IN (subquery)`: TRUE, FALSE or NULL.
fn in_subquery(left: &[Datum<'_>], subquery: &Subquery, tables: &dyn Tables) -> Datum<'static> {
    assert_eq!(
        subquery.columns.len(),
        left.len(),
        "oracle: {subquery:?} against {left:?}"
    );
    // Uncorrelated (a reference to an outer column panics when the filter
    // is bound): its tuples are the same for every row of one query, so
    // they are computed once per query.
    let compute = || {
        let (schema, table) = (&subquery.schema, &subquery.table);
        let read = tables.rows(schema, table);
        let index = |name: &str| {
            read.columns
                .iter()
                .position(|c| *c == name)
                .unwrap_or_else(|| panic!("oracle: no column {name} in {schema}.{table}"))
        };
        let projected: Vec<usize> = subquery.columns.iter().map(|c| index(c)).collect();
        assert!(
            read.columns.len() >= subquery.table_columns.len()
                && subquery
                    .table_columns
                    .iter()
                    .zip(&read.columns)
                    .all(|(b, c)| b == c),
            "oracle: {schema}.{table} lost or reordered columns since its filter was bound"
        );
        let mut tuples = Vec::new();
        for row in &read.rows {
            if let Some(filter) = &subquery.filter
                && eval(filter, row, tables) != Datum::Bool(true)
            {
                continue;
            }
            tuples.push(
                projected
                    .iter()
                    .map(|&i| row[i].clone())
                    .collect::<Vec<Value>>(),
            );
        }
        tuples
    };
    let tuples = tables.selected(std::ptr::from_ref(subquery) as usize, &compute);
    let mut result = Datum::Bool(false);
    for tuple in tuples.iter() {
        let mut unknown = false;
        let mut differs = false;
        for (l, r) in left.iter().zip(tuple) {
            match compare(*l, Datum::from(r)) {
                Some(Ordering::Equal) => {}
                Some(_) => differs = true,
                None => unknown = true,
            }
        }
        match (differs, unknown) {
            (false, false) => return Datum::Bool(true),
            (false, true) => result = Datum::Null,
            (true, _) => {}
        }
    }
    result
}

fn not(v: Datum<'_>) -> Datum<'_> {
    match v {
        Datum::Bool(b) => Datum::Bool(!b),
        Datum::Null => Datum::Null,
        other => panic!("oracle: NOT on {other:?}"),
    }
}

fn negate_if(negated: bool, v: Datum<'_>) -> Datum<'_> {
    if negated { not(v) } else { v }
}

fn and<'a>(a: Datum<'a>, b: Datum<'a>) -> Datum<'a> {
    match (a, b) {
        (Datum::Bool(false), _) | (_, Datum::Bool(false)) => Datum::Bool(false),
        (Datum::Bool(true), Datum::Bool(true)) => Datum::Bool(true),
        _ => Datum::Null,
    }
}

/// Compares two values, giving an untyped string the other side's type.
fn compare(a: Datum<'_>, b: Datum<'_>) -> Option<Ordering> {
    let int = |t: &str| t.trim().parse::<i64>().expect("integer text");
    match (a, b) {
        (Datum::Null, _) | (_, Datum::Null) => None,
        (Datum::Int(x), Datum::Int(y)) => Some(x.cmp(&y)),
        (Datum::Bool(x), Datum::Bool(y)) => Some(x.cmp(&y)),
        (Datum::Text(x), Datum::Text(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Datum::Int(x), Datum::Text(y)) => Some(x.cmp(&int(y))),
        (Datum::Text(x), Datum::Int(y)) => Some(int(x).cmp(&y)),
        (Datum::Bool(x), Datum::Text(y)) => Some(x.cmp(&pg_bool(y))),
        (Datum::Text(x), Datum::Bool(y)) => Some(pg_bool(x).cmp(&y)),
        (x, y) => panic!("oracle: comparing {x:?} with {y:?}"),
    }
}

/// PostgreSQL's boolean input: any prefix of `true`, `false`, `yes`, `no`,
/// at least two letters of `on`/`off`, `1`, `0`; case and surrounding
/// spaces ignored.
fn pg_bool(text: &str) -> bool {
    let t = text.trim().to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| t.len() >= min && word.starts_with(t.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || t == "on" || t == "1" {
        true
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || t == "0" {
        false
    } else {
        panic!("oracle: not a boolean: {text:?}")
    }
}

fn like<'a>(
    text: Datum<'a>,
    pattern: Datum<'a>,
    escape: Option<Datum<'a>>,
    fold: bool,
    negated: bool,
) -> Datum<'a> {
    let (Datum::Text(text), Datum::Text(pattern)) = (text, pattern) else {
        return Datum::Null;
    };
    let escape = match escape {
        None => Some('\\'),
        Some(Datum::Text(e)) => e.chars().next(),
        Some(other) => panic!("oracle: ESCAPE {other:?}"),
    };
    let lower = |s: &str| -> Vec<char> {
        s.chars()
            .map(|c| if fold { c.to_ascii_lowercase() } else { c })
            .collect()
    };
    // Pattern as (literal?, char) pairs: escaped characters are literal.
    let mut items = Vec::new();
    let mut chars = lower(pattern).into_iter();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            items.push((true, chars.next().expect("pattern ends with escape")));
        } else {
            items.push((false, c));
        }
    }
    negate_if(negated, Datum::Bool(like_at(&items, &lower(text))))
}

/// Plain recursion: `%` tries every split, `_` takes one character.
fn like_at(pattern: &[(bool, char)], text: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(((false, '%'), rest)) => (0..=text.len()).any(|i| like_at(rest, &text[i..])),
        Some(((false, '_'), rest)) => !text.is_empty() && like_at(rest, &text[1..]),
        Some(((_, c), rest)) => text.first() == Some(c) && like_at(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql: &str, row: &[(&str, Value)]) -> bool {
        let expr = parse(sql).unwrap();
        let columns: Vec<&str> = row.iter().map(|(n, _)| *n).collect();
        let values: Vec<Value> = row.iter().map(|(_, v)| v.clone()).collect();
        Bound::new(&expr, &columns, &|_, _| panic!("no subqueries here")).holds(&values)
    }

    #[test]
    fn three_valued_logic_and_like() {
        let row = [
            ("v", Value::Text("v15".into())),
            ("n", Value::Null),
            ("a", Value::Bool(true)),
        ];
        assert!(check("v LIKE 'v1%' AND NOT (v = 'v2')", &row));
        assert!(
            !check("n = 1 OR v = 'x'", &row),
            "NULL OR FALSE is not TRUE"
        );
        assert!(check("n = 1 OR a", &row), "NULL OR TRUE is TRUE");
        assert!(!check("v NOT IN ('x', NULL)", &row));
        assert!(check("v BETWEEN 'v1' AND 'v2'", &row));
        assert!(check("'A_b' LIKE 'A\\_b' AND 'ab' ILIKE 'A%'", &row));
        assert!(check("(\"v\" IN ('v15', 'v3')) AND (a IS TRUE)", &row));
    }
}

#[cfg(test)]
mod subquery_tests {
    use super::*;
    use std::collections::BTreeMap;

    type Table = (&'static [&'static str], Vec<Vec<Value>>);

    struct Fixed(BTreeMap<&'static str, Table>);

    impl Tables for Fixed {
        fn rows(&self, schema: &str, table: &str) -> TableRows<'_> {
            assert_eq!(schema, "public");
            let (columns, rows) = &self.0[table];
            TableRows {
                columns: columns.to_vec(),
                rows: rows.iter().map(Vec::as_slice).collect(),
            }
        }
    }

    fn tables() -> Fixed {
        let (i, b, null) = (Value::Int, Value::Bool, Value::Null);
        const U: &[&str] = &["id", "active", "t_id"];
        const W: &[&str] = &["id", "u_id"];
        Fixed(BTreeMap::from([
            (
                "u",
                (
                    U,
                    vec![
                        vec![i(1), b(true), i(10)],
                        vec![i(2), b(false), i(20)],
                        vec![i(3), b(true), null],
                    ],
                ),
            ),
            ("w", (W, vec![vec![i(100), i(1)], vec![i(101), i(3)]])),
        ]))
    }

    /// The clause's value for a row of (x, y) as TRUE / FALSE / NULL.
    fn value(sql: &str, x: Value, y: Value) -> Value {
        let expr = parse(sql).unwrap();
        let tables = tables();
        let columns_of = |_: &str, table: &str| -> Vec<String> {
            tables.0[table].0.iter().map(|c| c.to_string()).collect()
        };
        let bound = Bound::new(&expr, &["x", "y"], &columns_of);
        let row = [x, y];
        match eval(&bound.0, &row, &tables) {
            Datum::Null => Value::Null,
            Datum::Bool(b) => Value::Bool(b),
            other => panic!("{sql} is not a condition: {other:?}"),
        }
    }

    #[test]
    fn subqueries_are_sets_with_sql_null_semantics_nested_and_in_row_form() {
        let (i, b, null) = (Value::Int, Value::Bool, Value::Null);
        let active = "x IN (SELECT t_id FROM u WHERE active)"; // {10, NULL}
        let not_active = "x NOT IN (SELECT t_id FROM u WHERE active)";
        let none = "x NOT IN (SELECT t_id FROM public.u WHERE id = 99)"; // {}
        let nested = "x IN (SELECT t_id FROM u WHERE id IN (SELECT u_id FROM w))"; // {10, NULL}
        let row = "(x, y) IN (SELECT \"id\", t_id FROM u)"; // {(1,10), (2,20), (3,NULL)}
        #[rustfmt::skip]
        let cases = [
            (active, i(10), null.clone(), b(true)),
            (active, i(20), null.clone(), null.clone()),     // 20 = NULL is unknown
            (not_active, i(20), null.clone(), null.clone()), // so NOT IN is never TRUE
            (not_active, null.clone(), null.clone(), null.clone()),
            ("x IN (SELECT t_id FROM u WHERE id = 2)", i(20), null.clone(), b(true)),
            (none, null.clone(), null.clone(), b(true)),     // NOT IN the empty set
            (nested, i(10), null.clone(), b(true)),
            (nested, i(20), null.clone(), null.clone()),
            (row, i(1), i(10), b(true)),
            (row, i(3), i(5), null.clone()),                 // (3, 5) vs (3, NULL)
            (row, i(2), i(5), b(false)),
        ];
        for (sql, x, y, expected) in cases {
            assert_eq!(
                value(sql, x.clone(), y.clone()),
                expected,
                "{sql} with x={x:?} y={y:?}"
            );
        }
    }
}
