//! Document → chunks.
//!
//! A section's text is cut into *units* (words, sentences or passages) and
//! consecutive units are grouped into chunks of `split_length` units, each
//! sharing `split_overlap` units with the one before. A chunk's text is
//! always an exact slice of its section (`char_start..char_end`), never
//! empty, and chunks never cross sections.
//!
//! With `split_by: word` and `respect_sentence_boundary: true` (the default)
//! chunks are whole sentences packed up to `split_length` words, overlapping
//! by whole sentences of at most `split_overlap` words; only a sentence longer
//! than `split_length` words is cut inside.
//!
//! ```
//! use medkg_operators::{ChunkConfig, Chunker, SplitBy};
//!
//! let chunker = Chunker::new(ChunkConfig { split_by: SplitBy::Sentence, split_length: 2, split_overlap: 1, ..Default::default() }).unwrap();
//! let spans = chunker.spans("One. Two. Three.");
//! let text = "One. Two. Three.";
//! let pieces: Vec<&str> = spans.iter().map(|&(s, e)| &text[s..e]).collect();
//! assert_eq!(pieces, ["One. Two.", "Two. Three."]);
//! ```

pub mod sentences;

use std::str::FromStr;

use crate::{Chunk, ChunkedDocument, Document};
use sentences::Span;

/// The unit chunks are counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitBy {
    /// Whitespace-separated words.
    Word,
    /// Sentences.
    Sentence,
    /// Blank-line separated passages.
    Passage,
}

impl FromStr for SplitBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "word" => Ok(SplitBy::Word),
            "sentence" => Ok(SplitBy::Sentence),
            "passage" => Ok(SplitBy::Passage),
            other => Err(format!("unknown split_by `{other}` (word | sentence | passage)")),
        }
    }
}

/// How to chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkConfig {
    /// The unit.
    pub split_by: SplitBy,
    /// Units per chunk (≥ 1).
    pub split_length: usize,
    /// Units shared with the previous chunk (< `split_length`).
    pub split_overlap: usize,
    /// With `Word`: pack whole sentences.
    pub respect_sentence_boundary: bool,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig { split_by: SplitBy::Word, split_length: 200, split_overlap: 20, respect_sentence_boundary: true }
    }
}

/// Cuts documents into chunks.
#[derive(Clone, Debug)]
pub struct Chunker {
    config: ChunkConfig,
}

impl Chunker {
    /// Checks the configuration.
    pub fn new(config: ChunkConfig) -> Result<Chunker, String> {
        if config.split_length == 0 {
            return Err("split_length must be ≥ 1".into());
        }
        if config.split_overlap >= config.split_length {
            return Err(format!(
                "split_overlap ({}) must be smaller than split_length ({})",
                config.split_overlap, config.split_length
            ));
        }
        Ok(Chunker { config })
    }

    /// The configuration.
    pub fn config(&self) -> &ChunkConfig {
        &self.config
    }

    /// Chunks a document: ids `{doc_id}#{n}` numbered across sections.
    pub fn chunk(&self, doc: &Document) -> ChunkedDocument {
        let mut chunks = Vec::new();
        for (section_index, section) in doc.sections.iter().enumerate() {
            let text = &section.text;
            let ascii = text.is_ascii();
            for (start, end) in self.spans(text) {
                let n = chunks.len() as u32;
                let (char_start, char_end) = if ascii {
                    (start, end)
                } else {
                    let char_start = text[..start].chars().count();
                    (char_start, char_start + text[start..end].chars().count())
                };
                chunks.push(Chunk {
                    id: format!("{}#{n}", doc.id),
                    n,
                    section: section_index as u32,
                    section_name: section.name.clone(),
                    text: text[start..end].to_string(),
                    char_start,
                    char_end,
                    dense: None,
                    sparse: None,
                });
            }
        }
        ChunkedDocument {
            doc_id: doc.id.clone(),
            tenant_id: doc.tenant_id.clone(),
            source: doc.source,
            title: doc.title.clone(),
            content_hash: doc.content_hash,
            chunks,
            metadata: doc.metadata.clone(),
        }
    }

    /// Byte spans of the chunks of one text.
    pub fn spans(&self, text: &str) -> Vec<Span> {
        let ChunkConfig { split_by, split_length, split_overlap, respect_sentence_boundary } = self.config;
        match split_by {
            SplitBy::Word if respect_sentence_boundary => pack_sentences(text, split_length, split_overlap),
            SplitBy::Word => windows(&sentences::words(text), split_length, split_overlap),
            SplitBy::Sentence => windows(&sentences::sentences(text), split_length, split_overlap),
            SplitBy::Passage => windows(&sentences::passages(text), split_length, split_overlap),
        }
    }
}

/// Groups of `length` consecutive units, each starting `length - overlap`
/// units after the previous; the last group ends at the last unit.
fn windows(units: &[Span], length: usize, overlap: usize) -> Vec<Span> {
    let step = length - overlap;
    let mut out = Vec::new();
    let mut first = 0;
    while first < units.len() {
        let last = (first + length).min(units.len()) - 1;
        out.push((units[first].0, units[last].1));
        if last == units.len() - 1 {
            break;
        }
        first += step;
    }
    out
}

/// Whole sentences packed up to `length` words, overlapping by trailing
/// sentences of at most `overlap` words in all.
fn pack_sentences(text: &str, length: usize, overlap: usize) -> Vec<Span> {
    // Each sentence with its words.
    let units: Vec<(Span, Vec<Span>)> = sentences::sentences(text)
        .into_iter()
        .map(|(s, e)| {
            let words = sentences::words(&text[s..e]).into_iter().map(|(a, b)| (s + a, s + b)).collect();
            ((s, e), words)
        })
        .collect();
    let mut out = Vec::new();
    // The sentences of the chunk being built, as indices into `units`.
    let mut current: Vec<usize> = Vec::new();
    let mut current_words = 0;
    let mut emitted_through: Option<usize> = None;
    for (i, (_, words)) in units.iter().enumerate() {
        let n = words.len();
        if n > length {
            // Flush what we have, then cut the long sentence by words.
            if current.iter().any(|&j| Some(j) > emitted_through) {
                out.push((units[current[0]].0 .0, units[*current.last().unwrap_or(&0)].0 .1));
            }
            out.extend(windows(words, length, overlap));
            emitted_through = Some(i);
            current.clear();
            current_words = 0;
            continue;
        }
        if current_words + n > length && !current.is_empty() {
            out.push((units[current[0]].0 .0, units[current[current.len() - 1]].0 .1));
            emitted_through = current.last().copied();
            // Keep trailing sentences worth at most `overlap` words...
            let mut kept = Vec::new();
            let mut kept_words = 0;
            for &j in current.iter().rev() {
                let w = units[j].1.len();
                if kept_words + w > overlap {
                    break;
                }
                kept.push(j);
                kept_words += w;
            }
            kept.reverse();
            // ...but never so many that the new sentence cannot join them.
            while !kept.is_empty() && kept_words + n > length {
                kept_words -= units[kept[0]].1.len();
                kept.remove(0);
            }
            current = kept;
            current_words = kept_words;
        }
        current.push(i);
        current_words += n;
    }
    if current.iter().any(|&j| Some(j) > emitted_through) {
        out.push((units[current[0]].0 .0, units[current[current.len() - 1]].0 .1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Document, SourceKind};

    fn pieces(config: ChunkConfig, text: &str) -> Vec<String> {
        Chunker::new(config).unwrap().spans(text).into_iter().map(|(s, e)| text[s..e].to_string()).collect()
    }

    #[test]
    fn words_pack_whole_sentences_with_overlap() {
        // Overlap keeps whole trailing sentences of at most 3 words.
        let text = "Alpha beta gamma. Delta eps. Foxtrot golf hotel. India.";
        let config = ChunkConfig { split_length: 5, split_overlap: 3, ..Default::default() };
        assert_eq!(
            pieces(config, text),
            ["Alpha beta gamma. Delta eps.", "Delta eps. Foxtrot golf hotel.", "Foxtrot golf hotel. India."]
        );
    }

    #[test]
    fn a_long_sentence_is_cut_by_words() {
        let text = "Short one. Aa b c d e f gg. Tail.";
        let config = ChunkConfig { split_length: 3, split_overlap: 1, ..Default::default() };
        assert_eq!(pieces(config, text), ["Short one.", "Aa b c", "c d e", "e f gg.", "Tail."]);
    }

    #[test]
    fn plain_word_windows() {
        let config =
            ChunkConfig { split_length: 3, split_overlap: 1, respect_sentence_boundary: false, ..Default::default() };
        assert_eq!(pieces(config, "a b c d e"), ["a b c", "c d e"]);
    }

    #[test]
    fn passages_group_paragraphs() {
        let config =
            ChunkConfig { split_by: SplitBy::Passage, split_length: 2, split_overlap: 0, ..Default::default() };
        assert_eq!(pieces(config, "p1\n\np2 x\n\np3"), ["p1\n\np2 x", "p3"]);
    }

    #[test]
    fn chunk_ids_and_char_spans_across_sections() {
        let doc = Document::new(
            "pmid:1".into(),
            "t",
            SourceKind::Pubmed,
            "T".into(),
            vec![("a".into(), "Ünïcode here. Second one.".into()), ("b".into(), "Third.".into())],
            Default::default(),
        );
        let chunker = Chunker::new(ChunkConfig {
            split_by: SplitBy::Sentence,
            split_length: 1,
            split_overlap: 0,
            ..Default::default()
        })
        .unwrap();
        let chunked = chunker.chunk(&doc);
        let ids: Vec<_> = chunked.chunks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["pmid:1#0", "pmid:1#1", "pmid:1#2"]);
        let second = &chunked.chunks[1];
        assert_eq!((second.char_start, second.char_end, second.text.as_str()), (14, 25, "Second one."));
        assert_eq!(chunked.chunks[2].section, 1);
    }

    #[test]
    fn rejects_overlap_not_below_length() {
        assert!(Chunker::new(ChunkConfig { split_length: 2, split_overlap: 2, ..Default::default() }).is_err());
    }
}
