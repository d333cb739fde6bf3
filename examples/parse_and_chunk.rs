//! Parse one PMC article (JATS XML) into the document IR and chunk it, with
//! no dataflow at all: the operators are a library.
//!
//! ```text
//! cargo run --example parse_and_chunk [-- ARTICLE.nxml]
//! ```
//!
//! Default: the first article of `$MEDKG_SHARED/data/pmc` (default `../shared`).

use anyhow::{bail, Context};
use medkg_operators::parse::{self, Format, ParseOptions};
use medkg_operators::{ChunkConfig, Chunker, SplitBy};

fn main() -> anyhow::Result<()> {
    let path = match std::env::args().nth(1) {
        Some(path) => std::path::PathBuf::from(path),
        None => {
            let shared = std::env::var("MEDKG_SHARED").unwrap_or_else(|_| "../shared".into());
            let dir = format!("{shared}/data/pmc");
            let mut articles: Vec<_> = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot read {dir} (set MEDKG_SHARED)"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "nxml"))
                .collect();
            articles.sort();
            articles.into_iter().next().with_context(|| format!("no .nxml article in {dir}"))?
        }
    };
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;

    // One payload may hold several documents (a PubMed XML set); a JATS file holds one.
    let options = ParseOptions { format: Format::Jats, ..ParseOptions::default() };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some(result) = parse::parse(&options, &bytes, name.as_deref()).into_iter().next() else {
        bail!("{} holds no document", path.display());
    };
    let doc = result?;
    println!("{}  {}", doc.id, doc.title);
    for section in &doc.sections {
        println!("  § {:<24} {:>6} chars at {}", section.name, section.text.chars().count(), section.offset);
    }

    // Chunks of four sentences, one shared with the next; spans point into the sections.
    let chunker = Chunker::new(ChunkConfig {
        split_by: SplitBy::Sentence,
        split_length: 4,
        split_overlap: 1,
        ..ChunkConfig::default()
    })
    .map_err(anyhow::Error::msg)?;
    let chunked = chunker.chunk(&doc);
    println!("{} chunks; the first three:", chunked.chunks.len());
    for chunk in chunked.chunks.iter().take(3) {
        let preview: String = chunk.text.chars().take(100).collect();
        println!("  {} [{}..{}] {preview}…", chunk.id, chunk.char_start, chunk.char_end);
    }
    Ok(())
}
