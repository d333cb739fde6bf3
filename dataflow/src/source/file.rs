//! The file source: every worker reads its share of the records (by
//! record number), epochs are counted in records, and worker 0 checkpoints
//! the position every sink has made durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use medkg_connectors::{Checkpoint, DeadLetter, FileSource};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use super::feed::Feed;
use crate::progress::frontier_of;
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
        shared.progress.records.fetch_add(1, Ordering::Relaxed);
        match record {
            Ok(payload) => input.send(payload),
            Err((position, error)) => {
                let letter = DeadLetter::new(
                    "source",
                    &source.name(),
                    &position,
                    None,
                    "permanent",
                    &error.kind,
                    &error.message,
                    &[],
                );
                letters.borrow_mut().write(&letter).context("cannot write a dead letter")?;
                shared.progress.failed.fetch_add(1, Ordering::Relaxed);
                let telemetry = &shared.telemetry;
                telemetry.metrics.dead_letters.with_label_values(&[&telemetry.pipeline, "source", &error.kind]).inc();
                tracing::warn!(
                    run_id = %telemetry.run_id, pipeline = %telemetry.pipeline, stage = "source",
                    position = %position, error_kind = %error.kind, "dead-lettered: {}", error.message
                );
            }
        }
    }
    let total = records.ordinal();
    drop(input);
    // Documents wait at the gates: keep reading IR-ready records until, in
    // every worker of every process, every downloaded record has arrived and
    // none waits (joined or timed out), or until stopped (they stay waiting,
    // durably, for the next run).
    let flush = || -> anyhow::Result<()> { Ok(letters.borrow_mut().flush()?) };
    if let (Some(ir_ready), Some(mut census)) = (&mut ir_ready, census) {
        loop {
            ir_ready.poll();
            ir_ready.advance(ir_ready.epoch + 1);
            worker.step_or_park(Some(Duration::from_millis(50)));
            if let Some(fatal) = shared.failed() {
                bail!("{fatal}");
            }
            housekeeping.tick(&committed)?;
            ir_ready.commit_durable(frontier_of(&committed), flush)?;
            if index == 0 {
                checkpointer.maybe_store(&committed, epoch_records)?;
            }
            if census.settled() || shared.stop.load(Ordering::SeqCst) {
                break;
            }
            census.report(housekeeping.gates_settled());
        }
        ir_ready.close();
    }
    while !committed.done() {
        worker.step_or_park(Some(Duration::from_millis(50)));
        if let Some(fatal) = shared.failed() {
            bail!("{fatal}");
        }
        if index == 0 {
            checkpointer.maybe_store(&committed, epoch_records)?;
        }
        housekeeping.tick(&committed)?;
    }
    housekeeping.finish(&committed)?;
    flush()?;
    if let Some(ir_ready) = &ir_ready {
        ir_ready.commit_durable(u64::MAX, flush)?;
    }
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
