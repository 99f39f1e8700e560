//! Subquery shapes: the DNF plan, views, tags and active conditions,
//! against tables of cases.

use super::parse::parse_where;
use super::tests::{catalog, table};
use super::{Shape, ShapeRequest};
use crate::schema::{Row, Value};

/// The DNF plan of a clause, printed with its positions, or the error.
fn plan(clause: &str) -> Result<super::dnf::DnfPlan, super::dnf::PlanError> {
    let catalog = catalog();
    super::dnf::DnfPlan::new(&parse_where(clause, table(&catalog), &catalog).unwrap())
}

#[test]
fn dnf_plan_case_table() {
    use super::dnf::Polarity::{Negated, Positive};
    const S1: &str = "(SELECT t_id FROM u)";
    const S2: &str = "(SELECT id FROM u WHERE active)";
    let s1 = r#"("id" IN (SELECT "t_id" FROM "public"."u"))"#;
    let s2 = r#"("n" IN (SELECT "id" FROM "public"."u" WHERE "active"))"#;
    // (clause, printed plan, dependency positions, dependency disjuncts, polarities)
    type Case = (
        String,
        String,
        Vec<Vec<usize>>,
        Vec<Vec<usize>>,
        Vec<super::dnf::Polarity>,
    );
    let cases: Vec<Case> = vec![
        (
            format!("id IN {S1} AND (n = 1 OR n IN {S2})"),
            format!("[0: {s1}] AND [1: (\"n\" = 1)] OR [2: {s1}] AND [3: {s2}]"),
            vec![vec![0, 2], vec![3]],
            vec![vec![0, 1], vec![1]],
            vec![Positive, Positive],
        ),
        (
            // NOT over OR: De Morgan, both atoms negated in one disjunct.
            format!("NOT (id IN {S1} OR name = 'x')"),
            format!("[0: NOT {s1}] AND [1: NOT (\"name\" = 'x')]"),
            vec![vec![0]],
            vec![vec![0]],
            vec![Negated],
        ),
        (
            // NOT IN is a negated position; a double NOT cancels.
            format!("id NOT IN {S1} OR NOT (NOT (n IN {S2}))"),
            format!("[0: NOT {s1}] OR [1: {s2}]"),
            vec![vec![0], vec![1]],
            vec![vec![0], vec![1]],
            vec![Negated, Positive],
        ),
        (
            // NOT over AND: one disjunct per negated atom.
            format!("NOT (n NOT IN {S2} AND flag)"),
            format!("[0: {s2}] OR [1: NOT \"flag\"]"),
            vec![vec![0]],
            vec![vec![0]],
            vec![Positive],
        ),
        (
            // A nested subquery belongs to its own dependency shape: the
            // outer clause has one position for it.
            "id IN (SELECT t_id FROM u WHERE t_id IN (SELECT id FROM t WHERE n > 1))".into(),
            r#"[0: ("id" IN (SELECT "t_id" FROM "public"."u" WHERE ("t_id" IN (SELECT "id" FROM "public"."t" WHERE ("n" > 1)))))]"#.into(),
            vec![vec![0]],
            vec![vec![0]],
            vec![Positive],
        ),
        (
            // Dependencies are numbered as written (S1 first), not as the
            // expansion meets them (S2 is in the first disjunct).
            format!("(n = 1 OR id IN {S1}) AND n IN {S2}"),
            format!("[0: (\"n\" = 1)] AND [1: {s2}] OR [2: {s1}] AND [3: {s2}]"),
            vec![vec![2], vec![1, 3]],
            vec![vec![1], vec![0, 1]],
            vec![Positive, Positive],
        ),
        (
            "n > 1".into(),
            "[0: (\"n\" > 1)]".into(),
            vec![],
            vec![],
            vec![],
        ),
    ];
    for (clause, printed, positions, disjuncts, polarities) in cases {
        let plan = plan(&clause).unwrap_or_else(|e| panic!("{clause}: {e}"));
        assert_eq!(plan.to_string(), printed, "{clause}");
        assert_eq!(plan.dependency_positions, positions, "{clause}");
        assert_eq!(plan.dependency_disjuncts, disjuncts, "{clause}");
        assert_eq!(plan.dependency_polarities, polarities, "{clause}");
        for (p, position) in plan.positions.iter().enumerate() {
            assert!(plan.disjuncts[position.disjunct].contains(&p), "{clause}");
        }
    }
}

#[test]
fn dnf_plan_refuses_mixed_polarity_and_more_than_a_hundred_disjuncts() {
    use super::dnf::PlanError;
    for clause in [
        "id IN (SELECT t_id FROM u) OR n NOT IN (SELECT t_id FROM u)",
        "NOT (id IN (SELECT t_id FROM u)) AND id IN (SELECT t_id FROM u)",
    ] {
        let err = plan(clause).unwrap_err();
        assert!(matches!(err, PlanError::MixedPolarity { .. }), "{clause}");
        assert!(
            err.to_string()
                .contains("SELECT \"t_id\" FROM \"public\".\"u\""),
            "{err}"
        );
    }
    // A dependency's own clause is a shape of its own and is planned too.
    let nested = "id IN (SELECT t_id FROM u WHERE t_id IN (SELECT id FROM t) OR t_id NOT IN (SELECT id FROM t))";
    assert!(matches!(
        plan(nested).unwrap_err(),
        PlanError::MixedPolarity { .. }
    ));
    // A subquery inside another expression has no position of its own.
    for clause in [
        "(id IN (SELECT t_id FROM u)) IS TRUE",
        "n > 1 AND NOT ((id IN (SELECT t_id FROM u)) IS NOT TRUE)",
    ] {
        let err = plan(clause).unwrap_err();
        assert!(
            matches!(err, PlanError::SubqueryInExpression { .. }),
            "{clause}: {err}"
        );
    }
    // Different subqueries may have different polarities.
    plan("id IN (SELECT t_id FROM u) AND n NOT IN (SELECT id FROM u)").unwrap();
    let ors = |column: &str, k: usize| {
        let terms: Vec<String> = (0..k).map(|i| format!("{column} = {i}")).collect();
        format!("({})", terms.join(" OR "))
    };
    let hundred = format!("{} AND {}", ors("n", 10), ors("id", 10));
    assert_eq!(plan(&hundred).unwrap().disjuncts.len(), 100);
    let more = format!("{} AND {}", ors("n", 11), ors("id", 10));
    assert_eq!(plan(&more).unwrap_err(), PlanError::TooManyDisjuncts);
    let wide = ors("n", 101);
    assert_eq!(plan(&wide).unwrap_err(), PlanError::TooManyDisjuncts);
}

#[test]
fn value_hashes_match_electrics_md5_of_stack_handle_and_namespaced_values() {
    use super::tags::value_hash;
    let (stack, handle) = ("stack-1", "h-1");
    // md5("stack-1h-1v:7"), md5("stack-1h-1NULL"), md5("stack-1h-1id:v:7n:NULL")
    assert_eq!(
        value_hash(stack, handle, &["id"], &[Value::Int(7)]),
        "71aab5141543033e03084e6a0db2731b"
    );
    assert_eq!(
        value_hash(stack, handle, &["id"], &[Value::Null]),
        "94b20d57c4eaf5ef3af1c759df3f559f"
    );
    assert_eq!(
        value_hash(stack, handle, &["id", "n"], &[Value::Int(7), Value::Null]),
        "8b8e3179197a9982f4ab18580fefd5d4"
    );
}

#[test]
fn views_answer_membership_as_sql_does() {
    use super::tags::View;
    let (i, null) = (Value::Int, Value::Null);
    let single = View::new([vec![i(3)], vec![null.clone()]]);
    let no_null = View::new([vec![i(3)]]);
    let pairs = View::new([vec![i(7), i(1)]]);
    #[rustfmt::skip]
    let cases: [(&View, Vec<Value>, Option<bool>); 9] = [
        (&single, vec![i(3)], Some(true)),
        (&single, vec![i(5)], None),            // 5 = NULL is unknown
        (&no_null, vec![i(5)], Some(false)),
        (&no_null, vec![null.clone()], None),
        (&View::default(), vec![null.clone()], Some(false)), // IN (empty) is FALSE
        (&pairs, vec![i(7), i(1)], Some(true)),
        (&pairs, vec![i(7), null.clone()], None), // 7 = 7 and 1 = NULL: unknown
        (&pairs, vec![i(8), null.clone()], Some(false)), // 7 <> 8 decides
        (&pairs, vec![i(7), i(2)], Some(false)),
    ];
    for (view, row, expected) in cases {
        assert_eq!(view.membership(&row), expected, "{row:?} in {view:?}");
    }
}

#[test]
fn tags_and_active_conditions_case_table() {
    use super::tags::{View, active_conditions, included, tags};
    let catalog = catalog();
    let clause = parse_where(
        "id IN (SELECT t_id FROM u) AND flag OR n NOT IN (SELECT id FROM u)",
        table(&catalog),
        &catalog,
    )
    .unwrap();
    let plan = super::dnf::DnfPlan::new(&clause).unwrap();
    let (i, b, t, null) = (
        Value::Int,
        Value::Bool,
        |s: &str| Value::Text(s.into()),
        Value::Null,
    );
    let with_null = [
        View::new([vec![i(7)]]),
        View::new([vec![i(3)], vec![null.clone()]]),
    ];
    let without_null = [View::new([vec![i(7)]]), View::new([vec![i(3)]])];
    // (views, row (id, name, flag, n), active conditions, included)
    #[rustfmt::skip]
    let cases: Vec<(&[View], Row, [bool; 3], bool)> = vec![
        (&with_null, vec![i(7), t("a"), b(true), i(5)], [true, true, false], true),
        // 5 NOT IN (3, NULL) is NULL: the negated position is not active.
        (&without_null, vec![i(7), t("a"), b(true), i(5)], [true, true, true], true),
        (&with_null, vec![i(8), t("b"), null.clone(), i(3)], [false, false, false], false),
        // NULLs everywhere: nothing is TRUE, so nothing is active (Electric
        // would take NULL as false and negate it to true here).
        (&with_null, vec![null.clone(), null.clone(), b(true), null.clone()], [false, true, false], false),
        (&without_null, vec![i(9), t("c"), b(false), i(4)], [false, false, true], true),
    ];
    for (views, row, expected, in_shape) in cases {
        let active = active_conditions(&plan, views, &row);
        assert_eq!(active, expected, "{row:?}");
        assert_eq!(
            included(&plan, &active, &clause, views, &row),
            in_shape,
            "{row:?}"
        );
    }
    // Tags: one per disjunct, a slot per position; hashes for subquery
    // positions (md5("stack-1h-1v:7"), md5("stack-1h-1v:5")), 1 otherwise.
    let row = vec![i(7), t("a"), b(true), i(5)];
    assert_eq!(
        tags(&plan, "stack-1", "h-1", &row),
        vec![
            "71aab5141543033e03084e6a0db2731b/1/".to_string(),
            "//f1b363ce9b3d4a2d71f17e87a03e9fff".to_string(),
        ]
    );
}

/// A shape on table `t` filtered by `clause`.
fn shape_on_t(catalog: &crate::schema::Catalog, clause: &str) -> Result<Shape, super::ShapeError> {
    let request = ShapeRequest {
        table: "t".into(),
        where_clause: Some(clause.into()),
        ..Default::default()
    };
    Shape::new(catalog, &request).map(|s| Shape::clone(&s))
}

#[test]
fn not_in_needs_not_null_columns_on_both_sides_at_every_level() {
    use super::ShapeError;
    use super::dnf::PlanError;
    let catalog = catalog();
    let check = |clause: &str| shape_on_t(&catalog, clause).map(|_| ());
    // t.id and u.id are NOT NULL; t.n and u.t_id are nullable.
    check("id NOT IN (SELECT id FROM u)").unwrap();
    check("n IN (SELECT t_id FROM u)").unwrap();
    for (clause, column) in [
        ("n NOT IN (SELECT id FROM u)", "\"public\".\"t\".n"),
        ("id NOT IN (SELECT t_id FROM u)", "\"public\".\"u\".t_id"),
        ("NOT (id IN (SELECT t_id FROM u))", "\"public\".\"u\".t_id"),
        (
            "id IN (SELECT id FROM u WHERE t_id NOT IN (SELECT id FROM t))",
            "\"public\".\"u\".t_id",
        ),
    ] {
        match check(clause) {
            Err(ShapeError::Plan(PlanError::NullableNegated { column: c, .. })) => {
                assert_eq!(c, column, "{clause}")
            }
            other => panic!("{clause}: {other:?}"),
        }
    }
}

#[test]
fn every_spelling_of_a_subquery_shares_one_inner_shape() {
    let catalog = catalog();
    let outer = |clause: &str| shape_on_t(&catalog, clause).unwrap();
    let inner = |shape: &Shape| {
        let plan = shape.where_clause.as_ref().unwrap().plan.as_ref().unwrap();
        Shape::for_dependency(&catalog, &plan.dependencies[0]).unwrap()
    };
    let a = inner(&outer("id IN (SELECT t_id FROM u WHERE active)"));
    let b = inner(&outer(
        "n > 1 OR n IN (SELECT T_ID FROM public.u WHERE (active))",
    ));
    assert_eq!(a.comparable(), b.comparable());
    assert_eq!(a.hash(), b.hash());
    // The primary key is selected with the subquery's column.
    let names: Vec<&str> = a
        .selected
        .iter()
        .map(|&i| a.table.columns[i].name.as_str())
        .collect();
    assert_eq!(names, vec!["id", "t_id"]);
    // A nested subquery makes the inner shape a subquery shape in turn.
    let nested = inner(&outer(
        "id IN (SELECT t_id FROM u WHERE t_id IN (SELECT id FROM t WHERE n > 1))",
    ));
    let plan = nested.where_clause.as_ref().unwrap().plan.as_ref().unwrap();
    assert_eq!(plan.dependencies.len(), 1);
    assert_eq!(
        plan.dependencies[0].table,
        crate::schema::TableName::public("t")
    );
}
