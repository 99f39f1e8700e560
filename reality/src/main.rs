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
            finish(
                "model",
                &report.summary(),
                &report.differences,
                &Default::default(),
            )
        }
    }
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
