//! Shrinking a failing scenario to a small one with the same failure.
//!
//! Passes, repeated until none removes anything (or the time budget ends):
//! ddmin over batches (each with its restart, client restart and partition),
//! over restarts, client restarts and partitions on their own, dropping armed
//! crash points, over the transactions of each batch and the statements of
//! each transaction, over shapes and seed rows; then simplification of
//! values (no disk latency, network loss or jitter, milder restart kinds,
//! kills without delay). A candidate is kept only if it fails with the same
//! signature. Candidates run with the scenario's own scheduler seed, so the
//! whole process is deterministic: the same input gives the same output
//! (unless the time budget cuts it short, which the report says).

pub mod ddmin;

use crate::harness::{self, RunOptions, RunOutcome, checks::Failure};
use crate::scenario::{Restart, RestartKind, Scenario};
use ddmin::ddmin;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What a failure is, for shrinking and for the corpus: the check, and
/// either the panic (its masked message) or the shape at fault (by its
/// definition, which survives the removal of other shapes).
pub fn signature(scenario: &Scenario, failure: &Failure) -> String {
    if let Some(detail) = &failure.detail {
        return format!("{}: {detail}", failure.check);
    }
    match failure.shape.and_then(|i| scenario.shapes.get(i)) {
        Some(shape) => format!("{} on {}", failure.check, shape.describe()),
        None => failure.check.clone(),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ShrinkReport {
    pub signature: String,
    pub original_mutations: usize,
    pub minimized_mutations: usize,
    /// Harness events of the failing run, before and after.
    pub original_events: u64,
    pub minimized_events: u64,
    pub secs: f64,
    /// Scenarios executed while shrinking.
    pub candidates: u64,
    /// False if the time budget ended the search early (the result is then
    /// smaller than the input but not necessarily 1-minimal).
    pub complete: bool,
    #[serde(skip)]
    pub scenario: Scenario,
    #[serde(skip)]
    pub outcome: RunOutcome,
}

/// A change toward a simpler scenario; false if it changed nothing.
type Simplification = Box<dyn Fn(&mut Scenario) -> bool>;

struct Shrinker {
    target: String,
    deadline: f64,
    started: Clock,
    candidates: u64,
    out_of_time: bool,
}

/// Wall time, to honour `--max-secs` (it does not influence any decision
/// while the budget lasts).
#[allow(clippy::disallowed_types)]
struct Clock(std::time::Instant);

#[allow(clippy::disallowed_types)]
impl Clock {
    fn now() -> Clock {
        Clock(std::time::Instant::now())
    }
    fn secs(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

impl Shrinker {
    /// Whether the candidate fails the same way.
    fn fails(&mut self, candidate: &Scenario) -> bool {
        if self.started.secs() > self.deadline {
            self.out_of_time = true;
            return false;
        }
        self.candidates += 1;
        let outcome = harness::execute(candidate, &RunOptions::default());
        outcome
            .failure
            .as_ref()
            .is_some_and(|f| signature(candidate, f) == self.target)
    }
}

/// Why shrinking could not produce a scenario.
#[derive(Debug)]
pub enum ShrinkError {
    /// The input does not fail: nothing to shrink (bad input).
    Passes,
    /// The same scenario failed differently on two runs: a finding in itself.
    NonDeterminism(String),
}

impl std::fmt::Display for ShrinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShrinkError::Passes => write!(f, "the scenario passes: there is no failure to shrink"),
            ShrinkError::NonDeterminism(why) => write!(f, "{why}"),
        }
    }
}

/// Shrinks `scenario`, which must fail; `progress` hears about each pass.
pub fn shrink(
    scenario: &Scenario,
    max_secs: f64,
    mut progress: impl FnMut(&str),
) -> Result<ShrinkReport, ShrinkError> {
    let started = Clock::now();
    let original = harness::execute(scenario, &RunOptions::default());
    let Some(failure) = &original.failure else {
        return Err(ShrinkError::Passes);
    };
    let target = signature(scenario, failure);
    progress(&format!(
        "shrinking a failure `{target}` ({} statements)",
        scenario.mutation_count()
    ));
    let mut shrinker = Shrinker {
        target: target.clone(),
        deadline: max_secs,
        started,
        candidates: 1,
        out_of_time: false,
    };
    let mut current = shrinker.robust_faults(scenario.clone());
    loop {
        let before = size(&current);
        current = shrinker.batches(current);
        current = shrinker.attachments(current);
        current = shrinker.transactions(current);
        current = shrinker.statements(current);
        current = shrinker.shapes(current);
        current = shrinker.seed_rows(current);
        current = shrinker.simplify(current);
        progress(&format!(
            "pass done: {} statements, {} batches, {} shapes, {} restarts",
            current.mutation_count(),
            current.batches.len(),
            current.shapes.len(),
            current.restarts.len()
        ));
        if size(&current) == before || shrinker.out_of_time {
            break;
        }
    }
    let outcome = harness::execute(&current, &RunOptions::default());
    let still = outcome.failure.as_ref().map(|f| signature(&current, f));
    if still.as_deref() != Some(target.as_str()) {
        // Every kept candidate failed with the target signature; a different
        // outcome now means the harness is not deterministic.
        return Err(ShrinkError::NonDeterminism(format!(
            "the minimized scenario no longer fails as `{target}` (got {still:?}): non-determinism; check with replay --check-determinism"
        )));
    }
    Ok(ShrinkReport {
        signature: target,
        original_mutations: scenario.mutation_count(),
        minimized_mutations: current.mutation_count(),
        original_events: original.events,
        minimized_events: outcome.events,
        secs: shrinker.started.secs(),
        candidates: shrinker.candidates,
        complete: !shrinker.out_of_time,
        scenario: current,
        outcome,
    })
}

/// How much denser [`Shrinker::robust_faults`] tries injected I/O errors,
/// in order, and the densest rate it tries.
const ROBUST_FAULT_FACTORS: [f64; 3] = [16.0, 4.0, 64.0];
const ROBUST_FAULT_RATE_MAX: f64 = 0.05;

/// A measure that every successful pass decreases.
fn size(s: &Scenario) -> (usize, usize, usize, usize, usize, usize, String) {
    let faults = s.restarts.len()
        + s.client_restarts.len()
        + s.partitions.len()
        + s.removals.len()
        + s.schema_changes.len();
    let points = s
        .restarts
        .values()
        .filter(|r| r.crash_point.is_some())
        .count();
    let timing = format!("{:?}{:?}", s.timing, s.restarts);
    (
        s.mutation_count(),
        s.batches.len(),
        faults,
        points,
        s.shapes.len(),
        s.seed_rows.len(),
        timing,
    )
}

/// The scenario with only the batches at `kept` (old 0-based indexes), each
/// keeping its restart, client restart, partition and removal.
fn with_batches(s: &Scenario, kept: &[usize]) -> Scenario {
    let mut out = s.clone();
    out.batches = kept.iter().map(|&i| s.batches[i].clone()).collect();
    let renumber = |old: usize| kept.iter().position(|&i| i + 1 == old).map(|p| p + 1);
    out.restarts = s
        .restarts
        .iter()
        .filter_map(|(b, r)| renumber(*b).map(|n| (n, r.clone())))
        .collect();
    out.client_restarts = s
        .client_restarts
        .iter()
        .filter_map(|b| renumber(*b))
        .collect();
    out.partitions = s
        .partitions
        .iter()
        .filter_map(|(b, p)| renumber(*b).map(|n| (n, p.clone())))
        .collect();
    out.removals = s
        .removals
        .iter()
        .filter_map(|(b, r)| renumber(*b).map(|n| (n, r.clone())))
        .collect();
    out.schema_changes = s
        .schema_changes
        .iter()
        .filter_map(|(b, c)| renumber(*b).map(|n| (n, c.clone())))
        .collect();
    out
}

/// The scenario with only the shapes at `kept` (old indexes); removals of
/// dropped shapes go with them.
fn with_shapes(s: &Scenario, kept: &[usize]) -> Scenario {
    let mut out = s.clone();
    out.shapes = kept.iter().map(|&i| s.shapes[i].clone()).collect();
    out.removals = s
        .removals
        .iter()
        .filter_map(|(b, r)| {
            let shape = kept.iter().position(|&i| i == r.shape)?;
            Some((*b, crate::scenario::Removal { shape, ..r.clone() }))
        })
        .collect();
    out
}

impl Shrinker {
    fn batches(&mut self, s: Scenario) -> Scenario {
        let kept = ddmin((0..s.batches.len()).collect(), |kept| {
            self.fails(&with_batches(&s, kept))
        });
        with_batches(&s, &kept)
    }

    /// Restarts, client restarts, partitions, removals and crash points,
    /// each on its own.
    fn attachments(&mut self, s: Scenario) -> Scenario {
        let restarts: Vec<(usize, Restart)> = s.restarts.clone().into_iter().collect();
        let kept = ddmin(restarts, |kept| {
            self.fails(&Scenario {
                restarts: kept.iter().cloned().collect(),
                ..s.clone()
            })
        });
        let s = Scenario {
            restarts: kept.into_iter().collect(),
            ..s
        };
        let kept = ddmin(s.client_restarts.iter().copied().collect(), |kept| {
            self.fails(&Scenario {
                client_restarts: kept.iter().copied().collect::<BTreeSet<_>>(),
                ..s.clone()
            })
        });
        let s = Scenario {
            client_restarts: kept.into_iter().collect(),
            ..s
        };
        let partitions: Vec<_> = s.partitions.clone().into_iter().collect();
        let kept = ddmin(partitions, |kept| {
            self.fails(&Scenario {
                partitions: kept.iter().cloned().collect::<BTreeMap<_, _>>(),
                ..s.clone()
            })
        });
        let s = Scenario {
            partitions: kept.into_iter().collect(),
            ..s
        };
        let removals: Vec<_> = s.removals.clone().into_iter().collect();
        let kept = ddmin(removals, |kept| {
            self.fails(&Scenario {
                removals: kept.iter().cloned().collect::<BTreeMap<_, _>>(),
                ..s.clone()
            })
        });
        let s = Scenario {
            removals: kept.into_iter().collect(),
            ..s
        };
        let changes: Vec<_> = s.schema_changes.clone().into_iter().collect();
        let kept = ddmin(changes, |kept| {
            self.fails(&Scenario {
                schema_changes: kept.iter().cloned().collect::<BTreeMap<_, _>>(),
                ..s.clone()
            })
        });
        let mut s = Scenario {
            schema_changes: kept.into_iter().collect(),
            ..s
        };
        let armed: Vec<usize> = s
            .restarts
            .iter()
            .filter(|(_, r)| r.crash_point.is_some())
            .map(|(b, _)| *b)
            .collect();
        // (boot crash points are dropped by `simplify`.)
        for batch in armed {
            let mut candidate = s.clone();
            candidate
                .restarts
                .get_mut(&batch)
                .expect("restart")
                .crash_point = None;
            if self.fails(&candidate) {
                s = candidate;
            }
        }
        s
    }

    fn transactions(&mut self, mut s: Scenario) -> Scenario {
        for b in 0..s.batches.len() {
            let txns: Vec<usize> = (0..s.batches[b].len()).collect();
            let kept = ddmin(txns, |kept| {
                let mut candidate = s.clone();
                candidate.batches[b] = kept.iter().map(|&t| s.batches[b][t].clone()).collect();
                self.fails(&candidate)
            });
            s.batches[b] = kept.iter().map(|&t| s.batches[b][t].clone()).collect();
        }
        s
    }

    fn statements(&mut self, mut s: Scenario) -> Scenario {
        for b in 0..s.batches.len() {
            for t in 0..s.batches[b].len() {
                let kept = ddmin(s.batches[b][t].clone(), |kept| {
                    let mut candidate = s.clone();
                    candidate.batches[b][t] = kept.to_vec();
                    self.fails(&candidate)
                });
                s.batches[b][t] = kept;
            }
            // An empty transaction still takes a step of the schedule: drop
            // them only if the failure stays (every change is tested).
            let mut candidate = s.clone();
            candidate.batches[b].retain(|txn| !txn.is_empty());
            if candidate.batches[b].len() < s.batches[b].len() && self.fails(&candidate) {
                s = candidate;
            }
        }
        s
    }

    /// A failure that needs an injected I/O error hangs on which call it
    /// hit: the fault plan picks calls by their number, so removing any
    /// statement moves the fault and loses the failure. Denser faults make
    /// it survive the removals; `simplify` still tries none at the end.
    fn robust_faults(&mut self, s: Scenario) -> Scenario {
        let rate = s.timing.io_error_rate;
        if rate == 0.0 {
            return s;
        }
        let mut without = s.clone();
        without.timing.io_error_rate = 0.0;
        if self.fails(&without) {
            return without;
        }
        for factor in ROBUST_FAULT_FACTORS {
            let mut denser = s.clone();
            denser.timing.io_error_rate = (rate * factor).min(ROBUST_FAULT_RATE_MAX);
            if self.fails(&denser) {
                return denser;
            }
        }
        s
    }

    fn shapes(&mut self, s: Scenario) -> Scenario {
        let kept = ddmin((0..s.shapes.len()).collect(), |kept| {
            self.fails(&with_shapes(&s, kept))
        });
        with_shapes(&s, &kept)
    }

    fn seed_rows(&mut self, s: Scenario) -> Scenario {
        let kept = ddmin(s.seed_rows.clone(), |kept| {
            self.fails(&Scenario {
                seed_rows: kept.to_vec(),
                ..s.clone()
            })
        });
        Scenario {
            seed_rows: kept,
            ..s
        }
    }

    /// Simpler values, one at a time, each kept only if the failure stays.
    fn simplify(&mut self, mut s: Scenario) -> Scenario {
        let mut tries: Vec<Simplification> = vec![
            Box::new(|c| std::mem::replace(&mut c.timing.disk_latency_us, 0) != 0),
            Box::new(|c| std::mem::replace(&mut c.timing.packet_loss_rate, 0.0) != 0.0),
            // Without injected I/O errors, unless the failure needs them.
            Box::new(|c| std::mem::replace(&mut c.timing.io_error_rate, 0.0) != 0.0),
            Box::new(|c| {
                let changed = c.timing.latency_min_ms != c.timing.latency_max_ms;
                c.timing.latency_min_ms = c.timing.latency_max_ms;
                changed
            }),
        ];
        for batch in s.restarts.keys().copied().collect::<Vec<_>>() {
            tries.push(Box::new(move |c| {
                let restart = c.restarts.get_mut(&batch).expect("restart");
                let milder = match restart.kind {
                    RestartKind::Power => RestartKind::Crash,
                    RestartKind::Crash
                    | RestartKind::InterruptedGraceful
                    | RestartKind::Rolling => RestartKind::Graceful,
                    RestartKind::Graceful => return false,
                };
                restart.kind = milder;
                if milder == RestartKind::Graceful {
                    // A graceful restart kills nothing.
                    (restart.crash_point, restart.boot_crash_point) = (None, None);
                }
                true
            }));
            tries.push(Box::new(move |c| {
                c.restarts
                    .get_mut(&batch)
                    .expect("restart")
                    .boot_crash_point
                    .take()
                    .is_some()
            }));
            tries.push(Box::new(move |c| {
                std::mem::replace(
                    &mut c.restarts.get_mut(&batch).expect("restart").kill_delay_ms,
                    0,
                ) != 0
            }));
        }
        for change in tries {
            let mut candidate = s.clone();
            if change(&mut candidate) && self.fails(&candidate) {
                s = candidate;
            }
        }
        s
    }
}
