//! Rule-based segmentation into sentences, words and passages, as byte spans.
//!
//! Biomedical prose is full of periods that end nothing ("e.g.", "et al.",
//! "Fig. 2", "P. aeruginosa", "0.05"), so a period ends a sentence only when
//! whitespace follows and the next word looks like a sentence start, and the
//! word before it is not a known abbreviation or a single initial.

/// Byte span `[start, end)` into a text.
pub type Span = (usize, usize);

const ABBREVIATIONS: &[&str] = &[
    "al", "e.g", "i.e", "eg", "ie", "etc", "vs", "cf", "ca", "approx", "fig", "figs", "eq", "eqs", "ref", "refs", "dr",
    "mr", "mrs", "ms", "prof", "st", "no", "nos", "vol", "pp", "inc", "ltd", "co", "jr", "sr", "sp", "spp", "var",
    "subsp", "resp", "dept", "univ", "min", "max", "mol", "wt", "ed", "eds", "jan", "feb", "mar", "apr", "jun", "jul",
    "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k",
];

/// Maximal runs of non-whitespace.
pub fn words(text: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, text.len()));
    }
    spans
}

/// Passages: text separated by blank lines, trimmed, never empty.
pub fn passages(text: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut offset = 0;
    let mut start: Option<usize> = None;
    let mut last_end = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            if let Some(s) = start.take() {
                spans.push((s, last_end));
            }
        } else {
            let lead = line.len() - line.trim_start().len();
            if start.is_none() {
                start = Some(offset + lead);
            }
            last_end = offset + line.trim_end().len();
        }
        offset += line.len();
    }
    if let Some(s) = start {
        spans.push((s, last_end));
    }
    spans
}

/// Sentences, trimmed, never empty; blank lines always end a sentence.
pub fn sentences(text: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    for (p_start, p_end) in passages(text) {
        let passage = &text[p_start..p_end];
        let mut start = 0;
        let bytes = passage.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'.' || b == b'!' || b == b'?' {
                // Swallow closing quotes and brackets after the terminator.
                let mut end = i + 1;
                while end < bytes.len() && matches!(bytes[end], b'"' | b'\'' | b')' | b']') {
                    end += 1;
                }
                if is_boundary(passage, start, i, end) {
                    push_trimmed(&mut spans, passage, p_start, start, end);
                    start = end;
                }
                i = end;
            } else {
                i += 1;
            }
        }
        push_trimmed(&mut spans, passage, p_start, start, passage.len());
    }
    spans
}

fn push_trimmed(spans: &mut Vec<Span>, passage: &str, base: usize, start: usize, end: usize) {
    let piece = &passage[start..end];
    let trimmed = piece.trim();
    if !trimmed.is_empty() {
        let lead = piece.len() - piece.trim_start().len();
        spans.push((base + start + lead, base + start + lead + trimmed.len()));
    }
}

/// Is the terminator at `at` (ending, with closing marks, at `end`) the end of a sentence?
fn is_boundary(text: &str, sentence_start: usize, at: usize, end: usize) -> bool {
    let rest = &text[end..];
    // Must be followed by whitespace (or the end of the text).
    let after = rest.trim_start();
    if after.is_empty() {
        return true;
    }
    if rest.len() == after.len() {
        return false;
    }
    let next = after.chars().next().unwrap_or(' ');
    if !(next.is_uppercase() || next.is_ascii_digit() || matches!(next, '(' | '[' | '"' | '\'' | '“')) {
        return false;
    }
    if text.as_bytes()[at] != b'.' {
        return true;
    }
    // The word the period ends.
    let before = &text[sentence_start..at];
    let word = before.rsplit(|c: char| c.is_whitespace() || c == '(').next().unwrap_or("");
    if word.is_empty() {
        return true;
    }
    let lower = word.to_lowercase();
    if ABBREVIATIONS.contains(&lower.as_str()) {
        return false;
    }
    // A single initial ("J. Smith", "E. coli").
    let mut chars = word.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        if c.is_alphabetic() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str, spans: Vec<Span>) -> Vec<&str> {
        spans.into_iter().map(|(s, e)| &text[s..e]).collect()
    }

    #[test]
    fn splits_sentences_but_not_abbreviations() {
        let text = "E. coli grew (see Fig. 2). Growth was 0.5 mm, e.g. in broth! Was it? Yes.\n\nNew passage";
        assert_eq!(
            texts(text, sentences(text)),
            ["E. coli grew (see Fig. 2).", "Growth was 0.5 mm, e.g. in broth!", "Was it?", "Yes.", "New passage"]
        );
    }

    #[test]
    fn et_al_and_initials_do_not_end_sentences() {
        let text = "Smith et al. Showed it. J. Smith agreed.";
        assert_eq!(texts(text, sentences(text)), ["Smith et al. Showed it.", "J. Smith agreed."]);
    }

    #[test]
    fn passages_and_words_are_trimmed() {
        let text = "  one two \n\n\n three\nfour  \n";
        assert_eq!(texts(text, passages(text)), ["one two", "three\nfour"]);
        assert_eq!(texts(text, words(text)), ["one", "two", "three", "four"]);
        assert!(passages("  \n \n").is_empty());
    }
}
