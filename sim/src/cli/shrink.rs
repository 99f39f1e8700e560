//! `shrink` and `corpus add`.

use super::{CorpusAddArgs, ShrinkArgs, replay_command};
use crate::corpus::{self, CorpusEntry, Origin};
use crate::scenario::Scenario;
use crate::shrink::{self, ShrinkReport};
use serde_json::json;

/// The scenario to shrink: a file, or a seed with scenario options.
fn input(args: &ShrinkArgs) -> Result<(Scenario, String), String> {
    match (&args.file, args.seed) {
        (Some(file), _) => Ok((corpus::load_scenario(file)?, file.display().to_string())),
        (None, Some(seed)) => {
            let knobs = args.scenario.knobs()?;
            let source = match &args.scenario.scenario {
                Some(path) => format!("seed {seed} of {}", path.display()),
                None => format!("seed {seed} of the default scenario"),
            };
            Ok((
                super::run::expand(seed, &knobs, &args.scenario.plant),
                source,
            ))
        }
        (None, None) => Err("give a scenario file or --seed".to_string()),
    }
}

fn print_report(report: &ShrinkReport, out: &std::path::Path) {
    eprintln!(
        "shrunk `{}`: {} -> {} statements, {} -> {} events, {} candidates in {:.1} s{}",
        report.signature,
        report.original_mutations,
        report.minimized_mutations,
        report.original_events,
        report.minimized_events,
        report.candidates,
        report.secs,
        if report.complete {
            ""
        } else {
            " (time budget reached: not 1-minimal)"
        }
    );
    eprintln!(
        "written to {}; replay with: {}",
        out.display(),
        replay_command(out)
    );
}

/// `shapesim shrink`.
pub fn shrink(args: &ShrinkArgs) -> i32 {
    let (scenario, _) = match input(args) {
        Ok(input) => input,
        Err(e) => {
            eprintln!("shapesim: {e}");
            return 2;
        }
    };
    crate::harness::quiet_seed_panics();
    let report = match shrink::shrink(&scenario, args.max_secs, |line| {
        eprintln!("shapesim: {line}")
    }) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("shapesim: {e}");
            return 2;
        }
    };
    if let Err(e) = std::fs::write(&args.out, report.scenario.to_json()) {
        eprintln!("shapesim: cannot write {}: {e}", args.out.display());
        return 2;
    }
    print_report(&report, &args.out);
    if args.json {
        let mut value = serde_json::to_value(&report).expect("report serializes");
        value["out"] = json!(args.out.display().to_string());
        value["replay"] = json!(replay_command(&args.out));
        println!("{value}");
    }
    0
}

/// `shapesim corpus add`.
pub fn corpus_add(args: &CorpusAddArgs) -> i32 {
    let scenario = match corpus::load_scenario(&args.file) {
        Ok(scenario) => scenario,
        Err(e) => {
            eprintln!("shapesim: {e}");
            return 2;
        }
    };
    crate::harness::quiet_seed_panics();
    // Shrinking an already minimal scenario only confirms it.
    let report = match shrink::shrink(&scenario, args.max_secs, |line| {
        eprintln!("shapesim: {line}")
    }) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("shapesim: {e}");
            return 2;
        }
    };
    let failure = report
        .outcome
        .failure
        .as_ref()
        .expect("a shrunk scenario fails");
    let plants: Vec<String> = report.scenario.plants.iter().map(|p| p.name()).collect();
    let name = args.name.clone().unwrap_or_else(|| {
        let base = if plants.is_empty() {
            failure.check.clone()
        } else {
            plants.join("-")
        };
        format!("{base}-seed-{}", report.scenario.seed)
    });
    let file = match corpus::file_name(&name) {
        Ok(file) => args.dir.join(file),
        Err(e) => {
            eprintln!("shapesim: {e}");
            return 2;
        }
    };
    let description = args.description.clone().unwrap_or_else(|| {
        let what = if plants.is_empty() {
            "found by the harness".to_string()
        } else {
            format!("planted {}", plants.join(", "))
        };
        let message: String = failure.message.chars().take(120).collect();
        format!("{what}: {message}")
    });
    let origin = Origin {
        seed: scenario.seed,
        plants: scenario.plants.clone(),
        source: args.file.display().to_string(),
    };
    let entry = CorpusEntry::new(
        &name,
        description,
        origin,
        report.signature.clone(),
        report.scenario.clone(),
    );
    if let Err(e) =
        std::fs::create_dir_all(&args.dir).and_then(|()| std::fs::write(&file, entry.to_json()))
    {
        eprintln!("shapesim: cannot write {}: {e}", file.display());
        return 2;
    }
    print_report(&report, &file);
    eprintln!(
        "corpus entry {name}: `cargo test -p sim --test corpus` replays it (accept its snapshot with INSTA_UPDATE=always)"
    );
    0
}
