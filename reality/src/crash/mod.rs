//! Real crashes on a real disk. A child process (`reality crash-child`)
//! runs the store workload ([`store`]) on `sim::disk::DiskStorage` (real
//! files, real fsync) and a SQLite file, reporting on stdout what it was
//! told is durable; the parent SIGKILLs it at a seeded but real moment,
//! recovers on the same disk and checks the recovery contract
//! ([`recovery::check`]): nothing reported durable lost, no partial
//! transaction, no torn or foreign record read back, metadata consistent
//! with storage. Kills accumulate on one disk: each child recovers what the
//! previous one left.
//!
//! [`twin`] checks `MemStorage` against the same: a child that kills itself
//! at a named crash point, and the same workload in process on
//! `MemStorage` parked at that point, must recover to the same outcome.

pub mod recovery;
pub mod store;
pub mod twin;

use engine::env::{CrashPoint, Env, NoEvents};
use engine::metadata::{MetaConfig, ShapeDb};
use rand::RngExt as _;
use rand::SeedableRng as _;
use rand_chacha::ChaCha8Rng;
use recovery::Ledger;
use sim::disk::DiskStorage;
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use store::{CrashMode, Points};

/// The child process: the workload on `dir`, reports on stdout.
pub fn child_main(
    dir: &Path,
    seed: u64,
    steps: u64,
    arm: Option<(CrashPoint, u32)>,
    planted: bool,
) {
    let report: store::Report = Arc::new(|line| println!("{line}"));
    let points = Arc::new(Points {
        report: report.clone(),
        armed: Mutex::new(arm),
        mode: CrashMode::Real,
        fired: Mutex::new(false),
    });
    let (env, db) = open_disk(dir, points);
    futures::executor::block_on(store::drive(&env, &db, seed, steps, planted, &report));
    println!("done");
}

/// The engine's environment and metadata on `dir` (`storage/`, `meta.db`).
fn open_disk(dir: &Path, points: Arc<Points>) -> (Env, ShapeDb) {
    let root = dir.join("storage");
    std::fs::create_dir_all(&root).expect("storage root");
    let storage = Arc::new(DiskStorage::new(&root).expect("disk storage"));
    let env = Env {
        crash_points: points,
        events: Arc::new(NoEvents),
        ..recovery::env(storage)
    };
    let conn = rusqlite::Connection::open(dir.join("meta.db")).expect("metadata file");
    let db = ShapeDb::open(Arc::new(Mutex::new(conn)), MetaConfig::default()).expect("metadata");
    (env, db)
}

/// Recovers `dir` in this process (as the next child would) and checks it.
fn recover_disk(
    dir: &Path,
    ledger: &Ledger,
    planted: bool,
) -> Result<recovery::Recovered, Vec<String>> {
    let storage = Arc::new(DiskStorage::new(dir.join("storage")).expect("disk storage"));
    let env = recovery::env(storage);
    let conn = rusqlite::Connection::open(dir.join("meta.db")).expect("metadata file");
    let conn = Arc::new(Mutex::new(conn));
    let recovered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        futures::executor::block_on(recovery::recover(&env, conn, planted))
    }))
    .map_err(|panic| vec![format!("recovery failed: {}", crate::panic_text(&panic))])?;
    let breaches = recovery::check(&recovered, ledger);
    match breaches.is_empty() {
        true => Ok(recovered),
        false => Err(breaches),
    }
}

#[derive(Debug, Default)]
pub struct KillReport {
    pub kills: usize,
    /// Where the kills landed, by what the child reported last.
    pub landed: BTreeMap<&'static str, usize>,
    /// Per landing place: kills after which recovery cut something, and
    /// the bytes it cut (log, chunk index).
    pub cuts: BTreeMap<&'static str, (usize, u64, u64)>,
    /// Durable offsets reported, and records read back and checked.
    pub durable_reports: usize,
    pub records_checked: usize,
    /// Lost metadata adds (orphan directories), lost completions and lost
    /// metadata removals (rows without a log).
    pub orphans: usize,
    pub incomplete: usize,
    pub missing: usize,
    pub breaches: Vec<String>,
}

impl KillReport {
    pub fn summary(&self) -> String {
        let landed: Vec<String> = self
            .landed
            .iter()
            .map(|(place, n)| {
                let (cut, log, index) = self.cuts.get(place).copied().unwrap_or_default();
                format!(
                    "{n} {place} (recovery cut {cut} times: {log} log bytes, {index} index bytes)"
                )
            })
            .collect();
        format!(
            "{} SIGKILLs: {}; {} durable offsets reported, {} records read back and checked, {} orphan directories, {} incomplete shapes dropped, {} rows of removed logs; {} breaches",
            self.kills,
            landed.join("; "),
            self.durable_reports,
            self.records_checked,
            self.orphans,
            self.incomplete,
            self.missing,
            self.breaches.len()
        )
    }
}

/// `kills` rounds on one disk: a child runs the workload, the parent
/// SIGKILLs it after a seeded number of reports and a seeded delay, then
/// recovers and checks. `bin` is the `reality` binary; `planted` runs
/// recovery with the `no-trim-on-open` plant (the check must then fail).
pub fn random_kills(bin: &Path, seed: u64, kills: usize, planted: bool) -> KillReport {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ledger = Ledger::default();
    let mut report = KillReport::default();
    for round in 0..kills {
        let child_seed = seed.wrapping_mul(1_000_003).wrapping_add(round as u64 + 1);
        let wait_lines = rng.random_range(2..120);
        let delay_us = rng.random_range(0..3_000);
        let child = Child {
            bin,
            dir: dir.path(),
            seed: child_seed,
            planted,
        };
        let (lines, killed) = child.run(wait_lines, delay_us);
        let place = landed(&lines);
        let context = format!("kill {round} (child seed {child_seed}, landed {place})");
        if let Err(ended) = killed {
            report.breaches.push(format!(
                "{context}: the child ended before the kill ({ended})"
            ));
        }
        for line in &lines {
            ledger.record(line);
        }
        report.durable_reports += lines.iter().filter(|l| l.starts_with("durable ")).count();
        report.kills += 1;
        *report.landed.entry(place).or_default() += 1;
        match recover_disk(dir.path(), &ledger, planted) {
            Ok(recovered) => {
                let (log, index) = recovered
                    .outcome
                    .shapes
                    .values()
                    .fold((0, 0), |(l, i), s| (l + s.3, i + s.4));
                if log + index > 0 {
                    let cut = report.cuts.entry(place).or_default();
                    *cut = (cut.0 + 1, cut.1 + log, cut.2 + index);
                }
                report.records_checked +=
                    recovered.entries.values().map(|e| e.1.len()).sum::<usize>();
                report.orphans += recovered.outcome.orphans.len();
                report.incomplete += recovered.outcome.incomplete.len();
                report.missing += recovered.outcome.missing.len();
            }
            Err(breaches) => report
                .breaches
                .extend(breaches.into_iter().map(|b| format!("{context}: {b}"))),
        }
    }
    report
}

/// The `no-trim-on-open` plant, deterministically: a child SIGKILLs itself
/// at its `nth` visit of `log.flush.after_write` (a flush's data written
/// past the durable offset); a second child recovers with the plant and
/// runs `steps` transactions on; then recovery and its check. Returns the
/// breaches found (the check must find some).
pub fn planted_crash(bin: &Path, nth: u32, steps: u64) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut ledger = Ledger::default();
    let mut breaches = Vec::new();
    let arm = format!("{}:{nth}", CrashPoint::LogFlushAfterWrite);
    for (seed, steps, arm) in [(1, 1_000_000, Some(arm)), (2, steps, None)] {
        let mut command = Command::new(bin);
        command
            .arg("crash-child")
            .arg("--dir")
            .arg(dir.path())
            .args(["--seed", &seed.to_string(), "--steps", &steps.to_string()])
            .arg("--plant-no-trim-on-open");
        if let Some(arm) = &arm {
            command.args(["--arm", arm]);
        }
        let output = command.output().expect("run the child");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .for_each(|l| ledger.record(l));
        if !output.status.success() && output.status.signal() != Some(libc::SIGKILL) {
            breaches.push(format!("child {seed} failed: {}", output.status));
        }
    }
    if let Err(found) = recover_disk(dir.path(), &ledger, true) {
        breaches.extend(found);
    }
    breaches
}

struct Child<'a> {
    bin: &'a Path,
    dir: &'a Path,
    seed: u64,
    planted: bool,
}

impl Child<'_> {
    /// Runs the child; SIGKILLs it once it reported `wait_lines` lines and
    /// `delay_us` more passed. Returns every line it reported and whether
    /// the kill ended it (else how it ended).
    fn run(&self, wait_lines: usize, delay_us: u64) -> (Vec<String>, Result<(), String>) {
        let mut command = Command::new(self.bin);
        command.arg("crash-child").arg("--dir").arg(self.dir).args([
            "--seed",
            &self.seed.to_string(),
            "--steps",
            "1000000",
        ]);
        if self.planted {
            command.arg("--plant-no-trim-on-open");
        }
        kill_after(command, wait_lines, delay_us)
    }
}

/// How long a child may go without a report before the run is a failure.
const SILENCE_LIMIT: Duration = Duration::from_secs(60);

fn kill_after(
    mut command: Command,
    wait_lines: usize,
    delay_us: u64,
) -> (Vec<String>, Result<(), String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            // A read error is a line too: the ledger must not end silently.
            let line = line.unwrap_or_else(|e| format!("unreadable report: {e}"));
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Drained as it comes: a child that fills the pipe must not stall.
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr_pipe, &mut text).map(|_| text)
    });
    let mut lines = Vec::new();
    let mut silent = false;
    while lines.len() < wait_lines {
        match rx.recv_timeout(SILENCE_LIMIT) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                silent = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    std::thread::sleep(Duration::from_micros(delay_us));
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("wait for the child");
    reader.join().expect("the reader thread");
    lines.extend(rx.try_iter());
    let stderr = stderr
        .join()
        .expect("the stderr thread")
        .unwrap_or_else(|e| format!("unreadable stderr: {e}"));
    let first = stderr.lines().take(3).collect::<Vec<_>>().join(" / ");
    let killed = match (status.signal(), silent) {
        (_, true) => Err(format!("silent for {SILENCE_LIMIT:?}; {first}")),
        (Some(libc::SIGKILL), false) => Ok(()),
        _ => Err(format!("{status}: {first}")),
    };
    (lines, killed)
}

/// Where a kill landed: the state the child's last reports put it in.
fn landed(lines: &[String]) -> &'static str {
    let mut place = "outside any flush";
    for line in lines {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        place = match (word, rest) {
            ("flush", _) => "log flush: writing data",
            ("at", "log.flush.after_write") => "log flush: between write and sync",
            ("at", "log.flush.after_sync") => "log flush: between sync and meta",
            ("at", "meta.after_temp_write") if place.starts_with("log flush") => {
                "log flush: meta temp file synced, not renamed"
            }
            ("at", "meta.after_rename") if place.starts_with("log flush") => {
                "log flush: meta renamed, directory not synced"
            }
            ("at", point) if point.starts_with("log.create") || point.starts_with("snapshot") => {
                "creating a shape"
            }
            ("at", point) if point.starts_with("log.remove") => "removing a shape",
            ("removing", _) => "removing a shape",
            ("durable" | "flushed" | "created" | "metaflushed", _) => "outside any flush",
            ("metaflush", _) => "metadata flush (SQLite commit)",
            _ => place,
        };
    }
    place
}
