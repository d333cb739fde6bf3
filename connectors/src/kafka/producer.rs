//! A producer of JSON records to one topic, keyed by document.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::KafkaSettings;
use crate::error::{Error, Result};

/// Produces JSON records to one topic, keyed by subject (the document id),
/// so one document's records stay in order on one partition: lifecycle
/// events (CloudEvents), downloaded records, IR-ready records.
pub struct KafkaJson {
    producer: FutureProducer,
    topic: String,
}

impl KafkaJson {
    /// Connects a producer for `topic` (e.g. [`super::EVENTS_TOPIC`]).
    pub fn new(settings: &KafkaSettings, topic: &str) -> Result<KafkaJson> {
        let producer =
            settings.producer_config().create().map_err(|e| Error::kafka("cannot create a Kafka producer", e))?;
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
    pub fn send(&self, key: &str, json: &[u8], headers: &[(&str, &str)]) -> Result<()> {
        let mut record = self.record(key, json, headers);
        // A full local queue is back-pressure, not a failure: wait for deliveries.
        for _ in 0..300 {
            match self.producer.send_result(record) {
                Ok(_delivery) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err((e, _)) => return Err(Error::kafka(format!("cannot queue a record for {}", self.topic), e)),
            }
        }
        Err(Error::Other(format!("cannot queue a record for {}: the producer queue stayed full for 30 s", self.topic)))
    }

    /// Sends one record and waits until the broker has acknowledged it.
    pub async fn deliver(&self, key: &str, json: &[u8], headers: &[(&str, &str)]) -> Result<()> {
        match self.producer.send(self.record(key, json, headers), Duration::from_secs(30)).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(Error::kafka(format!("{} did not take a record", self.topic), e)),
        }
    }

    /// Waits until every queued record is acknowledged.
    pub fn flush(&self) -> Result<()> {
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(|e| Error::kafka(format!("{} did not acknowledge", self.topic), e))
    }
}
