//! Query-time retrieval: queries are encoded with the models recorded in
//! the data directory, then searched in BM25, SPLADE and dense lists and
//! fused.

use std::path::Path;
use std::str::FromStr;

use medkg_operators::index::{EncodedQuery, Hit, SearchIndex, Weights};
use medkg_operators::models::{DenseEncoder, Device, ModelFiles, SpladeEncoder};
use medkg_operators::StageError;

use crate::models::{ModelRecord, RecordedModel};

/// Which list(s) answer a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// BM25 over title and text.
    Bm25,
    /// Dense nearest neighbours.
    Dense,
    /// SPLADE dot products.
    Splade,
    /// Reciprocal-rank fusion of every list the index has.
    Hybrid,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "bm25" => Ok(Mode::Bm25),
            "dense" => Ok(Mode::Dense),
            "splade" => Ok(Mode::Splade),
            "hybrid" => Ok(Mode::Hybrid),
            other => Err(format!("unknown mode `{other}` (bm25 | dense | splade | hybrid)")),
        }
    }
}

/// How deep each list is read before fusion.
pub const FUSION_DEPTH: usize = 100;

/// A data directory open for queries, with its query encoders.
pub struct Retriever {
    index: SearchIndex,
    dense: Option<DenseEncoder>,
    splade: Option<SpladeEncoder>,
    /// Per-list weights of hybrid fusion.
    pub weights: Weights,
}

/// Query encoding runs one short sequence: a second thread costs more in
/// hand-off than it saves (measured: dense mode 4.4 ms with one, 8 ms with two).
fn query_threads() -> usize {
    1
}

fn load_dense(m: &RecordedModel) -> Result<DenseEncoder, StageError> {
    let files = ModelFiles { model: m.model.clone(), tokenizer: m.tokenizer.clone() };
    DenseEncoder::load(&files, Device::Cpu, m.max_seq_len, query_threads())
}

fn load_splade(m: &RecordedModel) -> Result<SpladeEncoder, StageError> {
    let files = ModelFiles { model: m.model.clone(), tokenizer: m.tokenizer.clone() };
    SpladeEncoder::load(&files, Device::Cpu, m.max_seq_len, query_threads(), m.top_k, m.threshold)
}

impl Retriever {
    /// Opens `data_dir`; loads the query encoders `mode` needs (all that the
    /// directory has, for hybrid).
    pub fn open(data_dir: &Path, mode: Mode) -> Result<Retriever, StageError> {
        let index = SearchIndex::open(data_dir)?;
        let record = ModelRecord::load(data_dir).map_err(|e| StageError::unavailable("bad_record", e))?;
        let missing = |what: &str, stage: &str| {
            StageError::unavailable(
                "no_such_list",
                format!(
                    "{} has no {what} index: run a pipeline with an `{stage}` stage and index backend `{what}`",
                    data_dir.display()
                ),
            )
        };
        let dense = match (mode, &record.dense) {
            (Mode::Dense | Mode::Hybrid, Some(m)) if index.has_dense() => Some(load_dense(m)?),
            (Mode::Dense, _) => return Err(missing("dense", "embed")),
            _ => None,
        };
        let splade = match (mode, &record.splade) {
            (Mode::Splade | Mode::Hybrid, Some(m)) => Some(load_splade(m)?),
            (Mode::Splade, None) => return Err(missing("splade", "splade")),
            _ => None,
        };
        Ok(Retriever { index, dense, splade, weights: Weights::default() })
    }

    /// The `k` best chunks of `tenant` for `query` in `mode`.
    pub fn search(&mut self, query: &str, mode: Mode, tenant: &str, k: usize) -> Result<Vec<Hit>, StageError> {
        let dense_encoder = self.dense.as_ref().filter(|_| matches!(mode, Mode::Dense | Mode::Hybrid));
        let splade_encoder = self.splade.as_ref().filter(|_| matches!(mode, Mode::Splade | Mode::Hybrid));
        // The two query encoders run side by side (hybrid needs both).
        let (dense, sparse) = std::thread::scope(|scope| {
            let sparse = splade_encoder.map(|e| scope.spawn(move || e.encode(&[query])));
            let dense = dense_encoder.map(|e| e.encode(&[query])).transpose();
            let sparse = match sparse {
                Some(handle) => handle
                    .join()
                    .map_err(|_| StageError::unavailable("inference", "the SPLADE query encoder panicked"))
                    .and_then(|r| r)
                    .map(Some),
                None => Ok(None),
            };
            (dense, sparse)
        });
        let dense = dense?.and_then(|mut v| v.pop());
        let sparse = sparse?.and_then(|mut v| v.pop());
        match mode {
            Mode::Bm25 => self.index.search(query, tenant, k),
            Mode::Dense => self.index.search_dense(dense.as_deref().unwrap_or(&[]), tenant, k),
            Mode::Splade => match &sparse {
                Some(q) => self.index.search_splade(q, tenant, k),
                None => Ok(Vec::new()),
            },
            Mode::Hybrid => {
                let q = EncodedQuery { text: query, sparse: sparse.as_ref(), dense: dense.as_deref() };
                let weights = self.weights;
                self.index.search_hybrid(&q, tenant, k, &weights, FUSION_DEPTH)
            }
        }
    }

    /// Restricts every mode to the chunks `only` names (`None`: all).
    pub fn restrict(&mut self, only: Option<std::collections::HashSet<String>>) {
        self.index.restrict(only);
    }

    /// Document and chunk counts.
    pub fn index(&self) -> &SearchIndex {
        &self.index
    }
}
