//! Electric's standard oracle schema (section 7.2) and its seed data, and
//! how a workload statement ([`Op`]) becomes a change in the Postgres model.
//!
//! ```text
//! level_1 (id TEXT PK, active BOOLEAN NOT NULL)
//! level_1_tags (level_1_id TEXT NOT NULL, tag TEXT NOT NULL, PK(level_1_id, tag))
//! level_2 (id TEXT PK, level_1_id TEXT NOT NULL, active BOOLEAN NOT NULL)   (+ level_2_tags)
//! level_3 (id TEXT PK, level_2_id TEXT NOT NULL, active BOOLEAN NOT NULL)   (+ level_3_tags)
//! level_4 (id TEXT PK, level_3_id TEXT NOT NULL, value TEXT NOT NULL,
//!          note TEXT, rank INT8, flag BOOLEAN NOT NULL)
//! ```
//! (`note`, `rank` and `flag` are ours, beyond Electric's schema: NULLs and
//! non-text types in routing, rendering and three-valued evaluation.)
//! Seed: `l1-1..l1-5`, `l2-1..l2-5`, `l3-1..l3-5` (each `lN-i` under `l(N-1)-i`,
//! active when its 0-based index is even), `l4-n` under `l3-((n-1) mod 5 + 1)`
//! with `value = 'v<n-1>'`; entity `i` has the first `(i mod 4) + 1` of the
//! tags alpha, beta, gamma, delta.

use crate::pg::{Mutation, PgModel};
use crate::scenario::{Level4Row, Op};
use engine::schema::{Catalog, Column, ColumnType, TableName, TableSchema, Value};

pub const TAGS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
pub const LEVEL_IDS: usize = 5;

pub fn level(n: u8) -> TableName {
    TableName::public(&format!("level_{n}"))
}

pub fn tags(n: u8) -> TableName {
    TableName::public(&format!("level_{n}_tags"))
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

pub fn catalog() -> Catalog {
    let col = |name: &str, ty| Column {
        name: name.to_string(),
        ty,
        not_null: true,
    };
    let mut tables = Vec::new();
    for n in 1..=3u8 {
        let mut columns = vec![col("id", ColumnType::Text)];
        if n > 1 {
            columns.push(col(&format!("level_{}_id", n - 1), ColumnType::Text));
        }
        columns.push(col("active", ColumnType::Bool));
        tables.push(TableSchema::new(
            level(n),
            16_400 + u32::from(n),
            columns,
            &["id"],
        ));
        let owner = format!("level_{n}_id");
        let tag_columns = vec![col(&owner, ColumnType::Text), col("tag", ColumnType::Text)];
        tables.push(TableSchema::new(
            tags(n),
            16_410 + u32::from(n),
            tag_columns,
            &[owner.as_str(), "tag"],
        ));
    }
    let nullable = |name: &str, ty| Column {
        not_null: false,
        ..col(name, ty)
    };
    let level4 = vec![
        col("id", ColumnType::Text),
        col("level_3_id", ColumnType::Text),
        col("value", ColumnType::Text),
        nullable("note", ColumnType::Text),
        nullable("rank", ColumnType::Int),
        col("flag", ColumnType::Bool),
    ];
    tables.push(TableSchema::new(level(4), 16_404, level4, &["id"]));
    Catalog::new(tables)
}

/// A Postgres model holding the seed data (`level4` rows as given).
pub fn seeded_postgres(level4: &[Level4Row]) -> PgModel {
    let pg = PgModel::new(catalog());
    for n in 1..=3u8 {
        let rows = (0..LEVEL_IDS)
            .map(|i| {
                let mut row = vec![text(&format!("l{n}-{}", i + 1))];
                if n > 1 {
                    row.push(text(&format!("l{}-{}", n - 1, i + 1)));
                }
                row.push(Value::Bool(i % 2 == 0));
                row
            })
            .collect();
        pg.load(&level(n), rows);
        let tag_rows = (0..LEVEL_IDS)
            .flat_map(|i| {
                TAGS[..i % 4 + 1]
                    .iter()
                    .map(move |t| vec![text(&format!("l{n}-{}", i + 1)), text(t)])
            })
            .collect();
        pg.load(&tags(n), tag_rows);
    }
    let rows = level4
        .iter()
        .map(|r| level4_row(&r.id, &r.level_3_id, &r.value, (&r.note, r.rank, r.flag)))
        .collect();
    pg.load(&level(4), rows);
    pg
}

/// A `level_4` row in column order.
fn level4_row(
    id: &str,
    parent: &str,
    value: &str,
    extra: (&Option<String>, Option<i64>, bool),
) -> Vec<Value> {
    let (note, rank, flag) = extra;
    vec![
        text(id),
        text(parent),
        text(value),
        note.as_deref().map_or(Value::Null, text),
        rank.map_or(Value::Null, Value::Int),
        Value::Bool(flag),
    ]
}

/// The Postgres statement for a workload op. A toggle reads the current row,
/// as `SET active = NOT active` does; a statement whose row is gone is a
/// no-op (it matches nothing), which keeps shrunk scenarios meaningful.
pub fn mutation(pg: &PgModel, op: &Op) -> Option<Mutation> {
    let key = |id: &str| vec![text(id)];
    Some(match op {
        Op::ToggleActive { level: n, id } => {
            let schema = pg.table(&level(*n));
            let active = schema.column_index("active").expect("active column");
            let current = pg.rows(&level(*n)).into_iter().find(|r| r[0] == text(id))?;
            let Value::Bool(b) = current[active] else {
                unreachable!("active is boolean")
            };
            Mutation::Update {
                table: level(*n),
                pk: key(id),
                set: vec![("active".into(), Value::Bool(!b))],
            }
        }
        Op::Reparent {
            level: n,
            id,
            parent,
        } => {
            let column = format!("level_{}_id", n - 1);
            Mutation::Update {
                table: level(*n),
                pk: key(id),
                set: vec![(column, text(parent))],
            }
        }
        Op::AddTag { level: n, id, tag } => Mutation::Insert {
            table: tags(*n),
            row: vec![text(id), text(tag)],
        },
        Op::RemoveTag { level: n, id, tag } => Mutation::Delete {
            table: tags(*n),
            pk: vec![text(id), text(tag)],
        },
        Op::SetValue { id, value } => Mutation::Update {
            table: level(4),
            pk: key(id),
            set: vec![("value".into(), text(value))],
        },
        Op::InsertLevel4 {
            id,
            parent,
            value,
            note,
            rank,
            flag,
        } => Mutation::Insert {
            table: level(4),
            row: level4_row(id, parent, value, (note, *rank, *flag)),
        },
        Op::SetNote { id, note } => Mutation::Update {
            table: level(4),
            pk: key(id),
            set: vec![("note".into(), note.as_deref().map_or(Value::Null, text))],
        },
        Op::SetRank { id, rank } => Mutation::Update {
            table: level(4),
            pk: key(id),
            set: vec![("rank".into(), rank.map_or(Value::Null, Value::Int))],
        },
        Op::SetFlag { id, flag } => Mutation::Update {
            table: level(4),
            pk: key(id),
            set: vec![("flag".into(), Value::Bool(*flag))],
        },
        Op::DeleteLevel4 { id } => Mutation::Delete {
            table: level(4),
            pk: key(id),
        },
        Op::ChangeLevel4Key { id, new_id } => Mutation::Update {
            table: level(4),
            pk: key(id),
            set: vec![("id".into(), text(new_id))],
        },
        Op::BeganEarlier { .. } | Op::Rollback => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_data_matches_electrics_oracle_schema() {
        let rows: Vec<Level4Row> =
            crate::scenario::generate::expand(0, &crate::scenario::Knobs::default()).seed_rows;
        let pg = seeded_postgres(&rows);
        let l1 = pg.rows(&level(1));
        assert_eq!(l1.len(), 5);
        assert_eq!(l1[0], vec![text("l1-1"), Value::Bool(true)]);
        assert_eq!(l1[1][1], Value::Bool(false));
        let l4 = pg.rows(&level(4));
        assert_eq!(l4.len(), 40);
        let l4_6 = l4.iter().find(|r| r[0] == text("l4-6")).unwrap();
        assert_eq!(&l4_6[..3], &[text("l4-6"), text("l3-1"), text("v5")]);
        // Entity index 3 (l1-4) has alpha..delta, index 0 only alpha.
        let t = pg.rows(&tags(1));
        assert_eq!(t.iter().filter(|r| r[0] == text("l1-4")).count(), 4);
        assert_eq!(t.iter().filter(|r| r[0] == text("l1-1")).count(), 1);
    }

    #[test]
    fn ops_become_the_statements_they_name() {
        let rows: Vec<Level4Row> =
            crate::scenario::generate::expand(0, &crate::scenario::Knobs::default()).seed_rows;
        let pg = seeded_postgres(&rows);
        let toggle = mutation(
            &pg,
            &Op::ToggleActive {
                level: 2,
                id: "l2-1".into(),
            },
        )
        .unwrap();
        pg.commit(&[toggle]).unwrap();
        assert_eq!(pg.rows(&level(2))[0][2], Value::Bool(false));
        let key_change = mutation(
            &pg,
            &Op::ChangeLevel4Key {
                id: "l4-1".into(),
                new_id: "l4-101".into(),
            },
        )
        .unwrap();
        let txn = pg.commit(&[key_change]).unwrap();
        assert!(
            matches!(&txn.changes[0], engine::replication::Change::Update { old, new, .. } if old[0] == text("l4-1") && new[0] == text("l4-101"))
        );
        assert!(
            mutation(
                &pg,
                &Op::ToggleActive {
                    level: 1,
                    id: "l1-99".into()
                }
            )
            .is_none()
        );
    }
}
