//! Dense sentence embeddings.

use std::sync::Mutex;

use ort::session::Session;
use tokenizers::Tokenizer;

use super::runtime::{run_rows, session, Device, ModelFiles};
use super::tokenize::{self, Tokenized};
use crate::StageError;

/// A sentence encoder whose graph outputs a pooled `sentence_embedding
/// [batch, dim]` (all-MiniLM-L6-v2 as exported in ../shared/models).
/// Vectors come back L2-normalised.
pub struct DenseEncoder {
    session: Mutex<Session>,
    tokenizer: Tokenizer,
    dim: usize,
}

impl DenseEncoder {
    /// Loads the model on `device`, truncating inputs at `max_seq_len` tokens.
    pub fn load(
        files: &ModelFiles,
        device: Device,
        max_seq_len: usize,
        intra_threads: usize,
    ) -> Result<DenseEncoder, StageError> {
        let tokenizer = tokenize::load(&files.tokenizer, max_seq_len)?;
        let session = session(&files.model, device, intra_threads)?;
        let mut encoder = DenseEncoder { session: Mutex::new(session), tokenizer, dim: 0 };
        encoder.dim = encoder.encode(&["dimension probe"])?.first().map(Vec::len).unwrap_or(0);
        Ok(encoder)
    }

    /// The embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Token counts of texts (for batching by token budget).
    pub fn token_lengths(&self, texts: &[&str]) -> Result<Vec<usize>, StageError> {
        tokenize::lengths(&self.tokenizer, texts)
    }

    /// Tokenizes one batch (callers may do this on another thread than [`Self::run`]).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Tokenized, StageError> {
        tokenize::batch(&self.tokenizer, texts)
    }

    /// Encodes texts as one batch.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, StageError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.run(&self.tokenize(texts)?)
    }

    /// Encodes any number of texts in batches of at most `max_batch_tokens`
    /// padded tokens, length-sorted; outputs in input order.
    pub fn encode_many(&self, texts: &[&str], max_batch_tokens: usize) -> Result<Vec<Vec<f32>>, StageError> {
        tokenize::in_batches(&self.tokenizer, texts, max_batch_tokens, |batch| self.run(batch))
    }

    /// Runs the model on a tokenized batch.
    pub fn run(&self, batch: &Tokenized) -> Result<Vec<Vec<f32>>, StageError> {
        run_rows(&self.session, batch, "sentence_embedding", "dense model", |row| {
            let mut v: Vec<f32> = row.iter().copied().collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
            v
        })
    }
}
