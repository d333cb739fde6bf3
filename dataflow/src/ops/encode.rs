//! The model stages (`embed`, `splade`): one operator, the sessions differ.
//!
//! Each epoch's chunked documents are stashed and encoded in token-budget
//! batches when the input frontier has passed the epoch (no chunk waits
//! for a timer behind a closed epoch), or early when the stash holds
//! several batches' worth of tokens already.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use medkg_operators::{ChunkedDocument, ErrorClass, StageError};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Capability, Operator};
use timely::dataflow::{Scope, StreamVec};

use super::ctx::Ctx;
use super::envelope::Envelope;
use crate::models::Sessions;
use crate::telemetry::Subject;

/// Encode early once a stash holds this many batches' worth of tokens.
const FLUSH_BATCHES: usize = 4;

/// An epoch's documents waiting for the model.
struct Stash {
    /// Held until the epoch's documents are encoded and sent on.
    cap: Capability<u64>,
    docs: Vec<Envelope<ChunkedDocument>>,
    /// An estimate of their tokens.
    tokens: usize,
}

/// A document with its vectors, or the document and why the model refused it.
type Encoded = Result<Envelope<ChunkedDocument>, Box<(Envelope<ChunkedDocument>, StageError)>>;

/// Builds a model stage on `input` with this process's `sessions` (this
/// worker uses its own).
pub(crate) fn encode<'s>(
    scope: Scope<'s, u64>,
    input: StreamVec<'s, u64, Envelope<ChunkedDocument>>,
    ctx: Ctx,
    sessions: Arc<Sessions>,
    max_batch_tokens: usize,
    is_sink: bool,
) -> StreamVec<'s, u64, Envelope<ChunkedDocument>> {
    let name = ctx.reporter.stage.to_string();
    let operator_name = name.clone();
    let worker = scope.index();
    input.unary_frontier::<CapacityContainerBuilder<Vec<Envelope<ChunkedDocument>>>, _, _, _>(
        Pipeline,
        &operator_name,
        move |_, _| {
            let mut stash: BTreeMap<u64, Stash> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    let Some(held) = cap.retain_least(0) else { return };
                    let entry = stash.entry(time).or_insert_with(|| Stash { cap: held, docs: Vec::new(), tokens: 0 });
                    for batch in data {
                        for envelope in batch.drain(..) {
                            entry.tokens += tokens_of(&envelope.item);
                            entry.docs.push(envelope);
                        }
                    }
                });
                let ready: Vec<u64> = stash
                    .iter()
                    .filter(|(t, s)| !frontier.less_equal(t) || s.tokens >= FLUSH_BATCHES * max_batch_tokens)
                    .map(|(t, _)| *t)
                    .collect();
                for time in ready {
                    let Some(Stash { cap, docs, .. }) = stash.remove(&time) else { continue };
                    let reporter = &ctx.reporter;
                    let count = docs.len();
                    reporter.batch_started(time, Some(count));
                    let began = Instant::now();
                    for d in &docs {
                        reporter.started(&subject(&d.item));
                    }
                    let encoded = match encode_docs(&sessions, worker, docs, max_batch_tokens) {
                        Ok(encoded) => encoded,
                        Err(e) => {
                            ctx.shared.fail(format!("stage `{name}`: {e}"));
                            return;
                        }
                    };
                    reporter.observe(began.elapsed());
                    reporter.batch_completed(time, count, began.elapsed());
                    let mut session = output.session(&cap);
                    for result in encoded {
                        match result {
                            Ok(envelope) => {
                                reporter.completed(&subject(&envelope.item), began, 1);
                                if is_sink {
                                    let progress = &ctx.shared.progress;
                                    progress.docs.fetch_add(1, Ordering::Relaxed);
                                    progress.chunks.fetch_add(envelope.item.chunks.len() as u64, Ordering::Relaxed);
                                }
                                session.give(envelope);
                            }
                            Err(failed) => {
                                let (envelope, error) = *failed;
                                let payload = envelope.as_payload(&envelope.item.doc_id);
                                ctx.fail(&payload, &subject(&envelope.item), Some(began), 1, &error);
                            }
                        }
                    }
                }
            }
        },
    )
}

fn subject(doc: &ChunkedDocument) -> Subject<'_> {
    Subject { id: &doc.doc_id, tenant: &doc.tenant_id, is_doc: true }
}

/// About four characters a token, plus [CLS] and [SEP], per chunk.
fn tokens_of(doc: &ChunkedDocument) -> usize {
    doc.chunks.iter().map(|c| (c.text.len() + doc.title.len()) / 4 + 2).sum()
}

/// Encodes every chunk of `docs` on the worker's session. A document whose
/// text the model refuses (a permanent error) fails alone; an unavailable
/// model fails the run.
fn encode_docs(
    sessions: &Sessions,
    worker: usize,
    mut docs: Vec<Envelope<ChunkedDocument>>,
    max_batch_tokens: usize,
) -> Result<Vec<Encoded>, StageError> {
    let texts: Vec<String> =
        docs.iter().flat_map(|d| d.item.chunks.iter().map(|c| c.model_text(&d.item.title))).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    match sessions.encode(worker, &refs, max_batch_tokens) {
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
        Err(e) if e.class == ErrorClass::Permanent && docs.len() > 1 => Ok(docs
            .into_iter()
            .flat_map(|doc| match encode_docs(sessions, worker, vec![doc.clone()], max_batch_tokens) {
                Ok(results) => results,
                Err(e) => vec![Err(Box::new((doc, e)))],
            })
            .collect()),
        Err(e) if e.class == ErrorClass::Permanent => {
            Ok(docs.into_iter().map(|d| Err(Box::new((d, e.clone())))).collect())
        }
        Err(e) => Err(e),
    }
}
