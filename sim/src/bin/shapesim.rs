//! `shapesim`: see `shapesim --help`.

#[cfg(not(madsim))]
compile_error!(
    "shapesim runs under madsim: build with `--cfg madsim` (set in .cargo/config.toml; a RUSTFLAGS variable replaces it)"
);

use clap::Parser;

fn main() {
    std::process::exit(sim::cli::main(sim::cli::Cli::parse()));
}

#[global_allocator]
static ALLOCATOR: sim::alloc::Mimalloc = sim::alloc::Mimalloc;
