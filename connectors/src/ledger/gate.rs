//! The PDF gate's durable state, beside the ledger in its database.

use std::path::Path;

use rusqlite::{params, Connection};

use super::store::LEDGER_FILE;
use crate::error::{Error, Result};

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
    pub fn open(data_dir: &Path, gate: &str) -> Result<GateStore> {
        let path = data_dir.join(LEDGER_FILE);
        let fail = |e: rusqlite::Error| Error::sqlite(format!("gate state in {}", path.display()), e);
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
    pub fn load(&self) -> Result<Vec<GateEntry>> {
        let fail = |e: rusqlite::Error| Error::sqlite("gate state", e);
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
        rows.collect::<rusqlite::Result<_>>().map_err(fail)
    }

    /// Records entries (waiting or done) in one transaction.
    pub fn put(&mut self, entries: &[GateEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let fail = |e: rusqlite::Error| Error::sqlite("gate state", e);
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
    pub fn remove(&mut self, keys: &[(String, String)]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let fail = |e: rusqlite::Error| Error::sqlite("gate state", e);
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
