//! The Kafka source: every worker is a member of the consumer group, so the
//! topic's partitions spread over all workers (and, in a cluster, all
//! processes).
//!
//! A message is sent into the dataflow at the worker's current epoch, and the
//! worker remembers, per epoch, the next offset of every partition it read.
//! Epochs close every `epoch_ms` (on every worker's clock, counted from the
//! same start) or after `epoch_records` messages. When the probe after the
//! index sinks passes an epoch, everything read in it is durable in every
//! index, and only then are those offsets committed. A crash replays at most
//! the uncommitted epochs, whose writes are idempotent upserts.
//!
//! The consumer itself (offsets per epoch, rebalances, lag) lives in
//! [`medkg_connectors::kafka::consumer`]. SIGTERM drains: the input closes,
//! the sinks commit, the offsets commit, the worker exits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use medkg_connectors::kafka::KafkaInput;
use timely::worker::Worker;

use super::feed::Feed;
use super::ir::IrReadyFeed;
use crate::options::KafkaSource;
use crate::progress::frontier_of;
use crate::shared::Shared;

/// Consumes `kafka.topic` until stopped.
pub(crate) fn feed(worker: &mut Worker, shared: &Arc<Shared>, feed: Feed, kafka: &KafkaSource) -> anyhow::Result<()> {
    let Feed { mut input, flow, committed, letters, mut housekeeping, mut ir_ready, census: _ } = feed;
    housekeeping.opened(0);
    let source = KafkaInput::subscribe(&kafka.settings, &kafka.topic)?;
    let runtime = &shared.options.plan.runtime;
    let (epoch_ms, epoch_records, window) =
        (runtime.epoch_ms.max(1), runtime.epoch_records.max(1), runtime.max_epochs_in_flight.max(1));
    let mut epoch = 0u64;
    let mut in_epoch = 0u64;
    // Dead letters of durable epochs must be in their topic before the offsets move.
    let flush = || -> anyhow::Result<()> { Ok(letters.borrow_mut().flush()?) };
    let commit_durable = |ir_ready: &Option<IrReadyFeed>| -> anyhow::Result<()> {
        let frontier = frontier_of(&committed);
        source.commit_durable(frontier, flush)?;
        if let Some(ir_ready) = ir_ready {
            ir_ready.commit_durable(frontier, flush)?;
        }
        Ok(())
    };

    while !shared.stop.load(Ordering::SeqCst) {
        if let Some(fatal) = shared.failed() {
            bail!("{fatal}");
        }
        // Close the epoch by time or by size.
        let by_time = shared.began.elapsed().as_millis() as u64 / epoch_ms;
        if by_time > epoch || in_epoch >= epoch_records {
            epoch = by_time.max(epoch + 1);
            in_epoch = 0;
            input.advance_to(epoch);
            housekeeping.opened(epoch);
            if let Some(ir_ready) = &mut ir_ready {
                ir_ready.advance(epoch);
            }
            commit_durable(&ir_ready)?;
        }
        if let Some(ir_ready) = &mut ir_ready {
            ir_ready.poll();
        }
        if let Some(payload) = source.poll(epoch, Duration::from_millis(20)) {
            shared.progress.records.fetch_add(1, Ordering::Relaxed);
            input.send(payload);
            in_epoch += 1;
        }
        worker.step();
        housekeeping.tick(&committed)?;
        // Flow control: stay within `window` epochs of what the sinks have seen.
        while flow.less_than(&epoch.saturating_sub(window)) && !shared.stop.load(Ordering::SeqCst) {
            // (librdkafka heartbeats from its own thread meanwhile.)
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
    }

    // Drain: no more input; wait until everything read is durable, commit it.
    // (Documents still waiting at a gate stay waiting, durably, for the next run.)
    drop(input);
    if let Some(ir_ready) = &mut ir_ready {
        ir_ready.close();
    }
    while !committed.done() {
        if let Some(fatal) = shared.failed() {
            bail!("{fatal}");
        }
        worker.step_or_park(Some(Duration::from_millis(20)));
        housekeeping.tick(&committed)?;
    }
    housekeeping.finish(&committed)?;
    commit_durable(&ir_ready)?;
    Ok(())
}
