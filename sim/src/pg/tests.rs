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
fn queries_as_of_an_lsn_see_the_state_that_lsn_left() {
    let pg = model();
    let level4 = standard::level(4);
    let before = pg.last_lsn();
    let first = pg.commit(&[set_value("l4-1", "v1")]).unwrap();
    let second = pg.commit(&[set_value("l4-1", "v2")]).unwrap();
    let value_at = |lsn| pg.query_at(&level4, Some("value = 'v1'"), lsn).len();
    assert_eq!(value_at(before), 0, "the seed data");
    assert_eq!(value_at(first.commit_lsn), 1);
    assert_eq!(value_at(second.commit_lsn - 1), 1, "between commits");
    assert_eq!(value_at(second.commit_lsn), 0);
    assert_eq!(pg.transaction(first.commit_lsn), Some(first));
    assert_eq!(pg.transaction(before), None);
    assert_eq!(pg.last_txn_lsn(), Some(second.commit_lsn));
}

#[test]
fn the_slot_refuses_acknowledgements_backwards_or_past_what_it_sent() {
    let pg = model();
    let txn = pg.commit(&[set_value("l4-1", "v1")]).unwrap();
    let (connection, confirmed, _) = pg.connect();
    let past = pg.acknowledge(connection, txn.commit_lsn).unwrap_err();
    assert!(past.0.contains("past everything sent"), "{past:?}");
    assert!(pg.message_after(confirmed, usize::MAX).is_some());
    pg.acknowledge(connection, txn.commit_lsn).unwrap();
    assert_eq!(pg.slot_confirmed(), txn.commit_lsn);
    let back = pg.acknowledge(connection, confirmed).unwrap_err();
    assert!(back.0.contains("backwards"), "{back:?}");
    // A connection that is gone no longer speaks for the slot.
    let (newer, _, _) = pg.connect();
    assert!(newer > connection);
    pg.acknowledge(connection, confirmed).unwrap();
    assert_eq!(pg.slot_confirmed(), txn.commit_lsn);
}
