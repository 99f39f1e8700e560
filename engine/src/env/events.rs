//! The engine's event stream: what the engine does, as a closed set of typed
//! events, emitted through [`Env::emit`](super::Env::emit). A host decides
//! what to do with them: the simulator records every one in its trace and
//! feeds them to its state checker; a test keeps them ([`RecordedEvents`]);
//! production may log them or drop them ([`NoEvents`]).
//!
//! Rules: an event is emitted when the fact it states has become true (a
//! durable offset after the metadata write returned, a removal after the
//! shape left the registry), never before; every removal carries a typed
//! reason, and no reason is ever discarded. This module imports nothing above
//! the environment (no log, stack or consumer), so every layer may emit.

use super::CrashPoint;
use crate::handle::ShapeHandle;
use crate::offset::LogOffset;
use crate::replication::{Lsn, SourceError};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

/// Everything the engine reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Boot began; the previous run ended with a clean shutdown or not.
    BootStarted { previous_stop_clean: bool },
    /// Boot restored a shape from its metadata and storage, its log ending
    /// at `durable` (`None`: snapshot only).
    ShapeRestored {
        handle: ShapeHandle,
        durable: Option<LogOffset>,
    },
    /// Boot cut a restored log back to its durable offset.
    LogTrimmed {
        handle: ShapeHandle,
        log_bytes: u64,
        index_bytes: u64,
    },
    /// Boot dropped a shape (metadata and storage) instead of restoring it.
    BootDropped {
        handle: ShapeHandle,
        reason: RemovalReason,
    },
    /// Boot removed a directory under `shapes/` whose name is no handle.
    ForeignDirRemoved { dir: String },
    /// Replication connected to the slot.
    ReplicationConnected {
        confirmed_lsn: Lsn,
        wal_end_lsn: Lsn,
    },
    /// The stack serves requests.
    Ready,
    /// A new shape: its storage is durable and its metadata add is queued.
    ShapeCreated { handle: ShapeHandle },
    /// A live shape left service (requests get 409 from now on).
    ShapeRemoved {
        handle: ShapeHandle,
        reason: RemovalReason,
    },
    /// A removed shape's storage is durably gone; it holds nothing back.
    StorageRemoved { handle: ShapeHandle },
    /// A shape's snapshot visibility is durable in its log metadata.
    SnapshotStarted { handle: ShapeHandle },
    /// A shape's snapshot is durably complete in its log metadata (the
    /// metadata database's completion is queued).
    SnapshotCompleted {
        handle: ShapeHandle,
        rows: u64,
        chunks: u64,
    },
    /// A transaction was registered with the flush tracker and is being sent
    /// to these shapes (possibly none).
    TxnRouted { lsn: Lsn, shapes: Vec<ShapeHandle> },
    /// A keepalive said every transaction at or below `wal_end` was sent,
    /// and the flush tracker has seen up to it.
    CaughtUp { wal_end: Lsn },
    /// A shape consumer skipped a transaction routed to it.
    TxnSkipped {
        handle: ShapeHandle,
        lsn: Lsn,
        reason: SkipReason,
    },
    /// A flush made the shape's log durable up to `offset` (the metadata
    /// holding it was written and its directory synced).
    ShapeDurable {
        handle: ShapeHandle,
        offset: LogOffset,
    },
    /// A subquery shape wrote a `move-out` event for `values` value tuples of
    /// its dependency number `dependency`.
    MovedOut {
        handle: ShapeHandle,
        dependency: usize,
        values: usize,
    },
    /// A subquery shape spliced a move-in: `rows` rows for `values` value
    /// tuples, the buffered transactions split by `rule`.
    MovedIn {
        handle: ShapeHandle,
        dependency: usize,
        values: usize,
        rows: usize,
        rule: SpliceRule,
    },
    /// Shutdown: a shape the next boot will drop (a subquery or inner
    /// shape) stopped holding the acknowledgement back.
    HoldReleased { handle: ShapeHandle },
    /// A restored inner shape rebuilt its materializer from `records`
    /// records of its durable log.
    MaterializerRebuilt { handle: ShapeHandle, records: u64 },
    /// A restored subquery shape's view of `dependency` caught up: its own
    /// state recorded the inner shape at `outer_through`, the inner shape
    /// was restored at `inner_through` (Electric's `L_outer`, `L_inner`),
    /// and the difference re-derived `moves` moves.
    ViewCaughtUp {
        handle: ShapeHandle,
        dependency: usize,
        outer_through: Lsn,
        inner_through: Lsn,
        moves: usize,
    },
    /// A graceful drain found a move-in in flight: the transactions it
    /// held were written with the views before it, and the move is left
    /// for the next boot to re-derive.
    MoveInSuspended { handle: ShapeHandle, held: usize },
    /// A removal found the shape's consumer stopped for a shutdown: the
    /// shape stays, for the next boot.
    RemovalDeclined {
        handle: ShapeHandle,
        reason: RemovalReason,
    },
    /// The engine is acknowledging `lsn` to the slot (sent next).
    Acknowledged { lsn: Lsn },
    /// A batch of the metadata write buffer was committed to SQLite.
    MetadataWritten { changes: Vec<MetaChange> },
    /// The engine reached a crash point (the host may kill it there).
    CrashPointVisited { point: CrashPoint },
    /// Graceful shutdown began.
    ShutdownStarted,
    /// Graceful shutdown ended; `clean` if the marker was written.
    ShutdownFinished { clean: bool },
}

/// Why a shape stopped being served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemovalReason {
    /// The shape's table was redefined: a relation message with a new
    /// schema, or (at boot) a definition that no longer fits the catalog.
    TableChanged { table: String, oid: u32 },
    /// Boot: a shape directory the metadata database does not know (its add
    /// was still in the write buffer when the previous run died).
    MetadataLost,
    /// Boot: the metadata database says the snapshot never completed.
    SnapshotIncomplete,
    /// Boot: the shape's log would not open.
    OpenFailed(StorageFailure),
    /// The shape's consumer stopped with an error.
    ConsumerFailed(ConsumerFailure),
    /// A client's read of the shape's log failed.
    ReadFailed(StorageFailure),
    /// The snapshot query kept failing until the snapshot timeout.
    SnapshotGaveUp(SourceError),
    /// Someone asked for the removal (`Stack::remove_shape`).
    Requested,
    /// Routing found the shape's consumer gone.
    ConsumerGone,
    /// Boot, in Electric's mode (`subquery_restore = "drop"`, as #4735):
    /// subquery shapes and their inner shapes are not restored.
    SubqueryNotRestored,
    /// Boot: an inner shape this subquery shape depends on did not survive
    /// the restart (its own drop says why).
    DependencyLost,
    /// An inner shape this subquery shape depends on was removed.
    DependencyRemoved { dependency: ShapeHandle },
    /// An inner shape no subquery shape uses any more.
    Unused,
    /// Planted bug `drop-all-on-dirty-boot`: boot wiped the shape because the
    /// previous stop was not clean.
    #[cfg(feature = "plants")]
    DirtyBoot,
}

/// Which rule closed a move-in's buffered transactions (Electric's splice
/// boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpliceRule {
    /// The first buffered transaction the move-in snapshot does not see.
    FirstInvisible,
    /// Everything up to the query's WAL position was delivered.
    ReachedQueryLsn,
}

/// Why a consumer stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerFailure {
    /// Its log could not be written.
    Storage(StorageFailure),
    /// More transactions arrived during the snapshot than it may buffer.
    SnapshotBacklog { queued: usize },
    /// More transactions arrived during a move-in than it may buffer.
    MoveInBacklog { queued: usize },
}

/// A shape-log error, as an event carries it: its kind, typed, and its full
/// message (path and cause), kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageFailure {
    pub kind: StorageFailureKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageFailureKind {
    /// The storage returned an error.
    Io(io::ErrorKind),
    /// No metadata file: not a log.
    Missing,
    /// Written by another storage version.
    Incompatible,
    /// The log's own metadata has no complete snapshot.
    SnapshotIncomplete,
    /// The log contradicts its metadata.
    Corrupt,
    /// The writer failed earlier and refuses more work.
    Poisoned,
    /// A log was to be created where one exists.
    AlreadyExists,
}

/// Why a consumer skipped a routed transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// At or below the log's last offset: a replay after a restart.
    Replayed,
    /// Already reflected in the shape's snapshot.
    InSnapshot,
    /// Routed to a subquery or inner shape for its dependencies, it writes
    /// nothing to this shape's log.
    NothingToWrite,
}

/// One operation of a committed metadata batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaChange {
    Added(ShapeHandle),
    Removed(ShapeHandle),
    SnapshotCompleted(ShapeHandle),
}

impl RemovalReason {
    /// A stable, kebab-case name (for reports and coverage keys).
    pub fn name(&self) -> &'static str {
        match self {
            RemovalReason::TableChanged { .. } => "table-changed",
            RemovalReason::MetadataLost => "metadata-lost",
            RemovalReason::SnapshotIncomplete => "snapshot-incomplete",
            RemovalReason::OpenFailed(_) => "open-failed",
            RemovalReason::ConsumerFailed(_) => "consumer-failed",
            RemovalReason::ReadFailed(_) => "read-failed",
            RemovalReason::SnapshotGaveUp(_) => "snapshot-gave-up",
            RemovalReason::Requested => "requested",
            RemovalReason::ConsumerGone => "consumer-gone",
            RemovalReason::SubqueryNotRestored => "subquery-shape-not-restored",
            RemovalReason::DependencyRemoved { .. } => "dependency-removed",
            RemovalReason::DependencyLost => "dependency-lost",
            RemovalReason::Unused => "unused",
            #[cfg(feature = "plants")]
            RemovalReason::DirtyBoot => "dirty-boot",
        }
    }

    /// The storage error behind the removal, if one is.
    pub fn storage_failure(&self) -> Option<&StorageFailure> {
        match self {
            RemovalReason::OpenFailed(f)
            | RemovalReason::ReadFailed(f)
            | RemovalReason::ConsumerFailed(ConsumerFailure::Storage(f)) => Some(f),
            _ => None,
        }
    }
}

/// Where events go. Called synchronously at the moment of the fact; a sink
/// must not block or await.
pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, event: Event);
}

/// Drops every event.
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _event: Event) {}
}

/// Keeps every event, in order (for tests).
#[derive(Clone, Default)]
pub struct RecordedEvents {
    events: Arc<Mutex<Vec<Event>>>,
}

impl RecordedEvents {
    /// Every event so far.
    pub fn all(&self) -> Vec<Event> {
        self.events.lock().expect("recorded events").clone()
    }
}

impl EventSink for RecordedEvents {
    fn emit(&self, event: Event) {
        self.events.lock().expect("recorded events").push(event);
    }
}

fn handles(f: &mut fmt::Formatter<'_>, handles: &[ShapeHandle]) -> fmt::Result {
    for (i, h) in handles.iter().enumerate() {
        write!(f, "{}{h}", if i == 0 { "" } else { "," })?;
    }
    Ok(())
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::BootStarted {
                previous_stop_clean,
            } => write!(f, "boot (previous stop clean: {previous_stop_clean})"),
            Event::ShapeRestored { handle, durable } => match durable {
                Some(d) => write!(f, "restored {handle} durable to {d}"),
                None => write!(f, "restored {handle} (snapshot only)"),
            },
            Event::LogTrimmed {
                handle,
                log_bytes,
                index_bytes,
            } => write!(
                f,
                "trimmed {handle}: {log_bytes} log bytes, {index_bytes} index bytes"
            ),
            Event::BootDropped { handle, reason } => write!(f, "boot dropped {handle}: {reason}"),
            Event::ForeignDirRemoved { dir } => write!(f, "removed foreign directory {dir}"),
            Event::ReplicationConnected {
                confirmed_lsn,
                wal_end_lsn,
            } => write!(
                f,
                "replication connected: slot at {confirmed_lsn}, WAL at {wal_end_lsn}"
            ),
            Event::Ready => write!(f, "ready"),
            Event::ShapeCreated { handle } => write!(f, "created {handle}"),
            Event::ShapeRemoved { handle, reason } => write!(f, "removed {handle}: {reason}"),
            Event::StorageRemoved { handle } => write!(f, "storage of {handle} removed"),
            Event::SnapshotStarted { handle } => write!(f, "snapshot of {handle} started"),
            Event::SnapshotCompleted {
                handle,
                rows,
                chunks,
            } => {
                write!(
                    f,
                    "snapshot of {handle} complete: {rows} rows in {chunks} chunks"
                )
            }
            Event::TxnRouted { lsn, shapes } => {
                write!(f, "routed lsn {lsn} to [")?;
                handles(f, shapes)?;
                write!(f, "]")
            }
            Event::CaughtUp { wal_end } => write!(f, "caught up: WAL at {wal_end}"),
            Event::TxnSkipped {
                handle,
                lsn,
                reason,
            } => write!(f, "{handle} skipped lsn {lsn}: {reason:?}"),
            Event::ShapeDurable { handle, offset } => write!(f, "{handle} durable to {offset}"),
            Event::MovedOut {
                handle,
                dependency,
                values,
            } => write!(
                f,
                "{handle} moved out {values} values of dependency {dependency}"
            ),
            Event::MovedIn {
                handle,
                dependency,
                values,
                rows,
                rule,
            } => write!(
                f,
                "{handle} moved in {values} values of dependency {dependency}: {rows} rows, spliced by {rule:?}"
            ),
            Event::HoldReleased { handle } => {
                write!(f, "{handle} holds nothing back (not restored)")
            }
            Event::MaterializerRebuilt { handle, records } => {
                write!(
                    f,
                    "{handle} rebuilt its materializer from {records} records"
                )
            }
            Event::ViewCaughtUp {
                handle,
                dependency,
                outer_through,
                inner_through,
                moves,
            } => write!(
                f,
                "{handle} caught up with dependency {dependency} (recorded at {outer_through}, inner restored at {inner_through}): {moves} moves"
            ),
            Event::RemovalDeclined { handle, reason } => write!(
                f,
                "{handle} stays: its consumer stopped for the shutdown (removal for {} declined)",
                reason.name()
            ),
            Event::MoveInSuspended { handle, held } => {
                write!(
                    f,
                    "{handle} suspended a move-in holding {held} transactions"
                )
            }
            Event::Acknowledged { lsn } => write!(f, "acknowledging lsn {lsn}"),
            Event::MetadataWritten { changes } => {
                write!(f, "metadata written:")?;
                for change in changes {
                    match change {
                        MetaChange::Added(h) => write!(f, " +{h}")?,
                        MetaChange::Removed(h) => write!(f, " -{h}")?,
                        MetaChange::SnapshotCompleted(h) => write!(f, " complete:{h}")?,
                    }
                }
                Ok(())
            }
            Event::CrashPointVisited { point } => write!(f, "at crash point {point}"),
            Event::ShutdownStarted => write!(f, "shutdown started"),
            Event::ShutdownFinished { clean } => write!(f, "shutdown finished (clean: {clean})"),
        }
    }
}

impl fmt::Display for RemovalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self {
            RemovalReason::TableChanged { table, oid } => write!(f, " ({table}, oid {oid})"),
            RemovalReason::OpenFailed(e) | RemovalReason::ReadFailed(e) => write!(f, " ({e})"),
            RemovalReason::ConsumerFailed(ConsumerFailure::Storage(e)) => write!(f, " ({e})"),
            RemovalReason::ConsumerFailed(ConsumerFailure::SnapshotBacklog { queued }) => {
                write!(f, " ({queued} transactions queued during the snapshot)")
            }
            RemovalReason::ConsumerFailed(ConsumerFailure::MoveInBacklog { queued }) => {
                write!(f, " ({queued} transactions queued during a move-in)")
            }
            RemovalReason::DependencyRemoved { dependency } => write!(f, " ({dependency})"),
            RemovalReason::SnapshotGaveUp(e) => write!(f, " ({e})"),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}
