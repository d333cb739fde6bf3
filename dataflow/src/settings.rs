//! Each stage's typed settings, read from the plan once, and the check that
//! this build runs every stage a plan names.

use std::path::Path;
use std::time::Duration;

use medkg_connectors::StreamSpec;
use medkg_operators::fetch::FetchConfig;
use medkg_operators::models::{Device, ModelFiles};
use medkg_operators::parse::{Format, ParseOptions};
use medkg_operators::{ChunkConfig, Chunker};
use medkg_topology::StageSettings as Settings;
use medkg_topology::{FetchSettings, IngestSettings, ModelSettings, Plan, PlannedStage, StageKind};

/// Settings of every stage of a plan, read once.
#[derive(Clone, Debug)]
pub struct StageSettings {
    /// Cap on raw records, from the `ingest` stage (or the default).
    pub max_record_bytes: usize,
    /// Per stage, in plan order.
    pub stages: Vec<StageConfig>,
}

/// One stage's typed settings.
#[derive(Clone, Debug)]
pub enum StageConfig {
    /// `ingest`
    Ingest {
        /// Records above this size are dead-lettered.
        max_record_bytes: usize,
    },
    /// `fetch`
    Fetch(FetchConfig),
    /// `download`: the call's settings, and where downloaded records go
    /// (default: `dir:DATA_DIR/downloaded`, or `kafka:pdf.downloaded.v1`
    /// beside a Kafka source).
    Download(FetchConfig, Option<StreamSpec>),
    /// `parse`
    Parse(ParseOptions),
    /// `chunk`
    Chunk(Chunker),
    /// `embed`
    Embed(EncoderSpec),
    /// `splade`
    Splade(EncoderSpec),
    /// `index`
    Index {
        /// Least time between two commits.
        commit_interval: Duration,
        /// Indexing memory per shard.
        writer_memory_bytes: usize,
        /// Write SPLADE terms (needs a `splade` stage upstream).
        splade: bool,
        /// Write dense vectors to FAISS (needs an `embed` stage upstream).
        dense: bool,
    },
}

/// A model stage's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderSpec {
    /// The model and its tokenizer.
    pub files: ModelFiles,
    /// Where it runs.
    pub device: Device,
    /// Truncation.
    pub max_seq_len: usize,
    /// Padded tokens per batch.
    pub max_batch_tokens: usize,
    /// ONNX Runtime intra-op threads per worker.
    pub intra_threads: usize,
    /// SPLADE: terms kept per chunk.
    pub top_k: usize,
    /// SPLADE: least weight kept.
    pub threshold: f32,
}

/// Options of a run that reach into stage settings.
#[derive(Clone, Debug, Default)]
pub struct ModelOptions {
    /// `--models DIR`.
    pub models: Option<std::path::PathBuf>,
    /// `--device`, overriding every model stage's `device`.
    pub device: Option<Device>,
    /// Worker threads (to share the cores among sessions).
    pub workers: usize,
}

impl EncoderSpec {
    fn new(stage: &PlannedStage, model: &ModelSettings, options: &ModelOptions) -> Result<EncoderSpec, String> {
        let device = match options.device {
            Some(device) => device,
            None => model.device.parse().map_err(|e| in_stage(stage, e))?,
        };
        let dir = match model.model.ends_with(".onnx") {
            true => Path::new(".").to_path_buf(),
            false => medkg_operators::models::models_dir(options.models.as_deref())
                .map_err(|e| in_stage(stage, e.message))?,
        };
        let files = ModelFiles::resolve(&dir, &model.model, model.tokenizer.as_deref())
            .map_err(|e| in_stage(stage, e.message))?;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Ok(EncoderSpec {
            files,
            device,
            max_seq_len: model.max_seq_len,
            max_batch_tokens: model.max_batch_tokens,
            intra_threads: model.intra_threads.unwrap_or((cores / options.workers.max(1)).max(1)),
            top_k: model.top_k,
            threshold: model.threshold,
        })
    }
}

impl StageSettings {
    /// Turns every stage's typed settings (decoded once by the topology)
    /// into what its operator takes.
    pub fn from_plan(plan: &Plan, options: &ModelOptions) -> Result<StageSettings, String> {
        let mut max_record_bytes = IngestSettings::DEFAULT_MAX_RECORD_BYTES;
        let mut stages = Vec::new();
        for stage in &plan.stages {
            let config = match &stage.settings {
                Settings::Ingest(ingest) => {
                    max_record_bytes = max_record_bytes.min(ingest.max_record_bytes);
                    StageConfig::Ingest { max_record_bytes: ingest.max_record_bytes }
                }
                Settings::Fetch(fetch) => StageConfig::Fetch(fetch_config(fetch)),
                Settings::Download(fetch) => StageConfig::Download(fetch_config(fetch), fetch.output.clone()),
                Settings::Parse(parse) => StageConfig::Parse(ParseOptions {
                    format: parse.format.parse::<Format>().map_err(|e| in_stage(stage, e))?,
                    max_doc_bytes: parse.max_doc_bytes,
                    ..ParseOptions::default()
                }),
                Settings::Chunk(chunk) => {
                    let config = ChunkConfig {
                        split_by: chunk.split_by.parse().map_err(|e| in_stage(stage, e))?,
                        split_length: chunk.split_length,
                        split_overlap: chunk.split_overlap,
                        respect_sentence_boundary: chunk.respect_sentence_boundary,
                    };
                    StageConfig::Chunk(Chunker::new(config).map_err(|e| in_stage(stage, e))?)
                }
                Settings::Embed(model) => StageConfig::Embed(EncoderSpec::new(stage, model, options)?),
                Settings::Splade(model) => StageConfig::Splade(EncoderSpec::new(stage, model, options)?),
                Settings::Index(index) => StageConfig::Index {
                    splade: index.has("splade"),
                    dense: index.has("dense"),
                    commit_interval: index.commit_interval,
                    writer_memory_bytes: index.writer_memory_mb.saturating_mul(1 << 20),
                },
                Settings::Extract(_) | Settings::Kg(_) => {
                    return Err(format!(
                        "stage `{}`: type {} is not implemented by this build",
                        stage.name,
                        stage.kind.name()
                    ))
                }
            };
            stages.push(config);
        }
        Ok(StageSettings { max_record_bytes, stages })
    }
}

fn fetch_config(fetch: &FetchSettings) -> FetchConfig {
    FetchConfig {
        url_field: fetch.url_field.clone(),
        id_field: fetch.id_field.clone(),
        max_bytes: fetch.max_bytes,
        allow_hosts: fetch.allow_hosts.clone(),
        max_in_flight: fetch.max_in_flight,
    }
}

/// The stage types (and index backends) this build runs.
pub fn check_implemented(plan: &Plan) -> Result<(), String> {
    let mut missing = Vec::new();
    for stage in &plan.stages {
        match stage.kind {
            StageKind::Ingest
            | StageKind::Fetch
            | StageKind::Download
            | StageKind::Parse
            | StageKind::Chunk
            | StageKind::Embed
            | StageKind::Splade
            | StageKind::Index => {}
            other => missing.push(format!("{} (stage `{}`)", other.name(), stage.name)),
        }
    }
    // The gate this build has joins downloaded PDFs with their IR.
    for gate in &plan.gates {
        if gate.condition != "ir_ready" || plan.stages[gate.after].kind != StageKind::Download {
            missing.push(format!(
                "gate `{}` (condition `{}` after a {} stage; this build gates `ir_ready` after `download`)",
                gate.name,
                gate.condition,
                plan.stages[gate.after].kind.name()
            ));
        }
    }
    let indexes = plan.stages.iter().filter(|s| s.kind == StageKind::Index).count();
    if indexes > 1 {
        return Err(format!(
            "pipeline `{}` ({}) has {indexes} index stages; one data directory holds one index",
            plan.name, plan.file
        ));
    }
    if missing.is_empty() {
        check_backends(plan)
    } else {
        Err(format!(
            "pipeline `{}` ({}) uses what this build does not implement yet: {}",
            plan.name,
            plan.file,
            missing.join(", ")
        ))
    }
}

/// Checks that an index backend has the stage that feeds it upstream.
fn check_backends(plan: &Plan) -> Result<(), String> {
    for (i, stage) in plan.stages.iter().enumerate() {
        if stage.kind != StageKind::Index {
            continue;
        }
        let mut upstream = Vec::new();
        let mut stack = stage.inputs.clone();
        while let Some(j) = stack.pop() {
            upstream.push(plan.stages[j].kind);
            stack.extend(plan.stages[j].inputs.iter().copied());
        }
        for (backend_name, kind) in [("dense", StageKind::Embed), ("splade", StageKind::Splade)] {
            let indexes = match &stage.settings {
                Settings::Index(index) => index.has(backend_name),
                _ => false,
            };
            if indexes && !upstream.contains(&kind) {
                return Err(format!(
                    "{}: stage `{}` indexes {backend_name} but no {} stage feeds it",
                    stage.location,
                    plan.stages[i].name,
                    kind.name()
                ));
            }
        }
    }
    Ok(())
}

fn in_stage(stage: &PlannedStage, error: String) -> String {
    format!("{}: stage `{}`: {error}", stage.location, stage.name)
}
