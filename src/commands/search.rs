//! `medkg search`: BM25, dense, SPLADE, or their fusion, over a data directory.

use anyhow::{anyhow, bail};
use medkg_dataflow::{Mode, Retriever};
use medkg_operators::graph::GraphStore;
use medkg_operators::index::Weights;

use crate::cli::SearchArgs;

/// `medkg search`.
pub fn search(args: SearchArgs) -> anyhow::Result<()> {
    let SearchArgs { data_dir, tenant, k, json, mode, weights, entity, query } = args;
    let mode: Mode = mode.parse().map_err(|e: String| anyhow!(e))?;
    let mut retriever = Retriever::open(&data_dir, mode)?;
    retriever.weights = parse_weights(&weights)?;
    if let Some(concept) = entity {
        // Only the tenant's chunks that mention the concept, by the graph.
        let graph = GraphStore::open_existing(&data_dir.join("graph"))?;
        let chunks = graph.chunks_mentioning(&tenant, &concept)?;
        retriever.restrict(Some(chunks.into_iter().collect()));
    }
    let hits = retriever.search(&query.join(" "), mode, &tenant, k)?;
    if json {
        let rows: Vec<serde_json::Value> = hits
            .iter()
            .map(|h| serde_json::json!({"doc_id": h.doc_id, "chunk_id": h.chunk_id, "score": h.score, "title": h.title, "text": h.text}))
            .collect();
        println!("{}", serde_json::to_string(&rows)?);
    } else if hits.is_empty() {
        println!("no results");
    } else {
        for (rank, hit) in hits.iter().enumerate() {
            let preview: String = hit.text.chars().take(200).collect();
            println!("{:>2}. {:.4}  {}  {}\n    {}\n", rank + 1, hit.score, hit.chunk_id, hit.title, preview);
        }
    }
    Ok(())
}

/// `bm25=1,dense=0.5,splade=1` (lists not named keep weight 1).
fn parse_weights(text: &str) -> anyhow::Result<Weights> {
    let mut weights = Weights::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').ok_or_else(|| anyhow!("weight `{part}` is not name=number"))?;
        let value: f32 = value.trim().parse().map_err(|_| anyhow!("weight `{part}`: `{value}` is not a number"))?;
        if !(value.is_finite() && value >= 0.0) {
            bail!("weight `{part}` must be ≥ 0");
        }
        match name.trim() {
            "bm25" => weights.bm25 = value,
            "dense" => weights.dense = value,
            "splade" => weights.splade = value,
            other => bail!("unknown list `{other}` in --weights (bm25 | dense | splade)"),
        }
    }
    Ok(weights)
}
