//! What a run tells the outside world while it works: Prometheus metrics
//! (served at `/metrics`), CloudEvents lifecycle events, the job ledger and
//! logs. One [`Telemetry`] serves the whole process; each worker reports
//! through a `Reporter` per stage.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use medkg_connectors::events::{EventData, EventSink, EventTarget, Granularity, Lifecycle};
use medkg_connectors::ledger::{LedgerBuffer, Status, Update};
use medkg_connectors::lineage::LineageTarget;
use medkg_operators::resilience::{BreakerState, Observer};
use medkg_operators::StageError;
use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::progress::Progress;

/// Where a run reports (`--events`, `--event-granularity`, `--metrics-addr`, `--lineage`).
#[derive(Clone, Debug)]
pub struct TelemetryOptions {
    /// Lifecycle events.
    pub events: EventTarget,
    /// Per document or per batch.
    pub granularity: Granularity,
    /// Serve `/metrics` here (`None`: not at all).
    pub metrics_addr: Option<SocketAddr>,
    /// A busy `metrics_addr` fails the run (else: a warning, and no metrics).
    pub metrics_required: bool,
    /// OpenLineage run events.
    pub lineage: Option<LineageTarget>,
    /// The run's id (a fresh UUID by default).
    pub run_id: String,
    /// Keep the job ledger (`--no-ledger` turns it off, for pure throughput runs).
    pub ledger: bool,
    /// Brokers for `--events kafka:TOPIC` when the source is not Kafka.
    pub kafka: Option<medkg_connectors::kafka::KafkaSettings>,
}

/// The default metrics address.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

impl Default for TelemetryOptions {
    fn default() -> Self {
        TelemetryOptions {
            events: EventTarget::Off,
            granularity: Granularity::Document,
            metrics_addr: None,
            metrics_required: false,
            lineage: None,
            run_id: uuid::Uuid::new_v4().to_string(),
            kafka: None,
            ledger: true,
        }
    }
}

/// Every metric medkg exports, in a registry of the run's own.
pub struct Metrics {
    registry: Registry,
    /// Seconds from an epoch's first record read to all of it durable.
    pub job_duration: HistogramVec,
    /// Seconds a stage spends on a document (model stages: on a batch).
    pub stage_duration: HistogramVec,
    /// Retries per stage.
    pub stage_retries: IntCounterVec,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// Seconds attempts waited for the rate limiter.
    pub rate_limit_wait: HistogramVec,
    /// Epochs read and not yet durable.
    pub active_jobs: IntGaugeVec,
    /// Records read from the source.
    pub docs_in: IntCounterVec,
    /// Documents that reached the sinks.
    pub docs_out: IntCounterVec,
    /// Records and documents that failed.
    pub docs_failed: IntCounterVec,
    /// Dead letters written, by stage and kind.
    pub dead_letters: IntCounterVec,
    /// Documents waiting at a gate.
    pub gate_pending: IntGaugeVec,
    /// Kafka messages not yet durable.
    pub consumer_lag: IntGaugeVec,
    /// Seconds from a Kafka message's timestamp to the engine reading it.
    pub record_age: HistogramVec,
    /// Lifecycle events that could not be written.
    pub event_errors: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let seconds = exponential_buckets(0.0005, 2.5, 16).unwrap_or_default();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        }
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(seconds.clone()), labels).expect("valid"),
            )
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid"))
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(&registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"))
        };
        Metrics {
            job_duration: histogram(
                "medkg_job_duration_seconds",
                "Seconds from an epoch's first record read until all of it is durable at the sinks",
                &["pipeline"],
            ),
            stage_duration: histogram(
                "medkg_stage_duration_seconds",
                "Seconds a stage spends on one document (model stages: one batch)",
                &["pipeline", "stage"],
            ),
            stage_retries: counter(
                "medkg_stage_retries_total",
                "Retries made under the stage's policy",
                &["pipeline", "stage"],
            ),
            breaker_state: gauge(
                "medkg_circuit_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open",
                &["pipeline", "stage"],
            ),
            rate_limit_wait: histogram(
                "medkg_rate_limit_wait_seconds",
                "Seconds an attempt waited for the stage's rate limiter",
                &["pipeline", "stage"],
            ),
            active_jobs: gauge("medkg_active_jobs", "Epochs read and not yet durable", &["pipeline"]),
            docs_in: counter("medkg_docs_in_total", "Records read from the source", &["pipeline"]),
            docs_out: counter("medkg_docs_out_total", "Documents that reached the pipeline's sinks", &["pipeline"]),
            docs_failed: counter("medkg_docs_failed_total", "Records and documents that failed", &["pipeline"]),
            dead_letters: counter("medkg_dead_letters_total", "Dead letters written", &["pipeline", "stage", "kind"]),
            gate_pending: gauge("medkg_gate_pending", "Documents waiting at the pipeline's gates", &["pipeline"]),
            consumer_lag: gauge("medkg_consumer_lag", "Kafka messages of the topic not yet durable", &["pipeline"]),
            record_age: histogram(
                "medkg_kafka_record_age_seconds",
                "Seconds from a Kafka message's timestamp (producer or broker) until the engine reads it",
                &["pipeline"],
            ),
            event_errors: counter(
                "medkg_event_errors_total",
                "Lifecycle events that could not be written to their sink",
                &["pipeline"],
            ),
            registry,
        }
    }

    /// The text exposition of every metric, with the run's counters brought up to date.
    pub fn render(&self, pipeline: &str, progress: &Progress) -> String {
        let bring_up = |counter: &IntCounterVec, value: u64| {
            let c = counter.with_label_values(&[pipeline]);
            let now = c.get();
            if value > now {
                c.inc_by(value - now);
            }
        };
        bring_up(&self.docs_in, progress.records.load(Ordering::Relaxed));
        bring_up(&self.docs_out, progress.docs.load(Ordering::Relaxed));
        bring_up(&self.docs_failed, progress.failed.load(Ordering::Relaxed));
        self.consumer_lag.with_label_values(&[pipeline]).set(progress.lag() as i64);
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The process's telemetry.
pub struct Telemetry {
    /// The run.
    pub run_id: String,
    /// The pipeline's name (the `pipeline` label).
    pub pipeline: String,
    /// Its metrics.
    pub metrics: Metrics,
    /// Its lifecycle events.
    pub events: EventSink,
    /// Per document or per batch.
    pub granularity: Granularity,
    /// Event write failures seen (the first is logged).
    event_failures: AtomicU64,
    /// Each stage's document counts, in plan order.
    stages: std::sync::Mutex<Vec<StageEntry>>,
}

/// Documents a stage took up and how they left it (all workers of the process).
#[derive(Debug, Default)]
pub struct StageCount {
    /// Passed on.
    pub done: AtomicU64,
    /// Dead-lettered.
    pub failed: AtomicU64,
}

struct StageEntry {
    name: String,
    kind: String,
    calls_out: bool,
    count: Arc<StageCount>,
}

impl Telemetry {
    /// Telemetry for a run.
    pub fn new(run_id: &str, pipeline: &str, events: EventSink, granularity: Granularity) -> Telemetry {
        let metrics = Metrics::new();
        // Every gauge and counter a dashboard plots exists from the start.
        for c in [&metrics.docs_in, &metrics.docs_out, &metrics.docs_failed, &metrics.event_errors] {
            c.with_label_values(&[pipeline]);
        }
        metrics.active_jobs.with_label_values(&[pipeline]).set(0);
        metrics.gate_pending.with_label_values(&[pipeline]).set(0);
        metrics.job_duration.with_label_values(&[pipeline]);
        metrics.consumer_lag.with_label_values(&[pipeline]).set(0);
        Telemetry {
            run_id: run_id.to_string(),
            pipeline: pipeline.to_string(),
            metrics,
            events,
            granularity,
            event_failures: AtomicU64::new(0),
            stages: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Declares the plan's stages (name, kind), in order, so every stage
    /// shows in a run's record from the start.
    pub fn declare_stages<'a>(&self, stages: impl IntoIterator<Item = (&'a str, &'a str)>) {
        for (name, kind) in stages {
            self.stage_entry(name, Some(kind), false);
        }
    }

    fn stage_entry(&self, stage: &str, kind: Option<&str>, calls_out: bool) -> Arc<StageCount> {
        let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = stages.iter_mut().find(|e| e.name == stage) {
            entry.calls_out |= calls_out;
            return entry.count.clone();
        }
        let count = Arc::new(StageCount::default());
        let kind = kind.unwrap_or(stage).to_string();
        stages.push(StageEntry { name: stage.to_string(), kind, calls_out, count: count.clone() });
        count
    }

    /// Each stage's counts, latencies, retries and breaker as they are now.
    pub fn stage_records(&self) -> Vec<medkg_connectors::ledger::StageRecord> {
        let stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        stages
            .iter()
            .map(|e| {
                let labels = [self.pipeline.as_str(), e.name.as_str()];
                let histogram = self.metrics.stage_duration.with_label_values(&labels);
                let (done, failed) = (e.count.done.load(Ordering::Relaxed), e.count.failed.load(Ordering::Relaxed));
                let breaker = e.calls_out.then(|| {
                    match self.metrics.breaker_state.with_label_values(&labels).get() {
                        1 => "open",
                        2 => "half-open",
                        _ => "closed",
                    }
                    .to_string()
                });
                medkg_connectors::ledger::StageRecord {
                    name: e.name.clone(),
                    kind: e.kind.clone(),
                    docs_in: done + failed,
                    docs_out: done,
                    docs_failed: failed,
                    p50_seconds: quantile(&histogram, 0.50),
                    p95_seconds: quantile(&histogram, 0.95),
                    retries: self.metrics.stage_retries.with_label_values(&labels).get(),
                    breaker,
                }
            })
            .collect()
    }

    /// Writes one event; a failure is counted and logged once, never fatal.
    pub fn emit(&self, step: Lifecycle, data: &EventData) {
        if let Err(e) = self.events.emit(step, data) {
            self.metrics.event_errors.with_label_values(&[&self.pipeline]).inc();
            if self.event_failures.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::error!(run_id = %self.run_id, pipeline = %self.pipeline, error = %e, "cannot write lifecycle events");
            }
        }
    }

    /// A source could not deliver a record (a bad line, a bad page): the
    /// `medkg_dead_letters_total` count, a warning, and a `failed` event
    /// naming the record by its position.
    pub(crate) fn source_failed(&self, position: &str, tenant: &str, error: &StageError) {
        self.metrics.dead_letters.with_label_values(&[&self.pipeline, "source", &error.kind]).inc();
        tracing::warn!(
            run_id = %self.run_id, pipeline = %self.pipeline, stage = "source",
            position = %position, error_kind = %error.kind, "dead-lettered: {}", error.message
        );
        if self.events.enabled() {
            let data = EventData {
                doc_id: Some(position.to_string()),
                tenant_id: Some(tenant.to_string()),
                error: Some(error.to_string()),
                ..self.data("source")
            };
            self.emit(Lifecycle::Failed, &data);
        }
    }

    fn data(&self, stage: &str) -> EventData {
        EventData {
            run_id: self.run_id.clone(),
            pipeline: self.pipeline.clone(),
            stage: stage.to_string(),
            attempt: 1,
            ..EventData::default()
        }
    }
}

/// A document (or record) a stage reports about.
#[derive(Clone, Debug)]
pub(crate) struct Subject<'a> {
    /// The document id, or the record's position when it has none yet.
    pub id: &'a str,
    pub tenant: &'a str,
    /// Whether `id` is a document id (ledger rows are keyed by document).
    pub is_doc: bool,
}

/// One stage's reporting on one worker.
#[derive(Clone)]
pub(crate) struct Reporter {
    pub telemetry: Arc<Telemetry>,
    pub stage: Rc<str>,
    index: u32,
    is_sink: bool,
    /// Write `in_progress` rows when a document passes this stage (stages
    /// that wait on the outside world); others write only final states.
    progress_rows: bool,
    duration: prometheus::Histogram,
    ledger: Rc<RefCell<LedgerBuffer>>,
    count: Arc<StageCount>,
}

impl Reporter {
    pub fn new(
        telemetry: &Arc<Telemetry>,
        stage: &str,
        index: usize,
        is_sink: bool,
        progress_rows: bool,
        ledger: &Rc<RefCell<LedgerBuffer>>,
    ) -> Reporter {
        let duration = telemetry.metrics.stage_duration.with_label_values(&[&telemetry.pipeline, stage]);
        telemetry.metrics.stage_retries.with_label_values(&[&telemetry.pipeline, stage]);
        let count = telemetry.stage_entry(stage, None, false);
        Reporter {
            count,
            telemetry: telemetry.clone(),
            stage: stage.into(),
            index: index as u32,
            is_sink,
            progress_rows,
            duration,
            ledger: ledger.clone(),
        }
    }

    /// A stage that calls out under a policy: its breaker (closed) and
    /// rate-limit series exist from the start.
    pub fn calls_out(telemetry: &Telemetry, stage: &str) {
        let labels = [telemetry.pipeline.as_str(), stage];
        telemetry.metrics.breaker_state.with_label_values(&labels).set(0);
        telemetry.metrics.rate_limit_wait.with_label_values(&labels);
        telemetry.stage_entry(stage, None, true);
    }

    fn per_document(&self) -> bool {
        self.telemetry.events.enabled() && self.telemetry.granularity == Granularity::Document
    }

    fn per_batch(&self) -> bool {
        self.telemetry.events.enabled() && self.telemetry.granularity == Granularity::Batch
    }

    fn doc_data(&self, subject: &Subject<'_>, attempt: u32) -> EventData {
        EventData {
            doc_id: Some(subject.id.to_string()),
            tenant_id: Some(subject.tenant.to_string()),
            attempt,
            ..self.telemetry.data(&self.stage)
        }
    }

    /// The stage takes a document up.
    pub fn started(&self, subject: &Subject<'_>) -> Instant {
        if self.per_document() {
            self.telemetry.emit(Lifecycle::Started, &self.doc_data(subject, 1));
        }
        Instant::now()
    }

    /// The stage passed a document on after `attempts` attempts.
    pub fn completed(&self, subject: &Subject<'_>, began: Instant, attempts: u32) {
        let took = began.elapsed();
        self.duration.observe(took.as_secs_f64());
        self.count.done.fetch_add(1, Ordering::Relaxed);
        if self.per_document() {
            let data = EventData { duration_ms: Some(millis(took)), ..self.doc_data(subject, attempts.max(1)) };
            self.telemetry.emit(Lifecycle::Completed, &data);
        }
        // A row per stage a document passes would cost a write per stage in
        // microsecond stages; final states, retries and waits are what matter.
        if subject.is_doc && (self.is_sink || self.progress_rows || attempts > 1) {
            let status = if self.is_sink { Status::Completed } else { Status::InProgress };
            self.record(subject, status, attempts, None);
        }
    }

    /// The stage dead-lettered a document.
    pub fn failed(&self, subject: &Subject<'_>, began: Option<Instant>, attempts: u32, error: &StageError) {
        let took = began.map(|b| b.elapsed());
        if let Some(took) = took {
            self.duration.observe(took.as_secs_f64());
        }
        self.count.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            run_id = %self.telemetry.run_id,
            pipeline = %self.telemetry.pipeline,
            stage = %self.stage,
            doc_id = %subject.id,
            tenant_id = %subject.tenant,
            error_class = error.class.as_str(),
            error_kind = %error.kind,
            "dead-lettered: {}", error.message
        );
        if self.telemetry.events.enabled() {
            let data = EventData {
                duration_ms: took.map(millis),
                error: Some(error.to_string()),
                ..self.doc_data(subject, attempts.max(1))
            };
            self.telemetry.emit(Lifecycle::Failed, &data);
        }
        self.record(subject, Status::Failed, attempts, Some(error.to_string()));
    }

    /// The stage's position in the plan.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// A ledger update as it is.
    pub fn update(&self, update: Update) {
        self.ledger.borrow_mut().record(update);
    }

    /// A ledger row for a document this stage has seen.
    pub fn record(&self, subject: &Subject<'_>, status: Status, attempts: u32, error: Option<String>) {
        let mut update = Update::new(subject.tenant, subject.id, &self.stage, self.index, status);
        update.retries = attempts.saturating_sub(1);
        update.error = error;
        self.ledger.borrow_mut().record(update);
    }

    /// The stage starts a batch of `docs` documents of `epoch` (batch
    /// granularity; the index starts an epoch before it knows its size).
    pub fn batch_started(&self, epoch: u64, docs: Option<usize>) {
        if self.per_batch() {
            let data =
                EventData { docs: docs.map(|n| n as u64), epoch: Some(epoch), ..self.telemetry.data(&self.stage) };
            self.telemetry.emit(Lifecycle::Started, &data);
        }
    }

    /// The stage finished a batch.
    pub fn batch_completed(&self, epoch: u64, docs: usize, took: Duration) {
        if self.per_batch() {
            let data = EventData {
                docs: Some(docs as u64),
                epoch: Some(epoch),
                duration_ms: Some(millis(took)),
                ..self.telemetry.data(&self.stage)
            };
            self.telemetry.emit(Lifecycle::Completed, &data);
        }
    }

    /// Observes a model batch's time.
    pub fn observe(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
    }
}

/// The `q` quantile of a histogram, interpolated linearly within its
/// bucket (as Prometheus' `histogram_quantile` does); `None` when empty.
pub fn quantile(histogram: &prometheus::Histogram, q: f64) -> Option<f64> {
    use prometheus::core::Metric;
    let metric = histogram.metric();
    let h = metric.get_histogram();
    let total = h.get_sample_count();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for bucket in h.get_bucket() {
        let (upper, count) = (bucket.upper_bound(), bucket.cumulative_count());
        if count as f64 >= rank {
            let within = (count - below).max(1) as f64;
            return Some(lower + (upper - lower) * ((rank - below as f64) / within).clamp(0.0, 1.0));
        }
        (lower, below) = (upper, count);
    }
    Some(lower) // past the last bucket: its bound is the best answer there is
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Reports one call under a policy (it runs on the tokio runtime): retrying
/// events and logs, retry counts, breaker state and rate-limit waits.
pub(crate) struct CallObserver {
    pub telemetry: Arc<Telemetry>,
    pub stage: String,
    pub doc_id: String,
    pub tenant: String,
    pub began: Instant,
}

impl Observer for CallObserver {
    fn retrying(&self, attempt: u32, error: &StageError, delay: Duration) {
        let t = &self.telemetry;
        t.metrics.stage_retries.with_label_values(&[&t.pipeline, &self.stage]).inc();
        tracing::info!(
            run_id = %t.run_id, pipeline = %t.pipeline, stage = %self.stage, doc_id = %self.doc_id,
            attempt, delay_ms = delay.as_millis() as u64, error_kind = %error.kind,
            "retrying: {}", error.message
        );
        if t.events.enabled() {
            let data = EventData {
                doc_id: Some(self.doc_id.clone()),
                tenant_id: Some(self.tenant.clone()),
                attempt,
                duration_ms: Some(millis(self.began.elapsed())),
                error: Some(error.to_string()),
                ..t.data(&self.stage)
            };
            t.emit(Lifecycle::Retrying, &data);
        }
    }

    fn rate_limited(&self, waited: Duration) {
        let t = &self.telemetry;
        t.metrics.rate_limit_wait.with_label_values(&[&t.pipeline, &self.stage]).observe(waited.as_secs_f64());
    }

    fn breaker(&self, state: BreakerState) {
        let t = &self.telemetry;
        t.metrics.breaker_state.with_label_values(&[&t.pipeline, &self.stage]).set(state.gauge());
        tracing::warn!(run_id = %t.run_id, pipeline = %t.pipeline, stage = %self.stage, state = state.as_str(), "circuit breaker");
    }
}

/// The most connections the metrics server holds open at once; more are
/// closed as they arrive.
pub const METRICS_MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send its request headers, and how long
/// any one connection may stay open.
pub const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const METRICS_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves `/metrics` (and `/healthz`) on the run's tokio runtime until it
/// shuts down. Binds before returning, so a busy port is reported at once.
///
/// A hostile client cannot starve the run: at most
/// [`METRICS_MAX_CONNECTIONS`] connections are held (more are closed at
/// once), headers must arrive within [`METRICS_HEADER_TIMEOUT`], every
/// connection ends within a minute, and failing `accept`s (out of file
/// descriptors) back off instead of spinning.
pub fn serve_metrics(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    telemetry: Arc<Telemetry>,
    progress: Arc<Progress>,
) -> std::io::Result<SocketAddr> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};

    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let _guard = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let limits = crate::http::HttpLimits {
        max_connections: METRICS_MAX_CONNECTIONS,
        header_timeout: METRICS_HEADER_TIMEOUT,
        connection_lifetime: METRICS_CONNECTION_LIFETIME,
    };
    let handler = move |request: hyper::Request<hyper::body::Incoming>| {
        let (telemetry, progress) = (telemetry.clone(), progress.clone());
        async move {
            let (status, kind, body) = match request.uri().path() {
                "/metrics" => (
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    telemetry.metrics.render(&telemetry.pipeline, &progress),
                ),
                "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
                _ => (StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics\n".to_string()),
            };
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static(kind));
            response
        }
    };
    runtime.spawn(crate::http::serve_connections(listener, "metrics server", limits, handler, || {}));
    Ok(bound)
}

impl Metrics {
    /// The names of every metric family (histograms without their suffixes).
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 13] = [
            &self.job_duration,
            &self.stage_duration,
            &self.stage_retries,
            &self.breaker_state,
            &self.rate_limit_wait,
            &self.active_jobs,
            &self.docs_in,
            &self.docs_out,
            &self.docs_failed,
            &self.dead_letters,
            &self.gate_pending,
            &self.consumer_lag,
            &self.event_errors,
        ];
        collectors.iter().flat_map(|c| c.desc()).map(|d| d.fq_name.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `medkg_*` name a text mentions, histogram suffixes dropped.
    fn mentioned(text: &str) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        for (i, _) in text.match_indices("medkg_") {
            let name: String =
                text[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit()).collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name.clone(), |n, s| n.strip_suffix(s).map_or(n.clone(), str::to_string));
            names.insert(base);
        }
        names
    }

    fn monitoring(file: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/monitoring").join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_dashboard_and_alerts_use_only_metrics_medkg_exports() {
        let exported: std::collections::BTreeSet<String> = Metrics::new().names().into_iter().collect();
        assert_eq!(exported.len(), 13);
        let dashboard: serde_json::Value = serde_json::from_str(&monitoring("grafana-dashboard.json")).unwrap();
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(panels.len() >= 6, "{} panels", panels.len());
        let mut plotted = std::collections::BTreeSet::new();
        for panel in panels {
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "panel {} plots nothing", panel["title"]);
            for target in targets {
                plotted.extend(mentioned(target["expr"].as_str().unwrap()));
            }
        }
        let alerts = monitoring("alerts.yml");
        assert!(alerts.matches("- alert:").count() >= 5);
        let alerted = mentioned(&alerts);
        for name in plotted.iter().chain(&alerted) {
            assert!(exported.contains(name), "{name} is not a metric medkg exports ({exported:?})");
        }
        // Every metric is on the dashboard.
        let unplotted: Vec<_> =
            exported.iter().filter(|n| !plotted.contains(*n) && *n != "medkg_event_errors_total").collect();
        assert!(unplotted.is_empty(), "not on the dashboard: {unplotted:?}");
    }

    #[test]
    fn render_brings_the_run_counters_up_to_date() {
        let telemetry = Telemetry::new("r", "p", EventSink::Off, Granularity::Document);
        let progress = Progress::default();
        progress.records.store(7, Ordering::Relaxed);
        progress.failed.store(2, Ordering::Relaxed);
        let text = telemetry.metrics.render("p", &progress);
        assert!(text.contains("medkg_docs_in_total{pipeline=\"p\"} 7"), "{text}");
        assert!(text.contains("medkg_docs_failed_total{pipeline=\"p\"} 2"), "{text}");
        progress.records.store(9, Ordering::Relaxed);
        assert!(telemetry.metrics.render("p", &progress).contains("medkg_docs_in_total{pipeline=\"p\"} 9"));
    }
}
