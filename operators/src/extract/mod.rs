//! Entities and claims from documents: dictionary NER over a vocabulary of
//! real concepts ([`vocab`]), abbreviations defined in the text, and claims
//! between mentions of one sentence from a trigger lexicon, plus the claims
//! a record states in its structure (a trial's interventions and
//! conditions, a PubMed record's MeSH headings as topics).
//!
//! Everything is bounded by its input: at most [`MAX_MENTIONS_PER_SENTENCE`]
//! mentions of a sentence pair up into claims, and spans always lie inside
//! the text they point into.

pub mod vocab;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::chunk::sentences::sentences;
use crate::ChunkedDocument;
pub use vocab::{Category, Concept, Found, Vocabulary};

/// Mentions of one sentence taken into pairs (the rest still count as mentions).
pub const MAX_MENTIONS_PER_SENTENCE: usize = 24;
/// Characters of a sentence kept as a claim's evidence.
pub const MAX_EVIDENCE_CHARS: usize = 600;
/// Neighbouring mentions further apart than this (bytes) need a trigger to make a claim.
const NEAR: usize = 120;

/// A concept mentioned in a chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mention {
    /// The concept's CURIE.
    pub concept: String,
    /// Its Biolink category.
    pub category: String,
    /// The chunk.
    pub chunk_id: String,
    /// Character span `[start, end)` in the chunk's text.
    pub start: usize,
    /// (end)
    pub end: usize,
    /// The text as written.
    pub text: String,
    /// Found through an abbreviation the document defined.
    #[serde(default)]
    pub abbreviation: bool,
}

/// A statement that one concept relates to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// Subject CURIE.
    pub subject: String,
    /// Biolink predicate (`biolink:treats`, ...).
    pub predicate: String,
    /// Object CURIE.
    pub object: String,
    /// The document.
    pub doc_id: String,
    /// The chunk (none for a claim from the record's structure).
    pub chunk_id: Option<String>,
    /// Character span of the sentence in the chunk's text.
    pub sentence: Option<(usize, usize)>,
    /// The sentence itself (its first [`MAX_EVIDENCE_CHARS`] characters);
    /// empty for a claim from the record's structure.
    #[serde(default)]
    pub evidence: String,
    /// A negation cue stood between the two mentions.
    pub negated: bool,
    /// What made it.
    pub extractor: String,
    /// How much to trust it, from 0 to 1.
    pub confidence: f32,
}

/// What one document yields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Extraction {
    /// The document.
    pub doc_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Concepts mentioned, chunk by chunk.
    pub mentions: Vec<Mention>,
    /// Claims, from the text and from the record.
    pub claims: Vec<Claim>,
    /// Concepts the record names as its topics (MeSH headings).
    pub topics: Vec<String>,
}

/// A trigger phrase: the predicate it states, and whether the mention after
/// it is the subject ("treated with X": X treats).
struct Trigger {
    phrase: &'static str,
    predicate: &'static str,
    reverse: bool,
}

const fn t(phrase: &'static str, predicate: &'static str, reverse: bool) -> Trigger {
    Trigger { phrase, predicate, reverse }
}

/// Trigger phrases, longest first where one contains another.
const TRIGGERS: &[Trigger] = &[
    t("increases the risk of", "biolink:contributes_to", false),
    t("increased the risk of", "biolink:contributes_to", false),
    t("increased risk of", "biolink:contributes_to", false),
    t("risk factor for", "biolink:contributes_to", false),
    t("predisposes to", "biolink:contributes_to", false),
    t("reduces the risk of", "biolink:prevents", false),
    t("reduced the risk of", "biolink:prevents", false),
    t("protects against", "biolink:prevents", false),
    t("prevention of", "biolink:prevents", false),
    t("prevents", "biolink:prevents", false),
    t("prevented", "biolink:prevents", false),
    t("treated with", "biolink:treats", true),
    t("responded to", "biolink:treats", true),
    t("in the treatment of", "biolink:treats", false),
    t("treatment of", "biolink:treats", false),
    t("effective in", "biolink:treats", false),
    t("effective against", "biolink:treats", false),
    t("treats", "biolink:treats", false),
    t("relieves", "biolink:treats", false),
    t("alleviates", "biolink:treats", false),
    t("caused by", "biolink:causes", true),
    t("induced by", "biolink:causes", true),
    t("due to", "biolink:causes", true),
    t("secondary to", "biolink:causes", true),
    t("causes", "biolink:causes", false),
    t("cause", "biolink:causes", false),
    t("caused", "biolink:causes", false),
    t("induces", "biolink:causes", false),
    t("induced", "biolink:causes", false),
    t("leads to", "biolink:causes", false),
    t("led to", "biolink:causes", false),
    t("results in", "biolink:causes", false),
    t("resulted in", "biolink:causes", false),
    t("inhibits", "biolink:decreases_activity_of", false),
    t("inhibited", "biolink:decreases_activity_of", false),
    t("inhibition of", "biolink:decreases_activity_of", false),
    t("suppresses", "biolink:decreases_activity_of", false),
    t("blocks", "biolink:decreases_activity_of", false),
    t("characterized by", "biolink:has_phenotype", false),
    t("characterised by", "biolink:has_phenotype", false),
    t("associated with", "biolink:associated_with", false),
    t("correlated with", "biolink:associated_with", false),
    t("linked to", "biolink:associated_with", false),
];

/// Words that negate what stands between two mentions.
const NEGATIONS: &[&str] =
    &["not", "no", "never", "without", "neither", "nor", "failed", "lack", "absence", "unlikely"];

/// The extractor: a vocabulary and the rules over it.
pub struct Extractor {
    vocabulary: Vocabulary,
}

impl Extractor {
    /// An extractor over `vocabulary`.
    pub fn new(vocabulary: Vocabulary) -> Extractor {
        Extractor { vocabulary }
    }

    /// Its vocabulary.
    pub fn vocabulary(&self) -> &Vocabulary {
        &self.vocabulary
    }

    /// Mentions and claims of every chunk of `doc`, and the claims and
    /// topics of its record (its metadata's `interventions`, `conditions`
    /// and `mesh`).
    pub fn extract(&self, doc: &ChunkedDocument) -> Extraction {
        let mut out = Extraction { doc_id: doc.doc_id.clone(), tenant_id: doc.tenant_id.clone(), ..Default::default() };
        // Abbreviations the document defines hold for the rest of it.
        let mut abbreviations: HashMap<String, u32> = HashMap::new();
        for chunk in &doc.chunks {
            let text = chunk.text.as_str();
            let mut found = self.vocabulary.find(text);
            learn_abbreviations(text, &found, &mut abbreviations);
            let abbreviated = find_abbreviations(text, &found, &abbreviations);
            found.extend_from_slice(&abbreviated);
            found.sort();
            let chars = CharIndex::new(text);
            for f in &found {
                let Some(concept) = self.vocabulary.concept(f.concept) else { continue };
                out.mentions.push(Mention {
                    concept: concept.id.clone(),
                    category: concept.category.biolink().to_string(),
                    chunk_id: chunk.id.clone(),
                    start: chars.of(f.start),
                    end: chars.of(f.end),
                    text: text[f.start..f.end].to_string(),
                    abbreviation: abbreviated.binary_search(f).is_ok(),
                });
            }
            // Both are in text order: one pass pairs each sentence with its mentions.
            let mut next = 0;
            for (s_start, s_end) in sentences(text) {
                let first = next + found[next..].partition_point(|f| f.start < s_start);
                next = first + found[first..].partition_point(|f| f.start < s_end);
                let inside: Vec<&Found> =
                    found[first..next].iter().filter(|f| f.end <= s_end).take(MAX_MENTIONS_PER_SENTENCE).collect();
                // Neighbours only: what stands between two mentions speaks of them,
                // not of a mention further on.
                for pair in inside.windows(2) {
                    let Some(claim) = self.claim(text, pair[0], pair[1]) else { continue };
                    out.claims.push(Claim {
                        doc_id: doc.doc_id.clone(),
                        chunk_id: Some(chunk.id.clone()),
                        sentence: Some((chars.of(s_start), chars.of(s_end))),
                        evidence: evidence(&text[s_start..s_end]),
                        ..claim
                    });
                }
            }
        }
        self.structured(doc, &mut out);
        out.claims.dedup();
        out
    }

    /// The claim between two mentions of one sentence (`a` before `b`), if any.
    fn claim(&self, text: &str, a: &Found, b: &Found) -> Option<Claim> {
        let (ca, cb) = (self.vocabulary.concept(a.concept)?, self.vocabulary.concept(b.concept)?);
        if ca.category == cb.category || ca.id == cb.id || a.end > b.start {
            return None;
        }
        let between = text[a.end..b.start].to_lowercase();
        let trigger = TRIGGERS.iter().find(|t| contains_words(&between, t.phrase));
        let negated = NEGATIONS.iter().any(|n| contains_words(&between, n));
        let (predicate, reverse, confidence, extractor) = match trigger {
            Some(t) => (t.predicate, t.reverse, 0.8, "trigger"),
            None if between.len() <= NEAR => ("biolink:related_to", false, 0.3, "cooccurrence"),
            None => return None,
        };
        let (subject, object) = if reverse { (cb, ca) } else { (ca, cb) };
        Some(Claim {
            subject: subject.id.clone(),
            predicate: predicate.to_string(),
            object: object.id.clone(),
            doc_id: String::new(),
            chunk_id: None,
            sentence: None,
            evidence: String::new(),
            negated,
            extractor: format!("medkg-dictionary/{extractor}"),
            confidence,
        })
    }

    /// Claims and topics the record states in its structure.
    fn structured(&self, doc: &ChunkedDocument, out: &mut Extraction) {
        let metadata = &doc.metadata;
        let concepts_of = |key: &str| -> Vec<&Concept> {
            let values = metadata.get(key).map(Vec::as_slice).unwrap_or_default();
            let mut concepts: Vec<&Concept> = values
                .iter()
                .flat_map(|v| self.vocabulary.find(v))
                .filter_map(|f| self.vocabulary.concept(f.concept))
                .collect();
            concepts.sort_by(|a, b| a.id.cmp(&b.id));
            concepts.dedup_by(|a, b| a.id == b.id);
            concepts
        };
        // A trial studies its interventions in its conditions.
        let conditions: Vec<&Concept> =
            concepts_of("conditions").into_iter().filter(|c| c.category != Category::Drug).collect();
        for intervention in concepts_of("interventions").into_iter().filter(|c| c.category == Category::Drug) {
            for condition in &conditions {
                out.claims.push(Claim {
                    subject: intervention.id.clone(),
                    predicate: "biolink:in_clinical_trials_for".into(),
                    object: condition.id.clone(),
                    doc_id: doc.doc_id.clone(),
                    chunk_id: None,
                    sentence: None,
                    evidence: String::new(),
                    negated: false,
                    extractor: "medkg-record/ctgov".into(),
                    confidence: 0.9,
                });
            }
        }
        out.topics = concepts_of("mesh").into_iter().map(|c| c.id.clone()).collect();
    }
}

/// A sentence as evidence: trimmed, at most [`MAX_EVIDENCE_CHARS`] characters.
fn evidence(sentence: &str) -> String {
    let sentence = sentence.trim();
    match sentence.char_indices().nth(MAX_EVIDENCE_CHARS) {
        Some((cut, _)) => format!("{}…", &sentence[..cut]),
        None => sentence.to_string(),
    }
}

/// Learns "long form (SF)" definitions: a concept's match followed by a
/// parenthesised short form of 2 to 10 letters and digits with a capital.
fn learn_abbreviations(text: &str, found: &[Found], abbreviations: &mut HashMap<String, u32>) {
    for f in found {
        let rest = text[f.end..].trim_start();
        let Some(inner) = rest.strip_prefix('(') else { continue };
        let Some(close) = inner.find(')') else { continue };
        let short = inner[..close].trim();
        let chars = short.chars().count();
        let shaped = (2..=10).contains(&chars)
            && short.chars().next().is_some_and(char::is_alphabetic)
            && short.chars().all(|c| c.is_alphanumeric() || c == '-')
            && short.chars().any(char::is_uppercase);
        if shaped {
            abbreviations.entry(short.to_string()).or_insert(f.concept);
        }
    }
}

/// Whole-word, case-sensitive occurrences of the learnt short forms outside
/// the concepts already found (`found`: sorted, not overlapping), sorted.
fn find_abbreviations(text: &str, found: &[Found], abbreviations: &HashMap<String, u32>) -> Vec<Found> {
    let mut extra = Vec::new();
    for (short, &concept) in abbreviations {
        for (start, _) in text.match_indices(short.as_str()) {
            let end = start + short.len();
            // The one concept that could overlap: the first ending after `start`.
            let taken = found.get(found.partition_point(|f| f.end <= start)).is_some_and(|f| f.start < end);
            if !taken && vocab::whole_word(text, start, end) {
                extra.push(Found { start, end, concept });
            }
        }
    }
    extra.sort();
    extra.dedup_by(|a, b| a.start < b.end && b.start < a.end);
    extra
}

/// Whether `phrase` stands in `text` as whole words.
fn contains_words(text: &str, phrase: &str) -> bool {
    text.match_indices(phrase).any(|(i, _)| vocab::whole_word(text, i, i + phrase.len()))
}

/// Byte offsets → character offsets of one text.
struct CharIndex {
    /// The byte offset of each character, and the text's length last.
    starts: Vec<usize>,
}

impl CharIndex {
    fn new(text: &str) -> CharIndex {
        let mut starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        starts.push(text.len());
        CharIndex { starts }
    }

    /// The character offset of byte offset `byte` (a character boundary).
    fn of(&self, byte: usize) -> usize {
        self.starts.partition_point(|&s| s < byte)
    }
}
