//! The stage operators, one file each. Every operator is handed what it
//! needs when the graph is built (a [`ctx::Ctx`] and its own resources);
//! none looks anything up at run time.
//!
//! - [`records`]: the stateless stages (`ingest`, `parse`, `chunk`,
//!   `extract`) and the
//!   operator loop that reports for all of them;
//! - [`encode`]: the model stages (`embed`, `splade`);
//! - [`index`]: the tantivy + FAISS sink;
//! - [`kg`]: the knowledge graph (differential dataflow, then Oxigraph);
//! - [`fetch`]: HTTP calls (`fetch`, `download`) on the I/O runtime;
//! - [`gate`]: the PDF gate, a frontier-aware join with the IR-ready stream.

pub(crate) mod ctx;
pub(crate) mod encode;
pub(crate) mod envelope;
pub(crate) mod fetch;
pub(crate) mod gate;
pub(crate) mod index;
pub(crate) mod kg;
pub(crate) mod records;
