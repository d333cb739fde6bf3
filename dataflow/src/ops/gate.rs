//! The PDF gate: a frontier-aware join of the downloaded stream with the
//! IR-ready stream.
//!
//! Both inputs are exchanged by document id, so one worker owns a document
//! on both sides. The gate holds **no capability** for a waiting document:
//! when the second side arrives, the joined record is emitted at that
//! side's time, with that side's capability. A document whose IR never
//! comes therefore holds back nothing: the frontier moves on, and every
//! other document becomes searchable.
//!
//! Whatever waits is durable: a downloaded record whose IR has not come,
//! or an IR-ready record whose PDF has not come, is written to the gate's
//! table in the ledger in the activation that received it (before the
//! frontier can pass its time, so before the source may checkpoint, or a
//! Kafka input commit, past it), and restored when the run restarts. A joined document is
//! marked `done` (with its PDF's hash) only once the index has committed
//! the joined record's epoch, so a crash in between re-joins it, and the
//! idempotent index upsert keeps it indexed once. Duplicates of a `done`
//! document (same PDF) are dropped. A document that waits longer than the
//! gate's `timeout` for either side fails: a dead letter (of the record
//! that waited), a `failed` event, ledger status `gate_timeout`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use medkg_connectors::ledger::{GateEntry, GateHold, GateStore, Status, Update};
use medkg_connectors::RawPayload;
use medkg_operators::pdf::{Downloaded, IrReady};
use medkg_operators::{stable_hash, StageError};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;
use timely::dataflow::{ProbeHandle, StreamVec};

use super::ctx::Ctx;
use crate::progress::frontier_of;
use crate::telemetry::Subject;

type Key = (String, String);

/// A document waiting for its IR.
struct Waiting {
    record: Downloaded,
    payload: RawPayload,
    since_ms: i64,
}

/// An IR that came before its PDF.
struct Early {
    ir: IrReady,
    payload: RawPayload,
    since_ms: i64,
}

/// One worker's gate: what waits, what was joined, and its durable store.
pub(crate) struct GateState {
    ctx: Ctx,
    store: GateStore,
    timeout: Option<Duration>,
    waiting: HashMap<Key, Waiting>,
    /// IR that came before its PDF.
    early: HashMap<Key, Early>,
    /// Joined documents and their PDF hash: restored ones are durable
    /// downstream; this run's are marked durable by `tick`.
    done: HashMap<Key, String>,
    /// Joined documents by the epoch they were emitted at, until durable.
    joined: BTreeMap<u64, Vec<(Key, String)>>,
    /// Waiting entries to write at the end of the activation.
    to_write: Vec<GateEntry>,
    /// The downloaded stream has ended (its frontier at the gate is empty, in
    /// every worker and process): no PDF will come to wait any more.
    downloads_ended: bool,
}

impl GateState {
    /// Opens the gate's store and restores the entries this worker owns.
    pub fn open(
        ctx: Ctx,
        gate: &medkg_topology::Gate,
        worker: usize,
        peers: usize,
    ) -> Result<GateState, medkg_connectors::Error> {
        let store = GateStore::open(&ctx.shared.options.data_dir, &gate.name)?;
        let mut state = GateState {
            ctx,
            store,
            timeout: gate.timeout,
            waiting: HashMap::new(),
            early: HashMap::new(),
            done: HashMap::new(),
            joined: BTreeMap::new(),
            to_write: Vec::new(),
            downloads_ended: false,
        };
        for entry in state.store.load()? {
            if (stable_hash(&entry.doc_id) % peers as u64) as usize != worker {
                continue;
            }
            let key = (entry.tenant_id.clone(), entry.doc_id.clone());
            let since_ms = entry.since_ms;
            let restored = match entry.hold {
                GateHold::Done => {
                    state.done.insert(key, entry.sha256);
                    continue;
                }
                GateHold::Pdf => serde_json::from_slice::<(Downloaded, RawPayload)>(&entry.payload)
                    .map(|(record, payload)| {
                        state.waiting.insert(key, Waiting { record, payload, since_ms });
                    })
                    .map_err(|e| e.to_string()),
                GateHold::Ir => serde_json::from_slice::<RawPayload>(&entry.payload)
                    .map_err(|e| e.to_string())
                    .and_then(|payload| {
                        let ir = IrReady::from_json(&payload.bytes).map_err(|e| e.to_string())?;
                        state.early.insert(key, Early { ir, payload, since_ms });
                        Ok(())
                    }),
            };
            // Only medkg writes the table, so this is a damaged entry: dead-letter it.
            if let Err(e) = restored {
                let payload = RawPayload {
                    source: format!("gate:{}", gate.name),
                    key: Some(entry.doc_id.clone()),
                    tenant: Some(entry.tenant_id.clone()),
                    name: None,
                    position: medkg_connectors::Position {
                        ordinal: 0,
                        file: format!("gate_state/{}", gate.name),
                        line: None,
                        partition: None,
                    },
                    tombstone: false,
                    bytes: entry.payload,
                };
                let error = StageError::permanent("bad_gate_entry", format!("unreadable gate entry: {e}"));
                state.fail(&payload, None, &error);
                state.store.remove(&[(entry.tenant_id, entry.doc_id)])?;
            }
        }
        state.count(state.waiting.len() as i64);
        Ok(state)
    }

    fn count(&self, delta: i64) {
        let shared = &self.ctx.shared;
        let now = shared.gate_pending.fetch_add(delta, Ordering::SeqCst) + delta;
        let telemetry = &shared.telemetry;
        telemetry.metrics.gate_pending.with_label_values(&[&telemetry.pipeline]).set(now);
    }

    /// A downloaded record arrives at `time`; returns the joined record if its IR is here.
    fn downloaded(&mut self, time: u64, payload: RawPayload) -> Option<RawPayload> {
        let record: Downloaded = match serde_json::from_slice(&payload.bytes) {
            Ok(record) => record,
            Err(e) => {
                let error = StageError::permanent("bad_downloaded", format!("not a downloaded record: {e}"));
                self.fail(&payload, None, &error);
                return None;
            }
        };
        let key = (record.tenant_id.clone(), record.doc_id.clone());
        if self.done.get(&key) == Some(&record.sha256) {
            return None; // this PDF was joined and indexed already
        }
        if let Some(early) = self.early.remove(&key) {
            return Some(self.join(time, key, record, payload, early.ir));
        }
        let subject = Subject { id: &record.doc_id, tenant: &record.tenant_id, is_doc: true };
        self.ctx.reporter.started(&subject);
        self.ledger(&key, Status::Waiting, true, false);
        let since_ms = chrono::Utc::now().timestamp_millis();
        let stored = serde_json::to_vec(&(&record, &payload)).unwrap_or_default();
        self.to_write.push(GateEntry {
            tenant_id: key.0.clone(),
            doc_id: key.1.clone(),
            hold: GateHold::Pdf,
            sha256: record.sha256.clone(),
            payload: stored,
            since_ms,
        });
        if self.waiting.insert(key, Waiting { record, payload, since_ms }).is_none() {
            self.count(1);
        }
        None
    }

    /// An IR-ready record arrives at `time`; returns the joined record if its PDF is here.
    fn ir_ready(&mut self, time: u64, payload: RawPayload) -> Option<RawPayload> {
        let ir = match IrReady::from_json(&payload.bytes) {
            Ok(ir) => ir,
            Err(error) => {
                self.fail(&payload, None, &error);
                return None;
            }
        };
        let tenant = ir.tenant_id.clone().unwrap_or_else(|| self.ctx.shared.options.tenant.clone());
        let key = (tenant, ir.doc_id.clone());
        if let Some(sha) = self.done.get(&key) {
            if ir.sha256.as_ref().is_none_or(|s| s == sha) {
                return None; // the IR of a document joined already
            }
        }
        match self.waiting.remove(&key) {
            Some(waiting) => {
                self.count(-1);
                Some(self.join(time, key, waiting.record, waiting.payload, ir))
            }
            None => {
                // The ledger shows it waiting for its PDF.
                self.ledger(&key, Status::Waiting, false, true);
                let since_ms = chrono::Utc::now().timestamp_millis();
                self.to_write.push(GateEntry {
                    tenant_id: key.0.clone(),
                    doc_id: key.1.clone(),
                    hold: GateHold::Ir,
                    sha256: ir.sha256.clone().unwrap_or_default(),
                    payload: serde_json::to_vec(&payload).unwrap_or_default(),
                    since_ms,
                });
                self.early.insert(key, Early { ir, payload, since_ms });
                None
            }
        }
    }

    /// The joined record, emitted at `time`: the IR-ready record, with the
    /// PDF's hash and URL, where the downloaded record came from. It is
    /// marked done durably once `time` is committed (see [`Self::tick`]).
    fn join(&mut self, time: u64, key: Key, record: Downloaded, payload: RawPayload, mut ir: IrReady) -> RawPayload {
        // Duplicates that come before the join is durable are dropped too
        // (the durable marker waits for the index; memory does not need to).
        self.done.insert(key.clone(), record.sha256.clone());
        self.joined.entry(time).or_default().push((key.clone(), record.sha256.clone()));
        ir.sha256 = Some(record.sha256.clone());
        ir.pdf_url = Some(record.url.clone());
        ir.tenant_id = Some(record.tenant_id.clone());
        self.ledger(&key, Status::InProgress, true, true);
        let subject = Subject { id: &record.doc_id, tenant: &record.tenant_id, is_doc: true };
        self.ctx.reporter.completed(&subject, Instant::now(), 1);
        RawPayload {
            bytes: serde_json::to_vec(&ir).unwrap_or_default(),
            name: Some("ir-ready.json".into()),
            key: Some(record.doc_id.clone()),
            tenant: Some(record.tenant_id.clone()),
            ..payload
        }
    }

    /// Where a document stands at the gate, for its ledger row.
    fn ledger(&self, (tenant, doc): &Key, status: Status, pdf_downloaded: bool, pdf_ir_ready: bool) {
        let mut update = Update::new(tenant, doc, &self.ctx.reporter.stage, self.ctx.reporter.index(), status);
        update.pdf_downloaded = pdf_downloaded;
        update.pdf_ir_ready = pdf_ir_ready;
        self.ctx.reporter.update(update);
    }

    fn fail(&self, payload: &RawPayload, began: Option<Instant>, error: &StageError) {
        let position = payload.position.to_string();
        let subject = self.ctx.subject_of(payload, &position);
        self.ctx.fail(payload, &subject, began, 1, error);
    }

    /// Writes what this activation learnt.
    fn write(&mut self) {
        let entries = std::mem::take(&mut self.to_write);
        if let Err(e) = self.store.put(&entries) {
            self.ctx.shared.fail(e.to_string());
        }
    }

    /// Every downloaded PDF has come, and none waits for its IR (joined or
    /// timed out). Once true it stays true. (IR that waits for a PDF does
    /// not count: a batch run is not held open by IR of other documents.)
    pub fn settled(&self) -> bool {
        self.downloads_ended && self.waiting.is_empty()
    }

    /// Called between steps: marks joined documents whose epoch is durable
    /// as done, and fails documents that waited too long.
    pub fn tick(&mut self, committed: &ProbeHandle<u64>) {
        let frontier = frontier_of(committed);
        let durable: Vec<u64> = self.joined.range(..frontier).map(|(t, _)| *t).collect();
        let mut entries = Vec::new();
        for time in durable {
            for (key, sha256) in self.joined.remove(&time).unwrap_or_default() {
                entries.push(GateEntry {
                    tenant_id: key.0.clone(),
                    doc_id: key.1.clone(),
                    hold: GateHold::Done,
                    sha256: sha256.clone(),
                    payload: Vec::new(),
                    since_ms: chrono::Utc::now().timestamp_millis(),
                });
                self.done.insert(key, sha256);
            }
        }
        if let Err(e) = self.store.put(&entries) {
            self.ctx.shared.fail(e.to_string());
        }
        let Some(timeout) = self.timeout else { return };
        let now = chrono::Utc::now().timestamp_millis();
        let late = |since_ms: i64| now - since_ms > timeout.as_millis() as i64;
        let mut expired: Vec<Key> =
            self.waiting.iter().filter(|(_, w)| late(w.since_ms)).map(|(k, _)| k.clone()).collect();
        let first_pdf = expired.len();
        expired.extend(self.early.iter().filter(|(_, e)| late(e.since_ms)).map(|(k, _)| k.clone()));
        for key in &expired[first_pdf..] {
            if let Some(early) = self.early.remove(key) {
                let error = StageError::permanent(
                    "gate_timeout",
                    format!("no PDF download for {} within {timeout:?} of its IR", early.ir.doc_id),
                );
                let subject = Subject { id: &key.1, tenant: &key.0, is_doc: true };
                self.ctx.fail(&early.payload, &subject, None, 1, &error);
                self.ctx.reporter.record(&subject, Status::GateTimeout, 1, Some(error.to_string()));
            }
        }
        for key in &expired[..first_pdf] {
            if let Some(w) = self.waiting.remove(key) {
                self.count(-1);
                let error = StageError::permanent(
                    "gate_timeout",
                    format!("no IR for {} within {timeout:?} of its PDF download", w.record.doc_id),
                );
                let subject = Subject { id: &w.record.doc_id, tenant: &w.record.tenant_id, is_doc: true };
                self.ctx.fail(&w.payload, &subject, None, 1, &error);
                self.ctx.reporter.record(&subject, Status::GateTimeout, 1, Some(error.to_string()));
            }
        }
        if let Err(e) = self.store.remove(&expired) {
            self.ctx.shared.fail(e.to_string());
        }
    }
}

/// Builds the gate on `downloaded` and `ir`; `state` is shared with the
/// worker's bookkeeping (durability and timeouts between steps).
pub(crate) fn gate<'s>(
    downloaded: StreamVec<'s, u64, RawPayload>,
    ir: StreamVec<'s, u64, RawPayload>,
    name: &str,
    state: Rc<RefCell<GateState>>,
) -> StreamVec<'s, u64, RawPayload> {
    let route = |p: &RawPayload| stable_hash(p.key.as_deref().unwrap_or(""));
    downloaded.binary_frontier::<_, CapacityContainerBuilder<Vec<RawPayload>>, _, _, _, _>(
        ir,
        Exchange::new(route),
        Exchange::new(route),
        name,
        move |_, _| {
            move |(pdfs, pdf_frontier), (irs, _), output| {
                let mut state = state.borrow_mut();
                pdfs.for_each_stamp(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    let mut session = output.session(&cap);
                    for batch in data {
                        for payload in batch.drain(..) {
                            if let Some(joined) = state.downloaded(time, payload) {
                                session.give(joined);
                            }
                        }
                    }
                });
                irs.for_each_stamp(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    let mut session = output.session(&cap);
                    for batch in data {
                        for payload in batch.drain(..) {
                            if let Some(joined) = state.ir_ready(time, payload) {
                                session.give(joined);
                            }
                        }
                    }
                });
                // Waiting documents are durable before the frontier can pass them.
                state.write();
                if pdf_frontier.frontier().is_empty() {
                    state.downloads_ended = true;
                }
            }
        },
    )
}
