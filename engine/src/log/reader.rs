//! Reading a shape log: `chunk_end` and `log_stream` with Electric's semantics.
//!
//! Readers see committed records only. Records that are committed but not yet
//! flushed are served from memory (as Electric serves its ETS buffer); the rest
//! come from the log file. The writer moves a record from memory to "on disk"
//! under the same lock that readers take, so a reader's view is always a
//! gap-free, duplicate-free prefix of the committed log.

use super::codec::{self, ChunkEntry};
use super::{LOG_FILE, LogEntry, LogError, SNAPSHOT_DIR};
use crate::env::{Env, join};
use crate::offset::LogOffset;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// State shared between the writer and the readers of one shape log.
///
/// Invariants (checked by [`Shared::check`]):
/// - `mem` holds exactly the committed records above `flushed_to`, in order;
/// - `durable <= last_committed`, and every visible chunk ends at or below `last_committed`;
/// - chunks are contiguous in the file and ordered by offset.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub mem: VecDeque<Arc<LogEntry>>,
    /// `last_seen_txn_offset`: the last offset of the last committed transaction.
    pub last_committed: Option<LogOffset>,
    /// Every record at or below this offset is written to the log file.
    pub flushed_to: Option<LogOffset>,
    /// Bytes of the log file holding the records up to `flushed_to`.
    pub flushed_len: u64,
    /// `last_persisted_txn_offset`.
    pub durable: Option<LogOffset>,
    /// Closed main-log chunks that readers may see.
    pub chunks: Vec<ChunkEntry>,
    /// Snapshot chunks `0..snapshot_closed` are complete and readable.
    pub snapshot_closed: u64,
    /// The last snapshot chunk, once the snapshot is complete.
    pub snapshot_last: Option<u64>,
}

impl Shared {
    pub fn check(&self) {
        let above_flushed = |o: LogOffset| self.flushed_to.is_none_or(|f| o > f);
        assert!(
            self.mem.iter().all(|e| above_flushed(e.offset)),
            "memory holds a flushed record"
        );
        assert!(
            self.mem
                .iter()
                .zip(self.mem.iter().skip(1))
                .all(|(a, b)| a.offset < b.offset),
            "memory out of order"
        );
        if let Some(last) = self.mem.back() {
            assert_eq!(
                Some(last.offset),
                self.last_committed,
                "memory ends below the last commit"
            );
        }
        assert!(
            self.durable <= self.last_committed,
            "durable offset above the last commit"
        );
        assert!(
            self.chunks
                .windows(2)
                .all(|w| w[0].end_pos == w[1].start_pos && w[0].last < w[1].first)
        );
        assert!(
            self.chunks
                .last()
                .is_none_or(|c| Some(c.last) <= self.last_committed),
            "chunk past the commit"
        );
    }
}

/// What a read returns.
#[derive(Debug, PartialEq, Eq)]
pub enum Stream {
    Entries(Vec<Arc<LogEntry>>),
    /// The requested snapshot chunk is not written yet; try again later.
    SnapshotChunkPending(u64),
}

/// A cheap, cloneable read handle on one shape log.
#[derive(Clone)]
pub struct ShapeLogReader {
    env: Env,
    dir: String,
    shared: Arc<Mutex<Shared>>,
}

impl ShapeLogReader {
    pub(super) fn new(env: Env, dir: String, shared: Arc<Mutex<Shared>>) -> ShapeLogReader {
        ShapeLogReader { env, dir, shared }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().expect("shape log state poisoned")
    }

    /// The shape's latest offset: the end of the last committed transaction, or
    /// `0_inf` (the end of the snapshot) while the main log is empty.
    pub fn latest_offset(&self) -> LogOffset {
        self.lock()
            .last_committed
            .unwrap_or(LogOffset::SNAPSHOT_END)
    }

    /// The durable offset (`last_persisted_txn_offset`), if any.
    pub fn durable_offset(&self) -> Option<LogOffset> {
        self.lock().durable
    }

    pub fn snapshot_complete(&self) -> bool {
        self.lock().snapshot_last.is_some()
    }

    /// The end of the chunk that a read starting after `offset` returns, or
    /// `None` when that chunk is still open (the caller then uses
    /// [`ShapeLogReader::latest_offset`]).
    pub fn chunk_end(&self, offset: LogOffset) -> Option<LogOffset> {
        let shared = self.lock();
        if offset == LogOffset::BEFORE_ALL {
            return Some(LogOffset::FIRST);
        }
        if let Some(k) = offset.as_snapshot_chunk() {
            // While the snapshot is written, optimistically the next chunk.
            if let Some(next) = k
                .checked_add(1)
                .filter(|_| shared.snapshot_last.is_none_or(|last| k < last))
            {
                return Some(LogOffset::snapshot_chunk(next));
            }
        }
        let main_offset = offset.max(LogOffset::SNAPSHOT_END);
        let i = shared.chunks.partition_point(|c| c.last <= main_offset);
        shared.chunks.get(i).map(|c| c.last)
    }

    /// The records after `after` (exclusive) up to `up_to` (inclusive). A
    /// snapshot read (`-1`, or `0_k` before the last chunk) returns exactly one
    /// chunk; a main-log read returns the whole range, capped at the last commit.
    pub async fn log_stream(&self, after: LogOffset, up_to: LogOffset) -> Result<Stream, LogError> {
        let snapshot_chunk = {
            let shared = self.lock();
            match after {
                LogOffset::BeforeAll => Some(0),
                _ => after
                    .as_snapshot_chunk()
                    .filter(|&k| shared.snapshot_last.is_none_or(|last| k < last))
                    .and_then(|k| k.checked_add(1)),
            }
        };
        match snapshot_chunk {
            Some(n) => self.snapshot_chunk(n).await,
            None => self
                .main_log(after.max(LogOffset::SNAPSHOT_END), up_to)
                .await
                .map(Stream::Entries),
        }
    }

    async fn snapshot_chunk(&self, n: u64) -> Result<Stream, LogError> {
        if n >= self.lock().snapshot_closed {
            return Ok(Stream::SnapshotChunkPending(n));
        }
        let path = join(&join(&self.dir, SNAPSHOT_DIR), &n.to_string());
        let bytes = self
            .env
            .storage
            .read(&path)
            .await
            .map_err(LogError::io("read", &path))?;
        let decoded = codec::decode_records(&bytes, 0);
        if let Some(why) = decoded.bad_tail {
            return Err(LogError::Corrupt(format!(
                "closed snapshot chunk {path}: {why}"
            )));
        }
        Ok(Stream::Entries(
            decoded
                .records
                .into_iter()
                .map(|(e, _)| Arc::new(e))
                .collect(),
        ))
    }

    async fn main_log(
        &self,
        after: LogOffset,
        up_to: LogOffset,
    ) -> Result<Vec<Arc<LogEntry>>, LogError> {
        // Decide under the lock what comes from memory and what from the file.
        let (from_memory, disk) = {
            let shared = self.lock();
            let Some(bound) = shared.last_committed.map(|c| c.min(up_to)) else {
                return Ok(Vec::new());
            };
            if after >= bound {
                return Ok(Vec::new());
            }
            let from_memory: Vec<_> = shared
                .mem
                .iter()
                .filter(|e| e.offset > after && e.offset <= bound)
                .cloned()
                .collect();
            let disk = match shared.flushed_to {
                Some(flushed) if after < flushed => {
                    let disk_bound = bound.min(flushed);
                    let first = shared.chunks.partition_point(|c| c.last <= after);
                    let start = match shared.chunks.get(first) {
                        Some(c) => c.start_pos,
                        None => shared.chunks.last().map_or(0, |c| c.end_pos),
                    };
                    let last = shared.chunks.partition_point(|c| c.last < disk_bound);
                    let end = shared
                        .chunks
                        .get(last)
                        .map_or(shared.flushed_len, |c| c.end_pos);
                    Some((start, end, disk_bound))
                }
                _ => None,
            };
            (from_memory, disk)
        };
        let mut entries = Vec::new();
        if let Some((start, end, disk_bound)) = disk {
            let path = join(&self.dir, LOG_FILE);
            let bytes = self
                .env
                .storage
                .read_at(&path, start, end - start)
                .await
                .map_err(LogError::io("read", &path))?;
            if bytes.len() as u64 != end - start {
                // The file is shorter than what was flushed: it was cut under us.
                let why = format!("read {} of {} bytes at {start}", bytes.len(), end - start);
                return Err(LogError::Corrupt(format!("flushed range of {path}: {why}")));
            }
            let decoded = codec::decode_records(&bytes, start);
            if let Some(why) = decoded.bad_tail {
                return Err(LogError::Corrupt(format!("flushed range of {path}: {why}")));
            }
            let in_range = decoded
                .records
                .into_iter()
                .map(|(e, _)| e)
                .filter(|e| e.offset > after && e.offset <= disk_bound);
            entries.extend(in_range.map(Arc::new));
        }
        entries.extend(from_memory);
        assert!(
            entries.windows(2).all(|w| w[0].offset < w[1].offset),
            "read out of order"
        );
        Ok(entries)
    }
}
