//! The write buffer's semantics against a real (in-memory) SQLite.

use super::*;
use crate::shape::{Replica, ShapeRequest};
use futures::FutureExt;

fn db(config: MetaConfig) -> (ShapeDb, SqliteConn) {
    let conn: SqliteConn = Arc::new(Mutex::new(rusqlite::Connection::open_in_memory().unwrap()));
    (ShapeDb::open(conn.clone(), config).unwrap(), conn)
}

fn row(n: u64) -> ShapeRow {
    let hash = format!("{n:016x}");
    ShapeRow {
        handle: ShapeHandle::parse(&format!("{hash}-1000-{n}")).unwrap(),
        request: ShapeRequest {
            table: "items".into(),
            columns: None,
            where_clause: Some(format!("n = {n}")),
            replica: Replica::Default,
        },
        comparable: format!("comparable-{n}"),
        hash,
        oid: 7,
        snapshot_complete: false,
    }
}

fn now<T>(f: impl std::future::Future<Output = T>) -> T {
    f.now_or_never().expect("must not wait")
}

#[test]
fn reads_see_the_buffer_first_and_tombstones_hide_sqlite_rows() {
    let (db, _) = db(MetaConfig::default());
    let (a, b) = (row(1), row(2));
    now(db.add_shape(a.clone()));
    assert_eq!(
        db.handle_for_comparable(&a.comparable).unwrap(),
        Some(a.handle.clone()),
        "buffered add is visible"
    );
    assert_eq!(db.stored_shapes().unwrap(), vec![], "not in SQLite yet");
    db.flush_all().unwrap();
    assert_eq!(db.stored_shapes().unwrap(), vec![a.clone()]);
    now(db.add_shape(b.clone()));
    db.remove_shape(&a.handle);
    assert_eq!(
        db.handle_for_comparable(&a.comparable).unwrap(),
        None,
        "the tombstone hides the SQLite row"
    );
    assert_eq!(db.shape_for_handle(&a.handle).unwrap(), None);
    assert_eq!(db.cached(&a.handle), None);
    assert_eq!(db.shape_for_handle(&b.handle).unwrap(), Some(b.clone()));
    now(db.mark_snapshot_complete(&b.handle));
    assert!(
        db.shape_for_handle(&b.handle)
            .unwrap()
            .unwrap()
            .snapshot_complete
    );
    db.flush_all().unwrap();
    let stored = db.stored_shapes().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].handle, b.handle);
    assert!(stored[0].snapshot_complete);
    assert_eq!(db.stored_count().unwrap(), 1);
}

#[test]
fn a_flush_applies_at_most_one_batch_per_transaction() {
    let (db, _) = db(MetaConfig {
        batch_ops: 100,
        ..MetaConfig::default()
    });
    for n in 0..250 {
        now(db.add_shape(row(n)));
    }
    assert_eq!(db.flush_batch().unwrap().len(), 100);
    assert_eq!(db.pending(), 150);
    assert_eq!(db.stored_count().unwrap(), 100);
    db.flush_all().unwrap();
    assert_eq!((db.pending(), db.stored_count().unwrap()), (0, 250));
}

#[test]
fn a_crash_loses_exactly_the_buffered_operations() {
    let (db, conn) = db(MetaConfig::default());
    let (a, b, c) = (row(1), row(2), row(3));
    now(db.add_shape(a.clone()));
    now(db.mark_snapshot_complete(&a.handle));
    now(db.add_shape(b.clone()));
    now(db.mark_snapshot_complete(&b.handle));
    db.flush_all().unwrap();
    now(db.add_shape(c.clone()));
    now(db.mark_snapshot_complete(&c.handle));
    db.remove_shape(&a.handle);
    drop(db); // the kill: the buffer is gone, SQLite keeps what was committed
    let db = ShapeDb::open(conn, MetaConfig::default()).unwrap();
    let (valid, deleted) = db.boot(5_000).unwrap();
    let handles: Vec<_> = valid.iter().map(|r| r.handle.clone()).collect();
    assert_eq!(
        handles,
        vec![a.handle.clone(), b.handle.clone()],
        "the lost removal brings a back; c never existed"
    );
    assert_eq!(deleted, vec![]);
    assert_eq!(db.cached(&b.handle).unwrap().hash, b.hash);
    assert!(db.cached(&c.handle).is_none());
}

#[test]
fn boot_drops_shapes_whose_snapshot_never_completed() {
    let (db, conn) = db(MetaConfig::default());
    let (a, b) = (row(1), row(2));
    now(db.add_shape(a.clone()));
    now(db.add_shape(b.clone()));
    now(db.mark_snapshot_complete(&b.handle));
    db.flush_all().unwrap();
    drop(db);
    let db = ShapeDb::open(conn, MetaConfig::default()).unwrap();
    let (valid, deleted) = db.boot(0).unwrap();
    assert_eq!(deleted, vec![a.handle.clone()]);
    assert_eq!(
        valid.iter().map(|r| &r.handle).collect::<Vec<_>>(),
        vec![&b.handle]
    );
    assert_eq!(db.stored_count().unwrap(), 1);
}

#[test]
fn a_full_buffer_makes_writers_wait_for_a_flush() {
    let (db, _) = db(MetaConfig {
        buffer_limit: 2,
        ..MetaConfig::default()
    });
    now(db.add_shape(row(1)));
    now(db.add_shape(row(2)));
    let mut third = Box::pin(db.add_shape(row(3)));
    assert!((&mut third).now_or_never().is_none(), "the third add waits");
    db.flush_batch().unwrap();
    assert!(third.now_or_never().is_some(), "a flush makes room");
    assert_eq!(db.pending(), 1);
}

#[test]
fn a_definition_can_be_removed_and_recreated_under_a_new_handle() {
    let (db, _) = db(MetaConfig::default());
    let a = row(1);
    now(db.add_shape(a.clone()));
    db.flush_all().unwrap();
    db.remove_shape(&a.handle);
    let mut again = row(1);
    again.handle = ShapeHandle::parse(&format!("{}-2000-0", a.hash)).unwrap();
    now(db.add_shape(again.clone()));
    assert_eq!(
        db.handle_for_comparable(&a.comparable).unwrap(),
        Some(again.handle.clone())
    );
    db.flush_all().unwrap(); // the removal is applied before the add: no unique-index clash
    assert_eq!(
        db.handle_for_comparable(&a.comparable).unwrap(),
        Some(again.handle)
    );
}
