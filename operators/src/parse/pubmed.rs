//! PubMed: JSONL records and `PubmedArticleSet` XML.

use std::collections::BTreeMap;

use roxmltree::Node;

use super::xml::{child, children, parse_xml, path, refuse_dtd, text_of};
use super::{json_list, json_str, normalize, tenant_of, too_large, ParseOptions};
use crate::{Document, SourceKind, StageError};

/// One JSON record: `pmid`, `title`, `abstract`, `journal`, `year`, `mesh`,
/// optional `tenant_id`.
pub(crate) fn from_json(record: &serde_json::Value, options: &ParseOptions) -> Result<Document, StageError> {
    if !record.is_object() {
        return Err(StageError::permanent("bad_record", "a PubMed record must be a JSON object"));
    }
    let pmid = json_str(record, "pmid").ok_or_else(|| StageError::permanent("missing_id", "record has no `pmid`"))?;
    check_pmid(&pmid)?;
    let title = json_str(record, "title").unwrap_or_default();
    let abstract_text = json_str(record, "abstract").unwrap_or_default();
    let mut metadata = BTreeMap::new();
    for key in ["journal", "year"] {
        if let Some(value) = json_str(record, key) {
            metadata.insert(key.to_string(), vec![value]);
        }
    }
    let mesh = json_list(record, "mesh");
    if !mesh.is_empty() {
        metadata.insert("mesh".to_string(), mesh);
    }
    Ok(build(pmid, tenant_of(record, options), title, abstract_text, metadata))
}

/// A `PubmedArticleSet` (or a lone `PubmedArticle`): one result per article.
///
/// Articles are cut out of the text and parsed one at a time, so a baseline
/// file of 30,000 articles never becomes one giant tree and one broken
/// article costs only itself.
pub(crate) fn parse_set(text: &str, options: &ParseOptions) -> Vec<Result<Document, StageError>> {
    // A DTD of the whole set would reach every article: refuse it once, for all.
    if let Err(e) = refuse_dtd(text) {
        return vec![Err(e)];
    }
    let mut results = Vec::new();
    let mut rest = text;
    let mut index = 0usize;
    while let Some(start) = find_open(rest, "PubmedArticle") {
        let Some(len) = rest[start..].find("</PubmedArticle>") else {
            results.push(Err(StageError::permanent(
                "bad_xml",
                format!("article {index}: <PubmedArticle> is never closed"),
            )));
            break;
        };
        let end = start + len + "</PubmedArticle>".len();
        let article = &rest[start..end];
        let result = if article.len() > options.max_doc_bytes {
            Err(too_large(article.len(), options.max_doc_bytes))
        } else {
            parse_article(article, options)
        };
        results.push(result.map_err(|mut e| {
            e.message = format!("article {index}: {}", e.message);
            e
        }));
        rest = &rest[end..];
        index += 1;
    }
    // An update file's deletions: the index and the graph take the valid
    // ones from the raw stream ([`deleted_citations`]); a bad one fails here.
    let (deleted, bad) = scan_deletions(text);
    let deletes = deleted.len() + bad.len();
    results.extend(bad.into_iter().map(Err));
    if results.is_empty() && deletes == 0 {
        // Nothing to cut out: report why, in XML terms if it does not parse.
        let error = match parse_xml(text) {
            Err(e) => e,
            Ok(_) => StageError::permanent("no_documents", "no <PubmedArticle> in the PubMed XML"),
        };
        results.push(Err(error));
    }
    results
}

/// The documents a PubMed update file's `<DeleteCitation>` blocks delete
/// (`pmid:N`), in file order; PMIDs that are not PMIDs are left out (the
/// parse stage dead-letters them).
pub fn deleted_citations(text: &str) -> Vec<String> {
    scan_deletions(text).0
}

/// Valid deleted ids and the errors of invalid ones.
fn scan_deletions(text: &str) -> (Vec<String>, Vec<StageError>) {
    let (mut ids, mut bad) = (Vec::new(), Vec::new());
    let mut rest = text;
    while let Some(start) = find_open(rest, "DeleteCitation") {
        let block = &rest[start..];
        let Some(len) = block.find("</DeleteCitation>") else {
            bad.push(StageError::permanent("bad_xml", "<DeleteCitation> is never closed"));
            break;
        };
        let mut pmids = &block[..len];
        while let Some(open) = find_open(pmids, "PMID") {
            let after = &pmids[open..];
            let (Some(gt), Some(close)) = (after.find('>'), after.find("</PMID>")) else {
                bad.push(StageError::permanent("bad_xml", "a <PMID> in <DeleteCitation> is never closed"));
                break;
            };
            if gt > close {
                bad.push(StageError::permanent("bad_xml", "a malformed <PMID> in <DeleteCitation>"));
                break;
            }
            let pmid = after[gt + 1..close].trim();
            match check_pmid(pmid) {
                Ok(()) if !pmid.is_empty() => ids.push(format!("pmid:{pmid}")),
                Ok(()) => bad.push(StageError::permanent("missing_id", "an empty <PMID> in <DeleteCitation>")),
                Err(mut e) => {
                    e.message = format!("<DeleteCitation>: {}", e.message);
                    bad.push(e)
                }
            }
            pmids = &after[close + "</PMID>".len()..];
        }
        rest = &block[len + "</DeleteCitation>".len()..];
    }
    (ids, bad)
}

/// Finds `<name>` or `<name ...>` (not `<nameSuffix>`).
fn find_open(text: &str, name: &str) -> Option<usize> {
    let pattern = format!("<{name}");
    let mut from = 0;
    while let Some(i) = text[from..].find(&pattern) {
        let at = from + i;
        match text[at + pattern.len()..].chars().next() {
            Some('>') | Some(' ') | Some('\t') | Some('\n') | Some('\r') => return Some(at),
            _ => from = at + pattern.len(),
        }
    }
    None
}

fn parse_article(text: &str, options: &ParseOptions) -> Result<Document, StageError> {
    let xml = parse_xml(text)?;
    let root = xml.root_element();
    let citation = child(root, "MedlineCitation")
        .ok_or_else(|| StageError::permanent("bad_record", "<PubmedArticle> has no <MedlineCitation>"))?;
    let pmid = child(citation, "PMID")
        .map(|n| text_of(n, &[]))
        .filter(|p| !p.is_empty())
        .ok_or_else(|| StageError::permanent("missing_id", "article has no <PMID>"))?;
    check_pmid(&pmid)?;
    let article = child(citation, "Article");
    let title = article.and_then(|a| child(a, "ArticleTitle")).map(|t| text_of(t, &[])).unwrap_or_default();
    let abstract_text = article
        .and_then(|a| child(a, "Abstract"))
        .map(|a| {
            children(a, "AbstractText")
                .map(|part| {
                    let body = text_of(part, &[]);
                    match part.attribute("Label").map(normalize).filter(|l| !l.is_empty()) {
                        Some(label) if !body.is_empty() => format!("{label}: {body}"),
                        _ => body,
                    }
                })
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join("\n\n")
        })
        .unwrap_or_default();
    let mut metadata = BTreeMap::new();
    if let Some(journal) = article.and_then(|a| path(a, &["Journal", "Title"])).map(|n| text_of(n, &[])) {
        metadata.insert("journal".to_string(), vec![journal]);
    }
    if let Some(year) = article.and_then(|a| path(a, &["Journal", "JournalIssue", "PubDate"])).and_then(pub_year) {
        metadata.insert("year".to_string(), vec![year]);
    }
    let mesh: Vec<String> = child(citation, "MeshHeadingList")
        .map(|list| {
            children(list, "MeshHeading")
                .filter_map(|h| child(h, "DescriptorName"))
                .map(|d| text_of(d, &[]))
                .filter(|d| !d.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !mesh.is_empty() {
        metadata.insert("mesh".to_string(), mesh);
    }
    Ok(build(pmid, &options.default_tenant, title, abstract_text, metadata))
}

fn pub_year(date: Node<'_, '_>) -> Option<String> {
    if let Some(year) = child(date, "Year") {
        return Some(text_of(year, &[]));
    }
    // <MedlineDate>1998 Dec-1999 Jan</MedlineDate>
    let medline = text_of(child(date, "MedlineDate")?, &[]);
    medline
        .split_whitespace()
        .next()
        .filter(|y| y.len() == 4 && y.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_string)
}

fn check_pmid(pmid: &str) -> Result<(), StageError> {
    if pmid.chars().all(|c| c.is_ascii_digit()) && pmid.len() <= 12 {
        Ok(())
    } else {
        Err(StageError::permanent("bad_id", format!("`{pmid}` is not a PMID (digits only)")))
    }
}

/// A PubMed document: the abstract is its text; a citation without one is
/// still searchable through its title.
fn build(
    pmid: String,
    tenant: &str,
    title: String,
    abstract_text: String,
    metadata: BTreeMap<String, Vec<String>>,
) -> Document {
    let sections = if abstract_text.is_empty() {
        vec![("title".to_string(), title.clone())]
    } else {
        vec![("abstract".to_string(), abstract_text)]
    };
    Document::new(format!("pmid:{pmid}"), tenant, SourceKind::Pubmed, title, sections, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_file_deletes_what_its_delete_citation_lists() {
        let file = r#"<?xml version="1.0"?>
<PubmedArticleSet>
<PubmedArticle><MedlineCitation><PMID Version="1">11</PMID><Article><ArticleTitle>Kept</ArticleTitle></Article></MedlineCitation></PubmedArticle>
<DeleteCitation>
  <PMID Version="1">22</PMID>
  <PMID Version="1"> 33 </PMID>
  <PMID Version="1">4x4</PMID>
</DeleteCitation>
</PubmedArticleSet>"#;
        assert_eq!(deleted_citations(file), ["pmid:22", "pmid:33"]);
        let results = parse_set(file, &ParseOptions::default());
        assert_eq!(results.len(), 2, "the article and the bad PMID");
        assert_eq!(results[0].as_ref().unwrap().id, "pmid:11");
        assert_eq!(results[1].as_ref().unwrap_err().kind, "bad_id");
        // Deletions alone are a valid update file, not an empty one.
        let only = "<PubmedArticleSet><DeleteCitation><PMID>5</PMID></DeleteCitation></PubmedArticleSet>";
        assert!(parse_set(only, &ParseOptions::default()).is_empty());
        assert_eq!(deleted_citations(only), ["pmid:5"]);
        // Hostile shapes end the scan with an error, never a panic or a loop.
        for hostile in [
            "<DeleteCitation><PMID>5</PMID>",
            "<DeleteCitation><PMID>5</DeleteCitation>",
            "<DeleteCitation><PMID</PMID></DeleteCitation>",
            "<DeleteCitation><PMID></PMID></DeleteCitation>",
        ] {
            assert!(deleted_citations(hostile).is_empty(), "{hostile}");
            assert!(parse_set(hostile, &ParseOptions::default()).iter().all(|r| r.is_err()), "{hostile}");
        }
    }
}
