//! Tables, columns and values as the engine sees them.
//!
//! Types are the subset the engine evaluates: `int8` (all integer widths map to
//! it), `text` and `bool`. Rows are positional: `row[i]` is the value of the
//! table's column `i`.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Int,
    Text,
    Bool,
}

impl ColumnType {
    /// The Postgres type name clients see in the schema header.
    pub fn pg_name(self) -> &'static str {
        match self {
            ColumnType::Int => "int8",
            ColumnType::Text => "text",
            ColumnType::Bool => "bool",
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnType::Int => "integer",
            ColumnType::Text => "text",
            ColumnType::Bool => "boolean",
        })
    }
}

/// A SQL value. `Null` is untyped; the column or expression carries the type.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Text(String),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The type of a non-null value.
    pub fn column_type(&self) -> Option<ColumnType> {
        match self {
            Value::Null => None,
            Value::Bool(_) => Some(ColumnType::Bool),
            Value::Int(_) => Some(ColumnType::Int),
            Value::Text(_) => Some(ColumnType::Text),
        }
    }

    /// Postgres' text output of the value (`t`/`f` are spelled `true`/`false`, as
    /// Electric's JSON does); `None` for NULL.
    pub fn to_text(&self) -> Option<String> {
        self.text().map(Cow::into_owned)
    }

    /// [`Value::to_text`], borrowed where the value is text.
    pub fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Value::Null => None,
            Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Value::Int(i) => Some(Cow::Owned(i.to_string())),
            Value::Text(s) => Some(Cow::Borrowed(s)),
        }
    }
}

/// Values of one row, in the table's column order.
pub type Row = Vec<Value>;

/// `schema.name`; the schema defaults to `public`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn public(name: &str) -> TableName {
        TableName {
            schema: "public".to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        push_quoted_ident(f, &self.schema)?;
        f.write_char('.')?;
        push_quoted_ident(f, &self.name)
    }
}

/// `"name"` with embedded quotes doubled: the canonical spelling of an identifier.
pub fn quote_ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    push_quoted_ident(&mut quoted, name).expect("a String takes any write");
    quoted
}

/// Writes [`quote_ident`]'s spelling of `name` to `out` (no allocation).
fn push_quoted_ident(out: &mut impl fmt::Write, name: &str) -> fmt::Result {
    out.write_char('"')?;
    for part in name.split_inclusive('"') {
        out.write_str(part)?;
        if part.ends_with('"') {
            out.write_char('"')?;
        }
    }
    out.write_char('"')
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub not_null: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub name: TableName,
    /// Postgres relation id; identifies the table across renames.
    pub oid: u32,
    pub columns: Vec<Column>,
    /// Indexes into `columns`, in key order. Never empty.
    pub primary_key: Vec<usize>,
}

impl TableSchema {
    /// Builds a schema; `primary_key` names columns. Panics on an inconsistent
    /// definition: schemas come from the host, and a bad one is a host bug.
    pub fn new(
        name: TableName,
        oid: u32,
        columns: Vec<Column>,
        primary_key: &[&str],
    ) -> TableSchema {
        let mut schema = TableSchema {
            name,
            oid,
            columns,
            primary_key: Vec::new(),
        };
        schema.primary_key = primary_key
            .iter()
            .map(|pk| {
                schema
                    .column_index(pk)
                    .unwrap_or_else(|| panic!("primary key column {pk} not in table"))
            })
            .collect();
        assert!(
            !schema.primary_key.is_empty(),
            "table {} needs a primary key",
            schema.name
        );
        schema
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Checks that a row has one value per column, each of the column's type
    /// (or NULL where allowed).
    pub fn check_row(&self, row: &[Value]) -> Result<(), String> {
        if row.len() != self.columns.len() {
            return Err(format!(
                "row for {} has {} values, expected {}",
                self.name,
                row.len(),
                self.columns.len()
            ));
        }
        for (value, column) in row.iter().zip(&self.columns) {
            match value.column_type() {
                None if column.not_null => {
                    return Err(format!("NULL in NOT NULL column {}", column.name));
                }
                Some(ty) if ty != column.ty => {
                    return Err(format!(
                        "value {value:?} in {} column {}",
                        column.ty, column.name
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The tables a shape may name.
///
/// Shared, copied on write: a catalog is cloned for every stack and
/// compared with the shape memo's on every shape check, and a clone
/// compares equal by pointer before it compares by value.
#[derive(Clone, Debug, Default, Eq, Serialize, Deserialize)]
pub struct Catalog {
    tables: Arc<BTreeMap<TableName, TableSchema>>,
}

impl PartialEq for Catalog {
    fn eq(&self, other: &Catalog) -> bool {
        Arc::ptr_eq(&self.tables, &other.tables) || self.tables == other.tables
    }
}

impl Catalog {
    pub fn new(tables: impl IntoIterator<Item = TableSchema>) -> Catalog {
        Catalog {
            tables: Arc::new(tables.into_iter().map(|t| (t.name.clone(), t)).collect()),
        }
    }

    pub fn table(&self, name: &TableName) -> Option<&TableSchema> {
        self.tables.get(name)
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableSchema> {
        self.tables.values()
    }

    /// Adds or replaces a table; returns the definition it replaced.
    pub fn upsert(&mut self, table: TableSchema) -> Option<TableSchema> {
        Arc::make_mut(&mut self.tables).insert(table.name.clone(), table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_embedded_quotes_doubled() {
        for (name, quoted) in [
            ("level_4", "\"level_4\""),
            ("", "\"\""),
            ("a\"b", "\"a\"\"b\""),
            ("\"\"", "\"\"\"\"\"\""),
        ] {
            assert_eq!(quote_ident(name), quoted);
            assert_eq!(
                quote_ident(name),
                format!("\"{}\"", name.replace('"', "\"\""))
            );
        }
        let table = TableName {
            schema: "pub\"lic".to_string(),
            name: "t".to_string(),
        };
        assert_eq!(table.to_string(), "\"pub\"\"lic\".\"t\"");
    }

    fn one_column_table(name: &str, oid: u32) -> TableSchema {
        let column = Column {
            name: "id".to_string(),
            ty: ColumnType::Text,
            not_null: true,
        };
        let name = TableName {
            schema: "public".to_string(),
            name: name.to_string(),
        };
        TableSchema::new(name, oid, vec![column], &["id"])
    }

    #[test]
    fn catalogs_compare_by_value_and_a_changed_copy_leaves_the_original() {
        let a = Catalog::new([one_column_table("a", 1)]);
        let copy = a.clone();
        let rebuilt = Catalog::new([one_column_table("a", 1)]);
        assert_eq!(a, copy);
        assert_eq!(a, rebuilt, "equal by value, not only by pointer");
        let mut changed = a.clone();
        changed.upsert(one_column_table("a", 2));
        assert_ne!(a, changed);
        assert_eq!(
            a.table(&one_column_table("a", 1).name).map(|t| t.oid),
            Some(1)
        );
    }
}
