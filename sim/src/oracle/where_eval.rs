//! The oracle's WHERE evaluator: small and direct on purpose. It shares no
//! code with the engine's parser, type checker or evaluator (only the SQL
//! tokenizer/AST library), so a bug in the engine's evaluation cannot hide by
//! being repeated here. Semantics: PostgreSQL's three-valued logic, bytewise
//! ("C") text order, ASCII-only case folding for ILIKE, untyped string
//! literals taking the type of what they are compared with.

use engine::schema::Value;
use sqlparser::ast::{BinaryOperator as Op, Expr, UnaryOperator, Value as Lit};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::cmp::Ordering;

/// Parses a WHERE clause the harness generated (or the engine's canonical text).
pub fn parse(sql: &str) -> Result<Expr, String> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| e.to_string())
}

/// Whether `expr` is TRUE for the row; `column` looks a column up by name.
pub fn holds(expr: &Expr, column: &dyn Fn(&str) -> Value) -> bool {
    eval(expr, column) == Value::Bool(true)
}

fn eval(expr: &Expr, column: &dyn Fn(&str) -> Value) -> Value {
    let ev = |e: &Expr| eval(e, column);
    match expr {
        Expr::Identifier(ident) => {
            let name = if ident.quote_style.is_some() {
                ident.value.clone()
            } else {
                ident.value.to_lowercase()
            };
            column(&name)
        }
        Expr::Nested(inner) => ev(inner),
        Expr::Value(v) => match &v.value {
            Lit::Number(n, _) => Value::Int(n.parse().expect("integer literal")),
            Lit::SingleQuotedString(s) => Value::Text(s.clone()),
            Lit::Boolean(b) => Value::Bool(*b),
            Lit::Null => Value::Null,
            other => panic!("oracle: unsupported literal {other}"),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => not(ev(expr)),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match ev(expr) {
            Value::Int(i) => Value::Int(-i),
            other => panic!("oracle: minus on {other:?}"),
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
            ord.map_or(Value::Null, |o| Value::Bool(holds(o)))
        }
        Expr::IsNull(e) => Value::Bool(ev(e) == Value::Null),
        Expr::IsNotNull(e) => Value::Bool(ev(e) != Value::Null),
        Expr::IsTrue(e) => Value::Bool(ev(e) == Value::Bool(true)),
        Expr::IsNotTrue(e) => Value::Bool(ev(e) != Value::Bool(true)),
        Expr::IsFalse(e) => Value::Bool(ev(e) == Value::Bool(false)),
        Expr::IsNotFalse(e) => Value::Bool(ev(e) != Value::Bool(false)),
        Expr::IsUnknown(e) => Value::Bool(ev(e) == Value::Null),
        Expr::IsNotUnknown(e) => Value::Bool(ev(e) != Value::Null),
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let x = ev(expr);
            let ge = compare(x.clone(), ev(low))
                .map(|o| Value::Bool(o != Ordering::Less))
                .unwrap_or(Value::Null);
            let le = compare(x, ev(high))
                .map(|o| Value::Bool(o != Ordering::Greater))
                .unwrap_or(Value::Null);
            negate_if(*negated, and(ge, le))
        }
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let x = ev(expr);
            let mut result = Value::Bool(false);
            for item in list {
                match compare(x.clone(), ev(item)) {
                    Some(Ordering::Equal) => result = Value::Bool(true),
                    None if result != Value::Bool(true) => result = Value::Null,
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
        other => panic!("oracle: unsupported expression {other}"),
    }
}

fn not(v: Value) -> Value {
    match v {
        Value::Bool(b) => Value::Bool(!b),
        Value::Null => Value::Null,
        other => panic!("oracle: NOT on {other:?}"),
    }
}

fn negate_if(negated: bool, v: Value) -> Value {
    if negated { not(v) } else { v }
}

fn and(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Bool(false), _) | (_, Value::Bool(false)) => Value::Bool(false),
        (Value::Bool(true), Value::Bool(true)) => Value::Bool(true),
        _ => Value::Null,
    }
}

/// Compares two values, giving an untyped string the other side's type.
fn compare(a: Value, b: Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => None,
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(&y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(&y)),
        (Value::Text(x), Value::Text(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Int(x), Value::Text(y)) => Some(x.cmp(&y.trim().parse().expect("integer text"))),
        (Value::Text(x), Value::Int(y)) => {
            Some(x.trim().parse::<i64>().expect("integer text").cmp(&y))
        }
        (Value::Bool(x), Value::Text(y)) => Some(x.cmp(&pg_bool(&y))),
        (Value::Text(x), Value::Bool(y)) => Some(pg_bool(&x).cmp(&y)),
        (x, y) => panic!("oracle: comparing {x:?} with {y:?}"),
    }
}

fn pg_bool(text: &str) -> bool {
    match text.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => true,
        "f" | "false" | "n" | "no" | "off" | "0" => false,
        other => panic!("oracle: not a boolean: {other}"),
    }
}

fn like(
    text: Value,
    pattern: Value,
    escape: Option<&Expr>,
    fold: bool,
    negated: bool,
    column: &dyn Fn(&str) -> Value,
) -> Value {
    let (Value::Text(text), Value::Text(pattern)) = (text, pattern) else {
        return Value::Null;
    };
    let escape = match escape.map(|e| eval(e, column)) {
        None => Some('\\'),
        Some(Value::Text(e)) => e.chars().next(),
        Some(other) => panic!("oracle: ESCAPE {other:?}"),
    };
    let lower = |s: &str| -> Vec<char> {
        s.chars()
            .map(|c| if fold { c.to_ascii_lowercase() } else { c })
            .collect()
    };
    // Pattern as (literal?, char) pairs: escaped characters are literal.
    let mut items = Vec::new();
    let mut chars = lower(&pattern).into_iter();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            items.push((true, chars.next().expect("pattern ends with escape")));
        } else {
            items.push((false, c));
        }
    }
    negate_if(negated, Value::Bool(like_at(&items, &lower(&text))))
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
                .map(|(_, v)| v.clone())
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
