//! OpenAlex works (one work, or a page `{"meta": ..., "results": [...]}`).
//!
//! OpenAlex ships no abstract text, only `abstract_inverted_index`
//! (`{"word": [positions]}`): the abstract is rebuilt by sorting its
//! (position, word) pairs. Positions are only sort keys, never indexes, so
//! a position of 4,000,000,000 costs nothing, and the pairs are bounded by
//! the payload itself.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{json_str, normalize, ParseOptions};
use crate::{Document, SourceKind, StageError};

/// A work, or a page of works; `size` is the payload's length in bytes.
pub(crate) fn from_json(value: &Value, size: usize, options: &ParseOptions) -> Vec<Result<Document, StageError>> {
    super::page_or_one(value, "results", size, options, parse_work)
}

/// The short form of an OpenAlex id or URL: `https://openalex.org/W123` → `W123`.
fn short_id(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

fn parse_work(work: &Value, tenant: &str) -> Result<Document, StageError> {
    if !work.is_object() {
        return Err(StageError::permanent("bad_record", "an OpenAlex work must be a JSON object"));
    }
    let id = json_str(work, "id").ok_or_else(|| StageError::permanent("missing_id", "work has no `id`"))?;
    let short = short_id(&id);
    let valid = short.len() >= 2
        && short.len() <= 16
        && short.starts_with(['W', 'w'])
        && short[1..].bytes().all(|b| b.is_ascii_digit());
    if !valid {
        return Err(StageError::permanent(
            "bad_id",
            format!("`{}` is not an OpenAlex work id (W + digits)", crate::error::shown(&id)),
        ));
    }
    let short = short.to_ascii_uppercase();
    let title = json_str(work, "title").or_else(|| json_str(work, "display_name")).unwrap_or_default();
    let abstract_text = match work.get("abstract_inverted_index") {
        None | Some(Value::Null) => String::new(),
        Some(Value::Object(index)) => rebuild_abstract(index)?,
        Some(_) => {
            return Err(StageError::permanent("bad_record", "`abstract_inverted_index` must be an object"));
        }
    };
    let mut metadata = BTreeMap::new();
    metadata.insert("openalex".to_string(), vec![short.clone()]);
    let ids = work.get("ids").cloned().unwrap_or(Value::Null);
    let doi = json_str(work, "doi").or_else(|| json_str(&ids, "doi"));
    if let Some(doi) = doi {
        metadata.insert("doi".to_string(), vec![bare_doi(&doi)]);
    }
    for key in ["pmid", "pmcid"] {
        if let Some(value) = json_str(&ids, key) {
            metadata.insert(key.to_string(), vec![short_id(&value).to_string()]);
        }
    }
    if let Some(year) = work.get("publication_year").and_then(Value::as_u64) {
        metadata.insert("year".to_string(), vec![year.to_string()]);
    }
    let journal = work.pointer("/primary_location/source/display_name").and_then(Value::as_str).map(normalize);
    if let Some(journal) = journal.filter(|j| !j.is_empty()) {
        metadata.insert("journal".to_string(), vec![journal]);
    }
    let sections = match abstract_text.is_empty() {
        true => vec![("title".to_string(), title.clone())],
        false => vec![("abstract".to_string(), abstract_text)],
    };
    let sections = sections.into_iter().filter(|(_, text)| !text.is_empty()).collect();
    Ok(Document::new(format!("openalex:{short}"), tenant, SourceKind::OpenAlex, title, sections, metadata))
}

/// `https://doi.org/10.1/x` → `10.1/x`.
fn bare_doi(doi: &str) -> String {
    let lower = doi.to_ascii_lowercase();
    for prefix in ["https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "doi:"] {
        if lower.starts_with(prefix) {
            return doi[prefix.len()..].to_string();
        }
    }
    doi.to_string()
}

/// The abstract an inverted index spells: its words by position.
fn rebuild_abstract(index: &serde_json::Map<String, Value>) -> Result<String, StageError> {
    let mut placed: Vec<(u64, &str)> = Vec::new();
    for (word, positions) in index {
        let Some(positions) = positions.as_array() else {
            return Err(StageError::permanent(
                "bad_record",
                format!("abstract word `{}`: positions must be a list", crate::error::shown(word)),
            ));
        };
        for position in positions {
            let Some(at) = position.as_u64() else {
                return Err(StageError::permanent("bad_record", "abstract positions must be integers ≥ 0"));
            };
            placed.push((at, word.as_str()));
        }
    }
    placed.sort_unstable();
    // A position claimed twice keeps its first word (by sort order).
    placed.dedup_by_key(|(at, _)| *at);
    Ok(normalize(&placed.iter().map(|(_, w)| *w).collect::<Vec<_>>().join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opts() -> ParseOptions {
        ParseOptions::default()
    }

    #[test]
    fn a_work_keeps_its_ids_and_its_abstract() {
        let work = serde_json::json!({
            "id": "https://openalex.org/W2741809807",
            "doi": "https://doi.org/10.7717/peerj.4375",
            "title": "The state of OA",
            "publication_year": 2018,
            "ids": {"openalex": "https://openalex.org/W2741809807", "pmid": "https://pubmed.ncbi.nlm.nih.gov/29456894"},
            "primary_location": {"source": {"display_name": "PeerJ"}},
            "abstract_inverted_index": {"Despite": [0], "growing": [1], "interest": [2], "in": [3, 57], "access": [58]}
        });
        let doc = from_json(&work, 10, &opts()).remove(0).unwrap();
        assert_eq!(doc.id, "openalex:W2741809807");
        assert_eq!(doc.sections[0].text, "Despite growing interest in in access");
        assert_eq!(doc.metadata["doi"], vec!["10.7717/peerj.4375"]);
        assert_eq!(doc.metadata["pmid"], vec!["29456894"]);
        assert_eq!(doc.metadata["year"], vec!["2018"]);
        assert_eq!(doc.metadata["journal"], vec!["PeerJ"]);
        assert_eq!(doc.source, SourceKind::OpenAlex);
    }

    #[test]
    fn hostile_works_fail_alone() {
        let page = serde_json::json!({"meta": {}, "results": [
            {"id": "https://openalex.org/W1", "title": "fine"},
            {"id": "https://evil/../../etc/passwd", "title": "x"},
            {"title": "no id"},
            {"id": "W3", "abstract_inverted_index": {"a": "zero"}},
            {"id": "W4", "abstract_inverted_index": {"a": [-1]}},
            {"id": "W5", "abstract_inverted_index": {"far": [4000000000u64], "near": [0]}},
            7
        ]});
        let results = from_json(&page, 10, &opts());
        let kinds: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(doc) => doc.id.clone(),
                Err(e) => e.kind.clone(),
            })
            .collect();
        assert_eq!(
            kinds,
            ["openalex:W1", "bad_id", "missing_id", "bad_record", "bad_record", "openalex:W5", "bad_record"]
        );
        assert_eq!(results[5].as_ref().unwrap().sections[0].text, "near far");
        assert_eq!(
            from_json(&serde_json::json!({"results": 1}), 10, &opts())[0].as_ref().unwrap_err().kind,
            "bad_record"
        );
    }

    proptest! {
        /// Whatever the index, the abstract holds exactly its words, in position order.
        #[test]
        fn the_abstract_is_the_words_by_position(words in proptest::collection::btree_map("[a-z]{1,6}", proptest::collection::btree_set(0u64..u64::MAX, 1..4), 0..20)) {
            let index: serde_json::Map<String, Value> =
                words.iter().map(|(w, ps)| (w.clone(), Value::from(ps.iter().copied().collect::<Vec<u64>>()))).collect();
            let text = rebuild_abstract(&index).unwrap();
            let mut expected: Vec<(u64, &str)> = words.iter().flat_map(|(w, ps)| ps.iter().map(move |p| (*p, w.as_str()))).collect();
            expected.sort_unstable();
            expected.dedup_by_key(|(at, _)| *at);
            prop_assert_eq!(text, expected.iter().map(|(_, w)| *w).collect::<Vec<_>>().join(" "));
        }
    }
}
