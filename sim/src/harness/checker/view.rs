//! What the oracle side knows of one scenario shape: its table, the columns
//! its clients receive, its WHERE (parsed by the oracle's own evaluator) and
//! its replica mode; and how the oracle renders rows and changes for it
//! (Electric's rules, written here without engine code).
//!
//! Invariant: `selected` is in table order and holds the primary key (a
//! client always gets the key, whatever `columns=` asked for).

use crate::client::{ClientRow, Text};
use crate::oracle::rows::{self, KeyedRows, OracleRows, electric_key_after};
use crate::oracle::where_eval;
use crate::pg::PgModel;
use crate::scenario::ShapeSpec;
use engine::schema::{TableName, TableSchema, Value};
use std::collections::BTreeSet;
use std::sync::Arc;

pub(super) struct ShapeView {
    spec: ShapeSpec,
    pub table: TableName,
    pub schema: Arc<TableSchema>,
    /// `rows::relation_key(&schema)`: the start of each of its rows' keys.
    relation_key: String,
    /// The columns its clients receive, in table order.
    pub selected: Vec<usize>,
    /// Its WHERE, bound to its table's columns (and its subqueries to
    /// theirs) when the view was made.
    filter: Option<where_eval::Bound>,
    pub replica_full: bool,
    /// Selected columns added to the table during the run.
    pub added: Vec<String>,
    /// The tables its rows depend on (its own; with subqueries, theirs).
    pub tables: Vec<TableName>,
    /// How deeply its subqueries nest (0: none).
    pub depth: usize,
    /// Whether a subquery reads its own table (then a write to its table
    /// can move rows the write did not touch).
    pub self_referencing: bool,
}

impl ShapeView {
    pub fn new(pg: &PgModel, spec: &ShapeSpec) -> ShapeView {
        let table = spec.table_name();
        let schema = Arc::new(pg.table(&table));
        let wanted = |name: &str| {
            spec.columns
                .as_ref()
                .is_none_or(|c| c.iter().any(|x| x == name))
        };
        let selected: Vec<usize> = (0..schema.columns.len())
            .filter(|&i| schema.primary_key.contains(&i) || wanted(&schema.columns[i].name))
            .collect();
        assert!(
            schema.primary_key.iter().all(|k| selected.contains(k)),
            "a shape's clients always get the primary key"
        );
        let parse = |w: &String| where_eval::parse(w).expect("the oracle parses every WHERE");
        let depth = spec.where_clause.as_deref().map_or(0, subquery_depth);
        let parsed = spec.where_clause.as_ref().map(parse);
        let read: Vec<TableName> = parsed
            .as_ref()
            .map(where_eval::subquery_tables)
            .unwrap_or_default()
            .into_iter()
            .map(|(schema, name)| TableName { schema, name })
            .collect();
        assert_eq!(read.is_empty(), depth == 0, "subqueries read tables");
        let self_referencing = read.contains(&table);
        let mut tables = vec![table.clone()];
        for name in read {
            if !tables.contains(&name) {
                tables.push(name);
            }
        }
        let filter = parsed.map(|expr| pg.bind(&table, &expr));
        ShapeView {
            tables,
            depth,
            self_referencing,
            spec: spec.clone(),
            table,
            relation_key: rows::relation_key(&schema),
            schema,
            selected,
            filter,
            replica_full: spec.replica_full,
            added: Vec::new(),
        }
    }

    /// Whether `row` (every column, table order) is in the shape (a shape
    /// without subqueries: see [`ShapeView::query`] for the others).
    pub fn matches(&self, row: &[Value]) -> bool {
        assert_eq!(self.depth, 0, "a subquery shape is judged by a full query");
        self.filter.as_ref().is_none_or(|filter| filter.holds(row))
    }

    /// Whether each of `rows` (every column, table order; rows of its
    /// table) is in the shape, subqueries read from the committed rows.
    pub fn hold<'r>(&self, pg: &PgModel, rows: impl IntoIterator<Item = &'r [Value]>) -> Vec<bool> {
        match (&self.filter, self.depth) {
            (Some(filter), 1..) => pg.rows_hold(filter, rows),
            _ => rows.into_iter().map(|row| self.matches(row)).collect(),
        }
    }

    /// The table's definition changed: the view follows the new one (a
    /// shape that selects no columns gets the added ones).
    pub fn refresh(&mut self, pg: &PgModel) {
        let before = self.selected.len();
        let mut added = std::mem::take(&mut self.added);
        *self = ShapeView::new(pg, &self.spec);
        let names = self.selected[before..]
            .iter()
            .map(|&i| self.schema.columns[i].name.clone());
        added.extend(names);
        self.added = added;
    }

    /// `oracle` (rows as of some LSN) as a handle serves them that was
    /// created after columns were added: with the added columns, NULL, as
    /// in every row of that time. A handle serves its table's definition as
    /// of its creation, so the rows as of one LSN read either way; which
    /// way this client's do is seen from its rows.
    pub fn as_served(&self, oracle: OracleRows, client: &KeyedRows) -> OracleRows {
        let (Some(theirs), Some(ours)) = (client.values().next(), oracle.values().next()) else {
            return oracle;
        };
        let missing: Vec<&String> = self
            .added
            .iter()
            .filter(|c| theirs.contains_key(c.as_str()) && !ours.contains_key(c.as_str()))
            .collect();
        if missing.is_empty() {
            return oracle;
        }
        let widen = |row: &Arc<ClientRow>| {
            let mut row = (**row).clone();
            row.extend(missing.iter().map(|c| (Text::from(c.as_str()), None)));
            Arc::new(row)
        };
        oracle
            .iter()
            .map(|(k, row)| (k.clone(), widen(row)))
            .collect()
    }

    /// The selected columns a row has: a row committed before a column was
    /// added is shorter (columns are only ever appended).
    pub fn selected_of(&self, row: &[Value]) -> impl Iterator<Item = usize> + '_ {
        let len = row.len();
        self.selected.iter().copied().filter(move |&i| i < len)
    }

    /// `row` as the shape's clients hold it.
    pub fn render(&self, row: &[Value]) -> ClientRow {
        rows::rendered(&self.schema, row, self.selected_of(row))
    }

    /// The key of a row as its clients hold it (`None`: a key column is
    /// missing).
    pub fn key_of_text(&self, row: &ClientRow) -> Option<String> {
        rows::electric_key_of_text_after(&self.relation_key, &self.schema, row)
    }

    pub fn key(&self, row: &[Value]) -> String {
        electric_key_after(&self.relation_key, &self.schema, row)
    }

    /// The shape's rows now, by a full query of the Postgres model.
    pub fn query(&self, pg: &PgModel) -> KeyedRows {
        let mut out = KeyedRows::new();
        self.each_row_now(pg, |row| {
            out.insert(self.key(row), self.render(row));
        });
        out
    }

    /// [`ShapeView::query`], from `previous` (the rows as of the last
    /// commit that could change them) and the keys of the rows the new
    /// commit wrote: the full query decides which rows are in; a row the
    /// commit did not write keeps its previous rendering (its values, and
    /// the view's columns, are unchanged), so only written and new rows
    /// are rendered again. Equal to `rows::persistent(self.query(pg))`.
    pub fn requery(
        &self,
        pg: &PgModel,
        previous: &OracleRows,
        written: &BTreeSet<String>,
    ) -> OracleRows {
        let mut current = previous.clone();
        let mut kept = BTreeSet::new();
        self.each_row_now(pg, |row| {
            let key = self.key(row);
            if written.contains(&key) || !previous.contains_key(&key) {
                current.insert(key.clone(), Arc::new(self.render(row)));
            }
            kept.insert(key);
        });
        let gone: Vec<&String> = previous.keys().filter(|k| !kept.contains(*k)).collect();
        for key in gone {
            current.remove(key);
        }
        current
    }

    /// Calls `each` with the committed rows (every column) in the shape,
    /// without copying them (the Postgres model is locked meanwhile).
    fn each_row_now(&self, pg: &PgModel, mut each: impl FnMut(&[Value])) {
        match (&self.filter, self.depth) {
            (Some(filter), 1..) => pg.each_row_where(&self.table, Some(filter), each),
            _ => pg.each_row_where(&self.table, None, |row| {
                if self.matches(row) {
                    each(row);
                }
            }),
        }
    }

    /// Whether a transaction on `tables` may change the shape's rows.
    pub fn depends_on(&self, table: &TableName) -> bool {
        self.tables.contains(table)
    }
}

/// How deeply `(SELECT` nests in a WHERE (string literals skipped).
pub fn subquery_depth(sql: &str) -> usize {
    let (mut open, mut deepest) = (Vec::<bool>::new(), 0);
    let mut in_string = false;
    let bytes = sql.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' => in_string = !in_string,
            _ if in_string => {}
            b'(' => {
                let rest = sql[i + 1..].trim_start();
                let select = rest.len() >= 6 && rest[..6].eq_ignore_ascii_case("select");
                open.push(select);
                deepest = deepest.max(open.iter().filter(|&&s| s).count());
            }
            b')' => {
                open.pop();
            }
            _ => {}
        }
    }
    deepest
}
