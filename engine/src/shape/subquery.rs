//! `expr [NOT] IN (SELECT column FROM table [WHERE ...])`: the only subquery
//! form a shape accepts. The inner SELECT must be exactly one plain column of
//! one plain table with an optional WHERE (itself checked, and possibly nested);
//! every other clause is refused by name.

use super::expr::{Expr, Subquery};
use super::parse::{Checker, Result, error_at, is_string_literal, table_name};
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
        // Electric's rule: tags and move patterns hash the left side's
        // column values, so it must be columns.
        if !matches!(operand, ast::Expr::Identifier(_)) {
            return Err(error_at(
                node,
                format!(
                    "anything but a plain column on the left of IN (SELECT ...) is not supported: `{operand}`"
                ),
            ));
        }
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
        let [SelectItem::UnnamedExpr(ast::Expr::Identifier(column))] = select.projection.as_slice()
        else {
            return Err(unsupported(
                "selecting anything but exactly one plain column",
            ));
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
        let expected = match &select.selection {
            Some(w) => format!("SELECT {column} FROM {name} WHERE {w}"),
            None => format!("SELECT {column} FROM {name}"),
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
        let Expr::Column {
            name: column,
            ty: column_type,
            ..
        } = inner.column(column)?
        else {
            unreachable!()
        };
        let where_clause = select
            .selection
            .as_ref()
            .map(|w| inner.where_clause(w))
            .transpose()?;
        let expr = self.expr(operand)?;
        let expr = match expr.ty() {
            Some(ty) if ty == column_type => expr,
            Some(_) if is_string_literal(&expr) => self.coerce(expr, column_type, operand)?,
            None => expr,
            Some(ty) => {
                return Err(error_at(
                    node,
                    format!("cannot compare {ty} with {column_type} in `{node}`"),
                ));
            }
        };
        let subquery = Box::new(Subquery {
            table: table_name,
            column,
            column_type,
            where_clause,
        });
        Ok(Expr::InSubquery {
            expr: Box::new(expr),
            subquery,
            negated,
        })
    }
}
