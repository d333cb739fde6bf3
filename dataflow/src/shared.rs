//! What every worker of a process shares: the run's options, its
//! telemetry and ledger, the file source, and the first fatal error.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// How much of their time this process's sources wait for something to read.
    pub headroom: Headroom,
    /// First ordinal to read (from the checkpoint).
    pub start: u64,
    pub progress: Arc<Progress>,
    /// The first unrecoverable error (disk full, index locked...), and
    /// which workers are done.
    pub fate: Fate,
}

/// How much of its time this process's sources spend waiting for
/// something to read: the engine's headroom. A source adds the time it
/// waited on an empty consumer (or an API between polls) while the topic
/// held nothing more for it; a source with a backlog (a file, a topic read
/// behind its producers, a source held back by flow control) adds nothing.
/// `auto` commits favour freshness when there is headroom, and throughput
/// when there is none.
pub(crate) struct Headroom {
    /// Source loops in this process (its workers).
    sources: u32,
    /// Nanoseconds waited, all sources together.
    idle_ns: AtomicU64,
}

impl Headroom {
    pub fn new(sources: usize) -> Headroom {
        Headroom { sources: u32::try_from(sources.max(1)).unwrap_or(u32::MAX), idle_ns: AtomicU64::new(0) }
    }

    /// A source waited `waited` with nothing to read.
    pub fn idle(&self, waited: Duration) {
        self.idle_ns.fetch_add(waited.as_nanos().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    /// Where the count stands now, to measure a window from.
    pub fn mark(&self) -> (Instant, u64) {
        (Instant::now(), self.idle_ns.load(Ordering::Relaxed))
    }

    /// The share of the sources' time since `from` (a [`Headroom::mark`])
    /// spent waiting for something to read, in [0, 1].
    pub fn spare_since(&self, from: (Instant, u64)) -> f64 {
        let wall = from.0.elapsed().as_secs_f64() * f64::from(self.sources);
        let idle = self.idle_ns.load(Ordering::Relaxed).saturating_sub(from.1) as f64 / 1e9;
        if wall > 0.0 {
            (idle / wall).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_is_the_share_of_the_sources_time_spent_waiting() {
        let headroom = Headroom::new(2);
        let from = headroom.mark();
        assert_eq!(headroom.spare_since(from), 0.0, "nothing waited: no headroom");
        std::thread::sleep(Duration::from_millis(100));
        let wall = from.0.elapsed();
        // One source of two waited the whole window: half the sources' time.
        headroom.idle(wall);
        let spare = headroom.spare_since(from);
        assert!(spare > 0.3 && spare <= 0.5, "{spare}");
        headroom.idle(Duration::from_secs(3600));
        assert_eq!(headroom.spare_since(from), 1.0, "never more than all of it");
    }
}
