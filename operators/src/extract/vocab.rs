//! The concept vocabulary (`scripts/vocab.sh` makes it from pinned PyPI
//! packages) and the dictionary matcher over it.
//!
//! Matching is whole-word and leftmost-longest over a normalised text: case
//! folded (except for names marked case-sensitive, such as gene symbols),
//! hyphens, slashes, underscores and commas read as spaces, runs of spaces
//! as one. Every match maps back to exact byte spans of the original text.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde::Deserialize;

use crate::StageError;

/// The largest vocabulary file read.
pub const MAX_VOCAB_BYTES: u64 = 512 << 20;
/// Names kept per concept (the rest are ignored).
pub const MAX_NAMES: usize = 64;
/// The longest name kept, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// A Biolink Model category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// `biolink:Drug`
    Drug,
    /// `biolink:Disease`
    Disease,
    /// `biolink:PhenotypicFeature`
    Phenotype,
    /// `biolink:Gene`
    Gene,
}

impl Category {
    /// The Biolink CURIE.
    pub fn biolink(self) -> &'static str {
        match self {
            Category::Drug => "biolink:Drug",
            Category::Disease => "biolink:Disease",
            Category::Phenotype => "biolink:PhenotypicFeature",
            Category::Gene => "biolink:Gene",
        }
    }

    fn from_biolink(name: &str) -> Option<Category> {
        [Category::Drug, Category::Disease, Category::Phenotype, Category::Gene]
            .into_iter()
            .find(|c| c.biolink() == name)
    }
}

/// One concept: a CURIE, its label and category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Concept {
    /// `DRUGBANK:DB00945`, `HP:0002315`, `OMIM:…`, `NCBIGene:…`.
    pub id: String,
    /// Its preferred name.
    pub label: String,
    /// What it is.
    pub category: Category,
}

/// A line of the vocabulary file.
#[derive(Deserialize)]
struct Entry {
    id: String,
    label: String,
    category: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    case_sensitive: bool,
}

/// A concept found in a text: byte span `[start, end)` and the concept's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset after the last byte.
    pub end: usize,
    /// Index into [`Vocabulary::concepts`].
    pub concept: u32,
}

/// The concepts and an automaton over their names.
pub struct Vocabulary {
    concepts: Vec<Concept>,
    /// Case-folded names, and the concept of each pattern.
    folded: Option<(AhoCorasick, Vec<u32>)>,
    /// Case-sensitive names (gene symbols), and the concept of each pattern.
    exact: Option<(AhoCorasick, Vec<u32>)>,
    /// Concepts by id.
    by_id: std::collections::HashMap<String, u32>,
}

/// The vocabulary a run uses when its pipeline names none: `$MEDKG_VOCAB`,
/// else `scripts/vocab.sh`'s output (`$MEDKG_CACHE` or `~/.cache/medkg`,
/// then `vocab/concepts.jsonl`).
pub fn default_path() -> Result<std::path::PathBuf, String> {
    if let Some(path) = std::env::var_os("MEDKG_VOCAB").filter(|p| !p.is_empty()) {
        return Ok(path.into());
    }
    let cache = match (std::env::var_os("MEDKG_CACHE"), std::env::var_os("HOME")) {
        (Some(cache), _) if !cache.is_empty() => std::path::PathBuf::from(cache),
        (_, Some(home)) => std::path::Path::new(&home).join(".cache/medkg"),
        _ => return Err("no vocabulary: set MEDKG_VOCAB (scripts/vocab.sh builds one)".into()),
    };
    let path = cache.join("vocab/concepts.jsonl");
    match path.exists() {
        true => Ok(path),
        false => Err(format!("no vocabulary at {}: run scripts/vocab.sh (or set MEDKG_VOCAB)", path.display())),
    }
}

impl Vocabulary {
    /// Reads a vocabulary file (JSON lines); a line that is not a concept is
    /// an error that names it.
    pub fn load(path: &Path) -> Result<Vocabulary, StageError> {
        let fail = |e: String| StageError::permanent("bad_vocabulary", format!("{}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        let size = file.metadata().map_err(|e| fail(e.to_string()))?.len();
        if size > MAX_VOCAB_BYTES {
            return Err(fail(format!("{size} bytes is more than the {MAX_VOCAB_BYTES} a vocabulary may have")));
        }
        let mut entries = Vec::new();
        for (n, line) in BufReader::new(file.take(MAX_VOCAB_BYTES)).lines().enumerate() {
            let line = line.map_err(|e| fail(e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let entry: Entry = serde_json::from_str(&line).map_err(|e| fail(format!("line {}: {e}", n + 1)))?;
            let category = Category::from_biolink(&entry.category)
                .ok_or_else(|| fail(format!("line {}: unknown category `{}`", n + 1, entry.category)))?;
            let concept = Concept { id: entry.id, label: entry.label, category };
            entries.push((concept, entry.names, entry.case_sensitive));
        }
        Vocabulary::new(entries)
    }

    /// A vocabulary of `(concept, names, case_sensitive)`.
    pub fn new(entries: Vec<(Concept, Vec<String>, bool)>) -> Result<Vocabulary, StageError> {
        let mut concepts = Vec::with_capacity(entries.len());
        let (mut folded, mut folded_ids) = (Vec::new(), Vec::new());
        let (mut exact, mut exact_ids) = (Vec::new(), Vec::new());
        for (concept, names, case_sensitive) in entries {
            let index = concepts.len() as u32;
            concepts.push(concept);
            for name in names.iter().filter(|n| n.len() <= MAX_NAME_BYTES).take(MAX_NAMES) {
                let pattern = normalise(name, !case_sensitive).text;
                let pattern = pattern.trim();
                if pattern.is_empty() {
                    continue;
                }
                let (patterns, ids) =
                    if case_sensitive { (&mut exact, &mut exact_ids) } else { (&mut folded, &mut folded_ids) };
                patterns.push(pattern.to_string());
                ids.push(index);
            }
        }
        let build = |patterns: Vec<String>, ids: Vec<u32>| -> Result<Option<(AhoCorasick, Vec<u32>)>, StageError> {
            if patterns.is_empty() {
                return Ok(None);
            }
            let automaton = AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .build(&patterns)
                .map_err(|e| StageError::permanent("bad_vocabulary", format!("cannot build the matcher: {e}")))?;
            Ok(Some((automaton, ids)))
        };
        let by_id = concepts.iter().enumerate().map(|(i, c)| (c.id.clone(), i as u32)).collect();
        Ok(Vocabulary { concepts, folded: build(folded, folded_ids)?, exact: build(exact, exact_ids)?, by_id })
    }

    /// Every concept, by index.
    pub fn concepts(&self) -> &[Concept] {
        &self.concepts
    }

    /// The concept at `index`.
    pub fn concept(&self, index: u32) -> Option<&Concept> {
        self.concepts.get(index as usize)
    }

    /// The concept with id `id` (a CURIE).
    pub fn by_id(&self, id: &str) -> Option<&Concept> {
        self.by_id.get(id).and_then(|&i| self.concept(i))
    }

    /// The concepts in `text`: whole words, leftmost-longest, not overlapping,
    /// as byte spans of `text`.
    pub fn find(&self, text: &str) -> Vec<Found> {
        let mut candidates = Vec::new();
        for (automaton, fold) in [(&self.folded, true), (&self.exact, false)] {
            let Some((automaton, ids)) = automaton else { continue };
            let normal = normalise(text, fold);
            for m in automaton.find_overlapping_iter(&normal.text) {
                if whole_word(&normal.text, m.start(), m.end()) {
                    let concept = ids[m.pattern().as_usize()];
                    candidates.push(normal.found(m.start(), m.end(), concept));
                }
            }
        }
        choose(candidates, |c| self.concepts[c as usize].category)
    }
}

/// Leftmost-longest among `candidates`, none overlapping; for one span, the
/// concept of the first category (drug, disease, phenotype, gene), then the
/// first concept.
pub(crate) fn choose(mut candidates: Vec<Found>, category: impl Fn(u32) -> Category) -> Vec<Found> {
    candidates.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end), category(f.concept), f.concept));
    let mut chosen: Vec<Found> = Vec::new();
    for found in candidates {
        if chosen.last().is_none_or(|last| found.start >= last.end) {
            chosen.push(found);
        }
    }
    chosen
}

/// Whether `[start, end)` of `text` is a whole word: no letter or digit
/// touches it on either side.
pub(crate) fn whole_word(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
}

/// A normalised text and where each of its bytes came from.
pub(crate) struct Normal {
    pub text: String,
    /// For each byte of `text` (and one past the end), the original byte offset.
    origin: Vec<usize>,
    /// For each byte of `text`, the original byte offset after its character.
    origin_end: Vec<usize>,
}

impl Normal {
    fn found(&self, start: usize, end: usize, concept: u32) -> Found {
        Found { start: self.origin[start], end: self.origin_end[end - 1], concept }
    }
}

/// Folds `text` for matching: separators (`-`, `/`, `_`, `,` and every kind
/// of space or dash) become one space, and (with `fold_case`) letters
/// lower-case where that keeps one character.
pub(crate) fn normalise(text: &str, fold_case: bool) -> Normal {
    let mut out = String::with_capacity(text.len());
    let (mut origin, mut origin_end) = (Vec::with_capacity(text.len() + 1), Vec::with_capacity(text.len()));
    let mut last_space = true;
    for (i, c) in text.char_indices() {
        let end = i + c.len_utf8();
        let separator = c.is_whitespace() || matches!(c, '-' | '/' | '_' | ',' | '\u{2010}'..='\u{2015}' | '\u{2212}');
        if separator {
            if !last_space {
                out.push(' ');
                origin.push(i);
                origin_end.push(end);
            }
            last_space = true;
            continue;
        }
        last_space = false;
        let mut lower = c.to_lowercase();
        let c = match (fold_case, lower.next(), lower.next()) {
            (true, Some(l), None) => l,
            _ => c,
        };
        let mut buf = [0u8; 4];
        for _ in c.encode_utf8(&mut buf).bytes() {
            origin.push(i);
            origin_end.push(end);
        }
        out.push(c);
    }
    origin.push(text.len());
    Normal { text: out, origin, origin_end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn concept(id: &str, category: Category) -> Concept {
        Concept { id: id.into(), label: id.into(), category }
    }

    /// The same answer the slow way: every name at every position.
    fn oracle(vocabulary: &[(Concept, Vec<String>, bool)], text: &str) -> Vec<Found> {
        let mut candidates = Vec::new();
        for (index, (_, names, case_sensitive)) in vocabulary.iter().enumerate() {
            let normal = normalise(text, !case_sensitive);
            for name in names {
                let pattern = normalise(name, !case_sensitive).text.trim().to_string();
                if pattern.is_empty() {
                    continue;
                }
                for start in 0..normal.text.len() {
                    let end = start + pattern.len();
                    let fits = normal.text.is_char_boundary(start)
                        && normal.text.get(start..end) == Some(pattern.as_str())
                        && whole_word(&normal.text, start, end);
                    if fits {
                        candidates.push(normal.found(start, end, index as u32));
                    }
                }
            }
        }
        choose(candidates, |c| vocabulary[c as usize].0.category)
    }

    #[test]
    fn names_match_whole_words_across_case_and_separators() {
        let entries = vec![
            (concept("DRUGBANK:DB00945", Category::Drug), vec!["aspirin".into(), "acetylsalicylic acid".into()], false),
            (concept("HP:0001250", Category::Phenotype), vec!["seizure".into()], false),
            (concept("OMIM:1", Category::Disease), vec!["non-small cell lung cancer".into()], false),
            (concept("NCBIGene:1", Category::Gene), vec!["BRCA1".into()], true),
        ];
        let v = Vocabulary::new(entries).unwrap();
        let text = "Aspirin (Acetylsalicylic–acid) in Non small-cell lung cancer; aspirins, brca1 and BRCA1. Seizure";
        let found: Vec<(&str, &str)> = v
            .find(text)
            .iter()
            .map(|f| (&text[f.start..f.end], v.concepts()[f.concept as usize].id.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("Aspirin", "DRUGBANK:DB00945"),
                ("Acetylsalicylic–acid", "DRUGBANK:DB00945"),
                ("Non small-cell lung cancer", "OMIM:1"),
                ("BRCA1", "NCBIGene:1"),
                ("Seizure", "HP:0001250"),
            ]
        );
    }

    #[test]
    fn a_bad_vocabulary_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("concepts.jsonl");
        let good =
            r#"{"id": "HP:1", "label": "Seizure", "category": "biolink:PhenotypicFeature", "names": ["seizure"]}"#;
        for (bad, says) in [
            ("{not json", "line 2"),
            (r#"{"id": "X:1", "label": "x", "category": "biolink:Planet"}"#, "unknown category `biolink:Planet`"),
            (r#"{"label": "no id", "category": "biolink:Drug"}"#, "line 2"),
        ] {
            std::fs::write(&path, format!("{good}\n{bad}\n")).unwrap();
            let error = Vocabulary::load(&path).err().expect("refused");
            assert_eq!(error.kind, "bad_vocabulary");
            assert!(error.message.contains(says), "{error}");
        }
        // Names past the caps are left out, not an error.
        let long = "a".repeat(MAX_NAME_BYTES + 1);
        let names: Vec<String> = std::iter::once(long).chain((0..100).map(|i| format!("name{i}"))).collect();
        let line = serde_json::json!({"id": "X:1", "label": "x", "category": "biolink:Drug", "names": names});
        std::fs::write(&path, format!("{line}\n\n")).unwrap();
        let v = Vocabulary::load(&path).unwrap();
        assert_eq!(v.find("name62 name63 name64").len(), 2, "the 64 names kept are the first 64 under the length cap");
        assert!(Vocabulary::load(&dir.path().join("missing.jsonl")).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Over random texts and dictionaries from a small alphabet (so
        /// names do occur, inside words too), the automaton finds exactly
        /// what the naive scan finds, and never a piece of a word.
        #[test]
        fn the_matcher_agrees_with_a_naive_scan(
            names in proptest::collection::vec(("[abAB]{1,3}( [ab]{1,2})?", any::<bool>(), 0..4u8), 1..12),
            text in "[abAB ,\\-é.]{0,60}",
        ) {
            let categories = [Category::Drug, Category::Disease, Category::Phenotype, Category::Gene];
            let entries: Vec<(Concept, Vec<String>, bool)> = names
                .iter()
                .enumerate()
                .map(|(i, (name, sensitive, c))| (concept(&format!("X:{i}"), categories[*c as usize]), vec![name.clone()], *sensitive))
                .collect();
            let v = Vocabulary::new(entries.clone()).unwrap();
            let found = v.find(&text);
            prop_assert_eq!(&found, &oracle(&entries, &text));
            for f in &found {
                prop_assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end) && f.start < f.end);
                prop_assert!(whole_word(&text, f.start, f.end), "{:?} inside a word of {:?}", f, text);
            }
            for pair in found.windows(2) {
                prop_assert!(pair[0].end <= pair[1].start);
            }
        }
    }
}
