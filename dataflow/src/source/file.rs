//! The file source: every worker reads its share of the records (by
//! record number), epochs are counted in records, and worker 0 checkpoints
//! the position every sink has made durable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use medkg_connectors::{Checkpoint, FileSource};
use medkg_operators::StageError;
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use super::feed::{drain, Feed, Tail};
use super::source_failure;
use crate::shared::Shared;

/// Feeds the file source, then waits until everything is durable.
pub(crate) fn feed(worker: &mut Worker, shared: &Arc<Shared>, feed: Feed) -> anyhow::Result<()> {
    let Feed { mut input, flow, committed, letters, mut housekeeping, mut ir_ready, census } = feed;
    let (index, peers) = (worker.index(), worker.peers());
    let source = shared.source.as_ref().ok_or_else(|| anyhow!("no file source"))?;
    let runtime = &shared.options.plan.runtime;
    let epoch_records = runtime.epoch_records.max(1);
    let window = runtime.max_epochs_in_flight.max(1);
    let mut checkpointer = Checkpointer { shared: shared.clone(), last: shared.start, last_write: Instant::now() };
    let mut records = source.records(index, peers, shared.start, shared.max_record_bytes);
    let mut epoch = 0u64;
    housekeeping.opened(0);
    for (ordinal, record) in records.by_ref() {
        let e = (ordinal - shared.start) / epoch_records;
        if e > epoch {
            input.advance_to(e);
            epoch = e;
            housekeeping.opened(e);
            if let Some(ir_ready) = &mut ir_ready {
                ir_ready.advance(e);
                ir_ready.poll();
            }
            worker.step();
            housekeeping.tick(&committed)?;
            // Flow control: stay within `window` epochs of what the sinks have seen.
            while flow.less_than(&e.saturating_sub(window)) {
                worker.step_or_park(Some(Duration::from_millis(10)));
                if let Some(fatal) = shared.failed() {
                    bail!("{fatal}");
                }
                housekeeping.tick(&committed)?;
            }
            if index == 0 {
                checkpointer.maybe_store(&committed, epoch_records)?;
            }
        }
        shared.progress.read(1);
        match record {
            Ok(payload) => input.send(payload),
            Err((position, error)) => {
                let error = StageError::permanent(&error.kind, error.message);
                source_failure(shared, &letters, &source.name(), &position, &error, &[])?;
            }
        }
    }
    let total = records.ordinal();
    drop(input);
    let tail = Tail { committed, letters, housekeeping, ir_ready, census };
    drain(worker, shared, tail, |committed| match index {
        0 => checkpointer.maybe_store(committed, epoch_records),
        _ => Ok(()),
    })?;
    if index == 0 {
        checkpointer.last = total;
        checkpointer.store(true)?;
    }
    Ok(())
}

/// Records the source position the sinks have made durable (worker 0 only).
struct Checkpointer {
    shared: Arc<Shared>,
    last: u64,
    last_write: Instant,
}

impl Checkpointer {
    fn maybe_store(&mut self, committed: &ProbeHandle<u64>, epoch_records: u64) -> anyhow::Result<()> {
        let frontier = committed.with_frontier(|f| f.first().copied());
        let Some(frontier) = frontier else {
            return Ok(());
        };
        let durable = self.shared.start + frontier * epoch_records;
        if durable > self.last && self.last_write.elapsed() >= Duration::from_millis(200) {
            self.last = durable;
            self.store(false)?;
        }
        Ok(())
    }

    fn store(&mut self, complete: bool) -> anyhow::Result<()> {
        let name = self.shared.source.as_ref().map(FileSource::name).unwrap_or_default();
        let checkpoint = Checkpoint { source: name, committed: self.last, complete };
        checkpoint
            .store(&self.shared.options.data_dir)
            .with_context(|| format!("cannot write the checkpoint in {}", self.shared.options.data_dir.display()))?;
        self.last_write = Instant::now();
        Ok(())
    }
}
