//! Expanding a seed into an explicit [`Scenario`]: shapes with WHERE clauses
//! of every non-subquery form of Electric's generator (section 7.4), the
//! workload (section 7.3 plus level_4 inserts, deletes and key changes), the
//! restart schedule with kill times and crash points, client restarts and
//! partitions. Pure: the same seed and knobs give the same scenario.

use super::{
    AddColumn, FORMAT_VERSION, Knobs, Level4Row, Link, Op, Partition, Removal, Restart,
    RestartKind, RestartType, STANDARD_SCHEMA, Scenario, ShapeSpec, Timing,
};
use crate::standard::{LEVEL_IDS, TAGS};
use engine::env::CrashPoint;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};

/// Values the generated clauses compare with (Electric's choice).
const VALUES: [&str; 6] = ["v0", "v1", "v5", "v10", "v15", "v19"];
const LIKE_PATTERNS: [&str; 5] = ["v%", "v1%", "v_", "%5", "%1%"];
/// Values of the nullable `note` column (one empty: not NULL).
const NOTES: [&str; 4] = ["a", "ab", "b", ""];
/// `rank` values the workload sets and WHERE clauses compare with.
const RANKS: std::ops::RangeInclusive<i64> = -2..=6;

/// Crash points every batch reaches (flushes and their metadata writes).
const EVERY_BATCH: [CrashPoint; 4] = [
    CrashPoint::LogFlushAfterWrite,
    CrashPoint::LogFlushAfterSync,
    CrashPoint::MetaAfterTempWrite,
    CrashPoint::MetaAfterRename,
];

/// Crash points a batch reaches when it removes (and so re-creates) a shape.
const SHAPE_CHANGES: [CrashPoint; 5] = [
    CrashPoint::SnapshotAfterChunk,
    CrashPoint::SnapshotBeforeComplete,
    CrashPoint::MetadataFlush,
    CrashPoint::CreateBeforeMeta,
    CrashPoint::RemoveAfterMeta,
];

/// Crash points a batch reaches when a subquery shape moves (views
/// written with a flush; a move-in's splice), and how many visits to pick
/// from.
const SUBQUERY_MOVES: [(CrashPoint, u32); 2] = [
    (CrashPoint::StateAfterTempWrite, 3),
    (CrashPoint::MoveInSplice, 2),
];

/// Crash points a booting engine reaches, and how many visits to pick from
/// (a log is trimmed per restored shape; replication starts once).
const BOOT: [(CrashPoint, u32); 2] = [
    (CrashPoint::OpenAfterTrim, 3),
    (CrashPoint::BootBeforeReplication, 1),
];

pub fn expand(seed: u64, knobs: &Knobs) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let shapes: Vec<ShapeSpec> = (0..knobs.shape_count)
        .map(|_| shape(&mut rng, knobs))
        .collect();
    let subqueries = shapes.iter().any(|s| {
        s.where_clause
            .as_deref()
            .is_some_and(|w| w.contains("SELECT"))
    });
    let mut workload = Workload {
        level4: (1..=knobs.level4_rows).map(|n| format!("l4-{n}")).collect(),
        next_id: 1_000,
    };
    let batches = (0..knobs.batch_count)
        .map(|_| {
            (0..knobs.txns_per_batch)
                .map(|_| {
                    let mut ops: Vec<Op> = (0..knobs.mutations_per_txn)
                        .map(|_| workload.op(&mut rng))
                        .collect();
                    txn_markers(&mut rng, knobs, &mut ops);
                    ops
                })
                .collect()
        })
        .collect();
    let mut restarts = BTreeMap::new();
    let mut client_restarts = BTreeSet::new();
    let mut partitions = BTreeMap::new();
    let mut removals = BTreeMap::new();
    // Kills after a shape change take its points in turn (from a place
    // the seed picks): five points drawn at random left the rarest unarmed
    // in 60 seeds.
    let mut shape_change_turn = (seed % SHAPE_CHANGES.len() as u64) as usize;
    for batch in 1..=knobs.batch_count {
        let last = batch == knobs.batch_count;
        if rng.random_bool(knobs.removal_rate) {
            let removal = Removal {
                shape: rng.random_range(0..knobs.shape_count),
                at_ms: rng.random_range(0..=knobs.kill_window_ms),
            };
            removals.insert(batch, removal);
        }
        if knobs.restart_server_every > 0 && batch % knobs.restart_server_every == 0 && !last {
            let shape_change = removals.contains_key(&batch).then(|| {
                shape_change_turn += 1;
                SHAPE_CHANGES[shape_change_turn % SHAPE_CHANGES.len()]
            });
            let restart = restart(&mut rng, knobs, shape_change, subqueries);
            restarts.insert(batch, restart);
        }
        if knobs.restart_client_every > 0 && batch % knobs.restart_client_every == 0 && !last {
            client_restarts.insert(batch);
        }
        if rng.random_bool(knobs.long_partition_rate) {
            let partition = Partition {
                link: Link::EnginePostgres,
                start_ms: rng.random_range(0..=knobs.kill_window_ms),
                duration_ms: knobs.long_partition_ms,
            };
            partitions.insert(batch, partition);
        } else if rng.random_bool(knobs.partition_rate) {
            let link = if rng.random_bool(0.5) {
                Link::EnginePostgres
            } else {
                Link::ClientsEngine
            };
            let start_ms = rng.random_range(0..=knobs.kill_window_ms);
            partitions.insert(
                batch,
                Partition {
                    link,
                    start_ms,
                    duration_ms: knobs.partition_ms,
                },
            );
        }
    }
    let sched_seed = rng.random();
    let seed_rows = (1..=knobs.level4_rows)
        .map(|n| Level4Row {
            id: format!("l4-{n}"),
            level_3_id: format!("l3-{}", (n - 1) % LEVEL_IDS + 1),
            value: format!("v{}", n - 1),
            note: (n % 3 != 0).then(|| NOTES[n % NOTES.len()].to_string()),
            rank: (n % 4 != 0).then_some((n % 7) as i64 - 2),
            flag: n % 2 == 0,
        })
        .collect();
    let schema_changes = schema_change(&mut rng, knobs).into_iter().collect();
    Scenario {
        format_version: FORMAT_VERSION,
        seed,
        schema: STANDARD_SCHEMA.to_string(),
        plants: Vec::new(),
        seed_rows,
        timing: Timing::from_knobs(knobs),
        shapes,
        batches,
        restarts,
        client_restarts,
        partitions,
        removals,
        schema_changes,
        sched_seed,
    }
}

/// Sometimes a column is added to a table during a batch.
fn schema_change(rng: &mut ChaCha8Rng, knobs: &Knobs) -> Option<(usize, AddColumn)> {
    if knobs.batch_count == 0 || !rng.random_bool(knobs.add_column_rate) {
        return None;
    }
    let batch = rng.random_range(1..=knobs.batch_count);
    let change = AddColumn {
        table: format!("level_{}", rng.random_range(1..=4)),
        column: format!("extra_{batch}"),
        after_txn: rng.random_range(0..=knobs.txns_per_batch),
    };
    Some((batch, change))
}

/// A restart of the kind the knobs ask for, armed (or not) at a crash point
/// the batch will reach (`shape_change`: it removes and re-creates a shape,
/// and a kill is armed at this point), maybe with a second kill during boot.
fn restart(
    rng: &mut ChaCha8Rng,
    knobs: &Knobs,
    shape_change: Option<CrashPoint>,
    subqueries: bool,
) -> Restart {
    let shapes_change = shape_change.is_some();
    let kind = match knobs.restart_type {
        RestartType::Graceful => RestartKind::Graceful,
        RestartType::Crash => RestartKind::Crash,
        RestartType::Power => RestartKind::Power,
        RestartType::InterruptedGraceful => RestartKind::InterruptedGraceful,
        RestartType::Rolling => RestartKind::Rolling,
        RestartType::Mixed => *[
            RestartKind::Graceful,
            RestartKind::Crash,
            RestartKind::Power,
            RestartKind::InterruptedGraceful,
            RestartKind::Rolling,
        ]
        .choose(rng)
        .expect("five kinds"),
    };
    let point = |point: CrashPoint, visits: u32, rng: &mut ChaCha8Rng| {
        Some((point.name().to_string(), rng.random_range(0..visits)))
    };
    let kills = !matches!(kind, RestartKind::Graceful | RestartKind::Rolling);
    // A batch that changes shapes is the only way to the rarest points:
    // a kill after one is always armed at one of them.
    let armed = kills && (shapes_change || rng.random_bool(knobs.crash_point_rate));
    let crash_point = match kind {
        _ if !armed => None,
        RestartKind::InterruptedGraceful => point(CrashPoint::ShutdownAfterDrain, 1, rng),
        _ if shapes_change => point(shape_change.expect("a shape change"), 1, rng),
        _ if subqueries && rng.random_bool(0.25) => {
            let (moves_point, visits) = *SUBQUERY_MOVES.choose(rng).expect("points");
            point(moves_point, visits, rng)
        }
        _ => point(*EVERY_BATCH.choose(rng).expect("points"), 4, rng),
    };
    let boot_kill = kills && rng.random_bool(knobs.boot_kill_rate);
    let boot_crash_point = boot_kill
        .then(|| {
            let (boot_point, visits) = *BOOT.choose(rng).expect("points");
            point(boot_point, visits, rng)
        })
        .flatten();
    // An interrupted shutdown takes milliseconds: a drawn kill lands in it.
    let delay_ms = if kind == RestartKind::InterruptedGraceful {
        knobs.kill_window_ms / 10
    } else {
        knobs.kill_window_ms
    };
    Restart {
        kind,
        kill_delay_ms: rng.random_range(0..=delay_ms),
        crash_point,
        power_seed: rng.random(),
        boot_crash_point,
    }
}

/// Concurrency: sometimes a transaction began earlier (it holds an older xid,
/// in progress, while later ones commit: snapshots meanwhile list it), and
/// sometimes it rolls back.
fn txn_markers(rng: &mut ChaCha8Rng, knobs: &Knobs, ops: &mut Vec<Op>) {
    if rng.random_bool(knobs.concurrent_txn_rate) {
        let ahead = rng.random_range(1..=MAX_BEGAN_AHEAD);
        ops.insert(0, Op::BeganEarlier { ahead });
    }
    if rng.random_bool(knobs.abort_rate) {
        ops.push(Op::Rollback);
    }
}

/// How many transactions earlier a concurrent one may have begun.
const MAX_BEGAN_AHEAD: u8 = 4;

/// Tracks which level_4 rows exist so that most statements touch real rows.
struct Workload {
    level4: Vec<String>,
    next_id: u64,
}

impl Workload {
    fn op(&mut self, rng: &mut ChaCha8Rng) -> Op {
        let pick = |rng: &mut ChaCha8Rng, prefix: &str| {
            format!("{prefix}-{}", rng.random_range(1..=LEVEL_IDS))
        };
        let level_n = |rng: &mut ChaCha8Rng| rng.random_range(1..=3u8);
        match rng.random_range(0..13) {
            0 => {
                let n = level_n(rng);
                Op::ToggleActive {
                    level: n,
                    id: pick(rng, &format!("l{n}")),
                }
            }
            1 | 2 => {
                let n = rng.random_range(2..=3u8);
                Op::Reparent {
                    level: n,
                    id: pick(rng, &format!("l{n}")),
                    parent: pick(rng, &format!("l{}", n - 1)),
                }
            }
            3 => match self.existing(rng) {
                Some(id) => Op::Reparent {
                    level: 4,
                    id,
                    parent: pick(rng, "l3"),
                },
                None => self.insert(rng),
            },
            4 | 5 => {
                let n = level_n(rng);
                let (id, tag) = (
                    pick(rng, &format!("l{n}")),
                    TAGS.choose(rng).expect("tags").to_string(),
                );
                if rng.random_bool(0.5) {
                    Op::AddTag { level: n, id, tag }
                } else {
                    Op::RemoveTag { level: n, id, tag }
                }
            }
            6 => match self.existing(rng) {
                Some(id) => Op::SetValue {
                    id,
                    value: format!("v{}", rng.random_range(1..=1000)),
                },
                None => self.insert(rng),
            },
            7 => self.insert(rng),
            8 => match self.existing(rng) {
                Some(id) => {
                    self.level4.retain(|x| *x != id);
                    Op::DeleteLevel4 { id }
                }
                None => self.insert(rng),
            },
            9 => match self.existing(rng) {
                Some(id) => {
                    let new_id = self.fresh_id();
                    self.level4.retain(|x| *x != id);
                    self.level4.push(new_id.clone());
                    Op::ChangeLevel4Key { id, new_id }
                }
                None => self.insert(rng),
            },
            10 => match self.existing(rng) {
                Some(id) => Op::SetValue {
                    id,
                    value: VALUES.choose(rng).expect("values").to_string(),
                },
                None => self.insert(rng),
            },
            _ => match self.existing(rng) {
                Some(id) => nullable_update(rng, id),
                None => self.insert(rng),
            },
        }
    }

    fn existing(&self, rng: &mut ChaCha8Rng) -> Option<String> {
        self.level4.choose(rng).cloned()
    }

    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("l4-{}", self.next_id)
    }

    fn insert(&mut self, rng: &mut ChaCha8Rng) -> Op {
        let id = self.fresh_id();
        self.level4.push(id.clone());
        let parent = format!("l3-{}", rng.random_range(1..=LEVEL_IDS));
        let (note, rank) = (note(rng), rank(rng));
        Op::InsertLevel4 {
            id,
            parent,
            value: VALUES.choose(rng).expect("values").to_string(),
            note,
            rank,
            flag: rng.random_bool(0.5),
        }
    }
}

/// A `note`: NULL a third of the time.
fn note(rng: &mut ChaCha8Rng) -> Option<String> {
    let value = NOTES.choose(rng).expect("notes").to_string();
    (!rng.random_bool(1.0 / 3.0)).then_some(value)
}

/// A `rank`: NULL a third of the time.
fn rank(rng: &mut ChaCha8Rng) -> Option<i64> {
    let value = rng.random_range(RANKS);
    (!rng.random_bool(1.0 / 3.0)).then_some(value)
}

/// An update of one of `level_4`'s nullable or non-text columns.
fn nullable_update(rng: &mut ChaCha8Rng, id: String) -> Op {
    match rng.random_range(0..3) {
        0 => Op::SetNote {
            id,
            note: note(rng),
        },
        1 => Op::SetRank {
            id,
            rank: rank(rng),
        },
        _ => Op::SetFlag {
            id,
            flag: rng.random_bool(0.5),
        },
    }
}

/// A shape: mostly on `level_4` (Electric's oracle test), sometimes on
/// `level_1`..`level_3`; sometimes selecting columns.
fn shape(rng: &mut ChaCha8Rng, knobs: &Knobs) -> ShapeSpec {
    // Drawn only when asked for, so scenarios without subqueries keep
    // their seeds' shapes.
    let subquery = knobs.subquery_rate > 0.0 && rng.random_bool(knobs.subquery_rate);
    let (table, where_clause) = if subquery {
        let clause = super::subqueries::subquery_clause(rng, 3);
        ("level_4".to_string(), clause)
    } else if rng.random_bool(knobs.other_table_rate) {
        let n = rng.random_range(1..=3u8);
        (format!("level_{n}"), upper_where(rng, n, 2))
    } else {
        ("level_4".to_string(), where_clause(rng, 2))
    };
    let columns = rng.random_bool(knobs.columns_rate).then(|| {
        let others: &[&str] = match table.as_str() {
            "level_4" => &["level_3_id", "value", "note", "rank", "flag"],
            "level_1" => &["active"],
            "level_2" => &["level_1_id", "active"],
            _ => &["level_2_id", "active"],
        };
        let mut columns = vec!["id".to_string()];
        columns.extend(
            others
                .iter()
                .filter(|_| rng.random_bool(0.5))
                .map(|c| c.to_string()),
        );
        columns
    });
    ShapeSpec {
        table,
        columns,
        where_clause: Some(where_clause),
        replica_full: rng.random_bool(knobs.replica_full_rate),
    }
}

/// A WHERE on `level_<n>` (n in 1..=3: id, the parent's id, active).
fn upper_where(rng: &mut ChaCha8Rng, n: u8, depth: u32) -> String {
    if depth > 0 && rng.random_bool(0.4) {
        let op = if rng.random_bool(0.5) { "AND" } else { "OR" };
        let (a, b) = (
            upper_where(rng, n, depth - 1),
            upper_where(rng, n, depth - 1),
        );
        return format!("({a}) {op} ({b})");
    }
    let id =
        |rng: &mut ChaCha8Rng, level: u8| format!("'l{level}-{}'", rng.random_range(1..=LEVEL_IDS));
    match rng.random_range(0..5) {
        0 => "active".to_string(),
        1 => "NOT active".to_string(),
        2 => format!("id = {}", id(rng, n)),
        3 => format!("id IN ({}, {})", id(rng, n), id(rng, n)),
        _ if n > 1 => format!("level_{}_id = {}", n - 1, id(rng, n - 1)),
        _ => "active IS FALSE".to_string(),
    }
}

/// Electric's `where_clause_gen(max_depth: 2)` without the subquery forms:
/// atomic 4, AND 2, OR 2, complex 1.
pub fn where_clause(rng: &mut ChaCha8Rng, depth: u32) -> String {
    if depth == 0 {
        return atomic(rng);
    }
    match rng.random_range(0..9) {
        0..=3 => atomic(rng),
        4 | 5 => format!(
            "({}) AND ({})",
            where_clause(rng, depth - 1),
            where_clause(rng, depth - 1)
        ),
        6 | 7 => format!(
            "({}) OR ({})",
            where_clause(rng, depth - 1),
            where_clause(rng, depth - 1)
        ),
        _ => match rng.random_range(0..3) {
            0 => format!("({} OR {}) AND {}", atomic(rng), atomic(rng), atomic(rng)),
            1 => format!("NOT ({})", atomic(rng)),
            _ => format!("{} OR {} OR {}", atomic(rng), atomic(rng), atomic(rng)),
        },
    }
}

pub(super) fn atomic(rng: &mut ChaCha8Rng) -> String {
    let value = |rng: &mut ChaCha8Rng| VALUES.choose(rng).expect("values").to_string();
    let ids = |rng: &mut ChaCha8Rng, prefix: &str, max: usize| {
        let count = rng.random_range(2..=4);
        let picked: Vec<String> = (0..count)
            .map(|_| format!("'{prefix}-{}'", rng.random_range(1..=max)))
            .collect();
        picked.join(", ")
    };
    match rng.random_range(0..11) {
        7 => note_atom(rng),
        8 => rank_atom(rng),
        9 => [
            "flag",
            "NOT flag",
            "flag = false",
            "flag IS TRUE",
            "flag <> true",
        ]
        .choose(rng)
        .expect("flag atoms")
        .to_string(),
        // Rows that inserts and key changes create later: the shape gains them.
        10 => {
            if rng.random_bool(0.5) {
                format!("id = 'l4-{}'", rng.random_range(1_001..=1_030))
            } else {
                format!("id IN ({})", fresh_ids(rng))
            }
        }
        0 => format!("level_3_id = 'l3-{}'", rng.random_range(1..=LEVEL_IDS)),
        1 => format!("id = 'l4-{}'", rng.random_range(1..=20)),
        2 => format!("value = '{}'", value(rng)),
        3 => {
            let op = ["<", ">", "<=", ">=", "<>"].choose(rng).expect("ops");
            format!("value {op} '{}'", value(rng))
        }
        4 => {
            let not = if rng.random_bool(0.3) { "NOT " } else { "" };
            let like = if rng.random_bool(0.2) {
                "ILIKE"
            } else {
                "LIKE"
            };
            format!(
                "value {not}{like} '{}'",
                LIKE_PATTERNS.choose(rng).expect("patterns")
            )
        }
        5 => {
            let (mut lo, mut hi) = (value(rng), value(rng));
            if lo > hi {
                std::mem::swap(&mut lo, &mut hi);
            }
            let not = if rng.random_bool(0.3) { "NOT " } else { "" };
            format!("value {not}BETWEEN '{lo}' AND '{hi}'")
        }
        _ => {
            if rng.random_bool(0.5) {
                format!("level_3_id IN ({})", ids(rng, "l3", LEVEL_IDS))
            } else {
                format!("id IN ({})", ids(rng, "l4", 20))
            }
        }
    }
}

/// `count` ids among those inserts and key changes create (`l4-1001`, ...).
fn fresh_ids(rng: &mut ChaCha8Rng) -> String {
    let count = rng.random_range(2..=4);
    let ids: Vec<String> = (0..count)
        .map(|_| format!("'l4-{}'", rng.random_range(1_001..=1_030)))
        .collect();
    ids.join(", ")
}

/// A predicate on the nullable `note`: NULL rows satisfy only `IS NULL`
/// (and neither `note = x` nor `NOT (note = x)`).
fn note_atom(rng: &mut ChaCha8Rng) -> String {
    let note = NOTES.choose(rng).expect("notes");
    match rng.random_range(0..5) {
        0 => "note IS NULL".to_string(),
        1 => "note IS NOT NULL".to_string(),
        2 => format!("note = '{note}'"),
        3 => format!("note <> '{note}'"),
        _ => format!("note LIKE '{note}%'"),
    }
}

/// A predicate on the nullable integer `rank`.
fn rank_atom(rng: &mut ChaCha8Rng) -> String {
    let n = rng.random_range(RANKS);
    match rng.random_range(0..6) {
        0 => "rank IS NULL".to_string(),
        1 => format!("rank > {n}"),
        2 => format!("rank <= {n}"),
        3 => format!("rank <> {n}"),
        4 => format!("rank BETWEEN {n} AND {}", n + 3),
        _ => format!("rank IN ({n}, {}, {})", n + 1, n + 4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standard;
    use engine::shape::{Shape, ShapeRequest};

    #[test]
    fn expansion_is_deterministic_and_follows_the_knobs() {
        let knobs = Knobs::default();
        let a = expand(7, &knobs);
        assert_eq!(a, expand(7, &knobs));
        assert_ne!(a, expand(8, &knobs));
        assert_eq!(a.shapes.len(), knobs.shape_count);
        assert_eq!(
            a.mutation_count(),
            knobs.batch_count * knobs.txns_per_batch * knobs.mutations_per_txn
        );
        assert!(
            a.restarts
                .keys()
                .all(|b| b % knobs.restart_server_every == 0 && *b < knobs.batch_count)
        );
    }

    fn knobs_strategy() -> impl proptest::strategy::Strategy<Value = Knobs> {
        use proptest::prelude::*;
        (
            1usize..6,
            1usize..5,
            1usize..4,
            1usize..5,
            0usize..3,
            0usize..4,
            0.0f64..1.0,
            1usize..30,
        )
            .prop_map(
                |(
                    shape_count,
                    batch_count,
                    txns_per_batch,
                    mutations_per_txn,
                    every,
                    clients,
                    rate,
                    rows,
                )| Knobs {
                    shape_count,
                    batch_count,
                    txns_per_batch,
                    mutations_per_txn,
                    restart_server_every: every,
                    restart_client_every: clients,
                    crash_point_rate: rate,
                    partition_rate: rate / 2.0,
                    level4_rows: rows,
                    ..Knobs::default()
                },
            )
    }

    proptest::proptest! {
        #![proptest_config(engine::testing::proptest_config(64))]

        /// Whatever the knobs, the expanded scenario survives its file format
        /// unchanged (shrinking and the corpus depend on it).
        #[test]
        fn scenarios_roundtrip_through_their_file_format(seed in proptest::prelude::any::<u64>(), knobs in knobs_strategy()) {
            let scenario = expand(seed, &knobs);
            let parsed = crate::scenario::Scenario::parse(&scenario.to_json()).unwrap();
            proptest::prop_assert_eq!(parsed, scenario);
        }
    }

    #[test]
    fn every_generated_shape_is_accepted_by_the_engine_and_the_oracle() {
        let catalog = standard::catalog();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let knobs = Knobs::default();
        let (mut others, mut selecting) = (0, 0);
        for _ in 0..2_000 {
            let spec = shape(&mut rng, &knobs);
            let clause = spec.where_clause.clone().expect("generated shapes filter");
            let request = ShapeRequest {
                table: spec.table.clone(),
                columns: spec.columns.clone(),
                where_clause: Some(clause.clone()),
                ..Default::default()
            };
            Shape::new(&catalog, &request).unwrap_or_else(|e| panic!("{}: {e}", spec.describe()));
            crate::oracle::where_eval::parse(&clause).unwrap();
            others += usize::from(spec.table != "level_4");
            selecting += usize::from(spec.columns.is_some());
        }
        assert!(
            others > 300 && selecting > 400,
            "{others} on other tables, {selecting} selecting columns"
        );
    }
}
