//! What a run shows while it runs: live counters, and how far a probe's
//! frontier has come.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use timely::dataflow::ProbeHandle;

/// Live counters of a run, shared with whoever shows progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Records read from the source.
    pub records: AtomicU64,
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
}

impl Progress {
    /// Kafka consumer lag, summed over workers (0 for other sources).
    pub fn lag(&self) -> u64 {
        self.lag.lock().map(|l| l.values().sum()).unwrap_or(0)
    }
}

/// The first time a probe's frontier holds, `u64::MAX` once it is empty:
/// every epoch below it is done.
pub(crate) fn frontier_of(probe: &ProbeHandle<u64>) -> u64 {
    probe.with_frontier(|f| f.first().copied()).unwrap_or(u64::MAX)
}
