//! Sources and sinks, free of any dataflow.
//!
//! - [`file`](mod@file): JSONL (plain or gzip) and directories of document files,
//!   split across workers by record number, with a durable [`Checkpoint`].
//! - [`adapter`]: the public APIs an adapter source pages through (the
//!   protocol only: URLs, pages, cursors) and its checkpoint.
//! - [`dead_letter`]: the dead-letter sink every failed record goes to.
//! - [`kafka`]: Kafka settings, the consumer (offsets committed once
//!   durable) and a producer of JSON records.
//! - [`error`]: the one error type of the connectors.
//! - [`events`]: CloudEvents lifecycle events to a file or a topic.
//! - [`ledger`]: the SQLite job ledger, one row per document.
//! - [`lineage`]: OpenLineage run events to a file or an HTTP endpoint.
#![warn(missing_docs)]

pub mod adapter;
pub mod dead_letter;
pub mod error;
pub mod events;
pub mod file;
pub mod kafka;
pub mod ledger;
pub mod lineage;

pub use dead_letter::{DeadLetter, DeadLetterSink};
pub use error::Error;
pub use file::{complete_json_files, Checkpoint, FileSource, SourceError};
/// Where a side stream lives (`dir:PATH` or `kafka:TOPIC`), as the topology reads it.
pub use medkg_topology::StreamSpec;

use serde::{Deserialize, Serialize};

/// Where a record came from: what a source commits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Record number within the source, from 0, in source order (files
    /// sorted by path, lines in order): the same on every worker.
    pub ordinal: u64,
    /// The file.
    pub file: String,
    /// 1-based line within a JSONL file.
    pub line: Option<u64>,
    /// The Kafka partition (then `file` is the topic and `ordinal` the offset).
    #[serde(default)]
    pub partition: Option<i32>,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.partition, self.line) {
            (Some(partition), _) => write!(f, "{}[{partition}]@{}", self.file, self.ordinal),
            (None, Some(line)) => write!(f, "{}:{line}", self.file),
            (None, None) => write!(f, "{}", self.file),
        }
    }
}

/// A record as a connector delivers it: bytes plus where they came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawPayload {
    /// The source (`file:PATH`).
    pub source: String,
    /// The record's key, when the source has one (Kafka); files have none.
    pub key: Option<String>,
    /// The record itself.
    pub bytes: Vec<u8>,
    /// A name that helps sniff the format (the file name).
    pub name: Option<String>,
    /// Where it came from.
    pub position: Position,
    /// A Kafka tombstone (a key with no value): delete the document `key`.
    #[serde(default)]
    pub tombstone: bool,
    /// The tenant a Kafka message names in its `tenant_id` header.
    #[serde(default)]
    pub tenant: Option<String>,
}
