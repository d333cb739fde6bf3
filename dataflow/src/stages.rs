//! Stage settings read from the plan, and the per-record work of each stage
//! (kept free of timely so the operators in `graph` stay thin).

use std::time::Duration;

use medkg_connectors::{DeadLetter, DeadLetterSink, RawPayload};
use medkg_operators::parse::{Format, ParseOptions};
use medkg_operators::{ChunkConfig, Chunker, StageError};
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
    /// `parse`
    Parse(ParseOptions),
    /// `chunk`
    Chunk(Chunker),
    /// `index`
    Index {
        /// Least time between two commits.
        commit_interval: Duration,
        /// Indexing memory per shard.
        writer_memory_bytes: usize,
    },
}

impl StageSettings {
    /// Reads every stage's `config` (already validated by the topology).
    pub fn from_plan(plan: &Plan) -> Result<StageSettings, String> {
        let mut max_record_bytes = DEFAULT_MAX_RECORD_BYTES;
        let mut stages = Vec::new();
        for stage in &plan.stages {
            let u64_of = |key: &str| stage.config.get(key).and_then(Value::as_u64);
            let config = match stage.kind {
                StageKind::Ingest => {
                    let cap = u64_of("max_record_bytes")
                        .map(|b| b as usize)
                        .unwrap_or(DEFAULT_MAX_RECORD_BYTES);
                    max_record_bytes = max_record_bytes.min(cap);
                    StageConfig::Ingest {
                        max_record_bytes: cap,
                    }
                }
                StageKind::Parse => {
                    let mut options = ParseOptions::default();
                    if let Some(format) = stage.config.get("format").and_then(Value::as_str) {
                        options.format =
                            format.parse::<Format>().map_err(|e| in_stage(stage, e))?;
                    }
                    if let Some(cap) = u64_of("max_doc_bytes") {
                        options.max_doc_bytes = cap as usize;
                    }
                    StageConfig::Parse(options)
                }
                StageKind::Chunk => {
                    let config =
                        ChunkConfig::from_config(&stage.config).map_err(|e| in_stage(stage, e))?;
                    StageConfig::Chunk(Chunker::new(config).map_err(|e| in_stage(stage, e))?)
                }
                StageKind::Index => StageConfig::Index {
                    commit_interval: stage
                        .config
                        .get("commit_interval")
                        .and_then(Value::as_str)
                        .and_then(medkg_topology::parse_duration)
                        .unwrap_or(Duration::from_secs(1)),
                    writer_memory_bytes: u64_of("writer_memory_mb")
                        .map(|m| m as usize)
                        .unwrap_or(64)
                        << 20,
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
        Ok(StageSettings {
            max_record_bytes,
            stages,
        })
    }
}

fn in_stage(stage: &PlannedStage, error: String) -> String {
    format!("{}: stage `{}`: {error}", stage.location, stage.name)
}

/// Writes a dead letter for a payload that failed in `stage`. A dead letter
/// that cannot be written is an unrecoverable error: the record would be lost.
pub(crate) fn dead_letter(
    sink: &mut DeadLetterSink,
    stage: &str,
    payload: &RawPayload,
    doc_id: Option<String>,
    error: &StageError,
) -> Result<(), String> {
    let letter = DeadLetter::new(
        stage,
        &payload.source,
        &payload.position,
        doc_id,
        error.class.as_str(),
        &error.kind,
        &error.message,
        &payload.bytes,
    );
    sink.write(&letter)
        .map_err(|e| format!("cannot write a dead letter to the data directory: {e}"))
}
