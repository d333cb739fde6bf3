//! Where a stream of JSON records lives: a folder of files or a Kafka topic.
//!
//! Side streams (a download stage's output, the IR-ready stream of a PDF
//! gate, the PDF parser's input and output) are named `dir:PATH` or
//! `kafka:TOPIC`; this is the one place that reads such a name.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A stream's place: `dir:PATH` or `kafka:TOPIC`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamSpec {
    /// A folder of JSON files, each renamed into place when complete.
    Dir(PathBuf),
    /// A Kafka topic (on the run's brokers).
    Kafka(String),
}

impl FromStr for StreamSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<StreamSpec, String> {
        match spec.split_once(':') {
            Some(("dir", path)) if !path.is_empty() => Ok(StreamSpec::Dir(PathBuf::from(path))),
            Some(("kafka", topic)) if !topic.is_empty() => Ok(StreamSpec::Kafka(topic.to_string())),
            _ => Err(format!("`{spec}`: expected dir:PATH or kafka:TOPIC")),
        }
    }
}

impl fmt::Display for StreamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamSpec::Dir(path) => write!(f, "dir:{}", path.display()),
            StreamSpec::Kafka(topic) => write!(f, "kafka:{topic}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_kinds_and_refuses_the_rest() {
        assert_eq!("dir:/a/b".parse(), Ok(StreamSpec::Dir("/a/b".into())));
        assert_eq!("kafka:pdf.ir-ready.v1".parse(), Ok(StreamSpec::Kafka("pdf.ir-ready.v1".into())));
        for bad in ["", "dir:", "kafka:", "file:/x", "/tmp/x", "Kafka:t"] {
            assert!(bad.parse::<StreamSpec>().is_err(), "{bad}");
        }
        for spec in ["dir:/a/b", "kafka:t"] {
            assert_eq!(spec.parse::<StreamSpec>().map(|s| s.to_string()), Ok(spec.to_string()));
        }
    }
}
