//! CloudEvents 1.0 lifecycle events of every stage.
//!
//! Each event is `org.medicalkg.orchestration.stage.{started,completed,
//! failed,retrying}` from source `/medkg/{pipeline}/{stage}`, with the
//! document id as subject and [`EventData`] as JSON data. Events are
//! written in the CloudEvents *structured* JSON format, one per line to a
//! file (`--events file:PATH`) or one per message to a Kafka topic
//! (`--events kafka:TOPIC`, usually [`crate::kafka::EVENTS_TOPIC`]), keyed by
//! subject so one document's events stay in order.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kafka::{KafkaJson, KafkaSettings};

/// The prefix of every event type.
pub const TYPE_PREFIX: &str = "org.medicalkg.orchestration.stage.";

/// A stage's lifecycle step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// The stage took the document (or batch) up.
    Started,
    /// It passed the document on.
    Completed,
    /// It dead-lettered it.
    Failed,
    /// A transient failure will be retried.
    Retrying,
}

impl Lifecycle {
    /// `started`, `completed`, `failed` or `retrying`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Started => "started",
            Lifecycle::Completed => "completed",
            Lifecycle::Failed => "failed",
            Lifecycle::Retrying => "retrying",
        }
    }

    /// The CloudEvents `type`.
    pub fn event_type(self) -> String {
        format!("{TYPE_PREFIX}{}", self.as_str())
    }
}

/// An event's data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    /// The run (one `medkg run` process).
    pub run_id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The stage's name.
    pub stage: String,
    /// The document (null for a batch event).
    pub doc_id: Option<String>,
    /// Its tenant.
    pub tenant_id: Option<String>,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Time spent so far (completed, failed, retrying), in milliseconds.
    pub duration_ms: Option<f64>,
    /// The error (failed, retrying): `kind (class): message`.
    pub error: Option<String>,
    /// Documents in the batch (batch granularity only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs: Option<u64>,
    /// The epoch (batch granularity only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// Builds the CloudEvent of `step` with `data`.
pub fn cloud_event(step: Lifecycle, data: &EventData) -> Result<Event> {
    let subject = match (&data.doc_id, data.epoch) {
        (Some(doc), _) => doc.clone(),
        (None, Some(epoch)) => format!("epoch:{epoch}"),
        (None, None) => data.stage.clone(),
    };
    let json = serde_json::to_value(data).map_err(|e| Error::json("event data", e))?;
    EventBuilderV10::new()
        .id(uuid::Uuid::new_v4().to_string())
        .source(format!("/medkg/{}/{}", data.pipeline, data.stage))
        .ty(step.event_type())
        .subject(subject)
        .time(chrono::Utc::now())
        .data("application/json", json)
        .build()
        .map_err(|e| Error::Other(format!("cannot build a CloudEvent: {e}")))
}

/// Where events go (`--events`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum EventTarget {
    /// Nowhere (the default).
    #[default]
    Off,
    /// One JSON event a line, appended to a file.
    File(PathBuf),
    /// One event a message on a Kafka topic.
    Kafka(String),
}

impl std::str::FromStr for EventTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            _ if s == "off" => Ok(EventTarget::Off),
            Some(("file", path)) if !path.is_empty() => Ok(EventTarget::File(PathBuf::from(path))),
            Some(("kafka", topic)) if !topic.is_empty() => Ok(EventTarget::Kafka(topic.to_string())),
            _ => Err(format!("`{s}`: expected off, file:PATH or kafka:TOPIC")),
        }
    }
}

/// One event per document per stage, or one per batch (a worker's epoch) per stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Granularity {
    /// Per document (the default).
    #[default]
    Document,
    /// Per batch.
    Batch,
}

impl std::str::FromStr for Granularity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "document" => Ok(Granularity::Document),
            "batch" => Ok(Granularity::Batch),
            _ => Err(format!("`{s}`: expected document or batch")),
        }
    }
}

/// The open sink of a run, shared by every worker and async task.
pub enum EventSink {
    /// Events are off.
    Off,
    /// A JSONL file.
    File(Mutex<BufWriter<File>>, PathBuf),
    /// A Kafka topic.
    Kafka(KafkaJson),
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventSink::Off => write!(f, "EventSink::Off"),
            EventSink::File(_, path) => write!(f, "EventSink::File({})", path.display()),
            EventSink::Kafka(_) => write!(f, "EventSink::Kafka"),
        }
    }
}

impl EventSink {
    /// Opens `target`; a Kafka topic needs the run's broker settings.
    pub fn open(target: &EventTarget, kafka: Option<&KafkaSettings>) -> Result<EventSink> {
        match target {
            EventTarget::Off => Ok(EventSink::Off),
            EventTarget::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| Error::io(format!("cannot open the events file {}", path.display()), e))?;
                Ok(EventSink::File(Mutex::new(BufWriter::new(file)), path.clone()))
            }
            EventTarget::Kafka(topic) => {
                let settings = kafka.ok_or_else(|| {
                    Error::Config(format!("--events kafka:{topic} needs brokers (--brokers, or a Kafka source)"))
                })?;
                Ok(EventSink::Kafka(KafkaJson::new(settings, topic)?))
            }
        }
    }

    /// Whether events are on.
    pub fn enabled(&self) -> bool {
        !matches!(self, EventSink::Off)
    }

    /// Writes one event.
    pub fn emit(&self, step: Lifecycle, data: &EventData) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        let event = cloud_event(step, data)?;
        let json = serde_json::to_vec(&event).map_err(|e| Error::json("cannot serialise an event", e))?;
        match self {
            EventSink::Off => Ok(()),
            EventSink::File(file, path) => {
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                file.write_all(&json)
                    .and_then(|()| file.write_all(b"\n"))
                    .map_err(|e| Error::io(format!("cannot write an event to {}", path.display()), e))
            }
            EventSink::Kafka(kafka) => {
                let ty = step.event_type();
                let key = event.subject().unwrap_or_default().to_string();
                kafka.send(&key, &json, &[("content-type", "application/cloudevents+json"), ("ce_type", &ty)])
            }
        }
    }

    /// Makes every event so far durable (file) or acknowledged (Kafka).
    pub fn flush(&self) -> Result<()> {
        match self {
            EventSink::Off => Ok(()),
            EventSink::File(file, path) => file
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .flush()
                .map_err(|e| Error::io(format!("cannot write events to {}", path.display()), e)),
            EventSink::Kafka(kafka) => kafka.flush(),
        }
    }
}

/// Reads an events file back (tests, `jq`-less inspection).
pub fn read_file(path: &Path) -> Result<Vec<Event>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| Error::json(format!("{}: not a CloudEvent", path.display()), e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_the_structured_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events/run.jsonl");
        let sink = EventSink::open(&EventTarget::File(path.clone()), None).unwrap();
        let data = EventData {
            run_id: "r1".into(),
            pipeline: "p".into(),
            stage: "fetch".into(),
            doc_id: Some("pmid:1".into()),
            tenant_id: Some("t".into()),
            attempt: 2,
            duration_ms: Some(12.5),
            error: Some("http_503 (transient): busy".into()),
            ..EventData::default()
        };
        sink.emit(Lifecycle::Retrying, &data).unwrap();
        sink.flush().unwrap();
        let events = read_file(&path).unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.ty(), "org.medicalkg.orchestration.stage.retrying");
        assert_eq!(event.source().to_string(), "/medkg/p/fetch");
        assert_eq!(event.subject(), Some("pmid:1"));
        assert_eq!(event.specversion().to_string(), "1.0");
        let back: EventData = match event.data() {
            Some(cloudevents::Data::Json(v)) => serde_json::from_value(v.clone()).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(back, data);
    }

    #[test]
    fn targets_parse() {
        assert_eq!("off".parse(), Ok(EventTarget::Off));
        assert_eq!("file:/tmp/e.jsonl".parse(), Ok(EventTarget::File("/tmp/e.jsonl".into())));
        assert_eq!("kafka:orchestration.events.v1".parse(), Ok(EventTarget::Kafka("orchestration.events.v1".into())));
        assert!("kafka:".parse::<EventTarget>().is_err());
        assert!("s3:x".parse::<EventTarget>().is_err());
    }
}
