//! What every stage operator is handed: the run, its worker's dead-letter
//! sink and the stage's reporter, and the one way a record fails.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use medkg_connectors::dead_letter::MAX_LETTERS_PER_RECORD;
use medkg_connectors::{DeadLetter, DeadLetterSink, RawPayload};
use medkg_operators::StageError;

use crate::shared::Shared;
use crate::telemetry::{Reporter, Subject};

/// A worker's dead-letter sink, shared by its operators.
pub(crate) type Letters = Rc<RefCell<DeadLetterSink>>;

/// What every stage operator needs: the run, its dead-letter sink and the
/// stage's reporting.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub shared: Arc<Shared>,
    pub letters: Letters,
    pub reporter: Reporter,
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
            .with_label_values(&[telemetry.pipeline.as_str(), &self.reporter.stage, error.kind.as_str()])
            .inc();
        self.reporter.failed(subject, began, attempts, error);
        if nth >= MAX_LETTERS_PER_RECORD {
            return;
        }
        let doc_id = subject.is_doc.then(|| subject.id.to_string());
        self.write_letter(payload, doc_id, error, nth == 0);
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
        self.write_letter(payload, None, &error, false);
    }

    /// Writes a dead letter for a payload that failed in this stage, with
    /// the payload's bytes unless an earlier letter of the same payload
    /// holds them (`with_bytes`). A dead letter that cannot be written is an
    /// unrecoverable error: the record would be lost.
    fn write_letter(&self, payload: &RawPayload, doc_id: Option<String>, error: &StageError, with_bytes: bool) {
        let bytes: &[u8] = if with_bytes { &payload.bytes } else { &[] };
        let letter = DeadLetter::new(
            &self.reporter.stage,
            &payload.source,
            &payload.position,
            doc_id,
            error.class.as_str(),
            &error.kind,
            &error.message,
            bytes,
        );
        let letter = if with_bytes { letter } else { letter.without_bytes() };
        if let Err(e) = self.letters.borrow_mut().write(&letter) {
            self.shared.fail(format!("cannot write a dead letter to the data directory: {e}"));
        }
    }
}

/// At most the first [`medkg_operators::MAX_ID_BYTES`] bytes of `text` (at a character boundary).
fn bounded(text: &str) -> &str {
    &text[..text.floor_char_boundary(medkg_operators::MAX_ID_BYTES)]
}
