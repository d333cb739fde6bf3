//! The IR-ready side input of a pipeline's gates.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use medkg_connectors::kafka::{KafkaInput, KafkaSettings, IR_READY_TOPIC};
use medkg_connectors::{complete_json_files, Position, RawPayload, StreamSpec};

use super::RawInput;
use crate::shared::Shared;

/// The IR-ready input of the pipeline's gates: a folder of IR-ready
/// records (JSON files, read by worker 0), or a Kafka topic (each worker
/// reads a fixed share of its partitions and commits the offsets of group
/// `GROUP.ir-ready`; see [`KafkaInput::assign`]). Records go
/// to the gates exchanged by document id.
pub(crate) struct IrReadyFeed {
    input: Option<RawInput>,
    source: IrReadySource,
    /// The epoch records are sent at.
    pub epoch: u64,
}

enum IrReadySource {
    Dir { dir: PathBuf, seen: HashSet<PathBuf>, leader: bool, scanned: Option<Instant> },
    Kafka(KafkaInput),
}

impl IrReadyFeed {
    /// Opens the run's IR-ready stream (`--ir-ready`; by default it lives
    /// where the source does: `kafka:pdf.ir-ready.v1` beside a Kafka
    /// source, else `dir:DATA_DIR/ir-ready`).
    pub fn open(shared: &Shared, input: RawInput, worker: usize, peers: usize) -> anyhow::Result<IrReadyFeed> {
        let options = &shared.options;
        let spec = match &options.ir_ready {
            Some(spec) => spec.clone(),
            None => options.default_stream(IR_READY_TOPIC, "ir-ready"),
        };
        let source = match spec {
            StreamSpec::Dir(dir) => {
                IrReadySource::Dir { dir, seen: HashSet::new(), leader: worker == 0, scanned: None }
            }
            StreamSpec::Kafka(topic) => {
                let settings =
                    options.kafka_settings().ok_or_else(|| anyhow!("--ir-ready kafka:{topic} needs --brokers"))?;
                let settings = KafkaSettings { group: format!("{}.ir-ready", settings.group), ..settings.clone() };
                IrReadySource::Kafka(KafkaInput::assign(&settings, &topic, worker, peers)?)
            }
        };
        Ok(IrReadyFeed { input: Some(input), source, epoch: 0 })
    }

    /// Moves the input to `epoch`.
    pub fn advance(&mut self, epoch: u64) {
        if epoch > self.epoch {
            if let Some(input) = &mut self.input {
                input.advance_to(epoch);
            }
            self.epoch = epoch;
        }
    }

    /// Sends the records that came since the last poll: at most 1,000 Kafka
    /// messages, or (worker 0, at most every 100 ms) the folder's new files.
    /// A file is read once it is complete: writers rename it into place, and
    /// names starting with `.` are skipped.
    pub fn poll(&mut self) {
        let Some(input) = &mut self.input else { return };
        match &mut self.source {
            IrReadySource::Kafka(kafka) => {
                for _ in 0..1000 {
                    let Some(mut payload) = kafka.poll(self.epoch, Duration::ZERO) else { break };
                    // The gates route by the record's own id, whatever the message key.
                    let (doc_id, tenant_id) = ids_of(&payload.bytes);
                    payload.key = doc_id.or(payload.key);
                    payload.tenant = tenant_id.or(payload.tenant);
                    input.send(payload);
                }
            }
            IrReadySource::Dir { dir, seen, leader, scanned } => {
                if !*leader || scanned.is_some_and(|at| at.elapsed() < Duration::from_millis(100)) {
                    return;
                }
                *scanned = Some(Instant::now());
                for path in complete_json_files(dir) {
                    if seen.contains(&path) {
                        continue;
                    }
                    let Ok(bytes) = std::fs::read(&path) else { continue };
                    seen.insert(path.clone());
                    let (doc_id, tenant_id) = ids_of(&bytes);
                    input.send(RawPayload {
                        source: format!("dir:{}", dir.display()),
                        key: doc_id,
                        name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
                        position: Position {
                            ordinal: 0,
                            file: path.display().to_string(),
                            line: None,
                            partition: None,
                        },
                        tombstone: false,
                        tenant: tenant_id,
                        bytes,
                    });
                }
            }
        }
    }

    /// Stops reading (offsets of what was read can still be committed).
    pub fn close(&mut self) {
        self.input = None;
    }

    /// Commits the Kafka offsets of IR-ready records read before `frontier`:
    /// by then each is joined and indexed, or waits durably at its gate.
    pub fn commit_durable(&self, frontier: u64, before: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        match &self.source {
            IrReadySource::Kafka(kafka) => kafka.commit_durable(frontier, before),
            IrReadySource::Dir { .. } => Ok(()),
        }
    }
}

/// An IR-ready record's `doc_id` and `tenant_id`, if it is JSON that has them
/// (the gate reports what else is wrong with it).
fn ids_of(bytes: &[u8]) -> (Option<String>, Option<String>) {
    let fields: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let text = |k: &str| fields.get(k).and_then(|v| v.as_str()).map(str::to_string);
    (text("doc_id"), text("tenant_id"))
}
