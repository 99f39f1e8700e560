//! One rule of the shape-log contract per test, on small readable examples.

use super::*;

fn small() -> LogConfig {
    LogConfig {
        chunk_bytes: 30,
        buffer_bytes: 1 << 20,
        ..LogConfig::default()
    }
}

fn rec(tx: u64, op: u64, json: &str) -> LogEntry {
    LogEntry {
        offset: LogOffset::new(tx, op),
        operation: Operation::Insert,
        key: format!("k{tx}_{op}"),
        json: json.to_string(),
    }
}

fn offsets(stream: Stream) -> Vec<String> {
    entries(stream)
        .iter()
        .map(|e| e.offset.to_string())
        .collect()
}

fn ready(world: &World, config: LogConfig, snapshot_rows: &[&str]) -> ShapeLogWriter {
    let mut writer = now(ShapeLog::create(&world.env, DIR, config)).unwrap();
    now(writer.start_snapshot(Visibility::default())).unwrap();
    for (i, json) in snapshot_rows.iter().enumerate() {
        now(writer.append_snapshot_row(Operation::Insert, format!("s{i}"), json.to_string()))
            .unwrap();
    }
    now(writer.finish_snapshot()).unwrap();
    writer
}

#[test]
fn electric_offset_walk_over_snapshot_and_main_log_chunks() {
    let world = World::new();
    // 20-byte rows, 30-byte chunks: a chunk closes at every second row.
    let row = "{\"value\":\"0123456\"}x";
    let mut writer = ready(&world, small(), &[row, row, row, row, row]);
    let reader = writer.reader();
    for (tx, ops) in [(5, 2), (6, 1), (7, 3)] {
        for op in 0..ops {
            now(writer.append(rec(tx, 2 * op, row))).unwrap();
        }
        writer.commit().unwrap();
    }
    // Snapshot: chunks 0 and 1 hold two rows each, chunk 2 the last row.
    assert_eq!(
        reader.chunk_end(LogOffset::BEFORE_ALL),
        Some(LogOffset::FIRST)
    );
    assert_eq!(
        entries(now(reader.log_stream(LogOffset::BEFORE_ALL, LogOffset::FIRST)).unwrap()).len(),
        2
    );
    assert_eq!(
        reader.chunk_end(LogOffset::FIRST),
        Some(LogOffset::snapshot_chunk(1))
    );
    assert_eq!(
        entries(now(reader.log_stream(LogOffset::snapshot_chunk(1), LogOffset::LAST)).unwrap())
            .len(),
        1
    );
    // Main log: 6 records, chunks close at 5_2, 7_0 and 7_4.
    let last_snapshot = LogOffset::snapshot_chunk(2);
    assert_eq!(reader.chunk_end(last_snapshot), Some(LogOffset::new(5, 2)));
    assert_eq!(
        reader.chunk_end(LogOffset::SNAPSHOT_END),
        Some(LogOffset::new(5, 2))
    );
    assert_eq!(
        reader.chunk_end(LogOffset::new(5, 0)),
        Some(LogOffset::new(5, 2))
    );
    assert_eq!(
        reader.chunk_end(LogOffset::new(5, 2)),
        Some(LogOffset::new(7, 0))
    );
    assert_eq!(
        reader.chunk_end(LogOffset::new(7, 4)),
        None,
        "nothing after the last record: use latest_offset"
    );
    assert_eq!(reader.latest_offset(), LogOffset::new(7, 4));
    // A main-log read returns the whole range asked for, not one chunk.
    let all = offsets(now(reader.log_stream(last_snapshot, LogOffset::LAST)).unwrap());
    assert_eq!(all, ["5_0", "5_2", "6_0", "7_0", "7_2", "7_4"]);
    let middle =
        offsets(now(reader.log_stream(LogOffset::new(5, 0), LogOffset::new(7, 0))).unwrap());
    assert_eq!(middle, ["5_2", "6_0", "7_0"]);
}

#[test]
fn readers_see_committed_unflushed_records_but_never_uncommitted_ones() {
    let world = World::new();
    let mut writer = ready(&world, LogConfig::default(), &[]);
    let reader = writer.reader();
    now(writer.append(rec(3, 0, "{}"))).unwrap();
    assert_eq!(
        offsets(now(reader.log_stream(LogOffset::SNAPSHOT_END, LogOffset::LAST)).unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(reader.latest_offset(), LogOffset::SNAPSHOT_END);
    writer.commit().unwrap();
    now(writer.append(rec(4, 0, "{}"))).unwrap();
    assert_eq!(
        world
            .storage
            .durable_contents("shapes/s1/log")
            .unwrap()
            .len(),
        0,
        "nothing flushed yet"
    );
    assert_eq!(
        offsets(now(reader.log_stream(LogOffset::SNAPSHOT_END, LogOffset::LAST)).unwrap()),
        ["3_0"]
    );
    assert_eq!(reader.latest_offset(), LogOffset::new(3, 0));
    assert_eq!(reader.durable_offset(), None);
}

#[test]
fn flushes_on_buffer_size_chunk_close_timer_and_request() {
    let world = World::new();
    let config = LogConfig {
        chunk_bytes: 1_000,
        buffer_bytes: 100,
        ..LogConfig::default()
    };
    let mut writer = ready(&world, config, &[]);
    let log_bytes = || {
        world
            .storage
            .durable_contents("shapes/s1/log")
            .unwrap()
            .len()
    };

    // Buffer size: the third 40-byte record crosses 100 buffered bytes.
    let json = "x".repeat(10);
    now(writer.append(rec(2, 0, &json))).unwrap();
    assert_eq!(log_bytes(), 0);
    now(writer.append(rec(2, 2, &json))).unwrap();
    assert_eq!(log_bytes(), 0);
    now(writer.append(rec(2, 4, &json))).unwrap();
    assert!(log_bytes() > 0, "buffer threshold flush");
    writer.commit().unwrap();
    assert_eq!(
        writer.durable_offset(),
        None,
        "records flushed mid-transaction are not a durable transaction"
    );

    // Timer: due one flush period after the oldest unflushed change.
    let deadline = writer.flush_deadline_ms().expect("a commit is pending");
    world.clock.advance_ms(deadline - world.clock.now_ms() - 1);
    now(writer.flush_if_due()).unwrap();
    assert_eq!(writer.durable_offset(), None, "not due yet");
    world.clock.advance_ms(1);
    assert_eq!(
        now(writer.flush_if_due()).unwrap(),
        Some(LogOffset::new(2, 4))
    );
    assert_eq!(writer.flush_deadline_ms(), None);

    // Chunk close: a record that fills the chunk flushes at once.
    now(writer.append(rec(3, 0, &"y".repeat(1_000)))).unwrap();
    let flushed = log_bytes();
    assert!(flushed > 1_000, "chunk close flush");

    // Request.
    writer.commit().unwrap();
    assert_eq!(now(writer.flush()).unwrap(), Some(LogOffset::new(3, 0)));
    assert_eq!(writer.durable_offset(), Some(LogOffset::new(3, 0)));
}

#[test]
fn reopen_cuts_a_flushed_but_not_durable_tail() {
    let world = World::new();
    let mut writer = ready(&world, LogConfig::default(), &[]);
    now(writer.append(rec(2, 0, "{\"a\":1}"))).unwrap();
    writer.commit().unwrap();
    now(writer.flush()).unwrap();
    // A transaction whose data is synced, but the crash comes before its offset is recorded.
    now(writer.append(rec(3, 0, "{\"a\":2}"))).unwrap();
    writer.commit().unwrap();
    world.crash.arm(CrashPoint::LogFlushAfterSync, 0);
    assert!(writer.flush().now_or_never().is_none());
    drop(writer);
    let writer = now(ShapeLog::open(&world.env, DIR, LogConfig::default())).unwrap();
    let reader = writer.reader();
    assert_eq!(reader.latest_offset(), LogOffset::new(2, 0));
    assert_eq!(
        offsets(now(reader.log_stream(LogOffset::SNAPSHOT_END, LogOffset::LAST)).unwrap()),
        ["2_0"]
    );
    let log_len = now(world.env.storage.size("shapes/s1/log")).unwrap();
    assert_eq!(
        log_len,
        codec::record_len(&rec(2, 0, "{\"a\":1}")),
        "the tail is cut from the file, not just hidden"
    );
}

#[test]
fn a_log_shorter_than_its_durable_offset_is_corruption_not_silence() {
    let world = World::new();
    let mut writer = ready(&world, LogConfig::default(), &[]);
    now(writer.append(rec(2, 0, "{}"))).unwrap();
    writer.commit().unwrap();
    now(writer.flush()).unwrap();
    drop(writer);
    now(world.env.storage.truncate("shapes/s1/log", 5)).unwrap();
    let err = now(ShapeLog::open(&world.env, DIR, LogConfig::default()))
        .err()
        .expect("must fail");
    assert!(matches!(err, LogError::Corrupt(_)), "{err}");
    assert!(
        err.to_string()
            .contains("durable offset is 2_0 but the log ends at nothing"),
        "{err}"
    );
}

#[test]
fn open_refuses_missing_incomplete_and_foreign_logs() {
    let world = World::new();
    let missing = now(ShapeLog::open(&world.env, DIR, small())).err().unwrap();
    assert!(matches!(missing, LogError::Missing(_)), "{missing}");

    let mut writer = now(ShapeLog::create(&world.env, DIR, small())).unwrap();
    now(writer.start_snapshot(Visibility::default())).unwrap();
    now(writer.append_snapshot_row(Operation::Insert, "k".into(), "{}".into())).unwrap();
    drop(writer);
    let incomplete = now(ShapeLog::open(&world.env, DIR, small())).err().unwrap();
    assert!(
        matches!(incomplete, LogError::SnapshotIncomplete(_)),
        "{incomplete}"
    );

    let json =
        br#"{"version":99,"durable_offset":null,"snapshot":{"state":"not_started"},"future":1}"#;
    let mut bytes = crc32fast::hash(json).to_le_bytes().to_vec();
    bytes.extend_from_slice(json);
    now(world.env.storage.write("shapes/s1/meta", &bytes)).unwrap();
    let foreign = now(ShapeLog::open(&world.env, DIR, small())).err().unwrap();
    assert!(
        foreign.to_string().contains("storage version 99"),
        "{foreign}"
    );

    now(ShapeLog::remove(&world.env, DIR)).unwrap();
    assert!(!now(world.env.storage.exists(DIR)).unwrap());
    now(ShapeLog::remove(&world.env, DIR)).unwrap();
}

#[test]
fn snapshot_chunks_are_readable_once_closed_and_complete_only_when_recorded() {
    let world = World::new();
    let mut writer = now(ShapeLog::create(&world.env, DIR, small())).unwrap();
    let reader = writer.reader();
    now(writer.start_snapshot(Visibility {
        xmin: 1,
        xmax: 2,
        xip_list: vec![],
        wal_lsn: 0,
    }))
    .unwrap();
    assert_eq!(
        now(reader.log_stream(LogOffset::BEFORE_ALL, LogOffset::FIRST)).unwrap(),
        Stream::SnapshotChunkPending(0)
    );
    now(writer.append_snapshot_row(Operation::Insert, "a".into(), "x".repeat(30))).unwrap();
    assert_eq!(
        entries(now(reader.log_stream(LogOffset::BEFORE_ALL, LogOffset::FIRST)).unwrap()).len(),
        1
    );
    assert_eq!(
        reader.chunk_end(LogOffset::FIRST),
        Some(LogOffset::snapshot_chunk(1)),
        "optimistic while writing"
    );
    now(writer.append_snapshot_row(Operation::Insert, "b".into(), "{}".into())).unwrap();
    assert!(!reader.snapshot_complete());
    // A crash after the last chunk is durable but before completion is recorded.
    world.crash.arm(CrashPoint::SnapshotBeforeComplete, 0);
    assert!(writer.finish_snapshot().now_or_never().is_none());
    drop(writer);
    assert!(matches!(
        now(ShapeLog::open(&world.env, DIR, small())),
        Err(LogError::SnapshotIncomplete(_))
    ));
}

#[test]
#[should_panic(expected = "offsets must increase")]
fn appending_a_replayed_offset_is_a_loud_failure() {
    let world = World::new();
    let mut writer = ready(&world, small(), &[]);
    now(writer.append(rec(4, 0, "{}"))).unwrap();
    writer.commit().unwrap();
    now(writer.append(rec(4, 0, "{}"))).expect("unreachable: the append panics first");
}

#[test]
fn a_cancelled_flush_poisons_the_writer() {
    let world = World::new();
    let mut writer = ready(&world, small(), &[]);
    now(writer.append(rec(4, 0, "{}"))).unwrap();
    writer.commit().unwrap();
    world.crash.arm(CrashPoint::LogFlushAfterWrite, 0);
    assert!(writer.flush().now_or_never().is_none());
    let err = now(writer.flush()).unwrap_err();
    assert!(matches!(err, LogError::Poisoned(_)), "{err}");
}

proptest! {
    #![proptest_config(crate::testing::proptest_config(300))]

    /// A kill anywhere in a snapshot (optionally followed by a power loss)
    /// leaves either no usable log or the complete snapshot, row for row.
    #[test]
    fn a_snapshot_is_all_or_nothing(
        rows in prop::collection::vec(0usize..40, 0..20),
        point in prop::sample::select(vec![
            CrashPoint::SnapshotAfterChunk,
            CrashPoint::SnapshotBeforeComplete,
            CrashPoint::MetaAfterTempWrite,
            CrashPoint::MetaAfterRename,
        ]),
        nth in 0u32..3,
        power in prop::option::of(any::<u64>()),
    ) {
        let world = World::new();
        let mut writer = now(ShapeLog::create(&world.env, DIR, small())).unwrap();
        world.crash.arm(point, nth);
        let jsons: Vec<String> = rows.iter().map(|n| "r".repeat(*n)).collect();
        let completed = async {
            writer.start_snapshot(Visibility::default()).await.unwrap();
            for (i, json) in jsons.iter().enumerate() {
                writer.append_snapshot_row(Operation::Insert, format!("k{i}"), json.clone()).await.unwrap();
            }
            writer.finish_snapshot().await.unwrap()
        }
        .now_or_never()
        .is_some();
        drop(writer);
        if let Some(seed) = power {
            world.storage.power_loss(PowerLoss::Torn { seed });
        }
        match now(ShapeLog::open(&world.env, DIR, small())) {
            Ok(writer) => {
                let reader = writer.reader();
                let mut offset = LogOffset::BEFORE_ALL;
                let mut got = Vec::new();
                while offset < LogOffset::SNAPSHOT_END {
                    let end = reader.chunk_end(offset).unwrap_or(LogOffset::SNAPSHOT_END);
                    got.extend(entries(now(reader.log_stream(offset, end)).unwrap()).iter().map(|e| e.json.clone()));
                    offset = end;
                }
                prop_assert_eq!(got, jsons);
            }
            Err(LogError::SnapshotIncomplete(_)) => {
                prop_assert!(!completed, "a snapshot whose completion returned was lost");
            }
            Err(e) => prop_assert!(false, "unexpected error: {}", e),
        }
    }
}

#[test]
fn a_log_is_created_only_in_a_fresh_directory_and_removed_metadata_first() {
    let world = World::new();
    let writer = ready(&world, small(), &["{}"]);
    drop(writer);
    let again = now(ShapeLog::create(&world.env, DIR, small()))
        .err()
        .unwrap();
    assert!(matches!(again, LogError::AlreadyExists(_)), "{again}");
    // A power loss in the middle of a removal: the metadata is gone first, so
    // whatever else survives is not mistaken for a log.
    for seed in 0..32 {
        let world = World::new();
        drop(ready(&world, small(), &["{}", "{}"]));
        now(world.env.storage.sync_dir("shapes")).unwrap();
        let removal = ShapeLog::remove(&world.env, DIR).now_or_never();
        assert!(removal.is_some());
        world.storage.power_loss(PowerLoss::Torn { seed });
        match now(ShapeLog::open(&world.env, DIR, small())) {
            Err(LogError::Missing(_)) => {}
            other => panic!(
                "seed {seed}: a removed log must not reopen: {:?}",
                other.err()
            ),
        }
    }
}

#[test]
fn a_failed_snapshot_write_poisons_the_writer() {
    let world = World::new();
    let mut writer = now(ShapeLog::create(&world.env, DIR, small())).unwrap();
    now(writer.start_snapshot(Visibility::default())).unwrap();
    world.crash.arm(CrashPoint::SnapshotAfterChunk, 0);
    let parked = writer
        .append_snapshot_row(Operation::Insert, "k".into(), "x".repeat(40))
        .now_or_never();
    assert!(parked.is_none());
    let err = now(writer.finish_snapshot()).unwrap_err();
    assert!(matches!(err, LogError::Poisoned(_)), "{err}");
    assert!(matches!(writer.commit(), Err(LogError::Poisoned(_))));
}

#[cfg(feature = "plants")]
#[test]
fn planted_offset_before_fsync_is_caught_by_recovery_after_a_power_loss() {
    let world = World::new();
    let mut config = small();
    config.plants.offset_before_fsync = true;
    let mut writer = ready(&world, config, &[]);
    now(writer.append(rec(2, 0, "{}"))).unwrap();
    writer.commit().unwrap();
    world.crash.arm(CrashPoint::LogFlushAfterWrite, 0);
    assert!(
        writer.flush().now_or_never().is_none(),
        "parked after the (planted) early offset record"
    );
    drop(writer);
    world.storage.power_loss(PowerLoss::DropUnsynced);
    let err = now(ShapeLog::open(&world.env, DIR, config))
        .err()
        .expect("the contract was broken");
    assert!(matches!(err, LogError::Corrupt(_)), "{err}");
}

#[cfg(feature = "plants")]
#[test]
#[should_panic(expected = "read out of order")]
fn planted_no_trim_on_open_serves_the_stale_tail_twice() {
    let world = World::new();
    let mut config = small();
    config.plants.no_trim_on_open = true;
    let mut writer = ready(&world, config, &[]);
    now(writer.append(rec(2, 0, "{}"))).unwrap();
    writer.commit().unwrap();
    now(writer.flush()).unwrap();
    now(writer.append(rec(3, 0, "{}"))).unwrap();
    writer.commit().unwrap();
    world.crash.arm(CrashPoint::LogFlushAfterSync, 0);
    assert!(writer.flush().now_or_never().is_none());
    drop(writer);
    // Reopen keeps 3_0 on disk; the replayed transaction appends it again.
    let mut writer = now(ShapeLog::open(&world.env, DIR, config)).unwrap();
    now(writer.append(rec(3, 0, "{}"))).unwrap();
    writer.commit().unwrap();
    now(writer.flush()).unwrap();
    now(writer
        .reader()
        .log_stream(LogOffset::SNAPSHOT_END, LogOffset::LAST))
    .expect("the read panics before it returns");
}
