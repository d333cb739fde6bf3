//! Each stage's typed settings, read from the plan once, and the check that
//! this build runs every stage a plan names.

use std::path::Path;
use std::time::Duration;

use medkg_connectors::StreamSpec;
use medkg_operators::fetch::FetchConfig;
use medkg_operators::models::{Device, ModelFiles};
use medkg_operators::parse::{Format, ParseOptions};
use medkg_operators::{ChunkConfig, Chunker};
use medkg_topology::{Plan, PlannedStage, StageKind};
use serde_json::Value;

/// Default cap on one raw record (a JSONL line or a whole file).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 256 << 20;

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
    fn from_stage(
        stage: &PlannedStage,
        default_model: &str,
        default_batch: usize,
        options: &ModelOptions,
    ) -> Result<EncoderSpec, String> {
        let str_of = |key: &str| stage.config.get(key).and_then(Value::as_str);
        let u64_of = |key: &str| stage.config.get(key).and_then(Value::as_u64);
        let device = match options.device {
            Some(device) => device,
            None => str_of("device").unwrap_or("cpu").parse().map_err(|e| in_stage(stage, e))?,
        };
        let needs_dir = !str_of("model").unwrap_or(default_model).ends_with(".onnx");
        let dir = if needs_dir {
            medkg_operators::models::models_dir(options.models.as_deref()).map_err(|e| in_stage(stage, e.message))?
        } else {
            Path::new(".").to_path_buf()
        };
        let files = ModelFiles::resolve(&dir, str_of("model").unwrap_or(default_model), str_of("tokenizer"))
            .map_err(|e| in_stage(stage, e.message))?;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Ok(EncoderSpec {
            files,
            device,
            max_seq_len: u64_of("max_seq_len").unwrap_or(256) as usize,
            max_batch_tokens: u64_of("max_batch_tokens").unwrap_or(default_batch as u64) as usize,
            intra_threads: u64_of("intra_threads")
                .map(|n| n as usize)
                .unwrap_or((cores / options.workers.max(1)).max(1)),
            top_k: u64_of("top_k").unwrap_or(128) as usize,
            threshold: stage.config.get("threshold").and_then(Value::as_f64).unwrap_or(0.0) as f32,
        })
    }
}

impl StageSettings {
    /// Reads every stage's `config` (already validated by the topology).
    pub fn from_plan(plan: &Plan, options: &ModelOptions) -> Result<StageSettings, String> {
        let mut max_record_bytes = DEFAULT_MAX_RECORD_BYTES;
        let mut stages = Vec::new();
        for stage in &plan.stages {
            let u64_of = |key: &str| stage.config.get(key).and_then(Value::as_u64);
            let config = match stage.kind {
                StageKind::Ingest => {
                    let cap = u64_of("max_record_bytes").map(|b| b as usize).unwrap_or(DEFAULT_MAX_RECORD_BYTES);
                    max_record_bytes = max_record_bytes.min(cap);
                    StageConfig::Ingest { max_record_bytes: cap }
                }
                StageKind::Fetch | StageKind::Download => {
                    let mut config = FetchConfig::default();
                    if stage.kind == StageKind::Download {
                        config.url_field = "pdf_url".into();
                        config.max_bytes = 64 << 20;
                    }
                    let str_of = |key: &str| stage.config.get(key).and_then(Value::as_str).map(str::to_string);
                    config.url_field = str_of("url_field").unwrap_or(config.url_field);
                    config.id_field = str_of("id_field").unwrap_or(config.id_field);
                    config.max_bytes = u64_of("max_bytes").map_or(config.max_bytes, |b| b as usize);
                    config.max_in_flight = u64_of("max_in_flight").map_or(config.max_in_flight, |n| n as usize);
                    if let Some(hosts) = stage.config.get("allow_hosts").and_then(Value::as_array) {
                        config.allow_hosts = hosts.iter().filter_map(Value::as_str).map(str::to_string).collect();
                    }
                    match stage.kind {
                        StageKind::Download => {
                            let output =
                                str_of("output").map(|o| o.parse()).transpose().map_err(|e| in_stage(stage, e))?;
                            StageConfig::Download(config, output)
                        }
                        _ => StageConfig::Fetch(config),
                    }
                }
                StageKind::Parse => {
                    let mut options = ParseOptions::default();
                    if let Some(format) = stage.config.get("format").and_then(Value::as_str) {
                        options.format = format.parse::<Format>().map_err(|e| in_stage(stage, e))?;
                    }
                    if let Some(cap) = u64_of("max_doc_bytes") {
                        options.max_doc_bytes = cap as usize;
                    }
                    StageConfig::Parse(options)
                }
                StageKind::Chunk => {
                    let config = ChunkConfig::from_config(&stage.config).map_err(|e| in_stage(stage, e))?;
                    StageConfig::Chunk(Chunker::new(config).map_err(|e| in_stage(stage, e))?)
                }
                StageKind::Embed => {
                    StageConfig::Embed(EncoderSpec::from_stage(stage, "all-MiniLM-L6-v2", 8192, options)?)
                }
                StageKind::Splade => StageConfig::Splade(EncoderSpec::from_stage(stage, "splade-tiny", 4096, options)?),
                StageKind::Index => StageConfig::Index {
                    splade: backend(stage, "splade"),
                    dense: backend(stage, "dense"),
                    commit_interval: stage
                        .config
                        .get("commit_interval")
                        .and_then(Value::as_str)
                        .and_then(medkg_topology::parse_duration)
                        .unwrap_or(Duration::from_secs(1)),
                    writer_memory_bytes: u64_of("writer_memory_mb").map(|m| m as usize).unwrap_or(64) << 20,
                },
                other => {
                    return Err(format!(
                        "stage `{}`: type {} is not implemented by this build",
                        stage.name,
                        other.name()
                    ))
                }
            };
            stages.push(config);
        }
        Ok(StageSettings { max_record_bytes, stages })
    }
}

fn backend(stage: &PlannedStage, name: &str) -> bool {
    stage.config.get("backends").and_then(Value::as_array).is_some_and(|b| b.iter().any(|x| x.as_str() == Some(name)))
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
            if backend(stage, backend_name) && !upstream.contains(&kind) {
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
