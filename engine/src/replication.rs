//! The Postgres-facing boundaries, implemented by the host (the simulator's
//! Postgres model, or a real connection):
//!
//! - [`ReplicationSource`]: a logical replication slot. Streaming starts after
//!   the slot's confirmed LSN; every transaction committed after it is
//!   (re)delivered on each connect, whole and in commit order, with full old
//!   and new rows. [`ReplicationStream::acknowledge`] advances the confirmed LSN.
//! - [`PostgresQueries`]: the catalog, and snapshot queries read at one
//!   consistent snapshot together with that snapshot's visibility.

use crate::schema::{Catalog, Row, TableName, TableSchema};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A commit LSN: the `tx` part of every real offset written for the transaction.
pub type Lsn = u64;
/// A Postgres transaction id.
pub type Xid = u64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Insert {
        table: TableName,
        new: Row,
    },
    Update {
        table: TableName,
        old: Row,
        new: Row,
    },
    Delete {
        table: TableName,
        old: Row,
    },
}

impl Change {
    pub fn table(&self) -> &TableName {
        match self {
            Change::Insert { table, .. }
            | Change::Update { table, .. }
            | Change::Delete { table, .. } => table,
        }
    }
}

/// A committed transaction, as logical replication delivers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub xid: Xid,
    pub commit_lsn: Lsn,
    pub changes: Vec<Change>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationMessage {
    /// A table's current definition; sent before its first change and after a change of schema.
    Relation(TableSchema),
    Transaction(Transaction),
    /// Postgres' primary keepalive from a caught-up walsender: every
    /// transaction committed at or below `wal_end` has been sent. The WAL
    /// moves without transactions (schema changes, checkpoints), so only
    /// this tells the engine that replication has reached a snapshot's
    /// WAL position when no later transaction comes.
    Keepalive {
        wal_end: Lsn,
    },
}

/// A failure talking to Postgres. Always transient from the engine's point of
/// view: it reconnects and the slot replays.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("postgres: {0}")]
pub struct SourceError(pub String);

/// A replication connection, as `IDENTIFY_SYSTEM` + `START_REPLICATION` give it.
pub struct Connection {
    /// The slot's confirmed LSN: the stream replays everything after it.
    pub confirmed_lsn: Lsn,
    /// Postgres' WAL position at connect: every transaction at or below it
    /// exists upstream and will be streamed.
    pub wal_end_lsn: Lsn,
    pub stream: Arc<dyn ReplicationStream>,
}

#[async_trait]
pub trait ReplicationSource: Send + Sync + 'static {
    /// Connects to the slot.
    async fn start(&self) -> Result<Connection, SourceError>;
}

#[async_trait]
pub trait ReplicationStream: Send + Sync + 'static {
    async fn next(&self) -> Result<ReplicationMessage, SourceError>;
    /// Every transaction with a commit LSN at or below `lsn` is durable in the
    /// engine: the slot may forget it. Never called with a smaller LSN than before.
    async fn acknowledge(&self, lsn: Lsn) -> Result<(), SourceError>;
}

/// Which transactions a snapshot already reflects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Visibility {
    pub xmin: Xid,
    pub xmax: Xid,
    /// Transactions in progress when the snapshot was taken.
    pub xip_list: Vec<Xid>,
    /// The WAL position when the snapshot was taken (`pg_current_wal_lsn()`):
    /// every transaction the snapshot reflects committed at or below it.
    #[serde(default)]
    pub wal_lsn: Lsn,
}

impl Visibility {
    /// Whether `xid`'s effects are in the snapshot (Postgres' rule: committed
    /// before it, i.e. below `xmin`, or below `xmax` and not in progress).
    pub fn is_visible(&self, xid: Xid) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.xip_list.contains(&xid))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotQuery {
    pub table: TableName,
    /// The shape's WHERE clause in its canonical SQL text; `None` for all rows.
    pub where_sql: Option<String>,
    /// A subquery shape's dependencies: their values are read in the same
    /// snapshot (the outer consumer's views as of it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<DependencyQuery>,
}

/// `SELECT columns FROM table WHERE where_sql`, for a dependency's values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyQuery {
    pub table: TableName,
    pub columns: Vec<String>,
    pub where_sql: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResult {
    pub visibility: Visibility,
    /// Every column of each matching row, in table order.
    pub rows: Vec<Row>,
    /// Per dependency of the query: the value tuples it selects, in the
    /// same snapshot (duplicates kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<Vec<Row>>,
}

#[async_trait]
pub trait PostgresQueries: Send + Sync + 'static {
    async fn catalog(&self) -> Result<Catalog, SourceError>;
    async fn snapshot(&self, query: SnapshotQuery) -> Result<SnapshotResult, SourceError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_follows_postgres() {
        let v = Visibility {
            xmin: 10,
            xmax: 15,
            xip_list: vec![10, 12],
            wal_lsn: 0,
        };
        assert!(v.is_visible(9), "committed before the snapshot");
        assert!(!v.is_visible(10) && !v.is_visible(12), "in progress");
        assert!(
            v.is_visible(11) && v.is_visible(14),
            "committed between xmin and xmax"
        );
        assert!(
            !v.is_visible(15) && !v.is_visible(99),
            "started after the snapshot"
        );
    }
}
