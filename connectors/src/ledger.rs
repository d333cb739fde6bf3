//! The job ledger: one SQLite row per document of a data directory, saying
//! how far it got.
//!
//! `DATA_DIR/ledger.sqlite` (WAL) holds, per `(tenant_id, doc_id)`: the
//! pipeline and run, the stage it last reached, its status, whether its PDF
//! was downloaded and its IR is ready, the last error, and when the row was
//! created and updated; `stage_retries` holds the retries of each stage in
//! the document's latest run.
//!
//! Workers do not write per update: each keeps a [`LedgerBuffer`] that
//! folds a document's updates together and hands them, a few times a second
//! and at the end of the run, to the process's [`LedgerWriter`]: one thread
//! that owns the connection and writes each hand-off (with any others
//! queued behind it) in one transaction, so workers never wait on SQLite. A document's stages
//! may run on two workers (the index is exchanged by document), so rows
//! only move forward: within a run, an update for an earlier stage never
//! overwrites a later one. A new run of the document starts the row over.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::{params, Connection};
use serde::Serialize;

/// The ledger file in a data directory.
pub const LEDGER_FILE: &str = "ledger.sqlite";

/// Where a document stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// A stage has it (and may be retrying).
    Running,
    /// A stage passed it on; the next has not reported yet.
    InProgress,
    /// It reached the pipeline's sinks (for an index: durably indexed).
    Completed,
    /// It was dead-lettered.
    Failed,
    /// A tombstone removed it.
    Deleted,
    /// It is waiting at a gate.
    Waiting,
    /// A gate gave up waiting for it.
    GateTimeout,
}

impl Status {
    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Deleted => "deleted",
            Status::Waiting => "waiting",
            Status::GateTimeout => "gate_timeout",
        }
    }

    /// Every status, for `--status` help and checks.
    pub const ALL: [Status; 7] = [
        Status::Running,
        Status::InProgress,
        Status::Completed,
        Status::Failed,
        Status::Deleted,
        Status::Waiting,
        Status::GateTimeout,
    ];

    /// Whether the document's run is over (so a later stage of it cannot
    /// report any more).
    fn terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Deleted | Status::GateTimeout)
    }
}

impl std::str::FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("`{s}`: expected one of {}", Status::ALL.map(Status::as_str).join(", ")))
    }
}

/// One stage's report about one document.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// The document's tenant.
    pub tenant_id: String,
    /// The document.
    pub doc_id: String,
    /// The stage.
    pub stage: String,
    /// The stage's position in the pipeline (plan order).
    pub stage_index: u32,
    /// Where the document stands after it.
    pub status: Status,
    /// Retries this stage made for it.
    pub retries: u32,
    /// The error that failed it.
    pub error: Option<String>,
    /// Its PDF is downloaded.
    pub pdf_downloaded: bool,
    /// Its IR is ready.
    pub pdf_ir_ready: bool,
}

impl Update {
    /// An update with no retries, error or PDF flags.
    pub fn new(tenant_id: &str, doc_id: &str, stage: &str, stage_index: u32, status: Status) -> Update {
        Update {
            tenant_id: tenant_id.to_string(),
            doc_id: doc_id.to_string(),
            stage: stage.to_string(),
            stage_index,
            status,
            retries: 0,
            error: None,
            pdf_downloaded: false,
            pdf_ir_ready: false,
        }
    }

    /// Whether this update supersedes `other` (both of one run): a later
    /// stage, or the same stage with a final word.
    fn supersedes(&self, other: &Update) -> bool {
        self.stage_index > other.stage_index
            || (self.stage_index == other.stage_index && (self.status.terminal() || !other.status.terminal()))
    }
}

/// A document's folded updates, waiting for the next write.
#[derive(Clone, Debug)]
struct Pending {
    latest: Update,
    retries: BTreeMap<String, u32>,
    at_ms: i64,
}

/// A worker's unwritten updates.
#[derive(Debug)]
pub struct LedgerBuffer {
    /// `None`: the ledger is off (`--no-ledger`); updates are dropped.
    writer: Option<Arc<LedgerWriter>>,
    pending: HashMap<(String, String), Pending>,
    last_write: std::time::Instant,
}

impl LedgerBuffer {
    /// A buffer writing to `ledger`.
    pub fn new(writer: Arc<LedgerWriter>) -> LedgerBuffer {
        LedgerBuffer { writer: Some(writer), pending: HashMap::new(), last_write: std::time::Instant::now() }
    }

    /// A buffer that keeps nothing (the ledger is off).
    pub fn off() -> LedgerBuffer {
        LedgerBuffer { writer: None, pending: HashMap::new(), last_write: std::time::Instant::now() }
    }

    /// Folds in one update.
    pub fn record(&mut self, update: Update) {
        if self.writer.is_none() {
            return;
        }
        let at_ms = now_ms();
        let key = (update.tenant_id.clone(), update.doc_id.clone());
        match self.pending.get_mut(&key) {
            Some(pending) => {
                if update.retries > 0 {
                    *pending.retries.entry(update.stage.clone()).or_default() += update.retries;
                }
                pending.latest.pdf_downloaded |= update.pdf_downloaded;
                pending.latest.pdf_ir_ready |= update.pdf_ir_ready;
                pending.at_ms = at_ms;
                if update.supersedes(&pending.latest) {
                    let (downloaded, ready) = (pending.latest.pdf_downloaded, pending.latest.pdf_ir_ready);
                    let error = update.error.clone().or(pending.latest.error.take());
                    pending.latest = Update { error, pdf_downloaded: downloaded, pdf_ir_ready: ready, ..update };
                } else if update.error.is_some() {
                    pending.latest.error = update.error;
                }
            }
            None => {
                let mut retries = BTreeMap::new();
                if update.retries > 0 {
                    retries.insert(update.stage.clone(), update.retries);
                }
                self.pending.insert(key, Pending { latest: update, retries, at_ms });
            }
        }
    }

    /// Documents with unwritten updates.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Hands the updates to the writer when the last hand-off is `interval`
    /// old (or the buffer is large).
    pub fn write_if_due(&mut self, interval: std::time::Duration) -> Result<(), String> {
        if !self.pending.is_empty() && (self.last_write.elapsed() >= interval || self.pending.len() >= 50_000) {
            self.write()?;
        }
        Ok(())
    }

    /// Hands every pending update to the writer (it writes them in one transaction).
    pub fn write(&mut self) -> Result<(), String> {
        self.last_write = std::time::Instant::now();
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        if self.pending.is_empty() {
            return writer.error();
        }
        writer.send(self.pending.drain().map(|(_, p)| p).collect())
    }

    /// Hands everything over and waits until it is written.
    pub fn sync(&mut self) -> Result<(), String> {
        self.write()?;
        match &self.writer {
            Some(writer) => writer.sync(),
            None => Ok(()),
        }
    }
}

enum Message {
    Write(Vec<Pending>),
    Sync(mpsc::Sender<()>),
}

/// The thread that owns a process's ledger connection.
#[derive(Debug)]
pub struct LedgerWriter {
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The first write error: every later hand-off returns it.
    error: Arc<Mutex<Option<String>>>,
}

impl LedgerWriter {
    /// Starts the writer of `ledger` for a run.
    pub fn start(mut ledger: Ledger, pipeline: &str, run_id: &str) -> Result<Arc<LedgerWriter>, String> {
        let (sender, receiver) = mpsc::channel::<Message>();
        let error: Arc<Mutex<Option<String>>> = Arc::default();
        let failed = error.clone();
        let (pipeline, run_id) = (pipeline.to_string(), run_id.to_string());
        let thread = std::thread::Builder::new()
            .name("medkg-ledger".into())
            .spawn(move || {
                while let Ok(first) = receiver.recv() {
                    let mut batch = Vec::new();
                    let mut syncs = Vec::new();
                    for message in std::iter::once(first).chain(receiver.try_iter()) {
                        match message {
                            Message::Write(pending) => batch.extend(pending),
                            Message::Sync(done) => syncs.push(done),
                        }
                    }
                    if !batch.is_empty() {
                        if let Err(e) = ledger.write(&pipeline, &run_id, &batch) {
                            failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        }
                    }
                    for done in syncs {
                        let _ = done.send(());
                    }
                }
            })
            .map_err(|e| format!("cannot start the ledger writer: {e}"))?;
        Ok(Arc::new(LedgerWriter { sender: Mutex::new(Some(sender)), thread: Mutex::new(Some(thread)), error }))
    }

    fn error(&self) -> Result<(), String> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn send(&self, pending: Vec<Pending>) -> Result<(), String> {
        self.error()?;
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        match sender.as_ref() {
            Some(sender) => {
                sender.send(Message::Write(pending)).map_err(|_| "the ledger writer has stopped".to_string())
            }
            None => Err("the ledger writer has stopped".into()),
        }
    }

    /// Waits until everything handed over so far is written.
    pub fn sync(&self) -> Result<(), String> {
        let (done_tx, done_rx) = mpsc::channel();
        {
            let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(sender) = sender.as_ref() {
                sender.send(Message::Sync(done_tx)).map_err(|_| "the ledger writer has stopped".to_string())?;
            }
        }
        let _ = done_rx.recv();
        self.error()
    }

    /// Writes what is left and stops the thread.
    pub fn close(&self) -> Result<(), String> {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
        self.error()
    }
}

/// A connection to a data directory's ledger.
#[derive(Debug)]
pub struct Ledger {
    connection: Connection,
    path: PathBuf,
}

/// A document's row, as `medkg ledger` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerRow {
    /// Tenant.
    pub tenant_id: String,
    /// Document.
    pub doc_id: String,
    /// Pipeline of its latest run.
    pub pipeline: String,
    /// Its latest run.
    pub run_id: String,
    /// The stage it last reached.
    pub stage: String,
    /// Its status.
    pub status: String,
    /// Retries per stage in its latest run.
    pub retries: BTreeMap<String, u32>,
    /// Its PDF is downloaded.
    pub pdf_downloaded: bool,
    /// Its IR is ready.
    pub pdf_ir_ready: bool,
    /// The last error it met.
    pub last_error: Option<String>,
    /// First seen (RFC 3339).
    pub created_at: String,
    /// Last changed (RFC 3339).
    pub updated_at: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS documents (
    tenant_id      TEXT    NOT NULL,
    doc_id         TEXT    NOT NULL,
    pipeline       TEXT    NOT NULL,
    run_id         TEXT    NOT NULL,
    stage          TEXT    NOT NULL,
    stage_index    INTEGER NOT NULL,
    status         TEXT    NOT NULL,
    pdf_downloaded INTEGER NOT NULL DEFAULT 0,
    pdf_ir_ready   INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    created_ms     INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, doc_id)
);
CREATE INDEX IF NOT EXISTS documents_status ON documents (status);
CREATE INDEX IF NOT EXISTS documents_doc ON documents (doc_id);
CREATE TABLE IF NOT EXISTS stage_retries (
    tenant_id TEXT    NOT NULL,
    doc_id    TEXT    NOT NULL,
    stage     TEXT    NOT NULL,
    run_id    TEXT    NOT NULL,
    retries   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, doc_id, stage)
);
";

/// Within a run, rows only move forward: a later stage, or the same stage
/// with a final word. A new run starts the row over.
const UPSERT: &str = "
INSERT INTO documents (tenant_id, doc_id, pipeline, run_id, stage, stage_index, status,
                       pdf_downloaded, pdf_ir_ready, last_error, created_ms, updated_ms)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)
ON CONFLICT (tenant_id, doc_id) DO UPDATE SET
    stage = CASE WHEN (run_id != excluded.run_id OR excluded.stage_index > stage_index
                       OR (excluded.stage_index = stage_index AND (?12 OR status NOT IN ('completed','failed','deleted','gate_timeout'))))
                 THEN excluded.stage ELSE stage END,
    status = CASE WHEN (run_id != excluded.run_id OR excluded.stage_index > stage_index
                       OR (excluded.stage_index = stage_index AND (?12 OR status NOT IN ('completed','failed','deleted','gate_timeout'))))
                 THEN excluded.status ELSE status END,
    stage_index = CASE WHEN (run_id != excluded.run_id OR excluded.stage_index > stage_index
                       OR (excluded.stage_index = stage_index AND (?12 OR status NOT IN ('completed','failed','deleted','gate_timeout'))))
                 THEN excluded.stage_index ELSE stage_index END,
    pipeline = excluded.pipeline,
    run_id = excluded.run_id,
    pdf_downloaded = MAX(pdf_downloaded, excluded.pdf_downloaded),
    pdf_ir_ready = MAX(pdf_ir_ready, excluded.pdf_ir_ready),
    last_error = COALESCE(excluded.last_error, last_error),
    updated_ms = MAX(updated_ms, excluded.updated_ms)
";

const ADD_RETRIES: &str = "
INSERT INTO stage_retries (tenant_id, doc_id, stage, run_id, retries) VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (tenant_id, doc_id, stage) DO UPDATE SET
    retries = CASE WHEN run_id = excluded.run_id THEN retries + excluded.retries ELSE excluded.retries END,
    run_id = excluded.run_id
";

impl Ledger {
    /// Opens (creating if needed) the ledger of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Ledger, String> {
        let path = data_dir.join(LEDGER_FILE);
        let fail = |e: rusqlite::Error| format!("ledger {}: {e}", path.display());
        let connection = Connection::open(&path).map_err(fail)?;
        connection.busy_timeout(std::time::Duration::from_secs(30)).map_err(fail)?;
        // The processes of a cluster open one ledger at once, and SQLite
        // answers a journal-mode switch that races another with "locked"
        // at once, without waiting: try again for a while.
        let setup = || -> rusqlite::Result<()> {
            connection.pragma_update(None, "journal_mode", "WAL")?;
            connection.pragma_update(None, "synchronous", "NORMAL")?;
            connection.execute_batch(SCHEMA)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match setup() {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(fail(e)),
            }
        }
        Ok(Ledger { connection, path })
    }

    /// Opens an existing ledger read-only (`medkg ledger`, beside a running
    /// engine): no pragma or schema statement that would need a write lock.
    pub fn open_existing(data_dir: &Path) -> Result<Ledger, String> {
        let path = data_dir.join(LEDGER_FILE);
        if !path.exists() {
            return Err(format!("{} has no ledger ({LEDGER_FILE}): nothing has run there", data_dir.display()));
        }
        let fail = |e: rusqlite::Error| format!("ledger {}: {e}", path.display());
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(&path, flags).map_err(fail)?;
        connection.busy_timeout(std::time::Duration::from_secs(30)).map_err(fail)?;
        Ok(Ledger { connection, path })
    }

    fn write(&mut self, pipeline: &str, run_id: &str, pending: &[Pending]) -> Result<(), String> {
        let path = self.path.clone();
        let fail = |e: rusqlite::Error| format!("ledger {}: {e}", path.display());
        let tx = self.connection.transaction().map_err(fail)?;
        {
            let mut upsert = tx.prepare_cached(UPSERT).map_err(fail)?;
            let mut retries = tx.prepare_cached(ADD_RETRIES).map_err(fail)?;
            for p in pending {
                let u = &p.latest;
                upsert
                    .execute(params![
                        u.tenant_id,
                        u.doc_id,
                        pipeline,
                        run_id,
                        u.stage,
                        u.stage_index,
                        u.status.as_str(),
                        u.pdf_downloaded,
                        u.pdf_ir_ready,
                        u.error,
                        p.at_ms,
                        u.status.terminal(),
                    ])
                    .map_err(fail)?;
                for (stage, n) in &p.retries {
                    retries.execute(params![u.tenant_id, u.doc_id, stage, run_id, n]).map_err(fail)?;
                }
            }
        }
        tx.commit().map_err(fail)
    }

    /// Rows by status and/or document id (any tenant), newest first.
    pub fn query(&self, status: Option<Status>, doc_id: Option<&str>, limit: usize) -> Result<Vec<LedgerRow>, String> {
        let fail = |e: rusqlite::Error| format!("ledger {}: {e}", self.path.display());
        let mut statement = self
            .connection
            .prepare(
                "SELECT tenant_id, doc_id, pipeline, run_id, stage, status, pdf_downloaded, pdf_ir_ready,
                        last_error, created_ms, updated_ms
                 FROM documents
                 WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR doc_id = ?2)
                 ORDER BY updated_ms DESC, doc_id LIMIT ?3",
            )
            .map_err(fail)?;
        let rows = statement
            .query_map(params![status.map(Status::as_str), doc_id, limit as i64], |r| {
                Ok(LedgerRow {
                    tenant_id: r.get(0)?,
                    doc_id: r.get(1)?,
                    pipeline: r.get(2)?,
                    run_id: r.get(3)?,
                    stage: r.get(4)?,
                    status: r.get(5)?,
                    retries: BTreeMap::new(),
                    pdf_downloaded: r.get(6)?,
                    pdf_ir_ready: r.get(7)?,
                    last_error: r.get(8)?,
                    created_at: rfc3339(r.get(9)?),
                    updated_at: rfc3339(r.get(10)?),
                })
            })
            .map_err(fail)?;
        let mut rows: Vec<LedgerRow> = rows.collect::<Result<_, _>>().map_err(fail)?;
        let mut retries = self
            .connection
            .prepare_cached(
                "SELECT stage, retries FROM stage_retries WHERE tenant_id = ?1 AND doc_id = ?2 AND run_id = ?3",
            )
            .map_err(fail)?;
        for row in &mut rows {
            let found = retries
                .query_map(params![row.tenant_id, row.doc_id, row.run_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(fail)?;
            row.retries = found.collect::<Result<_, _>>().map_err(fail)?;
        }
        Ok(rows)
    }

    /// Documents per status.
    pub fn counts(&self) -> Result<BTreeMap<String, u64>, String> {
        let fail = |e: rusqlite::Error| format!("ledger {}: {e}", self.path.display());
        let mut statement =
            self.connection.prepare("SELECT status, COUNT(*) FROM documents GROUP BY status").map_err(fail)?;
        let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(fail)?;
        rows.collect::<Result<_, _>>().map_err(fail)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(doc: &str, stage: &str, index: u32, status: Status) -> Update {
        Update::new("t", doc, stage, index, status)
    }

    #[test]
    fn rows_move_forward_and_count_retries() {
        let dir = tempfile::tempdir().unwrap();
        let writer = |run: &str| LedgerWriter::start(Ledger::open(dir.path()).unwrap(), "p", run).unwrap();
        let (run1, run2) = (writer("run1"), writer("run2"));
        let mut a = LedgerBuffer::new(run1.clone());
        let mut b = LedgerBuffer::new(run1.clone());
        // Worker a: fetch retried twice, parse, chunk. Worker b: the index.
        a.record(Update { retries: 1, ..update("d1", "fetch", 0, Status::Running) });
        a.record(Update { retries: 1, ..update("d1", "fetch", 0, Status::Running) });
        a.record(update("d1", "parse", 1, Status::InProgress));
        a.record(update("d1", "chunk", 2, Status::InProgress));
        a.record(Update { error: Some("bad_json".into()), ..update("d2", "parse", 1, Status::Failed) });
        b.record(update("d1", "index", 3, Status::Completed));
        b.sync().unwrap();
        // The earlier stages arrive last: they must not undo the index.
        a.sync().unwrap();
        let ledger = Ledger::open_existing(dir.path()).unwrap();
        let d1 = &ledger.query(None, Some("d1"), 10).unwrap()[0];
        assert_eq!((d1.stage.as_str(), d1.status.as_str()), ("index", "completed"));
        assert_eq!(d1.retries, BTreeMap::from([("fetch".to_string(), 2)]));
        let failed = ledger.query(Some(Status::Failed), None, 10).unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!((failed[0].doc_id.as_str(), failed[0].last_error.as_deref()), ("d2", Some("bad_json")));
        assert_eq!(ledger.counts().unwrap(), BTreeMap::from([("completed".into(), 1), ("failed".into(), 1)]));

        // A new run starts the row over, retries included.
        let mut a = LedgerBuffer::new(run2.clone());
        a.record(update("d1", "parse", 1, Status::Failed));
        a.sync().unwrap();
        run1.close().unwrap();
        run2.close().unwrap();
        let d1 = &ledger.query(None, Some("d1"), 10).unwrap()[0];
        assert_eq!((d1.stage.as_str(), d1.status.as_str(), d1.run_id.as_str()), ("parse", "failed", "run2"));
        assert!(d1.retries.is_empty());
    }

    #[test]
    fn statuses_parse() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
        }
        assert!("done".parse::<Status>().is_err());
    }
}

/// The PDF gate's durable state, in the ledger's database: per gate and
/// document, what waits (the downloaded record whose IR has not come, or
/// the IR-ready record whose PDF has not come), or `done` (joined, and
/// durable downstream) with the PDF's hash, so duplicates are recognised
/// across restarts.
#[derive(Debug)]
pub struct GateStore {
    connection: Connection,
    gate: String,
}

/// What a gate entry holds (the `waiting` column: 0, 1 or 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateHold {
    /// Joined and durable downstream.
    Done,
    /// A downloaded PDF waiting for its IR.
    Pdf,
    /// An IR-ready record waiting for its PDF.
    Ir,
}

impl GateHold {
    fn code(self) -> i64 {
        match self {
            GateHold::Done => 0,
            GateHold::Pdf => 1,
            GateHold::Ir => 2,
        }
    }

    fn of(code: i64) -> Option<GateHold> {
        match code {
            0 => Some(GateHold::Done),
            1 => Some(GateHold::Pdf),
            2 => Some(GateHold::Ir),
            _ => None,
        }
    }
}

/// A gate entry read back at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateEntry {
    /// Tenant.
    pub tenant_id: String,
    /// Document.
    pub doc_id: String,
    /// What it holds.
    pub hold: GateHold,
    /// The PDF's hash (done and PDF entries; an IR entry's if it names one).
    pub sha256: String,
    /// The waiting record.
    pub payload: Vec<u8>,
    /// When it began waiting (ms since the epoch).
    pub since_ms: i64,
}

impl GateStore {
    /// Opens gate `gate`'s state in `data_dir`'s ledger.
    pub fn open(data_dir: &Path, gate: &str) -> Result<GateStore, String> {
        let path = data_dir.join(LEDGER_FILE);
        let fail = |e: rusqlite::Error| format!("gate state in {}: {e}", path.display());
        let connection = Connection::open(&path).map_err(fail)?;
        connection.busy_timeout(std::time::Duration::from_secs(30)).map_err(fail)?;
        connection
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS gate_state (
                    gate TEXT NOT NULL, tenant_id TEXT NOT NULL, doc_id TEXT NOT NULL,
                    waiting INTEGER NOT NULL, sha256 TEXT NOT NULL, payload BLOB NOT NULL, since_ms INTEGER NOT NULL,
                    PRIMARY KEY (gate, tenant_id, doc_id))",
            )
            .map_err(fail)?;
        Ok(GateStore { connection, gate: gate.to_string() })
    }

    /// Every entry of the gate.
    pub fn load(&self) -> Result<Vec<GateEntry>, String> {
        let fail = |e: rusqlite::Error| format!("gate state: {e}");
        let mut statement = self
            .connection
            .prepare("SELECT tenant_id, doc_id, waiting, sha256, payload, since_ms FROM gate_state WHERE gate = ?1")
            .map_err(fail)?;
        let rows = statement
            .query_map(params![self.gate], |r| {
                let code: i64 = r.get(2)?;
                let hold = GateHold::of(code).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Integer, "gate hold".into())
                })?;
                Ok(GateEntry {
                    tenant_id: r.get(0)?,
                    doc_id: r.get(1)?,
                    hold,
                    sha256: r.get(3)?,
                    payload: r.get(4)?,
                    since_ms: r.get(5)?,
                })
            })
            .map_err(fail)?;
        rows.collect::<Result<_, _>>().map_err(fail)
    }

    /// Records entries (waiting or done) in one transaction.
    pub fn put(&mut self, entries: &[GateEntry]) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        let fail = |e: rusqlite::Error| format!("gate state: {e}");
        let tx = self.connection.transaction().map_err(fail)?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO gate_state (gate, tenant_id, doc_id, waiting, sha256, payload, since_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(fail)?;
            for e in entries {
                put.execute(params![self.gate, e.tenant_id, e.doc_id, e.hold.code(), e.sha256, e.payload, e.since_ms])
                    .map_err(fail)?;
            }
        }
        tx.commit().map_err(fail)
    }

    /// Forgets entries (timed out).
    pub fn remove(&mut self, keys: &[(String, String)]) -> Result<(), String> {
        if keys.is_empty() {
            return Ok(());
        }
        let fail = |e: rusqlite::Error| format!("gate state: {e}");
        let tx = self.connection.transaction().map_err(fail)?;
        {
            let mut remove = tx
                .prepare_cached("DELETE FROM gate_state WHERE gate = ?1 AND tenant_id = ?2 AND doc_id = ?3")
                .map_err(fail)?;
            for (tenant, doc) in keys {
                remove.execute(params![self.gate, tenant, doc]).map_err(fail)?;
            }
        }
        tx.commit().map_err(fail)
    }
}
