//! PMC full text in JATS XML (`.nxml`).

use std::collections::BTreeMap;

use roxmltree::Node;

use super::xml::{child, children, descendant, parse_xml, path, root, text_of};
use super::ParseOptions;
use crate::{Document, SourceKind, StageError};

/// Elements whose text is not prose.
const SKIP: &[&str] = &[
    "table-wrap",
    "table",
    "disp-formula",
    "inline-formula",
    "fig",
    "supplementary-material",
    "xref-group",
    "sec",
    "ref-list",
];

pub(crate) fn parse(text: &str, options: &ParseOptions) -> Result<Document, StageError> {
    let xml = parse_xml(text)?;
    let article = root(&xml, "article", "a JATS <article>")?;
    let meta = path(article, &["front", "article-meta"])
        .ok_or_else(|| StageError::permanent("bad_record", "<article> has no <front><article-meta>"))?;
    let id_of = |kind: &str| {
        children(meta, "article-id")
            .find(|n| n.attribute("pub-id-type") == Some(kind))
            .map(|n| text_of(n, &[]))
            .filter(|v| !v.is_empty())
    };
    let id = if let Some(pmc) = id_of("pmc") {
        let digits = pmc.trim_start_matches("PMC");
        format!("pmc:PMC{digits}")
    } else if let Some(pmid) = id_of("pmid") {
        format!("pmid:{pmid}")
    } else if let Some(doi) = id_of("doi") {
        format!("doi:{}", doi.to_ascii_lowercase())
    } else {
        return Err(StageError::permanent("missing_id", "article has no pmc, pmid or doi <article-id>"));
    };
    let title = path(meta, &["title-group", "article-title"]).map(|t| text_of(t, &[])).unwrap_or_default();

    let mut sections = Vec::new();
    for abstract_node in children(meta, "abstract").filter(|a| a.attribute("abstract-type").is_none()) {
        let text = paragraphs(abstract_node);
        if !text.is_empty() {
            sections.push(("abstract".to_string(), text));
        }
    }
    if let Some(body) = child(article, "body") {
        let loose = direct_paragraphs(body);
        if !loose.is_empty() {
            sections.push(("body".to_string(), loose));
        }
        for sec in children(body, "sec") {
            collect_sections(sec, "", &mut sections);
        }
    }

    let mut metadata = BTreeMap::new();
    if let Some(journal) = descendant(article, "journal-title").map(|n| text_of(n, &[])) {
        metadata.insert("journal".to_string(), vec![journal]);
    }
    if let Some(year) = children(meta, "pub-date").filter_map(|d| child(d, "year")).map(|y| text_of(y, &[])).next() {
        metadata.insert("year".to_string(), vec![year]);
    }
    for kind in ["pmid", "doi"] {
        if let Some(value) = id_of(kind) {
            metadata.insert(kind.to_string(), vec![value]);
        }
    }
    let keywords: Vec<String> = meta
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "kwd")
        .map(|k| text_of(k, &[]))
        .filter(|k| !k.is_empty())
        .collect();
    if !keywords.is_empty() {
        metadata.insert("keywords".to_string(), keywords);
    }
    Ok(Document::new(id, &options.default_tenant, SourceKind::Pmc, title, sections, metadata))
}

/// A `<sec>` and its nested sections, each as its own section named by its
/// title path ("Methods / Study design"), in document order. Iterative:
/// nesting costs heap, not stack.
fn collect_sections(sec: Node<'_, '_>, parent: &str, out: &mut Vec<(String, String)>) {
    let mut stack = vec![(sec, parent.to_string())];
    while let Some((sec, parent)) = stack.pop() {
        let title = child(sec, "title").map(|t| text_of(t, &[])).unwrap_or_default();
        let name = match (parent.is_empty(), title.is_empty()) {
            (true, true) => "section".to_string(),
            (true, false) => title,
            (false, true) => parent,
            (false, false) => format!("{parent} / {title}"),
        };
        let text = direct_paragraphs(sec);
        if !text.is_empty() {
            out.push((name.clone(), text));
        }
        let at = stack.len();
        stack.extend(children(sec, "sec").map(|nested| (nested, name.clone())));
        stack[at..].reverse();
    }
}

/// Paragraphs directly under `node`, blank-line separated.
fn direct_paragraphs(node: Node<'_, '_>) -> String {
    children(node, "p").map(|p| text_of(p, SKIP)).filter(|p| !p.is_empty()).collect::<Vec<_>>().join("\n\n")
}

/// Every paragraph under `node` (structured abstracts nest them in `<sec>`).
fn paragraphs(node: Node<'_, '_>) -> String {
    let found: Vec<String> = node
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "p")
        .map(|p| text_of(p, SKIP))
        .filter(|p| !p.is_empty())
        .collect();
    if found.is_empty() {
        text_of(node, SKIP)
    } else {
        found.join("\n\n")
    }
}
