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
//!
//! - [`update`]: statuses and updates;
//! - [`writer`]: the per-worker buffer and the per-process writer thread;
//! - [`store`]: the SQLite schema, writes and queries;
//! - [`gate`]: the PDF gate's durable state, in the same database;
//! - [`runs`]: each run's latest snapshot of its counters and stages.

pub mod gate;
pub mod runs;
pub mod store;
pub mod update;
pub mod writer;

pub use gate::{GateEntry, GateHold, GateStore};
pub use runs::{GateBacklog, RunRecord, StageRecord, MAX_HISTORY};
pub use store::{Ledger, LedgerRow, LEDGER_FILE};
pub use update::{Status, Update};
pub use writer::{LedgerBuffer, LedgerWriter};

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

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
