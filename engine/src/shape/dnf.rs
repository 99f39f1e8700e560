//! The DNF plan of a WHERE clause with subqueries (Electric's `DnfPlan`).
//!
//! NOTs are pushed to the leaves (De Morgan holds in SQL's three-valued
//! logic), then the clause is expanded into a disjunction of conjunctions.
//! The expansion is not deduplicated: every disjunct has its own positions,
//! numbered disjunct by disjunct and, inside one, left to right as the atoms
//! appear in the clause; the same atom in two disjuncts has two positions,
//! and every position belongs to exactly one disjunct.
//!
//! Each distinct subquery (by its canonical text) is a dependency, numbered
//! in order of first appearance in the clause as written (before the
//! expansion, as Electric numbers them). A subquery must be an atom of its
//! own (`x IN (...)` under AND/OR/NOT), not part of another expression such
//! as `(x IN (...)) IS TRUE`. A dependency is used with one polarity only:
//! `x IN (S)` and `y NOT IN (S)` in one clause is refused, as Electric does,
//! because a move-in of a value would be a move-out for the other position.
//!
//! Invariants (asserted in [`DnfPlan::new`]): positions are `0..n`, each in
//! exactly one disjunct; `dependency_positions[d]` is sorted and holds
//! exactly the positions whose atom is dependency `d`; there are at most
//! [`MAX_DISJUNCTS`] disjuncts.

use super::expr::{Expr, Subquery};
use crate::schema::{Catalog, TableSchema};
use std::fmt;

/// Electric's `@max_disjuncts`: a clause that expands to more is refused.
pub const MAX_DISJUNCTS: usize = 100;

/// One atom of one disjunct.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The atom without its negation; a subquery atom is always
    /// `Expr::InSubquery { negated: false, .. }`.
    pub atom: Expr,
    /// Whether the disjunct needs the atom to be FALSE rather than TRUE.
    pub negated: bool,
    /// The dependency of a subquery atom.
    pub dependency: Option<usize>,
    /// The disjunct this position belongs to.
    pub disjunct: usize,
}

/// How a dependency's values act on the shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    /// `x IN (S)`: a value entering S may move rows in.
    Positive,
    /// `x NOT IN (S)`: a value entering S may move rows out.
    Negated,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnfPlan {
    pub positions: Vec<Position>,
    /// Each disjunct's positions, ascending.
    pub disjuncts: Vec<Vec<usize>>,
    /// The distinct subqueries, in order of first appearance.
    pub dependencies: Vec<Subquery>,
    /// Per dependency: its positions, ascending.
    pub dependency_positions: Vec<Vec<usize>>,
    /// Per dependency: the disjuncts it appears in, ascending.
    pub dependency_disjuncts: Vec<Vec<usize>>,
    pub dependency_polarities: Vec<Polarity>,
}

/// Why a clause has no plan. Both are 400s naming `where`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the subquery `{subquery}` is used both with IN and with NOT IN (directly or under NOT); use it with one polarity"
    )]
    MixedPolarity { subquery: String },
    #[error(
        "the WHERE clause expands to more than {MAX_DISJUNCTS} disjuncts (OR branches after distributing AND over OR); simplify it"
    )]
    TooManyDisjuncts,
    #[error(
        "`{subquery}` is used with NOT IN (directly or under NOT), which needs NOT NULL columns on both sides, and {column} is nullable: a NULL makes membership unknown for rows whose own values did not move"
    )]
    NullableNegated { subquery: String, column: String },
    #[error(
        "a subquery must be a condition of its own (`x IN (SELECT ...)` combined with AND, OR, NOT), not part of `{expression}`"
    )]
    SubqueryInExpression { expression: String },
    #[error("subqueries nest at most {limit} levels deep")]
    TooDeep { limit: usize },
}

/// A clause in negation normal form: negations only on atoms.
enum Nnf {
    Atom { atom: Expr, negated: bool },
    And(Vec<Nnf>),
    Or(Vec<Nnf>),
}

/// One literal of a disjunct.
type Literal = (Expr, bool);

impl DnfPlan {
    /// The index of `subquery` among the dependencies: by address when it
    /// is one of the plan's own atoms (evaluating a position), else by
    /// value (evaluating the clause it was planned from).
    pub fn dependency_of(&self, subquery: &Subquery) -> Option<usize> {
        let own = self.positions.iter().find_map(|p| match &p.atom {
            Expr::InSubquery { subquery: s, .. } if std::ptr::eq(&**s, subquery) => p.dependency,
            _ => None,
        });
        let by_value = || self.dependencies.iter().position(|d| d == subquery);
        debug_assert!(
            own.is_none() || own == by_value(),
            "a position's dependency is its subquery's"
        );
        own.or_else(by_value)
    }

    /// The plan of `clause`, after checking that every dependency's own
    /// clause (each one a shape of its own) has a plan too: a nested
    /// clause Electric only plans when its consumer starts is refused here,
    /// at request time.
    pub fn new(clause: &Expr) -> Result<DnfPlan, PlanError> {
        let plan = DnfPlan::unchecked(clause)?;
        for dependency in &plan.dependencies {
            if let Some(inner) = &dependency.where_clause
                && inner.has_subquery()
            {
                DnfPlan::new(inner)?;
            }
        }
        Ok(plan)
    }

    /// [`DnfPlan::new`] for a shape on `table`, which also refuses a
    /// dependency used with NOT IN over a nullable column, at every level.
    /// Under SQL's NULL rules one value entering such a set can exclude rows
    /// whose own values did not move (`NULL NOT IN {7}` is NULL;
    /// `5 NOT IN {3, NULL}` is NULL), which a move-out matched by value
    /// hashes cannot express.
    pub fn for_shape(
        clause: &Expr,
        table: &TableSchema,
        catalog: &Catalog,
    ) -> Result<DnfPlan, PlanError> {
        let plan = DnfPlan::new(clause)?;
        plan.check_negated_columns(table, catalog)?;
        Ok(plan)
    }

    fn check_negated_columns(
        &self,
        table: &TableSchema,
        catalog: &Catalog,
    ) -> Result<(), PlanError> {
        for (d, dependency) in self.dependencies.iter().enumerate() {
            let inner = catalog
                .table(&dependency.table)
                .expect("the checker resolved the subquery's table");
            if self.dependency_polarities[d] == Polarity::Negated {
                let nullable = |t: &TableSchema, name: &str| {
                    let i = t.column_index(name).expect("a checked column");
                    (!t.columns[i].not_null).then(|| format!("{}.{}", t.name, name))
                };
                let left = self.dependency_positions[d].iter().flat_map(|&p| {
                    match &self.positions[p].atom {
                        Expr::InSubquery { columns, .. } => columns.clone(),
                        _ => unreachable!("a dependency's position is a subquery atom"),
                    }
                });
                let left: Vec<String> = left
                    .filter_map(|c| match c {
                        Expr::Column { name, .. } => Some(name),
                        _ => None,
                    })
                    .collect();
                let found = left.iter().find_map(|c| nullable(table, c)).or_else(|| {
                    dependency
                        .columns
                        .iter()
                        .find_map(|(c, _)| nullable(inner, c))
                });
                if let Some(column) = found {
                    return Err(PlanError::NullableNegated {
                        subquery: dependency.to_string(),
                        column,
                    });
                }
            }
            if let Some(clause) = &dependency.where_clause
                && clause.has_subquery()
            {
                DnfPlan::new(clause)?.check_negated_columns(inner, catalog)?;
            }
        }
        Ok(())
    }

    fn unchecked(clause: &Expr) -> Result<DnfPlan, PlanError> {
        let disjuncts = expand(&nnf(clause, false)?)?;
        let mut dependencies = Vec::new();
        collect_subqueries(clause, &mut dependencies);
        let count = dependencies.len();
        let mut plan = DnfPlan {
            positions: Vec::new(),
            disjuncts: Vec::new(),
            dependencies,
            dependency_positions: vec![Vec::new(); count],
            dependency_disjuncts: vec![Vec::new(); count],
            dependency_polarities: Vec::new(),
        };
        let mut polarities: Vec<Option<Polarity>> = vec![None; count];
        for (d, literals) in disjuncts.into_iter().enumerate() {
            let mut members = Vec::with_capacity(literals.len());
            for (atom, negated) in literals {
                let position = plan.positions.len();
                let dependency = match &atom {
                    Expr::InSubquery { subquery, .. } => {
                        Some(plan.dependency(subquery, position, d, negated, &mut polarities)?)
                    }
                    _ => None,
                };
                plan.positions.push(Position {
                    atom,
                    negated,
                    dependency,
                    disjunct: d,
                });
                members.push(position);
            }
            plan.disjuncts.push(members);
        }
        plan.dependency_polarities = polarities
            .into_iter()
            .map(|p| p.expect("every collected subquery has a position"))
            .collect();
        plan.assert_invariants();
        Ok(plan)
    }

    /// Registers `position` (in disjunct `d`) as a use of `subquery`.
    fn dependency(
        &mut self,
        subquery: &Subquery,
        position: usize,
        d: usize,
        negated: bool,
        polarities: &mut [Option<Polarity>],
    ) -> Result<usize, PlanError> {
        let polarity = if negated {
            Polarity::Negated
        } else {
            Polarity::Positive
        };
        let index = self
            .dependencies
            .iter()
            .position(|s| s == subquery)
            .expect("every subquery of the clause was collected");
        if *polarities[index].get_or_insert(polarity) != polarity {
            return Err(PlanError::MixedPolarity {
                subquery: subquery.to_string(),
            });
        }
        self.dependency_positions[index].push(position);
        if self.dependency_disjuncts[index].last() != Some(&d) {
            self.dependency_disjuncts[index].push(d);
        }
        Ok(index)
    }

    fn assert_invariants(&self) {
        assert!(!self.disjuncts.is_empty() && self.disjuncts.len() <= MAX_DISJUNCTS);
        assert_eq!(self.dependency_polarities.len(), self.dependencies.len());
        let flat: Vec<usize> = self.disjuncts.iter().flatten().copied().collect();
        assert_eq!(flat, (0..self.positions.len()).collect::<Vec<_>>());
        for (dep, positions) in self.dependency_positions.iter().enumerate() {
            assert!(positions.windows(2).all(|w| w[0] < w[1]));
            let expected: Vec<usize> = (0..self.positions.len())
                .filter(|&p| self.positions[p].dependency == Some(dep))
                .collect();
            assert_eq!(positions, &expected, "dependency {dep}'s positions");
        }
    }
}

/// The distinct subqueries of `expr` (not of their own clauses), in the
/// order they are written.
fn collect_subqueries(expr: &Expr, out: &mut Vec<Subquery>) {
    match expr {
        Expr::InSubquery { subquery, .. } if !out.contains(subquery) => {
            out.push(subquery.as_ref().clone());
        }
        Expr::Not(inner) => collect_subqueries(inner, out),
        Expr::And(a, b) | Expr::Or(a, b) => {
            collect_subqueries(a, out);
            collect_subqueries(b, out);
        }
        _ => {}
    }
}

/// Pushes NOT down to the atoms.
fn nnf(expr: &Expr, negate: bool) -> Result<Nnf, PlanError> {
    Ok(match expr {
        Expr::Not(inner) => nnf(inner, !negate)?,
        Expr::And(a, b) | Expr::Or(a, b) => {
            let parts = vec![nnf(a, negate)?, nnf(b, negate)?];
            // De Morgan: a negated AND is an OR of negations, and back.
            if matches!(expr, Expr::And(..)) != negate {
                Nnf::And(parts)
            } else {
                Nnf::Or(parts)
            }
        }
        Expr::InSubquery {
            columns,
            subquery,
            negated,
        } => Nnf::Atom {
            atom: Expr::InSubquery {
                columns: columns.clone(),
                subquery: subquery.clone(),
                negated: false,
            },
            negated: *negated != negate,
        },
        atom if atom.has_subquery() => {
            return Err(PlanError::SubqueryInExpression {
                expression: atom.to_string(),
            });
        }
        atom => Nnf::Atom {
            atom: atom.clone(),
            negated: negate,
        },
    })
}

/// The disjuncts of a clause in negation normal form, in order.
fn expand(clause: &Nnf) -> Result<Vec<Vec<Literal>>, PlanError> {
    match clause {
        Nnf::Atom { atom, negated } => Ok(vec![vec![(atom.clone(), *negated)]]),
        Nnf::Or(parts) => {
            let mut out = Vec::new();
            for part in parts {
                out.extend(expand(part)?);
                if out.len() > MAX_DISJUNCTS {
                    return Err(PlanError::TooManyDisjuncts);
                }
            }
            Ok(out)
        }
        Nnf::And(parts) => {
            let mut out: Vec<Vec<Literal>> = vec![Vec::new()];
            for part in parts {
                let right = expand(part)?;
                if out.len() * right.len() > MAX_DISJUNCTS {
                    return Err(PlanError::TooManyDisjuncts);
                }
                out = out
                    .iter()
                    .flat_map(|l| {
                        right.iter().map(move |r| {
                            let mut both = l.clone();
                            both.extend(r.iter().cloned());
                            both
                        })
                    })
                    .collect();
            }
            Ok(out)
        }
    }
}

impl fmt::Display for DnfPlan {
    /// `[0: a] AND [1: NOT b] OR [2: c]`: each position with its number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (d, members) in self.disjuncts.iter().enumerate() {
            if d > 0 {
                f.write_str(" OR ")?;
            }
            for (i, &p) in members.iter().enumerate() {
                if i > 0 {
                    f.write_str(" AND ")?;
                }
                let position = &self.positions[p];
                let not = if position.negated { "NOT " } else { "" };
                write!(f, "[{p}: {not}{}]", position.atom)?;
            }
        }
        Ok(())
    }
}
