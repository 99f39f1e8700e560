//! What a run (or a sweep) actually exercised: restarts by kind, armed crash
//! points and whether they fired, power losses and what they did, injected
//! I/O errors, 409s by the removal reason that explains each, and how much
//! the checks compared. A sweep sums its runs. Every fault the harness can
//! inject has a counter here from the start, so a summary says what was
//! exercised and what was not (a zero is a finding).

use crate::scenario::RestartKind;
use engine::env::CrashPoint;
use engine::env::PowerLossReport;
use serde::Serialize;
use std::collections::BTreeMap;

/// Restart kinds, by their stable names.
pub const RESTART_KINDS: [&str; 5] = [
    "graceful",
    "crash",
    "power",
    "rolling",
    "interrupted-graceful",
];

/// At most this share (percent) of armed crash points may go unreached in
/// a sweep: an arm that never fires tested nothing.
pub const MAX_UNREACHED_PERCENT: u64 = 10;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PointCount {
    /// Restarts that armed the point.
    pub armed: u64,
    /// Armed and reached: the kill landed exactly there.
    pub fired: u64,
    /// Times the engine passed the point, armed or not.
    pub visited: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PowerLosses {
    pub total: u64,
    /// Power losses that found nothing unsynced.
    pub changed_nothing: u64,
    /// Unsynced bytes lost.
    pub bytes_dropped: u64,
    /// Files left with a torn prefix of their unsynced bytes.
    pub files_torn: u64,
    /// Directories whose unsynced entries were reverted.
    pub dirs_reverted: u64,
}

/// Paths that only rare timing reaches, counted so that a sweep shows it
/// reached them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Paths {
    /// The engine lost its replication connection and connected again
    /// without a restart.
    pub replication_reconnects: u64,
    /// A second kill landed while the restarted engine booted.
    pub kills_during_boot: u64,
    /// Shapes created while acknowledgements lagged behind the last commit,
    /// killed before their first flush.
    pub created_while_ack_lags: u64,
    /// Snapshots still in progress when a graceful shutdown started.
    pub snapshot_in_progress_at_shutdown: u64,
    /// Snapshots of more than one chunk.
    pub multi_chunk_snapshots: u64,
    /// Shapes removed whose storage was not yet gone when the engine was killed.
    pub killed_before_removal_durable: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Checks {
    /// Client views compared with the oracle at the end of a check.
    pub total: u64,
    /// ... of which the oracle's rows were not empty.
    pub non_empty: u64,
    /// Rows compared in those comparisons.
    pub rows_compared: u64,
    /// Up-to-date answers compared with the oracle as of their LSN.
    pub prefix: u64,
    /// Replicated changes checked against the Postgres model's transaction.
    pub changes: u64,
    /// Live answers whose delivery latency was judged.
    pub latency: u64,
    /// Acknowledgements checked against what each shape made durable.
    pub acks: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Coverage {
    pub restarts: BTreeMap<String, u64>,
    pub crash_points: BTreeMap<String, PointCount>,
    pub power_losses: PowerLosses,
    pub io_errors_injected: u64,
    /// 409s, by the removal reason that explains each.
    pub conflicts: BTreeMap<String, u64>,
    /// Rows clients held when a 409 made them start over: each is sent
    /// again (what a refetch costs).
    pub rows_refetched: u64,
    pub checks: Checks,
    pub paths: Paths,
    /// Subquery shapes: scenario shapes by nesting depth, moves written,
    /// move-ins by the rule that closed their splice, rows moved in, and
    /// synthetic deletes clients made.
    pub subqueries: BTreeMap<String, u64>,
}

/// The keys of [`Coverage::subqueries`].
pub const SUBQUERY_KEYS: [&str; 15] = [
    "shapes_depth_1",
    "shapes_depth_2",
    "shapes_depth_3",
    "move_outs",
    "move_ins",
    "move_in_rows",
    "splice_first_invisible",
    "splice_reached_query_lsn",
    "synthetic_deletes",
    "materializers_rebuilt",
    "restored_views",
    "restored_inner_outer_apart",
    "restore_moves",
    "move_ins_suspended",
    "teardown_removals_declined",
];

/// Subquery counters only a sweep with restarts reaches.
const RESTORE_KEYS: [&str; 4] = [
    "materializers_rebuilt",
    "restored_views",
    "restored_inner_outer_apart",
    "restore_moves",
];

/// Subquery counters reported but never a gap (rare by nature: a graceful
/// drain that meets a move-in in flight; an inner shape publishing to a
/// subquery shape that stopped for the shutdown before it).
const RARE_SUBQUERY_KEYS: [&str; 2] = ["move_ins_suspended", "teardown_removals_declined"];

impl Default for Coverage {
    fn default() -> Coverage {
        Coverage {
            restarts: RESTART_KINDS.iter().map(|k| (k.to_string(), 0)).collect(),
            crash_points: CrashPoint::ALL
                .iter()
                .map(|p| (p.name().to_string(), PointCount::default()))
                .collect(),
            power_losses: PowerLosses::default(),
            io_errors_injected: 0,
            conflicts: BTreeMap::new(),
            rows_refetched: 0,
            checks: Checks::default(),
            paths: Paths::default(),
            subqueries: SUBQUERY_KEYS.iter().map(|k| (k.to_string(), 0)).collect(),
        }
    }
}

impl Coverage {
    pub fn subquery(&mut self, key: &str) {
        self.subquery_add(key, 1);
    }

    pub fn subquery_add(&mut self, key: &str, n: u64) {
        assert!(
            SUBQUERY_KEYS.contains(&key),
            "unknown subquery counter {key}"
        );
        *self.subqueries.entry(key.to_string()).or_default() += n;
    }

    pub fn restart(&mut self, kind: RestartKind) {
        *self.restarts.entry(kind.name().to_string()).or_default() += 1;
    }

    pub fn point(&mut self, point: CrashPoint) -> &mut PointCount {
        self.crash_points
            .get_mut(point.name())
            .expect("every crash point has a counter")
    }

    pub fn power_loss(&mut self, report: &PowerLossReport) {
        let p = &mut self.power_losses;
        p.total += 1;
        p.changed_nothing += u64::from(!report.changed_anything());
        p.bytes_dropped += report.bytes_dropped;
        p.files_torn += report.files_torn;
        p.dirs_reverted += report.dirs_reverted;
    }

    pub fn conflict(&mut self, reason: &str) {
        *self.conflicts.entry(reason.to_string()).or_default() += 1;
    }

    /// Adds another run's counts to these.
    pub fn add(&mut self, other: &Coverage) {
        for (k, n) in &other.restarts {
            *self.restarts.entry(k.clone()).or_default() += n;
        }
        macro_rules! add {
            ($mine:expr, $theirs:expr; $($field:ident),*) => { $($mine.$field += $theirs.$field;)* };
        }
        for (k, c) in &other.crash_points {
            let mine = self.crash_points.entry(k.clone()).or_default();
            add!(mine, c; armed, fired, visited);
        }
        let (p, q) = (&mut self.power_losses, &other.power_losses);
        add!(p, q; total, changed_nothing, bytes_dropped, files_torn, dirs_reverted);
        self.io_errors_injected += other.io_errors_injected;
        for (k, n) in &other.conflicts {
            *self.conflicts.entry(k.clone()).or_default() += n;
        }
        self.rows_refetched += other.rows_refetched;
        let (c, d) = (&mut self.checks, &other.checks);
        add!(c, d; total, non_empty, rows_compared, prefix, changes, latency, acks);
        let (p, q) = (&mut self.paths, &other.paths);
        add!(p, q; replication_reconnects, kills_during_boot, created_while_ack_lags,
            snapshot_in_progress_at_shutdown, multi_chunk_snapshots, killed_before_removal_durable);
        for (k, n) in &other.subqueries {
            *self.subqueries.entry(k.clone()).or_default() += n;
        }
    }

    /// What a sweep of the default scenario must have exercised and this
    /// one did not, one line per gap (empty: nothing missing): every crash
    /// point armed and fired, at most [`MAX_UNREACHED_PERCENT`] of arms
    /// unreached, I/O errors injected, files torn by power losses, every
    /// restart kind, every rare path. A scenario that turns a fault off
    /// (`smoke`) has gaps by design; the sweep prints them either way.
    pub fn gaps(&self) -> Vec<String> {
        let mut gaps = Vec::new();
        for (name, c) in &self.crash_points {
            assert!(c.fired <= c.armed, "{name}: fired more often than armed");
            if c.fired == 0 {
                gaps.push(format!(
                    "crash point {name} never fired ({} armed)",
                    c.armed
                ));
            }
        }
        let (armed, fired) = self
            .crash_points
            .values()
            .fold((0, 0), |(a, f), c| (a + c.armed, f + c.fired));
        if (armed - fired) * 100 > armed * MAX_UNREACHED_PERCENT {
            gaps.push(format!(
                "{} of {armed} armed crash points were not reached (more than {MAX_UNREACHED_PERCENT}%)",
                armed - fired
            ));
        }
        if self.io_errors_injected == 0 {
            gaps.push("no I/O error was injected".to_string());
        }
        if self.power_losses.files_torn == 0 {
            gaps.push("no power loss tore a file".to_string());
        }
        for (kind, n) in &self.restarts {
            if *n == 0 {
                gaps.push(format!("no {kind} restart"));
            }
        }
        let p = &self.paths;
        let paths = [
            ("replication reconnect", p.replication_reconnects),
            ("kill during boot", p.kills_during_boot),
            ("shape created while acks lag", p.created_while_ack_lags),
            (
                "snapshot in progress at shutdown",
                p.snapshot_in_progress_at_shutdown,
            ),
            ("multi-chunk snapshot", p.multi_chunk_snapshots),
            (
                "kill before a removal was durable",
                p.killed_before_removal_durable,
            ),
        ];
        for (path, n) in paths {
            if n == 0 {
                gaps.push(format!("no {path}"));
            }
        }
        gaps.extend(self.subquery_gaps());
        gaps
    }

    /// With subquery shapes in the sweep: every counter reached.
    fn subquery_gaps(&self) -> Vec<String> {
        let shapes: u64 = (1..=3)
            .map(|d| self.subqueries[&format!("shapes_depth_{d}")])
            .sum();
        if shapes == 0 {
            return Vec::new();
        }
        let restarts: u64 = self.restarts.values().sum();
        self.subqueries
            .iter()
            .filter(|(k, _)| !RARE_SUBQUERY_KEYS.contains(&k.as_str()))
            .filter(|(k, _)| restarts > 0 || !RESTORE_KEYS.contains(&k.as_str()))
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| format!("no subquery {}", k.replace('_', " ")))
            .collect()
    }

    /// The short table a text summary prints.
    pub fn table(&self) -> String {
        let mut out = String::from("coverage:\n");
        let restarts: Vec<String> = self
            .restarts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!("  restarts      {}\n", restarts.join(", ")));
        out.push_str("  crash points  armed  fired  visited\n");
        for (name, c) in &self.crash_points {
            out.push_str(&format!(
                "    {name:<26}{:>5}{:>7}{:>9}\n",
                c.armed, c.fired, c.visited
            ));
        }
        let p = &self.power_losses;
        out.push_str(&format!(
            "  power losses  {} ({} changed nothing; {} bytes dropped, {} files torn, {} dirs reverted)\n",
            p.total, p.changed_nothing, p.bytes_dropped, p.files_torn, p.dirs_reverted
        ));
        out.push_str(&format!(
            "  I/O errors    {} injected\n",
            self.io_errors_injected
        ));
        let conflicts: Vec<String> = self
            .conflicts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let conflicts = if conflicts.is_empty() {
            "none".to_string()
        } else {
            conflicts.join(", ")
        };
        out.push_str(&format!(
            "  409s          {conflicts}; {} client rows to send again\n",
            self.rows_refetched
        ));
        let p = &self.paths;
        out.push_str(&format!(
            "  rare paths    {} replication reconnects, {} kills during boot, {} created while acks lag, {} snapshots at shutdown, {} multi-chunk snapshots, {} kills before a removal was durable\n",
            p.replication_reconnects,
            p.kills_during_boot,
            p.created_while_ack_lags,
            p.snapshot_in_progress_at_shutdown,
            p.multi_chunk_snapshots,
            p.killed_before_removal_durable
        ));
        let subqueries: Vec<String> = self
            .subqueries
            .iter()
            .map(|(k, n)| format!("{} {n}", k.replace('_', " ")))
            .collect();
        out.push_str(&format!(
            "  subqueries    {}
",
            subqueries.join(", ")
        ));
        let c = &self.checks;
        out.push_str(&format!(
            "  checks        {} ({} non-empty, {} rows compared); {} prefixes, {} changes, {} latencies, {} acks judged",
            c.total, c.non_empty, c.rows_compared, c.prefix, c.changes, c.latency, c.acks
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_sums_its_runs_and_keeps_every_key() {
        let mut run = Coverage::default();
        run.restart(RestartKind::Power);
        run.point(CrashPoint::MetadataFlush).armed += 1;
        run.conflict("requested");
        run.checks.total = 2;
        let mut sweep = Coverage::default();
        sweep.add(&run);
        sweep.add(&run);
        assert_eq!(sweep.restarts["power"], 2);
        assert_eq!(
            sweep.restarts["rolling"], 0,
            "unexercised kinds are listed as 0"
        );
        assert_eq!(sweep.crash_points["metadata.flush"].armed, 2);
        assert_eq!(sweep.crash_points.len(), CrashPoint::ALL.len());
        assert_eq!((sweep.conflicts["requested"], sweep.checks.total), (2, 4));
        assert!(sweep.table().contains("metadata.flush"));
    }

    #[test]
    fn gaps_name_what_a_sweep_missed_and_vanish_when_all_is_reached() {
        let empty = Coverage::default();
        let gaps = empty.gaps();
        assert!(gaps.iter().any(|g| g == "no rolling restart"), "{gaps:?}");
        assert!(
            gaps.iter()
                .any(|g| g.contains("metadata.flush never fired"))
        );
        assert!(gaps.contains(&"no I/O error was injected".to_string()));

        let mut full = Coverage::default();
        for kind in full.restarts.values_mut() {
            *kind = 1;
        }
        for point in full.crash_points.values_mut() {
            (point.armed, point.fired) = (10, 9);
        }
        (full.io_errors_injected, full.power_losses.files_torn) = (1, 1);
        let p = &mut full.paths;
        p.replication_reconnects = 1;
        p.kills_during_boot = 1;
        p.created_while_ack_lags = 1;
        p.snapshot_in_progress_at_shutdown = 1;
        p.multi_chunk_snapshots = 1;
        p.killed_before_removal_durable = 1;
        assert_eq!(full.gaps(), Vec::<String>::new());
        // One more unreached arm per point: 20% unreached.
        for point in full.crash_points.values_mut() {
            point.armed += 1;
            point.fired -= 1;
        }
        assert!(full.gaps()[0].contains("were not reached (more than 10%)"));
    }
}
