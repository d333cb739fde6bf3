//! Where a worker's records come from, and how each source advances its
//! epochs and records what is durable.
//!
//! - [`file`]: a file source read to its end; worker 0 checkpoints the
//!   position every sink has made durable.
//! - [`kafka`]: a consumer group read until stopped; offsets are committed
//!   once what was read in their epochs is durable.
//! - [`ir`]: the IR-ready side input of a pipeline's gates.
//! - [`feed`]: what a source feeds and watches in one worker.
//! - [`census`]: whether the gates of every worker have settled (a batch
//!   run with gates ends then).

pub(crate) mod census;
pub(crate) mod feed;
pub(crate) mod file;
pub(crate) mod ir;
pub(crate) mod kafka;

use medkg_connectors::RawPayload;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::InputHandle;

/// A worker's handle on a stream of raw records into its dataflow.
pub(crate) type RawInput = InputHandle<u64, CapacityContainerBuilder<Vec<RawPayload>>>;
