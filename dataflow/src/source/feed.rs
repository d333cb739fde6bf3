//! What a source feeds and watches in one worker.

use timely::dataflow::ProbeHandle;

use super::census::GateCensus;
use super::ir::IrReadyFeed;
use super::RawInput;
use crate::housekeeping::Housekeeping;
use crate::ops::ctx::Letters;

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
