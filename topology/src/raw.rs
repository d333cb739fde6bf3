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
