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
//! A run writes it to the embedded store at `DATA_DIR/graph`, or to any
//! SPARQL 1.1 endpoint (`--graph sparql:URL`, [`RemoteGraph`]).
//!
//! A query (`medkg sparql`) sees one tenant only: its graph is the default
//! graph and its documents' graphs are the named graphs.

pub mod rdf;
mod remote;
mod store;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::extract::Extraction;
pub use remote::{RemoteGraph, SparqlEndpoint};
pub use store::{CancellationToken, Census, ConceptInfo, GraphStore, Neighbour, QueryFormat};

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

    /// Each changed document once, with its last version in this commit
    /// (a commit may span several epochs), in the order they first changed.
    pub fn latest_documents(&self) -> Vec<(&DocKey, Option<&Extraction>)> {
        let mut index: HashMap<&DocKey, usize> = HashMap::new();
        let mut out: Vec<(&DocKey, Option<&Extraction>)> = Vec::new();
        for (key, extraction) in &self.documents {
            match index.get(key) {
                Some(&i) => out[i].1 = extraction.as_ref(),
                None => {
                    index.insert(key, out.len());
                    out.push((key, extraction.as_ref()));
                }
            }
        }
        out
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

/// Where a run keeps its graph: `oxigraph[:DIR]` (embedded, the default,
/// in `DATA_DIR/graph` unless a directory is given) or `sparql:URL` (a
/// SPARQL 1.1 endpoint; see [`RemoteGraph`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GraphTarget {
    /// The embedded store, in this directory (`None`: `DATA_DIR/graph`).
    Oxigraph(Option<std::path::PathBuf>),
    /// A remote SPARQL 1.1 endpoint.
    Sparql(SparqlEndpoint),
}

impl GraphTarget {
    /// The target a `kg` stage's `backend` and `uri` name.
    pub fn of_backend(backend: &str, uri: Option<&str>) -> Result<GraphTarget, String> {
        match (backend, uri) {
            ("oxigraph", dir) => Ok(GraphTarget::Oxigraph(dir.map(std::path::PathBuf::from))),
            ("sparql", Some(url)) => Ok(GraphTarget::Sparql(SparqlEndpoint::new(url)?)),
            ("sparql", None) => Err("backend `sparql` needs `uri`: the endpoint's base URL".into()),
            (other, _) => Err(format!("backend `{other}`: expected `oxigraph` (embedded) or `sparql` (an endpoint)")),
        }
    }
}

impl std::str::FromStr for GraphTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<GraphTarget, String> {
        match s.split_once(':') {
            _ if s == "oxigraph" => Ok(GraphTarget::Oxigraph(None)),
            Some(("oxigraph", dir)) if !dir.is_empty() => GraphTarget::of_backend("oxigraph", Some(dir)),
            Some(("sparql", url)) => GraphTarget::of_backend("sparql", Some(url)),
            _ => Err(format!("`{s}`: expected oxigraph, oxigraph:DIR or sparql:URL")),
        }
    }
}

impl std::fmt::Display for GraphTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraphTarget::Oxigraph(None) => write!(f, "oxigraph"),
            GraphTarget::Oxigraph(Some(dir)) => write!(f, "oxigraph:{}", dir.display()),
            GraphTarget::Sparql(endpoint) => write!(f, "sparql:{}", endpoint.update),
        }
    }
}

/// The store a run writes its graph to.
#[derive(Clone)]
pub enum GraphSink {
    /// The embedded Oxigraph store.
    Embedded(GraphStore),
    /// A SPARQL 1.1 endpoint.
    Remote(RemoteGraph),
}

impl GraphSink {
    /// Opens `target` (`data_dir` holds the embedded store by default).
    pub fn open(target: &GraphTarget, data_dir: &std::path::Path) -> Result<GraphSink, GraphError> {
        Ok(match target {
            GraphTarget::Oxigraph(dir) => {
                GraphSink::Embedded(GraphStore::open(&dir.clone().unwrap_or_else(|| data_dir.join("graph")))?)
            }
            GraphTarget::Sparql(endpoint) => GraphSink::Remote(RemoteGraph::new(endpoint.clone())?),
        })
    }

    /// Applies one commit's changes atomically.
    pub fn apply(&self, changes: &Changes, vocabulary: Option<&crate::extract::Vocabulary>) -> Result<(), GraphError> {
        match self {
            GraphSink::Embedded(store) => store.apply(changes, vocabulary),
            GraphSink::Remote(remote) => remote.apply(changes, vocabulary),
        }
    }

    /// Every document's latest claims, read back.
    pub fn restore(&self) -> Result<Vec<(DocKey, DocClaims)>, GraphError> {
        match self {
            GraphSink::Embedded(store) => store.restore(),
            GraphSink::Remote(remote) => remote.restore(),
        }
    }
}
