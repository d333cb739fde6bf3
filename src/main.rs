//! `medkg`: stream biomedical documents through a YAML topology into
//! searchable indexes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use medkg_dataflow::{Progress, RunOptions};
use medkg_operators::index::SearchIndex;
use medkg_topology::{Plan, Policies, ValidationErrors};

#[derive(Parser)]
#[command(
    name = "medkg",
    version,
    about = "Stream biomedical documents through a YAML topology into searchable indexes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline over a source until the source is exhausted.
    Run {
        /// The pipeline (config/pipelines/*.yaml).
        #[arg(long)]
        pipeline: PathBuf,
        /// `file:PATH`: a JSONL file (plain or .gz) or a directory of .xml/.nxml/.json/.jsonl files.
        #[arg(long)]
        source: String,
        /// Where indexes, checkpoints and dead letters live.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Worker threads.
        #[arg(short = 'w', long, default_value_t = 1)]
        workers: usize,
        /// Tenant of records that do not name their own.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Ignore the checkpoint and read the source from its start.
        #[arg(long)]
        from_start: bool,
        /// Resilience policies (default: ../resilience.yaml next to the pipeline, else the built-in ones).
        #[arg(long)]
        resilience: Option<PathBuf>,
    },
    /// Search the BM25 index of a data directory.
    Search {
        /// The data directory a run wrote.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Only this tenant's documents.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// How many chunks to return.
        #[arg(short = 'k', default_value_t = 10)]
        k: usize,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
        /// The query, in plain words.
        #[arg(required = true)]
        query: Vec<String>,
    },
    /// Count documents and chunks in a data directory.
    Stats {
        /// The data directory a run wrote.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate pipeline files; exit 0 when all are valid, 1 otherwise.
    Validate {
        /// Pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Resilience policies (default: ../resilience.yaml next to each pipeline, else the built-in ones).
        #[arg(long)]
        resilience: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            pipeline,
            source,
            data_dir,
            workers,
            tenant,
            from_start,
            resilience,
        } => run(
            &pipeline,
            &source,
            data_dir,
            workers,
            tenant,
            from_start,
            resilience.as_deref(),
        ),
        Command::Search {
            data_dir,
            tenant,
            k,
            json,
            query,
        } => search(&data_dir, &tenant, k, json, &query.join(" ")),
        Command::Stats {
            data_dir,
            tenant,
            json,
        } => stats(&data_dir, tenant.as_deref(), json),
        Command::Validate { files, resilience } => return validate(&files, resilience.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medkg: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The policies for a pipeline: `--resilience`, else `resilience.yaml` in
/// the pipeline's parent directory (config/), else the built-in ones.
fn policies_for(pipeline: &Path, explicit: Option<&Path>) -> Result<Policies, ValidationErrors> {
    if let Some(path) = explicit {
        return Policies::from_path(path);
    }
    let beside = pipeline
        .parent()
        .and_then(Path::parent)
        .map(|config| config.join("resilience.yaml"));
    match beside {
        Some(path) if path.is_file() => Policies::from_path(&path),
        _ => Ok(Policies::builtin()),
    }
}

fn load_plan(pipeline: &Path, resilience: Option<&Path>) -> Result<Plan, ValidationErrors> {
    let policies = policies_for(pipeline, resilience)?;
    Plan::from_path(pipeline, &policies)
}

fn validate(files: &[PathBuf], resilience: Option<&Path>) -> ExitCode {
    let mut ok = true;
    for file in files {
        match load_plan(file, resilience) {
            Ok(plan) => {
                let note = match medkg_dataflow::check_implemented(&plan) {
                    Ok(()) => String::new(),
                    Err(e) => format!(" (valid, but cannot run in this build: {e})"),
                };
                println!(
                    "{}: ok: pipeline `{}` v{}, {} stages{note}",
                    file.display(),
                    plan.name,
                    plan.version,
                    plan.stages.len()
                );
            }
            Err(errors) => {
                ok = false;
                eprintln!("{errors}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(
    pipeline: &Path,
    source: &str,
    data_dir: PathBuf,
    workers: usize,
    tenant: String,
    from_start: bool,
    resilience: Option<&Path>,
) -> anyhow::Result<()> {
    let plan = load_plan(pipeline, resilience).map_err(|e| anyhow!("{e}"))?;
    let Some(path) = source.strip_prefix("file:") else {
        bail!("unsupported source `{source}`: this build reads `file:PATH`");
    };
    if workers == 0 {
        bail!("-w must be at least 1");
    }
    let options = RunOptions {
        plan,
        source: PathBuf::from(path),
        data_dir,
        workers,
        tenant,
        from_start,
    };
    let progress = Arc::new(Progress::default());
    let tty = std::io::stderr().is_terminal();
    let summary = medkg_dataflow::run(options, progress, |p, elapsed| {
        if tty {
            let docs = p.docs.load(Ordering::Relaxed);
            let rate = docs as f64 / elapsed.as_secs_f64().max(1e-9);
            let line = format!(
                "\r{:>6.1}s  read {:>9}  docs {:>9}  {:>8.0} docs/s  chunks {:>9}  failed {:>6}",
                elapsed.as_secs_f64(),
                p.records.load(Ordering::Relaxed),
                docs,
                rate,
                p.chunks.load(Ordering::Relaxed),
                p.failed.load(Ordering::Relaxed)
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    })?;
    if tty {
        eprintln!();
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn search(data_dir: &Path, tenant: &str, k: usize, json: bool, query: &str) -> anyhow::Result<()> {
    let index = SearchIndex::open(data_dir).map_err(|e| anyhow!("{e}"))?;
    let hits = index.search(query, tenant, k).map_err(|e| anyhow!("{e}"))?;
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
            println!(
                "{:>2}. {:.3}  {}  {}\n    {}\n",
                rank + 1,
                hit.score,
                hit.chunk_id,
                hit.title,
                preview
            );
        }
    }
    Ok(())
}

fn stats(data_dir: &Path, tenant: Option<&str>, json: bool) -> anyhow::Result<()> {
    let index = SearchIndex::open(data_dir).map_err(|e| anyhow!("{e}"))?;
    let stats = index.stats(tenant).map_err(|e| anyhow!("{e}"))?;
    let letters = medkg_connectors::DeadLetterSink::read_all(data_dir)
        .context("cannot read the dead letters")?;
    if json {
        println!(
            "{}",
            serde_json::json!({"docs": stats.docs, "chunks": stats.chunks, "dead_letters": letters.len()})
        );
    } else {
        println!(
            "docs {}\nchunks {}\ndead letters {}",
            stats.docs,
            stats.chunks,
            letters.len()
        );
    }
    Ok(())
}
