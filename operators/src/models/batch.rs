//! Packing texts into batches by token budget.

/// Splits items (given their token counts) into batches whose padded size
/// `len(batch) × longest(batch)` stays within `max_batch_tokens`. Items are
/// sorted by length first, so each batch holds texts of similar length and
/// little padding; an item longer than the budget gets a batch of its own.
/// Returns indices into `lengths`, every index exactly once.
///
/// ```
/// let batches = medkg_operators::models::token_budget_batches(&[10, 3, 9, 4], 20);
/// assert_eq!(batches, vec![vec![1, 3], vec![2, 0]]);
/// ```
pub fn token_budget_batches(lengths: &[usize], max_batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending: the newcomer is the longest of the batch.
        let longest = lengths[i].max(1);
        if !current.is_empty() && (current.len() + 1) * longest > max_batch_tokens {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_item_once_and_within_budget(lengths in proptest::collection::vec(1usize..300, 0..200), budget in 1usize..4000) {
            let batches = token_budget_batches(&lengths, budget);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
            for batch in &batches {
                prop_assert!(!batch.is_empty());
                let longest = batch.iter().map(|&i| lengths[i]).max().unwrap();
                prop_assert!(batch.len() == 1 || batch.len() * longest <= budget, "{:?}", batch);
            }
        }
    }
}
