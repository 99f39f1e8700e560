//! The world of one run: its nodes, the state that outlives engine kills, and
//! the supervisor's steps (batches, kills, graceful restarts, partitions,
//! checks).

use super::checker::{self, CheckedEvents, Checker, SharedChecker};
use super::checks::{self, CheckRules, Failure, StopSignal};
use super::faults::{ArmedCrash, DiskOwner, FaultPlan, SimStorage};
use super::net::{self, ClientNet};
use super::panics::on_engine;
use super::timeline::{Kind, Track, begin, end, instant};
use super::trace::{SharedTrace, record};
use crate::client::ShapeClient;
use crate::host::{SimClock, SimSpawner, sqlite_in_memory};
use crate::scenario::{Link, Op, RestartKind, Scenario};
use crate::standard;
use engine::env::{CrashPoint, Env, MemStorage};
use engine::replication::Xid;
use engine::stack::{Host, Stack};
use madsim::net::Endpoint;
use madsim::runtime::{Handle, NodeHandle};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The nodes of a run and the state that outlives engine kills.
pub(super) struct World {
    pub(super) scenario: Scenario,
    pub(super) trace: SharedTrace,
    pub(super) checker: SharedChecker,
    pub(super) storage: MemStorage,
    /// Which live instance uses the disk (freed when its process exits).
    pub(super) disk_owner: DiskOwner,
    pub(super) crash: ArmedCrash,
    /// The serving engine instance: its node, stack and address.
    pub(super) engine: Instance,
    /// The other instance: the new one of a rolling restart (not running
    /// otherwise).
    pub(super) standby: Instance,
    pub(super) postgres_id: madsim::task::NodeId,
    pub(super) clients_node: NodeHandle,
    pub(super) pg: crate::pg::PgModel,
    pub(super) clients: Vec<ShapeClient>,
    pub(super) net: ClientNet,
    /// Partitions in force, per link.
    pub(super) link_cuts: Arc<Mutex<BTreeMap<Link, u32>>>,
}

/// One engine instance: its node, the stack it runs, the address it serves.
pub(super) struct Instance {
    pub(super) node: NodeHandle,
    pub(super) stack: Arc<Mutex<Option<Stack>>>,
    pub(super) ip: &'static str,
    disk: Disk,
}

impl Instance {
    pub(super) fn id(&self) -> madsim::task::NodeId {
        self.node.id()
    }

    /// Whether the two instances share one disk: its storage and the
    /// metadata database on it, together (the harness's own invariant).
    pub(super) fn shares_disk_with(&self, other: &Instance) -> bool {
        self.disk.storage.same_disk(&other.disk.storage)
            && Arc::ptr_eq(&self.disk.sqlite, &other.disk.sqlite)
    }
}

/// What outlives an engine process: the disk (shape storage) and, on it,
/// the metadata database. One per deployment, handed from instance to
/// instance together (Electric's rig once gave each instance its own
/// storage but a shared metadata store: no deployment looks like that; a
/// rolling restart asserts they travel together).
#[derive(Clone)]
struct Disk {
    storage: MemStorage,
    sqlite: engine::metadata::SqliteConn,
    owner: DiskOwner,
    faults: FaultPlan,
}

/// Clients polling in the background.
struct Polling {
    stop: Arc<StopSignal>,
    tasks: Vec<madsim::task::JoinHandle<(ShapeClient, Result<(), Failure>)>>,
}

/// The latency bound: the replication of a burst of commits (a few round
/// trips each) plus the flush period. `None` on a lossy network, where a
/// lost packet costs a retransmission timeout and latency is not judged.
fn latency_bound_ms(scenario: &Scenario) -> Option<u64> {
    let t = &scenario.timing;
    (t.packet_loss_rate == 0.0).then_some(t.flush_period_ms + 20 * t.latency_max_ms + 50)
}

impl World {
    pub async fn new(scenario: Scenario, trace: SharedTrace) -> World {
        let handle = Handle::current();
        let pg = standard::seeded_postgres(&scenario.seed_rows);
        let checker = Arc::new(Mutex::new(Checker::new(
            trace.clone(),
            pg.clone(),
            scenario.shapes.clone(),
            latency_bound_ms(&scenario),
            scenario.timing.subquery_restore == crate::scenario::SubqueryRestore::Drop,
        )));
        let storage = MemStorage::new();
        let crash = ArmedCrash::new(trace.clone());
        let disk_owner = DiskOwner::default();
        let disk = Disk {
            storage: storage.clone(),
            sqlite: sqlite_in_memory(),
            owner: disk_owner.clone(),
            faults: FaultPlan::new(scenario.sched_seed, scenario.timing.io_error_rate),
        };

        let verdict = checker::lock(&checker).verdict.clone();
        let (pg_node, pg_trace) = (pg.clone(), trace.clone());
        let postgres = handle
            .create_node()
            .name("postgres")
            .ip(net::PG_IP.parse().expect("ip"))
            .init(move || net::serve_postgres(pg_node.clone(), pg_trace.clone(), verdict.clone()))
            .build();
        let engine = Self::engine_node(&scenario, &disk, &crash, &checker, &trace, net::ENGINE_IP);
        let standby =
            Self::engine_node(&scenario, &disk, &crash, &checker, &trace, net::ENGINE_B_IP);
        handle.kill(standby.id()); // started only for a rolling restart
        let clients_node = handle
            .create_node()
            .name("clients")
            .ip(net::CLIENT_IP.parse().expect("ip"))
            .build();
        let ep = clients_node
            .spawn(async {
                Endpoint::bind(format!("{}:0", net::CLIENT_IP))
                    .await
                    .expect("bind clients")
            })
            .await
            .expect("bind task");
        let route = Arc::new(Mutex::new(net::engine_addr(engine.ip)));
        crash.set_node(engine.id());
        let clients = fresh_clients(&scenario);
        World {
            scenario,
            trace,
            checker,
            storage,
            disk_owner,
            crash,
            engine,
            standby,
            postgres_id: postgres.id(),
            clients_node,
            pg,
            clients,
            net: ClientNet { ep, route },
            link_cuts: Arc::default(),
        }
    }

    /// Every node of the run. Killing them at its end drops the tasks
    /// still pending on them: a task waiting forever is otherwise kept
    /// alive by the wakers it owns, and a sweep would keep every seed's
    /// engine in memory.
    pub(super) fn node_ids(&self) -> [madsim::task::NodeId; 4] {
        [
            self.engine.id(),
            self.standby.id(),
            self.postgres_id,
            self.clients_node.id(),
        ]
    }

    /// An engine instance at `ip`: every (re)start of its node boots a
    /// stack on the disk.
    fn engine_node(
        scenario: &Scenario,
        disk: &Disk,
        crash: &ArmedCrash,
        checker: &SharedChecker,
        trace: &SharedTrace,
        ip: &'static str,
    ) -> Instance {
        let config = super::stack_config(scenario);
        let disk_latency_us = scenario.timing.disk_latency_us;
        let slot: Arc<Mutex<Option<Stack>>> = Arc::default();
        let shared = disk.clone();
        let (disk, crash, stack_slot, checker, trace) = (
            disk.clone(),
            crash.clone(),
            slot.clone(),
            checker.clone(),
            trace.clone(),
        );
        let node = Handle::current()
            .create_node()
            .name(format!("engine {ip}"))
            .ip(ip.parse().expect("ip"))
            .init(move || {
                let env = Env {
                    clock: Arc::new(SimClock::default()),
                    storage: Arc::new(SimStorage::new(
                        (disk.storage.clone(), disk.owner.clone()),
                        ip,
                        disk_latency_us,
                        disk.faults.clone(),
                        checker.clone(),
                        trace.clone(),
                    )),
                    spawner: Arc::new(SimSpawner),
                    crash_points: Arc::new(crash.clone()),
                    events: Arc::new(CheckedEvents {
                        checker: checker.clone(),
                        trace: trace.clone(),
                    }),
                };
                let (sqlite, slot, trace) =
                    (disk.sqlite.clone(), stack_slot.clone(), trace.clone());
                on_engine(async move {
                    let remote = Arc::new(net::RemotePg::connect(ip, trace).await);
                    {
                        // A kill never lands inside a transaction (the engine does
                        // not await in one), but be sure none is left open.
                        let conn = sqlite.lock().expect("sqlite");
                        if !conn.is_autocommit() {
                            conn.execute_batch("ROLLBACK").expect("rollback");
                        }
                    }
                    let host = Host {
                        env,
                        sqlite,
                        source: remote.clone(),
                        postgres: remote,
                    };
                    let stack = Stack::start(host, config);
                    *slot.lock().expect("stack slot") = Some(stack.clone());
                    net::serve_engine(stack, ip).await;
                })
            })
            .build();
        Instance {
            node,
            stack: slot,
            ip,
            disk: shared,
        }
    }

    pub(super) fn record(&self, event: String) {
        record(&self.trace, event);
    }

    pub async fn run(&mut self) -> Result<(), Failure> {
        self.record(format!(
            "start: {} shapes, {} batches",
            self.scenario.shapes.len(),
            self.scenario.batches.len()
        ));
        self.timed_check("initial").await?;
        for number in 1..=self.scenario.batches.len() {
            let restart = self.scenario.restarts.get(&number).cloned();
            if let Some(partition) = self.scenario.partitions.get(&number).cloned() {
                let name = format!("partition {partition:?}");
                instant(
                    &self.trace,
                    Track::Network,
                    Kind::Partition,
                    name,
                    Vec::new(),
                );
                self.partition(partition);
            }
            let kill = restart
                .as_ref()
                .filter(|r| matches!(r.kind, RestartKind::Crash | RestartKind::Power));
            if let Some((name, nth)) = kill.and_then(|r| r.crash_point.clone()) {
                let point: CrashPoint = name
                    .parse()
                    .unwrap_or_else(|e| panic!("scenario names a crash point: {e}"));
                self.crash.arm(point, nth);
                checker::lock(&self.checker).coverage.point(point).armed += 1;
                self.record(format!("armed crash point {point} (visit {nth})"));
            }
            // Clients poll throughout the batch and its restart, as a
            // deployment restarts under live traffic.
            let polling = self.start_polling();
            if let Some(removal) = self.scenario.removals.get(&number).cloned() {
                self.remove_shape(removal);
            }
            begin(&self.trace, Track::Postgres, Kind::Batch, || {
                format!("batch {number}")
            });
            self.commit_batch(number).await;
            end(&self.trace, Track::Postgres, Kind::Batch);
            let restarted = match restart {
                Some(r) => {
                    let name = || format!("restart {}", r.kind.name());
                    begin(&self.trace, Track::Restarts, Kind::Restart, name);
                    let restarted = self.restart(&r).await;
                    end(&self.trace, Track::Restarts, Kind::Restart);
                    restarted
                }
                None => Ok(()),
            };
            self.stop_polling(polling).await?;
            restarted?;
            self.timed_check(&format!("batch {number}")).await?;
            if self.scenario.client_restarts.contains(&number) {
                // Fresh clients catch up while the next batch commits.
                self.clients = fresh_clients(&self.scenario);
                self.record("clients restarted".to_string());
            }
        }
        self.record("all checks passed".to_string());
        Ok(())
    }

    fn request_timeout_ms(&self) -> u64 {
        let t = &self.scenario.timing;
        t.long_poll_timeout_ms + 2 * t.latency_max_ms + 300
    }

    /// Every client polls in the background until [`World::stop_polling`].
    fn start_polling(&mut self) -> Polling {
        let stop = Arc::new(StopSignal::default());
        let timeout_ms = self.request_timeout_ms();
        let tasks = std::mem::take(&mut self.clients)
            .into_iter()
            .enumerate()
            .map(|(index, mut client)| {
                let (net, checker, stop) = (self.net.clone(), self.checker.clone(), stop.clone());
                self.clients_node.spawn(async move {
                    let result =
                        checks::poll(index, &mut client, &checker, &net, timeout_ms, &stop).await;
                    (client, result)
                })
            })
            .collect();
        Polling { stop, tasks }
    }

    async fn stop_polling(&mut self, polling: Polling) -> Result<(), Failure> {
        polling.stop.stop();
        let mut first_failure = None;
        for task in polling.tasks {
            let (client, result) = task.await.expect("polling task");
            self.clients.push(client);
            if let Err(failure) = result {
                first_failure.get_or_insert(failure);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// An operator removes the shape's current handle (`DELETE /v1/shape`)
    /// `at_ms` into the batch.
    fn remove_shape(&self, removal: crate::scenario::Removal) {
        let (net, checker, trace) = (self.net.clone(), self.checker.clone(), self.trace.clone());
        let timeout_ms = self.request_timeout_ms();
        drop(self.clients_node.spawn(async move {
            madsim::time::sleep(Duration::from_millis(removal.at_ms)).await;
            let Some(handle) = checker::lock(&checker).latest_handle(removal.shape) else {
                return record(
                    &trace,
                    format_args!("removal of shape {}: no handle yet", removal.shape),
                );
            };
            checker::lock(&checker).removal_requested(&handle);
            let request = engine::api::Request::new([("handle", handle.as_str())]);
            let status = net.delete(request, timeout_ms).await.map(|r| r.status);
            record(
                &trace,
                format_args!("removal of shape {} ({handle}): {status:?}", removal.shape),
            );
        }));
    }

    /// Commits the batch's transactions in order. A transaction marked
    /// `BeganEarlier { ahead }` takes its xid before the transaction `ahead`
    /// places earlier commits (so it is in progress meanwhile); one marked
    /// `Rollback` aborts at its place.
    async fn commit_batch(&mut self, number: usize) {
        let batch = self.scenario.batches[number - 1].clone();
        let begins_at: Vec<usize> = batch
            .iter()
            .enumerate()
            .map(|(place, ops)| match ops.first() {
                Some(Op::BeganEarlier { ahead }) => place.saturating_sub(usize::from(*ahead)),
                _ => place,
            })
            .collect();
        let mut xids: Vec<Option<Xid>> = vec![None; batch.len()];
        let alter = self.scenario.schema_changes.get(&number).cloned();
        for (place, ops) in batch.iter().enumerate() {
            if let Some(change) = alter.as_ref().filter(|c| c.after_txn == place) {
                self.add_column(change);
            }
            for (txn, xid) in xids.iter_mut().enumerate() {
                if begins_at[txn] == place && xid.is_none() {
                    *xid = Some(self.pg.begin());
                }
            }
            let xid = xids[place].expect("begun at or before its place");
            self.end_transaction(xid, ops);
            // Space transactions out so replication and snapshots interleave
            // with them; the pause is a function of the seed and the
            // transaction's place, so a shrink that empties other
            // transactions keeps this one's timing.
            let gap_ms = self.txn_gap_ms(number, place);
            madsim::time::sleep(Duration::from_millis(gap_ms)).await;
        }
        if let Some(change) = alter.filter(|c| c.after_txn >= batch.len()) {
            self.add_column(&change);
        }
    }

    /// `ALTER TABLE ... ADD COLUMN` in the Postgres model; the checker
    /// follows the new definition from the relation message's LSN.
    fn add_column(&mut self, change: &crate::scenario::AddColumn) {
        let table = engine::schema::TableName::public(&change.table);
        let lsn = self.pg.add_column(&table, &change.column);
        self.record(format!(
            "alter table {table} add column {} at lsn {lsn}",
            change.column
        ));
        checker::lock(&self.checker).altered(&table, lsn);
    }

    /// The pause after the `place`-th commit of batch `number`.
    fn txn_gap_ms(&self, number: usize, place: usize) -> u64 {
        use rand::{RngExt as _, SeedableRng as _};
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::hash::DefaultHasher::new();
        (self.scenario.sched_seed, number, place).hash(&mut hasher);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(hasher.finish());
        rng.random_range(0..=self.scenario.timing.txn_gap_max_ms)
    }

    /// COMMIT (or ROLLBACK) of transaction `xid` with these statements.
    fn end_transaction(&mut self, xid: Xid, ops: &[Op]) {
        if ops.contains(&Op::Rollback) {
            self.pg.abort(xid);
            return self.record(format!("rollback of xid {xid}"));
        }
        let mutations: Vec<_> = ops
            .iter()
            .filter_map(|op| standard::mutation(&self.pg, op))
            .collect();
        match self.pg.commit_as(xid, &mutations) {
            Some(txn) => {
                self.record(format!(
                    "commit lsn {} xid {} ({} changes)",
                    txn.commit_lsn,
                    txn.xid,
                    txn.changes.len()
                ));
                checker::lock(&self.checker).committed(&txn);
            }
            None => self.record(format!("commit of xid {xid}, which changed nothing")),
        }
    }

    /// Cuts a link for a while. Partitions of one link may overlap: the link
    /// heals when the last of them ends.
    fn partition(&self, partition: crate::scenario::Partition) {
        // Both engine instances sit on the cut side: a partition in force
        // across a rolling restart cuts the new instance off too.
        let engines = [self.engine.id(), self.standby.id()];
        let other = match partition.link {
            Link::EnginePostgres => self.postgres_id,
            Link::ClientsEngine => self.clients_node.id(),
        };
        let links = engines.map(|engine| (engine, other));
        let now_ms = crate::host::now_ms();
        let start_ms = now_ms + partition.start_ms;
        let postgres = partition.link == Link::EnginePostgres;
        checker::lock(&self.checker).partitioned(
            start_ms,
            start_ms + partition.duration_ms,
            postgres,
        );
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
                for (a, b) in links {
                    net.clog_link(a, b);
                    net.clog_link(b, a);
                }
            }
            record(
                &trace,
                format_args!(
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
                for (a, b) in links {
                    net.unclog_link(a, b);
                    net.unclog_link(b, a);
                }
                record(
                    &trace,
                    format_args!("partition {:?} healed", partition.link),
                );
            }
        }));
    }

    /// Every client, in parallel, must reach up-to-date with the oracle's
    /// rows; then the slot must catch up with the last commit.
    /// A check, drawn as a span on the checks track.
    async fn timed_check(&mut self, label: &str) -> Result<(), Failure> {
        begin(&self.trace, Track::Checks, Kind::Check, || {
            format!("check {label}")
        });
        let checked = self.check(label).await;
        end(&self.trace, Track::Checks, Kind::Check);
        checked
    }

    async fn check(&mut self, label: &str) -> Result<(), Failure> {
        let knobs = &self.scenario.timing;
        let rules = Arc::new(CheckRules {
            stop: Default::default(),
            timeout_ms: knobs.check_timeout_ms,
            request_timeout_ms: self.request_timeout_ms(),
        });
        let mut tasks = Vec::new();
        for (index, mut client) in std::mem::take(&mut self.clients).into_iter().enumerate() {
            let (net, rules, checker, pg) = (
                self.net.clone(),
                rules.clone(),
                self.checker.clone(),
                self.pg.clone(),
            );
            tasks.push(self.clients_node.spawn(async move {
                let result =
                    checks::converge(index, &mut client, &checker, &pg, &net, &rules).await;
                (client, result)
            }));
        }
        let mut first_failure = None;
        for task in tasks {
            let (client, result) = task.await.expect("check task");
            self.clients.push(client);
            if let Err(failure) = result {
                first_failure.get_or_insert(failure);
            }
        }
        if first_failure.is_none()
            && let Err(failure) =
                checks::ack_liveness(&self.checker, &self.pg, knobs.check_timeout_ms).await
        {
            first_failure = Some(failure);
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
        .map(|s| {
            let mut client = ShapeClient::new(&s.table, s.where_clause.as_deref(), s.replica_full);
            client.columns = s.columns.as_ref().map(|c| c.join(","));
            client
        })
        .collect()
}
