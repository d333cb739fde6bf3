//! The stage types a topology may name, what flows in and out of each, and
//! the configuration keys each accepts.

use serde_json::Value;

/// What flows along an edge of the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Raw payloads from a connector (bytes + position).
    Raw,
    /// Parsed documents (the IR).
    Documents,
    /// Chunked documents (each document with its chunks, and vectors once embedded).
    Chunks,
    /// Extracted entities and claims.
    Entities,
}

impl StreamKind {
    /// A word for messages.
    pub fn describe(self) -> &'static str {
        match self {
            StreamKind::Raw => "raw payloads",
            StreamKind::Documents => "documents",
            StreamKind::Chunks => "chunks",
            StreamKind::Entities => "entities",
        }
    }
}

/// The type of a value under a stage's `config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// An integer ≥ 1.
    PositiveInt,
    /// An integer ≥ 0.
    NonNegInt,
    /// A number ≥ 0.
    NonNegFloat,
    /// `true` or `false`.
    Bool,
    /// Any string.
    Text,
    /// One of the listed strings.
    OneOf(&'static [&'static str]),
    /// A list of the listed strings (any strings when the list is empty).
    ListOf(&'static [&'static str]),
    /// A duration such as `500ms`, `30s`, `5m`.
    Duration,
    /// `auto` or a duration ([`crate::CommitInterval`]).
    CommitInterval,
    /// A list of `allow_hosts` entries ([`crate::hosts::AllowEntry`]).
    Hosts,
    /// Where a side stream lives: `dir:PATH` or `kafka:TOPIC`.
    Stream,
    /// An API source: `{ adapter: ctgov, query: ..., ... }` ([`crate::AdapterSpec`]).
    Adapter,
}

impl ValueKind {
    /// Checks `value`, returning what is wrong with it.
    pub fn check(self, value: &Value) -> Result<(), String> {
        let describe = |v: &Value| match v {
            Value::Null => "null".to_string(),
            Value::String(s) => format!("\"{s}\""),
            other => other.to_string(),
        };
        match self {
            ValueKind::PositiveInt => match value.as_u64() {
                Some(n) if n >= 1 => Ok(()),
                _ => Err(format!("expected an integer ≥ 1, found {}", describe(value))),
            },
            ValueKind::NonNegInt => match value.as_u64() {
                Some(_) => Ok(()),
                None => Err(format!("expected an integer ≥ 0, found {}", describe(value))),
            },
            ValueKind::NonNegFloat => match value.as_f64() {
                Some(x) if x >= 0.0 && x.is_finite() => Ok(()),
                _ => Err(format!("expected a number ≥ 0, found {}", describe(value))),
            },
            ValueKind::Bool => match value {
                Value::Bool(_) => Ok(()),
                _ => Err(format!("expected true or false, found {}", describe(value))),
            },
            ValueKind::Text => match value {
                Value::String(s) if !s.trim().is_empty() => Ok(()),
                _ => Err(format!("expected a non-empty string, found {}", describe(value))),
            },
            ValueKind::OneOf(choices) => match value.as_str() {
                Some(s) if choices.contains(&s) => Ok(()),
                _ => Err(format!("expected one of {}, found {}", choices.join(" | "), describe(value))),
            },
            ValueKind::ListOf(choices) => {
                let Some(items) = value.as_array() else {
                    return Err(format!("expected a list, found {}", describe(value)));
                };
                for item in items {
                    match item.as_str() {
                        Some(s) if choices.is_empty() || choices.contains(&s) => {}
                        _ if choices.is_empty() => return Err(format!("expected strings, found {}", describe(item))),
                        _ => {
                            return Err(format!(
                                "expected items from {}, found {}",
                                choices.join(" | "),
                                describe(item)
                            ))
                        }
                    }
                }
                Ok(())
            }
            ValueKind::Hosts => {
                let Some(items) = value.as_array() else {
                    return Err(format!("expected a list of hosts, found {}", describe(value)));
                };
                for item in items {
                    let Some(entry) = item.as_str() else {
                        return Err(format!("expected host names, found {}", describe(item)));
                    };
                    crate::hosts::AllowEntry::parse(entry)?;
                }
                Ok(())
            }
            ValueKind::Stream => match value.as_str().map(str::parse::<crate::stream::StreamSpec>) {
                Some(Ok(_)) => Ok(()),
                _ => Err(format!("expected dir:PATH or kafka:TOPIC, found {}", describe(value))),
            },
            ValueKind::Adapter => crate::AdapterSpec::from_value(value).map(|_| ()),
            ValueKind::CommitInterval => match value.as_str() {
                Some(text) => text.parse::<crate::CommitInterval>().map(|_| ()),
                None => Err(format!("expected auto or a duration such as 250ms or 1s, found {}", describe(value))),
            },
            ValueKind::Duration => match value.as_str().and_then(crate::duration::parse_duration) {
                Some(_) => Ok(()),
                None => Err(format!("expected a duration such as 500ms, 30s or 5m, found {}", describe(value))),
            },
        }
    }
}

/// A configuration key a stage type accepts.
#[derive(Clone, Copy, Debug)]
pub struct ConfigKey {
    /// The key under `config:`.
    pub name: &'static str,
    /// Its type.
    pub kind: ValueKind,
}

/// A stage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StageKind {
    /// Where the source's payloads enter: size limits on raw records.
    Ingest,
    /// HTTP GET of a URL field into the payload (polite-api pipelines).
    Fetch,
    /// PDF download into the object store (phase one of the PDF gate).
    Download,
    /// Payload → document IR.
    Parse,
    /// Document → chunks.
    Chunk,
    /// Dense embeddings of chunks (ONNX Runtime).
    Embed,
    /// SPLADE sparse expansion of chunks.
    Splade,
    /// BM25 / SPLADE / dense index sink, committed at epoch boundaries.
    Index,
    /// Entity and claim extraction.
    Extract,
    /// Knowledge-graph sink.
    Kg,
}

impl StageKind {
    /// Every stage type, in pipeline order.
    pub const ALL: [StageKind; 10] = [
        StageKind::Ingest,
        StageKind::Fetch,
        StageKind::Download,
        StageKind::Parse,
        StageKind::Chunk,
        StageKind::Embed,
        StageKind::Splade,
        StageKind::Index,
        StageKind::Extract,
        StageKind::Kg,
    ];

    /// The name used in YAML.
    pub fn name(self) -> &'static str {
        match self {
            StageKind::Ingest => "ingest",
            StageKind::Fetch => "fetch",
            StageKind::Download => "download",
            StageKind::Parse => "parse",
            StageKind::Chunk => "chunk",
            StageKind::Embed => "embed",
            StageKind::Splade => "splade",
            StageKind::Index => "index",
            StageKind::Extract => "extract",
            StageKind::Kg => "kg",
        }
    }

    /// Looks a YAML name up.
    pub fn from_name(name: &str) -> Option<StageKind> {
        StageKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// What the stage consumes.
    pub fn input(self) -> StreamKind {
        match self {
            StageKind::Ingest | StageKind::Fetch | StageKind::Download | StageKind::Parse => StreamKind::Raw,
            StageKind::Chunk => StreamKind::Documents,
            StageKind::Embed | StageKind::Splade | StageKind::Index | StageKind::Extract => StreamKind::Chunks,
            StageKind::Kg => StreamKind::Entities,
        }
    }

    /// What the stage produces (`index` passes on what it has made durable).
    pub fn output(self) -> StreamKind {
        match self {
            StageKind::Ingest | StageKind::Fetch | StageKind::Download => StreamKind::Raw,
            StageKind::Parse => StreamKind::Documents,
            StageKind::Chunk | StageKind::Embed | StageKind::Splade | StageKind::Index => StreamKind::Chunks,
            StageKind::Extract | StageKind::Kg => StreamKind::Entities,
        }
    }

    /// Whether the stage keeps per-document state, so its input is exchanged
    /// by document id (one worker owns a document and its index shard).
    pub fn keyed(self) -> bool {
        matches!(self, StageKind::Index | StageKind::Kg)
    }
}
