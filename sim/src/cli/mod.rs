//! The `shapesim` command line. Exit codes: 0 everything passed, 1 a
//! violation (or a determinism failure) was found, 2 bad usage or input.

mod junit;
mod report;
mod run;
mod shrink;
mod sweep;

pub use run::{check_determinism, compare_runs, replay, run, run_seed};
pub use shrink::{corpus_add, shrink};
pub use sweep::{Shard, parse_shard, shard_seeds, sweep};

use crate::scenario::{KnobArgs, Knobs, Plant, ScenarioFile};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "shapesim",
    version,
    about = "Deterministic simulation of the shape-sync engine: seeded restart scenarios checked against an oracle",
    after_help = "The loop: `sweep` finds a failing seed, `run --seed N` reproduces it, `shrink` minimizes it, `corpus add` keeps it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one seed (and print how to reproduce it).
    Run(RunArgs),
    /// Run a scenario file (from `run --save`, `shrink`, `sweep --save-failures` or the corpus).
    Replay(ReplayArgs),
    /// Run a range of seeds, in parallel, and summarise.
    Sweep(SweepArgs),
    /// Minimize a failing seed or scenario file to a small scenario with the same failure.
    Shrink(ShrinkArgs),
    /// Manage the regression corpus.
    #[command(subcommand)]
    Corpus(CorpusCommand),
}

#[derive(Subcommand, Debug)]
pub enum CorpusCommand {
    /// Minimize a failing scenario file (if not yet minimal) and store it in the corpus.
    Add(CorpusAddArgs),
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
pub struct OutputArgs {
    /// Run twice and compare every event; report the first that differs.
    #[arg(long)]
    pub check_determinism: bool,
    /// Print every event of the run.
    #[arg(long)]
    pub trace: bool,
    /// End with one JSON object on the last line (it carries the coverage).
    #[arg(long)]
    pub json: bool,
    /// Print what the run exercised (restarts, crash points, faults, 409s, checks).
    #[arg(long)]
    pub coverage: bool,
    /// Write the run as Chrome trace-event JSON (open it in Perfetto or
    /// chrome://tracing): tracks per node, client and shape, simulated time.
    #[arg(long, conflicts_with = "check_determinism")]
    pub timeline: Option<PathBuf>,
    /// Write a self-contained HTML page: the verdict, the failure, the
    /// reproduction command, the timeline drawn as SVG and the coverage.
    #[arg(long, conflicts_with = "check_determinism")]
    pub report: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long)]
    pub seed: u64,
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Write the expanded scenario (JSON) to this file.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// A scenario file or a corpus entry.
    pub file: PathBuf,
    /// Also plant these bugs (on top of the file's own).
    #[arg(long, value_enum)]
    pub plant: Vec<Plant>,
    /// Run without the file's planted bugs.
    #[arg(long)]
    pub without_plants: bool,
    #[command(flatten)]
    pub output: OutputArgs,
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
    /// Write the scenario of every failing seed into this directory.
    #[arg(long)]
    pub save_failures: Option<PathBuf>,
    /// End with one JSON object on the last line (it carries the coverage).
    #[arg(long)]
    pub json: bool,
    /// Print what the run exercised (restarts, crash points, faults, 409s, checks).
    #[arg(long)]
    pub coverage: bool,
    /// Run only CI shard K of N (`K/N`, 1-based): every N-th seed of the
    /// range from its K-th. The N shards run each seed exactly once.
    #[arg(long, value_parser = sweep::parse_shard)]
    pub shard: Option<Shard>,
    /// Start no seed after this many seconds (nightly jobs); the summary
    /// says how many ran.
    #[arg(long)]
    pub time_budget_secs: Option<f64>,
    /// Write a JUnit XML report: one test case per seed, failures with
    /// their check, message and reproduction command.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// After the sweep, shrink each failing scenario saved by
    /// `--save-failures` into `seed-N.min.json` beside it (at most
    /// `--shrink-max` of them, `--shrink-secs` each): nightly artifacts
    /// ready for `corpus add`.
    #[arg(long, requires = "save_failures")]
    pub shrink_failures: bool,
    /// Time box of each shrink, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub shrink_secs: f64,
    /// Failures to shrink at most (the lowest seeds first).
    #[arg(long, default_value_t = 5)]
    pub shrink_max: usize,
    /// Run each seed in its own OS process (`shapesim run --seed N`), so no
    /// state can leak from one seed into the next; slower. The default runs
    /// them in this process, each on a fresh thread.
    #[arg(long)]
    pub isolate: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ShrinkArgs {
    /// A failing scenario file (or use --seed).
    #[arg(conflicts_with = "seed")]
    pub file: Option<PathBuf>,
    /// A failing seed (with the scenario options below).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// Where to write the minimized scenario.
    #[arg(long)]
    pub out: PathBuf,
    /// Time budget; past it the best scenario so far is written.
    #[arg(long, default_value_t = 60.0)]
    pub max_secs: f64,
    /// End with one JSON object on the last line (it carries the coverage).
    #[arg(long)]
    pub json: bool,
    /// Print what the run exercised (restarts, crash points, faults, 409s, checks).
    #[arg(long)]
    pub coverage: bool,
}

#[derive(Args, Debug, Clone)]
pub struct CorpusAddArgs {
    /// A failing scenario file.
    pub file: PathBuf,
    /// The entry's name (lower-case letters, digits, dashes); default: from the failure.
    #[arg(long)]
    pub name: Option<String>,
    /// One line saying what the failure is; default: from the failure.
    #[arg(long)]
    pub description: Option<String>,
    /// The corpus directory.
    #[arg(long, default_value = "corpus")]
    pub dir: PathBuf,
    /// Time budget for minimizing.
    #[arg(long, default_value_t = 60.0)]
    pub max_secs: f64,
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
        self.args().iter().map(|a| shell_quote(a)).collect()
    }

    /// The same flags, unquoted, for starting a process.
    pub(super) fn args(&self) -> Vec<String> {
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

const SHAPESIM: &str = "cargo run --release -p sim --bin shapesim --";

/// The command that reproduces one seed exactly.
pub fn repro_command(seed: u64, scenario: &ScenarioArgs) -> String {
    let mut parts = vec![format!("{SHAPESIM} run --seed {seed}")];
    parts.extend(scenario.flags());
    parts.join(" ")
}

/// The command that replays a scenario file.
pub fn replay_command(file: &std::path::Path) -> String {
    format!(
        "{SHAPESIM} replay {}",
        shell_quote(&file.display().to_string())
    )
}

/// The command that shrinks a saved failing scenario next to itself.
pub fn shrink_command(file: &std::path::Path) -> String {
    let out = file.with_extension("min.json");
    format!(
        "{SHAPESIM} shrink {} --out {}",
        shell_quote(&file.display().to_string()),
        shell_quote(&out.display().to_string())
    )
}

/// `text` as one shell word: as is when that is safe, else single-quoted.
pub fn shell_quote(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Runs `shapesim` with the given arguments; returns the exit code.
pub fn main(cli: Cli) -> i32 {
    match &cli.command {
        Command::Run(args) => run(args),
        Command::Replay(args) => replay(args),
        Command::Sweep(args) => sweep(args),
        Command::Shrink(args) => shrink(args),
        Command::Corpus(CorpusCommand::Add(args)) => corpus_add(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_quote_paths_a_shell_would_split() {
        assert_eq!(shell_quote("corpus/a-b.json"), "corpus/a-b.json");
        assert_eq!(shell_quote("my runs/x.json"), "'my runs/x.json'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert!(replay_command(std::path::Path::new("a b.json")).ends_with(" replay 'a b.json'"));
        assert!(
            shrink_command(std::path::Path::new("f/seed-3.json"))
                .ends_with(" shrink f/seed-3.json --out f/seed-3.min.json")
        );
    }
}
