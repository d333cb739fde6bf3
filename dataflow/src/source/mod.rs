//! Where a worker's records come from, and how each source advances its
//! epochs and records what is durable.
//!
//! - [`file`]: a file source read to its end; worker 0 checkpoints the
//!   position every sink has made durable.
//! - [`kafka`]: a consumer group read until stopped; offsets are committed
//!   once what was read in their epochs is durable.
//! - [`adapter`]: a public API paged through by one worker, its cursor
//!   checkpointed once the pages before it are durable.
//! - [`ir`]: the IR-ready side input of a pipeline's gates.
//! - [`feed`]: what a source feeds and watches in one worker.
//! - [`census`]: whether the gates of every worker have settled (a batch
//!   run with gates ends then).

pub(crate) mod adapter;
pub(crate) mod census;
pub(crate) mod feed;
pub(crate) mod file;
pub(crate) mod ir;
pub(crate) mod kafka;

use std::sync::atomic::Ordering;

use anyhow::Context;
use medkg_connectors::{DeadLetter, Position, RawPayload};
use medkg_operators::StageError;

use crate::ops::ctx::Letters;
use crate::shared::Shared;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::InputHandle;

/// A worker's handle on a stream of raw records into its dataflow.
pub(crate) type RawInput = InputHandle<u64, CapacityContainerBuilder<Vec<RawPayload>>>;

/// Dead-letters what a source could not deliver (a record too large, a bad
/// page), counts it as failed and reports it (see
/// [`crate::telemetry::Telemetry::source_failed`]).
pub(crate) fn source_failure(
    shared: &Shared,
    letters: &Letters,
    source: &str,
    position: &Position,
    error: &StageError,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let letter =
        DeadLetter::new("source", source, position, None, error.class.as_str(), &error.kind, &error.message, bytes);
    letters.borrow_mut().write(&letter).context("cannot write a dead letter")?;
    shared.progress.failed.fetch_add(1, Ordering::Relaxed);
    shared.telemetry.source_failed(&position.to_string(), &shared.options.tenant, error);
    Ok(())
}
