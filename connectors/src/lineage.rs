//! OpenLineage run events: `START` when a run begins, `COMPLETE` or `FAIL`
//! when it ends, naming its input (the file or topic read) and output (the
//! data directory's index) datasets.
//!
//! `--lineage file:PATH` appends one event a line; `--lineage http://HOST[:PORT][/PATH]`
//! POSTs each one as JSON (to `/api/v1/lineage` when the URL has no path),
//! as Marquez and other OpenLineage backends expect. Off by default.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The OpenLineage spec the events follow.
pub const SCHEMA_URL: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/definitions/RunEvent";
/// Who produced them.
pub const PRODUCER: &str = concat!("https://github.com/medkg/medkg/tree/v", env!("CARGO_PKG_VERSION"));

/// Where run events go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineageTarget {
    /// A JSONL file.
    File(PathBuf),
    /// An OpenLineage HTTP endpoint.
    Http(String),
}

impl std::str::FromStr for LineageTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
            return Ok(LineageTarget::File(PathBuf::from(path)));
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            let url = reqwest::Url::parse(s).map_err(|e| format!("`{s}`: {e}"))?;
            let url = if url.path() == "/" { url.join("/api/v1/lineage").map_err(|e| e.to_string())? } else { url };
            return Ok(LineageTarget::Http(url.to_string()));
        }
        Err(format!("`{s}`: expected file:PATH or an http(s):// OpenLineage endpoint"))
    }
}

/// A dataset: `namespace` (`file`, `kafka://brokers`) and `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    /// Where it lives.
    pub namespace: String,
    /// What it is called there.
    pub name: String,
}

/// `START`, `COMPLETE` or `FAIL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RunState {
    /// The run began.
    Start,
    /// It ended well.
    Complete,
    /// It ended with an error.
    Fail,
}

/// What the events of one run share.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// The run (the CloudEvents `run_id` too).
    pub run_id: String,
    /// The job's namespace (`medkg`, or `medkg/{tenant}`).
    pub namespace: String,
    /// The job: the pipeline's name.
    pub job: String,
    /// What it reads.
    pub inputs: Vec<Dataset>,
    /// What it writes.
    pub outputs: Vec<Dataset>,
}

/// Builds an OpenLineage `RunEvent`.
pub fn run_event(info: &RunInfo, state: RunState, error: Option<&str>) -> serde_json::Value {
    let mut run = serde_json::json!({ "runId": info.run_id });
    if let Some(message) = error {
        run["facets"] = serde_json::json!({
            "errorMessage": {
                "_producer": PRODUCER,
                "_schemaURL": "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json",
                "message": message,
                "programmingLanguage": "rust",
            }
        });
    }
    serde_json::json!({
        "eventType": state,
        "eventTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "run": run,
        "job": { "namespace": info.namespace, "name": info.job },
        "inputs": info.inputs,
        "outputs": info.outputs,
        "producer": PRODUCER,
        "schemaURL": SCHEMA_URL,
    })
}

/// Sends run events to a target.
#[derive(Debug)]
pub struct LineageSink {
    target: LineageTarget,
    client: reqwest::Client,
}

impl LineageSink {
    /// A sink for `target`.
    pub fn new(target: LineageTarget) -> Result<LineageSink> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Http { what: "cannot build the lineage HTTP client".into(), cause: e })?;
        Ok(LineageSink { target, client })
    }

    /// Sends one event.
    pub async fn emit(&self, info: &RunInfo, state: RunState, error: Option<&str>) -> Result<()> {
        let event = run_event(info, state, error);
        match &self.target {
            LineageTarget::File(path) => {
                let mut line = serde_json::to_vec(&event).map_err(|e| Error::json("lineage event", e))?;
                line.push(b'\n');
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(&line).and_then(|()| f.sync_data()))
                    .map_err(|e| Error::io(format!("cannot write lineage to {}", path.display()), e))
            }
            LineageTarget::Http(url) => {
                let response = self
                    .client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&event).map_err(|e| Error::json("lineage event", e))?)
                    .send()
                    .await
                    .map_err(|e| Error::Http { what: format!("cannot post lineage to {url}"), cause: e })?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(Error::Other(format!("lineage endpoint {url} answered {}", response.status())))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_events_carry_the_spec_fields() {
        assert_eq!(
            "http://127.0.0.1:5000".parse::<LineageTarget>(),
            Ok(LineageTarget::Http("http://127.0.0.1:5000/api/v1/lineage".into()))
        );
        assert_eq!(
            "http://m:5000/api/v1/lineage".parse::<LineageTarget>(),
            Ok(LineageTarget::Http("http://m:5000/api/v1/lineage".into()))
        );
        assert_eq!("file:l.jsonl".parse::<LineageTarget>(), Ok(LineageTarget::File("l.jsonl".into())));
        assert!("kafka:x".parse::<LineageTarget>().is_err());
        let info = RunInfo {
            run_id: "r".into(),
            namespace: "medkg".into(),
            job: "lexical".into(),
            inputs: vec![Dataset { namespace: "file".into(), name: "/d/pubmed.jsonl".into() }],
            outputs: vec![Dataset { namespace: "file".into(), name: "/data/index".into() }],
        };
        let event = run_event(&info, RunState::Fail, Some("disk full"));
        assert_eq!(event["eventType"], "FAIL");
        assert_eq!(event["run"]["facets"]["errorMessage"]["message"], "disk full");
        assert_eq!(event["job"]["name"], "lexical");
        assert_eq!(event["inputs"][0]["name"], "/d/pubmed.jsonl");
        assert!(event["eventTime"].as_str().unwrap().ends_with('Z'));
    }
}
