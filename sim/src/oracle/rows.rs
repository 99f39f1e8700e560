//! What a client must hold: the oracle's rows, keyed and rendered as text
//! with the oracle's own code (not the engine's `to_text` or `row_key`), so
//! that a wrong key or a wrong rendering in the engine is a mismatch rather
//! than a bug both sides share.

use crate::client::{ClientRow, Text};
use crate::pg::PgModel;
use compact_str::ToCompactString;
use engine::schema::{TableName, TableSchema, Value};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

/// Rows by their Electric key.
pub type KeyedRows = BTreeMap<String, ClientRow>;

/// Rows by their Electric key, as a persistent map: the oracle keeps every
/// shape's rows as of every commit, and versions share their structure.
pub type OracleRows = imbl::OrdMap<String, Arc<ClientRow>>;

pub fn persistent(rows: KeyedRows) -> OracleRows {
    rows.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()
}

/// Whether a client holds exactly the oracle's rows.
pub fn same(client: &KeyedRows, oracle: &OracleRows) -> bool {
    client.len() == oracle.len()
        && client
            .iter()
            .zip(oracle.iter())
            .all(|((ck, cv), (ok, ov))| ck == ok && cv == &**ov)
}

/// The oracle's rows as a plain map (for reports).
pub fn keyed(oracle: &OracleRows) -> KeyedRows {
    oracle
        .iter()
        .map(|(k, v)| (k.clone(), (**v).clone()))
        .collect()
}

/// Postgres' text output (what `col::text` gives) of a value; NULL is `None`.
pub fn pg_text(value: &Value) -> Option<Text> {
    match value {
        Value::Null => None,
        Value::Bool(true) => Some(Text::const_new("true")),
        Value::Bool(false) => Some(Text::const_new("false")),
        Value::Int(i) => Some(i.to_compact_string()),
        Value::Text(s) => Some(Text::from(s.as_str())),
    }
}

/// Electric's row key: `"schema"."table"/"pk"`, with `/` doubled in every
/// part and `.` doubled in the relation parts; a NULL key part is `_`.
pub fn electric_key(table: &TableSchema, row: &[Value]) -> String {
    electric_key_after(&relation_key(table), table, row)
}

/// [`electric_key`] with the relation part (`relation_key(table)`) given.
pub fn electric_key_after(relation: &str, table: &TableSchema, row: &[Value]) -> String {
    let mut key = String::with_capacity(relation.len() + 32);
    key.push_str(relation);
    for &column in &table.primary_key {
        key.push('/');
        match &row[column] {
            Value::Null => key.push('_'),
            Value::Text(text) => push_quoted(&mut key, text, &['/']),
            // Neither holds a `/`: nothing to double.
            Value::Int(i) => write!(key, "\"{i}\"").expect("a String takes any write"),
            Value::Bool(b) => write!(key, "\"{b}\"").expect("a String takes any write"),
        }
    }
    key
}

/// The key of a row as a client holds it (text values by column name);
/// `None` if a key column is absent.
pub fn electric_key_of_text(table: &TableSchema, row: &ClientRow) -> Option<String> {
    electric_key_of_text_after(&relation_key(table), table, row)
}

/// [`electric_key_of_text`] with the relation part given.
pub fn electric_key_of_text_after(
    relation: &str,
    table: &TableSchema,
    row: &ClientRow,
) -> Option<String> {
    let mut key = String::with_capacity(relation.len() + 32);
    key.push_str(relation);
    for &column in &table.primary_key {
        key.push('/');
        match row.get(table.columns[column].name.as_str())? {
            None => key.push('_'),
            Some(text) => push_quoted(&mut key, text, &['/']),
        }
    }
    Some(key)
}

/// `"schema"."table"`, the start of every key of `table`.
pub fn relation_key(table: &TableSchema) -> String {
    let name = &table.name;
    let mut key = String::with_capacity(name.schema.len() + name.name.len() + 32);
    push_quoted(&mut key, &name.schema, &['/', '.']);
    key.push('.');
    push_quoted(&mut key, &name.name, &['/', '.']);
    key
}

/// Appends `part` in double quotes, each of the `doubled` characters twice.
fn push_quoted(out: &mut String, part: &str, doubled: &[char]) {
    out.push('"');
    if !part.contains(doubled) {
        out.push_str(part);
        out.push('"');
        return;
    }
    for c in part.chars() {
        out.push(c);
        if doubled.contains(&c) {
            out.push(c);
        }
    }
    out.push('"');
}

/// A row rendered as a client holds it: the given columns, as text.
pub fn rendered(
    table: &TableSchema,
    row: &[Value],
    columns: impl IntoIterator<Item = usize>,
) -> ClientRow {
    columns
        .into_iter()
        .map(|c| (Text::from(table.columns[c].name.as_str()), pg_text(&row[c])))
        .collect()
}

/// The rows of `table` a client of `where_clause` (and, if given, only
/// these comma-separated `columns`) must hold.
pub fn expected_rows(
    pg: &PgModel,
    table: &TableName,
    where_clause: Option<&str>,
    columns: Option<&str>,
) -> KeyedRows {
    let schema = pg.table(table);
    let selected = |name: &str| columns.is_none_or(|c| c.split(',').any(|x| x.trim() == name));
    pg.query(table, where_clause)
        .iter()
        .map(|row| {
            let values = schema
                .columns
                .iter()
                .zip(row)
                .filter(|(c, _)| selected(&c.name))
                .map(|(c, v)| (Text::from(c.name.as_str()), pg_text(v)))
                .collect();
            (electric_key(&schema, row), values)
        })
        .collect()
}

/// A short description of how two keyed row sets differ.
pub fn diff(got: &KeyedRows, want: &KeyedRows) -> String {
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(3)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(3)
        .collect();
    let changed: Vec<_> = want
        .iter()
        .filter_map(|(k, w)| got.get(k).filter(|g| *g != w).map(|g| (k, g, w)))
        .take(3)
        .map(|(k, g, w)| format!("{k}: got {g:?}, want {w:?}"))
        .collect();
    format!("missing {missing:?}, unexpected {extra:?}, different {changed:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::schema::{Column, ColumnType};

    #[test]
    fn keys_follow_electric_escaping() {
        let table = TableSchema {
            name: TableName {
                schema: "my.schema".into(),
                name: "a/b".into(),
            },
            oid: 1,
            columns: vec![Column {
                name: "id".into(),
                ty: ColumnType::Text,
                not_null: true,
            }],
            primary_key: vec![0],
        };
        let key = electric_key(&table, &[Value::Text("x/y".into())]);
        assert_eq!(key, r#""my..schema"."a//b"/"x//y""#);
        assert_eq!(
            electric_key(&table, &[Value::Null]),
            r#""my..schema"."a//b"/_"#
        );
    }

    #[test]
    fn keys_of_values_and_of_text_agree() {
        let column = |name: &str, ty| Column {
            name: name.into(),
            ty,
            not_null: false,
        };
        let table = TableSchema {
            name: TableName {
                schema: "public".into(),
                name: "t".into(),
            },
            oid: 1,
            columns: vec![
                column("a", ColumnType::Int),
                column("b", ColumnType::Bool),
                column("c", ColumnType::Text),
            ],
            primary_key: vec![0, 1, 2],
        };
        let row = [Value::Int(-7), Value::Bool(true), Value::Text("p/q".into())];
        let key = electric_key(&table, &row);
        assert_eq!(key, r#""public"."t"/"-7"/"true"/"p//q""#);
        let text = rendered(&table, &row, 0..3);
        assert_eq!(electric_key_of_text(&table, &text), Some(key));
        let mut partial = text.clone();
        partial.remove("b");
        assert_eq!(electric_key_of_text(&table, &partial), None);
    }
}
