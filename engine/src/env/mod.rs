//! The engine's environment: every effect the engine has goes through these
//! traits. The engine owns no clock, file system, network, thread or random
//! number generator; the host (the simulator, a test, or a real deployment)
//! supplies them.
//!
//! - [`Clock`]: simulated or real time, in milliseconds;
//! - [`Spawner`]: starts engine tasks on the host's executor;
//! - [`Storage`]: files and directories with an explicit durability contract;
//! - [`CrashPoints`]: named places where a kill is most interesting; the host
//!   may never return from one, which is how a simulator kills "mid-flush";
//! - [`EventSink`]: where the engine reports what it does ([`events`]).
//!
//! The network boundaries (replication source, snapshot queries, client API)
//! are added next to these by the stack.

mod crash_points;
pub mod events;
mod manual_clock;
mod mem_storage;
mod path;
mod storage;

pub mod conformance;

pub use crash_points::{ArmedCrashPoints, CrashPoint, CrashPoints, NoCrashPoints};
pub use events::{Event, EventSink, NoEvents, RecordedEvents};
pub use manual_clock::ManualClock;
pub use mem_storage::{MemStorage, PowerLoss, PowerLossReport};
pub use path::{check_path, join, parent};
pub use storage::Storage;

use futures::future::BoxFuture;
use std::sync::Arc;

/// Time as the engine sees it. Milliseconds since an arbitrary epoch chosen by
/// the host; monotonic.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
    /// Completes once `now_ms()` has advanced by at least `duration_ms`.
    fn sleep_ms(&self, duration_ms: u64) -> BoxFuture<'static, ()>;
}

/// Starts a task on the host's executor. A host kill drops every spawned task
/// at whatever await point it is suspended: nothing may rely on a task
/// finishing for durability.
pub trait Spawner: Send + Sync + 'static {
    fn spawn(&self, name: &'static str, task: BoxFuture<'static, ()>);
}

/// Everything the engine may touch, bundled. Cheap to clone.
#[derive(Clone)]
pub struct Env {
    pub clock: Arc<dyn Clock>,
    pub storage: Arc<dyn Storage>,
    pub spawner: Arc<dyn Spawner>,
    pub crash_points: Arc<dyn CrashPoints>,
    pub events: Arc<dyn EventSink>,
}

impl Env {
    /// Awaits the host at a named crash point (see [`CrashPoints`]); the
    /// visit is reported first.
    pub async fn crash_point(&self, point: CrashPoint) {
        self.emit(Event::CrashPointVisited { point });
        self.crash_points.reached(point).await;
    }

    /// Reports an event to the host's sink.
    pub fn emit(&self, event: Event) {
        self.events.emit(event);
    }
}
