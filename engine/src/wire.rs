//! Electric's JSON wire format: row keys, change messages and control
//! messages. Values are sent as Postgres' text output (strings) or `null`, as
//! Electric does; clients parse them by the schema header.

use crate::log::Operation;
use crate::moves::queue::MoveKind;
use crate::replication::{Lsn, Visibility, Xid};
use crate::schema::{TableSchema, Value};
use serde_json::{Map, Value as Json, json};

/// `"schema"."table"/"pk1"/"pk2"`: `/` is doubled in every part and `.` in
/// the relation parts; a NULL key part is `_`, unquoted.
pub fn row_key(table: &TableSchema, row: &[Value]) -> String {
    let mut key = String::with_capacity(32);
    key.push('"');
    push_doubled(&mut key, &table.name.schema, &['/', '.']);
    key.push_str("\".\"");
    push_doubled(&mut key, &table.name.name, &['/', '.']);
    key.push('"');
    for &i in &table.primary_key {
        match row[i].text() {
            None => key.push_str("/_"),
            Some(text) => {
                key.push_str("/\"");
                push_doubled(&mut key, &text, &['/']);
                key.push('"');
            }
        }
    }
    key
}

/// Appends `part` with each of `doubled` written twice.
fn push_doubled(key: &mut String, part: &str, doubled: &[char]) {
    for c in part.chars() {
        if doubled.contains(&c) {
            key.push(c);
        }
        key.push(c);
    }
}

/// `{column: text}` for some columns of a row, serialised as a
/// `serde_json` map renders it (keys in byte order, each once) without
/// building the map: every routed, snapshot and move-in row is one.
pub struct RowValues<'a> {
    table: &'a TableSchema,
    row: &'a [Value],
    /// Column indexes in name order, each once.
    columns: Vec<usize>,
}

impl<'a> RowValues<'a> {
    pub fn new(
        table: &'a TableSchema,
        row: &'a [Value],
        columns: impl IntoIterator<Item = usize>,
    ) -> RowValues<'a> {
        let mut columns: Vec<usize> = columns.into_iter().collect();
        columns.sort_by(|&a, &b| table.columns[a].name.cmp(&table.columns[b].name));
        columns.dedup();
        RowValues {
            table,
            row,
            columns,
        }
    }
}

impl serde::Serialize for RowValues<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.columns.len()))?;
        for &i in &self.columns {
            map.serialize_entry(&self.table.columns[i].name, &self.row[i].text())?;
        }
        map.end()
    }
}

pub fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Insert => "insert",
        Operation::Update => "update",
        Operation::Delete => "delete",
        Operation::Control => "control",
    }
}

/// The headers of a snapshot or move-in row. Fields in name order: the
/// text is what a `serde_json` object (a sorted map) of them renders.
#[derive(serde::Serialize)]
struct InsertHeaders<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    active_conditions: Option<&'a [bool]>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    is_move_in: bool,
    operation: &'static str,
    relation: [&'a str; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    removed_tags: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a [String]>,
}

#[derive(serde::Serialize)]
struct InsertMessage<'a> {
    headers: InsertHeaders<'a>,
    key: &'a str,
    value: &'a RowValues<'a>,
}

/// An insert without replication headers (serialised directly: a
/// snapshot writes one per row).
fn insert_row(
    table: &TableSchema,
    key: &str,
    value: &RowValues<'_>,
    tags: Option<&RowTags>,
    is_move_in: bool,
) -> String {
    let message = InsertMessage {
        headers: InsertHeaders {
            active_conditions: tags.map(|t| t.active_conditions.as_slice()),
            is_move_in,
            operation: "insert",
            relation: [&table.name.schema, &table.name.name],
            removed_tags: tags.and_then(|t| t.removed_tags.as_deref()),
            tags: tags.map(|t| t.tags.as_slice()),
        },
        key,
        value,
    };
    serde_json::to_string(&message).expect("insert messages serialize")
}

/// A snapshot row: an insert without replication headers (with its tags,
/// in a subquery shape).
pub fn snapshot_row(
    table: &TableSchema,
    key: &str,
    value: &RowValues<'_>,
    tags: Option<&RowTags>,
) -> String {
    insert_row(table, key, value, tags, false)
}

/// A row of a subquery shape's move-in: an insert marked `is_move_in`,
/// without replication headers.
pub fn move_in_row(
    table: &TableSchema,
    key: &str,
    value: &RowValues<'_>,
    tags: &RowTags,
) -> String {
    insert_row(table, key, value, Some(tags), true)
}

/// What a subquery shape's row carries: a tag per disjunct, each
/// position's condition, and on an update the tags it lost (present on
/// every update, possibly empty).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RowTags {
    pub tags: Vec<String>,
    pub active_conditions: Vec<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_tags: Option<Vec<String>>,
}

/// A `move-in` or `move-out` control event: `{pos, value}` patterns (every
/// position of the moved dependency times every moved value hash) and the
/// transactions that moved them.
pub fn move_event(kind: MoveKind, patterns: &[(usize, String)], txids: &[Xid]) -> String {
    let event = match kind {
        MoveKind::In => "move-in",
        MoveKind::Out => "move-out",
    };
    let patterns: Vec<Json> = patterns
        .iter()
        .map(|(pos, value)| json!({"pos": pos, "value": value}))
        .collect();
    json!({"headers": {"event": event, "patterns": patterns, "txids": txids}}).to_string()
}

/// Where a replicated change sits, for its headers.
pub struct ChangeSource {
    pub xid: Xid,
    pub lsn: Lsn,
    pub op_position: u64,
    /// The last change of its transaction in this shape.
    pub last: bool,
    /// A subquery shape's row metadata.
    pub tags: Option<RowTags>,
}

#[derive(serde::Serialize)]
struct ChangeHeaders<'a> {
    operation: &'static str,
    relation: [&'a str; 2],
    txids: [Xid; 1],
    lsn: String,
    op_position: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    last: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_change_to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_change_from: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    tags: Option<&'a RowTags>,
}

#[derive(serde::Serialize)]
struct ChangeMessage<'a> {
    headers: ChangeHeaders<'a>,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_value: Option<&'a RowValues<'a>>,
    value: &'a RowValues<'a>,
}

/// A key change's other side (`key_change_to` on the delete,
/// `key_change_from` on the insert).
pub enum KeyChange<'a> {
    To(&'a str),
    From(&'a str),
}

/// A change message written to a shape log (serialised directly: this is on
/// the replication path for every change of every shape it touches).
pub fn change(
    table: &TableSchema,
    op: Operation,
    key: &str,
    value: &RowValues<'_>,
    old_value: Option<&RowValues<'_>>,
    key_change: Option<KeyChange<'_>>,
    source: &ChangeSource,
) -> String {
    let message = ChangeMessage {
        headers: ChangeHeaders {
            operation: operation_name(op),
            relation: [&table.name.schema, &table.name.name],
            txids: [source.xid],
            lsn: source.lsn.to_string(),
            op_position: source.op_position,
            last: source.last,
            key_change_to: match key_change {
                Some(KeyChange::To(k)) => Some(k),
                _ => None,
            },
            key_change_from: match key_change {
                Some(KeyChange::From(k)) => Some(k),
                _ => None,
            },
            tags: source.tags.as_ref(),
        },
        key,
        old_value,
        value,
    };
    serde_json::to_string(&message).expect("change messages serialize")
}

pub fn up_to_date(global_last_seen_lsn: Lsn) -> String {
    // Written out: it ends every up-to-date response (serde_json's map
    // orders keys, so this is the same text `json!` rendered).
    format!(
        r#"{{"headers":{{"control":"up-to-date","global_last_seen_lsn":"{global_last_seen_lsn}"}}}}"#
    )
}

pub fn must_refetch() -> String {
    json!({"headers": {"control": "must-refetch"}}).to_string()
}

pub fn snapshot_end(visibility: &Visibility) -> String {
    let xip: Vec<String> = visibility.xip_list.iter().map(u64::to_string).collect();
    json!({"headers": {
        "control": "snapshot-end",
        "xmin": visibility.xmin.to_string(),
        "xmax": visibility.xmax.to_string(),
        "xip_list": xip,
    }})
    .to_string()
}

/// A JSON array of already-encoded messages.
pub fn array<S: AsRef<str>>(messages: impl IntoIterator<Item = S>) -> String {
    let mut body = String::from("[");
    for (i, m) in messages.into_iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(m.as_ref());
    }
    body.push(']');
    body
}

/// The `electric-schema` header: `{column: {type, pk_index?, not_null?}}`.
pub fn schema_header(table: &TableSchema, selected: &[usize]) -> String {
    let mut schema = Map::new();
    for &i in selected {
        let column = &table.columns[i];
        let mut spec = json!({"type": column.ty.pg_name()});
        if let Some(pk_index) = table.primary_key.iter().position(|&p| p == i) {
            spec["pk_index"] = json!(pk_index);
        }
        if column.not_null {
            spec["not_null"] = Json::Bool(true);
        }
        schema.insert(column.name.clone(), spec);
    }
    Json::Object(schema).to_string()
}

/// `{column: text}` as a `serde_json` map: the reference `RowValues`
/// renders the text of.
#[cfg(test)]
fn values(
    table: &TableSchema,
    row: &[Value],
    columns: impl IntoIterator<Item = usize>,
) -> Map<String, Json> {
    let text = |v: &Value| v.to_text().map_or(Json::Null, Json::String);
    columns
        .into_iter()
        .map(|i| (table.columns[i].name.clone(), text(&row[i])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Column, ColumnType, TableName};

    fn table() -> TableSchema {
        let col = |name: &str, ty| Column {
            name: name.into(),
            ty,
            not_null: false,
        };
        TableSchema::new(
            TableName {
                schema: "my.schema".into(),
                name: "a/b".into(),
            },
            1,
            vec![
                col("id", ColumnType::Text),
                col("n", ColumnType::Int),
                col("flag", ColumnType::Bool),
            ],
            &["id", "n"],
        )
    }

    #[test]
    fn row_values_render_as_the_json_map_did() {
        let t = table();
        let row = vec![Value::Text("k\"/".into()), Value::Int(-4), Value::Null];
        for columns in [
            vec![0, 1, 2],
            vec![2, 0],
            vec![1, 0, 1],
            vec![],
            vec![2, 2, 1, 0],
        ] {
            let typed = serde_json::to_string(&RowValues::new(&t, &row, columns.clone()));
            let reference = Json::Object(values(&t, &row, columns.clone())).to_string();
            assert_eq!(typed.unwrap(), reference, "{columns:?}");
        }
    }

    #[test]
    fn keys_escape_like_electric() {
        let row = vec![Value::Text("x/y".into()), Value::Null, Value::Bool(true)];
        assert_eq!(row_key(&table(), &row), r#""my..schema"."a//b"/"x//y"/_"#);
    }

    #[test]
    fn messages_have_electric_shape() {
        let t = table();
        let row = vec![Value::Text("k".into()), Value::Int(-4), Value::Null];
        let source = ChangeSource {
            xid: 7,
            lsn: 42,
            op_position: 4,
            last: true,
            tags: None,
        };
        let old_row = vec![Value::Text("k".into()), Value::Int(3), Value::Null];
        let old = RowValues::new(&t, &old_row, [1]);
        let value = RowValues::new(&t, &row, [0, 1, 2]);
        let text = change(
            &t,
            Operation::Update,
            "K",
            &value,
            Some(&old),
            None,
            &source,
        );
        let msg: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(msg["value"], json!({"id": "k", "n": "-4", "flag": null}));
        assert_eq!(msg["old_value"], json!({"n": "3"}));
        assert_eq!(
            msg["headers"],
            json!({"operation": "update", "relation": ["my.schema", "a/b"], "txids": [7], "lsn": "42", "op_position": 4, "last": true})
        );
        assert_eq!(
            array([up_to_date(9).as_str(), must_refetch().as_str()]),
            r#"[{"headers":{"control":"up-to-date","global_last_seen_lsn":"9"}},{"headers":{"control":"must-refetch"}}]"#
        );
        let schema: Json = serde_json::from_str(&schema_header(&t, &[0, 2])).unwrap();
        assert_eq!(
            schema,
            json!({"id": {"type": "text", "pk_index": 0}, "flag": {"type": "bool"}})
        );
    }
}

#[cfg(test)]
mod subquery_tests {
    use super::*;
    use crate::schema::{Column, ColumnType, TableName};

    fn table() -> TableSchema {
        let col = |name: &str| Column {
            name: name.into(),
            ty: ColumnType::Text,
            not_null: true,
        };
        TableSchema::new(
            TableName::public("t"),
            1,
            vec![col("id"), col("p")],
            &["id"],
        )
    }

    /// A snapshot or move-in row as a `json!` tree renders it (the
    /// reference for the serialised structs).
    fn reference_insert(
        key: &str,
        value: &Map<String, Json>,
        tags: Option<&RowTags>,
        move_in: bool,
    ) -> String {
        let mut headers = json!({"operation": "insert", "relation": ["public", "t"]});
        let object = headers.as_object_mut().unwrap();
        if move_in {
            object.insert("is_move_in".into(), json!(true));
        }
        if let Some(tags) = tags {
            object.insert("tags".into(), json!(tags.tags));
            object.insert("active_conditions".into(), json!(tags.active_conditions));
            if let Some(removed) = &tags.removed_tags {
                object.insert("removed_tags".into(), json!(removed));
            }
        }
        json!({"key": key, "value": value, "headers": headers}).to_string()
    }

    /// The table, a row (its id `id`) and two tags.
    fn tagged_row(id: &str) -> (TableSchema, Vec<Value>, RowTags) {
        let t = table();
        let row = vec![Value::Text(id.into()), Value::Text("p1".into())];
        let tags = RowTags {
            tags: vec!["h1/".into(), "/1".into()],
            active_conditions: vec![true, false],
            removed_tags: None,
        };
        (t, row, tags)
    }

    #[test]
    fn insert_rows_render_as_the_json_tree_did() {
        let (t, row, tags) = tagged_row("a\"/.");
        let (typed, value) = (RowValues::new(&t, &row, [0, 1]), values(&t, &row, [0, 1]));
        let removed = RowTags {
            removed_tags: Some(vec!["h0".into()]),
            ..tags.clone()
        };
        for tags in [None, Some(&tags), Some(&removed)] {
            assert_eq!(
                snapshot_row(&t, "K\"", &typed, tags),
                reference_insert("K\"", &value, tags, false)
            );
            if let Some(tags) = tags {
                assert_eq!(
                    move_in_row(&t, "K", &typed, tags),
                    reference_insert("K", &value, Some(tags), true)
                );
            }
        }
    }

    #[test]
    fn subquery_rows_and_move_events_have_electrics_shape() {
        let (t, row, tags) = tagged_row("a");
        let value = RowValues::new(&t, &row, [0, 1]);
        assert_eq!(
            snapshot_row(&t, "K", &value, Some(&tags)),
            r#"{"headers":{"active_conditions":[true,false],"operation":"insert","relation":["public","t"],"tags":["h1/","/1"]},"key":"K","value":{"id":"a","p":"p1"}}"#
        );
        assert_eq!(
            move_in_row(&t, "K", &value, &tags),
            r#"{"headers":{"active_conditions":[true,false],"is_move_in":true,"operation":"insert","relation":["public","t"],"tags":["h1/","/1"]},"key":"K","value":{"id":"a","p":"p1"}}"#
        );
        let source = ChangeSource {
            xid: 7,
            lsn: 42,
            op_position: 0,
            last: true,
            tags: Some(RowTags {
                removed_tags: Some(vec![]),
                ..tags
            }),
        };
        assert_eq!(
            change(&t, Operation::Update, "K", &value, None, None, &source),
            r#"{"headers":{"operation":"update","relation":["public","t"],"txids":[7],"lsn":"42","op_position":0,"last":true,"tags":["h1/","/1"],"active_conditions":[true,false],"removed_tags":[]},"key":"K","value":{"id":"a","p":"p1"}}"#
        );
        assert_eq!(
            move_event(
                MoveKind::Out,
                &[(0, "h1".into()), (2, "h1".into())],
                &[7, 9]
            ),
            r#"{"headers":{"event":"move-out","patterns":[{"pos":0,"value":"h1"},{"pos":2,"value":"h1"}],"txids":[7,9]}}"#
        );
    }
}
