//! What a source feeds and watches in one worker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use super::census::GateCensus;
use super::ir::IrReadyFeed;
use super::RawInput;
use crate::housekeeping::Housekeeping;
use crate::ops::ctx::Letters;
use crate::progress::frontier_of;
use crate::shared::Shared;

/// What a source feeds and watches in one worker: the dataflow's input and
/// its two probes, `flow` on what enters the sinks and `committed` on what
/// they have made durable.
pub(crate) struct Feed {
    pub input: RawInput,
    pub flow: ProbeHandle<u64>,
    pub committed: ProbeHandle<u64>,
    pub letters: Letters,
    pub housekeeping: Housekeeping,
    /// The IR-ready input of the pipeline's gates, if it has any.
    pub ir_ready: Option<IrReadyFeed>,
    /// Whether every worker's gates have settled (a file source with gates).
    pub census: Option<GateCensus>,
}

/// What a batch source still watches once its input has closed.
pub(crate) struct Tail {
    pub committed: ProbeHandle<u64>,
    pub letters: Letters,
    pub housekeeping: Housekeeping,
    pub ir_ready: Option<IrReadyFeed>,
    pub census: Option<GateCensus>,
}

/// After a batch source's input has closed: documents waiting at the gates
/// keep reading IR-ready records until, in every worker of every process,
/// every downloaded record has arrived and none waits (joined or timed
/// out), or until stopped (they stay waiting, durably, for the next run);
/// then everything is made durable. `checkpoint` runs between steps (where
/// the source records what is durable).
pub(crate) fn drain(
    worker: &mut Worker,
    shared: &Arc<Shared>,
    tail: Tail,
    mut checkpoint: impl FnMut(&ProbeHandle<u64>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let Tail { committed, letters, mut housekeeping, mut ir_ready, census } = tail;
    let flush = || -> anyhow::Result<()> { Ok(letters.borrow_mut().flush()?) };
    if let (Some(ir_ready), Some(mut census)) = (&mut ir_ready, census) {
        loop {
            ir_ready.poll();
            ir_ready.advance(ir_ready.epoch + 1);
            worker.step_or_park(Some(Duration::from_millis(50)));
            if let Some(fatal) = shared.failed() {
                bail!("{fatal}");
            }
            housekeeping.tick(&committed)?;
            ir_ready.commit_durable(frontier_of(&committed), flush)?;
            checkpoint(&committed)?;
            if census.settled() || shared.stop.load(Ordering::SeqCst) {
                break;
            }
            census.report(housekeeping.gates_settled());
        }
        ir_ready.close();
    }
    while !committed.done() {
        worker.step_or_park(Some(Duration::from_millis(50)));
        if let Some(fatal) = shared.failed() {
            bail!("{fatal}");
        }
        checkpoint(&committed)?;
        housekeeping.tick(&committed)?;
    }
    housekeeping.finish(&committed)?;
    flush()?;
    if let Some(ir_ready) = &ir_ready {
        ir_ready.commit_durable(u64::MAX, flush)?;
    }
    Ok(())
}
