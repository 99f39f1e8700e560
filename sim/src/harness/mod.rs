//! The harness: one scenario, one madsim runtime, on a fresh OS thread.
//!
//! Nodes: `postgres` (the Postgres model; never restarted), `engine` (the
//! stack; killed and restarted), `clients`. Everything durable (the disk, the
//! SQLite connection, the Postgres model) belongs to the supervisor, outside
//! the engine's node. The supervisor commits each batch's transactions, kills
//! the engine where the scenario says (at an armed crash point, or at a drawn
//! time), runs graceful restarts through the shutdown coordinator, restarts
//! clients, partitions the network, and after every batch and restart checks
//! every client against the oracle ([`checks`]).

pub mod checks;
mod faults;
pub mod net;
pub mod panics;
pub mod trace;

use crate::client::ShapeClient;
use crate::host::{SimClock, SimSpawner, sqlite_in_memory};
use crate::scenario::{Link, Restart, RestartKind, Scenario};
use crate::standard;
use checks::{CheckRules, Failure};
use engine::env::{CrashPoint, Env, MemStorage, PowerLoss};
use engine::stack::{Host, Stack, StackConfig};
use faults::{ArmedCrash, SlowStorage};
use madsim::net::Endpoint;
use madsim::rand::Rng as _;
use madsim::runtime::{Handle, NodeHandle, Runtime};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trace::{SharedTrace, Trace, record};

pub use crate::scenario::Plant;

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Keep every event (for `--check-determinism`).
    pub keep_events: bool,
    /// Test hook: make the trace depend on process state, so that two runs
    /// of one seed differ (proves the determinism check works).
    pub inject_nondeterminism: bool,
}

/// The outcome of one run; its JSON form is what `run --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct RunOutcome {
    pub seed: u64,
    pub result: &'static str,
    pub failure: Option<Failure>,
    pub trace_hash: String,
    pub events: u64,
    pub restarts: usize,
    /// 409s the clients got (allowed after crash and power restarts).
    pub conflicts: u64,
    pub sim_ms: u64,
    pub wall_ms: u64,
    #[serde(skip)]
    pub last_events: Vec<String>,
    #[serde(skip)]
    pub event_log: Vec<String>,
}

impl RunOutcome {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

pub fn stack_config(scenario: &Scenario) -> StackConfig {
    let (knobs, plants) = (&scenario.timing, &scenario.plants);
    let mut config = StackConfig {
        long_poll_timeout_ms: knobs.long_poll_timeout_ms,
        ..StackConfig::default()
    };
    config.log.chunk_bytes = knobs.chunk_bytes;
    config.log.flush_period_ms = knobs.flush_period_ms;
    config.snapshot_timeout_ms = knobs.check_timeout_ms;
    config.shutdown_timeout_ms = 10_000;
    config.plants.skip_shape_dedup = plants.contains(&Plant::SkipShapeDedup);
    config.plants.ack_past_unflushed = plants.contains(&Plant::AckPastUnflushed);
    config.log.plants.offset_before_fsync = plants.contains(&Plant::OffsetBeforeFsync);
    config.log.plants.no_trim_on_open = plants.contains(&Plant::NoTrimOnOpen);
    config.plants.out_of_bounds_400 = plants.contains(&Plant::OutOfBounds400);
    config.plants.snapshot_attempt_budget = plants.contains(&Plant::SnapshotAttemptBudget);
    config.log.plants.no_sync_on_open = plants.contains(&Plant::NoSyncOnOpen);
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
    let trace: SharedTrace = Arc::new(Mutex::new(Trace::new(options.keep_events)));
    let stats: Arc<Mutex<Stats>> = Arc::default();
    let (thread_scenario, thread_options, thread_trace, thread_stats) = (
        scenario.clone(),
        options.clone(),
        trace.clone(),
        stats.clone(),
    );
    let thread_name = panics::thread_name(scenario.seed);
    let joined = std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            let knobs = &thread_scenario.timing;
            let mut config = madsim::Config::default();
            config.net.packet_loss_rate = knobs.packet_loss_rate;
            let (lo, hi) = (knobs.latency_min_ms, knobs.latency_max_ms);
            config.net.send_latency =
                Duration::from_millis(lo)..Duration::from_millis(hi) + Duration::from_micros(1);
            let mut runtime = Runtime::with_seed_and_config(thread_scenario.sched_seed, config);
            let budget_ms = (thread_scenario.batches.len() as u64 * 3 + 6)
                * 10
                * (knobs.check_timeout_ms + 30_000);
            runtime.set_time_limit(Duration::from_millis(budget_ms));
            runtime.block_on(supervise(
                thread_scenario,
                thread_options,
                thread_trace,
                thread_stats,
            ))
        })
        .expect("spawn the seed's thread")
        .join();
    // A panic's record is taken even after a clean run, so none is left behind.
    let panicked = panics::take(&thread_name);
    let result = match joined {
        Ok(Ok(())) => None,
        Ok(Err(failure)) => Some(*failure),
        Err(payload) => {
            let record = panicked.unwrap_or_else(|| panics::PanicRecord {
                file: String::new(),
                line: 0,
                message: panic_payload(&*payload),
            });
            let (sim_ms, last_events) = {
                let trace = trace.lock().expect("trace");
                (trace.last_ms(), trace.recent())
            };
            Some(Failure {
                check: record.check().to_string(),
                message: format!("{} (at {}:{})", record.message, record.file, record.line),
                detail: Some(record.normalized_message()),
                shape: None,
                client: None,
                sim_ms,
                last_events,
            })
        }
    };
    let Stats {
        restarts,
        conflicts,
    } = *stats.lock().expect("stats");
    let mut trace = trace.lock().expect("trace");
    let result_events = result
        .as_ref()
        .map_or_else(|| trace.recent(), |f| f.last_events.clone());
    RunOutcome {
        seed: scenario.seed,
        result: if result.is_none() { "pass" } else { "fail" },
        sim_ms: result
            .as_ref()
            .map_or(trace.last_ms(), |f| f.sim_ms.max(trace.last_ms())),
        failure: result,
        trace_hash: trace.hash(),
        events: trace.count(),
        restarts,
        conflicts,
        wall_ms: started.elapsed().as_millis() as u64,
        last_events: result_events,
        event_log: trace.take_all(),
    }
}

#[derive(Clone, Copy, Default)]
struct Stats {
    restarts: usize,
    conflicts: u64,
}

/// The nodes of a run and the state that outlives engine kills.
struct World {
    scenario: Scenario,
    trace: SharedTrace,
    storage: MemStorage,
    crash: ArmedCrash,
    engine: NodeHandle,
    postgres_id: madsim::task::NodeId,
    clients_node: NodeHandle,
    stack: Arc<Mutex<Option<Stack>>>,
    pg: crate::pg::PgModel,
    clients: Vec<ShapeClient>,
    endpoint: Endpoint,
    /// Partitions in force, per link.
    link_cuts: Arc<Mutex<std::collections::BTreeMap<Link, u32>>>,
    /// Shared with [`execute`], so the counts survive a panic.
    stats: Arc<Mutex<Stats>>,
}

static RUNS_IN_PROCESS: AtomicU64 = AtomicU64::new(0);

async fn supervise(
    scenario: Scenario,
    options: RunOptions,
    trace: SharedTrace,
    stats: Arc<Mutex<Stats>>,
) -> Result<(), Box<Failure>> {
    let mut world = World::new(scenario, trace, stats).await;
    if options.inject_nondeterminism {
        let run = RUNS_IN_PROCESS.fetch_add(1, Ordering::SeqCst);
        record(&world.trace, format!("process-dependent event {run}"));
    }
    world.run().await.map_err(Box::new)
}

fn panic_payload(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a task panicked".to_string())
}

impl World {
    async fn new(scenario: Scenario, trace: SharedTrace, stats: Arc<Mutex<Stats>>) -> World {
        let handle = Handle::current();
        let knobs = scenario.timing.clone();
        let pg = standard::seeded_postgres(&scenario.seed_rows);
        let (storage, sqlite) = (MemStorage::new(), sqlite_in_memory());
        let crash = ArmedCrash::new(trace.clone());
        let stack: Arc<Mutex<Option<Stack>>> = Arc::default();

        let (pg_node, pg_trace) = (pg.clone(), trace.clone());
        let postgres = handle
            .create_node()
            .name("postgres")
            .ip(net::PG_IP.parse().expect("ip"))
            .init(move || net::serve_postgres(pg_node.clone(), pg_trace.clone()))
            .build();

        let config = stack_config(&scenario);
        let (disk, db, points, slot, engine_trace) = (
            storage.clone(),
            sqlite.clone(),
            crash.clone(),
            stack.clone(),
            trace.clone(),
        );
        let engine = handle
            .create_node()
            .name("engine")
            .ip(net::ENGINE_IP.parse().expect("ip"))
            .init(move || {
                let (disk, db, points, slot, engine_trace) = (
                    disk.clone(),
                    db.clone(),
                    points.clone(),
                    slot.clone(),
                    engine_trace.clone(),
                );
                async move {
                    let remote = Arc::new(net::RemotePg::connect(engine_trace.clone()).await);
                    let env = Env {
                        clock: Arc::new(SimClock),
                        storage: Arc::new(SlowStorage::new(disk, knobs.disk_latency_us)),
                        spawner: Arc::new(SimSpawner),
                        crash_points: Arc::new(points),
                    };
                    {
                        // A kill never lands inside a transaction (the engine does
                        // not await in one), but be sure none is left open.
                        let conn = db.lock().expect("sqlite");
                        if !conn.is_autocommit() {
                            conn.execute_batch("ROLLBACK").expect("rollback");
                        }
                    }
                    let host = Host {
                        env,
                        sqlite: db,
                        source: remote.clone(),
                        postgres: remote,
                    };
                    let stack = Stack::start(host, config);
                    *slot.lock().expect("stack slot") = Some(stack.clone());
                    net::serve_engine(stack).await;
                }
            })
            .build();

        let clients_node = handle
            .create_node()
            .name("clients")
            .ip(net::CLIENT_IP.parse().expect("ip"))
            .build();
        let endpoint = clients_node
            .spawn(async {
                Endpoint::bind(format!("{}:0", net::CLIENT_IP))
                    .await
                    .expect("bind clients")
            })
            .await
            .expect("bind task");
        crash.set_node(engine.id());
        let clients = fresh_clients(&scenario);
        World {
            scenario,
            trace,
            storage,
            crash,
            engine,
            postgres_id: postgres.id(),
            clients_node,
            stack,
            pg,
            clients,
            endpoint,
            link_cuts: Arc::default(),
            stats,
        }
    }

    fn record(&self, event: String) {
        record(&self.trace, event);
    }

    async fn run(&mut self) -> Result<(), Failure> {
        self.record(format!(
            "start: {} shapes, {} batches",
            self.scenario.shapes.len(),
            self.scenario.batches.len()
        ));
        self.check("initial", false).await?;
        for number in 1..=self.scenario.batches.len() {
            let restart = self.scenario.restarts.get(&number).cloned();
            if let Some(partition) = self.scenario.partitions.get(&number).cloned() {
                self.partition(partition);
            }
            let kill = restart.as_ref().filter(|r| r.kind != RestartKind::Graceful);
            if let Some((name, nth)) = kill.and_then(|r| r.crash_point.clone()) {
                let point: CrashPoint = name
                    .parse()
                    .unwrap_or_else(|e| panic!("scenario names a crash point: {e}"));
                self.crash.arm(point, nth);
                self.record(format!("armed crash point {point} (visit {nth})"));
            }
            self.commit_batch(number).await;
            let killed = match kill.cloned() {
                Some(r) => {
                    self.kill(&r).await;
                    true
                }
                None => false,
            };
            self.check(&format!("batch {number}"), killed).await?;
            if restart.is_some_and(|r| r.kind == RestartKind::Graceful) {
                self.graceful_restart().await?;
                self.check(
                    &format!("graceful restart after batch {number}"),
                    !self.scenario.timing.strict_409,
                )
                .await?;
            }
            if self.scenario.client_restarts.contains(&number) {
                self.clients = fresh_clients(&self.scenario);
                self.record("clients restarted".to_string());
                self.check(&format!("client restart after batch {number}"), false)
                    .await?;
            }
        }
        self.record("all checks passed".to_string());
        Ok(())
    }

    async fn commit_batch(&mut self, number: usize) {
        let batch = self.scenario.batches[number - 1].clone();
        for ops in batch {
            let mutations: Vec<_> = ops
                .iter()
                .filter_map(|op| standard::mutation(&self.pg, op))
                .collect();
            match self.pg.commit(&mutations) {
                Some(txn) => self.record(format!(
                    "commit lsn {} xid {} ({} changes)",
                    txn.commit_lsn,
                    txn.xid,
                    txn.changes.len()
                )),
                None => self.record("commit of a transaction that changed nothing".to_string()),
            }
            // Space transactions out a little so replication interleaves with them.
            let gap_ms = madsim::rand::thread_rng().gen_range(0..3u64);
            madsim::time::sleep(Duration::from_millis(gap_ms)).await;
        }
    }

    /// A brutal kill (and, for `power`, a power loss), at the armed crash point
    /// or after the drawn delay, then a restart.
    async fn kill(&mut self, restart: &Restart) {
        if restart.crash_point.is_some() {
            let window = restart.kill_delay_ms + self.scenario.timing.kill_window_ms + 1_000;
            if !self.crash.wait_fired(window).await {
                self.record("the armed crash point was not reached: kill anyway".to_string());
            }
        } else {
            madsim::time::sleep(Duration::from_millis(restart.kill_delay_ms)).await;
        }
        let handle = Handle::current();
        handle.kill(self.engine.id());
        *self.stack.lock().expect("stack slot") = None;
        self.crash.disarm();
        if restart.kind == RestartKind::Power {
            self.storage.power_loss(PowerLoss::Torn {
                seed: restart.power_seed,
            });
        }
        self.record(format!("{:?} kill of the engine", restart.kind));
        self.stats.lock().expect("stats").restarts += 1;
        handle.restart(self.engine.id());
        self.engine = handle.get_node(self.engine.id()).expect("engine node");
    }

    /// Shuts the engine down through its coordinator and restarts it. An
    /// engine that was ready must stop cleanly (everything flushed, marker
    /// written) within its shutdown timeout.
    async fn graceful_restart(&mut self) -> Result<(), Failure> {
        let stack = self
            .stack
            .lock()
            .expect("stack slot")
            .clone()
            .expect("engine running");
        let (was_ready, clean) = self
            .engine
            .spawn(async move {
                let ready = stack.status() == engine::stack::Status::Ready;
                (ready, stack.shutdown().await)
            })
            .await
            .expect("shutdown task");
        self.record(format!(
            "graceful shutdown, ready before: {was_ready}, clean: {clean}"
        ));
        if was_ready && !clean {
            return Err(Failure::new(
                "graceful-shutdown",
                "a ready engine did not shut down cleanly within its shutdown timeout".to_string(),
                None,
                &self.trace,
            ));
        }
        let handle = Handle::current();
        handle.kill(self.engine.id());
        *self.stack.lock().expect("stack slot") = None;
        handle.restart(self.engine.id());
        self.engine = handle.get_node(self.engine.id()).expect("engine node");
        self.stats.lock().expect("stats").restarts += 1;
        Ok(())
    }

    /// Cuts a link for a while. Partitions of one link may overlap: the link
    /// heals when the last of them ends.
    fn partition(&self, partition: crate::scenario::Partition) {
        let (a, b) = match partition.link {
            Link::EnginePostgres => (self.engine.id(), self.postgres_id),
            Link::ClientsEngine => (self.clients_node.id(), self.engine.id()),
        };
        let (trace, cuts) = (self.trace.clone(), self.link_cuts.clone());
        drop(madsim::task::spawn(async move {
            madsim::time::sleep(Duration::from_millis(partition.start_ms)).await;
            let net = madsim::net::NetSim::current();
            let cut = {
                let mut cuts = cuts.lock().expect("link cuts");
                let count = cuts.entry(partition.link).or_insert(0);
                *count += 1;
                *count
            };
            if cut == 1 {
                net.clog_link(a, b);
                net.clog_link(b, a);
            }
            record(
                &trace,
                format!(
                    "partition {:?} for {} ms ({cut} active)",
                    partition.link, partition.duration_ms
                ),
            );
            madsim::time::sleep(Duration::from_millis(partition.duration_ms)).await;
            let left = {
                let mut cuts = cuts.lock().expect("link cuts");
                let count = cuts.get_mut(&partition.link).expect("counted when cut");
                assert!(*count > 0, "a link healed more often than it was cut");
                *count -= 1;
                *count
            };
            if left == 0 {
                net.unclog_link(a, b);
                net.unclog_link(b, a);
                record(&trace, format!("partition {:?} healed", partition.link));
            }
        }));
    }

    /// Every client, in parallel, must reach up-to-date with the oracle's rows.
    async fn check(&mut self, label: &str, allow_409: bool) -> Result<(), Failure> {
        let knobs = &self.scenario.timing;
        let rules = Arc::new(CheckRules {
            stop: Default::default(),
            timeout_ms: knobs.check_timeout_ms,
            request_timeout_ms: knobs.long_poll_timeout_ms + 2 * knobs.latency_max_ms + 300,
            allow_409: allow_409 || !knobs.strict_409,
        });
        let mut tasks = Vec::new();
        for (index, mut client) in std::mem::take(&mut self.clients).into_iter().enumerate() {
            let oracle = checks::oracle_rows(&self.pg, client.where_clause.as_deref());
            let (ep, rules, trace, pg) = (
                self.endpoint.clone(),
                rules.clone(),
                self.trace.clone(),
                self.pg.clone(),
            );
            tasks.push(self.clients_node.spawn(async move {
                let result =
                    checks::converge(index, &mut client, &oracle, &pg, &ep, &rules, &trace).await;
                (client, result)
            }));
        }
        let mut first_failure = None;
        for task in tasks {
            let (client, result) = task.await.expect("check task");
            self.clients.push(client);
            match result {
                Ok(conflicts) => self.stats.lock().expect("stats").conflicts += conflicts,
                Err(failure) => {
                    first_failure.get_or_insert(failure);
                }
            }
        }
        match first_failure {
            None => {
                self.record(format!("check {label}: every client matches the oracle"));
                Ok(())
            }
            Some(failure) => {
                self.record(format!("check {label} failed: {}", failure.message));
                Err(failure)
            }
        }
    }
}

fn fresh_clients(scenario: &Scenario) -> Vec<ShapeClient> {
    scenario
        .shapes
        .iter()
        .map(|s| ShapeClient::new("level_4", s.where_clause.as_deref(), s.replica_full))
        .collect()
}
