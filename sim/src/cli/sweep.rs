//! `shapesim sweep`: seeds run in parallel (or a CI shard of them, or as
//! many as a time budget allows), failures reported with their
//! reproduction command, a summary with the coverage, optionally JUnit XML.

use super::run::{check_scenario_determinism, describe_failure, expand};
use super::{SweepArgs, junit, repro_command, shrink_command};
use crate::harness::coverage::Coverage;
use crate::harness::{self, RunOptions, RunOutcome};
use crate::scenario::Scenario;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// `K/N`: the K-th (1-based) of N CI shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

pub fn parse_shard(text: &str) -> Result<Shard, String> {
    let bad = || format!("--shard {text:?}: expected K/N with 1 <= K <= N, e.g. 2/4");
    let (k, n) = text.split_once('/').ok_or_else(bad)?;
    let (index, count): (u64, u64) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if index == 0 || index > count {
        return Err(bad());
    }
    Ok(Shard { index, count })
}

/// The seeds of `from..to` a shard runs: every N-th, starting at the K-th
/// (strided, so shards of a range share its slow and fast seeds). The N
/// shards of a range partition it.
pub fn shard_seeds(from: u64, to: u64, shard: Option<Shard>) -> Vec<u64> {
    match shard {
        None => (from..to).collect(),
        Some(Shard { index, count }) => (from..to)
            .skip((index - 1) as usize)
            .step_by(count as usize)
            .collect(),
    }
}

/// One seed's result: its outcome and, with `--check-determinism`, how two
/// runs diverged; isolated, what its process reported on failure.
pub struct SeedResult {
    pub outcome: RunOutcome,
    pub divergence: Option<String>,
    pub report: Option<String>,
}

impl SeedResult {
    pub fn failed(&self) -> bool {
        !self.outcome.passed() || self.divergence.is_some()
    }
}

/// `shapesim sweep`.
#[allow(clippy::disallowed_types)] // wall time of the sweep, measured outside the simulations
pub fn sweep(args: &SweepArgs) -> i32 {
    let knobs = match args.scenario.knobs() {
        Ok(knobs) => knobs,
        Err(e) => {
            eprintln!("shapesim: {e}");
            return 2;
        }
    };
    if let Some(dir) = &args.save_failures
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("shapesim: cannot create {}: {e}", dir.display());
        return 2;
    }
    let (from, to) = args.seeds;
    let seeds = shard_seeds(from, to, args.shard);
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // Engine invariant violations are reported per seed below, with their
    // message; the default hook's backtraces would bury them.
    crate::harness::quiet_seed_panics();
    eprintln!(
        "shapesim: sweeping {} with {jobs} jobs{}; reproduce one with: {}",
        describe_seeds(from, to, args.shard, seeds.len()),
        args.time_budget_secs
            .map_or(String::new(), |s| format!(" for at most {s} s")),
        repro_command(seeds.first().copied().unwrap_or(from), &args.scenario)
    );
    let bar = progress(seeds.len() as u64, args.json);
    let started = std::time::Instant::now();
    let out_of_time = || {
        args.time_budget_secs
            .is_some_and(|budget| started.elapsed().as_secs_f64() >= budget)
    };
    let (next, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    let results: Mutex<Vec<SeedResult>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) && !out_of_time() {
                    let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::SeqCst)) else {
                        return;
                    };
                    let result = run_one(seed, &knobs, args);
                    if result.failed() {
                        let scenario = expand(seed, &knobs, &args.scenario.plant);
                        bar.suspend(|| report(&result, &scenario, args));
                        if args.stop_on_fail {
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                    bar.inc(1);
                    results.lock().expect("results").push(result);
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|r| r.outcome.seed);
    let wall_s = started.elapsed().as_secs_f64();
    if let Some(path) = &args.junit {
        let suite = junit::suite_name(&args.scenario);
        let repro = |seed| repro_command(seed, &args.scenario);
        if let Err(e) = junit::write(path, &suite, &results, &repro, wall_s) {
            eprintln!("shapesim: cannot write {}: {e}", path.display());
            return 2;
        }
        eprintln!("shapesim: JUnit report written to {}", path.display());
    }
    let planned = seeds.len();
    let code = summarize(&results, planned, wall_s, jobs, args);
    if args.shrink_failures {
        shrink_failures(&results, args);
    }
    code
}

/// Shrinks the saved scenarios of the first `--shrink-max` failing seeds.
fn shrink_failures(results: &[SeedResult], args: &SweepArgs) {
    let dir = args
        .save_failures
        .as_ref()
        .expect("clap requires --save-failures");
    let failing: Vec<u64> = results
        .iter()
        .filter(|r| r.outcome.failure.is_some())
        .map(|r| r.outcome.seed)
        .collect();
    for (i, seed) in failing.iter().enumerate() {
        if i == args.shrink_max {
            eprintln!(
                "shapesim: {} more failures not shrunk (--shrink-max {})",
                failing.len() - i,
                args.shrink_max
            );
            break;
        }
        let file = dir.join(format!("seed-{seed}.json"));
        eprintln!(
            "shapesim: shrinking seed {seed} for at most {} s",
            args.shrink_secs
        );
        if let Err(e) = super::shrink::shrink_saved(&file, args.shrink_secs) {
            eprintln!("shapesim: could not shrink {}: {e}", file.display());
        }
    }
}

fn run_one(seed: u64, knobs: &crate::scenario::Knobs, args: &SweepArgs) -> SeedResult {
    if args.isolate {
        return run_isolated(seed, args);
    }
    let scenario = expand(seed, knobs, &args.scenario.plant);
    let (outcome, divergence) = if args.check_determinism {
        let (outcome, verdict) = check_scenario_determinism(&scenario);
        (outcome, verdict.err())
    } else {
        (harness::execute(&scenario, &RunOptions::default()), None)
    };
    SeedResult {
        outcome,
        divergence,
        report: None,
    }
}

/// Runs one seed as `shapesim run --seed N --json` in its own process and
/// reads its outcome from the JSON line it prints.
fn run_isolated(seed: u64, args: &SweepArgs) -> SeedResult {
    let exe = std::env::current_exe().expect("this executable's path");
    let mut command = std::process::Command::new(exe);
    command
        .args(["run", "--seed", &seed.to_string(), "--json"])
        .args(args.scenario.args());
    if args.check_determinism {
        command.arg("--check-determinism");
    }
    let output = command.output().expect("start a seed's process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let value: serde_json::Value = match stdout.lines().last().map(serde_json::from_str) {
        Some(Ok(value)) if matches!(output.status.code(), Some(0 | 1)) => value,
        _ => panic!(
            "seed {seed}: its process ended ({}) without an outcome:\n{stderr}",
            output.status
        ),
    };
    let divergence = (value["deterministic"] == serde_json::json!(false))
        .then(|| "two runs diverged (see the report)".to_string());
    let outcome: RunOutcome = serde_json::from_value(value).expect("a run outcome");
    let failed = !outcome.passed() || divergence.is_some();
    SeedResult {
        outcome,
        divergence,
        report: failed.then_some(stderr),
    }
}

fn progress(len: u64, json: bool) -> ProgressBar {
    if !std::io::stderr().is_terminal() || json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds, {per_sec}, eta {eta}")
            .expect("template"),
    );
    bar
}

/// `seeds 0..400` or `shard 2/4 of seeds 0..400 (every 4th from 1: 100 seeds)`.
fn describe_seeds(from: u64, to: u64, shard: Option<Shard>, count: usize) -> String {
    match shard {
        None => format!("seeds {from}..{to}"),
        Some(s) => format!(
            "shard {s} of seeds {from}..{to} (every {}th from {}: {count} seeds)",
            s.count,
            from + s.index - 1
        ),
    }
}

/// Reports a failing seed of a sweep: the failure, or the divergence of two
/// runs, with its reproduction command; saves its scenario if asked.
fn report(result: &SeedResult, scenario: &Scenario, args: &SweepArgs) {
    let outcome = &result.outcome;
    let seed = outcome.seed;
    let repro = repro_command(seed, &args.scenario);
    if let Some(child) = &result.report {
        eprint!("{child}");
    } else {
        if let Some(d) = &result.divergence {
            eprintln!("seed {seed}: {d}\n  reproduce with: {repro} --check-determinism");
        }
        if !outcome.passed() {
            eprintln!("{}", describe_failure(outcome, &repro));
        }
    }
    if let Some(dir) = &args.save_failures {
        let path = dir.join(format!("seed-{seed}.json"));
        match std::fs::write(&path, scenario.to_json()) {
            Ok(()) => eprintln!(
                "  saved: {}; shrink with: {}",
                path.display(),
                shrink_command(&path)
            ),
            Err(e) => eprintln!("  cannot save {}: {e}", path.display()),
        }
    }
}

/// Prints a sweep's summary (text, and the JSON object with `--json`);
/// returns the exit code.
fn summarize(
    results: &[SeedResult],
    planned: usize,
    wall_s: f64,
    jobs: usize,
    args: &SweepArgs,
) -> i32 {
    let failing: Vec<u64> = results
        .iter()
        .filter(|r| r.failed())
        .map(|r| r.outcome.seed)
        .collect();
    let ran = results.len();
    let sim_s: f64 = results
        .iter()
        .map(|r| r.outcome.sim_ms as f64 / 1000.0)
        .sum();
    let mut coverage = Coverage::default();
    results
        .iter()
        .for_each(|r| coverage.add(&r.outcome.coverage));
    eprintln!(
        "{ran} seeds: {} passed, {} failed{} in {wall_s:.1} s ({:.1} seeds/s, {:.0}x simulated/wall)",
        ran - failing.len(),
        failing.len(),
        if failing.is_empty() {
            String::new()
        } else {
            format!(" (seeds {failing:?})")
        },
        ran as f64 / wall_s,
        sim_s / wall_s
    );
    let mode = match args.isolate {
        true => "isolated: one process per seed",
        false => "in-process: one thread per seed",
    };
    eprintln!("mode: {mode}; trace digest {}", trace_digest(results));
    if let Some(shard) = args.shard {
        eprintln!("shard {shard}: ran {ran} of its {planned} seeds");
    }
    if let Some(budget) = args.time_budget_secs
        && ran < planned
        && !args.stop_on_fail
    {
        eprintln!("time budget of {budget} s spent: ran {ran} of {planned} seeds");
    }
    eprintln!("{}", coverage.table());
    let gaps = coverage.gaps();
    if !gaps.is_empty() {
        eprintln!("not exercised (more seeds, or a scenario with these faults on, reach them):");
        gaps.iter().for_each(|gap| eprintln!("  {gap}"));
    }
    if args.json {
        let summary = json!({
            "seeds": ran,
            "planned_seeds": planned,
            "shard": args.shard.map(|s| s.to_string()),
            "seed_list": results.iter().map(|r| r.outcome.seed).collect::<Vec<_>>(),
            "passed": ran - failing.len(),
            "failed": failing.len(),
            "failing_seeds": failing,
            "seeds_per_sec": ran as f64 / wall_s,
            "sim_to_wall": sim_s / wall_s,
            "wall_secs": wall_s,
            "jobs": jobs,
            "isolated": args.isolate,
            "trace_digest": trace_digest(results),
            "coverage": coverage,
            "coverage_gaps": gaps,
        });
        println!("{summary}");
    }
    if failing.is_empty() { 0 } else { 1 }
}

/// One digest of every seed's trace hash (sha-256 of `seed:hash` lines in
/// seed order): two sweeps of the same seeds ran the same iff it is equal.
fn trace_digest(results: &[SeedResult]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for r in results {
        hasher.update(format!("{}:{}\n", r.outcome.seed, r.outcome.trace_hash));
    }
    hex::encode(&hasher.finalize()[..8])
}
