//! The WHERE case table (every supported construct, every NULL corner), the
//! list of unsupported constructs, and shape identity.

use super::eval::{NoSubqueries, eval};
use super::like::{compile_like, like_matches};
use super::parse::parse_where;
use super::*;
use crate::schema::{Column, ColumnType, Row};
use proptest::prelude::*;

fn col(name: &str, ty: ColumnType, not_null: bool) -> Column {
    Column {
        name: name.to_string(),
        ty,
        not_null,
    }
}

pub(super) fn catalog() -> Catalog {
    let t = TableSchema::new(
        TableName::public("t"),
        16_384,
        vec![
            col("id", ColumnType::Int, true),
            col("name", ColumnType::Text, false),
            col("flag", ColumnType::Bool, false),
            col("n", ColumnType::Int, false),
        ],
        &["id"],
    );
    let u = TableSchema::new(
        TableName::public("u"),
        16_385,
        vec![
            col("id", ColumnType::Int, true),
            col("active", ColumnType::Bool, true),
            col("t_id", ColumnType::Int, false),
        ],
        &["id"],
    );
    Catalog::new([t, u])
}

pub(super) fn table(catalog: &Catalog) -> &TableSchema {
    catalog.table(&TableName::public("t")).unwrap()
}

/// R1: every column set; R2: every nullable column NULL; R3: awkward text.
fn rows() -> [Row; 3] {
    [
        vec![
            Value::Int(1),
            Value::Text("abc".into()),
            Value::Bool(true),
            Value::Int(5),
        ],
        vec![Value::Int(2), Value::Null, Value::Null, Value::Null],
        vec![
            Value::Int(3),
            Value::Text("A_b%c\\".into()),
            Value::Bool(false),
            Value::Int(-3),
        ],
    ]
}

const T: Value = Value::Bool(true);
const F: Value = Value::Bool(false);
const N: Value = Value::Null;

#[rustfmt::skip]
fn case_table() -> Vec<(&'static str, [Value; 3])> {
    vec![
        // comparisons on integers, NULL propagates
        ("n = 5", [T, N, F]), ("n <> 5", [F, N, T]), ("n < 5", [F, N, T]), ("n <= 5", [T, N, T]),
        ("n > 4", [T, N, F]), ("n >= 5", [T, N, F]), ("n > -4", [T, N, T]), ("n = +5", [T, N, F]),
        ("5 = n", [T, N, F]), ("n = NULL", [N, N, N]), ("NULL = NULL", [N, N, N]), ("id = 2", [F, T, F]),
        // untyped string literals take the type they meet
        ("n = '5'", [T, N, F]), ("flag = 'yes'", [T, N, F]), ("flag = 'off'", [F, N, T]),
        // text compares bytewise (C collation)
        ("name = 'abc'", [T, N, F]), ("name < 'abd'", [T, N, T]), ("name > 'ABC'", [T, N, T]),
        ("'B' < 'a'", [T, T, T]), ("'a' < 'B'", [F, F, F]), ("name <> 'abc'", [F, N, T]),
        // booleans: false < true
        ("flag = true", [T, N, F]), ("flag < true", [F, N, T]), ("flag >= false", [T, N, T]),
        ("flag", [T, N, F]), ("true", [T, T, T]), ("NULL", [N, N, N]),
        // three-valued AND / OR / NOT
        ("flag AND true", [T, N, F]), ("flag AND false", [F, F, F]), ("flag OR true", [T, T, T]),
        ("flag OR false", [T, N, F]), ("NOT flag", [F, N, T]), ("NOT NULL", [N, N, N]),
        ("NULL AND false", [F, F, F]), ("NULL OR true", [T, T, T]), ("NULL AND true", [N, N, N]),
        ("n = 5 AND name = 'abc'", [T, N, F]), ("n = 5 OR name IS NULL", [T, T, F]),
        ("(n = 5 OR n = 6) AND NOT (name = 'x')", [T, N, F]),
        ("NOT (n > 0 AND flag)", [F, N, T]),
        // IS [NOT] NULL
        ("name IS NULL", [F, T, F]), ("name IS NOT NULL", [T, F, T]), ("NULL IS NULL", [T, T, T]),
        ("(n > 3) IS NULL", [F, T, F]),
        // IS [NOT] TRUE / FALSE / UNKNOWN never yield NULL
        ("flag IS TRUE", [T, F, F]), ("flag IS NOT TRUE", [F, T, T]), ("flag IS FALSE", [F, F, T]),
        ("flag IS NOT FALSE", [T, T, F]), ("flag IS UNKNOWN", [F, T, F]), ("flag IS NOT UNKNOWN", [T, F, T]),
        ("(n > 3) IS TRUE", [T, F, F]), ("(n > 3) IS NOT FALSE", [T, T, F]),
        // LIKE / ILIKE with %, _ and escapes
        ("name LIKE 'a%'", [T, N, F]), ("name LIKE 'a_c'", [T, N, F]), ("name LIKE 'a_'", [F, N, F]),
        ("name LIKE '%'", [T, N, T]), ("name LIKE ''", [F, N, F]), ("name NOT LIKE 'a%'", [F, N, T]),
        ("name LIKE '%c'", [T, N, F]), ("name LIKE '%b%'", [T, N, T]), ("name LIKE NULL", [N, N, N]),
        ("name LIKE 'A\\_b\\%c\\\\'", [F, N, T]), ("name LIKE 'A\\_b%'", [F, N, T]), ("name LIKE 'Ax%'", [F, N, F]),
        ("'Axb' LIKE 'A\\_b'", [F, F, F]), ("'A_b' LIKE 'A\\_b'", [T, T, T]),
        ("'a%' LIKE 'a#%' ESCAPE '#'", [T, T, T]), ("'ab' LIKE 'a#%' ESCAPE '#'", [F, F, F]),
        ("'a\\b' LIKE 'a\\b' ESCAPE ''", [T, T, T]),
        ("'abcabc' LIKE '%bc%bc'", [T, T, T]), ("'abcab' LIKE '%bc%bc'", [F, F, F]), ("'' LIKE '%%'", [T, T, T]),
        ("name ILIKE 'ABC'", [T, N, F]), ("name NOT ILIKE 'A%'", [F, N, F]), ("name ILIKE 'a\\_B%'", [F, N, T]),
        ("'É' ILIKE 'é'", [F, F, F]), ("'é' LIKE '_'", [T, T, T]),
        // [NOT] BETWEEN is >= AND <=, with NULLs
        ("n BETWEEN 1 AND 10", [T, N, F]), ("n NOT BETWEEN 1 AND 10", [F, N, T]),
        ("n BETWEEN NULL AND 0", [F, N, N]), ("n NOT BETWEEN NULL AND 0", [T, N, N]),
        ("n BETWEEN 5 AND 5", [T, N, F]), ("n BETWEEN 10 AND 1", [F, N, F]),
        ("name BETWEEN 'a' AND 'b'", [T, N, F]),
        // [NOT] IN (list), with NULL in the list
        ("n IN (1, 5)", [T, N, F]), ("n IN (1, NULL)", [N, N, N]), ("n IN (5, NULL)", [T, N, N]),
        ("n NOT IN (1, 2)", [T, N, T]), ("n NOT IN (1, NULL)", [N, N, N]), ("n NOT IN (5, NULL)", [F, N, N]),
        ("n IN ('5', '-3')", [T, N, T]), ("name IN ('abc', 'x')", [T, N, F]), ("flag IN (false)", [F, N, T]),
    ]
}

#[test]
fn where_case_table() {
    let catalog = catalog();
    let mut failures = Vec::new();
    for (clause, expected) in case_table() {
        let expr = parse_where(clause, table(&catalog), &catalog)
            .unwrap_or_else(|e| panic!("{clause}: {e}"));
        for (row, want) in rows().iter().zip(expected) {
            let got = eval(&expr, row, &NoSubqueries);
            if got != want {
                failures.push(format!("{clause} on {row:?}: got {got:?}, want {want:?}"));
            }
            // The canonical text is a fixed point: it parses back to itself.
            let reparsed = parse_where(&expr.to_string(), table(&catalog), &catalog).unwrap();
            assert_eq!(
                reparsed.to_string(),
                expr.to_string(),
                "canonical text of {clause:?}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn unsupported_constructs_name_the_construct() {
    #[rustfmt::skip]
    let cases = [
        ("lower(name) = 'a'", "function call"),
        ("n::text = '5'", "type cast"),
        ("CASE WHEN n > 1 THEN true ELSE false END", "CASE"),
        ("EXISTS (SELECT 1 FROM t)", "EXISTS"),
        ("n = (SELECT n FROM t)", "scalar subquery"),
        ("n + 1 = 2", "operator `+`"),
        ("name || 'x' = 'y'", "operator `||`"),
        ("n IS DISTINCT FROM 5", "DISTINCT FROM"),
        ("name SIMILAR TO 'a%'", "SIMILAR TO"),
        ("n = ANY(ARRAY[1, 2])", "ANY"),
        ("n = $1", "positional parameter $1"),
        ("name ~ 'a.*'", "operator `~`"),
        ("t.n = 5", "qualified column"),
        ("n = 1.5", "numeric literal 1.5"),
        ("n & 1 = 1", "operator `&`"),
        ("-n = 5", "arithmetic"),
        ("name COLLATE \"C\" = 'a'", "COLLATE"),
        ("name LIKE name", "pattern must be a string literal"),
        ("name LIKE 'a\\'", "must not end with its escape"),
        ("name LIKE 'a' ESCAPE 'xy'", "ESCAPE must be a one-character"),
        ("n IN (SELECT n, id FROM t)", "but 1 plain column"),
        ("(n, id) IN (SELECT n FROM t)", "but 2 plain columns"),
        ("(n, id) IN (SELECT n, id + 1 FROM t)", "but 2 plain columns"),
        ("(id, name) IN (SELECT t_id, id FROM u)", "must have the subquery's column types"),
        ("n IN (SELECT n FROM t LIMIT 1)", "LIMIT"),
        ("n IN (SELECT n FROM t ORDER BY n)", "ORDER BY"),
        ("n IN (SELECT DISTINCT n FROM t)", "DISTINCT"),
        ("n IN (SELECT n FROM t GROUP BY n)", "GROUP BY"),
        ("n IN (SELECT n FROM t JOIN u ON true)", "JOIN"),
        ("n IN (SELECT n FROM t UNION SELECT n FROM t)", "plain SELECT"),
        ("n IN (SELECT n FROM t AS x)", "plain table name"),
        ("n IN (WITH c AS (SELECT 1) SELECT n FROM t)", "WITH"),
        ("n + 0 IN (SELECT n FROM t)", "on the left of IN"),
        ("(n, 1) IN (SELECT n, id FROM t)", "on the left of IN"),
        ("5 IN (SELECT n FROM t)", "on the left of IN"),
        // PostgreSQL: syntax errors (comparisons do not associate). Found
        // by the WHERE differential against PostgreSQL (reality crate).
        ("n > 1 = flag", "do not associate"),
        ("flag = flag <> true", "do not associate"),
    ];
    assert!(cases.len() >= 15);
    let catalog = catalog();
    for (clause, fragment) in cases {
        let err = parse_where(clause, table(&catalog), &catalog).expect_err(clause);
        let text = err.to_string();
        assert!(
            text.contains(fragment),
            "{clause:?}: {text:?} should mention {fragment:?}"
        );
        assert!(
            text.contains("not supported") || text.contains("must"),
            "{clause:?}: {text:?}"
        );
    }
}

#[test]
fn schema_errors_are_clear_and_located() {
    #[rustfmt::skip]
    let cases = [
        ("nope = 1", "unknown column \"nope\" in table \"public\".\"t\""),
        ("\"N\" = 5", "unknown column \"N\""),
        ("n = 'abc'", "invalid input syntax for type integer: \"abc\""),
        ("flag = 'maybe'", "invalid input syntax for type boolean"),
        ("n = name", "cannot compare text with integer"),
        ("flag = 1", "cannot compare integer with boolean"),
        ("n IN (1, name)", "cannot compare text with integer"),
        ("n IN (1, 'x')", "invalid input syntax for type integer: \"x\""),
        ("n", "the WHERE clause must be boolean, but `n` is integer"),
        ("name AND flag", "an operand of AND/OR must be boolean"),
        ("NOT n", "the operand of NOT must be boolean"),
        ("n LIKE '5'", "LIKE needs a text operand"),
        ("n IN (SELECT id FROM missing)", "unknown table \"public\".\"missing\""),
        ("name IN (SELECT id FROM u)", "must have the subquery's column types"),
        ("n IN (SELECT nope FROM u)", "unknown column \"nope\" in table \"public\".\"u\""),
        ("n = 1 garbage", "unexpected `garbage` after the end"),
        ("   ", "the WHERE clause is empty"),
        ("n = ", "invalid WHERE clause"),
        ("n = 99999999999999999999", "only 64-bit integers"),
    ];
    let catalog = catalog();
    for (clause, fragment) in cases {
        let err = parse_where(clause, table(&catalog), &catalog).expect_err(clause);
        assert!(
            err.to_string().contains(fragment),
            "{clause:?}: {err} should mention {fragment:?}"
        );
    }
    let err = parse_where("n = 1 AND\n  nope > 2", table(&catalog), &catalog).unwrap_err();
    assert_eq!(err.location, Some((2, 3)), "{err}");
}

#[test]
fn subqueries_parse_and_are_stored_not_evaluated() {
    let catalog = catalog();
    let expr = parse_where(
        "id IN (SELECT t_id FROM u WHERE active AND id IN (SELECT id FROM t WHERE n > 1)) OR n NOT IN (SELECT id FROM public.u)",
        table(&catalog),
        &catalog,
    )
    .unwrap();
    assert!(expr.has_subquery());
    assert_eq!(
        expr.to_string(),
        "((\"id\" IN (SELECT \"t_id\" FROM \"public\".\"u\" WHERE (\"active\" AND (\"id\" IN (SELECT \"id\" FROM \"public\".\"t\" WHERE (\"n\" > 1)))))) OR (\"n\" NOT IN (SELECT \"id\" FROM \"public\".\"u\")))"
    );
    let row = parse_where(
        "(id, n) NOT IN (SELECT t_id, id FROM u WHERE active)",
        table(&catalog),
        &catalog,
    )
    .unwrap();
    assert_eq!(
        row.to_string(),
        "((\"id\", \"n\") NOT IN (SELECT \"t_id\", \"id\" FROM \"public\".\"u\" WHERE \"active\"))"
    );
    assert!(
        !parse_where("n IN (1, 2)", table(&catalog), &catalog)
            .unwrap()
            .has_subquery()
    );
}

fn request(
    table: &str,
    columns: Option<&[&str]>,
    where_clause: Option<&str>,
    replica: Replica,
) -> ShapeRequest {
    ShapeRequest {
        table: table.to_string(),
        columns: columns.map(|c| c.iter().map(|s| s.to_string()).collect()),
        where_clause: where_clause.map(str::to_string),
        replica,
    }
}

#[test]
fn identity_ignores_spelling_but_not_meaning() {
    let catalog = catalog();
    let shape = |t, c, w, r| Shape::new(&catalog, &request(t, c, w, r)).unwrap();
    let a = shape(
        "t",
        Some(&["name", "n"]),
        Some("n = 5 AND name = 'x'"),
        Replica::Default,
    );
    let b = shape(
        "public.T",
        Some(&["n", "id", "name"]),
        Some("  (N=5)   and\n NAME = 'x' "),
        Replica::Default,
    );
    assert_eq!(a.comparable(), b.comparable());
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.hash().len(), 16);
    assert_eq!(a.selected, vec![0, 1, 3], "primary key added, table order");

    let different = [
        shape(
            "t",
            Some(&["name", "n"]),
            Some("n = 6 AND name = 'x'"),
            Replica::Default,
        ),
        shape(
            "t",
            Some(&["name"]),
            Some("n = 5 AND name = 'x'"),
            Replica::Default,
        ),
        shape(
            "t",
            Some(&["name", "n"]),
            Some("n = 5 AND name = 'x'"),
            Replica::Full,
        ),
        shape("t", Some(&["name", "n"]), None, Replica::Default),
        shape("u", None, Some("active"), Replica::Default),
    ];
    for other in &different {
        assert_ne!(a.comparable(), other.comparable());
        assert_ne!(a.hash(), other.hash());
    }
    // The stored request recreates the same shape.
    assert_eq!(Shape::new(&catalog, &a.to_request()).unwrap(), a);

    // A column added to the table makes every shape on it another shape,
    // even one that does not select the new column.
    let mut altered = table(&catalog).clone();
    altered.columns.push(col("extra", ColumnType::Text, false));
    let altered = Catalog::new([altered]);
    let again = Shape::new(&altered, &a.to_request()).unwrap();
    assert_eq!(again.selected, a.selected, "the same columns selected");
    assert_ne!(again.comparable(), a.comparable());
    assert_ne!(again.hash(), a.hash());
}

#[test]
fn bad_requests_name_the_field() {
    let catalog = catalog();
    let err = |t, c, w| Shape::new(&catalog, &request(t, c, w, Replica::Default)).unwrap_err();
    assert_eq!(err("missing", None, None).field(), "table");
    assert!(
        err("missing", None, None)
            .to_string()
            .contains("\"public\".\"missing\" does not exist")
    );
    assert_eq!(err("a b", None, None).field(), "table");
    assert_eq!(err("t", Some(&["nope"]), None).field(), "columns");
    assert!(
        err("t", Some(&["nope"]), None)
            .to_string()
            .contains("unknown column \"nope\"")
    );
    assert_eq!(err("t", Some(&[]), None).field(), "columns");
    assert_eq!(err("t", None, Some("nope = 1")).field(), "where");
}

#[test]
fn shape_includes_only_rows_where_the_clause_is_true() {
    let catalog = catalog();
    let shape = Shape::new(
        &catalog,
        &request(
            "t",
            None,
            Some("flag IS NOT FALSE AND n <> 5"),
            Replica::Default,
        ),
    )
    .unwrap();
    let [r1, r2, r3] = rows();
    assert!(!shape.includes(&r1), "n <> 5 is false");
    assert!(!shape.includes(&r2), "NULL is not TRUE");
    assert!(!shape.includes(&r3), "flag is false");
    let everything = Shape::new(&catalog, &request("t", None, None, Replica::Default)).unwrap();
    assert!(rows().iter().all(|r| everything.includes(r)));
}

/// Reference LIKE: plain recursion over the compiled tokens.
fn like_reference(tokens: &[super::expr::LikeToken], text: &[char]) -> bool {
    use super::expr::LikeToken::*;
    match tokens.split_first() {
        None => text.is_empty(),
        Some((AnyRun, rest)) => (0..=text.len()).any(|i| like_reference(rest, &text[i..])),
        Some((AnyOne, rest)) => !text.is_empty() && like_reference(rest, &text[1..]),
        Some((Char(c), rest)) => text.first() == Some(c) && like_reference(rest, &text[1..]),
    }
}

proptest! {
    #![proptest_config(crate::testing::proptest_config(256))]

    #[test]
    fn like_matcher_agrees_with_the_reference(pattern in "[ab%_\\\\]{0,8}", text in "[abAB]{0,8}", ci in any::<bool>()) {
        if let Ok(tokens) = compile_like(&pattern, Some('\\'), ci) {
            let folded: Vec<char> = text.chars().map(|c| if ci { c.to_ascii_lowercase() } else { c }).collect();
            prop_assert_eq!(like_matches(&tokens, &text, ci), like_reference(&tokens, &folded));
        }
    }
}

/// The memo (`memo.rs`) answers exactly what a fresh check answers: for
/// each catalog its own answer, after a table changes, after a catalog
/// was forgotten, and for refusals.
#[test]
fn remembered_shapes_follow_the_catalog() {
    let base = catalog();
    let widened = |extra: &str| {
        let mut catalog = base.clone();
        let mut t = table(&base).clone();
        t.columns.push(col(extra, ColumnType::Int, false));
        catalog.upsert(t);
        catalog
    };
    let catalogs: Vec<Catalog> = std::iter::once(base.clone())
        .chain((0..6).map(|i| widened(&format!("extra{i}"))))
        .collect();
    let requests = [
        request("t", None, Some("n = 5"), Replica::Default),
        request("t", None, Some("extra0 = 1"), Replica::Default),
        request("t", Some(&["name"]), None, Replica::Full),
    ];
    // Twice round, so the second round meets both remembered and
    // forgotten catalogs (more catalogs than the memo keeps).
    for _ in 0..2 {
        for catalog in &catalogs {
            for r in &requests {
                assert_eq!(
                    Shape::new(catalog, r),
                    Shape::check(catalog, r).map(Arc::new),
                    "{r:?}"
                );
                assert_eq!(
                    Shape::inner(catalog, r),
                    Shape::check_inner(catalog, r).map(Arc::new)
                );
            }
        }
    }
    let plain = Shape::new(&catalogs[0], &requests[0]).unwrap();
    let wider = Shape::new(&catalogs[1], &requests[0]).unwrap();
    assert_ne!(
        plain.comparable(),
        wider.comparable(),
        "a new column is a new shape"
    );
    assert_eq!(wider.selected.len(), plain.selected.len() + 1);
    assert!(
        Shape::new(&catalogs[0], &requests[1]).is_err(),
        "no extra0 in the base"
    );
    assert!(Shape::new(&catalogs[1], &requests[1]).is_ok());
}
