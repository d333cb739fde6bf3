//! The knowledge graph's data: what a document says to the graph
//! ([`DocClaims`]), what one commit changes ([`Changes`]), and where it is
//! kept: an embedded Oxigraph store ([`GraphStore`], RDF in RocksDB).
//!
//! The layout, per tenant (see [`rdf`] for the IRIs):
//! - one named graph per document (its IRI is the document's): the
//!   document, the concepts it and each of its chunks mention, its topics,
//!   and each claim as a `biolink:Association` with the sentence it came
//!   from; an upsert replaces the graph, a deletion drops it;
//! - one graph for the tenant: every edge that some document supports, as
//!   a plain `subject predicate object` triple and as an association with
//!   `medkg:support` (distinct documents), and every mentioned concept
//!   with its label, Biolink category and `medkg:documents` count.
//!
//! A query (`medkg sparql`) sees one tenant only: its graph is the default
//! graph and its documents' graphs are the named graphs.

pub mod rdf;
mod store;

use serde::{Deserialize, Serialize};

use crate::extract::Extraction;
pub use store::{Census, ConceptInfo, GraphStore, Neighbour, QueryFormat};

/// A document, by tenant and id.
pub type DocKey = (String, String);

/// One edge of the graph: subject, predicate, object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Edge {
    /// Subject CURIE.
    pub subject: String,
    /// Biolink predicate.
    pub predicate: String,
    /// Object CURIE.
    pub object: String,
}

/// What one version of a document says to the graph's aggregates.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocClaims {
    /// The edges its claims state (negated claims excluded).
    pub edges: Vec<Edge>,
    /// The concepts it mentions.
    pub mentions: Vec<String>,
}

impl DocClaims {
    /// What an extraction says to the graph: the edges of its claims that
    /// are not negated, and the concepts it mentions, each once.
    pub fn of(extraction: &Extraction) -> DocClaims {
        let edges = extraction
            .claims
            .iter()
            .filter(|c| !c.negated)
            .map(|c| Edge { subject: c.subject.clone(), predicate: c.predicate.clone(), object: c.object.clone() })
            .collect();
        let mentions = extraction.mentions.iter().map(|m| m.concept.clone()).collect();
        DocClaims::new(edges, mentions)
    }

    /// Edges and mentions, sorted, each once.
    pub fn new(mut edges: Vec<Edge>, mut mentions: Vec<String>) -> DocClaims {
        edges.sort();
        edges.dedup();
        mentions.sort();
        mentions.dedup();
        DocClaims { edges, mentions }
    }
}

/// What one commit of the graph changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// Documents whose graph is replaced by this extraction (`None`: the
    /// document was deleted).
    pub documents: Vec<(DocKey, Option<Extraction>)>,
    /// Edges whose support changed: the new number of supporting
    /// documents, `None` when no document supports the edge any more.
    pub support: Vec<((String, Edge), Option<u64>)>,
    /// Concepts whose number of mentioning documents changed (`None`: none now).
    pub mentions: Vec<((String, String), Option<u64>)>,
}

impl Changes {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty() && self.support.is_empty() && self.mentions.is_empty()
    }
}

/// A failure of the graph store or of a query.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The store cannot be opened, read or written.
    #[error("graph store: {0}")]
    Store(String),
    /// A query that does not parse or cannot be evaluated.
    #[error("SPARQL: {0}")]
    Query(String),
}
