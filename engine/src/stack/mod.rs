//! The stack: every component of one engine instance, wired together.
//!
//! Data path: the replication task ([`replication`]) receives transactions from
//! the slot, routes each to the shapes it touches and sends every shape its part;
//! one consumer task per shape ([`crate::consumer`]) writes its log and reports
//! what is durable to the flush tracker; the acknowledgement task tells the slot
//! what it may forget. Requests ([`crate::api`]) read the logs. Metadata lives
//! beside it all in [`ShapeDb`]; boot and graceful shutdown are in [`boot`] and
//! [`shutdown`].

mod boot;
mod replication;
mod shutdown;

use crate::consumer::{self, ConsumerConfig, Delivered, ShapeRemover, Start};
use crate::env::events::RemovalReason;
use crate::env::{Env, Event};
use crate::flush_tracker::{FlushTracker, SharedTracker};
use crate::handle::{HandleIssuer, ShapeHandle};
use crate::log::{LogConfig, ShapeLog};
use crate::metadata::{MetaConfig, ShapeDb, ShapeRow, SqliteConn};
use crate::replication::{Lsn, PostgresQueries, ReplicationSource, ReplicationStream};
use crate::schema::{Catalog, TableName};
use crate::shape::{Shape, ShapeError, ShapeRequest};
use futures::channel::mpsc;
use futures::future::{self, Either};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

pub use crate::consumer::{SHAPES_DIR, STACK_ID, ShapeEntry, shape_dir};

/// Marker written at the end of a graceful shutdown, consumed at boot.
pub const CLEAN_SHUTDOWN_MARKER: &str = "clean_shutdown";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackConfig {
    pub log: LogConfig,
    pub meta: MetaConfig,
    /// How long a live request waits for new data (Electric: 20 s).
    pub long_poll_timeout_ms: u64,
    /// How long a request waits for the stack to become ready before a 503.
    pub stack_ready_timeout_ms: u64,
    /// How long a request waits for a snapshot chunk before a 503.
    pub snapshot_timeout_ms: u64,
    /// Bound on the graceful drain; past it the shutdown is not clean.
    pub shutdown_timeout_ms: u64,
    /// Pause before reconnecting to Postgres or retrying a query.
    pub retry_backoff_ms: u64,
    /// Transactions queued per consumer before replication waits (back-pressure).
    pub consumer_queue: usize,
    /// Treat storage corruption found at boot as a fatal invariant violation
    /// (the simulator's choice) instead of dropping the shape.
    pub strict_recovery: bool,
    /// What boot does with subquery shapes and their inner shapes.
    pub subquery_restore: SubqueryRestore,
    /// Planted bugs (the `plants` feature only).
    #[cfg(feature = "plants")]
    pub plants: crate::plants::Plants,
}

/// What boot does with subquery shapes and their inner shapes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SubqueryRestore {
    /// Each resumes from its own durable state (ARCHITECTURE.md,
    /// "Restoring subquery shapes").
    #[default]
    Restore,
    /// Electric's behaviour since #4735: all of them are dropped, and
    /// their clients refetch.
    Drop,
}

impl Default for StackConfig {
    fn default() -> StackConfig {
        StackConfig {
            log: LogConfig::default(),
            meta: MetaConfig::default(),
            long_poll_timeout_ms: 20_000,
            stack_ready_timeout_ms: 5_000,
            snapshot_timeout_ms: 45_000,
            shutdown_timeout_ms: 30_000,
            retry_backoff_ms: 100,
            consumer_queue: 1_000,
            strict_recovery: true,
            subquery_restore: SubqueryRestore::Restore,
            #[cfg(feature = "plants")]
            plants: crate::plants::Plants::default(),
        }
    }
}

/// What the host provides: the environment, the SQLite connection for
/// metadata, and the Postgres boundaries.
#[derive(Clone)]
pub struct Host {
    pub env: Env,
    pub sqlite: SqliteConn,
    pub source: Arc<dyn ReplicationSource>,
    pub postgres: Arc<dyn PostgresQueries>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Booting,
    Ready,
    Draining,
    Stopped,
}

#[derive(Default)]
struct Registry {
    shapes: BTreeMap<ShapeHandle, Arc<ShapeEntry>>,
    by_table: BTreeMap<TableName, BTreeSet<ShapeHandle>>,
}

pub(crate) struct Inner {
    pub host: Host,
    pub config: StackConfig,
    pub db: Arc<ShapeDb>,
    status: Mutex<Status>,
    pub status_changed: event_listener::Event,
    catalog: Mutex<Catalog>,
    /// Requests already checked against the current catalog (the hot path
    /// would otherwise parse the same WHERE clause on every poll).
    checked: Mutex<BTreeMap<ShapeRequest, Arc<Shape>>>,
    registry: Mutex<Registry>,
    /// `None` until replication first connects.
    pub tracker: Arc<SharedTracker>,
    stream: Mutex<Option<Arc<dyn ReplicationStream>>>,
    /// How far the intake has delivered to every consumer.
    pub(crate) delivered: Arc<Delivered>,
    /// The highest LSN known to exist upstream: Postgres' WAL position at the
    /// last connect, or the last transaction received. An offset at or below it
    /// is valid even where the log has not caught up yet (after a crash).
    pub upstream_lsn: std::sync::atomic::AtomicU64,
    issuer: Mutex<HandleIssuer>,
    /// Serialises shape creation so one definition never gets two handles.
    pub creating: futures::lock::Mutex<()>,
    pub stop_intake: event_listener::Event,
    intake_stopping: AtomicBool,
    intake_stopped: AtomicBool,
    /// Whether the previous run ended with a clean shutdown (known after boot).
    previous_stop_clean: Mutex<Option<bool>>,
}

/// A running engine instance. Cheap to clone.
#[derive(Clone)]
pub struct Stack {
    pub(crate) inner: Arc<Inner>,
}

impl Stack {
    /// Starts the stack: boot runs in a task; requests get 503 until it is ready.
    pub fn start(host: Host, config: StackConfig) -> Stack {
        let db =
            ShapeDb::open(host.sqlite.clone(), config.meta).expect("metadata database must open");
        let inner = Arc::new(Inner {
            host,
            config,
            db: Arc::new(db),
            status: Mutex::new(Status::Booting),
            status_changed: event_listener::Event::new(),
            catalog: Mutex::new(Catalog::default()),
            checked: Mutex::new(BTreeMap::new()),
            registry: Mutex::new(Registry::default()),
            tracker: Arc::default(),
            stream: Mutex::new(None),
            upstream_lsn: std::sync::atomic::AtomicU64::new(0),
            delivered: Arc::default(),
            issuer: Mutex::new(HandleIssuer::default()),
            creating: futures::lock::Mutex::new(()),
            stop_intake: event_listener::Event::new(),
            intake_stopping: AtomicBool::new(false),
            intake_stopped: AtomicBool::new(false),
            previous_stop_clean: Mutex::new(None),
        });
        let booting = inner.clone();
        inner
            .host
            .env
            .spawner
            .spawn("boot", Box::pin(async move { boot::boot(booting).await }));
        Stack { inner }
    }

    pub fn status(&self) -> Status {
        *self.inner.status.lock().expect("status")
    }

    /// Whether the previous run ended cleanly; `None` until boot has read the marker.
    pub fn previous_stop_clean(&self) -> Option<bool> {
        *self.inner.previous_stop_clean.lock().expect("marker")
    }

    /// The graceful path: drain, flush everything, write the clean-shutdown marker.
    pub async fn shutdown(&self) -> bool {
        shutdown::shutdown(self.inner.clone()).await
    }

    /// Handles of the live shapes, in order.
    pub fn shape_handles(&self) -> Vec<ShapeHandle> {
        self.inner.registry().shapes.keys().cloned().collect()
    }

    /// The LSN acknowledged to the slot so far (for tests and reports).
    pub fn acknowledged_lsn(&self) -> Option<Lsn> {
        self.inner.tracker.with(FlushTracker::ack_lsn)
    }

    /// Removes a shape on request (Electric's `DELETE /v1/shape`): clients
    /// holding its handle get 409. False if no live shape has this handle.
    pub fn remove_shape(&self, handle: &ShapeHandle) -> bool {
        self.inner.remove_shape(handle, RemovalReason::Requested)
    }
}

impl Inner {
    pub fn env(&self) -> &Env {
        &self.host.env
    }

    pub fn now_ms(&self) -> u64 {
        self.host.env.clock.now_ms()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().expect("registry poisoned")
    }

    pub fn status(&self) -> Status {
        *self.status.lock().expect("status")
    }

    pub fn set_status(&self, status: Status) {
        *self.status.lock().expect("status") = status;
        self.status_changed.notify(usize::MAX);
    }

    pub fn catalog(&self) -> Catalog {
        self.catalog.lock().expect("catalog").clone()
    }

    /// Replaces the catalog's definition of a table; returns the old one.
    pub fn upsert_table(
        &self,
        table: crate::schema::TableSchema,
    ) -> Option<crate::schema::TableSchema> {
        let previous = self.catalog.lock().expect("catalog").upsert(table);
        self.checked.lock().expect("checked shapes").clear();
        previous
    }

    /// Checks a request against the catalog, remembering the answer for the
    /// same request (until the catalog changes).
    pub fn checked_shape(&self, request: &ShapeRequest) -> Result<Arc<Shape>, ShapeError> {
        /// Bound on remembered requests: past it the cache starts over.
        const CHECKED_LIMIT: usize = 10_000;
        if let Some(shape) = self.checked.lock().expect("checked shapes").get(request) {
            return Ok(shape.clone());
        }
        let shape = Shape::new(&self.catalog.lock().expect("catalog"), request)?;
        let mut checked = self.checked.lock().expect("checked shapes");
        if checked.len() >= CHECKED_LIMIT {
            checked.clear();
        }
        checked.insert(request.clone(), shape.clone());
        Ok(shape)
    }

    pub fn entry(&self, handle: &ShapeHandle) -> Option<Arc<ShapeEntry>> {
        self.registry().shapes.get(handle).cloned()
    }

    /// The live shapes whose rows depend on `table` (a subquery shape is
    /// listed under every table of its subqueries too).
    pub fn entries_for_table(&self, table: &TableName) -> Vec<Arc<ShapeEntry>> {
        let registry = self.registry();
        let handles = registry.by_table.get(table).into_iter().flatten();
        handles.map(|h| registry.shapes[h].clone()).collect()
    }

    /// Registers a shape and starts its consumer.
    fn register(
        self: &Arc<Self>,
        handle: ShapeHandle,
        shape: Arc<Shape>,
        writer: crate::log::ShapeLogWriter,
        start: Start,
        deps: Vec<Arc<ShapeEntry>>,
    ) {
        let (tx, rx) = mpsc::channel(self.config.consumer_queue);
        let entry = ShapeEntry::new(
            handle.clone(),
            shape.clone(),
            writer.reader(),
            tx,
            writer.meta().snapshot.wal_lsn(),
        );
        let entry = entry.with_deps(deps);
        if let Some((offset, lsn)) = writer.meta().outer.as_ref().and_then(|o| o.claim) {
            // A restored subquery shape serves its recorded claim at once.
            entry.set_claim(offset, lsn);
        }
        let entry = Arc::new(entry);
        let mut registry = self.registry();
        for table in shape.tables() {
            registry
                .by_table
                .entry(table)
                .or_default()
                .insert(handle.clone());
        }
        let previous = registry.shapes.insert(handle, entry.clone());
        assert!(
            previous.is_none(),
            "handle {} registered twice",
            entry.handle
        );
        drop(registry);
        let ctx = consumer::Context {
            env: self.host.env.clone(),
            config: ConsumerConfig {
                retry_backoff_ms: self.config.retry_backoff_ms,
                queue_limit: self.config.consumer_queue,
                snapshot_timeout_ms: self.config.snapshot_timeout_ms,
                #[cfg(feature = "plants")]
                plants: self.config.plants,
            },
            postgres: self.host.postgres.clone(),
            db: self.db.clone(),
            tracker: self.tracker.clone(),
            remover: self.clone(),
            delivered: self.delivered.clone(),
        };
        self.host.env.spawner.spawn(
            "consumer",
            Box::pin(consumer::run(ctx, entry, writer, start, rx)),
        );
    }

    /// Takes a shape out of service: its metadata is tombstoned and it leaves
    /// the registry in one step (so its definition cannot be looked up half-
    /// removed), requests waiting on it get 409, and its consumer is told to
    /// stop. The consumer deletes the storage and only then releases the shape's
    /// hold on the acknowledged LSN: until the removal is durable, a crash
    /// could restore the shape, and the slot must still replay what it lacks.
    /// Idempotent: only the first removal is reported (and returns true).
    pub fn remove_shape(&self, handle: &ShapeHandle, reason: RemovalReason) -> bool {
        let mut unused = Vec::new();
        let entry = {
            let mut registry = self.registry();
            let Some(entry) = registry.shapes.get(handle).cloned() else {
                return false;
            };
            // Planted `remove-metadata-first` (PR 4648's bug 6): the
            // metadata goes before the shape is out of service.
            if crate::planted!(self.config, remove_metadata_first) {
                self.db.remove_shape(handle);
            }
            // Out of service first, then the metadata: a shape whose
            // consumer already stopped for a shutdown stays (the next boot
            // restores it), with its metadata.
            if !entry.mark_removed() {
                self.env().emit(Event::RemovalDeclined {
                    handle: handle.clone(),
                    reason,
                });
                return false;
            }
            registry.shapes.remove(handle);
            for table in entry.shape.tables() {
                if let Some(set) = registry.by_table.get_mut(&table) {
                    set.remove(handle);
                }
            }
            for dep in &entry.deps {
                if let Some(dep) = registry.shapes.get(dep) {
                    dep.unsubscribe(handle);
                    if dep.drop_user() == 0 {
                        unused.push(dep.handle.clone());
                    }
                }
            }
            self.db.remove_shape(handle);
            entry
        };
        self.tracker.with(|t| t.hold_removed(handle.as_str()));
        self.env().emit(Event::ShapeRemoved {
            handle: handle.clone(),
            reason,
        });
        entry.retire();
        // The shapes that depend on it cannot be maintained without it.
        for subscriber in entry.subscribers() {
            let reason = RemovalReason::DependencyRemoved {
                dependency: handle.clone(),
            };
            self.remove_shape(&subscriber.outer, reason);
        }
        for dep in unused {
            self.remove_shape(&dep, RemovalReason::Unused);
        }
        true
    }

    /// The live handle for `shape`, creating the shape (and starting its
    /// snapshot) if there is none.
    pub async fn get_or_create(self: &Arc<Self>, shape: Arc<Shape>) -> Result<ShapeHandle, String> {
        let _creating = self.creating.lock().await;
        // Shutdown and schema changes hold the creation lock while they work:
        // re-check what they may have changed while this request waited.
        if self.status() != Status::Ready {
            return Err("the stack is shutting down".to_string());
        }
        self.create_locked(shape).await
    }

    /// [`Inner::get_or_create`] under the creation lock: the inner shapes
    /// of a subquery shape first (each the same way), then the shape,
    /// subscribed to them before its consumer can take its snapshot.
    fn create_locked(
        self: &Arc<Self>,
        shape: Arc<Shape>,
    ) -> Pin<Box<dyn Future<Output = Result<ShapeHandle, String>> + Send + '_>> {
        Box::pin(async move {
            let known = self.live_handle(&shape)?;
            if let Some(handle) = known {
                return Ok(handle);
            }
            let dep_shapes = shape
                .dependency_shapes(&self.catalog())
                .map_err(|e| e.to_string())?;
            let mut deps = Vec::new();
            for dep in dep_shapes {
                let dep = self.create_locked(dep).await?;
                let entry = self.entry(&dep).filter(|e| !e.is_removed());
                let entry = entry.ok_or_else(|| format!("inner shape {dep} was removed; retry"))?;
                // Held from now on: it must outlive the wait for storage below.
                entry.add_user();
                deps.push(entry);
            }
            // Its consumer subscribes to each once that one's snapshot is
            // complete (`consumer::wait_for_dependencies`).
            let created = self.create_new(shape, deps.clone()).await;
            if created.is_err() {
                for dep in deps.iter().filter(|d| d.drop_user() == 0) {
                    self.remove_shape(&dep.handle, RemovalReason::Unused);
                }
            }
            created
        })
    }

    /// The live handle of `shape`, if it has one.
    fn live_handle(&self, shape: &Shape) -> Result<Option<ShapeHandle>, String> {
        if self.catalog().table(&shape.table.name) != Some(&shape.table) {
            return Err(format!("table {} changed; retry", shape.table.name));
        }
        let known = self
            .db
            .handle_for_comparable(shape.comparable())
            .map_err(|e| e.to_string())?;
        Ok(known.filter(|handle| self.entry(handle).is_some_and(|e| !e.is_removed())))
    }

    /// Creates a shape with a new handle: storage, metadata, consumer.
    async fn create_new(
        self: &Arc<Self>,
        shape: Arc<Shape>,
        deps: Vec<Arc<ShapeEntry>>,
    ) -> Result<ShapeHandle, String> {
        let comparable = shape.comparable().to_string();
        let hash = shape.hash();
        let handle = loop {
            let candidate = self
                .issuer
                .lock()
                .expect("issuer")
                .issue(&hash, self.now_ms());
            // Never reuse a handle the metadata still knows (e.g. from before a restart).
            let stored = self
                .db
                .shape_for_handle(&candidate)
                .map_err(|e| e.to_string())?;
            if self.entry(&candidate).is_none() && stored.is_none() {
                break candidate;
            }
        };
        // Storage first: a crash before the metadata add is flushed leaves an
        // orphan directory, which boot removes.
        let dir = shape_dir(&handle);
        let writer = ShapeLog::create(self.env(), &dir, self.config.log)
            .await
            .map_err(|e| e.to_string())?;
        let row = ShapeRow {
            handle: handle.clone(),
            request: shape.to_request(),
            comparable,
            hash,
            oid: shape.table.oid,
            snapshot_complete: false,
        };
        self.db.add_shape(row).await;
        self.env().emit(Event::ShapeCreated {
            handle: handle.clone(),
        });
        self.register(handle.clone(), shape, writer, Start::New, deps);
        Ok(handle)
    }

    /// Waits for `event` (a listener taken before the caller checked its
    /// condition) or `timeout_ms`; true if the event fired.
    pub async fn wait(&self, listener: impl Future<Output = ()>, timeout_ms: u64) -> bool {
        let sleep = self.host.env.clock.sleep_ms(timeout_ms);
        let listener = std::pin::pin!(listener);
        matches!(future::select(listener, sleep).await, Either::Left(_))
    }
}

impl ShapeRemover for Inner {
    /// Idempotent: if the shape is already gone, the first reason stands.
    fn remove_shape(&self, handle: &ShapeHandle, reason: RemovalReason) {
        Inner::remove_shape(self, handle, reason);
    }
}
