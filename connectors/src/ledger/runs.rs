//! Runs, beside the documents in the ledger: each process of a run writes
//! a snapshot of its counters and stages about once a second and a last
//! one when it ends, so `medkg serve` can show runs (live or long over)
//! from the data directory alone.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::store::Ledger;
use crate::error::{Error, Result};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT    NOT NULL,
    process     INTEGER NOT NULL,
    pipeline    TEXT    NOT NULL,
    tenant_id   TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    started_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    finished_ms INTEGER,
    error       TEXT,
    snapshot    TEXT    NOT NULL,
    PRIMARY KEY (run_id, process)
);
";

/// How one stage of a run is doing (one process's view).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The stage's name.
    pub name: String,
    /// Its kind (`parse`, `embed`, ...).
    pub kind: String,
    /// Documents it took up.
    pub docs_in: u64,
    /// Documents it passed on.
    pub docs_out: u64,
    /// Documents it dead-lettered.
    pub docs_failed: u64,
    /// Median seconds per document (model stages: per batch), from the histogram's buckets.
    pub p50_seconds: Option<f64>,
    /// 95th percentile, likewise.
    pub p95_seconds: Option<f64>,
    /// Retries made under its policy.
    pub retries: u64,
    /// `closed`, `open` or `half-open` (stages that call out), else `None`.
    pub breaker: Option<String>,
}

/// One process's record of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's id.
    pub run_id: String,
    /// Process number in a cluster (0 alone).
    pub process: u32,
    /// The pipeline's name.
    pub pipeline: String,
    /// The run's default tenant.
    pub tenant_id: String,
    /// `file:PATH` or `kafka:TOPIC`.
    pub source: String,
    /// `running`, `completed` or `failed`.
    pub status: String,
    /// When it started (ms since the epoch).
    pub started_ms: i64,
    /// The snapshot's time.
    pub updated_ms: i64,
    /// When it ended.
    pub finished_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Records read from the source.
    pub records: u64,
    /// Documents durable at the sinks.
    pub docs: u64,
    /// Their chunks.
    pub chunks: u64,
    /// Records and documents dead-lettered.
    pub failed: u64,
    /// Documents waiting at gates.
    pub gate_pending: i64,
    /// Kafka messages not yet durable.
    pub consumer_lag: u64,
    /// Its stages in plan order.
    pub stages: Vec<StageRecord>,
    /// `[ms since the epoch, documents durable]` over the run, oldest
    /// first: one a second, thinned to every other one whenever it reaches
    /// [`MAX_HISTORY`] (a long run keeps its whole span, coarser).
    pub history: Vec<[i64; 2]>,
}

/// Most points of a run's throughput history.
pub const MAX_HISTORY: usize = 240;

/// What is stored as JSON (the rest has columns of its own).
#[derive(Serialize, Deserialize)]
struct Snapshot {
    records: u64,
    docs: u64,
    chunks: u64,
    failed: u64,
    #[serde(default)]
    gate_pending: i64,
    #[serde(default)]
    consumer_lag: u64,
    stages: Vec<StageRecord>,
    #[serde(default)]
    history: Vec<[i64; 2]>,
}

pub(crate) fn write(connection: &Connection, run: &RunRecord) -> rusqlite::Result<()> {
    let snapshot = Snapshot {
        records: run.records,
        docs: run.docs,
        chunks: run.chunks,
        failed: run.failed,
        gate_pending: run.gate_pending,
        consumer_lag: run.consumer_lag,
        stages: run.stages.clone(),
        history: run.history.clone(),
    };
    let snapshot = serde_json::to_string(&snapshot).unwrap_or_else(|_| "{}".into());
    connection.execute(
        "INSERT INTO runs (run_id, process, pipeline, tenant_id, source, status, started_ms, updated_ms,
                           finished_ms, error, snapshot)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (run_id, process) DO UPDATE SET
             status = excluded.status, updated_ms = excluded.updated_ms, finished_ms = excluded.finished_ms,
             error = excluded.error, snapshot = excluded.snapshot",
        params![
            run.run_id,
            run.process,
            run.pipeline,
            run.tenant_id,
            run.source,
            run.status,
            run.started_ms,
            run.updated_ms,
            run.finished_ms,
            run.error,
            snapshot
        ],
    )?;
    Ok(())
}

const COLUMNS: &str =
    "run_id, process, pipeline, tenant_id, source, status, started_ms, updated_ms, finished_ms, error, snapshot";

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let snapshot: String = r.get(10)?;
    // A snapshot this version cannot read shows as a run without counters.
    let s: Snapshot = serde_json::from_str(&snapshot).unwrap_or(Snapshot {
        records: 0,
        docs: 0,
        chunks: 0,
        failed: 0,
        gate_pending: 0,
        consumer_lag: 0,
        stages: Vec::new(),
        history: Vec::new(),
    });
    Ok(RunRecord {
        run_id: r.get(0)?,
        process: r.get(1)?,
        pipeline: r.get(2)?,
        tenant_id: r.get(3)?,
        source: r.get(4)?,
        status: r.get(5)?,
        started_ms: r.get(6)?,
        updated_ms: r.get(7)?,
        finished_ms: r.get(8)?,
        error: r.get(9)?,
        records: s.records,
        docs: s.docs,
        chunks: s.chunks,
        failed: s.failed,
        gate_pending: s.gate_pending,
        consumer_lag: s.consumer_lag,
        stages: s.stages,
        history: s.history,
    })
}

impl Ledger {
    fn has_table(&self, table: &str) -> Result<bool> {
        let fail = |e| Error::sqlite(format!("ledger {}", self.path().display()), e);
        self.connection()
            .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", params![table], |_| Ok(()))
            .optional()
            .map(|found| found.is_some())
            .map_err(fail)
    }

    /// The latest runs, newest first (every process's record).
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRecord>> {
        if !self.has_table("runs")? {
            return Ok(Vec::new()); // a ledger from before runs were recorded
        }
        let fail = |e| Error::sqlite(format!("ledger {}", self.path().display()), e);
        let sql = format!("SELECT {COLUMNS} FROM runs ORDER BY started_ms DESC, run_id, process LIMIT ?1");
        let mut statement = self.connection().prepare(&sql).map_err(fail)?;
        let rows = statement.query_map(params![limit as i64], read).map_err(fail)?;
        rows.collect::<rusqlite::Result<_>>().map_err(fail)
    }

    /// One run's records (one per process), `None` when there is no such run.
    pub fn run(&self, run_id: &str) -> Result<Option<Vec<RunRecord>>> {
        if !self.has_table("runs")? {
            return Ok(None);
        }
        let fail = |e| Error::sqlite(format!("ledger {}", self.path().display()), e);
        let sql = format!("SELECT {COLUMNS} FROM runs WHERE run_id = ?1 ORDER BY process");
        let mut statement = self.connection().prepare(&sql).map_err(fail)?;
        let rows: Vec<RunRecord> =
            statement.query_map(params![run_id], read).map_err(fail)?.collect::<rusqlite::Result<_>>().map_err(fail)?;
        Ok(if rows.is_empty() { None } else { Some(rows) })
    }

    /// Documents waiting at each gate, by side, with the oldest wait (of
    /// one tenant, or all).
    pub fn gate_backlog(&self, tenant: Option<&str>) -> Result<Vec<GateBacklog>> {
        if !self.has_table("gate_state")? {
            return Ok(Vec::new());
        }
        let fail = |e| Error::sqlite(format!("ledger {}", self.path().display()), e);
        let mut statement = self
            .connection()
            .prepare(
                "SELECT gate, waiting, COUNT(*), MIN(since_ms) FROM gate_state
                 WHERE waiting != 0 AND (?1 IS NULL OR tenant_id = ?1)
                 GROUP BY gate, waiting ORDER BY gate, waiting",
            )
            .map_err(fail)?;
        let rows = statement
            .query_map(params![tenant], |r| {
                let waiting: i64 = r.get(1)?;
                Ok(GateBacklog {
                    gate: r.get(0)?,
                    side: if waiting == 1 { "pdf" } else { "ir" }.to_string(),
                    documents: r.get::<_, i64>(2)?.max(0) as u64,
                    oldest_since_ms: r.get(3)?,
                })
            })
            .map_err(fail)?;
        rows.collect::<rusqlite::Result<_>>().map_err(fail)
    }
}

/// What waits at one side of a gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GateBacklog {
    /// The gate.
    pub gate: String,
    /// `pdf`: downloaded PDFs waiting for their IR; `ir`: IR-ready records waiting for their PDF.
    pub side: String,
    /// How many.
    pub documents: u64,
    /// Since when the oldest has waited (ms since the epoch).
    pub oldest_since_ms: i64,
}
