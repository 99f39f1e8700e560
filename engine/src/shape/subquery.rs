//! `column [NOT] IN (SELECT column FROM table [WHERE ...])` and its row form
//! `(a, b) [NOT] IN (SELECT x, y FROM table [WHERE ...])`: the only subquery
//! forms a shape accepts. The left side is plain columns of the shape's
//! table (tags and move patterns hash their values); the inner SELECT is as
//! many plain columns of one plain table, each of exactly the type of its
//! left column, with an optional WHERE (itself checked, and possibly
//! nested); every other clause is refused by name.

use super::expr::{Expr, Subquery};
use super::parse::{Checker, Result, error_at, table_name};
use sqlparser::ast::{self, GroupByExpr, SelectItem, SetExpr, TableFactor};

impl Checker<'_> {
    pub(super) fn in_subquery(
        &self,
        node: &ast::Expr,
        operand: &ast::Expr,
        query: &ast::Query,
        negated: bool,
    ) -> Result<Expr> {
        let unsupported = |what: &str| {
            error_at(
                node,
                format!("{what} is not supported in a subquery: `{query}`"),
            )
        };
        let left = left_columns(node, operand)?;
        if query.with.is_some() {
            return Err(unsupported("WITH"));
        }
        if query.order_by.is_some() {
            return Err(unsupported("ORDER BY"));
        }
        if query.limit_clause.is_some() || query.fetch.is_some() {
            return Err(unsupported("LIMIT/OFFSET/FETCH"));
        }
        if !query.locks.is_empty() {
            return Err(unsupported("a locking clause"));
        }
        let SetExpr::Select(select) = query.body.as_ref() else {
            return Err(unsupported(
                "anything but a plain SELECT (UNION, VALUES, ...)",
            ));
        };
        if select.distinct.is_some() {
            return Err(unsupported("DISTINCT"));
        }
        if !matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty())
        {
            return Err(unsupported("GROUP BY"));
        }
        if select.having.is_some() {
            return Err(unsupported("HAVING"));
        }
        let selected: Option<Vec<&ast::Ident>> = select
            .projection
            .iter()
            .map(|item| match item {
                SelectItem::UnnamedExpr(ast::Expr::Identifier(column)) => Some(column),
                _ => None,
            })
            .collect();
        let Some(selected) = selected.filter(|s| s.len() == left.len()) else {
            return Err(unsupported(&format!(
                "selecting anything but {} plain column{} (one per column on the left)",
                left.len(),
                if left.len() == 1 { "" } else { "s" }
            )));
        };
        let [from] = select.from.as_slice() else {
            return Err(unsupported("selecting from anything but exactly one table"));
        };
        if !from.joins.is_empty() {
            return Err(unsupported("JOIN"));
        }
        let TableFactor::Table {
            name,
            alias: None,
            args: None,
            ..
        } = &from.relation
        else {
            return Err(unsupported("a FROM item other than a plain table name"));
        };
        // Catch-all: any clause not handled above changes the printed query.
        let projection: Vec<String> = selected.iter().map(|c| c.to_string()).collect();
        let projection = projection.join(", ");
        let expected = match &select.selection {
            Some(w) => format!("SELECT {projection} FROM {name} WHERE {w}"),
            None => format!("SELECT {projection} FROM {name}"),
        };
        if query.to_string() != expected {
            return Err(unsupported(
                "a clause other than SELECT column FROM table WHERE ...",
            ));
        }

        let table_name = table_name(name).map_err(|m| error_at(node, m))?;
        let table = self.catalog.table(&table_name).ok_or_else(|| {
            error_at(
                node,
                format!("unknown table {table_name} in subquery `{query}`"),
            )
        })?;
        let inner = Checker {
            table,
            catalog: self.catalog,
        };
        let mut columns = Vec::with_capacity(left.len());
        let mut exprs = Vec::with_capacity(left.len());
        for (outer, inner_ident) in left.iter().zip(&selected) {
            let outer = self.column(outer)?;
            let Expr::Column { name, ty, .. } = inner.column(inner_ident)? else {
                unreachable!("a column reference checks to a column")
            };
            let outer_ty = outer.ty().expect("a column has a type");
            if outer_ty != ty {
                return Err(error_at(
                    node,
                    format!(
                        "the left side of IN (SELECT ...) must have the subquery's column types: {outer} is {outer_ty}, {} is {ty} in `{node}`",
                        super::quote_ident(&name)
                    ),
                ));
            }
            columns.push((name, ty));
            exprs.push(outer);
        }
        let where_clause = select
            .selection
            .as_ref()
            .map(|w| inner.where_clause(w))
            .transpose()?;
        let subquery = Box::new(Subquery {
            table: table_name,
            columns,
            where_clause,
        });
        Ok(Expr::InSubquery {
            columns: exprs,
            subquery,
            negated,
        })
    }
}

/// The left side of IN (SELECT ...): a column, or a parenthesised list of
/// columns (a row).
fn left_columns<'a>(node: &ast::Expr, operand: &'a ast::Expr) -> Result<Vec<&'a ast::Ident>> {
    let refused = || {
        error_at(
            node,
            format!(
                "anything but a plain column or a row of plain columns on the left of IN (SELECT ...) is not supported: `{operand}`"
            ),
        )
    };
    match operand {
        ast::Expr::Identifier(column) => Ok(vec![column]),
        ast::Expr::Tuple(items) if items.len() >= 2 => items
            .iter()
            .map(|item| match item {
                ast::Expr::Identifier(column) => Ok(column),
                _ => Err(refused()),
            })
            .collect(),
        _ => Err(refused()),
    }
}
