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
    /// The file source (`None` for Kafka).
    pub source: Option<FileSource>,
    /// Set by SIGTERM/SIGINT: a long-running source drains, commits and stops.
    pub stop: Arc<AtomicBool>,
    /// When the run began (Kafka epochs are counted from here on every worker).
    pub began: Instant,
    /// First ordinal to read (from the checkpoint).
    pub start: u64,
    pub progress: Arc<Progress>,
    /// The first unrecoverable error (disk full, index locked...): every worker stops.
    fatal: Mutex<Option<String>>,
    /// Each worker says here when it is done.
    finished: Mutex<Sender<()>>,
}

/// The parts of [`Shared`] that [`Shared::new`] does not fill in itself.
pub(crate) struct SharedParts {
    pub options: RunOptions,
    pub telemetry: Arc<Telemetry>,
    pub runtime: tokio::runtime::Handle,
    pub ledger: Option<Arc<LedgerWriter>>,
    pub max_record_bytes: usize,
    pub source: Option<FileSource>,
    pub stop: Arc<AtomicBool>,
    pub start: u64,
    pub progress: Arc<Progress>,
    pub finished: Sender<()>,
}

impl Shared {
    pub fn new(parts: SharedParts) -> Shared {
        let SharedParts {
            options,
            telemetry,
            runtime,
            ledger,
            max_record_bytes,
            source,
            stop,
            start,
            progress,
            finished,
        } = parts;
        Shared {
            options,
            telemetry,
            runtime,
            ledger,
            gate_pending: AtomicI64::new(0),
            max_record_bytes,
            source,
            stop,
            began: Instant::now(),
            start,
            progress,
            fatal: Mutex::new(None),
            finished: Mutex::new(finished),
        }
    }

    /// Records the run's first unrecoverable error: every worker stops.
    pub fn fail(&self, message: String) {
        if let Ok(mut fatal) = self.fatal.lock() {
            fatal.get_or_insert(message);
        }
    }

    /// The run's first unrecoverable error, if one happened.
    pub fn failed(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// This worker is done (however it ended).
    pub fn worker_finished(&self) {
        if let Ok(finished) = self.finished.lock() {
            let _ = finished.send(());
        }
    }
}
