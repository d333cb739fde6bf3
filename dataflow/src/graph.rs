//! The plan, compiled: one timely operator per stage, wired as the plan's DAG.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use medkg_connectors::dead_letter::MAX_LETTERS_PER_RECORD;
use medkg_connectors::{DeadLetterSink, Position, RawPayload};
use medkg_operators::index::{Backends, ShardWriter};
use medkg_operators::{parse, ChunkedDocument, Document, StageError};
use medkg_topology::StageKind;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::{Capability, Concatenate, Operator, Probe};
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use medkg_connectors::ledger::{LedgerBuffer, Status};

use crate::models::StageEncoders;
use crate::stages::{dead_letter, StageConfig};
use crate::telemetry::{Subject, Watch};
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
type LedgerRef = Rc<RefCell<LedgerBuffer>>;

/// What a worker's dataflow is wired to besides its source.
pub(crate) struct Wiring<'a, 's> {
    pub ledger: &'a LedgerRef,
    /// On what enters the sinks.
    pub flow: &'a ProbeHandle<u64>,
    /// On what the sinks made durable.
    pub committed: &'a ProbeHandle<u64>,
    /// The IR-ready stream, when the pipeline has gates.
    pub ir: Option<StreamVec<'s, u64, RawPayload>>,
    /// Each gate's state, by the stage it follows.
    pub gates: &'a BTreeMap<usize, Rc<RefCell<crate::gate::GateState>>>,
}

/// Builds the plan's operators on `raw`; probes `flow` on what enters the
/// sinks and `committed` on what the sinks have made durable.
pub(crate) fn build<'s>(
    scope: Scope<'s, u64>,
    raw: StreamVec<'s, u64, RawPayload>,
    shared: &Arc<Shared>,
    letters: &Letters,
    wiring: Wiring<'_, 's>,
) {
    let Wiring { ledger, flow, committed, ir, gates } = wiring;
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
        let waits = matches!(stage.kind, StageKind::Fetch | StageKind::Download);
        let watch = Watch::new(&shared.telemetry, name, i, is_sink, waits, ledger);
        let ctx = Ctx { shared: shared.clone(), letters: letters.clone(), watch };
        let output = match (stage.kind, config) {
            (StageKind::Ingest, StageConfig::Ingest { max_record_bytes }) => {
                Flow::Raw(ingest(raws(scope, inputs), ctx, *max_record_bytes))
            }
            (StageKind::Download, StageConfig::Download(config, _)) => {
                Flow::Raw(crate::fetch::fetch_stage(scope, raws(scope, inputs), ctx, i, config.max_in_flight))
            }
            (StageKind::Fetch, StageConfig::Fetch(config)) => {
                Flow::Raw(crate::fetch::fetch_stage(scope, raws(scope, inputs), ctx, i, config.max_in_flight))
            }
            (StageKind::Parse, StageConfig::Parse(options)) => {
                let mut options = options.clone();
                options.default_tenant = shared.options.tenant.clone();
                Flow::Docs(parse_stage(raws(scope, inputs), ctx, options, is_sink))
            }
            (StageKind::Chunk, StageConfig::Chunk(chunker)) => {
                Flow::Chunks(chunk_stage(docs(scope, inputs), ctx, chunker.clone(), is_sink))
            }
            (StageKind::Embed, StageConfig::Embed(spec)) | (StageKind::Splade, StageConfig::Splade(spec)) => {
                // Both model stages are the same operator; the sessions differ.
                let input = chunks(scope, inputs);
                Flow::Chunks(encode_stage(scope, input, ctx, i, spec.max_batch_tokens, is_sink))
            }
            (StageKind::Index, StageConfig::Index { commit_interval, writer_memory_bytes, splade, dense }) => {
                let deletes = tombstones(raw.clone(), &shared.options.tenant);
                let input = scope.concatenate(vec![chunks(scope, inputs), deletes]).probe_with(flow);
                let backends = Backends { splade: *splade, dense: *dense };
                let out = index_stage(scope, input, ctx, *commit_interval, *writer_memory_bytes, backends, is_sink);
                Flow::Chunks(out.probe_with(committed))
            }
            (kind, _) => unreachable!("stage {} ({}) passed check_implemented but has no operator", name, kind.name()),
        };
        // A gate after this stage: its consumers read the joined stream.
        let output = match (gates.get(&i), output, &ir) {
            (Some(state), Flow::Raw(downloaded), Some(ir)) => {
                let gate_name = plan.gates.iter().find(|g| g.after == i).map_or("gate", |g| g.name.as_str());
                Flow::Raw(crate::gate::gate(downloaded, ir.clone(), gate_name, state.clone()))
            }
            (_, output, _) => output,
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

/// What every stage operator needs: the run, its dead-letter sink and the
/// stage's reporting.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub shared: Arc<Shared>,
    pub letters: Letters,
    pub watch: Watch,
}

impl Ctx {
    /// A raw payload as a subject: its key (a document id) or its position.
    pub fn subject_of<'a>(&'a self, payload: &'a RawPayload, position: &'a str) -> Subject<'a> {
        self.subject_named(payload, None, position)
    }

    /// A raw payload as a subject: the document id it names (a fetch
    /// record's `id`), else its key, else `fallback`.
    pub fn subject_named<'a>(
        &'a self,
        payload: &'a RawPayload,
        named: Option<&'a str>,
        fallback: &'a str,
    ) -> Subject<'a> {
        let id = named.or(payload.key.as_deref());
        // Outside text (a Kafka key or header, a record's id field) goes into
        // events, logs and the ledger: never more than an id's worth of it.
        Subject {
            id: bounded(id.unwrap_or(fallback)),
            tenant: bounded(payload.tenant.as_deref().unwrap_or(&self.shared.options.tenant)),
            is_doc: id.is_some(),
        }
    }

    /// Dead-letters `payload`: counted, reported (event, ledger, log) and
    /// written; an unwritable dead letter stops the run.
    pub fn fail(
        &self,
        payload: &RawPayload,
        subject: &Subject<'_>,
        began: Option<Instant>,
        attempts: u32,
        error: &StageError,
    ) {
        self.fail_nth(payload, subject, began, attempts, error, 0);
    }

    /// [`Ctx::fail`] for the `nth` failure (from 0) of one payload that
    /// holds several documents: only the first letter carries the payload's
    /// bytes, and past [`MAX_LETTERS_PER_RECORD`] failures are counted and
    /// reported but written as one letter at the end ([`Ctx::fail_rest`]).
    pub fn fail_nth(
        &self,
        payload: &RawPayload,
        subject: &Subject<'_>,
        began: Option<Instant>,
        attempts: u32,
        error: &StageError,
        nth: usize,
    ) {
        let shared = &self.shared;
        shared.progress.failed.fetch_add(1, Ordering::Relaxed);
        let telemetry = &shared.telemetry;
        telemetry
            .metrics
            .dead_letters
            .with_label_values(&[telemetry.pipeline.as_str(), &self.watch.stage, error.kind.as_str()])
            .inc();
        self.watch.failed(subject, began, attempts, error);
        if nth >= MAX_LETTERS_PER_RECORD {
            return;
        }
        let doc_id = subject.is_doc.then(|| subject.id.to_string());
        let letters = &mut self.letters.borrow_mut();
        if let Err(e) = dead_letter(letters, &self.watch.stage, payload, doc_id, error, nth == 0) {
            shared.fail(e);
        }
    }

    /// One letter for the failures of a payload past [`MAX_LETTERS_PER_RECORD`]
    /// (`failed` of them in all), so none goes unrecorded.
    pub fn fail_rest(&self, payload: &RawPayload, failed: usize) {
        if failed <= MAX_LETTERS_PER_RECORD {
            return;
        }
        let more = failed - MAX_LETTERS_PER_RECORD;
        let error = StageError::permanent(
            "more_failures",
            format!("{more} more documents of this payload failed ({failed} in all); their events and ledger entries name each"),
        );
        let letters = &mut self.letters.borrow_mut();
        if let Err(e) = dead_letter(letters, &self.watch.stage, payload, None, &error, false) {
            self.shared.fail(e);
        }
    }
}

/// At most the first [`medkg_operators::MAX_ID_BYTES`] bytes of `text` (at a character boundary).
fn bounded(text: &str) -> &str {
    &text[..text.floor_char_boundary(medkg_operators::MAX_ID_BYTES)]
}

/// A stateless stage: `logic` turns each record into any number of
/// outputs, emitted at the record's time. With a watch, each batch of
/// records is reported (batch granularity).
fn map_records<'s, I, O>(
    input: StreamVec<'s, u64, I>,
    name: &str,
    watch: Option<Watch>,
    mut logic: impl FnMut(I, &mut dyn FnMut(O)) + 'static,
) -> StreamVec<'s, u64, O>
where
    I: Clone + 'static,
    O: Clone + 'static,
{
    input.unary::<CapacityContainerBuilder<Vec<O>>, _, _, _>(Pipeline, name, move |_, _| {
        move |input, output| {
            input.for_each_stamp(|cap, data| {
                let began = Instant::now();
                let data: Vec<&mut Vec<I>> = data.collect();
                let count: usize = data.iter().map(|b| b.len()).sum();
                let epoch = cap.least().copied().unwrap_or_default();
                if let Some(watch) = &watch {
                    watch.batch_started(epoch, Some(count));
                }
                let mut session = output.session(&cap);
                for batch in data {
                    for record in batch.drain(..) {
                        logic(record, &mut |out| session.give(out));
                    }
                }
                if let Some(watch) = &watch {
                    watch.batch_completed(epoch, count, began.elapsed());
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
    map_records(raw, "tombstones", None, move |payload: RawPayload, emit| {
        let (true, Some(doc_id), Ok(())) = (payload.tombstone, payload.key.clone(), tombstone_ids(&payload)) else {
            return; // (parse dead-letters a tombstone with a bad id or tenant)
        };
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

/// Whether a tombstone's key and tenant header are a valid document and tenant id.
fn tombstone_ids(payload: &RawPayload) -> Result<(), StageError> {
    let key = payload.key.as_deref().unwrap_or_default();
    medkg_operators::check_doc_id(key)?;
    payload.tenant.as_deref().map_or(Ok(()), medkg_operators::check_tenant)
}

/// `ingest`: enforces the record size cap and passes payloads on.
fn ingest<'s>(
    input: StreamVec<'s, u64, RawPayload>,
    ctx: Ctx,
    max_record_bytes: usize,
) -> StreamVec<'s, u64, RawPayload> {
    let name = ctx.watch.stage.clone();
    map_records(input, &name, Some(ctx.watch.clone()), move |payload: RawPayload, emit| {
        let position = payload.position.to_string();
        let subject = ctx.subject_of(&payload, &position);
        let began = ctx.watch.started(&subject);
        if payload.bytes.len() > max_record_bytes {
            let error = StageError::permanent(
                "too_large",
                format!("record of {} bytes exceeds max_record_bytes ({max_record_bytes})", payload.bytes.len()),
            );
            ctx.fail(&payload, &subject, Some(began), 1, &error);
        } else {
            ctx.watch.completed(&subject, began, 1);
            emit(payload);
        }
    })
}

/// `parse`: payload → documents; failures are dead-lettered one by one.
fn parse_stage<'s>(
    input: StreamVec<'s, u64, RawPayload>,
    ctx: Ctx,
    options: parse::ParseOptions,
    is_sink: bool,
) -> StreamVec<'s, u64, Envelope<Document>> {
    let name = ctx.watch.stage.clone();
    map_records(input, &name, Some(ctx.watch.clone()), move |payload: RawPayload, emit| {
        if payload.tombstone {
            // Carried to the index by the tombstones stream, unless it cannot name a document.
            if let Err(error) = tombstone_ids(&payload) {
                let position = payload.position.to_string();
                let record = ctx.subject_of(&payload, &position);
                ctx.watch.started(&record);
                ctx.fail(&payload, &record, None, 1, &error);
            }
            return;
        }
        // Events name documents: `started` goes out once the document's id is known.
        let began = Instant::now();
        // A tenant the transport names (a Kafka `tenant_id` header) is the
        // documents' tenant; a record that names another is refused.
        let results = match payload.tenant.as_deref().map(|t| medkg_operators::check_tenant(t).map(|()| t)) {
            None => parse::parse(&options, &payload.bytes, payload.name.as_deref()),
            Some(Err(error)) => vec![Err(error)],
            Some(Ok(tenant)) => {
                let options = parse::ParseOptions { default_tenant: tenant.to_string(), ..options.clone() };
                let mismatch = |doc: &Document| {
                    let message = format!(
                        "document {} names tenant `{}` but its record's header says `{tenant}`",
                        doc.id, doc.tenant_id
                    );
                    StageError::permanent("tenant_mismatch", message)
                };
                parse::parse(&options, &payload.bytes, payload.name.as_deref())
                    .into_iter()
                    .map(|r| r.and_then(|doc| if doc.tenant_id == tenant { Ok(doc) } else { Err(mismatch(&doc)) }))
                    .collect()
            }
        };
        let mut failed = 0usize;
        for result in results {
            match result {
                Ok(doc) => {
                    let subject = Subject { id: &doc.id, tenant: &doc.tenant_id, is_doc: true };
                    ctx.watch.started(&subject);
                    ctx.watch.completed(&subject, began, 1);
                    if is_sink {
                        ctx.shared.progress.docs.fetch_add(1, Ordering::Relaxed);
                    }
                    emit(Envelope {
                        source: payload.source.clone(),
                        position: payload.position.clone(),
                        item: doc,
                        delete: false,
                    });
                }
                Err(error) => {
                    let position = payload.position.to_string();
                    let record = ctx.subject_of(&payload, &position);
                    ctx.watch.started(&record);
                    ctx.fail_nth(&payload, &record, Some(began), 1, &error, failed);
                    failed += 1;
                }
            }
        }
        ctx.fail_rest(&payload, failed);
    })
}

/// `chunk`: document → its chunks, travelling together.
fn chunk_stage<'s>(
    input: StreamVec<'s, u64, Envelope<Document>>,
    ctx: Ctx,
    chunker: medkg_operators::Chunker,
    is_sink: bool,
) -> StreamVec<'s, u64, Envelope<ChunkedDocument>> {
    let name = ctx.watch.stage.clone();
    map_records(input, &name, Some(ctx.watch.clone()), move |envelope: Envelope<Document>, emit| {
        let subject = Subject { id: &envelope.item.id, tenant: &envelope.item.tenant_id, is_doc: true };
        let began = ctx.watch.started(&subject);
        // A chunker bug must cost one document, not the worker.
        let chunked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| chunker.chunk(&envelope.item)));
        let Ok(chunked) = chunked else {
            let error = StageError::permanent("internal_error", format!("the chunker failed on {}", envelope.item.id));
            let payload = envelope_payload(&envelope.source, &envelope.position, &envelope.item.id, &envelope.item);
            ctx.fail(&payload, &subject, Some(began), 1, &error);
            return;
        };
        if chunked.chunks.is_empty() {
            // Nothing to index would mean silently losing the document.
            let error =
                StageError::permanent("empty_document", format!("document {} has no text to chunk", chunked.doc_id));
            let payload = envelope_payload(&envelope.source, &envelope.position, &chunked.doc_id, &envelope.item);
            ctx.fail(&payload, &subject, Some(began), 1, &error);
            return;
        }
        ctx.watch.completed(&subject, began, 1);
        if is_sink {
            ctx.shared.progress.docs.fetch_add(1, Ordering::Relaxed);
            ctx.shared.progress.chunks.fetch_add(chunked.chunks.len() as u64, Ordering::Relaxed);
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
fn encode_stage<'s>(
    scope: Scope<'s, u64>,
    input: StreamVec<'s, u64, Envelope<ChunkedDocument>>,
    ctx: Ctx,
    stage: usize,
    max_batch_tokens: usize,
    is_sink: bool,
) -> StreamVec<'s, u64, Envelope<ChunkedDocument>> {
    /// Encode early once a stash holds this many batches' worth of tokens.
    const FLUSH_BATCHES: usize = 4;
    let shared = ctx.shared.clone();
    let name = ctx.watch.stage.clone();
    let operator_name = name.to_string();
    let worker = scope.index();
    input.unary_frontier::<CapacityContainerBuilder<Vec<Envelope<ChunkedDocument>>>, _, _, _>(
        Pipeline,
        &operator_name,
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
                    let watch = &ctx.watch;
                    let count = docs.len();
                    watch.batch_started(time, Some(count));
                    let began = Instant::now();
                    for d in &docs {
                        watch.started(&Subject { id: &d.item.doc_id, tenant: &d.item.tenant_id, is_doc: true });
                    }
                    let encoded = match encode_docs(&shared, stage, worker, docs, max_batch_tokens) {
                        Ok(encoded) => encoded,
                        Err(e) => {
                            shared.fail(format!("stage `{name}`: {e}"));
                            return;
                        }
                    };
                    watch.observe(began.elapsed());
                    watch.batch_completed(time, count, began.elapsed());
                    let mut session = output.session(&cap);
                    for result in encoded {
                        match result {
                            Ok(envelope) => {
                                let item = &envelope.item;
                                watch.completed(
                                    &Subject { id: &item.doc_id, tenant: &item.tenant_id, is_doc: true },
                                    began,
                                    1,
                                );
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
                                let item = &envelope.item;
                                let subject = Subject { id: &item.doc_id, tenant: &item.tenant_id, is_doc: true };
                                ctx.fail(&payload, &subject, Some(began), 1, &error);
                            }
                        }
                    }
                }
            }
        },
    )
}

/// An epoch's writes at the index: documents, chunks, the documents to
/// forward, and (tenant, document, deleted, when written) to report.
type Written = (u64, u64, Vec<Envelope<ChunkedDocument>>, Vec<(String, String, bool, Instant)>);

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
fn index_stage<'s>(
    scope: Scope<'s, u64>,
    input: StreamVec<'s, u64, Envelope<ChunkedDocument>>,
    ctx: Ctx,
    commit_interval: Duration,
    writer_memory_bytes: usize,
    backends: Backends,
    forward: bool,
) -> StreamVec<'s, u64, Envelope<ChunkedDocument>> {
    let shared = ctx.shared.clone();
    let watch = ctx.watch.clone();
    let name = watch.stage.clone();
    let layout = shared.layout.clone();
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
            // What was written per epoch: (documents, chunks), if forwarding the
            // documents, and what to report once durable.
            let mut written: BTreeMap<u64, Written> = BTreeMap::new();
            let mut dirty = false;
            let mut last_commit = Instant::now();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    if let Some(held) = cap.retain_least(0) {
                        pending.entry(time).or_insert(held);
                    }
                    if !written.contains_key(&time) {
                        watch.batch_started(time, None);
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
                            let item = &envelope.item;
                            let subject = Subject { id: &item.doc_id, tenant: &item.tenant_id, is_doc: true };
                            let began = watch.started(&subject);
                            entry.3.push((item.tenant_id.clone(), item.doc_id.clone(), envelope.delete, began));
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
                // This worker's dead letters of the passed epochs were written
                // before them (its upstream stages finished them): make them
                // durable too, before the source may move past them.
                if let Err(e) = ctx.letters.borrow_mut().sync() {
                    shared.fail(format!("cannot sync the dead letters: {e}"));
                    return;
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
                    if let Some((docs, chunk_count, done, reports)) = written.remove(&time) {
                        shared.progress.docs.fetch_add(docs, Ordering::Relaxed);
                        shared.progress.chunks.fetch_add(chunk_count, Ordering::Relaxed);
                        watch.batch_completed(time, reports.len(), last_commit.elapsed());
                        for (tenant, doc_id, deleted, began) in reports {
                            let subject = Subject { id: &doc_id, tenant: &tenant, is_doc: true };
                            if deleted {
                                watch.record(&subject, Status::Deleted, 1, None);
                            } else {
                                watch.completed(&subject, began, 1);
                            }
                        }
                        if !done.is_empty() {
                            output.session(&cap).give_iterator(done.into_iter());
                        }
                    }
                }
            }
        },
    )
}
