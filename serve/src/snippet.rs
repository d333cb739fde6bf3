//! Highlighted snippets: the window of a chunk's text where the query's
//! words are densest, with each word's place in the snippet, so a client
//! marks them up itself (nothing here is HTML: no markup to inject).

use serde::Serialize;

/// A snippet and where the query's words are in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snippet {
    /// The text (with `…` where it was cut).
    pub text: String,
    /// `[start, end)` character offsets of matched words in `text`.
    pub highlights: Vec<[usize; 2]>,
}

/// The query's distinct words, lowercased (letters and digits; at most 32).
pub fn terms(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in query.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let word = word.to_lowercase();
        if !out.contains(&word) && out.len() < 32 {
            out.push(word);
        }
    }
    out
}

/// Words of `text` as char spans.
fn words(chars: &[char]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in chars.iter().enumerate() {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, chars.len()));
    }
    out
}

/// The `max_chars` window of `text` holding the most distinct `terms`, then
/// the most matches of them (whole words, any case), and the matches'
/// places in it.
pub fn snippet(text: &str, terms: &[String], max_chars: usize) -> Snippet {
    let chars: Vec<char> = text.chars().collect();
    let spans = words(&chars);
    // Each matched word's span and which query term it is.
    let matched: Vec<(usize, usize, usize)> = spans
        .into_iter()
        .filter_map(|(s, e)| {
            let word: String = chars[s..e].iter().collect::<String>().to_lowercase();
            terms.iter().position(|t| *t == word).map(|term| (s, e, term))
        })
        .collect();
    // The window starting at a match that covers the most distinct terms,
    // then the most weight, a match of a term weighing 1 / its count in the
    // text (a rare word is worth more than the tenth repeat of a common one).
    let mut count = vec![0usize; terms.len()];
    for &(_, _, t) in &matched {
        count[t] += 1;
    }
    let mut start = 0;
    let mut last_end = 0;
    let mut best = (0usize, 0.0f64);
    for (i, &(s, _, _)) in matched.iter().enumerate() {
        let covered: Vec<&(usize, usize, usize)> =
            matched[i..].iter().take_while(|&&(_, e, _)| e <= s + max_chars).collect();
        let mut distinct: Vec<usize> = covered.iter().map(|m| m.2).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let weight: f64 = covered.iter().map(|m| 1.0 / count[m.2] as f64).sum();
        if distinct.len() > best.0 || (distinct.len() == best.0 && weight > best.1 + 1e-9) {
            best = (distinct.len(), weight);
            start = s;
            last_end = covered.last().map_or(s, |m| m.1);
        }
    }
    // Some context before the first match, at a word boundary, as long as
    // the window still holds the matches it was chosen for.
    if best.0 > 0 {
        start -= (max_chars / 5).min(start).min((start + max_chars).saturating_sub(last_end));
    }
    // A window that can reach the end does (a short text shows whole).
    start = start.min(chars.len().saturating_sub(max_chars));
    while start > 0 && start < chars.len() && chars[start - 1].is_alphanumeric() {
        start += 1;
    }
    let end = (start + max_chars).min(chars.len());
    let lead = if start > 0 { "…" } else { "" };
    let tail = if end < chars.len() { "…" } else { "" };
    let offset = lead.chars().count();
    let body: String = chars[start..end].iter().collect();
    let highlights = matched
        .into_iter()
        .filter(|&(s, e, _)| s >= start && e <= end)
        .map(|(s, e, _)| [s - start + offset, e - start + offset])
        .collect();
    Snippet { text: format!("{lead}{body}{tail}"), highlights }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn marks_whole_words_in_the_densest_window() {
        let text = "Aspirin is old. ".repeat(20) + "Statins lower LDL; statins and aspirin together.";
        let s = snippet(&text, &terms("statins aspirin"), 60);
        let marked: Vec<String> =
            s.highlights.iter().map(|[a, b]| s.text.chars().skip(*a).take(b - a).collect()).collect();
        assert!(marked.iter().filter(|w| w.eq_ignore_ascii_case("statins")).count() == 2, "{s:?}");
        assert!(s.text.starts_with('…'));
        assert!(snippet("aspirins", &terms("aspirin"), 50).highlights.is_empty(), "whole words only");
        let short = snippet("Effects of topical prostaglandin on aspirin ulcers.", &terms("aspirin"), 240);
        assert_eq!(short.text, "Effects of topical prostaglandin on aspirin ulcers.");
        assert_eq!(short.highlights, vec![[36, 43]]);
    }

    proptest! {
        #[test]
        fn highlights_always_lie_inside_the_snippet(text in "\\PC{0,300}", query in "\\PC{0,40}", max in 1usize..120) {
            let s = snippet(&text, &terms(&query), max);
            let n = s.text.chars().count();
            prop_assert!(n <= max + 2);
            for [a, b] in &s.highlights {
                prop_assert!(a < b && *b <= n);
            }
        }
    }
}
