//! `run` and `replay`, and what `sweep` shares with them.

use super::{OutputArgs, ReplayArgs, RunArgs, replay_command, repro_command};
use crate::corpus;
use crate::harness::{self, RunOptions, RunOutcome, trace};
use crate::scenario::{Knobs, Plant, Scenario, generate};
use crate::shrink;
use serde_json::json;

/// The scenario of a seed, with planted bugs.
pub fn expand(seed: u64, knobs: &Knobs, plants: &[Plant]) -> Scenario {
    let mut scenario = generate::expand(seed, knobs);
    scenario.plants = plants.to_vec();
    scenario
}

/// Expands and runs one seed.
pub fn run_seed(seed: u64, knobs: &Knobs, plants: &[Plant], keep_events: bool) -> RunOutcome {
    harness::execute(
        &expand(seed, knobs, plants),
        &RunOptions {
            keep_events,
            ..RunOptions::default()
        },
    )
}

/// Runs a seed twice; `Err` describes the first event where the runs differ.
pub fn check_determinism(
    seed: u64,
    knobs: &Knobs,
    plants: &[Plant],
) -> (RunOutcome, Result<(), String>) {
    check_scenario_determinism(&expand(seed, knobs, plants))
}

pub(super) fn check_scenario_determinism(scenario: &Scenario) -> (RunOutcome, Result<(), String>) {
    let options = RunOptions {
        keep_events: true,
        ..RunOptions::default()
    };
    let first = harness::execute(scenario, &options);
    let second = harness::execute(scenario, &options);
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

/// The JSON object `run --json` and `replay --json` end with.
pub fn outcome_json(
    outcome: &RunOutcome,
    scenario: &Scenario,
    repro: &str,
    determinism: Option<&Result<(), String>>,
) -> serde_json::Value {
    let mut value = serde_json::to_value(outcome).expect("outcome serializes");
    value["repro"] = json!(repro);
    value["mutations"] = json!(scenario.mutation_count());
    value["signature"] = json!(
        outcome
            .failure
            .as_ref()
            .map(|f| shrink::signature(scenario, f))
    );
    if let Some(verdict) = determinism {
        value["deterministic"] = json!(verdict.is_ok());
    }
    value
}

pub(super) fn describe_failure(outcome: &RunOutcome, repro: &str) -> String {
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

/// Runs a scenario and reports it as `run` and `replay` do.
fn execute_and_report(scenario: &Scenario, repro: &str, output: &OutputArgs) -> i32 {
    eprintln!("shapesim: seed {}; reproduce with: {repro}", scenario.seed);
    let (outcome, determinism) = if output.check_determinism {
        let (outcome, verdict) = check_scenario_determinism(scenario);
        (outcome, Some(verdict))
    } else {
        let options = RunOptions {
            keep_events: output.trace,
            timeline: output.timeline.is_some() || output.report.is_some(),
            ..RunOptions::default()
        };
        (harness::execute(scenario, &options), None)
    };
    if let (Some(path), Some(timeline)) = (&output.timeline, &outcome.timeline) {
        match std::fs::write(path, timeline.to_string()) {
            Ok(()) => eprintln!(
                "shapesim: timeline written to {} (open it in https://ui.perfetto.dev or chrome://tracing)",
                path.display()
            ),
            Err(e) => {
                eprintln!("shapesim: cannot write {}: {e}", path.display());
                return 2;
            }
        }
    }
    if let Some(path) = &output.report {
        match std::fs::write(path, super::report::html(&outcome, repro)) {
            Ok(()) => eprintln!("shapesim: report written to {}", path.display()),
            Err(e) => {
                eprintln!("shapesim: cannot write {}: {e}", path.display());
                return 2;
            }
        }
    }
    if output.trace {
        outcome
            .event_log
            .iter()
            .for_each(|event| eprintln!("{event}"));
    }
    if output.coverage {
        eprintln!("{}", outcome.coverage.table());
    }
    if outcome.passed() {
        eprintln!(
            "PASS seed {}: {} statements, {} events, {} restarts, {} 409s, trace {}, {:.1} s simulated in {} ms",
            outcome.seed,
            scenario.mutation_count(),
            outcome.events,
            outcome.restarts,
            outcome.conflicts,
            outcome.trace_hash,
            outcome.sim_ms as f64 / 1000.0,
            outcome.wall_ms
        );
    } else {
        eprintln!("{}", describe_failure(&outcome, repro));
    }
    match &determinism {
        Some(Err(divergence)) => {
            eprintln!("{divergence}\n  reproduce with: {repro} --check-determinism")
        }
        Some(Ok(())) => eprintln!("deterministic: two runs gave trace {}", outcome.trace_hash),
        None => {}
    }
    if output.json {
        println!(
            "{}",
            outcome_json(&outcome, scenario, repro, determinism.as_ref())
        );
    }
    let deterministic = determinism.as_ref().is_none_or(Result::is_ok);
    if outcome.passed() && deterministic {
        0
    } else {
        1
    }
}

/// `shapesim run`.
pub fn run(args: &RunArgs) -> i32 {
    let knobs = match args.scenario.knobs() {
        Ok(knobs) => knobs,
        Err(e) => {
            eprintln!("shapesim: {e}");
            return 2;
        }
    };
    let scenario = expand(args.seed, &knobs, &args.scenario.plant);
    if let Some(path) = &args.save {
        if let Err(e) = std::fs::write(path, scenario.to_json()) {
            eprintln!("shapesim: cannot write {}: {e}", path.display());
            return 2;
        }
        eprintln!(
            "shapesim: scenario saved to {}; replay with: {}",
            path.display(),
            replay_command(path)
        );
    }
    execute_and_report(
        &scenario,
        &repro_command(args.seed, &args.scenario),
        &args.output,
    )
}

/// `shapesim replay`.
pub fn replay(args: &ReplayArgs) -> i32 {
    let mut scenario = match corpus::load_scenario(&args.file) {
        Ok(scenario) => scenario,
        Err(e) => {
            eprintln!("shapesim: {e}");
            return 2;
        }
    };
    if args.without_plants {
        scenario.plants.clear();
    }
    for plant in &args.plant {
        if !scenario.plants.contains(plant) {
            scenario.plants.push(*plant);
        }
    }
    let mut repro = replay_command(&args.file);
    if args.without_plants {
        repro.push_str(" --without-plants");
    }
    args.plant
        .iter()
        .for_each(|p| repro.push_str(&format!(" --plant {}", p.name())));
    execute_and_report(&scenario, &repro, &args.output)
}
