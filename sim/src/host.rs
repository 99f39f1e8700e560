//! Running the engine under madsim. The engine's clock and spawner come from
//! the simulator; everything durable (storage, the SQLite connection, the
//! Postgres model) is created by the supervisor, outside the engine's node, so
//! that it survives the node's kills exactly as a disk and a database server
//! survive a process kill.

use engine::env::{Clock, CrashPoints, Env, EventSink, MemStorage, Spawner};
use engine::metadata::SqliteConn;
use engine::stack::Host;
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::pg::PgModel;

/// Simulated milliseconds since the runtime started.
pub fn now_ms() -> u64 {
    madsim::time::TimeHandle::current().elapsed().as_millis() as u64
}

/// Simulated time since the runtime started. An engine instance lives in
/// one runtime: the clock keeps that runtime's time handle once first asked,
/// instead of asking the runtime context on every reading and sleep.
#[derive(Default)]
pub struct SimClock {
    time: OnceLock<madsim::time::TimeHandle>,
}

impl SimClock {
    fn time(&self) -> &madsim::time::TimeHandle {
        self.time.get_or_init(madsim::time::TimeHandle::current)
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.time().elapsed().as_millis() as u64
    }

    fn sleep_ms(&self, duration_ms: u64) -> BoxFuture<'static, ()> {
        Box::pin(self.time().sleep(Duration::from_millis(duration_ms)))
    }
}

/// Spawns on the node of the calling task: a kill of that node drops them all.
/// Only the engine spawns through it, so its tasks are marked as the engine
/// node's (for classifying panics).
pub struct SimSpawner;

impl Spawner for SimSpawner {
    fn spawn(&self, _name: &'static str, task: BoxFuture<'static, ()>) {
        // A dropped JoinHandle detaches.
        drop(madsim::task::spawn(crate::harness::panics::on_engine(task)));
    }
}

/// An SQLite database in memory: it lives as long as the supervisor holds it,
/// which models `synchronous=FULL` (every committed transaction is durable).
pub fn sqlite_in_memory() -> SqliteConn {
    Arc::new(Mutex::new(
        rusqlite::Connection::open_in_memory().expect("in-memory SQLite"),
    ))
}

/// The state that survives kills: the disk, the metadata database, Postgres.
#[derive(Clone)]
pub struct Durable {
    pub storage: MemStorage,
    pub sqlite: SqliteConn,
    pub pg: PgModel,
}

impl Durable {
    /// The engine's host, for a (re)start of the node.
    pub fn host(&self, crash_points: Arc<dyn CrashPoints>, events: Arc<dyn EventSink>) -> Host {
        let env = Env {
            clock: Arc::new(SimClock::default()),
            storage: Arc::new(self.storage.clone()),
            spawner: Arc::new(SimSpawner),
            crash_points,
            events,
        };
        // A kill may have dropped the engine between statements; never inside
        // a transaction (the engine does not await in one), but be sure.
        let conn = self.sqlite.lock().expect("sqlite");
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK")
                .expect("roll back a transaction left open");
        }
        drop(conn);
        Host {
            env,
            sqlite: self.sqlite.clone(),
            source: Arc::new(self.pg.clone()),
            postgres: Arc::new(self.pg.clone()),
        }
    }
}
