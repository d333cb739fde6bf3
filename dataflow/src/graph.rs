//! The plan, compiled: one timely operator per stage, wired as the plan's DAG.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use medkg_connectors::{DeadLetterSink, Position, RawPayload};
use medkg_operators::index::{Backends, ShardWriter};
use medkg_operators::{parse, ChunkedDocument, Document, StageError};
use medkg_topology::StageKind;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::{Capability, Concatenate, Operator, Probe};
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use crate::models::StageEncoders;
use crate::stages::{dead_letter, StageConfig};
use crate::Shared;

/// A record on its way through the graph, with where it came from (for
/// dead letters downstream of the source).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    pub source: String,
    pub position: Position,
    pub item: T,
    /// A tombstone: delete the document `item` names (its chunks are empty).
    #[serde(default)]
    pub delete: bool,
}

/// The stream out of a stage, by what flows in it.
#[derive(Clone)]
enum Flow<'s> {
    Raw(StreamVec<'s, u64, RawPayload>),
    Docs(StreamVec<'s, u64, Envelope<Document>>),
    Chunks(StreamVec<'s, u64, Envelope<ChunkedDocument>>),
}

impl Flow<'_> {
    /// Attaches a probe to the stream.
    fn probe(&self, handle: &ProbeHandle<u64>) {
        match self {
            Flow::Raw(s) => drop(s.clone().probe_with(handle)),
            Flow::Docs(s) => drop(s.clone().probe_with(handle)),
            Flow::Chunks(s) => drop(s.clone().probe_with(handle)),
        }
    }
}

type Letters = Rc<RefCell<DeadLetterSink>>;

/// Builds the plan's operators on `raw`; probes `flow` on what enters the
/// sinks and `committed` on what the sinks have made durable.
pub(crate) fn build<'s>(
    scope: Scope<'s, u64>,
    raw: StreamVec<'s, u64, RawPayload>,
    shared: &Arc<Shared>,
    letters: &Letters,
    flow: &ProbeHandle<u64>,
    committed: &ProbeHandle<u64>,
) {
    let plan = &shared.options.plan;
    let mut outputs: Vec<Flow<'s>> = Vec::with_capacity(plan.stages.len());
    for (i, stage) in plan.stages.iter().enumerate() {
        let inputs: Vec<Flow<'s>> = if stage.inputs.is_empty() {
            vec![Flow::Raw(raw.clone())]
        } else {
            stage.inputs.iter().map(|&j| outputs[j].clone()).collect()
        };
        let is_sink = plan.consumers_of(i).is_empty();
        let config = &shared.settings.stages[i];
        let name = stage.name.as_str();
        let output = match (stage.kind, config) {
            (StageKind::Ingest, StageConfig::Ingest { max_record_bytes }) => {
                Flow::Raw(ingest(raws(scope, inputs), name, *max_record_bytes, shared, letters))
            }
            (StageKind::Parse, StageConfig::Parse(options)) => {
                let mut options = options.clone();
                options.default_tenant = shared.options.tenant.clone();
                Flow::Docs(parse_stage(raws(scope, inputs), name, options, shared, letters, is_sink))
            }
            (StageKind::Chunk, StageConfig::Chunk(chunker)) => {
                Flow::Chunks(chunk_stage(docs(scope, inputs), name, chunker.clone(), shared, letters, is_sink))
            }
            (StageKind::Embed, StageConfig::Embed(spec)) | (StageKind::Splade, StageConfig::Splade(spec)) => {
                // Both model stages are the same operator; the sessions differ.
                let input = chunks(scope, inputs);
                Flow::Chunks(encode_stage(scope, input, name, i, spec.max_batch_tokens, shared, letters, is_sink))
            }
            (StageKind::Index, StageConfig::Index { commit_interval, writer_memory_bytes, splade, dense }) => {
                let deletes = tombstones(raw.clone(), &shared.options.tenant);
                let input = scope.concatenate(vec![chunks(scope, inputs), deletes]).probe_with(flow);
                let backends = Backends { splade: *splade, dense: *dense };
                let out =
                    index_stage(scope, input, name, *commit_interval, *writer_memory_bytes, backends, shared, is_sink);
                Flow::Chunks(out.probe_with(committed))
            }
            (kind, _) => unreachable!("stage {} ({}) passed check_implemented but has no operator", name, kind.name()),
        };
        if is_sink && stage.kind != StageKind::Index {
            // A sink that is not an index is durable as soon as it has run.
            output.probe(flow);
            output.probe(committed);
        }
        outputs.push(output);
    }
}

/// Concatenates a stage's inputs, all of one kind (the topology checked it).
fn concat<'s, D: Clone + 'static>(
    scope: Scope<'s, u64>,
    inputs: Vec<Flow<'s>>,
    pick: fn(Flow<'s>) -> Option<StreamVec<'s, u64, D>>,
) -> StreamVec<'s, u64, D> {
    let streams: Vec<_> = inputs.into_iter().map(|f| pick(f).expect("the topology checked stream types")).collect();
    scope.concatenate(streams)
}

fn raws<'s>(scope: Scope<'s, u64>, inputs: Vec<Flow<'s>>) -> StreamVec<'s, u64, RawPayload> {
    concat(scope, inputs, |f| match f {
        Flow::Raw(s) => Some(s),
        _ => None,
    })
}

fn docs<'s>(scope: Scope<'s, u64>, inputs: Vec<Flow<'s>>) -> StreamVec<'s, u64, Envelope<Document>> {
    concat(scope, inputs, |f| match f {
        Flow::Docs(s) => Some(s),
        _ => None,
    })
}

fn chunks<'s>(scope: Scope<'s, u64>, inputs: Vec<Flow<'s>>) -> StreamVec<'s, u64, Envelope<ChunkedDocument>> {
    concat(scope, inputs, |f| match f {
        Flow::Chunks(s) => Some(s),
        _ => None,
    })
}

/// A stateless stage: `logic` turns each record into any number of
/// outputs, emitted at the record's time.
fn map_records<'s, I, O>(
    input: StreamVec<'s, u64, I>,
    name: &str,
    mut logic: impl FnMut(I, &mut dyn FnMut(O)) + 'static,
) -> StreamVec<'s, u64, O>
where
    I: Clone + 'static,
    O: Clone + 'static,
{
    input.unary::<CapacityContainerBuilder<Vec<O>>, _, _, _>(Pipeline, name, move |_, _| {
        move |input, output| {
            input.for_each_stamp(|cap, data| {
                let mut session = output.session(&cap);
                for batch in data {
                    for record in batch.drain(..) {
                        logic(record, &mut |out| session.give(out));
                    }
                }
            });
        }
    })
}

/// Kafka tombstones (a key, no value) as deletions for the index stages.
/// They skip parse, chunk and the models; the index orders them against
/// upserts of the same document by source position.
fn tombstones<'s>(raw: StreamVec<'s, u64, RawPayload>, tenant: &str) -> StreamVec<'s, u64, Envelope<ChunkedDocument>> {
    let tenant = tenant.to_string();
    map_records(raw, "tombstones", move |payload: RawPayload, emit| {
        let (true, Some(doc_id)) = (payload.tombstone, payload.key.clone()) else { return };
        emit(Envelope {
            item: ChunkedDocument {
                doc_id,
                tenant_id: payload.tenant.clone().unwrap_or_else(|| tenant.clone()),
                // Never stored: a deletion only names the document.
                source: medkg_operators::SourceKind::Pubmed,
                title: String::new(),
                content_hash: 0,
                chunks: Vec::new(),
            },
            source: payload.source,
            position: payload.position,
            delete: true,
        });
    })
}

/// Records a failed record; an unwritable dead letter stops the run.
fn fail(
    shared: &Shared,
    letters: &Letters,
    stage: &str,
    payload: &RawPayload,
    doc_id: Option<String>,
    error: &StageError,
) {
    shared.progress.failed.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = dead_letter(&mut letters.borrow_mut(), stage, payload, doc_id, error) {
        shared.fail(e);
    }
}

/// `ingest`: enforces the record size cap and passes payloads on.
fn ingest<'s>(
    input: StreamVec<'s, u64, RawPayload>,
    name: &str,
    max_record_bytes: usize,
    shared: &Arc<Shared>,
    letters: &Letters,
) -> StreamVec<'s, u64, RawPayload> {
    let (shared, letters, stage) = (shared.clone(), letters.clone(), name.to_string());
    map_records(input, name, move |payload: RawPayload, emit| {
        if payload.bytes.len() > max_record_bytes {
            let error = StageError::permanent(
                "too_large",
                format!("record of {} bytes exceeds max_record_bytes ({max_record_bytes})", payload.bytes.len()),
            );
            fail(&shared, &letters, &stage, &payload, None, &error);
        } else {
            emit(payload);
        }
    })
}

/// `parse`: payload → documents; failures are dead-lettered one by one.
fn parse_stage<'s>(
    input: StreamVec<'s, u64, RawPayload>,
    name: &str,
    options: parse::ParseOptions,
    shared: &Arc<Shared>,
    letters: &Letters,
    is_sink: bool,
) -> StreamVec<'s, u64, Envelope<Document>> {
    let (shared, letters, stage) = (shared.clone(), letters.clone(), name.to_string());
    map_records(input, name, move |payload: RawPayload, emit| {
        if payload.tombstone {
            return; // carried to the index by the tombstones stream
        }
        for result in parse::parse(&options, &payload.bytes, payload.name.as_deref()) {
            match result {
                Ok(doc) => {
                    if is_sink {
                        shared.progress.docs.fetch_add(1, Ordering::Relaxed);
                    }
                    emit(Envelope {
                        source: payload.source.clone(),
                        position: payload.position.clone(),
                        item: doc,
                        delete: false,
                    });
                }
                Err(error) => fail(&shared, &letters, &stage, &payload, payload.key.clone(), &error),
            }
        }
    })
}

/// `chunk`: document → its chunks, travelling together.
fn chunk_stage<'s>(
    input: StreamVec<'s, u64, Envelope<Document>>,
    name: &str,
    chunker: medkg_operators::Chunker,
    shared: &Arc<Shared>,
    letters: &Letters,
    is_sink: bool,
) -> StreamVec<'s, u64, Envelope<ChunkedDocument>> {
    let (shared, letters, stage) = (shared.clone(), letters.clone(), name.to_string());
    map_records(input, name, move |envelope: Envelope<Document>, emit| {
        let chunked = chunker.chunk(&envelope.item);
        if chunked.chunks.is_empty() {
            // Nothing to index would mean silently losing the document.
            let error =
                StageError::permanent("empty_document", format!("document {} has no text to chunk", chunked.doc_id));
            let payload = envelope_payload(&envelope.source, &envelope.position, &chunked.doc_id, &envelope.item);
            fail(&shared, &letters, &stage, &payload, Some(chunked.doc_id), &error);
            return;
        }
        if is_sink {
            shared.progress.docs.fetch_add(1, Ordering::Relaxed);
            shared.progress.chunks.fetch_add(chunked.chunks.len() as u64, Ordering::Relaxed);
        }
        emit(Envelope { source: envelope.source, position: envelope.position, item: chunked, delete: false });
    })
}

/// A dead-letter payload for something past parsing: its IR as JSON.
fn envelope_payload(source: &str, position: &Position, doc_id: &str, item: &impl Serialize) -> RawPayload {
    RawPayload {
        source: source.to_string(),
        key: Some(doc_id.to_string()),
        bytes: serde_json::to_vec(item).unwrap_or_default(),
        name: None,
        position: position.clone(),
        tombstone: false,
        tenant: None,
    }
}

/// A model stage (`embed`, `splade`): stashes chunked documents per epoch
/// and encodes them in token-budget batches when the input frontier has
/// passed the epoch (no chunk waits for a timer behind a closed epoch) or
/// when the stash holds several batches' worth of tokens already.
#[allow(clippy::too_many_arguments)]
fn encode_stage<'s>(
    scope: Scope<'s, u64>,
    input: StreamVec<'s, u64, Envelope<ChunkedDocument>>,
    name: &str,
    stage: usize,
    max_batch_tokens: usize,
    shared: &Arc<Shared>,
    letters: &Letters,
    is_sink: bool,
) -> StreamVec<'s, u64, Envelope<ChunkedDocument>> {
    /// Encode early once a stash holds this many batches' worth of tokens.
    const FLUSH_BATCHES: usize = 4;
    let (shared, letters, name_owned) = (shared.clone(), letters.clone(), name.to_string());
    let worker = scope.index();
    input.unary_frontier::<CapacityContainerBuilder<Vec<Envelope<ChunkedDocument>>>, _, _, _>(
        Pipeline,
        name,
        move |_, _| {
            let mut stash: BTreeMap<u64, Stash> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    let Some(held) = cap.retain_least(0) else {
                        return;
                    };
                    let entry = stash.entry(time).or_insert_with(|| (held, Vec::new(), 0));
                    for batch in data {
                        for envelope in batch.drain(..) {
                            // About four characters a token, plus [CLS] and [SEP].
                            entry.2 += envelope
                                .item
                                .chunks
                                .iter()
                                .map(|c| (c.text.len() + envelope.item.title.len()) / 4 + 2)
                                .sum::<usize>();
                            entry.1.push(envelope);
                        }
                    }
                });
                let ready: Vec<u64> = stash
                    .iter()
                    .filter(|(t, (_, _, tokens))| {
                        !frontier.less_equal(t) || *tokens >= FLUSH_BATCHES * max_batch_tokens
                    })
                    .map(|(t, _)| *t)
                    .collect();
                for time in ready {
                    let Some((cap, docs, _)) = stash.remove(&time) else {
                        continue;
                    };
                    let encoded = match encode_docs(&shared, stage, worker, docs, max_batch_tokens) {
                        Ok(encoded) => encoded,
                        Err(e) => {
                            shared.fail(format!("stage `{name_owned}`: {e}"));
                            return;
                        }
                    };
                    let mut session = output.session(&cap);
                    for result in encoded {
                        match result {
                            Ok(envelope) => {
                                if is_sink {
                                    shared.progress.docs.fetch_add(1, Ordering::Relaxed);
                                    shared
                                        .progress
                                        .chunks
                                        .fetch_add(envelope.item.chunks.len() as u64, Ordering::Relaxed);
                                }
                                session.give(envelope);
                            }
                            Err(failed) => {
                                let (envelope, error) = *failed;
                                let payload = envelope_payload(
                                    &envelope.source,
                                    &envelope.position,
                                    &envelope.item.doc_id,
                                    &envelope.item,
                                );
                                fail(
                                    &shared,
                                    &letters,
                                    &name_owned,
                                    &payload,
                                    Some(envelope.item.doc_id.clone()),
                                    &error,
                                );
                            }
                        }
                    }
                }
            }
        },
    )
}

/// An epoch's documents waiting for a model: its capability, the
/// documents, and an estimate of their tokens.
type Stash = (Capability<u64>, Vec<Envelope<ChunkedDocument>>, usize);

/// A document with its vectors, or the document and why the model refused it.
type Encoded = Result<Envelope<ChunkedDocument>, Box<(Envelope<ChunkedDocument>, StageError)>>;

/// Encodes every chunk of `docs` with the stage's model (worker's own
/// session). A document whose text the model refuses (a permanent error)
/// fails alone; an unavailable model fails the run.
fn encode_docs(
    shared: &Shared,
    stage: usize,
    worker: usize,
    mut docs: Vec<Envelope<ChunkedDocument>>,
    max_batch_tokens: usize,
) -> Result<Vec<Encoded>, StageError> {
    let texts: Vec<String> =
        docs.iter().flat_map(|d| d.item.chunks.iter().map(|c| c.model_text(&d.item.title))).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let attempt = match &shared.encoders[stage] {
        StageEncoders::Dense(sessions) => sessions[worker]
            .encode_many(&refs, max_batch_tokens)
            .map(|v| v.into_iter().map(Vector::Dense).collect::<Vec<_>>()),
        StageEncoders::Splade(sessions) => sessions[worker]
            .encode_many(&refs, max_batch_tokens)
            .map(|v| v.into_iter().map(Vector::Sparse).collect::<Vec<_>>()),
        StageEncoders::None => unreachable!("stage {stage} is a model stage without sessions"),
    };
    match attempt {
        Ok(vectors) => {
            let mut vectors = vectors.into_iter();
            for doc in &mut docs {
                for chunk in &mut doc.item.chunks {
                    if let Some(v) = vectors.next() {
                        v.assign(chunk);
                    }
                }
            }
            Ok(docs.into_iter().map(Ok).collect())
        }
        // One bad text must not cost the whole batch: retry document by document.
        Err(e) if e.class == medkg_operators::ErrorClass::Permanent && docs.len() > 1 => Ok(docs
            .into_iter()
            .flat_map(|doc| match encode_docs(shared, stage, worker, vec![doc.clone()], max_batch_tokens) {
                Ok(results) => results,
                Err(e) => vec![Err(Box::new((doc, e)))],
            })
            .collect()),
        Err(e) if e.class == medkg_operators::ErrorClass::Permanent => {
            Ok(docs.into_iter().map(|d| Err(Box::new((d, e.clone())))).collect())
        }
        Err(e) => Err(e),
    }
}

/// A model's output for one chunk.
enum Vector {
    Dense(Vec<f32>),
    Sparse(medkg_operators::models::SparseVector),
}

impl Vector {
    fn assign(self, chunk: &mut medkg_operators::Chunk) {
        match self {
            Vector::Dense(v) => chunk.dense = Some(v),
            Vector::Sparse(v) => chunk.sparse = Some(v),
        }
    }
}

/// `index`: upserts each document into its shard as it arrives, holds a
/// capability for every epoch written but not committed, and commits when
/// the input frontier has passed such epochs (at most once per
/// `commit_interval`, and always when the input ends). What it emits, at
/// the time of its epoch, are the documents it has made durable.
#[allow(clippy::too_many_arguments)]
fn index_stage<'s>(
    scope: Scope<'s, u64>,
    input: StreamVec<'s, u64, Envelope<ChunkedDocument>>,
    name: &str,
    commit_interval: Duration,
    writer_memory_bytes: usize,
    backends: Backends,
    shared: &Arc<Shared>,
    forward: bool,
) -> StreamVec<'s, u64, Envelope<ChunkedDocument>> {
    let shared = shared.clone();
    let layout = shared.layout.clone();
    let route = layout.clone();
    let exchange = Exchange::new(move |e: &Envelope<ChunkedDocument>| u64::from(route.shard_of(&e.item.doc_id)));
    input.unary_frontier::<CapacityContainerBuilder<Vec<Envelope<ChunkedDocument>>>, _, _, _>(
        exchange,
        name,
        move |_, info| {
            let activator = scope.activator_for(info.address.clone());
            let mut shards: BTreeMap<u32, ShardWriter> = BTreeMap::new();
            // Per document key: the source position (partition, offset) and epoch last applied.
            let mut latest: HashMap<String, ((Option<i32>, u64), u64)> = HashMap::new();
            // Epochs written and not yet committed, with a capability for each.
            let mut pending: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            // What was written per epoch: (documents, chunks) and, if forwarding, the documents.
            let mut written: BTreeMap<u64, (u64, u64, Vec<Envelope<ChunkedDocument>>)> = BTreeMap::new();
            let mut dirty = false;
            let mut last_commit = Instant::now();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    if let Some(held) = cap.retain_least(0) {
                        pending.entry(time).or_insert(held);
                    }
                    let entry = written.entry(time).or_default();
                    for batch in data {
                        for envelope in batch.drain(..) {
                            let shard_no = layout.shard_of(&envelope.item.doc_id);
                            let shard = match shards.entry(shard_no) {
                                std::collections::btree_map::Entry::Occupied(s) => s.into_mut(),
                                std::collections::btree_map::Entry::Vacant(slot) => {
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
                            let key = medkg_operators::doc_key(&envelope.item.tenant_id, &envelope.item.doc_id);
                            let at = (envelope.position.partition, envelope.position.ordinal);
                            if let Some(&(seen, _)) = latest.get(&key) {
                                if seen.0 == at.0 && seen.1 > at.1 {
                                    continue;
                                }
                            }
                            latest.insert(key, (at, time));
                            let written = if envelope.delete {
                                shard.delete(&envelope.item.tenant_id, &envelope.item.doc_id);
                                Ok(())
                            } else {
                                shard.upsert(&envelope.item)
                            };
                            if let Err(e) = written {
                                shared.fail(format!("shard {shard_no}: {e}"));
                                return;
                            }
                            dirty = true;
                            if !envelope.delete {
                                entry.0 += 1;
                                entry.1 += envelope.item.chunks.len() as u64;
                            }
                            if forward {
                                entry.2.push(envelope);
                            }
                        }
                    }
                });

                let passed: BTreeSet<u64> = pending.keys().copied().filter(|t| !frontier.less_equal(t)).collect();
                if passed.is_empty() {
                    return;
                }
                let waited = last_commit.elapsed();
                if dirty && waited < commit_interval && !frontier.is_empty() {
                    activator.activate_after(commit_interval - waited);
                    return;
                }
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
                // Everything written so far is durable: release what the frontier passed.
                // Nothing older than the frontier can arrive any more: forget it.
                if let Some(oldest) = frontier.frontier().first().copied() {
                    latest.retain(|_, (_, epoch)| *epoch >= oldest);
                } else {
                    latest.clear();
                }
                for time in passed {
                    let cap = pending.remove(&time).expect("time came from pending");
                    if let Some((docs, chunk_count, done)) = written.remove(&time) {
                        shared.progress.docs.fetch_add(docs, Ordering::Relaxed);
                        shared.progress.chunks.fetch_add(chunk_count, Ordering::Relaxed);
                        if !done.is_empty() {
                            output.session(&cap).give_iterator(done.into_iter());
                        }
                    }
                }
            }
        },
    )
}
