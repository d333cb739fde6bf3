//! Payload bytes → [`Document`] IR.
//!
//! One payload may hold several documents (a `PubmedArticleSet`, a page of
//! ClinicalTrials.gov `studies`), and one bad document among them must not
//! take the others down, so [`parse`] returns one `Result` per document.
//!
//! ```
//! use medkg_operators::parse::{parse, Format, ParseOptions};
//!
//! let line = br#"{"pmid": "399296", "title": "Carcase surface growth.", "abstract": "Beef was examined.", "mesh": ["Cattle"]}"#;
//! let docs = parse(&ParseOptions::default(), line, None);
//! let doc = docs[0].as_ref().unwrap();
//! assert_eq!(doc.id, "pmid:399296");
//! assert_eq!(doc.sections[0].text, "Beef was examined.");
//!
//! let bad = parse(&ParseOptions { format: Format::PubmedJsonl, ..Default::default() }, b"{oops", None);
//! assert_eq!(bad[0].as_ref().unwrap_err().kind, "bad_json");
//! ```

mod ctgov;
mod jats;
mod openalex;
mod pubmed;
mod tei;
mod xml;

use std::str::FromStr;

pub use pubmed::deleted_citations;

use crate::pdf::IrReady;
use crate::{Document, StageError};

/// A payload format; [`Format::Auto`] sniffs each payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Decide per payload from its name and first bytes.
    Auto,
    /// One PubMed record as JSON (`pmid`, `title`, `abstract`, `mesh`, ...).
    PubmedJsonl,
    /// `PubmedArticleSet` / `PubmedArticle` XML.
    PubmedXml,
    /// PMC JATS (`.nxml`).
    Jats,
    /// ClinicalTrials.gov API v2 study JSON (or a `{"studies": [...]}` page).
    Ctgov,
    /// OpenAlex work JSON (or a `{"results": [...]}` page of `/works`).
    OpenAlex,
    /// GROBID TEI XML.
    Tei,
    /// An IR-ready record of the PDF gate (`{"doc_id", "ir" | "tei", ...}`).
    Ir,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Format::Auto,
            "pubmed-jsonl" => Format::PubmedJsonl,
            "pubmed-xml" => Format::PubmedXml,
            "jats" => Format::Jats,
            "ctgov" => Format::Ctgov,
            "openalex" => Format::OpenAlex,
            "tei" => Format::Tei,
            "ir" => Format::Ir,
            other => return Err(format!("unknown format `{other}`")),
        })
    }
}

/// How to parse.
#[derive(Clone, Debug)]
pub struct ParseOptions {
    /// Which format (default: auto).
    pub format: Format,
    /// Documents larger than this are refused (`too_large`).
    pub max_doc_bytes: usize,
    /// Tenant for records that carry no `tenant_id` of their own.
    pub default_tenant: String,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { format: Format::Auto, max_doc_bytes: 8 << 20, default_tenant: "default".into() }
    }
}

/// Parses one payload; `name` (a file name, when there is one) helps sniffing.
///
/// Never panics: a parser that would (a bug, not an input's fault) is
/// caught here and its payload fails as `internal_error`. Every document
/// returned has a valid id and tenant ([`crate::check_doc_id`],
/// [`crate::check_tenant`]) and some text.
pub fn parse(options: &ParseOptions, bytes: &[u8], name: Option<&str>) -> Vec<Result<Document, StageError>> {
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse_unchecked(options, bytes, name)));
    match parsed {
        Ok(results) => results,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            vec![Err(StageError::permanent("internal_error", format!("the parser failed on this payload: {what}")))]
        }
    }
}

fn parse_unchecked(options: &ParseOptions, bytes: &[u8], name: Option<&str>) -> Vec<Result<Document, StageError>> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.strip_prefix('\u{feff}').unwrap_or(text),
        Err(e) => {
            return vec![Err(StageError::permanent(
                "invalid_utf8",
                format!("payload is not valid UTF-8 (first bad byte at offset {})", e.valid_up_to()),
            ))]
        }
    };
    // JSON is parsed once, here: sniffing reads its keys, the parser its values.
    let trimmed = text.trim_start();
    let is_json = match options.format {
        Format::PubmedJsonl | Format::Ctgov | Format::OpenAlex | Format::Ir => true,
        Format::Auto => trimmed.starts_with('{'),
        _ => false,
    };
    // Sets of documents are capped per document, everything else as a whole
    // (and before any parsing, so a giant payload costs nothing).
    let may_be_set = match options.format {
        Format::PubmedXml | Format::Ctgov | Format::OpenAlex => true,
        Format::Auto if is_json => {
            let head = &trimmed[..trimmed.floor_char_boundary(4096)];
            head.contains("\"studies\"") || head.contains("\"results\"")
        }
        Format::Auto => true, // XML: decided once the root element is known
        _ => false,
    };
    if !may_be_set && text.len() > options.max_doc_bytes {
        return vec![Err(too_large(text.len(), options.max_doc_bytes))];
    }
    let json = if is_json {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => Some(value),
            Err(e) => return vec![Err(StageError::permanent("bad_json", format!("payload is not valid JSON: {e}")))],
        }
    } else {
        None
    };
    let format = match options.format {
        Format::Auto => match sniff(text, name, json.as_ref()) {
            Some(format) => format,
            None => {
                return vec![Err(StageError::permanent(
                    "unknown_format",
                    format!(
                    "cannot tell the format of {}: neither a known JSON record nor a PubMed, JATS or TEI XML document",
                    name.unwrap_or("the payload")
                ),
                ))]
            }
        },
        format => format,
    };
    if matches!(format, Format::Jats | Format::Tei) && text.len() > options.max_doc_bytes {
        return vec![Err(too_large(text.len(), options.max_doc_bytes))];
    }
    let results = match (format, &json) {
        (Format::PubmedJsonl, Some(value)) => vec![pubmed::from_json(value, options)],
        (Format::Ctgov, Some(value)) => ctgov::from_json(value, text.len(), options),
        (Format::OpenAlex, Some(value)) => openalex::from_json(value, text.len(), options),
        (Format::PubmedXml, _) => pubmed::parse_set(text, options),
        (Format::Jats, _) => vec![jats::parse(text, options)],
        (Format::Tei, _) => vec![tei::parse(text, options)],
        (Format::Ir, Some(value)) => vec![serde_json::from_value::<IrReady>(value.clone())
            .map_err(|e| StageError::permanent("bad_ir_ready", format!("not an IR-ready record: {e}")))
            .and_then(|ready| ir_ready_document(&ready, options))],
        (Format::PubmedJsonl | Format::Ctgov | Format::OpenAlex | Format::Ir, None) => {
            unreachable!("JSON formats were parsed above")
        }
        (Format::Auto, _) => unreachable!("auto was resolved above"),
    };
    // A document with no text at all could never be found: refuse it here,
    // where the original bytes still go to the dead letter.
    results
        .into_iter()
        .map(|r| {
            let doc = r?;
            crate::check_doc_id(&doc.id)?;
            crate::check_tenant(&doc.tenant_id)?;
            if doc.sections.is_empty() {
                return Err(StageError::permanent(
                    "empty_document",
                    format!("document {} has no title and no text", doc.id),
                ));
            }
            Ok(doc)
        })
        .collect()
}

/// A GROBID TEI document (for IR-ready records that carry TEI).
pub(crate) fn tei_document(text: &str, options: &ParseOptions) -> Result<Document, StageError> {
    if text.len() > options.max_doc_bytes {
        return Err(too_large(text.len(), options.max_doc_bytes));
    }
    tei::parse(text, options)
}

pub(crate) fn too_large(size: usize, cap: usize) -> StageError {
    StageError::permanent(
        "too_large",
        format!("document of {size} bytes exceeds the cap of {cap} bytes (max_doc_bytes)"),
    )
}

/// Decides the format from the name, the parsed JSON (if the payload is
/// JSON) or the XML root element.
fn sniff(text: &str, name: Option<&str>, json: Option<&serde_json::Value>) -> Option<Format> {
    let name = name.unwrap_or("").to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".nxml") {
        return Some(Format::Jats);
    }
    if name.ends_with(".tei.xml") {
        return Some(Format::Tei);
    }
    if let Some(value) = json {
        let object = value.as_object()?;
        if let Some(source) = object.get("source").and_then(|s| s.as_str()) {
            match source {
                "ctgov" | "clinicaltrials" | "clinical_trials" => return Some(Format::Ctgov),
                "pubmed" => return Some(Format::PubmedJsonl),
                _ => {}
            }
        }
        if object.contains_key("doc_id") && (object.contains_key("ir") || object.contains_key("tei")) {
            return Some(Format::Ir);
        }
        if object.contains_key("protocolSection") || object.contains_key("studies") {
            return Some(Format::Ctgov);
        }
        let openalex_id =
            object.get("id").and_then(|i| i.as_str()).is_some_and(|i| i.starts_with("https://openalex.org/"));
        if openalex_id
            || object.contains_key("abstract_inverted_index")
            || (object.contains_key("results") && object.contains_key("meta"))
        {
            return Some(Format::OpenAlex);
        }
        // A PubMed record, even one that lost its pmid (then: missing_id).
        if ["pmid", "title", "abstract", "mesh"].iter().any(|k| object.contains_key(*k)) {
            return Some(Format::PubmedJsonl);
        }
        return None;
    }
    let start = text.trim_start();
    if start.starts_with('<') {
        return match xml::root_name(start)? {
            "PubmedArticleSet" | "PubmedArticle" => Some(Format::PubmedXml),
            "article" => Some(Format::Jats),
            "TEI" => Some(Format::Tei),
            _ => None,
        };
    }
    None
}

/// A page of records under `key` (`studies`, `results`), each capped at
/// `max_doc_bytes` and parsed by `one` (a failure names the record's place
/// in the page); or, without `key`, the payload (of `size` bytes) as one record.
pub(crate) fn page_or_one(
    value: &serde_json::Value,
    key: &str,
    size: usize,
    options: &ParseOptions,
    one: impl Fn(&serde_json::Value, &str) -> Result<Document, StageError>,
) -> Vec<Result<Document, StageError>> {
    let tenant = tenant_of(value, options);
    match value.get(key) {
        Some(serde_json::Value::Array(records)) => records
            .iter()
            .enumerate()
            .map(|(i, record)| {
                let size = record.to_string().len();
                if size > options.max_doc_bytes {
                    return Err(too_large(size, options.max_doc_bytes));
                }
                one(record, tenant).map_err(|mut e| {
                    e.message = format!("{key}[{i}]: {}", e.message);
                    e
                })
            })
            .collect(),
        Some(_) => vec![Err(StageError::permanent("bad_record", format!("`{key}` must be a list")))],
        None if size > options.max_doc_bytes => vec![Err(too_large(size, options.max_doc_bytes))],
        None => vec![one(value, tenant)],
    }
}

/// The tenant a JSON record asks for, else the default.
pub(crate) fn tenant_of<'a>(record: &'a serde_json::Value, options: &'a ParseOptions) -> &'a str {
    record.get("tenant_id").and_then(|t| t.as_str()).filter(|t| !t.trim().is_empty()).unwrap_or(&options.default_tenant)
}

/// Collapses runs of whitespace to one space and trims.
pub(crate) fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// A JSON field as a string (strings and numbers accepted), whitespace-normalised.
pub(crate) fn json_str(value: &serde_json::Value, key: &str) -> Option<String> {
    match value.get(key)? {
        serde_json::Value::String(s) => Some(normalize(s)),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

/// A JSON field as a list of strings (a single string becomes a list of one).
pub(crate) fn json_list(value: &serde_json::Value, key: &str) -> Vec<String> {
    match value.get(key) {
        Some(serde_json::Value::Array(items)) => {
            items.iter().filter_map(|i| i.as_str().map(normalize)).filter(|s| !s.is_empty()).collect()
        }
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => vec![normalize(s)],
        _ => Vec::new(),
    }
}

/// The document an IR-ready record carries, under the record's id and tenant.
fn ir_ready_document(ready: &IrReady, options: &ParseOptions) -> Result<Document, StageError> {
    let tenant = ready.tenant_id.clone().unwrap_or_else(|| options.default_tenant.clone());
    let mut doc = match (&ready.ir, &ready.tei) {
        (Some(ir), _) => ir.clone(),
        (None, Some(tei)) => tei_document(tei, options)?,
        (None, None) => return Err(StageError::permanent("bad_ir_ready", "no `ir` and no `tei`")),
    };
    let sections = doc.sections.drain(..).map(|s| (s.name, s.text)).collect();
    let mut metadata = std::mem::take(&mut doc.metadata);
    if let Some(sha) = &ready.sha256 {
        metadata.insert("pdf_sha256".into(), vec![sha.clone()]);
    }
    if let Some(url) = &ready.pdf_url {
        metadata.insert("pdf_url".into(), vec![url.clone()]);
    }
    if let Some(parser) = &ready.parser {
        metadata.insert("ir_parser".into(), vec![parser.clone()]);
    }
    Ok(Document::new(ready.doc_id.clone(), &tenant, doc.source, doc.title, sections, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_every_format() {
        let json = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        assert_eq!(sniff("", None, Some(&json(r#"{"pmid": "1"}"#))), Some(Format::PubmedJsonl));
        assert_eq!(sniff("", None, Some(&json(r#"{"title": 1}"#))), Some(Format::PubmedJsonl));
        assert_eq!(sniff("", None, Some(&json(r#"{"protocolSection": {}}"#))), Some(Format::Ctgov));
        assert_eq!(sniff("", None, Some(&json(r#"{"source": "ctgov", "x": 1}"#))), Some(Format::Ctgov));
        assert_eq!(sniff("", None, Some(&json(r#"{"colour": 1}"#))), None);
        assert_eq!(sniff("", None, Some(&json(r#"{"meta": {}, "results": []}"#))), Some(Format::OpenAlex));
        assert_eq!(sniff("", None, Some(&json(r#"{"id": "https://openalex.org/W1"}"#))), Some(Format::OpenAlex));
        assert_eq!(sniff("", None, Some(&json("[1]"))), None);
        assert_eq!(
            sniff("<?xml version=\"1.0\"?>\n<!DOCTYPE x>\n<PubmedArticleSet>", None, None),
            Some(Format::PubmedXml)
        );
        assert_eq!(sniff("<!-- c --><article><front/></article>", None, None), Some(Format::Jats));
        assert_eq!(sniff("<tei:TEI xmlns:tei=\"http://www.tei-c.org/ns/1.0\">", None, None), Some(Format::Tei));
        assert_eq!(sniff("anything", Some("a.nxml.gz"), None), Some(Format::Jats));
        assert_eq!(sniff("<html>", None, None), None);
        assert_eq!(sniff("plain text", None, None), None);
    }
}
