//! Helpers shared by the integration tests that drive the `shapesim` binary.

/// Runs `shapesim` with `args` and returns its output.
pub fn shapesim(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_shapesim"))
        .args(args)
        .output()
        .expect("run shapesim")
}
