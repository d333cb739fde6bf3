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
//! On a rebalance, revoked partitions commit what is durable and forget the
//! rest: the new owner replays it. SIGTERM drains: the input closes, the
//! sinks commit, the offsets commit, the worker exits.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::{Feed, KafkaSource, Shared};

/// Per epoch: partition → the offset after the last message read in it.
type Pending = BTreeMap<u64, HashMap<i32, i64>>;

/// What the rebalance callback shares with the worker loop.
struct Offsets {
    topic: String,
    pending: Mutex<Pending>,
    /// Epochs below this are durable in every index.
    durable: AtomicU64,
}

impl Offsets {
    /// The offsets of durable epochs, removed from `pending`, for the
    /// partitions `keep` accepts.
    fn take_durable(&self, keep: impl Fn(i32) -> bool) -> HashMap<i32, i64> {
        let durable = self.durable.load(Ordering::SeqCst);
        let mut out: HashMap<i32, i64> = HashMap::new();
        let Ok(mut pending) = self.pending.lock() else { return out };
        for (_, partitions) in pending.range_mut(..durable) {
            partitions.retain(|&p, &mut offset| {
                if keep(p) {
                    let e = out.entry(p).or_insert(offset);
                    *e = (*e).max(offset);
                    false
                } else {
                    true
                }
            });
        }
        pending.retain(|_, partitions| !partitions.is_empty());
        out
    }

    fn commit<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        offsets: &HashMap<i32, i64>,
    ) -> Result<(), String> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in offsets {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(|e| format!("offset list: {e}"))?;
        }
        consumer.commit(&list, CommitMode::Sync).map_err(|e| format!("cannot commit offsets: {e}"))
    }
}

struct Rebalancer {
    offsets: Arc<Offsets>,
}

impl ClientContext for Rebalancer {}

impl ConsumerContext for Rebalancer {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            let durable = self.offsets.take_durable(|p| revoked.contains(&p));
            if let Err(e) = self.offsets.commit(consumer, &durable) {
                eprintln!("medkg: rebalance: {e} (the new owner replays from the last commit)");
            }
            // What is not durable is dropped: the new owner reads it again.
            if let Ok(mut pending) = self.offsets.pending.lock() {
                for partitions in pending.values_mut() {
                    partitions.retain(|p, _| !revoked.contains(p));
                }
                pending.retain(|_, partitions| !partitions.is_empty());
            }
        }
    }
}

/// Watches the group's lag on its own thread (broker round trips never
/// stall a worker): every 2 s, each partition's end minus the group's
/// committed offset (the beginning where none is), summed, until `done`.
pub(crate) fn monitor_lag(
    kafka: KafkaSource,
    progress: Arc<crate::Progress>,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        // Same group id to read its commits, but never subscribed: not a member.
        let Ok(consumer) = kafka.settings.consumer_config().create::<BaseConsumer>() else { return };
        while !done.load(Ordering::SeqCst) {
            if let Some(lag) = group_lag(&consumer, &kafka.topic) {
                if let Ok(mut lags) = progress.lag.lock() {
                    lags.insert(0, lag);
                }
            }
            for _ in 0..20 {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}

fn group_lag(consumer: &BaseConsumer, topic: &str) -> Option<u64> {
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).ok()?;
    let partitions: Vec<i32> =
        metadata.topics().iter().find(|t| t.name() == topic)?.partitions().iter().map(|p| p.id()).collect();
    let mut list = TopicPartitionList::new();
    for &p in &partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(list, timeout).ok()?;
    let mut lag = 0u64;
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout).ok()?;
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => offset,
            _ => low,
        };
        lag += (high - done).max(0) as u64;
    }
    Some(lag)
}

/// Consumes `kafka.topic` until stopped.
pub(crate) fn feed(
    worker: &mut timely::worker::Worker,
    shared: &Arc<Shared>,
    feed: Feed,
    kafka: &KafkaSource,
) -> anyhow::Result<()> {
    let Feed { mut input, flow, committed, dead_letters, mut books, mut ir, downloads: _ } = feed;
    books.opened(0);
    let offsets = Arc::new(Offsets {
        topic: kafka.topic.clone(),
        pending: Mutex::new(BTreeMap::new()),
        durable: AtomicU64::new(0),
    });
    let consumer: BaseConsumer<Rebalancer> = kafka
        .settings
        .consumer_config()
        .create_with_context(Rebalancer { offsets: offsets.clone() })
        .map_err(|e| anyhow!("cannot create a Kafka consumer: {e}"))?;
    consumer.subscribe(&[&kafka.topic]).map_err(|e| anyhow!("cannot subscribe to {}: {e}", kafka.topic))?;

    let runtime = &shared.options.plan.runtime;
    let (epoch_ms, epoch_records, window) =
        (runtime.epoch_ms.max(1), runtime.epoch_records.max(1), runtime.max_epochs_in_flight.max(1));
    let mut epoch = 0u64;
    let mut in_epoch = 0u64;
    let commit_durable = |consumer: &BaseConsumer<Rebalancer>| -> anyhow::Result<()> {
        let frontier = committed.with_frontier(|f| f.first().copied()).unwrap_or(u64::MAX);
        offsets.durable.store(frontier, Ordering::SeqCst);
        let durable = offsets.take_durable(|_| true);
        if !durable.is_empty() {
            // Dead letters of those epochs must be in their topic before the offsets move.
            dead_letters.borrow().flush().map_err(|e| anyhow!("{e}"))?;
            offsets.commit(consumer, &durable).map_err(|e| anyhow!(e))?;
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
            books.opened(epoch);
            if let Some(ir) = &mut ir {
                ir.advance(epoch);
                ir.poll();
            }
            commit_durable(&consumer)?;
        }
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(message)) => {
                let payload = medkg_connectors::kafka::payload_of(&message);
                if let Some(partition) = payload.position.partition {
                    if let Ok(mut pending) = offsets.pending.lock() {
                        let next = message.offset() + 1;
                        let slot = pending.entry(epoch).or_default().entry(partition).or_insert(next);
                        *slot = (*slot).max(next);
                    }
                }
                shared.progress.records.fetch_add(1, Ordering::Relaxed);
                input.send(payload);
                in_epoch += 1;
            }
            Some(Err(e)) => eprintln!("medkg: kafka: {e}"),
            None => {}
        }
        worker.step();
        books.tick(&committed)?;
        // Flow control: stay within `window` epochs of what the sinks have seen.
        while flow.less_than(&epoch.saturating_sub(window)) && !shared.stop.load(Ordering::SeqCst) {
            // (librdkafka heartbeats from its own thread meanwhile.)
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
    }

    // Drain: no more input; wait until everything read is durable, commit it.
    // (Documents still waiting at a gate stay waiting, durably, for the next run.)
    drop(input);
    drop(ir);
    while !committed.done() {
        if let Some(fatal) = shared.failed() {
            bail!("{fatal}");
        }
        worker.step_or_park(Some(Duration::from_millis(20)));
        books.tick(&committed)?;
    }
    books.finish(&committed)?;
    commit_durable(&consumer)?;
    Ok(())
}
