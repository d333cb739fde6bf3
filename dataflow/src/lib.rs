//! Compiles a validated [`Plan`](medkg_topology::Plan) into a timely dataflow graph and runs it.
//!
//! # Time, progress and commits
//!
//! Timestamps are *epochs* (`u64`). The file source numbers its records in
//! source order (the same numbering on every worker), and record `o` belongs
//! to epoch `(o - start) / epoch_records`. Each stage is one timely operator;
//! stateless stages run where the record was read, and stateful stages (the
//! index) receive their input exchanged by document id, so one worker owns a
//! document and its shard.
//!
//! The index operator writes each document as it arrives but holds a
//! capability for every epoch it has written and not yet committed. When its
//! input frontier passes those epochs (at most once per `commit_interval`,
//! or, with `auto`, twenty times what the last commit took) it
//! commits every shard it owns and releases them. A
//! probe after the index therefore reads *durably indexed up to epoch E*,
//! and only then does the source record its position: worker 0 writes the
//! file checkpoint, every Kafka worker commits the offsets it read in
//! those epochs (see `source/kafka.rs`), and an API source (one page an
//! epoch, paged by worker 0) stores the cursor after the last durable page
//! (`source/adapter.rs`). A crash at any moment re-reads at most
//! the uncommitted epochs, whose writes are idempotent upserts keyed by
//! tenant and document: nothing lost, nothing doubled.
//!
//! Model stages (`embed`, `splade`) stash each epoch's chunks and encode
//! them in token-budget batches when the frontier passes the epoch.
//! Deletions (Kafka tombstones, a PubMed update file's `DeleteCitation`)
//! travel straight to the index and the graph, which order them against
//! upserts by source position.
//!
//! # Where things live
//!
//! - [`options`] what to run; `run` sets a run up, starts the workers and
//!   settles how it ended; `worker` builds one worker's dataflow and runs
//!   its source's loop (`source/`: file, Kafka, a public API, the IR-ready
//!   side input).
//! - `graph` wires the plan's stages; each stage's operator is one file in
//!   `ops/` (`records` holds the stateless stages and the operator loop
//!   they share). `settings` reads each stage's typed settings once.
//! - [`telemetry`] metrics, events and per-stage reporting; [`bench`](mod@bench)
//!   `medkg bench`; [`Retriever`] hybrid search over a data directory.
//!
//! docs/architecture.md walks a record through all of it.
#![warn(missing_docs)]

pub mod bench;
mod graph;
mod housekeeping;
pub mod http;
pub mod kg;
mod models;
mod ops;
pub mod options;
mod progress;
mod recorder;
mod retriever;
mod run;
mod settings;
mod shared;
mod source;
pub mod telemetry;
mod worker;

pub use models::{ModelRecord, RecordedModel};
pub use options::{AdapterSource, Cluster, KafkaSource, RunOptions, RunSummary};
pub use progress::{Progress, Published};
pub use recorder::RECORD_INTERVAL;
pub use retriever::{search_index, EncodedVectors, Mode, QueryEncoders, Retriever, FUSION_DEPTH};
pub use run::run;
pub use settings::{check_implemented, EncoderSpec, StageContext};
pub use telemetry::{TelemetryOptions, DEFAULT_METRICS_ADDR};
