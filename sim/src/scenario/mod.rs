//! Scenarios: the knobs (from a scenario file and command-line overrides) and
//! the explicit scenario a seed expands into: the shapes, every transaction
//! of every batch, the restarts with their kind and armed crash point, client
//! restarts and network partitions, and the seed of madsim's scheduler.
//! Running a seed is `generate::expand` followed by `harness::execute`.

pub mod generate;
mod knobs;

pub use knobs::{KnobArgs, Knobs, RestartType, ScenarioFile};

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One statement of the workload, in terms of the standard schema (Electric's
/// oracle test, section 7.3, plus level_4 inserts, deletes and key changes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// `UPDATE level_<level> SET active = NOT active WHERE id = <id>`
    ToggleActive {
        level: u8,
        id: String,
    },
    /// `UPDATE level_<level> SET level_<level-1>_id = <parent> WHERE id = <id>`
    Reparent {
        level: u8,
        id: String,
        parent: String,
    },
    /// `INSERT INTO level_<level>_tags ... ON CONFLICT DO NOTHING`
    AddTag {
        level: u8,
        id: String,
        tag: String,
    },
    /// `DELETE FROM level_<level>_tags WHERE ...`
    RemoveTag {
        level: u8,
        id: String,
        tag: String,
    },
    /// `UPDATE level_4 SET value = <value> WHERE id = <id>`
    SetValue {
        id: String,
        value: String,
    },
    InsertLevel4 {
        id: String,
        parent: String,
        value: String,
    },
    DeleteLevel4 {
        id: String,
    },
    /// `UPDATE level_4 SET id = <new_id> WHERE id = <id>`: a primary-key change.
    ChangeLevel4Key {
        id: String,
        new_id: String,
    },
}

/// A shape the clients subscribe to (always on `level_4`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeSpec {
    pub where_clause: Option<String>,
    pub replica_full: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartKind {
    /// The shutdown coordinator runs, then the node is killed.
    Graceful,
    /// The node's tasks are dropped wherever they are; the disk keeps what was written.
    Crash,
    /// As `Crash`, then unsynced data is dropped or torn and unsynced directory entries vanish.
    Power,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    pub kind: RestartKind,
    /// For a kill: how long after the batch's last commit it lands (unless an
    /// armed crash point fires first).
    pub kill_delay_ms: u64,
    /// A crash point (by name) and which visit of it kills the node.
    pub crash_point: Option<(String, u32)>,
    /// Seeds the torn writes of a power loss.
    pub power_seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    EnginePostgres,
    ClientsEngine,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub link: Link,
    /// When it starts, after the batch's first commit.
    pub start_ms: u64,
    pub duration_ms: u64,
}

/// Everything a run does, explicitly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The seed this scenario was expanded from.
    pub seed: u64,
    pub knobs: Knobs,
    pub shapes: Vec<ShapeSpec>,
    /// Batch -> transaction -> statements.
    pub batches: Vec<Vec<Vec<Op>>>,
    /// Stack restarts, by the number of the batch they follow (1-based).
    pub restarts: BTreeMap<usize, Restart>,
    /// Client restarts (fresh clients at `offset=-1`), by batch number.
    pub client_restarts: BTreeSet<usize>,
    /// Partitions, by the batch during which they happen.
    pub partitions: BTreeMap<usize, Partition>,
    /// The seed of madsim's scheduler, network and timing randomness.
    pub sched_seed: u64,
}

impl Scenario {
    pub fn mutation_count(&self) -> usize {
        self.batches.iter().flatten().map(Vec::len).sum()
    }
}
