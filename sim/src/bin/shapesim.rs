//! `shapesim`: see `shapesim --help`.

#[cfg(not(madsim))]
compile_error!(
    "shapesim runs under madsim: build with `--cfg madsim` (set in .cargo/config.toml; a RUSTFLAGS variable replaces it)"
);

use clap::Parser;
use sim::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let code = match &cli.command {
        Command::Run(args) => sim::cli::run(args),
        Command::Sweep(args) => sim::cli::sweep(args),
    };
    std::process::exit(code);
}
