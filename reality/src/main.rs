//! `reality`: the longer runs of the reality checks, with their figures.

use clap::{Parser, Subcommand};
use reality::server::PgServer;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "reality",
    about = "Checks the harness's models against a real PostgreSQL and real process crashes",
    long_about = "Checks the harness's models against a real PostgreSQL and real process crashes.\n\
                  PostgreSQL comes from Debian's `postgresql` package (or PG_BIN); each check starts \
                  its own private server.\nExit codes: 0 all agreed, 1 a disagreement (printed), \
                  2 the check could not run."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// WHERE clauses evaluated by the engine, the oracle and PostgreSQL.
    Where {
        /// How many clauses.
        #[arg(long, default_value_t = 20_000)]
        cases: usize,
        /// The seed of the rows and clauses.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// The Postgres model against PostgreSQL: seeded workloads of
    /// interleaved and aborted transactions, snapshots, the slot's stream
    /// and its replay.
    Model {
        /// How many workloads.
        #[arg(long, default_value_t = 200)]
        workloads: usize,
        /// The first workload's seed (then seed+1, ...).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Real crashes: a child process running the shape logs and the SQLite
    /// metadata on a real disk is SIGKILLed `--kills` times and recovered;
    /// then `--twins` crashes at named crash points are compared with
    /// MemStorage.
    Crash {
        /// How many SIGKILLs (each followed by recovery and its checks).
        #[arg(long, default_value_t = 200)]
        kills: usize,
        /// How many crash-point twins (disk against MemStorage).
        #[arg(long, default_value_t = 200)]
        twins: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Recover with the `no-trim-on-open` planted bug: the check must
        /// then find breaches (exit 1).
        #[arg(long)]
        plant_no_trim_on_open: bool,
    },
    /// (internal) The crash test's child process.
    #[command(hide = true)]
    CrashChild {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        steps: u64,
        /// `<crash point>:<visit>`: SIGKILL this process at that visit.
        #[arg(long)]
        arm: Option<String>,
        /// Recover with the `no-trim-on-open` planted bug.
        #[arg(long)]
        plant_no_trim_on_open: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Where { cases, seed } => {
            let Some(server) = start("where") else {
                return ExitCode::from(2);
            };
            let report = reality::clauses::run(&mut server.connect(), seed, cases);
            let refused = &report.engine_refused;
            finish("where", &report.summary(), &report.disagreements, refused)
        }
        Command::Model { workloads, seed } => {
            let Some(server) = start("model") else {
                return ExitCode::from(2);
            };
            let report = reality::model::run(&server, seed, workloads);
            finish("model", &report.summary(), &report.differences, &none())
        }
        Command::Crash {
            kills,
            twins,
            seed,
            plant_no_trim_on_open,
        } => {
            let bin = std::env::current_exe().expect("this binary's path");
            let planted = plant_no_trim_on_open;
            let report = reality::crash::random_kills(&bin, seed, kills, planted);
            let killed = finish("crash", &report.summary(), &report.breaches, &none());
            let report = reality::crash::twin::twins(&bin, seed, twins);
            let twinned = finish("crash", &report.summary(), &report.differences, &none());
            if killed == ExitCode::SUCCESS {
                twinned
            } else {
                killed
            }
        }
        Command::CrashChild {
            dir,
            seed,
            steps,
            arm,
            plant_no_trim_on_open,
        } => {
            let arm = arm.map(|a| {
                let (point, nth) = a.rsplit_once(':').expect("--arm <point>:<visit>");
                let point = point.parse().unwrap_or_else(|e| panic!("--arm: {e}"));
                (point, nth.parse().expect("--arm: a visit number"))
            });
            reality::crash::child_main(&dir, seed, steps, arm, plant_no_trim_on_open);
            ExitCode::SUCCESS
        }
    }
}

fn none() -> std::collections::BTreeMap<String, (usize, String)> {
    std::collections::BTreeMap::new()
}

/// A private server, or the reason there is none (printed).
fn start(check: &str) -> Option<PgServer> {
    PgServer::start()
        .inspect_err(|e| eprintln!("reality {check}: {e}"))
        .ok()
}

fn finish(
    check: &str,
    summary: &str,
    disagreements: &[String],
    refused: &std::collections::BTreeMap<String, (usize, String)>,
) -> ExitCode {
    println!("reality {check}: {summary}");
    for (reason, (n, example)) in refused {
        println!("  refused by the engine only: {n:>6}  {reason}  (e.g. `{example}`)");
    }
    for d in disagreements.iter().take(50) {
        println!("DISAGREEMENT {d}");
    }
    if disagreements.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
