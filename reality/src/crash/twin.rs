//! `MemStorage` against a real process crash: the same workload, crashed at
//! the same named crash point, once as a child process that SIGKILLs itself
//! there on a real disk, once in process on `MemStorage` (the engine parked
//! at that point and dropped, the SQLite connection kept: the simulator's
//! process kill). Both must report the same lines and recover to the same
//! [`Outcome`](super::recovery::Outcome), and both must meet the contract.
//! Each twin runs twice on its disk, so the second run boots, recovers and
//! crashes again on what the first left.

use super::recovery::{self, Ledger};
use super::store::{self, CrashMode, Points};
use engine::env::{CrashPoint, Env, MemStorage, NoEvents};
use engine::metadata::{MetaConfig, ShapeDb, SqliteConn};
use rand::RngExt as _;
use rand::SeedableRng as _;
use rand::seq::IndexedRandom as _;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// The crash points the store workload reaches.
const POINTS: [CrashPoint; 8] = [
    CrashPoint::RemoveAfterMeta,
    CrashPoint::LogFlushAfterWrite,
    CrashPoint::LogFlushAfterSync,
    CrashPoint::MetaAfterTempWrite,
    CrashPoint::MetaAfterRename,
    CrashPoint::SnapshotAfterChunk,
    CrashPoint::SnapshotBeforeComplete,
    CrashPoint::CreateBeforeMeta,
];
const STEPS: u64 = 120;

#[derive(Debug, Default)]
pub struct TwinReport {
    pub cases: usize,
    /// Runs by crash point: how many crashed there on both sides.
    pub fired: BTreeMap<String, usize>,
    /// Runs whose armed point was not reached (they ran to the end).
    pub not_fired: usize,
    pub differences: Vec<String>,
}

impl TwinReport {
    pub fn summary(&self) -> String {
        let fired: Vec<String> = self.fired.iter().map(|(p, n)| format!("{p} {n}")).collect();
        format!(
            "{} crash-point twins ({PHASES} runs each on one disk): crashed at {}; {} runs ran to the end; {} differences",
            self.cases,
            fired.join(", "),
            self.not_fired,
            self.differences.len()
        )
    }
}

/// `cases` twins from `seed`; `bin` is the `reality` binary.
pub fn twins(bin: &Path, seed: u64, cases: usize) -> TwinReport {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut report = TwinReport::default();
    for case in 0..cases {
        let workload = rng.random_range(0..u64::from(u32::MAX));
        // Two crashes on one disk: the second run boots from what the
        // first one's crash and recovery left.
        let arms: Vec<(CrashPoint, u32)> = (0..PHASES)
            .map(|_| {
                (
                    *POINTS.choose(&mut rng).expect("points"),
                    rng.random_range(0..6u32),
                )
            })
            .collect();
        let context = format!("twin {case} (workload {workload}, crashes at {arms:?})");
        report.cases += 1;
        match twin(bin, workload, &arms) {
            Ok(fired) => {
                for ((point, _), fired) in arms.iter().zip(fired) {
                    match fired {
                        true => *report.fired.entry(point.to_string()).or_default() += 1,
                        false => report.not_fired += 1,
                    }
                }
            }
            Err(difference) => report.differences.push(format!("{context}: {difference}")),
        }
    }
    report
}

/// Runs per twin, each crashed at its own point.
const PHASES: usize = 2;

/// The model side's disk and database, kept across its runs.
struct Model {
    storage: MemStorage,
    conn: SqliteConn,
}

/// One twin: per run, whether its point fired, when both sides agree.
fn twin(bin: &Path, workload: u64, arms: &[(CrashPoint, u32)]) -> Result<Vec<bool>, String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let model = Model {
        storage: MemStorage::new(),
        conn: Arc::new(Mutex::new(
            rusqlite::Connection::open_in_memory().expect("in-memory SQLite"),
        )),
    };
    let mut ledger = Ledger::default();
    let mut fired = Vec::new();
    for (run, &(point, nth)) in arms.iter().enumerate() {
        let seed = workload + run as u64;
        let (real_lines, real_fired) = real_run(bin, dir.path(), seed, point, nth)?;
        let (model_lines, model_fired) = model_run(&model, seed, point, nth);
        let at = format!("run {run}");
        if real_fired != model_fired {
            return Err(format!(
                "{at}: crashed on disk: {real_fired}, on MemStorage: {model_fired}"
            ));
        }
        if let Some(i) = (0..real_lines.len().max(model_lines.len()))
            .find(|&i| real_lines.get(i) != model_lines.get(i))
        {
            return Err(format!(
                "{at}: report {i} differs: disk {:?}, MemStorage {:?}",
                real_lines.get(i),
                model_lines.get(i)
            ));
        }
        real_lines.iter().for_each(|l| ledger.record(l));
        let real = super::recover_disk(dir.path(), &ledger, false)
            .map_err(|b| format!("{at}: {}", b.join("; ")))?;
        let storage: Arc<dyn engine::env::Storage> = Arc::new(model.storage.clone());
        let recovered = futures::executor::block_on(recovery::recover(
            &recovery::env(storage),
            model.conn.clone(),
            false,
        ));
        let breaches = recovery::check(&recovered, &ledger);
        if !breaches.is_empty() {
            return Err(format!(
                "{at}: MemStorage breaks the contract: {}",
                breaches.join("; ")
            ));
        }
        if real.outcome != recovered.outcome {
            return Err(format!(
                "{at}: recovery differs: disk {:?}, MemStorage {:?}",
                real.outcome, recovered.outcome
            ));
        }
        fired.push(real_fired);
    }
    Ok(fired)
}

/// The child on the real disk: its reports and whether it crashed.
fn real_run(
    bin: &Path,
    dir: &Path,
    seed: u64,
    point: CrashPoint,
    nth: u32,
) -> Result<(Vec<String>, bool), String> {
    let output = Command::new(bin)
        .arg("crash-child")
        .arg("--dir")
        .arg(dir)
        .args(["--seed", &seed.to_string(), "--steps", &STEPS.to_string()])
        .args(["--arm", &format!("{point}:{nth}")])
        .output()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    match (output.status.signal(), output.status.code()) {
        (Some(libc::SIGKILL), _) => Ok((lines, true)),
        (_, Some(0)) => Ok((lines, false)),
        _ => Err(format!(
            "the child failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}

/// The workload on the model's `MemStorage`, parked at the armed point and
/// dropped (the SQLite connection kept, the metadata buffer lost): its
/// reports and whether it crashed.
fn model_run(model: &Model, seed: u64, point: CrashPoint, nth: u32) -> (Vec<String>, bool) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let report: store::Report = Arc::new(move |line| sink.lock().expect("lines").push(line));
    let points = Arc::new(Points {
        report: report.clone(),
        armed: Mutex::new(Some((point, nth))),
        mode: CrashMode::Model,
        fired: Mutex::new(false),
    });
    let storage: Arc<dyn engine::env::Storage> = Arc::new(model.storage.clone());
    let env = Env {
        crash_points: points.clone(),
        events: Arc::new(NoEvents),
        ..recovery::env(storage)
    };
    let db = ShapeDb::open(model.conn.clone(), MetaConfig::default()).expect("metadata");
    let work = store::drive(&env, &db, seed, STEPS, false, &report);
    let fired = store::run_until_crash(work, &points);
    if !fired {
        report("done".to_string());
    }
    drop(db);
    model.storage.process_crash();
    let lines = lines.lock().expect("lines").clone();
    (lines, fired)
}
