//! The embedded store: Oxigraph over RocksDB at `DATA_DIR/graph`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use oxigraph::io::{RdfFormat, RdfSerializer};
use oxigraph::model::{GraphName, GraphNameRef, Literal, NamedNode, NamedOrBlankNode, Quad, Term};
use oxigraph::sparql::results::{QueryResultsFormat, QueryResultsSerializer};
pub use oxigraph::sparql::CancellationToken;
use oxigraph::sparql::{QueryResults, QuerySolution, SparqlEvaluator};
use oxigraph::store::{StorageError, Store};

use super::rdf::{self as layout, curie_of, doc_iri, iri_of, iri_text, literal_text, medkg, tenant_graph};
use super::remote;
use super::{Changes, DocClaims, DocKey, Edge, GraphError};
use crate::extract::Vocabulary;

/// How `medkg sparql` writes results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryFormat {
    /// SPARQL 1.1 Query Results JSON (N-Triples for CONSTRUCT and DESCRIBE).
    Json,
    /// Tab-separated values (N-Triples for CONSTRUCT and DESCRIBE).
    Tsv,
}

/// A concept's neighbour in a tenant's graph.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Neighbour {
    /// The Biolink predicate.
    pub predicate: String,
    /// The concept is the subject (else the object).
    pub outgoing: bool,
    /// The neighbour's CURIE.
    pub concept: String,
    /// Its label, when a document mentions it.
    pub label: Option<String>,
    /// Distinct documents supporting the edge.
    pub support: u64,
    /// The best evidence sentences: `(document, sentence)`, by confidence.
    pub evidence: Vec<(String, String)>,
}

/// What the graph knows of a concept in a tenant.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ConceptInfo {
    /// Its CURIE.
    pub concept: String,
    /// Its label.
    pub label: Option<String>,
    /// Its Biolink category.
    pub category: Option<String>,
    /// Distinct documents mentioning it.
    pub documents: u64,
}

/// The graph store.
#[derive(Clone)]
pub struct GraphStore {
    store: Store,
}

fn store_error(e: impl std::fmt::Display) -> GraphError {
    GraphError::Store(e.to_string())
}

impl GraphStore {
    /// Opens (or creates) the store in `dir`. One process at a time may
    /// hold it (RocksDB's lock).
    pub fn open(dir: &Path) -> Result<GraphStore, GraphError> {
        std::fs::create_dir_all(dir).map_err(|e| store_error(format!("{}: {e}", dir.display())))?;
        let store = Store::open(dir).map_err(|e| store_error(format!("{}: {e}", dir.display())))?;
        Ok(GraphStore { store })
    }

    /// Opens the store a run wrote in `dir`, to read it. Oxigraph does not
    /// support a reader process beside a writer, so this takes the store's
    /// lock like a writer would: while a run writes the graph, it is a
    /// clear error (and a run does not start while a reader holds it).
    pub fn open_existing(dir: &Path) -> Result<GraphStore, GraphError> {
        if !dir.join("CURRENT").exists() {
            return Err(store_error(format!("{}: no graph here (has a kg stage run with this data directory? A run with --graph sparql:URL keeps its graph at that endpoint: query it there)", dir.display())));
        }
        match Store::open(dir) {
            Ok(store) => Ok(GraphStore { store }),
            Err(e) if e.to_string().contains("lock") => Err(store_error(format!(
                "{}: a run is writing this graph; read it once the run stops ({e})",
                dir.display()
            ))),
            Err(e) => Err(store_error(format!("{}: {e}", dir.display()))),
        }
    }

    /// A store in memory (tests, batch comparisons).
    pub fn in_memory() -> Result<GraphStore, GraphError> {
        Ok(GraphStore { store: Store::new().map_err(store_error)? })
    }

    /// Applies one commit's changes in one transaction: documents' graphs
    /// replaced or dropped, edges' support and concepts' counts set.
    /// Concept labels and categories come from `vocabulary`.
    ///
    /// What it replaces is read first (this process is the store's only
    /// writer, so nothing changes in between), then one write-only update
    /// (`DELETE DATA` + `INSERT DATA`) commits: Oxigraph runs that as a
    /// plain RocksDB write batch, where a readable transaction would index
    /// every write, which took most of the stage's time.
    pub fn apply(&self, changes: &Changes, vocabulary: Option<&Vocabulary>) -> Result<(), GraphError> {
        let (mut delete, mut insert) = (Vec::new(), Vec::new());
        for ((tenant, doc), extraction) in changes.latest_documents() {
            let graph = GraphName::NamedNode(doc_iri(tenant, doc));
            for quad in self.store.quads_for_pattern(None, None, None, Some(graph.as_ref())) {
                delete.push(quad.map_err(store_error)?);
            }
            if let Some(x) = extraction {
                insert.extend(layout::document_quads(tenant, x));
            }
        }
        // The counts it sets replace the stored ones.
        for (graph, property, node) in remote::count_quads(changes, vocabulary, &mut delete, &mut insert) {
            let old = self.store.quads_for_pattern(
                Some(node.as_ref().into()),
                Some(medkg(property).as_ref()),
                None,
                Some(graph.as_ref()),
            );
            for quad in old {
                delete.push(quad.map_err(store_error)?);
            }
        }
        if delete.is_empty() && insert.is_empty() {
            return Ok(());
        }
        let update = remote::data_update(String::new(), &delete, &insert);
        self.store.update(&update).map_err(|e| store_error(format!("cannot write the graph: {e}")))
    }

    /// Makes everything committed so far durable on disk (RocksDB flushes
    /// its memtables; committed transactions are in its log already).
    pub fn flush(&self) -> Result<(), GraphError> {
        self.store.flush().map_err(store_error)
    }

    /// Every document's latest claims, read back from the store (to rebuild
    /// the graph's state on restart without reading the sources again).
    pub fn restore(&self) -> Result<Vec<(DocKey, DocClaims)>, GraphError> {
        let mut out = Vec::new();
        let tenant_of = medkg("tenant");
        for quad in self.store.quads_for_pattern(None, Some(tenant_of.as_ref()), None, None) {
            let quad = quad.map_err(store_error)?;
            let (GraphName::NamedNode(graph), Some(tenant)) = (&quad.graph_name, literal_text(&quad.object)) else {
                continue;
            };
            let (mut id, mut mentions) = (None, Vec::new());
            // Claims by node: subject, predicate, object, negated.
            let mut claims: HashMap<NamedOrBlankNode, [Option<String>; 4]> = HashMap::new();
            for quad in self.store.quads_for_pattern(None, None, None, Some(graph.as_ref().into())) {
                let quad = quad.map_err(store_error)?;
                let predicate = quad.predicate.as_str();
                let Some(name) =
                    predicate.strip_prefix(layout::MEDKG).or_else(|| predicate.strip_prefix(layout::BIOLINK))
                else {
                    continue;
                };
                let slot = match name {
                    "id" if quad.subject == NamedOrBlankNode::from(graph.clone()) => {
                        id = literal_text(&quad.object).map(str::to_string);
                        continue;
                    }
                    "mentions" if quad.subject == NamedOrBlankNode::from(graph.clone()) => {
                        mentions.extend(iri_text(&quad.object).and_then(curie_of));
                        continue;
                    }
                    "subject" => 0,
                    "predicate" => 1,
                    "object" => 2,
                    "negated" => 3,
                    _ => continue,
                };
                let value = match slot {
                    3 => literal_text(&quad.object).map(str::to_string),
                    _ => iri_text(&quad.object).and_then(curie_of),
                };
                claims.entry(quad.subject.clone()).or_default()[slot] = value;
            }
            let Some(id) = id else { continue };
            let edges = claims
                .into_values()
                .filter_map(|claim| match claim {
                    [Some(subject), Some(predicate), Some(object), Some(negated)] if negated == "false" => {
                        Some(Edge { subject, predicate, object })
                    }
                    _ => None,
                })
                .collect();
            out.push(((tenant.to_string(), id), DocClaims::new(edges, mentions)));
        }
        out.sort();
        Ok(out)
    }

    /// The dataset a tenant's queries see: its graph as the default graph,
    /// its documents' graphs as the named graphs.
    fn dataset_of(&self, tenant: &str) -> Result<(Vec<GraphName>, Vec<NamedOrBlankNode>), GraphError> {
        let tenant_of = medkg("tenant");
        let value = Term::from(Literal::from(tenant));
        let mut named = Vec::new();
        for quad in self.store.quads_for_pattern(None, Some(tenant_of.as_ref()), Some(value.as_ref()), None) {
            if let GraphName::NamedNode(graph) = quad.map_err(store_error)?.graph_name {
                named.push(graph.into());
            }
        }
        Ok((vec![GraphName::NamedNode(tenant_graph(tenant))], named))
    }

    fn execute(&self, tenant: &str, sparql: &str) -> Result<QueryResults<'static>, GraphError> {
        self.execute_with(tenant, sparql, None)
    }

    fn execute_with(
        &self,
        tenant: &str,
        sparql: &str,
        cancel: Option<CancellationToken>,
    ) -> Result<QueryResults<'static>, GraphError> {
        let mut evaluator = SparqlEvaluator::new();
        if let Some(token) = cancel {
            evaluator = evaluator.with_cancellation_token(token);
        }
        let mut query = evaluator
            // (Built without Oxigraph's HTTP client: a SERVICE call fails, nothing leaves the machine.)
            .with_prefix("biolink", layout::BIOLINK)
            .and_then(|e| e.with_prefix("medkg", layout::MEDKG))
            .and_then(|e| e.with_prefix("rdfs", "http://www.w3.org/2000/01/rdf-schema#"))
            .map_err(|e| GraphError::Query(e.to_string()))?
            .parse_query(sparql)
            .map_err(|e| GraphError::Query(e.to_string()))?;
        // The tenant's dataset replaces any FROM / FROM NAMED of the query.
        let (default, named) = self.dataset_of(tenant)?;
        query.dataset_mut().set_default_graph(default);
        query.dataset_mut().set_available_named_graphs(named);
        query.on_store(&self.store).execute().map_err(|e| GraphError::Query(e.to_string()))
    }

    /// Runs a SPARQL 1.1 query over one tenant's graph and writes its
    /// results. The prefixes `biolink:`, `medkg:` and `rdfs:` are predefined.
    pub fn query(&self, tenant: &str, sparql: &str, format: QueryFormat, out: impl Write) -> Result<(), GraphError> {
        self.query_cancellable(tenant, sparql, format, out, None)
    }

    /// [`GraphStore::query`], stopped with [`GraphError::Query`] ("cancelled")
    /// as soon as `cancel` is cancelled (a server's time limit).
    pub fn query_cancellable(
        &self,
        tenant: &str,
        sparql: &str,
        format: QueryFormat,
        out: impl Write,
        cancel: Option<CancellationToken>,
    ) -> Result<(), GraphError> {
        let results_format = match format {
            QueryFormat::Json => QueryResultsFormat::Json,
            QueryFormat::Tsv => QueryResultsFormat::Tsv,
        };
        let serializer = QueryResultsSerializer::from_format(results_format);
        match self.execute_with(tenant, sparql, cancel)? {
            QueryResults::Boolean(value) => {
                serializer.serialize_boolean_to_writer(out, value).map_err(store_error)?;
            }
            QueryResults::Solutions(solutions) => {
                let mut writer = serializer
                    .serialize_solutions_to_writer(out, solutions.variables().to_vec())
                    .map_err(store_error)?;
                for solution in solutions {
                    let solution = solution.map_err(|e| GraphError::Query(e.to_string()))?;
                    writer.serialize(&solution).map_err(store_error)?;
                }
                writer.finish().map_err(store_error)?;
            }
            QueryResults::Graph(triples) => {
                let mut writer = RdfSerializer::from_format(RdfFormat::NTriples).for_writer(out);
                for triple in triples {
                    let triple = triple.map_err(|e| GraphError::Query(e.to_string()))?;
                    writer.serialize_triple(&triple).map_err(store_error)?;
                }
                writer.finish().map_err(store_error)?;
            }
        }
        Ok(())
    }

    /// The solutions of a SELECT over one tenant's graph.
    pub fn select(&self, tenant: &str, sparql: &str) -> Result<Vec<QuerySolution>, GraphError> {
        match self.execute(tenant, sparql)? {
            QueryResults::Solutions(solutions) => {
                solutions.collect::<Result<Vec<_>, _>>().map_err(|e| GraphError::Query(e.to_string()))
            }
            _ => Err(GraphError::Query("expected a SELECT query".into())),
        }
    }

    /// Writes the graph as N-Quads, one tenant's graphs only when `tenant`
    /// is given; returns the number of quads.
    pub fn export(&self, tenant: Option<&str>, out: impl Write) -> Result<u64, GraphError> {
        let mut writer = RdfSerializer::from_format(RdfFormat::NQuads).for_writer(out);
        let mut count = 0;
        let mut write = |quad: Result<Quad, StorageError>| -> Result<(), GraphError> {
            writer.serialize_quad(&quad.map_err(store_error)?).map_err(store_error)?;
            count += 1;
            Ok(())
        };
        match tenant {
            None => self.store.iter().try_for_each(&mut write)?,
            Some(tenant) => {
                let (default, named) = self.dataset_of(tenant)?;
                let graphs = default.into_iter().chain(named.into_iter().filter_map(|g| match g {
                    NamedOrBlankNode::NamedNode(n) => Some(GraphName::NamedNode(n)),
                    NamedOrBlankNode::BlankNode(_) => None,
                }));
                for graph in graphs {
                    let graph: GraphNameRef<'_> = graph.as_ref();
                    self.store.quads_for_pattern(None, None, None, Some(graph)).try_for_each(&mut write)?;
                }
            }
        }
        writer.finish().map_err(store_error)?;
        Ok(count)
    }

    /// The ids of the tenant's chunks that mention `concept`.
    pub fn chunks_mentioning(&self, tenant: &str, concept: &str) -> Result<Vec<String>, GraphError> {
        let sparql = format!(
            "SELECT DISTINCT ?id WHERE {{ GRAPH ?d {{ ?chunk medkg:mentions <{}> ; medkg:id ?id }} }}",
            iri_of(concept).as_str()
        );
        let rows = self.select(tenant, &sparql)?;
        Ok(rows.iter().filter_map(|r| r.get("id").and_then(literal_text).map(str::to_string)).collect())
    }

    /// What the tenant's graph knows of `concept` (`None`: no document mentions it).
    pub fn concept(&self, tenant: &str, concept: &str) -> Result<Option<ConceptInfo>, GraphError> {
        let sparql = format!(
            "SELECT ?n ?label ?category WHERE {{ <{0}> medkg:documents ?n . \
             OPTIONAL {{ <{0}> rdfs:label ?label }} OPTIONAL {{ <{0}> biolink:category ?category }} }}",
            iri_of(concept).as_str()
        );
        let rows = self.select(tenant, &sparql)?;
        Ok(rows.first().map(|row| ConceptInfo {
            concept: concept.to_string(),
            label: row.get("label").and_then(literal_text).map(str::to_string),
            category: row.get("category").and_then(iri_text).and_then(curie_of),
            documents: row.get("n").and_then(literal_text).and_then(|n| n.parse().ok()).unwrap_or(0),
        }))
    }

    /// Concepts of the tenant's graph whose label is `name` (any case).
    pub fn concepts_named(&self, tenant: &str, name: &str) -> Result<Vec<String>, GraphError> {
        let sparql =
            format!("SELECT ?c WHERE {{ ?c rdfs:label ?l FILTER(LCASE(STR(?l)) = LCASE({})) }}", Literal::from(name));
        let rows = self.select(tenant, &sparql)?;
        Ok(rows.iter().filter_map(|r| r.get("c").and_then(iri_text).and_then(curie_of)).collect())
    }

    /// `concept`'s neighbours by predicate, most supported first (at most
    /// `limit` each way), each with its `evidence` best sentences.
    pub fn neighbours(
        &self,
        tenant: &str,
        concept: &str,
        limit: usize,
        evidence: usize,
    ) -> Result<Vec<Neighbour>, GraphError> {
        let me = iri_of(concept);
        let mut out = Vec::new();
        for outgoing in [true, false] {
            let (mine, theirs) = if outgoing { ("subject", "object") } else { ("object", "subject") };
            let sparql = format!(
                "SELECT ?p ?other ?n ?label WHERE {{ ?e biolink:{mine} <{me}> ; biolink:predicate ?p ; \
                 biolink:{theirs} ?other ; medkg:support ?n . OPTIONAL {{ ?other rdfs:label ?label }} }} \
                 ORDER BY DESC(?n) ?p ?other LIMIT {limit}",
                me = me.as_str()
            );
            for row in self.select(tenant, &sparql)? {
                let (Some(p), Some(other)) = (row.get("p").and_then(iri_text), row.get("other").and_then(iri_text))
                else {
                    continue;
                };
                let (subject, object) = if outgoing { (me.as_str(), other) } else { (other, me.as_str()) };
                let sentences = format!(
                    "SELECT ?id ?text WHERE {{ GRAPH ?d {{ ?c biolink:subject <{subject}> ; biolink:predicate <{p}> ; \
                     biolink:object <{object}> ; medkg:negated false ; medkg:confidence ?conf ; \
                     medkg:evidence ?text . ?d medkg:id ?id }} }} ORDER BY DESC(?conf) ?id LIMIT {evidence}"
                );
                let evidence = self
                    .select(tenant, &sentences)?
                    .iter()
                    .filter_map(|r| {
                        Some((
                            r.get("id").and_then(literal_text)?.to_string(),
                            literal_text(r.get("text")?)?.to_string(),
                        ))
                    })
                    .collect();
                out.push(Neighbour {
                    predicate: curie_of(p).unwrap_or_else(|| p.to_string()),
                    outgoing,
                    concept: curie_of(other).unwrap_or_else(|| other.to_string()),
                    label: row.get("label").and_then(literal_text).map(str::to_string),
                    support: row.get("n").and_then(literal_text).and_then(|n| n.parse().ok()).unwrap_or(0),
                    evidence,
                });
            }
        }
        Ok(out)
    }

    /// Runs a SPARQL Update over the whole store (tests of the remote store's updates).
    #[cfg(test)]
    pub(crate) fn update(&self, sparql: &str) -> Result<(), GraphError> {
        self.store.update(sparql).map_err(|e| GraphError::Query(e.to_string()))
    }

    /// A SELECT over the whole store, as an endpoint answers it (tests).
    #[cfg(test)]
    pub(crate) fn select_all(&self, sparql: &str) -> Result<Vec<QuerySolution>, GraphError> {
        match SparqlEvaluator::new()
            .parse_query(sparql)
            .map_err(|e| GraphError::Query(e.to_string()))?
            .on_store(&self.store)
            .execute()
        {
            Ok(QueryResults::Solutions(s)) => {
                s.collect::<Result<Vec<_>, _>>().map_err(|e| GraphError::Query(e.to_string()))
            }
            Ok(_) => Err(GraphError::Query("expected a SELECT query".into())),
            Err(e) => Err(GraphError::Query(e.to_string())),
        }
    }

    /// Counts of the whole store: quads, and per tenant the documents,
    /// edges and concepts.
    pub fn census(&self) -> Result<Census, GraphError> {
        let mut census = Census { quads: self.store.len().map_err(store_error)? as u64, ..Default::default() };
        let count = |p: NamedNode| -> Result<BTreeMap<String, u64>, GraphError> {
            let mut by_graph = BTreeMap::new();
            for quad in self.store.quads_for_pattern(None, Some(p.as_ref()), None, None) {
                if let GraphName::NamedNode(g) = quad.map_err(store_error)?.graph_name {
                    *by_graph.entry(g.into_string()).or_insert(0) += 1;
                }
            }
            Ok(by_graph)
        };
        census.documents = count(medkg("tenant"))?.len() as u64;
        census.edges = count(medkg("support"))?.values().sum();
        census.concepts = count(medkg("documents"))?.values().sum();
        census.claims = count(medkg("negated"))?.values().sum();
        Ok(census)
    }
}

/// The size of a graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Census {
    /// Quads in the store.
    pub quads: u64,
    /// Documents with a graph.
    pub documents: u64,
    /// Claims in the documents' graphs.
    pub claims: u64,
    /// Aggregated edges (all tenants).
    pub edges: u64,
    /// Mentioned concepts (all tenants).
    pub concepts: u64,
}
