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

use medkg_connectors::kafka::KafkaSettings;
use medkg_connectors::RawPayload;

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

/// A topic read by a consumer group, with offsets committed only once
/// what was read is durable: the source topic, and the IR-ready topic of a
/// pipeline's gates. Each message is remembered under the epoch it was sent
/// at; [`KafkaInput::commit_durable`] commits the partitions' offsets of the
/// epochs the `committed` probe has passed.
pub(crate) struct KafkaInput {
    consumer: BaseConsumer<Rebalancer>,
    offsets: Arc<Offsets>,
}

impl KafkaInput {
    /// Joins `settings.group` and subscribes to `topic`.
    pub fn subscribe(settings: &KafkaSettings, topic: &str) -> anyhow::Result<KafkaInput> {
        KafkaInput::subscribe_with(settings, topic, true)
    }

    fn subscribe_with(settings: &KafkaSettings, topic: &str, subscribe: bool) -> anyhow::Result<KafkaInput> {
        let offsets = Arc::new(Offsets {
            topic: topic.to_string(),
            pending: Mutex::new(BTreeMap::new()),
            durable: AtomicU64::new(0),
        });
        let consumer: BaseConsumer<Rebalancer> = settings
            .consumer_config()
            .create_with_context(Rebalancer { offsets: offsets.clone() })
            .map_err(|e| anyhow!("cannot create a Kafka consumer: {e}"))?;
        if subscribe {
            consumer.subscribe(&[topic]).map_err(|e| anyhow!("cannot subscribe to {topic}: {e}"))?;
        }
        Ok(KafkaInput { consumer, offsets })
    }

    /// Reads `topic` without joining a group: worker `worker` of `peers`
    /// takes the partitions `p` with `p % peers == worker`, from the offsets
    /// `settings.group` committed (else the beginning), and commits there.
    /// The set of workers is fixed for a run, so nothing ever rebalances.
    /// (Partitions added while it runs are read from the next run on.)
    pub fn assign(settings: &KafkaSettings, topic: &str, worker: usize, peers: usize) -> anyhow::Result<KafkaInput> {
        let input = KafkaInput::subscribe_with(settings, topic, false)?;
        let metadata = input
            .consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .map_err(|e| anyhow!("cannot read the metadata of {topic}: {e}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            bail!("topic {topic} does not exist (or has no partitions)");
        }
        let mut list = TopicPartitionList::new();
        for p in partitions.into_iter().filter(|&p| p as usize % peers == worker) {
            list.add_partition_offset(topic, p, Offset::Stored).map_err(|e| anyhow!("offset list: {e}"))?;
        }
        input.consumer.assign(&list).map_err(|e| anyhow!("cannot read {topic}: {e}"))?;
        Ok(input)
    }

    /// The next message, if one comes within `timeout`, remembered as read
    /// in `epoch`.
    pub fn poll(&self, epoch: u64, timeout: Duration) -> Option<RawPayload> {
        match self.consumer.poll(timeout) {
            Some(Ok(message)) => {
                let payload = medkg_connectors::kafka::payload_of(&message);
                if let Some(partition) = payload.position.partition {
                    if let Ok(mut pending) = self.offsets.pending.lock() {
                        let next = message.offset() + 1;
                        let slot = pending.entry(epoch).or_default().entry(partition).or_insert(next);
                        *slot = (*slot).max(next);
                    }
                }
                Some(payload)
            }
            Some(Err(e)) => {
                tracing::warn!(topic = %self.offsets.topic, error = %e, "kafka consumer");
                None
            }
            None => None,
        }
    }

    /// Commits the offsets of the epochs before `frontier` (durable); calls
    /// `before` first when there is anything to commit.
    pub fn commit_durable(&self, frontier: u64, before: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        self.offsets.durable.store(frontier, Ordering::SeqCst);
        let durable = self.offsets.take_durable(|_| true);
        if !durable.is_empty() {
            before()?;
            self.offsets.commit(&self.consumer, &durable).map_err(|e| anyhow!(e))?;
        }
        Ok(())
    }
}

/// Consumes `kafka.topic` until stopped.
pub(crate) fn feed(
    worker: &mut timely::worker::Worker,
    shared: &Arc<Shared>,
    feed: Feed,
    kafka: &KafkaSource,
) -> anyhow::Result<()> {
    let Feed { mut input, flow, committed, dead_letters, mut books, mut ir, census: _ } = feed;
    books.opened(0);
    let source = KafkaInput::subscribe(&kafka.settings, &kafka.topic)?;
    let runtime = &shared.options.plan.runtime;
    let (epoch_ms, epoch_records, window) =
        (runtime.epoch_ms.max(1), runtime.epoch_records.max(1), runtime.max_epochs_in_flight.max(1));
    let mut epoch = 0u64;
    let mut in_epoch = 0u64;
    // Dead letters of durable epochs must be in their topic before the offsets move.
    let flush = || dead_letters.borrow_mut().flush().map_err(|e| anyhow!("{e}"));
    let commit_durable = |ir: &Option<crate::IrFeed>| -> anyhow::Result<()> {
        let frontier = crate::frontier_of(&committed);
        source.commit_durable(frontier, flush)?;
        if let Some(ir) = ir {
            ir.commit_durable(frontier, flush)?;
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
            }
            commit_durable(&ir)?;
        }
        if let Some(ir) = &mut ir {
            ir.poll();
        }
        if let Some(payload) = source.poll(epoch, Duration::from_millis(20)) {
            shared.progress.records.fetch_add(1, Ordering::Relaxed);
            input.send(payload);
            in_epoch += 1;
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
    if let Some(ir) = &mut ir {
        ir.close();
    }
    while !committed.done() {
        if let Some(fatal) = shared.failed() {
            bail!("{fatal}");
        }
        worker.step_or_park(Some(Duration::from_millis(20)));
        books.tick(&committed)?;
    }
    books.finish(&committed)?;
    commit_durable(&ir)?;
    Ok(())
}
