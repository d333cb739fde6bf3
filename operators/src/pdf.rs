//! PDFs: checking a download, storing it by content, turning its text into
//! the document IR, and the records of the two-phase PDF flow.
//!
//! The flow: `download` stores the PDF in the [`ObjectStore`] and publishes
//! a [`Downloaded`] record; a parser outside the engine (`medkg pdf-parser`,
//! GROBID, MinerU) reads it and publishes an [`IrReady`] record; the gate
//! joins the two, and `parse` (format `ir`) reads the joined [`IrReady`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Document, SourceKind, StageError};

/// What every PDF starts with (within its first 1,024 bytes).
pub const PDF_MAGIC: &[u8] = b"%PDF-";

/// Refuses a body that is not a PDF.
pub fn check_pdf(body: &[u8]) -> Result<(), StageError> {
    let head = &body[..body.len().min(1024)];
    if head.windows(PDF_MAGIC.len()).any(|w| w == PDF_MAGIC) {
        Ok(())
    } else {
        let shown: String = String::from_utf8_lossy(&body[..body.len().min(40)]).chars().take(40).collect();
        Err(StageError::permanent("not_pdf", format!("the body is not a PDF (no %PDF- header; starts with {shown:?})")))
    }
}

/// Content-addressed storage of PDFs: `ROOT/ab/abcdef….pdf` by SHA-256.
#[derive(Clone, Debug)]
pub struct ObjectStore {
    root: PathBuf,
}

impl ObjectStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> ObjectStore {
        ObjectStore { root: root.into() }
    }

    /// The path of an object.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.root.join(&sha256[..2.min(sha256.len())]).join(format!("{sha256}.pdf"))
    }

    /// Stores `bytes` (durably: temp file, fsync, rename) unless stored
    /// already; returns its SHA-256 (hex) and path.
    pub fn put(&self, bytes: &[u8]) -> Result<(String, PathBuf), StageError> {
        let sha256 = sha256_hex(bytes);
        let path = self.path_of(&sha256);
        if path.exists() {
            return Ok((sha256, path));
        }
        let io = |e: std::io::Error| StageError::unavailable("object_store", format!("{}: {e}", path.display()));
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        crate::index::write_atomically(&path, bytes).map_err(io)?;
        Ok((sha256, path))
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored PDF, on the downloaded stream (`pdf.downloaded.v1` or a folder).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downloaded {
    /// The document.
    pub doc_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Where it came from.
    pub url: String,
    /// Its content address.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Where the object store keeps it.
    pub path: String,
}

impl Downloaded {
    /// A file name for this record, and for the IR-ready record made from
    /// it: unique per tenant, document and PDF (two documents may share a PDF).
    pub fn record_name(&self) -> String {
        let id = sha256_hex(format!("{}\u{0}{}\u{0}{}", self.tenant_id, self.doc_id, self.sha256).as_bytes());
        format!("{}.json", &id[..32])
    }
}

/// "This document's IR is ready", on the IR-ready stream
/// (`pdf.ir-ready.v1` or a folder), from any parser.
///
/// ```json
/// {"doc_id": "doi:10.1186/s12984-016-0129-6", "tenant_id": "default",
///  "sha256": "…", "parser": "grobid-0.8", "tei": "<TEI …>…</TEI>"}
/// ```
///
/// Exactly one of `ir` (the document IR as JSON) and `tei` (GROBID TEI
/// XML) carries the content. `sha256` names the PDF it was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrReady {
    /// The document (as the downloaded record named it).
    pub doc_id: String,
    /// Its tenant (default: the run's).
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// The PDF it was made from.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Who made it (`medkg-pdf-parser`, `grobid`, `mineru`).
    #[serde(default)]
    pub parser: Option<String>,
    /// The IR.
    #[serde(default)]
    pub ir: Option<Document>,
    /// Or GROBID TEI XML.
    #[serde(default)]
    pub tei: Option<String>,
    /// The PDF's URL (the gate fills it in from the downloaded record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdf_url: Option<String>,
}

impl IrReady {
    /// Reads a record (JSON).
    pub fn from_json(bytes: &[u8]) -> Result<IrReady, StageError> {
        let ready: IrReady = serde_json::from_slice(bytes)
            .map_err(|e| StageError::permanent("bad_ir_ready", format!("not an IR-ready record: {e}")))?;
        if ready.doc_id.trim().is_empty() {
            return Err(StageError::permanent("missing_id", "IR-ready record without doc_id"));
        }
        crate::check_doc_id(&ready.doc_id)?;
        if let Some(tenant) = &ready.tenant_id {
            crate::check_tenant(tenant)?;
        }
        if ready.ir.is_none() == ready.tei.is_none() {
            return Err(StageError::permanent(
                "bad_ir_ready",
                "an IR-ready record needs exactly one of `ir` and `tei`",
            ));
        }
        Ok(ready)
    }
}

/// Section names a heading line may carry (lowercase, numbering stripped).
const HEADINGS: &[&str] = &[
    "abstract",
    "background",
    "introduction",
    "methods",
    "method",
    "materials and methods",
    "methods and materials",
    "patients and methods",
    "results",
    "results and discussion",
    "discussion",
    "conclusion",
    "conclusions",
    "limitations",
    "acknowledgements",
    "acknowledgments",
    "references",
    "abbreviations",
    "funding",
    "competing interests",
    "authors' contributions",
    "availability of data and materials",
];

/// Extracts a PDF's text into the IR: the title from its first lines, then
/// sections cut at recognised headings (Abstract, Introduction, Methods,
/// Results, Discussion, …). References are dropped: they are not the
/// document's own text.
pub fn extract(pdf: &[u8], doc_id: &str, tenant: &str) -> Result<Document, StageError> {
    check_pdf(pdf)?;
    // pdf-extract panics on some malformed files: a bad PDF must cost only itself.
    let text = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(pdf))
        .map_err(|_| StageError::permanent("bad_pdf", "the PDF text extractor gave up on this file"))?
        .map_err(|e| StageError::permanent("bad_pdf", format!("cannot read the PDF: {e}")))?;
    let document = from_text(&text, doc_id, tenant);
    if document.sections.is_empty() {
        return Err(StageError::permanent("empty_document", format!("no text in the PDF of {doc_id} (scanned?)")));
    }
    Ok(document)
}

/// The IR of a PDF's extracted text (see [`extract`]). The title is the
/// first block of the front matter (the text before the first heading)
/// that reads like one: at least five words, not a running header.
pub fn from_text(text: &str, doc_id: &str, tenant: &str) -> Document {
    let mut sections: Vec<(String, String)> = Vec::new();
    let mut current = ("front".to_string(), String::new());
    let mut skipping = false;
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(name) = heading(line) {
            if !current.1.trim().is_empty() && !skipping {
                sections.push(std::mem::take(&mut current));
            }
            skipping = name == "references";
            current = (name, String::new());
            continue;
        }
        if skipping {
            continue;
        }
        if line.is_empty() {
            if !current.1.ends_with("\n\n") && !current.1.is_empty() {
                current.1.push_str("\n\n");
            }
            continue;
        }
        // Re-join words hyphenated across lines.
        if current.1.ends_with('-') && line.chars().next().is_some_and(char::is_lowercase) {
            current.1.pop();
        } else if !current.1.is_empty() && !current.1.ends_with('\n') {
            current.1.push(' ');
        }
        current.1.push_str(line);
    }
    if !skipping && !current.1.trim().is_empty() {
        sections.push(current);
    }
    let mut title = String::new();
    if let Some((_, front)) = sections.first_mut().filter(|(name, _)| name == "front") {
        let blocks: Vec<String> =
            front.split("\n\n").map(|b| b.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
        let is_title = |b: &String| {
            let lower = b.to_lowercase();
            b.split_whitespace().count() >= 5
                && b.len() <= 300
                && !lower.contains("open access")
                && !lower.contains("doi")
        };
        if let Some(i) = blocks.iter().position(is_title) {
            title = blocks[i].clone();
            *front = blocks
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, b)| b.as_str())
                .collect::<Vec<_>>()
                .join("\n\n");
        }
    }
    let sections = sections
        .into_iter()
        .map(|(name, text)| (name, text.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    Document::new(doc_id.to_string(), tenant, SourceKind::Pdf, title, sections, Default::default())
}

/// The section a line names, if it is a heading.
fn heading(line: &str) -> Option<String> {
    if line.len() > 60 {
        return None;
    }
    let stripped = line
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
        .trim_end_matches([':', '.'])
        .trim();
    let lower = stripped.to_lowercase();
    HEADINGS.contains(&lower.as_str()).then_some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdf_bodies_are_recognised() {
        assert!(check_pdf(b"%PDF-1.7\n...").is_ok());
        assert!(check_pdf(b"\xef\xbb\xbf junk %PDF-1.4").is_ok());
        assert_eq!(check_pdf(b"<html>not found</html>").unwrap_err().kind, "not_pdf");
        assert_eq!(check_pdf(b"").unwrap_err().kind, "not_pdf");
    }

    #[test]
    fn text_becomes_titled_sections_without_references() {
        let text = "RESEARCH Open Access\n\nA study of many things\nin two lines\n\nA. Author, B. Author\n\nAbstract\nWe studied things.\n\n1. Introduction\nThings matter. Some are hyphen-\nated across lines.\nMethods:\nWe looked.\nReferences\n1. Someone. A paper. 2001.\n";
        let doc = from_text(text, "pdf:x", "t");
        assert_eq!(doc.title, "A study of many things in two lines");
        let names: Vec<&str> = doc.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["front", "abstract", "introduction", "methods"]);
        assert_eq!(doc.sections[0].text, "RESEARCH Open Access A. Author, B. Author");
        assert_eq!(doc.sections[2].text, "Things matter. Some are hyphenated across lines.");
        assert!(!doc.full_text().contains("Someone"));
    }

    #[test]
    fn the_store_is_content_addressed_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::new(dir.path());
        let (sha, path) = store.put(b"%PDF-1.4 hello").unwrap();
        assert_eq!(sha, sha256_hex(b"%PDF-1.4 hello"));
        assert!(path.ends_with(format!("{}/{sha}.pdf", &sha[..2])));
        assert_eq!(store.put(b"%PDF-1.4 hello").unwrap().1, path);
        assert_eq!(std::fs::read(path).unwrap(), b"%PDF-1.4 hello");
    }

    #[test]
    fn ir_ready_records_need_an_id_and_one_payload() {
        assert_eq!(IrReady::from_json(b"{").unwrap_err().kind, "bad_ir_ready");
        assert_eq!(IrReady::from_json(br#"{"doc_id":"","tei":"<TEI/>"}"#).unwrap_err().kind, "missing_id");
        assert_eq!(IrReady::from_json(br#"{"doc_id":"d"}"#).unwrap_err().kind, "bad_ir_ready");
        let ok = IrReady::from_json(br#"{"doc_id":"d","tei":"<TEI/>","parser":"grobid"}"#).unwrap();
        assert_eq!(ok.parser.as_deref(), Some("grobid"));
    }
}
