//! What every worker of a process shares: the run's options, its
//! telemetry and ledger, the file source, and the first fatal error.

use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use medkg_connectors::ledger::LedgerWriter;
use medkg_connectors::FileSource;

use crate::options::RunOptions;
use crate::progress::Progress;
use crate::telemetry::Telemetry;

/// What every worker of the process shares. Stage resources (HTTP clients,
/// model sessions, the index layout) are not here: each operator is handed
/// its own when the graph is built.
pub(crate) struct Shared {
    pub options: RunOptions,
    /// Metrics, events, logs.
    pub telemetry: Arc<Telemetry>,
    /// The I/O runtime (HTTP stages).
    pub runtime: tokio::runtime::Handle,
    /// The process's ledger writer (`None` with `--no-ledger`).
    pub ledger: Option<Arc<LedgerWriter>>,
    /// Documents waiting at this process's gates.
    pub gate_pending: AtomicI64,
    /// Cap on one raw record, from the `ingest` stage (or the default).
    pub max_record_bytes: usize,
    /// The file source (`None` for Kafka or an API).
    pub source: Option<FileSource>,
    /// An API source's adapter, opened once (worker 0 pages with it).
    pub adapter: Option<medkg_connectors::adapter::Adapter>,
    /// Set by SIGTERM/SIGINT: a long-running source drains, commits and stops.
    pub stop: Arc<AtomicBool>,
    /// When the run began (Kafka epochs are counted from here on every worker).
    pub began: Instant,
    /// This process's Kafka workers that hold partitions of the source topic.
    pub kafka_assigned: std::sync::atomic::AtomicUsize,
    /// First ordinal to read (from the checkpoint).
    pub start: u64,
    pub progress: Arc<Progress>,
    /// The first unrecoverable error (disk full, index locked...), and
    /// which workers are done.
    pub fate: Fate,
}

/// How a run ends: its first unrecoverable error, and each worker saying
/// it is done.
pub(crate) struct Fate {
    fatal: Mutex<Option<String>>,
    finished: Mutex<Sender<()>>,
}

impl Fate {
    /// Workers say they are done on `finished`.
    pub fn new(finished: Sender<()>) -> Fate {
        Fate { fatal: Mutex::new(None), finished: Mutex::new(finished) }
    }
}

impl Shared {
    /// Records the run's first unrecoverable error: every worker stops.
    pub fn fail(&self, message: String) {
        if let Ok(mut fatal) = self.fate.fatal.lock() {
            fatal.get_or_insert(message);
        }
    }

    /// The run's first unrecoverable error, if one happened.
    pub fn failed(&self) -> Option<String> {
        self.fate.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// This worker is done (however it ended).
    pub fn worker_finished(&self) {
        if let Ok(finished) = self.fate.finished.lock() {
            let _ = finished.send(());
        }
    }
}
