//! How the graph is written in RDF: the IRIs of concepts, documents,
//! chunks, claims and edges, and the quads of one document.
//!
//! Concepts keep their CURIE's usual namespace (`DRUGBANK:DB00945` is
//! `http://identifiers.org/drugbank/DB00945`, `HP:0002315` is
//! `http://purl.obolibrary.org/obo/HP_0002315`); predicates and categories
//! are Biolink's (`https://w3id.org/biolink/vocab/treats`). medkg's own
//! nodes are URNs whose parts are percent-encoded, so every IRI is valid
//! whatever a document id holds, and maps back to its parts.

use oxigraph::model::vocab::{rdf, rdfs, xsd};
use oxigraph::model::{GraphName, Literal, NamedNode, NamedNodeRef, NamedOrBlankNode, Quad, Term};

use super::Edge;
use crate::extract::{Extraction, Vocabulary};

/// Biolink Model's namespace.
pub const BIOLINK: &str = "https://w3id.org/biolink/vocab/";
/// medkg's own properties.
pub const MEDKG: &str = "https://w3id.org/medkg/vocab#";

/// CURIE prefixes and the namespaces they stand for.
const PREFIXES: &[(&str, &str)] = &[
    ("DRUGBANK", "http://identifiers.org/drugbank/"),
    ("HP", "http://purl.obolibrary.org/obo/HP_"),
    ("OMIM", "http://purl.obolibrary.org/obo/OMIM_"),
    ("ORPHANET", "http://www.orpha.net/ORDO/Orphanet_"),
    ("NCBIGene", "http://identifiers.org/ncbigene/"),
    ("MESH", "http://id.nlm.nih.gov/mesh/"),
    ("MEDLINEPLUS", "http://identifiers.org/medlineplus/"),
    ("DECIPHER", "http://identifiers.org/decipher/"),
    ("biolink", BIOLINK),
];
/// A CURIE of any other prefix.
const OTHER_CURIE: &str = "urn:medkg:curie:";

/// `s` with everything but RFC 3986's unreserved characters percent-encoded.
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`pct`] (`None` for a malformed escape or bad UTF-8).
pub fn unpct(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn node(iri: String) -> NamedNode {
    // Every IRI made here is a known scheme followed by percent-encoded parts.
    NamedNode::new_unchecked(iri)
}

/// A medkg property or class.
pub fn medkg(name: &str) -> NamedNode {
    node(format!("{MEDKG}{name}"))
}

/// A Biolink term (`treats`, `Drug`, `subject`).
pub fn biolink(name: &str) -> NamedNode {
    node(format!("{BIOLINK}{}", pct(name)))
}

/// The IRI of a CURIE (`biolink:treats` included).
pub fn iri_of(curie: &str) -> NamedNode {
    if let Some((prefix, local)) = curie.split_once(':') {
        if let Some((_, ns)) = PREFIXES.iter().find(|(p, _)| *p == prefix) {
            return node(format!("{ns}{}", pct(local)));
        }
    }
    node(format!("{OTHER_CURIE}{}", pct(curie)))
}

/// The CURIE of an IRI made by [`iri_of`].
pub fn curie_of(iri: &str) -> Option<String> {
    if let Some(rest) = iri.strip_prefix(OTHER_CURIE) {
        return unpct(rest);
    }
    PREFIXES.iter().find_map(|(prefix, ns)| Some(format!("{prefix}:{}", unpct(iri.strip_prefix(ns)?)?)))
}

/// A tenant's graph: its edges with their support, its concepts.
pub fn tenant_graph(tenant: &str) -> NamedNode {
    node(format!("urn:medkg:tenant:{}", pct(tenant)))
}

/// A document, and the named graph of its claims.
pub fn doc_iri(tenant: &str, doc_id: &str) -> NamedNode {
    node(format!("urn:medkg:doc:{}:{}", pct(tenant), pct(doc_id)))
}

/// A chunk of a document.
pub fn chunk_iri(tenant: &str, chunk_id: &str) -> NamedNode {
    node(format!("urn:medkg:chunk:{}:{}", pct(tenant), pct(chunk_id)))
}

/// An aggregated edge of a tenant's graph.
pub fn edge_iri(tenant: &str, subject: &str, predicate: &str, object: &str) -> NamedNode {
    node(format!("urn:medkg:edge:{}:{}:{}:{}", pct(tenant), pct(subject), pct(predicate), pct(object)))
}

/// An aggregated edge in its tenant's graph, its count aside: the
/// `biolink:Association` node, and the plain `subject predicate object`
/// triple.
pub fn edge_quads(tenant: &str, edge: &Edge) -> (NamedNode, Vec<Quad>) {
    let graph = GraphName::NamedNode(tenant_graph(tenant));
    let node = edge_iri(tenant, &edge.subject, &edge.predicate, &edge.object);
    let (s, p, o) = (iri_of(&edge.subject), iri_of(&edge.predicate), iri_of(&edge.object));
    let quads = vec![
        Quad::new(node.clone(), owned(rdf::TYPE), biolink("Association"), graph.clone()),
        Quad::new(node.clone(), biolink("subject"), s.clone(), graph.clone()),
        Quad::new(node.clone(), biolink("predicate"), p.clone(), graph.clone()),
        Quad::new(node.clone(), biolink("object"), o.clone(), graph.clone()),
        Quad::new(s, p, o, graph),
    ];
    (node, quads)
}

/// A mentioned concept in its tenant's graph, its count aside: its label
/// and Biolink category, when `vocabulary` knows it.
pub fn concept_quads(tenant: &str, concept: &str, vocabulary: Option<&Vocabulary>) -> (NamedNode, Vec<Quad>) {
    let graph = GraphName::NamedNode(tenant_graph(tenant));
    let node = iri_of(concept);
    let mut quads = Vec::new();
    if let Some(c) = vocabulary.and_then(|v| v.by_id(concept)) {
        quads.push(Quad::new(node.clone(), owned(rdfs::LABEL), Literal::from(c.label.as_str()), graph.clone()));
        quads.push(Quad::new(node.clone(), biolink("category"), iri_of(c.category.biolink()), graph));
    }
    (node, quads)
}

/// `node medkg:{property} count` in `graph`.
pub fn count_quad(node: &NamedNode, property: &str, count: u64, graph: &GraphName) -> Quad {
    let n = Literal::new_typed_literal(count.to_string(), owned(xsd::INTEGER));
    Quad::new(node.clone(), medkg(property), n, graph.clone())
}

/// A literal's text.
pub(crate) fn literal_text(term: &Term) -> Option<&str> {
    match term {
        Term::Literal(l) => Some(l.value()),
        _ => None,
    }
}

/// An IRI's text.
pub(crate) fn iri_text(term: &Term) -> Option<&str> {
    match term {
        Term::NamedNode(n) => Some(n.as_str()),
        _ => None,
    }
}

/// Builds quads into one graph.
pub(crate) struct Quads<'a> {
    pub graph: GraphName,
    pub out: &'a mut Vec<Quad>,
}

impl Quads<'_> {
    pub fn add(&mut self, s: impl Into<NamedOrBlankNode>, p: impl Into<NamedNode>, o: impl Into<Term>) {
        self.out.push(Quad::new(s, p, o, self.graph.clone()));
    }
}

/// `rdf:type`, `rdfs:label` and friends as owned nodes.
pub(crate) fn owned(n: NamedNodeRef<'_>) -> NamedNode {
    n.into_owned()
}

/// The quads of one document's named graph: the document, the chunks
/// that mention concepts, the concepts, the topics, and every claim as a
/// `biolink:Association` with its evidence (plus the plain
/// `subject predicate object` triple when the claim is not negated).
pub fn document_quads(tenant: &str, x: &Extraction) -> Vec<Quad> {
    let doc = doc_iri(tenant, &x.doc_id);
    let mut out = Vec::new();
    let mut q = Quads { graph: GraphName::NamedNode(doc.clone()), out: &mut out };
    q.add(doc.clone(), owned(rdf::TYPE), medkg("Document"));
    q.add(doc.clone(), medkg("id"), Literal::new_simple_literal(&x.doc_id));
    q.add(doc.clone(), medkg("tenant"), Literal::new_simple_literal(tenant));

    let mut concepts: Vec<&str> = x.mentions.iter().map(|m| m.concept.as_str()).collect();
    concepts.sort_unstable();
    concepts.dedup();
    for concept in concepts {
        q.add(doc.clone(), medkg("mentions"), iri_of(concept));
    }
    let mut chunk_mentions: Vec<(&str, &str)> =
        x.mentions.iter().map(|m| (m.chunk_id.as_str(), m.concept.as_str())).collect();
    chunk_mentions.sort_unstable();
    chunk_mentions.dedup();
    let mut last_chunk = None;
    for (chunk_id, concept) in chunk_mentions {
        let chunk = chunk_iri(tenant, chunk_id);
        if last_chunk != Some(chunk_id) {
            q.add(doc.clone(), medkg("chunk"), chunk.clone());
            q.add(chunk.clone(), medkg("id"), Literal::new_simple_literal(chunk_id));
            last_chunk = Some(chunk_id);
        }
        q.add(chunk, medkg("mentions"), iri_of(concept));
    }
    for topic in &x.topics {
        q.add(doc.clone(), medkg("topic"), iri_of(topic));
    }
    for (n, claim) in x.claims.iter().enumerate() {
        let node = self::node(format!("{}:claim:{n}", doc.as_str()));
        let (s, p, o) = (iri_of(&claim.subject), iri_of(&claim.predicate), iri_of(&claim.object));
        q.add(node.clone(), owned(rdf::TYPE), biolink("Association"));
        q.add(node.clone(), biolink("subject"), s.clone());
        q.add(node.clone(), biolink("predicate"), p.clone());
        q.add(node.clone(), biolink("object"), o.clone());
        q.add(node.clone(), medkg("negated"), Literal::from(claim.negated));
        let confidence = Literal::new_typed_literal(format!("{:.3}", claim.confidence), owned(xsd::DECIMAL));
        q.add(node.clone(), medkg("confidence"), confidence);
        q.add(node.clone(), medkg("extractor"), Literal::new_simple_literal(&claim.extractor));
        if let Some(chunk_id) = &claim.chunk_id {
            q.add(node.clone(), medkg("chunk"), chunk_iri(tenant, chunk_id));
        }
        if let Some((start, end)) = claim.sentence {
            q.add(node.clone(), medkg("sentenceStart"), Literal::from(start as i64));
            q.add(node.clone(), medkg("sentenceEnd"), Literal::from(end as i64));
        }
        if !claim.evidence.is_empty() {
            q.add(node.clone(), medkg("evidence"), Literal::new_simple_literal(&claim.evidence));
        }
        q.add(node, medkg("document"), doc.clone());
        if !claim.negated {
            q.add(s, p, o);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn curies_keep_their_namespaces() {
        assert_eq!(iri_of("DRUGBANK:DB00945").as_str(), "http://identifiers.org/drugbank/DB00945");
        assert_eq!(iri_of("HP:0002315").as_str(), "http://purl.obolibrary.org/obo/HP_0002315");
        assert_eq!(iri_of("biolink:treats").as_str(), "https://w3id.org/biolink/vocab/treats");
        assert_eq!(iri_of("X:a b").as_str(), "urn:medkg:curie:X%3Aa%20b");
    }

    proptest! {
        /// Any CURIE and any id make a valid IRI that maps back.
        #[test]
        fn iris_are_valid_and_map_back(prefix in "(DRUGBANK|HP|MESH|X|biolink|)", local in "\\PC{0,20}") {
            let curie = format!("{prefix}:{local}");
            let iri = iri_of(&curie);
            prop_assert!(NamedNode::new(iri.as_str()).is_ok());
            prop_assert_eq!(curie_of(iri.as_str()), Some(curie));
            let doc = doc_iri(&local, &local);
            prop_assert!(NamedNode::new(doc.as_str()).is_ok());
            prop_assert_eq!(unpct(&pct(&local)), Some(local));
        }
    }
}
