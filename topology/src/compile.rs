//! From a topology's text to a [`Plan`], in phases: the YAML's shape, the
//! header, stage names, each stage on its own (type, policy, settings,
//! references), stream types along edges, dependency order, gates, runtime
//! settings, and finally the plan in dependency order. Every phase reports
//! into one list, so a user sees every problem of a file at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};

use crate::error::{yaml_error, Errors, Location, ValidationErrors};
use crate::kinds::{StageKind, StreamKind};
use crate::plan::{Gate, Plan, PlannedStage, RuntimeSettings, GATE_CONDITIONS, RUNTIME_KEYS};
use crate::policy::{Policies, Policy};
use crate::raw::{RawGate, RawStage, RawTopology};
use crate::settings::StageSettings;

impl Plan {
    /// Validates a topology's text; `file` names it in errors.
    pub fn from_yaml_str(file: &str, text: &str, policies: &Policies) -> Result<Plan, ValidationErrors> {
        compile(file, text, policies)
    }
}

fn compile(file: &str, text: &str, policies: &Policies) -> Result<Plan, ValidationErrors> {
    let raw: RawTopology = serde_saphyr::from_str(text).map_err(|e| {
        // serde stops at the first shape error: sweep the file for the
        // rest, so a user fixes it in one pass.
        crate::raw::shape_errors(file, text).unwrap_or_else(|| yaml_error(file, &e))
    })?;
    let mut check = Checker { file, errors: Errors::default() };
    let version = check.header(&raw);
    let by_name = check.stage_names(&raw.stages.value);
    let drafts: Vec<Draft> = raw.stages.value.iter().map(|stage| check.stage(stage, &by_name, policies)).collect();
    check.edges(&raw.stages.value, &drafts);
    let order = check.order(&raw.stages.value, &drafts);
    let gates = check.gates(&raw.gates, &by_name);
    let runtime = check.runtime(&raw.runtime);
    let Checker { errors, .. } = check;
    if !errors.list.is_empty() {
        return errors.finish(Plan::empty());
    }
    let mut errors = errors;
    match assemble(file, raw, version, drafts, order, gates, runtime) {
        Some(plan) => Ok(plan),
        None => {
            let location = Location { file: file.to_string(), line: 0, column: 0 };
            errors.push(location, None, "internal error: a checked topology did not assemble".into());
            errors.finish(Plan::empty())
        }
    }
}

/// A stage as checked: each part `None` when it was wrong (and reported).
struct Draft {
    kind: Option<StageKind>,
    policy: Option<Policy>,
    settings: Option<StageSettings>,
    /// The stages it depends on, with where each is named.
    deps: Vec<(usize, Location)>,
}

/// A gate as checked.
struct GateDraft {
    name: String,
    after: Option<usize>,
    condition: String,
    timeout: Option<std::time::Duration>,
    location: Location,
}

/// The file being checked and every problem found in it so far.
struct Checker<'a> {
    file: &'a str,
    errors: Errors,
}

impl Checker<'_> {
    fn at(&self, location: &serde_saphyr::Location) -> Location {
        Location::new(self.file, location)
    }

    /// `name`, `version` and a non-empty `stages`; returns the version as written.
    fn header(&mut self, raw: &RawTopology) -> String {
        if raw.name.value.trim().is_empty() {
            self.errors.push(self.at(&raw.name.referenced), None, "`name` must not be empty".into());
        }
        if raw.stages.value.is_empty() {
            self.errors.push(self.at(&raw.stages.referenced), None, "`stages` is empty".into());
        }
        match &raw.version.value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                let message = format!("`version` must be a number or a string, found {other}");
                self.errors.push(self.at(&raw.version.referenced), None, message);
                String::new()
            }
        }
    }

    /// Stage names, unique and non-empty: what references are checked against.
    fn stage_names<'r>(&mut self, stages: &'r [RawStage]) -> HashMap<&'r str, usize> {
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (i, stage) in stages.iter().enumerate() {
            let name = stage.name.value.as_str();
            if name.trim().is_empty() {
                self.errors.push(self.at(&stage.name.referenced), None, "a stage name must not be empty".into());
                continue;
            }
            if let Some(&first) = by_name.get(name) {
                let first_line = stages[first].name.referenced.line();
                self.errors.push(
                    self.at(&stage.name.referenced),
                    Some(name),
                    format!("duplicate stage name `{name}` (first declared on line {first_line})"),
                );
            } else {
                by_name.insert(name, i);
            }
        }
        by_name
    }

    /// One stage on its own: type, policy, settings, references.
    fn stage(&mut self, stage: &RawStage, by_name: &HashMap<&str, usize>, policies: &Policies) -> Draft {
        let kind = self.kind(stage);
        let policy = self.policy(stage, policies);
        let settings = kind.and_then(|kind| self.settings(stage, kind));
        let deps = self.deps(stage, by_name);
        Draft { kind, policy, settings, deps }
    }

    fn kind(&mut self, stage: &RawStage) -> Option<StageKind> {
        let kind = StageKind::from_name(&stage.kind.value);
        if kind.is_none() {
            let name = stage.name.value.as_str();
            let known: Vec<_> = StageKind::ALL.iter().map(|k| k.name()).collect();
            self.errors.push(
                self.at(&stage.kind.referenced),
                Some(name),
                format!("stage `{name}`: unknown stage type `{}` (known: {})", stage.kind.value, known.join(", ")),
            );
        }
        kind
    }

    fn policy(&mut self, stage: &RawStage, policies: &Policies) -> Option<Policy> {
        let policy_name = stage.policy.as_ref().map(|p| p.value.as_str()).unwrap_or("default");
        let policy = policies.get(policy_name).cloned();
        if policy.is_none() {
            let name = stage.name.value.as_str();
            let location = match &stage.policy {
                Some(p) => self.at(&p.referenced),
                None => self.at(&stage.name.referenced),
            };
            self.errors.push(
                location,
                Some(policy_name),
                format!("stage `{name}`: unknown policy `{policy_name}` (known: {})", policies.names().join(", ")),
            );
        }
        policy
    }

    /// Every `config` key against the type's key list, then the settings
    /// they decode into against each other.
    fn settings(&mut self, stage: &RawStage, kind: StageKind) -> Option<StageSettings> {
        let name = stage.name.value.as_str();
        let before = self.errors.list.len();
        let mut config = Map::new();
        for (key, value) in &stage.config {
            config.insert(key.clone(), value.value.clone());
            match kind.config_keys().iter().find(|k| k.name == key) {
                None => {
                    let known: Vec<_> = kind.config_keys().iter().map(|k| k.name).collect();
                    self.errors.push(
                        self.at(&value.referenced),
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
                        let message = format!("stage `{name}`: config `{key}`: {problem}");
                        self.errors.push(self.at(&value.referenced), Some(key), message);
                    }
                }
            }
        }
        // (Values that failed their check decode as their defaults.)
        let settings = StageSettings::decode(kind, &config);
        let problems = settings.problems();
        for (key, problem) in &problems {
            let location = match stage.config.get(*key) {
                Some(v) => self.at(&v.referenced),
                None => self.at(&stage.name.referenced),
            };
            self.errors.push(location, Some(key), format!("stage `{name}`: {problem}"));
        }
        (self.errors.list.len() == before).then_some(settings)
    }

    fn deps(&mut self, stage: &RawStage, by_name: &HashMap<&str, usize>) -> Vec<(usize, Location)> {
        let name = stage.name.value.as_str();
        let mut seen = BTreeSet::new();
        let mut deps = Vec::new();
        for dep in &stage.depends_on {
            let dep_name = dep.value.as_str();
            match by_name.get(dep_name) {
                None => self.errors.push(
                    self.at(&dep.referenced),
                    Some(dep_name),
                    format!("stage `{name}` depends on `{dep_name}`, which is not a stage of this pipeline"),
                ),
                Some(&j) if !seen.insert(j) => self.errors.push(
                    self.at(&dep.referenced),
                    Some(dep_name),
                    format!("stage `{name}` lists `{dep_name}` twice in depends_on"),
                ),
                Some(&j) => deps.push((j, self.at(&dep.referenced))),
            }
        }
        deps
    }

    /// Stream types along each edge (and from the source).
    fn edges(&mut self, stages: &[RawStage], drafts: &[Draft]) {
        for (stage, draft) in stages.iter().zip(drafts) {
            let Some(kind) = draft.kind else { continue };
            let name = stage.name.value.as_str();
            if draft.deps.is_empty() && stage.depends_on.is_empty() && kind.input() != StreamKind::Raw {
                self.errors.push(
                    self.at(&stage.name.referenced),
                    Some(name),
                    format!(
                        "stage `{name}` ({}) has no depends_on, so it would read the source's raw payloads, but it consumes {}",
                        kind.name(),
                        kind.input().describe()
                    ),
                );
            }
            for (j, location) in &draft.deps {
                let Some(dep_kind) = drafts[*j].kind else { continue };
                if dep_kind.output() != kind.input() {
                    let dep_name = &stages[*j].name.value;
                    self.errors.push(
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
    }

    /// Dependency order; cycles are reported once each, with their path.
    fn order(&mut self, stages: &[RawStage], drafts: &[Draft]) -> Option<Vec<usize>> {
        let deps: Vec<Vec<(usize, Location)>> = drafts.iter().map(|d| d.deps.clone()).collect();
        let mut cycles = Vec::new();
        let order = topological_order(&deps, |cycle| cycles.push(cycle.to_vec()));
        for cycle in cycles {
            let names: Vec<&str> = cycle.iter().map(|&i| stages[i].name.value.as_str()).collect();
            let (first, last) = (cycle[0], cycle[cycle.len() - 1]);
            // Point at the depends_on entry that closes the loop.
            let location = match deps[last].iter().find(|(j, _)| *j == first) {
                Some((_, l)) => l.clone(),
                None => self.at(&stages[last].name.referenced),
            };
            let mut path = names.clone();
            path.push(names[0]);
            self.errors.push(
                location,
                Some(names[names.len() - 1]),
                format!("dependency cycle: {} (each stage depends on the next)", path.join(" → ")),
            );
        }
        order
    }

    /// Gates: unique names, a stage to follow, a known condition, a timeout.
    fn gates(&mut self, raw: &[RawGate], by_name: &HashMap<&str, usize>) -> Vec<GateDraft> {
        let mut gates = Vec::new();
        let mut gate_names = BTreeMap::new();
        for gate in raw {
            let name = gate.name.value.as_str();
            if let Some(line) = gate_names.insert(name, gate.name.referenced.line()) {
                self.errors.push(
                    self.at(&gate.name.referenced),
                    Some(name),
                    format!("duplicate gate name `{name}` (first declared on line {line})"),
                );
            }
            let after = by_name.get(gate.after.value.as_str()).copied();
            if after.is_none() {
                self.errors.push(
                    self.at(&gate.after.referenced),
                    Some(&gate.after.value),
                    format!("gate `{name}` comes after `{}`, which is not a stage of this pipeline", gate.after.value),
                );
            }
            if !GATE_CONDITIONS.contains(&gate.condition.value.as_str()) {
                self.errors.push(
                    self.at(&gate.condition.referenced),
                    Some(&gate.condition.value),
                    format!(
                        "gate `{name}`: unknown condition `{}` (known: {})",
                        gate.condition.value,
                        GATE_CONDITIONS.join(", ")
                    ),
                );
            }
            let timeout = gate.timeout.as_ref().and_then(|t| {
                let parsed = crate::duration::parse_duration(&t.value);
                if parsed.is_none() {
                    self.errors.push(
                        self.at(&t.referenced),
                        Some(name),
                        format!("gate `{name}`: timeout `{}` is not a duration (e.g. 30s, 10m, 1h)", t.value),
                    );
                }
                parsed
            });
            gates.push(GateDraft {
                name: name.to_string(),
                after,
                condition: gate.condition.value.clone(),
                timeout,
                location: self.at(&gate.name.referenced),
            });
        }
        gates
    }

    /// `runtime:` settings.
    fn runtime(&mut self, raw: &BTreeMap<String, serde_saphyr::Spanned<Value>>) -> RuntimeSettings {
        let mut runtime = RuntimeSettings::default();
        for (key, value) in raw {
            let Some((_, kind)) = RUNTIME_KEYS.iter().find(|(k, _)| k == key) else {
                let known: Vec<&str> = RUNTIME_KEYS.iter().map(|(k, _)| *k).collect();
                let message = format!("unknown runtime setting `{key}` (known: {})", known.join(", "));
                self.errors.push(self.at(&value.referenced), Some(key), message);
                continue;
            };
            if let Err(problem) = kind.check(&value.value) {
                self.errors.push(self.at(&value.referenced), Some(key), format!("runtime `{key}`: {problem}"));
                continue;
            }
            let n = value.value.as_u64().unwrap_or(1);
            match key.as_str() {
                "epoch_records" => runtime.epoch_records = n,
                "epoch_ms" => runtime.epoch_ms = n,
                _ => runtime.max_epochs_in_flight = n,
            }
        }
        runtime
    }
}

/// The plan, stages in dependency order, once every check passed (`None`
/// if a part is missing after all, which the checks rule out).
fn assemble(
    file: &str,
    raw: RawTopology,
    version: String,
    drafts: Vec<Draft>,
    order: Option<Vec<usize>>,
    gates: Vec<GateDraft>,
    runtime: RuntimeSettings,
) -> Option<Plan> {
    let order = order?;
    let mut position = vec![0; order.len()];
    for (new, &old) in order.iter().enumerate() {
        position[old] = new;
    }
    let mut drafts: Vec<Option<Draft>> = drafts.into_iter().map(Some).collect();
    let mut stages = Vec::with_capacity(order.len());
    for &old in &order {
        let Draft { kind, policy, settings, deps } = drafts[old].take()?;
        let stage = &raw.stages.value[old];
        stages.push(PlannedStage {
            name: stage.name.value.clone(),
            kind: kind?,
            policy: policy?,
            inputs: deps.iter().map(|(j, _)| position[*j]).collect(),
            settings: settings?,
            location: Location::new(file, &stage.name.referenced),
        });
    }
    let gates = gates
        .into_iter()
        .map(|g| {
            let after = position[g.after?];
            Some(Gate { name: g.name, after, condition: g.condition, timeout: g.timeout, location: g.location })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Plan { file: file.to_string(), name: raw.name.value, version, stages, gates, runtime })
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
