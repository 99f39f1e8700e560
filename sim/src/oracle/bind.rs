//! Binding a parsed WHERE to one table's columns: every identifier becomes
//! the column's position, every literal its value, once, so that the
//! evaluator ([`super::where_eval`]) reads a row by position and never walks
//! sqlparser's tree, folds a name or parses a number per row. Binding
//! changes no meaning: each node is the expression it came from, and what
//! the evaluator does with it is written down there.

use engine::schema::Value;
use sqlparser::ast::{
    BinaryOperator as Op, Expr, Ident, ObjectName, Query, SelectItem, SetExpr, TableFactor,
    UnaryOperator, Value as Lit,
};
use std::borrow::Cow;

/// An expression bound to a table's columns.
#[derive(Debug)]
pub(super) enum Node {
    Column(usize),
    Const(Value),
    Not(Box<Node>),
    /// Unary minus of a non-literal (a negative literal is a `Const`).
    Negate(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Compare(Op, Box<Node>, Box<Node>),
    IsNull {
        node: Box<Node>,
        negated: bool,
    },
    /// `IS [NOT] TRUE / FALSE`; `literal`: the operand is a literal, so an
    /// untyped string there is read as a boolean.
    IsBool {
        node: Box<Node>,
        value: bool,
        negated: bool,
        literal: bool,
    },
    Between {
        node: Box<Node>,
        low: Box<Node>,
        high: Box<Node>,
        negated: bool,
    },
    InList {
        node: Box<Node>,
        list: Vec<Node>,
        negated: bool,
    },
    Like {
        node: Box<Node>,
        pattern: Box<Node>,
        escape: Option<Box<Node>>,
        fold: bool,
        negated: bool,
    },
    InSubquery {
        left: Vec<Node>,
        subquery: Subquery,
        negated: bool,
    },
}

/// `SELECT columns FROM schema.table [WHERE filter]`, uncorrelated: its
/// filter is bound to its own table's columns, as they were when it was
/// bound (`table_columns`; a table only gains columns, at its end).
#[derive(Debug)]
pub(super) struct Subquery {
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    pub table_columns: Vec<String>,
    pub filter: Option<Box<Node>>,
}

/// The column names of `schema.table` (unquoted, lowercase, table order).
pub type ColumnsOf<'a> = dyn Fn(&str, &str) -> Vec<String> + 'a;

/// Binds `expr` to a table whose columns are `columns` (unquoted, lowercase
/// names, table order), and its subqueries' filters to theirs
/// (`columns_of`). Panics on what the oracle does not support and on an
/// unknown column (the harness generates every clause it binds).
pub(super) fn bind(expr: &Expr, columns: &[&str], columns_of: &ColumnsOf) -> Node {
    let b = |e: &Expr| Box::new(bind(e, columns, columns_of));
    match expr {
        Expr::Identifier(ident) => {
            let name = name_of(ident);
            let at = columns.iter().position(|c| *c == name);
            Node::Column(at.unwrap_or_else(|| panic!("oracle: no column {name} in {columns:?}")))
        }
        Expr::Nested(inner) => bind(inner, columns, columns_of),
        Expr::Value(v) => Node::Const(literal(&v.value)),
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => Node::Not(b(expr)),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match negative_literal(expr) {
            Some(n) => Node::Const(Value::Int(n)),
            None => Node::Negate(b(expr)),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => bind(expr, columns, columns_of),
        Expr::BinaryOp {
            left,
            op: Op::And,
            right,
        } => Node::And(b(left), b(right)),
        Expr::BinaryOp {
            left,
            op: Op::Or,
            right,
        } => Node::Or(b(left), b(right)),
        Expr::BinaryOp { left, op, right } => match op {
            Op::Eq | Op::NotEq | Op::Lt | Op::LtEq | Op::Gt | Op::GtEq => {
                Node::Compare(op.clone(), b(left), b(right))
            }
            other => panic!("oracle: unsupported operator {other}"),
        },
        Expr::IsNull(e) | Expr::IsUnknown(e) => Node::IsNull {
            node: b(e),
            negated: false,
        },
        Expr::IsNotNull(e) | Expr::IsNotUnknown(e) => Node::IsNull {
            node: b(e),
            negated: true,
        },
        Expr::IsTrue(e) => is_bool(b(e), true, false, e),
        Expr::IsNotTrue(e) => is_bool(b(e), true, true, e),
        Expr::IsFalse(e) => is_bool(b(e), false, false, e),
        Expr::IsNotFalse(e) => is_bool(b(e), false, true, e),
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => Node::Between {
            node: b(expr),
            low: b(low),
            high: b(high),
            negated: *negated,
        },
        Expr::InList {
            expr,
            list,
            negated,
        } => Node::InList {
            node: b(expr),
            list: list.iter().map(|e| *b(e)).collect(),
            negated: *negated,
        },
        Expr::Like {
            negated,
            expr: text,
            pattern,
            escape_char,
            ..
        }
        | Expr::ILike {
            negated,
            expr: text,
            pattern,
            escape_char,
            ..
        } => Node::Like {
            node: b(text),
            pattern: b(pattern),
            escape: escape_char.as_deref().map(b),
            // ILIKE folds ASCII case.
            fold: matches!(expr, Expr::ILike { .. }),
            negated: *negated,
        },
        Expr::InSubquery {
            expr,
            subquery,
            negated,
        } => Node::InSubquery {
            left: match expr.as_ref() {
                Expr::Tuple(items) => items.iter().map(|e| *b(e)).collect(),
                one => vec![*b(one)],
            },
            subquery: bind_subquery(subquery, columns_of),
            negated: *negated,
        },
        other => panic!("oracle: unsupported expression {other}"),
    }
}

fn is_bool(node: Box<Node>, value: bool, negated: bool, operand: &Expr) -> Node {
    Node::IsBool {
        node,
        value,
        negated,
        literal: matches!(operand, Expr::Value(_)),
    }
}

fn literal(value: &Lit) -> Value {
    match value {
        Lit::Number(n, _) => Value::Int(n.parse().expect("integer literal")),
        // `E'...'`: the tokenizer has already resolved its escapes.
        Lit::SingleQuotedString(s) | Lit::EscapedStringLiteral(s) => Value::Text(s.clone()),
        Lit::Boolean(b) => Value::Bool(*b),
        Lit::Null => Value::Null,
        other => panic!("oracle: unsupported literal {other}"),
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

fn bind_subquery(query: &Query, columns_of: &ColumnsOf) -> Subquery {
    let SetExpr::Select(select) = query.body.as_ref() else {
        panic!("oracle: unsupported subquery {query}")
    };
    let columns = select
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
    let table_columns = columns_of(&schema, &table);
    let names: Vec<&str> = table_columns.iter().map(String::as_str).collect();
    let filter = (select.selection.as_ref()).map(|f| Box::new(bind(f, &names, columns_of)));
    Subquery {
        schema,
        table,
        columns,
        table_columns,
        filter,
    }
}

/// The tables the subqueries of `expr` read, as `(schema, table)`, nested
/// ones included, in the order written (the variants [`bind`] supports;
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
/// (borrowed when folding changes nothing).
fn name_of(ident: &Ident) -> Cow<'_, str> {
    let folded = |v: &str| v.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase());
    match ident.quote_style {
        None if !folded(&ident.value) => Cow::Owned(ident.value.to_lowercase()),
        _ => Cow::Borrowed(&ident.value),
    }
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
