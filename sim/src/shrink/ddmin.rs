//! Delta debugging (Zeller and Hildebrandt's ddmin): the smallest subset of
//! `items` that is still interesting, found by testing subsets and their
//! complements at ever finer granularity. The result is 1-minimal: removing
//! any single remaining item makes it uninteresting.

/// `interesting(subset)` must hold for `items` itself. Order is preserved.
pub fn ddmin<T: Clone>(items: Vec<T>, mut interesting: impl FnMut(&[T]) -> bool) -> Vec<T> {
    if items.is_empty() || interesting(&[]) {
        return Vec::new();
    }
    let mut items = items;
    let mut granularity = 2usize;
    while items.len() >= 2 {
        let size = items.len().div_ceil(granularity);
        let parts: Vec<Vec<T>> = items.chunks(size).map(<[T]>::to_vec).collect();
        if let Some(part) = parts.iter().find(|part| interesting(part)) {
            items = part.clone();
            granularity = 2;
            continue;
        }
        let complement = |skip: usize| -> Vec<T> {
            parts
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .flat_map(|(_, p)| p.iter().cloned())
                .collect()
        };
        let rest = (parts.len() > 2)
            .then(|| {
                (0..parts.len())
                    .map(complement)
                    .find(|rest| interesting(rest))
            })
            .flatten();
        if let Some(rest) = rest {
            items = rest;
            granularity = (granularity - 1).max(2);
            continue;
        }
        if granularity >= items.len() {
            break;
        }
        granularity = (granularity * 2).min(items.len());
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #![proptest_config(engine::testing::proptest_config(256))]

        /// When the failure needs a set of items, ddmin returns exactly that
        /// set (it is the unique 1-minimal subset), in order.
        #[test]
        fn finds_the_items_a_failure_needs(len in 1usize..60, needed in prop::collection::btree_set(0usize..60, 0..6)) {
            let needed: BTreeSet<usize> = needed.into_iter().filter(|i| *i < len).collect();
            let mut calls = 0;
            let result = ddmin((0..len).collect(), |subset| {
                calls += 1;
                needed.iter().all(|n| subset.contains(n))
            });
            prop_assert_eq!(result, needed.iter().copied().collect::<Vec<_>>());
            prop_assert!(calls <= 30 * len.max(4), "{} calls for {} items", calls, len);
        }

        /// For any monotone-or-not predicate, the result is interesting and
        /// removing any one item makes it uninteresting.
        #[test]
        fn the_result_is_one_minimal(len in 1usize..30, salt in any::<u64>()) {
            let interesting = |subset: &[usize]| {
                // An arbitrary but fixed predicate that holds for the full set.
                subset.len() == len || subset.iter().fold(0u64, |acc, x| acc.wrapping_add((*x as u64).wrapping_mul(salt | 1))) % 3 == 0 && subset.len().is_multiple_of(2) && !subset.is_empty()
            };
            let result = ddmin((0..len).collect(), interesting);
            prop_assert!(interesting(&result) || result.is_empty());
            for i in 0..result.len() {
                let mut smaller = result.clone();
                smaller.remove(i);
                prop_assert!(!interesting(&smaller) || smaller.is_empty() && interesting(&[]));
            }
        }
    }
}
