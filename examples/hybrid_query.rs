//! Open a data directory and ask it a hybrid question: BM25, dense and
//! SPLADE lists fused by reciprocal rank, with the query encoded by the
//! same models that indexed the documents.
//!
//! ```text
//! cargo run --release --example hybrid_query -- [DATA_DIR] [QUERY...]
//! ```
//!
//! Without a data directory, it first indexes 300 PubMed records of the
//! sample with `config/pipelines/hybrid.yaml` (needs the models of
//! `MEDKG_MODELS` or what scripts/models.sh made, and ONNX Runtime: `ORT_DYLIB_PATH`).

use std::sync::Arc;

use anyhow::{bail, Context};
use medkg_dataflow::{Mode, Progress, Retriever, RunOptions};
use medkg_topology::{Plan, Policies};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let given = args.next().filter(|a| std::path::Path::new(a).is_dir());
    let query: Vec<String> = args.collect();
    let query = if query.is_empty() { "hormone therapy after the menopause".to_string() } else { query.join(" ") };

    let work = tempfile::tempdir()?;
    let data_dir = match given {
        Some(dir) => dir.into(),
        None => index_a_sample(work.path())?,
    };

    // Loads the query encoders recorded in the data directory once; each
    // search then costs milliseconds.
    let mut retriever = Retriever::open(&data_dir, Mode::Hybrid)?;
    let hits = retriever.search(&query, Mode::Hybrid, "default", 5)?;
    println!("{query}");
    if hits.is_empty() {
        bail!("no results in {}", data_dir.display());
    }
    for (rank, hit) in hits.iter().enumerate() {
        let preview: String = hit.text.chars().take(120).collect();
        println!("{}. {:.4}  {}  {}\n   {preview}…", rank + 1, hit.score, hit.chunk_id, hit.title);
    }
    Ok(())
}

/// Indexes the first 300 records of the PubMed sample with the hybrid pipeline.
fn index_a_sample(work: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use std::io::{BufRead, Write};
    let shared = std::env::var("MEDKG_SHARED").unwrap_or_else(|_| "../shared".into());
    let input = format!("{shared}/data/pubmed_sample.jsonl.gz");
    let gz = std::fs::File::open(&input).with_context(|| format!("cannot open {input} (set MEDKG_SHARED)"))?;
    let source = work.join("pubmed.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&source)?);
    for line in std::io::BufReader::new(flate2::read::GzDecoder::new(gz)).lines().take(300) {
        writeln!(out, "{}", line?)?;
    }
    out.flush()?;
    let pipeline = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pipelines/hybrid.yaml");
    let plan = Plan::from_path(&pipeline, &Policies::builtin())?;
    let data_dir = work.join("data");
    let mut options = RunOptions::new(plan, source, &data_dir);
    options.telemetry.ledger = false;
    let summary = medkg_dataflow::run(options, Arc::new(Progress::default()), |_, _| {})?;
    eprintln!("indexed {} documents ({} chunks) in {:.1} s", summary.docs, summary.chunks, summary.seconds);
    Ok(data_dir)
}
