//! The YAML exactly as written, with the location of every value.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTopology {
    pub name: Spanned<String>,
    pub version: Spanned<Value>,
    #[serde(default)]
    #[allow(dead_code)] // documentation for humans; kept so the schema accepts it
    pub description: Option<String>,
    pub stages: Spanned<Vec<RawStage>>,
    #[serde(default)]
    pub gates: Vec<RawGate>,
    #[serde(default)]
    pub runtime: BTreeMap<String, Spanned<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStage {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    #[serde(default)]
    pub policy: Option<Spanned<String>>,
    #[serde(default)]
    pub depends_on: Vec<Spanned<String>>,
    #[serde(default)]
    pub config: BTreeMap<String, Spanned<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGate {
    pub name: Spanned<String>,
    pub after: Spanned<String>,
    pub condition: Spanned<String>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
}

/// The same file read loosely: every value located, no shape imposed.
#[derive(Deserialize)]
struct LooseTopology {
    #[serde(flatten)]
    top: BTreeMap<String, Spanned<Value>>,
}

#[derive(Deserialize)]
struct LooseList {
    #[serde(default)]
    stages: Option<Spanned<Vec<Spanned<Value>>>>,
    #[serde(default)]
    gates: Option<Spanned<Vec<Spanned<Value>>>>,
}

/// Every shape error of a topology (unknown, missing and mistyped keys of
/// the file, its stages and its gates), each at the location of what it
/// names; `None` when the file does not read even loosely, or when this
/// sweep finds nothing (the first error serde reported is then the one).
pub(crate) fn shape_errors(file: &str, text: &str) -> Option<crate::ValidationErrors> {
    use crate::error::{Errors, Location};
    let top: LooseTopology = serde_saphyr::from_str(text).ok()?;
    let lists: LooseList = serde_saphyr::from_str(text).ok()?;
    let mut errors = Errors::default();
    let at = |l: &serde_saphyr::Location| Location::new(file, l);
    let whole = Location { file: file.to_string(), line: 1, column: 1 };
    const TOP: &[&str] = &["name", "version", "description", "stages", "gates", "runtime"];
    for (key, value) in &top.top {
        if !TOP.contains(&key.as_str()) {
            errors.push(
                at(&value.referenced),
                None,
                format!("unknown field `{key}`, expected one of {}", TOP.join(", ")),
            );
        }
    }
    for required in ["name", "version", "stages"] {
        if !top.top.contains_key(required) {
            errors.push(whole.clone(), None, format!("missing field `{required}`"));
        }
    }
    let mut check = |what: &str, items: &[Spanned<Value>], keys: &[&str], required: &[&str]| {
        for (i, item) in items.iter().enumerate() {
            let place = at(&item.referenced);
            let Some(map) = item.value.as_object() else {
                errors.push(place, None, format!("{what} {} is not a mapping", i + 1));
                continue;
            };
            let name = map.get("name").and_then(Value::as_str).map(str::to_string);
            let label = name.as_deref().map_or_else(|| format!("{what} {}", i + 1), |n| format!("{what} `{n}`"));
            for key in map.keys() {
                if !keys.contains(&key.as_str()) {
                    errors.push(
                        place.clone(),
                        name.as_deref(),
                        format!("{label}: unknown field `{key}`, expected one of {}", keys.join(", ")),
                    );
                }
            }
            for key in required {
                match map.get(*key) {
                    None => errors.push(place.clone(), name.as_deref(), format!("{label}: missing field `{key}`")),
                    Some(v) if !v.is_string() => {
                        errors.push(place.clone(), name.as_deref(), format!("{label}: `{key}` must be a string"))
                    }
                    Some(_) => {}
                }
            }
            if let Some(deps) = map.get("depends_on") {
                if !deps.as_array().is_some_and(|d| d.iter().all(Value::is_string)) {
                    errors.push(
                        place.clone(),
                        name.as_deref(),
                        format!("{label}: `depends_on` must be a list of stage names"),
                    );
                }
            }
            if map.get("config").is_some_and(|c| !c.is_object()) {
                errors.push(place.clone(), name.as_deref(), format!("{label}: `config` must be a mapping"));
            }
        }
    };
    if let Some(stages) = &lists.stages {
        check("stage", &stages.value, &["name", "type", "policy", "depends_on", "config"], &["name", "type"]);
    }
    if let Some(gates) = &lists.gates {
        check("gate", &gates.value, &["name", "after", "condition", "timeout"], &["name", "after", "condition"]);
    }
    errors.finish(()).err()
}
