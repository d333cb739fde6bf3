//! `medkg pdf-parser`: the PDF-to-IR worker of the two-phase PDF flow, a
//! process of its own (as GROBID or MinerU would be).
//!
//! It reads downloaded records (`{"doc_id","tenant_id","url","sha256","bytes","path"}`)
//! from a folder or a Kafka topic, extracts each PDF's text and sections
//! into the document IR, and publishes an IR-ready record (`{"doc_id",
//! "tenant_id","sha256","parser","ir"}`).
//!
//! A record is outside input, so it cannot make the parser read a file of
//! its choosing: the PDF is read by its content address, `OBJECTS/ab/<sha256>.pdf`
//! under the object store root (`--objects`, the engine's `DATA_DIR/objects`);
//! the record's `path` is informational. The file must resolve (links
//! followed) to a regular file under that root, be at most `--max-pdf-bytes`,
//! and hash to the record's `sha256`. No error quotes the file's bytes.
//!
//! The text extractor (pdf-extract, lopdf) runs in a child process of its
//! own per PDF (`medkg pdf-extract`), under an address-space limit
//! (`--extract-memory`) and a time limit (`--extract-timeout`): a PDF that
//! would crash it (a stack overflow, a failed allocation) or make it spin
//! fails alone (`extract_crashed`, `extract_timeout`) and the parser goes on.
//!
//! Results go:
//!
//! - to a folder as `{sha256}.json`, written to a temp name and renamed so a
//!   reader never sees half a file; a PDF it cannot read gets
//!   `failed/{name}.json` with the error instead (and the gate times its
//!   document out). Records already published are skipped, so a restart
//!   redoes nothing;
//! - or to a Kafka topic, keyed by document id; a PDF it cannot read goes to
//!   the dead-letter topic. A Kafka input's offset is committed only once
//!   what the message produced is acknowledged, so a crash re-parses at most
//!   the message in hand (the gate drops the duplicate).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use medkg_connectors::dead_letter::{DeadLetter, KafkaDeadLetters};
use medkg_connectors::kafka::{KafkaInput, KafkaJson, KafkaSettings};
use medkg_connectors::{Position, StreamSpec};
use medkg_operators::index::write_atomically;
use medkg_operators::pdf::{extract, sha256_hex, Downloaded, IrReady, ObjectStore};
use medkg_operators::{Document, StageError};

use crate::cli::PdfParserArgs;

/// Where downloaded records come from.
enum Input {
    Dir {
        dir: PathBuf,
        seen: HashSet<PathBuf>,
    },
    /// Each message is read at an epoch of its own (a counter), so
    /// acknowledging one commits it and everything read before it.
    Kafka {
        input: KafkaInput,
        read: u64,
    },
}

/// One downloaded record in hand, and how to acknowledge it.
struct Pending {
    bytes: Vec<u8>,
    position: Position,
    ack: Ack,
}

enum Ack {
    File(PathBuf),
    /// The epoch the message was read at.
    Message(u64),
}

/// Where IR-ready records (and failures) go.
enum Output {
    Dir(PathBuf),
    Kafka { records: KafkaJson, dead_letters: KafkaDeadLetters },
}

/// What happened to one record.
enum Outcome {
    Parsed,
    Skipped,
    Failed(String),
}

/// The limits of the child process that extracts one PDF.
#[derive(Clone, Copy, Debug)]
pub struct Isolation {
    /// Its address space (RLIMIT_AS), in bytes.
    pub memory: u64,
    /// How long it may take.
    pub timeout: Duration,
}

impl Isolation {
    /// Extracts `pdf` in a child process (`medkg pdf-extract`) under these limits.
    fn extract(&self, pdf: &[u8], doc_id: &str, tenant: &str) -> Result<Document, StageError> {
        use std::io::{Read, Write};
        use std::os::unix::process::CommandExt;
        let unavailable = |e: std::io::Error| {
            StageError::unavailable("extractor", format!("cannot run the PDF extractor process: {e}"))
        };
        let exe = std::env::current_exe().map_err(unavailable)?;
        let mut command = std::process::Command::new(exe);
        command
            .args(["pdf-extract", "--doc-id", doc_id, "--tenant", tenant])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let memory = self.memory;
        // SAFETY: setrlimit and prctl are async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit { rlim_cur: memory, rlim_max: memory };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(unavailable)?;
        let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(unavailable(std::io::Error::other("no pipes to the extractor")));
        };
        // Both ends on threads of their own, so neither pipe can stall the
        // other; scoped, so they borrow the PDF (a kill closes both pipes).
        let (status, out) = std::thread::scope(|scope| {
            let writer = scope.spawn(move || stdin.write_all(pdf));
            let reader = scope.spawn(move || {
                let mut out = Vec::new();
                stdout.by_ref().take(MAX_IR_BYTES + 1).read_to_end(&mut out).map(|_| out)
            });
            let began = std::time::Instant::now();
            let status = loop {
                match child.try_wait() {
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Err(unavailable(e));
                    }
                    Ok(Some(status)) => break Ok(Some(status)),
                    Ok(None) if began.elapsed() >= self.timeout => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Ok(None);
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            };
            let _ = writer.join();
            (status, reader.join().ok().and_then(Result::ok).unwrap_or_default())
        });
        let status = status?;
        let Some(status) = status else {
            return Err(StageError::permanent(
                "extract_timeout",
                format!("the PDF extractor did not finish within {:?} (--extract-timeout)", self.timeout),
            ));
        };
        if !status.success() || out.len() as u64 > MAX_IR_BYTES {
            use std::os::unix::process::ExitStatusExt;
            let how = match (status.signal(), status.code()) {
                (Some(signal), _) => format!("was killed by signal {signal}"),
                (None, Some(code)) if code != 0 => format!("exited with {code}"),
                _ => format!("wrote more than {MAX_IR_BYTES} bytes"),
            };
            return Err(StageError::permanent(
                "extract_crashed",
                format!("the PDF extractor {how} on this file (memory limit {} bytes)", self.memory),
            ));
        }
        match serde_json::from_slice::<Result<Document, StageError>>(&out) {
            Ok(result) => result,
            Err(e) => {
                Err(StageError::permanent("extract_crashed", format!("the PDF extractor's answer is not JSON: {e}")))
            }
        }
    }
}

/// The most IR JSON one extraction may answer with.
const MAX_IR_BYTES: u64 = 256 << 20;

/// `medkg pdf-extract`: the child side of [`Isolation::extract`]. Reads one
/// PDF from stdin (at most `max_bytes`), writes `{"Ok": document}` or
/// `{"Err": error}` to stdout.
pub fn extract_one(doc_id: &str, tenant: &str, max_bytes: u64) -> anyhow::Result<()> {
    use std::io::Read;
    let mut pdf = Vec::new();
    std::io::stdin().take(max_bytes).read_to_end(&mut pdf).context("cannot read the PDF from stdin")?;
    let result = extract(&pdf, doc_id, tenant);
    serde_json::to_writer(std::io::stdout().lock(), &result).context("cannot write the result")?;
    Ok(())
}

/// Where the PDFs are and how large one may be.
pub struct Store {
    /// The object store root, canonical.
    root: PathBuf,
    max_bytes: u64,
}

impl Store {
    /// The store at `root` (created if missing), PDFs up to `max_bytes`.
    pub fn open(root: &std::path::Path, max_bytes: u64) -> anyhow::Result<Store> {
        std::fs::create_dir_all(root).with_context(|| format!("--objects {}: cannot create it", root.display()))?;
        let root = std::fs::canonicalize(root).with_context(|| format!("--objects {}", root.display()))?;
        Ok(Store { root, max_bytes })
    }

    /// The PDF a record names, checked: `(error kind, message)` otherwise.
    fn read(&self, record: &Downloaded) -> Result<Vec<u8>, (&'static str, String)> {
        use std::io::Read;
        let sha = &record.sha256;
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(("bad_downloaded", "`sha256` is not 64 lowercase hex digits".into()));
        }
        let path = ObjectStore::new(&self.root).path_of(sha);
        let unreadable = |e: std::io::Error| ("pdf_unreadable", format!("cannot read the PDF {sha}: {e}"));
        let real = std::fs::canonicalize(&path).map_err(unreadable)?;
        if !real.starts_with(&self.root) {
            return Err(("path_refused", format!("the stored PDF {sha} resolves outside the object store")));
        }
        // Checked before opening: opening a FIFO or a device could block or never end.
        if !std::fs::metadata(&real).map_err(unreadable)?.is_file() {
            return Err(("path_refused", format!("the stored PDF {sha} is not a regular file")));
        }
        let file = std::fs::File::open(&real).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if meta.len() > self.max_bytes {
            return Err((
                "too_large",
                format!("the PDF is {} bytes; the cap is {} (--max-pdf-bytes)", meta.len(), self.max_bytes),
            ));
        }
        let mut pdf = Vec::with_capacity(meta.len() as usize);
        file.take(self.max_bytes + 1).read_to_end(&mut pdf).map_err(unreadable)?;
        if pdf.len() as u64 > self.max_bytes {
            return Err(("too_large", format!("the PDF grew past the cap of {} bytes", self.max_bytes)));
        }
        if sha256_hex(&pdf) != *sha {
            return Err(("sha_mismatch", format!("the stored file does not hash to the record's sha256 {sha}")));
        }
        Ok(pdf)
    }
}

/// `medkg pdf-parser`.
pub fn command(args: PdfParserArgs) -> anyhow::Result<()> {
    let PdfParserArgs { input, output, once, objects, max_pdf_bytes, extract_memory, extract_timeout, kafka } = args;
    let settings = kafka.brokers.is_some().then(|| kafka.settings_or("medkg-pdf-parser")).transpose()?;
    let store = Store::open(&objects, max_pdf_bytes)?;
    let timeout = Duration::try_from_secs_f64(extract_timeout)
        .map_err(|e| anyhow!("--extract-timeout {extract_timeout}: {e}"))?;
    run(&input, &output, once, store, Isolation { memory: extract_memory, timeout }, settings)
}

/// Parses what comes on `input` into `output` until stopped (or, `once`,
/// until `input` is drained).
pub fn run(
    input: &StreamSpec,
    output: &StreamSpec,
    once: bool,
    store: Store,
    isolation: Isolation,
    kafka: Option<KafkaSettings>,
) -> anyhow::Result<()> {
    let kafka_for = |spec: &StreamSpec| kafka.clone().ok_or_else(|| anyhow!("`{spec}` needs --brokers HOST:PORT"));
    let mut input = match input {
        StreamSpec::Dir(dir) => Input::Dir { dir: dir.clone(), seen: HashSet::new() },
        StreamSpec::Kafka(topic) => Input::Kafka { input: KafkaInput::subscribe(&kafka_for(input)?, topic)?, read: 0 },
    };
    let output = match output {
        StreamSpec::Dir(dir) => {
            std::fs::create_dir_all(dir.join("failed")).with_context(|| format!("cannot create {}", dir.display()))?;
            Output::Dir(dir.clone())
        }
        StreamSpec::Kafka(topic) => {
            let settings = kafka_for(output)?;
            Output::Kafka {
                records: KafkaJson::new(&settings, topic)?,
                dead_letters: KafkaDeadLetters::new(&settings)?,
            }
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("cannot install the signal handler")?;
    }
    let (mut parsed, mut failed) = (0u64, 0u64);
    // `--once` on a topic: stop once it has been quiet for 5 s with partitions assigned.
    let mut busy = std::time::Instant::now();
    loop {
        let batch = input.next_batch()?;
        if !batch.is_empty() || !input.assigned() {
            busy = std::time::Instant::now();
        }
        for pending in batch {
            match output.parse(&pending, &store, isolation)? {
                Outcome::Parsed => parsed += 1,
                Outcome::Skipped => {}
                Outcome::Failed(error) => {
                    failed += 1;
                    tracing::warn!(record = %pending.position, error = %error, "pdf-parser: cannot parse");
                }
            }
            input.ack(pending.ack)?;
        }
        let drained = match input {
            Input::Dir { .. } => true,
            Input::Kafka { .. } => busy.elapsed() >= Duration::from_secs(5),
        };
        if (once && drained) || stop.load(Ordering::SeqCst) {
            break;
        }
        if let Input::Dir { .. } = input {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("{}", serde_json::json!({ "parsed": parsed, "failed": failed }));
    Ok(())
}

impl Input {
    /// A folder always is; a topic once the group gave this member partitions.
    fn assigned(&self) -> bool {
        match self {
            Input::Dir { .. } => true,
            Input::Kafka { input, .. } => input.assigned(),
        }
    }

    /// The records that came since the last call (a topic: what arrives
    /// within 200 ms, at most 64).
    fn next_batch(&mut self) -> anyhow::Result<Vec<Pending>> {
        match self {
            Input::Dir { dir, seen } => {
                // (A folder not created yet is empty.)
                let paths: Vec<PathBuf> =
                    medkg_connectors::complete_json_files(dir).into_iter().filter(|p| !seen.contains(p)).collect();
                let mut batch = Vec::with_capacity(paths.len());
                for path in paths {
                    // A file that cannot be read now (still being moved in) is tried again next round.
                    let Ok(bytes) = std::fs::read(&path) else { continue };
                    let position =
                        Position { ordinal: 0, file: path.display().to_string(), line: None, partition: None };
                    batch.push(Pending { bytes, position, ack: Ack::File(path) });
                }
                Ok(batch)
            }
            Input::Kafka { input, read } => {
                let mut batch = Vec::new();
                let mut wait = Duration::from_millis(200);
                while batch.len() < 64 {
                    let Some(payload) = input.poll(*read, wait) else { break };
                    batch.push(Pending { bytes: payload.bytes, position: payload.position, ack: Ack::Message(*read) });
                    *read += 1;
                    wait = Duration::ZERO;
                }
                Ok(batch)
            }
        }
    }

    /// The record's outcome is published: never hand it out again.
    fn ack(&mut self, ack: Ack) -> anyhow::Result<()> {
        match (self, ack) {
            (Input::Dir { seen, .. }, Ack::File(path)) => {
                seen.insert(path);
            }
            (Input::Kafka { input, .. }, Ack::Message(epoch)) => {
                input.commit_durable(epoch + 1, || Ok::<(), anyhow::Error>(()))?;
            }
            _ => {}
        }
        Ok(())
    }
}

impl Output {
    /// Parses one downloaded record and publishes the result (IR or failure).
    /// `Err` only when the output itself refuses.
    fn parse(&self, pending: &Pending, store: &Store, isolation: Isolation) -> anyhow::Result<Outcome> {
        let record: Downloaded = match serde_json::from_slice(&pending.bytes) {
            Ok(record) => record,
            Err(e) => {
                let error = format!("not a downloaded record: {e}");
                self.fail(pending, None, &fallback_name(&pending.position), "bad_downloaded", &error)?;
                return Ok(Outcome::Failed(error));
            }
        };
        let name = record.record_name();
        if let Output::Dir(dir) = self {
            if dir.join(&name).exists() || dir.join("failed").join(&name).exists() {
                return Ok(Outcome::Skipped);
            }
        }
        let pdf = match store.read(&record) {
            Ok(pdf) => pdf,
            Err((kind, error)) => {
                self.fail(pending, Some(&record), &name, kind, &error)?;
                return Ok(Outcome::Failed(error));
            }
        };
        let extracted = isolation.extract(&pdf, &record.doc_id, &record.tenant_id);
        if let Err(e) = &extracted {
            if e.class == medkg_operators::ErrorClass::Unavailable {
                bail!("{e}"); // no extractor to run: every record would fail the same way
            }
        }
        match extracted {
            Ok(document) => {
                let ready = IrReady {
                    doc_id: record.doc_id.clone(),
                    tenant_id: Some(record.tenant_id.clone()),
                    sha256: Some(record.sha256.clone()),
                    parser: Some(concat!("medkg-pdf-parser/", env!("CARGO_PKG_VERSION")).into()),
                    ir: Some(document),
                    tei: None,
                    pdf_url: None,
                };
                let json = serde_json::to_vec(&ready)?;
                match self {
                    Output::Dir(dir) => write_atomically(&dir.join(&name), &json)?,
                    Output::Kafka { records, .. } => {
                        records.send(&record.doc_id, &json, &[("content-type", "application/json")])?;
                        records.flush()?;
                    }
                }
                Ok(Outcome::Parsed)
            }
            Err(error) => {
                self.fail(pending, Some(&record), &name, &error.kind, &error.message)?;
                Ok(Outcome::Failed(error.to_string()))
            }
        }
    }

    /// Publishes a failure: `failed/NAME.json` in a folder, else a dead letter.
    fn fail(
        &self,
        pending: &Pending,
        record: Option<&Downloaded>,
        name: &str,
        kind: &str,
        error: &str,
    ) -> anyhow::Result<()> {
        match self {
            Output::Dir(dir) => {
                let failure = serde_json::json!({
                    "doc_id": record.map(|r| &r.doc_id),
                    "sha256": record.map(|r| &r.sha256),
                    "source": pending.position.to_string(),
                    "error_kind": kind,
                    "error": error,
                });
                write_atomically(&dir.join("failed").join(name), &serde_json::to_vec(&failure)?)?;
            }
            Output::Kafka { dead_letters, .. } => {
                let doc_id = record.map(|r| r.doc_id.clone());
                let letter = DeadLetter::new(
                    "pdf-parser",
                    &pending.position.file,
                    &pending.position,
                    doc_id.clone(),
                    "permanent",
                    kind,
                    error,
                    &pending.bytes,
                );
                dead_letters.send(&letter, doc_id.as_deref())?;
                dead_letters.flush()?;
            }
        }
        Ok(())
    }
}

/// A failure file's name for a record that names no PDF: its source
/// position, made safe for a file name.
fn fallback_name(position: &Position) -> String {
    let text: String =
        position.to_string().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("bad-{text}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_names_are_plain_file_names() {
        let position = Position { ordinal: 3, file: "/a/b c.json".into(), line: None, partition: Some(2) };
        let name = fallback_name(&position);
        assert!(name.starts_with("bad-") && name.ends_with(".json"), "{name}");
        assert!(!name[..name.len() - 5].contains(['/', ' ', '.']), "{name}");
    }
}
