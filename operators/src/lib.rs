//! Stage contracts and implementations, free of any dataflow: a stage here is
//! a plain function or struct you can call from a test.
//!
//! - [`parse`]: payload bytes → [`Document`] IR (PubMed JSONL and XML, PMC
//!   JATS, ClinicalTrials.gov v2 JSON, GROBID TEI).
//! - [`chunk`]: document → [`Chunk`]s with exact spans into the source text.
//! - [`extract`]: entities and claims, from a vocabulary of real concepts.
//! - [`index`]: BM25 shards in tantivy (idempotent upserts keyed by chunk id)
//!   and search across shards with global BM25 statistics.
//!
//! - [`resilience`]: a stage's named policy at run time: retries with
//!   backoff, per-attempt timeout, circuit breaker and rate limit.
//! - [`fetch`]: HTTP GET of a record's URL under that policy.
//! - [`pdf`]: PDF checks, the content-addressed object store, text → IR,
//!   and the downloaded / IR-ready records of the PDF gate.
//!
//! Every failure is a [`StageError`] whose [`ErrorClass`] says what to do
//! with it: retry, dead-letter, or fail fast.
#![warn(missing_docs)]

pub mod chunk;
mod document;
mod error;
pub mod extract;
pub mod fetch;
pub mod graph;
pub mod index;
pub mod models;
pub mod parse;
pub mod pdf;
pub mod resilience;
pub mod retrieve;

pub use chunk::{ChunkConfig, Chunker, SplitBy};
pub use document::{
    check_doc_id, check_tenant, doc_key, stable_hash, Chunk, ChunkedDocument, Document, Section, SourceKind,
    IR_VERSION, MAX_ID_BYTES,
};
pub use error::{ErrorClass, StageError, MAX_ERROR_MESSAGE};
