//! The `shapesim` command line. Exit codes: 0 everything passed, 1 a
//! violation (or a determinism failure) was found, 2 bad usage or input.

use crate::harness::{self, Plant, RunOptions, RunOutcome, trace};
use crate::scenario::{KnobArgs, Knobs, Scenario, ScenarioFile, generate};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Parser, Debug)]
#[command(
    name = "shapesim",
    version,
    about = "Deterministic simulation of the shape-sync engine: seeded restart scenarios checked against an oracle"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one seed (and print how to reproduce it).
    Run(RunArgs),
    /// Run a range of seeds, in parallel, and summarise.
    Sweep(SweepArgs),
}

#[derive(Args, Debug, Clone, Default)]
pub struct ScenarioArgs {
    /// Scenario file (TOML knobs); without one, the built-in defaults (= scenarios/default.toml).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Re-introduce a known bug (repeatable).
    #[arg(long, value_enum)]
    pub plant: Vec<Plant>,
    #[command(flatten)]
    pub knobs: KnobArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long)]
    pub seed: u64,
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// Run the seed twice and compare every event; report the first that differs.
    #[arg(long)]
    pub check_determinism: bool,
    /// Print every event of the run.
    #[arg(long)]
    pub trace: bool,
    /// End with one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// Seeds to run, `A..B` (B excluded).
    #[arg(long, value_parser = parse_range)]
    pub seeds: (u64, u64),
    /// Parallel runs (default: the number of cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// Stop starting seeds after the first failure.
    #[arg(long)]
    pub stop_on_fail: bool,
    /// Run every seed twice and compare the traces.
    #[arg(long)]
    pub check_determinism: bool,
    /// End with one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("{text:?} is not a range A..B"))?;
    let a: u64 = a
        .parse()
        .map_err(|_| format!("{a:?} is not a seed number"))?;
    let b: u64 = b
        .parse()
        .map_err(|_| format!("{b:?} is not a seed number"))?;
    if a >= b {
        return Err(format!("the range {text} is empty"));
    }
    Ok((a, b))
}

impl ScenarioArgs {
    /// The knobs: the scenario file (or the defaults), then the overrides.
    pub fn knobs(&self) -> Result<Knobs, String> {
        let mut knobs = match &self.scenario {
            Some(path) => ScenarioFile::load(path)?.knobs,
            None => Knobs::default(),
        };
        self.knobs.apply(&mut knobs);
        knobs.validate()?;
        Ok(knobs)
    }

    /// The flags that select this scenario, for reproduction commands.
    fn flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(path) = &self.scenario {
            flags.push("--scenario".to_string());
            flags.push(path.display().to_string());
        }
        for plant in &self.plant {
            flags.push("--plant".to_string());
            flags.push(plant.name());
        }
        flags.extend(self.knobs.to_flags());
        flags
    }
}

/// The command that reproduces one seed exactly.
pub fn repro_command(seed: u64, scenario: &ScenarioArgs) -> String {
    let mut parts = vec![
        "cargo run --release -p sim --bin shapesim -- run --seed".to_string(),
        seed.to_string(),
    ];
    parts.extend(scenario.flags());
    parts.join(" ")
}

/// Expands and runs one seed.
pub fn run_seed(seed: u64, knobs: &Knobs, plants: &[Plant], keep_events: bool) -> RunOutcome {
    let scenario: Scenario = generate::expand(seed, knobs);
    harness::execute(
        &scenario,
        &RunOptions {
            plants: plants.to_vec(),
            keep_events,
            inject_nondeterminism: false,
        },
    )
}

/// Runs a seed twice; `Err` describes the first event where the runs differ.
pub fn check_determinism(
    seed: u64,
    knobs: &Knobs,
    plants: &[Plant],
) -> (RunOutcome, Result<(), String>) {
    let first = run_seed(seed, knobs, plants, true);
    let second = run_seed(seed, knobs, plants, true);
    let verdict = compare_runs(&first, &second);
    (first, verdict)
}

pub fn compare_runs(first: &RunOutcome, second: &RunOutcome) -> Result<(), String> {
    if first.trace_hash == second.trace_hash && first.events == second.events {
        return Ok(());
    }
    let (index, a, b) = trace::first_divergence(&first.event_log, &second.event_log).unwrap_or((
        first.event_log.len(),
        None,
        None,
    ));
    Err(format!(
        "non-determinism: trace {} vs {}; first divergent event #{index}:\n  run 1: {}\n  run 2: {}",
        first.trace_hash,
        second.trace_hash,
        a.as_deref().unwrap_or("<end of trace>"),
        b.as_deref().unwrap_or("<end of trace>")
    ))
}

fn outcome_json(
    outcome: &RunOutcome,
    repro: &str,
    determinism: Option<&Result<(), String>>,
) -> serde_json::Value {
    let mut value = serde_json::to_value(outcome).expect("outcome serializes");
    value["repro"] = json!(repro);
    if let Some(verdict) = determinism {
        value["deterministic"] = json!(verdict.is_ok());
    }
    value
}

fn describe_failure(outcome: &RunOutcome, repro: &str) -> String {
    let failure = outcome.failure.as_ref().expect("a failure");
    let mut text = format!(
        "FAIL seed {}: check `{}`{} at {:.3} s simulated\n  {}\n  last events before it:\n",
        outcome.seed,
        failure.check,
        match (failure.shape, failure.client) {
            (Some(shape), Some(client)) => format!(" (shape {shape}, client {client})"),
            _ => String::new(),
        },
        failure.sim_ms as f64 / 1000.0,
        failure.message
    );
    for event in &outcome.last_events {
        text.push_str(&format!("    {event}\n"));
    }
    text.push_str(&format!("  reproduce with: {repro}"));
    text
}

/// `shapesim run`: returns the exit code.
pub fn run(args: &RunArgs) -> i32 {
    let knobs = match args.scenario.knobs() {
        Ok(knobs) => knobs,
        Err(e) => {
            eprintln!("shapesim: {e}");
            return 2;
        }
    };
    let repro = repro_command(args.seed, &args.scenario);
    eprintln!("shapesim: seed {}; reproduce with: {repro}", args.seed);
    let (outcome, determinism) = if args.check_determinism {
        let (outcome, verdict) = check_determinism(args.seed, &knobs, &args.scenario.plant);
        (outcome, Some(verdict))
    } else {
        (
            run_seed(args.seed, &knobs, &args.scenario.plant, args.trace),
            None,
        )
    };
    if args.trace {
        for event in &outcome.event_log {
            eprintln!("{event}");
        }
    }
    if outcome.passed() {
        eprintln!(
            "PASS seed {}: {} events, {} restarts, {} 409s, trace {}, {:.1} s simulated in {} ms",
            outcome.seed,
            outcome.events,
            outcome.restarts,
            outcome.conflicts,
            outcome.trace_hash,
            outcome.sim_ms as f64 / 1000.0,
            outcome.wall_ms
        );
    } else {
        eprintln!("{}", describe_failure(&outcome, &repro));
    }
    if let Some(Err(divergence)) = &determinism {
        eprintln!("{divergence}\n  reproduce with: {repro} --check-determinism");
    } else if determinism.is_some() {
        eprintln!("deterministic: two runs gave trace {}", outcome.trace_hash);
    }
    if args.json {
        println!("{}", outcome_json(&outcome, &repro, determinism.as_ref()));
    }
    let deterministic = determinism.as_ref().is_none_or(Result::is_ok);
    if outcome.passed() && deterministic {
        0
    } else {
        1
    }
}

/// `shapesim sweep`: returns the exit code.
#[allow(clippy::disallowed_types)] // wall time of the sweep, measured outside the simulations
pub fn sweep(args: &SweepArgs) -> i32 {
    let knobs = match args.scenario.knobs() {
        Ok(knobs) => knobs,
        Err(e) => {
            eprintln!("shapesim: {e}");
            return 2;
        }
    };
    let (from, to) = args.seeds;
    let total = to - from;
    // Engine invariant violations are reported per seed below, with their
    // message; the default hook's backtraces would bury them.
    std::panic::set_hook(Box::new(|_| {}));
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    eprintln!(
        "shapesim: sweeping seeds {from}..{to} with {jobs} jobs; reproduce one with: {}",
        repro_command(from, &args.scenario)
    );
    let bar = if std::io::stderr().is_terminal() && !args.json {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} seeds, {per_sec}, eta {eta} {msg}")
                .expect("template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = std::time::Instant::now();
    let next = AtomicU64::new(from);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<(RunOutcome, Option<String>)>> = Mutex::new(Vec::new());
    let shared = Arc::new((knobs, args.scenario.plant.clone()));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= to {
                        return;
                    }
                    let (knobs, plants) = (&shared.0, &shared.1);
                    let (outcome, divergence) = if args.check_determinism {
                        let (outcome, verdict) = check_determinism(seed, knobs, plants);
                        (outcome, verdict.err())
                    } else {
                        (run_seed(seed, knobs, plants, false), None)
                    };
                    let failed = !outcome.passed() || divergence.is_some();
                    if failed {
                        bar.suspend(|| {
                            let repro = repro_command(seed, &args.scenario);
                            if let Some(d) = &divergence {
                                eprintln!("seed {seed}: {d}\n  reproduce with: {repro} --check-determinism");
                            }
                            if !outcome.passed() {
                                eprintln!("{}", describe_failure(&outcome, &repro));
                            }
                        });
                        if args.stop_on_fail {
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                    bar.inc(1);
                    results.lock().expect("results").push((outcome, divergence));
                }
            });
        }
    });
    bar.finish_and_clear();
    let wall_s = started.elapsed().as_secs_f64();
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|(o, _)| o.seed);
    let failing: Vec<u64> = results
        .iter()
        .filter(|(o, d)| !o.passed() || d.is_some())
        .map(|(o, _)| o.seed)
        .collect();
    let ran = results.len();
    let sim_s: f64 = results.iter().map(|(o, _)| o.sim_ms as f64 / 1000.0).sum();
    let summary = json!({
        "seeds": ran,
        "passed": ran - failing.len(),
        "failed": failing.len(),
        "failing_seeds": failing,
        "seeds_per_sec": ran as f64 / wall_s,
        "sim_to_wall": sim_s / wall_s,
        "wall_secs": wall_s,
        "jobs": jobs,
    });
    eprintln!(
        "{} seeds: {} passed, {} failed{} in {:.1} s ({:.1} seeds/s, {:.0}x simulated/wall)",
        ran,
        ran - failing.len(),
        failing.len(),
        if failing.is_empty() {
            String::new()
        } else {
            format!(" (seeds {failing:?})")
        },
        wall_s,
        ran as f64 / wall_s,
        sim_s / wall_s
    );
    if args.json {
        println!("{summary}");
    }
    if failing.is_empty() { 0 } else { 1 }
}
