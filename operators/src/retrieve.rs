//! Reciprocal-rank fusion of ranked lists.
//!
//! Each list votes `weight / (RRF_K + rank)` for every id it ranks (ranks
//! from 1); ids are ordered by their summed votes. Scores need no
//! calibration across lists: BM25, SPLADE dot products and cosines fuse
//! as they are.
//!
//! ```
//! use medkg_operators::retrieve::rrf;
//!
//! let bm25 = vec!["a".to_string(), "b".to_string()];
//! let dense = vec!["b".to_string(), "c".to_string()];
//! let fused = rrf(&[(1.0, bm25), (1.0, dense)], 10);
//! assert_eq!(fused[0].0, "b"); // 1/62 + 1/61 beats 1/61
//! ```

use std::collections::HashMap;

/// The constant of reciprocal-rank fusion (Cormack et al., 2009).
pub const RRF_K: f32 = 60.0;

/// Fuses `(weight, ids best first)` lists; returns the best `k` ids with
/// their fused scores, best first (ties by id, so results are stable).
/// An id listed twice in one list counts at its best rank.
pub fn rrf(lists: &[(f32, Vec<String>)], k: usize) -> Vec<(String, f32)> {
    let mut scores: HashMap<&str, f32> = HashMap::new();
    for (weight, ids) in lists {
        let mut seen = std::collections::HashSet::new();
        for (rank, id) in ids.iter().enumerate() {
            if seen.insert(id.as_str()) {
                *scores.entry(id.as_str()).or_insert(0.0) += weight / (RRF_K + (rank + 1) as f32);
            }
        }
    }
    let mut fused: Vec<(String, f32)> = scores.into_iter().map(|(id, s)| (id.to_string(), s)).collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    fused.truncate(k);
    fused
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, computed the slow way: for every id, walk every list.
    fn oracle(lists: &[(f32, Vec<String>)], k: usize) -> Vec<(String, f32)> {
        let mut ids: Vec<String> = lists.iter().flat_map(|(_, l)| l.iter().cloned()).collect();
        ids.sort();
        ids.dedup();
        let mut scored: Vec<(String, f32)> = ids
            .into_iter()
            .map(|id| {
                let score = lists
                    .iter()
                    .filter_map(|(w, l)| l.iter().position(|x| *x == id).map(|p| w / (60.0 + (p + 1) as f32)))
                    .sum();
                (id, score)
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        scored.truncate(k);
        scored
    }

    proptest! {
        #[test]
        fn matches_the_naive_oracle(
            lists in proptest::collection::vec(
                (0.0f32..3.0, proptest::collection::vec("[a-h]{1,2}", 0..20)),
                0..4,
            ),
            k in 0usize..30,
        ) {
            let lists: Vec<(f32, Vec<String>)> = lists;
            let got = rrf(&lists, k);
            let want = oracle(&lists, k);
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                prop_assert!((g.1 - w.1).abs() < 1e-5, "{:?} vs {:?}", got, want);
            }
            // Same ids up to float ties.
            let ids = |v: &[(String, f32)]| { let mut i: Vec<String> = v.iter().map(|x| x.0.clone()).collect(); i.sort(); i };
            if got.iter().zip(&want).all(|(g, w)| (g.1 - w.1).abs() < 1e-7) {
                prop_assert_eq!(ids(&got), ids(&want));
            }
        }
    }
}
