//! What a run shows while it runs: live counters, and how far a probe's
//! frontier has come.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use timely::dataflow::ProbeHandle;

/// Live counters of a run, shared with whoever shows progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Records read from the source.
    pub records: AtomicU64,
    /// When the first record was read (a Kafka source first waits for its
    /// group to form).
    pub first_record: Published<Instant>,
    /// Documents that reached the pipeline's sinks (for an index: committed).
    pub docs: AtomicU64,
    /// Their chunks.
    pub chunks: AtomicU64,
    /// Records and documents dead-lettered.
    pub failed: AtomicU64,
    /// Kafka consumer-group lag: messages of the topic not yet durable (each
    /// partition's end minus the group's committed offset), measured every 2 s
    /// on a thread of its own (key 0).
    pub lag: Mutex<std::collections::BTreeMap<usize, u64>>,
    /// Where `/metrics` is served, once it is.
    pub metrics_addr: Mutex<Option<std::net::SocketAddr>>,
    /// The embedded graph store the run writes, once it is open: Oxigraph
    /// lets one process hold a store, so queries in this process share it.
    pub graph: Published<medkg_operators::graph::GraphStore>,
    /// The run's telemetry, once it has started (its metrics, for a server
    /// in this process).
    pub telemetry: Published<std::sync::Arc<crate::telemetry::Telemetry>>,
    /// The run's id, once it has started.
    pub run_id: Published<String>,
}

impl Progress {
    /// Counts `n` records read from the source.
    pub fn read(&self, n: u64) {
        if self.first_record.get().is_none() && n > 0 {
            self.first_record.publish(Instant::now());
        }
        self.records.fetch_add(n, Ordering::Relaxed);
    }

    /// Kafka consumer lag, summed over workers (0 for other sources).
    pub fn lag(&self) -> u64 {
        self.lag.lock().map(|l| l.values().sum()).unwrap_or(0)
    }
}

/// Something a run publishes once for others in its process to use.
pub struct Published<T>(std::sync::OnceLock<T>);

impl<T> Default for Published<T> {
    fn default() -> Self {
        Published(std::sync::OnceLock::new())
    }
}

impl<T> Published<T> {
    /// Publishes it (the first one wins).
    pub fn publish(&self, value: T) {
        let _ = self.0.set(value);
    }

    /// It, once published.
    pub fn get(&self) -> Option<&T> {
        self.0.get()
    }
}

impl<T> std::fmt::Debug for Published<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "Published(yes)" } else { "Published(not yet)" })
    }
}

/// The first time a probe's frontier holds, `u64::MAX` once it is empty:
/// every epoch below it is done.
pub(crate) fn frontier_of(probe: &ProbeHandle<u64>) -> u64 {
    probe.with_frontier(|f| f.first().copied()).unwrap_or(u64::MAX)
}
