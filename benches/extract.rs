//! The extractor over the bundled PubMed sample: throughput, and agreement
//! with the MeSH headings NLM indexers gave each record.
//!
//! ```text
//! MEDKG_VOCAB=$(scripts/vocab.sh) cargo bench --bench extract
//! ```
//!
//! - coverage: the share of headings whose whole text is a name in the
//!   vocabulary;
//! - recall: the share of covered headings whose concept the extractor
//!   found in the title and abstract;
//! - precision (a lower bound): the share of concepts found that are among
//!   the record's headings (an abstract names many things its headings do not).

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use medkg_operators::extract::{Extractor, Vocabulary};
use medkg_operators::parse::{parse, Format, ParseOptions};
use medkg_operators::Chunker;

fn main() {
    let shared = std::env::var_os("MEDKG_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")));
    let vocab = std::env::var("MEDKG_VOCAB").expect("MEDKG_VOCAB: export MEDKG_VOCAB=$(scripts/vocab.sh)");
    let began = Instant::now();
    let vocabulary = Vocabulary::load(std::path::Path::new(&vocab)).expect("vocabulary");
    let load = began.elapsed().as_secs_f64();
    let extractor = Extractor::new(vocabulary);

    let file = std::fs::File::open(shared.join("data/pubmed_sample.jsonl.gz")).expect("the PubMed sample");
    let options = ParseOptions { format: Format::PubmedJsonl, ..ParseOptions::default() };
    let chunker = Chunker::new(Default::default()).expect("chunker");
    let docs: Vec<_> = std::io::BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map_while(Result::ok)
        .flat_map(|line| parse(&options, line.as_bytes(), None))
        .filter_map(Result::ok)
        .collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a
    // smoke test over the first 500 records.
    let all = std::env::args().any(|a| a == "--bench");
    let take = if all { docs.len() } else { 500 };
    // Text only: the record's MeSH headings are what the extractor is measured against.
    let chunked: Vec<_> = docs
        .iter()
        .take(take)
        .map(|d| {
            let mut chunked = chunker.chunk(d);
            let metadata = std::mem::take(&mut chunked.metadata);
            (chunked, metadata)
        })
        .collect();

    let began = Instant::now();
    let (mut mentions, mut claims, mut triggered) = (0usize, 0usize, 0usize);
    let (mut headings, mut covered, mut recalled, mut found_total, mut found_in_headings) = (0, 0, 0, 0, 0);
    for (doc, metadata) in &chunked {
        let x = extractor.extract(doc);
        mentions += x.mentions.len();
        claims += x.claims.len();
        triggered += x.claims.iter().filter(|c| c.predicate != "biolink:related_to").count();
        let found: BTreeSet<&str> = x.mentions.iter().map(|m| m.concept.as_str()).collect();
        let Some(mesh) = metadata.get("mesh").filter(|m| !m.is_empty()) else { continue };
        let mut heading_concepts = BTreeSet::new();
        for heading in mesh {
            headings += 1;
            let hits = extractor.vocabulary().find(heading);
            // Covered: one concept spans the whole heading.
            let Some(hit) = hits.first().filter(|h| hits.len() == 1 && h.start == 0 && h.end == heading.len()) else {
                continue;
            };
            covered += 1;
            let id = extractor.vocabulary().concept(hit.concept).map(|c| c.id.as_str()).unwrap_or_default();
            heading_concepts.insert(id);
            if found.contains(id) {
                recalled += 1;
            }
        }
        found_total += found.len();
        found_in_headings += found.iter().filter(|c| heading_concepts.contains(*c)).count();
    }
    let seconds = began.elapsed().as_secs_f64();
    assert!(mentions > 0 && claims > 0, "the extractor found nothing in {} records", chunked.len());
    let share = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    println!(
        "{}",
        serde_json::json!({
            "vocabulary_concepts": extractor.vocabulary().concepts().len(),
            "vocabulary_load_seconds": load,
            "docs": chunked.len(),
            "extract_seconds": seconds,
            "docs_per_sec": chunked.len() as f64 / seconds,
            "mentions": mentions,
            "claims": claims,
            "claims_with_a_trigger": triggered,
            "mesh_headings": headings,
            "mesh_coverage": share(covered, headings),
            "mesh_recall": share(recalled, covered),
            "precision_lower_bound": share(found_in_headings, found_total),
        })
    );
}
