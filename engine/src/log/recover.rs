//! Opening a shape log after a restart (graceful or not).
//!
//! Recovery rules, in order:
//! 1. no metadata file: not a log ([`LogError::Missing`]); a leftover
//!    `meta.tmp` is removed (a crash hit between writing and renaming it);
//!    the directory is synced, since the metadata read may come from a rename
//!    that the crash left unsynced (found by the crash property test);
//! 2. another storage version: [`LogError::Incompatible`];
//! 3. snapshot not complete: [`LogError::SnapshotIncomplete`] (the caller drops
//!    the shape: only completed snapshots survive a restart);
//! 4. chunk index: entries past the first torn one, or ending after the durable
//!    offset, are cut;
//! 5. main log: scanned from the end of the last kept chunk; everything after
//!    the last record at or below the durable offset is cut, whether it is a
//!    flushed-but-not-durable transaction, a partial transaction or a torn
//!    frame. If the record *at* the durable offset is missing, the contract
//!    (sync before recording the offset) was broken: [`LogError::Corrupt`].

use super::codec::{self, CHUNK_ENTRY_BYTES, ChunkEntry};
use super::meta::{self, META_TMP_FILE, SnapshotState};
use super::writer::{OpenChunk, ShapeLogWriter};
use super::{CHUNKS_FILE, LOG_FILE, LogConfig, LogError, SNAPSHOT_DIR};
use crate::env::{CrashPoint, Env, join};
use crate::offset::LogOffset;

/// What recovery found: the kept chunks and where the log continues.
pub(super) struct Recovered {
    pub chunks: Vec<ChunkEntry>,
    pub open_chunk: OpenChunk,
    pub end_pos: u64,
    /// What the trim cut: bytes of the log and of the chunk index.
    pub trimmed: Trimmed,
}

/// Bytes a reopened log lost to its trim (past the durable offset, torn).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    pub log_bytes: u64,
    pub index_bytes: u64,
}

impl Recovered {
    pub fn empty() -> Recovered {
        Recovered {
            chunks: Vec::new(),
            open_chunk: OpenChunk {
                first: None,
                start_pos: 0,
                json_bytes: 0,
            },
            end_pos: 0,
            trimmed: Trimmed::default(),
        }
    }
}

pub(super) async fn open(
    env: &Env,
    dir: &str,
    config: LogConfig,
) -> Result<ShapeLogWriter, LogError> {
    let storage = &env.storage;
    let tmp = join(dir, META_TMP_FILE);
    if storage
        .exists(&tmp)
        .await
        .map_err(LogError::io("exists", &tmp))?
    {
        storage
            .remove(&tmp)
            .await
            .map_err(LogError::io("remove", &tmp))?;
    }
    let meta = meta::read(env, dir)
        .await?
        .ok_or_else(|| LogError::Missing(dir.to_string()))?;
    // The metadata may come from a rename that a crash left unsynced: make it
    // durable before anything (an acknowledgement) relies on what it says.
    if !crate::planted!(config, no_sync_on_open) {
        storage
            .sync_dir(dir)
            .await
            .map_err(LogError::io("sync_dir", dir))?;
    }
    let SnapshotState::Complete { last_chunk, .. } = meta.snapshot else {
        return Err(LogError::SnapshotIncomplete(dir.to_string()));
    };
    let snapshot_dir = join(dir, SNAPSHOT_DIR);
    let files = storage
        .list(&snapshot_dir)
        .await
        .map_err(LogError::io("list", &snapshot_dir))?;
    for n in 0..=last_chunk {
        if !files.contains(&n.to_string()) {
            return Err(LogError::Corrupt(format!(
                "{snapshot_dir}: complete snapshot lacks chunk {n}"
            )));
        }
    }
    let recovered = trim(
        env,
        dir,
        meta.durable_offset,
        crate::planted!(config, no_trim_on_open),
    )
    .await?;
    env.crash_point(CrashPoint::OpenAfterTrim).await;
    Ok(ShapeLogWriter::new(
        env.clone(),
        dir.to_string(),
        config,
        meta,
        recovered,
    ))
}

/// Cuts the chunk index and the log back to `durable` and returns where the
/// log continues.
async fn trim(
    env: &Env,
    dir: &str,
    durable: Option<LogOffset>,
    keep_tail: bool,
) -> Result<Recovered, LogError> {
    let storage = &env.storage;
    let (log, chunks_path) = (join(dir, LOG_FILE), join(dir, CHUNKS_FILE));
    let corrupt = |why: String| LogError::Corrupt(format!("{log}: {why}"));

    let index = storage
        .read(&chunks_path)
        .await
        .map_err(LogError::io("read", &chunks_path))?;
    let mut chunks = codec::decode_chunks(&index);
    chunks.retain(|c| durable.is_some_and(|d| c.last <= d));
    check_chunks(&chunks).map_err(|why| LogError::Corrupt(format!("{chunks_path}: {why}")))?;
    let kept_index_len = (chunks.len() * CHUNK_ENTRY_BYTES) as u64;

    let log_len = storage
        .size(&log)
        .await
        .map_err(LogError::io("size", &log))?;
    let scan_from = chunks.last().map_or(0, |c| c.end_pos);
    if scan_from > log_len {
        return Err(corrupt(format!(
            "chunk index points to {scan_from}, past the end of the log ({log_len})"
        )));
    }
    let tail = storage
        .read_at(&log, scan_from, log_len - scan_from)
        .await
        .map_err(LogError::io("read", &log))?;
    let decoded = codec::decode_records(&tail, scan_from);

    // Keep the records up to the durable offset; the first one above it (or a
    // bad frame) is where the log is cut.
    let mut open_chunk = OpenChunk {
        first: None,
        start_pos: scan_from,
        json_bytes: 0,
    };
    let mut end_pos = scan_from;
    let mut last_kept = chunks.last().map(|c| c.last);
    for (entry, after_pos) in decoded.records {
        if durable.is_none_or(|d| entry.offset > d) {
            break;
        }
        if last_kept.is_some_and(|last| entry.offset <= last) {
            return Err(corrupt(format!(
                "offset {} follows {} at position {end_pos}",
                entry.offset,
                last_kept.unwrap()
            )));
        }
        open_chunk.first.get_or_insert(entry.offset);
        open_chunk.json_bytes += entry.json.len() as u64;
        last_kept = Some(entry.offset);
        end_pos = after_pos;
    }
    if last_kept != durable {
        let found = last_kept.map_or("nothing".to_string(), |o| o.to_string());
        return Err(corrupt(format!(
            "durable offset is {} but the log ends at {found}",
            durable.expect("some")
        )));
    }

    if keep_tail {
        // Planted bug: the tail past the durable offset stays, and new records
        // are appended after it.
        return Ok(Recovered {
            chunks,
            open_chunk,
            end_pos: log_len,
            trimmed: Trimmed::default(),
        });
    }
    if end_pos < log_len {
        storage
            .truncate(&log, end_pos)
            .await
            .map_err(LogError::io("truncate", &log))?;
        storage
            .sync(&log)
            .await
            .map_err(LogError::io("sync", &log))?;
    }
    if kept_index_len < index.len() as u64 {
        storage
            .truncate(&chunks_path, kept_index_len)
            .await
            .map_err(LogError::io("truncate", &chunks_path))?;
        storage
            .sync(&chunks_path)
            .await
            .map_err(LogError::io("sync", &chunks_path))?;
    }
    Ok(Recovered {
        chunks,
        open_chunk,
        end_pos,
        trimmed: Trimmed {
            log_bytes: log_len - end_pos,
            index_bytes: index.len() as u64 - kept_index_len,
        },
    })
}

/// Checksum-valid index entries must still describe the log: contiguous from
/// position 0, each non-empty, offsets increasing.
fn check_chunks(chunks: &[ChunkEntry]) -> Result<(), String> {
    let mut expected_start = 0;
    let mut previous_last: Option<LogOffset> = None;
    for (i, c) in chunks.iter().enumerate() {
        let ordered = c.first <= c.last && previous_last.is_none_or(|p| p < c.first);
        if c.start_pos != expected_start || c.end_pos <= c.start_pos || !ordered {
            return Err(format!(
                "chunk entry {i} ({}..{} at {}..{}) does not follow its predecessor",
                c.first, c.last, c.start_pos, c.end_pos
            ));
        }
        expected_start = c.end_pos;
        previous_last = Some(c.last);
    }
    Ok(())
}
