//! Writing a shape log. One writer per shape, owned by one task.
//!
//! Records are appended to an in-memory buffer, grouped into transactions by
//! [`ShapeLogWriter::commit`], and flushed when the buffer reaches
//! `buffer_bytes`, when a chunk closes, when the flush period has passed since
//! the oldest unflushed append, or on request. A flush writes the buffered
//! frames and new chunk-index entries, syncs both files, and only then records
//! the new durable offset in the metadata (see `ARCHITECTURE.md`).
//!
//! Cancelling an operation (dropping its future) is only allowed as part of a
//! kill: the writer marks itself failed while any write is in flight, so a
//! writer whose write failed or was cancelled refuses further work instead of
//! writing frames twice or trusting a failed fsync.

use super::codec::{self, ChunkEntry};
use super::meta::{self, LogMeta, OuterState, SnapshotState, Visibility};
use super::reader::{ShapeLogReader, Shared};
use super::recover::{Recovered, Trimmed};
use super::{CHUNKS_FILE, LOG_FILE, LogConfig, LogEntry, LogError, Operation, SNAPSHOT_DIR};
use crate::env::{CrashPoint, Env, join};
use crate::offset::LogOffset;
use std::sync::{Arc, Mutex, MutexGuard};

/// The main-log chunk being filled.
#[derive(Debug, Clone, Copy)]
pub(super) struct OpenChunk {
    pub first: Option<LogOffset>,
    pub start_pos: u64,
    /// JSON bytes of the records in it: the quantity compared with `chunk_bytes`.
    pub json_bytes: u64,
}

struct SnapshotWriter {
    visibility: Visibility,
    chunk: u64,
    buffer: Vec<u8>,
    json_bytes: u64,
    rows_in_chunk: u64,
    file_created: bool,
}

pub struct ShapeLogWriter {
    env: Env,
    dir: String,
    config: LogConfig,
    shared: Arc<Mutex<Shared>>,
    /// The metadata as last written.
    meta: LogMeta,
    /// Encoded frames not yet written to the log file.
    buffer: Vec<u8>,
    /// Offset of the last frame in `buffer`.
    buffer_last: Option<LogOffset>,
    /// When the oldest byte of `buffer` was appended.
    oldest_unflushed_ms: Option<u64>,
    /// Log file length once `buffer` is written.
    end_pos: u64,
    last_appended: Option<LogOffset>,
    last_committed: Option<LogOffset>,
    flushed_to: Option<LogOffset>,
    /// Records of the transaction being appended.
    txn: Vec<Arc<LogEntry>>,
    open_chunk: OpenChunk,
    /// Chunks closed since the last flush: the flush writes their index entries.
    unindexed: Vec<ChunkEntry>,
    /// Chunks closed after the last commit: published to readers at commit.
    unpublished: Vec<ChunkEntry>,
    snapshot: Option<SnapshotWriter>,
    /// Set while a flush is in flight and left set if it fails or is cancelled.
    failed: bool,
    /// What opening the log trimmed (nothing for a new log).
    trimmed: Trimmed,
    /// A subquery shape's state, and the commit it describes.
    outer: Option<(Option<LogOffset>, OuterState)>,
}

impl ShapeLogWriter {
    pub(super) fn new(
        env: Env,
        dir: String,
        config: LogConfig,
        meta: LogMeta,
        r: Recovered,
    ) -> ShapeLogWriter {
        assert!(
            config.chunk_bytes > 0 && config.buffer_bytes > 0,
            "chunk and buffer sizes must be positive"
        );
        let shared = Shared {
            last_committed: meta.durable_offset,
            flushed_to: meta.durable_offset,
            flushed_len: r.end_pos,
            durable: meta.durable_offset,
            chunks: r.chunks,
            snapshot_closed: match meta.snapshot {
                SnapshotState::Complete { last_chunk, .. } => last_chunk + 1,
                _ => 0,
            },
            snapshot_last: match meta.snapshot {
                SnapshotState::Complete { last_chunk, .. } => Some(last_chunk),
                _ => None,
            },
            ..Shared::default()
        };
        shared.check();
        ShapeLogWriter {
            env,
            dir,
            config,
            shared: Arc::new(Mutex::new(shared)),
            last_appended: meta.durable_offset,
            last_committed: meta.durable_offset,
            flushed_to: meta.durable_offset,
            meta,
            buffer: Vec::new(),
            buffer_last: None,
            oldest_unflushed_ms: None,
            end_pos: r.end_pos,
            txn: Vec::new(),
            open_chunk: r.open_chunk,
            unindexed: Vec::new(),
            unpublished: Vec::new(),
            snapshot: None,
            failed: false,
            trimmed: r.trimmed,
            outer: None,
        }
    }

    /// What opening this log cut from its tail (nothing for a new log).
    pub fn trimmed(&self) -> Trimmed {
        self.trimmed
    }

    pub fn reader(&self) -> ShapeLogReader {
        ShapeLogReader::new(self.env.clone(), self.dir.clone(), self.shared.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().expect("shape log state poisoned")
    }

    fn check_usable(&self) -> Result<(), LogError> {
        if self.failed {
            Err(LogError::Poisoned(self.dir.clone()))
        } else {
            Ok(())
        }
    }

    /// Every mutating operation runs between `begin` and `end`: if it fails or
    /// its future is dropped half-way, the writer stays failed. Retrying after a
    /// partial write or a failed fsync would write frames twice or trust pages
    /// the kernel may have dropped.
    fn begin(&mut self) -> Result<(), LogError> {
        self.check_usable()?;
        self.failed = true;
        Ok(())
    }

    fn end(&mut self) {
        self.failed = false;
    }

    /// The last offset appended (committed or not); appends must go above it.
    pub fn last_appended(&self) -> Option<LogOffset> {
        self.last_appended
    }

    /// `last_persisted_txn_offset`: everything up to here survives any crash.
    pub fn durable_offset(&self) -> Option<LogOffset> {
        self.meta.durable_offset
    }

    pub fn meta(&self) -> &LogMeta {
        &self.meta
    }

    /// A subquery shape's state as of its last commit (or its snapshot):
    /// written with the durable offset once that commit is durable. Set
    /// after every commit of such a shape, before anything else is
    /// appended.
    pub fn set_outer_state(&mut self, state: OuterState) {
        if self.meta.outer.as_ref() != Some(&state) {
            // Written with the next flush, even if no record is pending.
            self.oldest_unflushed_ms
                .get_or_insert_with(|| self.env.clock.now_ms());
        }
        self.outer = Some((self.last_committed, state));
    }

    /// Whether the state set for the last commit is not yet written.
    fn outer_state_dirty(&self) -> bool {
        self.outer
            .as_ref()
            .is_some_and(|(_, state)| self.meta.outer.as_ref() != Some(state))
    }

    /// The state to record with `durable`: the one set for that commit.
    fn outer_state_at(&self, durable: Option<LogOffset>) -> Option<OuterState> {
        let (at, state) = self.outer.as_ref()?;
        assert_eq!(
            *at, durable,
            "the state of a subquery shape ({}) describes its last commit",
            self.dir
        );
        Some(state.clone())
    }

    // ----- snapshot -------------------------------------------------------

    /// Records that the snapshot started, with its visibility (durably).
    pub async fn start_snapshot(&mut self, visibility: Visibility) -> Result<(), LogError> {
        assert_eq!(
            self.meta.snapshot,
            SnapshotState::NotStarted,
            "snapshot started twice"
        );
        self.begin()?;
        let mut meta = self.meta.clone();
        meta.snapshot = SnapshotState::Started {
            visibility: visibility.clone(),
        };
        meta::write(&self.env, &self.dir, &meta).await?;
        self.meta = meta;
        self.snapshot = Some(SnapshotWriter {
            visibility,
            chunk: 0,
            buffer: Vec::new(),
            json_bytes: 0,
            rows_in_chunk: 0,
            file_created: false,
        });
        self.end();
        Ok(())
    }

    fn snapshot_path(&self, chunk: u64) -> String {
        join(&join(&self.dir, SNAPSHOT_DIR), &chunk.to_string())
    }

    /// Appends a snapshot row; closes the chunk once it reaches `chunk_bytes`.
    pub async fn append_snapshot_row(
        &mut self,
        operation: Operation,
        key: String,
        json: String,
    ) -> Result<(), LogError> {
        self.begin()?;
        let snap = self
            .snapshot
            .as_mut()
            .expect("append_snapshot_row before start_snapshot");
        let entry = LogEntry {
            offset: LogOffset::snapshot_chunk(snap.chunk),
            operation,
            key,
            json,
        };
        codec::encode_record(&entry, &mut snap.buffer);
        snap.json_bytes += entry.json.len() as u64;
        snap.rows_in_chunk += 1;
        if snap.json_bytes >= self.config.chunk_bytes {
            self.close_snapshot_chunk().await?;
        } else if snap.buffer.len() as u64 >= self.config.buffer_bytes {
            self.write_snapshot_buffer().await?;
        }
        self.end();
        Ok(())
    }

    async fn write_snapshot_buffer(&mut self) -> Result<(), LogError> {
        let snap = self.snapshot.as_ref().expect("snapshot in progress");
        let path = self.snapshot_path(snap.chunk);
        if !snap.file_created {
            self.env
                .storage
                .create(&path)
                .await
                .map_err(LogError::io("create", &path))?;
        }
        self.env
            .storage
            .append(&path, &snap.buffer)
            .await
            .map_err(LogError::io("append", &path))?;
        let snap = self.snapshot.as_mut().expect("snapshot in progress");
        snap.file_created = true;
        snap.buffer.clear();
        Ok(())
    }

    /// Writes and syncs the current chunk and its directory entry; readers may then read it.
    async fn close_snapshot_chunk(&mut self) -> Result<(), LogError> {
        self.write_snapshot_buffer().await?;
        let chunk = self.snapshot.as_ref().expect("snapshot in progress").chunk;
        let path = self.snapshot_path(chunk);
        let storage = &self.env.storage;
        storage
            .sync(&path)
            .await
            .map_err(LogError::io("sync", &path))?;
        let dir = join(&self.dir, SNAPSHOT_DIR);
        storage
            .sync_dir(&dir)
            .await
            .map_err(LogError::io("sync_dir", &dir))?;
        self.env.crash_point(CrashPoint::SnapshotAfterChunk).await;
        self.lock().snapshot_closed = chunk + 1;
        let snap = self.snapshot.as_mut().expect("snapshot in progress");
        snap.chunk += 1;
        snap.json_bytes = 0;
        snap.rows_in_chunk = 0;
        snap.file_created = false;
        Ok(())
    }

    /// Closes the last chunk and durably marks the snapshot complete. Returns
    /// the number of the last chunk.
    pub async fn finish_snapshot(&mut self) -> Result<u64, LogError> {
        self.begin()?;
        let snap = self
            .snapshot
            .as_ref()
            .expect("finish_snapshot before start_snapshot");
        if snap.rows_in_chunk > 0 || snap.chunk == 0 {
            self.close_snapshot_chunk().await?;
        }
        let snap = self.snapshot.as_ref().expect("snapshot in progress");
        let last_chunk = snap.chunk - 1;
        self.env
            .crash_point(CrashPoint::SnapshotBeforeComplete)
            .await;
        let mut meta = self.meta.clone();
        meta.snapshot = SnapshotState::Complete {
            visibility: snap.visibility.clone(),
            last_chunk,
        };
        if let Some(state) = self.outer_state_at(self.last_committed) {
            meta.outer = Some(state);
        }
        meta::write(&self.env, &self.dir, &meta).await?;
        self.meta = meta;
        self.snapshot = None;
        self.lock().snapshot_last = Some(last_chunk);
        self.end();
        Ok(last_chunk)
    }

    // ----- main log -------------------------------------------------------

    /// Appends a record of the current transaction. Offsets must be real and
    /// strictly increasing: a replayed or reordered record is a caller bug.
    pub async fn append(&mut self, entry: LogEntry) -> Result<(), LogError> {
        self.begin()?;
        assert!(
            entry.offset.is_real(),
            "main-log records need real offsets, got {}",
            entry.offset
        );
        if let Some(last) = self.last_appended {
            assert!(
                entry.offset > last,
                "offset {} appended after {last} in {}: offsets must increase",
                entry.offset,
                self.dir
            );
        }
        let start_pos = self.end_pos;
        codec::encode_record(&entry, &mut self.buffer);
        self.end_pos += codec::record_len(&entry);
        self.buffer_last = Some(entry.offset);
        self.last_appended = Some(entry.offset);
        self.oldest_unflushed_ms
            .get_or_insert_with(|| self.env.clock.now_ms());
        let chunk = &mut self.open_chunk;
        if chunk.first.is_none() {
            chunk.first = Some(entry.offset);
            chunk.start_pos = start_pos;
        }
        chunk.json_bytes += entry.json.len() as u64;
        let offset = entry.offset;
        self.txn.push(Arc::new(entry));
        if self.open_chunk.json_bytes >= self.config.chunk_bytes {
            let closed = ChunkEntry {
                first: self.open_chunk.first.expect("open chunk has a record"),
                last: offset,
                start_pos: self.open_chunk.start_pos,
                end_pos: self.end_pos,
            };
            self.unindexed.push(closed);
            self.unpublished.push(closed);
            self.open_chunk = OpenChunk {
                first: None,
                start_pos: self.end_pos,
                json_bytes: 0,
            };
            self.flush_inner().await?;
        } else if self.buffer.len() as u64 >= self.config.buffer_bytes {
            self.flush_inner().await?;
        }
        self.end();
        Ok(())
    }

    /// The last committed offset (`last_seen_txn_offset`).
    pub fn last_committed(&self) -> Option<LogOffset> {
        self.last_committed
    }

    /// Ends the current transaction: its records become visible to readers.
    /// Returns the transaction's last offset (`None` if it appended nothing).
    pub fn commit(&mut self) -> Result<Option<LogOffset>, LogError> {
        self.check_usable()?;
        if self.last_committed == self.last_appended {
            return Ok(None);
        }
        self.last_committed = self.last_appended;
        let committed = self.last_committed.expect("something was appended");
        // A commit whose records were all flushed mid-transaction still owes a
        // metadata update; start the flush clock for it.
        self.oldest_unflushed_ms
            .get_or_insert_with(|| self.env.clock.now_ms());
        let txn = std::mem::take(&mut self.txn);
        let flushed_to = self.flushed_to;
        let publish: Vec<ChunkEntry> = self.unpublished.drain(..).collect();
        let mut shared = self.lock();
        // Records flushed mid-transaction are already in the file.
        shared.mem.extend(
            txn.into_iter()
                .filter(|e| flushed_to.is_none_or(|f| e.offset > f)),
        );
        shared.last_committed = Some(committed);
        shared.chunks.extend(publish);
        shared.check();
        Ok(Some(committed))
    }

    /// Writes `durable` into the metadata if it changed.
    async fn record_durable(&mut self, durable: Option<LogOffset>) -> Result<(), LogError> {
        if self.meta.durable_offset != durable || self.outer_state_dirty() {
            let mut meta = self.meta.clone();
            meta.durable_offset = durable;
            if let Some(state) = self.outer_state_at(durable) {
                meta.outer = Some(state);
            }
            meta::write(&self.env, &self.dir, &meta).await?;
            self.meta = meta;
        }
        Ok(())
    }

    /// When the buffered data must be flushed by (clock milliseconds), if any.
    pub fn flush_deadline_ms(&self) -> Option<u64> {
        let pending = !self.buffer.is_empty()
            || self.meta.durable_offset != self.last_committed
            || self.outer_state_dirty();
        let oldest = self.oldest_unflushed_ms.filter(|_| pending)?;
        Some(oldest + self.config.flush_period_ms)
    }

    /// Flushes if the flush period has passed since the oldest unflushed append.
    pub async fn flush_if_due(&mut self) -> Result<Option<LogOffset>, LogError> {
        match self.flush_deadline_ms() {
            Some(deadline) if self.env.clock.now_ms() >= deadline => self.flush().await,
            _ => Ok(self.meta.durable_offset),
        }
    }

    /// Writes and syncs everything buffered, then records the last committed
    /// offset as durable. Returns the durable offset.
    pub async fn flush(&mut self) -> Result<Option<LogOffset>, LogError> {
        self.begin()?;
        let durable = self.flush_inner().await?;
        self.end();
        Ok(durable)
    }

    async fn flush_inner(&mut self) -> Result<Option<LogOffset>, LogError> {
        let commit_at_start = self.last_committed;
        if self.buffer.is_empty()
            && self.unindexed.is_empty()
            && self.meta.durable_offset == commit_at_start
            && !self.outer_state_dirty()
        {
            return Ok(commit_at_start);
        }
        let storage = self.env.storage.clone();
        let (log, chunks) = (join(&self.dir, LOG_FILE), join(&self.dir, CHUNKS_FILE));
        if !self.buffer.is_empty() {
            storage
                .append(&log, &self.buffer)
                .await
                .map_err(LogError::io("append", &log))?;
        }
        if !self.unindexed.is_empty() {
            let mut index = Vec::new();
            self.unindexed
                .iter()
                .for_each(|c| codec::encode_chunk(c, &mut index));
            storage
                .append(&chunks, &index)
                .await
                .map_err(LogError::io("append", &chunks))?;
        }
        if crate::planted!(self.config, offset_before_fsync) {
            // Planted bug: the durable offset is recorded before the data is synced.
            self.record_durable(commit_at_start).await?;
        }
        self.env.crash_point(CrashPoint::LogFlushAfterWrite).await;
        let ignore_failed_sync = crate::planted!(self.config, fsync_error_ignored);
        for (dirty, path) in [
            (!self.buffer.is_empty(), &log),
            (!self.unindexed.is_empty(), &chunks),
        ] {
            let synced = if dirty {
                storage.sync(path).await
            } else {
                Ok(())
            };
            if !ignore_failed_sync {
                synced.map_err(LogError::io("sync", path))?;
            }
        }
        self.env.crash_point(CrashPoint::LogFlushAfterSync).await;
        self.record_durable(commit_at_start).await?;
        if let Some(last) = self.buffer_last.take() {
            self.flushed_to = Some(last);
        }
        self.buffer.clear();
        self.unindexed.clear();
        self.oldest_unflushed_ms = None;
        let (flushed_to, end_pos) = (self.flushed_to, self.end_pos);
        let mut shared = self.lock();
        shared.flushed_to = flushed_to;
        shared.flushed_len = end_pos;
        shared.durable = commit_at_start;
        while shared
            .mem
            .front()
            .is_some_and(|e| flushed_to.is_some_and(|f| e.offset <= f))
        {
            shared.mem.pop_front();
        }
        shared.check();
        Ok(commit_at_start)
    }
}
