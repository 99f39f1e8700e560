//! Real process crashes on a real disk (no PostgreSQL needed). Longer
//! runs: `cargo run --release -p reality -- crash --kills 200 --twins 200`.

use std::path::Path;

fn reality() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_reality"))
}

/// 20 SIGKILLs of a child running shape logs and SQLite metadata on a real
/// disk: after each, recovery keeps everything reported durable, whole
/// transactions only, every record as written.
#[test]
fn sigkill_recovery_keeps_everything_reported_durable() {
    let report = reality::crash::random_kills(reality(), 0, 20, false);
    println!("{}", report.summary());
    assert!(
        report.breaches.is_empty(),
        "{}\n{}",
        report.summary(),
        report.breaches.join("\n")
    );
    assert!(report.durable_reports >= 40, "{}", report.summary());
    assert!(report.records_checked >= 1_000, "{}", report.summary());
}

/// The check fails on the bug class it exists for: recovery that keeps
/// what follows the durable offset (`no-trim-on-open`). Deterministic: the
/// first child kills itself right after a flush wrote its data, unsynced
/// and past the durable offset; the second recovers with the plant.
#[test]
fn sigkill_check_catches_recovery_that_keeps_the_undurable_tail() {
    let breaches = reality::crash::planted_crash(reality(), 0, 60);
    assert!(
        !breaches.is_empty(),
        "the planted recovery passed the check"
    );
}

/// MemStorage against real crashes: a child SIGKILLs itself at a named
/// crash point, the same workload on MemStorage is parked there; both
/// report the same and recover to the same logs, metadata and cuts.
#[test]
fn sigkill_at_crash_points_recovers_like_mem_storage() {
    let report = reality::crash::twin::twins(reality(), 0, 40);
    println!("{}", report.summary());
    assert!(
        report.differences.is_empty(),
        "{}\n{}",
        report.summary(),
        report.differences.join("\n")
    );
    assert!(
        report.fired.values().sum::<usize>() >= 30,
        "{}",
        report.summary()
    );
}
