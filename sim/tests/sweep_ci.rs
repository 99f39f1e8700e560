//! Sweeps as CI runs them: shards that partition a seed range, JUnit XML
//! that test reporters read, a time budget.

mod common;
use common::shapesim;

use quick_xml::events::Event;
use std::collections::BTreeMap;
use std::path::Path;

/// One `<testcase>`: its name and, if it failed, the failure's `message`
/// attribute and text.
#[derive(Debug)]
struct Case {
    name: String,
    failure: Option<(String, String)>,
}

/// Reads a JUnit file, checking the structure CI reporters rely on:
/// `testsuites` > `testsuite` > `testcase` > optional `failure`, and the
/// `tests`/`failures` counts of both levels equal to what they contain.
fn read_junit(path: &Path) -> Vec<Case> {
    let xml = std::fs::read_to_string(path).expect("the JUnit file");
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut stack: Vec<String> = Vec::new();
    let mut cases: Vec<Case> = Vec::new();
    let mut counts: BTreeMap<String, (String, String)> = BTreeMap::new();
    loop {
        let (element, empty) = match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::Text(t) if stack.last().is_some_and(|n| n == "failure") => {
                let case = cases.last_mut().expect("a test case");
                // The command has no entity references: its text is one event.
                case.failure.as_mut().expect("a failure").1 += &t.decode().unwrap();
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = String::from_utf8(element.name().as_ref().to_vec()).unwrap();
        let attrs: BTreeMap<String, String> = element
            .attributes()
            .map(|a| {
                let a = a.unwrap();
                let key = String::from_utf8(a.key.as_ref().to_vec()).unwrap();
                (key, a.unescape_value().unwrap().to_string())
            })
            .collect();
        let expected_parent = match name.as_str() {
            "testsuites" => None,
            "testsuite" => Some("testsuites"),
            "testcase" => Some("testsuite"),
            "failure" => Some("testcase"),
            other => panic!("unexpected element <{other}>"),
        };
        assert_eq!(
            stack.last().map(String::as_str),
            expected_parent,
            "<{name}>"
        );
        match name.as_str() {
            "testsuites" | "testsuite" => {
                counts.insert(
                    name.clone(),
                    (attrs["tests"].clone(), attrs["failures"].clone()),
                );
            }
            "testcase" => cases.push(Case {
                name: attrs["name"].clone(),
                failure: None,
            }),
            _ => {
                cases.last_mut().expect("a test case").failure =
                    Some((attrs["message"].clone(), String::new()))
            }
        }
        if !empty {
            stack.push(name);
        }
    }
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    for level in ["testsuites", "testsuite"] {
        let (tests, failed) = &counts[level];
        assert_eq!(tests, &cases.len().to_string(), "{level} tests=");
        assert_eq!(failed, &failures.to_string(), "{level} failures=");
    }
    cases
}

/// `seed 17 (smoke)` -> 17.
fn seed_of(case: &Case) -> u64 {
    let rest = case.name.strip_prefix("seed ").expect("named by seed");
    rest.split(' ')
        .next()
        .unwrap()
        .parse()
        .expect("a seed number")
}

/// The four shards of 0..400 run each seed exactly once between them.
#[test]
fn four_shards_run_each_seed_of_the_range_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for k in 1..=4 {
        let path = dir.path().join(format!("shard-{k}.xml"));
        let shard = format!("{k}/4");
        let out = shapesim(&[
            "sweep",
            "--seeds",
            "0..400",
            "--shard",
            &shard,
            "--scenario",
            "../scenarios/smoke.toml",
            "--jobs",
            "2",
            "--junit",
            path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("shard {k}/4 of seeds 0..400")),
            "{stderr}"
        );
        let cases = read_junit(&path);
        assert_eq!(cases.len(), 100, "shard {k}");
        for case in &cases {
            *seen.entry(seed_of(case)).or_default() += 1;
        }
    }
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (0..400).collect::<Vec<_>>()
    );
    assert!(seen.values().all(|&n| n == 1), "a seed ran twice");
}

/// A failing plant sweep: every failing seed is a `<failure>` naming the
/// check, with the command that reproduces it.
#[test]
fn junit_failures_carry_the_check_and_the_reproduction_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sweep.xml");
    let out = shapesim(&[
        "sweep",
        "--seeds",
        "0..6",
        "--plant",
        "never-ack",
        "--jobs",
        "2",
        "--junit",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "failures exit 1");
    let cases = read_junit(&path);
    assert_eq!(cases.len(), 6);
    for case in &cases {
        let (message, text) = case.failure.as_ref().expect("never-ack fails every seed");
        assert!(message.starts_with("ack-liveness: "), "{message}");
        let seed = seed_of(case);
        let repro = format!("run --seed {seed} --plant never-ack");
        assert!(
            text.starts_with("reproduce with: cargo run") && text.ends_with(&repro),
            "{text}"
        );
    }
}

/// A spent time budget starts no more seeds and says so; the shard
/// arithmetic partitions any range.
#[test]
fn a_time_budget_stops_the_sweep_and_shards_partition_any_range() {
    let out = shapesim(&[
        "sweep",
        "--seeds",
        "0..50",
        "--time-budget-secs",
        "0",
        "--json",
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("time budget of 0 s spent: ran 0 of 50 seeds"),
        "{stderr}"
    );
    for (from, to, n) in [(0, 1, 3), (5, 17, 4), (10, 11, 1), (0, 100, 7)] {
        let mut all: Vec<u64> = (1..=n)
            .flat_map(|k| {
                sim::cli::shard_seeds(from, to, Some(sim::cli::Shard { index: k, count: n }))
            })
            .collect();
        all.sort();
        assert_eq!(
            all,
            (from..to).collect::<Vec<_>>(),
            "{from}..{to} in {n} shards"
        );
    }
    for bad in ["0/4", "5/4", "x/4", "2"] {
        let out = shapesim(&["sweep", "--seeds", "0..4", "--shard", bad]);
        assert_eq!(out.status.code(), Some(2), "--shard {bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("expected K/N"),
            "--shard {bad}"
        );
    }
}

/// The JSON summary on the last line of stdout.
fn summary(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().expect("a summary line")).expect("JSON")
}

/// One process per seed gives the same results, trace hashes and coverage
/// as the default in-process sweep, for passing seeds and failing ones.
#[test]
fn isolated_sweeps_match_in_process_sweeps() {
    for args in [
        &["--seeds", "0..100", "--scenario", "../scenarios/smoke.toml"][..],
        &["--seeds", "0..4", "--plant", "never-ack"][..],
    ] {
        let run = |isolate: bool| {
            let mut all = vec!["sweep", "--json", "--jobs", "2"];
            all.extend(args);
            if isolate {
                all.push("--isolate");
            }
            summary(&shapesim(&all))
        };
        let (in_process, isolated) = (run(false), run(true));
        assert_eq!(isolated["isolated"], true);
        for key in ["seed_list", "failing_seeds", "trace_digest", "coverage"] {
            assert_eq!(in_process[key], isolated[key], "{key} of {args:?}");
        }
        println!(
            "{args:?}: in-process {:.0} seeds/s, isolated {:.0} seeds/s",
            in_process["seeds_per_sec"].as_f64().unwrap(),
            isolated["seeds_per_sec"].as_f64().unwrap()
        );
    }
}

/// A nightly's artifacts: failing scenarios saved and shrunk, each small
/// file failing again when replayed (ready for `corpus add`).
#[test]
fn failing_seeds_are_saved_and_shrunk_ready_for_the_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().to_str().unwrap();
    let out = shapesim(&[
        "sweep",
        "--seeds",
        "0..2",
        "--plant",
        "never-ack",
        "--save-failures",
        saved,
        "--shrink-failures",
        "--shrink-secs",
        "30",
    ]);
    assert_eq!(out.status.code(), Some(1));
    for seed in 0..2 {
        let min = dir.path().join(format!("seed-{seed}.min.json"));
        let replay = shapesim(&["replay", min.to_str().unwrap()]);
        assert_eq!(
            replay.status.code(),
            Some(1),
            "the shrunk scenario still fails"
        );
        assert!(String::from_utf8_lossy(&replay.stderr).contains("ack-liveness"));
    }
    let out = shapesim(&["sweep", "--seeds", "0..2", "--shrink-failures"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--shrink-failures needs --save-failures"
    );
}

/// Every `shapesim` command in the CI workflow parses with this build's
/// command line (a renamed flag would otherwise break the nightly job
/// silently), with its expressions filled in as GitHub would.
#[test]
fn the_workflow_commands_parse() {
    use clap::Parser as _;
    let workflow = std::fs::read_to_string("../.github/workflows/dst.yml").expect("the workflow");
    let lines: Vec<&str> = workflow.lines().collect();
    let mut commands = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(start) = line.find("target/release/shapesim ") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut text = line[start..].to_string();
        for next in &lines[i + 1..] {
            if next.trim().is_empty() || next.len() - next.trim_start().len() < indent {
                break;
            }
            text.push(' ');
            text.push_str(next.trim());
        }
        let filled = text
            .replace("${{ matrix.scenario }}", "smoke")
            .replace("${{ matrix.shard }}", "1")
            .replace("${SEEDS}", "40000")
            .replace('"', "");
        assert!(!filled.contains("${"), "an unfilled expression in {filled}");
        let args = filled.split_whitespace().skip(1);
        let parsed = sim::cli::Cli::try_parse_from(std::iter::once("shapesim").chain(args));
        assert!(parsed.is_ok(), "{filled}: {}", parsed.err().unwrap());
        let scenario = filled
            .split("--scenario ")
            .nth(1)
            .map(|s| s.split(' ').next().unwrap());
        if let Some(file) = scenario {
            assert!(Path::new("..").join(file).is_file(), "{file} exists");
        }
        commands += 1;
    }
    assert_eq!(commands, 2, "the short and the nightly sweep");
}
