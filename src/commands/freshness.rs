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
//!
//! A consumer of the bench's own (same settings, its own group, reading
//! from the topic's end, doing nothing else) notes when each marker
//! reaches it: that is the broker's and the client's share, delivery, and
//! what is left of a marker's time is the engine's.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use medkg_connectors::kafka::KafkaSettings;
use medkg_dataflow::bench::nearest_rank;
use medkg_dataflow::{Progress, RunOptions};
use medkg_serve::readers::{Readers, POLL_INTERVAL};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
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
    let mut watch = Watch { readers: &readers, producer: &producer, topic, tenant, run_tag, probe: None };

    let (warm_up, _) = watch.time(0, WARM_UP)?.ok_or_else(|| {
        anyhow!("the first marker was not searchable within {} s: is the pipeline reading {topic}?", WARM_UP.as_secs())
    })?;
    // (The topic exists now: the probe reads from its end.)
    watch.probe = Some(Probe::start(settings, topic)?);

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
    let (mut latencies, mut deliveries, mut engine) = (Vec::new(), Vec::new(), Vec::new());
    let mut lost = 0usize;
    let mut gap = Gap(run_tag as u64 | 1);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for i in 1..=markers {
        match watch.time(i, MARKER_LIMIT) {
            Ok(Some((latency, delivery))) => {
                latencies.push(ms(latency));
                if let Some(delivery) = delivery {
                    deliveries.push(ms(delivery));
                    engine.push(ms(latency.saturating_sub(delivery)));
                }
            }
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
    drop(watch.probe.take());

    for samples in [&mut latencies, &mut deliveries, &mut engine] {
        samples.sort_by(f64::total_cmp);
    }
    let mut fields = Map::new();
    fields.insert("freshness_rate".into(), json!(rate));
    fields.insert("freshness_markers".into(), json!(markers));
    fields.insert("freshness_lost".into(), json!(lost));
    fields.insert("freshness_warm_up_ms".into(), json!(warm_up.as_secs_f64() * 1000.0));
    fields.insert("freshness_p50_ms".into(), json!(nearest_rank(&latencies, 0.5)));
    fields.insert("freshness_p95_ms".into(), json!(nearest_rank(&latencies, 0.95)));
    fields.insert("freshness_max_ms".into(), json!(latencies.last()));
    fields.insert("freshness_delivery_p50_ms".into(), json!(nearest_rank(&deliveries, 0.5)));
    fields.insert("freshness_delivery_p95_ms".into(), json!(nearest_rank(&deliveries, 0.95)));
    fields.insert("freshness_engine_p50_ms".into(), json!(nearest_rank(&engine, 0.5)));
    fields.insert("freshness_engine_p95_ms".into(), json!(nearest_rank(&engine, 0.95)));
    fields.insert("freshness_delivery_seen".into(), json!(deliveries.len()));
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
    /// Notes each marker's delivery (after the warm-up).
    probe: Option<Probe>,
}

impl Watch<'_> {
    /// Produces marker `i` and polls the readers until a search finds it:
    /// how long that took and, if the probe saw the marker, how long its
    /// delivery took; `None` if it takes longer than `limit`.
    fn time(&mut self, i: usize, limit: Duration) -> anyhow::Result<Option<(Duration, Option<Duration>)>> {
        let word = format!("zqfresh{}x{i}", self.run_tag);
        let id = format!("{}", 9_000_000_000u64 + (self.run_tag as u64 % 1_000_000) * 1_000 + i as u64);
        let record = json!({
            "pmid": id,
            "title": format!("Freshness marker {word}"),
            "abstract": format!("A marker document, {word}, timed from its producer to a search."),
        })
        .to_string();
        if let Some(probe) = &self.probe {
            probe.expect(&id);
        }
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
                    let took = began.elapsed();
                    let delivered =
                        self.probe.as_ref().and_then(Probe::arrival).map(|at| at.saturating_duration_since(began));
                    return Ok(Some((took, delivered)));
                }
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(None)
    }
}

/// A consumer of the bench's own on the topic, from its end, with the
/// engine's consumer settings and nothing else to do: when a marker
/// reaches it is when the broker and the client have delivered it.
/// Stopped when dropped.
struct Probe {
    /// The marker awaited (its key) and when it arrived.
    awaited: Arc<Mutex<(String, Option<Instant>)>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Probe {
    fn start(settings: &KafkaSettings, topic: &str) -> anyhow::Result<Probe> {
        let consumer: BaseConsumer = settings
            .consumer_config()
            .set("group.id", super::bench::own_group("medkg-freshness-probe"))
            .create()
            .map_err(|e| anyhow!("cannot create the delivery probe's consumer: {e}"))?;
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| anyhow!("cannot read the metadata of {topic}: {e}"))?;
        let mut partitions = TopicPartitionList::new();
        for partition in metadata.topics().iter().filter(|t| t.name() == topic).flat_map(|t| t.partitions()) {
            partitions.add_partition_offset(topic, partition.id(), Offset::End)?;
        }
        if partitions.count() == 0 {
            bail!("{topic} has no partitions");
        }
        consumer.assign(&partitions)?;
        let awaited = Arc::new(Mutex::new((String::new(), None)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (awaited, stop) = (awaited.clone(), stop.clone());
            std::thread::Builder::new().name("medkg-freshness-probe".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match consumer.poll(Duration::from_millis(20)) {
                        Some(Ok(message)) => {
                            let at = Instant::now();
                            let Ok(mut awaited) = awaited.lock() else { return };
                            if message.key() == Some(awaited.0.as_bytes()) {
                                awaited.1 = Some(at);
                            }
                        }
                        // A marker it misses only goes without its delivery figure.
                        Some(Err(e)) => tracing::warn!(error = %e, "the freshness bench's delivery probe"),
                        None => {}
                    }
                }
            })?
        };
        Ok(Probe { awaited, stop, thread: Some(thread) })
    }

    /// Awaits the marker keyed `key` (forgetting the last).
    fn expect(&self, key: &str) {
        if let Ok(mut awaited) = self.awaited.lock() {
            *awaited = (key.to_string(), None);
        }
    }

    /// When the awaited marker arrived, if it has.
    fn arrival(&self) -> Option<Instant> {
        self.awaited.lock().ok().and_then(|awaited| awaited.1)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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
