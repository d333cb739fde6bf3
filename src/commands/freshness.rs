//! `medkg bench --freshness RATE`: how long a document takes from its
//! producer to a search, while the pipeline reads a steady load.
//!
//! The pipeline runs in this process on a `kafka:` topic (a consumer group
//! of its own). A producer thread sends the `--records` file into the topic
//! at RATE records a second, over and over; meanwhile marker documents,
//! each carrying a word found nowhere else, are produced one at a time at
//! uneven intervals (so they do not fall in step with commits). The clock
//! of a marker starts just before it is handed to the producer and stops
//! when a search finds it through the readers `medkg serve` uses, refreshed
//! as often as its watcher refreshes them. What it measures is therefore
//! what a user of `medkg serve` sees: Kafka's delivery, the epoch, the
//! pipeline, the index commit and the reopen.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use medkg_connectors::kafka::KafkaSettings;
use medkg_dataflow::{Progress, RunOptions};
use medkg_serve::readers::{Readers, POLL_INTERVAL};
use rdkafka::producer::{BaseProducer, Producer};
use serde_json::{json, Map, Value};

use super::produce;

/// How long the first marker (the group forming, the first commit) may take.
const WARM_UP: Duration = Duration::from_secs(90);

/// How long one marker may take before it counts as lost.
const MARKER_LIMIT: Duration = Duration::from_secs(30);

/// Load before the first timed marker.
const SETTLE: Duration = Duration::from_secs(3);

/// The freshness run's settings.
pub struct Freshness<'a> {
    pub topic: &'a str,
    pub records: &'a Path,
    pub settings: KafkaSettings,
    /// Load, in records a second.
    pub rate: f64,
    /// Timed markers.
    pub markers: usize,
    /// The run's options (a Kafka source on `topic`).
    pub options: RunOptions,
}

/// Runs the freshness bench; returns its report fields (`freshness_*`).
pub fn freshness(run: Freshness<'_>) -> anyhow::Result<Map<String, Value>> {
    let Freshness { topic, records, settings, rate, markers, mut options } = run;
    if !(rate > 0.0 && rate.is_finite()) {
        bail!("--freshness takes a load in records a second (more than 0)");
    }
    if markers == 0 {
        bail!("--markers must be at least 1");
    }
    let (data_dir, tenant) = (options.data_dir.clone(), options.tenant.clone());
    super::bench::clear(&data_dir)?;
    let source = options.kafka.as_mut().ok_or_else(|| anyhow!("--freshness needs a kafka: source"))?;
    source.settings = settings.clone();
    let stop = Arc::new(AtomicBool::new(false));
    options.stop = Some(stop.clone());
    let progress = Arc::new(Progress::default());
    let pipeline = {
        let progress = progress.clone();
        std::thread::Builder::new()
            .name("medkg-freshness-run".into())
            .spawn(move || medkg_dataflow::run(options, progress, |_, _| {}))?
    };
    let stop_all = |load_stop: Option<&AtomicBool>| {
        if let Some(load) = load_stop {
            load.store(true, Ordering::SeqCst);
        }
        stop.store(true, Ordering::SeqCst);
    };
    let load = Load { topic, records, settings: &settings, rate };
    let result = measure(&load, markers, &tenant, &data_dir, &progress, &stop_all);
    stop_all(None);
    let summary = pipeline.join().map_err(|_| anyhow!("the pipeline's thread panicked"))?;
    let mut fields = result?;
    let summary = summary?;
    fields.insert("freshness_run_docs".into(), json!(summary.docs));
    Ok(fields)
}

/// The load: `records`, over and over, into `topic` at `rate` a second.
struct Load<'a> {
    topic: &'a str,
    records: &'a Path,
    settings: &'a KafkaSettings,
    rate: f64,
}

/// The markers' side: warms up, starts the load, times the markers.
fn measure(
    load: &Load<'_>,
    markers: usize,
    tenant: &str,
    data_dir: &Path,
    progress: &Progress,
    stop_all: &dyn Fn(Option<&AtomicBool>),
) -> anyhow::Result<Map<String, Value>> {
    let &Load { topic, records, settings, rate } = load;
    // Markers leave at once: the producer's own linger is not the engine's latency.
    let producer: BaseProducer = settings
        .producer_config()
        .set("linger.ms", "0")
        .create()
        .map_err(|e| anyhow!("cannot create a Kafka producer: {e}"))?;
    let readers = Readers::new(data_dir, 1);
    let run_tag = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() % 1_000_000_000).unwrap_or(0);
    let mut watch = Watch { readers: &readers, producer: &producer, topic, tenant, run_tag };

    let warm_up = watch.time(0, WARM_UP)?.ok_or_else(|| {
        anyhow!("the first marker was not searchable within {} s: is the pipeline reading {topic}?", WARM_UP.as_secs())
    })?;

    // The load: the records, read once (keyed as `medkg produce` keys
    // them), sent over and over at `rate`.
    let load_records = read_records(records)?;
    let load_stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (producer, topic, load_stop) = (produce::producer(settings)?, topic.to_string(), load_stop.clone());
        std::thread::Builder::new().name("medkg-freshness-load".into()).spawn(move || -> anyhow::Result<u64> {
            let (began, mut sent) = (Instant::now(), 0u64);
            'load: loop {
                for (key, payload) in &load_records {
                    if load_stop.load(Ordering::Relaxed) {
                        break 'load;
                    }
                    produce::send(&producer, &topic, key.as_deref(), payload)?;
                    sent += 1;
                    produce::pace(began, sent, Some(rate));
                }
            }
            produce::flush(&producer)?;
            Ok(sent)
        })?
    };
    std::thread::sleep(SETTLE);
    let (docs_before, began) = (progress.docs.load(Ordering::Relaxed), Instant::now());
    let mut latencies = Vec::with_capacity(markers);
    let mut lost = 0usize;
    let mut gap = Gap(run_tag as u64 | 1);
    for i in 1..=markers {
        match watch.time(i, MARKER_LIMIT) {
            Ok(Some(latency)) => latencies.push(latency.as_secs_f64() * 1000.0),
            Ok(None) => lost += 1,
            Err(e) => {
                stop_all(Some(&load_stop));
                return Err(e);
            }
        }
        std::thread::sleep(gap.next());
    }
    let seconds = began.elapsed().as_secs_f64();
    let indexed = progress.docs.load(Ordering::Relaxed).saturating_sub(docs_before);
    let lag = progress.lag();
    stop_all(Some(&load_stop));
    let produced = load.join().map_err(|_| anyhow!("the load's thread panicked"))??;

    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied();
    let mut fields = Map::new();
    fields.insert("freshness_rate".into(), json!(rate));
    fields.insert("freshness_markers".into(), json!(markers));
    fields.insert("freshness_lost".into(), json!(lost));
    fields.insert("freshness_warm_up_ms".into(), json!(warm_up.as_secs_f64() * 1000.0));
    fields.insert("freshness_p50_ms".into(), json!(at(0.5)));
    fields.insert("freshness_p95_ms".into(), json!(at(0.95)));
    fields.insert("freshness_max_ms".into(), json!(latencies.last()));
    fields.insert("freshness_poll_ms".into(), json!(POLL_INTERVAL.as_millis()));
    fields.insert("freshness_load_records".into(), json!(produced));
    fields.insert("freshness_docs_per_sec".into(), json!(indexed as f64 / seconds.max(1e-9)));
    fields.insert("freshness_lag_at_end".into(), json!(lag));
    Ok(fields)
}

/// Produces markers and watches for them.
struct Watch<'a> {
    readers: &'a Readers,
    producer: &'a BaseProducer,
    topic: &'a str,
    tenant: &'a str,
    run_tag: u128,
}

impl Watch<'_> {
    /// Produces marker `i` and polls the readers until a search finds it;
    /// `None` if it takes longer than `limit`.
    fn time(&mut self, i: usize, limit: Duration) -> anyhow::Result<Option<Duration>> {
        let word = format!("zqfresh{}x{i}", self.run_tag);
        let id = format!("{}", 9_000_000_000u64 + (self.run_tag as u64 % 1_000_000) * 1_000 + i as u64);
        let record = json!({
            "pmid": id,
            "title": format!("Freshness marker {word}"),
            "abstract": format!("A marker document, {word}, timed from its producer to a search."),
        })
        .to_string();
        let began = Instant::now();
        produce::send(self.producer, self.topic, Some(&id), record.as_bytes())?;
        self.producer.flush(limit).map_err(|e| anyhow!("a marker was not acknowledged: {e}"))?;
        let mut last_check = None;
        while began.elapsed() < limit {
            let reopened = self.readers.refresh().unwrap_or(false);
            let generation = self.readers.current();
            let fresh = generation.as_ref().map(|g| g.number);
            if let Some(generation) = generation.filter(|_| reopened || last_check != fresh) {
                last_check = fresh;
                let found = generation.with(|index, _| index.search(&word, self.tenant, 1))?;
                if !found.is_empty() {
                    return Ok(Some(began.elapsed()));
                }
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(None)
    }
}

/// Uneven waits between markers (150–450 ms), from a seeded generator.
struct Gap(u64);

impl Gap {
    fn next(&mut self) -> Duration {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(150 + self.0 % 300)
    }
}

/// The most a freshness bench's load holds in memory.
const MAX_LOAD_BYTES: usize = 1 << 30;

/// Every record of `file`, with its key.
fn read_records(file: &Path) -> anyhow::Result<Vec<(Option<String>, Vec<u8>)>> {
    let source = medkg_connectors::FileSource::open(file)?;
    let (mut records, mut bytes) = (Vec::new(), 0usize);
    for (_, record) in source.records(0, 1, 0, produce::MAX_RECORD_BYTES) {
        let Ok(payload) = record else { continue };
        bytes += payload.bytes.len();
        if bytes > MAX_LOAD_BYTES {
            bail!("{} holds more than {} MiB of records: give a smaller load", file.display(), MAX_LOAD_BYTES >> 20);
        }
        records.push((produce::key_of(&payload.bytes), payload.bytes));
    }
    if records.is_empty() {
        bail!("{} holds no records to load", file.display());
    }
    Ok(records)
}
