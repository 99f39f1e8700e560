//! A live shape's entry: what requests need to read it, the way to its
//! consumer, what an inner shape published, a subquery shape's claim, and
//! the shape's fate (removed, or stopped for a shutdown).

use super::{ConsumerMsg, Published, Subscriber};
use crate::handle::ShapeHandle;
use crate::log::ShapeLogReader;
use crate::offset::LogOffset;
use crate::replication::Lsn;
use crate::shape::Shape;
use futures::channel::mpsc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One live shape: what requests need to read it and the way to its consumer.
pub struct ShapeEntry {
    pub handle: ShapeHandle,
    pub shape: Arc<Shape>,
    pub reader: ShapeLogReader,
    pub(crate) tx: mpsc::Sender<ConsumerMsg>,
    /// Notified on new data, snapshot progress and removal.
    pub changed: event_listener::Event,
    pub(super) removed: AtomicBool,
    /// The WAL position of the shape's snapshot (0 until it is known): the
    /// shape reflects a consistent state only once every transaction up to
    /// it has been applied.
    pub(super) snapshot_lsn: AtomicU64,
    /// The `electric-schema` header of the shape's non-live responses,
    /// rendered once.
    pub schema_header: String,
    /// A subquery shape's inner shapes, in plan order.
    pub deps: Vec<ShapeHandle>,
    pub(super) dep_entries: Vec<Arc<ShapeEntry>>,
    /// The snapshot is complete (its rows are all in the log).
    pub(super) snapshot_done: AtomicBool,
    /// An inner shape's subscribed outer shapes, and what it published.
    pub(super) subscribers: Mutex<Vec<Subscriber>>,
    pub(super) published: Mutex<Published>,
    /// The last transaction the intake routed to it (possibly not sent yet).
    pub(super) last_routed: AtomicU64,
    /// An inner shape's users: the subquery shapes built on it (an inner
    /// shape nobody uses is removed).
    pub(super) users: std::sync::atomic::AtomicUsize,
    /// A subquery shape's claim: its log up to this offset holds its rows
    /// as of this LSN (`None` until its snapshot is done).
    pub(super) claim: Mutex<Option<(LogOffset, Lsn)>>,
    /// Removed, or its consumer stopped for a shutdown (whichever came
    /// first: the other is then declined).
    fate: Mutex<Fate>,
}

/// What ended a shape's service in this instance.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    Serving,
    Removed,
    /// Stopped for a shutdown: the next boot restores it.
    Stopped,
}

impl ShapeEntry {
    /// `snapshot_lsn`: the snapshot's WAL position if it is known (a
    /// restored shape), else 0.
    pub(crate) fn new(
        handle: ShapeHandle,
        shape: Arc<Shape>,
        reader: ShapeLogReader,
        tx: mpsc::Sender<ConsumerMsg>,
        snapshot_lsn: Lsn,
    ) -> ShapeEntry {
        ShapeEntry {
            handle,
            schema_header: crate::wire::schema_header(&shape.table, &shape.selected),
            shape,
            reader,
            tx,
            changed: event_listener::Event::new(),
            removed: AtomicBool::new(false),
            fate: Mutex::new(Fate::Serving),
            snapshot_lsn: AtomicU64::new(snapshot_lsn),
            deps: Vec::new(),
            dep_entries: Vec::new(),
            snapshot_done: AtomicBool::new(false),
            subscribers: Mutex::new(Vec::new()),
            published: Mutex::new(Published::default()),
            claim: Mutex::new(None),
            last_routed: AtomicU64::new(0),
            users: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// With a subquery shape's inner shapes.
    pub(crate) fn with_deps(mut self, deps: Vec<Arc<ShapeEntry>>) -> ShapeEntry {
        self.deps = deps.iter().map(|d| d.handle.clone()).collect();
        let distinct: std::collections::BTreeSet<_> = self.deps.iter().collect();
        assert_eq!(
            distinct.len(),
            self.deps.len(),
            "the dependencies of {} are distinct inner shapes",
            self.handle
        );
        self.dep_entries = deps;
        self
    }

    /// How many subquery shapes are built on this inner shape.
    pub(crate) fn users(&self) -> usize {
        self.users.load(Ordering::SeqCst)
    }

    /// A subquery shape is being built on this inner shape.
    pub(crate) fn add_user(&self) {
        self.users.fetch_add(1, Ordering::SeqCst);
    }

    /// A subquery shape built on it is gone; how many users remain.
    pub(crate) fn drop_user(&self) -> usize {
        let before = self.users.fetch_sub(1, Ordering::SeqCst);
        assert!(before > 0, "{} lost a user it did not have", self.handle);
        before - 1
    }

    /// The intake routed it the transaction at `lsn` (its part may be
    /// empty: it is not sent then).
    pub(crate) fn routed(&self, lsn: Lsn) {
        self.last_routed.fetch_max(lsn, Ordering::SeqCst);
    }

    /// Whether the snapshot is complete.
    pub fn snapshot_done(&self) -> bool {
        self.snapshot_done.load(Ordering::SeqCst)
    }

    /// Whether the shape is served only up to its claim (a subquery shape).
    pub fn claims(&self) -> bool {
        self.shape.has_subquery()
    }

    /// A subquery shape's claim (see the field).
    pub fn claim(&self) -> Option<(LogOffset, Lsn)> {
        *self.claim.lock().expect("claim")
    }

    pub(crate) fn set_claim(&self, offset: LogOffset, lsn: Lsn) {
        let mut claim = self.claim.lock().expect("claim");
        if let Some((o, l)) = *claim {
            assert!(
                o <= offset && l <= lsn,
                "a claim of {} went backwards",
                self.handle
            );
        }
        *claim = Some((offset, lsn));
    }

    /// Subscribes `subscriber` and returns what was published so far, in
    /// one step: every move published later reaches it, none before.
    pub(crate) fn subscribe(&self, subscriber: Subscriber) -> Published {
        self.subscribers
            .lock()
            .expect("subscribers")
            .push(subscriber);
        self.published.lock().expect("published").clone()
    }

    pub(super) fn publish(&self, published: Published) {
        *self.published.lock().expect("published") = published;
    }

    pub(crate) fn unsubscribe(&self, outer: &ShapeHandle) {
        self.subscribers
            .lock()
            .expect("subscribers")
            .retain(|s| s.outer != *outer);
    }

    pub(crate) fn subscribers(&self) -> Vec<Subscriber> {
        self.subscribers.lock().expect("subscribers").clone()
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// The WAL position of the shape's snapshot (0 until it is known).
    pub fn snapshot_lsn(&self) -> Lsn {
        self.snapshot_lsn.load(Ordering::SeqCst)
    }

    /// Marks the entry removed, wakes its readers and closes its consumer's
    /// channel (the consumer then deletes the storage).
    /// Marks it removed, unless its consumer stopped for a shutdown first
    /// (then the shape stays, for the next boot): false.
    pub(crate) fn mark_removed(&self) -> bool {
        let mut fate = self.fate.lock().expect("fate");
        match *fate {
            Fate::Stopped => false,
            Fate::Serving | Fate::Removed => {
                *fate = Fate::Removed;
                true
            }
        }
    }

    /// Marks its consumer stopped for a shutdown, unless it was removed
    /// first (then the consumer finishes the removal): false.
    pub(super) fn mark_stopped(&self) -> bool {
        let mut fate = self.fate.lock().expect("fate");
        match *fate {
            Fate::Removed => false,
            Fate::Serving | Fate::Stopped => {
                *fate = Fate::Stopped;
                true
            }
        }
    }

    pub(crate) fn retire(&self) {
        self.removed.store(true, Ordering::SeqCst);
        self.changed.notify(usize::MAX);
        self.tx.clone().close_channel();
    }
}
