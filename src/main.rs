//! `medkg`: stream biomedical documents through a YAML topology into
//! searchable indexes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

mod pdf_parser;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use medkg_connectors::kafka::KafkaSettings;
use medkg_dataflow::{KafkaSource, Mode, Progress, Retriever, RunOptions};
use medkg_operators::index::{SearchIndex, Weights};
use medkg_operators::models::Device;
use medkg_topology::{Plan, Policies, ValidationErrors};

#[derive(Parser)]
#[command(
    name = "medkg",
    version,
    about = "Stream biomedical documents through a YAML topology into searchable indexes"
)]
struct Cli {
    /// Log lines on stderr: text, or json (one object a line, with run_id, pipeline, stage and
    /// doc_id fields). The level comes from MEDKG_LOG (e.g. `debug`, `medkg=info`; default info).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing would only obscure clap's derive
enum Command {
    /// Run a pipeline over a source until the source is exhausted (files) or stopped (Kafka).
    /// (`-h` is timely's hostfile flag here, as in every timely program; help is `--help`.)
    #[command(disable_help_flag = true)]
    Run {
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        /// The pipeline (config/pipelines/*.yaml).
        #[arg(long)]
        pipeline: PathBuf,
        /// `file:PATH` (a JSONL file, plain or .gz, or a directory of .xml/.nxml/.json/.jsonl files;
        /// runs to the end), or `kafka:TOPIC` (runs until SIGTERM; needs --brokers and --group).
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
        #[command(flatten)]
        models: ModelArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
        /// Where the pipeline's gates read IR-ready records: dir:PATH or kafka:TOPIC (default
        /// kafka:pdf.ir-ready.v1 with a Kafka source, else dir:DATA_DIR/ir-ready). A topic is read
        /// by the consumer group GROUP.ir-ready.
        #[arg(long)]
        ir_ready: Option<String>,
    },
    /// Turn downloaded PDFs into IR-ready records, as an external parser would: read downloaded
    /// records (the download stage's output), extract each PDF's text and sections, publish.
    PdfParser {
        /// Downloaded records: dir:PATH (JSON files, e.g. DATA_DIR/downloaded) or kafka:TOPIC
        /// (e.g. kafka:pdf.downloaded.v1; consumer group from --group, default medkg-pdf-parser).
        #[arg(long)]
        input: String,
        /// IR-ready records: dir:PATH (e.g. DATA_DIR/ir-ready, where `run` reads them) or
        /// kafka:TOPIC (e.g. kafka:pdf.ir-ready.v1; failures go to the dead-letter topic).
        #[arg(long)]
        output: String,
        /// Process what is there and exit (a topic: once it has been quiet for 5 s);
        /// default: keep watching until SIGTERM.
        #[arg(long)]
        once: bool,
        /// The object store the download stage writes (DATA_DIR/objects): PDFs are read only
        /// from there, by their SHA-256.
        #[arg(long, default_value = "data/objects")]
        objects: PathBuf,
        /// The largest PDF read.
        #[arg(long, default_value_t = 64 << 20)]
        max_pdf_bytes: u64,
        /// Each PDF is extracted in a child process with this much address space (bytes).
        #[arg(long, default_value_t = 4 << 30)]
        extract_memory: u64,
        /// ... and this long to finish (seconds).
        #[arg(long, default_value_t = 120.0)]
        extract_timeout: f64,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// (Internal) extract one PDF from stdin to IR JSON on stdout: the child process of pdf-parser.
    #[command(hide = true)]
    PdfExtract {
        #[arg(long)]
        doc_id: String,
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value_t = 1 << 30)]
        max_bytes: u64,
    },
    /// Show the job ledger: where each document of a data directory stands.
    Ledger {
        /// The data directory a run wrote.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Only documents with this status (running, in_progress, completed, failed, deleted,
        /// waiting, gate_timeout).
        #[arg(long)]
        status: Option<String>,
        /// Only this document.
        #[arg(long)]
        doc: Option<String>,
        /// At most this many rows (newest first).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON (one array of rows; with no filter, the counts per status too).
        #[arg(long)]
        json: bool,
    },
    /// Search a data directory: BM25, dense, SPLADE, or their fusion.
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
        /// bm25 | dense | splade | hybrid (reciprocal-rank fusion of every list the index has).
        #[arg(long, default_value = "hybrid")]
        mode: String,
        /// Hybrid list weights, e.g. `bm25=1,dense=1,splade=0.5`.
        #[arg(long, default_value = "bm25=1,dense=1,splade=1")]
        weights: String,
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
    /// Throughput of the models alone against the whole pipeline, and search latency.
    Bench {
        /// The pipeline to bench (with --source).
        #[arg(long, requires = "source")]
        pipeline: Option<PathBuf>,
        /// `file:PATH` for the pipeline bench.
        #[arg(long)]
        source: Option<String>,
        /// Queries to time, one a line (against --data-dir, after the pipeline bench if there is one).
        #[arg(long)]
        queries: Option<PathBuf>,
        /// Where the bench's run writes (and the queries read).
        #[arg(long, default_value = "data/bench")]
        data_dir: PathBuf,
        /// Worker threads.
        #[arg(short = 'w', long, default_value_t = 1)]
        workers: usize,
        /// Search mode of the query bench.
        #[arg(long, default_value = "hybrid")]
        mode: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        models: ModelArgs,
    },
    /// Load JSONL records (plain or .gz) into a Kafka topic, keyed by document id.
    Produce {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// The topic.
        #[arg(long)]
        topic: String,
        /// Records per second (default: as fast as the broker takes them).
        #[arg(long)]
        rate: Option<f64>,
        /// The JSONL file.
        file: PathBuf,
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

/// A timely cluster: several processes, `-w` workers each.
#[derive(clap::Args, Default)]
struct ClusterArgs {
    /// Processes in the cluster.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    processes: usize,
    /// This process's index, from 0.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    process: usize,
    /// Hostfile: one host:port a line, process 0 first (needed when -n > 1).
    #[arg(short = 'h', long = "hostfile")]
    hostfile: Option<PathBuf>,
}

impl ClusterArgs {
    fn cluster(&self) -> anyhow::Result<Option<medkg_dataflow::Cluster>> {
        if self.processes <= 1 {
            return Ok(None);
        }
        let hostfile = self.hostfile.as_deref().ok_or_else(|| anyhow!("-n {} needs -h HOSTFILE", self.processes))?;
        medkg_dataflow::Cluster::from_hostfile(hostfile, self.processes, self.process).map(Some)
    }
}

/// What a run reports, and where.
#[derive(clap::Args)]
struct TelemetryArgs {
    /// Lifecycle CloudEvents: off, file:PATH (JSON lines) or kafka:TOPIC (e.g.
    /// kafka:orchestration.events.v1; needs --brokers).
    #[arg(long, default_value = "off")]
    events: String,
    /// One event per document per stage, or one per batch per stage.
    #[arg(long, default_value = "document", value_parser = ["document", "batch"])]
    event_granularity: String,
    /// Serve Prometheus metrics at http://ADDR/metrics while the run lasts; `off` serves none.
    /// The default address is skipped with a warning when busy; an explicit one must bind.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// OpenLineage run events: file:PATH (JSON lines) or an http(s):// endpoint.
    #[arg(long)]
    lineage: Option<String>,
    /// The run's id in events, lineage, logs and the ledger (default: a fresh UUID; the
    /// processes of a cluster need one, the same in each).
    #[arg(long)]
    run_id: Option<String>,
    /// Keep no job ledger (DATA_DIR/ledger.sqlite), e.g. for throughput benchmarks.
    #[arg(long)]
    no_ledger: bool,
}

impl TelemetryArgs {
    fn options(&self, kafka: &KafkaArgs) -> anyhow::Result<medkg_dataflow::TelemetryOptions> {
        let mut options = medkg_dataflow::TelemetryOptions {
            events: self.events.parse().map_err(|e: String| anyhow!("--events {e}"))?,
            granularity: self.event_granularity.parse().map_err(|e: String| anyhow!("--event-granularity {e}"))?,
            lineage: self
                .lineage
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e: String| anyhow!("--lineage {e}"))?,
            ..Default::default()
        };
        let (addr, required) = match self.metrics_addr.as_deref() {
            Some("off") => (None, false),
            Some(addr) => (Some(addr), true),
            None => (Some(medkg_dataflow::DEFAULT_METRICS_ADDR), false),
        };
        options.metrics_addr = addr
            .map(|a| a.parse().map_err(|e| anyhow!("--metrics-addr `{a}`: {e} (expected HOST:PORT or off)")))
            .transpose()?;
        options.metrics_required = required;
        options.ledger = !self.no_ledger;
        if let Some(id) = &self.run_id {
            options.run_id = id.clone();
        }
        if kafka.brokers.is_some() {
            options.kafka = Some(kafka.settings()?);
        }
        Ok(options)
    }
}

/// A Kafka source's connection.
#[derive(clap::Args, Default)]
struct KafkaArgs {
    /// Kafka brokers, host:port[,host:port].
    #[arg(long)]
    brokers: Option<String>,
    /// Consumer group (default: medkg; pdf-parser: medkg-pdf-parser).
    #[arg(long)]
    group: Option<String>,
    /// librdkafka property key=value (repeatable), e.g. session.timeout.ms=2000.
    #[arg(long = "kafka-option")]
    kafka_options: Vec<String>,
}

impl KafkaArgs {
    fn settings(&self) -> anyhow::Result<KafkaSettings> {
        self.settings_or("medkg")
    }

    /// The settings, with `group` unless --group names one.
    fn settings_or(&self, group: &str) -> anyhow::Result<KafkaSettings> {
        let brokers = self.brokers.clone().ok_or_else(|| anyhow!("a Kafka source needs --brokers HOST:PORT"))?;
        let options = self
            .kafka_options
            .iter()
            .map(|o| medkg_connectors::kafka::parse_option(o).map_err(|e| anyhow!(e)))
            .collect::<anyhow::Result<_>>()?;
        Ok(KafkaSettings { brokers, group: self.group.clone().unwrap_or_else(|| group.to_string()), options })
    }
}

/// Where models come from and where they run.
#[derive(clap::Args)]
struct ModelArgs {
    /// Models directory (default: MEDKG_MODELS, else ../shared/models).
    #[arg(long)]
    models: Option<PathBuf>,
    /// cpu | cuda for every model stage (default: each stage's `device`). cuda never falls back to the CPU.
    #[arg(long)]
    device: Option<String>,
}

impl ModelArgs {
    fn device(&self) -> anyhow::Result<Option<Device>> {
        self.device.as_deref().map(|d| d.parse::<Device>().map_err(|e| anyhow!(e))).transpose()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli.log_format);
    let result = match cli.command {
        Command::Run {
            pipeline,
            source,
            data_dir,
            workers,
            tenant,
            from_start,
            resilience,
            models,
            kafka,
            cluster,
            telemetry,
            ir_ready,
            ..
        } => run_options(
            &pipeline,
            &source,
            data_dir,
            workers,
            tenant,
            from_start,
            resilience.as_deref(),
            &models,
            &kafka,
        )
        .and_then(|mut options| {
            options.cluster = cluster.cluster()?;
            options.telemetry = telemetry.options(&kafka)?;
            // One run, one id: the ledger, events and lineage of every process must agree.
            if options.cluster.is_some() && telemetry.run_id.is_none() {
                bail!("-n {} needs --run-id ID, the same in every process of the cluster", cluster.processes);
            }
            if let Some(spec) = &ir_ready {
                let topic_or_dir = spec.strip_prefix("dir:").or(spec.strip_prefix("kafka:"));
                if topic_or_dir.is_none_or(str::is_empty) {
                    bail!("--ir-ready `{spec}`: expected dir:PATH or kafka:TOPIC");
                }
            }
            options.ir_ready = ir_ready;
            run(options)
        }),
        Command::PdfParser { input, output, once, objects, max_pdf_bytes, extract_memory, extract_timeout, kafka } => {
            kafka.brokers.is_some().then(|| kafka.settings_or("medkg-pdf-parser")).transpose().and_then(|settings| {
                let store = pdf_parser::Store::open(&objects, max_pdf_bytes)?;
                let timeout = std::time::Duration::try_from_secs_f64(extract_timeout)
                    .map_err(|e| anyhow!("--extract-timeout {extract_timeout}: {e}"))?;
                let isolation = pdf_parser::Isolation { memory: extract_memory, timeout };
                pdf_parser::run(&input, &output, once, store, isolation, settings)
            })
        }
        Command::PdfExtract { doc_id, tenant, max_bytes } => pdf_parser::extract_one(&doc_id, &tenant, max_bytes),
        Command::Ledger { data_dir, status, doc, limit, json } => {
            ledger(&data_dir, status.as_deref(), doc.as_deref(), limit, json)
        }
        Command::Produce { kafka, topic, file, rate } => produce(&kafka, &topic, &file, rate),
        Command::Search { data_dir, tenant, k, json, mode, weights, query } => {
            search(&data_dir, &tenant, k, json, &mode, &weights, &query.join(" "))
        }
        Command::Bench { pipeline, source, queries, data_dir, workers, mode, json, models } => {
            bench(pipeline.as_deref(), source.as_deref(), queries.as_deref(), data_dir, workers, &mode, json, &models)
        }
        Command::Stats { data_dir, tenant, json } => stats(&data_dir, tenant.as_deref(), json),
        Command::Validate { files, resilience } => return validate(&files, resilience.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<ValidationErrors>() {
                // Located errors say `FILE:LINE:COL: error: ...` themselves.
                Some(errors) => eprintln!("{errors}"),
                None => eprintln!("medkg: error: {e:#}"),
            }
            ExitCode::from(2)
        }
    }
}

/// Logs on stderr, as text or JSON lines, filtered by MEDKG_LOG (default info).
fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEDKG_LOG")
        // The PDF text extractor warns about every odd glyph: keep it to errors.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pdf_extract=error,lopdf=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// `medkg ledger`: rows of the job ledger, as a table or JSON.
fn ledger(data_dir: &Path, status: Option<&str>, doc: Option<&str>, limit: usize, json: bool) -> anyhow::Result<()> {
    use medkg_connectors::ledger::{Ledger, Status};
    let status: Option<Status> = status.map(str::parse).transpose().map_err(|e: String| anyhow!("--status {e}"))?;
    let ledger = Ledger::open_existing(data_dir).map_err(|e| anyhow!(e))?;
    let rows = ledger.query(status, doc, limit).map_err(|e| anyhow!(e))?;
    let counts = ledger.counts().map_err(|e| anyhow!(e))?;
    let mut out = std::io::stdout().lock();
    let printed = (|| -> std::io::Result<()> {
        if json {
            let mut value = serde_json::json!({ "rows": rows });
            if status.is_none() && doc.is_none() {
                value["counts"] = serde_json::to_value(&counts)?;
            }
            return writeln!(out, "{}", serde_json::to_string_pretty(&value)?);
        }
        if status.is_none() && doc.is_none() {
            let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
            writeln!(out, "documents: {}", if summary.is_empty() { "none".to_string() } else { summary.join(", ") })?;
        }
        writeln!(
            out,
            "{:<28} {:<10} {:<12} {:<12} {:<16} {:<24} LAST ERROR",
            "DOCUMENT", "TENANT", "STATUS", "STAGE", "RETRIES", "UPDATED"
        )?;
        for row in rows {
            let retries: Vec<String> = row.retries.iter().map(|(s, n)| format!("{s}={n}")).collect();
            writeln!(
                out,
                "{:<28} {:<10} {:<12} {:<12} {:<16} {:<24} {}",
                row.doc_id,
                row.tenant_id,
                row.status,
                row.stage,
                if retries.is_empty() { "-".to_string() } else { retries.join(",") },
                row.updated_at,
                row.last_error.unwrap_or_default()
            )?;
        }
        Ok(())
    })();
    match printed {
        // `medkg ledger | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot print the ledger"),
    }
}

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

#[allow(clippy::too_many_arguments)]
fn run_options(
    pipeline: &Path,
    source: &str,
    data_dir: PathBuf,
    workers: usize,
    tenant: String,
    from_start: bool,
    resilience: Option<&Path>,
    models: &ModelArgs,
    kafka: &KafkaArgs,
) -> anyhow::Result<RunOptions> {
    let plan = load_plan(pipeline, resilience).map_err(anyhow::Error::new)?;
    let (path, kafka) = if let Some(path) = source.strip_prefix("file:") {
        (PathBuf::from(path), None)
    } else if let Some(topic) = source.strip_prefix("kafka:") {
        (PathBuf::new(), Some(KafkaSource { topic: topic.to_string(), settings: kafka.settings()? }))
    } else {
        bail!("unsupported source `{source}`: use file:PATH or kafka:TOPIC");
    };
    if workers == 0 {
        bail!("-w must be at least 1");
    }
    Ok(RunOptions {
        plan,
        source: path,
        kafka,
        data_dir,
        workers,
        tenant,
        from_start,
        models: models.models.clone(),
        device: models.device()?,
        stop: None,
        cluster: None,
        telemetry: Default::default(),
        ir_ready: None,
    })
}

fn run(options: RunOptions) -> anyhow::Result<()> {
    let progress = Arc::new(Progress::default());
    let tty = std::io::stderr().is_terminal();
    let summary = medkg_dataflow::run(options, progress, |p, elapsed| {
        if tty {
            let docs = p.docs.load(Ordering::Relaxed);
            let rate = docs as f64 / elapsed.as_secs_f64().max(1e-9);
            let lag = match p.lag() {
                0 => String::new(),
                n => format!("  lag {n:>7}"),
            };
            let line = format!(
                "\r{:>6.1}s  read {:>9}  docs {:>9}  {:>8.0} docs/s  chunks {:>9}  failed {:>6}{lag}",
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

#[allow(clippy::too_many_arguments)]
fn bench(
    pipeline: Option<&Path>,
    source: Option<&str>,
    queries: Option<&Path>,
    data_dir: PathBuf,
    workers: usize,
    mode: &str,
    json: bool,
    models: &ModelArgs,
) -> anyhow::Result<()> {
    let mut report = serde_json::Map::new();
    if let (Some(pipeline), Some(source)) = (pipeline, source) {
        let options = run_options(
            pipeline,
            source,
            data_dir.clone(),
            workers,
            "default".into(),
            true,
            None,
            models,
            &KafkaArgs::default(),
        )?;
        let result = medkg_dataflow::bench::pipeline(&options)?;
        if let serde_json::Value::Object(fields) = serde_json::to_value(&result)? {
            report.extend(fields);
        }
    }
    if let Some(queries) = queries {
        let mode: Mode = mode.parse().map_err(|e: String| anyhow!(e))?;
        let result = medkg_dataflow::bench::queries(&data_dir, &queries.to_path_buf(), mode, "default", 10)?;
        report.insert("search".into(), serde_json::to_value(&result)?);
    }
    if report.is_empty() {
        bail!("nothing to bench: give --pipeline and --source, or --queries");
    }
    if json {
        println!("{}", serde_json::Value::Object(report));
    } else {
        for (key, value) in &report {
            println!("{key}: {value}");
        }
    }
    Ok(())
}

/// `medkg produce`: every record of a JSONL file to a topic, keyed by the
/// document id its parser finds (unkeyed when it finds none: a bad record
/// still travels, to be dead-lettered by the engine).
fn produce(kafka: &KafkaArgs, topic: &str, file: &Path, rate: Option<f64>) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseRecord, Producer};
    let producer: rdkafka::producer::BaseProducer =
        kafka.settings()?.producer_config().create().map_err(|e| anyhow!("cannot create a Kafka producer: {e}"))?;
    let source = medkg_connectors::FileSource::open(file).map_err(|e| anyhow!("{e}"))?;
    let began = std::time::Instant::now();
    let mut sent = 0u64;
    for (_, record) in source.records(0, 1, 0, 64 << 20) {
        let Ok(payload) = record else { continue };
        let key = medkg_operators::parse::parse(&Default::default(), &payload.bytes, None)
            .into_iter()
            .find_map(Result::ok)
            .map(|doc| doc.id);
        let mut message: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(payload.bytes.as_slice());
        if let Some(key) = key.as_deref() {
            message = message.key(key);
        }
        let mut message = Some(message);
        while let Some(m) = message.take() {
            match producer.send(m) {
                Ok(()) => {}
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    m,
                )) => {
                    producer.poll(std::time::Duration::from_millis(50));
                    message = Some(m);
                }
                Err((e, _)) => bail!("cannot produce to {topic}: {e}"),
            }
        }
        producer.poll(std::time::Duration::ZERO);
        sent += 1;
        if let Some(rate) = rate.filter(|r| *r > 0.0 && r.is_finite()) {
            // (A rate so small that the wait overflows a Duration waits "forever".)
            let due = std::time::Duration::try_from_secs_f64(sent as f64 / rate).unwrap_or(std::time::Duration::MAX);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    producer
        .flush(std::time::Duration::from_secs(60))
        .map_err(|e| anyhow!("not every record was acknowledged: {e}"))?;
    let seconds = began.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"records": sent, "seconds": seconds, "records_per_sec": sent as f64 / seconds.max(1e-9)})
    );
    Ok(())
}

fn search(
    data_dir: &Path,
    tenant: &str,
    k: usize,
    json: bool,
    mode: &str,
    weights: &str,
    query: &str,
) -> anyhow::Result<()> {
    let mode: Mode = mode.parse().map_err(|e: String| anyhow!(e))?;
    let mut retriever = Retriever::open(data_dir, mode).map_err(|e| anyhow!("{e}"))?;
    retriever.weights = parse_weights(weights)?;
    let hits = retriever.search(query, mode, tenant, k).map_err(|e| anyhow!("{e}"))?;
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
            println!("{:>2}. {:.4}  {}  {}\n    {}\n", rank + 1, hit.score, hit.chunk_id, hit.title, preview);
        }
    }
    Ok(())
}

/// `bm25=1,dense=0.5,splade=1` (lists not named keep weight 1).
fn parse_weights(text: &str) -> anyhow::Result<Weights> {
    let mut weights = Weights::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').ok_or_else(|| anyhow!("weight `{part}` is not name=number"))?;
        let value: f32 = value.trim().parse().map_err(|_| anyhow!("weight `{part}`: `{value}` is not a number"))?;
        if !(value.is_finite() && value >= 0.0) {
            bail!("weight `{part}` must be ≥ 0");
        }
        match name.trim() {
            "bm25" => weights.bm25 = value,
            "dense" => weights.dense = value,
            "splade" => weights.splade = value,
            other => bail!("unknown list `{other}` in --weights (bm25 | dense | splade)"),
        }
    }
    Ok(weights)
}

fn stats(data_dir: &Path, tenant: Option<&str>, json: bool) -> anyhow::Result<()> {
    let index = SearchIndex::open(data_dir).map_err(|e| anyhow!("{e}"))?;
    let stats = index.stats(tenant).map_err(|e| anyhow!("{e}"))?;
    let letters = medkg_connectors::DeadLetterSink::read_all(data_dir).context("cannot read the dead letters")?;
    if json {
        println!("{}", serde_json::json!({"docs": stats.docs, "chunks": stats.chunks, "dead_letters": letters.len()}));
    } else {
        println!("docs {}\nchunks {}\ndead letters {}", stats.docs, stats.chunks, letters.len());
    }
    Ok(())
}
