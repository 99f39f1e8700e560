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
//! in order of first appearance. A dependency is used with one polarity only:
//! `x IN (S)` and `y NOT IN (S)` in one clause is refused, as Electric does,
//! because a move-in of a value would be a move-out for the other position.
//!
//! Invariants (asserted in [`DnfPlan::new`]): positions are `0..n`, each in
//! exactly one disjunct; `dependency_positions[d]` is sorted and holds
//! exactly the positions whose atom is dependency `d`; there are at most
//! [`MAX_DISJUNCTS`] disjuncts.

use super::expr::{Expr, Subquery};
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

    fn unchecked(clause: &Expr) -> Result<DnfPlan, PlanError> {
        let disjuncts = expand(&nnf(clause, false))?;
        let mut plan = DnfPlan {
            positions: Vec::new(),
            disjuncts: Vec::new(),
            dependencies: Vec::new(),
            dependency_positions: Vec::new(),
            dependency_disjuncts: Vec::new(),
            dependency_polarities: Vec::new(),
        };
        for (d, literals) in disjuncts.into_iter().enumerate() {
            let mut members = Vec::with_capacity(literals.len());
            for (atom, negated) in literals {
                let position = plan.positions.len();
                let dependency = match &atom {
                    Expr::InSubquery { subquery, .. } => {
                        Some(plan.dependency(subquery, position, d, negated)?)
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
    ) -> Result<usize, PlanError> {
        let polarity = if negated {
            Polarity::Negated
        } else {
            Polarity::Positive
        };
        let index = match self.dependencies.iter().position(|s| s == subquery) {
            Some(index) => index,
            None => {
                self.dependencies.push(subquery.clone());
                self.dependency_positions.push(Vec::new());
                self.dependency_disjuncts.push(Vec::new());
                self.dependency_polarities.push(polarity);
                self.dependencies.len() - 1
            }
        };
        if self.dependency_polarities[index] != polarity {
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

/// Pushes NOT down to the atoms.
fn nnf(expr: &Expr, negate: bool) -> Nnf {
    match expr {
        Expr::Not(inner) => nnf(inner, !negate),
        Expr::And(a, b) | Expr::Or(a, b) => {
            let parts = vec![nnf(a, negate), nnf(b, negate)];
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
        atom => Nnf::Atom {
            atom: atom.clone(),
            negated: negate,
        },
    }
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
