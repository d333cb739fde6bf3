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

use medkg_connectors::RawPayload;
use medkg_operators::fetch::{body_name, request_of, FetchConfig, Fetched, Fetcher};
use medkg_operators::resilience::{Outcome, Resilience};
use medkg_operators::StageError;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Capability, Operator};
use timely::dataflow::{Scope, StreamVec};

use crate::graph::Ctx;
use crate::telemetry::{CallObserver, Subject};

/// A fetch stage's process-wide parts: its policy runtime and its client.
pub(crate) struct FetchRuntime {
    pub config: FetchConfig,
    pub resilience: Resilience,
    pub fetcher: Fetcher,
}

impl FetchRuntime {
    pub fn new(config: &FetchConfig, policy: &medkg_topology::Policy) -> Result<FetchRuntime, StageError> {
        Ok(FetchRuntime { config: config.clone(), resilience: Resilience::new(policy), fetcher: Fetcher::new(config)? })
    }
}

/// A settled call, on its way back to the operator.
struct Settled {
    time: u64,
    payload: RawPayload,
    /// The document id the record named, if any.
    id: Option<String>,
    began: Instant,
    outcome: Outcome<Fetched>,
}

pub(crate) fn fetch_stage<'s>(
    scope: Scope<'s, u64>,
    input: StreamVec<'s, u64, RawPayload>,
    ctx: Ctx,
    stage: usize,
    max_in_flight: usize,
) -> StreamVec<'s, u64, RawPayload> {
    let name = ctx.watch.stage.clone();
    let runtime = ctx.shared.fetchers[stage].clone().expect("a fetch stage has its runtime");
    let max_in_flight = max_in_flight.max(1);
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
                    let subject = Subject {
                        id: id.as_deref().or(payload.key.as_deref()).unwrap_or(&position),
                        tenant: payload.tenant.as_deref().unwrap_or(&ctx.shared.options.tenant),
                        is_doc: id.is_some() || payload.key.is_some(),
                    };
                    match outcome.result {
                        Ok(fetched) => {
                            ctx.watch.completed(&subject, began, outcome.attempts);
                            let fetched_payload = RawPayload {
                                name: body_name(&fetched),
                                key: id.clone().or(payload.key.clone()),
                                bytes: fetched.body,
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
                        Ok(request) => request,
                        Err(error) => {
                            let position = payload.position.to_string();
                            let subject = ctx.subject_of(&payload, &position);
                            let began = ctx.watch.started(&subject);
                            ctx.fail(&payload, &subject, Some(began), 0, &error);
                            release(&mut held, time);
                            continue;
                        }
                    };
                    let url = request.url.to_string();
                    let subject = Subject {
                        id: request.id.as_deref().or(payload.key.as_deref()).unwrap_or(&url),
                        tenant: payload.tenant.as_deref().unwrap_or(&ctx.shared.options.tenant),
                        is_doc: request.id.is_some() || payload.key.is_some(),
                    };
                    let began = ctx.watch.started(&subject);
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
                        let fetcher = &runtime.fetcher;
                        let url = &request.url;
                        let outcome = runtime.resilience.call(&observer, |_| fetcher.get(url)).await;
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
