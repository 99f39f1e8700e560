//! One fixed, readable scenario per bug of PR 4648's restore work (and
//! Electric's bug 7), in the style of Electric's `oracle_restore_test.exs`:
//! a few subquery shapes, a scripted workload, a restart at a chosen
//! moment. Each fails with its bug planted back and passes without it.
//!
//! The scenarios are written here, not drawn from a seed; only the
//! scheduler seed (network and disk timing) is fixed, found once by
//! `cargo test --release -p sim --test restore_regressions -- --ignored`
//! (which prints the first that catches each plant).
#![cfg(madsim)]

use sim::harness::{self, Plant, RunOptions, RunOutcome};
use sim::scenario::generate::expand;
use sim::scenario::{
    Knobs, Level4Row, Op, Restart, RestartKind, Scenario, ScenarioFile, ShapeSpec,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The restart-heavy scenario's timing (200-byte chunks), without storage
/// faults: these scenarios fail only by their bug.
fn knobs() -> Knobs {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/subqueries-restart.toml");
    let text = std::fs::read_to_string(path).expect("the scenario file");
    let mut knobs = ScenarioFile::parse(&text).expect("it parses").knobs;
    knobs.io_error_rate = 0.0;
    knobs
}

/// A scripted scenario: `shapes`, then `batches` (each a list of
/// transactions), a restart after batch `restart_after` (1-based).
struct Script {
    shapes: Vec<ShapeSpec>,
    batches: Vec<Vec<Vec<Op>>>,
    restart_after: usize,
    restart: Restart,
}

impl Script {
    fn scenario(&self, sched_seed: u64, plants: &[Plant]) -> Scenario {
        let mut scenario = expand(0, &knobs());
        scenario.plants = plants.to_vec();
        scenario.seed_rows = level4_rows();
        scenario.shapes = self.shapes.clone();
        scenario.batches = self.batches.clone();
        scenario.restarts = BTreeMap::from([(self.restart_after, self.restart.clone())]);
        scenario.client_restarts = BTreeSet::new();
        scenario.partitions = BTreeMap::new();
        scenario.removals = BTreeMap::new();
        scenario.schema_changes = BTreeMap::new();
        scenario.sched_seed = sched_seed;
        scenario
    }

    fn run(&self, sched_seed: u64, plants: &[Plant]) -> RunOutcome {
        harness::execute(&self.scenario(sched_seed, plants), &RunOptions::default())
    }

    /// Fails with `plant` by `check`, and passes without it.
    fn assert_regression(&self, sched_seed: u64, plant: Plant, check: &str) {
        harness::quiet_seed_panics();
        let planted = self.run(sched_seed, &[plant]);
        let failure = planted
            .failure
            .unwrap_or_else(|| panic!("{} went unnoticed", plant.name()));
        assert_eq!(
            failure.check,
            check,
            "{}: caught by the wrong check: {}",
            plant.name(),
            failure.message
        );
        let fixed = self.run(sched_seed, &[]);
        assert!(
            fixed.passed(),
            "{}: fails without it: {:?}",
            plant.name(),
            fixed.failure
        );
    }

    /// The first scheduler seed below `budget` whose run fails by `check`
    /// with `plant` and passes without it.
    fn find(&self, plant: Plant, check: &str, budget: u64) -> Option<u64> {
        (0..budget).find(|&s| {
            self.run(s, &[plant])
                .failure
                .is_some_and(|f| f.check == check)
                && self.run(s, &[]).passed()
        })
    }
}

/// Three `level_4` rows under each `level_3` row.
fn level4_rows() -> Vec<Level4Row> {
    (1..=15)
        .map(|n| Level4Row {
            id: format!("l4-{n}"),
            level_3_id: format!("l3-{}", (n - 1) % 5 + 1),
            value: format!("v{n}"),
            note: None,
            rank: Some(n),
            flag: n % 2 == 0,
        })
        .collect()
}

fn shape(where_clause: &str, replica_full: bool) -> ShapeSpec {
    ShapeSpec {
        table: "level_4".to_string(),
        columns: None,
        where_clause: Some(where_clause.to_string()),
        replica_full,
    }
}

fn toggle3(id: &str) -> Op {
    Op::ToggleActive {
        level: 3,
        id: id.to_string(),
    }
}

fn add_tag3(id: &str, tag: &str) -> Op {
    Op::AddTag {
        level: 3,
        id: id.to_string(),
        tag: tag.to_string(),
    }
}

/// `count` single-toggle transactions of `ids` in turn, `per_batch` to a
/// batch.
fn toggles(ids: &[&str], count: usize, per_batch: usize) -> Vec<Vec<Vec<Op>>> {
    let txns: Vec<Vec<Op>> = (0..count)
        .map(|i| vec![toggle3(ids[i % ids.len()])])
        .collect();
    txns.chunks(per_batch).map(<[_]>::to_vec).collect()
}

fn restart(kind: RestartKind) -> Restart {
    Restart {
        kind,
        kill_delay_ms: 5,
        crash_point: None,
        power_seed: 7,
        boot_crash_point: None,
    }
}

const ACTIVE_L3: &str = "level_3_id IN (SELECT id FROM level_3 WHERE active)";

/// Bug 5 (and 2(ii)): two shapes over `level_3 WHERE active`, 200 toggles,
/// a crash, then `UPDATE level_3 SET active = false WHERE id = 'l3-2'`.
/// A restored shape that takes its view from the inner shape (ahead of its
/// own durable state) never applies the moves between.
fn bug5() -> Script {
    // 67 toggles of l3-2 (inactive at first): active before the update.
    let mut batches = toggles(&["l3-1", "l3-2", "l3-3"], 200, 20);
    let restart_after = batches.len();
    batches.push(vec![vec![toggle3("l3-2")]]);
    Script {
        shapes: vec![
            shape(ACTIVE_L3, false),
            shape(&format!("{ACTIVE_L3} AND rank > 0"), true),
        ],
        batches,
        restart_after,
        restart: restart(RestartKind::Crash),
    }
}

/// Bug 1: an inner shape whose snapshot spans several 200-byte chunks
/// (every `level_3` row is active-tagged), a graceful restart, then one
/// toggle. A materializer that replays only the first chunk loses values.
fn bug1() -> Script {
    let tags: Vec<Vec<Op>> = ["l3-1", "l3-2", "l3-3", "l3-4", "l3-5"]
        .iter()
        .map(|id| vec![add_tag3(id, "beta")])
        .collect();
    Script {
        shapes: vec![shape(
            "level_3_id IN (SELECT level_3_id FROM level_3_tags WHERE tag = 'beta')",
            false,
        )],
        batches: vec![tags, vec![vec![add_tag3("l3-1", "alpha")]]],
        restart_after: 1,
        restart: restart(RestartKind::Graceful),
    }
}

/// Bug 4: an inner shape whose main log spans several chunks (60
/// toggles), a graceful restart. A materializer that walks the main log
/// chunk by chunk re-reads what one read returned: a duplicate insert.
fn bug4() -> Script {
    let mut batches = toggles(&["l3-1", "l3-2", "l3-3", "l3-4"], 60, 10);
    let restart_after = batches.len();
    batches.push(vec![vec![toggle3("l3-5")]]);
    Script {
        shapes: vec![shape(ACTIVE_L3, false)],
        batches,
        restart_after,
        restart: restart(RestartKind::Graceful),
    }
}

/// Bug 6: a subquery shape over a three-level chain and one over
/// `NOT IN` active rows; the last batch moves rows at every level just
/// before a graceful restart. During the drain an inner shape still
/// publishing finds a subquery shape that already stopped and asks for its
/// removal; a removal that deletes the metadata before it is declined
/// loses a healthy shape.
fn bug6() -> Script {
    let chain = "level_3_id IN (SELECT id FROM level_3 WHERE level_2_id IN (SELECT id FROM \
                 level_2 WHERE level_1_id IN (SELECT id FROM level_1 WHERE active = true)))";
    let last = vec![
        vec![toggle(1, "l1-2")],
        vec![reparent(3, "l3-1", "l2-1")],
        vec![toggle(1, "l1-4"), reparent(3, "l3-2", "l2-3")],
        vec![reparent(2, "l2-1", "l1-2")],
    ];
    let mut batches = vec![vec![vec![toggle3("l3-2")]], vec![vec![toggle3("l3-2")]]];
    batches.push(last);
    Script {
        shapes: vec![
            shape(&format!("({chain}) AND (level_3_id = 'l3-1')"), true),
            shape(
                "level_3_id NOT IN (SELECT id FROM level_3 WHERE active)",
                false,
            ),
        ],
        batches,
        restart_after: 3,
        restart: restart(RestartKind::Graceful),
    }
}

fn toggle(level: u8, id: &str) -> Op {
    Op::ToggleActive {
        level,
        id: id.to_string(),
    }
}

fn reparent(level: u8, id: &str, parent: &str) -> Op {
    Op::Reparent {
        level,
        id: id.to_string(),
        parent: parent.to_string(),
    }
}

/// Bug 7: a move-in whose rows sit after the transaction's last offset.
/// A flush tracker that completes only on an exact match pins the slot.
fn bug7() -> Script {
    Script {
        shapes: vec![shape(ACTIVE_L3, false)],
        batches: vec![vec![vec![toggle3("l3-2")]], vec![vec![toggle3("l3-4")]]],
        restart_after: 1,
        restart: restart(RestartKind::Graceful),
    }
}

#[test]
fn bug5_a_restored_view_is_never_taken_from_an_inner_shape_ahead_of_it() {
    bug5().assert_regression(
        BUG5_SCHED,
        Plant::OuterViewFromMaterializer,
        "prefix-mismatch",
    );
}

#[test]
fn bug1_a_rebuilt_materializer_replays_every_snapshot_chunk() {
    bug1().assert_regression(
        BUG1_SCHED,
        Plant::MaterializerFirstChunkOnly,
        "prefix-mismatch",
    );
}

#[test]
fn bug4_a_rebuilt_materializer_reads_the_main_log_once() {
    bug4().assert_regression(
        BUG4_SCHED,
        Plant::MaterializerRereadsMainLog,
        "engine-invariant",
    );
}

#[test]
fn bug6_a_removal_during_the_shutdown_never_deletes_a_healthy_shape() {
    bug6().assert_regression(BUG6_SCHED, Plant::RemoveMetadataFirst, "lost-shape");
}

#[test]
fn bug7_events_after_a_transactions_end_never_pin_the_acknowledgement() {
    bug7().assert_regression(BUG7_SCHED, Plant::FlushBoundaryExactMatch, "ack-liveness");
}

const BUG5_SCHED: u64 = 5;
const BUG1_SCHED: u64 = 0;
const BUG4_SCHED: u64 = 0;
const BUG6_SCHED: u64 = 23;
const BUG7_SCHED: u64 = 0;

/// Finds the scheduler seeds above (run with `--ignored`, in release).
#[test]
#[ignore]
fn find_scheduler_seeds() {
    harness::quiet_seed_panics();
    let cases: [(&str, Script, Plant, &str); 5] = [
        (
            "BUG5",
            bug5(),
            Plant::OuterViewFromMaterializer,
            "prefix-mismatch",
        ),
        (
            "BUG1",
            bug1(),
            Plant::MaterializerFirstChunkOnly,
            "prefix-mismatch",
        ),
        (
            "BUG4",
            bug4(),
            Plant::MaterializerRereadsMainLog,
            "engine-invariant",
        ),
        ("BUG6", bug6(), Plant::RemoveMetadataFirst, "lost-shape"),
        (
            "BUG7",
            bug7(),
            Plant::FlushBoundaryExactMatch,
            "ack-liveness",
        ),
    ];
    for (name, script, plant, check) in cases {
        let planted = script.run(0, &[plant]);
        eprintln!(
            "{name}: sched 0 with the plant: {:?}",
            planted.failure.map(|f| (f.check, f.message))
        );
        eprintln!("{name}_SCHED = {:?}", script.find(plant, check, 300));
    }
}
