//! Each stage's typed settings, read from the plan once, and the check that
//! this build runs every stage a plan names.

use std::path::Path;

use medkg_connectors::StreamSpec;
use medkg_operators::fetch::FetchConfig;
use medkg_operators::graph::GraphTarget;
use medkg_operators::models::{Device, ModelFiles};
use medkg_operators::parse::{Format, ParseOptions};
use medkg_operators::{ChunkConfig, Chunker};
use medkg_topology::StageSettings as Settings;
use medkg_topology::{
    ChunkSettings, FetchSettings, IngestSettings, ModelSettings, ParseSettings, Plan, PlannedStage, StageKind,
};

use crate::ops::records::{self, factory, Records};
use crate::options::RunOptions;

/// Settings of every stage of a plan, read once.
#[derive(Clone)]
pub(crate) struct StageSettings {
    /// Cap on raw records, from the `ingest` stage (or the default).
    pub max_record_bytes: usize,
    /// Per stage, in plan order.
    pub stages: Vec<StageConfig>,
}

/// One stage's operator settings (the topology's typed settings, turned
/// into what the operators take).
#[derive(Clone)]
pub(crate) enum StageConfig {
    /// A stateless stage: how each worker makes its logic.
    Records(Records),
    /// `fetch`
    Fetch(FetchConfig),
    /// `download`: the call's settings, and where downloaded records go
    /// (default: `dir:DATA_DIR/downloaded`, or `kafka:pdf.downloaded.v1`
    /// beside a Kafka source).
    Download(FetchConfig, Option<StreamSpec>),
    /// `embed`
    Embed(EncoderSpec),
    /// `splade`
    Splade(EncoderSpec),
    /// `index`
    Index {
        /// When to commit once the frontier has passed.
        commit_interval: medkg_topology::CommitInterval,
        /// Indexing memory per shard.
        writer_memory_bytes: usize,
        /// Write SPLADE terms (needs a `splade` stage upstream).
        splade: bool,
        /// Write dense vectors to FAISS (needs an `embed` stage upstream).
        dense: bool,
    },
    /// `extract`
    Extract {
        /// The vocabulary file.
        vocabulary: std::path::PathBuf,
        /// Claims below it are left out.
        min_confidence: f32,
    },
    /// `kg`: where the graph is kept.
    Kg { target: GraphTarget },
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
pub struct StageContext {
    /// `--models DIR`.
    pub models: Option<std::path::PathBuf>,
    /// `--device`, overriding every model stage's `device`.
    pub device: Option<Device>,
    /// Worker threads (to share the cores among sessions).
    pub workers: usize,
    /// The tenant of records that name none.
    pub tenant: String,
    /// `--graph`, overriding every `kg` stage's store.
    pub graph: Option<GraphTarget>,
}

impl StageContext {
    /// What a run's options say about its stages.
    pub fn of(options: &RunOptions) -> StageContext {
        StageContext {
            models: options.models.clone(),
            device: options.device,
            workers: options.workers.max(1),
            tenant: options.tenant.clone(),
            graph: options.graph.clone(),
        }
    }
}

impl EncoderSpec {
    fn new(stage: &PlannedStage, model: &ModelSettings, options: &StageContext) -> Result<EncoderSpec, String> {
        let device = match options.device {
            Some(device) => device,
            None => model.device.parse().map_err(|e| in_stage(stage, e))?,
        };
        let dir = match model.model.ends_with(".onnx") {
            true => Path::new(".").to_path_buf(),
            false => medkg_operators::models::models_dir(options.models.as_deref())
                .map_err(|e| in_stage(stage, e.message))?,
        };
        let name = variant(model, device).map_err(|e| in_stage(stage, e))?;
        let files =
            ModelFiles::resolve(&dir, &name, model.tokenizer.as_deref()).map_err(|e| in_stage(stage, e.message))?;
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

/// The model file a stage's `model` and `precision` name: `{model}.{precision}`
/// in the models directory, the name itself for `fp32`.
fn variant(model: &ModelSettings, device: Device) -> Result<String, String> {
    match model.precision.as_str() {
        "fp32" => Ok(model.model.clone()),
        _ if model.model.ends_with(".onnx") => Err(format!(
            "precision {} picks a variant of a model name, and `{}` is a file already: name the variant's file, or use a name",
            model.precision, model.model
        )),
        "int8" if device == Device::Cuda => Err(
            "precision int8 is for device cpu (its dynamically quantized MatMuls run on ONNX Runtime's CPU kernels): use fp16 on cuda".into(),
        ),
        precision => Ok(format!("{}.{precision}", model.model)),
    }
}

impl StageSettings {
    /// Turns every stage's typed settings (decoded once by the topology)
    /// into what its operator takes.
    pub fn from_plan(plan: &Plan, options: &StageContext) -> Result<StageSettings, String> {
        let mut max_record_bytes = IngestSettings::DEFAULT_MAX_RECORD_BYTES;
        let mut stages = Vec::new();
        for stage in &plan.stages {
            let config = match &stage.settings {
                // The stateless stages: one line each.
                Settings::Ingest(ingest) => {
                    let cap = ingest.max_record_bytes;
                    max_record_bytes = max_record_bytes.min(cap);
                    StageConfig::Records(Records::RawToRaw(factory(move || records::ingest(cap))))
                }
                Settings::Parse(parse) => {
                    let parse = parse_options(stage, parse, &options.tenant)?;
                    StageConfig::Records(Records::RawToDocs(factory(move || records::parse(parse.clone()))))
                }
                Settings::Chunk(chunk) => {
                    let chunker = chunker(stage, chunk)?;
                    StageConfig::Records(Records::DocsToChunks(factory(move || records::chunk(chunker.clone()))))
                }
                Settings::Fetch(fetch) => StageConfig::Fetch(fetch_config(fetch)),
                Settings::Download(fetch) => StageConfig::Download(fetch_config(fetch), fetch.output.clone()),
                Settings::Embed(model) => StageConfig::Embed(EncoderSpec::new(stage, model, options)?),
                Settings::Splade(model) => StageConfig::Splade(EncoderSpec::new(stage, model, options)?),
                Settings::Index(index) => StageConfig::Index {
                    splade: index.has("splade"),
                    dense: index.has("dense"),
                    commit_interval: index.commit_interval,
                    writer_memory_bytes: index.writer_memory_mb.saturating_mul(1 << 20),
                },
                Settings::Extract(extract) => {
                    if extract.model != "dictionary" {
                        let message = format!("model `{}`: this build's extractor is `dictionary`", extract.model);
                        return Err(in_stage(stage, message));
                    }
                    let vocabulary = match &extract.vocabulary {
                        Some(path) => std::path::PathBuf::from(path),
                        None => medkg_operators::extract::vocab::default_path().map_err(|e| in_stage(stage, e))?,
                    };
                    StageConfig::Extract { vocabulary, min_confidence: extract.min_confidence as f32 }
                }
                Settings::Kg(kg) => StageConfig::Kg {
                    target: match &options.graph {
                        Some(target) => target.clone(),
                        None => {
                            GraphTarget::of_backend(&kg.backend, kg.uri.as_deref()).map_err(|e| in_stage(stage, e))?
                        }
                    },
                },
            };
            stages.push(config);
        }
        Ok(StageSettings { max_record_bytes, stages })
    }
}

/// A `parse` stage's options; `tenant` for records that name none.
pub(crate) fn parse_options(stage: &PlannedStage, parse: &ParseSettings, tenant: &str) -> Result<ParseOptions, String> {
    Ok(ParseOptions {
        format: parse.format.parse::<Format>().map_err(|e| in_stage(stage, e))?,
        max_doc_bytes: parse.max_doc_bytes,
        default_tenant: tenant.to_string(),
    })
}

/// A `chunk` stage's chunker.
pub(crate) fn chunker(stage: &PlannedStage, chunk: &ChunkSettings) -> Result<Chunker, String> {
    let config = ChunkConfig {
        split_by: chunk.split_by.parse().map_err(|e| in_stage(stage, e))?,
        split_length: chunk.split_length,
        split_overlap: chunk.split_overlap,
        respect_sentence_boundary: chunk.respect_sentence_boundary,
    };
    Chunker::new(config).map_err(|e| in_stage(stage, e))
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
    let mut missing: Vec<String> = Vec::new();
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
    let graphs = plan.stages.iter().filter(|s| s.kind == StageKind::Kg).count();
    if graphs > 1 {
        return Err(format!(
            "pipeline `{}` ({}) has {graphs} kg stages; one data directory holds one graph",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, precision: &str) -> ModelSettings {
        ModelSettings {
            model: name.into(),
            tokenizer: None,
            device: "cpu".into(),
            precision: precision.into(),
            max_seq_len: 256,
            max_batch_tokens: 4096,
            intra_threads: None,
            top_k: 128,
            threshold: 0.0,
        }
    }

    #[test]
    fn precision_picks_the_variant_of_a_model_name() {
        assert_eq!(variant(&model("splade-tiny.pooled", "fp32"), Device::Cpu).unwrap(), "splade-tiny.pooled");
        assert_eq!(variant(&model("splade-tiny.pooled", "int8"), Device::Cpu).unwrap(), "splade-tiny.pooled.int8");
        assert_eq!(variant(&model("all-MiniLM-L6-v2", "fp16"), Device::Cuda).unwrap(), "all-MiniLM-L6-v2.fp16");
        let error = variant(&model("all-MiniLM-L6-v2", "int8"), Device::Cuda).unwrap_err();
        assert!(error.contains("int8 is for device cpu"), "{error}");
        let error = variant(&model("/m/x.onnx", "int8"), Device::Cpu).unwrap_err();
        assert!(error.contains("is a file already"), "{error}");
        assert_eq!(variant(&model("/m/x.onnx", "fp32"), Device::Cpu).unwrap(), "/m/x.onnx");
    }
}
