//! One file per subcommand, and what several of them share: loading a
//! pipeline with its policies, and turning arguments into run options.

pub mod bench;
pub mod freshness;
pub mod graph;
pub mod ledger;
pub mod pdf_parser;
pub mod produce;
pub mod run;
pub mod search;
pub mod serve;
pub mod stats;
pub mod validate;

use std::path::{Path, PathBuf};

use anyhow::bail;
use medkg_dataflow::{AdapterSource, KafkaSource, RunOptions};
use medkg_topology::{Plan, Policies, StageKind, StageSettings, ValidationErrors};

use crate::cli::{AdapterArgs, KafkaArgs, ModelArgs, SourceSpec};

/// The policies for a pipeline: `--resilience`, else `resilience.yaml` in
/// the pipeline's parent directory (config/), else the built-in ones.
fn policies_for(pipeline: &Path, explicit: Option<&Path>) -> Result<Policies, ValidationErrors> {
    if let Some(path) = explicit {
        return Policies::from_path(path);
    }
    let beside = pipeline.parent().and_then(Path::parent).map(|config| config.join("resilience.yaml"));
    match beside {
        Some(path) if path.is_file() => Policies::from_path(&path),
        _ => Ok(Policies::builtin()),
    }
}

pub fn load_plan(pipeline: &Path, resilience: Option<&Path>) -> Result<Plan, ValidationErrors> {
    let policies = policies_for(pipeline, resilience)?;
    Plan::from_path(pipeline, &policies)
}

/// What a pipeline run needs before the run's own options (telemetry,
/// cluster, gates) are added.
pub struct Job<'a> {
    pub pipeline: &'a Path,
    /// `None`: the pipeline's ingest `source:`.
    pub source: Option<&'a SourceSpec>,
    pub data_dir: PathBuf,
    pub workers: usize,
    pub tenant: String,
    pub from_start: bool,
    pub resilience: Option<&'a Path>,
    pub models: &'a ModelArgs,
    pub kafka: &'a KafkaArgs,
    pub adapter: &'a AdapterArgs,
}

/// The options of a run of `job`.
pub fn run_options(job: Job<'_>) -> anyhow::Result<RunOptions> {
    let Job { pipeline, source, data_dir, workers, tenant, from_start, resilience, models, kafka, adapter } = job;
    let plan = load_plan(pipeline, resilience).map_err(anyhow::Error::new)?;
    let ingest = plan.stages.iter().find(|s| s.kind == StageKind::Ingest);
    let configured = ingest.and_then(|stage| match &stage.settings {
        StageSettings::Ingest(settings) => settings.source.clone(),
        _ => None,
    });
    let source = match (source, configured) {
        (Some(source), _) => source.clone(),
        (None, Some(spec)) => SourceSpec::Adapter(spec),
        (None, None) => bail!("no source: give --source, or a `source:` in the pipeline's ingest stage"),
    };
    if adapter.any() && !matches!(source, SourceSpec::Adapter(_)) {
        bail!("--base-url, --since, --follow, --interval, --email, --api-key and --page-size need an API source");
    }
    let (path, kafka, adapter) = match source {
        SourceSpec::File(path) => (path, None, None),
        SourceSpec::Kafka(topic) => {
            (PathBuf::new(), Some(KafkaSource { topic, settings: kafka.settings()?, stop_after: None }), None)
        }
        SourceSpec::Adapter(spec) => {
            let spec = adapter.apply(spec)?;
            // The ingest stage's policy, unless it is the default: then `polite-api`.
            let policies = policies_for(pipeline, resilience).map_err(anyhow::Error::new)?;
            let policy = match ingest.map(|s| &s.policy).filter(|p| p.name != "default") {
                Some(policy) => policy.clone(),
                None => policies
                    .by_name
                    .get("polite-api")
                    .or(policies.by_name.get("default"))
                    .cloned()
                    .unwrap_or_else(|| Policies::builtin().by_name["polite-api"].clone()),
            };
            (PathBuf::new(), None, Some(AdapterSource { spec, policy }))
        }
    };
    if workers == 0 {
        bail!("-w must be at least 1");
    }
    Ok(RunOptions {
        kafka,
        adapter,
        workers,
        tenant,
        from_start,
        models: models.models.clone(),
        device: models.device()?,
        ..RunOptions::new(plan, path, data_dir)
    })
}
