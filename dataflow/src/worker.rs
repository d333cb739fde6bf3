//! One worker: its dataflow, its per-worker state, and its source's loop.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::anyhow;
use medkg_connectors::dead_letter::KafkaDeadLetters;
use medkg_connectors::ledger::LedgerBuffer;
use medkg_connectors::DeadLetterSink;
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use crate::graph::{self, Ports, StageOp};
use crate::housekeeping::Housekeeping;
use crate::ops::ctx::{Ctx, Letters};
use crate::ops::gate::GateState;
use crate::shared::Shared;
use crate::source::census::GateCensus;
use crate::source::feed::Feed;
use crate::source::ir::IrReadyFeed;
use crate::source::{adapter, file, kafka, RawInput};
use crate::telemetry::Reporter;

/// Builds this worker's dataflow from `stages` and feeds it from the run's
/// source until the source ends (a file, an API read once) or the run is
/// stopped (Kafka, a followed API).
pub(crate) fn run_worker(worker: &mut Worker, shared: &Arc<Shared>, stages: &[StageOp]) -> anyhow::Result<()> {
    let index = worker.index();
    let mut input = RawInput::new();
    let mut ir_input = RawInput::new();
    let flow = ProbeHandle::new();
    let committed = ProbeHandle::new();
    let letters = dead_letters(shared, index)?;
    let ledger = Rc::new(RefCell::new(match &shared.ledger {
        Some(writer) => LedgerBuffer::new(writer.clone()),
        None => LedgerBuffer::off(),
    }));
    let gates = open_gates(shared, &letters, &ledger, index, worker.peers())?;
    let mut built = Ok(());
    worker.dataflow::<u64, _, _>(|scope| {
        let raw = input.to_stream(scope);
        // One worker pages through an API, and Kafka gives each worker the
        // partitions the group assigns it: the first worker to join may read
        // a backlog alone before the rest are assigned theirs, and partitions
        // differ in size. Either way the records spread over every worker
        // (the index orders a document's writes by source position, wherever
        // they were parsed).
        let raw = match (&shared.options.adapter, &shared.options.kafka) {
            (None, None) => raw,
            _ => {
                use timely::dataflow::operators::Exchange;
                raw.exchange(|payload: &medkg_connectors::RawPayload| {
                    let partition = payload.position.partition.unwrap_or(0) as u64;
                    payload.position.ordinal.wrapping_add(partition)
                })
            }
        };
        let ports = Ports {
            raw,
            ir_ready: (!gates.is_empty()).then(|| ir_input.to_stream(scope)),
            flow: &flow,
            committed: &committed,
            ledger: &ledger,
            letters: &letters,
            gates: &gates,
        };
        built = graph::build(scope, shared, stages, ports);
    });
    built.map_err(|e| anyhow!(e))?;
    let ir_ready = match gates.is_empty() {
        true => None,
        false => Some(IrReadyFeed::open(shared, ir_input, index, worker.peers())?),
    };
    let housekeeping = Housekeeping::new(shared.clone(), ledger, gates.into_values().collect(), index);
    // A batch run with gates ends when every worker's gates have settled.
    let census = (ir_ready.is_some() && shared.options.kafka.is_none()).then(|| GateCensus::new(worker));
    let feed = Feed { input, flow, committed, letters, housekeeping, ir_ready, census };
    match (&shared.options.kafka, &shared.options.adapter) {
        (Some(source), _) => kafka::feed(worker, shared, feed, source),
        (None, Some(source)) => adapter::feed(worker, shared, feed, source),
        (None, None) => file::feed(worker, shared, feed),
    }
}

/// The worker's dead-letter sink: its own file, and the dead-letter topic
/// beside a Kafka source.
fn dead_letters(shared: &Shared, index: usize) -> anyhow::Result<Letters> {
    let mut sink = DeadLetterSink::new(&shared.options.data_dir, &format!("worker-{index}"));
    if let Some(kafka) = &shared.options.kafka {
        sink = sink.with_kafka(KafkaDeadLetters::new(&kafka.settings)?);
    }
    Ok(Rc::new(RefCell::new(sink)))
}

/// The gates' state lives beside the dataflow, by the stage each follows:
/// bookkeeping between steps settles what the index made durable and times
/// out stalled documents.
fn open_gates(
    shared: &Arc<Shared>,
    letters: &Letters,
    ledger: &Rc<RefCell<LedgerBuffer>>,
    index: usize,
    peers: usize,
) -> anyhow::Result<BTreeMap<usize, Rc<RefCell<GateState>>>> {
    let mut gates = BTreeMap::new();
    for gate in &shared.options.plan.gates {
        let reporter = Reporter::new(&shared.telemetry, &gate.name, gate.after, false, true, ledger);
        let ctx = Ctx { shared: shared.clone(), letters: letters.clone(), reporter };
        let state = GateState::open(ctx, gate, index, peers)?;
        gates.insert(gate.after, Rc::new(RefCell::new(state)));
    }
    Ok(gates)
}
