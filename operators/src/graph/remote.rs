//! A remote store: any SPARQL 1.1 endpoint (`--graph sparql:URL`), for
//! deployments whose graph outgrows one machine or is shared.
//!
//! A commit is one SPARQL 1.1 Update request, which a conforming server
//! runs atomically (Oxigraph runs it in one transaction): documents'
//! graphs dropped and inserted, counts deleted and set. The request is
//! idempotent (it states the result, it does not add to it), so a request
//! whose answer was lost is simply sent again. A restart reads every
//! document's claims back with two SELECT queries over the protocol.
//!
//! `URL` is the endpoint's base: medkg sends queries to `URL/query` and
//! updates to `URL/update`, the layout of Oxigraph's server and of Fuseki's
//! datasets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use oxigraph::model::{GraphName, NamedNode, Quad};
use oxigraph::sparql::results::{QueryResultsFormat, QueryResultsParser, ReaderQueryResultsParserOutput};
use oxigraph::sparql::QuerySolution;
use reqwest::Url;

use super::rdf::{self as layout, curie_of, doc_iri, iri_text, literal_text, tenant_graph};
use super::{Changes, DocClaims, DocKey, Edge, GraphError};
use crate::extract::Vocabulary;

/// Attempts at one request before the commit fails (the run then stops
/// without committing its source past the graph).
const ATTEMPTS: u32 = 6;
/// Time allowed for one request (a commit of many documents is one request).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A SPARQL 1.1 endpoint: where queries and updates go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparqlEndpoint {
    /// The query service (`BASE/query`).
    pub query: Url,
    /// The update service (`BASE/update`).
    pub update: Url,
}

impl SparqlEndpoint {
    /// The endpoint whose base URL is `base` (http or https).
    pub fn new(base: &str) -> Result<SparqlEndpoint, String> {
        let url = Url::parse(base).map_err(|e| format!("`{base}`: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!("`{base}`: a SPARQL endpoint is an http(s) URL with a host"));
        }
        let service = |name: &str| -> Result<Url, String> {
            let base = url.as_str().trim_end_matches('/');
            Url::parse(&format!("{base}/{name}")).map_err(|e| format!("`{base}/{name}`: {e}"))
        };
        Ok(SparqlEndpoint { query: service("query")?, update: service("update")? })
    }
}

/// The graph in a remote SPARQL 1.1 store.
#[derive(Clone)]
pub struct RemoteGraph {
    endpoint: SparqlEndpoint,
    client: reqwest::blocking::Client,
}

fn remote_error(e: impl std::fmt::Display) -> GraphError {
    GraphError::Store(e.to_string())
}

impl RemoteGraph {
    /// A client of `endpoint` (nothing is sent yet).
    pub fn new(endpoint: SparqlEndpoint) -> Result<RemoteGraph, GraphError> {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .user_agent(concat!("medkg/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| remote_error(format!("cannot build the HTTP client: {e}")))?;
        Ok(RemoteGraph { endpoint, client })
    }

    /// Applies one commit's changes as one SPARQL Update request.
    pub fn apply(&self, changes: &Changes, vocabulary: Option<&Vocabulary>) -> Result<(), GraphError> {
        let update = update_of(changes, vocabulary);
        self.send(&self.endpoint.update, "application/sparql-update", update, "application/json")?;
        Ok(())
    }

    /// Every document's latest claims, read back from the endpoint.
    pub fn restore(&self) -> Result<Vec<(DocKey, DocClaims)>, GraphError> {
        restore_with(|sparql| self.select(sparql))
    }

    /// The solutions of a SELECT over the whole endpoint.
    fn select(&self, sparql: &str) -> Result<Vec<QuerySolution>, GraphError> {
        let body = self.send(
            &self.endpoint.query,
            "application/sparql-query",
            sparql.to_string(),
            "application/sparql-results+json",
        )?;
        let parser = QueryResultsParser::from_format(QueryResultsFormat::Json);
        match parser.for_reader(body.as_slice()).map_err(|e| remote_error(format!("query results: {e}")))? {
            ReaderQueryResultsParserOutput::Solutions(rows) => {
                rows.collect::<Result<Vec<_>, _>>().map_err(|e| remote_error(format!("query results: {e}")))
            }
            ReaderQueryResultsParserOutput::Boolean(_) => Err(remote_error("query results: a boolean, not solutions")),
        }
    }

    /// POSTs `body`, retrying connection failures, timeouts, 429 and 5xx
    /// with backoff (every request medkg sends is idempotent).
    fn send(&self, url: &Url, content_type: &str, body: String, accept: &str) -> Result<Vec<u8>, GraphError> {
        let mut delay = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            let sent = self
                .client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .header(reqwest::header::ACCEPT, accept)
                .body(body.clone())
                .send();
            let (retry, why) = match sent {
                Ok(response) if response.status().is_success() => {
                    return response.bytes().map(|b| b.to_vec()).map_err(|e| remote_error(format!("POST {url}: {e}")));
                }
                Ok(response) => {
                    let status = response.status();
                    let retry = status.is_server_error() || status.as_u16() == 429;
                    let text = response.text().unwrap_or_default();
                    let text: String = text.chars().take(300).collect();
                    (retry, format!("HTTP {status}: {}", text.trim()))
                }
                Err(e) => (e.is_connect() || e.is_timeout() || e.is_request(), e.to_string()),
            };
            if !retry || attempt >= ATTEMPTS {
                return Err(remote_error(format!("POST {url} (attempt {attempt} of {ATTEMPTS}): {why}")));
            }
            tracing::warn!(%url, attempt, error = %why, "graph endpoint: retrying");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(5));
            attempt += 1;
        }
    }
}

/// Documents and the concepts they mention (a document may mention none).
const RESTORE_MENTIONS: &str = "SELECT ?tenant ?id ?m WHERE { GRAPH ?d { \
     ?d <https://w3id.org/medkg/vocab#tenant> ?tenant ; <https://w3id.org/medkg/vocab#id> ?id . \
     OPTIONAL { ?d <https://w3id.org/medkg/vocab#mentions> ?m } } }";

/// Documents' claims that are not negated.
const RESTORE_EDGES: &str = "SELECT ?tenant ?id ?s ?p ?o WHERE { GRAPH ?d { \
     ?d <https://w3id.org/medkg/vocab#tenant> ?tenant ; <https://w3id.org/medkg/vocab#id> ?id . \
     ?c <https://w3id.org/medkg/vocab#document> ?d ; <https://w3id.org/medkg/vocab#negated> false ; \
     <https://w3id.org/biolink/vocab/subject> ?s ; <https://w3id.org/biolink/vocab/predicate> ?p ; \
     <https://w3id.org/biolink/vocab/object> ?o } }";

/// Every document's latest claims, from the two restore queries run by `select`.
fn restore_with(
    select: impl Fn(&str) -> Result<Vec<QuerySolution>, GraphError>,
) -> Result<Vec<(DocKey, DocClaims)>, GraphError> {
    let mut docs: BTreeMap<DocKey, (Vec<Edge>, Vec<String>)> = BTreeMap::new();
    for row in select(RESTORE_MENTIONS)? {
        let Some(key) = doc_key(&row) else { continue };
        let entry = docs.entry(key).or_default();
        entry.1.extend(row.get("m").and_then(iri_text).and_then(curie_of));
    }
    for row in select(RESTORE_EDGES)? {
        let Some(key) = doc_key(&row) else { continue };
        let curie = |name: &str| row.get(name).and_then(iri_text).and_then(curie_of);
        if let (Some(subject), Some(predicate), Some(object)) = (curie("s"), curie("p"), curie("o")) {
            docs.entry(key).or_default().0.push(Edge { subject, predicate, object });
        }
    }
    Ok(docs.into_iter().map(|(key, (edges, mentions))| (key, DocClaims::new(edges, mentions))).collect())
}

fn doc_key(row: &QuerySolution) -> Option<DocKey> {
    let text = |name: &str| row.get(name).and_then(literal_text).map(str::to_string);
    Some((text("tenant")?, text("id")?))
}

/// The SPARQL 1.1 Update that applies `changes`: the changed documents'
/// graphs dropped and their new versions inserted; the changed counts
/// deleted, then set (with what their node is) or, for a count that
/// dropped to nothing, removed with what their node is.
pub(super) fn update_of(changes: &Changes, vocabulary: Option<&Vocabulary>) -> String {
    let mut update = String::new();
    let (mut insert, mut delete) = (Vec::new(), Vec::new());
    for ((tenant, doc), extraction) in changes.latest_documents() {
        let _ = writeln!(update, "DROP SILENT GRAPH {} ;", doc_iri(tenant, doc));
        if let Some(x) = extraction {
            insert.extend(layout::document_quads(tenant, x));
        }
    }
    // Old counts, by graph and property: one DELETE … WHERE each.
    let mut counted: BTreeMap<(String, &str), Vec<NamedNode>> = BTreeMap::new();
    for (graph, property, node) in count_quads(changes, vocabulary, &mut delete, &mut insert) {
        counted.entry((graph.to_string(), property)).or_default().push(node);
    }
    for ((graph, property), nodes) in &counted {
        let property = layout::medkg(property);
        let _ = write!(update, "DELETE {{ GRAPH {graph} {{ ?n {property} ?c }} }} WHERE {{ VALUES ?n {{");
        for node in nodes {
            let _ = write!(update, " {node}");
        }
        let _ = writeln!(update, " }} GRAPH {graph} {{ ?n {property} ?c }} }} ;");
    }
    data_update(update, &delete, &insert)
}

/// The quads of the counts `changes` sets, what their nodes are with them:
/// to `insert` for a count, to `delete` for a count that dropped to
/// nothing. Returns each counted node with its graph and property, whose
/// stored count the new one replaces.
pub(super) fn count_quads(
    changes: &Changes,
    vocabulary: Option<&Vocabulary>,
    delete: &mut Vec<Quad>,
    insert: &mut Vec<Quad>,
) -> Vec<(GraphName, &'static str, NamedNode)> {
    let edges =
        changes.support.iter().map(|((tenant, edge), n)| (tenant, "support", layout::edge_quads(tenant, edge), n));
    let concepts = changes
        .mentions
        .iter()
        .map(|((tenant, concept), n)| (tenant, "documents", layout::concept_quads(tenant, concept, vocabulary), n));
    let mut counted = Vec::with_capacity(changes.support.len() + changes.mentions.len());
    for (tenant, property, (node, quads), count) in edges.chain(concepts) {
        let graph = GraphName::NamedNode(tenant_graph(tenant));
        match count {
            Some(n) => {
                insert.extend(quads);
                insert.push(layout::count_quad(&node, property, *n, &graph));
            }
            None => delete.extend(quads),
        }
        counted.push((graph, property, node));
    }
    counted
}

/// `update` followed by `DELETE DATA { … }` and `INSERT DATA { … }` of the
/// quads given (each only when there are some), without a trailing separator.
pub(super) fn data_update(mut update: String, delete: &[Quad], insert: &[Quad]) -> String {
    for (keyword, quads) in [("DELETE DATA", delete), ("INSERT DATA", insert)] {
        if quads.is_empty() {
            continue;
        }
        // By graph: the default graph ("") bare, each named one in GRAPH <…> { … }.
        let mut by_graph: BTreeMap<&str, Vec<&Quad>> = BTreeMap::new();
        for quad in quads {
            by_graph.entry(graph_iri(&quad.graph_name)).or_default().push(quad);
        }
        let _ = writeln!(update, "{keyword} {{");
        for (graph, quads) in by_graph {
            if !graph.is_empty() {
                let _ = writeln!(update, "GRAPH <{graph}> {{");
            }
            for quad in quads {
                // N-Triples terms are valid SPARQL terms.
                let _ = writeln!(update, "{} {} {} .", quad.subject, quad.predicate, quad.object);
            }
            if !graph.is_empty() {
                let _ = writeln!(update, "}}");
            }
        }
        let _ = writeln!(update, "}} ;");
    }
    let trimmed = update.trim_end().trim_end_matches(';').trim_end().len();
    update.truncate(trimmed);
    update
}

/// A named graph's IRI; "" for the default graph.
fn graph_iri(graph: &GraphName) -> &str {
    match graph {
        GraphName::NamedNode(n) => n.as_str(),
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::vocab::{Category, Concept};
    use crate::extract::{Claim, Extraction, Mention};
    use crate::graph::GraphStore;
    use proptest::prelude::*;

    const CONCEPTS: &[&str] = &["DRUGBANK:DB00945", "HP:0002315", "OMIM:1", "X:odd <name>"];
    const PREDICATES: &[&str] = &["biolink:treats", "biolink:related_to"];

    fn concept() -> impl Strategy<Value = String> {
        prop::sample::select(CONCEPTS).prop_map(str::to_string)
    }

    fn extraction(tenant: String, doc: String) -> impl Strategy<Value = Extraction> {
        let claim =
            (concept(), prop::sample::select(PREDICATES), concept(), any::<bool>(), "\\PC{0,12}|[\"\\\\\n\r\t]{1,4}");
        (
            prop::collection::vec(concept(), 0..4),
            prop::collection::vec(claim, 0..4),
            prop::collection::vec(concept(), 0..2),
        )
            .prop_map(move |(mentions, claims, topics)| Extraction {
                doc_id: doc.clone(),
                tenant_id: tenant.clone(),
                mentions: mentions
                    .into_iter()
                    .enumerate()
                    .map(|(n, concept)| Mention {
                        concept,
                        category: "biolink:Drug".into(),
                        chunk_id: format!("{doc}#{}", n % 2),
                        start: 0,
                        end: 1,
                        text: "x".into(),
                        abbreviation: false,
                    })
                    .collect(),
                claims: claims
                    .into_iter()
                    .map(|(subject, predicate, object, negated, evidence)| Claim {
                        subject,
                        predicate: predicate.to_string(),
                        object,
                        doc_id: doc.clone(),
                        chunk_id: Some(format!("{doc}#0")),
                        sentence: Some((0, evidence.len())),
                        evidence,
                        negated,
                        extractor: "dictionary".into(),
                        confidence: 0.5,
                    })
                    .collect(),
                topics,
            })
    }

    fn key() -> impl Strategy<Value = DocKey> {
        (prop::sample::select(&["default", "a b"][..]), "[a-c:%/ ]{1,3}").prop_map(|(t, d)| (t.to_string(), d))
    }

    fn changes() -> impl Strategy<Value = Changes> {
        let document = key().prop_flat_map(|(tenant, doc)| {
            let key = (tenant.clone(), doc.clone());
            prop::option::of(extraction(tenant, doc)).prop_map(move |x| (key.clone(), x))
        });
        let edge = (concept(), prop::sample::select(PREDICATES), concept()).prop_map(|(subject, p, object)| Edge {
            subject,
            predicate: p.to_string(),
            object,
        });
        let tenant = prop::sample::select(&["default", "a b"][..]).prop_map(str::to_string);
        let count = prop::option::of(1u64..5);
        (
            prop::collection::vec(document, 0..5),
            prop::collection::btree_map((tenant.clone(), edge), count.clone(), 0..4),
            prop::collection::btree_map((tenant, concept()), count, 0..4),
        )
            .prop_map(|(documents, support, mentions)| Changes {
                documents,
                support: support.into_iter().collect(),
                mentions: mentions.into_iter().collect(),
            })
    }

    fn vocabulary() -> Vocabulary {
        let aspirin = Concept { id: CONCEPTS[0].into(), label: "aspirin \"ASA\"".into(), category: Category::Drug };
        Vocabulary::new(vec![(aspirin, vec!["aspirin".into()], false)]).unwrap()
    }

    fn nquads(store: &GraphStore) -> Vec<String> {
        let mut out = Vec::new();
        store.export(None, &mut out).unwrap();
        let mut lines: Vec<String> = String::from_utf8(out).unwrap().lines().map(str::to_string).collect();
        lines.sort();
        lines
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// The SPARQL Update a remote store is sent leaves the same graph as
        /// the embedded store's transaction, commit after commit, and the
        /// restore queries read back what the embedded store reads back.
        #[test]
        fn the_update_and_restore_queries_match_the_embedded_store(commits in prop::collection::vec(changes(), 1..4)) {
            let vocabulary = vocabulary();
            let (embedded, remote) = (GraphStore::in_memory().unwrap(), GraphStore::in_memory().unwrap());
            for changes in &commits {
                embedded.apply(changes, Some(&vocabulary)).unwrap();
                let update = update_of(changes, Some(&vocabulary));
                remote.update(&update).map_err(|e| TestCaseError::fail(format!("{e}\n{update}")))?;
                prop_assert_eq!(nquads(&remote), nquads(&embedded));
            }
            let restored = restore_with(|sparql| remote.select_all(sparql)).unwrap();
            prop_assert_eq!(restored, embedded.restore().unwrap());
        }
    }

    #[test]
    fn endpoints_are_http_urls_with_a_host() {
        let endpoint = SparqlEndpoint::new("http://127.0.0.1:7878/").unwrap();
        assert_eq!(endpoint.query.as_str(), "http://127.0.0.1:7878/query");
        assert_eq!(endpoint.update.as_str(), "http://127.0.0.1:7878/update");
        let fuseki = SparqlEndpoint::new("https://kg.example.org/ds").unwrap();
        assert_eq!(fuseki.update.as_str(), "https://kg.example.org/ds/update");
        for bad in ["file:///etc/passwd", "127.0.0.1:7878", "http://", "ftp://host/x", ""] {
            assert!(SparqlEndpoint::new(bad).is_err(), "{bad}");
        }
    }

    /// An endpoint answering every request with `reply` (status line onward).
    fn answering(reply: &'static str) -> RemoteGraph {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut request = [0u8; 65536];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        RemoteGraph::new(SparqlEndpoint::new(&format!("http://127.0.0.1:{port}")).unwrap()).unwrap()
    }

    #[test]
    fn a_hostile_endpoint_is_a_clear_error_not_a_crash() {
        let garbage = answering("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{\"head\":[");
        let error = garbage.restore().unwrap_err().to_string();
        assert!(error.contains("query results"), "{error}");
        // A refusal is not retried: the error says so at once, with the server's words.
        let refused =
            answering("HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\nConnection: close\r\n\r\nno such verb");
        let error = refused.apply(&Changes::default(), None).unwrap_err().to_string();
        assert!(error.contains("attempt 1 of 6") && error.contains("400") && error.contains("no such verb"), "{error}");
        // Rows that are not what the restore queries ask for are skipped.
        let odd = answering(
            "HTTP/1.1 200 OK\r\nContent-Type: application/sparql-results+json\r\nContent-Length: 95\r\nConnection: close\r\n\r\n\
             {\"head\":{\"vars\":[\"tenant\"]},\"results\":{\"bindings\":[{\"tenant\":{\"type\":\"uri\",\"value\":\"urn:x\"}}]}}",
        );
        assert_eq!(odd.restore().unwrap(), vec![]);
    }

    #[test]
    fn an_endpoint_that_is_down_is_a_clear_error_after_retries() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let remote = RemoteGraph::new(SparqlEndpoint::new(&format!("http://127.0.0.1:{port}")).unwrap()).unwrap();
        let error = remote.restore().unwrap_err().to_string();
        assert!(error.contains(&format!("127.0.0.1:{port}/query")) && error.contains("attempt 6 of 6"), "{error}");
    }
}
