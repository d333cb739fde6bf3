//! Tokenization into padded `[batch, seq]` tensors.

use std::path::Path;

use ndarray::Array2;
use tokenizers::{Encoding, Tokenizer, TruncationParams};

use crate::StageError;

/// A batch, padded to its longest member.
#[derive(Clone, Debug)]
pub struct Tokenized {
    /// Token ids.
    pub input_ids: Array2<i64>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Array2<i64>,
    /// Segment ids (all 0 for one sentence).
    pub token_type_ids: Array2<i64>,
}

impl Tokenized {
    /// Real tokens in the batch.
    pub fn tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m == 1).count()
    }
}

/// Loads a tokenizer with truncation at `max_seq_len` and no fixed padding
/// (MiniLM's tokenizer.json pads and truncates at 128; both are overridden).
pub(crate) fn load(path: &Path, max_seq_len: usize) -> Result<Tokenizer, StageError> {
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|e| StageError::unavailable("tokenizer", format!("cannot load {}: {e}", path.display())))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams { max_length: max_seq_len, ..TruncationParams::default() }))
        .map_err(|e| StageError::unavailable("tokenizer", format!("truncation {max_seq_len}: {e}")))?;
    Ok(tokenizer)
}

/// Token counts (special tokens included, truncation applied) of texts.
pub(crate) fn lengths(tokenizer: &Tokenizer, texts: &[&str]) -> Result<Vec<usize>, StageError> {
    let encodings =
        tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| StageError::permanent("tokenize", e.to_string()))?;
    Ok(encodings.iter().map(|e| e.get_ids().len()).collect())
}

/// Tokenizes texts (special tokens added, truncation applied).
pub(crate) fn encode_all(tokenizer: &Tokenizer, texts: &[&str]) -> Result<Vec<Encoding>, StageError> {
    tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| StageError::permanent("tokenize", e.to_string()))
}

/// Tokenizes texts into one padded batch.
pub(crate) fn batch(tokenizer: &Tokenizer, texts: &[&str]) -> Result<Tokenized, StageError> {
    let encodings = encode_all(tokenizer, texts)?;
    Ok(pad(&encodings.iter().collect::<Vec<_>>()))
}

/// Pads encodings into one batch as wide as the longest.
pub(crate) fn pad(encodings: &[&Encoding]) -> Tokenized {
    let width = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
    let mut input_ids = Array2::<i64>::zeros((encodings.len(), width));
    let mut attention_mask = Array2::<i64>::zeros((encodings.len(), width));
    let mut token_type_ids = Array2::<i64>::zeros((encodings.len(), width));
    for (row, encoding) in encodings.iter().enumerate() {
        for (col, ((&id, &mask), &kind)) in
            encoding.get_ids().iter().zip(encoding.get_attention_mask()).zip(encoding.get_type_ids()).enumerate()
        {
            input_ids[[row, col]] = i64::from(id);
            attention_mask[[row, col]] = i64::from(mask);
            token_type_ids[[row, col]] = i64::from(kind);
        }
    }
    Tokenized { input_ids, attention_mask, token_type_ids }
}

/// Runs `run` over `texts` in token-budget batches (each text tokenized
/// once), returning one output per text, in order.
pub(crate) fn in_batches<T>(
    tokenizer: &Tokenizer,
    texts: &[&str],
    max_batch_tokens: usize,
    mut run: impl FnMut(&Tokenized) -> Result<Vec<T>, StageError>,
) -> Result<Vec<T>, StageError> {
    let encodings = encode_all(tokenizer, texts)?;
    let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
    let mut out: Vec<Option<T>> = (0..texts.len()).map(|_| None).collect();
    for batch in super::token_budget_batches(&lengths, max_batch_tokens) {
        let members: Vec<&Encoding> = batch.iter().map(|&i| &encodings[i]).collect();
        for (&i, result) in batch.iter().zip(run(&pad(&members))?) {
            out[i] = Some(result);
        }
    }
    out.into_iter()
        .map(|r| r.ok_or_else(|| StageError::unavailable("inference", "the model returned fewer rows than inputs")))
        .collect()
}
