//! The store workload a crash test runs: the engine's shape logs and its
//! SQLite metadata (behind the write buffer), driven by a seed, reporting
//! each thing it was told is durable.
//!
//! Every run boots first (the metadata's boot, logs opened and trimmed,
//! orphan directories removed), then makes sure [`SHAPES`] shapes exist
//! (log created, metadata add queued, snapshot written, completion queued),
//! then appends transactions, flushing logs and metadata now and then.
//! Record contents are a function of (shape slot, offset), so a reader can
//! tell a torn, corrupt or foreign record from the right one.
//!
//! Reports ([`Line`]): `durable <handle> <offset>` once a flush returned
//! that durable offset (`flushed <handle>` if none yet); `meta
//! <added|completed> <handle>` once the SQLite transaction holding it
//! committed; `flush <handle>` before a log flush, `metaflush` before a
//! metadata flush and `at <crash point>` at every crash point: where a
//! kill landed.

use engine::env::events::MetaChange;
use engine::env::{CrashPoint, CrashPoints, Env};
use engine::handle::{HandleIssuer, ShapeHandle};
use engine::log::{LogConfig, LogEntry, LogError, Operation, ShapeLog, ShapeLogWriter, Visibility};
use engine::metadata::{ShapeDb, ShapeRow};
use engine::offset::{LogOffset, OpIndex};
use engine::shape::{Shape, ShapeRequest};
use futures::future::{BoxFuture, FutureExt};
use rand::RngExt as _;
use rand::SeedableRng as _;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::Poll;

/// Shapes the workload keeps.
pub const SHAPES: usize = 3;
pub const SHAPES_DIR: &str = "shapes";
/// Rows of each snapshot.
pub const SNAPSHOT_ROWS: u64 = 40;

/// Small chunks, so chunk closes and the chunk index are exercised.
/// `no_trim_on_open` plants the bug class the crash test exists for:
/// recovery that keeps what follows the durable offset.
pub fn log_config(no_trim_on_open: bool) -> LogConfig {
    let mut config = LogConfig {
        chunk_bytes: 2_048,
        ..LogConfig::default()
    };
    config.plants.no_trim_on_open = no_trim_on_open;
    config
}

pub fn shape_dir(handle: &ShapeHandle) -> String {
    format!("{SHAPES_DIR}/{handle}")
}

/// The shape of slot `slot` (`level_4 WHERE value = 'v<slot>'`).
pub fn shape(slot: usize) -> Arc<Shape> {
    let request = ShapeRequest {
        table: "level_4".to_string(),
        where_clause: Some(format!("value = 'v{slot}'")),
        ..ShapeRequest::default()
    };
    Shape::new(&sim::standard::catalog(), &request).expect("a valid shape")
}

/// The slot a stored shape belongs to.
pub fn slot_of(row: &ShapeRow) -> usize {
    (0..SHAPES)
        .find(|&s| shape(s).comparable() == row.comparable)
        .unwrap_or_else(|| panic!("shape {} is none of the workload's", row.handle))
}

/// How many operations transaction `tx` has.
pub fn ops_in(tx: u64) -> u64 {
    1 + tx % 4
}

/// The record at `offset` of slot `slot`'s main log: its JSON.
pub fn expected_json(slot: usize, offset: LogOffset) -> String {
    let (tx, op) = tx_op(offset).expect("a main-log offset");
    let pad = "x".repeat(((tx * 7 + op * 13) % 200) as usize);
    format!("{{\"slot\":{slot},\"tx\":{tx},\"op\":{op},\"pad\":\"{pad}\"}}")
}

/// Snapshot row `i` of slot `slot`: its JSON.
pub fn snapshot_json(slot: usize, i: u64) -> String {
    format!(
        "{{\"slot\":{slot},\"row\":{i},\"pad\":\"{}\"}}",
        "y".repeat(60)
    )
}

/// A real offset's transaction and operation.
pub fn tx_op(offset: LogOffset) -> Option<(u64, u64)> {
    match offset {
        LogOffset::At {
            tx,
            op: OpIndex::At(op),
        } if tx > 0 => Some((tx, op)),
        _ => None,
    }
}

/// A report line.
pub type Line = String;

/// Where reports go: the child's stdout, or a list in process.
pub type Report = Arc<dyn Fn(Line) + Send + Sync>;

/// Reports every crash point; at the armed one's `nth` visit, crashes:
/// `Real` SIGKILLs its own process, `Model` parks the engine (its future
/// is then dropped: a kill at that await point, as in the simulator).
pub struct Points {
    pub report: Report,
    pub armed: Mutex<Option<(CrashPoint, u32)>>,
    pub mode: CrashMode,
    pub fired: Mutex<bool>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    Real,
    Model,
}

impl CrashPoints for Points {
    fn reached(&self, point: CrashPoint) -> BoxFuture<'static, ()> {
        (self.report)(format!("at {point}"));
        let mut armed = self.armed.lock().expect("armed");
        match *armed {
            Some((p, 0)) if p == point => {
                *armed = None;
                *self.fired.lock().expect("fired") = true;
                if self.mode == CrashMode::Real {
                    // SAFETY: kill and getpid have no preconditions.
                    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                    unreachable!("SIGKILL returned");
                }
                futures::future::pending().boxed()
            }
            Some((p, ref mut n)) if p == point => {
                *n -= 1;
                futures::future::ready(()).boxed()
            }
            _ => futures::future::ready(()).boxed(),
        }
    }
}

/// Runs `steps` transactions of the workload `seed` after booting.
pub async fn drive(env: &Env, db: &ShapeDb, seed: u64, steps: u64, planted: bool, report: &Report) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut logs = boot(env, db, planted).await;
    let mut issuer = HandleIssuer::default();
    for slot in 0..SHAPES {
        if let std::collections::btree_map::Entry::Vacant(vacant) = logs.entry(slot) {
            // The seed as the handle's time: every run's handles are new.
            vacant.insert(create(env, db, slot, &mut issuer, seed, report).await);
        }
    }
    flush_metadata(db, report);
    for step in 0..steps {
        let slot = rng.random_range(0..SHAPES);
        if rng.random_bool(0.02) {
            let (handle, _) = logs.remove(&slot).expect("every slot has a log");
            replace(env, db, &handle, report).await;
            let made = create(env, db, slot, &mut issuer, seed, report).await;
            logs.insert(slot, made);
        }
        let (handle, writer) = logs.get_mut(&slot).expect("every slot has a log");
        let tx = writer
            .last_committed()
            .and_then(tx_op)
            .map_or(1, |(tx, _)| tx + 1);
        for op in 0..ops_in(tx) {
            let offset = LogOffset::new(tx, op);
            let entry = LogEntry {
                offset,
                operation: Operation::Update,
                key: format!("k{op}"),
                json: expected_json(slot, offset),
            };
            writer.append(entry).await.expect("append");
        }
        writer.commit().expect("commit");
        if rng.random_bool(0.3) {
            report(format!("flush {handle}"));
            match writer.flush().await.expect("flush") {
                Some(durable) => report(format!("durable {handle} {durable}")),
                None => report(format!("flushed {handle}")),
            }
        }
        if step % 16 == 15 {
            flush_metadata(db, report);
        }
    }
}

/// Boot as the stack does it for these shapes: incomplete shapes and
/// orphan directories removed, every other log opened (trimmed).
async fn boot(
    env: &Env,
    db: &ShapeDb,
    planted: bool,
) -> BTreeMap<usize, (ShapeHandle, ShapeLogWriter)> {
    env.storage
        .create_dir_all(SHAPES_DIR)
        .await
        .expect("shapes dir");
    let (rows, deleted) = db.boot(0).expect("metadata boot");
    for handle in deleted {
        ShapeLog::remove(env, &shape_dir(&handle))
            .await
            .expect("remove an incomplete shape");
    }
    let mut logs = BTreeMap::new();
    let mut kept = Vec::new();
    for row in &rows {
        match ShapeLog::open(env, &shape_dir(&row.handle), log_config(planted)).await {
            Ok(writer) => {
                logs.insert(slot_of(row), (row.handle.clone(), writer));
                kept.push(row.handle.to_string());
            }
            // A removal whose metadata removal was lost: drop the row.
            Err(LogError::Missing(_)) => db.remove_shape(&row.handle),
            Err(e) => panic!("open the log of {}: {e}", row.handle),
        }
    }
    for name in env.storage.list(SHAPES_DIR).await.expect("list") {
        if !kept.contains(&name) {
            env.storage
                .remove_dir_all(&format!("{SHAPES_DIR}/{name}"))
                .await
                .expect("remove an orphan");
        }
    }
    env.storage.sync_dir(SHAPES_DIR).await.expect("sync");
    logs
}

async fn create(
    env: &Env,
    db: &ShapeDb,
    slot: usize,
    issuer: &mut HandleIssuer,
    now_ms: u64,
    report: &Report,
) -> (ShapeHandle, ShapeLogWriter) {
    let shape = shape(slot);
    let handle = issuer.issue(&shape.hash(), now_ms);
    let mut writer = ShapeLog::create(env, &shape_dir(&handle), log_config(false))
        .await
        .expect("create a log");
    db.add_shape(ShapeRow {
        handle: handle.clone(),
        request: shape.to_request(),
        comparable: shape.comparable().to_string(),
        hash: shape.hash(),
        oid: shape.table.oid,
        snapshot_complete: false,
    })
    .await;
    let visibility = Visibility {
        xmin: 10,
        xmax: 10,
        xip_list: Vec::new(),
        wal_lsn: 0,
    };
    writer.start_snapshot(visibility).await.expect("snapshot");
    for i in 0..SNAPSHOT_ROWS {
        writer
            .append_snapshot_row(Operation::Insert, format!("r{i}"), snapshot_json(slot, i))
            .await
            .expect("snapshot row");
    }
    writer.finish_snapshot().await.expect("finish snapshot");
    db.mark_snapshot_complete(&handle).await;
    report(format!("created {handle}"));
    (handle, writer)
}

/// Removes a shape as the engine does: its storage (the log's metadata
/// durably first), then its metadata row (queued).
async fn replace(env: &Env, db: &ShapeDb, handle: &ShapeHandle, report: &Report) {
    report(format!("removing {handle}"));
    ShapeLog::remove(env, &shape_dir(handle))
        .await
        .expect("remove a log");
    db.remove_shape(handle);
}

/// Applies the metadata buffer; reports what each committed batch holds.
fn flush_metadata(db: &ShapeDb, report: &Report) {
    report("metaflush".to_string());
    while db.pending() > 0 {
        for change in db.flush_batch().expect("metadata flush") {
            report(match change {
                MetaChange::Added(h) => format!("meta added {h}"),
                MetaChange::SnapshotCompleted(h) => format!("meta completed {h}"),
                MetaChange::Removed(h) => format!("meta removed {h}"),
            });
        }
    }
    report("metaflushed".to_string());
}

/// Polls `work` until it finishes or the armed crash point fired (then
/// drops it, as a kill drops every task at its await point).
pub fn run_until_crash(work: impl Future<Output = ()>, points: &Points) -> bool {
    let mut work = std::pin::pin!(work);
    futures::executor::block_on(std::future::poll_fn(|cx| match work.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(false),
        Poll::Pending if *points.fired.lock().expect("fired") => Poll::Ready(true),
        Poll::Pending => Poll::Pending,
    }))
}
