//! What to run, and what a finished run reports.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use medkg_connectors::kafka::KafkaSettings;
use medkg_connectors::StreamSpec;
use medkg_operators::graph::GraphTarget;
use medkg_operators::models::Device;
use medkg_topology::Plan;

use crate::telemetry::TelemetryOptions;

/// What to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The validated pipeline.
    pub plan: Plan,
    /// The file or directory to read.
    pub source: PathBuf,
    /// Where indexes, checkpoints and dead letters live.
    pub data_dir: PathBuf,
    /// Worker threads.
    pub workers: usize,
    /// Tenant for records without one of their own.
    pub tenant: String,
    /// Ignore the checkpoint and read the source from its start.
    pub from_start: bool,
    /// Models directory (`--models`; else `MEDKG_MODELS`, else ../shared/models).
    pub models: Option<PathBuf>,
    /// Device for every model stage (`--device`), overriding the pipeline.
    pub device: Option<Device>,
    /// Read this Kafka topic (long-running) instead of `source`.
    pub kafka: Option<KafkaSource>,
    /// Page through this public API instead of `source` (to its end, or
    /// until stopped when it follows).
    pub adapter: Option<AdapterSource>,
    /// Set it to stop a long-running (Kafka) run: it drains, commits and
    /// returns. SIGTERM and SIGINT set it too.
    pub stop: Option<Arc<AtomicBool>>,
    /// Run as process `process` of a timely cluster (`-n/-p/-h`): `workers`
    /// threads in each of `addresses.len()` processes, talking over TCP.
    pub cluster: Option<Cluster>,
    /// Metrics, events, lineage.
    pub telemetry: TelemetryOptions,
    /// Where IR-ready records come from for the pipeline's gates (default
    /// `kafka:pdf.ir-ready.v1` for a Kafka source, else `dir:DATA_DIR/ir-ready`).
    pub ir_ready: Option<StreamSpec>,
    /// Where `kg` stages keep the graph (`--graph`), overriding the pipeline.
    pub graph: Option<GraphTarget>,
}

impl RunOptions {
    /// A batch run of `plan` over the file or folder `source` into
    /// `data_dir`: one worker, tenant `default`, from the checkpoint, the
    /// default models on their stages' devices, no `/metrics` and no
    /// events, the job ledger on. Set the fields to change any of it.
    pub fn new(plan: Plan, source: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            plan,
            source: source.into(),
            data_dir: data_dir.into(),
            workers: 1,
            tenant: "default".into(),
            from_start: false,
            models: None,
            device: None,
            kafka: None,
            adapter: None,
            stop: None,
            cluster: None,
            telemetry: TelemetryOptions::default(),
            ir_ready: None,
            graph: None,
        }
    }

    /// The brokers the run's Kafka outputs and side inputs use (events, the
    /// downloaded stream, the IR-ready stream): the Kafka source's, else
    /// `--brokers` given beside a file source.
    pub fn kafka_settings(&self) -> Option<&KafkaSettings> {
        self.kafka.as_ref().map(|k| &k.settings).or(self.telemetry.kafka.as_ref())
    }

    /// Where a side stream lives unless the pipeline says otherwise: beside
    /// a Kafka source, topic `topic`; beside a file source, `DATA_DIR/folder`.
    pub fn default_stream(&self, topic: &str, folder: &str) -> StreamSpec {
        match &self.kafka {
            Some(_) => StreamSpec::Kafka(topic.to_string()),
            None => StreamSpec::Dir(self.data_dir.join(folder)),
        }
    }
}

/// This process's place in a timely cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// This process, from 0.
    pub process: usize,
    /// `host:port` of every process, in process order.
    pub addresses: Vec<String>,
}

impl Cluster {
    /// Reads a hostfile: one `host:port` a line, process 0 first.
    pub fn from_hostfile(path: &std::path::Path, processes: usize, process: usize) -> anyhow::Result<Cluster> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read the hostfile {}", path.display()))?;
        let addresses: Vec<String> =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
        if addresses.len() < processes {
            bail!("{} lists {} addresses for {processes} processes", path.display(), addresses.len());
        }
        if process >= processes {
            bail!("process {process} does not exist in a cluster of {processes}");
        }
        Ok(Cluster { process, addresses: addresses[..processes].to_vec() })
    }

    /// The timely configuration of this process.
    pub(crate) fn config(&self, threads: usize) -> timely::Config {
        timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads,
                process: self.process,
                addresses: self.addresses.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        }
    }
}

/// A Kafka topic consumed by a consumer group.
#[derive(Clone, Debug)]
pub struct KafkaSource {
    /// The topic.
    pub topic: String,
    /// Brokers, group and librdkafka properties.
    pub settings: KafkaSettings,
    /// Drain and return once this many records are read (`medkg bench`);
    /// `None`: run until stopped.
    pub stop_after: Option<u64>,
}

/// A public API paged through by an adapter ([`medkg_connectors::adapter`]).
#[derive(Clone, Debug)]
pub struct AdapterSource {
    /// What to page through, and how.
    pub spec: medkg_topology::AdapterSpec,
    /// The policy every request runs under (the ingest stage's, else
    /// `polite-api`); the API's own documented limit caps its rate.
    pub policy: medkg_topology::Policy,
}

/// What a finished run did.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RunSummary {
    /// Documents that reached the sinks.
    pub docs: u64,
    /// Their chunks.
    pub chunks: u64,
    /// Dead-lettered records and documents.
    pub failed: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// The run's id (in events, lineage, logs and the ledger).
    pub run_id: String,
    /// `docs / seconds`.
    pub docs_per_sec: f64,
}
