//! Scenarios: the knobs (from a scenario file and command-line overrides) and
//! the explicit scenario a seed expands into: the shapes, every transaction
//! of every batch, the restarts with their kind and armed crash point, client
//! restarts and network partitions, and the seed of madsim's scheduler.
//! Running a seed is `generate::expand` followed by `harness::execute`.

pub mod generate;
mod knobs;
pub mod subqueries;

pub use knobs::{KnobArgs, Knobs, RestartType, ScenarioFile, SubqueryRestore};

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
        #[serde(default)]
        note: Option<String>,
        #[serde(default)]
        rank: Option<i64>,
        #[serde(default)]
        flag: bool,
    },
    /// `UPDATE level_4 SET note = <note> WHERE id = <id>` (`null`: NULL)
    SetNote {
        id: String,
        note: Option<String>,
    },
    /// `UPDATE level_4 SET rank = <rank> WHERE id = <id>` (`null`: NULL)
    SetRank {
        id: String,
        rank: Option<i64>,
    },
    /// `UPDATE level_4 SET flag = <flag> WHERE id = <id>`
    SetFlag {
        id: String,
        flag: bool,
    },
    DeleteLevel4 {
        id: String,
    },
    /// `UPDATE level_4 SET id = <new_id> WHERE id = <id>`: a primary-key change.
    ChangeLevel4Key {
        id: String,
        new_id: String,
    },
    /// Not a statement: the transaction's BEGIN came `ahead` transactions
    /// earlier in its batch, so it held an older xid, in progress, while
    /// they began and committed.
    BeganEarlier {
        ahead: u8,
    },
    /// Not a statement: the transaction ends in ROLLBACK.
    Rollback,
}

impl Op {
    /// Whether this is a statement (not a transaction marker).
    pub fn is_statement(&self) -> bool {
        !matches!(self, Op::BeganEarlier { .. } | Op::Rollback)
    }
}

/// A shape the clients subscribe to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeSpec {
    /// The table (in `public`); files written before shapes could be on
    /// other tables have none: `level_4`.
    #[serde(default = "ShapeSpec::default_table")]
    pub table: String,
    /// `columns=`: the selected columns (the primary key is always sent);
    /// `None`: every column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    pub where_clause: Option<String>,
    pub replica_full: bool,
}

impl ShapeSpec {
    fn default_table() -> String {
        "level_4".to_string()
    }

    pub fn table_name(&self) -> engine::schema::TableName {
        engine::schema::TableName::public(&self.table)
    }

    /// How it reads in a signature or a report: `level_4 (id,value) where ... (replica full)`.
    pub fn describe(&self) -> String {
        let columns = self
            .columns
            .as_ref()
            .map(|c| format!(" ({})", c.join(",")))
            .unwrap_or_default();
        format!(
            "{}{columns} where {} (replica {})",
            self.table,
            self.where_clause.as_deref().unwrap_or("TRUE"),
            if self.replica_full { "full" } else { "default" }
        )
    }
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
    /// A graceful shutdown killed midway (at its armed crash point, or after
    /// the kill delay): the coordinator does not finish.
    InterruptedGraceful,
    /// A new instance starts beside the old one, which then shuts down
    /// gracefully; the new one takes over the slot and the disk.
    Rolling,
}

impl RestartKind {
    /// The stable name (coverage keys, reports).
    pub fn name(self) -> &'static str {
        match self {
            RestartKind::Graceful => "graceful",
            RestartKind::Crash => "crash",
            RestartKind::Power => "power",
            RestartKind::InterruptedGraceful => "interrupted-graceful",
            RestartKind::Rolling => "rolling",
        }
    }
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
    /// A second kill (of the same kind) while the restarted engine boots,
    /// at this crash point (and visit).
    #[serde(default)]
    pub boot_crash_point: Option<(String, u32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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

/// A shape removed on request (Electric's `DELETE /v1/shape`) during a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Removal {
    /// The shape (its index in `shapes`) whose current handle is removed.
    pub shape: usize,
    /// When, after the batch's first commit.
    pub at_ms: u64,
}

/// `ALTER TABLE <table> ADD COLUMN <column> text` during a batch, after its
/// `after_txn`-th transaction (0: before the first): shapes on the table
/// get 409 (table changed) and refetch with the new column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddColumn {
    pub table: String,
    pub column: String,
    pub after_txn: usize,
}

/// The version of the scenario file format this build reads and writes
/// (2: no `strict_409`; every 409 must be explained).
pub const FORMAT_VERSION: u32 = 2;
/// The only schema there is: Electric's oracle schema ([`crate::standard`]).
pub const STANDARD_SCHEMA: &str = "electric-standard";

/// The bugs the engine can re-introduce on purpose (`--plant`).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Plant {
    /// A consumer does not skip replayed transactions at or below its log's end (Electric #4668).
    SkipShapeDedup,
    /// The acknowledged LSN passes transactions a shape has not flushed (Electric #4731).
    AckPastUnflushed,
    /// A flush records its durable offset before the data is synced.
    OffsetBeforeFsync,
    /// A reopened shape log keeps the unflushed tail past its durable offset.
    NoTrimOnOpen,
    /// The engine stops advancing the acknowledged LSN after boot (Electric bug 7's symptom).
    NeverAck,
    /// After a crash or power loss, boot wipes every shape (PR 4648's dirty-start coordinator).
    DropAllOnDirtyBoot,
    /// `global_last_seen_lsn` passes transactions not every shape has committed (Electric bug 8).
    EarlyGlobalLsn,
    /// A replica=full update's `old_value` carries the new values.
    WrongOldValue,
    /// A gone handle is answered with the new shape's log under the new handle, no 409.
    SilentHandleSwitch,
    /// Long-polling readers are not woken by new data, only by their timeout.
    LostWakeup,
    /// A failed fsync of a shape log is treated as success.
    FsyncErrorIgnored,
    /// Boot recovers the disk before it holds the replication slot (two instances on one disk in a rolling restart).
    BootBeforeSlot,
    /// Snapshot visibility treats in-progress xids as visible (their changes are skipped).
    IgnoreXip,
    /// A subquery shape's move-out changes its view but writes no `move-out` event.
    MoveOutNotWritten,
    /// A move-in splices one buffered transaction before its boundary.
    SpliceAtWrongBoundary,
    /// An inner shape's materializer counts values of rows not in the shape.
    MaterializerCountsExcluded,
    /// A restored inner shape's materializer replays only its first chunk (PR 4648 bug 1).
    MaterializerFirstChunkOnly,
    /// A restored inner shape's materializer re-reads its main log chunk by chunk (PR 4648 bug 4).
    MaterializerRereadsMainLog,
    /// A restored subquery shape takes its views from its inner shapes (PR 4648 bugs 2(ii), 5).
    OuterViewFromMaterializer,
    /// A removal deletes metadata before taking the shape out of service (PR 4648 bug 6).
    RemoveMetadataFirst,
    /// Flushes complete only on an exact transaction-end offset (Electric bug 7).
    FlushBoundaryExactMatch,
    /// Real bug, fixed (Electric's bug 3): 400 for an offset a crashed log has not replayed yet.
    #[value(name = "out-of-bounds-400")]
    #[serde(rename = "out-of-bounds-400")]
    OutOfBounds400,
    /// Real bug, fixed: snapshot queries tried ten times, then the shape dropped.
    SnapshotAttemptBudget,
    /// Real bug, fixed: reopening a log trusts a metadata rename a crash left unsynced.
    NoSyncOnOpen,
    /// Real bug, fixed: up-to-date does not wait for replication to reach the shape's snapshot.
    UnsettledSnapshot,
    /// Real bug, fixed: boot keeps a shape whose table gained a column; requests for it 409 forever.
    BootIgnoresDefinition,
}

impl Plant {
    /// The planted bug classes the harness must always find.
    pub const ALL: [Plant; 13] = [
        Plant::SkipShapeDedup,
        Plant::AckPastUnflushed,
        Plant::OffsetBeforeFsync,
        Plant::NoTrimOnOpen,
        Plant::NeverAck,
        Plant::DropAllOnDirtyBoot,
        Plant::EarlyGlobalLsn,
        Plant::WrongOldValue,
        Plant::SilentHandleSwitch,
        Plant::LostWakeup,
        Plant::FsyncErrorIgnored,
        Plant::BootBeforeSlot,
        Plant::IgnoreXip,
    ];
    /// The planted bug classes of subquery shapes, found by sweeps of
    /// `scenarios/subqueries.toml`.
    pub const SUBQUERIES: [Plant; 3] = [
        Plant::MoveOutNotWritten,
        Plant::SpliceAtWrongBoundary,
        Plant::MaterializerCountsExcluded,
    ];
    /// PR 4648's restore bugs (and Electric's bug 7), re-planted; found by
    /// sweeps of `scenarios/subqueries-restart.toml`.
    pub const RESTORE: [Plant; 5] = [
        Plant::MaterializerFirstChunkOnly,
        Plant::MaterializerRereadsMainLog,
        Plant::OuterViewFromMaterializer,
        Plant::RemoveMetadataFirst,
        Plant::FlushBoundaryExactMatch,
    ];
    /// Real bugs this project's harness found, re-introduced on demand so that
    /// their corpus entries keep proving something.
    pub const REAL_BUGS: [Plant; 5] = [
        Plant::OutOfBounds400,
        Plant::SnapshotAttemptBudget,
        Plant::NoSyncOnOpen,
        Plant::UnsettledSnapshot,
        Plant::BootIgnoresDefinition,
    ];

    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .expect("named")
            .get_name()
            .to_string()
    }

    /// The engine's switches with this plant (and these others) on.
    pub fn switches(plants: &[Plant]) -> engine::plants::Plants {
        let on = |p: Plant| plants.contains(&p);
        engine::plants::Plants {
            skip_shape_dedup: on(Plant::SkipShapeDedup),
            ack_past_unflushed: on(Plant::AckPastUnflushed),
            offset_before_fsync: on(Plant::OffsetBeforeFsync),
            no_trim_on_open: on(Plant::NoTrimOnOpen),
            never_ack: on(Plant::NeverAck),
            drop_all_on_dirty_boot: on(Plant::DropAllOnDirtyBoot),
            early_global_lsn: on(Plant::EarlyGlobalLsn),
            wrong_old_value: on(Plant::WrongOldValue),
            silent_handle_switch: on(Plant::SilentHandleSwitch),
            lost_wakeup: on(Plant::LostWakeup),
            fsync_error_ignored: on(Plant::FsyncErrorIgnored),
            boot_before_slot: on(Plant::BootBeforeSlot),
            ignore_xip: on(Plant::IgnoreXip),
            move_out_not_written: on(Plant::MoveOutNotWritten),
            splice_at_wrong_boundary: on(Plant::SpliceAtWrongBoundary),
            materializer_counts_excluded: on(Plant::MaterializerCountsExcluded),
            materializer_first_chunk_only: on(Plant::MaterializerFirstChunkOnly),
            materializer_rereads_main_log: on(Plant::MaterializerRereadsMainLog),
            outer_view_from_materializer: on(Plant::OuterViewFromMaterializer),
            remove_metadata_first: on(Plant::RemoveMetadataFirst),
            flush_boundary_exact_match: on(Plant::FlushBoundaryExactMatch),
            out_of_bounds_400: on(Plant::OutOfBounds400),
            snapshot_attempt_budget: on(Plant::SnapshotAttemptBudget),
            no_sync_on_open: on(Plant::NoSyncOnOpen),
            unsettled_snapshot: on(Plant::UnsettledSnapshot),
            boot_ignores_definition: on(Plant::BootIgnoresDefinition),
        }
    }
}

/// The knobs a run needs (the others only shape the generated workload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    pub long_poll_timeout_ms: u64,
    pub chunk_bytes: u64,
    pub flush_period_ms: u64,
    pub check_timeout_ms: u64,
    pub kill_window_ms: u64,
    pub packet_loss_rate: f64,
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    pub disk_latency_us: u64,
    /// Chance that a write, sync, rename or read of a shape's files fails.
    #[serde(default)]
    pub io_error_rate: f64,
    /// Upper bound of the pause between a batch's commits (files written
    /// before the knob existed paused up to 2 ms).
    #[serde(default = "Timing::old_txn_gap_max_ms")]
    pub txn_gap_max_ms: u64,
    /// What a restart does with subquery shapes (files written before the
    /// knob existed: restore, as the engine now does).
    #[serde(default)]
    pub subquery_restore: SubqueryRestore,
}

impl Timing {
    fn old_txn_gap_max_ms() -> u64 {
        2
    }

    pub fn from_knobs(knobs: &Knobs) -> Timing {
        Timing {
            long_poll_timeout_ms: knobs.long_poll_timeout_ms,
            chunk_bytes: knobs.chunk_bytes,
            flush_period_ms: knobs.flush_period_ms,
            check_timeout_ms: knobs.check_timeout_ms,
            kill_window_ms: knobs.kill_window_ms,
            packet_loss_rate: knobs.packet_loss_rate,
            latency_min_ms: knobs.latency_min_ms,
            latency_max_ms: knobs.latency_max_ms,
            disk_latency_us: knobs.disk_latency_us,
            io_error_rate: knobs.io_error_rate,
            txn_gap_max_ms: knobs.txn_gap_max_ms,
            subquery_restore: knobs.subquery_restore,
        }
    }
}

/// A `level_4` row of the seed data (levels 1-3 and the tags are fixed by the schema).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level4Row {
    pub id: String,
    pub level_3_id: String,
    pub value: String,
    /// Nullable columns (absent in files written before they existed: NULL,
    /// NULL, false).
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub rank: Option<i64>,
    #[serde(default)]
    pub flag: bool,
}

/// Everything a run does, explicitly: what `run --seed N --save FILE`
/// writes, what `replay FILE` runs, what shrinking reduces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub format_version: u32,
    /// The seed this scenario was expanded from.
    pub seed: u64,
    pub schema: String,
    /// Planted bugs the engine runs with.
    #[serde(default)]
    pub plants: Vec<Plant>,
    pub seed_rows: Vec<Level4Row>,
    pub timing: Timing,
    pub shapes: Vec<ShapeSpec>,
    /// Batch -> transaction -> statements.
    pub batches: Vec<Vec<Vec<Op>>>,
    /// Stack restarts, by the number of the batch they follow (1-based).
    pub restarts: BTreeMap<usize, Restart>,
    /// Client restarts, by batch number: after the batch's checks the
    /// clients are replaced by fresh ones at `offset=-1`, which catch up
    /// while the next batch commits.
    pub client_restarts: BTreeSet<usize>,
    /// Partitions, by the batch during which they happen.
    pub partitions: BTreeMap<usize, Partition>,
    /// Shape removals on request, by the batch during which they happen.
    pub removals: BTreeMap<usize, Removal>,
    /// Columns added, by the batch during which it happens (files written
    /// before schema changes existed have none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schema_changes: BTreeMap<usize, AddColumn>,
    /// The seed of madsim's scheduler, network and timing randomness.
    pub sched_seed: u64,
}

impl Scenario {
    /// Statements, not counting transaction markers.
    pub fn mutation_count(&self) -> usize {
        let statements = |txn: &Vec<Op>| txn.iter().filter(|op| op.is_statement()).count();
        self.batches.iter().flatten().map(statements).sum()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("scenarios serialize")
    }

    /// Reads a scenario file. An unknown format version, an unknown field or
    /// statement kind, or a value of the wrong type is an error that names it:
    /// an old file must fail loudly rather than test nothing.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        check_version(&value)?;
        let scenario: Scenario = serde_json::from_value(value).map_err(|e| e.to_string())?;
        if scenario.schema != STANDARD_SCHEMA {
            return Err(format!(
                "unknown schema {:?} (this shapesim knows {STANDARD_SCHEMA:?})",
                scenario.schema
            ));
        }
        if scenario.timing.latency_min_ms > scenario.timing.latency_max_ms {
            return Err("timing.latency_min_ms exceeds timing.latency_max_ms".to_string());
        }
        let batches = scenario.batches.len();
        let out_of_range = |what: &str, batch: usize| {
            format!("{what}.{batch}: there is no batch {batch} (batches are 1..={batches})")
        };
        for (&batch, restart) in &scenario.restarts {
            if !(1..=batches).contains(&batch) {
                return Err(out_of_range("restarts", batch));
            }
            let points = [
                ("crash_point", &restart.crash_point),
                ("boot_crash_point", &restart.boot_crash_point),
            ];
            for (field, point) in points {
                let Some((name, _)) = point else { continue };
                if restart.kind == RestartKind::Graceful {
                    return Err(format!(
                        "restarts.{batch}.{field}: a graceful restart cannot kill at a crash point"
                    ));
                }
                name.parse::<engine::env::CrashPoint>()
                    .map_err(|e| format!("restarts.{batch}.{field}: {e}"))?;
            }
        }
        for &batch in scenario.client_restarts.iter() {
            if !(1..=batches).contains(&batch) {
                return Err(out_of_range("client_restarts", batch));
            }
        }
        for &batch in scenario.partitions.keys() {
            if !(1..=batches).contains(&batch) {
                return Err(out_of_range("partitions", batch));
            }
        }
        let catalog = crate::standard::catalog();
        for (&batch, change) in &scenario.schema_changes {
            if !(1..=batches).contains(&batch) {
                return Err(out_of_range("schema_changes", batch));
            }
            let table = engine::schema::TableName::public(&change.table);
            let Some(schema) = catalog.table(&table) else {
                return Err(format!(
                    "schema_changes.{batch}.table: no table {}",
                    change.table
                ));
            };
            let fresh = change.column.starts_with("extra_")
                && change.column[6..].bytes().all(|b| b.is_ascii_digit())
                && schema.column_index(&change.column).is_none();
            if !fresh {
                return Err(format!(
                    "schema_changes.{batch}.column: {:?} is not a new column extra_<n>",
                    change.column
                ));
            }
        }
        for (&batch, removal) in &scenario.removals {
            if !(1..=batches).contains(&batch) {
                return Err(out_of_range("removals", batch));
            }
            if removal.shape >= scenario.shapes.len() {
                return Err(format!(
                    "removals.{batch}.shape: there is no shape {} (shapes are 0..{})",
                    removal.shape,
                    scenario.shapes.len()
                ));
            }
        }
        Ok(scenario)
    }
}

/// `format_version` must be present and one this build reads.
pub fn check_version(value: &serde_json::Value) -> Result<(), String> {
    match value.get("format_version") {
        None => Err("missing field `format_version`".to_string()),
        Some(v) if v.as_u64() == Some(u64::from(FORMAT_VERSION)) => Ok(()),
        Some(v) => Err(format!(
            "unknown format_version {v} (this shapesim reads version {FORMAT_VERSION})"
        )),
    }
}
