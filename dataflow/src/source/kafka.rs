//! The Kafka source: every worker is a member of the consumer group, so the
//! topic's partitions spread over all workers (and, in a cluster, all
//! processes).
//!
//! A message is sent into the dataflow at the worker's current epoch, and the
//! worker remembers, per epoch, the next offset of every partition it read.
//! Epochs close every `epoch_ms` (on every worker's clock, counted from the
//! same start) or after `epoch_records` messages. A worker reads what the
//! consumer has buffered in bursts, up to the epoch's size, before it steps
//! the dataflow: a step can run a model batch for a second, and reading
//! one message a step would leave an epoch (and so a model batch) a few
//! documents small. Flow control counts the epochs that carry records: up
//! to `max_epochs_in_flight` of them may be ahead of the sinks, however far
//! the clock has moved the epoch numbers meanwhile. When the probe after the
//! index sinks passes an epoch, everything read in it is durable in every
//! index, and only then are those offsets committed. A crash replays at most
//! the uncommitted epochs, whose writes are idempotent upserts.
//!
//! The consumer itself (offsets per epoch, rebalances, lag) lives in
//! [`medkg_connectors::kafka::consumer`]. SIGTERM drains: the input closes,
//! the sinks commit, the offsets commit, the worker exits.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use medkg_connectors::kafka::KafkaInput;
use prometheus::Histogram;
use timely::dataflow::ProbeHandle;
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
    let epoch_of_clock = || shared.began.elapsed().as_millis() as u64 / epoch_ms;
    let record_age = shared.telemetry.metrics.record_age.with_label_values(&[&shared.telemetry.pipeline]);
    let mut epoch = 0u64;
    let mut in_epoch = 0u64;
    let mut in_flight = InFlight::new(window);
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

    let read_enough = || kafka.stop_after.is_some_and(|n| shared.progress.records.load(Ordering::Relaxed) >= n);
    // The group's first assignments, before any model batch can keep this
    // worker from serving a rebalance: what arrives meanwhile goes in first.
    for payload in settle(worker, shared, &source, &record_age, epoch_records.saturating_mul(window)) {
        shared.progress.read(1);
        input.send(payload);
        in_epoch += 1;
    }
    while !shared.stop.load(Ordering::SeqCst) && !read_enough() {
        if let Some(fatal) = shared.failed() {
            bail!("{fatal}");
        }
        // Close the epoch by time or by size.
        let by_time = epoch_of_clock();
        if by_time > epoch || in_epoch >= epoch_records {
            if in_epoch > 0 {
                in_flight.sent(epoch);
            }
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
        // A burst: what the consumer has buffered, within the epoch's size and time
        // (waiting up to 20 ms for the first message only).
        let mut wait = Duration::from_millis(20);
        while in_epoch < epoch_records && !read_enough() {
            let polled = Instant::now();
            let Some((payload, age)) = source.poll_aged(epoch, wait) else {
                // Nothing buffered. Unless the partitions still hold an
                // epoch's worth (by the ends the broker last reported: a
                // consumer's queue also runs dry between two fetches of a
                // backlog), the time waited is headroom.
                if source.unread() < epoch_records {
                    shared.headroom.idle(polled.elapsed());
                }
                break;
            };
            if let Some(age) = age {
                record_age.observe(age.as_secs_f64());
            }
            shared.progress.read(1);
            input.send(payload);
            in_epoch += 1;
            wait = Duration::ZERO;
            if epoch_of_clock() > epoch {
                break;
            }
        }
        worker.step();
        housekeeping.tick(&committed)?;
        // Flow control: at most `window` epochs with records ahead of what the sinks have seen.
        while in_flight.full(&flow) && !shared.stop.load(Ordering::SeqCst) {
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

/// Waits, serving the group's rebalances, until every worker of this process
/// that can have partitions of the topic has some (or 10 s), and returns
/// what it read meanwhile from partitions it still holds (after `cap`
/// records it pauses fetching, and goes on waiting). Each message read is
/// observed in `record_age`.
///
/// Without this, the first worker to join is given every partition, reads a
/// backlog, and steps into a model batch of seconds, during which it cannot
/// give partitions up: the others wait for the rebalance with nothing to do,
/// and then read again what it held.
fn settle(
    worker: &mut Worker,
    shared: &Shared,
    source: &KafkaInput,
    record_age: &Histogram,
    cap: u64,
) -> Vec<medkg_connectors::RawPayload> {
    let workers = shared.options.workers.max(1);
    let processes = shared.options.cluster.as_ref().map_or(1, |c| c.addresses.len().max(1));
    let partitions = source.partition_count(Duration::from_secs(10)).unwrap_or(workers * processes);
    let wanted = workers.min(partitions.div_ceil(processes)).max(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (mut counted, mut held) = (false, Vec::new());
    while !shared.stop.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
        if !counted && source.assigned() {
            counted = true;
            shared.kafka_assigned.fetch_add(1, Ordering::SeqCst);
        }
        if shared.kafka_assigned.load(Ordering::SeqCst) >= wanted {
            break;
        }
        if let Some((payload, age)) = source.poll_aged(0, Duration::from_millis(20)) {
            if let Some(age) = age {
                record_age.observe(age.as_secs_f64());
            }
            held.push(payload);
            // (A partition assigned after a pause comes unpaused: pause again.)
            if held.len() as u64 >= cap {
                if let Err(e) = source.pause(true) {
                    tracing::warn!(error = %e, "kafka: reading on while the group settles");
                    break;
                }
            }
        }
        worker.step();
    }
    if held.len() as u64 >= cap {
        if let Err(e) = source.pause(false) {
            shared.fail(format!("{e}"));
        }
    }
    // What came from partitions revoked meanwhile is the new owner's to read.
    let kept = source.assignment();
    held.retain(|p: &medkg_connectors::RawPayload| p.position.partition.is_none_or(|p| kept.contains(&p)));
    held
}

/// The epochs a worker sent records in that the sinks have not seen all of.
/// Counting these, not epoch numbers, keeps the window full while the
/// clock moves the numbers on: a worker held back for seconds by a model
/// batch would otherwise find itself `window` epochs ahead of everything
/// in flight, and wait for the pipeline to drain before reading on.
struct InFlight {
    epochs: VecDeque<u64>,
    window: usize,
}

impl InFlight {
    fn new(window: u64) -> InFlight {
        InFlight { epochs: VecDeque::new(), window: usize::try_from(window).unwrap_or(usize::MAX).max(1) }
    }

    /// `epoch`, now closed, carried records.
    fn sent(&mut self, epoch: u64) {
        self.epochs.push_back(epoch);
    }

    /// Whether `window` epochs with records are still ahead of `flow`.
    fn full(&mut self, flow: &ProbeHandle<u64>) -> bool {
        while self.epochs.front().is_some_and(|epoch| !flow.less_equal(epoch)) {
            self.epochs.pop_front();
        }
        self.epochs.len() >= self.window
    }
}
