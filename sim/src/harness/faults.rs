//! Faults the harness injects into the engine's environment.
//!
//! - [`ArmedCrash`]: the engine's crash points. The scenario arms one (a name
//!   and which visit); when the engine reaches it, the task parks there, the
//!   whole engine node is paused on the spot (no other engine task runs
//!   another step) and the supervisor, woken, kills the node: a kill exactly
//!   at that point.
//! - [`SimStorage`]: the simulated disk with latency on every write and sync,
//!   so that a kill drawn at a random time can land between any two of them
//!   (between a flush's write and its fsync, say), and injected I/O errors:
//!   each write, sync, rename and read of a shape's files fails with
//!   probability `io_error_rate` (EIO; ENOSPC for a third of the writes). A
//!   failed sync has Linux's page-cache semantics
//!   ([`MemStorage::fail_sync`]). Every injection is traced and reported to
//!   the state checker (it accepts a removal for an I/O error only for the
//!   shape whose files got one). The storage root (the clean-shutdown marker,
//!   the `shapes` directory itself) is never faulted: a real engine would
//!   crash and restart on such errors, which the restart kinds model.

use super::checker::{self, SharedChecker};
use super::trace::{SharedTrace, record};
use async_trait::async_trait;
use engine::env::{CrashPoint, CrashPoints, MemStorage, Storage};
use event_listener::Event;
use futures::future::{self, BoxFuture, FutureExt};
use madsim::rand::Rng as _;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct ArmState {
    armed: Option<(CrashPoint, u32)>,
    fired: Option<CrashPoint>,
    /// The node to freeze when the point fires (the engine's; its id
    /// survives restarts).
    node: Option<madsim::task::NodeId>,
}

#[derive(Clone)]
pub struct ArmedCrash {
    state: Arc<Mutex<ArmState>>,
    fired: Arc<Event>,
    trace: SharedTrace,
}

impl ArmedCrash {
    pub fn new(trace: SharedTrace) -> ArmedCrash {
        ArmedCrash {
            state: Arc::default(),
            fired: Arc::new(Event::new()),
            trace,
        }
    }

    pub fn set_node(&self, node: madsim::task::NodeId) {
        self.state.lock().expect("crash state").node = Some(node);
    }

    pub fn arm(&self, point: CrashPoint, nth: u32) {
        let mut state = self.state.lock().expect("crash state");
        (state.armed, state.fired) = (Some((point, nth)), None);
    }

    pub fn disarm(&self) {
        let mut state = self.state.lock().expect("crash state");
        (state.armed, state.fired) = (None, None);
    }

    pub fn fired(&self) -> Option<CrashPoint> {
        self.state.lock().expect("crash state").fired
    }

    /// Waits until the armed point fires, or `timeout_ms` passes.
    pub async fn wait_fired(&self, timeout_ms: u64) -> bool {
        let listener = self.fired.listen();
        if self.fired().is_some() {
            return true;
        }
        let sleep = madsim::time::sleep(Duration::from_millis(timeout_ms));
        let listener = std::pin::pin!(listener);
        future::select(listener, std::pin::pin!(sleep)).await;
        self.fired().is_some()
    }
}

impl CrashPoints for ArmedCrash {
    fn reached(&self, point: CrashPoint) -> BoxFuture<'static, ()> {
        let mut state = self.state.lock().expect("crash state");
        match &mut state.armed {
            Some((armed, 0)) if *armed == point => {
                state.armed = None;
                state.fired = Some(point);
                let node = state.node.expect("the crash points know the engine's node");
                drop(state);
                madsim::runtime::Handle::current().pause(node);
                record(
                    &self.trace,
                    format_args!("crash point {point} reached: the engine parks for its kill"),
                );
                self.fired.notify(usize::MAX);
                future::pending().boxed()
            }
            Some((armed, nth)) if *armed == point => {
                *nth -= 1;
                future::ready(()).boxed()
            }
            _ => future::ready(()).boxed(),
        }
    }
}

/// A storage operation that may be faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    Write,
    Sync,
    Rename,
    Read,
}

/// [`MemStorage`] with simulated latency on writes and syncs (reads are
/// served from the page cache) and injected I/O errors.
pub struct SimStorage {
    inner: MemStorage,
    max_latency_us: u64,
    io_error_rate: f64,
    checker: SharedChecker,
    trace: SharedTrace,
}

/// The shape whose files `path` is under (`shapes/<handle>/...`), if any.
fn shape_of(path: &str) -> Option<&str> {
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(engine::stack::SHAPES_DIR), Some(handle), Some(_)) => Some(handle),
        _ => None,
    }
}

impl SimStorage {
    pub fn new(
        inner: MemStorage,
        max_latency_us: u64,
        io_error_rate: f64,
        checker: SharedChecker,
        trace: SharedTrace,
    ) -> SimStorage {
        SimStorage {
            inner,
            max_latency_us,
            io_error_rate,
            checker,
            trace,
        }
    }

    async fn delay(&self) {
        if self.max_latency_us > 0 {
            let us = madsim::rand::thread_rng().gen_range(0..=self.max_latency_us);
            madsim::time::sleep(Duration::from_micros(us)).await;
        }
    }

    /// Whether `op` on `path` fails now (drawn from the run's seed); an
    /// injected failure is traced and reported before it is returned.
    fn fault(&self, op: IoOp, path: &str) -> io::Result<()> {
        let Some(handle) = shape_of(path).filter(|_| self.io_error_rate > 0.0) else {
            return Ok(());
        };
        let mut rng = madsim::rand::thread_rng();
        if !rng.gen_bool(self.io_error_rate) {
            return Ok(());
        }
        let full = op == IoOp::Write && rng.gen_bool(1.0 / 3.0);
        if op == IoOp::Sync {
            self.inner.fail_sync(path);
        }
        record(
            &self.trace,
            format_args!(
                "injected {} on {op:?} {path}",
                if full { "ENOSPC" } else { "EIO" }
            ),
        );
        checker::lock(&self.checker).io_injected(handle, op);
        Err(if full {
            io::Error::new(
                io::ErrorKind::StorageFull,
                format!("injected ENOSPC on {path}"),
            )
        } else {
            io::Error::other(format!("injected EIO on {op:?} {path}"))
        })
    }
}

#[async_trait]
impl Storage for SimStorage {
    async fn create_dir_all(&self, dir: &str) -> io::Result<()> {
        self.delay().await;
        self.inner.create_dir_all(dir).await
    }
    async fn create(&self, path: &str) -> io::Result<()> {
        self.delay().await;
        self.inner.create(path).await
    }
    async fn append(&self, path: &str, data: &[u8]) -> io::Result<()> {
        self.delay().await;
        self.fault(IoOp::Write, path)?;
        self.inner.append(path, data).await
    }
    async fn read_at(&self, path: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.fault(IoOp::Read, path)?;
        self.inner.read_at(path, offset, len).await
    }
    async fn size(&self, path: &str) -> io::Result<u64> {
        self.inner.size(path).await
    }
    async fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        self.delay().await;
        self.inner.truncate(path, len).await
    }
    async fn sync(&self, path: &str) -> io::Result<()> {
        self.delay().await;
        self.fault(IoOp::Sync, path)?;
        self.inner.sync(path).await
    }
    async fn sync_dir(&self, dir: &str) -> io::Result<()> {
        self.delay().await;
        self.inner.sync_dir(dir).await
    }
    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.delay().await;
        self.fault(IoOp::Rename, to)?;
        self.inner.rename(from, to).await
    }
    async fn remove(&self, path: &str) -> io::Result<()> {
        self.delay().await;
        self.inner.remove(path).await
    }
    async fn remove_dir_all(&self, dir: &str) -> io::Result<()> {
        self.delay().await;
        self.inner.remove_dir_all(dir).await
    }
    async fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.inner.list(dir).await
    }
    async fn exists(&self, path: &str) -> io::Result<bool> {
        self.inner.exists(path).await
    }
}
