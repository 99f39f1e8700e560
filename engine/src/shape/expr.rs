//! The engine's typed WHERE expression tree. Built by [`super::parse`] (which
//! checks every node against the table schema) and evaluated by
//! [`super::eval`]. Its `Display` is the canonical text of the clause: fully
//! parenthesised, quoted identifiers, normalised literals, so that two spellings
//! of the same clause print identically (this is part of a shape's identity).

use crate::schema::{ColumnType, TableName, Value, quote_ident};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::NotEq => "<>",
            CmpOp::Lt => "<",
            CmpOp::LtEq => "<=",
            CmpOp::Gt => ">",
            CmpOp::GtEq => ">=",
        }
    }
}

/// One element of a compiled LIKE pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LikeToken {
    /// A character that must match (after case folding for ILIKE).
    Char(char),
    /// `_`: exactly one character.
    AnyOne,
    /// `%`: any run of characters, including none.
    AnyRun,
}

/// A LIKE pattern, compiled once when the clause is parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LikePattern {
    /// The pattern as written (without quotes), for the canonical text.
    pub source: String,
    /// The escape character, if any (`\` unless an ESCAPE clause says otherwise).
    pub escape: Option<char>,
    pub tokens: Vec<LikeToken>,
}

/// The inner SELECT of `columns [NOT] IN (SELECT ...)`: its table, the
/// columns it selects (one per column on the left, of the same types) and
/// its WHERE. Evaluated against a dependency's current values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subquery {
    pub table: TableName,
    pub columns: Vec<(String, ColumnType)>,
    pub where_clause: Option<Expr>,
}

impl fmt::Display for Subquery {
    /// `SELECT "a", "b" FROM "schema"."table" [WHERE ...]`, canonical.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SELECT ")?;
        for (i, (column, _)) in self.columns.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&quote_ident(column))?;
        }
        write!(f, " FROM {}", self.table)?;
        if let Some(w) = &self.where_clause {
            write!(f, " WHERE {w}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    /// A constant. `ty` is `None` only for an untyped `NULL`.
    Literal {
        value: Value,
        ty: Option<ColumnType>,
    },
    /// A column of the shape's table; `index` is its position in the row.
    Column {
        index: usize,
        name: String,
        ty: ColumnType,
    },
    Compare {
        op: CmpOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    /// `IS [NOT] TRUE | FALSE | UNKNOWN`; `value: None` is UNKNOWN.
    IsBool {
        expr: Box<Expr>,
        value: Option<bool>,
        negated: bool,
    },
    /// `[NOT] LIKE | ILIKE`; a `NULL` pattern is folded to a NULL literal at parse time.
    Like {
        expr: Box<Expr>,
        pattern: LikePattern,
        case_insensitive: bool,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    /// `a [NOT] IN (SELECT ...)` or `(a, b) [NOT] IN (SELECT ...)`: the
    /// left side is columns of the shape's table (`Expr::Column`).
    InSubquery {
        columns: Vec<Expr>,
        subquery: Box<Subquery>,
        negated: bool,
    },
}

impl Expr {
    /// The type the expression evaluates to; `None` for an untyped NULL literal.
    pub fn ty(&self) -> Option<ColumnType> {
        match self {
            Expr::Literal { ty, .. } => *ty,
            Expr::Column { ty, .. } => Some(*ty),
            _ => Some(ColumnType::Bool),
        }
    }

    /// Whether any subquery appears in the clause.
    pub fn has_subquery(&self) -> bool {
        match self {
            Expr::Literal { .. } | Expr::Column { .. } => false,
            Expr::InSubquery { .. } => true,
            Expr::Compare { left, right, .. } => left.has_subquery() || right.has_subquery(),
            Expr::And(a, b) | Expr::Or(a, b) => a.has_subquery() || b.has_subquery(),
            Expr::Not(e) | Expr::IsNull { expr: e, .. } | Expr::IsBool { expr: e, .. } => {
                e.has_subquery()
            }
            Expr::Like { expr, .. } => expr.has_subquery(),
            Expr::Between {
                expr, low, high, ..
            } => expr.has_subquery() || low.has_subquery() || high.has_subquery(),
            Expr::InList { expr, list, .. } => {
                expr.has_subquery() || list.iter().any(Expr::has_subquery)
            }
        }
    }
}

impl Expr {
    /// Calls `f` with each subquery of the clause (not of their own
    /// clauses), as written, repeats included.
    pub fn visit_subqueries(&self, f: &mut dyn FnMut(&super::expr::Subquery)) {
        match self {
            Expr::Literal { .. } | Expr::Column { .. } => {}
            Expr::InSubquery { subquery, .. } => f(subquery),
            Expr::Compare { left, right, .. } => {
                left.visit_subqueries(f);
                right.visit_subqueries(f);
            }
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.visit_subqueries(f);
                b.visit_subqueries(f);
            }
            Expr::Not(e) | Expr::IsNull { expr: e, .. } | Expr::IsBool { expr: e, .. } => {
                e.visit_subqueries(f)
            }
            Expr::Like { expr, .. } => expr.visit_subqueries(f),
            Expr::Between {
                expr, low, high, ..
            } => {
                expr.visit_subqueries(f);
                low.visit_subqueries(f);
                high.visit_subqueries(f);
            }
            Expr::InList { expr, list, .. } => {
                expr.visit_subqueries(f);
                list.iter().for_each(|e| e.visit_subqueries(f));
            }
        }
    }
}

/// `'text'` with embedded quotes doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn fmt_value(value: &Value, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match value {
        Value::Null => f.write_str("NULL"),
        Value::Bool(b) => write!(f, "{b}"),
        Value::Int(i) => write!(f, "{i}"),
        Value::Text(s) => f.write_str(&quote_literal(s)),
    }
}

fn not(negated: bool) -> &'static str {
    if negated { "NOT " } else { "" }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal { value, .. } => fmt_value(value, f),
            Expr::Column { name, .. } => f.write_str(&quote_ident(name)),
            Expr::Compare { op, left, right } => write!(f, "({left} {} {right})", op.symbol()),
            Expr::And(a, b) => write!(f, "({a} AND {b})"),
            Expr::Or(a, b) => write!(f, "({a} OR {b})"),
            Expr::Not(e) => write!(f, "(NOT {e})"),
            Expr::IsNull { expr, negated } => write!(f, "({expr} IS {}NULL)", not(*negated)),
            Expr::IsBool {
                expr,
                value,
                negated,
            } => {
                let what = match value {
                    Some(true) => "TRUE",
                    Some(false) => "FALSE",
                    None => "UNKNOWN",
                };
                write!(f, "({expr} IS {}{what})", not(*negated))
            }
            Expr::Like {
                expr,
                pattern,
                case_insensitive,
                negated,
            } => {
                let op = if *case_insensitive { "ILIKE" } else { "LIKE" };
                write!(
                    f,
                    "({expr} {}{op} {}",
                    not(*negated),
                    quote_literal(&pattern.source)
                )?;
                match pattern.escape {
                    Some('\\') => f.write_str(")"),
                    Some(c) => write!(f, " ESCAPE {})", quote_literal(&c.to_string())),
                    None => write!(f, " ESCAPE '')"),
                }
            }
            Expr::Between {
                expr,
                low,
                high,
                negated,
            } => {
                write!(f, "({expr} {}BETWEEN {low} AND {high})", not(*negated))
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                write!(f, "({expr} {}IN (", not(*negated))?;
                for (i, item) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("))")
            }
            Expr::InSubquery {
                columns,
                subquery,
                negated,
            } => {
                f.write_str("(")?;
                if let [column] = columns.as_slice() {
                    write!(f, "{column}")?;
                } else {
                    f.write_str("(")?;
                    for (i, column) in columns.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{column}")?;
                    }
                    f.write_str(")")?;
                }
                write!(f, " {}IN ({subquery}))", not(*negated))
            }
        }
    }
}
