//! Chunker throughput on real PubMed abstracts and PMC full text, per split mode.

use std::io::BufRead;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use medkg_operators::parse::{parse, ParseOptions};
use medkg_operators::{ChunkConfig, Chunker, Document, SplitBy};

fn shared() -> PathBuf {
    std::env::var_os("MEDKG_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
}

fn pubmed_docs(n: usize) -> Vec<Document> {
    let file = std::fs::File::open(shared().join("data/pubmed_sample.jsonl.gz")).unwrap();
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
    reader
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| parse(&ParseOptions::default(), line.as_bytes(), None).into_iter().next()?.ok())
        .filter(|d| d.sections[0].name == "abstract")
        .take(n)
        .collect()
}

fn pmc_docs() -> Vec<Document> {
    std::fs::read_dir(shared().join("data/pmc"))
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?.to_string();
            parse(&ParseOptions::default(), &std::fs::read(&path).ok()?, Some(&name)).into_iter().next()?.ok()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let corpora = [("pubmed-1000-abstracts", pubmed_docs(1000)), ("pmc-8-fulltext", pmc_docs())];
    let modes = [
        ("word-200-20-sentences", ChunkConfig::default()),
        ("word-200-20-plain", ChunkConfig { respect_sentence_boundary: false, ..ChunkConfig::default() }),
        (
            "sentence-5-1",
            ChunkConfig { split_by: SplitBy::Sentence, split_length: 5, split_overlap: 1, ..ChunkConfig::default() },
        ),
        (
            "passage-2-0",
            ChunkConfig { split_by: SplitBy::Passage, split_length: 2, split_overlap: 0, ..ChunkConfig::default() },
        ),
    ];
    for (corpus, docs) in &corpora {
        let bytes: usize = docs.iter().flat_map(|d| d.sections.iter()).map(|s| s.text.len()).sum();
        let mut group = c.benchmark_group(format!("chunk/{corpus}"));
        group.throughput(Throughput::Bytes(bytes as u64));
        for (mode, config) in &modes {
            let chunker = Chunker::new(config.clone()).unwrap();
            group.bench_with_input(BenchmarkId::from_parameter(mode), docs, |b, docs| {
                b.iter(|| docs.iter().map(|d| chunker.chunk(d).chunks.len()).sum::<usize>())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
