//! A worker's bookkeeping between steps.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use medkg_connectors::ledger::LedgerBuffer;
use timely::dataflow::ProbeHandle;

use crate::ops::gate::GateState;
use crate::progress::frontier_of;
use crate::shared::Shared;

/// A worker's bookkeeping between steps: its ledger updates, its gates'
/// durability and timeouts, and (worker 0) how long each epoch takes from
/// its first record to durable.
pub(crate) struct Housekeeping {
    shared: Arc<Shared>,
    ledger: Rc<RefCell<LedgerBuffer>>,
    /// This worker's gates.
    gates: Vec<Rc<RefCell<GateState>>>,
    /// Epochs opened and not yet durable, with when they opened (worker 0 only).
    jobs: BTreeMap<u64, Instant>,
    leader: bool,
}

impl Housekeeping {
    /// Bookkeeping for worker `index`.
    pub fn new(
        shared: Arc<Shared>,
        ledger: Rc<RefCell<LedgerBuffer>>,
        gates: Vec<Rc<RefCell<GateState>>>,
        index: usize,
    ) -> Housekeeping {
        Housekeeping { shared, ledger, gates, jobs: BTreeMap::new(), leader: index == 0 }
    }

    /// Epoch `epoch` received its first record.
    pub fn opened(&mut self, epoch: u64) {
        if self.leader {
            self.jobs.entry(epoch).or_insert_with(Instant::now);
        }
    }

    /// Writes due ledger updates; closes the jobs `committed` has passed.
    pub fn tick(&mut self, committed: &ProbeHandle<u64>) -> anyhow::Result<()> {
        for gate in &self.gates {
            gate.borrow_mut().tick(committed);
        }
        let pipeline = &self.shared.telemetry.pipeline;
        self.ledger.borrow_mut().write_if_due(Duration::from_millis(250))?;
        if self.leader {
            let frontier = frontier_of(committed);
            let metrics = &self.shared.telemetry.metrics;
            while let Some(entry) = self.jobs.first_entry() {
                if *entry.key() >= frontier {
                    break;
                }
                let took = entry.remove().elapsed();
                metrics.job_duration.with_label_values(&[pipeline]).observe(took.as_secs_f64());
            }
            metrics.active_jobs.with_label_values(&[pipeline]).set(self.jobs.len() as i64);
        }
        Ok(())
    }

    /// Whether this worker's gates have all settled (see [`GateState::settled`]).
    pub fn gates_settled(&self) -> bool {
        self.gates.iter().all(|g| g.borrow().settled())
    }

    /// Writes every ledger update left, and waits until they are written.
    pub fn finish(&mut self, committed: &ProbeHandle<u64>) -> anyhow::Result<()> {
        self.tick(committed)?;
        Ok(self.ledger.borrow_mut().sync()?)
    }
}
