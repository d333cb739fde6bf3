//! Validation of a topology file and the compiled [`Plan`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::{yaml_error, Errors, Location, TopologyError, ValidationErrors};
use crate::kinds::{StageKind, StreamKind, ValueKind};
use crate::policy::{Policies, Policy};
use crate::raw::RawTopology;

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
    /// Its validated `config` map.
    pub config: Map<String, Value>,
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

const RUNTIME_KEYS: &[(&str, ValueKind)] = &[
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

    /// Validates a topology's text; `file` names it in errors.
    pub fn from_yaml_str(file: &str, text: &str, policies: &Policies) -> Result<Plan, ValidationErrors> {
        let raw: RawTopology = serde_saphyr::from_str(text).map_err(|e| {
            // serde stops at the first shape error: sweep the file for the
            // rest, so a user fixes it in one pass.
            crate::raw::shape_errors(file, text).unwrap_or_else(|| yaml_error(file, &e))
        })?;
        let mut errors = Errors::default();
        let at = |l: &serde_saphyr::Location| Location::new(file, l);

        if raw.name.value.trim().is_empty() {
            errors.push(at(&raw.name.referenced), None, "`name` must not be empty".into());
        }
        let version = match &raw.version.value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                errors.push(
                    at(&raw.version.referenced),
                    None,
                    format!("`version` must be a number or a string, found {other}"),
                );
                String::new()
            }
        };
        if raw.stages.value.is_empty() {
            errors.push(at(&raw.stages.referenced), None, "`stages` is empty".into());
        }

        // Names first, so that references can be checked against them.
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (i, stage) in raw.stages.value.iter().enumerate() {
            let name = stage.name.value.as_str();
            if name.trim().is_empty() {
                errors.push(at(&stage.name.referenced), None, "a stage name must not be empty".into());
                continue;
            }
            if let Some(&first) = by_name.get(name) {
                let first_line = raw.stages.value[first].name.referenced.line();
                errors.push(
                    at(&stage.name.referenced),
                    Some(name),
                    format!("duplicate stage name `{name}` (first declared on line {first_line})"),
                );
            } else {
                by_name.insert(name, i);
            }
        }

        // Each stage on its own: type, policy, config, references.
        let mut kinds: Vec<Option<StageKind>> = Vec::new();
        let mut stage_policies = Vec::new();
        let mut configs = Vec::new();
        let mut deps: Vec<Vec<(usize, Location)>> = Vec::new();
        for stage in &raw.stages.value {
            let name = stage.name.value.as_str();
            let kind = StageKind::from_name(&stage.kind.value);
            if kind.is_none() {
                let known: Vec<_> = StageKind::ALL.iter().map(|k| k.name()).collect();
                errors.push(
                    at(&stage.kind.referenced),
                    Some(name),
                    format!("stage `{name}`: unknown stage type `{}` (known: {})", stage.kind.value, known.join(", ")),
                );
            }
            kinds.push(kind);

            let policy_name = stage.policy.as_ref().map(|p| p.value.as_str()).unwrap_or("default");
            let policy = policies.get(policy_name).cloned();
            if policy.is_none() {
                let location =
                    stage.policy.as_ref().map(|p| at(&p.referenced)).unwrap_or_else(|| at(&stage.name.referenced));
                errors.push(
                    location,
                    Some(policy_name),
                    format!("stage `{name}`: unknown policy `{policy_name}` (known: {})", policies.names().join(", ")),
                );
            }
            stage_policies.push(policy);

            let mut config = Map::new();
            for (key, value) in &stage.config {
                config.insert(key.clone(), value.value.clone());
                let Some(kind) = kind else { continue };
                match kind.config_keys().iter().find(|k| k.name == key) {
                    None => {
                        let known: Vec<_> = kind.config_keys().iter().map(|k| k.name).collect();
                        errors.push(
                            at(&value.referenced),
                            Some(key),
                            format!(
                                "stage `{name}`: unknown config key `{key}` for type {} (known: {})",
                                kind.name(),
                                known.join(", ")
                            ),
                        );
                    }
                    Some(spec) => {
                        if let Err(problem) = spec.kind.check(&value.value) {
                            errors.push(
                                at(&value.referenced),
                                Some(key),
                                format!("stage `{name}`: config `{key}`: {problem}"),
                            );
                        }
                    }
                }
            }
            if let Some(kind) = kind {
                for (key, problem) in kind.check_config(&config) {
                    let location =
                        stage.config.get(key).map(|v| at(&v.referenced)).unwrap_or_else(|| at(&stage.name.referenced));
                    errors.push(location, Some(key), format!("stage `{name}`: {problem}"));
                }
            }
            configs.push(config);

            let mut seen = BTreeSet::new();
            let mut stage_deps = Vec::new();
            for dep in &stage.depends_on {
                let dep_name = dep.value.as_str();
                match by_name.get(dep_name) {
                    None => errors.push(
                        at(&dep.referenced),
                        Some(dep_name),
                        format!("stage `{name}` depends on `{dep_name}`, which is not a stage of this pipeline"),
                    ),
                    Some(&j) => {
                        if !seen.insert(j) {
                            errors.push(
                                at(&dep.referenced),
                                Some(dep_name),
                                format!("stage `{name}` lists `{dep_name}` twice in depends_on"),
                            );
                        } else {
                            stage_deps.push((j, at(&dep.referenced)));
                        }
                    }
                }
            }
            deps.push(stage_deps);
        }

        // Stream types along each edge.
        for (i, stage) in raw.stages.value.iter().enumerate() {
            let Some(kind) = kinds[i] else { continue };
            let name = stage.name.value.as_str();
            if deps[i].is_empty() && stage.depends_on.is_empty() && kind.input() != StreamKind::Raw {
                errors.push(
                    at(&stage.name.referenced),
                    Some(name),
                    format!(
                        "stage `{name}` ({}) has no depends_on, so it would read the source's raw payloads, but it consumes {}",
                        kind.name(),
                        kind.input().describe()
                    ),
                );
            }
            for (j, location) in &deps[i] {
                let Some(dep_kind) = kinds[*j] else { continue };
                if dep_kind.output() != kind.input() {
                    let dep_name = &raw.stages.value[*j].name.value;
                    errors.push(
                        location.clone(),
                        Some(dep_name),
                        format!(
                            "stage `{name}` ({}) consumes {} but `{dep_name}` ({}) produces {}",
                            kind.name(),
                            kind.input().describe(),
                            dep_kind.name(),
                            dep_kind.output().describe()
                        ),
                    );
                }
            }
        }

        // Dependency order; cycles are reported once each, with their path.
        let order = topological_order(&deps, |cycle| {
            let names: Vec<&str> = cycle.iter().map(|&i| raw.stages.value[i].name.value.as_str()).collect();
            let (first, last) = (cycle[0], cycle[cycle.len() - 1]);
            // Point at the depends_on entry that closes the loop.
            let location = deps[last]
                .iter()
                .find(|(j, _)| *j == first)
                .map(|(_, l)| l.clone())
                .unwrap_or_else(|| at(&raw.stages.value[last].name.referenced));
            let mut path = names.clone();
            path.push(names[0]);
            errors.push(
                location,
                Some(names[names.len() - 1]),
                format!("dependency cycle: {} (each stage depends on the next)", path.join(" → ")),
            );
        });

        // Gates.
        let mut gates = Vec::new();
        let mut gate_names = BTreeMap::new();
        for gate in &raw.gates {
            let name = gate.name.value.as_str();
            if let Some(line) = gate_names.insert(name, gate.name.referenced.line()) {
                errors.push(
                    at(&gate.name.referenced),
                    Some(name),
                    format!("duplicate gate name `{name}` (first declared on line {line})"),
                );
            }
            let after = by_name.get(gate.after.value.as_str()).copied();
            if after.is_none() {
                errors.push(
                    at(&gate.after.referenced),
                    Some(&gate.after.value),
                    format!("gate `{name}` comes after `{}`, which is not a stage of this pipeline", gate.after.value),
                );
            }
            if !GATE_CONDITIONS.contains(&gate.condition.value.as_str()) {
                errors.push(
                    at(&gate.condition.referenced),
                    Some(&gate.condition.value),
                    format!(
                        "gate `{name}`: unknown condition `{}` (known: {})",
                        gate.condition.value,
                        GATE_CONDITIONS.join(", ")
                    ),
                );
            }
            let timeout = match &gate.timeout {
                None => None,
                Some(t) => {
                    let parsed = crate::parse_duration(&t.value);
                    if parsed.is_none() {
                        errors.push(
                            at(&t.referenced),
                            Some(name),
                            format!("gate `{name}`: timeout `{}` is not a duration (e.g. 30s, 10m, 1h)", t.value),
                        );
                    }
                    parsed
                }
            };
            gates.push((after, gate.condition.value.clone(), timeout, name.to_string(), at(&gate.name.referenced)));
        }

        // Runtime settings.
        let mut runtime = RuntimeSettings::default();
        for (key, value) in &raw.runtime {
            match RUNTIME_KEYS.iter().find(|(k, _)| k == key) {
                None => errors.push(
                    at(&value.referenced),
                    Some(key),
                    format!(
                        "unknown runtime setting `{key}` (known: {})",
                        RUNTIME_KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                    ),
                ),
                Some((_, kind)) => match kind.check(&value.value) {
                    Err(problem) => {
                        errors.push(at(&value.referenced), Some(key), format!("runtime `{key}`: {problem}"))
                    }
                    Ok(()) => {
                        let n = value.value.as_u64().unwrap_or(1);
                        match key.as_str() {
                            "epoch_records" => runtime.epoch_records = n,
                            "epoch_ms" => runtime.epoch_ms = n,
                            _ => runtime.max_epochs_in_flight = n,
                        }
                    }
                },
            }
        }

        if !errors.list.is_empty() {
            return errors.finish(unreachable_plan());
        }

        // Everything checked: assemble the plan in dependency order.
        let order = order.expect("no cycle when there are no errors");
        let mut position = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            position[old] = new;
        }
        let stages = order
            .iter()
            .map(|&old| {
                let stage = &raw.stages.value[old];
                PlannedStage {
                    name: stage.name.value.clone(),
                    kind: kinds[old].expect("kind checked"),
                    policy: stage_policies[old].clone().expect("policy checked"),
                    inputs: deps[old].iter().map(|(j, _)| position[*j]).collect(),
                    config: configs[old].clone(),
                    location: at(&stage.name.referenced),
                }
            })
            .collect();
        let gates = gates
            .into_iter()
            .map(|(after, condition, timeout, name, location)| Gate {
                name,
                after: position[after.expect("gate target checked")],
                condition,
                timeout,
                location,
            })
            .collect();
        Ok(Plan { file: file.to_string(), name: raw.name.value, version, stages, gates, runtime })
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

fn unreachable_plan() -> Plan {
    Plan {
        file: String::new(),
        name: String::new(),
        version: String::new(),
        stages: Vec::new(),
        gates: Vec::new(),
        runtime: RuntimeSettings::default(),
    }
}

/// Kahn's algorithm over `deps` (stage → the stages it depends on). Returns
/// the order, or `None` after calling `on_cycle` once per distinct cycle with
/// its stages (each depends on the next; the last depends on the first).
fn topological_order(deps: &[Vec<(usize, Location)>], mut on_cycle: impl FnMut(&[usize])) -> Option<Vec<usize>> {
    let n = deps.len();
    let mut pending: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut consumers = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for (j, _) in ds {
            consumers[*j].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).rev().filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &c in consumers[i].iter().rev() {
            pending[c] -= 1;
            if pending[c] == 0 {
                ready.push(c);
            }
        }
    }
    if order.len() == n {
        return Some(order);
    }
    // Every stage left has a dependency that is also left: walking
    // dependencies from any of them must revisit a stage, closing a cycle.
    let left: Vec<bool> = pending.iter().map(|&p| p > 0).collect();
    let mut reported: BTreeSet<Vec<usize>> = BTreeSet::new();
    for start in 0..n {
        if !left[start] {
            continue;
        }
        let mut path = vec![start];
        let mut seen_at = HashMap::from([(start, 0usize)]);
        let mut current = start;
        loop {
            let next = deps[current]
                .iter()
                .map(|(j, _)| *j)
                .find(|&j| left[j])
                .expect("a stage left by Kahn's algorithm has a dependency left");
            if let Some(&at) = seen_at.get(&next) {
                let cycle = path[at..].to_vec();
                let mut key = cycle.clone();
                key.sort_unstable();
                if reported.insert(key) {
                    on_cycle(&cycle);
                }
                break;
            }
            seen_at.insert(next, path.len());
            path.push(next);
            current = next;
        }
    }
    None
}
