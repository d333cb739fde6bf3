//! The data model: the document IR and its chunks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the IR schema written into every document.
pub const IR_VERSION: u32 = 1;

/// Where a document came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A PubMed citation (JSONL record or `PubmedArticle` XML).
    Pubmed,
    /// A PMC full-text article (JATS XML).
    Pmc,
    /// A ClinicalTrials.gov study (API v2 JSON).
    ClinicalTrials,
    /// A PDF parsed to GROBID TEI XML.
    Tei,
    /// A PDF whose text medkg extracted itself (`medkg pdf-parser`).
    Pdf,
    /// An OpenAlex work (title and the abstract its inverted index spells).
    #[serde(rename = "openalex")]
    OpenAlex,
}

impl SourceKind {
    /// The name used in indexes and output.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Pubmed => "pubmed",
            SourceKind::Pmc => "pmc",
            SourceKind::ClinicalTrials => "clinical_trials",
            SourceKind::Tei => "tei",
            SourceKind::Pdf => "pdf",
            SourceKind::OpenAlex => "openalex",
        }
    }
}

/// A titled span of a document's text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// `abstract`, `Methods`, `brief_summary`, ...
    pub name: String,
    /// The text, whitespace-normalised.
    pub text: String,
    /// Char offset of the section in [`Document::full_text`].
    pub offset: usize,
}

/// The document IR every parser produces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// Stable, namespaced id: `pmid:399296`, `pmc:PMC3166277`, `nct:NCT01234567`, `doi:...`.
    pub id: String,
    /// Owner of the document; every chunk and every search is scoped by it.
    pub tenant_id: String,
    /// Which parser made it.
    pub source: SourceKind,
    /// Title (may be empty for a few records).
    pub title: String,
    /// Non-empty text sections, in reading order.
    pub sections: Vec<Section>,
    /// Flat metadata (`journal`, `year`, `mesh`, `conditions`, ...).
    pub metadata: BTreeMap<String, Vec<String>>,
    /// Hash of title and sections: equal content, equal hash.
    pub content_hash: u64,
    /// [`IR_VERSION`] at the time it was parsed.
    pub version: u32,
}

impl Document {
    /// A document with the given sections; empty sections are dropped,
    /// offsets and the content hash are filled in.
    pub fn new(
        id: String,
        tenant_id: &str,
        source: SourceKind,
        title: String,
        sections: Vec<(String, String)>,
        metadata: BTreeMap<String, Vec<String>>,
    ) -> Document {
        let mut offset = 0;
        let mut hash = FNV_OFFSET;
        hash = fnv_extend(hash, title.as_bytes());
        let sections = sections
            .into_iter()
            .filter(|(_, text)| !text.trim().is_empty())
            .map(|(name, text)| {
                hash = fnv_extend(fnv_extend(hash, name.as_bytes()), text.as_bytes());
                let section = Section { name, offset, text };
                offset += section.text.chars().count() + 2;
                section
            })
            .collect();
        Document {
            id,
            tenant_id: tenant_id.to_string(),
            source,
            title,
            sections,
            metadata,
            content_hash: hash,
            version: IR_VERSION,
        }
    }

    /// The sections joined by blank lines (what [`Section::offset`] points into).
    pub fn full_text(&self) -> String {
        self.sections.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join("\n\n")
    }
}

/// The longest document or tenant id accepted, in bytes (ids are index
/// terms: tantivy refuses terms over 65,530 bytes, and a document it cannot
/// index under its id could never be found, replaced or deleted).
pub const MAX_ID_BYTES: usize = 256;

/// Checks a document id: 1 to [`MAX_ID_BYTES`] bytes, no whitespace or
/// control characters (DOIs keep their punctuation).
pub fn check_doc_id(id: &str) -> Result<(), crate::StageError> {
    let shown = crate::error::shown(id);
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(crate::StageError::permanent(
            "bad_id",
            format!("document id of {} bytes: ids are 1 to {MAX_ID_BYTES} bytes ({shown})", id.len()),
        ));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(crate::StageError::permanent(
            "bad_id",
            format!("document id {shown} has whitespace or control characters"),
        ));
    }
    Ok(())
}

/// Checks a tenant id: 1 to [`MAX_ID_BYTES`] bytes of ASCII letters,
/// digits and `.` `_` `-` `:` `@`.
pub fn check_tenant(tenant: &str) -> Result<(), crate::StageError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= MAX_ID_BYTES
        && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(crate::StageError::permanent(
            "bad_tenant",
            format!(
                "tenant id {} ({} bytes) is not 1 to {MAX_ID_BYTES} bytes of letters, digits and . _ - : @",
                crate::error::shown(tenant),
                tenant.len()
            ),
        ))
    }
}

/// One piece of a document, the unit that is indexed and retrieved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// `{doc_id}#{n}`.
    pub id: String,
    /// Position among the document's chunks, from 0.
    pub n: u32,
    /// Index of the section in [`Document::sections`].
    pub section: u32,
    /// Name of that section.
    pub section_name: String,
    /// Exactly `section.text[char_start..char_end]` (in chars).
    pub text: String,
    /// Start, in chars, within the section's text.
    pub char_start: usize,
    /// End (exclusive), in chars, within the section's text.
    pub char_end: usize,
    /// Dense embedding (L2-normalised), once an `embed` stage has run.
    #[serde(default)]
    pub dense: Option<Vec<f32>>,
    /// SPLADE expansion, once a `splade` stage has run.
    #[serde(default)]
    pub sparse: Option<crate::models::SparseVector>,
}

impl Chunk {
    /// Chunk `n` of document `doc_id` that is all of `text` (one section,
    /// `abstract`, from its start), without vectors: a document of one's own
    /// making, for a test or a caller that has text but no chunker.
    pub fn of_text(doc_id: &str, n: u32, text: &str) -> Chunk {
        Chunk {
            id: format!("{doc_id}#{n}"),
            n,
            section: 0,
            section_name: "abstract".into(),
            text: text.to_string(),
            char_start: 0,
            char_end: text.chars().count(),
            dense: None,
            sparse: None,
        }
    }

    /// What the models encode: the document title, then the chunk's text
    /// (a chunk of an abstract rarely names its subject; the title does).
    pub fn model_text(&self, title: &str) -> String {
        if title.is_empty() {
            self.text.clone()
        } else {
            format!("{title}\n{}", self.text)
        }
    }
}

/// A document's chunks travelling together, so an index replaces all of a
/// document's chunks at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkedDocument {
    /// The document id.
    pub doc_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its source kind.
    pub source: SourceKind,
    /// Its title (stored with every chunk).
    pub title: String,
    /// Its content hash.
    pub content_hash: u64,
    /// The chunks, in order.
    pub chunks: Vec<Chunk>,
    /// The document's metadata (the extractor reads a trial's interventions
    /// and conditions and a record's MeSH headings from it).
    #[serde(default)]
    pub metadata: BTreeMap<String, Vec<String>>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv_extend(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    // A separator so that ("ab", "c") and ("a", "bc") differ.
    (hash ^ 0xff).wrapping_mul(FNV_PRIME)
}

/// The key of a document in the indexes: its id *within its tenant* (two
/// tenants may hold the same `pmid:`; neither may touch the other's copy).
pub fn doc_key(tenant_id: &str, doc_id: &str) -> String {
    format!("{tenant_id}\u{1f}{doc_id}")
}

/// A hash that never changes across runs, builds or machines (FNV-1a):
/// what routes a document to its shard.
///
/// ```
/// assert_eq!(medkg_operators::stable_hash("pmid:1"), medkg_operators::stable_hash("pmid:1"));
/// ```
pub fn stable_hash(text: &str) -> u64 {
    fnv_extend(FNV_OFFSET, text.as_bytes())
}
