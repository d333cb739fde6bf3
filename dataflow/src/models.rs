//! Model sessions for the model stages, and the record of which models
//! built a data directory (search must encode queries with the same ones).

use std::path::{Path, PathBuf};

use medkg_operators::models::{DenseEncoder, SparseVector, SpladeEncoder};
use medkg_operators::{Chunk, StageError};
use serde::{Deserialize, Serialize};

use crate::settings::{EncoderSpec, StageConfig, StageSettings};

/// The sessions of one model stage: one per worker (an ONNX Runtime
/// session runs one batch at a time; workers must not queue behind each other).
pub(crate) enum Sessions {
    Dense(Vec<DenseEncoder>),
    Splade(Vec<SpladeEncoder>),
}

/// A model's output for one text.
pub(crate) enum Vector {
    Dense(Vec<f32>),
    Sparse(SparseVector),
}

impl Vector {
    /// Stores the vector in its chunk.
    pub fn assign(self, chunk: &mut Chunk) {
        match self {
            Vector::Dense(v) => chunk.dense = Some(v),
            Vector::Sparse(v) => chunk.sparse = Some(v),
        }
    }
}

impl Sessions {
    /// `workers` sessions of a dense model.
    pub fn dense(spec: &EncoderSpec, workers: usize) -> Result<Sessions, StageError> {
        Ok(Sessions::Dense((0..workers).map(|_| dense(spec)).collect::<Result<_, _>>()?))
    }

    /// `workers` sessions of a SPLADE model.
    pub fn splade(spec: &EncoderSpec, workers: usize) -> Result<Sessions, StageError> {
        Ok(Sessions::Splade((0..workers).map(|_| splade(spec)).collect::<Result<_, _>>()?))
    }

    /// Encodes `texts` on worker `worker`'s session in batches of at most
    /// `max_batch_tokens` padded tokens: one vector per text, in order.
    pub fn encode(&self, worker: usize, texts: &[&str], max_batch_tokens: usize) -> Result<Vec<Vector>, StageError> {
        let missing = || StageError::permanent("no_session", format!("no model session for worker {worker}"));
        match self {
            Sessions::Dense(sessions) => sessions
                .get(worker)
                .ok_or_else(missing)?
                .encode_many(texts, max_batch_tokens)
                .map(|v| v.into_iter().map(Vector::Dense).collect()),
            Sessions::Splade(sessions) => sessions
                .get(worker)
                .ok_or_else(missing)?
                .encode_many(texts, max_batch_tokens)
                .map(|v| v.into_iter().map(Vector::Sparse).collect()),
        }
    }
}

/// Loads a dense encoder as specified.
pub fn dense(spec: &EncoderSpec) -> Result<DenseEncoder, StageError> {
    DenseEncoder::load(&spec.files, spec.device, spec.max_seq_len, spec.intra_threads)
}

/// Loads a SPLADE encoder as specified.
pub fn splade(spec: &EncoderSpec) -> Result<SpladeEncoder, StageError> {
    SpladeEncoder::load(&spec.files, spec.device, spec.max_seq_len, spec.intra_threads, spec.top_k, spec.threshold)
}

/// One model as recorded in a data directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedModel {
    /// The `.onnx` file (absolute).
    pub model: PathBuf,
    /// Its tokenizer (absolute).
    pub tokenizer: PathBuf,
    /// Truncation.
    pub max_seq_len: usize,
    /// SPLADE terms kept.
    pub top_k: usize,
    /// SPLADE least weight.
    pub threshold: f32,
}

/// Which models wrote a data directory (`medkg-models.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The embed stage's model.
    pub dense: Option<RecordedModel>,
    /// The splade stage's model.
    pub splade: Option<RecordedModel>,
}

const RECORD_FILE: &str = "medkg-models.json";

fn recorded(spec: &EncoderSpec) -> RecordedModel {
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    RecordedModel {
        model: absolute(&spec.files.model),
        tokenizer: absolute(&spec.files.tokenizer),
        max_seq_len: spec.max_seq_len,
        top_k: spec.top_k,
        threshold: spec.threshold,
    }
}

impl ModelRecord {
    /// The models a pipeline's settings use.
    pub(crate) fn from_settings(settings: &StageSettings) -> ModelRecord {
        let mut record = ModelRecord::default();
        for stage in &settings.stages {
            match stage {
                StageConfig::Embed(spec) => record.dense = Some(recorded(spec)),
                StageConfig::Splade(spec) => record.splade = Some(recorded(spec)),
                _ => {}
            }
        }
        record
    }

    /// The record of a data directory (empty when it has none).
    pub fn load(data_dir: &Path) -> Result<ModelRecord, String> {
        match std::fs::read_to_string(data_dir.join(RECORD_FILE)) {
            Ok(text) => {
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", data_dir.join(RECORD_FILE).display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ModelRecord::default()),
            Err(e) => Err(format!("{}: {e}", data_dir.join(RECORD_FILE).display())),
        }
    }

    /// Records these models in `data_dir`, refusing to mix vectors of other
    /// models into an index already built with them.
    pub fn reconcile(&self, data_dir: &Path) -> Result<(), String> {
        let existing = ModelRecord::load(data_dir)?;
        let clash = |ours: &Option<RecordedModel>, theirs: &Option<RecordedModel>, what: &str| {
            match (ours, theirs) {
            (Some(a), Some(b)) if a.model != b.model || a.max_seq_len != b.max_seq_len => Err(format!(
                "{} holds {what} vectors of {} (max_seq_len {}), this pipeline makes them with {} (max_seq_len {}): use another data directory",
                data_dir.display(),
                b.model.display(),
                b.max_seq_len,
                a.model.display(),
                a.max_seq_len
            )),
            _ => Ok(()),
        }
        };
        clash(&self.dense, &existing.dense, "dense")?;
        clash(&self.splade, &existing.splade, "SPLADE")?;
        let merged = ModelRecord {
            dense: self.dense.clone().or(existing.dense.clone()),
            splade: self.splade.clone().or(existing.splade.clone()),
        };
        if merged != existing {
            let text = serde_json::to_string_pretty(&merged).map_err(|e| e.to_string())?;
            // Every process of a cluster writes this record: never half of it.
            medkg_operators::index::write_atomically(&data_dir.join(RECORD_FILE), text.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", data_dir.join(RECORD_FILE).display()))?;
        }
        Ok(())
    }
}
