//! The stateless stages (`ingest`, `parse`, `chunk`) and the one operator
//! loop they share.
//!
//! A stateless stage is a function from one record to any number of
//! outputs and failures. [`stateless`] runs it as a timely operator and
//! does the reporting every such stage owes, so the stage itself does not:
//! a batch `started`/`completed` per timestamp (batch granularity), and per
//! output a `started`/`completed` pair (document granularity, ledger),
//! sink progress, and per failure a dead letter numbered within its
//! record (only the first keeps the record's bytes; past the cap, one
//! summary letter).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use medkg_connectors::dead_letter::MAX_LETTERS_PER_RECORD;
use medkg_connectors::RawPayload;
use medkg_operators::extract::{Extraction, Extractor};
use medkg_operators::{check_doc_id, check_tenant, parse, ChunkedDocument, Chunker, Document, StageError};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Operator;
use timely::dataflow::StreamVec;

use super::ctx::Ctx;
use super::envelope::Envelope;
use crate::telemetry::Subject;

/// What a stage's outputs report as.
pub(crate) trait Reported {
    /// Calls `f` with the subject this output is reported as.
    fn with_subject<R>(&self, ctx: &Ctx, f: impl FnOnce(&Subject<'_>) -> R) -> R;
    /// The chunks it carries (counted at a sink).
    fn chunk_count(&self) -> u64 {
        0
    }
}

impl Reported for RawPayload {
    fn with_subject<R>(&self, ctx: &Ctx, f: impl FnOnce(&Subject<'_>) -> R) -> R {
        let position = self.position.to_string();
        f(&ctx.subject_of(self, &position))
    }
}

impl Reported for Envelope<Document> {
    fn with_subject<R>(&self, _: &Ctx, f: impl FnOnce(&Subject<'_>) -> R) -> R {
        f(&Subject { id: &self.item.id, tenant: &self.item.tenant_id, is_doc: true })
    }
}

impl Reported for Envelope<Extraction> {
    fn with_subject<R>(&self, _: &Ctx, f: impl FnOnce(&Subject<'_>) -> R) -> R {
        f(&Subject { id: &self.item.doc_id, tenant: &self.item.tenant_id, is_doc: true })
    }
}

impl Reported for Envelope<ChunkedDocument> {
    fn with_subject<R>(&self, _: &Ctx, f: impl FnOnce(&Subject<'_>) -> R) -> R {
        f(&Subject { id: &self.item.doc_id, tenant: &self.item.tenant_id, is_doc: true })
    }

    fn chunk_count(&self) -> u64 {
        self.item.chunks.len() as u64
    }
}

/// How a stateless stage hands on what one record became.
pub(crate) struct Emit<'a, O> {
    ctx: &'a Ctx,
    is_sink: bool,
    /// When the record was taken up.
    began: Instant,
    /// Failures of this record so far.
    failed: usize,
    /// The record (without its bytes) once its failures pass the letter cap.
    rest: Option<RawPayload>,
    give: &'a mut dyn FnMut(O),
}

impl<O: Reported> Emit<'_, O> {
    /// Passes `out` on, reported as started and completed by this stage.
    pub fn ok(&mut self, out: O) {
        let reporter = &self.ctx.reporter;
        out.with_subject(self.ctx, |subject| {
            reporter.started(subject);
            reporter.completed(subject, self.began, 1);
        });
        if self.is_sink {
            let progress = &self.ctx.shared.progress;
            progress.docs.fetch_add(1, Ordering::Relaxed);
            progress.chunks.fetch_add(out.chunk_count(), Ordering::Relaxed);
        }
        (self.give)(out);
    }

    /// Dead-letters `payload` (the record, or what it had become) for
    /// `subject`: reported as started and failed.
    pub fn fail(&mut self, payload: &RawPayload, subject: &Subject<'_>, error: &StageError) {
        self.ctx.reporter.started(subject);
        self.ctx.fail_nth(payload, subject, Some(self.began), 1, error, self.failed);
        if self.failed == MAX_LETTERS_PER_RECORD {
            self.rest = Some(without_bytes(payload));
        }
        self.failed += 1;
    }
}

/// Makes one worker's instance of a stateless stage's logic (each worker
/// has its own, so the logic may keep state of its own).
pub(crate) type Factory<I, O> = Arc<dyn Fn() -> Box<dyn FnMut(I, &mut Emit<'_, O>)> + Send + Sync>;

/// A stateless stage, by what it reads and what it emits. The graph has
/// one arm per shape, so a new stateless stage of a known shape is a
/// function in this folder plus one line that makes its `Records` (a new
/// shape adds a variant here and its arm in the graph).
#[derive(Clone)]
pub(crate) enum Records {
    /// Raw payloads in and out (`ingest`).
    RawToRaw(Factory<RawPayload, RawPayload>),
    /// Raw payloads to documents (`parse`).
    RawToDocs(Factory<RawPayload, Envelope<Document>>),
    /// Documents to chunked documents (`chunk`).
    DocsToChunks(Factory<Envelope<Document>, Envelope<ChunkedDocument>>),
    /// Chunked documents to their entities and claims (`extract`).
    ChunksToEntities(Factory<Envelope<ChunkedDocument>, Envelope<Extraction>>),
}

/// Wraps a logic maker as a [`Factory`].
pub(crate) fn factory<I: 'static, O: 'static, L>(make: impl Fn() -> L + Send + Sync + 'static) -> Factory<I, O>
where
    L: FnMut(I, &mut Emit<'_, O>) + 'static,
{
    Arc::new(move || Box::new(make()))
}

/// `payload` without its bytes (all a summary letter needs).
fn without_bytes(payload: &RawPayload) -> RawPayload {
    RawPayload {
        source: payload.source.clone(),
        key: payload.key.clone(),
        bytes: Vec::new(),
        name: payload.name.clone(),
        position: payload.position.clone(),
        tombstone: payload.tombstone,
        tenant: payload.tenant.clone(),
    }
}

/// Runs a stateless stage: `logic` turns each record into outputs and
/// failures through its [`Emit`], at the record's time.
pub(crate) fn stateless<'s, I, O>(
    input: StreamVec<'s, u64, I>,
    ctx: Ctx,
    is_sink: bool,
    mut logic: impl FnMut(I, &mut Emit<'_, O>) + 'static,
) -> StreamVec<'s, u64, O>
where
    I: Clone + 'static,
    O: Reported + Clone + 'static,
{
    let name = ctx.reporter.stage.to_string();
    input.unary::<CapacityContainerBuilder<Vec<O>>, _, _, _>(Pipeline, &name, move |_, _| {
        move |input, output| {
            input.for_each_stamp(|cap, data| {
                let began = Instant::now();
                let data: Vec<&mut Vec<I>> = data.collect();
                let count: usize = data.iter().map(|b| b.len()).sum();
                let epoch = cap.least().copied().unwrap_or_default();
                ctx.reporter.batch_started(epoch, Some(count));
                let mut session = output.session(&cap);
                let mut give = |out: O| session.give(out);
                for batch in data {
                    for record in batch.drain(..) {
                        let mut emit =
                            Emit { ctx: &ctx, is_sink, began: Instant::now(), failed: 0, rest: None, give: &mut give };
                        logic(record, &mut emit);
                        let (failed, rest) = (emit.failed, emit.rest);
                        if let Some(rest) = rest {
                            ctx.fail_rest(&rest, failed);
                        }
                    }
                }
                ctx.reporter.batch_completed(epoch, count, began.elapsed());
            });
        }
    })
}

/// `ingest`: enforces the record size cap and passes payloads on.
pub(crate) fn ingest(max_record_bytes: usize) -> impl FnMut(RawPayload, &mut Emit<'_, RawPayload>) {
    move |payload, emit| {
        if payload.bytes.len() > max_record_bytes {
            let error = StageError::permanent(
                "too_large",
                format!("record of {} bytes exceeds max_record_bytes ({max_record_bytes})", payload.bytes.len()),
            );
            fail_record(emit, &payload, &error);
        } else {
            emit.ok(payload);
        }
    }
}

/// Dead-letters a record as itself (its key, else its position).
pub(crate) fn fail_record<O: Reported>(emit: &mut Emit<'_, O>, payload: &RawPayload, error: &StageError) {
    let position = payload.position.to_string();
    let ctx = emit.ctx;
    emit.fail(payload, &ctx.subject_of(payload, &position), error);
}

/// `parse`: payload → documents; failures are dead-lettered one by one.
/// A tenant the transport names (a Kafka `tenant_id` header) is the
/// documents' tenant; a record that names another is refused.
pub(crate) fn parse(options: parse::ParseOptions) -> impl FnMut(RawPayload, &mut Emit<'_, Envelope<Document>>) {
    move |payload, emit| {
        if payload.tombstone {
            // Carried to the index by the tombstones stream, unless it cannot name a document.
            if let Err(error) = tombstone_ids(&payload) {
                fail_record(emit, &payload, &error);
            }
            return;
        }
        let results = match payload.tenant.as_deref().map(|t| check_tenant(t).map(|()| t)) {
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
        for result in results {
            match result {
                Ok(doc) => emit.ok(Envelope {
                    source: payload.source.clone(),
                    position: payload.position.clone(),
                    item: doc,
                    tombstone: false,
                }),
                Err(error) => fail_record(emit, &payload, &error),
            }
        }
    }
}

/// `chunk`: document → its chunks, travelling together.
pub(crate) fn chunk(chunker: Chunker) -> impl FnMut(Envelope<Document>, &mut Emit<'_, Envelope<ChunkedDocument>>) {
    move |envelope, emit| {
        let doc = &envelope.item;
        let subject = Subject { id: &doc.id, tenant: &doc.tenant_id, is_doc: true };
        // A chunker bug must cost one document, not the worker.
        let chunked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| chunker.chunk(doc)));
        let error = match chunked {
            Err(_) => StageError::permanent("internal_error", format!("the chunker failed on {}", doc.id)),
            // Nothing to index would mean silently losing the document.
            Ok(chunked) if chunked.chunks.is_empty() => {
                StageError::permanent("empty_document", format!("document {} has no text to chunk", chunked.doc_id))
            }
            Ok(chunked) => {
                let Envelope { source, position, .. } = envelope;
                return emit.ok(Envelope { source, position, item: chunked, tombstone: false });
            }
        };
        emit.fail(&envelope.as_payload(&doc.id), &subject, &error);
    }
}

/// `extract`: a chunked document → its mentions and claims (those below
/// `min_confidence` left out). Deletions pass by: the `kg` stage reads
/// them from the source, as the index does.
pub(crate) fn extract(
    extractor: Arc<Extractor>,
    min_confidence: f32,
) -> impl FnMut(Envelope<ChunkedDocument>, &mut Emit<'_, Envelope<Extraction>>) {
    move |envelope, emit| {
        if envelope.tombstone {
            return;
        }
        let doc = &envelope.item;
        // An extractor bug must cost one document, not the worker.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| extractor.extract(doc))) {
            Ok(mut extraction) => {
                extraction.claims.retain(|c| c.confidence >= min_confidence);
                let Envelope { source, position, .. } = envelope;
                emit.ok(Envelope { source, position, item: extraction, tombstone: false });
            }
            Err(_) => {
                let subject = Subject { id: &doc.doc_id, tenant: &doc.tenant_id, is_doc: true };
                let error = StageError::permanent("internal_error", format!("the extractor failed on {}", doc.doc_id));
                emit.fail(&envelope.as_payload(&doc.doc_id), &subject, &error);
            }
        }
    }
}

/// Deletions for the index stages: Kafka tombstones (a key, no value), and
/// the `<DeleteCitation>` PMIDs of PubMed update files. They skip parse,
/// chunk and the models; the index orders them against upserts of the
/// same document by source position.
pub(crate) fn tombstones<'s>(
    raw: StreamVec<'s, u64, RawPayload>,
    tenant: &str,
) -> StreamVec<'s, u64, Envelope<ChunkedDocument>> {
    let tenant = tenant.to_string();
    raw.flat_map(move |payload: RawPayload| {
        let ids: Vec<String> = match (payload.tombstone, payload.key.clone()) {
            (true, Some(doc_id)) if tombstone_ids(&payload).is_ok() => vec![doc_id],
            // (parse dead-letters a tombstone with a bad id or tenant)
            (true, _) => Vec::new(),
            (false, _) if may_delete_citations(&payload.bytes) => {
                std::str::from_utf8(&payload.bytes).map(parse::deleted_citations).unwrap_or_default()
            }
            (false, _) => Vec::new(),
        };
        let tenant = payload.tenant.clone().unwrap_or_else(|| tenant.clone());
        ids.into_iter()
            .map(|doc_id| Envelope {
                item: ChunkedDocument {
                    doc_id,
                    tenant_id: tenant.clone(),
                    // Never stored: a deletion only names the document.
                    source: medkg_operators::SourceKind::Pubmed,
                    title: String::new(),
                    content_hash: 0,
                    chunks: Vec::new(),
                    metadata: Default::default(),
                },
                source: payload.source.clone(),
                position: payload.position.clone(),
                tombstone: true,
            })
            .collect::<Vec<_>>()
    })
}

/// Whether a payload may be a PubMed update file with deletions (XML that
/// names `DeleteCitation`): a scan of bytes, no parsing.
fn may_delete_citations(bytes: &[u8]) -> bool {
    let xml = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<');
    xml && bytes.windows(b"<DeleteCitation".len()).any(|w| w == b"<DeleteCitation")
}

/// Whether a tombstone's key and tenant header are a valid document and tenant id.
fn tombstone_ids(payload: &RawPayload) -> Result<(), StageError> {
    check_doc_id(payload.key.as_deref().unwrap_or_default())?;
    payload.tenant.as_deref().map_or(Ok(()), check_tenant)
}
