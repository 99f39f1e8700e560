//! The seeded workload both sides run: two tables, transactions that begin,
//! interleave, commit or abort, and the SQL of each statement.
//!
//! ```text
//! a (id int8 PK, v text, n int8)            REPLICA IDENTITY FULL
//! b (id text PK, flag bool NOT NULL, note text)  REPLICA IDENTITY FULL
//! ```
//! Each of the (at most four) open transactions owns the keys of its
//! connection slot (`a.id % 4`, `b.id` prefixed `k<slot>_`), so statements
//! of open transactions never wait for each other's row locks, and the
//! model, which applies a transaction's statements in order at COMMIT,
//! ends in the state PostgreSQL reaches running them as they come:
//! updates and deletes of present and absent keys, inserts that conflict
//! (`ON CONFLICT DO NOTHING`), key changes to fresh keys.

use engine::schema::{Catalog, Column, ColumnType, Row, TableName, TableSchema, Value};
use rand::RngExt as _;
use rand::seq::IndexedRandom as _;
use rand_chacha::ChaCha8Rng;
use sim::pg::{Mutation, PgModel};

pub use crate::clauses::generate::literal;

const TEXTS: [&str; 6] = ["a", "b", "ab", "it's", "x y", "é"];

pub fn catalog() -> Catalog {
    let col = |name: &str, ty, not_null| Column {
        name: name.to_string(),
        ty,
        not_null,
    };
    Catalog::new([
        TableSchema::new(
            table("a"),
            30_001,
            vec![
                col("id", ColumnType::Int, true),
                col("v", ColumnType::Text, false),
                col("n", ColumnType::Int, false),
            ],
            &["id"],
        ),
        TableSchema::new(
            table("b"),
            30_002,
            vec![
                col("id", ColumnType::Text, true),
                col("flag", ColumnType::Bool, true),
                col("note", ColumnType::Text, false),
            ],
            &["id"],
        ),
    ])
}

pub fn table(name: &str) -> TableName {
    TableName::public(name)
}

pub const SCHEMA_SQL: &str = "DROP TABLE IF EXISTS a, b;
    CREATE TABLE a (id int8 PRIMARY KEY, v text, n int8);
    ALTER TABLE a REPLICA IDENTITY FULL;
    CREATE TABLE b (id text PRIMARY KEY, flag bool NOT NULL, note text);
    ALTER TABLE b REPLICA IDENTITY FULL;";

/// Rows present before the slot: `a` 1..=12, `b` k<slot>_1.
pub fn initial_rows(rng: &mut ChaCha8Rng) -> Vec<(TableName, Row)> {
    let mut rows = Vec::new();
    for id in 1..=12 {
        rows.push((table("a"), a_row(rng, id)));
    }
    for slot in 0..SLOTS {
        rows.push((table("b"), b_row(rng, &format!("k{slot}_1"))));
    }
    rows
}

/// Connection slots: key owners.
pub const SLOTS: i64 = 4;

fn text(rng: &mut ChaCha8Rng) -> Value {
    match rng.random_bool(0.2) {
        true => Value::Null,
        false => Value::Text(TEXTS.choose(rng).expect("texts").to_string()),
    }
}

fn int(rng: &mut ChaCha8Rng) -> Value {
    match rng.random_bool(0.2) {
        true => Value::Null,
        false => Value::Int(rng.random_range(-2..6)),
    }
}

fn a_row(rng: &mut ChaCha8Rng, id: i64) -> Row {
    vec![Value::Int(id), text(rng), int(rng)]
}

fn b_row(rng: &mut ChaCha8Rng, id: &str) -> Row {
    vec![
        Value::Text(id.to_string()),
        Value::Bool(rng.random_bool(0.5)),
        text(rng),
    ]
}

/// Draws 1..=`most` statements for the transaction of connection slot
/// `slot`, on its own keys; `fresh` numbers the keys a key change moves a
/// row to (never present, so never a conflict).
pub fn statements(
    rng: &mut ChaCha8Rng,
    model: &PgModel,
    slot: i64,
    most: usize,
    fresh: &mut i64,
) -> Vec<Mutation> {
    (0..rng.random_range(1..=most))
        .map(|_| match rng.random_bool(0.6) {
            true => a_statement(rng, model, slot, fresh),
            false => b_statement(rng, slot),
        })
        .collect()
}

fn a_statement(rng: &mut ChaCha8Rng, model: &PgModel, slot: i64, fresh: &mut i64) -> Mutation {
    let present: Vec<Vec<Value>> = model
        .rows(&table("a"))
        .into_iter()
        .filter(|r| matches!(r[0], Value::Int(id) if id % SLOTS == slot))
        .map(|r| vec![r[0].clone()])
        .collect();
    let any_key = |rng: &mut ChaCha8Rng| slot + SLOTS * rng.random_range(0..10);
    let key = |rng: &mut ChaCha8Rng| match present.choose(rng) {
        Some(k) if rng.random_bool(0.8) => k.clone(),
        _ => vec![Value::Int(any_key(rng))],
    };
    match rng.random_range(0..10) {
        0..=2 => {
            let id = any_key(rng);
            Mutation::Insert {
                table: table("a"),
                row: a_row(rng, id),
            }
        }
        3..=7 => {
            let pk = key(rng);
            let mut set = vec![("v".to_string(), text(rng))];
            if rng.random_bool(0.5) {
                set.push(("n".to_string(), int(rng)));
            }
            if rng.random_bool(0.15) {
                *fresh += 1;
                set.push(("id".to_string(), Value::Int(1_000 + *fresh * SLOTS + slot)));
            }
            Mutation::Update {
                table: table("a"),
                pk,
                set,
            }
        }
        _ => Mutation::Delete {
            table: table("a"),
            pk: key(rng),
        },
    }
}

fn b_statement(rng: &mut ChaCha8Rng, slot: i64) -> Mutation {
    let id = format!("k{slot}_{}", rng.random_range(1..=3));
    match rng.random_range(0..3) {
        0 => Mutation::Insert {
            table: table("b"),
            row: b_row(rng, &id),
        },
        1 => Mutation::Update {
            table: table("b"),
            pk: vec![Value::Text(id)],
            set: vec![
                ("flag".to_string(), Value::Bool(rng.random_bool(0.5))),
                ("note".to_string(), text(rng)),
            ],
        },
        _ => Mutation::Delete {
            table: table("b"),
            pk: vec![Value::Text(id)],
        },
    }
}

/// The SQL PostgreSQL runs for a statement.
pub fn sql(mutation: &Mutation) -> String {
    match mutation {
        Mutation::Insert { table, row } => {
            let values: Vec<String> = row.iter().map(literal).collect();
            format!(
                "INSERT INTO {} VALUES ({}) ON CONFLICT DO NOTHING",
                table.name,
                values.join(", ")
            )
        }
        Mutation::Update { table, pk, set } => {
            let assignments: Vec<String> = set
                .iter()
                .map(|(c, v)| format!("{c} = {}", literal(v)))
                .collect();
            format!(
                "UPDATE {} SET {} WHERE id = {}",
                table.name,
                assignments.join(", "),
                literal(&pk[0])
            )
        }
        Mutation::Delete { table, pk } => {
            format!("DELETE FROM {} WHERE id = {}", table.name, literal(&pk[0]))
        }
    }
}
