//! `medkg produce`: load JSONL records into a topic.

use std::path::Path;

use anyhow::{anyhow, bail};
use medkg_connectors::kafka::KafkaSettings;
use rdkafka::producer::{BaseRecord, Producer};

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
    let producer: rdkafka::producer::BaseProducer =
        settings.producer_config().create().map_err(|e| anyhow!("cannot create a Kafka producer: {e}"))?;
    let source = medkg_connectors::FileSource::open(file)?;
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
    Ok((sent, began.elapsed().as_secs_f64()))
}
