//! The `kg` stage: documents' claims → the knowledge graph, kept by
//! differential dataflow ([`crate::kg`]) and stored in Oxigraph.
//!
//! Three operators:
//! 1. **versions** (worker 0): per epoch, the last version of each document
//!    by source position (a tombstone is a version with no claims), as the
//!    index orders its upserts. On its first run it reads every document's
//!    claims back from the store, so a restart rebuilds the graph's state
//!    without reading the sources again. The restored versions take the
//!    first time; records of that time move to the next one, so each is a
//!    new version the graph retracts the old one for.
//! 2. the differential graph over those versions: each edge's support and
//!    each concept's mentions, by distinct documents; only an epoch's net
//!    changes come out.
//! 3. **commit** (worker 0): once both inputs have passed an epoch, one
//!    transaction writes its documents' graphs and the changed counts;
//!    what it emits at an epoch's time is durable, so the source commits
//!    (checkpoint, Kafka offsets) only past graph changes that are durable.
//!
//! The graph has one writer per run: process 0 opens the store (Oxigraph's
//! RocksDB store, or a SPARQL endpoint), and worker 0 owns it. Extraction,
//! the expensive part, runs on every worker before it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use medkg_connectors::ledger::Status;
use medkg_operators::extract::{Extraction, Extractor};
use medkg_operators::graph::{Changes, DocClaims, DocKey, Edge, GraphSink};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Capability, Concatenate, Operator};
use timely::dataflow::StreamVec;

use super::ctx::Ctx;
use super::envelope::Envelope;
use crate::kg::{graph, Upsert};
use crate::telemetry::Subject;

/// What a `kg` stage writes with.
#[derive(Clone)]
pub(crate) struct KgSpec {
    /// The store (process 0 only).
    pub store: Option<GraphSink>,
    /// Labels and categories of concepts.
    pub extractor: Arc<Extractor>,
    /// Emit the extractions once durable (something reads the stage's output).
    pub forward: bool,
    /// Count documents as the run's progress (no index stage does).
    pub counts_progress: bool,
}

/// One document's version of an epoch.
#[derive(Clone)]
struct Version {
    key: DocKey,
    /// Source position: (partition, ordinal); `None` for a restored version.
    at: Option<(Option<i32>, u64)>,
    /// Its claims (`None`: deleted).
    claims: Option<DocClaims>,
    /// The extraction to store (`None` for a deletion or a restored version).
    envelope: Option<Envelope<Extraction>>,
}

/// Builds the `kg` stage on `input` (extractions and tombstones).
pub(crate) fn kg<'s>(
    input: StreamVec<'s, u64, Envelope<Extraction>>,
    ctx: Ctx,
    spec: KgSpec,
) -> StreamVec<'s, u64, Envelope<Extraction>> {
    let versions = versions(input, &ctx, spec.store.clone());
    let upserts =
        versions.clone().unary::<CapacityContainerBuilder<Vec<Upsert>>, _, _, _>(Pipeline, "kg: upserts", |_, _| {
            |input, output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    let mut session = output.session(&cap);
                    for version in data.flat_map(|batch| batch.drain(..)) {
                        session.give((version.key, version.claims, time));
                    }
                })
            }
        });
    let views = graph(upserts);
    commit(versions, views.support.inner, views.mentions.inner, ctx, spec)
}

/// Operator 1: the last version of each document per epoch, on worker 0.
fn versions<'s>(
    input: StreamVec<'s, u64, Envelope<Extraction>>,
    ctx: &Ctx,
    store: Option<GraphSink>,
) -> StreamVec<'s, u64, Version> {
    let shared = ctx.shared.clone();
    let name = format!("{}: versions", ctx.reporter.stage);
    let worker = input.scope().index();
    input.unary_frontier::<CapacityContainerBuilder<Vec<Version>>, _, _, _>(
        Exchange::new(|_| 0),
        &name,
        move |initial, _| {
            // Worker 0 restores what the store holds, at the first time.
            let mut restore = (worker == 0).then_some(initial);
            // The time of the restored versions: records of that time move to the
            // next, so that a document has one version per time.
            let mut restored_at: Option<u64> = None;
            let mut pending: BTreeMap<u64, (Capability<u64>, HashMap<DocKey, Version>)> = BTreeMap::new();
            // Per document: the position and epoch last taken (older records replayed later lose).
            let mut latest: HashMap<DocKey, ((Option<i32>, u64), u64)> = HashMap::new();
            move |(input, frontier), output| {
                if let Some(cap) = restore.take() {
                    if let Some(store) = &store {
                        match store.restore() {
                            Ok(docs) => {
                                let edges: usize = docs.iter().map(|(_, c)| c.edges.len()).sum();
                                let mentions: usize = docs.iter().map(|(_, c)| c.mentions.len()).sum();
                                tracing::info!(
                                    documents = docs.len(),
                                    edges,
                                    mentions,
                                    "graph state read back from the store"
                                );
                                let versions = docs
                                    .into_iter()
                                    .map(|(key, claims)| {
                                        (key.clone(), Version { key, at: None, claims: Some(claims), envelope: None })
                                    })
                                    .collect();
                                restored_at = Some(*cap.time());
                                pending.insert(*cap.time(), (cap, versions));
                            }
                            Err(e) => shared.fail(format!("cannot read the graph back: {e}")),
                        }
                    }
                }
                input.for_each_stamp(|cap, data| {
                    let Some(&epoch_time) = cap.least() else { return };
                    let time = if restored_at == Some(epoch_time) { epoch_time + 1 } else { epoch_time };
                    let (_, epoch) = pending.entry(time).or_insert_with(|| (cap.delayed(&time, 0), HashMap::new()));
                    for envelope in data.flat_map(|batch| batch.drain(..)) {
                        let key = (envelope.item.tenant_id.clone(), envelope.item.doc_id.clone());
                        let at = (envelope.position.partition, envelope.position.ordinal);
                        if let Some(&(seen, _)) = latest.get(&key) {
                            if seen.0 == at.0 && seen.1 > at.1 {
                                continue;
                            }
                        }
                        latest.insert(key.clone(), (at, time));
                        let claims = (!envelope.tombstone).then(|| DocClaims::of(&envelope.item));
                        epoch.insert(key.clone(), Version { key, at: Some(at), claims, envelope: Some(envelope) });
                    }
                });
                let passed: Vec<u64> = pending.keys().copied().filter(|t| !frontier.less_equal(t)).collect();
                for time in passed {
                    let Some((cap, epoch)) = pending.remove(&time) else { continue };
                    let mut versions: Vec<Version> = epoch.into_values().collect();
                    versions.sort_by(|a, b| a.key.cmp(&b.key));
                    output.session(&cap).give_iterator(versions.into_iter());
                }
                match frontier.frontier().first().copied() {
                    Some(oldest) => latest.retain(|_, (_, epoch)| *epoch >= oldest),
                    None => latest.clear(),
                }
            }
        },
    )
}

/// An epoch's writes, until durable.
#[derive(Default)]
struct Epoch {
    versions: Vec<Version>,
    support: HashMap<(String, Edge), (Option<u64>, bool)>,
    mentions: HashMap<(String, String), (Option<u64>, bool)>,
}

/// Folds one differential count update into `counts`: an addition sets the
/// new count, a retraction alone means the item is gone.
fn fold<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, (Option<u64>, bool)>, key: K, count: isize, diff: isize) {
    let slot = counts.entry(key).or_insert((None, false));
    if diff > 0 {
        *slot = (Some(count.max(0) as u64), true);
    } else if !slot.1 {
        slot.0 = None;
    }
}

type CountUpdate<K> = ((K, isize), u64, isize);

/// Operator 3: writes passed epochs to the store in one transaction each
/// round, then releases them.
fn commit<'s>(
    versions: StreamVec<'s, u64, Version>,
    support: StreamVec<'s, u64, CountUpdate<(String, Edge)>>,
    mentions: StreamVec<'s, u64, CountUpdate<(String, String)>>,
    ctx: Ctx,
    spec: KgSpec,
) -> StreamVec<'s, u64, Envelope<Extraction>> {
    // Counts of both kinds on one stream, to worker 0.
    let counts = versions.scope().concatenate(vec![
        support.map(|((k, n), t, d)| (Count::Edge(k, n), t, d)),
        mentions.map(|((k, n), t, d)| (Count::Concept(k, n), t, d)),
    ]);
    let (shared, reporter) = (ctx.shared.clone(), ctx.reporter.clone());
    let name = reporter.stage.to_string();
    versions.binary_frontier::<_, CapacityContainerBuilder<Vec<Envelope<Extraction>>>, _, _, _, _>(
        counts,
        Pipeline,
        Exchange::new(|_| 0),
        &name,
        move |_, _| {
            let mut pending: BTreeMap<u64, (Capability<u64>, Epoch)> = BTreeMap::new();
            let vocabulary_of = spec.extractor.clone();
            move |(versions, versions_frontier), (counts, counts_frontier), output| {
                versions.for_each_stamp(|cap, data| {
                    let (Some(&time), Some(held)) = (cap.least(), cap.retain_least(0)) else { return };
                    let (_, epoch) = pending.entry(time).or_insert_with(|| (held, Epoch::default()));
                    epoch.versions.extend(data.flat_map(|batch| batch.drain(..)));
                });
                // Differential sends updates of several times under one capability:
                // each update goes to its own time.
                counts.for_each_stamp(|cap, data| {
                    for (count, time, diff) in data.flat_map(|batch| batch.drain(..)) {
                        let (_, epoch) =
                            pending.entry(time).or_insert_with(|| (cap.delayed(&time, 0), Epoch::default()));
                        match count {
                            Count::Edge(key, n) => fold(&mut epoch.support, key, n, diff),
                            Count::Concept(key, n) => fold(&mut epoch.mentions, key, n, diff),
                        }
                    }
                });
                let passed: Vec<u64> = pending
                    .keys()
                    .copied()
                    .filter(|t| !versions_frontier.less_equal(t) && !counts_frontier.less_equal(t))
                    .collect();
                if passed.is_empty() {
                    return;
                }
                let began = Instant::now();
                let mut epochs: Vec<(u64, Capability<u64>, Epoch)> = Vec::new();
                for time in passed {
                    let Some((cap, epoch)) = pending.remove(&time) else { continue };
                    reporter.batch_started(time, Some(epoch.versions.len()));
                    epochs.push((time, cap, epoch));
                }
                // One transaction for every epoch passed; a later epoch's value wins.
                let mut changes = Changes::default();
                let (mut support, mut mentions) = (HashMap::new(), HashMap::new());
                for (_, _, epoch) in &epochs {
                    for version in epoch.versions.iter().filter(|v| v.at.is_some()) {
                        let extraction = version.envelope.as_ref().filter(|e| !e.tombstone).map(|e| e.item.clone());
                        changes.documents.push((version.key.clone(), extraction));
                    }
                    support.extend(epoch.support.iter().map(|(k, (n, _))| (k.clone(), *n)));
                    mentions.extend(epoch.mentions.iter().map(|(k, (n, _))| (k.clone(), *n)));
                }
                changes.support = support.into_iter().collect();
                changes.mentions = mentions.into_iter().collect();
                if let Some(store) = &spec.store {
                    if !changes.is_empty() {
                        if let Err(e) = store.apply(&changes, Some(vocabulary_of.vocabulary())) {
                            shared.fail(format!("cannot write the graph: {e}"));
                            return;
                        }
                    }
                }
                // The dead letters of these epochs, written upstream on this worker, go first.
                if let Err(e) = ctx.letters.borrow_mut().sync() {
                    shared.fail(format!("cannot sync the dead letters: {e}"));
                    return;
                }
                for (time, cap, epoch) in epochs {
                    let mut docs = 0;
                    let mut forward = Vec::new();
                    for version in epoch.versions {
                        let Some(envelope) = version.envelope else { continue };
                        let item = &envelope.item;
                        let subject = Subject { id: &item.doc_id, tenant: &item.tenant_id, is_doc: true };
                        if envelope.tombstone {
                            reporter.record(&subject, Status::Deleted, 1, None);
                        } else {
                            let started = reporter.started(&subject);
                            reporter.completed(&subject, started, 1);
                            docs += 1;
                        }
                        if spec.forward {
                            forward.push(envelope);
                        }
                    }
                    if spec.counts_progress {
                        shared.progress.docs.fetch_add(docs, std::sync::atomic::Ordering::Relaxed);
                    }
                    reporter.batch_completed(time, docs as usize, began.elapsed());
                    if !forward.is_empty() {
                        output.session(&cap).give_iterator(forward.into_iter());
                    }
                }
            }
        },
    )
}

/// A count update of either kind.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
enum Count {
    Edge((String, Edge), isize),
    Concept((String, String), isize),
}
