//! Shape log tests: the crash property test against a simple model, and unit
//! tests that pin down each rule of the contract on small examples.

use super::*;
use crate::env::{
    ArmedCrashPoints, Clock, CrashPoint, Env, ManualClock, MemStorage, PowerLoss, Spawner,
};
use crate::offset::LogOffset;
use futures::FutureExt;
use futures::future::BoxFuture;
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

/// What the crash test exercised, so that a degenerate generator is noticed.
#[derive(Default, Debug)]
struct Coverage {
    parked_at: BTreeSet<CrashPoint>,
    reopens: u64,
    tails_cut: u64,
    txns_lost_to_power: u64,
    max_main_chunks: usize,
    max_snapshot_chunks: u64,
}

thread_local! {
    static COVERAGE: RefCell<Coverage> = RefCell::new(Coverage::default());
}

struct NoSpawner;

impl Spawner for NoSpawner {
    fn spawn(&self, name: &'static str, _task: BoxFuture<'static, ()>) {
        panic!("the shape log spawns no task, yet {name} was spawned");
    }
}

struct World {
    storage: MemStorage,
    clock: ManualClock,
    crash: ArmedCrashPoints,
    env: Env,
}

impl World {
    fn new() -> World {
        let (storage, clock, crash) = (
            MemStorage::new(),
            ManualClock::new(1_000),
            ArmedCrashPoints::default(),
        );
        let env = Env {
            clock: Arc::new(clock.clone()),
            storage: Arc::new(storage.clone()),
            spawner: Arc::new(NoSpawner),
            crash_points: Arc::new(crash.clone()),
            events: Arc::new(crate::env::NoEvents),
        };
        now(env.storage.create_dir_all("shapes")).unwrap();
        now(env.storage.sync_dir("")).unwrap();
        World {
            storage,
            clock,
            crash,
            env,
        }
    }
}

/// Runs a future that must complete at once: the in-memory storage never
/// waits, so only an armed crash point can park it.
fn now<T>(future: impl Future<Output = T>) -> T {
    future
        .now_or_never()
        .expect("parked although no crash point was armed")
}

const DIR: &str = "shapes/s1";

fn entries(stream: Stream) -> Vec<Arc<LogEntry>> {
    match stream {
        Stream::Entries(entries) => entries,
        Stream::SnapshotChunkPending(n) => panic!("snapshot chunk {n} pending"),
    }
}

// ----- the model ------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    offset: LogOffset,
    operation: Operation,
    key: String,
    json: String,
}

impl Rec {
    fn of(entry: &LogEntry) -> Rec {
        Rec {
            offset: entry.offset,
            operation: entry.operation,
            key: entry.key.clone(),
            json: entry.json.clone(),
        }
    }

    fn entry(&self) -> LogEntry {
        LogEntry {
            offset: self.offset,
            operation: self.operation,
            key: self.key.clone(),
            json: self.json.clone(),
        }
    }
}

/// What the log must contain: committed transactions, the open one, and how
/// many transactions are known durable. Chunk boundaries are recomputed from
/// the records alone, independently of the engine.
struct Model {
    chunk_bytes: u64,
    snapshot: Vec<Rec>,
    committed: Vec<Vec<Rec>>,
    open: Vec<Rec>,
    next_lsn: u64,
    counter: u64,
    durable_txns: usize,
}

impl Model {
    fn new(chunk_bytes: u64) -> Model {
        Model {
            chunk_bytes,
            snapshot: Vec::new(),
            committed: Vec::new(),
            open: Vec::new(),
            next_lsn: 1,
            counter: 0,
            durable_txns: 0,
        }
    }

    fn record(&mut self, offset: LogOffset, json_len: usize) -> Rec {
        self.counter += 1;
        let n = self.counter;
        let operation = [Operation::Insert, Operation::Update, Operation::Delete][n as usize % 3];
        let json = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(json_len));
        Rec {
            offset,
            operation,
            key: format!("\"public\".\"t\"/\"{n}\""),
            json,
        }
    }

    fn next_main_record(&mut self, json_len: usize) -> Rec {
        if self.open.is_empty() {
            self.next_lsn += 1 + self.counter % 3;
        }
        let offset = LogOffset::new(self.next_lsn, 2 * self.open.len() as u64);
        let rec = self.record(offset, json_len);
        self.open.push(rec.clone());
        rec
    }

    fn commit(&mut self) {
        if !self.open.is_empty() {
            self.committed.push(std::mem::take(&mut self.open));
        }
    }

    fn committed_flat(&self) -> impl Iterator<Item = &Rec> {
        self.committed.iter().flatten()
    }

    fn last_committed(&self) -> Option<LogOffset> {
        self.committed
            .last()
            .and_then(|t| t.last())
            .map(|r| r.offset)
    }

    /// Last offsets of closed chunks: a chunk closes at the record that makes
    /// its JSON bytes reach `chunk_bytes`.
    fn boundaries<'a>(&self, records: impl Iterator<Item = &'a Rec>) -> Vec<LogOffset> {
        let mut acc = 0;
        let mut ends = Vec::new();
        for rec in records {
            acc += rec.json.len() as u64;
            if acc >= self.chunk_bytes {
                ends.push(rec.offset);
                acc = 0;
            }
        }
        ends
    }

    /// Main-log chunk ends a reader may see: closed, and committed.
    fn visible_boundaries(&self) -> Vec<LogOffset> {
        let last = self.last_committed();
        let ends = self.boundaries(self.committed_flat().chain(self.open.iter()));
        ends.into_iter().filter(|e| Some(*e) <= last).collect()
    }

    /// Number of the snapshot's last chunk: the one holding the last rows, or
    /// chunk 0 for an empty snapshot.
    fn snapshot_last_chunk(&self) -> u64 {
        let (mut acc, mut closed) = (0, 0);
        for rec in &self.snapshot {
            acc += rec.json.len() as u64;
            if acc >= self.chunk_bytes {
                (acc, closed) = (0, closed + 1);
            }
        }
        if acc > 0 || closed == 0 {
            closed
        } else {
            closed - 1
        }
    }

    fn observe_durable(&mut self, durable: Option<LogOffset>) {
        let k = match durable {
            None => 0,
            Some(d) => {
                let found = self
                    .committed
                    .iter()
                    .position(|t| t.last().map(|r| r.offset) == Some(d));
                found.unwrap_or_else(|| {
                    panic!("durable offset {d} is not the end of a committed transaction")
                }) + 1
            }
        };
        assert!(
            k >= self.durable_txns,
            "durable offset went backwards: {k} < {}",
            self.durable_txns
        );
        self.durable_txns = k;
    }
}

/// Reads the whole log the way a client does (from `-1`, following chunk
/// ends) and checks every step against the model.
fn check_client_walk(reader: &ShapeLogReader, model: &Model) {
    let latest = model.last_committed().unwrap_or(LogOffset::SNAPSHOT_END);
    assert_eq!(reader.latest_offset(), latest, "latest offset");
    let mut offset = LogOffset::BEFORE_ALL;
    let mut got = Vec::new();
    let mut ends = Vec::new();
    loop {
        let end = reader.chunk_end(offset).unwrap_or(latest);
        assert!(
            end > offset,
            "chunk end {end} does not advance past {offset}"
        );
        let batch = entries(now(reader.log_stream(offset, end)).unwrap());
        for e in &batch {
            assert!(
                !e.offset.is_real() || (e.offset > offset && e.offset <= end),
                "{} outside ({offset}, {end}]",
                e.offset
            );
        }
        got.extend(batch.iter().map(|e| Rec::of(e)));
        ends.push(end);
        if offset != LogOffset::BEFORE_ALL && end >= latest {
            break;
        }
        offset = end;
        assert!(ends.len() < 100_000, "the walk does not terminate");
    }
    let want: Vec<Rec> = model
        .snapshot
        .iter()
        .chain(model.committed_flat())
        .cloned()
        .collect();
    assert_eq!(
        got, want,
        "a client walking the log sees exactly the snapshot and the committed transactions"
    );

    let last_chunk = model.snapshot_last_chunk();
    let mut want_ends: Vec<LogOffset> = (0..=last_chunk).map(LogOffset::snapshot_chunk).collect();
    want_ends.extend(model.visible_boundaries());
    if want_ends.last() != Some(&latest) {
        want_ends.push(latest);
    }
    assert_eq!(ends, want_ends, "chunk ends");
}

/// `chunk_end` and `log_stream` from one point of the log, against the model.
fn check_from(reader: &ShapeLogReader, model: &Model, from_pick: usize, to_pick: usize) {
    let offsets: Vec<LogOffset> = std::iter::once(LogOffset::SNAPSHOT_END)
        .chain(model.committed_flat().map(|r| r.offset))
        .collect();
    let from = offsets[from_pick % offsets.len()];
    let up_to = offsets[to_pick % offsets.len()];
    let want_end = model.visible_boundaries().into_iter().find(|b| *b > from);
    assert_eq!(reader.chunk_end(from), want_end, "chunk_end({from})");
    let got: Vec<Rec> = entries(now(reader.log_stream(from, up_to)).unwrap())
        .iter()
        .map(|e| Rec::of(e))
        .collect();
    let want: Vec<Rec> = model
        .committed_flat()
        .filter(|r| r.offset > from && r.offset <= up_to)
        .cloned()
        .collect();
    assert_eq!(got, want, "log_stream({from}, {up_to})");
}

// ----- the crash property test ----------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Append {
        json_len: usize,
    },
    Commit,
    Flush,
    Tick {
        ms: u64,
    },
    Read {
        from_pick: usize,
        to_pick: usize,
    },
    Crash {
        point: Option<CrashPoint>,
        during_append: bool,
        power: Option<PowerLoss>,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let point = prop_oneof![
        3 => Just(None),
        1 => Just(Some(CrashPoint::LogFlushAfterWrite)),
        1 => Just(Some(CrashPoint::LogFlushAfterSync)),
        1 => Just(Some(CrashPoint::MetaAfterTempWrite)),
        1 => Just(Some(CrashPoint::MetaAfterRename)),
    ];
    let power = prop_oneof![
        2 => Just(None),
        1 => Just(Some(PowerLoss::DropUnsynced)),
        2 => any::<u64>().prop_map(|seed| Some(PowerLoss::Torn { seed })),
    ];
    prop_oneof![
        12 => (0usize..60).prop_map(|json_len| Op::Append { json_len }),
        5 => Just(Op::Commit),
        1 => Just(Op::Flush),
        2 => (0u64..1_500).prop_map(|ms| Op::Tick { ms }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(from_pick, to_pick)| Op::Read { from_pick, to_pick }),
        2 => (point, any::<bool>(), power).prop_map(|(point, during_append, power)| Op::Crash { point, during_append, power }),
    ]
}

fn run_case(config: LogConfig, snapshot_rows: Vec<usize>, ops: Vec<Op>) {
    let world = World::new();
    let mut model = Model::new(config.chunk_bytes);
    let mut writer = now(ShapeLog::create(&world.env, DIR, config)).unwrap();
    now(writer.start_snapshot(Visibility {
        xmin: 10,
        xmax: 12,
        xip_list: vec![11],
        wal_lsn: 0,
    }))
    .unwrap();
    let mut acc = 0;
    let mut chunk = 0;
    for json_len in snapshot_rows {
        let rec = model.record(LogOffset::snapshot_chunk(chunk), json_len);
        acc += rec.json.len() as u64;
        if acc >= config.chunk_bytes {
            (acc, chunk) = (0, chunk + 1);
        }
        now(writer.append_snapshot_row(rec.operation, rec.key.clone(), rec.json.clone())).unwrap();
        model.snapshot.push(rec);
    }
    assert_eq!(
        now(writer.finish_snapshot()).unwrap(),
        model.snapshot_last_chunk()
    );

    for op in ops {
        match op {
            Op::Append { json_len } => {
                let rec = model.next_main_record(json_len);
                now(writer.append(rec.entry())).unwrap();
            }
            Op::Commit => {
                let want = model.open.last().map(|r| r.offset);
                model.commit();
                assert_eq!(writer.commit().unwrap(), want);
            }
            Op::Flush => {
                let durable = now(writer.flush()).unwrap();
                assert_eq!(
                    durable,
                    model.last_committed(),
                    "an explicit flush makes every commit durable"
                );
            }
            Op::Tick { ms } => {
                world.clock.advance_ms(ms);
                now(writer.flush_if_due()).unwrap();
                let deadline = writer.flush_deadline_ms();
                assert!(
                    deadline.is_none_or(|d| d > world.clock.now_ms()),
                    "a due flush did not happen"
                );
            }
            Op::Read { from_pick, to_pick } => {
                check_from(&writer.reader(), &model, from_pick, to_pick)
            }
            Op::Crash {
                point,
                during_append,
                power,
            } => {
                let committed_at_crash = model.committed.len();
                let mut parked_at = None;
                if let Some(point) = point {
                    world.crash.arm(point, 0);
                    let completed = if during_append {
                        let rec = model.next_main_record(40);
                        writer
                            .append(rec.entry())
                            .now_or_never()
                            .map(|r| r.unwrap())
                    } else {
                        writer.flush().now_or_never().map(|r| {
                            r.unwrap();
                        })
                    };
                    world.crash.disarm();
                    if completed.is_some() {
                        model.observe_durable(writer.durable_offset());
                    } else {
                        parked_at = world.crash.fired();
                    }
                }
                // The kill: every in-process structure is dropped.
                drop(writer);
                world.storage.process_crash();
                if let Some(policy) = power {
                    world.storage.power_loss(policy);
                }
                let len_before = now(world.env.storage.size("shapes/s1/log")).unwrap();
                writer = now(ShapeLog::open(&world.env, DIR, config))
                    .unwrap_or_else(|e| panic!("reopen failed: {e}"));
                let len_after = now(world.env.storage.size("shapes/s1/log")).unwrap();

                // Which transactions survived is decided by the metadata rename.
                let renamed = parked_at == Some(CrashPoint::MetaAfterRename);
                let most = if renamed {
                    committed_at_crash
                } else {
                    model.durable_txns
                };
                let least = if power.is_some() {
                    model.durable_txns
                } else {
                    most
                };
                let latest = writer.reader().latest_offset();
                let survived = if latest == LogOffset::SNAPSHOT_END {
                    0
                } else {
                    let pos = model
                        .committed
                        .iter()
                        .position(|t| t.last().map(|r| r.offset) == Some(latest));
                    pos.unwrap_or_else(|| {
                        panic!("reopened log ends at {latest}, not at a committed transaction")
                    }) + 1
                };
                assert!(
                    (least..=most).contains(&survived),
                    "{survived} transactions survived; expected {least}..={most} (parked at {parked_at:?}, power {power:?})"
                );
                COVERAGE.with_borrow_mut(|c| {
                    c.parked_at.extend(parked_at);
                    c.reopens += 1;
                    c.tails_cut += u64::from(len_after < len_before);
                    c.txns_lost_to_power += (committed_at_crash - survived) as u64;
                });
                model.committed.truncate(survived);
                model.open.clear();
                model.durable_txns = survived;
                assert_eq!(
                    writer.durable_offset(),
                    model.last_committed(),
                    "after reopen, all that is left is durable"
                );
            }
        }
        model.observe_durable(writer.durable_offset());
    }
    check_client_walk(&writer.reader(), &model);
    COVERAGE.with_borrow_mut(|c| {
        c.max_main_chunks = c.max_main_chunks.max(model.visible_boundaries().len());
        c.max_snapshot_chunks = c.max_snapshot_chunks.max(model.snapshot_last_chunk() + 1);
    });

    // Finally, a clean reopen must give back exactly the durable transactions.
    now(writer.flush()).unwrap();
    model.observe_durable(writer.durable_offset());
    drop(writer);
    world.storage.power_loss(PowerLoss::DropUnsynced);
    let writer = now(ShapeLog::open(&world.env, DIR, config)).unwrap();
    model.open.clear();
    check_client_walk(&writer.reader(), &model);
}

fn config_strategy() -> impl Strategy<Value = LogConfig> {
    (40u64..400, 60u64..3_000).prop_map(|(chunk_bytes, buffer_bytes)| LogConfig {
        chunk_bytes,
        buffer_bytes,
        ..LogConfig::default()
    })
}

proptest! {
    #![proptest_config(crate::testing::proptest_config(1_000))]

    /// Random appends, commits, flushes, timer ticks, process crashes (also at
    /// every flush crash point) and power losses (dropped or torn unsynced
    /// data): after each reopen the log is exactly the committed transactions
    /// up to the last durable one, and reads agree with the model.
    #[test]
    fn log_survives_crashes_exactly_as_the_contract_says(
        config in config_strategy(),
        snapshot_rows in prop::collection::vec(0usize..50, 0..12),
        ops in prop::collection::vec(op_strategy(), 1..80),
    ) {
        run_case(config, snapshot_rows, ops);
    }
}

/// The crash test must actually reach the states it is about: a kill at every
/// flush crash point, tails cut at reopen, transactions lost to power
/// failures, many chunks.
#[test]
fn the_crash_test_reaches_every_interesting_state() {
    let strategy = (
        config_strategy(),
        prop::collection::vec(0usize..50, 0..12),
        prop::collection::vec(op_strategy(), 1..80),
    );
    let mut runner = proptest::test_runner::TestRunner::new(crate::testing::proptest_config(300));
    runner
        .run(&strategy, |(config, rows, ops)| {
            run_case(config, rows, ops);
            Ok(())
        })
        .unwrap();
    COVERAGE.with_borrow(|c| {
        let flush_points = [
            CrashPoint::LogFlushAfterWrite,
            CrashPoint::LogFlushAfterSync,
            CrashPoint::MetaAfterTempWrite,
            CrashPoint::MetaAfterRename,
        ];
        assert!(
            flush_points.iter().all(|p| c.parked_at.contains(p)),
            "{c:?}"
        );
        assert!(
            c.reopens > 300 && c.tails_cut > 50 && c.txns_lost_to_power > 20,
            "{c:?}"
        );
        assert!(
            c.max_main_chunks >= 10 && c.max_snapshot_chunks >= 3,
            "{c:?}"
        );
        eprintln!("{c:?}");
    });
}

#[path = "unit_tests.rs"]
mod unit_tests;
