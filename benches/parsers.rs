//! Parser throughput on the real documents of ../shared/data, per format.

use std::io::BufRead;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use medkg_operators::parse::{parse, Format, ParseOptions};

fn shared() -> PathBuf {
    std::env::var_os("MEDKG_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)).unwrap()
}

fn bench(c: &mut Criterion) {
    let file = std::fs::File::open(shared().join("data/pubmed_sample.jsonl.gz")).unwrap();
    let lines: Vec<String> =
        std::io::BufReader::new(flate2::read::GzDecoder::new(file)).lines().take(5000).map_while(Result::ok).collect();
    let pmc: Vec<(String, Vec<u8>)> = std::fs::read_dir(shared().join("data/pmc"))
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            Some((p.file_name()?.to_str()?.to_string(), std::fs::read(&p).ok()?))
        })
        .collect();
    let tei = std::fs::read(shared().join("data/pdf/0046d83a-edd6-4631-b57c-755cdcce8b7f.tei.xml")).unwrap();
    let pubmed_xml = fixture("pubmed21n1298-first3.xml");
    let ctgov = fixture("ctgov/NCT04280705.json");

    let run = |c: &mut Criterion, name: &str, format: Format, inputs: Vec<(Option<String>, Vec<u8>)>| {
        let options = ParseOptions { format, ..ParseOptions::default() };
        let bytes: usize = inputs.iter().map(|(_, b)| b.len()).sum();
        let mut group = c.benchmark_group("parse");
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(name, |b| {
            b.iter(|| inputs.iter().map(|(n, bytes)| parse(&options, bytes, n.as_deref()).len()).sum::<usize>())
        });
        group.finish();
    };
    let jsonl: Vec<(Option<String>, Vec<u8>)> = lines.iter().map(|l| (None, l.clone().into_bytes())).collect();
    run(c, "pubmed-jsonl-5000", Format::PubmedJsonl, jsonl.clone());
    run(c, "pubmed-jsonl-5000-auto", Format::Auto, jsonl);
    run(c, "pubmed-xml-3-articles", Format::PubmedXml, vec![(None, pubmed_xml)]);
    run(c, "jats-8-articles", Format::Jats, pmc.into_iter().map(|(n, b)| (Some(n), b)).collect());
    run(c, "tei-1-article", Format::Tei, vec![(None, tei)]);
    run(c, "ctgov-1-study", Format::Ctgov, vec![(None, ctgov)]);
}

criterion_group!(benches, bench);
criterion_main!(benches);
