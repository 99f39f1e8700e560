//! The harness: one scenario, one madsim runtime, on a fresh OS thread.
//!
//! Nodes: `postgres` (the Postgres model; never restarted), `engine` (the
//! stack; killed and restarted), `clients`. Everything durable (the disk, the
//! SQLite connection, the Postgres model) belongs to the supervisor, outside
//! the engine's node. The supervisor commits each batch's transactions, kills
//! the engine where the scenario says (at an armed crash point, or at a drawn
//! time), runs graceful restarts through the shutdown coordinator, restarts
//! clients, partitions the network, and after every batch and restart checks
//! every client against the oracle ([`checks`]). All along, the state checker
//! ([`checker`]) judges the engine's event stream and every answer live; its
//! first failure ends the run at once.

pub mod checker;
pub mod checks;
pub mod coverage;
pub mod faults;
pub mod net;
pub mod panics;
mod restarts;
pub mod timeline;
pub mod trace;
mod world;

use crate::scenario::Scenario;
use checker::SharedChecker;
use checks::Failure;
use coverage::Coverage;
use engine::stack::StackConfig;
use futures::future::{self, Either};
use madsim::runtime::Runtime;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trace::{SharedTrace, Trace, record};
use world::World;

pub use crate::scenario::Plant;

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Keep every event (for `--check-determinism`).
    pub keep_events: bool,
    /// Test hook: make the trace depend on process state, so that two runs
    /// of one seed differ (proves the determinism check works).
    pub inject_nondeterminism: bool,
    /// Keep a timeline of the run (`RunOutcome::timeline`).
    pub timeline: bool,
}

/// The outcome of one run; its JSON form is what `run --json` prints.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RunOutcome {
    pub seed: u64,
    /// `pass` or `fail`.
    pub result: String,
    pub failure: Option<Failure>,
    pub trace_hash: String,
    pub events: u64,
    pub restarts: u64,
    /// 409s the clients got (each explained; by reason in `coverage`).
    pub conflicts: u64,
    pub sim_ms: u64,
    pub wall_ms: u64,
    pub coverage: Coverage,
    #[serde(skip)]
    pub last_events: Vec<String>,
    #[serde(skip)]
    pub event_log: Vec<String>,
    /// The run as Chrome trace-event JSON, when `RunOptions::timeline`.
    #[serde(skip)]
    pub timeline: Option<serde_json::Value>,
}

impl RunOutcome {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

pub fn stack_config(scenario: &Scenario) -> StackConfig {
    let knobs = &scenario.timing;
    let mut config = StackConfig {
        long_poll_timeout_ms: knobs.long_poll_timeout_ms,
        ..StackConfig::default()
    };
    config.log.chunk_bytes = knobs.chunk_bytes;
    config.log.flush_period_ms = knobs.flush_period_ms;
    config.snapshot_timeout_ms = knobs.check_timeout_ms;
    config.shutdown_timeout_ms = 10_000;
    config.subquery_restore = knobs.subquery_restore.engine();
    config.plants = Plant::switches(&scenario.plants);
    config.log.plants = config.plants;
    config
}

/// Silences the default panic output of simulation threads (the failure
/// report carries the panic's message); panics anywhere else still print.
pub fn quiet_seed_panics() {
    panics::quiet();
}

/// Runs a scenario on a fresh thread (each seed gets pristine thread-local
/// state, as madsim's own determinism check does) and reports the outcome.
#[allow(clippy::disallowed_types)] // wall time is measured outside the simulation
pub fn execute(scenario: &Scenario, options: &RunOptions) -> RunOutcome {
    let started = std::time::Instant::now();
    let mut new_trace = Trace::new(options.keep_events);
    if options.timeline {
        new_trace = new_trace.with_timeline();
    }
    let trace: SharedTrace = Arc::new(Mutex::new(new_trace));
    let slot: Arc<Mutex<Option<SharedChecker>>> = Arc::default();
    let thread_name = panics::thread_name(scenario.seed);
    let joined = {
        let (scenario, options, trace, slot) = (
            scenario.clone(),
            options.clone(),
            trace.clone(),
            slot.clone(),
        );
        std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || simulate(scenario, options, trace, slot))
            .expect("spawn the seed's thread")
            .join()
    };
    // A panic's record is taken even after a clean run, so none is left behind.
    let panicked = panics::take(&thread_name);
    // The verdict the checker reached before any panic (the panic may be
    // its consequence: an engine's `expect` on a storage call the disk
    // owner check failed, say). A poisoned checker recorded nothing first.
    let verdict = slot
        .lock()
        .expect("checker slot")
        .as_ref()
        .and_then(|c| c.lock().ok().map(|checker| checker.verdict.clone()));
    let failure = match joined {
        Ok(result) => result.err().map(|f| *f),
        Err(payload) => Some(
            verdict
                .and_then(|v| v.failure())
                .unwrap_or_else(|| panic_failure(panicked, &*payload, &trace)),
        ),
    };
    let coverage = slot
        .lock()
        .expect("checker slot")
        .as_ref()
        .map(|c| checker::lock(c).coverage.clone())
        .unwrap_or_default();
    let mut trace = trace.lock().expect("trace");
    let last_events = failure
        .as_ref()
        .map_or_else(|| trace.recent(), |f| f.last_events.clone());
    let end_ms = failure
        .as_ref()
        .map_or(trace.last_ms(), |f| f.sim_ms.max(trace.last_ms()));
    if let Some(f) = &failure {
        let mark = timeline::Mark::Instant {
            track: timeline::Track::Checks,
            kind: timeline::Kind::Failure,
            name: format!("FAILED: {}", f.check),
            args: vec![("message", f.message.clone())],
        };
        trace.mark(f.sim_ms, mark);
    }
    let timeline = trace
        .take_timeline()
        .map(|t| t.to_json(scenario.seed, end_ms));
    RunOutcome {
        seed: scenario.seed,
        result: if failure.is_none() { "pass" } else { "fail" }.to_string(),
        sim_ms: failure
            .as_ref()
            .map_or(trace.last_ms(), |f| f.sim_ms.max(trace.last_ms())),
        failure,
        trace_hash: trace.hash(),
        events: trace.count(),
        restarts: coverage.restarts.values().sum(),
        conflicts: coverage.conflicts.values().sum(),
        wall_ms: started.elapsed().as_millis() as u64,
        coverage,
        last_events,
        event_log: trace.take_all(),
        timeline,
    }
}

/// The seed's thread: a madsim runtime running the supervisor.
fn simulate(
    scenario: Scenario,
    options: RunOptions,
    trace: SharedTrace,
    slot: Arc<Mutex<Option<SharedChecker>>>,
) -> Result<(), Box<Failure>> {
    let knobs = &scenario.timing;
    let mut config = madsim::Config::default();
    config.net.packet_loss_rate = knobs.packet_loss_rate;
    let (lo, hi) = (knobs.latency_min_ms, knobs.latency_max_ms);
    config.net.send_latency =
        Duration::from_millis(lo)..Duration::from_millis(hi) + Duration::from_micros(1);
    let mut runtime = Runtime::with_seed_and_config(scenario.sched_seed, config);
    let budget_ms =
        (scenario.batches.len() as u64 * 3 + 6) * 10 * (knobs.check_timeout_ms + 30_000);
    runtime.set_time_limit(Duration::from_millis(budget_ms));
    runtime.block_on(supervise(scenario, options, trace, slot))
}

fn panic_failure(
    panicked: Option<panics::PanicRecord>,
    payload: &(dyn std::any::Any + Send),
    trace: &SharedTrace,
) -> Failure {
    let record = panicked.unwrap_or_else(|| panics::PanicRecord {
        file: String::new(),
        line: 0,
        message: panic_payload(payload),
        on_engine: false,
    });
    let (sim_ms, last_events) = {
        let trace = trace.lock().expect("trace");
        (trace.last_ms(), trace.recent())
    };
    Failure {
        check: record.check().to_string(),
        message: format!("{} (at {}:{})", record.message, record.file, record.line),
        detail: Some(record.normalized_message()),
        shape: None,
        client: None,
        sim_ms,
        last_events,
    }
}

static RUNS_IN_PROCESS: AtomicU64 = AtomicU64::new(0);

/// Runs the scenario until it ends or the state checker fails it.
async fn supervise(
    scenario: Scenario,
    options: RunOptions,
    trace: SharedTrace,
    slot: Arc<Mutex<Option<SharedChecker>>>,
) -> Result<(), Box<Failure>> {
    let mut world = World::new(scenario, trace).await;
    *slot.lock().expect("checker slot") = Some(world.checker.clone());
    if options.inject_nondeterminism {
        let run = RUNS_IN_PROCESS.fetch_add(1, Ordering::SeqCst);
        record(&world.trace, format_args!("process-dependent event {run}"));
    }
    let verdict = checker::lock(&world.checker).verdict.clone();
    let nodes = world.node_ids();
    let failed = std::pin::pin!(verdict.wait());
    let ran = std::pin::pin!(world.run());
    let result = match future::select(ran, failed).await {
        Either::Left((result, _)) => result,
        Either::Right((failure, _)) => Err(failure),
    };
    for id in nodes {
        // Pending tasks die with their node (see `World::node_ids`).
        madsim::runtime::Handle::current().kill(id);
    }
    // A failure the checker found first stands over its consequences.
    match (verdict.failure(), result) {
        (Some(first), _) => Err(Box::new(first)),
        (None, result) => result.map_err(Box::new),
    }
}

fn panic_payload(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a task panicked".to_string())
}
