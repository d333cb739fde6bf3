//! `medkg graph`, `medkg sparql` and `medkg export`: the knowledge graph a
//! `kg` stage wrote to `DATA_DIR/graph` (read once the run has stopped:
//! Oxigraph has no reader process beside a writer).

use std::io::Write;

use anyhow::{bail, Context};
use medkg_operators::extract::{vocab, Vocabulary};
use medkg_operators::graph::{GraphStore, QueryFormat};

use crate::cli::{ExportArgs, GraphArgs, SparqlArgs};

/// Longest query text read from a file or the command line.
const MAX_QUERY_BYTES: u64 = 1 << 20;

fn open(data_dir: &std::path::Path) -> anyhow::Result<GraphStore> {
    Ok(GraphStore::open_existing(&data_dir.join("graph"))?)
}

/// `medkg sparql`.
pub fn sparql(args: SparqlArgs) -> anyhow::Result<()> {
    let query = match args.query.strip_prefix('@') {
        Some(path) => {
            let file = std::fs::File::open(path).with_context(|| format!("cannot read the query file {path}"))?;
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_QUERY_BYTES + 1), &mut text)
                .with_context(|| format!("cannot read the query file {path}"))?;
            text
        }
        None => args.query,
    };
    if query.len() as u64 > MAX_QUERY_BYTES {
        bail!("the query is longer than {MAX_QUERY_BYTES} bytes");
    }
    let store = open(&args.data_dir)?;
    let format = if args.json { QueryFormat::Json } else { QueryFormat::Tsv };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    store.query(&args.tenant, &query, format, &mut out)?;
    writeln!(out)?;
    Ok(())
}

/// `medkg export`.
pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let store = open(&args.data_dir)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let quads = store.export(args.tenant.as_deref(), &mut out)?;
    out.flush()?;
    tracing::info!(quads, "exported");
    Ok(())
}

/// `medkg graph`.
pub fn graph(args: GraphArgs) -> anyhow::Result<()> {
    let store = open(&args.data_dir)?;
    let name = args.name.join(" ");
    let concepts = resolve(&store, &args.tenant, &name, args.vocabulary.as_deref())?;
    if concepts.is_empty() {
        bail!("`{name}` names no concept of tenant `{}`'s graph", args.tenant);
    }
    let mut views = Vec::new();
    for concept in &concepts {
        let info = store.concept(&args.tenant, concept)?;
        let neighbours = store.neighbours(&args.tenant, concept, args.k, args.evidence)?;
        views.push((concept, info, neighbours));
    }
    if args.json {
        let rows: Vec<serde_json::Value> = views
            .iter()
            .map(|(concept, info, neighbours)| {
                serde_json::json!({
                    "concept": concept,
                    "label": info.as_ref().and_then(|i| i.label.clone()),
                    "category": info.as_ref().and_then(|i| i.category.clone()),
                    "documents": info.as_ref().map_or(0, |i| i.documents),
                    "neighbours": neighbours,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for (concept, info, neighbours) in views {
        match info {
            Some(info) => println!(
                "{concept}  {}  ({}, mentioned in {} documents)",
                info.label.as_deref().unwrap_or("?"),
                info.category.as_deref().unwrap_or("?"),
                info.documents
            ),
            None => println!("{concept}  (in claims only)"),
        }
        if neighbours.is_empty() {
            println!("  no edges\n");
            continue;
        }
        for n in neighbours {
            let label = n.label.as_deref().unwrap_or("");
            let arrow = if n.outgoing { format!("─{}→", n.predicate) } else { format!("←{}─", n.predicate) };
            println!("  {arrow} {} {label}  [support {}]", n.concept, n.support);
            for (doc, sentence) in &n.evidence {
                let sentence: String = sentence.chars().take(200).collect();
                println!("      {doc}: {sentence}");
            }
        }
        println!();
    }
    Ok(())
}

/// The concepts `name` stands for: itself when it is a CURIE the graph
/// knows; else the vocabulary's concepts whose name it is (whole text);
/// else those the graph labels so.
fn resolve(
    store: &GraphStore,
    tenant: &str,
    name: &str,
    vocabulary: Option<&std::path::Path>,
) -> anyhow::Result<Vec<String>> {
    if name.contains(':') && !name.contains(' ') {
        return Ok(vec![name.to_string()]);
    }
    let path = match vocabulary {
        Some(path) => Some(path.to_path_buf()),
        None => vocab::default_path().ok(),
    };
    if let Some(path) = path {
        let vocabulary = Vocabulary::load(&path).map_err(|e| anyhow::anyhow!(e.message))?;
        let mut found: Vec<String> = vocabulary
            .find(name)
            .into_iter()
            .filter(|f| f.start == 0 && f.end == name.len())
            .filter_map(|f| vocabulary.concept(f.concept).map(|c| c.id.clone()))
            .collect();
        found.dedup();
        if !found.is_empty() {
            return Ok(found);
        }
    }
    Ok(store.concepts_named(tenant, name)?)
}
