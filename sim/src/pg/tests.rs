use super::*;
use crate::standard;

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn model() -> PgModel {
    let seed = vec![crate::scenario::Level4Row {
        id: "l4-1".into(),
        level_3_id: "l3-1".into(),
        value: "v0".into(),
        note: None,
        rank: Some(1),
        flag: false,
    }];
    standard::seeded_postgres(&seed)
}

fn set_value(id: &str, value: &str) -> Mutation {
    Mutation::Update {
        table: standard::level(4),
        pk: vec![text(id)],
        set: vec![("value".into(), text(value))],
    }
}

#[test]
fn transactions_are_found_by_lsn_and_a_schema_change_at_the_end_is_followed_by_a_keepalive() {
    let pg = model();
    let level4 = standard::level(4);
    let before = pg.last_lsn();
    let first = pg.commit(&[set_value("l4-1", "v1")]).unwrap();
    let altered = pg.add_column(&level4, "memo");
    pg.release_slot();
    let query = engine::replication::SnapshotQuery {
        table: level4.clone(),
        where_sql: None,
        dependencies: Vec::new(),
    };
    assert_eq!(
        pg.snapshot_now(&query).visibility.wal_lsn,
        altered,
        "a snapshot names the WAL's end, schema change included"
    );
    // A connection past the dump: the schema change, then a keepalive that
    // says the WAL's end was reached, then nothing.
    let mut cursor = StreamCursor {
        relations_seen: usize::MAX,
        ..StreamCursor::at(first.commit_lsn)
    };
    let item = pg.message_after(&cursor).expect("the schema change");
    assert!(matches!(item, StreamItem::Wal(lsn, _) if lsn == altered));
    cursor.advance(item);
    let item = pg.message_after(&cursor).expect("a keepalive");
    assert_eq!(item, StreamItem::Keepalive(altered));
    cursor.advance(item);
    assert_eq!(pg.message_after(&cursor), None);
    let second = pg.commit(&[set_value("l4-1", "v2")]).unwrap();
    assert_eq!(pg.transaction(first.commit_lsn), Some(first.clone()));
    assert_eq!(pg.transaction(before), None);
    assert_eq!(pg.last_txn_lsn(), Some(second.commit_lsn));
    assert_eq!(
        pg.last_txn_at_or_below(second.commit_lsn - 1),
        Some(first.commit_lsn)
    );
}

#[test]
fn the_slot_refuses_acknowledgements_backwards_or_past_what_it_sent() {
    let pg = model();
    let txn = pg.commit(&[set_value("l4-1", "v1")]).unwrap();
    let (connection, confirmed, _) = pg.connect("a", 0).unwrap();
    let past = pg.acknowledge(connection, 0, txn.commit_lsn).unwrap_err();
    assert!(past.0.contains("past everything sent"), "{past:?}");
    assert!(
        pg.message_after(&StreamCursor {
            relations_seen: usize::MAX,
            ..StreamCursor::at(confirmed)
        })
        .is_some()
    );
    pg.acknowledge(connection, 1, txn.commit_lsn).unwrap();
    assert_eq!(pg.slot_confirmed(), txn.commit_lsn);
    // One sent earlier but overtaken in the network is superseded, not backwards.
    pg.acknowledge(connection, 0, confirmed).unwrap();
    let back = pg.acknowledge(connection, 2, confirmed).unwrap_err();
    assert!(back.0.contains("backwards"), "{back:?}");
    // One connection holds the slot; a silent one loses it.
    assert_eq!(pg.connect("b", 1), Err(super::SlotBusy(connection)));
    pg.touch(connection, 5_000);
    assert!(
        pg.connect("b", 5_000 + super::WAL_SENDER_TIMEOUT_MS - 1)
            .is_err()
    );
    // A connection that is gone no longer speaks for the slot.
    let (newer, _, _) = pg
        .connect("b", 5_000 + super::WAL_SENDER_TIMEOUT_MS)
        .unwrap();
    assert!(newer > connection);
    pg.acknowledge(connection, 3, confirmed).unwrap();
    assert_eq!(pg.slot_confirmed(), txn.commit_lsn);
    // A client that connects again gave up its previous connection (one
    // whose answer was lost, say): it is not locked out by it.
    let (again, _, _) = pg
        .connect("b", 5_000 + super::WAL_SENDER_TIMEOUT_MS + 1)
        .unwrap();
    assert!(again > newer);
    assert_eq!(
        pg.connect("a", 5_000 + super::WAL_SENDER_TIMEOUT_MS + 2),
        Err(super::SlotBusy(again))
    );
}

#[test]
fn snapshots_list_open_transactions_and_xid_order_is_not_commit_order() {
    let pg = model();
    let query = engine::replication::SnapshotQuery {
        table: standard::level(4),
        where_sql: None,
        dependencies: Vec::new(),
    };
    let early = pg.begin();
    let aborted = pg.begin();
    let late = pg.commit(&[set_value("l4-1", "late")]).unwrap();
    assert!(late.xid > early, "the later BEGIN has the higher xid");
    let snapshot = pg.snapshot_now(&query);
    let v = &snapshot.visibility;
    assert_eq!((v.xmin, v.xmax), (early, late.xid + 1));
    assert_eq!(v.xip_list, vec![early, aborted]);
    assert!(v.is_visible(late.xid) && !v.is_visible(early) && !v.is_visible(aborted));
    assert_eq!(
        snapshot.rows[0][2],
        text("late"),
        "committed work is visible"
    );
    pg.abort(aborted);
    let first = pg.commit_as(early, &[set_value("l4-1", "early")]).unwrap();
    assert!(first.commit_lsn > late.commit_lsn && first.xid < late.xid);
    assert_eq!(pg.query(&standard::level(4), None)[0][2], text("early"));
    let after = pg.snapshot_now(&query).visibility;
    assert!(after.xip_list.is_empty() && after.xmin == after.xmax);
    assert_eq!(after.wal_lsn, first.commit_lsn, "an abort writes no WAL");
}

#[test]
fn queries_evaluate_subqueries_over_the_committed_rows_of_other_tables() {
    let pg = model();
    let level4 = standard::level(4);
    let by_subquery = |active: bool| {
        let not = if active { "" } else { "NOT " };
        pg.query(
            &level4,
            Some(&format!(
                "level_3_id IN (SELECT id FROM level_3 WHERE {not}active AND id = 'l3-1')"
            )),
        )
    };
    let direct = pg.query(&level4, Some("level_3_id = 'l3-1'"));
    let l3_active = !pg
        .query(&standard::level(3), Some("id = 'l3-1' AND active"))
        .is_empty();
    assert!(!direct.is_empty(), "the seed row is under l3-1");
    assert_eq!(by_subquery(l3_active), direct);
    assert!(by_subquery(!l3_active).is_empty());
}

#[test]
fn a_snapshot_reads_its_dependencies_values_in_the_same_snapshot() {
    let pg = model();
    let dependency = |where_sql: &str| engine::replication::DependencyQuery {
        table: standard::level(3),
        columns: vec!["id".into()],
        where_sql: Some(where_sql.into()),
    };
    let query = engine::replication::SnapshotQuery {
        table: standard::level(4),
        where_sql: Some("level_3_id IN (SELECT id FROM level_3 WHERE active)".into()),
        dependencies: vec![dependency("active"), dependency("NOT active")],
    };
    let result = pg.snapshot_now(&query);
    let ids = |rows: &[Vec<Value>]| -> Vec<String> {
        rows.iter().map(|r| r[0].to_text().unwrap()).collect()
    };
    // Seed: l3-i is active when i - 1 is even.
    assert_eq!(ids(&result.views[0]), vec!["l3-1", "l3-3", "l3-5"]);
    assert_eq!(ids(&result.views[1]), vec!["l3-2", "l3-4"]);
    assert_eq!(result.rows.len(), 1, "l4-1 is under l3-1, which is active");
}
