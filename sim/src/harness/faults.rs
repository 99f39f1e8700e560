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
//!   probability `io_error_rate` (EIO; ENOSPC for a third of the writes),
//!   drawn from the run's seed and the call's identity (the shape's hash,
//!   the file, the operation and how many such calls came before it), not
//!   from the scheduler's stream: a shrink that drops other shapes' work
//!   keeps this shape's faults where they were. A
//!   failed sync has Linux's page-cache semantics
//!   ([`MemStorage::fail_sync`]). Every injection is traced and reported to
//!   the state checker (it accepts a removal for an I/O error only for the
//!   shape whose files got one). The storage root (the clean-shutdown marker,
//!   the `shapes` directory itself) is never faulted: a real engine would
//!   crash and restart on such errors, which the restart kinds model.
//! - [`DiskOwner`]: one live process per disk. The first instance to touch
//!   the disk after the previous user exited owns it until its process
//!   exits; any storage call by another instance meanwhile (two engines
//!   recovering or writing one disk, as a rolling restart invites) is an
//!   `engine-contract` failure.

use super::checker::{self, SharedChecker};
use super::checks::Failure;
use super::trace::{SharedTrace, record};
use async_trait::async_trait;
use engine::env::{CrashPoint, CrashPoints, MemStorage, Storage};
use event_listener::Event;
use futures::future::{self, BoxFuture, FutureExt};
use madsim::rand::Rng as _;
use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
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

/// Which engine instance (by address) uses the disk now.
#[derive(Clone, Default)]
pub struct DiskOwner(Arc<Mutex<Option<&'static str>>>);

impl DiskOwner {
    /// `instance` uses the disk: it becomes the owner if there is none;
    /// `Err(owner)` if another live instance owns it.
    fn claim(&self, instance: &'static str) -> Result<(), &'static str> {
        let mut owner = self.0.lock().expect("disk owner");
        match *owner {
            Some(other) if other != instance => Err(other),
            _ => {
                *owner = Some(instance);
                Ok(())
            }
        }
    }

    /// `instance`'s process exited: the disk is free (if it owned it).
    pub fn exited(&self, instance: &'static str) {
        let mut owner = self.0.lock().expect("disk owner");
        if *owner == Some(instance) {
            *owner = None;
        }
        assert!(*owner != Some(instance), "an exited instance owns no disk");
    }
}

/// Which storage calls fail: a pure function of the run's seed and the
/// call's identity (see the module comment). Shared by every instance of a
/// run, so the count of calls continues across restarts.
#[derive(Clone)]
pub struct FaultPlan {
    seed: u64,
    rate: f64,
    calls: Arc<Mutex<Calls>>,
}

/// Calls so far per `{shape}/{file}/{op:?}`, and a buffer the next key is
/// built in (a draw allocates only for a key it has not seen).
#[derive(Default)]
struct Calls {
    counts: BTreeMap<String, u64>,
    key: String,
}

/// An injected error: an I/O error, or a full disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Injected {
    Eio,
    Enospc,
}

impl FaultPlan {
    pub fn new(seed: u64, rate: f64) -> FaultPlan {
        assert!(
            (0.0..=1.0).contains(&rate),
            "an error rate is a probability"
        );
        FaultPlan {
            seed,
            rate,
            calls: Arc::default(),
        }
    }

    /// Whether this call (`op` on `file` of the shape with hash `shape`)
    /// fails, and how.
    fn draw(&self, shape: &str, file: &str, op: IoOp) -> Option<Injected> {
        if self.rate == 0.0 {
            return None;
        }
        // `{shape}/{file}/{op:?}`, without the formatting machinery (this
        // runs on every storage call of a shape).
        let mut calls = self.calls.lock().expect("fault plan");
        let Calls { counts, key } = &mut *calls;
        key.clear();
        for part in [shape, "/", file, "/", op.name()] {
            key.push_str(part);
        }
        let nth = match counts.get_mut(key.as_str()) {
            Some(count) => {
                *count += 1;
                *count
            }
            None => {
                counts.insert(key.clone(), 1);
                1
            }
        };
        // A `str` hashes as the `String` it was built from.
        let mut hasher = std::hash::DefaultHasher::new();
        (self.seed, key.as_str(), nth).hash(&mut hasher);
        drop(calls);
        let mut rng = ChaCha8Rng::seed_from_u64(hasher.finish());
        if !rng.random_bool(self.rate) {
            return None;
        }
        let full = op == IoOp::Write && rng.random_bool(1.0 / 3.0);
        Some(if full {
            Injected::Enospc
        } else {
            Injected::Eio
        })
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

impl IoOp {
    /// The operation's name, as `Debug` writes it (part of the fault
    /// plan's hash input: never change one).
    fn name(self) -> &'static str {
        match self {
            IoOp::Write => "Write",
            IoOp::Sync => "Sync",
            IoOp::Rename => "Rename",
            IoOp::Read => "Read",
        }
    }
}

/// [`MemStorage`] with simulated latency on writes and syncs (reads are
/// served from the page cache) and injected I/O errors.
pub struct SimStorage {
    inner: MemStorage,
    instance: &'static str,
    owner: DiskOwner,
    max_latency_us: u64,
    faults: FaultPlan,
    checker: SharedChecker,
    trace: SharedTrace,
    /// The runtime's time handle, kept once asked (a storage instance
    /// serves one engine instance, in one runtime).
    time: OnceLock<madsim::time::TimeHandle>,
}

/// The shape whose files `path` is under (`shapes/<handle>/<file>`), if
/// any: its handle and the file.
fn shape_of(path: &str) -> Option<(&str, &str)> {
    // `path.splitn(3, '/')` by byte scans: this runs on every storage call.
    let slash = |s: &str| s.bytes().position(|b| b == b'/');
    let at = slash(path)?;
    let (dir, rest) = (&path[..at], &path[at + 1..]);
    let at = slash(rest)?;
    (dir == engine::stack::SHAPES_DIR).then(|| (&rest[..at], &rest[at + 1..]))
}

impl SimStorage {
    pub fn new(
        (inner, owner): (MemStorage, DiskOwner),
        instance: &'static str,
        max_latency_us: u64,
        faults: FaultPlan,
        checker: SharedChecker,
        trace: SharedTrace,
    ) -> SimStorage {
        SimStorage {
            inner,
            instance,
            owner,
            max_latency_us,
            faults,
            checker,
            trace,
            time: OnceLock::new(),
        }
    }

    /// Claims the disk for this instance; a storage call while another live
    /// instance owns it fails the run (and the call).
    fn claim(&self, path: &str) -> io::Result<()> {
        let Err(owner) = self.owner.claim(self.instance) else {
            return Ok(());
        };
        let message = format!(
            "the instance at {} used the disk ({path}) while the one at {owner} was alive on it: two engines on one disk",
            self.instance
        );
        let failure = Failure::new("engine-contract", message.clone(), None, &self.trace);
        checker::lock(&self.checker).verdict.fail(failure);
        Err(io::Error::other(message))
    }

    async fn delay(&self, path: &str) -> io::Result<()> {
        self.claim(path)?;
        if self.max_latency_us > 0 {
            let us = madsim::rand::thread_rng().gen_range(0..=self.max_latency_us);
            let time = self.time.get_or_init(madsim::time::TimeHandle::current);
            time.sleep(Duration::from_micros(us)).await;
        }
        Ok(())
    }

    /// Whether `op` on `path` fails now (see [`FaultPlan`]); an injected
    /// failure is traced and reported before it is returned.
    fn fault(&self, op: IoOp, path: &str) -> io::Result<()> {
        let Some((handle, file)) = shape_of(path) else {
            return Ok(());
        };
        // The hash part of the handle: the same shape under a new handle
        // (after a 409) counts on.
        let shape = handle
            .bytes()
            .position(|b| b == b'-')
            .map_or(handle, |at| &handle[..at]);
        let Some(injected) = self.faults.draw(shape, file, op) else {
            return Ok(());
        };
        if op == IoOp::Sync {
            self.inner.fail_sync(path);
        }
        record(
            &self.trace,
            format_args!("injected {injected:?} on {op:?} {path}"),
        );
        checker::lock(&self.checker).io_injected(handle, op);
        Err(match injected {
            Injected::Enospc => io::Error::new(
                io::ErrorKind::StorageFull,
                format!("injected ENOSPC on {path}"),
            ),
            Injected::Eio => io::Error::other(format!("injected EIO on {op:?} {path}")),
        })
    }
}

#[async_trait]
impl Storage for SimStorage {
    async fn create_dir_all(&self, dir: &str) -> io::Result<()> {
        self.delay(dir).await?;
        self.inner.create_dir_all(dir).await
    }
    async fn create(&self, path: &str) -> io::Result<()> {
        self.delay(path).await?;
        self.inner.create(path).await
    }
    async fn append(&self, path: &str, data: &[u8]) -> io::Result<()> {
        self.delay(path).await?;
        self.fault(IoOp::Write, path)?;
        self.inner.append(path, data).await
    }
    async fn read_at(&self, path: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.claim(path)?;
        self.fault(IoOp::Read, path)?;
        self.inner.read_at(path, offset, len).await
    }
    async fn size(&self, path: &str) -> io::Result<u64> {
        self.claim(path)?;
        self.inner.size(path).await
    }
    async fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        self.delay(path).await?;
        self.inner.truncate(path, len).await
    }
    async fn sync(&self, path: &str) -> io::Result<()> {
        self.delay(path).await?;
        self.fault(IoOp::Sync, path)?;
        self.inner.sync(path).await
    }
    async fn sync_dir(&self, dir: &str) -> io::Result<()> {
        self.delay(dir).await?;
        self.inner.sync_dir(dir).await
    }
    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.delay(from).await?;
        self.fault(IoOp::Rename, to)?;
        self.inner.rename(from, to).await
    }
    async fn remove(&self, path: &str) -> io::Result<()> {
        self.delay(path).await?;
        self.inner.remove(path).await
    }
    async fn remove_dir_all(&self, dir: &str) -> io::Result<()> {
        self.delay(dir).await?;
        self.inner.remove_dir_all(dir).await
    }
    async fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.claim(dir)?;
        self.inner.list(dir).await
    }
    async fn exists(&self, path: &str) -> io::Result<bool> {
        self.claim(path)?;
        self.inner.exists(path).await
    }
}

#[cfg(test)]
mod tests {
    use super::{IoOp, shape_of};

    #[test]
    fn operation_names_are_what_debug_writes() {
        for op in [IoOp::Write, IoOp::Sync, IoOp::Rename, IoOp::Read] {
            assert_eq!(
                op.name(),
                format!("{op:?}"),
                "the fault plan hashes the name"
            );
        }
    }

    #[test]
    fn shape_files_are_found_as_splitn_finds_them() {
        let dir = engine::stack::SHAPES_DIR;
        for path in [
            format!("{dir}/h-1/log"),
            format!("{dir}/h-1/chunks/0"),
            format!("{dir}/h-1"),
            format!("{dir}//x"),
            "other/h/log".to_string(),
            "x".to_string(),
        ] {
            let mut parts = path.splitn(3, '/');
            let expected = match (parts.next(), parts.next(), parts.next()) {
                (Some(d), Some(handle), Some(file)) if d == dir => Some((handle, file)),
                _ => None,
            };
            assert_eq!(shape_of(&path), expected, "{path}");
        }
    }
}
