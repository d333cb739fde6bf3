//! A topology built in code, checked exactly as a YAML file is.
//!
//! ```
//! use medkg_topology::{Plan, Policies, StageKind};
//! use serde_json::json;
//!
//! let plan = Plan::builder("lexical")
//!     .stage("parse", StageKind::Parse, &[], json!({}))
//!     .stage("chunk", StageKind::Chunk, &["parse"], json!({ "split_by": "sentence", "split_length": 4, "split_overlap": 1 }))
//!     .stage("index", StageKind::Index, &["chunk"], json!({ "commit_interval": "250ms" }))
//!     .build(&Policies::builtin())
//!     .unwrap();
//! assert_eq!(plan.stages.len(), 3);
//! ```

use serde_json::{json, Map, Value};

use crate::error::ValidationErrors;
use crate::kinds::StageKind;
use crate::plan::Plan;
use crate::policy::Policies;

/// Builds a topology stage by stage (see [`Plan::builder`]).
#[derive(Clone, Debug)]
pub struct PlanBuilder {
    name: String,
    stages: Vec<Value>,
    gates: Vec<Value>,
    runtime: Map<String, Value>,
}

impl Plan {
    /// Starts a topology named `name`, built in code.
    pub fn builder(name: &str) -> PlanBuilder {
        PlanBuilder { name: name.to_string(), stages: Vec::new(), gates: Vec::new(), runtime: Map::new() }
    }
}

impl PlanBuilder {
    /// Adds a stage of type `kind` reading `depends_on` (none: the source),
    /// with its `config` (an object; `{}` for the defaults).
    pub fn stage(mut self, name: &str, kind: StageKind, depends_on: &[&str], config: Value) -> PlanBuilder {
        self.stages.push(json!({ "name": name, "type": kind.name(), "depends_on": depends_on, "config": config }));
        self
    }

    /// Puts the stage added last under the resilience policy `policy`.
    pub fn policy(mut self, policy: &str) -> PlanBuilder {
        if let Some(Value::Object(stage)) = self.stages.last_mut() {
            stage.insert("policy".into(), policy.into());
        }
        self
    }

    /// Adds a gate: documents wait after stage `after` until `condition`.
    pub fn gate(mut self, name: &str, after: &str, condition: &str, timeout: Option<&str>) -> PlanBuilder {
        let mut gate = json!({ "name": name, "after": after, "condition": condition });
        if let (Some(timeout), Value::Object(fields)) = (timeout, &mut gate) {
            fields.insert("timeout".into(), timeout.into());
        }
        self.gates.push(gate);
        self
    }

    /// Sets a `runtime:` setting (`epoch_records`, `epoch_ms`, `max_epochs_in_flight`).
    pub fn runtime(mut self, key: &str, value: u64) -> PlanBuilder {
        self.runtime.insert(key.into(), value.into());
        self
    }

    /// Validates the topology as a file would be (its errors name
    /// `<builder:NAME>` and lines of its JSON form).
    pub fn build(self, policies: &Policies) -> Result<Plan, ValidationErrors> {
        let topology = json!({
            "name": self.name,
            "version": 1,
            "stages": self.stages,
            "gates": self.gates,
            "runtime": self.runtime,
        });
        // JSON is YAML: the one validation path serves both.
        let text = serde_json::to_string_pretty(&topology).unwrap_or_default();
        Plan::from_yaml_str(&format!("<builder:{}>", self.name), &text, policies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_topology_is_checked_like_a_file() {
        let plan = Plan::builder("gated")
            .stage("download", StageKind::Download, &[], json!({ "allow_hosts": ["example.org"] }))
            .policy("polite-api")
            .stage("parse", StageKind::Parse, &["download"], json!({ "format": "ir" }))
            .gate("pdf", "download", "ir_ready", Some("10m"))
            .runtime("epoch_records", 16)
            .build(&Policies::builtin())
            .unwrap();
        assert_eq!(plan.stages[0].policy.name, "polite-api");
        assert_eq!((plan.gates.len(), plan.runtime.epoch_records), (1, 16));
        let errors = Plan::builder("bad")
            .stage("chunk", StageKind::Chunk, &["nowhere"], json!({ "split_length": 0 }))
            .build(&Policies::builtin())
            .unwrap_err()
            .to_string();
        assert!(errors.contains("<builder:bad>:") && errors.contains("`nowhere`"), "{errors}");
        assert!(errors.contains("split_length"), "{errors}");
    }
}
