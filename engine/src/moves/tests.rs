//! The materializer's counts and strictness, the move queue's rules and the
//! splice boundary's, each against a table of cases.

use super::materializer::{InnerChange, Materializer, MoveEvents, RowMeta, Violation};
use super::queue::{MoveBatch, MoveKind, MoveQueue};
use super::splice::{Boundary, BoundaryRule};
use crate::replication::Visibility;
use crate::schema::Value;
use crate::shape::dnf::Polarity;
use crate::shape::tags::View;

fn t(n: i64) -> Vec<Value> {
    vec![Value::Int(n)]
}

fn insert(key: &str, n: i64) -> InnerChange {
    InnerChange::Insert {
        key: key.into(),
        value: t(n),
        meta: None,
    }
}

fn delete(key: &str) -> InnerChange {
    InnerChange::Delete { key: key.into() }
}

fn update(old_key: &str, key: &str, n: i64) -> InnerChange {
    InnerChange::Update {
        old_key: old_key.into(),
        key: key.into(),
        value: t(n),
        meta: None,
    }
}

fn events(ins: &[i64], outs: &[i64]) -> MoveEvents {
    MoveEvents {
        move_in: ins.iter().map(|&n| t(n)).collect(),
        move_out: outs.iter().map(|&n| t(n)).collect(),
    }
}

/// Applies each transaction's changes and commits it; the events of each.
fn run(m: &mut Materializer, txns: Vec<Vec<InnerChange>>) -> Vec<MoveEvents> {
    txns.into_iter()
        .map(|changes| {
            for change in changes {
                m.apply(change).expect("a valid change");
            }
            m.commit()
        })
        .collect()
}

#[test]
fn the_materializer_moves_a_value_in_on_its_first_row_and_out_on_its_last() {
    let mut m = Materializer::default();
    #[rustfmt::skip]
    let cases: Vec<(Vec<InnerChange>, MoveEvents)> = vec![
        (vec![insert("a", 1), insert("b", 1)], events(&[1], &[])),
        (vec![delete("a")], events(&[], &[])),           // 2 -> 1
        (vec![delete("b"), insert("c", 2)], events(&[2], &[1])),
        // A value change moves the old value out and the new one in.
        (vec![update("c", "c", 3)], events(&[3], &[2])),
        // A key change keeping the value moves nothing.
        (vec![update("c", "d", 3)], events(&[], &[])),
        // Toggles in one transaction cancel as a multiset: in, out, in = in.
        (vec![insert("e", 4), delete("e"), insert("e", 4)], events(&[4], &[])),
        (vec![delete("e"), insert("f", 4), delete("f")], events(&[], &[4])),
        (vec![insert("g", 5), delete("g")], events(&[], &[])),
    ];
    for (i, (changes, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            run(&mut m, vec![changes]),
            vec![expected],
            "transaction {i}"
        );
    }
    assert_eq!(m.values().cloned().collect::<Vec<_>>(), vec![t(3)]);
}

#[test]
fn the_materializer_is_strict() {
    let mut m = Materializer::default();
    m.apply(insert("a", 1)).unwrap();
    assert_eq!(
        m.apply(insert("a", 2)),
        Err(Violation::DuplicateInsert("a".into()))
    );
    assert_eq!(
        m.apply(delete("x")),
        Err(Violation::UnknownKey {
            op: "delete",
            key: "x".into()
        })
    );
    assert_eq!(
        m.apply(update("x", "a", 1)),
        Err(Violation::UnknownKey {
            op: "update",
            key: "x".into()
        })
    );
    // A key change onto a held key is refused and changes nothing.
    m.apply(insert("b", 2)).unwrap();
    assert_eq!(
        m.apply(update("a", "b", 1)),
        Err(Violation::DuplicateInsert("b".into()))
    );
    assert!(m.apply(delete("a")).is_ok(), "a is still held");
    assert_eq!(
        m.commit(),
        events(&[2], &[]),
        "1 in and out cancel; 2 moved in"
    );
}

#[test]
fn a_nested_move_out_removes_the_rows_it_leaves_with_no_active_disjunct() {
    let mut m = Materializer::default();
    let row = |key: &str, n: i64, tags: &[&str], active: [bool; 2]| InnerChange::Insert {
        key: key.into(),
        value: t(n),
        meta: Some(RowMeta {
            tags: tags.iter().map(|s| s.to_string()).collect(),
            active: active.to_vec(),
        }),
    };
    // Two disjuncts: position 0 (a subquery, hash h1 or h2) alone, or
    // position 1 (a plain atom) alone.
    run(
        &mut m,
        vec![vec![
            row("a", 1, &["h1/", "/1"], [true, false]),
            row("b", 2, &["h1/", "/1"], [true, true]),
            row("c", 3, &["h2/", "/1"], [true, false]),
        ]],
    );
    let out = InnerChange::Move {
        kind: MoveKind::Out,
        patterns: vec![(0, "h1".into())],
    };
    // a loses its only active disjunct; b keeps the plain one; c is not matched.
    assert_eq!(run(&mut m, vec![vec![out]]), vec![events(&[], &[1])]);
    assert_eq!(m.values().cloned().collect::<Vec<_>>(), vec![t(2), t(3)]);
    // Removed from the index: a later insert of the key is no duplicate.
    assert!(m.apply(row("a", 1, &["h1/", "/1"], [true, false])).is_ok());
}

fn batch(dependency: usize, kind: MoveKind, tuples: &[i64], txids: &[u64]) -> MoveBatch {
    MoveBatch {
        dependency,
        kind,
        tuples: tuples.iter().map(|&n| t(n)).collect(),
        txids: txids.to_vec(),
    }
}

#[test]
fn the_move_queue_pops_outs_first_and_keeps_the_last_op_per_value() {
    let view = View::new([t(3), t(4)]);
    let mut q = MoveQueue::default();
    q.enqueue(0, &events(&[1, 2, 3], &[3, 9]), &view, &[7]);
    q.enqueue(1, &events(&[5], &[4]), &view, &[8]);
    // Within one flush the outs come first, so 3's last op is a move-in of
    // a value already in the view: dropped, as is the out of 9 (not in it).
    let popped: Vec<MoveBatch> = std::iter::from_fn(|| q.pop_next()).collect();
    assert_eq!(
        popped,
        vec![
            batch(1, MoveKind::Out, &[4], &[8]),
            batch(0, MoveKind::In, &[1, 2], &[7]),
            batch(1, MoveKind::In, &[5], &[8]),
        ]
    );
    assert!(q.is_empty());

    // Across flushes, the last op wins: in then out of a value not in the
    // view leaves nothing; against the view after an in-flight move-in
    // (which holds it) the out stays.
    let empty = View::default();
    q.enqueue(0, &events(&[1], &[]), &empty, &[1]);
    q.enqueue(0, &events(&[], &[1]), &empty, &[2]);
    assert_eq!(q.pop_next(), None);
    let after = View::new([t(1)]);
    q.enqueue(0, &events(&[], &[1]), &after, &[3]);
    assert_eq!(q.pop_next(), Some(batch(0, MoveKind::Out, &[1], &[3])));

    // A pop takes its kind's transactions: a later batch of that kind does
    // not repeat them, while the other kind keeps them.
    let view = View::new([t(1), t(2)]);
    q.enqueue(0, &events(&[3], &[1]), &view, &[4]);
    assert_eq!(q.pop_next(), Some(batch(0, MoveKind::Out, &[1], &[4])));
    q.enqueue(0, &events(&[], &[2]), &view, &[5]);
    assert_eq!(q.pop_next(), Some(batch(0, MoveKind::Out, &[2], &[5])));
    assert_eq!(q.pop_next(), Some(batch(0, MoveKind::In, &[3], &[4, 5])));

    assert_eq!(MoveKind::In.for_outer(Polarity::Negated), MoveKind::Out);
    assert_eq!(MoveKind::Out.for_outer(Polarity::Negated), MoveKind::In);
    assert_eq!(MoveKind::In.for_outer(Polarity::Positive), MoveKind::In);
}

fn snapshot(xmin: u64, xmax: u64, xip: &[u64], wal_lsn: u64) -> Visibility {
    Visibility {
        xmin,
        xmax,
        xip_list: xip.to_vec(),
        wal_lsn,
    }
}

#[test]
fn the_splice_boundary_is_the_first_invisible_txn_or_the_query_lsn_reached_and_is_fixed() {
    use BoundaryRule::{FirstInvisible, ReachedQueryLsn};
    // Buffered 9 (seen), 10 (in progress at the snapshot): before 10.
    let mut b = Boundary::default();
    b.snapshot_known(snapshot(10, 12, &[10], 500));
    b.buffer(9);
    assert_eq!(b.get(), None);
    b.buffer(10);
    assert_eq!(b.get(), Some((1, FirstInvisible)));
    b.reached(900);
    assert_eq!(b.get(), Some((1, FirstInvisible)), "fixed once set");

    // Buffered before the snapshot is known: 13 began after it.
    let mut b = Boundary::default();
    b.buffer(13);
    assert_eq!(b.get(), None, "nothing is decided without the snapshot");
    b.snapshot_known(snapshot(10, 12, &[], 500));
    assert_eq!(b.get(), Some((0, FirstInvisible)));

    // Every buffered txn seen: the consumer reaching the query's WAL
    // position closes it after all of them; a later invisible one follows.
    let mut b = Boundary::default();
    b.reached(499);
    b.snapshot_known(snapshot(10, 12, &[], 500));
    b.buffer(11);
    assert_eq!(b.get(), None);
    b.reached(500);
    assert_eq!(b.get(), Some((1, ReachedQueryLsn)));
    b.buffer(20);
    assert_eq!(b.get(), Some((1, ReachedQueryLsn)));
    assert_eq!(b.buffered(), 2);

    // The query's WAL position already reached when the snapshot arrives.
    let mut b = Boundary::default();
    b.buffer(5);
    b.reached(600);
    b.snapshot_known(snapshot(10, 12, &[], 500));
    assert_eq!(b.get(), Some((1, ReachedQueryLsn)));
}
