//! Snapshots on both sides: the model's `snapshot_now` against a
//! REPEATABLE READ transaction's `pg_current_snapshot()`, its visibility
//! answers, and the rows that transaction reads some steps later.

use super::{Report, Run, workload};
use engine::replication::{SnapshotQuery, Visibility};
use engine::schema::{ColumnType, Row, Value};
use rand::seq::IndexedRandom as _;
use sim::pg::PgModel;

/// Filters of the snapshot queries (the model evaluates them with the
/// oracle's evaluator).
const FILTERS: [Option<&str>; 4] = [
    None,
    Some("n > 1"),
    Some("v LIKE 'a%'"),
    Some("n IS NULL OR v = 'b'"),
];

/// PostgreSQL's xid minus the model's: both at their next xid, with no
/// transaction in progress.
pub fn xid_offset(admin: &mut postgres::Client, model: &PgModel) -> i64 {
    let text: String = admin
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .expect("snapshot")
        .get(0);
    let (xmin, xmax, xip) = parse(&text);
    assert!(xip.is_empty() && xmin == xmax, "idle server: {text}");
    let model_xmax = model.snapshot_now(&query(None)).visibility.xmax;
    xmax as i64 - model_xmax as i64
}

fn query(filter: Option<&str>) -> SnapshotQuery {
    SnapshotQuery {
        table: workload::table("a"),
        where_sql: filter.map(str::to_string),
        dependencies: Vec::new(),
    }
}

/// `xmin:xmax:xip,...`.
fn parse(text: &str) -> (u64, u64, Vec<u64>) {
    let mut parts = text.split(':');
    let mut next = || parts.next().expect("snapshot field");
    let xmin = next().parse().expect("xmin");
    let xmax = next().parse().expect("xmax");
    let xip = next()
        .split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().expect("xip"))
        .collect();
    (xmin, xmax, xip)
}

/// A snapshot taken on both sides, its repeatable-read transaction open.
pub struct OpenSnapshot {
    filter: Option<&'static str>,
    model_rows: Vec<Row>,
    taken: String,
}

impl OpenSnapshot {
    pub fn take(run: &mut Run, report: &mut Report) -> Result<OpenSnapshot, String> {
        let filter = *FILTERS.choose(&mut run.rng).expect("filters");
        let model = run.model.snapshot_now(&query(filter));
        let reader = &mut run.sides.reader;
        reader
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .expect("BEGIN");
        let text: String = reader
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .expect("snapshot")
            .get(0);
        let v = &model.visibility;
        let off = |x: u64| (x as i64 + run.offset) as u64;
        let mapped = (
            off(v.xmin),
            off(v.xmax),
            v.xip_list.iter().map(|&x| off(x)).collect::<Vec<_>>(),
        );
        let real = parse(&text);
        if mapped != real {
            return Err(format!(
                "snapshot: PostgreSQL {text}, the model xmin {} xmax {} xip {:?} (as PostgreSQL xids {}:{}:{:?})",
                v.xmin, v.xmax, v.xip_list, mapped.0, mapped.1, mapped.2
            ));
        }
        report.snapshots += 1;
        report.snapshots_with_xip += usize::from(!real.2.is_empty());
        visibility(&mut run.sides.admin, &text, v, run.offset, report)?;
        Ok(OpenSnapshot {
            filter,
            model_rows: model.rows,
            taken: text,
        })
    }

    /// Reads the rows in the still-open repeatable-read transaction.
    pub fn finish(self, reader: &mut postgres::Client, report: &mut Report) -> Result<(), String> {
        let filter = self.filter.map_or(String::new(), |f| format!(" WHERE {f}"));
        let messages = reader
            .simple_query(&format!("SELECT * FROM a{filter} ORDER BY id"))
            .expect("snapshot query");
        reader.batch_execute("COMMIT").expect("COMMIT");
        let types = [ColumnType::Int, ColumnType::Text, ColumnType::Int];
        let real: Vec<Row> = messages
            .iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(row) => Some(
                    types
                        .iter()
                        .enumerate()
                        .map(|(i, ty)| value(row.get(i), *ty))
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        report.repeatable_reads += 1;
        if real != self.model_rows {
            return Err(format!(
                "the repeatable-read query{filter} in snapshot {} read {real:?}, the model's snapshot query {:?}",
                self.taken, self.model_rows
            ));
        }
        Ok(())
    }
}

fn value(text: Option<&str>, ty: ColumnType) -> Value {
    match (text, ty) {
        (None, _) => Value::Null,
        (Some(t), ColumnType::Int) => Value::Int(t.parse().expect("int")),
        (Some(t), ColumnType::Bool) => Value::Bool(t == "t"),
        (Some(t), ColumnType::Text) => Value::Text(t.to_string()),
    }
}

/// Every xid from before the snapshot's xmin to past its xmax: the model's
/// answer against `pg_visible_in_snapshot`.
fn visibility(
    admin: &mut postgres::Client,
    snapshot: &str,
    v: &Visibility,
    offset: i64,
    report: &mut Report,
) -> Result<(), String> {
    let low = v.xmin.saturating_sub(4).max(3) as i64 + offset;
    let high = v.xmax as i64 + 2 + offset;
    let rows = admin
        .query(
            "SELECT x, pg_visible_in_snapshot(x::text::xid8, $1::text::pg_snapshot) \
             FROM generate_series($2::int8, $3::int8) x",
            &[&snapshot, &low, &high],
        )
        .expect("visibility");
    for row in rows {
        let (x, real): (i64, bool) = (row.get(0), row.get(1));
        let model_xid = (x - offset) as u64;
        report.visibility_answers += 1;
        if v.is_visible(model_xid) != real {
            return Err(format!(
                "xid {x} (the model's {model_xid}) in snapshot {snapshot}: PostgreSQL says visible={real}, the model {}",
                v.is_visible(model_xid)
            ));
        }
    }
    Ok(())
}
