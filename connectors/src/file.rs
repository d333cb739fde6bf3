//! The file connector: a JSONL file (plain or `.gz`), a single document
//! file, or a directory of them (`.xml`, `.nxml`, `.json`, `.jsonl`, each
//! optionally gzipped), walked in sorted path order.
//!
//! Every record has an *ordinal*, its number in source order, which every
//! worker computes the same way; worker `w` of `n` takes the records with
//! `ordinal % n == w`. A [`Checkpoint`] stores how many leading records are
//! durable in every index, so a re-run starts after them.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};

use crate::{Position, RawPayload};

/// Why a record could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct SourceError {
    /// `too_large`, `read_failed`, ...
    pub kind: String,
    /// For people.
    pub message: String,
}

impl SourceError {
    fn new(kind: &str, message: impl Into<String>) -> Self {
        SourceError { kind: kind.into(), message: message.into() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum FileKind {
    /// One record per line.
    Lines,
    /// The whole file is one record.
    Document,
}

#[derive(Clone, Debug)]
struct SourceFile {
    path: PathBuf,
    kind: FileKind,
    gzip: bool,
}

/// A file or directory source.
#[derive(Clone, Debug)]
pub struct FileSource {
    root: PathBuf,
    files: Vec<SourceFile>,
    skipped: Vec<PathBuf>,
}

fn classify(path: &Path) -> Option<(FileKind, bool)> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (name, gzip) = match name.strip_suffix(".gz") {
        Some(inner) => (inner.to_string(), true),
        None => (name, false),
    };
    let ext = name.rsplit('.').next()?;
    match ext {
        "jsonl" | "ndjson" => Some((FileKind::Lines, gzip)),
        "json" | "xml" | "nxml" => Some((FileKind::Document, gzip)),
        _ => None,
    }
}

impl FileSource {
    /// Lists the files of `path` (a file or a directory, walked without
    /// recursion; symbolic links inside it are skipped and reported).
    pub fn open(path: &Path) -> Result<FileSource, SourceError> {
        let meta =
            std::fs::metadata(path).map_err(|e| SourceError::new("not_found", format!("{}: {e}", path.display())))?;
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        if meta.is_dir() {
            let mut stack = vec![path.to_path_buf()];
            let mut all = Vec::new();
            while let Some(dir) = stack.pop() {
                let entries = std::fs::read_dir(&dir)
                    .map_err(|e| SourceError::new("read_failed", format!("{}: {e}", dir.display())))?;
                for entry in entries {
                    let entry =
                        entry.map_err(|e| SourceError::new("read_failed", format!("{}: {e}", dir.display())))?;
                    let p = entry.path();
                    // Links are not followed: one inside the tree reads its
                    // target twice (a `loop -> .` forever), one outside reads
                    // what was never given. Only regular files are read; the
                    // rest is reported as skipped.
                    let kind = entry
                        .file_type()
                        .map_err(|e| SourceError::new("read_failed", format!("{}: {e}", p.display())))?;
                    if kind.is_dir() {
                        stack.push(p);
                    } else if kind.is_file() {
                        all.push(p);
                    } else {
                        // A link, a FIFO (which would block its reader), a socket, a device.
                        skipped.push(p);
                    }
                }
            }
            all.sort();
            for p in all {
                match classify(&p) {
                    Some((kind, gzip)) => files.push(SourceFile { path: p, kind, gzip }),
                    None => skipped.push(p),
                }
            }
        } else {
            // A named file is read whatever its name: JSONL unless it says otherwise.
            let (kind, gzip) = classify(path).unwrap_or((FileKind::Lines, path.extension().is_some_and(|e| e == "gz")));
            files.push(SourceFile { path: path.to_path_buf(), kind, gzip });
        }
        Ok(FileSource { root: path.to_path_buf(), files, skipped })
    }

    /// The source as named in positions and checkpoints (`file:PATH`).
    pub fn name(&self) -> String {
        format!("file:{}", self.root.display())
    }

    /// Files of a directory that are not a known format (reported, not read).
    pub fn skipped(&self) -> &[PathBuf] {
        &self.skipped
    }

    /// The records of worker `worker` of `peers`, from ordinal `start` on.
    /// Records larger than `max_record_bytes` come back as errors (once, from
    /// the worker that owns them), as do unreadable files.
    pub fn records(&self, worker: usize, peers: usize, start: u64, max_record_bytes: usize) -> Records<'_> {
        Records {
            source: self,
            worker: worker as u64,
            peers: peers.max(1) as u64,
            start,
            max: max_record_bytes,
            file: 0,
            ordinal: 0,
            lines: None,
        }
    }
}

/// Iterator over one worker's records: `(ordinal, record or error)`.
pub struct Records<'a> {
    source: &'a FileSource,
    worker: u64,
    peers: u64,
    start: u64,
    max: usize,
    file: usize,
    ordinal: u64,
    lines: Option<(Box<dyn BufRead>, u64)>,
}

/// One item of [`Records`].
pub type Record = Result<RawPayload, (Position, SourceError)>;

impl Records<'_> {
    /// How many records of the source were seen so far (by every worker
    /// alike): after the last item, the number of records in the source.
    pub fn ordinal(&self) -> u64 {
        self.ordinal
    }

    fn mine(&self, ordinal: u64) -> bool {
        ordinal >= self.start && ordinal % self.peers == self.worker
    }

    fn position_of(&self, ordinal: u64, line: Option<u64>) -> Position {
        Position { ordinal, file: self.source.files[self.file].path.display().to_string(), line, partition: None }
    }

    fn payload(&self, bytes: Vec<u8>, position: Position) -> RawPayload {
        let file = &self.source.files[self.file];
        RawPayload {
            source: self.source.name(),
            key: None,
            bytes,
            name: file.path.file_name().map(|n| n.to_string_lossy().into_owned()),
            position,
            tombstone: false,
            tenant: None,
        }
    }

    fn open(&self) -> Result<Box<dyn Read>, SourceError> {
        let file = &self.source.files[self.file];
        let handle = File::open(&file.path)
            .map_err(|e| SourceError::new("read_failed", format!("{}: {e}", file.path.display())))?;
        Ok(if file.gzip { Box::new(MultiGzDecoder::new(handle)) } else { Box::new(handle) })
    }

    /// The next line of the open JSONL file: `Ok(None)` at its end.
    fn next_line(&mut self) -> Result<Option<(u64, Vec<u8>, bool)>, SourceError> {
        let max = self.max;
        let Some((reader, line_no)) = self.lines.as_mut() else {
            return Ok(None);
        };
        loop {
            let mut buf = Vec::new();
            let mut too_long = false;
            // Read the line in pieces so a giant line never sits in memory.
            loop {
                let available = reader.fill_buf().map_err(|e| SourceError::new("read_failed", e.to_string()))?;
                if available.is_empty() {
                    break;
                }
                let (take, done) = match available.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (available.len(), false),
                };
                if !too_long {
                    if buf.len() + take > max + 1 {
                        too_long = true;
                        buf.clear();
                    } else {
                        buf.extend_from_slice(&available[..take]);
                    }
                }
                reader.consume(take);
                if done {
                    break;
                }
            }
            if buf.is_empty() && !too_long {
                return Ok(None); // nothing read: the end of the file
            }
            *line_no += 1;
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            if !too_long && buf.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines are not records
            }
            return Ok(Some((*line_no, buf, too_long)));
        }
    }
}

impl Iterator for Records<'_> {
    type Item = (u64, Record);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let file = self.source.files.get(self.file)?;
            match file.kind {
                FileKind::Document => {
                    let ordinal = self.ordinal;
                    self.ordinal += 1;
                    if !self.mine(ordinal) {
                        self.file += 1;
                        continue;
                    }
                    let position = self.position_of(ordinal, None);
                    let result = (|| {
                        let size = std::fs::metadata(&file.path).map(|m| m.len()).unwrap_or(0);
                        if !file.gzip && size > self.max as u64 {
                            return Err(SourceError::new(
                                "too_large",
                                format!("file of {size} bytes exceeds max_record_bytes ({})", self.max),
                            ));
                        }
                        let mut bytes = Vec::new();
                        self.open()?
                            .take(self.max as u64 + 1)
                            .read_to_end(&mut bytes)
                            .map_err(|e| SourceError::new("read_failed", format!("{}: {e}", file.path.display())))?;
                        if bytes.len() > self.max {
                            return Err(SourceError::new(
                                "too_large",
                                format!("record exceeds max_record_bytes ({})", self.max),
                            ));
                        }
                        Ok(bytes)
                    })();
                    let item = match result {
                        Ok(bytes) => Ok(self.payload(bytes, position)),
                        Err(e) => Err((position, e)),
                    };
                    self.file += 1;
                    return Some((ordinal, item));
                }
                FileKind::Lines => {
                    if self.lines.is_none() {
                        match self.open() {
                            Ok(read) => self.lines = Some((Box::new(BufReader::with_capacity(1 << 16, read)), 0)),
                            Err(e) => {
                                // An unreadable file counts as one record, owned by one worker.
                                let ordinal = self.ordinal;
                                self.ordinal += 1;
                                self.file += 1;
                                if self.mine(ordinal) {
                                    let position = Position {
                                        ordinal,
                                        file: file.path.display().to_string(),
                                        line: None,
                                        partition: None,
                                    };
                                    return Some((ordinal, Err((position, e))));
                                }
                                continue;
                            }
                        }
                    }
                    match self.next_line() {
                        Ok(Some((line, bytes, too_long))) => {
                            let ordinal = self.ordinal;
                            self.ordinal += 1;
                            if !self.mine(ordinal) {
                                continue;
                            }
                            let position = self.position_of(ordinal, Some(line));
                            if too_long {
                                let error = SourceError::new(
                                    "too_large",
                                    format!("line exceeds max_record_bytes ({})", self.max),
                                );
                                return Some((ordinal, Err((position, error))));
                            }
                            return Some((ordinal, Ok(self.payload(bytes, position))));
                        }
                        Ok(None) => {
                            self.lines = None;
                            self.file += 1;
                        }
                        Err(e) => {
                            // A corrupt stream ends the file; one worker reports it.
                            let ordinal = self.ordinal;
                            self.ordinal += 1;
                            let line = self.lines.as_ref().map(|(_, l)| *l + 1);
                            let position = self.position_of(ordinal, line);
                            self.lines = None;
                            self.file += 1;
                            if ordinal % self.peers == self.worker && ordinal >= self.start {
                                return Some((ordinal, Err((position, e))));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// How far a source is durably processed: every record with an ordinal
/// below `committed` is in every index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The source (`file:PATH`).
    pub source: String,
    /// Records `0..committed` are done.
    pub committed: u64,
    /// True once the whole source was read and committed.
    pub complete: bool,
}

impl Checkpoint {
    /// The checkpoint of `source` in `data_dir`, if one was written.
    pub fn load(data_dir: &Path, source: &str) -> std::io::Result<Option<Checkpoint>> {
        load_json(&checkpoint_path(data_dir, source))
    }

    /// Writes the checkpoint atomically and durably (temp file, fsync, rename).
    pub fn store(&self, data_dir: &Path) -> std::io::Result<()> {
        store_json(&checkpoint_path(data_dir, &self.source), self)
    }
}

/// Where the checkpoint of `source` lives: `data_dir/checkpoints/`, named
/// by the source's last path segment and a hash of the whole name.
pub(crate) fn checkpoint_path(data_dir: &Path, source: &str) -> PathBuf {
    let digest = source.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let tail: String = source
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("source")
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    data_dir.join("checkpoints").join(format!("{tail}-{digest:016x}.json"))
}

/// A JSON file's value, if the file exists.
pub(crate) fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `value` as JSON atomically and durably (temp file, fsync, rename, fsync the folder).
pub(crate) fn store_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        let mut file = File::create(&tmp)?;
        std::io::Write::write_all(&mut file, serde_json::to_string_pretty(value)?.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The JSON files of `dir` that are complete, sorted by name: writers of
/// folder streams (downloaded records, IR-ready records) write a temp name
/// starting with `.` and rename it into place. Empty when `dir` does not
/// exist (yet).
pub fn complete_json_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<std::path::PathBuf> = entries
        .filter_map(Result::ok)
        // Regular files only: a link may point anywhere, a FIFO would block its reader.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    files.sort();
    files
}
