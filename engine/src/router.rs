//! Routing: turns a replicated transaction into the records one shape must
//! append. Pure: the same transaction always yields the same records at the
//! same offsets, which is what lets a replayed transaction be recognised (and
//! what makes re-creating an unflushed tail after a crash byte-identical).
//!
//! Offsets: change `k` of the transaction (counting every change, in every
//! table) gets `<commit_lsn>_<2k>`; when a primary-key change is split, its
//! insert gets `<commit_lsn>_<2k+1>`.
//!
//! Per change, with `old_in`/`new_in` = whether the old/new row is in the shape:
//! - insert: an insert if `new_in`; delete: a delete if `old_in`;
//! - update: a move in (`!old_in && new_in`) is an insert of the new row, a
//!   move out (`old_in && !new_in`) a delete of the old key; both in: a key
//!   change is a delete of the old key then an insert of the new one, otherwise
//!   an update, dropped if no selected column changed.
//!
//! A subquery shape is judged with its consumer's views of its dependencies
//! ([`Tagging`]), and each record carries the row's tags and active
//! conditions (the old row's on a delete; on an update also the tags the
//! row lost); an update in the shape is kept even if no selected column
//! changed (Electric keeps it for DNF shapes: its tags may have).
//!
//! Values (Electric's `replica` modes): inserts carry the selected columns.
//! `default`: updates carry the primary key and the changed columns, deletes
//! the primary key. `full`: updates carry every selected column plus
//! `old_value` with the old values of the changed ones, deletes the full row.

use crate::log::{LogEntry, Operation};
use crate::offset::LogOffset;
use crate::replication::{Change, Lsn, Transaction, Xid};
use crate::schema::{TableSchema, Value};
use crate::shape::dnf::DnfPlan;
use crate::shape::expr::Expr;
use crate::shape::tags::{self, View};
use crate::shape::{Replica, Shape};
use crate::wire::{self, ChangeSource, RowTags, RowValues};

/// One shape's part of one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeTxn {
    pub xid: Xid,
    pub lsn: Lsn,
    /// Never empty: a transaction that writes nothing to a shape is not routed to it.
    pub entries: Vec<LogEntry>,
}

/// The other side of a split key change.
enum KeyChange {
    /// On the delete: the key the row moves to.
    To(String),
    /// On the insert: the key the row came from.
    From(String),
}

struct Draft<'a> {
    op: Operation,
    offset: LogOffset,
    key: String,
    value: RowValues<'a>,
    old_value: Option<RowValues<'a>>,
    key_change: Option<KeyChange>,
    tags: Option<RowTags>,
}

/// How a subquery shape's rows are judged and tagged: its plan and clause,
/// the consumer's views, and what tag hashes are made of.
pub struct Tagging<'a> {
    pub plan: &'a DnfPlan,
    pub clause: &'a Expr,
    pub views: &'a [View],
    pub stack_id: &'a str,
    pub handle: &'a str,
}

impl Tagging<'_> {
    /// Whether `row` is in the shape under these views.
    pub fn includes(&self, row: &[Value]) -> bool {
        let active = tags::active_conditions(self.plan, self.views, row);
        tags::included(self.plan, &active, self.clause, self.views, row)
    }

    fn tags(&self, row: &[Value]) -> RowTags {
        RowTags {
            tags: tags::tags(self.plan, self.stack_id, self.handle, row),
            active_conditions: tags::active_conditions(self.plan, self.views, row),
            removed_tags: None,
        }
    }
}

/// Whether rows are in the shape, and their tags if it has subqueries.
struct Judge<'a> {
    shape: &'a Shape,
    tagging: Option<&'a Tagging<'a>>,
}

impl Judge<'_> {
    fn includes(&self, row: &[Value]) -> bool {
        match self.tagging {
            Some(tagging) => tagging.includes(row),
            None => self.shape.includes(row),
        }
    }

    fn tags(&self, row: &[Value]) -> Option<RowTags> {
        self.tagging.map(|t| t.tags(row))
    }
}

/// The records `shape` must append for `txn`, or `None` if there are none.
pub fn route(shape: &Shape, txn: &Transaction) -> Option<ShapeTxn> {
    route_inner(
        Judge {
            shape,
            tagging: None,
        },
        txn,
        false,
    )
}

/// [`route`] for a subquery shape, judged with `tagging`'s views.
pub fn route_tagged(shape: &Shape, txn: &Transaction, tagging: &Tagging) -> Option<ShapeTxn> {
    assert!(shape.has_subquery(), "only subquery shapes are tagged");
    route_inner(
        Judge {
            shape,
            tagging: Some(tagging),
        },
        txn,
        false,
    )
}

/// [`route`] with the planted bug `wrong-old-value` switchable.
#[cfg(feature = "plants")]
pub fn route_planted(
    shape: &Shape,
    txn: &Transaction,
    plants: &crate::plants::Plants,
) -> Option<ShapeTxn> {
    route_inner(
        Judge {
            shape,
            tagging: None,
        },
        txn,
        plants.wrong_old_value,
    )
}

fn route_inner(judge: Judge, txn: &Transaction, wrong_old_value: bool) -> Option<ShapeTxn> {
    let shape = judge.shape;
    let mut drafts = Vec::new();
    for (k, change) in txn.changes.iter().enumerate() {
        if change.table() != &shape.table.name {
            continue;
        }
        let offset = LogOffset::new(txn.commit_lsn, 2 * k as u64);
        convert(&judge, change, offset, wrong_old_value, &mut drafts);
    }
    let last = drafts.len().checked_sub(1)?;
    let entries = drafts
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let LogOffset::At {
                op: crate::offset::OpIndex::At(op_position),
                ..
            } = d.offset
            else {
                unreachable!("routed offsets are concrete")
            };
            let source = ChangeSource {
                xid: txn.xid,
                lsn: txn.commit_lsn,
                op_position,
                last: i == last,
                tags: d.tags,
            };
            let key_change = match &d.key_change {
                Some(KeyChange::To(k)) => Some(wire::KeyChange::To(k)),
                Some(KeyChange::From(k)) => Some(wire::KeyChange::From(k)),
                None => None,
            };
            let json = wire::change(
                &shape.table,
                d.op,
                &d.key,
                &d.value,
                d.old_value.as_ref(),
                key_change,
                &source,
            );
            LogEntry {
                offset: d.offset,
                operation: d.op,
                key: d.key,
                json,
            }
        })
        .collect();
    Some(ShapeTxn {
        xid: txn.xid,
        lsn: txn.commit_lsn,
        entries,
    })
}

fn convert<'a>(
    judge: &Judge<'a>,
    change: &'a Change,
    offset: LogOffset,
    wrong_old_value: bool,
    out: &mut Vec<Draft<'a>>,
) {
    let shape = judge.shape;
    let table: &'a TableSchema = &shape.table;
    let key = |row: &[Value]| wire::row_key(table, row);
    let pk_values =
        |row: &'a [Value]| RowValues::new(table, row, table.primary_key.iter().copied());
    let selected = |row: &'a [Value]| RowValues::new(table, row, shape.selected.iter().copied());
    let insert = |row: &'a [Value], offset, key_change| Draft {
        op: Operation::Insert,
        offset,
        key: key(row),
        value: selected(row),
        old_value: None,
        key_change,
        tags: judge.tags(row),
    };
    let delete = |row: &'a [Value], offset, key_change| {
        let value = match shape.replica {
            Replica::Default => pk_values(row),
            Replica::Full => selected(row),
        };
        Draft {
            op: Operation::Delete,
            offset,
            key: key(row),
            value,
            old_value: None,
            key_change,
            tags: judge.tags(row),
        }
    };
    match change {
        Change::Insert { new, .. } => {
            if judge.includes(new) {
                out.push(insert(new, offset, None));
            }
        }
        Change::Delete { old, .. } => {
            if judge.includes(old) {
                out.push(delete(old, offset, None));
            }
        }
        Change::Update { old, new, .. } => match (judge.includes(old), judge.includes(new)) {
            (false, false) => {}
            (false, true) => out.push(insert(new, offset, None)),
            (true, false) => out.push(delete(old, offset, None)),
            (true, true) if table.primary_key.iter().any(|&i| old[i] != new[i]) => {
                let (old_key, new_key) = (key(old), key(new));
                let mut gone = delete(old, offset, Some(KeyChange::To(new_key)));
                if let (Some(gone), Some(old_tags), Some(new_tags)) =
                    (&mut gone.tags, judge.tags(old), judge.tags(new))
                {
                    // Electric: the delete carries the new tags and the removed ones.
                    let removed = removed_tags(&old_tags, &new_tags);
                    gone.tags = new_tags.tags.iter().chain(&removed).cloned().collect();
                }
                out.push(gone);
                out.push(insert(
                    new,
                    offset.increment(),
                    Some(KeyChange::From(old_key)),
                ));
            }
            (true, true) => {
                let changed: Vec<usize> = shape
                    .selected
                    .iter()
                    .copied()
                    .filter(|&i| old[i] != new[i])
                    .collect();
                if changed.is_empty() && judge.tagging.is_none() {
                    return;
                }
                let (value, old_value) = match shape.replica {
                    Replica::Default => {
                        let columns = table.primary_key.iter().copied().chain(changed);
                        (RowValues::new(table, new, columns), None)
                    }
                    Replica::Full => {
                        // Planted `wrong-old-value`: the new values instead.
                        let source = if wrong_old_value { new } else { old };
                        (selected(new), Some(RowValues::new(table, source, changed)))
                    }
                };
                let tags = judge.tags(new).map(|new_tags| {
                    let old_tags = judge.tags(old).expect("tagged like the new row");
                    RowTags {
                        removed_tags: Some(removed_tags(&old_tags, &new_tags)),
                        ..new_tags
                    }
                });
                out.push(Draft {
                    op: Operation::Update,
                    offset,
                    key: key(new),
                    value,
                    old_value,
                    key_change: None,
                    tags,
                });
            }
        },
    }
}

/// The old row's tags the new row does not have (`old -- new`).
fn removed_tags(old: &RowTags, new: &RowTags) -> Vec<String> {
    old.tags
        .iter()
        .filter(|t| !new.tags.contains(t))
        .cloned()
        .collect()
}

#[cfg(test)]
#[path = "router_tagged_tests.rs"]
mod tagged_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Catalog, Column, ColumnType, TableName};
    use crate::shape::ShapeRequest;
    use serde_json::Value as Json;
    use serde_json::json;

    pub(super) fn catalog() -> Catalog {
        let col = |name: &str, ty| Column {
            name: name.into(),
            ty,
            not_null: true,
        };
        let t = TableSchema::new(
            TableName::public("items"),
            7,
            vec![
                col("id", ColumnType::Text),
                col("n", ColumnType::Int),
                col("note", ColumnType::Text),
            ],
            &["id"],
        );
        let other = TableSchema::new(
            TableName::public("other"),
            8,
            vec![col("id", ColumnType::Text)],
            &["id"],
        );
        Catalog::new([t, other])
    }

    fn shape(where_clause: &str, columns: Option<&[&str]>, replica: Replica) -> Shape {
        let request = ShapeRequest {
            table: "items".into(),
            columns: columns.map(|c| c.iter().map(|s| s.to_string()).collect()),
            where_clause: Some(where_clause.into()),
            replica,
        };
        Shape::clone(&Shape::new(&catalog(), &request).unwrap())
    }

    pub(super) fn row(id: &str, n: i64, note: &str) -> Vec<Value> {
        vec![
            Value::Text(id.into()),
            Value::Int(n),
            Value::Text(note.into()),
        ]
    }

    pub(super) fn update(old: Vec<Value>, new: Vec<Value>) -> Change {
        Change::Update {
            table: TableName::public("items"),
            old,
            new,
        }
    }

    /// (offset, operation, value, key_change / old_value extras) of each record.
    fn routed(shape: &Shape, changes: Vec<Change>) -> Vec<(String, &'static str, Json, Json)> {
        let txn = Transaction {
            xid: 9,
            commit_lsn: 100,
            changes,
        };
        let Some(routed) = route(shape, &txn) else {
            return Vec::new();
        };
        assert_eq!((routed.xid, routed.lsn), (9, 100));
        let last = routed.entries.len() - 1;
        routed
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let msg: Json = serde_json::from_str(&e.json).unwrap();
                assert_eq!(msg["key"], json!(e.key));
                assert_eq!(
                    msg["headers"]["last"],
                    if i == last { json!(true) } else { Json::Null }
                );
                assert_eq!(msg["headers"]["lsn"], json!("100"));
                let extra = json!({
                    "old_value": msg["old_value"],
                    "to": msg["headers"]["key_change_to"],
                    "from": msg["headers"]["key_change_from"],
                });
                (
                    e.offset.to_string(),
                    wire::operation_name(e.operation),
                    msg["value"].clone(),
                    extra,
                )
            })
            .collect()
    }

    fn no_extra() -> Json {
        json!({"old_value": null, "to": null, "from": null})
    }

    #[test]
    fn inserts_deletes_and_moves_follow_the_where_clause() {
        let s = shape("n > 10", None, Replica::Default);
        let changes = vec![
            Change::Insert {
                table: TableName::public("other"),
                new: vec![Value::Text("x".into())],
            },
            Change::Insert {
                table: TableName::public("items"),
                new: row("a", 11, "hi"),
            },
            Change::Insert {
                table: TableName::public("items"),
                new: row("b", 1, "no"),
            },
            update(row("b", 1, "no"), row("b", 12, "no")), // move in
            update(row("a", 11, "hi"), row("a", 5, "hi")), // move out
            update(row("c", 1, "x"), row("c", 2, "y")),    // out, stays out
            Change::Delete {
                table: TableName::public("items"),
                old: row("d", 50, "z"),
            },
        ];
        assert_eq!(
            routed(&s, changes),
            vec![
                (
                    "100_2".into(),
                    "insert",
                    json!({"id": "a", "n": "11", "note": "hi"}),
                    no_extra()
                ),
                (
                    "100_6".into(),
                    "insert",
                    json!({"id": "b", "n": "12", "note": "no"}),
                    no_extra()
                ),
                ("100_8".into(), "delete", json!({"id": "a"}), no_extra()),
                ("100_12".into(), "delete", json!({"id": "d"}), no_extra()),
            ]
        );
    }

    #[test]
    fn updates_carry_changed_columns_or_the_full_row() {
        let change = || vec![update(row("a", 20, "old"), row("a", 21, "old"))];
        let default = shape("n > 10", None, Replica::Default);
        assert_eq!(
            routed(&default, change()),
            vec![(
                "100_0".into(),
                "update",
                json!({"id": "a", "n": "21"}),
                no_extra()
            )]
        );
        let full = shape("n > 10", None, Replica::Full);
        let extra = json!({"old_value": {"n": "20"}, "to": null, "from": null});
        assert_eq!(
            routed(&full, change()),
            vec![(
                "100_0".into(),
                "update",
                json!({"id": "a", "n": "21", "note": "old"}),
                extra
            )]
        );
        // A change to an unselected column only is dropped; so is a no-op update.
        let narrow = shape("n > 10", Some(&["note"]), Replica::Default);
        assert_eq!(routed(&narrow, change()), vec![]);
        assert_eq!(
            routed(&default, vec![update(row("a", 20, "x"), row("a", 20, "x"))]),
            vec![]
        );
        // Full deletes carry the whole old row.
        let delete = vec![Change::Delete {
            table: TableName::public("items"),
            old: row("a", 20, "x"),
        }];
        assert_eq!(
            routed(&full, delete),
            vec![(
                "100_0".into(),
                "delete",
                json!({"id": "a", "n": "20", "note": "x"}),
                no_extra()
            )]
        );
    }

    #[test]
    fn a_key_change_splits_into_delete_and_insert_at_consecutive_offsets() {
        let s = shape("n > 10", None, Replica::Default);
        let changes = vec![
            Change::Insert {
                table: TableName::public("items"),
                new: row("z", 1, ""),
            },
            update(row("a", 20, "x"), row("b", 20, "x")),
        ];
        let extra_to = json!({"old_value": null, "to": "\"public\".\"items\"/\"b\"", "from": null});
        let extra_from =
            json!({"old_value": null, "to": null, "from": "\"public\".\"items\"/\"a\""});
        assert_eq!(
            routed(&s, changes),
            vec![
                ("100_2".into(), "delete", json!({"id": "a"}), extra_to),
                (
                    "100_3".into(),
                    "insert",
                    json!({"id": "b", "n": "20", "note": "x"}),
                    extra_from
                ),
            ]
        );
        // A key change that also leaves the shape is a plain delete of the old key.
        assert_eq!(
            routed(&s, vec![update(row("a", 20, "x"), row("b", 2, "x"))]),
            vec![("100_0".into(), "delete", json!({"id": "a"}), no_extra())]
        );
    }

    #[test]
    fn routing_is_deterministic_and_skips_untouched_shapes() {
        let s = shape("note LIKE 'h%'", None, Replica::Full);
        let txn = Transaction {
            xid: 1,
            commit_lsn: 5,
            changes: vec![update(row("a", 1, "hello"), row("a", 2, "help"))],
        };
        assert_eq!(route(&s, &txn), route(&s, &txn));
        let untouched = Transaction {
            xid: 1,
            commit_lsn: 5,
            changes: vec![update(row("a", 1, "x"), row("a", 2, "y"))],
        };
        assert_eq!(route(&s, &untouched), None);
    }
}
