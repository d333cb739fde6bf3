//! Kafka: consumer-group settings, messages as [`RawPayload`]s, the
//! dead-letter topic, and a producer for `medkg produce`.
//!
//! Offsets are never committed automatically: the engine commits a
//! partition's offset only once every message before it is durable in every
//! index (see the dataflow crate).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;

use crate::dead_letter::DeadLetter;
use crate::{Position, RawPayload};

/// The dead-letter topic.
pub const DLQ_TOPIC: &str = "medkg.dlq.v1";

/// The downloaded-PDF stream of the two-phase PDF flow.
pub const DOWNLOADED_TOPIC: &str = "pdf.downloaded.v1";

/// The IR-ready stream of the two-phase PDF flow.
pub const IR_READY_TOPIC: &str = "pdf.ir-ready.v1";

/// The lifecycle events topic (CloudEvents, structured JSON).
pub const EVENTS_TOPIC: &str = "orchestration.events.v1";

/// How to reach a broker and which group to join.
#[derive(Clone, Debug, Default)]
pub struct KafkaSettings {
    /// `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group.
    pub group: String,
    /// Extra librdkafka properties (`session.timeout.ms=2000`, ...), applied last.
    pub options: Vec<(String, String)>,
}

impl KafkaSettings {
    /// A consumer configuration: manual commits, earliest offsets for a new group.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }

    /// A producer configuration.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("linger.ms", "5");
        for (key, value) in &self.options {
            // Consumer-only properties would make the producer refuse to start.
            if !key.starts_with("session.") && !key.starts_with("heartbeat.") && !key.starts_with("group.") {
                config.set(key, value);
            }
        }
        config
    }
}

/// Parses `key=value` into a librdkafka property.
pub fn parse_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("`{text}` is not a librdkafka property key=value")),
    }
}

/// A consumed message as a payload: its key, value and (topic, partition,
/// offset) position; a message with a key and no value is a tombstone.
pub fn payload_of(message: &BorrowedMessage<'_>) -> RawPayload {
    let key = message.key().map(|k| String::from_utf8_lossy(k).into_owned());
    let tenant = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == "tenant_id")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    });
    RawPayload {
        source: format!("kafka:{}", message.topic()),
        tombstone: message.payload().is_none() && key.is_some(),
        key,
        bytes: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        name: None,
        position: Position {
            ordinal: message.offset().max(0) as u64,
            file: message.topic().to_string(),
            line: None,
            partition: Some(message.partition()),
        },
        tenant,
    }
}

/// Produces dead letters to [`DLQ_TOPIC`]: the original key and bytes, with
/// the error class, kind, message, stage and source position as headers.
pub struct KafkaDeadLetters {
    producer: BaseProducer,
}

impl KafkaDeadLetters {
    /// Connects a producer.
    pub fn new(settings: &KafkaSettings) -> Result<KafkaDeadLetters, String> {
        let producer =
            settings.producer_config().create().map_err(|e| format!("cannot create a Kafka producer: {e}"))?;
        Ok(KafkaDeadLetters { producer })
    }

    /// Sends one dead letter (delivery is confirmed by [`Self::flush`]).
    pub fn send(&self, letter: &DeadLetter, key: Option<&str>) -> Result<(), String> {
        let bytes = letter.bytes();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "error_class", value: Some(letter.error_class.as_bytes()) })
            .insert(Header { key: "error_kind", value: Some(letter.error_kind.as_bytes()) })
            .insert(Header { key: "error_message", value: Some(letter.message.as_bytes()) })
            .insert(Header { key: "stage", value: Some(letter.stage.as_bytes()) })
            .insert(Header { key: "source", value: Some(letter.source.as_bytes()) })
            .insert(Header { key: "source_position", value: Some(letter.position.as_bytes()) });
        // The payload's bytes went with an earlier letter of the same record.
        let headers = match &letter.bytes_at {
            Some(at) => headers.insert(Header { key: "bytes_at", value: Some(at.as_bytes()) }),
            None => headers,
        };
        let mut record: BaseRecord<'_, str, [u8]> =
            BaseRecord::to(DLQ_TOPIC).payload(bytes.as_slice()).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer.send(record).map_err(|(e, _)| format!("cannot queue a dead letter: {e}"))?;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Waits until every dead letter sent so far is acknowledged.
    pub fn flush(&self) -> Result<(), String> {
        self.producer.flush(Duration::from_secs(30)).map_err(|e| format!("dead letters not acknowledged: {e}"))
    }
}

/// Produces JSON records to one topic, keyed by subject (the document id),
/// so one document's records stay in order on one partition: lifecycle
/// events (CloudEvents), downloaded records, IR-ready records.
pub struct KafkaJson {
    producer: FutureProducer,
    topic: String,
}

impl KafkaJson {
    /// Connects a producer for `topic` (e.g. [`EVENTS_TOPIC`]).
    pub fn new(settings: &KafkaSettings, topic: &str) -> Result<KafkaJson, String> {
        let producer =
            settings.producer_config().create().map_err(|e| format!("cannot create a Kafka producer: {e}"))?;
        Ok(KafkaJson { producer, topic: topic.to_string() })
    }

    /// The topic it writes.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn record<'a>(&'a self, key: &'a str, json: &'a [u8], headers: &[(&str, &str)]) -> FutureRecord<'a, str, [u8]> {
        let mut owned = OwnedHeaders::new();
        for (k, v) in headers {
            owned = owned.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        FutureRecord::to(&self.topic).key(key).payload(json).headers(owned)
    }

    /// Queues one record with its headers (`ce_type`, `content-type`, ...);
    /// [`Self::flush`] confirms delivery.
    pub fn send(&self, key: &str, json: &[u8], headers: &[(&str, &str)]) -> Result<(), String> {
        let mut record = self.record(key, json, headers);
        // A full local queue is back-pressure, not a failure: wait for deliveries.
        for _ in 0..300 {
            match self.producer.send_result(record) {
                Ok(_delivery) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err((e, _)) => return Err(format!("cannot queue a record for {}: {e}", self.topic)),
            }
        }
        Err(format!("cannot queue a record for {}: the producer queue stayed full for 30 s", self.topic))
    }

    /// Sends one record and waits until the broker has acknowledged it.
    pub async fn deliver(&self, key: &str, json: &[u8], headers: &[(&str, &str)]) -> Result<(), String> {
        match self.producer.send(self.record(key, json, headers), Duration::from_secs(30)).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(format!("{} did not take a record: {e}", self.topic)),
        }
    }

    /// Waits until every queued record is acknowledged.
    pub fn flush(&self) -> Result<(), String> {
        self.producer.flush(Duration::from_secs(30)).map_err(|e| format!("{} did not acknowledge: {e}", self.topic))
    }
}
