//! Embed the engine in a program: build a topology in code, stream a file
//! through it on two timely workers, and search what it indexed.
//!
//! ```text
//! cargo run --release --example embed_engine [-- PUBMED.jsonl.gz [RECORDS]]
//! ```
//!
//! Reads the first RECORDS (default 2,000) PubMed records of the sample in
//! `$MEDKG_SHARED/data` (default `../shared`), indexes them with BM25 in a
//! temporary data directory, and runs one query.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context};
use medkg_dataflow::{Mode, Progress, Retriever, RunOptions};
use medkg_topology::{Plan, Policies, StageKind};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let shared = std::env::var("MEDKG_SHARED").unwrap_or_else(|_| "../shared".into());
    let input = std::env::args().nth(1).unwrap_or_else(|| format!("{shared}/data/pubmed_sample.jsonl.gz"));
    let records: usize = std::env::args().nth(2).map_or(Ok(2000), |n| n.parse()).context("RECORDS")?;

    // A slice of the sample, as the plain JSONL a batch backfill would read.
    let work = tempfile::tempdir()?;
    let source = work.path().join("pubmed.jsonl");
    let gz = File::open(&input).with_context(|| format!("cannot open {input} (set MEDKG_SHARED)"))?;
    let mut out = BufWriter::new(File::create(&source)?);
    for line in BufReader::new(flate2::read::GzDecoder::new(gz)).lines().take(records) {
        writeln!(out, "{}", line?)?;
    }
    out.flush()?;

    // The topology, in code: checked exactly as a YAML file would be.
    let plan = Plan::builder("embedded")
        .stage("parse", StageKind::Parse, &[], json!({ "format": "pubmed-jsonl" }))
        .stage(
            "chunk",
            StageKind::Chunk,
            &["parse"],
            json!({ "split_by": "sentence", "split_length": 6, "split_overlap": 1 }),
        )
        .stage("index", StageKind::Index, &["chunk"], json!({ "backends": ["bm25"], "commit_interval": "200ms" }))
        .runtime("epoch_records", 256)
        .build(&Policies::builtin())?;

    let data_dir = work.path().join("data");
    // Two workers; no /metrics server and no events; the job ledger stays on.
    let options = RunOptions { workers: 2, ..RunOptions::new(plan, source, &data_dir) };
    // The progress counters are live while the workers run.
    let progress = Arc::new(Progress::default());
    let summary = medkg_dataflow::run(options, progress.clone(), |p, elapsed| {
        let docs = p.docs.load(Ordering::Relaxed);
        eprint!("\r{:>5.1}s  {docs} documents durable", elapsed.as_secs_f64());
    })?;
    eprintln!();
    println!(
        "indexed {} documents ({} chunks, {} dead-lettered) in {:.2} s: {:.0} docs/s",
        summary.docs, summary.chunks, summary.failed, summary.seconds, summary.docs_per_sec
    );

    // What the run committed is searchable at once.
    let mut retriever = Retriever::open(&data_dir, Mode::Bm25)?;
    let hits = retriever.search("insulin resistance in obesity", Mode::Bm25, "default", 3)?;
    if hits.is_empty() {
        bail!("the query found nothing in {} indexed documents", summary.docs);
    }
    for (rank, hit) in hits.iter().enumerate() {
        println!("{}. {:.2}  {}  {}", rank + 1, hit.score, hit.doc_id, hit.title);
    }
    Ok(())
}
