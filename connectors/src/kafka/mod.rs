//! Kafka: settings and topic names here; the [`consumer`] (offsets
//! committed only once durable, rebalances, lag) and the [`producer`] of
//! JSON records in their own files.
//!
//! Offsets are never committed automatically: the engine commits a
//! partition's offset only once every message before it is durable in every
//! index.

pub mod consumer;
pub mod producer;

pub use consumer::{monitor_lag, payload_of, KafkaInput};
pub use producer::KafkaJson;

use rdkafka::config::ClientConfig;

use crate::error::{Error, Result};

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
    /// A consumer configuration: manual commits, earliest offsets for a new
    /// group, a 6 s session (heartbeats every 0.5 s) and fetches held at most
    /// 50 ms.
    ///
    /// librdkafka's 45 s default session made every start wait about 20 s
    /// for the group to form, as long as a 1,000-abstract model run on
    /// 2 cores takes to index a third of them. 6 s is the least a Kafka
    /// broker accepts by default (`group.min.session.timeout.ms`);
    /// heartbeats come from librdkafka's own thread, so a worker busy with
    /// a model batch for seconds still keeps its partitions.
    ///
    /// `fetch.wait.max.ms` bounds how long a broker may hold a fetch for
    /// want of data. Apache Kafka answers as soon as a record is there, so
    /// there it only sets how often an idle consumer asks (20 times a
    /// second here, against librdkafka's 2); tansu, the broker of the tests
    /// and benches, holds every fetch about half of it even with data
    /// waiting, which at librdkafka's 500 ms put 130 ms (p50) to 250 ms
    /// (p95) between a record produced and the same record read, at
    /// 2,000 records a second. At 50 ms: 16 and 29 ms.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("fetch.wait.max.ms", "50");
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
            let consumer_only = ["session.", "heartbeat.", "group.", "fetch."];
            if !consumer_only.iter().any(|prefix| key.starts_with(prefix)) {
                config.set(key, value);
            }
        }
        config
    }
}

/// Parses `key=value` into a librdkafka property.
pub fn parse_option(text: &str) -> Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(Error::Config(format!("`{text}` is not a librdkafka property key=value"))),
    }
}
