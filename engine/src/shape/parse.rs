//! WHERE clause parsing: `sqlparser` (PostgreSQL dialect) reads the text, then
//! every node is checked against the table schema and turned into the engine's
//! typed [`Expr`]. Anything outside the supported subset is an error that names
//! the construct and where it is.
//!
//! Typing follows Postgres: a quoted string literal has no type until it meets
//! one (`id = '5'` compares integers), `NULL` adapts to anything, and comparing
//! values of different types is an error, never a silent cast.

use super::expr::{CmpOp, Expr, LikePattern};
use super::like::compile_like;
use crate::schema::{Catalog, ColumnType, TableName, TableSchema, Value};
use sqlparser::ast::{self, BinaryOperator, ObjectName, Spanned, UnaryOperator};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Span, Token};
use std::fmt;

/// A WHERE clause the engine cannot accept, with the position of the offending
/// construct when the parser knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhereError {
    pub message: String,
    /// (line, column), both 1-based.
    pub location: Option<(u64, u64)>,
}

impl fmt::Display for WhereError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some((line, column)) = self.location {
            write!(f, " (at line {line}, column {column})")?;
        }
        Ok(())
    }
}

impl std::error::Error for WhereError {}

pub(super) type Result<T> = std::result::Result<T, WhereError>;

pub(super) fn error_at(node: &impl Spanned, message: String) -> WhereError {
    error_at_span(node.span(), message)
}

fn error_at_span(span: Span, message: String) -> WhereError {
    let start = span.start;
    let location = (start.line > 0).then_some((start.line, start.column));
    WhereError { message, location }
}

/// Parses and checks `sql` as a WHERE clause over `table`; subqueries may name
/// any table of `catalog`.
pub fn parse_where(sql: &str, table: &TableSchema, catalog: &Catalog) -> Result<Expr> {
    if sql.trim().is_empty() {
        return Err(WhereError {
            message: "the WHERE clause is empty".to_string(),
            location: None,
        });
    }
    let dialect = PostgreSqlDialect {};
    let invalid = |e: sqlparser::parser::ParserError| WhereError {
        message: format!("invalid WHERE clause: {e}"),
        location: None,
    };
    let mut parser = Parser::new(&dialect).try_with_sql(sql).map_err(invalid)?;
    let ast = parser.parse_expr().map_err(invalid)?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(error_at_span(
            next.span,
            format!(
                "unexpected `{}` after the end of the WHERE clause",
                next.token
            ),
        ));
    }
    Checker { table, catalog }.where_clause(&ast)
}

pub(super) struct Checker<'a> {
    pub(super) table: &'a TableSchema,
    pub(super) catalog: &'a Catalog,
}

/// Postgres folds unquoted identifiers to lower case.
pub(super) fn ident_name(ident: &ast::Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

pub(super) fn is_string_literal(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Literal {
            value: Value::Text(_),
            ..
        }
    )
}

pub(super) fn bool_literal(value: Value) -> Expr {
    Expr::Literal {
        value,
        ty: Some(ColumnType::Bool),
    }
}

/// Postgres' spellings of boolean input.
pub(super) fn parse_pg_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

impl Checker<'_> {
    pub(super) fn where_clause(&self, node: &ast::Expr) -> Result<Expr> {
        let expr = self.expr(node)?;
        self.expect_bool(expr, node, "the WHERE clause")
    }

    fn expect_bool(&self, expr: Expr, node: &ast::Expr, role: &str) -> Result<Expr> {
        match expr.ty() {
            None | Some(ColumnType::Bool) => Ok(expr),
            Some(_) if is_string_literal(&expr) => self.coerce(expr, ColumnType::Bool, node),
            Some(ty) => Err(error_at(
                node,
                format!("{role} must be boolean, but `{node}` is {ty}"),
            )),
        }
    }

    /// Gives an untyped string literal the type it meets.
    pub(super) fn coerce(&self, expr: Expr, target: ColumnType, node: &ast::Expr) -> Result<Expr> {
        let Expr::Literal {
            value: Value::Text(text),
            ..
        } = &expr
        else {
            return Ok(expr);
        };
        let value = match target {
            ColumnType::Text => return Ok(expr),
            ColumnType::Int => text.trim().parse().map(Value::Int).ok(),
            ColumnType::Bool => parse_pg_bool(text).map(Value::Bool),
        };
        let value = value.ok_or_else(|| {
            error_at(
                node,
                format!("invalid input syntax for type {target}: {text:?}"),
            )
        })?;
        Ok(Expr::Literal {
            value,
            ty: Some(target),
        })
    }

    /// Brings operands that are compared with each other to one type.
    fn unify(&self, exprs: Vec<Expr>, node: &ast::Expr) -> Result<Vec<Expr>> {
        let typed = |e: &&Expr| e.ty().is_some();
        let target = exprs
            .iter()
            .filter(typed)
            .find(|e| !is_string_literal(e))
            .or_else(|| exprs.iter().find(typed));
        let Some(target) = target.and_then(Expr::ty) else {
            return Ok(exprs);
        };
        exprs
            .into_iter()
            .map(|e| match e.ty() {
                None => Ok(e),
                Some(ty) if ty == target => Ok(e),
                Some(_) if is_string_literal(&e) => self.coerce(e, target, node),
                Some(ty) => Err(error_at(
                    node,
                    format!("cannot compare {ty} with {target} in `{node}`"),
                )),
            })
            .collect()
    }

    pub(super) fn column(&self, ident: &ast::Ident) -> Result<Expr> {
        let name = ident_name(ident);
        let index = self.table.column_index(&name).ok_or_else(|| {
            error_at_span(
                ident.span,
                format!("unknown column {name:?} in table {}", self.table.name),
            )
        })?;
        Ok(Expr::Column {
            index,
            name,
            ty: self.table.columns[index].ty,
        })
    }

    fn literal(&self, node: &ast::Expr, value: &ast::Value) -> Result<Expr> {
        Ok(match value {
            ast::Value::Number(text, _) => {
                let int = text.parse::<i64>().map_err(|_| {
                    error_at(
                        node,
                        format!(
                            "numeric literal {text} is not supported: only 64-bit integers are"
                        ),
                    )
                })?;
                Expr::Literal {
                    value: Value::Int(int),
                    ty: Some(ColumnType::Int),
                }
            }
            ast::Value::SingleQuotedString(s) | ast::Value::EscapedStringLiteral(s) => {
                Expr::Literal {
                    value: Value::Text(s.clone()),
                    ty: Some(ColumnType::Text),
                }
            }
            ast::Value::Boolean(b) => bool_literal(Value::Bool(*b)),
            ast::Value::Null => Expr::Literal {
                value: Value::Null,
                ty: None,
            },
            ast::Value::Placeholder(p) => {
                return Err(error_at(
                    node,
                    format!("positional parameter {p} is not supported; inline the value"),
                ));
            }
            other => {
                return Err(error_at(
                    node,
                    format!("literal `{other}` is not supported"),
                ));
            }
        })
    }

    pub(super) fn expr(&self, node: &ast::Expr) -> Result<Expr> {
        use ast::Expr as A;
        let boxed = |e: &ast::Expr| self.expr(e).map(Box::new);
        match node {
            A::Identifier(ident) => self.column(ident),
            A::Value(v) => self.literal(node, &v.value),
            A::Nested(inner) => self.expr(inner),
            A::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => {
                let inner = self.expr(expr)?;
                Ok(Expr::Not(Box::new(self.expect_bool(
                    inner,
                    expr,
                    "the operand of NOT",
                )?)))
            }
            A::UnaryOp {
                op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
                expr,
            } => {
                let A::Value(ast::ValueWithSpan {
                    value: ast::Value::Number(digits, _),
                    ..
                }) = expr.as_ref()
                else {
                    return Err(error_at(
                        node,
                        format!("arithmetic is not supported: `{node}`"),
                    ));
                };
                let text = if *op == UnaryOperator::Minus {
                    format!("-{digits}")
                } else {
                    digits.clone()
                };
                self.literal(node, &ast::Value::Number(text, false))
            }
            A::BinaryOp { left, op, right } => self.binary(node, left, op, right),
            A::IsNull(e) => Ok(Expr::IsNull {
                expr: boxed(e)?,
                negated: false,
            }),
            A::IsNotNull(e) => Ok(Expr::IsNull {
                expr: boxed(e)?,
                negated: true,
            }),
            A::IsTrue(e) => self.is_bool(e, Some(true), false),
            A::IsNotTrue(e) => self.is_bool(e, Some(true), true),
            A::IsFalse(e) => self.is_bool(e, Some(false), false),
            A::IsNotFalse(e) => self.is_bool(e, Some(false), true),
            A::IsUnknown(e) => self.is_bool(e, None, false),
            A::IsNotUnknown(e) => self.is_bool(e, None, true),
            A::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let parts = vec![self.expr(expr)?, self.expr(low)?, self.expr(high)?];
                let [expr, low, high]: [Expr; 3] =
                    self.unify(parts, node)?.try_into().expect("three operands");
                Ok(Expr::Between {
                    expr: Box::new(expr),
                    low: Box::new(low),
                    high: Box::new(high),
                    negated: *negated,
                })
            }
            A::InList {
                expr,
                list,
                negated,
            } => {
                let mut parts = vec![self.expr(expr)?];
                for item in list {
                    parts.push(self.expr(item)?);
                }
                let mut parts = self.unify(parts, node)?;
                let expr = Box::new(parts.remove(0));
                Ok(Expr::InList {
                    expr,
                    list: parts,
                    negated: *negated,
                })
            }
            A::Like {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            } => self.like(
                node,
                *any,
                expr,
                pattern,
                escape_char.as_deref(),
                false,
                *negated,
            ),
            A::ILike {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            } => self.like(
                node,
                *any,
                expr,
                pattern,
                escape_char.as_deref(),
                true,
                *negated,
            ),
            A::InSubquery {
                expr,
                subquery,
                negated,
            } => self.in_subquery(node, expr, subquery, *negated),
            other => Err(error_at(
                node,
                format!(
                    "{} is not supported in a WHERE clause: `{other}`",
                    describe(other)
                ),
            )),
        }
    }

    fn binary(
        &self,
        node: &ast::Expr,
        left: &ast::Expr,
        op: &BinaryOperator,
        right: &ast::Expr,
    ) -> Result<Expr> {
        let cmp = match op {
            BinaryOperator::And | BinaryOperator::Or => {
                let l = self.expect_bool(self.expr(left)?, left, "an operand of AND/OR")?;
                let r = self.expect_bool(self.expr(right)?, right, "an operand of AND/OR")?;
                return Ok(match op {
                    BinaryOperator::And => Expr::And(Box::new(l), Box::new(r)),
                    _ => Expr::Or(Box::new(l), Box::new(r)),
                });
            }
            BinaryOperator::Eq => CmpOp::Eq,
            BinaryOperator::NotEq => CmpOp::NotEq,
            BinaryOperator::Lt => CmpOp::Lt,
            BinaryOperator::LtEq => CmpOp::LtEq,
            BinaryOperator::Gt => CmpOp::Gt,
            BinaryOperator::GtEq => CmpOp::GtEq,
            other => {
                return Err(error_at(
                    node,
                    format!("operator `{other}` is not supported: `{node}`"),
                ));
            }
        };
        // PostgreSQL's grammar makes comparisons non-associative: `a = b = c`
        // is a syntax error there, so it is a 400 here (sqlparser would read
        // it as `(a = b) = c`). Found by the WHERE differential (issue 12).
        if let Some(chained) = [left, right].into_iter().find(|e| is_comparison(e)) {
            return Err(error_at(
                node,
                format!(
                    "comparison operators do not associate (PostgreSQL: a syntax error): parentheses must group `{chained}` in `{node}`"
                ),
            ));
        }
        let [left, right]: [Expr; 2] = self
            .unify(vec![self.expr(left)?, self.expr(right)?], node)?
            .try_into()
            .expect("two operands");
        Ok(Expr::Compare {
            op: cmp,
            left: Box::new(left),
            right: Box::new(right),
        })
    }

    fn is_bool(&self, operand: &ast::Expr, value: Option<bool>, negated: bool) -> Result<Expr> {
        let expr = self.expect_bool(
            self.expr(operand)?,
            operand,
            "the operand of IS TRUE/FALSE/UNKNOWN",
        )?;
        Ok(Expr::IsBool {
            expr: Box::new(expr),
            value,
            negated,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn like(
        &self,
        node: &ast::Expr,
        any: bool,
        operand: &ast::Expr,
        pattern: &ast::Expr,
        escape: Option<&ast::Expr>,
        case_insensitive: bool,
        negated: bool,
    ) -> Result<Expr> {
        if any {
            return Err(error_at(
                node,
                format!("LIKE ANY is not supported: `{node}`"),
            ));
        }
        let expr = self.expr(operand)?;
        if let Some(ty) = expr.ty().filter(|ty| *ty != ColumnType::Text) {
            return Err(error_at(
                operand,
                format!("LIKE needs a text operand, but `{operand}` is {ty}"),
            ));
        }
        let escape = match escape {
            None => Some('\\'),
            Some(e) => match self.expr(e)? {
                Expr::Literal {
                    value: Value::Text(s),
                    ..
                } if s.is_empty() => None,
                Expr::Literal {
                    value: Value::Text(s),
                    ..
                } if s.chars().count() == 1 => s.chars().next(),
                _ => {
                    return Err(error_at(
                        e,
                        format!("ESCAPE must be a one-character string literal, not `{e}`"),
                    ));
                }
            },
        };
        let source = match self.expr(pattern)? {
            // NULL LIKE anything, and anything LIKE NULL, is NULL.
            Expr::Literal {
                value: Value::Null, ..
            } => return Ok(bool_literal(Value::Null)),
            Expr::Literal {
                value: Value::Text(s),
                ..
            } => s,
            _ => {
                return Err(error_at(
                    pattern,
                    format!("a LIKE pattern must be a string literal, not `{pattern}`"),
                ));
            }
        };
        let tokens =
            compile_like(&source, escape, case_insensitive).map_err(|m| error_at(pattern, m))?;
        let pattern = LikePattern {
            source,
            escape,
            tokens,
        };
        Ok(Expr::Like {
            expr: Box::new(expr),
            pattern,
            case_insensitive,
            negated,
        })
    }
}

/// `table` or `schema.table`, folded like identifiers.
pub(super) fn table_name(name: &ObjectName) -> std::result::Result<TableName, String> {
    let parts: Option<Vec<String>> = name
        .0
        .iter()
        .map(|p| p.as_ident().map(ident_name))
        .collect();
    match parts.as_deref() {
        Some([table]) => Ok(TableName::public(table)),
        Some([schema, table]) => Ok(TableName {
            schema: schema.clone(),
            name: table.clone(),
        }),
        _ => Err(format!(
            "table name `{name}` must be `table` or `schema.table`"
        )),
    }
}

/// A human name for an unsupported construct.
fn describe(node: &ast::Expr) -> &'static str {
    use ast::Expr as A;
    match node {
        A::CompoundIdentifier(_) => "a qualified column reference",
        A::Function(_) => "a function call",
        A::Cast { .. } => "a type cast",
        A::Case { .. } => "a CASE expression",
        A::Exists { .. } => "EXISTS",
        A::Subquery(_) => "a scalar subquery",
        A::IsDistinctFrom(..) | A::IsNotDistinctFrom(..) => "IS [NOT] DISTINCT FROM",
        A::SimilarTo { .. } => "SIMILAR TO",
        A::AnyOp { .. } => "ANY (...)",
        A::AllOp { .. } => "ALL (...)",
        A::Array(_) => "an array",
        A::Collate { .. } => "COLLATE",
        A::AtTimeZone { .. } => "AT TIME ZONE",
        A::Extract { .. } => "EXTRACT",
        A::Interval(_) => "an interval",
        A::TypedString(_) => "a typed literal",
        A::Tuple(_) => "a row constructor",
        A::CompoundFieldAccess { .. } | A::JsonAccess { .. } => "field or JSON access",
        A::UnaryOp { .. } => "this unary operator",
        _ => "this construct",
    }
}

/// A comparison as written (not parenthesized: `Nested` is not one).
fn is_comparison(expr: &ast::Expr) -> bool {
    matches!(
        expr,
        ast::Expr::BinaryOp {
            op: BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq,
            ..
        }
    )
}
