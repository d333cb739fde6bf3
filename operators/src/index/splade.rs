//! SPLADE vectors inside the tantivy shard.
//!
//! A chunk's SPLADE term ids go into the `splade_terms` field, each repeated
//! `round(weight × QUANT_SCALE)` times, so the term's frequency in the chunk
//! *is* its quantised weight. A query is then scored term-at-a-time over
//! the postings: `Σ w_q · tf / QUANT_SCALE`, the exact dot product of the
//! query's weights with the chunk's quantised ones. That is what a custom
//! Query/Weight/Scorer would compute, reading only the postings of the
//! query's terms and no per-document storage.

use crate::models::SparseVector;

/// Weights are stored as `round(w · QUANT_SCALE)` term frequencies, at
/// least 1 and at most 255 (a step of 1/32; SPLADE's log(1 + relu) weights
/// rarely pass 4).
pub const QUANT_SCALE: f32 = 32.0;

/// The term frequency that stands for weight `w`.
pub fn quantize(w: f32) -> u32 {
    (w * QUANT_SCALE).round().clamp(1.0, 255.0) as u32
}

/// The `splade_terms` text of a vector: each id repeated by its quantised weight.
pub fn splade_tokens(vector: &SparseVector) -> String {
    let mut out = String::new();
    for (&id, &w) in vector.indices.iter().zip(&vector.weights) {
        let token = id.to_string();
        for _ in 0..quantize(w) {
            out.push_str(&token);
            out.push(' ');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_become_term_frequencies() {
        assert_eq!(quantize(1.5), 48);
        assert_eq!(quantize(0.0001), 1, "a kept term is never dropped");
        assert_eq!(quantize(100.0), 255);
        let v = SparseVector { indices: vec![7, 2004], weights: vec![0.05, 0.1] };
        assert_eq!(splade_tokens(&v), "7 7 2004 2004 2004 ");
    }
}
