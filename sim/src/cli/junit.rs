//! A sweep as JUnit XML, the format CI test reporters read: one
//! `<testsuite>` per sweep, one `<testcase>` per seed (named by seed and
//! scenario), a `<failure>` per failing seed whose message is the check and
//! its message and whose text is the reproduction command.
//!
//! ```xml
//! <testsuites tests="3" failures="1" time="0.4">
//!   <testsuite name="shapesim default" tests="3" failures="1" errors="0" skipped="0" time="0.4">
//!     <testcase name="seed 7 (default)" classname="shapesim.default" time="0.1">
//!       <failure message="durability: ..." type="durability">reproduce with: ...</failure>
//!     </testcase>
//! ```

use super::ScenarioArgs;
use super::sweep::SeedResult;
use quick_xml::Writer;
use quick_xml::events::BytesText;
use std::io;
use std::path::Path;

/// The suite's name: the scenario file's stem, or `default`.
pub fn suite_name(scenario: &ScenarioArgs) -> String {
    let stem = scenario
        .scenario
        .as_ref()
        .and_then(|p| p.file_stem())
        .map_or("default".to_string(), |s| s.to_string_lossy().to_string());
    match scenario.plant.is_empty() {
        true => stem,
        false => {
            let plants: Vec<String> = scenario
                .plant
                .iter()
                .map(|p| p.name().to_string())
                .collect();
            format!("{stem} with {}", plants.join(", "))
        }
    }
}

/// Writes the report to `path`.
pub fn write(
    path: &Path,
    suite: &str,
    results: &[SeedResult],
    repro: &dyn Fn(u64) -> String,
    wall_s: f64,
) -> io::Result<()> {
    let failures = results.iter().filter(|r| r.failed()).count();
    let (tests, failures) = (results.len().to_string(), failures.to_string());
    let time = format!("{wall_s:.3}");
    let file = std::fs::File::create(path)?;
    let mut writer = Writer::new_with_indent(io::BufWriter::new(file), b' ', 2);
    writer.write_event(quick_xml::events::Event::Decl(
        quick_xml::events::BytesDecl::new("1.0", Some("UTF-8"), None),
    ))?;
    writer
        .create_element("testsuites")
        .with_attributes([
            ("tests", tests.as_str()),
            ("failures", failures.as_str()),
            ("time", time.as_str()),
        ])
        .write_inner_content(|w| {
            w.create_element("testsuite")
                .with_attributes([
                    ("name", format!("shapesim {suite}").as_str()),
                    ("tests", tests.as_str()),
                    ("failures", failures.as_str()),
                    ("errors", "0"),
                    ("skipped", "0"),
                    ("time", time.as_str()),
                ])
                .write_inner_content(|w| {
                    results
                        .iter()
                        .try_for_each(|r| testcase(w, suite, r, repro))
                })?;
            Ok(())
        })?;
    use io::Write as _;
    writer.get_mut().write_all(b"\n")?;
    writer.into_inner().flush()
}

fn testcase<W: io::Write>(
    w: &mut Writer<W>,
    suite: &str,
    result: &SeedResult,
    repro: &dyn Fn(u64) -> String,
) -> io::Result<()> {
    let seed = result.outcome.seed;
    let time = format!("{:.3}", result.outcome.wall_ms as f64 / 1000.0);
    let element = w.create_element("testcase").with_attributes([
        ("name", format!("seed {seed} ({suite})").as_str()),
        (
            "classname",
            format!("shapesim.{}", suite.replace(' ', "_")).as_str(),
        ),
        ("time", time.as_str()),
    ]);
    if !result.failed() {
        element.write_empty()?;
        return Ok(());
    }
    let (kind, message) = match (&result.outcome.failure, &result.divergence) {
        (Some(f), _) => (f.check.to_string(), format!("{}: {}", f.check, f.message)),
        (None, Some(d)) => ("determinism".to_string(), format!("determinism: {d}")),
        (None, None) => unreachable!("a failed seed has a failure or a divergence"),
    };
    let mut text = format!("reproduce with: {}", repro(seed));
    if result.divergence.is_some() {
        text.push_str(" --check-determinism");
    }
    element.write_inner_content(|w| {
        w.create_element("failure")
            .with_attributes([("message", message.as_str()), ("type", kind.as_str())])
            .write_text_content(BytesText::new(&text))?;
        Ok(())
    })?;
    Ok(())
}
