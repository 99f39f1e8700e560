//! `run/replay --report FILE.html`: one self-contained page (no script, no
//! network) with the verdict, the failure and its last events, the
//! reproduction command, the run's timeline drawn as SVG and its coverage.

use crate::harness::RunOutcome;
use quick_xml::escape::escape;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

const LABEL_PX: f64 = 230.0;
const PLOT_PX: f64 = 1_100.0;
const ROW_PX: f64 = 18.0;

/// The page for a run that kept its timeline.
pub fn html(outcome: &RunOutcome, repro: &str) -> String {
    let verdict = match &outcome.failure {
        Some(f) => format!("FAIL: {}", f.check),
        None => "PASS".to_string(),
    };
    let title = format!("shapesim seed {}: {verdict}", outcome.seed);
    let mut page = String::new();
    writeln!(
        page,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head><body>\n<h1>{}</h1>",
        escape(&title),
        escape(&title)
    )
    .expect("formatting into a String");
    if let Some(f) = &outcome.failure {
        writeln!(
            page,
            "<section id=\"failure\"><h2>Failure</h2><p>check <b class=\"check\">{}</b> at {:.3} s simulated</p>\
             <pre class=\"message\">{}</pre></section>",
            escape(&f.check),
            f.sim_ms as f64 / 1000.0,
            escape(&f.message)
        )
        .expect("formatting into a String");
    }
    writeln!(
        page,
        "<section id=\"repro\"><h2>Reproduce</h2><pre><code>{}</code></pre><p>trace {}, {} events, {} restarts, {} 409s, {:.1} s simulated</p></section>",
        escape(repro),
        escape(&outcome.trace_hash),
        outcome.events,
        outcome.restarts,
        outcome.conflicts,
        outcome.sim_ms as f64 / 1000.0
    ).expect("formatting into a String");
    if let Some(timeline) = &outcome.timeline {
        writeln!(
            page,
            "<section id=\"timeline\"><h2>Timeline (simulated time)</h2>{}</section>",
            svg(timeline)
        )
        .expect("formatting into a String");
    }
    if outcome.failure.is_some() {
        let events: Vec<String> = outcome
            .last_events
            .iter()
            .map(|e| escape(e).into_owned())
            .collect();
        writeln!(
            page,
            "<section id=\"events\"><h2>Last events before the failure</h2><pre>{}</pre></section>",
            events.join("\n")
        )
        .expect("formatting into a String");
    }
    writeln!(
        page,
        "<section id=\"coverage\"><h2>Coverage</h2><pre>{}</pre></section>\n</body></html>",
        escape(outcome.coverage.table())
    )
    .expect("formatting into a String");
    page
}

const STYLE: &str = "body{font:14px sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}\
pre{background:#f5f5f5;padding:.6em;overflow-x:auto;font-size:12px}pre.message{white-space:pre-wrap}.check{color:#b00}\
svg text{font:11px sans-serif}";

/// Fill colour of a category.
fn colour(category: &str) -> &'static str {
    match category {
        "batch" => "#7aa6da",
        "restart" | "kill" | "power-loss" => "#e78c45",
        "boot" => "#c397d8",
        "snapshot" => "#70c0b1",
        "check" => "#b9ca4a",
        "long-poll" => "#d6d6d6",
        "409" | "removal" => "#d54e53",
        "failure" => "#ff0000",
        _ => "#888888",
    }
}

/// The timeline's tracks as rows, its spans as bars, its instants as ticks;
/// the failure as a red line across every row.
fn svg(timeline: &Value) -> String {
    let events = timeline["traceEvents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut rows: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    for e in events.iter().filter(|e| e["ph"] == "M") {
        let tid = e["tid"].as_u64().unwrap_or(0);
        let entry = rows.entry(tid).or_insert((tid, String::new()));
        match e["name"].as_str() {
            Some("thread_name") => entry.1 = e["args"]["name"].as_str().unwrap_or("").to_string(),
            Some("thread_sort_index") => entry.0 = e["args"]["sort_index"].as_u64().unwrap_or(tid),
            _ => {}
        }
    }
    rows.remove(&0);
    let mut order: Vec<(u64, u64, String)> =
        rows.into_iter().map(|(tid, (s, n))| (s, tid, n)).collect();
    order.sort();
    let row_of: BTreeMap<u64, usize> = order
        .iter()
        .enumerate()
        .map(|(i, (_, tid, _))| (*tid, i))
        .collect();
    let end_us = events
        .iter()
        .filter_map(|e| Some(e["ts"].as_u64()? + e["dur"].as_u64().unwrap_or(0)))
        .max()
        .unwrap_or(1)
        .max(1);
    let x = |us: u64| LABEL_PX + PLOT_PX * us as f64 / end_us as f64;
    let height = ROW_PX * (order.len() as f64 + 2.0);
    let mut svg = String::new();
    write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"timeline\">",
        LABEL_PX + PLOT_PX + 10.0
    ).expect("formatting into a String");
    for (i, (_, _, name)) in order.iter().enumerate() {
        let y = ROW_PX * (i as f64 + 1.0);
        write!(
            svg,
            "<text x=\"4\" y=\"{}\">{}</text><line x1=\"{LABEL_PX}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#eee\"/>",
            y + 12.0,
            escape(name),
            LABEL_PX + PLOT_PX
        ).expect("formatting into a String");
    }
    let seconds = end_us / 1_000_000;
    let step = (seconds / 10).max(1);
    for s in (0..=seconds).step_by(step as usize) {
        let px = x(s * 1_000_000);
        write!(
            svg,
            "<text x=\"{px:.1}\" y=\"{}\" fill=\"#666\">{s} s</text>",
            height - 4.0
        )
        .expect("formatting into a String");
    }
    for e in &events {
        let (Some(tid), Some(ts)) = (e["tid"].as_u64(), e["ts"].as_u64()) else {
            continue;
        };
        let Some(&row) = row_of.get(&tid) else {
            continue;
        };
        let (cat, name) = (
            e["cat"].as_str().unwrap_or(""),
            e["name"].as_str().unwrap_or(""),
        );
        let y = ROW_PX * (row as f64 + 1.0) + 2.0;
        let tip = format!("{name} at {:.3} s", ts as f64 / 1e6);
        match (e["ph"].as_str(), cat) {
            (Some("X"), _) => {
                let w = (x(ts + e["dur"].as_u64().unwrap_or(0)) - x(ts)).max(1.0);
                write!(
                    svg,
                    "<rect x=\"{:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"><title>{}</title></rect>",
                    x(ts),
                    ROW_PX - 4.0,
                    colour(cat),
                    escape(&tip)
                ).expect("formatting into a String");
            }
            (Some("i"), "failure") => {
                write!(
                    svg,
                    "<line class=\"failure\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"0\" y2=\"{1}\" stroke=\"red\" stroke-width=\"2\"><title>{2}</title></line>\
                     <text x=\"{3:.1}\" y=\"12\" fill=\"red\" text-anchor=\"end\">{4}</text>",
                    x(ts),
                    height,
                    escape(&tip),
                    x(ts) - 3.0,
                    escape(name)
                ).expect("formatting into a String");
            }
            (Some("i"), _) => {
                write!(
                    svg,
                    "<rect x=\"{:.1}\" y=\"{y}\" width=\"2\" height=\"{}\" fill=\"{}\"><title>{}</title></rect>",
                    x(ts),
                    ROW_PX - 4.0,
                    colour(cat),
                    escape(&tip)
                ).expect("formatting into a String");
            }
            _ => {}
        }
    }
    svg.push_str("</svg>");
    svg
}
