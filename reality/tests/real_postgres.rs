//! The harness's models against a real PostgreSQL (a private server per
//! test; skipped with a message when PostgreSQL is not installed, a failure
//! in CI). Longer runs: `cargo run --release -p reality -- --help`.

use reality::server::server_for_test;

/// 2,000 generated clauses: engine, oracle and PostgreSQL agree on every
/// row, and every clause PostgreSQL rejects is a 400 naming `where`.
#[test]
fn real_postgres_where_clauses_agree_with_the_engine_and_the_oracle() {
    let Some(server) = server_for_test("real_postgres_where_clauses") else {
        return;
    };
    let mut client = server.connect();
    let report = reality::clauses::run(&mut client, 0, 2_000);
    println!("{}", report.summary());
    assert!(
        report.disagreements.is_empty(),
        "{}\n{}",
        report.summary(),
        report.disagreements.join("\n")
    );
    // The comparison covered most clauses, and rejections happened.
    assert!(report.compared >= 1_200, "{}", report.summary());
    assert!(
        report.compared_with_subqueries >= 200,
        "{}",
        report.summary()
    );
    assert!(report.both_rejected >= 200, "{}", report.summary());
}

/// 200 seeded workloads of interleaved and aborted transactions: xids,
/// snapshots (with transactions in progress), visibility, repeatable-read
/// rows, the slot's stream and its replay all agree with the model.
#[test]
fn real_postgres_model_matches_transactions_snapshots_and_replay() {
    let Some(server) = server_for_test("real_postgres_model") else {
        return;
    };
    let report = reality::model::run(&server, 0, 200);
    println!("{}", report.summary());
    assert!(
        report.differences.is_empty(),
        "{}\n{}",
        report.summary(),
        report.differences.join("\n")
    );
    assert!(
        report.aborted >= 200 && report.snapshots_with_xip >= 200,
        "{}",
        report.summary()
    );
    assert_eq!(report.replays, 200, "{}", report.summary());
}
