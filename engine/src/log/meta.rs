//! Per-shape log metadata, written crash-safely: the new contents go to a
//! temporary file, which is synced, renamed over the old file, and then the
//! directory is synced. A reader therefore sees either the old or the new
//! metadata, never a mix, and after the directory sync the new one is durable.
//!
//! File format: `crc32(json): u32 LE | json`.

use super::LogError;
use crate::env::{CrashPoint, Env, join};
use crate::offset::LogOffset;
pub use crate::replication::Visibility;
use serde::{Deserialize, Serialize};

/// Bumped when the on-disk layout changes; a mismatch makes the shape unusable
/// (it is dropped and re-snapshotted).
pub const STORAGE_VERSION: u32 = 1;

pub const META_FILE: &str = "meta";
pub const META_TMP_FILE: &str = "meta.tmp";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SnapshotState {
    NotStarted,
    Started {
        visibility: Visibility,
    },
    /// Every chunk `0..=last_chunk` is durable.
    Complete {
        visibility: Visibility,
        last_chunk: u64,
    },
}

impl SnapshotState {
    /// The WAL position of the snapshot, once it is known (0 before).
    pub fn wal_lsn(&self) -> crate::replication::Lsn {
        match self {
            SnapshotState::NotStarted => 0,
            SnapshotState::Started { visibility } | SnapshotState::Complete { visibility, .. } => {
                visibility.wal_lsn
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogMeta {
    pub version: u32,
    /// `last_persisted_txn_offset`: the last offset of the last transaction
    /// whose every record is synced. `None` until the first such flush.
    pub durable_offset: Option<LogOffset>,
    pub snapshot: SnapshotState,
    /// A subquery shape's own state as of `durable_offset` (as of the
    /// snapshot before the first durable transaction), written in the same
    /// metadata write: the log and the state it was written with can never
    /// be read apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outer: Option<OuterState>,
}

/// What a subquery shape needs, besides its log, to resume after a
/// restart (ARCHITECTURE.md, "Restoring subquery shapes").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OuterState {
    /// Per dependency, in plan order: the value tuples its view holds,
    /// sorted. The log is exactly the shape's rows judged with them.
    pub views: Vec<Vec<Vec<crate::schema::Value>>>,
    /// Per dependency: how far its moves had arrived. The inner shape's
    /// values there are this view plus the moves not yet applied (queued,
    /// or a move-in in flight), which a restore re-derives.
    pub dep_through: Vec<crate::replication::Lsn>,
    /// Per dependency: how far it must vouch before the shape may claim
    /// (what was routed to it before this shape subscribed, and every
    /// transaction processed here that touched its tables).
    pub dep_needed: Vec<crate::replication::Lsn>,
    /// The last transaction processed (applied, skipped, or judged to
    /// write nothing).
    pub processed: crate::replication::Lsn,
    /// The highest cause of the dependency moves the views reflect: a move
    /// is applied as soon as it arrives, possibly before the transaction
    /// that caused it reaches this shape, so the views may be ahead of
    /// `processed`; the shape is consistent again only once it has
    /// processed this far.
    #[serde(default)]
    pub applied_cause: crate::replication::Lsn,
    /// The last claim at or below the durable offset: its log up to the
    /// offset holds its rows as of the LSN.
    pub claim: Option<(LogOffset, crate::replication::Lsn)>,
}

impl Default for LogMeta {
    fn default() -> LogMeta {
        LogMeta {
            version: STORAGE_VERSION,
            durable_offset: None,
            snapshot: SnapshotState::NotStarted,
            outer: None,
        }
    }
}

pub async fn write(env: &Env, dir: &str, meta: &LogMeta) -> Result<(), LogError> {
    let json = serde_json::to_vec(meta).expect("metadata serializes");
    let mut bytes = crc32fast::hash(&json).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    let (tmp, file) = (join(dir, META_TMP_FILE), join(dir, META_FILE));
    let storage = &env.storage;
    storage
        .write(&tmp, &bytes)
        .await
        .map_err(LogError::io("write", &tmp))?;
    storage
        .sync(&tmp)
        .await
        .map_err(LogError::io("sync", &tmp))?;
    env.crash_point(match meta.outer {
        None => CrashPoint::MetaAfterTempWrite,
        Some(_) => CrashPoint::StateAfterTempWrite,
    })
    .await;
    storage
        .rename(&tmp, &file)
        .await
        .map_err(LogError::io("rename", &tmp))?;
    env.crash_point(CrashPoint::MetaAfterRename).await;
    storage
        .sync_dir(dir)
        .await
        .map_err(LogError::io("sync_dir", dir))?;
    Ok(())
}

/// `Ok(None)` when there is no metadata file: the log was never created.
pub async fn read(env: &Env, dir: &str) -> Result<Option<LogMeta>, LogError> {
    let file = join(dir, META_FILE);
    let bytes = match env.storage.read(&file).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io("read", &file)(e)),
    };
    let corrupt = |why: String| LogError::Corrupt(format!("{file}: {why}"));
    if bytes.len() < 4 {
        return Err(corrupt("shorter than its checksum".to_string()));
    }
    let (crc, json) = bytes.split_at(4);
    if crc32fast::hash(json) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt("checksum mismatch".to_string()));
    }
    // Check the version before the layout: a newer layout may have other fields.
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    if version != Some(STORAGE_VERSION.into()) {
        let found = version.unwrap_or(0);
        return Err(LogError::Incompatible {
            dir: dir.to_string(),
            found,
            expected: STORAGE_VERSION,
        });
    }
    let meta: LogMeta = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(meta))
}
