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

/// A mapping read loosely: every key and value located, no shape imposed.
type LooseMap = std::collections::HashMap<Spanned<String>, Spanned<Value>>;

/// The lists of a topology read loosely, item by item.
#[derive(Deserialize)]
struct LooseLists {
    #[serde(default)]
    stages: Option<Vec<Spanned<Value>>>,
    #[serde(default)]
    gates: Option<Vec<Spanned<Value>>>,
}

/// The same lists with each item's keys located (when every item is a mapping).
#[derive(Deserialize)]
struct LooseKeys {
    #[serde(default)]
    stages: Option<Vec<LooseMap>>,
    #[serde(default)]
    gates: Option<Vec<LooseMap>>,
}

/// Every shape error of a topology (unknown, missing and mistyped keys of
/// the file, its stages and its gates), each at the location of what it
/// names; `None` when the file does not read even loosely, or when this
/// sweep finds nothing (the first error serde reported is then the one).
pub(crate) fn shape_errors(file: &str, text: &str) -> Option<crate::ValidationErrors> {
    use crate::error::{Errors, Location};
    let top: LooseMap = serde_saphyr::from_str(text).ok()?;
    let lists: LooseLists = serde_saphyr::from_str(text).ok()?;
    let keys: Option<LooseKeys> = serde_saphyr::from_str(text).ok();
    let mut errors = Errors::default();
    let at = |l: &serde_saphyr::Location| Location::new(file, l);
    const TOP: &[&str] = &["name", "version", "description", "stages", "gates", "runtime"];
    for key in top.keys() {
        if !TOP.contains(&key.value.as_str()) {
            errors.push(
                at(&key.referenced),
                None,
                format!("unknown field `{}`, expected one of {}", key.value, TOP.join(", ")),
            );
        }
    }
    for required in ["name", "version", "stages"] {
        if !top.keys().any(|k| k.value == required) {
            errors.push(
                Location { file: file.to_string(), line: 1, column: 1 },
                None,
                format!("missing field `{required}`"),
            );
        }
    }
    let mut check =
        |what: &str, items: &[Spanned<Value>], located: Option<&Vec<LooseMap>>, allowed: &[&str], required: &[&str]| {
            for (i, item) in items.iter().enumerate() {
                let place = at(&item.referenced);
                let Some(map) = item.value.as_object() else {
                    errors.push(place, None, format!("{what} {} is not a mapping", i + 1));
                    continue;
                };
                // Where each key and value of this item was written, when known.
                let keys = located.and_then(|l| l.get(i));
                let key_at = |key: &str| {
                    keys.and_then(|k| k.keys().find(|s| s.value == key)).map_or(place.clone(), |s| at(&s.referenced))
                };
                let value_at = |key: &str| {
                    keys.and_then(|k| k.iter().find(|(s, _)| s.value == key))
                        .map_or(place.clone(), |(_, v)| at(&v.referenced))
                };
                let name = map.get("name").and_then(Value::as_str);
                let label = name.map_or_else(|| format!("{what} {}", i + 1), |n| format!("{what} `{n}`"));
                let mut unknown: Vec<&String> = map.keys().filter(|k| !allowed.contains(&k.as_str())).collect();
                unknown.sort();
                for key in unknown {
                    errors.push(
                        key_at(key),
                        name,
                        format!("{label}: unknown field `{key}`, expected one of {}", allowed.join(", ")),
                    );
                }
                for key in required {
                    match map.get(*key) {
                        None => errors.push(place.clone(), name, format!("{label}: missing field `{key}`")),
                        Some(v) if !v.is_string() => {
                            errors.push(value_at(key), name, format!("{label}: `{key}` must be a string"))
                        }
                        Some(_) => {}
                    }
                }
                if map.get("depends_on").is_some_and(|d| !d.as_array().is_some_and(|d| d.iter().all(Value::is_string)))
                {
                    errors.push(
                        value_at("depends_on"),
                        name,
                        format!("{label}: `depends_on` must be a list of stage names"),
                    );
                }
                if map.get("config").is_some_and(|c| !c.is_object()) {
                    errors.push(value_at("config"), name, format!("{label}: `config` must be a mapping"));
                }
            }
        };
    let located = keys.as_ref();
    if let Some(stages) = &lists.stages {
        let allowed = ["name", "type", "policy", "depends_on", "config"];
        check("stage", stages, located.and_then(|k| k.stages.as_ref()), &allowed, &["name", "type"]);
    }
    if let Some(gates) = &lists.gates {
        let allowed = ["name", "after", "condition", "timeout"];
        check("gate", gates, located.and_then(|k| k.gates.as_ref()), &allowed, &["name", "after", "condition"]);
    }
    errors.finish(()).err()
}
