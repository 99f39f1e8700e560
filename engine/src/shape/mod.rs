//! Shape definitions: a table, the selected columns (the primary key always
//! among them), an optional WHERE clause and a replica mode; and their identity.
//!
//! Identity is the canonical comparable form ([`Shape::comparable`]): the table
//! and its oid, the selected columns in table order, the canonical text of the
//! checked WHERE tree, and the replica mode. Two requests for the same shape get
//! the same comparable form whatever their whitespace, keyword case, column
//! order or redundant parentheses. [`Shape::hash`] is a stable digest of it.

pub mod dnf;
pub mod eval;
pub mod expr;
pub mod like;
mod memo;
pub mod parse;
mod subquery;
pub mod tags;

#[cfg(test)]
mod subquery_tests;
#[cfg(test)]
mod tests;

use crate::schema::{Catalog, TableName, TableSchema, Value, quote_ident};
use expr::Expr;
use parse::WhereError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::fmt;
use std::sync::Arc;

/// What an update's value carries (Electric's `replica` parameter).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Replica {
    /// Updates carry the primary key and changed columns; deletes the key only.
    #[default]
    Default,
    /// Updates carry the full new row and the old values; deletes the full row.
    Full,
}

impl fmt::Display for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Replica::Default => "default",
            Replica::Full => "full",
        })
    }
}

/// A shape as a client asks for it, before checking.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShapeRequest {
    /// `table` or `schema.table`; quoted identifiers allowed.
    pub table: String,
    /// Column names; `None` selects every column.
    pub columns: Option<Vec<String>>,
    pub where_clause: Option<String>,
    pub replica: Replica,
}

/// Why a shape request was refused; `field()` names the request parameter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("{0}")]
    Table(String),
    #[error("{0}")]
    Columns(String),
    #[error("{0}")]
    Where(WhereError),
    /// The clause parses but has no DNF plan (a subquery shape only).
    #[error("{0}")]
    Plan(dnf::PlanError),
}

impl ShapeError {
    /// The request parameter at fault, as a client spells it.
    pub fn field(&self) -> &'static str {
        match self {
            ShapeError::Table(_) => "table",
            ShapeError::Columns(_) => "columns",
            ShapeError::Where(_) | ShapeError::Plan(_) => "where",
        }
    }
}

/// A checked WHERE clause: the text as the client wrote it, and its tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhereClause {
    pub source: String,
    pub expr: Expr,
    /// The DNF plan: present exactly when the clause has subqueries
    /// ([`Shape::has_subquery`] reads it).
    pub plan: Option<dnf::DnfPlan>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub table: TableSchema,
    /// Indexes of the selected columns, in table order; includes the primary key.
    pub selected: Vec<usize>,
    pub where_clause: Option<WhereClause>,
    pub replica: Replica,
    /// For the inner shape of a dependency: the table columns of the
    /// subquery, in its order (a row's value tuple). Part of the identity:
    /// an inner shape is never shared with a client's plain shape.
    pub dependency: Option<Vec<usize>>,
    /// Identity, computed once: requests compare it on every poll.
    comparable: String,
    hash: String,
}

impl Shape {
    /// Checks a request against the catalog (remembered: see `memo`).
    pub fn new(catalog: &Catalog, request: &ShapeRequest) -> Result<Arc<Shape>, ShapeError> {
        memo::checked(memo::Role::Plain, catalog, request, || {
            Shape::check(catalog, request)
        })
    }

    fn check(catalog: &Catalog, request: &ShapeRequest) -> Result<Shape, ShapeError> {
        let name = parse_table_name(&request.table)?;
        let table = catalog
            .table(&name)
            .ok_or_else(|| ShapeError::Table(format!("table {name} does not exist")))?;
        let selected = match &request.columns {
            None => (0..table.columns.len()).collect(),
            Some(columns) => select_columns(table, columns)?,
        };
        let where_clause = match &request.where_clause {
            None => None,
            Some(source) => {
                let expr = parse::parse_where(source, table, catalog).map_err(ShapeError::Where)?;
                let plan = match expr.has_subquery() {
                    true => Some(
                        dnf::DnfPlan::for_shape(&expr, table, catalog).map_err(ShapeError::Plan)?,
                    ),
                    false => None,
                };
                Some(WhereClause {
                    source: source.clone(),
                    expr,
                    plan,
                })
            }
        };
        let mut shape = Shape {
            table: table.clone(),
            selected,
            where_clause,
            replica: request.replica,
            dependency: None,
            comparable: String::new(),
            hash: String::new(),
        };
        if shape.layer() > MAX_LAYER {
            let limit = MAX_LAYER;
            return Err(ShapeError::Plan(dnf::PlanError::TooDeep { limit }));
        }
        shape.identify();
        Ok(shape)
    }

    fn identify(&mut self) {
        self.comparable = self.comparable_form();
        let digest = Sha256::digest(self.comparable.as_bytes());
        self.hash = hex::encode(&digest[..8]);
    }

    /// The routing layer: 0 for a shape without subqueries, else one more
    /// than its deepest dependency's (a transaction reaches a shape only
    /// after every shape of a lower layer has taken it).
    pub fn layer(&self) -> usize {
        self.where_clause.as_ref().map_or(0, |w| nesting(&w.expr))
    }

    /// Whether this is the inner shape of some subquery.
    pub fn is_dependency(&self) -> bool {
        self.dependency.is_some()
    }

    /// The inner shapes of this shape's dependencies, in plan order.
    pub fn dependency_shapes(&self, catalog: &Catalog) -> Result<Vec<Arc<Shape>>, ShapeError> {
        let Some(plan) = self.where_clause.as_ref().and_then(|w| w.plan.as_ref()) else {
            return Ok(Vec::new());
        };
        plan.dependencies
            .iter()
            .map(|s| Shape::for_dependency(catalog, s))
            .collect()
    }

    /// Every table this shape's rows depend on: its own and, through its
    /// subqueries at every level, theirs.
    pub fn tables(&self) -> std::collections::BTreeSet<TableName> {
        let mut out = std::collections::BTreeSet::from([self.table.name.clone()]);
        if let Some(w) = &self.where_clause {
            subquery_tables(&w.expr, &mut out);
        }
        out
    }

    /// Per dependency (plan order): the tables its rows depend on, its own
    /// and those of its subqueries at every level.
    pub fn dependency_tables(&self) -> Vec<std::collections::BTreeSet<TableName>> {
        let Some(plan) = self.plan() else {
            return Vec::new();
        };
        plan.dependencies
            .iter()
            .map(|s| {
                let mut out = std::collections::BTreeSet::from([s.table.clone()]);
                if let Some(w) = &s.where_clause {
                    subquery_tables(w, &mut out);
                }
                out
            })
            .collect()
    }

    /// An inner shape's value tuple of `row` (all columns, table order).
    pub fn tuple(&self, row: &[Value]) -> Vec<Value> {
        let columns = self
            .dependency
            .as_ref()
            .expect("only inner shapes have tuples");
        columns.iter().map(|&i| row[i].clone()).collect()
    }

    pub fn plan(&self) -> Option<&dnf::DnfPlan> {
        self.where_clause.as_ref().and_then(|w| w.plan.as_ref())
    }

    /// The canonical comparable form: equal for equal shapes, however spelled.
    pub fn comparable(&self) -> &str {
        &self.comparable
    }

    fn comparable_form(&self) -> String {
        let columns: Vec<String> = self
            .selected
            .iter()
            .map(|&i| quote_ident(&self.table.columns[i].name))
            .collect();
        let where_text = self
            .where_clause
            .as_ref()
            .map_or("TRUE".to_string(), |w| w.expr.to_string());
        // The whole table definition is part of the identity: a shape is
        // built on one definition, and any change to it (a column added,
        // even one the shape does not select) makes it another shape, at
        // boot as at run time (where a relation message removes every
        // shape on the changed table).
        let definition: Vec<String> = self
            .table
            .columns
            .iter()
            .map(|c| format!("{}:{}:{}", quote_ident(&c.name), c.ty.pg_name(), c.not_null))
            .collect();
        let role = match &self.dependency {
            None => String::new(),
            Some(columns) => {
                let names: Vec<String> = columns
                    .iter()
                    .map(|&i| quote_ident(&self.table.columns[i].name))
                    .collect();
                format!("{DEPENDENCY}({})", names.join(","))
            }
        };
        format!(
            "table={} oid={} columns=({}) where={} replica={}{role}{DEFINITION}({})",
            self.table.name,
            self.table.oid,
            columns.join(","),
            where_text,
            self.replica,
            definition.join(",")
        )
    }

    /// A stable digest of the comparable form: 16 hex digits of its SHA-256.
    pub fn hash(&self) -> String {
        self.hash.clone()
    }

    /// Whether the row (all table columns, table order) is in the shape.
    pub fn includes(&self, row: &[Value]) -> bool {
        self.where_clause
            .as_ref()
            .is_none_or(|w| eval::matches(&w.expr, row))
    }

    pub fn has_subquery(&self) -> bool {
        // `check` plans exactly the clauses with subqueries (the only place
        // a clause is built): asked on every read and routed transaction,
        // so not found by walking the clause.
        let planned = self.plan().is_some();
        debug_assert_eq!(
            planned,
            self.where_clause
                .as_ref()
                .is_some_and(|w| w.expr.has_subquery()),
            "a clause has a plan exactly when it has subqueries"
        );
        planned
    }

    /// The selected columns' names and values of `row`.
    pub fn project<'a>(
        &'a self,
        row: &'a [Value],
    ) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.selected
            .iter()
            .map(move |&i| (self.table.columns[i].name.as_str(), &row[i]))
    }

    /// The request that recreates this shape (what metadata stores).
    /// The inner shape of a dependency (Electric: every subquery is a shape
    /// of its own): the subquery's table, its primary key and selected
    /// columns, its WHERE (planned in turn if it nests subqueries). Built
    /// from the canonical text, so every outer shape that uses the same
    /// subquery, however spelled, shares one inner shape.
    pub fn for_dependency(
        catalog: &Catalog,
        subquery: &expr::Subquery,
    ) -> Result<Arc<Shape>, ShapeError> {
        let request = ShapeRequest {
            table: subquery.table.to_string(),
            columns: Some(subquery.columns.iter().map(|(c, _)| c.clone()).collect()),
            where_clause: subquery.where_clause.as_ref().map(Expr::to_string),
            // Every record carries the whole tuple: a restored inner shape
            // rebuilds its materializer from its own log.
            replica: Replica::Full,
        };
        Shape::inner(catalog, &request)
    }

    /// The inner shape that `request` (as [`Shape::for_dependency`] builds
    /// it, and metadata stores it) describes: its columns, in order, are
    /// the subquery's.
    pub fn inner(catalog: &Catalog, request: &ShapeRequest) -> Result<Arc<Shape>, ShapeError> {
        memo::checked(memo::Role::Inner, catalog, request, || {
            Shape::check_inner(catalog, request)
        })
    }

    fn check_inner(catalog: &Catalog, request: &ShapeRequest) -> Result<Shape, ShapeError> {
        let mut shape = Shape::clone(&*Shape::new(catalog, request)?);
        let names = request.columns.as_deref().unwrap_or_default();
        let columns = names
            .iter()
            .map(|name| {
                shape.table.column_index(name).ok_or_else(|| {
                    ShapeError::Columns(format!("unknown column {name:?} in {}", shape.table.name))
                })
            })
            .collect::<Result<Vec<usize>, ShapeError>>()?;
        shape.dependency = Some(columns);
        shape.identify();
        Ok(shape)
    }

    /// An inner shape's names its subquery's columns, in their order
    /// ([`Shape::inner`] rebuilds it from them).
    pub fn to_request(&self) -> ShapeRequest {
        let columns = self.dependency.as_ref().unwrap_or(&self.selected);
        ShapeRequest {
            table: self.table.name.to_string(),
            columns: Some(
                columns
                    .iter()
                    .map(|&i| self.table.columns[i].name.clone())
                    .collect(),
            ),
            where_clause: self.where_clause.as_ref().map(|w| w.source.clone()),
            replica: self.replica,
        }
    }
}

/// Where the table definition starts in a comparable form.
pub const DEFINITION: &str = " definition=";

/// Marks an inner shape's comparable form (boot drops such shapes until
/// subquery shapes are restored).
pub const DEPENDENCY: &str = " dependency=";

/// The deepest nesting of subqueries a shape may have.
pub const MAX_LAYER: usize = 3;

/// How deeply subqueries nest in `expr` (0: none).
fn nesting(expr: &Expr) -> usize {
    let mut deepest = 0;
    expr.visit_subqueries(&mut |s| {
        let inner = s.where_clause.as_ref().map_or(0, nesting);
        deepest = deepest.max(1 + inner);
    });
    deepest
}

fn subquery_tables(expr: &Expr, out: &mut std::collections::BTreeSet<TableName>) {
    expr.visit_subqueries(&mut |s| {
        out.insert(s.table.clone());
        if let Some(w) = &s.where_clause {
            subquery_tables(w, out);
        }
    });
}

/// `table`, `schema.table`, with Postgres identifier rules (quoted or folded).
fn parse_table_name(text: &str) -> Result<TableName, ShapeError> {
    let invalid = |why: String| ShapeError::Table(format!("invalid table name {text:?}: {why}"));
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| invalid(e.to_string()))?;
    let name = parser
        .parse_object_name(false)
        .map_err(|e| invalid(e.to_string()))?;
    if parser.peek_token().token != sqlparser::tokenizer::Token::EOF {
        return Err(invalid("unexpected text after the name".to_string()));
    }
    parse::table_name(&name).map_err(invalid)
}

/// Resolves requested columns; adds the primary key; returns table order.
fn select_columns(table: &TableSchema, columns: &[String]) -> Result<Vec<usize>, ShapeError> {
    if columns.is_empty() {
        return Err(ShapeError::Columns("the column list is empty".to_string()));
    }
    let mut selected = table.primary_key.clone();
    for name in columns {
        let index = table.column_index(name).ok_or_else(|| {
            ShapeError::Columns(format!("unknown column {name:?} in table {}", table.name))
        })?;
        selected.push(index);
    }
    selected.sort_unstable();
    selected.dedup();
    Ok(selected)
}
