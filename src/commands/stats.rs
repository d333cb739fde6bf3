//! `medkg stats`: documents, chunks and dead letters of a data directory.

use anyhow::Context;
use medkg_operators::index::SearchIndex;

use crate::cli::StatsArgs;

/// `medkg stats`.
pub fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let StatsArgs { data_dir, tenant, json } = args;
    let index = SearchIndex::open(&data_dir)?;
    let stats = index.stats(tenant.as_deref())?;
    let letters = medkg_connectors::DeadLetterSink::read_all(&data_dir).context("cannot read the dead letters")?;
    if json {
        println!("{}", serde_json::json!({"docs": stats.docs, "chunks": stats.chunks, "dead_letters": letters.len()}));
    } else {
        println!("docs {}\nchunks {}\ndead letters {}", stats.docs, stats.chunks, letters.len());
    }
    Ok(())
}
