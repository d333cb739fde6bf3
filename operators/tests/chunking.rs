//! Chunker properties (proptest), checked against naive oracles.

use medkg_operators::chunk::sentences;
use medkg_operators::{ChunkConfig, Chunker, Document, SourceKind, SplitBy};
use proptest::prelude::*;

/// Text made of words, sentence ends, blank lines, unicode and odd spacing.
fn text_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => "[a-zA-Z]{1,8}",
        1 => "[A-Z][a-z]{0,5}\\.",
        1 => Just("e.g.".to_string()),
        1 => Just("Ünïcödé".to_string()),
        1 => Just("0.05".to_string()),
        1 => Just("!".to_string()),
        1 => Just("?".to_string()),
    ];
    let sep = prop_oneof![6 => Just(" "), 1 => Just("  "), 1 => Just("\n"), 1 => Just("\n\n"), 1 => Just(". "), 1 => Just("\t")];
    proptest::collection::vec((piece, sep), 0..120)
        .prop_map(|parts| parts.into_iter().map(|(p, s)| format!("{p}{s}")).collect())
}

fn config_strategy() -> impl Strategy<Value = ChunkConfig> {
    (0usize..3, 1usize..30, 0usize..30, any::<bool>()).prop_map(|(by, length, overlap, respect)| ChunkConfig {
        split_by: [SplitBy::Word, SplitBy::Sentence, SplitBy::Passage][by],
        split_length: length,
        split_overlap: overlap % length,
        respect_sentence_boundary: respect,
    })
}

fn doc(text: &str) -> Document {
    Document::new(
        "pmid:7".into(),
        "t",
        SourceKind::Pubmed,
        "T".into(),
        vec![("abstract".into(), text.to_string())],
        Default::default(),
    )
}

proptest! {
    #[test]
    fn spans_map_back_exactly_and_are_never_empty(text in text_strategy(), config in config_strategy()) {
        let chunker = Chunker::new(config).unwrap();
        let doc = doc(&text);
        let chunked = chunker.chunk(&doc);
        for (n, chunk) in chunked.chunks.iter().enumerate() {
            prop_assert_eq!(&chunk.id, &format!("pmid:7#{n}"));
            prop_assert!(!chunk.text.trim().is_empty());
            let section: String = doc.sections[chunk.section as usize].text.chars().skip(chunk.char_start).take(chunk.char_end - chunk.char_start).collect();
            prop_assert_eq!(&section, &chunk.text);
        }
    }

    #[test]
    fn every_word_is_covered_in_order(text in text_strategy(), config in config_strategy()) {
        let spans = Chunker::new(config).unwrap().spans(&text);
        // Starts never go backwards, and together the chunks cover every word.
        for pair in spans.windows(2) {
            prop_assert!(pair[0].0 < pair[1].0, "chunk starts must advance: {:?}", spans);
        }
        for (ws, we) in sentences::words(&text) {
            prop_assert!(spans.iter().any(|&(s, e)| s <= ws && we <= e), "word {:?} not covered", &text[ws..we]);
        }
    }

    /// Plain word windows against a naive oracle over split_whitespace.
    #[test]
    fn word_windows_match_the_naive_oracle(text in text_strategy(), length in 1usize..20, overlap in 0usize..20) {
        let overlap = overlap % length;
        let chunker = Chunker::new(ChunkConfig { split_by: SplitBy::Word, split_length: length, split_overlap: overlap, respect_sentence_boundary: false }).unwrap();
        let got: Vec<Vec<&str>> = chunker.spans(&text).into_iter().map(|(s, e)| text[s..e].split_whitespace().collect()).collect();
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut expected = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let end = (i + length).min(words.len());
            expected.push(words[i..end].to_vec());
            if end == words.len() { break; }
            i += length - overlap;
        }
        prop_assert_eq!(got, expected);
    }

    /// Overlap is honoured: neighbouring chunks share exactly `overlap`
    /// units (sentence and passage windows), or at most `overlap` words
    /// (sentence-packed words).
    #[test]
    fn overlap_is_honoured(text in text_strategy(), config in config_strategy()) {
        let spans = Chunker::new(config.clone()).unwrap().spans(&text);
        let units = match config.split_by {
            SplitBy::Sentence => sentences::sentences(&text),
            SplitBy::Passage => sentences::passages(&text),
            SplitBy::Word => sentences::words(&text),
        };
        for pair in spans.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let shared = units.iter().filter(|&&(s, e)| a.0 <= s && e <= a.1 && b.0 <= s && e <= b.1).count();
            let in_a = units.iter().filter(|&&(s, e)| a.0 <= s && e <= a.1).count();
            match config.split_by {
                SplitBy::Word if config.respect_sentence_boundary => prop_assert!(shared <= config.split_overlap),
                _ if in_a == config.split_length => prop_assert_eq!(shared, config.split_overlap),
                _ => {}
            }
        }
        if config.split_by == SplitBy::Word && config.respect_sentence_boundary {
            for &(s, e) in &spans {
                prop_assert!(text[s..e].split_whitespace().count() <= config.split_length);
            }
        }
    }
}
