//! The ledger's SQLite store: the schema, the forward-only upsert, and
//! the queries `medkg ledger` and the tests read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};
use serde::Serialize;

use super::update::{Pending, Status};
use crate::error::{Error, Result};

/// The ledger file in a data directory.
pub const LEDGER_FILE: &str = "ledger.sqlite";

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
    pub fn open(data_dir: &Path) -> Result<Ledger> {
        let path = data_dir.join(LEDGER_FILE);
        let fail = |e: rusqlite::Error| Error::sqlite(format!("ledger {}", path.display()), e);
        let connection = Connection::open(&path).map_err(fail)?;
        connection.busy_timeout(std::time::Duration::from_secs(30)).map_err(fail)?;
        // The processes of a cluster open one ledger at once, and SQLite
        // answers a journal-mode switch that races another with "locked"
        // at once, without waiting: try again for a while.
        let setup = || -> rusqlite::Result<()> {
            connection.pragma_update(None, "journal_mode", "WAL")?;
            connection.pragma_update(None, "synchronous", "NORMAL")?;
            connection.execute_batch(SCHEMA)?;
            connection.execute_batch(super::runs::SCHEMA)
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
    pub fn open_existing(data_dir: &Path) -> Result<Ledger> {
        let path = data_dir.join(LEDGER_FILE);
        if !path.exists() {
            let message = format!("{} has no ledger ({LEDGER_FILE}): nothing has run there", data_dir.display());
            return Err(Error::Config(message));
        }
        let fail = |e: rusqlite::Error| Error::sqlite(format!("ledger {}", path.display()), e);
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(&path, flags).map_err(fail)?;
        connection.busy_timeout(std::time::Duration::from_secs(30)).map_err(fail)?;
        Ok(Ledger { connection, path })
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Records (or updates) one process's snapshot of a run.
    pub(crate) fn write_run(&self, run: &super::runs::RunRecord) -> Result<()> {
        super::runs::write(&self.connection, run)
            .map_err(|e| Error::sqlite(format!("ledger {}", self.path.display()), e))
    }

    pub(crate) fn write(&mut self, pipeline: &str, run_id: &str, pending: &[Pending]) -> Result<()> {
        let path = self.path.clone();
        let fail = |e: rusqlite::Error| Error::sqlite(format!("ledger {}", path.display()), e);
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
    pub fn query(&self, status: Option<Status>, doc_id: Option<&str>, limit: usize) -> Result<Vec<LedgerRow>> {
        let fail = |e: rusqlite::Error| Error::sqlite(format!("ledger {}", self.path.display()), e);
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
        let mut rows: Vec<LedgerRow> = rows.collect::<rusqlite::Result<_>>().map_err(fail)?;
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
            row.retries = found.collect::<rusqlite::Result<_>>().map_err(fail)?;
        }
        Ok(rows)
    }

    /// Documents per status.
    pub fn counts(&self) -> Result<BTreeMap<String, u64>> {
        let fail = |e: rusqlite::Error| Error::sqlite(format!("ledger {}", self.path.display()), e);
        let mut statement =
            self.connection.prepare("SELECT status, COUNT(*) FROM documents GROUP BY status").map_err(fail)?;
        let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(fail)?;
        rows.collect::<rusqlite::Result<_>>().map_err(fail)
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
