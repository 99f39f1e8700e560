//! Shape metadata: SQLite (the durable record of which shapes exist) behind an
//! in-memory write buffer, plus a write-through cache for the hot read path.
//!
//! - Writers ([`ShapeDb::add_shape`], [`ShapeDb::mark_snapshot_complete`])
//!   only queue; they wait only when the buffer holds `buffer_limit`
//!   operations (back-pressure, see [`MetaConfig`]). Removals never wait.
//! - [`ShapeDb::flush_batch`] applies up to `batch_ops` queued operations in one
//!   SQLite transaction; the stack calls it every `flush_period_ms`, in a loop
//!   until the buffer is empty, and once more at graceful shutdown.
//! - The cache maps handle -> (hash, snapshot started, last read); it is loaded
//!   from SQLite at boot and updated by every write, so validating a client's
//!   handle never touches SQLite.
//!
//! What a crash loses: the buffered operations. A lost add leaves a shape
//! directory without metadata (removed at boot as an orphan) and a client
//! holding that handle gets 409 with the current handle; a lost snapshot
//! completion makes the shape incomplete (dropped at boot, same 409); a lost
//! removal brings the shape back only if its storage survived intact.

mod buffer;
pub mod sqlite;

#[cfg(test)]
mod tests;

use crate::env::events::MetaChange;
use crate::handle::ShapeHandle;
use buffer::{Lookup, WriteBuffer};
use event_listener::Event;
pub use sqlite::{MetaOp, ShapeRow};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The SQLite connection the host hands to the engine; the host decides where
/// the database lives (a file, or memory that outlives simulated kills).
pub type SqliteConn = Arc<Mutex<rusqlite::Connection>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaConfig {
    /// How often the buffer is flushed (Electric: 100 ms).
    pub flush_period_ms: u64,
    /// Operations applied per SQLite transaction (Electric: 100).
    pub batch_ops: usize,
    /// Queued operations beyond which writers wait for a flush. 10,000 queued
    /// operations is about a second of SQLite work at the measured rate; a
    /// buffer that full means SQLite is falling behind, and waiting is the
    /// honest answer.
    pub buffer_limit: usize,
}

impl Default for MetaConfig {
    fn default() -> MetaConfig {
        MetaConfig {
            flush_period_ms: 100,
            batch_ops: 100,
            buffer_limit: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("shape metadata: {0}")]
pub struct MetaError(#[from] pub rusqlite::Error);

/// The hot-path view of one shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    pub hash: String,
    pub snapshot_started: bool,
    pub last_read_ms: u64,
}

struct State {
    buffer: WriteBuffer,
    cache: BTreeMap<ShapeHandle, CacheEntry>,
}

pub struct ShapeDb {
    conn: SqliteConn,
    config: MetaConfig,
    state: Mutex<State>,
    /// Notified whenever a flush frees room in the buffer.
    room: Event,
}

impl ShapeDb {
    /// Prepares the schema and PRAGMAs; the buffer starts empty.
    pub fn open(conn: SqliteConn, config: MetaConfig) -> Result<ShapeDb, MetaError> {
        sqlite::prepare(&conn.lock().expect("sqlite connection"))?;
        let state = State {
            buffer: WriteBuffer::new(config.buffer_limit),
            cache: BTreeMap::new(),
        };
        Ok(ShapeDb {
            conn,
            config,
            state: Mutex::new(state),
            room: Event::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("metadata state poisoned")
    }

    fn conn(&self) -> MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().expect("sqlite connection poisoned")
    }

    pub fn config(&self) -> MetaConfig {
        self.config
    }

    /// Boot: deletes shapes whose snapshot never completed, loads the cache
    /// from the rest, and returns (valid rows, deleted handles).
    pub fn boot(&self, now_ms: u64) -> Result<(Vec<ShapeRow>, Vec<ShapeHandle>), MetaError> {
        assert!(
            self.lock().buffer.is_empty(),
            "boot runs before anything is buffered"
        );
        let deleted = sqlite::delete_incomplete(&mut self.conn())?;
        let rows = sqlite::list_shapes(&self.conn())?;
        let mut state = self.lock();
        for row in &rows {
            let entry = CacheEntry {
                hash: row.hash.clone(),
                snapshot_started: true,
                last_read_ms: now_ms,
            };
            state.cache.insert(row.handle.clone(), entry);
        }
        Ok((rows, deleted))
    }

    /// Waits while the buffer is full.
    async fn wait_for_room(&self) {
        loop {
            let listener = self.room.listen();
            if !self.lock().buffer.is_full() {
                return;
            }
            listener.await;
        }
    }

    pub async fn add_shape(&self, row: ShapeRow) {
        self.wait_for_room().await;
        let mut state = self.lock();
        let entry = CacheEntry {
            hash: row.hash.clone(),
            snapshot_started: false,
            last_read_ms: 0,
        };
        state.cache.insert(row.handle.clone(), entry);
        state.buffer.add(row);
    }

    /// Never waits: a removal must be recorded at once (before the handle can
    /// be looked up again), and removals are bounded by the number of shapes.
    pub fn remove_shape(&self, handle: &ShapeHandle) {
        let mut state = self.lock();
        state.cache.remove(handle);
        state.buffer.remove(handle);
    }

    /// Memory only, as in Electric: after a restart every surviving shape has
    /// a complete snapshot anyway.
    pub fn mark_snapshot_started(&self, handle: &ShapeHandle) {
        if let Some(entry) = self.lock().cache.get_mut(handle) {
            entry.snapshot_started = true;
        }
    }

    pub async fn mark_snapshot_complete(&self, handle: &ShapeHandle) {
        self.wait_for_room().await;
        self.lock().buffer.snapshot_complete(handle);
    }

    /// The hot path: what the cache knows about a handle.
    pub fn cached(&self, handle: &ShapeHandle) -> Option<CacheEntry> {
        self.lock().cache.get(handle).cloned()
    }

    pub fn touch(&self, handle: &ShapeHandle, now_ms: u64) {
        if let Some(entry) = self.lock().cache.get_mut(handle) {
            entry.last_read_ms = now_ms;
        }
    }

    /// The live handle of the shape with this comparable form: the buffer
    /// first, then SQLite (unless tombstoned).
    pub fn handle_for_comparable(
        &self,
        comparable: &str,
    ) -> Result<Option<ShapeHandle>, MetaError> {
        if let Some(handle) = self.lock().buffer.handle_for_comparable(comparable) {
            return Ok(Some(handle.clone()));
        }
        let found = sqlite::handle_for_comparable(&self.conn(), comparable)?;
        Ok(found.filter(|h| !self.lock().buffer.is_tombstoned(h)))
    }

    /// The stored row of a live handle: the buffer first, then SQLite.
    pub fn shape_for_handle(&self, handle: &ShapeHandle) -> Result<Option<ShapeRow>, MetaError> {
        match self.lock().buffer.shape(handle) {
            Lookup::Buffered(row) => return Ok(Some(row.clone())),
            Lookup::Tombstoned => return Ok(None),
            Lookup::Unknown => {}
        }
        let row = sqlite::shape_for_handle(&self.conn(), handle)?;
        let state = self.lock();
        Ok(row
            .filter(|_| !state.buffer.is_tombstoned(handle))
            .map(|mut row| {
                row.snapshot_complete |= state.buffer.completion_buffered(handle);
                row
            }))
    }

    /// Operations waiting for SQLite.
    pub fn pending(&self) -> usize {
        self.lock().buffer.len()
    }

    /// Applies up to `batch_ops` buffered operations in one SQLite transaction
    /// and returns them (empty: nothing was buffered). Synchronous on purpose:
    /// no kill can land inside the transaction. On an error nothing is
    /// removed from the buffer and the next call retries.
    pub fn flush_batch(&self) -> Result<Vec<MetaChange>, MetaError> {
        let batch = self.lock().buffer.batch(self.config.batch_ops);
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            for op in &batch {
                sqlite::apply(&tx, op)?;
            }
            tx.commit()?;
        }
        self.lock().buffer.applied(batch.len());
        self.room.notify(usize::MAX);
        Ok(batch.iter().map(MetaOp::change).collect())
    }

    /// Flushes until the buffer is empty (graceful shutdown); returns every
    /// operation applied, in order.
    pub fn flush_all(&self) -> Result<Vec<MetaChange>, MetaError> {
        let mut all = Vec::new();
        loop {
            let changes = self.flush_batch()?;
            if changes.is_empty() {
                return Ok(all);
            }
            all.extend(changes);
        }
    }

    /// Rows in SQLite (flushed state): for boot-time orphan cleanup and tests.
    pub fn stored_shapes(&self) -> Result<Vec<ShapeRow>, MetaError> {
        Ok(sqlite::list_shapes(&self.conn())?)
    }

    pub fn stored_count(&self) -> Result<i64, MetaError> {
        Ok(sqlite::shape_count(&self.conn())?)
    }
}
