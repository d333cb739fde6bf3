//! A run of a pipeline, from its options to its summary: set up what the
//! workers share, start them, report progress, and settle how it ended.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use medkg_connectors::adapter::Adapter;
use medkg_connectors::events::EventSink;
use medkg_connectors::kafka::{monitor_lag, DOWNLOADED_TOPIC};
use medkg_connectors::ledger::{Ledger, LedgerWriter};
use medkg_connectors::lineage::{Dataset, LineageSink, RunInfo, RunState};
use medkg_connectors::{Checkpoint, FileSource};
use medkg_operators::extract::{Extractor, Vocabulary};
use medkg_operators::graph::GraphSink;
use medkg_operators::index::{Backends, Layout};
use medkg_operators::pdf::ObjectStore;
use medkg_topology::StageKind;

use crate::graph::StageOp;
use crate::models::{ModelRecord, Sessions};
use crate::ops::fetch::{Download, DownloadedOutput, FetchRuntime};
use crate::ops::index::IndexSpec;
use crate::ops::kg::KgSpec;
use crate::ops::records::{self, factory, Records};
use crate::options::{RunOptions, RunSummary};
use crate::progress::Progress;
use crate::recorder::RunRecorder;
use crate::settings::{check_implemented, StageConfig, StageContext, StageSettings};
use crate::shared::{Fate, Shared};
use crate::telemetry::{self, Reporter, Telemetry};
use crate::worker::run_worker;

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
    let lineage = options.telemetry.lineage.clone().map(LineageSink::new).transpose()?;
    let info = lineage_info(&options);
    let span = tracing::info_span!("run", run_id = %options.telemetry.run_id, pipeline = %options.plan.name);
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
    let input = match (&options.kafka, &options.adapter) {
        (Some(kafka), _) => {
            Dataset { namespace: format!("kafka://{}", kafka.settings.brokers), name: kafka.topic.clone() }
        }
        (None, Some(adapter)) => Dataset { namespace: adapter.spec.base().to_string(), name: adapter.spec.name() },
        (None, None) => Dataset { namespace: "file".into(), name: absolute(&options.source) },
    };
    RunInfo {
        run_id: options.telemetry.run_id.clone(),
        namespace: format!("medkg/{}", options.tenant),
        job: options.plan.name.clone(),
        inputs: vec![input],
        outputs: vec![Dataset { namespace: "file".into(), name: absolute(&options.data_dir) }],
    }
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}

fn run_workers(
    options: RunOptions,
    progress: Arc<Progress>,
    on_progress: impl FnMut(&Progress, Duration),
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<RunSummary> {
    let workers = options.workers.max(1);
    let settings = StageSettings::from_plan(&options.plan, &StageContext::of(&options)).map_err(|e| anyhow!(e))?;
    // Models load before anything is written: a missing model or an absent
    // GPU stops the run here, with nothing half-written.
    let sessions = load_sessions(&settings, workers)?;
    let source = open_source(&options)?;
    // An API's adapter opens here: a bad base URL or DOI file stops the run before it starts.
    let adapter = options.adapter.as_ref().map(|a| Adapter::open(&a.spec)).transpose().map_err(|e| anyhow!(e))?;
    let processes = options.cluster.as_ref().map_or(1, |c| c.addresses.len());
    let layout = Layout::open_or_create(&options.data_dir, (workers * processes) as u32)?;
    ModelRecord::from_settings(&settings).reconcile(&options.data_dir).map_err(|e| anyhow!(e))?;
    let start = start_position(&options, source.as_ref())?;
    let stop = stop_flag(&options)?;
    let events = EventSink::open(&options.telemetry.events, options.kafka_settings())?;
    let telemetry =
        Arc::new(Telemetry::new(&options.telemetry.run_id, &options.plan.name, events, options.telemetry.granularity));
    telemetry.declare_stages(options.plan.stages.iter().map(|s| (s.name.as_str(), s.kind.name())));
    let stages = stage_ops(&options, &settings, sessions, &telemetry, &layout)?;
    // An embedded graph is shared with whoever serves queries in this process.
    for op in &stages {
        if let StageOp::Kg(KgSpec { store: Some(GraphSink::Embedded(store)), .. }) = op {
            progress.graph.publish(store.clone());
        }
    }
    progress.telemetry.publish(telemetry.clone());
    progress.run_id.publish(options.telemetry.run_id.clone());
    serve_metrics(&options, runtime, &telemetry, &progress)?;
    let ledger = start_ledger(&options)?;
    let recorder = RunRecorder::start(&options, &telemetry, &progress, ledger.as_ref());

    let (finished_tx, finished_rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        options: options.clone(),
        telemetry: telemetry.clone(),
        runtime: runtime.handle().clone(),
        ledger: ledger.clone(),
        gate_pending: AtomicI64::new(0),
        max_record_bytes: settings.max_record_bytes,
        source,
        adapter,
        stop,
        began: Instant::now(),
        kafka_assigned: std::sync::atomic::AtomicUsize::new(0),
        headroom: crate::shared::Headroom::new(options.workers),
        start,
        progress: progress.clone(),
        fate: Fate::new(finished_tx),
    });
    let began = Instant::now();
    let lag = LagMonitor::start(&options, &progress);
    let worker_shared = shared.clone();
    let config = match &options.cluster {
        None => timely::Config::process(workers),
        Some(cluster) => cluster.config(workers),
    };
    let guards = timely::execute(config, move |worker| {
        let shared = worker_shared.clone();
        let result = run_worker(worker, &shared, &stages);
        if let Err(e) = &result {
            shared.fail(e.to_string());
            // timely steps a worker's dataflows until they complete; after a
            // failure they never will (peers stop too): drop them, or this
            // thread would park forever and the run never return.
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
        }
        shared.worker_finished();
        result
    })
    .map_err(|e| anyhow!("cannot start the workers: {e}"))?;

    let seconds = wait_for_workers(workers, &finished_rx, &progress, began, on_progress);
    drop(lag);
    let mut first_error = None;
    for result in guards.join() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_error = first_error.or(Some(e.to_string())),
            Err(panic) => first_error = first_error.or(Some(format!("a worker panicked: {panic}"))),
        }
    }
    // Whatever happened, events, ledger rows and the run's record reach their sinks.
    if let Some(recorder) = recorder {
        recorder.finish(shared.failed().or_else(|| first_error.clone()).as_deref());
    }
    let flushed = telemetry.events.flush();
    let closed = ledger.as_ref().map_or(Ok(()), |l| l.close());
    if let Some(fatal) = shared.failed() {
        bail!("{fatal}");
    }
    flushed?;
    closed?;
    if let Some(e) = first_error {
        bail!("{e}");
    }
    telemetry.events.flush()?;
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

/// Each model stage's sessions (plan order; `None` for other stages).
fn load_sessions(settings: &StageSettings, workers: usize) -> anyhow::Result<Vec<Option<Arc<Sessions>>>> {
    let mut sessions = Vec::with_capacity(settings.stages.len());
    for stage in &settings.stages {
        sessions.push(match stage {
            StageConfig::Embed(spec) => Some(Arc::new(Sessions::dense(spec, workers)?)),
            StageConfig::Splade(spec) => Some(Arc::new(Sessions::splade(spec, workers)?)),
            _ => None,
        });
    }
    Ok(sessions)
}

/// The file source, unless the run reads Kafka or an API.
fn open_source(options: &RunOptions) -> anyhow::Result<Option<FileSource>> {
    if options.kafka.is_some() || options.adapter.is_some() {
        return Ok(None);
    }
    let source = FileSource::open(&options.source).map_err(|e| anyhow!("cannot read the source: {e}"))?;
    for skipped in source.skipped() {
        eprintln!("medkg: skipping {} (not .jsonl, .json, .xml or .nxml)", skipped.display());
    }
    Ok(Some(source))
}

/// Where the file source starts: its checkpoint, unless `--from-start`.
fn start_position(options: &RunOptions, source: Option<&FileSource>) -> anyhow::Result<u64> {
    let (Some(source), false) = (source, options.from_start) else { return Ok(0) };
    let checkpoint = Checkpoint::load(&options.data_dir, &source.name())
        .with_context(|| format!("cannot read the checkpoint in {}", options.data_dir.display()))?;
    Ok(checkpoint.map_or(0, |c| c.committed))
}

/// The run's stop flag. A long-running source (Kafka, an API, or a file
/// source with gates) stops on SIGTERM or SIGINT: drain, commit, exit.
fn stop_flag(options: &RunOptions) -> anyhow::Result<Arc<AtomicBool>> {
    let stop = options.stop.clone().unwrap_or_default();
    if options.kafka.is_some() || options.adapter.is_some() || !options.plan.gates.is_empty() {
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, stop.clone()).context("cannot install the signal handler")?;
        }
    }
    Ok(stop)
}

/// Every stage's operator settings and resources, made once for the
/// process: the model sessions, each HTTP stage's client and policy (and a
/// download stage's store and output stream), the index's layout.
fn stage_ops(
    options: &RunOptions,
    settings: &StageSettings,
    sessions: Vec<Option<Arc<Sessions>>>,
    telemetry: &Telemetry,
    layout: &Layout,
) -> anyhow::Result<Vec<StageOp>> {
    let mut ops = Vec::with_capacity(settings.stages.len());
    // The extractor, loaded once and shared by `extract` (matching) and `kg` (labels).
    let mut extractor: Option<(std::path::PathBuf, Arc<Extractor>)> = None;
    for ((stage, config), sessions) in options.plan.stages.iter().zip(&settings.stages).zip(sessions) {
        let in_stage = |e: String| anyhow!("stage `{}`: {e}", stage.name);
        let op = match config {
            StageConfig::Records(records) => StageOp::Records(records.clone()),
            StageConfig::Fetch(fetch) => {
                Reporter::calls_out(telemetry, &stage.name);
                let runtime = FetchRuntime::new(fetch, &stage.policy, None).map_err(|e| in_stage(e.message))?;
                StageOp::Fetch(Arc::new(runtime))
            }
            StageConfig::Download(fetch, output) => {
                Reporter::calls_out(telemetry, &stage.name);
                // The stream lives where the source does, unless the stage says otherwise.
                let spec = output.clone().unwrap_or_else(|| options.default_stream(DOWNLOADED_TOPIC, "downloaded"));
                let output = DownloadedOutput::open(&spec, options.kafka_settings()).map_err(in_stage)?;
                let store = ObjectStore::new(options.data_dir.join("objects"));
                let download = Some(Download { store, output });
                let runtime = FetchRuntime::new(fetch, &stage.policy, download).map_err(|e| in_stage(e.message))?;
                StageOp::Fetch(Arc::new(runtime))
            }
            StageConfig::Embed(spec) | StageConfig::Splade(spec) => {
                let sessions = sessions.ok_or_else(|| in_stage("its model sessions were not loaded".into()))?;
                StageOp::Encode { sessions, max_batch_tokens: spec.max_batch_tokens }
            }
            StageConfig::Index { commit_interval, writer_memory_bytes, splade, dense } => StageOp::Index(IndexSpec {
                layout: layout.clone(),
                commit_interval: *commit_interval,
                writer_memory_bytes: *writer_memory_bytes,
                backends: Backends { splade: *splade, dense: *dense },
                forward: false,
            }),
            StageConfig::Extract { vocabulary, min_confidence } => {
                let loaded = match &extractor {
                    Some((path, loaded)) if path == vocabulary => loaded.clone(),
                    _ => {
                        let loaded =
                            Arc::new(Extractor::new(Vocabulary::load(vocabulary).map_err(|e| in_stage(e.message))?));
                        tracing::info!(concepts = loaded.vocabulary().concepts().len(), vocabulary = %vocabulary.display(), "vocabulary loaded");
                        extractor = Some((vocabulary.clone(), loaded.clone()));
                        loaded
                    }
                };
                let min_confidence = *min_confidence;
                StageOp::Records(Records::ChunksToEntities(factory(move || {
                    records::extract(loaded.clone(), min_confidence)
                })))
            }
            StageConfig::Kg { target } => {
                let Some((_, loaded)) = &extractor else {
                    bail!("stage `{}`: no extract stage comes before it", stage.name);
                };
                // One process owns the store: its worker 0 writes it.
                let owner = options.cluster.as_ref().is_none_or(|c| c.process == 0);
                let store = match owner {
                    true => {
                        let sink = GraphSink::open(target, &options.data_dir).map_err(|e| in_stage(e.to_string()))?;
                        tracing::info!(graph = %target, "knowledge graph store");
                        Some(sink)
                    }
                    false => None,
                };
                let counts_progress = !options.plan.stages.iter().any(|s| s.kind == StageKind::Index);
                StageOp::Kg(KgSpec { store, extractor: loaded.clone(), forward: false, counts_progress })
            }
        };
        ops.push(op);
    }
    Ok(ops)
}

/// Serves `/metrics` when asked; a busy address stops the run only when
/// the address was given explicitly.
fn serve_metrics(
    options: &RunOptions,
    runtime: &tokio::runtime::Runtime,
    telemetry: &Arc<Telemetry>,
    progress: &Arc<Progress>,
) -> anyhow::Result<()> {
    let Some(addr) = options.telemetry.metrics_addr else { return Ok(()) };
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
    Ok(())
}

/// The process's ledger writer, unless `--no-ledger`.
fn start_ledger(options: &RunOptions) -> anyhow::Result<Option<Arc<LedgerWriter>>> {
    if !options.telemetry.ledger {
        return Ok(None);
    }
    let ledger = Ledger::open(&options.data_dir)?;
    Ok(Some(LedgerWriter::start(ledger, &options.plan.name, &options.telemetry.run_id)?))
}

/// Reports progress while the workers run; each worker's `finished` wakes
/// it the moment the last one is done, so the measured time is the
/// workers' own. Returns that time in seconds.
fn wait_for_workers(
    workers: usize,
    finished: &Receiver<()>,
    progress: &Progress,
    began: Instant,
    mut on_progress: impl FnMut(&Progress, Duration),
) -> f64 {
    let mut done = 0;
    while done < workers {
        match finished.recv_timeout(Duration::from_millis(200)) {
            Ok(()) => done += 1,
            Err(RecvTimeoutError::Timeout) => on_progress(progress, began.elapsed()),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    on_progress(progress, began.elapsed());
    seconds
}

/// The Kafka source's consumer-lag monitor, stopped when dropped (however
/// the run ends).
struct LagMonitor {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LagMonitor {
    fn start(options: &RunOptions, progress: &Arc<Progress>) -> LagMonitor {
        let done = Arc::new(AtomicBool::new(false));
        let thread = options.kafka.clone().map(|kafka| {
            let progress = progress.clone();
            let on_lag = move |lag| {
                if let Ok(mut lags) = progress.lag.lock() {
                    lags.insert(0, lag);
                }
            };
            monitor_lag(kafka.settings, kafka.topic, on_lag, done.clone())
        });
        LagMonitor { done, thread }
    }
}

impl Drop for LagMonitor {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
