//! `shrink` and `corpus add`.

use super::{CorpusAddArgs, ShrinkArgs, replay_command};
use crate::corpus::{self, CorpusEntry, Origin};
use crate::scenario::Scenario;
use crate::shrink::{self, ShrinkError, ShrinkReport};
use serde_json::json;

/// A failure to shrink, with its exit code: 1 for non-determinism (a
/// finding), 2 for bad input.
struct Stop(i32, String);

impl From<String> for Stop {
    fn from(message: String) -> Stop {
        Stop(2, message)
    }
}

impl From<ShrinkError> for Stop {
    fn from(error: ShrinkError) -> Stop {
        let code = match error {
            ShrinkError::Passes => 2,
            ShrinkError::NonDeterminism(_) => 1,
        };
        Stop(code, error.to_string())
    }
}

fn exit_code(result: Result<i32, Stop>) -> i32 {
    result.unwrap_or_else(|Stop(code, message)| {
        eprintln!("shapesim: {message}");
        code
    })
}

/// The scenario to shrink: a file, or a seed with scenario options.
fn input(args: &ShrinkArgs) -> Result<Scenario, String> {
    match (&args.file, args.seed) {
        (Some(file), _) => {
            if !args.scenario.flags().is_empty() {
                return Err(format!(
                    "{} holds its whole scenario: --scenario, --plant and knob options only apply with --seed (to add a plant, edit the file's `plants`)",
                    file.display()
                ));
            }
            corpus::load_scenario(file)
        }
        (None, Some(seed)) => Ok(super::run::expand(
            seed,
            &args.scenario.knobs()?,
            &args.scenario.plant,
        )),
        (None, None) => Err("give a scenario file or --seed".to_string()),
    }
}

/// Shrinks with progress on stderr.
fn minimize(scenario: &Scenario, max_secs: f64) -> Result<ShrinkReport, ShrinkError> {
    crate::harness::quiet_seed_panics();
    shrink::shrink(scenario, max_secs, |line| eprintln!("shapesim: {line}"))
}

fn write(path: &std::path::Path, text: &str) -> Result<(), Stop> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text)
        .map_err(|e| Stop::from(format!("cannot write {}: {e}", path.display())))
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

/// Shrinks a failing scenario a sweep saved into `<file>.min.json` (the
/// name `shrink_command` suggests); returns the path written.
pub(super) fn shrink_saved(
    file: &std::path::Path,
    max_secs: f64,
) -> Result<std::path::PathBuf, String> {
    let out = file.with_extension("min.json");
    let scenario = corpus::load_scenario(file)?;
    let report = minimize(&scenario, max_secs).map_err(|e| e.to_string())?;
    write(&out, &report.scenario.to_json()).map_err(|Stop(_, message)| message)?;
    print_report(&report, &out);
    Ok(out)
}

/// `shapesim shrink`.
pub fn shrink(args: &ShrinkArgs) -> i32 {
    exit_code((|| {
        let report = minimize(&input(args)?, args.max_secs)?;
        write(&args.out, &report.scenario.to_json())?;
        print_report(&report, &args.out);
        if args.json {
            let mut value = serde_json::to_value(&report).expect("report serializes");
            value["out"] = json!(args.out.display().to_string());
            value["replay"] = json!(replay_command(&args.out));
            println!("{value}");
        }
        Ok(0)
    })())
}

/// `shapesim corpus add`: minimizes (an already minimal scenario is only
/// confirmed) and stores the entry.
pub fn corpus_add(args: &CorpusAddArgs) -> i32 {
    exit_code((|| {
        let scenario = corpus::load_scenario(&args.file)?;
        let report = minimize(&scenario, args.max_secs)?;
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
        let file = args.dir.join(corpus::file_name(&name)?);
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
        write(&file, &entry.to_json())?;
        print_report(&report, &file);
        eprintln!(
            "corpus entry {name}: `cargo test -p sim --test corpus` replays it (accept its snapshot with INSTA_UPDATE=always)"
        );
        Ok(0)
    })())
}
