//! Dead letters: every record that failed for good, with its original bytes,
//! where it came from and why, as one JSON object per line under
//! `DATA_DIR/dead-letter/`.
//!
//! Dead letters are bounded by what they record: a payload's bytes are
//! stored once, with the first failure of that payload (later failures of
//! documents from the same payload say `bytes_at` instead), messages are
//! cut at [`MAX_MESSAGE_BYTES`], and one payload writes at most
//! [`MAX_LETTERS_PER_RECORD`] letters plus one that counts the rest. A PubMed
//! set of 3,000 empty articles costs its own size once, not 3,000 times.
//! Writes are flushed at once; [`DeadLetterSink::sync`] makes them durable.
//! The index stage syncs its worker's letters before it releases an epoch
//! (so the source never moves past a letter that is not on disk), and
//! [`DeadLetterSink::flush`] syncs before Kafka offsets are committed and
//! before a run reports itself done. A sink that is written and never
//! synced by those syncs itself once a second.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kafka::{KafkaSettings, DLQ_TOPIC};
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
    /// When the bytes were stored with an earlier letter of the same payload:
    /// that letter's position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_at: Option<String>,
}

/// The longest message a dead letter keeps (longer ones are cut, marked `…`).
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// The most dead letters one source payload writes; one more counts the rest.
pub const MAX_LETTERS_PER_RECORD: usize = 100;

/// `text`, cut to at most `max` bytes at a character boundary (`…` marks a cut).
pub fn truncate(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let end = text.floor_char_boundary(max.saturating_sub('…'.len_utf8()));
    format!("{}…", &text[..end]).into()
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
            message: truncate(message, MAX_MESSAGE_BYTES).into_owned(),
            bytes_utf8,
            bytes_base64,
            bytes_at: None,
        }
    }

    /// This letter without the payload's bytes, which an earlier letter of
    /// the same payload holds.
    pub fn without_bytes(mut self) -> DeadLetter {
        self.bytes_utf8 = None;
        self.bytes_base64 = None;
        self.bytes_at = Some(self.position.clone());
        self
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
    kafka: Option<KafkaDeadLetters>,
    /// When the file was last synced, and whether it has been written since.
    synced: std::time::Instant,
    dirty: bool,
}

impl DeadLetterSink {
    /// A sink writing `data_dir/dead-letter/{name}.jsonl` (opened on first use).
    pub fn new(data_dir: &Path, name: &str) -> DeadLetterSink {
        DeadLetterSink {
            path: data_dir.join("dead-letter").join(format!("{name}.jsonl")),
            out: None,
            written: 0,
            kafka: None,
            synced: std::time::Instant::now(),
            dirty: false,
        }
    }

    /// Also sends every dead letter to the Kafka dead-letter topic.
    pub fn with_kafka(mut self, kafka: KafkaDeadLetters) -> DeadLetterSink {
        self.kafka = Some(kafka);
        self
    }

    /// Syncs the file and waits until the Kafka dead-letter topic
    /// acknowledged everything sent.
    pub fn flush(&mut self) -> Result<()> {
        self.sync()?;
        match &self.kafka {
            Some(kafka) => kafka.flush(),
            None => Ok(()),
        }
    }

    /// Syncs the file to disk if anything was written since the last sync.
    pub fn sync(&mut self) -> Result<()> {
        if let (true, Some(out)) = (self.dirty, &self.out) {
            out.get_ref().sync_data().map_err(|e| Error::io(format!("cannot sync {}", self.path.display()), e))?;
            self.dirty = false;
            self.synced = std::time::Instant::now();
        }
        Ok(())
    }

    /// Writes one dead letter.
    pub fn write(&mut self, letter: &DeadLetter) -> Result<()> {
        let failed = |e| Error::io(format!("cannot write {}", self.path.display()), e);
        let out = match &mut self.out {
            Some(out) => out,
            None => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir).map_err(failed)?;
                }
                let file = OpenOptions::new().create(true).append(true).open(&self.path).map_err(failed)?;
                self.out.insert(BufWriter::new(file))
            }
        };
        serde_json::to_writer(&mut *out, letter).map_err(std::io::Error::from).map_err(failed)?;
        out.write_all(b"\n").and_then(|()| out.flush()).map_err(failed)?;
        self.dirty = true;
        if self.synced.elapsed() >= Duration::from_secs(1) {
            self.sync()?;
        }
        if let Some(kafka) = &self.kafka {
            kafka.send(letter, letter.doc_id.as_deref())?;
        }
        self.written += 1;
        Ok(())
    }

    /// How many were written through this sink.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Reads every dead letter of a data directory.
    pub fn read_all(data_dir: &Path) -> Result<Vec<DeadLetter>> {
        let dir = data_dir.join("dead-letter");
        let mut letters = Vec::new();
        if !dir.exists() {
            return Ok(letters);
        }
        let read = |e| Error::io(format!("cannot read {}", dir.display()), e);
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&dir).map_err(read)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for file in files {
            let text =
                std::fs::read_to_string(&file).map_err(|e| Error::io(format!("cannot read {}", file.display()), e))?;
            for line in text.lines() {
                if let Ok(letter) = serde_json::from_str(line) {
                    letters.push(letter);
                }
            }
        }
        Ok(letters)
    }

    /// The newest `limit` dead letters of a data directory, newest first,
    /// reading at most the last [`RECENT_TAIL_BYTES`] of each file (a
    /// long-running deployment's letters are not read whole per request).
    pub fn read_recent(data_dir: &Path, limit: usize) -> Result<Vec<DeadLetter>> {
        use std::io::{Read, Seek, SeekFrom};
        let dir = data_dir.join("dead-letter");
        let mut letters = Vec::new();
        if !dir.exists() {
            return Ok(letters);
        }
        let read = |e| Error::io(format!("cannot read {}", dir.display()), e);
        for entry in std::fs::read_dir(&dir).map_err(read)? {
            let file = entry.map_err(read)?.path();
            let fail = |e| Error::io(format!("cannot read {}", file.display()), e);
            let mut handle = File::open(&file).map_err(fail)?;
            let len = handle.metadata().map_err(fail)?.len();
            let from = len.saturating_sub(RECENT_TAIL_BYTES);
            handle.seek(SeekFrom::Start(from)).map_err(fail)?;
            let mut bytes = Vec::new();
            handle.take(RECENT_TAIL_BYTES).read_to_end(&mut bytes).map_err(fail)?;
            let text = String::from_utf8_lossy(&bytes);
            // A tail that starts mid-line drops its first, partial line.
            let lines = text.lines().skip(usize::from(from > 0));
            letters.extend(lines.filter_map(|line| serde_json::from_str::<DeadLetter>(line).ok()));
        }
        letters.sort_by(|a, b| b.unix_ms.cmp(&a.unix_ms).then_with(|| a.position.cmp(&b.position)));
        letters.truncate(limit);
        Ok(letters)
    }
}

/// How much of each dead-letter file [`DeadLetterSink::read_recent`] reads.
pub const RECENT_TAIL_BYTES: u64 = 8 << 20;

/// Produces dead letters to [`DLQ_TOPIC`]: the original key and bytes, with
/// the error class, kind, message, stage and source position as headers.
pub struct KafkaDeadLetters {
    producer: BaseProducer,
}

impl KafkaDeadLetters {
    /// Connects a producer.
    pub fn new(settings: &KafkaSettings) -> Result<KafkaDeadLetters> {
        let producer =
            settings.producer_config().create().map_err(|e| Error::kafka("cannot create a Kafka producer", e))?;
        Ok(KafkaDeadLetters { producer })
    }

    /// Sends one dead letter (delivery is confirmed by [`Self::flush`]).
    pub fn send(&self, letter: &DeadLetter, key: Option<&str>) -> Result<()> {
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
        self.producer.send(record).map_err(|(e, _)| Error::kafka("cannot queue a dead letter", e))?;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Waits until every dead letter sent so far is acknowledged.
    pub fn flush(&self) -> Result<()> {
        self.producer.flush(Duration::from_secs(30)).map_err(|e| Error::kafka("dead letters not acknowledged", e))
    }
}
