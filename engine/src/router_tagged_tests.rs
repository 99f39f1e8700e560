//! Routing a subquery shape: judged by the consumer's views, every record
//! tagged (Electric's `convert_change` with a DNF plan).

use super::tests::{catalog, row, update};
use super::*;
use crate::schema::TableName;
use crate::shape::ShapeRequest;
use serde_json::{Value as Json, json};

#[test]
fn a_subquery_shape_routes_by_its_views_and_tags_every_record() {
    let catalog = catalog();
    let request = ShapeRequest {
        table: "items".into(),
        where_clause: Some("note IN (SELECT id FROM other)".into()),
        ..Default::default()
    };
    let shape = Shape::new(&catalog, &request).unwrap();
    let clause = shape.where_clause.as_ref().unwrap();
    let plan = clause.plan.as_ref().unwrap();
    let views = [View::new([
        vec![Value::Text("x".into())],
        vec![Value::Text("z".into())],
    ])];
    let tagging = Tagging {
        plan,
        clause: &clause.expr,
        views: &views,
        stack_id: "s",
        handle: "h",
    };
    let hash = |v: &str| tags::value_hash("s", "h", &["note"], &[Value::Text(v.into())]);
    let (hx, hy, hz) = (hash("x"), hash("y"), hash("z"));
    let insert = |new| Change::Insert {
        table: TableName::public("items"),
        new,
    };
    let txn = Transaction {
        xid: 9,
        commit_lsn: 100,
        changes: vec![
            insert(row("a", 1, "x")),                   // in
            insert(row("b", 1, "y")),                   // not in: dropped
            update(row("a", 1, "x"), row("a", 2, "x")), // stays in
            update(row("a", 2, "x"), row("a", 2, "x")), // nothing changed: kept
            update(row("a", 2, "x"), row("a", 2, "y")), // moves out: delete
            update(row("b", 1, "y"), row("b", 1, "x")), // moves in: insert
            update(row("b", 1, "x"), row("c", 1, "z")), // key change
        ],
    };
    let routed = route_tagged(&shape, &txn, &tagging).unwrap();
    let records: Vec<(String, String, Json)> = routed
        .entries
        .iter()
        .map(|e| {
            let msg: Json = serde_json::from_str(&e.json).unwrap();
            let h = &msg["headers"];
            let tags = json!([h["tags"], h["active_conditions"], h["removed_tags"]]);
            (
                e.offset.to_string(),
                h["operation"].as_str().unwrap().to_string(),
                tags,
            )
        })
        .collect();
    let rec = |offset: &str, op: &str, tags: Json| (offset.to_string(), op.to_string(), tags);
    assert_eq!(
        records,
        vec![
            rec("100_0", "insert", json!([[hx], [true], null])),
            rec("100_4", "update", json!([[hx], [true], []])),
            rec("100_6", "update", json!([[hx], [true], []])),
            // A row that leaves carries its old row's tags.
            rec("100_8", "delete", json!([[hx], [true], null])),
            rec("100_10", "insert", json!([[hx], [true], null])),
            // The key change's delete: the new tags, then the removed ones.
            rec("100_12", "delete", json!([[hz, hx], [true], null])),
            rec("100_13", "insert", json!([[hz], [true], null])),
        ]
    );
    // A row out of the shape is still tagged by its values (not routed).
    assert_eq!(tagging.tags(&row("b", 1, "y")).tags, vec![hy]);
    assert_eq!(
        tagging.tags(&row("b", 1, "y")).active_conditions,
        vec![false]
    );
}
