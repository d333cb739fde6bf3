//! The record that flows between stages once a payload is parsed.

use medkg_connectors::{Position, RawPayload};
use serde::{Deserialize, Serialize};

/// A record on its way through the graph, with where it came from (for
/// dead letters downstream of the source).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    pub source: String,
    pub position: Position,
    pub item: T,
    /// A tombstone: delete the document `item` names (its chunks are empty).
    #[serde(default)]
    pub tombstone: bool,
}

impl<T: Serialize> Envelope<T> {
    /// The payload a dead letter keeps for a record past parsing: its IR as JSON.
    pub fn as_payload(&self, doc_id: &str) -> RawPayload {
        RawPayload {
            source: self.source.clone(),
            key: Some(doc_id.to_string()),
            bytes: serde_json::to_vec(&self.item).unwrap_or_default(),
            name: None,
            position: self.position.clone(),
            tombstone: false,
            tenant: None,
        }
    }
}
