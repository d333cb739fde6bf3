//! Transformer encoders on ONNX Runtime: dense sentence embeddings
//! (all-MiniLM-L6-v2 and any model with the same interface) and SPLADE
//! sparse expansions.
//!
//! ONNX Runtime is loaded at run time from `ORT_DYLIB_PATH` (or the copy
//! `scripts/fetch-onnxruntime.sh` caches); models come from a models
//! directory (`--models`, `MEDKG_MODELS`, or `../shared/models`). A model
//! that asks for `cuda` gets the CUDA execution provider or an error: never
//! a silent fall back to the CPU.

mod batch;
mod dense;
mod runtime;
mod splade;
mod tokenize;

pub use batch::token_budget_batches;
pub use dense::DenseEncoder;
pub use runtime::{models_dir, ort_library, Device, ModelFiles};
pub use splade::{SparseVector, SpladeEncoder};
pub use tokenize::Tokenized;
