//! PostgreSQL's side of the replication comparison: the slot's changes as
//! `test_decoding` prints them (`pg_logical_slot_peek_changes`), parsed
//! into the model's types.
//!
//! ```text
//! BEGIN 729
//! table public.a: UPDATE: old-key: id[bigint]:2 v[text]:'it''s' new-tuple: id[bigint]:3 v[text]:'it''s' n[bigint]:5
//! table public.a: DELETE: id[bigint]:1 v[text]:'y'
//! COMMIT 729
//! ```
//! Old tuples (REPLICA IDENTITY FULL) leave NULL columns out.

use engine::replication::Change;
use engine::schema::{Catalog, ColumnType, Row, TableName, Value};

/// A committed transaction as the slot decodes it: its xid, the LSN its
/// COMMIT line carries (what `pg_replication_slot_advance` takes to confirm
/// it) and its changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub xid: u64,
    pub commit_lsn: String,
    pub changes: Vec<Change>,
}

/// Every transaction the slot would send now, without consuming them.
pub fn peek(client: &mut postgres::Client, slot: &str, catalog: &Catalog) -> Vec<Decoded> {
    let rows = client
        .query(
            "SELECT lsn::text, xid::text::int8, data FROM pg_logical_slot_peek_changes($1, NULL, NULL, 'skip-empty-xacts', '1')",
            &[&slot],
        )
        .unwrap_or_else(|e| panic!("peek changes of slot {slot}: {e}"));
    let mut out = Vec::new();
    let mut open: Option<Decoded> = None;
    for row in rows {
        let (lsn, xid, data): (String, i64, String) = (row.get(0), row.get(1), row.get(2));
        let xid = u64::try_from(xid).expect("xids are positive");
        if data.starts_with("BEGIN") {
            assert!(open.is_none(), "BEGIN inside a transaction: {data}");
            open = Some(Decoded {
                xid,
                commit_lsn: String::new(),
                changes: Vec::new(),
            });
        } else if data.starts_with("COMMIT") {
            let mut txn = open.take().expect("COMMIT without BEGIN");
            txn.commit_lsn = lsn;
            out.push(txn);
        } else {
            let txn = open.as_mut().expect("a change outside a transaction");
            txn.changes.push(change(&data, catalog));
        }
    }
    assert!(open.is_none(), "the slot ended inside a transaction");
    out
}

/// One `table schema.name: KIND: ...` line.
fn change(line: &str, catalog: &Catalog) -> Change {
    let rest = line.strip_prefix("table ").expect("a change line");
    let (name, rest) = rest.split_once(": ").expect("table name");
    let (schema, table) = name.split_once('.').expect("qualified name");
    let table = TableName {
        schema: schema.to_string(),
        name: table.to_string(),
    };
    let (kind, body) = rest.split_once(": ").expect("change kind");
    let tuple = |text: &str| row(text, &table, catalog);
    match kind {
        "INSERT" => Change::Insert {
            new: tuple(body),
            table,
        },
        "DELETE" => Change::Delete {
            old: tuple(body),
            table,
        },
        "UPDATE" => {
            let body = body.strip_prefix("old-key: ").unwrap_or_else(|| {
                panic!("an UPDATE without its old tuple (REPLICA IDENTITY FULL?): {line}")
            });
            let (old, new) = body.split_once(" new-tuple: ").expect("new tuple");
            Change::Update {
                old: tuple(old),
                new: tuple(new),
                table,
            }
        }
        other => panic!("unexpected change kind {other}: {line}"),
    }
}

/// `col[type]:value ...` as a row in table order; absent columns are NULL.
fn row(text: &str, table: &TableName, catalog: &Catalog) -> Row {
    let schema = catalog
        .table(table)
        .unwrap_or_else(|| panic!("no table {table}"));
    let mut row = vec![Value::Null; schema.columns.len()];
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('[').expect("column[type]");
        let (_, after) = after.split_once("]:").expect("]:");
        let (value, after) = value(after);
        let index = schema
            .column_index(name)
            .unwrap_or_else(|| panic!("no column {name} in {table}"));
        row[index] = match (schema.columns[index].ty, value) {
            (_, None) => Value::Null,
            (ColumnType::Int, Some(v)) => Value::Int(v.parse().expect("an integer")),
            (ColumnType::Bool, Some(v)) => Value::Bool(v == "true"),
            (ColumnType::Text, Some(v)) => Value::Text(v),
        };
        rest = after.trim_start();
    }
    row
}

/// One value (`null`, a bare word, or a quoted string with `''` for `'`)
/// and the text after it.
fn value(text: &str) -> (Option<String>, &str) {
    if let Some(quoted) = text.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = quoted.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '\'' {
                out.push(c);
            } else if chars.peek().is_some_and(|&(_, n)| n == '\'') {
                out.push('\'');
                chars.next();
            } else {
                return (Some(out), &quoted[i + 1..]);
            }
        }
        panic!("an unterminated string in {text}");
    }
    let end = text.find(' ').unwrap_or(text.len());
    let word = &text[..end];
    ((word != "null").then(|| word.to_string()), &text[end..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::schema::{Column, TableSchema};

    #[test]
    fn test_decoding_lines_parse_into_changes() {
        let col = |name: &str, ty| Column {
            name: name.to_string(),
            ty,
            not_null: false,
        };
        let catalog = Catalog::new([TableSchema::new(
            TableName::public("a"),
            1,
            vec![
                col("id", ColumnType::Int),
                col("v", ColumnType::Text),
                col("n", ColumnType::Int),
            ],
            &["id"],
        )]);
        let update = change(
            "table public.a: UPDATE: old-key: id[bigint]:2 v[text]:'it''s a' new-tuple: id[bigint]:3 v[text]:'it''s a' n[bigint]:5",
            &catalog,
        );
        let old = vec![Value::Int(2), Value::Text("it's a".into()), Value::Null];
        let new = vec![Value::Int(3), Value::Text("it's a".into()), Value::Int(5)];
        assert_eq!(
            update,
            Change::Update {
                table: TableName::public("a"),
                old,
                new
            }
        );
    }
}
