//! Dead letters: every record that failed for good, with its original bytes,
//! where it came from and why, as one JSON object per line under
//! `DATA_DIR/dead-letter/`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::Position;

/// One dead-letter record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When it was written (ms since the Unix epoch).
    pub unix_ms: u64,
    /// The stage that gave up (`source`, `ingest`, `parse`, `chunk`, ...).
    pub stage: String,
    /// The source (`file:PATH`).
    pub source: String,
    /// Where in the source (`file:line`).
    pub position: String,
    /// Record number in the source.
    pub ordinal: u64,
    /// The document id, when it was known.
    pub doc_id: Option<String>,
    /// `transient`, `permanent` or `unavailable`.
    pub error_class: String,
    /// A stable kind (`bad_json`, `too_large`, ...).
    pub error_kind: String,
    /// What went wrong.
    pub message: String,
    /// The original bytes when they are UTF-8...
    pub bytes_utf8: Option<String>,
    /// ... otherwise base64.
    pub bytes_base64: Option<String>,
}

impl DeadLetter {
    /// A dead letter for `bytes` from `position`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stage: &str,
        source: &str,
        position: &Position,
        doc_id: Option<String>,
        error_class: &str,
        error_kind: &str,
        message: &str,
        bytes: &[u8],
    ) -> DeadLetter {
        let (bytes_utf8, bytes_base64) = match std::str::from_utf8(bytes) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(bytes))),
        };
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        DeadLetter {
            unix_ms,
            stage: stage.to_string(),
            source: source.to_string(),
            position: position.to_string(),
            ordinal: position.ordinal,
            doc_id,
            error_class: error_class.to_string(),
            error_kind: error_kind.to_string(),
            message: message.to_string(),
            bytes_utf8,
            bytes_base64,
        }
    }

    /// The original bytes.
    pub fn bytes(&self) -> Vec<u8> {
        match (&self.bytes_utf8, &self.bytes_base64) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

/// Appends dead letters to `DATA_DIR/dead-letter/{name}.jsonl`, flushing
/// each one: dead letters are rare and must survive a crash.
pub struct DeadLetterSink {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    written: u64,
    kafka: Option<crate::kafka::KafkaDeadLetters>,
}

impl DeadLetterSink {
    /// A sink writing `data_dir/dead-letter/{name}.jsonl` (opened on first use).
    pub fn new(data_dir: &Path, name: &str) -> DeadLetterSink {
        DeadLetterSink {
            path: data_dir.join("dead-letter").join(format!("{name}.jsonl")),
            out: None,
            written: 0,
            kafka: None,
        }
    }

    /// Also sends every dead letter to the Kafka dead-letter topic.
    pub fn with_kafka(mut self, kafka: crate::kafka::KafkaDeadLetters) -> DeadLetterSink {
        self.kafka = Some(kafka);
        self
    }

    /// Waits until the Kafka dead-letter topic acknowledged everything sent.
    pub fn flush(&self) -> std::io::Result<()> {
        match &self.kafka {
            Some(kafka) => kafka.flush().map_err(std::io::Error::other),
            None => Ok(()),
        }
    }

    /// Writes one dead letter.
    pub fn write(&mut self, letter: &DeadLetter) -> std::io::Result<()> {
        if self.out.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.out = Some(BufWriter::new(file));
        }
        let out = self.out.as_mut().expect("opened above");
        serde_json::to_writer(&mut *out, letter)?;
        out.write_all(b"\n")?;
        out.flush()?;
        if let Some(kafka) = &self.kafka {
            let key = letter.doc_id.as_deref();
            kafka.send(letter, key).map_err(std::io::Error::other)?;
        }
        self.written += 1;
        Ok(())
    }

    /// How many were written through this sink.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Reads every dead letter of a data directory.
    pub fn read_all(data_dir: &Path) -> std::io::Result<Vec<DeadLetter>> {
        let dir = data_dir.join("dead-letter");
        let mut letters = Vec::new();
        if !dir.exists() {
            return Ok(letters);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for file in files {
            for line in std::fs::read_to_string(&file)?.lines() {
                if let Ok(letter) = serde_json::from_str(line) {
                    letters.push(letter);
                }
            }
        }
        Ok(letters)
    }
}
