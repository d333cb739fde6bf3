//! Query-time retrieval: queries are encoded with the models recorded in
//! the data directory, then searched in BM25, SPLADE and dense lists and
//! fused.

use std::path::Path;
use std::str::FromStr;

use medkg_operators::index::{EncodedQuery, Hit, SearchIndex, Weights};
use medkg_operators::models::{DenseEncoder, Device, ModelFiles, SparseVector, SpladeEncoder};
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

impl Mode {
    /// Its name (`bm25`, `dense`, `splade`, `hybrid`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bm25 => "bm25",
            Mode::Dense => "dense",
            Mode::Splade => "splade",
            Mode::Hybrid => "hybrid",
        }
    }
}

/// How deep each list is read before fusion.
pub const FUSION_DEPTH: usize = 100;

/// A data directory open for queries, with its query encoders.
pub struct Retriever {
    index: SearchIndex,
    encoders: QueryEncoders,
    /// Per-list weights of hybrid fusion.
    pub weights: Weights,
}

/// The query encoders of a data directory: the models recorded there, on
/// the CPU. One set serves any number of searches (each session is used
/// under its own lock).
pub struct QueryEncoders {
    dense: Option<DenseEncoder>,
    splade: Option<SpladeEncoder>,
}

/// A query encoded for the lists that need it.
#[derive(Clone, Debug, Default)]
pub struct EncodedVectors {
    /// The dense embedding (dense and hybrid).
    pub dense: Option<Vec<f32>>,
    /// The SPLADE expansion (splade and hybrid).
    pub sparse: Option<SparseVector>,
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

fn no_such_list(data_dir: &Path, what: &str, stage: &str) -> StageError {
    StageError::unavailable(
        "no_such_list",
        format!(
            "{} has no {what} index: run a pipeline with an `{stage}` stage and index backend `{what}`",
            data_dir.display()
        ),
    )
}

impl QueryEncoders {
    /// The encoders `mode` needs (all the directory has, for hybrid); an
    /// error names the list `mode` asks for and the directory lacks.
    pub fn load(data_dir: &Path, mode: Mode, has_dense: bool) -> Result<QueryEncoders, StageError> {
        let record = ModelRecord::load(data_dir).map_err(|e| StageError::unavailable("bad_record", e))?;
        let dense = match (mode, &record.dense) {
            (Mode::Dense | Mode::Hybrid, Some(m)) if has_dense => Some(load_dense(m)?),
            (Mode::Dense, _) => return Err(no_such_list(data_dir, "dense", "embed")),
            _ => None,
        };
        let splade = match (mode, &record.splade) {
            (Mode::Splade | Mode::Hybrid, Some(m)) => Some(load_splade(m)?),
            (Mode::Splade, None) => return Err(no_such_list(data_dir, "splade", "splade")),
            _ => None,
        };
        Ok(QueryEncoders { dense, splade })
    }

    /// No encoders (BM25 only).
    pub fn none() -> QueryEncoders {
        QueryEncoders { dense: None, splade: None }
    }

    /// Whether `mode` can be answered with these encoders.
    pub fn serves(&self, mode: Mode) -> bool {
        match mode {
            Mode::Bm25 | Mode::Hybrid => true,
            Mode::Dense => self.dense.is_some(),
            Mode::Splade => self.splade.is_some(),
        }
    }

    /// Encodes `query` for the lists of `mode` (the two encoders run side by side).
    pub fn encode(&self, query: &str, mode: Mode) -> Result<EncodedVectors, StageError> {
        self.encode_with(query, mode, true)
    }

    /// Encodes `query`, the two encoders side by side when `side_by_side`
    /// (lower latency for one query), else one after the other on this
    /// thread: a server that runs as many searches as cores keeps to one
    /// thread a search (on 2 cores under load, hybrid served 105 and 111
    /// queries/s this way against 101 and 99 side by side).
    pub fn encode_with(&self, query: &str, mode: Mode, side_by_side: bool) -> Result<EncodedVectors, StageError> {
        let dense_encoder = self.dense.as_ref().filter(|_| matches!(mode, Mode::Dense | Mode::Hybrid));
        let splade_encoder = self.splade.as_ref().filter(|_| matches!(mode, Mode::Splade | Mode::Hybrid));
        if !side_by_side {
            let dense = dense_encoder.map(|e| e.encode(&[query])).transpose()?.and_then(|mut v| v.pop());
            let sparse = splade_encoder.map(|e| e.encode(&[query])).transpose()?.and_then(|mut v| v.pop());
            return Ok(EncodedVectors { dense, sparse });
        }
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
        Ok(EncodedVectors { dense: dense?.and_then(|mut v| v.pop()), sparse: sparse?.and_then(|mut v| v.pop()) })
    }
}

/// The `k` best chunks of `tenant` for `query` (encoded as `vectors`) in `mode`.
pub fn search_index(
    index: &mut SearchIndex,
    query: &str,
    vectors: &EncodedVectors,
    mode: Mode,
    tenant: &str,
    k: usize,
    weights: &Weights,
) -> Result<Vec<Hit>, StageError> {
    match mode {
        Mode::Bm25 => index.search(query, tenant, k),
        Mode::Dense => index.search_dense(vectors.dense.as_deref().unwrap_or(&[]), tenant, k),
        Mode::Splade => match &vectors.sparse {
            Some(q) => index.search_splade(q, tenant, k),
            None => Ok(Vec::new()),
        },
        Mode::Hybrid => {
            let q = EncodedQuery { text: query, sparse: vectors.sparse.as_ref(), dense: vectors.dense.as_deref() };
            index.search_hybrid(&q, tenant, k, weights, FUSION_DEPTH)
        }
    }
}

impl Retriever {
    /// Opens `data_dir`; loads the query encoders `mode` needs (all that the
    /// directory has, for hybrid).
    pub fn open(data_dir: &Path, mode: Mode) -> Result<Retriever, StageError> {
        let index = SearchIndex::open(data_dir)?;
        let encoders = QueryEncoders::load(data_dir, mode, index.has_dense())?;
        Ok(Retriever { index, encoders, weights: Weights::default() })
    }

    /// The `k` best chunks of `tenant` for `query` in `mode`.
    pub fn search(&mut self, query: &str, mode: Mode, tenant: &str, k: usize) -> Result<Vec<Hit>, StageError> {
        let vectors = self.encoders.encode(query, mode)?;
        let weights = self.weights;
        search_index(&mut self.index, query, &vectors, mode, tenant, k, &weights)
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
