//! A Postgres model: tables with primary keys, transactions with xids and
//! commit LSNs, snapshot visibility, and a logical replication slot whose
//! confirmed LSN outlives every engine restart and which replays every
//! transaction after it on each connect.
//!
//! A transaction takes its xid at BEGIN ([`PgModel::begin`]) and may stay
//! open while others begin and commit, so xid order is not commit order,
//! and a snapshot taken meanwhile lists it as in progress (as PostgreSQL's
//! `pg_current_snapshot()` does: `xmax` one past the latest completed xid,
//! `xip_list` the open ones below it, `xmin` the oldest of those or xmax). It may also abort:
//! its xid was in progress for a while and never reaches the WAL. Its
//! statements are applied at commit, under the model's one lock: what READ
//! COMMITTED gives these single-row statements, which see the latest
//! committed row once they hold its lock. Snapshot queries evaluate the WHERE
//! clause with the oracle's evaluator, never the engine's.
//!
//! The model keeps every committed transaction (by LSN) for the checker, which
//! follows each shape's rows as of every LSN from them.
//!
//! The slot's side of the replication contract is checked, not assumed: an
//! acknowledgement below the confirmed LSN or past what was sent is an
//! [`ContractViolation`] (the engine broke the boundary), reported by the
//! harness as `engine-contract`.

use crate::oracle::where_eval::{self, Bound};
use async_trait::async_trait;
use engine::replication::{
    Change, Connection, Lsn, PostgresQueries, ReplicationMessage, ReplicationSource,
    ReplicationStream, SnapshotQuery, SnapshotResult, SourceError, Transaction, Visibility, Xid,
};
use engine::schema::{Catalog, Row, TableName, TableSchema, Value};
use event_listener::Event;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

/// The WAL position at which the slot was created: the initial rows are
/// below it, every transaction the harness commits is above it.
const SLOT_CREATED_LSN: Lsn = 1_000;

/// One message of a replication connection.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StreamItem {
    /// A table definition from the dump sent at connect.
    Relation(TableSchema),
    /// A WAL entry (transaction or schema change) and its LSN.
    Wal(Lsn, ReplicationMessage),
    /// A keepalive: the WAL's end, once everything up to it is sent and
    /// the last entry sent was not a transaction.
    Keepalive(Lsn),
}

/// One statement of a transaction, already resolved to a row.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mutation {
    /// `INSERT ... ON CONFLICT DO NOTHING`.
    Insert {
        table: TableName,
        row: Row,
    },
    /// `UPDATE table SET col = value, ... WHERE pk = ...` (may change the key).
    Update {
        table: TableName,
        pk: Vec<Value>,
        set: Vec<(String, Value)>,
    },
    Delete {
        table: TableName,
        pk: Vec<Value>,
    },
}

type TableRows = BTreeMap<Vec<Value>, Row>;

/// How long a silent replication connection keeps the slot (Postgres'
/// `wal_sender_timeout`, shortened like the engine's own silence detection).
pub const WAL_SENDER_TIMEOUT_MS: u64 = 10_000;

/// The slot is held by this other connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotBusy(pub u64);

/// The engine broke the slot's side of the replication contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContractViolation(pub String);

struct State {
    catalog: Catalog,
    /// The catalog when the slot was created (the WAL's relation messages
    /// change it from there).
    initial_catalog: Catalog,
    tables: BTreeMap<TableName, TableRows>,
    next_xid: Xid,
    /// Transactions begun and neither committed nor aborted.
    in_progress: std::collections::BTreeSet<Xid>,
    /// The highest xid that committed or aborted (PostgreSQL's
    /// `latestCompletedXid`): a snapshot's xmax is one past it.
    latest_completed: Xid,
    last_lsn: Lsn,
    /// Every committed transaction and schema change, by LSN.
    wal: Vec<(Lsn, ReplicationMessage)>,
    slot_confirmed: Lsn,
    /// The highest commit LSN the engine has proven it received (it asked
    /// for what follows).
    delivered: Lsn,
    /// The highest WAL LSN sent to a replication connection.
    sent: Lsn,
    /// Replication connections so far; acknowledgements carry theirs.
    connections: u64,
    /// The connection and sequence number of the last acknowledgement applied.
    last_ack: Option<(u64, u64)>,
    /// The connection holding the slot: its number, its client (an engine
    /// instance's address) and when it was last heard from.
    holder: Option<(u64, String, u64)>,
    /// Tables whose definition changed after the slot was created.
    altered: Vec<TableName>,
    /// WHERE clauses already parsed by the oracle's evaluator.
    parsed: BTreeMap<String, Arc<sqlparser::ast::Expr>>,
}

#[derive(Clone)]
pub struct PgModel {
    state: Arc<Mutex<State>>,
    committed: Arc<Event>,
}

impl PgModel {
    /// A database with `catalog`'s tables, empty, and a slot created now.
    pub fn new(catalog: Catalog) -> PgModel {
        let tables = catalog
            .tables()
            .map(|t| (t.name.clone(), BTreeMap::new()))
            .collect();
        let state = State {
            initial_catalog: catalog.clone(),
            catalog,
            tables,
            next_xid: 500,
            in_progress: Default::default(),
            latest_completed: 499,
            last_lsn: SLOT_CREATED_LSN,
            wal: Vec::new(),
            slot_confirmed: SLOT_CREATED_LSN,
            parsed: BTreeMap::new(),
            delivered: 0,
            sent: 0,
            connections: 0,
            last_ack: None,
            holder: None,
            altered: Vec::new(),
        };
        PgModel {
            state: Arc::new(Mutex::new(state)),
            committed: Arc::new(Event::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("pg model poisoned")
    }

    /// Seed rows that exist before the slot (never replicated, only snapshotted).
    pub fn load(&self, table: &TableName, rows: Vec<Row>) {
        let mut state = self.lock();
        let schema = state
            .catalog
            .table(table)
            .expect("seeded table exists")
            .clone();
        assert!(
            state.wal.is_empty(),
            "seed rows exist before the slot: load them before any commit"
        );
        let data = state.tables.get_mut(table).expect("table");
        for row in rows {
            schema.check_row(&row).expect("seed rows fit the schema");
            data.insert(pk(&schema, &row), row);
        }
    }

    /// Runs one transaction from BEGIN to COMMIT.
    pub fn commit(&self, mutations: &[Mutation]) -> Option<Transaction> {
        let xid = self.begin();
        self.commit_as(xid, mutations)
    }

    /// BEGIN: a new transaction's xid, in progress until it commits or aborts.
    pub fn begin(&self) -> Xid {
        let mut state = self.lock();
        let xid = state.next_xid;
        state.next_xid += 1;
        assert!(state.in_progress.insert(xid), "xids are never reused");
        xid
    }

    /// ROLLBACK of transaction `xid`: nothing of it reaches a table or the WAL.
    pub fn abort(&self, xid: Xid) {
        let mut state = self.lock();
        let ended = state.in_progress.remove(&xid);
        assert!(ended, "only a transaction in progress aborts");
        state.latest_completed = state.latest_completed.max(xid);
    }

    /// COMMIT of transaction `xid`, its statements applied now. Statements
    /// that match nothing change nothing (as in SQL); a transaction with no
    /// change commits nothing to the WAL.
    pub fn commit_as(&self, xid: Xid, mutations: &[Mutation]) -> Option<Transaction> {
        let mut state = self.lock();
        assert!(
            state.in_progress.remove(&xid),
            "only a transaction in progress commits"
        );
        state.latest_completed = state.latest_completed.max(xid);
        let mut changes = Vec::new();
        for mutation in mutations {
            if let Some(change) = state.apply(mutation) {
                changes.push(change);
            }
        }
        if changes.is_empty() {
            return None;
        }
        state.last_lsn += 8 + changes.len() as u64;
        let txn = Transaction {
            xid,
            commit_lsn: state.last_lsn,
            changes,
        };
        state
            .wal
            .push((txn.commit_lsn, ReplicationMessage::Transaction(txn.clone())));
        drop(state);
        self.committed.notify(usize::MAX);
        Some(txn)
    }

    /// `ALTER TABLE table ADD COLUMN column text` (NULL in existing rows):
    /// a relation message in the WAL, as logical replication sends one; its LSN.
    pub fn add_column(&self, table: &TableName, column: &str) -> Lsn {
        let mut state = self.lock();
        let mut schema = state.catalog.table(table).expect("table").clone();
        assert!(
            schema.column_index(column).is_none(),
            "{table} has a column {column} already"
        );
        schema.columns.push(engine::schema::Column {
            name: column.to_string(),
            ty: engine::schema::ColumnType::Text,
            not_null: false,
        });
        state.catalog.upsert(schema.clone());
        let rows = state.tables.get_mut(table).expect("table");
        for row in rows.values_mut() {
            row.push(Value::Null);
        }
        state.altered.push(table.clone());
        state.last_lsn += 1;
        let lsn = state.last_lsn;
        state.wal.push((lsn, ReplicationMessage::Relation(schema)));

        drop(state);
        self.committed.notify(usize::MAX);
        lsn
    }

    pub fn table(&self, name: &TableName) -> TableSchema {
        self.lock().catalog.table(name).expect("table").clone()
    }

    pub fn catalog(&self) -> Catalog {
        self.lock().catalog.clone()
    }

    /// Tables whose definition changed since the slot was created.
    pub fn altered_tables(&self) -> Vec<TableName> {
        self.lock().altered.clone()
    }

    /// Every row of `table`, in key order.
    pub fn rows(&self, table: &TableName) -> Vec<Row> {
        self.lock().tables[table].values().cloned().collect()
    }

    /// Whether `filter` is TRUE for each of `rows` (rows of `table`), its
    /// subqueries read from the committed rows of their tables (each
    /// subquery computed once for all of them).
    pub fn rows_hold<'r>(
        &self,
        filter: &Bound,
        rows: impl IntoIterator<Item = &'r [Value]>,
    ) -> Vec<bool> {
        let state = self.lock();
        let committed = state.committed();
        rows.into_iter()
            .map(|row| filter.holds_in(row, &committed))
            .collect()
    }

    /// `filter` bound to `table`'s columns as they are now, its subqueries
    /// to theirs.
    pub fn bind(&self, table: &TableName, filter: &sqlparser::ast::Expr) -> Bound {
        self.lock().bind(table, filter)
    }

    /// Calls `each` with every committed row of `table` (in key order) for
    /// which `filter` (if any) is TRUE, its subqueries read from the
    /// committed rows of their tables, without copying the rows; the model
    /// is locked meanwhile, so `each` must not call back into it.
    pub fn each_row_where(
        &self,
        table: &TableName,
        filter: Option<&Bound>,
        each: impl FnMut(&[Value]),
    ) {
        self.lock().each_matching(table, filter, each);
    }

    /// A snapshot query: rows and visibility read under one lock, so that no
    /// commit can fall between them.
    pub fn snapshot_now(&self, query: &SnapshotQuery) -> SnapshotResult {
        let mut state = self.lock();
        // PostgreSQL's GetSnapshotData: xmax is one past the latest
        // completed xid, not the next to be assigned; transactions at or
        // past it are invisible without being listed (checked against
        // PostgreSQL by the reality crate's model comparison).
        let xmax = state.latest_completed + 1;
        let xip_list: Vec<Xid> = state.in_progress.range(..xmax).copied().collect();
        let xmin = xip_list.first().copied().unwrap_or(xmax);
        let rows = state.query(&query.table, query.where_sql.as_deref());
        let views = query
            .dependencies
            .iter()
            .map(|d| state.project(d))
            .collect();
        SnapshotResult {
            visibility: Visibility {
                xmin,
                xmax,
                xip_list,
                // `pg_current_wal_lsn()`: a schema change moves it without
                // a transaction; keepalives tell the engine it was reached.
                wal_lsn: state.last_lsn,
            },
            rows,
            views,
        }
    }

    /// `SELECT * FROM table WHERE where_sql`, with the oracle's evaluator.
    pub fn query(&self, table: &TableName, where_sql: Option<&str>) -> Vec<Row> {
        self.lock().query(table, where_sql)
    }

    /// The committed transaction with this commit LSN, if there is one.
    pub fn transaction(&self, lsn: Lsn) -> Option<Transaction> {
        self.with_transaction(lsn, Transaction::clone)
    }

    /// `read` of the committed transaction with this commit LSN, if there
    /// is one (without copying it).
    pub fn with_transaction<T>(&self, lsn: Lsn, read: impl FnOnce(&Transaction) -> T) -> Option<T> {
        let state = self.lock();
        let i = state.wal.partition_point(|(l, _)| *l < lsn);
        match state.wal.get(i) {
            Some((l, ReplicationMessage::Transaction(txn))) if *l == lsn => Some(read(txn)),
            _ => None,
        }
    }

    /// The commit LSN of the last transaction (not schema change), if any.
    pub fn last_txn_lsn(&self) -> Option<Lsn> {
        self.lock().last_txn_lsn()
    }

    /// The commit LSN of the last transaction at or below `lsn`, if any.
    pub fn last_txn_at_or_below(&self, lsn: Lsn) -> Option<Lsn> {
        let state = self.lock();
        let end = state.wal.partition_point(|(l, _)| *l <= lsn);
        state.wal[..end]
            .iter()
            .rev()
            .find_map(|(lsn, m)| matches!(m, ReplicationMessage::Transaction(_)).then_some(*lsn))
    }

    /// What a replication connection at `cursor` sends next: the
    /// `relations_seen`-th table definition (sent at every connect; as of
    /// `after`, as pgoutput describes a relation by the historic catalog of
    /// the WAL it decodes), then the first WAL entry after `after`, then a
    /// keepalive if the WAL's end is past the last transaction or keepalive
    /// sent. `None` when there is nothing yet.
    pub fn message_after(&self, cursor: &StreamCursor) -> Option<StreamItem> {
        let (after, relations_seen) = (cursor.after, cursor.relations_seen);
        let mut state = self.lock();
        let historic = (!state.altered.is_empty()).then(|| state.catalog_at(after));
        let catalog = historic.as_ref().unwrap_or(&state.catalog);
        if let Some(table) = catalog.tables().nth(relations_seen) {
            return Some(StreamItem::Relation(table.clone()));
        }
        let next = state.wal.partition_point(|(lsn, _)| *lsn <= after);
        let item = state
            .wal
            .get(next)
            .map(|(lsn, message)| StreamItem::Wal(*lsn, message.clone()));
        if let Some(StreamItem::Wal(lsn, _)) = &item {
            state.sent = state.sent.max(*lsn);
        }
        if item.is_none() && after > cursor.told {
            return Some(StreamItem::Keepalive(after));
        }
        item
    }

    /// A new replication connection from `client` at `now_ms`: its number
    /// (acknowledgements name it), the slot's confirmed LSN and the WAL's
    /// end. Refused while another client's connection holds the slot:
    /// Postgres lets one walsender use a slot, and lets it go when the
    /// connection closes ([`PgModel::release_slot`]; a client that connects
    /// again has closed its previous connection, even one whose answer it
    /// never received) or has been silent for [`WAL_SENDER_TIMEOUT_MS`].
    pub fn connect(&self, client: &str, now_ms: u64) -> Result<(u64, Lsn, Lsn), SlotBusy> {
        let mut state = self.lock();
        if let Some((holder, holder_client, seen_ms)) = &state.holder
            && holder_client != client
            && now_ms.saturating_sub(*seen_ms) < WAL_SENDER_TIMEOUT_MS
        {
            return Err(SlotBusy(*holder));
        }
        state.connections += 1;
        state.holder = Some((state.connections, client.to_string(), now_ms));
        Ok((state.connections, state.slot_confirmed, state.last_lsn))
    }

    /// Connection `connection` was heard from at `now_ms`.
    pub fn touch(&self, connection: u64, now_ms: u64) {
        let mut state = self.lock();
        if let Some((holder, _, seen_ms)) = &mut state.holder
            && *holder == connection
        {
            *seen_ms = now_ms;
        }
    }

    /// The process holding the slot died: its connection closed.
    pub fn release_slot(&self) {
        self.lock().holder = None;
    }

    /// Notified at every commit and schema change.
    pub fn commits(&self) -> event_listener::EventListener {
        self.committed.listen()
    }

    /// The slot's side of an acknowledgement: the `seq`-th sent on
    /// connection `connection`. One from an older connection is ignored (its
    /// walsender is gone, as in Postgres), and so is one overtaken in the
    /// network by a later one (TCP would have delivered it first; the later
    /// one supersedes it). The engine may never acknowledge below the
    /// confirmed LSN nor past what the slot has sent.
    pub fn acknowledge(
        &self,
        connection: u64,
        seq: u64,
        lsn: Lsn,
    ) -> Result<(), ContractViolation> {
        let mut state = self.lock();
        if connection != state.connections
            || state
                .last_ack
                .is_some_and(|(c, s)| c == connection && s > seq)
        {
            return Ok(());
        }
        state.last_ack = Some((connection, seq));
        if lsn < state.slot_confirmed {
            return Err(ContractViolation(format!(
                "acknowledged lsn {lsn}, below the slot's confirmed lsn {} (backwards)",
                state.slot_confirmed
            )));
        }
        if lsn > state.sent.max(state.slot_confirmed) {
            return Err(ContractViolation(format!(
                "acknowledged lsn {lsn}, past everything sent ({})",
                state.sent
            )));
        }
        state.slot_confirmed = lsn;
        Ok(())
    }

    /// The engine has received everything up to `lsn` (it asked for what follows).
    pub fn note_delivered(&self, lsn: Lsn) {
        let mut state = self.lock();
        state.delivered = state.delivered.max(lsn);
    }

    /// Whether the engine has received every committed transaction.
    pub fn all_delivered(&self) -> bool {
        let state = self.lock();
        let last_txn =
            state.wal.iter().rev().find_map(|(lsn, m)| {
                matches!(m, ReplicationMessage::Transaction(_)).then_some(*lsn)
            });
        last_txn.is_none_or(|lsn| state.delivered >= lsn)
    }

    pub fn slot_confirmed(&self) -> Lsn {
        self.lock().slot_confirmed
    }

    pub fn last_lsn(&self) -> Lsn {
        self.lock().last_lsn
    }
}

/// The committed rows, as the oracle's subqueries read them.
struct Committed<'a> {
    catalog: &'a Catalog,
    tables: &'a BTreeMap<TableName, TableRows>,
    /// Subquery results, for the one query it serves, by the address of
    /// the subquery's bound node (the bound clause outlives the query).
    selected: RefCell<BTreeMap<usize, Rc<Vec<Vec<Value>>>>>,
}

impl where_eval::Tables for Committed<'_> {
    fn selected(&self, key: usize, compute: &dyn Fn() -> Vec<Vec<Value>>) -> Rc<Vec<Vec<Value>>> {
        if let Some(found) = self.selected.borrow().get(&key) {
            return found.clone();
        }
        let tuples = Rc::new(compute());
        self.selected.borrow_mut().insert(key, tuples.clone());
        tuples
    }

    fn rows(&self, schema: &str, table: &str) -> where_eval::TableRows<'_> {
        let name = TableName {
            schema: schema.to_string(),
            name: table.to_string(),
        };
        let definition = self
            .catalog
            .table(&name)
            .unwrap_or_else(|| panic!("oracle: a subquery on unknown table {name}"));
        where_eval::TableRows {
            columns: definition.columns.iter().map(|c| c.name.as_str()).collect(),
            rows: self.tables[&name].values().map(Vec::as_slice).collect(),
        }
    }
}

fn pk(schema: &TableSchema, row: &[Value]) -> Vec<Value> {
    schema.primary_key.iter().map(|&i| row[i].clone()).collect()
}

impl State {
    /// The catalog as of `lsn`: the initial one and every relation message
    /// at or below it.
    fn catalog_at(&self, lsn: Lsn) -> Catalog {
        let mut catalog = self.initial_catalog.clone();
        let end = self.wal.partition_point(|(l, _)| *l <= lsn);
        for (_, message) in &self.wal[..end] {
            if let ReplicationMessage::Relation(table) = message {
                catalog.upsert(table.clone());
            }
        }
        catalog
    }

    fn last_txn_lsn(&self) -> Option<Lsn> {
        self.wal
            .iter()
            .rev()
            .find_map(|(lsn, m)| matches!(m, ReplicationMessage::Transaction(_)).then_some(*lsn))
    }

    fn filter(&mut self, where_sql: Option<&str>) -> Option<Arc<sqlparser::ast::Expr>> {
        let sql = where_sql?;
        if let Some(parsed) = self.parsed.get(sql) {
            return Some(parsed.clone());
        }
        let parsed =
            Arc::new(where_eval::parse(sql).expect("the oracle parses every WHERE it is given"));
        self.parsed.insert(sql.to_string(), parsed.clone());
        Some(parsed)
    }

    /// A dependency's value tuples: its columns of the rows its WHERE selects.
    fn project(&mut self, dependency: &engine::replication::DependencyQuery) -> Vec<Row> {
        let schema = self
            .catalog
            .table(&dependency.table)
            .expect("table")
            .clone();
        let columns: Vec<usize> = dependency
            .columns
            .iter()
            .map(|c| schema.column_index(c).expect("a dependency's column"))
            .collect();
        let filter = self.filter(dependency.where_sql.as_deref());
        let filter = filter.map(|f| self.bind(&dependency.table, &f));
        let mut tuples = Vec::new();
        self.each_matching(&dependency.table, filter.as_ref(), |row| {
            tuples.push(columns.iter().map(|&i| row[i].clone()).collect());
        });
        tuples
    }

    fn query(&mut self, table: &TableName, where_sql: Option<&str>) -> Vec<Row> {
        let filter = self.filter(where_sql);
        let filter = filter.map(|f| self.bind(table, &f));
        self.rows_matching(table, filter.as_ref())
    }

    /// `filter` bound to `table`'s columns, its subqueries to theirs.
    fn bind(&self, table: &TableName, filter: &sqlparser::ast::Expr) -> Bound {
        let columns_of = |schema: &str, name: &str| -> Vec<String> {
            let name = TableName {
                schema: schema.to_string(),
                name: name.to_string(),
            };
            let definition = self.catalog.table(&name);
            let definition =
                definition.unwrap_or_else(|| panic!("oracle: a subquery on unknown table {name}"));
            definition.columns.iter().map(|c| c.name.clone()).collect()
        };
        let own = columns_of(&table.schema, &table.name);
        let own: Vec<&str> = own.iter().map(String::as_str).collect();
        Bound::new(filter, &own, &columns_of)
    }

    /// The committed rows as one query's subqueries read them (their
    /// results remembered for that query only).
    fn committed(&self) -> Committed<'_> {
        Committed {
            catalog: &self.catalog,
            tables: &self.tables,
            selected: RefCell::default(),
        }
    }

    /// The committed rows of `table` for which `filter` (if any) is TRUE.
    fn rows_matching(&self, table: &TableName, filter: Option<&Bound>) -> Vec<Row> {
        let mut rows = Vec::new();
        self.each_matching(table, filter, |row| rows.push(row.to_vec()));
        rows
    }

    /// [`PgModel::each_row_where`], under the lock.
    fn each_matching(
        &self,
        table: &TableName,
        filter: Option<&Bound>,
        mut each: impl FnMut(&[Value]),
    ) {
        let committed = self.committed();
        for row in self.tables[table].values() {
            if filter.is_none_or(|f| f.holds_in(row, &committed)) {
                each(row);
            }
        }
    }

    fn apply(&mut self, mutation: &Mutation) -> Option<Change> {
        match mutation {
            Mutation::Insert { table, row } => {
                let schema = self.catalog.table(table).expect("table").clone();
                // Columns added after the statement was written default to NULL.
                let mut row = row.clone();
                row.resize(schema.columns.len(), Value::Null);
                let row = &row;
                schema.check_row(row).expect("inserted rows fit the schema");
                let data = self.tables.get_mut(table).expect("table");
                let key = pk(&schema, row);
                if data.contains_key(&key) {
                    return None; // ON CONFLICT DO NOTHING
                }
                data.insert(key, row.clone());
                Some(Change::Insert {
                    table: table.clone(),
                    new: row.clone(),
                })
            }
            Mutation::Update {
                table,
                pk: key,
                set,
            } => {
                let schema = self.catalog.table(table).expect("table").clone();
                let old = self.tables[table].get(key)?.clone();
                let data = self.tables.get_mut(table).expect("table");
                let mut new = old.clone();
                for (column, value) in set {
                    new[schema.column_index(column).expect("known column")] = value.clone();
                }
                schema.check_row(&new).expect("updated rows fit the schema");
                let new_key = pk(&schema, &new);
                if new_key != *key && data.contains_key(&new_key) {
                    return None; // would violate the primary key: the generator avoids it
                }
                data.remove(key);
                data.insert(new_key, new.clone());
                Some(Change::Update {
                    table: table.clone(),
                    old,
                    new,
                })
            }
            Mutation::Delete { table, pk: key } => {
                let old = self.tables.get_mut(table).expect("table").remove(key)?;
                Some(Change::Delete {
                    table: table.clone(),
                    old,
                })
            }
        }
    }
}

/// Where one replication connection is: the last LSN delivered, how many
/// table definitions of the connect-time dump it has received, and the
/// last LSN a transaction or keepalive told it was reached.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct StreamCursor {
    pub after: Lsn,
    pub relations_seen: usize,
    pub told: Lsn,
}

impl StreamCursor {
    pub fn at(confirmed_lsn: Lsn) -> StreamCursor {
        StreamCursor {
            after: confirmed_lsn,
            relations_seen: 0,
            told: confirmed_lsn,
        }
    }

    /// Moves past `item`; returns the message it carries.
    pub fn advance(&mut self, item: StreamItem) -> ReplicationMessage {
        match item {
            StreamItem::Relation(table) => {
                self.relations_seen += 1;
                ReplicationMessage::Relation(table)
            }
            StreamItem::Wal(lsn, message) => {
                self.after = lsn;
                if matches!(message, ReplicationMessage::Transaction(_)) {
                    self.told = lsn;
                }
                message
            }
            StreamItem::Keepalive(wal_end) => {
                self.told = wal_end;
                ReplicationMessage::Keepalive { wal_end }
            }
        }
    }
}

/// One in-process connection's view of the slot.
struct PgStream {
    model: PgModel,
    connection: u64,
    acks_sent: std::sync::atomic::AtomicU64,
    cursor: Mutex<StreamCursor>,
}

#[async_trait]
impl ReplicationSource for PgModel {
    async fn start(&self) -> Result<Connection, SourceError> {
        // In process, time does not matter: a killed engine's test releases the slot.
        let (connection, confirmed_lsn, wal_end_lsn) =
            self.connect("in-process", 0).map_err(|SlotBusy(c)| {
                SourceError(format!("replication slot is active for connection {c}"))
            })?;
        let stream = Arc::new(PgStream {
            model: self.clone(),
            connection,
            acks_sent: Default::default(),
            cursor: Mutex::new(StreamCursor::at(confirmed_lsn)),
        });
        Ok(Connection {
            confirmed_lsn,
            wal_end_lsn,
            stream,
        })
    }
}

#[async_trait]
impl ReplicationStream for PgStream {
    async fn next(&self) -> Result<ReplicationMessage, SourceError> {
        loop {
            let committed = self.model.commits();
            let cursor = *self.cursor.lock().expect("cursor");
            match self.model.message_after(&cursor) {
                Some(item) => return Ok(self.cursor.lock().expect("cursor").advance(item)),
                None => committed.await,
            }
        }
    }

    async fn acknowledge(&self, lsn: Lsn) -> Result<(), SourceError> {
        let seq = self
            .acks_sent
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.model
            .acknowledge(self.connection, seq, lsn)
            .unwrap_or_else(|ContractViolation(why)| panic!("engine-contract: {why}"));
        Ok(())
    }
}

#[async_trait]
impl PostgresQueries for PgModel {
    async fn catalog(&self) -> Result<Catalog, SourceError> {
        Ok(PgModel::catalog(self))
    }

    async fn snapshot(&self, query: SnapshotQuery) -> Result<SnapshotResult, SourceError> {
        Ok(self.snapshot_now(&query))
    }
}

#[cfg(test)]
mod tests;
