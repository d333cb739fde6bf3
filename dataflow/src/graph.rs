//! The plan, compiled: one timely operator per stage, wired as the plan's
//! DAG. The operators themselves live in [`crate::ops`]; this file only
//! connects them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use medkg_connectors::ledger::LedgerBuffer;
use medkg_connectors::RawPayload;
use medkg_operators::extract::Extraction;
use medkg_operators::{ChunkedDocument, Document};
use medkg_topology::{Plan, StageKind};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concatenate, Probe};
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use crate::models::Sessions;
use crate::ops::ctx::{Ctx, Letters};
use crate::ops::envelope::Envelope;
use crate::ops::fetch::FetchRuntime;
use crate::ops::gate::GateState;
use crate::ops::index::IndexSpec;
use crate::ops::kg::KgSpec;
use crate::ops::records::Records;
use crate::ops::{encode, fetch, gate, index, kg, records};
use crate::shared::Shared;
use crate::telemetry::Reporter;

/// One stage of the plan, ready to build: its settings and the resources
/// its operator is handed (made once per process, before any worker starts).
pub(crate) enum StageOp {
    /// A stateless stage (`ingest`, `parse`, `chunk`, ...).
    Records(Records),
    /// `fetch` and `download`: the stage's client, policy and outputs.
    Fetch(Arc<FetchRuntime>),
    /// `embed` and `splade`: one session per worker.
    Encode { sessions: Arc<Sessions>, max_batch_tokens: usize },
    /// `index`
    Index(IndexSpec),
    /// `kg`
    Kg(KgSpec),
}

/// The stream out of a stage, by what flows in it.
#[derive(Clone)]
enum Flow<'s> {
    Raw(StreamVec<'s, u64, RawPayload>),
    Docs(StreamVec<'s, u64, Envelope<Document>>),
    Chunks(StreamVec<'s, u64, Envelope<ChunkedDocument>>),
    Entities(StreamVec<'s, u64, Envelope<Extraction>>),
}

impl<'s> Flow<'s> {
    /// Attaches a probe to the stream.
    fn probe(&self, handle: &ProbeHandle<u64>) {
        match self {
            Flow::Raw(s) => drop(s.clone().probe_with(handle)),
            Flow::Docs(s) => drop(s.clone().probe_with(handle)),
            Flow::Chunks(s) => drop(s.clone().probe_with(handle)),
            Flow::Entities(s) => drop(s.clone().probe_with(handle)),
        }
    }

    fn raw(self) -> Option<StreamVec<'s, u64, RawPayload>> {
        match self {
            Flow::Raw(s) => Some(s),
            _ => None,
        }
    }

    fn docs(self) -> Option<StreamVec<'s, u64, Envelope<Document>>> {
        match self {
            Flow::Docs(s) => Some(s),
            _ => None,
        }
    }

    fn chunks(self) -> Option<StreamVec<'s, u64, Envelope<ChunkedDocument>>> {
        match self {
            Flow::Chunks(s) => Some(s),
            _ => None,
        }
    }

    fn entities(self) -> Option<StreamVec<'s, u64, Envelope<Extraction>>> {
        match self {
            Flow::Entities(s) => Some(s),
            _ => None,
        }
    }
}

/// What a worker's graph is attached to: its inputs, its probes and its
/// per-worker state.
pub(crate) struct Ports<'a, 's> {
    /// The source's records.
    pub raw: StreamVec<'s, u64, RawPayload>,
    /// The IR-ready stream, when the pipeline has gates.
    pub ir_ready: Option<StreamVec<'s, u64, RawPayload>>,
    /// Probes what enters the sinks (flow control).
    pub flow: &'a ProbeHandle<u64>,
    /// Probes what the sinks made durable (checkpoints and commits).
    pub committed: &'a ProbeHandle<u64>,
    /// The worker's ledger updates and dead letters.
    pub ledger: &'a Rc<RefCell<LedgerBuffer>>,
    pub letters: &'a Letters,
    /// Each gate's state, by the stage it follows.
    pub gates: &'a BTreeMap<usize, Rc<RefCell<GateState>>>,
}

/// Builds the plan's operators, `stages[i]` for the plan's stage `i`.
pub(crate) fn build<'s>(
    scope: Scope<'s, u64>,
    shared: &Arc<Shared>,
    stages: &[StageOp],
    ports: Ports<'_, 's>,
) -> Result<(), String> {
    let plan: &Plan = &shared.options.plan;
    let mut outputs: Vec<Flow<'s>> = Vec::with_capacity(plan.stages.len());
    // Deletions, read from the raw stream once (by the first sink that applies them) for every such sink.
    let mut deletes = None;
    let mut deletions =
        || deletes.get_or_insert_with(|| records::tombstones(ports.raw.clone(), &shared.options.tenant)).clone();
    for (i, (stage, op)) in plan.stages.iter().zip(stages).enumerate() {
        let inputs: Vec<Flow<'s>> = match stage.inputs.is_empty() {
            true => vec![Flow::Raw(ports.raw.clone())],
            false => stage.inputs.iter().map(|&j| outputs[j].clone()).collect(),
        };
        let is_sink = plan.consumers_of(i).is_empty();
        let waits = matches!(stage.kind, StageKind::Fetch | StageKind::Download);
        let reporter = Reporter::new(&shared.telemetry, &stage.name, i, is_sink, waits, ports.ledger);
        let ctx = Ctx { shared: shared.clone(), letters: ports.letters.clone(), reporter };
        let mistyped = || format!("stage `{}`: its inputs carry another kind of record", stage.name);
        let output = match op {
            StageOp::Records(Records::RawToRaw(make)) => {
                let input = concat(scope, inputs, Flow::raw).ok_or_else(mistyped)?;
                Flow::Raw(records::stateless(input, ctx, is_sink, make()))
            }
            StageOp::Records(Records::RawToDocs(make)) => {
                let input = concat(scope, inputs, Flow::raw).ok_or_else(mistyped)?;
                Flow::Docs(records::stateless(input, ctx, is_sink, make()))
            }
            StageOp::Records(Records::DocsToChunks(make)) => {
                let input = concat(scope, inputs, Flow::docs).ok_or_else(mistyped)?;
                Flow::Chunks(records::stateless(input, ctx, is_sink, make()))
            }
            StageOp::Records(Records::ChunksToEntities(make)) => {
                let input = concat(scope, inputs, Flow::chunks).ok_or_else(mistyped)?;
                Flow::Entities(records::stateless(input, ctx, is_sink, make()))
            }
            StageOp::Fetch(runtime) => {
                let input = concat(scope, inputs, Flow::raw).ok_or_else(mistyped)?;
                Flow::Raw(fetch::fetch(scope, input, ctx, runtime.clone()))
            }
            StageOp::Encode { sessions, max_batch_tokens } => {
                let input = concat(scope, inputs, Flow::chunks).ok_or_else(mistyped)?;
                Flow::Chunks(encode::encode(scope, input, ctx, sessions.clone(), *max_batch_tokens, is_sink))
            }
            StageOp::Index(spec) => {
                let input = concat(scope, inputs, Flow::chunks).ok_or_else(mistyped)?;
                let input = scope.concatenate(vec![input, deletions()]).probe_with(ports.flow);
                let spec = IndexSpec { forward: !is_sink, ..spec.clone() };
                Flow::Chunks(index::index(scope, input, ctx, spec).probe_with(ports.committed))
            }
            StageOp::Kg(spec) => {
                let input = concat(scope, inputs, Flow::entities).ok_or_else(mistyped)?;
                let deletes = deletions().map(|e| Envelope {
                    item: Extraction { doc_id: e.item.doc_id, tenant_id: e.item.tenant_id, ..Default::default() },
                    source: e.source,
                    position: e.position,
                    tombstone: true,
                });
                let input = scope.concatenate(vec![input, deletes]).probe_with(ports.flow);
                let spec = KgSpec { forward: !is_sink, ..spec.clone() };
                Flow::Entities(kg::kg(input, ctx, spec).probe_with(ports.committed))
            }
        };
        // A gate after this stage: its consumers read the joined stream.
        let output = match (ports.gates.get(&i), output, &ports.ir_ready) {
            (Some(state), Flow::Raw(downloaded), Some(ir_ready)) => {
                let name = plan.gates.iter().find(|g| g.after == i).map_or("gate", |g| g.name.as_str());
                Flow::Raw(gate::gate(downloaded, ir_ready.clone(), name, state.clone()))
            }
            (_, output, _) => output,
        };
        if is_sink && !matches!(stage.kind, StageKind::Index | StageKind::Kg) {
            // A sink that is not an index is durable as soon as it has run.
            output.probe(ports.flow);
            output.probe(ports.committed);
        }
        outputs.push(output);
    }
    Ok(())
}

/// Concatenates a stage's inputs, all of one kind (the topology checked it).
fn concat<'s, D: Clone + 'static>(
    scope: Scope<'s, u64>,
    inputs: Vec<Flow<'s>>,
    pick: fn(Flow<'s>) -> Option<StreamVec<'s, u64, D>>,
) -> Option<StreamVec<'s, u64, D>> {
    let streams = inputs.into_iter().map(pick).collect::<Option<Vec<_>>>()?;
    Some(scope.concatenate(streams))
}
