//! Pipeline topologies: the YAML a user writes, its validation, and the
//! compiled [`Plan`] the dataflow crate turns into a timely graph.
//!
//! A topology is a DAG of typed *stages* (`parse`, `chunk`, `index`, ...)
//! wired by `depends_on`, plus optional *gates* that hold a document until an
//! external condition holds. Validation is exhaustive: every problem of a
//! file is reported, each with the file, line and column and the offending
//! name, so a user fixes a file in one pass.
//!
//! ```
//! use medkg_topology::{Plan, Policies};
//!
//! let yaml = "
//! name: lexical
//! version: 1
//! stages:
//!   - name: parse
//!     type: parse
//!   - name: chunk
//!     type: chunk
//!     depends_on: [parse]
//!     config: { split_by: sentence, split_length: 4, split_overlap: 1 }
//!   - name: index
//!     type: index
//!     depends_on: [chunk]
//! ";
//! let plan = Plan::from_yaml_str("lexical.yaml", yaml, &Policies::builtin()).unwrap();
//! assert_eq!(plan.stages.len(), 3);
//! assert_eq!(plan.stages[2].inputs, vec![1]);
//! ```
#![warn(missing_docs)]

mod adapter;
mod builder;
mod compile;
mod duration;
mod error;
pub mod hosts;
mod kinds;
mod plan;
mod policy;
mod raw;
mod settings;
mod stream;

pub use adapter::{is_day, AdapterKind, AdapterSpec};
pub use builder::PlanBuilder;
pub use duration::parse_duration;
pub use error::{Location, TopologyError, ValidationErrors};
pub use kinds::{ConfigKey, StageKind, StreamKind, ValueKind};
pub use plan::{Gate, Plan, PlannedStage, RuntimeSettings};
pub use policy::{Backoff, Policies, Policy};
pub use settings::{
    ChunkSettings, CommitInterval, ExtractSettings, FetchSettings, IndexSettings, IngestSettings, KgSettings,
    ModelSettings, ParseSettings, StageSettings, INDEX_BACKENDS, PARSE_FORMATS,
};
pub use stream::StreamSpec;
