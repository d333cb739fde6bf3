//! Compiles a validated [`Plan`] into a timely dataflow graph and runs it.
//!
//! # Time, progress and commits
//!
//! Timestamps are *epochs* (`u64`). The file source numbers its records in
//! source order (the same numbering on every worker), and record `o` belongs
//! to epoch `(o - start) / epoch_records`. Each stage is one timely operator;
//! stateless stages run where the record was read, and stateful stages (the
//! index) receive their input exchanged by document id, so one worker owns a
//! document and its shard.
//!
//! The index operator writes each document as it arrives but holds a
//! capability for every epoch it has written and not yet committed. When its
//! input frontier passes those epochs (and at most once per
//! `commit_interval`) it commits every shard it owns and releases them. A
//! probe after the index therefore reads *durably indexed up to epoch E*,
//! and only then does the source record its position: worker 0 writes the
//! file checkpoint, and every Kafka worker commits the offsets it read in
//! those epochs (see `kafka_source`). A crash at any moment re-reads at most
//! the uncommitted epochs, whose writes are idempotent upserts keyed by
//! tenant and document: nothing lost, nothing doubled.
//!
//! Model stages (`embed`, `splade`) stash each epoch's chunks and encode
//! them in token-budget batches when the frontier passes the epoch. Kafka
//! tombstones travel straight to the index, which orders them against
//! upserts by source position.
#![warn(missing_docs)]

pub mod bench;
mod fetch;
mod gate;
mod graph;
mod kafka_source;
mod models;
mod retriever;
mod stages;
pub mod telemetry;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use medkg_connectors::events::EventSink;
use medkg_connectors::ledger::{Ledger, LedgerBuffer, LedgerWriter};
use medkg_connectors::lineage::{Dataset, LineageSink, RunInfo, RunState};
use medkg_connectors::{Checkpoint, DeadLetter, DeadLetterSink, FileSource};
use medkg_operators::index::Layout;
use medkg_operators::models::Device;
use medkg_topology::{Plan, StageKind};
use telemetry::Telemetry;
use timely::dataflow::{InputHandle, ProbeHandle};

pub use models::{ModelRecord, RecordedModel};
pub use retriever::{Mode, Retriever, FUSION_DEPTH};
pub use stages::{EncoderSpec, ModelOptions, StageConfig, StageSettings};
pub use telemetry::{TelemetryOptions, DEFAULT_METRICS_ADDR};

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
    /// Set it to stop a long-running (Kafka) run: it drains, commits and
    /// returns. SIGTERM and SIGINT set it too.
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Run as process `process` of a timely cluster (`-n/-p/-h`): `workers`
    /// threads in each of `addresses.len()` processes, talking over TCP.
    pub cluster: Option<Cluster>,
    /// Metrics, events, lineage.
    pub telemetry: TelemetryOptions,
    /// Where IR-ready records come from for the pipeline's gates:
    /// `dir:PATH` or `kafka:TOPIC` (default `kafka:pdf.ir-ready.v1` for a
    /// Kafka source, else `dir:DATA_DIR/ir-ready`).
    pub ir_ready: Option<String>,
}

impl RunOptions {
    /// The brokers the run's Kafka outputs and side inputs use (events, the
    /// downloaded stream, the IR-ready stream): the Kafka source's, else
    /// `--brokers` given beside a file source.
    pub fn kafka_settings(&self) -> Option<&medkg_connectors::kafka::KafkaSettings> {
        self.kafka.as_ref().map(|k| &k.settings).or(self.telemetry.kafka.as_ref())
    }
}

/// The first time a probe's frontier holds, `u64::MAX` once it is empty:
/// every epoch below it is done.
pub(crate) fn frontier_of(probe: &ProbeHandle<u64>) -> u64 {
    probe.with_frontier(|f| f.first().copied()).unwrap_or(u64::MAX)
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
}

/// A Kafka topic consumed by a consumer group.
#[derive(Clone, Debug)]
pub struct KafkaSource {
    /// The topic.
    pub topic: String,
    /// Brokers, group and librdkafka properties.
    pub settings: medkg_connectors::kafka::KafkaSettings,
}

/// Live counters of a run, shared with whoever shows progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Records read from the source.
    pub records: AtomicU64,
    /// Documents that reached the pipeline's sinks (for an index: committed).
    pub docs: AtomicU64,
    /// Their chunks.
    pub chunks: AtomicU64,
    /// Records and documents dead-lettered.
    pub failed: AtomicU64,
    /// Kafka consumer-group lag: messages of the topic not yet durable (each
    /// partition's end minus the group's committed offset), measured every 2 s
    /// on a thread of its own (key 0).
    pub lag: Mutex<std::collections::BTreeMap<usize, u64>>,
    /// Where `/metrics` is served, once it is.
    pub metrics_addr: Mutex<Option<std::net::SocketAddr>>,
}

impl Progress {
    /// Kafka consumer lag, summed over workers (0 for other sources).
    pub fn lag(&self) -> u64 {
        self.lag.lock().map(|l| l.values().sum()).unwrap_or(0)
    }
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
        stages::check_backends(plan)
    } else {
        Err(format!(
            "pipeline `{}` ({}) uses what this build does not implement yet: {}",
            plan.name,
            plan.file,
            missing.join(", ")
        ))
    }
}

/// Runs a pipeline: a file source to completion, a Kafka source until
/// stopped (SIGTERM, SIGINT or [`RunOptions::stop`]).
///
/// `on_progress` is called about five times a second from the calling
/// thread while the workers run.
pub fn run(
    options: RunOptions,
    progress: Arc<Progress>,
    on_progress: impl FnMut(&Progress, Duration),
) -> anyhow::Result<RunSummary> {
    check_implemented(&options.plan).map_err(|e| anyhow!(e))?;
    // HTTP calls, the metrics server and lineage run here, beside the workers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("medkg-io")
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    let lineage = match &options.telemetry.lineage {
        Some(target) => Some(LineageSink::new(target.clone()).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let info = lineage_info(&options);
    let run_id = options.telemetry.run_id.clone();
    let span = tracing::info_span!("run", run_id = %run_id, pipeline = %options.plan.name);
    let _entered = span.enter();
    let report = |state: RunState, error: Option<&str>| {
        if let Some(sink) = &lineage {
            if let Err(e) = runtime.block_on(sink.emit(&info, state, error)) {
                tracing::warn!(error = %e, "cannot send an OpenLineage event");
            }
        }
    };
    report(RunState::Start, None);
    tracing::info!(workers = options.workers, "run started");
    match run_workers(options, progress, on_progress, &runtime) {
        Ok(summary) => {
            report(RunState::Complete, None);
            tracing::info!(docs = summary.docs, failed = summary.failed, seconds = summary.seconds, "run finished");
            Ok(summary)
        }
        Err(e) => {
            report(RunState::Fail, Some(&format!("{e:#}")));
            tracing::error!(error = %format!("{e:#}"), "run failed");
            Err(e)
        }
    }
}

/// The datasets a run reads and writes, for OpenLineage.
fn lineage_info(options: &RunOptions) -> RunInfo {
    let input = match &options.kafka {
        Some(kafka) => Dataset { namespace: format!("kafka://{}", kafka.settings.brokers), name: kafka.topic.clone() },
        None => Dataset { namespace: "file".into(), name: absolute(&options.source) },
    };
    RunInfo {
        run_id: options.telemetry.run_id.clone(),
        namespace: format!("medkg/{}", options.tenant),
        job: options.plan.name.clone(),
        inputs: vec![input],
        outputs: vec![Dataset { namespace: "file".into(), name: absolute(&options.data_dir) }],
    }
}

fn absolute(path: &std::path::Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}

fn run_workers(
    options: RunOptions,
    progress: Arc<Progress>,
    mut on_progress: impl FnMut(&Progress, Duration),
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<RunSummary> {
    let workers = options.workers.max(1);
    let model_options = ModelOptions { models: options.models.clone(), device: options.device, workers };
    let settings = StageSettings::from_plan(&options.plan, &model_options).map_err(|e| anyhow!(e))?;
    // Models load before any worker starts: a missing model or an absent
    // GPU stops the run here, with nothing half-written.
    let encoders = models::load_encoders(&settings, workers).map_err(|e| anyhow!("{e}"))?;
    let source = match options.kafka {
        Some(_) => None,
        None => {
            let source = FileSource::open(&options.source).map_err(|e| anyhow!("cannot read the source: {e}"))?;
            for skipped in source.skipped() {
                eprintln!("medkg: skipping {} (not .jsonl, .json, .xml or .nxml)", skipped.display());
            }
            Some(source)
        }
    };
    let processes = options.cluster.as_ref().map_or(1, |c| c.addresses.len());
    let layout = Layout::open_or_create(&options.data_dir, (workers * processes) as u32).map_err(|e| anyhow!("{e}"))?;
    ModelRecord::from_settings(&settings).reconcile(&options.data_dir).map_err(|e| anyhow!(e))?;
    let start = match (&source, options.from_start) {
        (Some(source), false) => Checkpoint::load(&options.data_dir, &source.name())
            .with_context(|| format!("cannot read the checkpoint in {}", options.data_dir.display()))?
            .map(|c| c.committed)
            .unwrap_or(0),
        _ => 0,
    };
    // A long-running source stops on SIGTERM or SIGINT: drain, commit, exit.
    let stop = options.stop.clone().unwrap_or_default();
    if options.kafka.is_some() || !options.plan.gates.is_empty() {
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, stop.clone()).context("cannot install the signal handler")?;
        }
    }

    let events = EventSink::open(&options.telemetry.events, options.kafka_settings()).map_err(|e| anyhow!(e))?;
    let telemetry =
        Arc::new(Telemetry::new(&options.telemetry.run_id, &options.plan.name, events, options.telemetry.granularity));
    let mut fetchers = Vec::with_capacity(options.plan.stages.len());
    for (stage, config) in options.plan.stages.iter().zip(&settings.stages) {
        fetchers.push(match config {
            StageConfig::Fetch(fetch) => Some(Arc::new({
                telemetry::Watch::calls_out(&telemetry, &stage.name);
                fetch::FetchRuntime::new(fetch, &stage.policy, None)
                    .map_err(|e| anyhow!("stage `{}`: {}", stage.name, e.message))?
            })),
            StageConfig::Download(fetch, output) => Some(Arc::new({
                telemetry::Watch::calls_out(&telemetry, &stage.name);
                // The stream lives where the source does, unless the stage says otherwise.
                let default = match &options.kafka {
                    Some(_) => format!("kafka:{}", medkg_connectors::kafka::DOWNLOADED_TOPIC),
                    None => format!("dir:{}", options.data_dir.join("downloaded").display()),
                };
                let output =
                    fetch::DownloadedOutput::open(output.as_deref().unwrap_or(&default), options.kafka_settings())
                        .map_err(|e| anyhow!("stage `{}`: {e}", stage.name))?;
                let store = medkg_operators::pdf::ObjectStore::new(options.data_dir.join("objects"));
                fetch::FetchRuntime::new(fetch, &stage.policy, Some(fetch::Download { store, output }))
                    .map_err(|e| anyhow!("stage `{}`: {}", stage.name, e.message))?
            })),
            _ => None,
        });
    }
    if let Some(addr) = options.telemetry.metrics_addr {
        match telemetry::serve_metrics(runtime, addr, telemetry.clone(), progress.clone()) {
            Ok(bound) => {
                tracing::info!(addr = %bound, "serving metrics at http://{bound}/metrics");
                if let Ok(mut slot) = progress.metrics_addr.lock() {
                    *slot = Some(bound);
                }
            }
            Err(e) if options.telemetry.metrics_required => bail!("cannot serve metrics on {addr}: {e}"),
            Err(e) => {
                tracing::warn!(addr = %addr, error = %e, "metrics not served (use --metrics-addr to pick another address)")
            }
        }
    }
    let ledger = match options.telemetry.ledger {
        true => {
            let ledger = Ledger::open(&options.data_dir).map_err(|e| anyhow!(e))?;
            Some(LedgerWriter::start(ledger, &options.plan.name, &options.telemetry.run_id).map_err(|e| anyhow!(e))?)
        }
        false => None,
    };
    let (finished_tx, finished_rx) = std::sync::mpsc::channel();
    let shared = Arc::new(Shared {
        gate_pending: Default::default(),
        ledger: ledger.clone(),
        telemetry: telemetry.clone(),
        runtime: runtime.handle().clone(),
        fetchers,
        options: options.clone(),
        settings,
        source,
        layout,
        stop,
        began: Instant::now(),
        start,
        progress: progress.clone(),
        encoders,
        fatal: Mutex::new(None),
        finished: Mutex::new(finished_tx),
    });
    let began = Instant::now();
    let worker_shared = shared.clone();
    let config = match &options.cluster {
        None => timely::Config::process(workers),
        Some(cluster) => timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: workers,
                process: cluster.process,
                addresses: cluster.addresses.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        },
    };
    let lag_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // However run() ends, the monitor stops with it.
    struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let _stop_monitor = StopOnDrop(lag_done.clone());
    let lag_monitor =
        options.kafka.clone().map(|kafka| kafka_source::monitor_lag(kafka, progress.clone(), lag_done.clone()));
    let guards = timely::execute(config, move |worker| {
        let shared = worker_shared.clone();
        let result = run_worker(worker, &shared);
        if let Err(e) = &result {
            shared.fail(e.to_string());
            // timely steps a worker's dataflows until they complete; after a
            // failure they never will (peers stop too): drop them, or this
            // thread would park forever and the run never return.
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
        }
        if let Ok(finished) = shared.finished.lock() {
            let _ = finished.send(());
        }
        result
    })
    .map_err(|e| anyhow!("cannot start the workers: {e}"))?;

    // Report progress while the workers run; `finished` wakes us the moment
    // the last one is done, so the measured time is the workers' own.
    let mut done = 0;
    while done < workers {
        match finished_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(()) => done += 1,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => on_progress(&progress, began.elapsed()),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    lag_done.store(true, Ordering::SeqCst);
    if let Some(monitor) = lag_monitor {
        let _ = monitor.join();
    }
    let mut first_error = None;
    for result in guards.join() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_error = first_error.or(Some(e.to_string())),
            Err(panic) => first_error = first_error.or(Some(format!("a worker panicked: {panic}"))),
        }
    }
    // Whatever happened, events and ledger rows so far reach their sinks.
    let flushed = telemetry.events.flush();
    let closed = ledger.as_ref().map_or(Ok(()), |l| l.close());
    if let Some(fatal) = shared.fatal.lock().map(|f| f.clone()).unwrap_or(None) {
        bail!("{fatal}");
    }
    flushed.map_err(|e| anyhow!(e))?;
    closed.map_err(|e| anyhow!(e))?;
    if let Some(e) = first_error {
        bail!("{e}");
    }
    on_progress(&progress, began.elapsed());
    telemetry.events.flush().map_err(|e| anyhow!(e))?;
    let docs = progress.docs.load(Ordering::SeqCst);
    Ok(RunSummary {
        run_id: options.telemetry.run_id.clone(),
        docs,
        chunks: progress.chunks.load(Ordering::SeqCst),
        failed: progress.failed.load(Ordering::SeqCst),
        seconds,
        docs_per_sec: if seconds > 0.0 { docs as f64 / seconds } else { 0.0 },
    })
}

/// What every worker of the process shares.
pub(crate) struct Shared {
    pub options: RunOptions,
    /// Metrics, events, logs.
    pub telemetry: Arc<Telemetry>,
    /// The I/O runtime (HTTP stages).
    pub runtime: tokio::runtime::Handle,
    /// The process's ledger writer (`None` with `--no-ledger`).
    pub ledger: Option<Arc<LedgerWriter>>,
    /// Documents waiting at this process's gates.
    pub gate_pending: std::sync::atomic::AtomicI64,
    /// Per stage (plan order): a fetch stage's client and policy.
    pub fetchers: Vec<Option<Arc<fetch::FetchRuntime>>>,
    pub settings: StageSettings,
    /// The file source (`None` for Kafka).
    pub source: Option<FileSource>,
    pub layout: Layout,
    /// Set by SIGTERM/SIGINT: a long-running source drains, commits and stops.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    /// When the run began (Kafka epochs are counted from here on every worker).
    pub began: Instant,
    /// First ordinal to read (from the checkpoint).
    pub start: u64,
    pub progress: Arc<Progress>,
    /// Per stage (plan order): its model sessions, one per worker.
    pub encoders: Vec<models::StageEncoders>,
    /// The first unrecoverable error (disk full, index locked...): every worker stops.
    pub fatal: Mutex<Option<String>>,
    /// Each worker says here when it is done.
    finished: Mutex<std::sync::mpsc::Sender<()>>,
}

impl Shared {
    pub(crate) fn fail(&self, message: String) {
        if let Ok(mut fatal) = self.fatal.lock() {
            fatal.get_or_insert(message);
        }
    }

    fn failed(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }
}

/// The input of a worker's dataflow and its two probes: `flow` on what
/// enters the sinks, `committed` on what they have made durable.
pub(crate) struct Feed {
    pub input: InputHandle<u64, timely::container::CapacityContainerBuilder<Vec<medkg_connectors::RawPayload>>>,
    pub flow: ProbeHandle<u64>,
    pub committed: ProbeHandle<u64>,
    pub dead_letters: std::rc::Rc<std::cell::RefCell<DeadLetterSink>>,
    pub books: Books,
    /// The IR-ready input of the pipeline's gates, if it has any.
    pub ir: Option<IrFeed>,
    /// Whether every worker's gates have settled (a file source with gates).
    pub census: Option<Census>,
}

/// The IR-ready input of the pipeline's gates: a folder of IR-ready
/// records (JSON files, read by worker 0), or a Kafka topic (each worker
/// reads a fixed share of its partitions and commits the offsets of group
/// `GROUP.ir-ready`; see [`kafka_source::KafkaInput::assign`]). Records go
/// to the gates exchanged by document id.
pub(crate) struct IrFeed {
    input: Option<IrInput>,
    source: IrSource,
    epoch: u64,
}

type IrInput = InputHandle<u64, timely::container::CapacityContainerBuilder<Vec<medkg_connectors::RawPayload>>>;

enum IrSource {
    Dir { dir: PathBuf, seen: std::collections::HashSet<PathBuf>, leader: bool, scanned: Option<Instant> },
    Kafka(kafka_source::KafkaInput),
}

impl IrFeed {
    /// `dir:PATH` or `kafka:TOPIC`; by default the stream lives where the
    /// source does: `kafka:pdf.ir-ready.v1` for a Kafka source, else
    /// `dir:DATA_DIR/ir-ready`.
    fn open(shared: &Shared, input: IrInput, worker: usize, peers: usize) -> anyhow::Result<IrFeed> {
        let options = &shared.options;
        let spec = match (&options.ir_ready, &options.kafka) {
            (Some(spec), _) => spec.clone(),
            (None, Some(_)) => format!("kafka:{}", medkg_connectors::kafka::IR_READY_TOPIC),
            (None, None) => format!("dir:{}", options.data_dir.join("ir-ready").display()),
        };
        let source = if let Some(dir) = spec.strip_prefix("dir:") {
            IrSource::Dir { dir: PathBuf::from(dir), seen: Default::default(), leader: worker == 0, scanned: None }
        } else if let Some(topic) = spec.strip_prefix("kafka:") {
            let settings =
                options.kafka_settings().ok_or_else(|| anyhow!("--ir-ready kafka:{topic} needs --brokers"))?;
            let settings = medkg_connectors::kafka::KafkaSettings {
                group: format!("{}.ir-ready", settings.group),
                ..settings.clone()
            };
            IrSource::Kafka(kafka_source::KafkaInput::assign(&settings, topic, worker, peers)?)
        } else {
            bail!("--ir-ready `{spec}`: expected dir:PATH or kafka:TOPIC");
        };
        Ok(IrFeed { input: Some(input), source, epoch: 0 })
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
            IrSource::Kafka(kafka) => {
                for _ in 0..1000 {
                    let Some(mut payload) = kafka.poll(self.epoch, Duration::ZERO) else { break };
                    // The gates route by the record's own id, whatever the message key.
                    let (doc_id, tenant_id) = ids_of(&payload.bytes);
                    payload.key = doc_id.or(payload.key);
                    payload.tenant = tenant_id.or(payload.tenant);
                    input.send(payload);
                }
            }
            IrSource::Dir { dir, seen, leader, scanned } => {
                if !*leader || scanned.is_some_and(|at| at.elapsed() < Duration::from_millis(100)) {
                    return;
                }
                *scanned = Some(Instant::now());
                for path in medkg_connectors::complete_json_files(dir) {
                    if seen.contains(&path) {
                        continue;
                    }
                    let Ok(bytes) = std::fs::read(&path) else { continue };
                    seen.insert(path.clone());
                    let (doc_id, tenant_id) = ids_of(&bytes);
                    input.send(medkg_connectors::RawPayload {
                        source: format!("dir:{}", dir.display()),
                        key: doc_id,
                        name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
                        position: medkg_connectors::Position {
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
            IrSource::Kafka(kafka) => kafka.commit_durable(frontier, before),
            IrSource::Dir { .. } => Ok(()),
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

/// Whether the gates of all workers (all processes) have settled: each
/// round, every worker sends whether its own have to every worker; a round
/// is settled once the frontier passes it, and it says yes when all `peers`
/// answers did. A worker's "settled" never turns back (no PDF comes after
/// the downloaded stream has ended), so every worker sees the same first
/// "yes" round and all stop reading IR together.
pub(crate) struct Census {
    input: InputHandle<u64, timely::container::CapacityContainerBuilder<Vec<bool>>>,
    round: u64,
    settled: std::rc::Rc<std::cell::Cell<bool>>,
}

impl Census {
    fn new(worker: &mut timely::worker::Worker) -> Census {
        use timely::dataflow::operators::vec::Broadcast;
        use timely::dataflow::operators::Operator;
        let peers = worker.peers();
        let mut input = InputHandle::new();
        let settled = std::rc::Rc::new(std::cell::Cell::new(false));
        let answer = settled.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let mut rounds: std::collections::BTreeMap<u64, (usize, bool)> = Default::default();
            input.to_stream(scope).broadcast().sink(
                timely::dataflow::channels::pact::Pipeline,
                "census",
                move |(answers, frontier)| {
                    answers.for_each_stamp(|cap, data| {
                        let round = cap.least().copied().unwrap_or_default();
                        let entry = rounds.entry(round).or_insert((0, true));
                        for batch in data {
                            for yes in batch.drain(..) {
                                entry.0 += 1;
                                entry.1 &= yes;
                            }
                        }
                    });
                    while let Some(entry) = rounds.first_entry() {
                        if frontier.frontier().less_equal(entry.key()) {
                            break;
                        }
                        let (count, yes) = entry.remove();
                        if count == peers && yes {
                            answer.set(true);
                        }
                    }
                },
            );
        });
        Census { input, round: 0, settled }
    }

    /// Sends this worker's answer for the current round and opens the next.
    fn report(&mut self, settled: bool) {
        self.input.send(settled);
        self.round += 1;
        self.input.advance_to(self.round);
    }

    /// Some round found every worker settled.
    fn settled(&self) -> bool {
        self.settled.get()
    }
}

/// A worker's bookkeeping between steps: its ledger updates, and (worker 0)
/// how long each epoch takes from its first record to durable.
pub(crate) struct Books {
    shared: Arc<Shared>,
    ledger: std::rc::Rc<std::cell::RefCell<LedgerBuffer>>,
    /// This worker's gates.
    gates: Vec<std::rc::Rc<std::cell::RefCell<gate::GateState>>>,
    /// Epochs opened and not yet durable, with when they opened (worker 0 only).
    jobs: std::collections::BTreeMap<u64, Instant>,
    leader: bool,
}

impl Books {
    /// Epoch `epoch` received its first record.
    pub fn opened(&mut self, epoch: u64) {
        if self.leader {
            self.jobs.entry(epoch).or_insert_with(Instant::now);
        }
    }

    /// Writes due ledger updates; closes the jobs `committed` has passed.
    pub fn tick(&mut self, committed: &ProbeHandle<u64>) -> anyhow::Result<()> {
        for gate in &self.gates {
            gate.borrow_mut().tick(committed);
        }
        let pipeline = &self.shared.telemetry.pipeline;
        self.ledger.borrow_mut().write_if_due(Duration::from_millis(250)).map_err(|e| anyhow!(e))?;
        if self.leader {
            let frontier = frontier_of(committed);
            let metrics = &self.shared.telemetry.metrics;
            while let Some(entry) = self.jobs.first_entry() {
                if *entry.key() >= frontier {
                    break;
                }
                let took = entry.remove().elapsed();
                metrics.job_duration.with_label_values(&[pipeline]).observe(took.as_secs_f64());
            }
            metrics.active_jobs.with_label_values(&[pipeline]).set(self.jobs.len() as i64);
        }
        Ok(())
    }

    /// Whether this worker's gates have all settled (see [`gate::GateState::settled`]).
    pub fn gates_settled(&self) -> bool {
        self.gates.iter().all(|g| g.borrow().settled())
    }

    /// Writes every ledger update left, and waits until they are written.
    pub fn finish(&mut self, committed: &ProbeHandle<u64>) -> anyhow::Result<()> {
        self.tick(committed)?;
        self.ledger.borrow_mut().sync().map_err(|e| anyhow!(e))
    }
}

fn run_worker(worker: &mut timely::worker::Worker, shared: &Arc<Shared>) -> anyhow::Result<()> {
    let index = worker.index();
    let mut input = InputHandle::new();
    let flow = ProbeHandle::new();
    let committed = ProbeHandle::new();
    let mut sink = DeadLetterSink::new(&shared.options.data_dir, &format!("worker-{index}"));
    if let Some(kafka) = &shared.options.kafka {
        sink =
            sink.with_kafka(medkg_connectors::kafka::KafkaDeadLetters::new(&kafka.settings).map_err(|e| anyhow!(e))?);
    }
    let dead_letters = std::rc::Rc::new(std::cell::RefCell::new(sink));
    let ledger = match &shared.ledger {
        Some(writer) => LedgerBuffer::new(writer.clone()),
        None => LedgerBuffer::off(),
    };
    let ledger = std::rc::Rc::new(std::cell::RefCell::new(ledger));

    // The gates' state lives beside the dataflow: bookkeeping between steps
    // settles what the index made durable and times out stalled documents.
    let mut gates = std::collections::BTreeMap::new();
    for gate in &shared.options.plan.gates {
        let watch = telemetry::Watch::new(&shared.telemetry, &gate.name, gate.after, false, true, &ledger);
        let ctx = graph::Ctx { shared: shared.clone(), letters: dead_letters.clone(), watch };
        let state = gate::GateState::open(ctx, gate, index, worker.peers()).map_err(|e| anyhow!(e))?;
        gates.insert(gate.after, std::rc::Rc::new(std::cell::RefCell::new(state)));
    }
    let mut ir_input = InputHandle::new();
    worker.dataflow::<u64, _, _>(|scope| {
        let raw = input.to_stream(scope);
        let ir = (!gates.is_empty()).then(|| ir_input.to_stream(scope));
        let wiring = graph::Wiring { ledger: &ledger, flow: &flow, committed: &committed, ir, gates: &gates };
        graph::build(scope, raw, shared, &dead_letters, wiring);
    });
    let ir = match gates.is_empty() {
        true => None,
        false => Some(IrFeed::open(shared, ir_input, index, worker.peers())?),
    };
    let books = Books {
        shared: shared.clone(),
        ledger,
        gates: gates.into_values().collect(),
        jobs: Default::default(),
        leader: index == 0,
    };
    // A batch run with gates ends when every worker's gates have settled.
    let census = (ir.is_some() && shared.options.kafka.is_none()).then(|| Census::new(worker));
    let feed = Feed { input, flow, committed, dead_letters, books, ir, census };
    match &shared.options.kafka {
        Some(kafka) => kafka_source::feed(worker, shared, feed, kafka),
        None => feed_file(worker, shared, feed),
    }
}

/// Feeds the file source, then waits until everything is durable.
fn feed_file(worker: &mut timely::worker::Worker, shared: &Arc<Shared>, feed: Feed) -> anyhow::Result<()> {
    let Feed { mut input, flow, committed, dead_letters, mut books, mut ir, census } = feed;
    let (index, peers) = (worker.index(), worker.peers());
    let source = shared.source.as_ref().ok_or_else(|| anyhow!("no file source"))?;
    let runtime = &shared.options.plan.runtime;
    let epoch_records = runtime.epoch_records.max(1);
    let window = runtime.max_epochs_in_flight.max(1);
    let mut checkpointer = Checkpointer { shared: shared.clone(), last: shared.start, last_write: Instant::now() };
    let mut records = source.records(index, peers, shared.start, shared.settings.max_record_bytes);
    let mut epoch = 0u64;
    books.opened(0);
    for (ordinal, record) in records.by_ref() {
        let e = (ordinal - shared.start) / epoch_records;
        if e > epoch {
            input.advance_to(e);
            epoch = e;
            books.opened(e);
            if let Some(ir) = &mut ir {
                ir.advance(e);
                ir.poll();
            }
            worker.step();
            books.tick(&committed)?;
            // Flow control: stay within `window` epochs of what the sinks have seen.
            while flow.less_than(&e.saturating_sub(window)) {
                worker.step_or_park(Some(Duration::from_millis(10)));
                if let Some(fatal) = shared.failed() {
                    bail!("{fatal}");
                }
                books.tick(&committed)?;
            }
            if index == 0 {
                checkpointer.maybe_store(&committed, epoch_records)?;
            }
        }
        shared.progress.records.fetch_add(1, Ordering::Relaxed);
        match record {
            Ok(payload) => input.send(payload),
            Err((position, error)) => {
                let letter = DeadLetter::new(
                    "source",
                    &source.name(),
                    &position,
                    None,
                    "permanent",
                    &error.kind,
                    &error.message,
                    &[],
                );
                dead_letters.borrow_mut().write(&letter).context("cannot write a dead letter")?;
                shared.progress.failed.fetch_add(1, Ordering::Relaxed);
                let telemetry = &shared.telemetry;
                telemetry.metrics.dead_letters.with_label_values(&[&telemetry.pipeline, "source", &error.kind]).inc();
                tracing::warn!(
                    run_id = %telemetry.run_id, pipeline = %telemetry.pipeline, stage = "source",
                    position = %position, error_kind = %error.kind, "dead-lettered: {}", error.message
                );
            }
        }
    }
    let total = records.ordinal();
    drop(input);
    // Documents wait at the gates: keep reading IR-ready records until, in
    // every worker of every process, every downloaded record has arrived and
    // none waits (joined or timed out), or until stopped (they stay waiting,
    // durably, for the next run).
    let flush = || dead_letters.borrow_mut().flush().map_err(|e| anyhow!("{e}"));
    if let (Some(ir), Some(mut census)) = (&mut ir, census) {
        loop {
            ir.poll();
            ir.advance(ir.epoch + 1);
            worker.step_or_park(Some(Duration::from_millis(50)));
            if let Some(fatal) = shared.failed() {
                bail!("{fatal}");
            }
            books.tick(&committed)?;
            ir.commit_durable(frontier_of(&committed), flush)?;
            if index == 0 {
                checkpointer.maybe_store(&committed, epoch_records)?;
            }
            if census.settled() || shared.stop.load(Ordering::SeqCst) {
                break;
            }
            census.report(books.gates_settled());
        }
        ir.close();
    }
    while !committed.done() {
        worker.step_or_park(Some(Duration::from_millis(50)));
        if let Some(fatal) = shared.failed() {
            bail!("{fatal}");
        }
        if index == 0 {
            checkpointer.maybe_store(&committed, epoch_records)?;
        }
        books.tick(&committed)?;
    }
    books.finish(&committed)?;
    flush()?;
    if let Some(ir) = &ir {
        ir.commit_durable(u64::MAX, flush)?;
    }
    if index == 0 {
        checkpointer.last = total;
        checkpointer.store(true)?;
    }
    Ok(())
}

/// Records the source position the sinks have made durable (worker 0 only).
struct Checkpointer {
    shared: Arc<Shared>,
    last: u64,
    last_write: Instant,
}

impl Checkpointer {
    fn maybe_store(&mut self, committed: &ProbeHandle<u64>, epoch_records: u64) -> anyhow::Result<()> {
        let frontier = committed.with_frontier(|f| f.first().copied());
        let Some(frontier) = frontier else {
            return Ok(());
        };
        let durable = self.shared.start + frontier * epoch_records;
        if durable > self.last && self.last_write.elapsed() >= Duration::from_millis(200) {
            self.last = durable;
            self.store(false)?;
        }
        Ok(())
    }

    fn store(&mut self, complete: bool) -> anyhow::Result<()> {
        let name = self.shared.source.as_ref().map(FileSource::name).unwrap_or_default();
        let checkpoint = Checkpoint { source: name, committed: self.last, complete };
        checkpoint
            .store(&self.shared.options.data_dir)
            .with_context(|| format!("cannot write the checkpoint in {}", self.shared.options.data_dir.display()))?;
        self.last_write = Instant::now();
        Ok(())
    }
}
