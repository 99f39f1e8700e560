//! Knobs: every quantity a scenario can set, their defaults, the scenario
//! file format (TOML, every key optional, unknown keys refused by name), and
//! the matching command-line overrides.

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RestartType {
    Graceful,
    Crash,
    Power,
    InterruptedGraceful,
    Rolling,
    /// Each restart draws its kind.
    Mixed,
}

/// What a restarted engine does with subquery shapes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SubqueryRestore {
    /// Each resumes from its own durable state (this engine).
    #[default]
    Restore,
    /// Each is dropped and its clients refetch (Electric since #4735).
    Drop,
}

impl SubqueryRestore {
    pub fn engine(self) -> engine::stack::SubqueryRestore {
        match self {
            SubqueryRestore::Restore => engine::stack::SubqueryRestore::Restore,
            SubqueryRestore::Drop => engine::stack::SubqueryRestore::Drop,
        }
    }
}

/// The knobs mirror Electric's oracle test (`SHAPE_COUNT`, `BATCH_COUNT`, ...)
/// plus the fault model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Knobs {
    pub shape_count: usize,
    pub batch_count: usize,
    pub txns_per_batch: usize,
    pub mutations_per_txn: usize,
    /// Restart the stack after every N-th batch (0: never).
    pub restart_server_every: usize,
    pub restart_type: RestartType,
    /// Replace every client with a fresh one after every M-th batch (0: never).
    pub restart_client_every: usize,
    pub long_poll_timeout_ms: u64,
    /// Shape log chunk size: small values give many chunks per shape.
    pub chunk_bytes: u64,
    /// The shape log's flush period.
    pub flush_period_ms: u64,
    /// How long (simulated) a client may take to reach up-to-date and the oracle's rows.
    pub check_timeout_ms: u64,
    /// Kills land up to this long after a batch's last commit.
    pub kill_window_ms: u64,
    /// Share of crash and power restarts that arm a crash point.
    pub crash_point_rate: f64,
    /// Share of kills followed by a second kill while the engine boots.
    pub boot_kill_rate: f64,
    /// Chance that a batch partitions Postgres from the engine for
    /// `long_partition_ms`: long enough for the engine to drop the
    /// replication connection and reconnect.
    pub long_partition_rate: f64,
    pub long_partition_ms: u64,
    /// Share of shapes with `replica=full`.
    pub replica_full_rate: f64,
    /// Rows of `level_4` in the seed data.
    pub level4_rows: usize,
    pub packet_loss_rate: f64,
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Upper bound of the simulated latency of each storage write or sync.
    pub disk_latency_us: u64,
    /// Chance that a write, sync, rename or read of a shape's files fails
    /// (EIO, or ENOSPC for a third of the writes).
    pub io_error_rate: f64,
    /// Chance that a batch suffers a network partition.
    pub partition_rate: f64,
    pub partition_ms: u64,
    /// Chance that a batch removes a shape on request (its clients get 409
    /// and refetch while the batch commits).
    pub removal_rate: f64,
    /// Share of transactions that began earlier than their place in the
    /// batch (xid order differs from commit order; snapshots list them in
    /// progress).
    pub concurrent_txn_rate: f64,
    /// Share of transactions that roll back.
    pub abort_rate: f64,
    /// Upper bound of the pause between a batch's commits: a batch spans
    /// about `txns_per_batch * txn_gap_max_ms / 2`, so shapes created during
    /// it snapshot with transactions in progress.
    pub txn_gap_max_ms: u64,
    /// Share of shapes on `level_1`..`level_3` instead of `level_4`.
    pub other_table_rate: f64,
    /// Share of shapes that select columns (`columns=`).
    pub columns_rate: f64,
    /// Chance that a seed adds a column to a table during a batch.
    pub add_column_rate: f64,
    /// Share of shapes on `level_4` filtered through subqueries (Electric's
    /// oracle-test subquery forms, 1 to 3 levels).
    pub subquery_rate: f64,
    /// What a restart does with subquery shapes: `restore` them, or `drop`
    /// them as Electric does (to compare the two on the same seeds).
    pub subquery_restore: SubqueryRestore,
}

impl Default for Knobs {
    fn default() -> Knobs {
        Knobs {
            shape_count: 8,
            batch_count: 8,
            txns_per_batch: 5,
            mutations_per_txn: 4,
            restart_server_every: 2,
            restart_type: RestartType::Mixed,
            restart_client_every: 3,
            long_poll_timeout_ms: 500,
            chunk_bytes: 1_024,
            flush_period_ms: 50,
            check_timeout_ms: 20_000,
            kill_window_ms: 120,
            crash_point_rate: 0.75,
            boot_kill_rate: 0.25,
            long_partition_rate: 0.03,
            long_partition_ms: 12_000,
            replica_full_rate: 0.5,
            level4_rows: 40,
            packet_loss_rate: 0.0,
            latency_min_ms: 1,
            latency_max_ms: 5,
            disk_latency_us: 500,
            io_error_rate: 0.0005,
            partition_rate: 0.1,
            partition_ms: 400,
            removal_rate: 0.3,
            concurrent_txn_rate: 0.3,
            abort_rate: 0.05,
            txn_gap_max_ms: 30,
            other_table_rate: 0.25,
            columns_rate: 0.3,
            add_column_rate: 0.15,
            subquery_rate: 0.25,
            subquery_restore: SubqueryRestore::Restore,
        }
    }
}

/// A scenario file: a description and any knobs (the rest keep their defaults).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScenarioFile {
    pub description: Option<String>,
    pub knobs: Knobs,
}

impl ScenarioFile {
    /// Reads a scenario file; the error names the file and the offending key.
    pub fn load(path: &Path) -> Result<ScenarioFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read scenario {}: {e}", path.display()))?;
        ScenarioFile::parse(&text).map_err(|e| format!("scenario {}: {e}", path.display()))
    }

    /// Parses TOML: an optional `description` string and knobs.
    pub fn parse(text: &str) -> Result<ScenarioFile, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let description = match table.remove("description") {
            None => None,
            Some(toml::Value::String(s)) => Some(s),
            Some(other) => {
                return Err(format!(
                    "description must be a string, not {}",
                    other.type_str()
                ));
            }
        };
        let knobs =
            Knobs::deserialize(toml::Value::Table(table)).map_err(|e| e.message().to_string())?;
        knobs.validate()?;
        Ok(ScenarioFile { description, knobs })
    }
}

impl Knobs {
    /// Values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        let rate = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be between 0 and 1, not {v}"))
            }
        };
        rate("crash_point_rate", self.crash_point_rate)?;
        rate("boot_kill_rate", self.boot_kill_rate)?;
        rate("long_partition_rate", self.long_partition_rate)?;
        rate("replica_full_rate", self.replica_full_rate)?;
        rate("packet_loss_rate", self.packet_loss_rate)?;
        rate("partition_rate", self.partition_rate)?;
        rate("removal_rate", self.removal_rate)?;
        rate("concurrent_txn_rate", self.concurrent_txn_rate)?;
        rate("abort_rate", self.abort_rate)?;
        rate("other_table_rate", self.other_table_rate)?;
        rate("columns_rate", self.columns_rate)?;
        rate("add_column_rate", self.add_column_rate)?;
        rate("subquery_rate", self.subquery_rate)?;
        rate("io_error_rate", self.io_error_rate)?;
        if self.shape_count == 0
            || self.batch_count == 0
            || self.txns_per_batch == 0
            || self.mutations_per_txn == 0
        {
            return Err(
                "shape_count, batch_count, txns_per_batch and mutations_per_txn must be at least 1"
                    .into(),
            );
        }
        if self.latency_min_ms > self.latency_max_ms {
            return Err(format!(
                "latency_min_ms ({}) exceeds latency_max_ms ({})",
                self.latency_min_ms, self.latency_max_ms
            ));
        }
        if self.chunk_bytes == 0 || self.long_poll_timeout_ms == 0 || self.flush_period_ms == 0 {
            return Err(
                "chunk_bytes, long_poll_timeout_ms and flush_period_ms must be positive".into(),
            );
        }
        if self.level4_rows == 0 {
            return Err("level4_rows must be at least 1".into());
        }
        Ok(())
    }
}

macro_rules! knob_args {
    ($($field:ident: $ty:ty,)*) => {
        /// Command-line overrides of the scenario's knobs.
        #[derive(Args, Clone, Debug, Default, PartialEq)]
        pub struct KnobArgs {
            $(
                #[arg(long, help_heading = "Knobs (override the scenario file)")]
                pub $field: Option<$ty>,
            )*
        }

        impl KnobArgs {
            pub fn apply(&self, knobs: &mut Knobs) {
                $(if let Some(v) = &self.$field { knobs.$field = v.clone(); })*
            }

            /// The overrides as command-line flags, for a reproduction command.
            pub fn to_flags(&self) -> Vec<String> {
                let mut flags = Vec::new();
                $(if let Some(v) = &self.$field {
                    flags.push(format!("--{}", stringify!($field).replace('_', "-")));
                    flags.push(flag_value(v));
                })*
                flags
            }
        }
    };
}

fn flag_value<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v).expect("knob values serialize") {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

knob_args! {
    shape_count: usize,
    batch_count: usize,
    txns_per_batch: usize,
    mutations_per_txn: usize,
    restart_server_every: usize,
    restart_type: RestartType,
    restart_client_every: usize,
    long_poll_timeout_ms: u64,
    chunk_bytes: u64,
    flush_period_ms: u64,
    check_timeout_ms: u64,
    kill_window_ms: u64,
    crash_point_rate: f64,
    boot_kill_rate: f64,
    long_partition_rate: f64,
    long_partition_ms: u64,
    replica_full_rate: f64,
    level4_rows: usize,
    packet_loss_rate: f64,
    latency_min_ms: u64,
    latency_max_ms: u64,
    disk_latency_us: u64,
    io_error_rate: f64,
    partition_rate: f64,
    partition_ms: u64,
    removal_rate: f64,
    concurrent_txn_rate: f64,
    abort_rate: f64,
    txn_gap_max_ms: u64,
    other_table_rate: f64,
    columns_rate: f64,
    add_column_rate: f64,
    subquery_rate: f64,
    subquery_restore: SubqueryRestore,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_types_are_named() {
        let unknown = ScenarioFile::parse("shape_count = 3\nshapes_count = 4\n").unwrap_err();
        assert!(
            unknown.contains("unknown field `shapes_count`"),
            "{unknown}"
        );
        let bad_type = ScenarioFile::parse("batch_count = \"ten\"\n").unwrap_err();
        assert!(bad_type.contains("invalid type"), "{bad_type}");
        let bad_enum = ScenarioFile::parse("restart_type = \"sometimes\"\n").unwrap_err();
        assert!(bad_enum.contains("sometimes"), "{bad_enum}");
        let bad_value = ScenarioFile::parse("packet_loss_rate = 3.0\n").unwrap_err();
        assert!(bad_value.contains("packet_loss_rate"), "{bad_value}");
        let file = ScenarioFile::parse("description = \"x\"\nshape_count = 3\n").unwrap();
        assert_eq!(
            (file.knobs.shape_count, file.knobs.batch_count),
            (3, Knobs::default().batch_count)
        );
        let mut knobs = Knobs {
            packet_loss_rate: 2.0,
            ..Knobs::default()
        };
        assert!(knobs.validate().unwrap_err().contains("packet_loss_rate"));
        knobs.packet_loss_rate = 0.0;
        assert!(knobs.validate().is_ok());
    }

    #[test]
    fn overrides_apply_and_print_as_flags() {
        let args = KnobArgs {
            shape_count: Some(3),
            restart_type: Some(RestartType::Power),
            packet_loss_rate: Some(0.5),
            ..KnobArgs::default()
        };
        let mut knobs = Knobs::default();
        args.apply(&mut knobs);
        assert_eq!(
            (
                knobs.shape_count,
                knobs.restart_type,
                knobs.packet_loss_rate
            ),
            (3, RestartType::Power, 0.5)
        );
        assert_eq!(
            args.to_flags(),
            [
                "--shape-count",
                "3",
                "--restart-type",
                "power",
                "--packet-loss-rate",
                "0.5"
            ]
        );
    }
}
