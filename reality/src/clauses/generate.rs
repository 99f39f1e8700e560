//! Seeded tables and WHERE clauses for the differential: every construct
//! the engine supports, over nullable and NOT NULL `int8`, `text` and
//! `bool` columns, with NULLs, untyped literals, LIKE/ILIKE patterns with
//! `%`, `_` and escapes, BETWEEN, IN lists, IS [NOT] TRUE/FALSE/NULL/UNKNOWN
//! and `IN (SELECT ...)` / `NOT IN` subqueries nested up to two levels; and
//! clauses PostgreSQL rejects (type errors, unknown columns, bad literals,
//! a pattern ending in its escape), which the engine must reject too.
//!
//! ```text
//! t (id int8 PK, i int8, j int8 NOT NULL, s text, u text NOT NULL, b bool, c bool NOT NULL)
//! p (id int8 PK, k int8, m int8 NOT NULL, s text, b bool)
//! q (id int8 PK, pid int8 NOT NULL, b bool NOT NULL)
//! ```

use engine::schema::{Catalog, Column, ColumnType, TableName, TableSchema, Value};
use rand::RngExt as _;
use rand::seq::IndexedRandom as _;
use rand_chacha::ChaCha8Rng;

/// Integers: small ones that clauses name, and some past 32 bits.
const INTS: [i64; 10] = [-3, -1, 0, 1, 2, 3, 5, 10, 4_294_967_296, -9_000_000_000];
/// Texts around the C collation's and LIKE's edges: case, non-ASCII
/// letters (ILIKE folds ASCII only), the wildcards and the escape as data.
const TEXTS: [&str; 22] = [
    "", "a", "A", "ab", "aB", "Ab", "abc", "b", "B", "a%c", "a_c", "a\\c", "a c", " a", "é", "É",
    "ß", "zz", "Z", "_", "%", "a'b",
];

pub const T_ROWS: usize = 24;
pub const P_ROWS: usize = 8;
pub const Q_ROWS: usize = 6;

/// The three tables, as the engine's catalog sees them.
pub fn catalog() -> Catalog {
    let col = |name: &str, ty, not_null| Column {
        name: name.to_string(),
        ty,
        not_null,
    };
    use ColumnType::{Bool, Int, Text};
    Catalog::new([
        TableSchema::new(
            TableName::public("t"),
            20_001,
            vec![
                col("id", Int, true),
                col("i", Int, false),
                col("j", Int, true),
                col("s", Text, false),
                col("u", Text, true),
                col("b", Bool, false),
                col("c", Bool, true),
            ],
            &["id"],
        ),
        TableSchema::new(
            TableName::public("p"),
            20_002,
            vec![
                col("id", Int, true),
                col("k", Int, false),
                col("m", Int, true),
                col("s", Text, false),
                col("b", Bool, false),
            ],
            &["id"],
        ),
        TableSchema::new(
            TableName::public("q"),
            20_003,
            vec![
                col("id", Int, true),
                col("pid", Int, true),
                col("b", Bool, true),
            ],
            &["id"],
        ),
    ])
}

/// Rows for `table` (positional, table order); ids are 1..=n.
pub fn rows(rng: &mut ChaCha8Rng, table: &TableSchema, n: usize) -> Vec<Vec<Value>> {
    (1..=n)
        .map(|id| {
            table
                .columns
                .iter()
                .enumerate()
                .map(|(index, column)| {
                    if index == 0 {
                        return Value::Int(id as i64);
                    }
                    if !column.not_null && rng.random_bool(0.2) {
                        return Value::Null;
                    }
                    match column.ty {
                        ColumnType::Int if column.name == "pid" => {
                            Value::Int(rng.random_range(1..=P_ROWS as i64 + 1))
                        }
                        ColumnType::Int => Value::Int(*INTS.choose(rng).expect("ints")),
                        ColumnType::Text => Value::Text(TEXTS.choose(rng).expect("t").to_string()),
                        ColumnType::Bool => Value::Bool(rng.random_bool(0.5)),
                    }
                })
                .collect()
        })
        .collect()
}

/// A generated WHERE clause on `t`.
pub struct Clause {
    pub sql: String,
    /// Made only of constructs the engine supports, without subqueries (a
    /// subquery clause may have no plan): the engine must accept it
    /// whenever PostgreSQL does.
    pub supported: bool,
}

pub fn clause(rng: &mut ChaCha8Rng) -> Clause {
    let mut g = Gen {
        rng,
        subqueries: 0,
        unsupported: false,
    };
    let sql = g.tree(3);
    Clause {
        sql,
        supported: !g.unsupported && g.subqueries == 0,
    }
}

struct Gen<'a> {
    rng: &'a mut ChaCha8Rng,
    /// Subqueries in this clause so far (at most two: PostgreSQL runs each).
    subqueries: u32,
    /// An atom the engine may refuse was drawn.
    unsupported: bool,
}

impl Gen<'_> {
    fn pick<'s>(&mut self, items: &[&'s str]) -> &'s str {
        items.choose(self.rng).expect("non-empty choice")
    }

    fn tree(&mut self, depth: u32) -> String {
        if depth == 0 {
            return self.atom();
        }
        match self.rng.random_range(0..10) {
            0..=3 => self.atom(),
            4 | 5 => format!("({}) AND ({})", self.tree(depth - 1), self.tree(depth - 1)),
            6 | 7 => format!("({}) OR ({})", self.tree(depth - 1), self.tree(depth - 1)),
            8 => format!("NOT ({})", self.tree(depth - 1)),
            _ => format!("{} OR {} AND {}", self.atom(), self.atom(), self.atom()),
        }
    }

    fn atom(&mut self) -> String {
        match self.rng.random_range(0..100) {
            0..=17 => self.int_compare(),
            18..=29 => self.text_compare(),
            30..=39 => self.bool_atom(),
            40..=46 => self.is_atom(),
            47..=58 => self.like(),
            59..=65 => self.between(),
            66..=74 => self.in_list(),
            75..=84 if self.subqueries < 2 => {
                self.subqueries += 1;
                self.subquery()
            }
            85..=90 => {
                self.unsupported = true;
                INVALID.choose(self.rng).expect("invalid").to_string()
            }
            91..=94 => {
                self.unsupported = true;
                self.unparenthesized()
            }
            _ => {
                self.unsupported = true;
                self.odd()
            }
        }
    }

    fn op(&mut self) -> &'static str {
        self.pick(&["=", "<>", "!=", "<", "<=", ">", ">="])
    }

    fn int_lit(&mut self) -> String {
        let n = *INTS.choose(self.rng).expect("ints");
        match self.rng.random_range(0..10) {
            0 => "NULL".to_string(),
            // Untyped literals take the column's type: PostgreSQL's int8
            // input allows surrounding spaces and a sign.
            1 => format!("'{n}'"),
            2 => format!("' {n} '"),
            3 if n >= 0 => format!("'+{n}'"),
            4 => self
                .pick(&[
                    "'00'",
                    "'-0'",
                    "9223372036854775807",
                    "'9223372036854775807'",
                    "-9223372036854775808",
                ])
                .to_string(),
            _ => n.to_string(),
        }
    }

    fn text_lit(&mut self) -> String {
        if self.rng.random_bool(0.08) {
            return "NULL".to_string();
        }
        quote(TEXTS.choose(self.rng).expect("texts"))
    }

    fn int_compare(&mut self) -> String {
        let column = self.pick(&["i", "j", "id"]);
        let op = self.op();
        match self.rng.random_range(0..5) {
            0 => format!("{} {op} {column}", self.int_lit()),
            1 => format!("{column} {op} {}", self.pick(&["i", "j"])),
            _ => format!("{column} {op} {}", self.int_lit()),
        }
    }

    fn text_compare(&mut self) -> String {
        let column = self.pick(&["s", "u"]);
        let op = self.op();
        match self.rng.random_range(0..5) {
            0 => format!("{} {op} {column}", self.text_lit()),
            1 => format!("s {op} u"),
            _ => format!("{column} {op} {}", self.text_lit()),
        }
    }

    fn bool_atom(&mut self) -> String {
        let column = self.pick(&["b", "c"]);
        let lit = self.pick(&[
            "true", "false", "TRUE", "NULL", "'t'", "'f'", "'true'", "'yes'", "'off'", "'1'",
        ]);
        match self.rng.random_range(0..6) {
            0 => column.to_string(),
            1 => format!("NOT {column}"),
            2 => format!("{column} = {lit}"),
            3 => format!("{column} <> {lit}"),
            4 => format!("b {} c", self.pick(&["=", "<>", "<", ">="])),
            _ => format!("{lit} = {column}"),
        }
    }

    fn is_atom(&mut self) -> String {
        let test = self.pick(&[
            "TRUE",
            "NOT TRUE",
            "FALSE",
            "NOT FALSE",
            "UNKNOWN",
            "NOT UNKNOWN",
        ]);
        match self.rng.random_range(0..5) {
            0 => format!(
                "{} IS {}",
                self.pick(&["i", "s", "b", "j"]),
                self.pick(&["NULL", "NOT NULL"])
            ),
            1 => format!("b IS {test}"),
            2 => format!("({}) IS {test}", self.int_compare()),
            3 => format!(
                "({}) IS {}",
                self.text_compare(),
                self.pick(&["NULL", "NOT NULL"])
            ),
            _ => format!("c IS {test}"),
        }
    }

    fn pattern(&mut self, escape: char) -> String {
        let mut out = String::new();
        for _ in 0..self.rng.random_range(0..5) {
            let piece = match self.rng.random_range(0..10) {
                0 | 1 => "%".to_string(),
                2 => "_".to_string(),
                3 => format!("{escape}{}", self.pick(&["%", "_", "a"])),
                4 => format!("{escape}{escape}"),
                _ => self
                    .pick(&["a", "A", "b", "c", "é", "É", " ", "''", "ß", "\\"])
                    .to_string(),
            };
            // A backslash is an ordinary character under another escape.
            if escape != '\\' || piece != "\\" {
                out.push_str(&piece);
            }
        }
        out
    }

    fn like(&mut self) -> String {
        let column = self.pick(&["s", "u"]);
        let op = self.pick(&["LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"]);
        match self.rng.random_range(0..8) {
            0 => {
                let pattern = self.pattern('#');
                format!("{column} {op} '{pattern}' ESCAPE '#'")
            }
            1 => format!("{column} {op} NULL"),
            _ => {
                let pattern = self.pattern('\\');
                format!("{column} {op} '{pattern}'")
            }
        }
    }

    fn between(&mut self) -> String {
        let not = self.pick(&["", "NOT "]);
        if self.rng.random_bool(0.6) {
            let column = self.pick(&["i", "j"]);
            let (low, high) = (self.int_lit(), self.int_lit());
            format!("{column} {not}BETWEEN {low} AND {high}")
        } else {
            let column = self.pick(&["s", "u"]);
            let (low, high) = (self.text_lit(), self.text_lit());
            format!("{column} {not}BETWEEN {low} AND {high}")
        }
    }

    fn in_list(&mut self) -> String {
        let not = self.pick(&["", "NOT "]);
        let n = self.rng.random_range(1..=4);
        match self.rng.random_range(0..3) {
            0 => {
                let items: Vec<String> = (0..n).map(|_| self.text_lit()).collect();
                format!("{} {not}IN ({})", self.pick(&["s", "u"]), items.join(", "))
            }
            1 => {
                let items: Vec<String> = (0..n).map(|_| self.int_lit()).collect();
                format!("{} {not}IN ({})", self.pick(&["i", "j"]), items.join(", "))
            }
            _ => format!(
                "b {not}IN ({})",
                self.pick(&["true", "true, NULL", "false, c"])
            ),
        }
    }

    /// A condition on `p` (a subquery's WHERE).
    fn p_condition(&mut self) -> String {
        let atom = |g: &mut Gen| match g.rng.random_range(0..7) {
            0 => "b".to_string(),
            1 => "NOT b".to_string(),
            2 => format!("k {} {}", g.op(), g.int_lit()),
            3 => format!("m IN ({}, {})", g.int_lit(), g.int_lit()),
            4 => format!("s {} '{}'", g.pick(&["LIKE", "ILIKE"]), g.pattern('\\')),
            5 => "k IS NULL".to_string(),
            _ => format!("s {} {}", g.op(), g.text_lit()),
        };
        match self.rng.random_range(0..4) {
            0 => format!("({}) OR ({})", atom(self), atom(self)),
            1 => format!("{} AND {}", atom(self), atom(self)),
            _ => atom(self),
        }
    }

    fn subquery(&mut self) -> String {
        let filter = match self.rng.random_range(0..4) {
            0 => String::new(),
            _ => format!(" WHERE {}", self.p_condition()),
        };
        match self.rng.random_range(0..8) {
            0 | 1 => format!("i IN (SELECT k FROM p{filter})"),
            2 => format!("j NOT IN (SELECT m FROM p{filter})"),
            3 => format!("(i, s) IN (SELECT k, s FROM p{filter})"),
            4 => format!(
                "j IN (SELECT m FROM p WHERE id IN (SELECT pid FROM q WHERE {}))",
                self.pick(&["b", "NOT b", "id > 2"])
            ),
            5 => format!("NOT (u IN (SELECT s FROM p{filter}))"),
            6 => format!("i NOT IN (SELECT k FROM p{filter})"),
            _ => format!("s IN (SELECT s FROM p{filter})"),
        }
    }

    /// Operators without parentheses: PostgreSQL's precedence (IS below
    /// comparisons, comparisons below BETWEEN/IN/LIKE, NOT below IS, AND
    /// below NOT, OR lowest) must be the engine's and the oracle's.
    fn unparenthesized(&mut self) -> String {
        match self.rng.random_range(0..4) {
            0 => self
                .pick(&[
                    "NOT b = c",
                    "b = c IS TRUE",
                    "b = c IS NOT FALSE",
                    "NOT b IS NULL",
                    "NOT c IS NOT TRUE",
                    "s LIKE 'a%' = c",
                    "u ILIKE 'A%' <> b",
                    "i BETWEEN 1 AND 3 = c",
                    "i IN (1, 2) = b",
                    "i IS NULL = c",
                    "NOT NOT b",
                    "c AND NOT b OR b AND NOT c",
                    "b OR c AND NOT b",
                    "i > 1 = b",
                    "'a' < 'B'",
                    "'B' < 'a'",
                    "'t' IS TRUE",
                    "NULL IS NULL",
                    "NULL = NULL",
                    "'3' BETWEEN i AND j",
                    "'abc' LIKE 'a%'",
                    "'é' > 'z'",
                    // Comparisons and IS do not associate: syntax errors.
                    "b IS TRUE IS TRUE",
                    "i IS NULL IS NULL",
                    "b = c = true",
                    "b = c <> true",
                ])
                .to_string(),
            _ => {
                let ops = ["AND", "OR", "AND NOT", "OR NOT"];
                let n = self.rng.random_range(2..=4);
                let mut out = self.atom();
                for _ in 1..n {
                    let op = *ops.choose(self.rng).expect("ops");
                    let next = self.atom();
                    out = format!("{out} {op} {next}");
                }
                out
            }
        }
    }

    /// Constructs PostgreSQL accepts that the engine may refuse (a refusal
    /// is fine; a different answer is not).
    fn odd(&mut self) -> String {
        self.pick(&[
            "i = 3::int8",
            "s = 'a'::text",
            "i BETWEEN SYMMETRIC 3 AND 1",
            "b IS DISTINCT FROM c",
            "i IS NOT DISTINCT FROM 3",
            "s LIKE u",
            "(i > 1) = b",
            "i = 99999999999999999999",
            "s = E'a\\\\c'",
            "s LIKE 'a%' ESCAPE ''",
            "u ~ 'a'",
            "i IN (SELECT k FROM p WHERE p.s = t.s)",
            "-i > 1",
            "i + 1 = 3",
            "lower(s) = 'a'",
            "true",
            "NULL",
            "NOT NULL",
            "1 = 1",
            "'a' < 'b'",
            // PostgreSQL errs only when a row's match reaches the escape.
            "u LIKE 'a\\'",
            "u LIKE 'ab#' ESCAPE '#'",
        ])
        .to_string()
    }
}

/// Clauses PostgreSQL rejects while analysing them (each one is also
/// checked alone, once per run).
pub const INVALID: [&str; 23] = [
    "i = 'abc'",
    "i < '3.5'",
    "s > 3",
    "b = 2",
    "b = 'maybe'",
    "i LIKE 'a'",
    "b BETWEEN 1 AND 2",
    "NOT i",
    "i AND c",
    "s IN (1, 2)",
    "i IN (1, 'x')",
    "nosuch = 1",
    "i IN (SELECT s FROM p)",
    "i IN (SELECT k, m FROM p)",
    "i IN (SELECT nosuch FROM p)",
    "i IN (SELECT k FROM nosuch)",
    "u LIKE 'a' ESCAPE 'xy'",
    "i = s",
    "b = i",
    "i =",
    "s IS TRUE",
    "i IS NOT FALSE",
    "(i, s) IN (SELECT k FROM p)",
];

/// An SQL string literal of `text` (standard_conforming_strings: only `'`
/// is doubled).
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// An SQL literal of a value (for loading rows).
pub fn literal(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Text(s) => quote(s),
    }
}
