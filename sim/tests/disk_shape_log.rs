//! The shape log on a real disk: the same code path as in simulation, with
//! real fsyncs, survives a reopen with exactly its durable transactions.

use engine::env::{Env, ManualClock, NoCrashPoints, Spawner};
use engine::log::{LogConfig, LogEntry, Operation, ShapeLog, Stream, Visibility};
use engine::offset::LogOffset;
use futures::executor::block_on;
use futures::future::BoxFuture;
use sim::disk::DiskStorage;
use std::sync::Arc;

struct NoSpawner;

impl Spawner for NoSpawner {
    fn spawn(&self, name: &'static str, _task: BoxFuture<'static, ()>) {
        panic!("unexpected task {name}");
    }
}

#[test]
fn shape_log_on_disk_reopens_with_its_durable_transactions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env = Env {
        clock: Arc::new(ManualClock::new(0)),
        storage: Arc::new(DiskStorage::new(dir.path()).expect("root")),
        spawner: Arc::new(NoSpawner),
        crash_points: Arc::new(NoCrashPoints),
        events: Arc::new(engine::env::NoEvents),
    };
    let config = LogConfig {
        chunk_bytes: 64,
        ..LogConfig::default()
    };
    block_on(async {
        env.storage.create_dir_all("shapes").await.unwrap();
        let mut writer = ShapeLog::create(&env, "shapes/one", config).await.unwrap();
        writer
            .start_snapshot(Visibility {
                xmin: 5,
                xmax: 9,
                xip_list: vec![6, 7],
                wal_lsn: 0,
            })
            .await
            .unwrap();
        for i in 0..10 {
            writer
                .append_snapshot_row(
                    Operation::Insert,
                    format!("k{i}"),
                    format!("{{\"id\":{i}}}"),
                )
                .await
                .unwrap();
        }
        writer.finish_snapshot().await.unwrap();
        for tx in 1..=20u64 {
            for op in 0..3 {
                let entry = LogEntry {
                    offset: LogOffset::new(100 + tx, 2 * op),
                    operation: Operation::Update,
                    key: format!("k{op}"),
                    json: format!("{{\"tx\":{tx},\"op\":{op}}}"),
                };
                writer.append(entry).await.unwrap();
            }
            writer.commit().unwrap();
        }
        writer.flush().await.unwrap();
        // A flushed but uncommitted tail: a reopen must cut it.
        let tail = LogEntry {
            offset: LogOffset::new(200, 0),
            operation: Operation::Insert,
            key: "x".into(),
            json: "{}".into(),
        };
        writer.append(tail).await.unwrap();
        writer.flush().await.unwrap();
        drop(writer);

        let writer = ShapeLog::open(&env, "shapes/one", config).await.unwrap();
        let reader = writer.reader();
        assert_eq!(reader.latest_offset(), LogOffset::new(120, 4));
        let Stream::Entries(all) = reader
            .log_stream(LogOffset::SNAPSHOT_END, LogOffset::LAST)
            .await
            .unwrap()
        else {
            panic!("main log read is never pending");
        };
        assert_eq!(all.len(), 60);
        assert!(all.windows(2).all(|w| w[0].offset < w[1].offset));
        assert!(
            reader.chunk_end(LogOffset::SNAPSHOT_END).is_some(),
            "64-byte chunks: the main log has closed chunks"
        );
        let Stream::Entries(chunk0) = reader
            .log_stream(LogOffset::BEFORE_ALL, LogOffset::FIRST)
            .await
            .unwrap()
        else {
            panic!("complete snapshot");
        };
        assert!(!chunk0.is_empty());
    });
}
