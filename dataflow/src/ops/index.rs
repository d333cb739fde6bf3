//! The `index` stage: tantivy (BM25 + SPLADE terms) and FAISS shards,
//! written as documents arrive and committed once their epochs close.
//!
//! The operator upserts each document into its shard as it arrives, holds a
//! capability for every epoch written but not committed, and commits when
//! the input frontier has passed such epochs, and always when the input
//! ends. Between two commits it waits what `commit_interval` says: `auto`
//! (the default: 100 ms while the process's sources have headroom, a tenth
//! or more of their time spent waiting for input over the last second; 1 s
//! while they have none) or a fixed interval. What it emits, at the time of
//! its epoch, are the documents it has made durable.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::Instant;

use medkg_connectors::ledger::Status;
use medkg_operators::index::{Backends, Layout, ShardWriter};
use medkg_operators::ChunkedDocument;
use medkg_topology::CommitInterval;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Operator};
use timely::dataflow::{Scope, StreamVec};

use super::ctx::Ctx;
use super::envelope::Envelope;
use crate::telemetry::Subject;

/// How an index stage writes.
#[derive(Clone)]
pub(crate) struct IndexSpec {
    /// The data directory's shards.
    pub layout: Layout,
    /// How long to wait between two commits.
    pub commit_interval: CommitInterval,
    /// Indexing memory per shard.
    pub writer_memory_bytes: usize,
    pub backends: Backends,
    /// Emit the documents once durable (something reads the index's output).
    pub forward: bool,
}

/// What an epoch wrote, until it is durable.
#[derive(Default)]
struct Written {
    docs: u64,
    chunks: u64,
    /// The documents to forward.
    forward: Vec<Envelope<ChunkedDocument>>,
    /// What to report once durable.
    reports: Vec<Report>,
}

/// A document written, to report once durable.
struct Report {
    tenant: String,
    doc_id: String,
    deleted: bool,
    began: Instant,
}

/// Builds the index stage on `input` (exchanged by document id: one worker
/// owns a document and its shard).
pub(crate) fn index<'s>(
    scope: Scope<'s, u64>,
    input: StreamVec<'s, u64, Envelope<ChunkedDocument>>,
    ctx: Ctx,
    spec: IndexSpec,
) -> StreamVec<'s, u64, Envelope<ChunkedDocument>> {
    let IndexSpec { layout, commit_interval, writer_memory_bytes, backends, forward } = spec;
    let (shared, reporter) = (ctx.shared.clone(), ctx.reporter.clone());
    let name = reporter.stage.to_string();
    let route = layout.clone();
    let exchange = Exchange::new(move |e: &Envelope<ChunkedDocument>| u64::from(route.shard_of(&e.item.doc_id)));
    input.unary_frontier::<CapacityContainerBuilder<Vec<Envelope<ChunkedDocument>>>, _, _, _>(
        exchange,
        &name,
        move |_, info| {
            let activator = scope.activator_for(info.address.clone());
            let mut shards: BTreeMap<u32, ShardWriter> = BTreeMap::new();
            // Per document key: the source position (partition, offset) and epoch last applied.
            let mut latest: HashMap<String, ((Option<i32>, u64), u64)> = HashMap::new();
            // Epochs written and not yet committed, with a capability for each.
            let mut pending: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            let mut written: BTreeMap<u64, Written> = BTreeMap::new();
            let mut dirty = false;
            let mut last_commit = Instant::now();
            // The sources' headroom in the last whole window; the current one began at `window`.
            let (mut spare, mut window) = (0.0, shared.headroom.mark());
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    if let Some(held) = cap.retain_least(0) {
                        pending.entry(time).or_insert(held);
                    }
                    if !written.contains_key(&time) {
                        reporter.batch_started(time, None);
                    }
                    let epoch = written.entry(time).or_default();
                    for batch in data {
                        for envelope in batch.drain(..) {
                            let item = &envelope.item;
                            let shard_no = layout.shard_of(&item.doc_id);
                            let shard = match shards.entry(shard_no) {
                                Entry::Occupied(s) => s.into_mut(),
                                Entry::Vacant(slot) => {
                                    match ShardWriter::open(&layout, shard_no, writer_memory_bytes, backends) {
                                        Ok(s) => slot.insert(s),
                                        Err(e) => {
                                            shared.fail(format!("shard {shard_no}: {e}"));
                                            return;
                                        }
                                    }
                                }
                            };
                            // Last writer by source position wins: a tombstone overtaking
                            // its document's upsert (it skips parse and chunk) must not
                            // be undone by it, nor an old upsert replace a newer one.
                            let key = medkg_operators::doc_key(&item.tenant_id, &item.doc_id);
                            let at = (envelope.position.partition, envelope.position.ordinal);
                            if let Some(&(seen, _)) = latest.get(&key) {
                                if seen.0 == at.0 && seen.1 > at.1 {
                                    continue;
                                }
                            }
                            latest.insert(key, (at, time));
                            let result = if envelope.tombstone {
                                shard.delete(&item.tenant_id, &item.doc_id);
                                Ok(())
                            } else {
                                shard.upsert(item)
                            };
                            if let Err(e) = result {
                                shared.fail(format!("shard {shard_no}: {e}"));
                                return;
                            }
                            dirty = true;
                            if !envelope.tombstone {
                                epoch.docs += 1;
                                epoch.chunks += item.chunks.len() as u64;
                            }
                            let began =
                                reporter.started(&Subject { id: &item.doc_id, tenant: &item.tenant_id, is_doc: true });
                            epoch.reports.push(Report {
                                tenant: item.tenant_id.clone(),
                                doc_id: item.doc_id.clone(),
                                deleted: envelope.tombstone,
                                began,
                            });
                            if forward {
                                epoch.forward.push(envelope);
                            }
                        }
                    }
                });

                let passed: BTreeSet<u64> = pending.keys().copied().filter(|t| !frontier.less_equal(t)).collect();
                if passed.is_empty() {
                    return;
                }
                // Headroom over the last second or more decides `auto`'s pace.
                if window.0.elapsed() >= CommitInterval::AUTO_WINDOW {
                    spare = shared.headroom.spare_since(window);
                    window = shared.headroom.mark();
                }
                let (waited, interval) = (last_commit.elapsed(), commit_interval.wait(spare));
                if dirty && waited < interval && !frontier.is_empty() {
                    activator.activate_after(interval - waited);
                    return;
                }
                let (committing, commits) = (Instant::now(), dirty);
                if dirty {
                    for (n, shard) in shards.iter_mut() {
                        if let Err(e) = shard.commit() {
                            shared.fail(format!("shard {n}: {e}"));
                            return;
                        }
                    }
                    dirty = false;
                    last_commit = Instant::now();
                }
                // This worker's dead letters of the passed epochs were written
                // before them (its upstream stages finished them): make them
                // durable too, before the source may move past them.
                if let Err(e) = ctx.letters.borrow_mut().sync() {
                    shared.fail(format!("cannot sync the dead letters: {e}"));
                    return;
                }
                if commits {
                    tracing::debug!(
                        stage = %reporter.stage,
                        epochs = passed.len(),
                        spare,
                        waited_ms = waited.as_millis() as u64,
                        commit_ms = committing.elapsed().as_secs_f64() * 1000.0,
                        "index committed"
                    );
                }
                // Everything written so far is durable: release what the frontier passed.
                // Nothing older than the frontier can arrive any more: forget it.
                match frontier.frontier().first().copied() {
                    Some(oldest) => latest.retain(|_, (_, epoch)| *epoch >= oldest),
                    None => latest.clear(),
                }
                for time in passed {
                    let Some(cap) = pending.remove(&time) else { continue };
                    let Some(epoch) = written.remove(&time) else { continue };
                    shared.progress.docs.fetch_add(epoch.docs, Ordering::Relaxed);
                    shared.progress.chunks.fetch_add(epoch.chunks, Ordering::Relaxed);
                    reporter.batch_completed(time, epoch.reports.len(), last_commit.elapsed());
                    for report in epoch.reports {
                        let subject = Subject { id: &report.doc_id, tenant: &report.tenant, is_doc: true };
                        if report.deleted {
                            reporter.record(&subject, Status::Deleted, 1, None);
                        } else {
                            reporter.completed(&subject, report.began, 1);
                        }
                    }
                    if !epoch.forward.is_empty() {
                        output.session(&cap).give_iterator(epoch.forward.into_iter());
                    }
                }
            }
        },
    )
}
