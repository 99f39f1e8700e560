//! Shape log storage: per shape, snapshot chunks (`0_N`) and a main log of
//! records keyed by real offsets, on the [`Storage`](crate::env::Storage) trait.
//!
//! Layout of a shape's directory (the caller chooses the directory):
//! - `meta`: [`meta::LogMeta`] (storage version, durable offset, snapshot
//!   state and visibility), replaced crash-safely;
//! - `log`: the main log, checksummed record frames ([`codec`]);
//! - `chunks`: the chunk index, one fixed-size entry per closed main-log chunk;
//! - `snapshot/<N>`: snapshot chunk `N`, record frames with offset `0_N`.
//!
//! The writer ([`ShapeLogWriter`]) is owned by one task (the shape's consumer);
//! readers ([`ShapeLogReader`]) are cheap clones shared with request handlers.
//! The crash-consistency contract is in `ARCHITECTURE.md` ("Shape log").

mod codec;
pub mod meta;
mod reader;
mod recover;
mod writer;

#[cfg(test)]
mod tests;

pub use meta::{LogMeta, OuterState, SnapshotState, Visibility};
pub use reader::{ShapeLogReader, Stream};
pub use recover::Trimmed;
pub use writer::ShapeLogWriter;

use crate::env::events::{StorageFailure, StorageFailureKind};
use crate::env::{CrashPoint, Env, join, parent};
use crate::offset::LogOffset;
use std::io;

pub const LOG_FILE: &str = "log";
pub const CHUNKS_FILE: &str = "chunks";
pub const SNAPSHOT_DIR: &str = "snapshot";

/// Tunables, with Electric's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// A chunk (snapshot or main log) closes once its records' JSON reaches this many bytes.
    pub chunk_bytes: u64,
    /// The write buffer is flushed when it holds this many bytes.
    pub buffer_bytes: u64,
    /// Buffered data is flushed at most this long after it was appended.
    pub flush_period_ms: u64,
    /// Planted bugs (the `plants` feature only): `offset_before_fsync`,
    /// `no_trim_on_open`, `no_sync_on_open` apply here.
    #[cfg(feature = "plants")]
    pub plants: crate::plants::Plants,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            chunk_bytes: 10 * 1024 * 1024,
            buffer_bytes: 64 * 1024,
            flush_period_ms: 1000,
            #[cfg(feature = "plants")]
            plants: crate::plants::Plants::default(),
        }
    }
}

/// The kind of a log record, as in Electric's wire `headers.operation` (plus control messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Insert,
    Update,
    Delete,
    Control,
}

impl Operation {
    fn code(self) -> u8 {
        match self {
            Operation::Insert => b'i',
            Operation::Update => b'u',
            Operation::Delete => b'd',
            Operation::Control => b'c',
        }
    }

    fn from_code(code: u8) -> Option<Operation> {
        Some(match code {
            b'i' => Operation::Insert,
            b'u' => Operation::Update,
            b'd' => Operation::Delete,
            b'c' => Operation::Control,
            _ => return None,
        })
    }
}

/// One record of a shape log: its offset, operation, row key and the JSON line
/// served to clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LogEntry {
    pub offset: LogOffset,
    pub operation: Operation,
    pub key: String,
    pub json: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("no shape log in {0} (no metadata file)")]
    Missing(String),
    #[error("shape log in {dir} has storage version {found}, this engine writes {expected}")]
    Incompatible {
        dir: String,
        found: u64,
        expected: u32,
    },
    #[error("shape log in {0} has no complete snapshot")]
    SnapshotIncomplete(String),
    #[error("{0} already exists; a shape log is created in a fresh directory")]
    AlreadyExists(String),
    #[error("shape log corrupt: {0}")]
    Corrupt(String),
    #[error(
        "shape log writer for {0} failed earlier (or a flush was cancelled); it must be reopened"
    )]
    Poisoned(String),
}

impl LogError {
    /// The error as an event carries it.
    pub fn failure(&self) -> StorageFailure {
        let kind = match self {
            LogError::Io { source, .. } => StorageFailureKind::Io(source.kind()),
            LogError::Missing(_) => StorageFailureKind::Missing,
            LogError::Incompatible { .. } => StorageFailureKind::Incompatible,
            LogError::SnapshotIncomplete(_) => StorageFailureKind::SnapshotIncomplete,
            LogError::AlreadyExists(_) => StorageFailureKind::AlreadyExists,
            LogError::Corrupt(_) => StorageFailureKind::Corrupt,
            LogError::Poisoned(_) => StorageFailureKind::Poisoned,
        };
        StorageFailure {
            kind,
            message: self.to_string(),
        }
    }

    fn io(op: &'static str, path: &str) -> impl FnOnce(io::Error) -> LogError {
        let path = path.to_string();
        move |source| LogError::Io { op, path, source }
    }
}

/// Entry points: create a new shape log, open an existing one, remove one.
pub struct ShapeLog;

impl ShapeLog {
    /// Creates the directory layout; the log exists once this returns (its
    /// metadata is durable). The parent of `dir` must already be durable.
    pub async fn create(
        env: &Env,
        dir: &str,
        config: LogConfig,
    ) -> Result<ShapeLogWriter, LogError> {
        let storage = &env.storage;
        // A log is created in a fresh directory only: stale files (an old index,
        // old snapshot chunks) could otherwise resurface after a power loss.
        if storage
            .exists(dir)
            .await
            .map_err(LogError::io("exists", dir))?
        {
            return Err(LogError::AlreadyExists(dir.to_string()));
        }
        let snapshot_dir = join(dir, SNAPSHOT_DIR);
        storage
            .create_dir_all(&snapshot_dir)
            .await
            .map_err(LogError::io("create_dir_all", &snapshot_dir))?;
        for file in [LOG_FILE, CHUNKS_FILE] {
            let path = join(dir, file);
            storage
                .create(&path)
                .await
                .map_err(LogError::io("create", &path))?;
        }
        storage
            .sync_dir(dir)
            .await
            .map_err(LogError::io("sync_dir", dir))?;
        storage
            .sync_dir(parent(dir))
            .await
            .map_err(LogError::io("sync_dir", parent(dir)))?;
        env.crash_point(CrashPoint::CreateBeforeMeta).await;
        // The metadata goes last: its presence means the layout is complete.
        let meta = LogMeta::default();
        meta::write(env, dir, &meta).await?;
        Ok(ShapeLogWriter::new(
            env.clone(),
            dir.to_string(),
            config,
            meta,
            recover::Recovered::empty(),
        ))
    }

    /// Opens a log after a restart: trims everything after the durable offset
    /// and any torn tail. Fails unless the snapshot completed.
    pub async fn open(env: &Env, dir: &str, config: LogConfig) -> Result<ShapeLogWriter, LogError> {
        recover::open(env, dir, config).await
    }

    /// Removes the log and makes the removal durable. Missing is not an error.
    /// The metadata goes first (and durably): a crash half-way through the
    /// removal of the rest then leaves a directory without metadata, which is
    /// not a log ([`LogError::Missing`]), never a log with missing files.
    pub async fn remove(env: &Env, dir: &str) -> Result<(), LogError> {
        let meta_file = join(dir, meta::META_FILE);
        match env.storage.remove(&meta_file).await {
            Ok(()) => {
                env.storage
                    .sync_dir(dir)
                    .await
                    .map_err(LogError::io("sync_dir", dir))?;
                env.crash_point(CrashPoint::RemoveAfterMeta).await;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io("remove", &meta_file)(e)),
        }
        match env.storage.remove_dir_all(dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(LogError::io("remove_dir_all", dir)(e)),
        }
        env.storage
            .sync_dir(parent(dir))
            .await
            .map_err(LogError::io("sync_dir", parent(dir)))
    }
}
