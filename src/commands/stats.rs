//! `medkg stats`: documents, chunks, dead letters and the knowledge
//! graph's size of a data directory.

use anyhow::Context;
use medkg_operators::graph::GraphStore;
use medkg_operators::index::SearchIndex;

use crate::cli::StatsArgs;

/// `medkg stats`.
pub fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let StatsArgs { data_dir, tenant, json } = args;
    let index = SearchIndex::open(&data_dir)?;
    let stats = index.stats(tenant.as_deref())?;
    let letters = medkg_connectors::DeadLetterSink::read_all(&data_dir).context("cannot read the dead letters")?;
    // The graph's size, of all tenants: only without --tenant.
    let graph_dir = data_dir.join("graph");
    let graph = match tenant.is_none() && graph_dir.join("CURRENT").exists() {
        true => Some(GraphStore::open_existing(&graph_dir).and_then(|g| g.census())),
        false => None,
    };
    if json {
        let mut out = serde_json::json!({"docs": stats.docs, "chunks": stats.chunks, "dead_letters": letters.len()});
        match graph {
            Some(Ok(census)) => out["graph"] = serde_json::to_value(census)?,
            Some(Err(e)) => out["graph"] = serde_json::json!({"error": e.to_string()}),
            None => {}
        }
        println!("{out}");
    } else {
        println!("docs {}\nchunks {}\ndead letters {}", stats.docs, stats.chunks, letters.len());
        match graph {
            Some(Ok(c)) => println!(
                "graph quads {}\ngraph documents {}\ngraph claims {}\ngraph edges {}\ngraph concepts {}",
                c.quads, c.documents, c.claims, c.edges, c.concepts
            ),
            Some(Err(e)) => println!("graph: {e}"),
            None => {}
        }
    }
    Ok(())
}
