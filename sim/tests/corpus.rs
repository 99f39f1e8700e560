//! Replays every corpus entry. An entry carries the bug it came from (a
//! planted bug, or a fixed real bug re-introduced by its switch): with it, it
//! must fail with its recorded signature; without it, it must pass. The
//! outcome of both replays is an insta snapshot, so any change in what an
//! entry does fails the suite until a person looks at it.
#![cfg(madsim)]
#![allow(clippy::disallowed_types)] // wall time per entry is reported, not asserted

use serde_json::json;
use sim::corpus::{self, CorpusEntry};
use sim::harness::{self, RunOptions, RunOutcome};
use sim::scenario::{Plant, Scenario};
use sim::shrink;
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus")
}

/// What an outcome means, not how it got there: the check, the shape at
/// fault (by definition) and the message with numbers and handles masked.
/// Event counts and times stay out, so a harmless change to what is logged
/// does not touch every snapshot.
fn summary(scenario: &Scenario, outcome: &RunOutcome) -> serde_json::Value {
    match &outcome.failure {
        None => json!({"result": "pass"}),
        Some(failure) => json!({
            "result": "fail",
            "signature": shrink::signature(scenario, failure),
            "check": failure.check,
            "shape": failure.shape.and_then(|i| scenario.shapes.get(i)),
            "message": sim::harness::panics::mask(&failure.message),
        }),
    }
}

#[test]
fn every_corpus_entry_fails_with_its_bug_and_passes_without_it() {
    harness::quiet_seed_panics();
    let files = corpus::entries(&corpus_dir()).expect("the corpus directory");
    let entries: Vec<CorpusEntry> = files
        .iter()
        .map(|file| CorpusEntry::load(file).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for plant in Plant::ALL
        .into_iter()
        .chain(Plant::SUBQUERIES)
        .chain(Plant::REAL_BUGS)
    {
        assert!(
            entries.iter().any(|e| e.scenario.plants == [plant]),
            "no corpus entry shows {} on its own: find one with `shapesim sweep --plant {}`",
            plant.name(),
            plant.name()
        );
    }
    for entry in entries {
        let started = std::time::Instant::now();
        let with_bug = harness::execute(&entry.scenario, &RunOptions::default());
        let mut fixed = entry.scenario.clone();
        fixed.plants.clear();
        let without_bug = harness::execute(&fixed, &RunOptions::default());
        eprintln!(
            "{}: replayed twice in {} ms",
            entry.name,
            started.elapsed().as_millis()
        );

        let signature = with_bug
            .failure
            .as_ref()
            .map(|f| shrink::signature(&entry.scenario, f));
        if entry.scenario.plants.is_empty() {
            // A real bug, fixed in the engine: the entry guards the fix.
            assert!(
                with_bug.passed(),
                "{}: the fixed bug is back ({}): {:?}",
                entry.name,
                entry.signature,
                with_bug.failure
            );
        } else {
            assert_eq!(
                signature.as_deref(),
                Some(entry.signature.as_str()),
                "{}: with its bug it must fail as recorded",
                entry.name
            );
        }
        assert!(
            without_bug.passed(),
            "{}: without its bug it must pass: {:?}",
            entry.name,
            without_bug.failure
        );
        let plants: Vec<String> = entry.scenario.plants.iter().map(|p| p.name()).collect();
        insta::assert_json_snapshot!(
            entry.name.clone(),
            json!({
                "name": entry.name,
                "bug": plants,
                "statements": entry.scenario.mutation_count(),
                "with_bug": summary(&entry.scenario, &with_bug),
                "without_bug": summary(&fixed, &without_bug),
            })
        );
    }
}

#[test]
fn malformed_scenario_and_corpus_files_name_the_problem() {
    let good = sim::scenario::generate::expand(1, &sim::scenario::Knobs::default()).to_json();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut value: serde_json::Value = serde_json::from_str(&good).unwrap();
        f(&mut value);
        value.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        (
            edit(&|v| v["format_version"] = json!(3)),
            "unknown format_version 3",
        ),
        (
            edit(&|v| v["format_version"] = json!(1)),
            "unknown format_version 1 (this shapesim reads version 2)",
        ),
        (
            edit(&|v| drop(v.as_object_mut().unwrap().remove("format_version"))),
            "missing field `format_version`",
        ),
        (edit(&|v| v["extra"] = json!(true)), "unknown field `extra`"),
        (
            edit(&|v| v["timing"]["chunkbytes"] = json!(1)),
            "unknown field `chunkbytes`",
        ),
        (
            edit(&|v| v["sched_seed"] = json!("soon")),
            "invalid type: string \"soon\"",
        ),
        (
            edit(&|v| v["batches"][0][0][0] = json!({"op": "truncate_table", "table": "level_4"})),
            "unknown variant `truncate_table`",
        ),
        (
            edit(&|v| v["schema"] = json!("other")),
            "unknown schema \"other\"",
        ),
        (
            edit(&|v| v["plants"] = json!(["forgot-to-fsync"])),
            "unknown variant `forgot-to-fsync`",
        ),
        (
            edit(&|v| {
                v["restarts"]["1"] = json!({
                    "kind": "graceful", "kill_delay_ms": 0,
                    "crash_point": ["log.flush.after_write", 0], "power_seed": 0,
                })
            }),
            "restarts.1.crash_point: a graceful restart cannot kill",
        ),
        (
            edit(&|v| {
                v["restarts"]["1"] = json!({
                    "kind": "crash", "kill_delay_ms": 0,
                    "crash_point": ["when-pigs-fly", 0], "power_seed": 0,
                })
            }),
            "restarts.1.crash_point: ",
        ),
        (
            edit(&|v| v["client_restarts"] = json!([999])),
            "client_restarts.999: there is no batch 999",
        ),
        (
            edit(&|v| v["removals"] = json!({"1": {"shape": 99, "at_ms": 0}})),
            "removals.1.shape: there is no shape 99",
        ),
        (
            edit(&|v| v["removals"] = json!({"1": {"shape": 0, "when": 0}})),
            "unknown field `when`",
        ),
        (
            edit(&|v| v["timing"]["strict_409"] = json!(true)),
            "unknown field `strict_409`",
        ),
        ("{".to_string(), "not JSON"),
    ];
    for (text, fragment) in &cases {
        let err = Scenario::parse(text).expect_err(fragment);
        assert!(err.contains(fragment), "{fragment:?} not in {err:?}");
    }
    assert_eq!(Scenario::parse(&good).unwrap().seed, 1);

    let entry = json!({
        "format_version": 2, "name": "x", "description": "d", "signature": "liveness",
        "origin": {"seed": 1, "plants": [], "source": "test"},
        "scenario": serde_json::from_str::<serde_json::Value>(&good).unwrap(),
    });
    assert!(CorpusEntry::parse(&entry.to_string()).is_ok());
    let mut bad = entry.clone();
    bad["scenario"]["format_version"] = json!(7);
    assert!(
        CorpusEntry::parse(&bad.to_string())
            .unwrap_err()
            .contains("scenario: unknown format_version 7")
    );
    let mut bad = entry.clone();
    bad["origin"]["branch"] = json!("main");
    assert!(
        CorpusEntry::parse(&bad.to_string())
            .unwrap_err()
            .contains("unknown field `branch`")
    );
    let mut bad = entry;
    bad["format_version"] = json!(0);
    assert!(
        CorpusEntry::parse(&bad.to_string())
            .unwrap_err()
            .contains("unknown format_version 0")
    );
}
