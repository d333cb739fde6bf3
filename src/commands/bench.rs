//! `medkg bench`: the models alone against the whole pipeline, a file
//! against Kafka, and search latency and quality.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use medkg_dataflow::{Mode, Progress};
use serde_json::{json, Map, Value};

use super::produce::produce_file;
use super::{run_options, Job};
use crate::cli::{AdapterArgs, BenchArgs, KafkaArgs, SourceSpec};

/// `medkg bench`.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let BenchArgs {
        pipeline,
        source,
        records,
        freshness,
        markers,
        kafka,
        queries,
        data_dir,
        workers,
        mode,
        json,
        models,
    } = args;
    let mut report = Map::new();
    if let (Some(pipeline), Some(source)) = (&pipeline, &source) {
        let options_for = |source: &SourceSpec, data_dir: PathBuf| {
            run_options(Job {
                pipeline,
                source: Some(source),
                data_dir,
                workers,
                tenant: "default".into(),
                from_start: true,
                resilience: None,
                models: &models,
                kafka: &kafka,
                adapter: &AdapterArgs::default(),
            })
        };
        if let Some(rate) = freshness {
            let (SourceSpec::Kafka(topic), Some(records)) = (source, &records) else {
                bail!("--freshness needs --source kafka:TOPIC and --records FILE");
            };
            let settings = kafka.settings_or(&own_group("medkg-freshness"))?;
            let options = options_for(source, beside(&data_dir, "-freshness"))?;
            report.extend(super::freshness::freshness(super::freshness::Freshness {
                topic,
                records,
                settings,
                rate,
                markers,
                options,
            })?);
            return print_report(report, json);
        }
        let file = match source {
            SourceSpec::Adapter(_) => bail!("bench reads file:PATH or kafka:TOPIC (an API's own pace is not medkg's)"),
            SourceSpec::File(path) => path.clone(),
            SourceSpec::Kafka(_) => records.clone().ok_or_else(|| {
                anyhow!("a kafka: bench needs --records FILE: it produces them into the topic, and runs the file too")
            })?,
        };
        let result = medkg_dataflow::bench::pipeline(&options_for(&SourceSpec::File(file.clone()), data_dir.clone())?)?;
        if let Value::Object(fields) = serde_json::to_value(&result)? {
            report.extend(fields);
        }
        if let SourceSpec::Kafka(topic) = source {
            let kafka_dir = beside(&data_dir, "-kafka");
            let fields = kafka_bench(topic, &file, &kafka, |source| options_for(source, kafka_dir.clone()))?;
            let file_rate = result.e2e_docs_per_sec;
            // Reading against reading: the group's forming is reported apart.
            let kafka_rate = fields["kafka_read_docs_per_sec"].as_f64().unwrap_or(0.0);
            report.extend(fields);
            report.insert("kafka_vs_file".into(), json!(if file_rate > 0.0 { kafka_rate / file_rate } else { 0.0 }));
        }
    } else if records.is_some() {
        bail!("--records goes with --pipeline and --source kafka:TOPIC");
    }
    if let Some(queries) = &queries {
        let mode: Mode = mode.parse().map_err(|e: String| anyhow!(e))?;
        let result = medkg_dataflow::bench::queries(&data_dir, queries, mode, "default", 10)?;
        report.insert("search".into(), serde_json::to_value(&result)?);
    }
    if report.is_empty() {
        bail!("nothing to bench: give --pipeline and --source, or --queries");
    }
    print_report(report, json)
}

fn print_report(report: Map<String, Value>, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", Value::Object(report));
    } else {
        for (key, value) in &report {
            println!("{key}: {value}");
        }
    }
    Ok(())
}

/// Where a `kafka:` or freshness bench's own run writes: beside the file
/// run's, its name followed by `suffix`.
fn beside(data_dir: &Path, suffix: &str) -> PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "bench".into());
    name.push(suffix);
    data_dir.with_file_name(name)
}

/// A consumer group of this bench's own: `prefix`, the process and the time.
pub(super) fn own_group(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Empties a bench run's data directory (absent is empty).
pub(super) fn clear(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::remove_dir_all(data_dir)
        .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
        .with_context(|| format!("cannot clear {}", data_dir.display()))
}

/// Produces `file` into `topic`, then runs the pipeline on the topic (a
/// consumer group of its own, from the topic's start) until every record
/// produced is read and durable.
fn kafka_bench(
    topic: &str,
    file: &Path,
    kafka: &KafkaArgs,
    options_for: impl Fn(&SourceSpec) -> anyhow::Result<medkg_dataflow::RunOptions>,
) -> anyhow::Result<Map<String, Value>> {
    let settings = kafka.settings_or(&own_group("medkg-bench"))?;
    let (produced, produce_seconds) = produce_file(&settings, topic, file, None)?;
    let mut options = options_for(&SourceSpec::Kafka(topic.to_string()))?;
    clear(&options.data_dir)?;
    let source = options.kafka.as_mut().ok_or_else(|| anyhow!("no Kafka source"))?;
    source.settings = settings;
    source.stop_after = Some(produced);
    let progress = Arc::new(Progress::default());
    let summary = medkg_dataflow::run(options, progress.clone(), |_, _| {})?;
    // From the first record read to the end; before it, the consumer group
    // was forming. (Counted back from the end: the run's time leaves out
    // its set-up, loading the models.)
    let ended = Instant::now();
    let whole = summary.seconds.max(1e-9);
    let reading = progress
        .first_record
        .get()
        .map_or(whole, |first| ended.saturating_duration_since(*first).as_secs_f64())
        .clamp(1e-9, whole);
    let forming = whole - reading;
    let mut fields = Map::new();
    fields.insert("kafka_records".into(), json!(produced));
    fields.insert("kafka_produce_seconds".into(), json!(produce_seconds));
    fields.insert("kafka_docs".into(), json!(summary.docs));
    fields.insert("kafka_e2e_seconds".into(), json!(summary.seconds));
    fields.insert("kafka_e2e_docs_per_sec".into(), json!(summary.docs_per_sec));
    fields.insert("kafka_group_seconds".into(), json!(forming));
    fields.insert("kafka_read_docs_per_sec".into(), json!(summary.docs as f64 / reading));
    Ok(fields)
}
