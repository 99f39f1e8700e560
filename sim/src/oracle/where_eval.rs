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

use engine::schema::Value;
use sqlparser::ast::{
    BinaryOperator as Op, Expr, Ident, ObjectName, Query, SelectItem, SetExpr, TableFactor,
    UnaryOperator, Value as Lit,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::rc::Rc;

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

    /// The tuples `subquery` selects, as `compute` finds them; an
    /// implementation serving one query may remember them by the node's
    /// address (the oracle's subqueries are uncorrelated, the tables do not
    /// change meanwhile, and the parsed clause outlives the query).
    fn selected(
        &self,
        _subquery: &Query,
        compute: &dyn Fn() -> Vec<Vec<Value>>,
    ) -> Rc<Vec<Vec<Value>>> {
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

/// Whether `expr` is TRUE for the row; `column` looks a column up by name.
pub fn holds<'a>(expr: &'a Expr, column: &dyn Fn(&str) -> Datum<'a>) -> bool {
    holds_in(expr, column, &NoTables)
}

/// [`holds`], with subqueries evaluated over `tables`.
pub fn holds_in<'a>(
    expr: &'a Expr,
    column: &dyn Fn(&str) -> Datum<'a>,
    tables: &dyn Tables,
) -> bool {
    eval(expr, column, tables) == Datum::Bool(true)
}

fn eval<'a>(expr: &'a Expr, column: &dyn Fn(&str) -> Datum<'a>, tables: &dyn Tables) -> Datum<'a> {
    let ev = |e: &'a Expr| eval(e, column, tables);
    match expr {
        Expr::Identifier(ident) => column(&name_of(ident)),
        Expr::Nested(inner) => ev(inner),
        Expr::Value(v) => match &v.value {
            Lit::Number(n, _) => Datum::Int(n.parse().expect("integer literal")),
            // `E'...'`: the tokenizer has already resolved its escapes.
            Lit::SingleQuotedString(s) | Lit::EscapedStringLiteral(s) => Datum::Text(s),
            Lit::Boolean(b) => Datum::Bool(*b),
            Lit::Null => Datum::Null,
            other => panic!("oracle: unsupported literal {other}"),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => not(ev(expr)),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match negative_literal(expr) {
            Some(n) => Datum::Int(n),
            None => match ev(expr) {
                Datum::Int(i) => Datum::Int(-i),
                other => panic!("oracle: minus on {other:?}"),
            },
        },
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => ev(expr),
        Expr::BinaryOp {
            left,
            op: Op::And,
            right,
        } => and(ev(left), ev(right)),
        Expr::BinaryOp {
            left,
            op: Op::Or,
            right,
        } => not(and(not(ev(left)), not(ev(right)))),
        Expr::BinaryOp { left, op, right } => {
            let ord = compare(ev(left), ev(right));
            let holds = |o: Ordering| match op {
                Op::Eq => o == Ordering::Equal,
                Op::NotEq => o != Ordering::Equal,
                Op::Lt => o == Ordering::Less,
                Op::LtEq => o != Ordering::Greater,
                Op::Gt => o == Ordering::Greater,
                Op::GtEq => o != Ordering::Less,
                other => panic!("oracle: unsupported operator {other}"),
            };
            ord.map_or(Datum::Null, |o| Datum::Bool(holds(o)))
        }
        Expr::IsNull(e) => Datum::Bool(ev(e) == Datum::Null),
        Expr::IsNotNull(e) => Datum::Bool(ev(e) != Datum::Null),
        Expr::IsTrue(e) => Datum::Bool(boolean(e, ev(e)) == Datum::Bool(true)),
        Expr::IsNotTrue(e) => Datum::Bool(boolean(e, ev(e)) != Datum::Bool(true)),
        Expr::IsFalse(e) => Datum::Bool(boolean(e, ev(e)) == Datum::Bool(false)),
        Expr::IsNotFalse(e) => Datum::Bool(boolean(e, ev(e)) != Datum::Bool(false)),
        Expr::IsUnknown(e) => Datum::Bool(ev(e) == Datum::Null),
        Expr::IsNotUnknown(e) => Datum::Bool(ev(e) != Datum::Null),
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let x = ev(expr);
            let ge = compare(x, ev(low))
                .map(|o| Datum::Bool(o != Ordering::Less))
                .unwrap_or(Datum::Null);
            let le = compare(x, ev(high))
                .map(|o| Datum::Bool(o != Ordering::Greater))
                .unwrap_or(Datum::Null);
            negate_if(*negated, and(ge, le))
        }
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let x = ev(expr);
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
        Expr::Like {
            negated,
            expr,
            pattern,
            escape_char,
            ..
        } => like(
            ev(expr),
            ev(pattern),
            escape_char.as_deref(),
            false,
            *negated,
            column,
        ),
        Expr::ILike {
            negated,
            expr,
            pattern,
            escape_char,
            ..
        } => like(
            ev(expr),
            ev(pattern),
            escape_char.as_deref(),
            true,
            *negated,
            column,
        ),
        Expr::InSubquery {
            expr,
            subquery,
            negated,
        } => {
            let left: Vec<Datum<'a>> = match expr.as_ref() {
                Expr::Tuple(items) => items.iter().map(ev).collect(),
                one => vec![ev(one)],
            };
            negate_if(*negated, in_subquery(&left, subquery, tables))
        }
        other => panic!("oracle: unsupported expression {other}"),
    }
}

/// The tables the subqueries of `expr` read, as `(schema, table)`, nested
/// ones included, in the order written (the variants [`eval`] supports;
/// any other panics there too).
pub fn subquery_tables(expr: &Expr) -> Vec<(String, String)> {
    let mut out = Vec::new();
    collect_tables(expr, &mut out);
    out
}

fn collect_tables(expr: &Expr, out: &mut Vec<(String, String)>) {
    let mut walk = |e: &Expr| collect_tables(e, out);
    match expr {
        Expr::Identifier(_) | Expr::Value(_) => {}
        Expr::Nested(e)
        | Expr::UnaryOp { expr: e, .. }
        | Expr::IsNull(e)
        | Expr::IsNotNull(e)
        | Expr::IsTrue(e)
        | Expr::IsNotTrue(e)
        | Expr::IsFalse(e)
        | Expr::IsNotFalse(e)
        | Expr::IsUnknown(e)
        | Expr::IsNotUnknown(e) => walk(e),
        Expr::BinaryOp { left, right, .. } => {
            walk(left);
            walk(right);
        }
        Expr::Between {
            expr, low, high, ..
        } => {
            walk(expr);
            walk(low);
            walk(high);
        }
        Expr::InList { expr, list, .. } => {
            walk(expr);
            list.iter().for_each(walk);
        }
        Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. } => {
            walk(expr);
            walk(pattern);
        }
        Expr::Tuple(items) => items.iter().for_each(walk),
        Expr::InSubquery { expr, subquery, .. } => {
            walk(expr);
            let SetExpr::Select(select) = subquery.body.as_ref() else {
                panic!("oracle: unsupported subquery {subquery}")
            };
            let TableFactor::Table { name, .. } = &select.from[0].relation else {
                panic!("oracle: unsupported FROM in {subquery}")
            };
            out.push(schema_and_table(name));
            if let Some(filter) = &select.selection {
                collect_tables(filter, out);
            }
        }
        other => panic!("oracle: unsupported expression {other}"),
    }
}

/// An identifier as Postgres resolves it: folded to lowercase unless quoted
/// (borrowed when folding changes nothing: no allocation per row).
fn name_of(ident: &Ident) -> Cow<'_, str> {
    let folded = |v: &str| v.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase());
    match ident.quote_style {
        None if !folded(&ident.value) => Cow::Owned(ident.value.to_lowercase()),
        _ => Cow::Borrowed(&ident.value),
    }
}

/// `left IN (query)`: TRUE, FALSE or NULL.
fn in_subquery(left: &[Datum<'_>], query: &Query, tables: &dyn Tables) -> Datum<'static> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        panic!("oracle: unsupported subquery {query}")
    };
    assert_eq!(
        select.projection.len(),
        left.len(),
        "oracle: {query} against {left:?}"
    );
    // Uncorrelated (a reference to an outer column panics below): its
    // tuples are the same for every row of one query, so names are
    // resolved only when they are computed, not per row.
    let compute = || {
        let columns: Vec<String> = select
            .projection
            .iter()
            .map(|item| match item {
                SelectItem::UnnamedExpr(Expr::Identifier(ident)) => name_of(ident).into_owned(),
                other => panic!("oracle: unsupported select item {other}"),
            })
            .collect();
        let TableFactor::Table { name, .. } = &select.from[0].relation else {
            panic!("oracle: unsupported FROM in {query}")
        };
        let (schema, table) = schema_and_table(name);
        let read = tables.rows(&schema, &table);
        let index = |name: &str| {
            read.columns
                .iter()
                .position(|c| *c == name)
                .unwrap_or_else(|| panic!("oracle: no column {name} in {schema}.{table}"))
        };
        let projected: Vec<usize> = columns.iter().map(|c| index(c)).collect();
        let mut tuples = Vec::new();
        for row in &read.rows {
            if let Some(filter) = &select.selection
                && eval(filter, &|name| Datum::from(&row[index(name)]), tables) != Datum::Bool(true)
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
    let tuples = tables.selected(query, &compute);
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

fn schema_and_table(name: &ObjectName) -> (String, String) {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| name_of(p.as_ident().expect("a plain name")).into_owned())
        .collect();
    match parts.as_slice() {
        [table] => ("public".to_string(), table.clone()),
        [schema, table] => (schema.clone(), table.clone()),
        _ => panic!("oracle: unsupported table name {name}"),
    }
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

/// `-<number>` as one literal (`-9223372036854775808`: the number alone
/// is past i64).
fn negative_literal(expr: &Expr) -> Option<i64> {
    match expr {
        Expr::Value(v) => match &v.value {
            Lit::Number(n, _) => {
                let magnitude: i128 = n.parse().expect("integer literal");
                Some(i64::try_from(-magnitude).expect("integer literal"))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The value of `expr` where a boolean is expected: an untyped string
/// literal becomes one (a text column never gets here: PostgreSQL and the
/// engine reject it).
fn boolean<'a>(expr: &Expr, v: Datum<'a>) -> Datum<'a> {
    match (expr, v) {
        (Expr::Value(_), Datum::Text(t)) => Datum::Bool(pg_bool(t)),
        (_, other) => other,
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
    escape: Option<&'a Expr>,
    fold: bool,
    negated: bool,
    column: &dyn Fn(&str) -> Datum<'a>,
) -> Datum<'a> {
    let (Datum::Text(text), Datum::Text(pattern)) = (text, pattern) else {
        return Datum::Null;
    };
    let escape = match escape.map(|e| eval(e, column, &NoTables)) {
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
        holds(&expr, &|name| {
            row.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| Datum::from(v))
                .expect("column")
        })
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
        let row = [("x", x), ("y", y)];
        let column = |name: &str| {
            row.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| Datum::from(v))
                .expect("column")
        };
        match eval(&expr, &column, &tables()) {
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
