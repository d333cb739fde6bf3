//! The compiled [`Plan`]: what a valid topology file means. The checks
//! that produce it are in `compile`.

use std::path::Path;
use std::time::Duration;

use crate::error::{Location, TopologyError, ValidationErrors};
use crate::kinds::{StageKind, ValueKind};
use crate::policy::{Policies, Policy};
use crate::settings::StageSettings;

/// Gate conditions this build understands.
pub const GATE_CONDITIONS: &[&str] = &["ir_ready"];

/// A validated stage, ready to become an operator.
#[derive(Clone, Debug)]
pub struct PlannedStage {
    /// Unique name.
    pub name: String,
    /// Stage type.
    pub kind: StageKind,
    /// The resolved resilience policy.
    pub policy: Policy,
    /// Indices into [`Plan::stages`] of the stages it consumes (all earlier in
    /// the list); empty means it reads the source.
    pub inputs: Vec<usize>,
    /// Its settings, decoded from its `config:` (defaults filled in).
    pub settings: StageSettings,
    /// Where the stage was declared.
    pub location: Location,
}

/// A validated gate.
#[derive(Clone, Debug)]
pub struct Gate {
    /// Unique name.
    pub name: String,
    /// Index of the stage after which documents wait.
    pub after: usize,
    /// What they wait for (`ir_ready`).
    pub condition: String,
    /// How long before a waiting document fails.
    pub timeout: Option<Duration>,
    /// Where it was declared.
    pub location: Location,
}

/// Engine settings a topology may tune under `runtime:`.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeSettings {
    /// A source closes an epoch after this many records.
    pub epoch_records: u64,
    /// ... or after this long, whichever first (time-driven sources).
    pub epoch_ms: u64,
    /// How many epochs may be in flight beyond what the sinks have seen.
    pub max_epochs_in_flight: u64,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings { epoch_records: 1024, epoch_ms: 100, max_epochs_in_flight: 8 }
    }
}

pub(crate) const RUNTIME_KEYS: &[(&str, ValueKind)] = &[
    ("epoch_records", ValueKind::PositiveInt),
    ("epoch_ms", ValueKind::PositiveInt),
    ("max_epochs_in_flight", ValueKind::PositiveInt),
];

/// A validated topology: stages in dependency order.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The file it came from.
    pub file: String,
    /// Pipeline name.
    pub name: String,
    /// Pipeline version, as written.
    pub version: String,
    /// Stages, every stage after the stages it depends on.
    pub stages: Vec<PlannedStage>,
    /// Gates.
    pub gates: Vec<Gate>,
    /// Engine settings.
    pub runtime: RuntimeSettings,
}

impl Plan {
    /// Reads and validates a topology file.
    pub fn from_path(path: &Path, policies: &Policies) -> Result<Plan, ValidationErrors> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Plan::from_yaml_str(&file, &text, policies),
            Err(e) => Err(ValidationErrors(vec![TopologyError {
                location: Location { file, line: 0, column: 0 },
                name: None,
                message: format!("cannot read the file: {e}"),
            }])),
        }
    }

    /// The stage called `name`.
    pub fn stage(&self, name: &str) -> Option<&PlannedStage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The indices of the stages that consume stage `stage`.
    pub fn consumers_of(&self, stage: usize) -> Vec<usize> {
        (0..self.stages.len()).filter(|&i| self.stages[i].inputs.contains(&stage)).collect()
    }
}

impl Plan {
    /// The plan returned beside errors (never used).
    pub(crate) fn empty() -> Plan {
        Plan {
            file: String::new(),
            name: String::new(),
            version: String::new(),
            stages: Vec::new(),
            gates: Vec::new(),
            runtime: RuntimeSettings::default(),
        }
    }
}
