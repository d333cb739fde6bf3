//! `medkg produce`: load JSONL records into a topic.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use medkg_connectors::kafka::KafkaSettings;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::cli::ProduceArgs;

/// `medkg produce`: every record of a JSONL file to a topic, keyed by the
/// document id its parser finds (unkeyed when it finds none: a bad record
/// still travels, to be dead-lettered by the engine).
pub fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let ProduceArgs { kafka, topic, rate, file } = args;
    let (sent, seconds) = produce_file(&kafka.settings()?, &topic, &file, rate)?;
    println!(
        "{}",
        serde_json::json!({"records": sent, "seconds": seconds, "records_per_sec": sent as f64 / seconds.max(1e-9)})
    );
    Ok(())
}

/// Produces every record of `file` to `topic` (at `rate` a second, if
/// given) and waits until the broker has acknowledged them all; returns how
/// many, and the seconds it took.
pub fn produce_file(
    settings: &KafkaSettings,
    topic: &str,
    file: &Path,
    rate: Option<f64>,
) -> anyhow::Result<(u64, f64)> {
    let producer = producer(settings)?;
    let source = medkg_connectors::FileSource::open(file)?;
    let began = Instant::now();
    let mut sent = 0u64;
    for (_, record) in source.records(0, 1, 0, MAX_RECORD_BYTES) {
        let Ok(payload) = record else { continue };
        send(&producer, topic, key_of(&payload.bytes).as_deref(), &payload.bytes)?;
        sent += 1;
        pace(began, sent, rate);
    }
    flush(&producer)?;
    Ok((sent, began.elapsed().as_secs_f64()))
}

/// The largest record `medkg produce` sends.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// A producer of `settings`.
pub fn producer(settings: &KafkaSettings) -> anyhow::Result<BaseProducer> {
    settings.producer_config().create().map_err(|e| anyhow!("cannot create a Kafka producer: {e}"))
}

/// The document id a record's parser finds, to key it by.
pub fn key_of(bytes: &[u8]) -> Option<String> {
    medkg_operators::parse::parse(&Default::default(), bytes, None).into_iter().find_map(Result::ok).map(|doc| doc.id)
}

/// Hands one record to the producer, waiting while its queue is full.
pub fn send(producer: &BaseProducer, topic: &str, key: Option<&str>, payload: &[u8]) -> anyhow::Result<()> {
    let mut message: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(payload);
    if let Some(key) = key {
        message = message.key(key);
    }
    let mut message = Some(message);
    while let Some(m) = message.take() {
        match producer.send(m) {
            Ok(()) => {}
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), m)) => {
                producer.poll(Duration::from_millis(50));
                message = Some(m);
            }
            Err((e, _)) => bail!("cannot produce to {topic}: {e}"),
        }
    }
    producer.poll(Duration::ZERO);
    Ok(())
}

/// Sleeps until `sent` records are due at `rate` a second from `began`.
pub fn pace(began: Instant, sent: u64, rate: Option<f64>) {
    if let Some(rate) = rate.filter(|r| *r > 0.0 && r.is_finite()) {
        // (A rate so small that the wait overflows a Duration waits "forever".)
        let due = Duration::try_from_secs_f64(sent as f64 / rate).unwrap_or(Duration::MAX);
        if let Some(wait) = due.checked_sub(began.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// Waits until the broker has acknowledged everything sent.
pub fn flush(producer: &BaseProducer) -> anyhow::Result<()> {
    producer.flush(Duration::from_secs(60)).map_err(|e| anyhow!("not every record was acknowledged: {e}"))
}
