//! SPLADE vectors inside the tantivy shard.
//!
//! Each chunk stores its term ids in `splade_terms` (postings: which chunks
//! contain a term) and its whole vector, quantised, in the `splade_vec`
//! bytes fast field. A query's terms select candidate chunks through the
//! postings; each candidate is scored by the exact dot product of the query's
//! weights and its stored, quantised weights. This is the same score a
//! custom Scorer summing `w_q · w_d` over postings would give, but weights do
//! not have to be smuggled into term frequencies (which would mean indexing a
//! term up to ~100 times).

use crate::models::SparseVector;

/// Weights are stored as `round(w · QUANT_SCALE)` in a u16 (step 1/1024,
/// largest 64): ample for SPLADE's log(1 + relu) weights.
pub const QUANT_SCALE: f32 = 1024.0;

/// `(u32 id, u16 weight)` little-endian pairs.
pub fn encode_sparse(vector: &SparseVector) -> Vec<u8> {
    let mut out = Vec::with_capacity(vector.indices.len() * 6);
    for (&id, &w) in vector.indices.iter().zip(&vector.weights) {
        let q = (w * QUANT_SCALE).round().clamp(1.0, f32::from(u16::MAX)) as u16;
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&q.to_le_bytes());
    }
    out
}

/// The inverse of [`encode_sparse`] (weights de-quantised).
pub fn decode_sparse(bytes: &[u8]) -> SparseVector {
    let mut vector = SparseVector::default();
    for pair in bytes.chunks_exact(6) {
        vector
            .indices
            .push(u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]));
        vector
            .weights
            .push(f32::from(u16::from_le_bytes([pair[4], pair[5]])) / QUANT_SCALE);
    }
    vector
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_within_a_quantisation_step() {
        let v = SparseVector {
            indices: vec![3, 2004, 30521],
            weights: vec![0.0001, 1.2345, 3.9],
        };
        let back = decode_sparse(&encode_sparse(&v));
        assert_eq!(back.indices, v.indices);
        for (a, b) in back.weights.iter().zip(&v.weights) {
            assert!((a - b).abs() <= 1.0 / QUANT_SCALE, "{a} vs {b}");
        }
    }
}
