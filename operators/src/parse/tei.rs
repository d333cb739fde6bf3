//! GROBID TEI XML (a PDF parsed by GROBID, or by medkg's own PDF worker).

use std::collections::BTreeMap;

use super::xml::{child, children, descendant, parse_xml, path, root, text_of};
use super::ParseOptions;
use crate::{Document, SourceKind, StageError};

const SKIP: &[&str] = &["formula", "figure", "table", "note"];

pub(crate) fn parse(text: &str, options: &ParseOptions) -> Result<Document, StageError> {
    let xml = parse_xml(text)?;
    let tei = root(&xml, "TEI", "<TEI>")?;
    let header =
        child(tei, "teiHeader").ok_or_else(|| StageError::permanent("bad_record", "<TEI> has no <teiHeader>"))?;
    let idno = |kind: &str| {
        header
            .descendants()
            .filter(|n| n.is_element() && n.tag_name().name() == "idno")
            .find(|n| n.attribute("type").map(|t| t.eq_ignore_ascii_case(kind)).unwrap_or(false))
            .map(|n| text_of(n, &[]))
            .filter(|v| !v.is_empty())
    };
    let id = if let Some(doi) = idno("DOI") {
        format!("doi:{}", doi.to_ascii_lowercase())
    } else if let Some(pmid) = idno("PMID") {
        format!("pmid:{pmid}")
    } else if let Some(md5) = idno("MD5") {
        format!("pdf:{}", md5.to_ascii_lowercase())
    } else {
        return Err(StageError::permanent("missing_id", "TEI header has no DOI, PMID or MD5 <idno>"));
    };
    let title = path(header, &["fileDesc", "titleStmt", "title"]).map(|t| text_of(t, &[])).unwrap_or_default();

    let mut sections = Vec::new();
    if let Some(abstract_node) = descendant(header, "abstract") {
        let text = paragraphs_under(abstract_node);
        if !text.is_empty() {
            sections.push(("abstract".to_string(), text));
        }
    }
    if let Some(body) = path(tei, &["text", "body"]) {
        for div in children(body, "div") {
            let head = child(div, "head").map(|h| text_of(h, &[])).filter(|h| !h.is_empty());
            let text =
                children(div, "p").map(|p| text_of(p, SKIP)).filter(|p| !p.is_empty()).collect::<Vec<_>>().join("\n\n");
            if !text.is_empty() {
                sections.push((head.unwrap_or_else(|| "body".to_string()), text));
            }
        }
    }
    let mut metadata = BTreeMap::new();
    if let Some(doi) = idno("DOI") {
        metadata.insert("doi".to_string(), vec![doi]);
    }
    if let Some(date) = header
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "date" && n.attribute("type") == Some("published"))
        .and_then(|d| d.attribute("when"))
    {
        metadata.insert("year".to_string(), vec![date.chars().take(4).collect()]);
    }
    Ok(Document::new(id, &options.default_tenant, SourceKind::Tei, title, sections, metadata))
}

fn paragraphs_under(node: roxmltree::Node<'_, '_>) -> String {
    node.descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "p")
        .map(|p| text_of(p, SKIP))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}
