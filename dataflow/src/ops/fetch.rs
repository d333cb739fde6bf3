//! The `fetch` operator: HTTP calls on the run's tokio runtime, with a
//! bounded number in flight per worker.
//!
//! The operator keeps one capability per time that has records queued or
//! in flight, so downstream frontiers wait for exactly those records and
//! nothing else. Each call runs under the stage's resilience policy on the
//! runtime; when it settles, its result goes back over a channel and a
//! [`timely::scheduling::SyncActivator`] wakes the operator, which emits
//! the fetched record at the record's own time (or dead-letters it) and
//! releases the capability once its time has nothing left.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use std::path::PathBuf;

use medkg_connectors::kafka::{KafkaJson, KafkaSettings};
use medkg_connectors::ledger::{Status, Update};
use medkg_connectors::{RawPayload, StreamSpec};
use medkg_operators::fetch::{body_name, request_of, FetchConfig, Fetcher};
use medkg_operators::pdf::{check_pdf, Downloaded, ObjectStore};
use medkg_operators::resilience::{Outcome, Resilience};
use medkg_operators::StageError;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Capability, Operator};
use timely::dataflow::{Scope, StreamVec};

use super::ctx::Ctx;
use crate::telemetry::CallObserver;

/// A fetch or download stage's process-wide parts: its policy runtime,
/// its client, and (download) where PDFs and downloaded records go.
pub(crate) struct FetchRuntime {
    pub config: FetchConfig,
    pub resilience: Resilience,
    pub fetcher: Fetcher,
    /// `None` for `fetch`.
    pub download: Option<Download>,
}

/// Where a download stage puts what it fetched.
pub(crate) struct Download {
    pub store: ObjectStore,
    pub output: DownloadedOutput,
}

/// The downloaded stream: a folder of JSON records, or a Kafka topic.
pub(crate) enum DownloadedOutput {
    Dir(PathBuf),
    Kafka(KafkaJson),
}

impl DownloadedOutput {
    /// Opens the stream (a topic needs the run's brokers).
    pub fn open(spec: &StreamSpec, kafka: Option<&KafkaSettings>) -> Result<DownloadedOutput, String> {
        match spec {
            StreamSpec::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                Ok(DownloadedOutput::Dir(dir.clone()))
            }
            StreamSpec::Kafka(topic) => {
                let settings = kafka.ok_or_else(|| format!("output kafka:{topic} needs brokers (--brokers)"))?;
                Ok(DownloadedOutput::Kafka(KafkaJson::new(settings, topic).map_err(|e| e.to_string())?))
            }
        }
    }

    /// Publishes one record durably: renamed into its folder, or
    /// acknowledged by the broker, before the record moves on to the gate.
    async fn publish(&self, record: &Downloaded, json: &[u8]) -> Result<(), StageError> {
        let fail = |e: String| StageError::unavailable("downloaded_output", e);
        match self {
            DownloadedOutput::Dir(dir) => {
                medkg_operators::index::write_atomically(&dir.join(record.record_name()), json)
                    .map_err(|e| fail(e.to_string()))
            }
            DownloadedOutput::Kafka(producer) => producer
                .deliver(&record.doc_id, json, &[("content-type", "application/json")])
                .await
                .map_err(|e| fail(e.to_string())),
        }
    }
}

impl FetchRuntime {
    pub fn new(
        config: &FetchConfig,
        policy: &medkg_topology::Policy,
        download: Option<Download>,
    ) -> Result<FetchRuntime, StageError> {
        Ok(FetchRuntime {
            config: config.clone(),
            resilience: Resilience::new(policy),
            fetcher: Fetcher::new(config)?,
            download,
        })
    }

    /// One attempt: GET, then (download) check, store and publish.
    async fn attempt(
        &self,
        url: &medkg_operators::fetch::Url,
        id: Option<&str>,
        tenant: &str,
    ) -> Result<Output, StageError> {
        let fetched = self.fetcher.get(url).await?;
        let Some(download) = &self.download else {
            return Ok(Output { name: body_name(&fetched), bytes: fetched.body, downloaded: false });
        };
        check_pdf(&fetched.body)?;
        let (sha256, path) = download.store.put(&fetched.body)?;
        let record = Downloaded {
            doc_id: id.unwrap_or_default().to_string(),
            tenant_id: tenant.to_string(),
            url: url.to_string(),
            sha256,
            bytes: fetched.body.len() as u64,
            path: path.display().to_string(),
        };
        let json = serde_json::to_vec(&record).map_err(|e| StageError::permanent("bad_record", e.to_string()))?;
        download.output.publish(&record, &json).await?;
        Ok(Output { name: Some("downloaded.json".into()), bytes: json, downloaded: true })
    }
}

/// What a settled call passes on: the next stage's payload.
struct Output {
    name: Option<String>,
    bytes: Vec<u8>,
    /// A download stage stored a PDF.
    downloaded: bool,
}

/// A settled call, on its way back to the operator.
struct Settled {
    time: u64,
    payload: RawPayload,
    /// The document id the record named, if any.
    id: Option<String>,
    began: Instant,
    outcome: Outcome<Output>,
}

/// Builds a `fetch` or `download` stage on `input`, calling out with `runtime`.
pub(crate) fn fetch<'s>(
    scope: Scope<'s, u64>,
    input: StreamVec<'s, u64, RawPayload>,
    ctx: Ctx,
    runtime: Arc<FetchRuntime>,
) -> StreamVec<'s, u64, RawPayload> {
    let name = ctx.reporter.stage.clone();
    let max_in_flight = runtime.config.max_in_flight.max(1);
    let worker = scope.worker();
    let operator_name = name.to_string();
    input.unary_frontier::<CapacityContainerBuilder<Vec<RawPayload>>, _, _, _>(
        Pipeline,
        &operator_name,
        move |_, info| {
            let activator = Arc::new(worker.sync_activator_for(info.address.to_vec()));
            let (settled_tx, settled_rx) = mpsc::channel::<Settled>();
            // Per time: its capability and how many of its records are queued or in flight.
            let mut held: BTreeMap<u64, (Capability<u64>, usize)> = BTreeMap::new();
            let mut queue: VecDeque<(u64, RawPayload)> = VecDeque::new();
            let mut in_flight = 0usize;
            move |(input, _frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    let Some(retained) = cap.retain_least(0) else { return };
                    let entry = held.entry(time).or_insert((retained, 0));
                    for batch in data {
                        for payload in batch.drain(..) {
                            entry.1 += 1;
                            queue.push_back((time, payload));
                        }
                    }
                });

                // Records whose call settled (or that never needed one) release their time.
                let release = |held: &mut BTreeMap<u64, (Capability<u64>, usize)>, time: u64| {
                    if let Some(entry) = held.get_mut(&time) {
                        entry.1 -= 1;
                        if entry.1 == 0 {
                            held.remove(&time);
                        }
                    }
                };
                while let Ok(settled) = settled_rx.try_recv() {
                    in_flight -= 1;
                    let Settled { time, payload, id, began, outcome } = settled;
                    let position = payload.position.to_string();
                    let subject = ctx.subject_named(&payload, id.as_deref(), &position);
                    match outcome.result {
                        Ok(out) => {
                            ctx.reporter.completed(&subject, began, outcome.attempts);
                            if out.downloaded {
                                let reporter = &ctx.reporter;
                                let mut update = Update::new(
                                    subject.tenant,
                                    subject.id,
                                    &reporter.stage,
                                    reporter.index(),
                                    Status::Waiting,
                                );
                                update.pdf_downloaded = true;
                                reporter.update(update);
                            }
                            let fetched_payload = RawPayload {
                                name: out.name,
                                key: id.clone().or(payload.key.clone()),
                                bytes: out.bytes,
                                ..payload
                            };
                            if let Some((cap, _)) = held.get(&time) {
                                output.session(cap).give(fetched_payload);
                            }
                        }
                        Err(error) => ctx.fail(&payload, &subject, Some(began), outcome.attempts, &error),
                    }
                    release(&mut held, time);
                }

                while in_flight < max_in_flight {
                    let Some((time, payload)) = queue.pop_front() else { break };
                    if payload.tombstone {
                        // Deletions pass on untouched.
                        if let Some((cap, _)) = held.get(&time) {
                            output.session(cap).give(payload);
                        }
                        release(&mut held, time);
                        continue;
                    }
                    let request = match request_of(&runtime.config, &payload.bytes) {
                        Ok(request) if runtime.download.is_some() && request.id.is_none() => {
                            Err(StageError::permanent(
                                "missing_id",
                                format!("a download record needs the document id in `{}`", runtime.config.id_field),
                            ))
                        }
                        other => other,
                    };
                    let request = match request {
                        Ok(request) => request,
                        Err(error) => {
                            let position = payload.position.to_string();
                            let subject = ctx.subject_of(&payload, &position);
                            let began = ctx.reporter.started(&subject);
                            ctx.fail(&payload, &subject, Some(began), 0, &error);
                            release(&mut held, time);
                            continue;
                        }
                    };
                    let url = request.url.to_string();
                    let subject = ctx.subject_named(&payload, request.id.as_deref(), &url);
                    let began = ctx.reporter.started(&subject);
                    let observer = CallObserver {
                        telemetry: ctx.shared.telemetry.clone(),
                        stage: name.to_string(),
                        doc_id: subject.id.to_string(),
                        tenant: subject.tenant.to_string(),
                        began,
                    };
                    let (runtime, tx, activator) = (runtime.clone(), settled_tx.clone(), activator.clone());
                    in_flight += 1;
                    ctx.shared.runtime.spawn(async move {
                        let (url, id, tenant) = (&request.url, request.id.as_deref(), observer.tenant.clone());
                        let outcome = runtime.resilience.call(&observer, |_| runtime.attempt(url, id, &tenant)).await;
                        let settled = Settled { time, payload, id: request.id, began, outcome };
                        // A closed channel means the run is over: nothing left to tell.
                        if tx.send(settled).is_ok() {
                            let _ = activator.activate();
                        }
                    });
                }
            }
        },
    )
}
