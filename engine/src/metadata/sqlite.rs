//! The SQLite side of shape metadata: schema (Electric's, section 4.2),
//! PRAGMAs, and the statements the write buffer applies.
//!
//! PRAGMAs: `journal_mode=WAL` and `synchronous=FULL`. With both, SQLite syncs
//! the WAL at every COMMIT, so a transaction is durable once COMMIT returns,
//! against a process crash and a power loss alike. The simulator models
//! exactly that: its host keeps the connection outside the killed node, so a
//! committed transaction survives every kill, and the engine never awaits
//! inside a transaction, so a kill cannot leave one half-applied. The query
//! planner stability guarantee is on, so cached statements are never
//! re-prepared for new bindings.

use crate::handle::ShapeHandle;
use crate::shape::ShapeRequest;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

/// Bumped when the schema changes; an older database is rebuilt empty (its
/// shapes are then orphans, removed at boot, and clients refetch).
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE shapes (handle TEXT NOT NULL, shape TEXT NOT NULL, comparable TEXT NOT NULL,
                     hash TEXT NOT NULL, snapshot_complete INTEGER NOT NULL DEFAULT 0) STRICT;
CREATE UNIQUE INDEX shapes_handle_idx ON shapes (handle);
CREATE UNIQUE INDEX shapes_comparable_idx ON shapes (comparable);
CREATE INDEX shapes_comparable_cover_idx ON shapes (comparable, handle);
CREATE INDEX shapes_snapshot_idx ON shapes (snapshot_complete, handle);
CREATE TABLE relations (handle TEXT NOT NULL, oid INTEGER NOT NULL, UNIQUE (handle, oid)) STRICT;
CREATE INDEX relation_oid_idx ON relations (oid, handle);
CREATE TABLE shape_count (id INTEGER PRIMARY KEY, count INTEGER NOT NULL DEFAULT 0) STRICT;
INSERT INTO shape_count (id, count) VALUES (1, 0);
";

/// A row of `shapes` (and its relation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeRow {
    pub handle: ShapeHandle,
    /// The request that recreates the shape against the catalog.
    pub request: ShapeRequest,
    pub comparable: String,
    pub hash: String,
    /// The root table's oid (the `relations` row).
    pub oid: u32,
    pub snapshot_complete: bool,
}

/// One buffered metadata operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaOp {
    Add(ShapeRow),
    Remove(ShapeHandle),
    SnapshotComplete(ShapeHandle),
}

impl MetaOp {
    /// The operation as an event reports it.
    pub fn change(&self) -> crate::env::events::MetaChange {
        use crate::env::events::MetaChange;
        match self {
            MetaOp::Add(row) => MetaChange::Added(row.handle.clone()),
            MetaOp::Remove(handle) => MetaChange::Removed(handle.clone()),
            MetaOp::SnapshotComplete(handle) => MetaChange::SnapshotCompleted(handle.clone()),
        }
    }
}

/// Sets the PRAGMAs and creates (or rebuilds) the schema.
pub fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    // The query planner stability guarantee: plans do not depend on bound
    // values. Without it, this build's SQLite (STAT4) expires the lookup
    // by handle at every new binding (the JOIN propagates the bound
    // handle) and re-prepares it on every call.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version != SCHEMA_VERSION {
        conn.execute_batch("DROP TABLE IF EXISTS shapes; DROP TABLE IF EXISTS relations; DROP TABLE IF EXISTS shape_count;")?;
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    Ok(())
}

/// Runs a statement through the connection's statement cache (the same few
/// statements run for every buffered operation).
fn exec(tx: &Transaction<'_>, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

pub fn apply(tx: &Transaction<'_>, op: &MetaOp) -> rusqlite::Result<()> {
    match op {
        MetaOp::Add(row) => {
            let request = serde_json::to_string(&row.request).expect("requests serialize");
            exec(
                tx,
                "INSERT INTO shapes (handle, shape, comparable, hash, snapshot_complete) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    row.handle.as_str(),
                    request,
                    row.comparable,
                    row.hash,
                    row.snapshot_complete
                ],
            )?;
            exec(
                tx,
                "INSERT INTO relations (handle, oid) VALUES (?1, ?2)",
                params![row.handle.as_str(), row.oid],
            )?;
            exec(
                tx,
                "UPDATE shape_count SET count = count + 1 WHERE id = 1",
                [],
            )?;
        }
        MetaOp::Remove(handle) => {
            let deleted = exec(
                tx,
                "DELETE FROM shapes WHERE handle = ?1",
                [handle.as_str()],
            )?;
            exec(
                tx,
                "DELETE FROM relations WHERE handle = ?1",
                [handle.as_str()],
            )?;
            if deleted > 0 {
                exec(
                    tx,
                    "UPDATE shape_count SET count = count - 1 WHERE id = 1",
                    [],
                )?;
            }
        }
        MetaOp::SnapshotComplete(handle) => {
            exec(
                tx,
                "UPDATE shapes SET snapshot_complete = 1 WHERE handle = ?1",
                [handle.as_str()],
            )?;
        }
    }
    Ok(())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ShapeRow> {
    let handle: String = r.get(0)?;
    let request: String = r.get(1)?;
    let bad = |why: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, why.into())
    };
    Ok(ShapeRow {
        handle: ShapeHandle::parse(&handle).map_err(bad)?,
        request: serde_json::from_str(&request).map_err(|e| bad(e.to_string()))?,
        comparable: r.get(2)?,
        hash: r.get(3)?,
        oid: r.get(4)?,
        snapshot_complete: r.get(5)?,
    })
}

const SELECT_ROW: &str =
    "SELECT s.handle, s.shape, s.comparable, s.hash, r.oid, s.snapshot_complete
                          FROM shapes s JOIN relations r ON r.handle = s.handle";

pub fn handle_for_comparable(
    conn: &Connection,
    comparable: &str,
) -> rusqlite::Result<Option<ShapeHandle>> {
    let handle: Option<String> = conn
        .prepare_cached("SELECT handle FROM shapes WHERE comparable = ?1")?
        .query_row([comparable], |r| r.get(0))
        .optional()?;
    Ok(handle.map(|h| ShapeHandle::parse(&h).expect("stored handles are well-formed")))
}

pub fn shape_for_handle(
    conn: &Connection,
    handle: &ShapeHandle,
) -> rusqlite::Result<Option<ShapeRow>> {
    conn.prepare_cached(&format!("{SELECT_ROW} WHERE s.handle = ?1"))?
        .query_row([handle.as_str()], row)
        .optional()
}

pub fn list_shapes(conn: &Connection) -> rusqlite::Result<Vec<ShapeRow>> {
    conn.prepare_cached(&format!("{SELECT_ROW} ORDER BY s.handle"))?
        .query_map([], row)?
        .collect()
}

/// Deletes every shape whose snapshot never completed; returns their handles.
pub fn delete_incomplete(conn: &mut Connection) -> rusqlite::Result<Vec<ShapeHandle>> {
    let tx = conn.transaction()?;
    let handles: Vec<String> = tx
        .prepare("SELECT handle FROM shapes WHERE snapshot_complete = 0 ORDER BY handle")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let handles: Vec<ShapeHandle> = handles
        .iter()
        .map(|h| ShapeHandle::parse(h).expect("stored handles are well-formed"))
        .collect();
    for handle in &handles {
        apply(&tx, &MetaOp::Remove(handle.clone()))?;
    }
    tx.commit()?;
    Ok(handles)
}

pub fn shape_count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT count FROM shape_count WHERE id = 1", [], |r| {
        r.get(0)
    })
}
