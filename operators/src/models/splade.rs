//! SPLADE sparse expansion.

use std::sync::Mutex;

use ort::session::Session;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::runtime::{run_rows, session, Device, ModelFiles};
use super::tokenize::{self, Tokenized};
use crate::StageError;

/// A sparse vector over the model's vocabulary: term ids ascending.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseVector {
    /// Vocabulary ids, ascending.
    pub indices: Vec<u32>,
    /// Their weights (> 0).
    pub weights: Vec<f32>,
}

impl SparseVector {
    /// Dot product with another sparse vector.
    pub fn dot(&self, other: &SparseVector) -> f32 {
        let (mut i, mut j, mut sum) = (0, 0, 0.0);
        while i < self.indices.len() && j < other.indices.len() {
            match self.indices[i].cmp(&other.indices[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    sum += self.weights[i] * other.weights[j];
                    i += 1;
                    j += 1;
                }
            }
        }
        sum
    }
}

/// A SPLADE model whose graph outputs the pooled `sparse_embedding [batch,
/// vocab]` (`max_t log(1 + relu(logits)) * mask`), as exported in
/// ../shared/models; any SPLADE with that interface loads.
pub struct SpladeEncoder {
    session: Mutex<Session>,
    tokenizer: Tokenizer,
    top_k: usize,
    threshold: f32,
}

impl SpladeEncoder {
    /// Loads the model; each vector keeps its `top_k` heaviest terms above `threshold`.
    pub fn load(
        files: &ModelFiles,
        device: Device,
        max_seq_len: usize,
        intra_threads: usize,
        top_k: usize,
        threshold: f32,
    ) -> Result<SpladeEncoder, StageError> {
        let tokenizer = tokenize::load(&files.tokenizer, max_seq_len)?;
        let session = session(&files.model, device, intra_threads)?;
        Ok(SpladeEncoder { session: Mutex::new(session), tokenizer, top_k: top_k.max(1), threshold })
    }

    /// The vocabulary term of an id (`aspirin`, `##rin`).
    pub fn term(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// Token counts of texts (for batching by token budget).
    pub fn token_lengths(&self, texts: &[&str]) -> Result<Vec<usize>, StageError> {
        tokenize::lengths(&self.tokenizer, texts)
    }

    /// Tokenizes one batch.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Tokenized, StageError> {
        tokenize::batch(&self.tokenizer, texts)
    }

    /// Expands texts as one batch.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<SparseVector>, StageError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.run(&self.tokenize(texts)?)
    }

    /// Encodes any number of texts in batches of at most `max_batch_tokens`
    /// padded tokens, length-sorted; outputs in input order.
    pub fn encode_many(&self, texts: &[&str], max_batch_tokens: usize) -> Result<Vec<SparseVector>, StageError> {
        tokenize::in_batches(&self.tokenizer, texts, max_batch_tokens, |batch| self.run(batch))
    }

    /// Runs the model on a tokenized batch.
    pub fn run(&self, batch: &Tokenized) -> Result<Vec<SparseVector>, StageError> {
        run_rows(&self.session, batch, "sparse_embedding", "SPLADE model", |row| self.sparsify(row.iter().copied()))
    }

    fn sparsify(&self, row: impl Iterator<Item = f32>) -> SparseVector {
        let mut terms: Vec<(u32, f32)> =
            row.enumerate().filter(|&(_, w)| w > self.threshold && w > 0.0).map(|(i, w)| (i as u32, w)).collect();
        if terms.len() > self.top_k {
            terms.select_nth_unstable_by(self.top_k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            terms.truncate(self.top_k);
        }
        terms.sort_unstable_by_key(|&(i, _)| i);
        SparseVector { indices: terms.iter().map(|t| t.0).collect(), weights: terms.iter().map(|t| t.1).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_product_of_sparse_vectors() {
        let a = SparseVector { indices: vec![1, 4, 9], weights: vec![1.0, 2.0, 3.0] };
        let b = SparseVector { indices: vec![4, 9, 12], weights: vec![0.5, 1.0, 7.0] };
        assert_eq!(a.dot(&b), 4.0);
        assert_eq!(a.dot(&SparseVector::default()), 0.0);
    }
}
