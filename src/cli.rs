//! The command line: every subcommand's arguments, and the argument groups
//! they share. Each subcommand's body is in `commands/`.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::anyhow;
use clap::{Parser, Subcommand};
use medkg_connectors::kafka::KafkaSettings;
use medkg_connectors::StreamSpec;
use medkg_dataflow::{Cluster, TelemetryOptions, DEFAULT_METRICS_ADDR};
use medkg_operators::graph::GraphTarget;
use medkg_operators::models::Device;
use medkg_topology::{AdapterKind, AdapterSpec};

/// What `medkg run` and `medkg bench` read: a file or folder, a topic, or a public API.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// `file:PATH`: a JSONL file (plain or .gz) or a folder of documents.
    File(PathBuf),
    /// `kafka:TOPIC`: a topic, read by a consumer group until stopped.
    Kafka(String),
    /// `ctgov:QUERY`, `pubmed:QUERY`, `openalex:FILTER`, `unpaywall:FILE`: an API, paged.
    Adapter(AdapterSpec),
}

impl FromStr for SourceSpec {
    type Err = String;

    fn from_str(source: &str) -> Result<SourceSpec, String> {
        let path = source.strip_prefix("file:").filter(|p| !p.is_empty());
        let adapter = source.split_once(':').is_some_and(|(kind, _)| kind.parse::<AdapterKind>().is_ok());
        match (path, source.parse::<StreamSpec>()) {
            (Some(path), _) => Ok(SourceSpec::File(PathBuf::from(path))),
            (None, Ok(StreamSpec::Kafka(topic))) => Ok(SourceSpec::Kafka(topic)),
            _ if adapter => source.parse().map(SourceSpec::Adapter),
            _ => Err(format!(
                "unsupported source `{source}`: use file:PATH, kafka:TOPIC, ctgov:QUERY, pubmed:QUERY, \
                 openalex:FILTER or unpaywall:FILE"
            )),
        }
    }
}

#[derive(Parser)]
#[command(
    name = "medkg",
    version,
    about = "Stream biomedical documents through a YAML topology into searchable indexes"
)]
pub struct Cli {
    /// Log lines on stderr: text, or json (one object a line, with run_id, pipeline, stage and
    /// doc_id fields). The level comes from MEDKG_LOG (e.g. `debug`, `medkg=info`; default info).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing would only obscure clap's derive
pub enum Command {
    /// Run a pipeline over a source until the source is exhausted (files) or stopped (Kafka).
    /// (`-h` is timely's hostfile flag here, as in every timely program; help is `--help`.)
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Turn downloaded PDFs into IR-ready records, as an external parser would: read downloaded
    /// records (the download stage's output), extract each PDF's text and sections, publish.
    PdfParser(PdfParserArgs),
    /// (Internal) extract one PDF from stdin to IR JSON on stdout: the child process of pdf-parser.
    #[command(hide = true)]
    PdfExtract(PdfExtractArgs),
    /// Show the job ledger: where each document of a data directory stands.
    Ledger(LedgerArgs),
    /// Search a data directory: BM25, dense, SPLADE, or their fusion.
    Search(SearchArgs),
    /// Count documents and chunks in a data directory.
    Stats(StatsArgs),
    /// A concept in the knowledge graph: what it is, its neighbours by predicate with their
    /// support, and the best evidence sentences. NAME is a CURIE or a name.
    Graph(GraphArgs),
    /// Run a SPARQL 1.1 query over one tenant's knowledge graph (its graph is the default graph,
    /// its documents' graphs the named graphs; `biolink:`, `medkg:`, `rdfs:` are predefined).
    Sparql(SparqlArgs),
    /// Write the knowledge graph as N-Quads (one tenant's, or all).
    Export(ExportArgs),
    /// Throughput of the models alone against the whole pipeline, and search latency.
    Bench(BenchArgs),
    /// Load JSONL records (plain or .gz) into a Kafka topic, keyed by document id.
    Produce(ProduceArgs),
    /// Validate pipeline files; exit 0 when all are valid, 1 otherwise.
    Validate(ValidateArgs),
    /// Serve a data directory: the JSON API (/v1: search, documents, graph, SPARQL, runs,
    /// ledger, gate, dead letters), /metrics, and the operator UI at /.
    Serve(ServeArgs),
    /// Make a bearer token for `serve --auth FILE`: prints the token once, and the entry (its
    /// SHA-256) to add to the file.
    Token(TokenArgs),
}

/// How a server listens and whom it lets in (`medkg serve`, `medkg run --serve`).
#[derive(clap::Args)]
pub struct ServerArgs {
    /// Tokens (SHA-256 hashes) with their tenant and role; without it the server binds only
    /// loopback addresses and every request is the tenant's admin.
    #[arg(long)]
    pub auth: Option<PathBuf>,
    /// Searches running or waiting at once; past it the server answers 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_searches: usize,
    /// Seconds a SPARQL query may run before it is cancelled.
    #[arg(long, default_value_t = 10)]
    pub sparql_timeout: u64,
}

/// The arguments of `medkg serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// The data directory to serve.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// The tenant of requests when there is no --auth.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The arguments of `medkg token`.
#[derive(clap::Args)]
pub struct TokenArgs {
    /// The tenant whose documents the token sees.
    #[arg(long)]
    pub tenant: String,
    /// `read` (search, documents, graph, stats, gate) or `admin` (also runs, ledger, dead letters).
    #[arg(long, default_value = "read")]
    pub role: String,
    /// A name for the entry (for the operator's eyes).
    #[arg(long)]
    pub name: Option<String>,
}

/// The arguments of `medkg run`.
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// The pipeline (config/pipelines/*.yaml).
    #[arg(long)]
    pub pipeline: PathBuf,
    /// `file:PATH` (a JSONL file, plain or .gz, or a directory of .xml/.nxml/.json/.jsonl files;
    /// runs to the end), `kafka:TOPIC` (runs until SIGTERM; needs --brokers and --group), or a
    /// public API: `ctgov:QUERY`, `pubmed:QUERY`, `openalex:FILTER`, `unpaywall:FILE_OF_DOIS`
    /// (to the end, or until SIGTERM with --follow). Default: the pipeline's ingest `source:`.
    #[arg(long)]
    pub source: Option<SourceSpec>,
    /// Where indexes, checkpoints and dead letters live.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Worker threads.
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
    /// Tenant of records that do not name their own.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Ignore the checkpoint and read the source from its start.
    #[arg(long)]
    pub from_start: bool,
    /// Resilience policies (default: ../resilience.yaml next to the pipeline, else the built-in ones).
    #[arg(long)]
    pub resilience: Option<PathBuf>,
    #[command(flatten)]
    pub models: ModelArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Where the pipeline's gates read IR-ready records: dir:PATH or kafka:TOPIC (default
    /// kafka:pdf.ir-ready.v1 with a Kafka source, else dir:DATA_DIR/ir-ready). A topic is read
    /// by the consumer group GROUP.ir-ready.
    #[arg(long)]
    pub ir_ready: Option<StreamSpec>,
    /// Where the kg stage keeps the graph, overriding the pipeline: oxigraph (embedded, in
    /// DATA_DIR/graph), oxigraph:DIR, or sparql:URL (a SPARQL 1.1 endpoint: queries to URL/query,
    /// updates to URL/update, as Oxigraph's server and Fuseki lay them out).
    #[arg(long)]
    pub graph: Option<GraphTarget>,
    /// Serve the API and operator UI from inside the run, at this address (e.g.
    /// 127.0.0.1:8080): searches see each epoch once it commits.
    #[arg(long)]
    pub serve: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The arguments of `medkg pdf-parser`.
#[derive(clap::Args)]
pub struct PdfParserArgs {
    /// Downloaded records: dir:PATH (JSON files, e.g. DATA_DIR/downloaded) or kafka:TOPIC
    /// (e.g. kafka:pdf.downloaded.v1; consumer group from --group, default medkg-pdf-parser).
    #[arg(long)]
    pub input: StreamSpec,
    /// IR-ready records: dir:PATH (e.g. DATA_DIR/ir-ready, where `run` reads them) or
    /// kafka:TOPIC (e.g. kafka:pdf.ir-ready.v1; failures go to the dead-letter topic).
    #[arg(long)]
    pub output: StreamSpec,
    /// Process what is there and exit (a topic: once it has been quiet for 5 s);
    /// default: keep watching until SIGTERM.
    #[arg(long)]
    pub once: bool,
    /// The object store the download stage writes (DATA_DIR/objects): PDFs are read only
    /// from there, by their SHA-256.
    #[arg(long, default_value = "data/objects")]
    pub objects: PathBuf,
    /// The largest PDF read.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_pdf_bytes: u64,
    /// Each PDF is extracted in a child process with this much address space (bytes).
    #[arg(long, default_value_t = 4 << 30)]
    pub extract_memory: u64,
    /// ... and this long to finish (seconds).
    #[arg(long, default_value_t = 120.0)]
    pub extract_timeout: f64,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// The arguments of `medkg pdf-extract`.
#[derive(clap::Args)]
pub struct PdfExtractArgs {
    #[arg(long)]
    pub doc_id: String,
    #[arg(long)]
    pub tenant: String,
    #[arg(long, default_value_t = 1 << 30)]
    pub max_bytes: u64,
}

/// The arguments of `medkg ledger`.
#[derive(clap::Args)]
pub struct LedgerArgs {
    /// The data directory a run wrote.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Only documents with this status (running, in_progress, completed, failed, deleted,
    /// waiting, gate_timeout).
    #[arg(long)]
    pub status: Option<String>,
    /// Only this document.
    #[arg(long)]
    pub doc: Option<String>,
    /// At most this many rows (newest first).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Print JSON (one array of rows; with no filter, the counts per status too).
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `medkg search`.
#[derive(clap::Args)]
pub struct SearchArgs {
    /// The data directory a run wrote.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Only this tenant's documents.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// How many chunks to return.
    #[arg(short = 'k', default_value_t = 10)]
    pub k: usize,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
    /// bm25 | dense | splade | hybrid (reciprocal-rank fusion of every list the index has).
    #[arg(long, default_value = "hybrid")]
    pub mode: String,
    /// Hybrid list weights, e.g. `bm25=1,dense=1,splade=0.5`.
    #[arg(long, default_value = "bm25=1,dense=1,splade=1")]
    pub weights: String,
    /// Only chunks that mention this concept (a CURIE, e.g. DRUGBANK:DB00945), by the
    /// knowledge graph a `kg` stage wrote to DATA_DIR/graph.
    #[arg(long)]
    pub entity: Option<String>,
    /// The query, in plain words.
    #[arg(required = true)]
    pub query: Vec<String>,
}

/// The arguments of `medkg graph`.
#[derive(clap::Args)]
pub struct GraphArgs {
    /// The data directory a run wrote (its graph is DATA_DIR/graph).
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Only this tenant's graph.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Neighbours shown each way.
    #[arg(short = 'k', default_value_t = 10)]
    pub k: usize,
    /// Evidence sentences per neighbour.
    #[arg(long, default_value_t = 2)]
    pub evidence: usize,
    /// The vocabulary that resolves names (default: $MEDKG_VOCAB, else scripts/vocab.sh's).
    #[arg(long)]
    pub vocabulary: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// A CURIE (`DRUGBANK:DB00945`) or a name (`aspirin`).
    #[arg(required = true)]
    pub name: Vec<String>,
}

/// The arguments of `medkg sparql`.
#[derive(clap::Args)]
pub struct SparqlArgs {
    /// The data directory a run wrote (its graph is DATA_DIR/graph).
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Only this tenant's graph.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// SPARQL 1.1 Query Results JSON (else tab-separated values).
    #[arg(long)]
    pub json: bool,
    /// The query, or @FILE to read it from a file.
    pub query: String,
}

/// The arguments of `medkg export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The data directory a run wrote (its graph is DATA_DIR/graph).
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Only this tenant's graphs (default: all).
    #[arg(long)]
    pub tenant: Option<String>,
}

/// The arguments of `medkg stats`.
#[derive(clap::Args)]
pub struct StatsArgs {
    /// The data directory a run wrote.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `medkg bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The pipeline to bench (with --source).
    #[arg(long, requires = "source")]
    pub pipeline: Option<PathBuf>,
    /// `file:PATH`, or `kafka:TOPIC` with --records: the bench produces the
    /// records into TOPIC (an empty one), reads them back through the
    /// pipeline, and runs the same file through it too, side by side.
    #[arg(long)]
    pub source: Option<SourceSpec>,
    /// The JSONL records of a `kafka:` bench.
    #[arg(long)]
    pub records: Option<PathBuf>,
    /// Freshness instead of throughput (with kafka:TOPIC and --records): a
    /// load of RATE records a second from --records, and --markers
    /// documents timed from their producer to a search (as `medkg serve` sees them).
    #[arg(long, value_name = "RATE", requires = "records")]
    pub freshness: Option<f64>,
    /// The documents a freshness bench times.
    #[arg(long, default_value_t = 40, requires = "freshness")]
    pub markers: usize,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Queries to time, one a line (against --data-dir, after the pipeline bench if there is one);
    /// a line `QUERY<TAB>DOC_ID` also scores where that document ranks (mrr_at_k, k = 10).
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Where the bench's run writes (and the queries read).
    #[arg(long, default_value = "data/bench")]
    pub data_dir: PathBuf,
    /// Worker threads.
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
    /// Search mode of the query bench.
    #[arg(long, default_value = "hybrid")]
    pub mode: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

/// The arguments of `medkg produce`.
#[derive(clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The topic.
    #[arg(long)]
    pub topic: String,
    /// Records per second (default: as fast as the broker takes them).
    #[arg(long)]
    pub rate: Option<f64>,
    /// The JSONL file.
    pub file: PathBuf,
}

/// The arguments of `medkg validate`.
#[derive(clap::Args)]
pub struct ValidateArgs {
    /// Pipeline files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Resilience policies (default: ../resilience.yaml next to each pipeline, else the built-in ones).
    #[arg(long)]
    pub resilience: Option<PathBuf>,
}

/// How an API source pages (each overrides the pipeline's ingest `source:`).
#[derive(clap::Args, Default)]
pub struct AdapterArgs {
    /// The API's root, e.g. a mirror or a test server (default: the public API).
    #[arg(long)]
    pub base_url: Option<String>,
    /// Only records new or updated on or after this day (YYYY-MM-DD), on the first pass.
    #[arg(long)]
    pub since: Option<String>,
    /// Keep polling for new and updated records every --interval, until SIGTERM.
    #[arg(long)]
    pub follow: bool,
    /// Time between two passes with --follow (default 10m).
    #[arg(long)]
    pub interval: Option<String>,
    /// Your contact address, which the APIs ask for (E-utilities `email`, OpenAlex `mailto`;
    /// required by Unpaywall).
    #[arg(long)]
    pub email: Option<String>,
    /// An API key (E-utilities: 10 requests/s instead of 3; OpenAlex). Better in the
    /// environment, out of `ps`: NCBI_API_KEY (pubmed), OPENALEX_API_KEY (openalex).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Records a page asks for (ctgov up to 1000, pubmed up to 10000, openalex up to 200).
    #[arg(long)]
    pub page_size: Option<u32>,
}

impl AdapterArgs {
    /// `spec` with these arguments over it.
    pub fn apply(&self, mut spec: AdapterSpec) -> anyhow::Result<AdapterSpec> {
        let or = |given: &Option<String>, had: Option<String>| given.clone().or(had);
        spec.base_url = or(&self.base_url, spec.base_url);
        spec.since = or(&self.since, spec.since);
        spec.email = or(&self.email, spec.email);
        spec.api_key = or(&self.api_key, spec.api_key).or_else(|| {
            let variable = match spec.kind {
                AdapterKind::Pubmed => "NCBI_API_KEY",
                AdapterKind::OpenAlex => "OPENALEX_API_KEY",
                AdapterKind::Ctgov | AdapterKind::Unpaywall => return None,
            };
            std::env::var(variable).ok().filter(|k| !k.trim().is_empty())
        });
        spec.page_size = self.page_size.or(spec.page_size);
        spec.follow |= self.follow;
        if let Some(interval) = &self.interval {
            spec.interval = medkg_topology::parse_duration(interval)
                .ok_or_else(|| anyhow!("--interval `{interval}` is not a duration such as 30s or 10m"))?;
        }
        spec.check().map_err(|e| anyhow!(e))?;
        Ok(spec)
    }

    /// Whether any of them was given (they need an API source).
    pub fn any(&self) -> bool {
        self.base_url.is_some()
            || self.since.is_some()
            || self.follow
            || self.interval.is_some()
            || self.email.is_some()
            || self.api_key.is_some()
            || self.page_size.is_some()
    }
}

/// A timely cluster: several processes, `-w` workers each.
#[derive(clap::Args, Default)]
pub struct ClusterArgs {
    /// Processes in the cluster.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    pub processes: usize,
    /// This process's index, from 0.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    pub process: usize,
    /// Hostfile: one host:port a line, process 0 first (needed when -n > 1).
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
}

impl ClusterArgs {
    pub fn cluster(&self) -> anyhow::Result<Option<Cluster>> {
        if self.processes <= 1 {
            return Ok(None);
        }
        let hostfile = self.hostfile.as_deref().ok_or_else(|| anyhow!("-n {} needs -h HOSTFILE", self.processes))?;
        Cluster::from_hostfile(hostfile, self.processes, self.process).map(Some)
    }
}

/// What a run reports, and where.
#[derive(clap::Args)]
pub struct TelemetryArgs {
    /// Lifecycle CloudEvents: off, file:PATH (JSON lines) or kafka:TOPIC (e.g.
    /// kafka:orchestration.events.v1; needs --brokers).
    #[arg(long, default_value = "off")]
    pub events: String,
    /// One event per document per stage, or one per batch per stage.
    #[arg(long, default_value = "document", value_parser = ["document", "batch"])]
    pub event_granularity: String,
    /// Serve Prometheus metrics at http://ADDR/metrics while the run lasts; `off` serves none.
    /// The default address is skipped with a warning when busy; an explicit one must bind.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// OpenLineage run events: file:PATH (JSON lines) or an http(s):// endpoint.
    #[arg(long)]
    pub lineage: Option<String>,
    /// The run's id in events, lineage, logs and the ledger (default: a fresh UUID; the
    /// processes of a cluster need one, the same in each).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Keep no job ledger (DATA_DIR/ledger.sqlite), e.g. for throughput benchmarks.
    #[arg(long)]
    pub no_ledger: bool,
}

impl TelemetryArgs {
    pub fn options(&self, kafka: &KafkaArgs) -> anyhow::Result<TelemetryOptions> {
        let mut options = TelemetryOptions {
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
            None => (Some(DEFAULT_METRICS_ADDR), false),
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
pub struct KafkaArgs {
    /// Kafka brokers, host:port[,host:port].
    #[arg(long)]
    pub brokers: Option<String>,
    /// Consumer group (default: medkg; pdf-parser: medkg-pdf-parser).
    #[arg(long)]
    pub group: Option<String>,
    /// librdkafka property key=value (repeatable), e.g. session.timeout.ms=2000.
    #[arg(long = "kafka-option")]
    pub kafka_options: Vec<String>,
}

impl KafkaArgs {
    pub fn settings(&self) -> anyhow::Result<KafkaSettings> {
        self.settings_or("medkg")
    }

    /// The settings, with `group` unless --group names one.
    pub fn settings_or(&self, group: &str) -> anyhow::Result<KafkaSettings> {
        let brokers = self.brokers.clone().ok_or_else(|| anyhow!("a Kafka source needs --brokers HOST:PORT"))?;
        let options = self
            .kafka_options
            .iter()
            .map(|o| Ok(medkg_connectors::kafka::parse_option(o)?))
            .collect::<anyhow::Result<_>>()?;
        Ok(KafkaSettings { brokers, group: self.group.clone().unwrap_or_else(|| group.to_string()), options })
    }
}

/// Where models come from and where they run.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// Models directory (default: MEDKG_MODELS, else ../shared/models).
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// cpu | cuda for every model stage (default: each stage's `device`). cuda never falls back to the CPU.
    #[arg(long)]
    pub device: Option<String>,
}

impl ModelArgs {
    pub fn device(&self) -> anyhow::Result<Option<Device>> {
        self.device.as_deref().map(|d| d.parse::<Device>().map_err(|e| anyhow!(e))).transpose()
    }
}
