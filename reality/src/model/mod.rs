//! The Postgres model against PostgreSQL: one seeded workload (interleaved
//! transactions, aborted ones included) run on `sim::pg::PgModel` and on a
//! real server with `wal_level=logical` and a `test_decoding` slot, then:
//!
//! - xids: each BEGIN gets the same xid on both sides (up to a fixed offset);
//! - snapshots taken while transactions are open: `pg_current_snapshot()`'s
//!   xmin, xmax and in-progress list against the model's, every xid's
//!   visibility (`pg_visible_in_snapshot`) against `Visibility::is_visible`,
//!   and the rows a REPEATABLE READ transaction reads from that snapshot
//!   some steps later against the model's snapshot query;
//! - the slot's committed transactions in commit order, each one's changes,
//!   against the model's replication stream from its confirmed LSN;
//! - replay: after confirming up to a transaction
//!   (`pg_replication_slot_advance`), both send exactly the ones after it.
//!
//! Any difference is reported with the seed and the first differing
//! transaction or snapshot.

pub mod decoding;
mod snapshots;
pub mod workload;

use crate::server::PgServer;
use decoding::Decoded;
use engine::replication::Lsn;
use engine::replication::{ReplicationMessage, Transaction};
use rand::RngExt as _;
use rand::SeedableRng as _;
use rand_chacha::ChaCha8Rng;
use sim::pg::{Mutation, PgModel, StreamCursor};
use snapshots::OpenSnapshot;

const SLOT: &str = "reality";
/// Transactions open at once, at most.
const MAX_OPEN: usize = 4;

#[derive(Debug, Default)]
pub struct Report {
    pub workloads: usize,
    pub committed: usize,
    pub aborted: usize,
    pub snapshots: usize,
    /// Snapshots whose in-progress list (PostgreSQL's) was not empty.
    pub snapshots_with_xip: usize,
    pub visibility_answers: usize,
    pub repeatable_reads: usize,
    pub replays: usize,
    pub differences: Vec<String>,
}

impl Report {
    pub fn summary(&self) -> String {
        format!(
            "{} workloads: {} transactions committed, {} aborted; {} snapshots ({} with transactions in progress), {} visibility answers, {} repeatable-read queries, {} replays; {} differences",
            self.workloads,
            self.committed,
            self.aborted,
            self.snapshots,
            self.snapshots_with_xip,
            self.visibility_answers,
            self.repeatable_reads,
            self.replays,
            self.differences.len()
        )
    }
}

/// The connections one workload uses: an administrative one, one per open
/// transaction, one for repeatable-read snapshots.
struct Sides {
    admin: postgres::Client,
    pool: Vec<postgres::Client>,
    reader: postgres::Client,
}

/// Runs `workloads` workloads, seeds `first_seed..`.
pub fn run(server: &PgServer, first_seed: u64, workloads: usize) -> Report {
    let mut sides = Sides {
        admin: server.connect(),
        pool: (0..MAX_OPEN).map(|_| server.connect()).collect(),
        reader: server.connect(),
    };
    let mut report = Report::default();
    for seed in first_seed..first_seed + workloads as u64 {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            workload(&mut sides, seed, &mut report)
        }));
        let difference = match outcome {
            Ok(result) => result.err(),
            Err(panic) => Some(format!(
                "the comparison panicked: {}",
                crate::panic_text(&panic)
            )),
        };
        if let Some(difference) = difference {
            report
                .differences
                .push(format!("workload seed {seed}: {difference}"));
        }
        report.workloads += 1;
    }
    report
}

/// A transaction open on both sides; the statements PostgreSQL already
/// ran in it (the model applies them at COMMIT).
struct Open {
    model_xid: u64,
    connection: usize,
    statements: Vec<Mutation>,
}

struct Run<'a> {
    sides: &'a mut Sides,
    model: PgModel,
    rng: ChaCha8Rng,
    /// PostgreSQL's xid minus the model's, fixed when the workload starts.
    offset: i64,
    open: Vec<Open>,
    snapshot: Option<OpenSnapshot>,
    fresh_key: i64,
}

fn workload(sides: &mut Sides, seed: u64, report: &mut Report) -> Result<(), String> {
    // A workload that stopped at a difference left transactions open.
    for client in sides.pool.iter_mut().chain([&mut sides.reader]) {
        client.batch_execute("ROLLBACK").expect("ROLLBACK");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let model = setup(sides, &mut rng);
    let confirmed = model.slot_confirmed();
    let offset = snapshots::xid_offset(&mut sides.admin, &model);
    let mut run = Run {
        sides,
        model,
        rng,
        offset,
        open: Vec::new(),
        snapshot: None,
        fresh_key: 100,
    };
    let steps = run.rng.random_range(30..=80);
    for _ in 0..steps {
        run.step(report)?;
    }
    while !run.open.is_empty() {
        run.end_one(report)?;
    }
    if let Some(open) = run.snapshot.take() {
        open.finish(&mut run.sides.reader, report)?;
    }
    compare_streams(&mut run, confirmed, report)
}

/// Fresh tables and rows, then a fresh slot, on both sides.
fn setup(sides: &mut Sides, rng: &mut ChaCha8Rng) -> PgModel {
    let admin = &mut sides.admin;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&SLOT],
        )
        .expect("look the slot up");
    if exists.is_some() {
        admin
            .execute("SELECT pg_drop_replication_slot($1)", &[&SLOT])
            .expect("drop the slot");
    }
    admin.batch_execute(workload::SCHEMA_SQL).expect("schema");
    let model = PgModel::new(workload::catalog());
    for (table, row) in workload::initial_rows(rng) {
        let values: Vec<String> = row.iter().map(workload::literal).collect();
        admin
            .batch_execute(&format!(
                "INSERT INTO {} VALUES ({})",
                table.name,
                values.join(", ")
            ))
            .expect("initial rows");
        model.load(&table, vec![row]);
    }
    admin
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&SLOT],
        )
        .expect("create the slot");
    model
}

impl Run<'_> {
    fn step(&mut self, report: &mut Report) -> Result<(), String> {
        match self.rng.random_range(0..12) {
            0..=3 if self.open.len() < MAX_OPEN => self.begin(),
            0..=5 if !self.open.is_empty() => self.end_one(report),
            10 | 11 if !self.open.is_empty() => {
                let index = self.rng.random_range(0..self.open.len());
                self.work(index, 2)
            }
            6 | 7 if self.snapshot.is_none() => {
                let open = OpenSnapshot::take(self, report)?;
                self.snapshot = Some(open);
                Ok(())
            }
            6 | 7 => {
                let open = self.snapshot.take().expect("an open snapshot");
                open.finish(&mut self.sides.reader, report)
            }
            _ => self.commit_at_once(report),
        }
    }

    /// BEGIN on both sides; PostgreSQL assigns the xid at once.
    fn begin(&mut self) -> Result<(), String> {
        let used: Vec<usize> = self.open.iter().map(|o| o.connection).collect();
        let connection = (0..MAX_OPEN)
            .find(|c| !used.contains(c))
            .expect("a free connection");
        let model_xid = self.model.begin();
        let client = &mut self.sides.pool[connection];
        client.batch_execute("BEGIN").expect("BEGIN");
        let real: i64 = client
            .query_one("SELECT pg_current_xact_id()::text::int8", &[])
            .expect("xid")
            .get(0);
        let expected = model_xid as i64 + self.offset;
        if real != expected {
            return Err(format!(
                "BEGIN got xid {real} in PostgreSQL, the model's {model_xid} maps to {expected}"
            ));
        }
        self.open.push(Open {
            model_xid,
            connection,
            statements: Vec::new(),
        });
        if self.rng.random_bool(0.5) {
            self.work(self.open.len() - 1, 2)?;
        }
        Ok(())
    }

    /// Runs up to `most` statements in the `index`-th open transaction, in
    /// PostgreSQL now (the model applies them when it commits).
    fn work(&mut self, index: usize, most: usize) -> Result<(), String> {
        let open = &mut self.open[index];
        let statements = workload::statements(
            &mut self.rng,
            &self.model,
            open.connection as i64,
            most,
            &mut self.fresh_key,
        );
        let client = &mut self.sides.pool[open.connection];
        for statement in statements {
            let sql = workload::sql(&statement);
            client
                .batch_execute(&sql)
                .map_err(|e| format!("{sql}: {e}"))?;
            open.statements.push(statement);
        }
        Ok(())
    }

    /// Commits (mostly) or aborts a random open transaction.
    fn end_one(&mut self, report: &mut Report) -> Result<(), String> {
        let index = self.rng.random_range(0..self.open.len());
        let open = self.open.remove(index);
        let abort = self.rng.random_bool(0.25);
        self.end(open, abort, report)
    }

    /// A transaction from BEGIN to COMMIT in one step.
    fn commit_at_once(&mut self, report: &mut Report) -> Result<(), String> {
        if self.open.len() >= MAX_OPEN {
            return self.end_one(report);
        }
        self.begin()?;
        let open = self.open.pop().expect("the transaction just begun");
        self.end(open, false, report)
    }

    /// Runs the transaction's last statements, then ends it on both sides.
    fn end(&mut self, open: Open, abort: bool, report: &mut Report) -> Result<(), String> {
        self.open.push(open);
        let last = self.open.len() - 1;
        self.work(last, 3)?;
        let open = self.open.pop().expect("the transaction being ended");
        let (client, statements) = (&mut self.sides.pool[open.connection], open.statements);
        if abort {
            client.batch_execute("ROLLBACK").expect("ROLLBACK");
            self.model.abort(open.model_xid);
            report.aborted += 1;
        } else {
            client.batch_execute("COMMIT").expect("COMMIT");
            self.model.commit_as(open.model_xid, &statements);
            report.committed += 1;
        }
        Ok(())
    }
}

/// The model's replication stream from `confirmed`: its transactions.
fn model_stream(model: &PgModel, confirmed: Lsn) -> Vec<Transaction> {
    let mut cursor = StreamCursor::at(confirmed);
    let mut out = Vec::new();
    while let Some(item) = model.message_after(&cursor) {
        if let ReplicationMessage::Transaction(txn) = cursor.advance(item) {
            out.push(txn);
        }
    }
    out
}

/// The slot's transactions against the model's, then a replay from a
/// confirmed transaction on both.
fn compare_streams(run: &mut Run, confirmed: Lsn, report: &mut Report) -> Result<(), String> {
    let catalog = workload::catalog();
    let real = decoding::peek(&mut run.sides.admin, SLOT, &catalog);
    let model = model_stream(&run.model, confirmed);
    same_transactions(&model, &real, run.offset, "the stream")?;
    if model.is_empty() {
        return Ok(());
    }
    let k = run.rng.random_range(0..model.len());
    run.sides
        .admin
        .execute(
            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&SLOT, &real[k].commit_lsn],
        )
        .map_err(|e| format!("advance the slot: {e}"))?;
    let real_replay = decoding::peek(&mut run.sides.admin, SLOT, &catalog);
    let model_replay = model_stream(&run.model, model[k].commit_lsn);
    let context = format!("the replay after transaction #{k} (xid {})", model[k].xid);
    same_transactions(&model_replay, &real_replay, run.offset, &context)?;
    same_transactions(&model[k + 1..], &real_replay, run.offset, &context)?;
    report.replays += 1;
    Ok(())
}

/// Equal transactions in the same order, xids mapped; else the first
/// differing one.
fn same_transactions(
    model: &[Transaction],
    real: &[Decoded],
    offset: i64,
    context: &str,
) -> Result<(), String> {
    for (i, (m, r)) in model.iter().zip(real).enumerate() {
        let mapped = m.xid as i64 + offset;
        if mapped != r.xid as i64 || m.changes != r.changes {
            return Err(format!(
                "{context}: transaction #{i} differs: the model sends xid {} (PostgreSQL xid {mapped}) with {:?}; PostgreSQL sends xid {} with {:?}",
                m.xid, m.changes, r.xid, r.changes
            ));
        }
    }
    if model.len() != real.len() {
        return Err(format!(
            "{context}: the model sends {} transactions, PostgreSQL {}; the first unmatched is #{}",
            model.len(),
            real.len(),
            model.len().min(real.len())
        ));
    }
    Ok(())
}
