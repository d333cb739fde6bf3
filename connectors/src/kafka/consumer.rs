//! The Kafka consumer: messages as [`RawPayload`]s, with offsets committed
//! only once what was read is durable.
//!
//! Each message is remembered under the epoch it was read in; the engine
//! says which epochs are durable (its probe after the index sinks passed
//! them), and only their offsets are committed. On a rebalance, revoked
//! partitions commit what is durable and forget the rest: the new owner
//! replays it. A crash replays at most the uncommitted epochs, whose writes
//! are idempotent upserts.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use super::KafkaSettings;
use crate::error::{Error, Result};
use crate::{Position, RawPayload};

/// A consumed message as a payload: its key, value and (topic, partition,
/// offset) position; a message with a key and no value is a tombstone.
pub fn payload_of(message: &BorrowedMessage<'_>) -> RawPayload {
    let key = message.key().map(|k| String::from_utf8_lossy(k).into_owned());
    let tenant = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == "tenant_id")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    });
    RawPayload {
        source: format!("kafka:{}", message.topic()),
        tombstone: message.payload().is_none() && key.is_some(),
        key,
        bytes: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        name: None,
        position: Position {
            ordinal: message.offset().max(0) as u64,
            file: message.topic().to_string(),
            line: None,
            partition: Some(message.partition()),
        },
        tenant,
    }
}

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

    fn commit<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, offsets: &HashMap<i32, i64>) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in offsets {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(|e| Error::kafka("offset list", e))?;
        }
        consumer.commit(&list, CommitMode::Sync).map_err(|e| Error::kafka("cannot commit offsets", e))
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

/// Watches the lag of `settings.group` on `topic` on its own thread (broker
/// round trips never stall a worker): every 2 s, each partition's end minus
/// the group's committed offset (the beginning where none is), summed and
/// handed to `on_lag`, until `done`.
pub fn monitor_lag(
    settings: KafkaSettings,
    topic: String,
    on_lag: impl Fn(u64) + Send + 'static,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        // Same group id to read its commits, but never subscribed: not a member.
        let Ok(consumer) = settings.consumer_config().create::<BaseConsumer>() else { return };
        while !done.load(Ordering::SeqCst) {
            if let Some(lag) = group_lag(&consumer, &topic) {
                on_lag(lag);
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
pub struct KafkaInput {
    consumer: BaseConsumer<Rebalancer>,
    offsets: Arc<Offsets>,
    /// Per partition, the offset after the last message read.
    read: Mutex<HashMap<i32, i64>>,
}

impl KafkaInput {
    /// Joins `settings.group` and subscribes to `topic`.
    pub fn subscribe(settings: &KafkaSettings, topic: &str) -> Result<KafkaInput> {
        KafkaInput::subscribe_with(settings, topic, true)
    }

    fn subscribe_with(settings: &KafkaSettings, topic: &str, subscribe: bool) -> Result<KafkaInput> {
        let offsets = Arc::new(Offsets {
            topic: topic.to_string(),
            pending: Mutex::new(BTreeMap::new()),
            durable: AtomicU64::new(0),
        });
        let consumer: BaseConsumer<Rebalancer> = settings
            .consumer_config()
            .create_with_context(Rebalancer { offsets: offsets.clone() })
            .map_err(|e| Error::kafka("cannot create a Kafka consumer", e))?;
        if subscribe {
            consumer.subscribe(&[topic]).map_err(|e| Error::kafka(format!("cannot subscribe to {topic}"), e))?;
        }
        Ok(KafkaInput { consumer, offsets, read: Mutex::new(HashMap::new()) })
    }

    /// Reads `topic` without joining a group: worker `worker` of `peers`
    /// takes the partitions `p` with `p % peers == worker`, from the offsets
    /// `settings.group` committed (else the beginning), and commits there.
    /// The set of workers is fixed for a run, so nothing ever rebalances.
    /// (Partitions added while it runs are read from the next run on.)
    pub fn assign(settings: &KafkaSettings, topic: &str, worker: usize, peers: usize) -> Result<KafkaInput> {
        let input = KafkaInput::subscribe_with(settings, topic, false)?;
        let metadata = input
            .consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .map_err(|e| Error::kafka(format!("cannot read the metadata of {topic}"), e))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(Error::Config(format!("topic {topic} does not exist (or has no partitions)")));
        }
        let mut list = TopicPartitionList::new();
        for p in partitions.into_iter().filter(|&p| p as usize % peers == worker) {
            list.add_partition_offset(topic, p, Offset::Stored).map_err(|e| Error::kafka("offset list", e))?;
        }
        input.consumer.assign(&list).map_err(|e| Error::kafka(format!("cannot read {topic}"), e))?;
        Ok(input)
    }

    /// Whether the group has given this member partitions yet.
    pub fn assigned(&self) -> bool {
        self.consumer.assignment().is_ok_and(|a| a.count() > 0)
    }

    /// The partitions the group has given this member now.
    pub fn assignment(&self) -> Vec<i32> {
        self.consumer.assignment().map(|a| a.elements().iter().map(|e| e.partition()).collect()).unwrap_or_default()
    }

    /// Stops (`true`) or restarts fetching from every partition held now;
    /// the consumer still serves the group's rebalances meanwhile.
    pub fn pause(&self, paused: bool) -> Result<()> {
        let list = self.consumer.assignment().map_err(|e| Error::kafka("cannot read the assignment", e))?;
        let done = if paused { self.consumer.pause(&list) } else { self.consumer.resume(&list) };
        done.map_err(|e| Error::kafka(if paused { "cannot pause" } else { "cannot resume" }, e))
    }

    /// How many partitions the topic has (a broker round trip).
    pub fn partition_count(&self, timeout: Duration) -> Result<usize> {
        let topic = &self.offsets.topic;
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| Error::kafka(format!("cannot read the metadata of {topic}"), e))?;
        Ok(metadata.topics().iter().filter(|t| t.name() == topic).map(|t| t.partitions().len()).sum())
    }

    /// The next message, if one comes within `timeout`, remembered as read
    /// in `epoch`.
    pub fn poll(&self, epoch: u64, timeout: Duration) -> Option<RawPayload> {
        self.poll_aged(epoch, timeout).map(|(payload, _)| payload)
    }

    /// [`KafkaInput::poll`], with the message's age: how long ago its
    /// timestamp (the producer's create time, or the broker's append time)
    /// was, by this machine's clock (`None` without a timestamp; zero if
    /// the clocks disagree the other way).
    pub fn poll_aged(&self, epoch: u64, timeout: Duration) -> Option<(RawPayload, Option<Duration>)> {
        match self.consumer.poll(timeout) {
            Some(Ok(message)) => {
                let age = message.timestamp().to_millis().and_then(|ms| {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
                    Some(now.saturating_sub(Duration::from_millis(u64::try_from(ms).ok()?)))
                });
                let payload = payload_of(&message);
                if let Some(partition) = payload.position.partition {
                    if let Ok(mut read) = self.read.lock() {
                        read.insert(partition, message.offset() + 1);
                    }
                    if let Ok(mut pending) = self.offsets.pending.lock() {
                        let next = message.offset() + 1;
                        let slot = pending.entry(epoch).or_default().entry(partition).or_insert(next);
                        *slot = (*slot).max(next);
                    }
                }
                Some((payload, age))
            }
            Some(Err(e)) => {
                tracing::warn!(topic = %self.offsets.topic, error = %e, "kafka consumer");
                None
            }
            None => None,
        }
    }

    /// How many messages the partitions this member holds have beyond what
    /// it has read, by the end offsets the broker reported with its last
    /// fetches (no round trip: librdkafka keeps them). Partitions not read
    /// from yet count nothing.
    pub fn unread(&self) -> u64 {
        let Ok(read) = self.read.lock() else { return 0 };
        let Ok(topic) = std::ffi::CString::new(self.offsets.topic.as_str()) else { return 0 };
        let held = self.assignment();
        let mut unread = 0u64;
        for (&partition, &next) in read.iter().filter(|(p, _)| held.contains(p)) {
            let (mut low, mut high) = (-1i64, -1i64);
            // SAFETY: the handle is this consumer's, alive for the call;
            // `topic` is a NUL-terminated string that outlives it; `low` and
            // `high` are valid for writes. The call reads librdkafka's cached
            // offsets under its own locks.
            let err = unsafe {
                rdkafka::bindings::rd_kafka_get_watermark_offsets(
                    self.consumer.client().native_ptr(),
                    topic.as_ptr(),
                    partition,
                    &mut low,
                    &mut high,
                )
            };
            if err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0 {
                unread += (high - next).max(0) as u64;
            }
        }
        unread
    }

    /// Commits the offsets of the epochs before `frontier` (durable); calls
    /// `before` first when there is anything to commit (what must be durable
    /// before the offsets move, such as the dead letters of those epochs).
    pub fn commit_durable<E: From<Error>>(
        &self,
        frontier: u64,
        before: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        self.offsets.durable.store(frontier, Ordering::SeqCst);
        let durable = self.offsets.take_durable(|_| true);
        if !durable.is_empty() {
            before()?;
            self.offsets.commit(&self.consumer, &durable)?;
        }
        Ok(())
    }
}
