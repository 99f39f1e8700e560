//! The timeline of a run (`run/replay --timeline FILE`): valid Chrome
//! trace-event JSON with the tracks, spans and failure of the run, and no
//! effect on the run itself.

mod common;
use common::shapesim;

use serde_json::Value;
use std::collections::BTreeMap;

#[test]
fn a_failing_corpus_entry_has_a_timeline_with_its_tracks_spans_and_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("timeline.json");
    let out = shapesim(&[
        "replay",
        "../corpus/planted-ignore-xip.json",
        "--timeline",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "the entry fails with its plant");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let events = json["traceEvents"].as_array().expect("traceEvents");
    let tracks: BTreeMap<u64, String> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| {
            (
                e["tid"].as_u64().unwrap(),
                e["args"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for track in ["postgres", "engine", "checks", "client 0"] {
        assert!(
            tracks.values().any(|t| t == track),
            "track {track} in {tracks:?}"
        );
    }
    assert!(
        tracks.values().any(|t| t.starts_with("shape ")),
        "a shape track"
    );
    let mut spans: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    let mut kinds = std::collections::BTreeSet::new();
    for e in events.iter().filter(|e| e["ph"] == "X") {
        let (ts, dur) = (e["ts"].as_u64().unwrap(), e["dur"].as_u64().unwrap());
        let tid = e["tid"].as_u64().unwrap();
        assert!(tracks.contains_key(&tid), "every span's track is named");
        spans.entry(tid).or_default().push((ts, ts + dur));
        kinds.insert(e["cat"].as_str().unwrap().to_string());
    }
    for kind in ["batch", "check", "snapshot", "long-poll", "boot"] {
        assert!(kinds.contains(kind), "a {kind} span in {kinds:?}");
    }
    for (tid, mut list) in spans {
        list.sort();
        assert!(
            list.windows(2).all(|w| w[0].1 <= w[1].0),
            "spans of {} overlap",
            tracks[&tid]
        );
    }
    let failure: Vec<&Value> = events.iter().filter(|e| e["cat"] == "failure").collect();
    assert_eq!(failure.len(), 1);
    assert_eq!(failure[0]["name"], "FAILED: prefix-mismatch");
    assert_eq!(failure[0]["ph"], "i");
    let last = events
        .iter()
        .filter_map(|e| e["ts"].as_u64())
        .max()
        .unwrap();
    assert!(failure[0]["ts"].as_u64().unwrap() <= last);
}

/// Drawing a timeline never changes the run: same trace hash without it.
#[test]
fn a_timeline_leaves_the_trace_unchanged() {
    let knobs = sim::scenario::Knobs::default();
    let scenario = sim::cli::run_seed(5, &knobs, &[], false);
    let with = sim::harness::execute(
        &sim::scenario::generate::expand(5, &knobs),
        &sim::harness::RunOptions {
            timeline: true,
            ..Default::default()
        },
    );
    assert!(with.timeline.is_some());
    assert_eq!(scenario.trace_hash, with.trace_hash);
}

/// Chromium from Debian (`chromium`) or `CHROMIUM`; none: a failure in CI,
/// a printed skip elsewhere.
fn chromium(test: &str) -> Option<std::path::PathBuf> {
    let named = std::env::var_os("CHROMIUM").map(std::path::PathBuf::from);
    let found = named.or_else(|| {
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|name| {
                std::env::var_os("PATH").and_then(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join(name))
                        .find(|f| f.is_file())
                })
            })
    });
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{test}: Chromium is not installed (apt-get install -y chromium)"
        );
        eprintln!("SKIPPED {test}: Chromium is not installed (apt-get install -y chromium)");
    }
    found
}

/// Headless Chromium with a fresh profile and no background networking.
fn headless(
    chromium: &std::path::Path,
    profile: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium")
}

/// The HTML report of a failing corpus entry: self-contained, and rendered
/// by a real headless browser with its failure and its timeline's SVG; a
/// screenshot is kept in the target directory.
#[test]
fn a_failing_corpus_entry_report_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let out = shapesim(&[
        "replay",
        "../corpus/planted-ignore-xip.json",
        "--report",
        page.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("<script") && !html.contains("src=") && !html.contains("<link"),
        "self-contained"
    );
    assert!(html.contains("<svg") && html.contains("prefix-mismatch") && html.contains("replay"));
    let Some(chromium) = chromium("a_failing_corpus_entry_report_renders_in_headless_chromium")
    else {
        return;
    };
    let url = format!("file://{}", page.display());
    let dom = headless(
        &chromium,
        &dir.path().join("profile-dom"),
        &["--dump-dom", &url],
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("FAIL: prefix-mismatch"),
        "the rendered page shows the failure"
    );
    assert!(
        dom.contains("<svg") && dom.contains("class=\"failure\""),
        "and the timeline"
    );
    let shot =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-planted-ignore-xip.png");
    let taken = headless(
        &chromium,
        &dir.path().join("profile-shot"),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,900",
            &url,
        ],
    );
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    println!("screenshot: {}", shot.display());
}
