//! Benchmark: shape metadata writes through the write buffer into SQLite on a
//! real disk (WAL, synchronous=FULL: every batch is fsynced).
//!
//!     cargo bench -p sim --bench metadata_write_buffer [-- <shapes>]
//!
//! Reports end-to-end writes per second (enqueue + flush until SQLite holds
//! them all), and the flush rate alone. Electric's PR 3716 reports about
//! 1,000 writes/s for its buffer flush.
#![allow(clippy::disallowed_types)] // wall-clock measurement is the point here

use engine::handle::ShapeHandle;
use engine::metadata::{MetaConfig, ShapeDb, ShapeRow};
use engine::shape::{Replica, ShapeRequest};
use futures::FutureExt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn row(n: u64) -> ShapeRow {
    let hash = format!("{n:016x}");
    ShapeRow {
        handle: ShapeHandle::parse(&format!("{hash}-1700000000000-{n}")).unwrap(),
        request: ShapeRequest {
            table: "level_4".into(),
            columns: Some(vec!["id".into(), "level_3_id".into(), "value".into()]),
            where_clause: Some(format!("value = 'v{n}' AND level_3_id IN ('l3-1', 'l3-2')")),
            replica: Replica::Default,
        },
        comparable: format!(
            "table=\"public\".\"level_4\" oid=16400 columns=(\"id\",\"level_3_id\",\"value\") where=((\"value\" = 'v{n}')) replica=default"
        ),
        hash,
        oid: 16_400,
        snapshot_complete: false,
    }
}

fn main() {
    let shapes: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shapes.sqlite");
    let conn = Arc::new(Mutex::new(
        rusqlite::Connection::open(&path).expect("open SQLite"),
    ));
    let config = MetaConfig::default();
    let db = ShapeDb::open(conn, config).expect("prepare");

    let started = Instant::now();
    let mut flush_time = std::time::Duration::ZERO;
    let mut batches = 0u64;
    // Writers never wait for SQLite unless the buffer is full; then they wait
    // for the flusher, which this single-threaded benchmark plays inline.
    let mut make_room = |db: &ShapeDb| {
        let t = Instant::now();
        while db.pending() >= config.buffer_limit {
            db.flush_batch().expect("flush");
            batches += 1;
        }
        flush_time += t.elapsed();
    };
    for n in 0..shapes {
        make_room(&db);
        db.add_shape(row(n))
            .now_or_never()
            .expect("room for an add");
        // Half of the shapes complete their snapshot, as in steady state.
        if n % 2 == 0 {
            make_room(&db);
            db.mark_snapshot_complete(&row(n).handle)
                .now_or_never()
                .expect("room for a completion");
        }
    }
    let t = Instant::now();
    while db.pending() > 0 {
        db.flush_batch().expect("flush");
        batches += 1;
    }
    flush_time += t.elapsed();
    let total = started.elapsed();
    let writes = shapes + shapes / 2;
    assert_eq!(db.stored_count().unwrap(), shapes as i64);
    println!(
        "metadata write buffer -> SQLite on disk ({}, WAL, synchronous=FULL)",
        path.display()
    );
    println!(
        "  shapes added: {shapes}, snapshot completions: {}, operations: {writes}",
        shapes / 2
    );
    println!(
        "  SQLite transactions: {batches} (up to {} operations each)",
        config.batch_ops
    );
    println!(
        "  end to end: {:.2} s, {:.0} writes/s",
        total.as_secs_f64(),
        writes as f64 / total.as_secs_f64()
    );
    println!(
        "  flush only: {:.2} s, {:.0} writes/s",
        flush_time.as_secs_f64(),
        writes as f64 / flush_time.as_secs_f64()
    );
}
