//! `medkg bench`: the models alone against the whole pipeline on the same
//! chunks with the same batching, and search latency.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context};
use medkg_connectors::FileSource;
use medkg_operators::parse;
use medkg_operators::ChunkedDocument;
use serde::Serialize;

use crate::models;
use crate::options::RunOptions;
use crate::progress::Progress;
use crate::retriever::{Mode, Retriever};
use crate::run::run;
use crate::settings::{self, StageConfig, StageContext, StageSettings};
use medkg_operators::parse::ParseOptions;
use medkg_topology::StageSettings as Settings;

/// Encodes texts on worker `w`'s session with a token budget; returns how many came back.
type EncodeFn = dyn Fn(usize, &[&str], usize) -> Result<usize, medkg_operators::StageError> + Sync;

/// Models-only against end-to-end throughput.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineBench {
    /// Documents (after parsing; those with chunks).
    pub docs: usize,
    /// Their chunks.
    pub chunks: usize,
    /// Workers (and model sessions) in both runs.
    pub workers: usize,
    /// The device of the model stages.
    pub device: String,
    /// Embed then SPLADE over every chunk, no dataflow, `workers` threads.
    pub models_only_seconds: f64,
    /// `docs / models_only_seconds`.
    pub models_only_docs_per_sec: f64,
    /// The dense model alone.
    pub embed_docs_per_sec: Option<f64>,
    /// The SPLADE model alone.
    pub splade_docs_per_sec: Option<f64>,
    /// `medkg run` of the same pipeline and source.
    pub e2e_seconds: f64,
    /// Its docs/s.
    pub e2e_docs_per_sec: f64,
    /// `e2e / models_only` (1.0: the engine costs nothing on top of the models).
    pub ratio: f64,
}

/// The `q` quantile of `sorted` samples, by nearest rank (`None` when there are none).
pub fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied()
}

/// Runs the pipeline bench; `options.data_dir` receives the end-to-end run's index.
pub fn pipeline(options: &RunOptions) -> anyhow::Result<PipelineBench> {
    let workers = options.workers.max(1);
    let settings = StageSettings::from_plan(&options.plan, &StageContext::of(options)).map_err(|e| anyhow!(e))?;
    let docs = parse_and_chunk(options, settings.max_record_bytes)?;
    let chunks = docs.iter().map(|d| d.chunks.len()).sum();
    let epoch = options.plan.runtime.epoch_records.max(1) as usize;

    // The same batching as the pipeline: each worker encodes its epochs'
    // documents with `encode_many` and the stage's token budget.
    let groups: Vec<Vec<&ChunkedDocument>> = docs.chunks(epoch).map(|g| g.iter().collect()).collect();
    let mut per_model = Vec::new();
    let mut total = 0.0;
    let mut device = "cpu".to_string();
    for stage in &settings.stages {
        let (encode, budget): (Box<EncodeFn>, usize) = match stage {
            StageConfig::Embed(spec) => {
                device = format!("{:?}", spec.device).to_lowercase();
                let sessions: Vec<_> = (0..workers).map(|_| models::dense(spec)).collect::<Result<_, _>>()?;
                (
                    Box::new(move |w: usize, t: &[&str], b| sessions[w].encode_many(t, b).map(|v| v.len())),
                    spec.max_batch_tokens,
                )
            }
            StageConfig::Splade(spec) => {
                let sessions: Vec<_> = (0..workers).map(|_| models::splade(spec)).collect::<Result<_, _>>()?;
                (
                    Box::new(move |w: usize, t: &[&str], b| sessions[w].encode_many(t, b).map(|v| v.len())),
                    spec.max_batch_tokens,
                )
            }
            _ => continue,
        };
        let started = Instant::now();
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let (groups, encode) = (&groups, &encode);
                    scope.spawn(move || -> Result<(), medkg_operators::StageError> {
                        for group in groups.iter().skip(w).step_by(workers) {
                            let texts: Vec<String> =
                                group.iter().flat_map(|d| d.chunks.iter().map(|c| c.model_text(&d.title))).collect();
                            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                            encode(w, &refs, budget)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for handle in handles {
                handle.join().map_err(|_| anyhow!("a bench thread panicked"))??;
            }
            Ok(())
        })?;
        let seconds = started.elapsed().as_secs_f64();
        per_model.push((matches!(stage, StageConfig::Embed(_)), docs.len() as f64 / seconds));
        total += seconds;
    }

    let progress = Arc::new(Progress::default());
    let mut e2e_options = options.clone();
    e2e_options.from_start = true;
    let summary = run(e2e_options, progress, |_, _| {})?;
    let models_only_docs_per_sec = if total > 0.0 { docs.len() as f64 / total } else { 0.0 };
    Ok(PipelineBench {
        docs: docs.len(),
        chunks,
        workers,
        device,
        models_only_seconds: total,
        models_only_docs_per_sec,
        embed_docs_per_sec: per_model.iter().find(|m| m.0).map(|m| m.1),
        splade_docs_per_sec: per_model.iter().find(|m| !m.0).map(|m| m.1),
        e2e_seconds: summary.seconds,
        e2e_docs_per_sec: summary.docs_per_sec,
        ratio: if models_only_docs_per_sec > 0.0 { summary.docs_per_sec / models_only_docs_per_sec } else { 0.0 },
    })
}

/// Parses and chunks a source as the pipeline's parse and chunk stages would.
fn parse_and_chunk(options: &RunOptions, max_record_bytes: usize) -> anyhow::Result<Vec<ChunkedDocument>> {
    let mut parse_options = ParseOptions { default_tenant: options.tenant.clone(), ..ParseOptions::default() };
    let mut chunker = None;
    for stage in &options.plan.stages {
        match &stage.settings {
            Settings::Parse(parse) => {
                parse_options = settings::parse_options(stage, parse, &options.tenant).map_err(anyhow::Error::msg)?
            }
            Settings::Chunk(chunk) => chunker = Some(settings::chunker(stage, chunk).map_err(anyhow::Error::msg)?),
            _ => {}
        }
    }
    let chunker = chunker.ok_or_else(|| anyhow!("the pipeline has no chunk stage to bench"))?;
    let source = FileSource::open(&options.source)?;
    let mut docs = Vec::new();
    for (_, record) in source.records(0, 1, 0, max_record_bytes) {
        let Ok(payload) = record else { continue };
        for doc in parse::parse(&parse_options, &payload.bytes, payload.name.as_deref()).into_iter().flatten() {
            let chunked = chunker.chunk(&doc);
            if !chunked.chunks.is_empty() {
                docs.push(chunked);
            }
        }
    }
    Ok(docs)
}

/// Search latency, query encoding included.
#[derive(Clone, Debug, Serialize)]
pub struct QueryBench {
    /// Queries timed.
    pub queries: usize,
    /// The mode.
    pub mode: String,
    /// Median latency.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Opening the index and loading the query models (once).
    pub open_ms: f64,
    /// Queries that name the document they should find (`query<TAB>doc_id`).
    pub judged: usize,
    /// Mean reciprocal rank of that document among the first `k` distinct
    /// documents (0 where it is not among them); `None` without judged queries.
    pub mrr_at_k: Option<f64>,
    /// Judged queries whose document is among the first `k`.
    pub found_at_k: usize,
}

/// A line of a queries file: the query, and the document it should find
/// (after a tab), if it names one.
fn query_line(line: &str) -> (&str, Option<&str>) {
    match line.split_once('\t') {
        Some((query, doc)) if !doc.trim().is_empty() => (query.trim(), Some(doc.trim())),
        Some((query, _)) => (query.trim(), None),
        None => (line.trim(), None),
    }
}

/// The rank (1-based) of `doc` among the distinct documents of `hits`.
fn rank_of(hits: &[medkg_operators::index::Hit], doc: &str) -> Option<usize> {
    let mut seen = std::collections::HashSet::new();
    hits.iter().filter(|h| seen.insert(h.doc_id.as_str())).position(|h| h.doc_id == doc).map(|i| i + 1)
}

/// Times every query of `file` (one a line) against `data_dir`; a line
/// `query<TAB>doc_id` also scores where that document ranks (MRR@k).
pub fn queries(data_dir: &Path, file: &PathBuf, mode: Mode, tenant: &str, k: usize) -> anyhow::Result<QueryBench> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let queries: Vec<(&str, Option<&str>)> =
        text.lines().map(query_line).filter(|(query, _)| !query.is_empty()).collect();
    let opened = Instant::now();
    let mut retriever = Retriever::open(data_dir, mode)?;
    let open_ms = opened.elapsed().as_secs_f64() * 1000.0;
    // One untimed query warms caches the way a running server's would be.
    if let Some((first, _)) = queries.first() {
        retriever.search(first, mode, tenant, k)?;
    }
    let mut times = Vec::with_capacity(queries.len());
    let (mut judged, mut reciprocal, mut found) = (0usize, 0.0f64, 0usize);
    for (query, expected) in &queries {
        let started = Instant::now();
        // Chunks of one document rank once: ask for more hits than k documents need.
        let hits = retriever.search(query, mode, tenant, if expected.is_some() { k * 4 } else { k })?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if let Some(doc) = expected {
            judged += 1;
            if let Some(rank) = rank_of(&hits, doc).filter(|&rank| rank <= k) {
                reciprocal += 1.0 / rank as f64;
                found += 1;
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let at = |p: f64| nearest_rank(&times, p).unwrap_or(0.0);
    Ok(QueryBench {
        queries: times.len(),
        mode: format!("{mode:?}").to_lowercase(),
        p50_ms: at(0.5),
        p95_ms: at(0.95),
        mean_ms: if times.is_empty() { 0.0 } else { times.iter().sum::<f64>() / times.len() as f64 },
        open_ms,
        judged,
        mrr_at_k: (judged > 0).then(|| reciprocal / judged as f64),
        found_at_k: found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(doc: &str) -> medkg_operators::index::Hit {
        medkg_operators::index::Hit { doc_id: doc.into(), ..medkg_operators::index::Hit::default() }
    }

    #[test]
    fn judged_lines_and_ranks_by_distinct_document() {
        assert_eq!(query_line("aspirin stroke\tpmid:1"), ("aspirin stroke", Some("pmid:1")));
        assert_eq!(query_line("  aspirin  "), ("aspirin", None));
        assert_eq!(query_line("aspirin\t "), ("aspirin", None));
        let hits = [hit("a"), hit("a"), hit("b"), hit("a"), hit("c")];
        assert_eq!(rank_of(&hits, "a"), Some(1));
        assert_eq!(rank_of(&hits, "b"), Some(2), "a's second chunk does not push b down");
        assert_eq!(rank_of(&hits, "c"), Some(3));
        assert_eq!(rank_of(&hits, "d"), None);
    }
}
