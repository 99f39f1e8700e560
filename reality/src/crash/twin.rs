//! `MemStorage` against a real process crash: the same workload, crashed at
//! the same named crash point, once as a child process that SIGKILLs itself
//! there on a real disk, once in process on `MemStorage` (the engine parked
//! at that point and dropped, the SQLite connection kept: the simulator's
//! process kill). Both must report the same lines and recover to the same
//! [`Outcome`](super::recovery::Outcome), and both must meet the contract.

use super::recovery::{self, Ledger};
use super::store::{self, CrashMode, Points};
use engine::env::{CrashPoint, Env, MemStorage, NoEvents};
use engine::metadata::{MetaConfig, ShapeDb};
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
    /// Cases by crash point: how many fired (crashed) on both sides.
    pub fired: BTreeMap<String, usize>,
    pub not_fired: usize,
    pub differences: Vec<String>,
}

impl TwinReport {
    pub fn summary(&self) -> String {
        let fired: Vec<String> = self.fired.iter().map(|(p, n)| format!("{p} {n}")).collect();
        format!(
            "{} crash-point twins: crashed at {}; {} ran to the end; {} differences",
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
        let point = *POINTS.choose(&mut rng).expect("points");
        let nth = rng.random_range(0..6u32);
        let workload = rng.random_range(0..u64::from(u32::MAX));
        let context = format!("twin {case} (workload {workload}, {point} visit {nth})");
        report.cases += 1;
        match twin(bin, workload, point, nth) {
            Ok(true) => *report.fired.entry(point.to_string()).or_default() += 1,
            Ok(false) => report.not_fired += 1,
            Err(difference) => report.differences.push(format!("{context}: {difference}")),
        }
    }
    report
}

/// One twin: Ok(whether the point fired) when both sides agree.
fn twin(bin: &Path, workload: u64, point: CrashPoint, nth: u32) -> Result<bool, String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = Command::new(bin)
        .arg("crash-child")
        .arg("--dir")
        .arg(dir.path())
        .args([
            "--seed",
            &workload.to_string(),
            "--steps",
            &STEPS.to_string(),
        ])
        .args(["--arm", &format!("{point}:{nth}")])
        .output()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let real_lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let real_fired = match (output.status.signal(), output.status.code()) {
        (Some(libc::SIGKILL), _) => true,
        (_, Some(0)) => false,
        _ => {
            return Err(format!(
                "the child failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    };
    let (model_lines, model_fired, model) = model_run(workload, point, nth);
    if real_fired != model_fired {
        return Err(format!(
            "crashed on disk: {real_fired}, on MemStorage: {model_fired}"
        ));
    }
    if let Some(i) = (0..real_lines.len().max(model_lines.len()))
        .find(|&i| real_lines.get(i) != model_lines.get(i))
    {
        return Err(format!(
            "report {i} differs: disk {:?}, MemStorage {:?}",
            real_lines.get(i),
            model_lines.get(i)
        ));
    }
    let mut ledger = Ledger::default();
    real_lines.iter().for_each(|l| ledger.record(l));
    let real = super::recover_disk(dir.path(), &ledger, false).map_err(|b| b.join("; "))?;
    let breaches = recovery::check(&model, &ledger);
    if !breaches.is_empty() {
        return Err(format!(
            "MemStorage breaks the contract: {}",
            breaches.join("; ")
        ));
    }
    if real.outcome != model.outcome {
        return Err(format!(
            "recovery differs: disk {:?}, MemStorage {:?}",
            real.outcome, model.outcome
        ));
    }
    Ok(real_fired)
}

/// The workload on `MemStorage`, parked at the armed point and dropped,
/// then recovered: its reports, whether it crashed, what recovery found.
fn model_run(
    workload: u64,
    point: CrashPoint,
    nth: u32,
) -> (Vec<String>, bool, recovery::Recovered) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let report: store::Report = Arc::new(move |line| sink.lock().expect("lines").push(line));
    let points = Arc::new(Points {
        report: report.clone(),
        armed: Mutex::new(Some((point, nth))),
        mode: CrashMode::Model,
        fired: Mutex::new(false),
    });
    let mem = MemStorage::new();
    let storage: Arc<dyn engine::env::Storage> = Arc::new(mem.clone());
    let env = Env {
        crash_points: points.clone(),
        events: Arc::new(NoEvents),
        ..recovery::env(storage.clone())
    };
    let conn = Arc::new(Mutex::new(
        rusqlite::Connection::open_in_memory().expect("in-memory SQLite"),
    ));
    let db = ShapeDb::open(conn.clone(), MetaConfig::default()).expect("metadata");
    let fired = store::run_until_crash(
        store::drive(&env, &db, workload, STEPS, false, &report),
        &points,
    );
    if !fired {
        report("done".to_string());
    }
    // The kill: the engine's tasks and the metadata buffer are gone; the
    // disk and the SQLite database (a committed transaction) remain.
    drop(db);
    mem.process_crash();
    let recovered =
        futures::executor::block_on(recovery::recover(&recovery::env(storage), conn, false));
    let lines = lines.lock().expect("lines").clone();
    (lines, fired, recovered)
}
