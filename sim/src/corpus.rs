//! The regression corpus: minimized failing scenarios, one file each under
//! `corpus/`, with a header saying where each came from, the failure it
//! shows (its signature) and one line a person can read. `cargo test`
//! replays every entry (`sim/tests/corpus.rs`).

use crate::scenario::{FORMAT_VERSION, Plant, Scenario, check_version};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// The seed the failure was found with.
    pub seed: u64,
    /// Planted bugs it ran with (empty for a real bug).
    pub plants: Vec<Plant>,
    /// Where it came from: the scenario file or command.
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusEntry {
    pub format_version: u32,
    pub name: String,
    /// One line: what the failure is.
    pub description: String,
    pub origin: Origin,
    /// The failure signature the scenario must show with its plants.
    pub signature: String,
    pub scenario: Scenario,
}

impl CorpusEntry {
    pub fn parse(text: &str) -> Result<CorpusEntry, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        check_version(&value)?;
        let scenario = value.get("scenario").ok_or("missing field `scenario`")?;
        // Check the embedded scenario with its own rules (version, schema).
        Scenario::parse(&scenario.to_string()).map_err(|e| format!("scenario: {e}"))?;
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    pub fn load(path: &Path) -> Result<CorpusEntry, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        CorpusEntry::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn new(
        name: &str,
        description: String,
        origin: Origin,
        signature: String,
        scenario: Scenario,
    ) -> CorpusEntry {
        CorpusEntry {
            format_version: FORMAT_VERSION,
            name: name.to_string(),
            description,
            origin,
            signature,
            scenario,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("corpus entries serialize")
    }
}

/// Every `*.json` file of a corpus directory, sorted by name.
pub fn entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// A file name for an entry: lower-case letters, digits and dashes.
pub fn file_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(format!("{name}.json"))
    } else {
        Err(format!(
            "corpus name {name:?} must be lower-case letters, digits and dashes"
        ))
    }
}

/// Reads a scenario file, or the scenario of a corpus entry.
pub fn load_scenario(path: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let parsed = if value.get("scenario").is_some() {
        CorpusEntry::parse(&text).map(|entry| entry.scenario)
    } else {
        Scenario::parse(&text)
    };
    parsed.map_err(|e| format!("{}: {e}", path.display()))
}
