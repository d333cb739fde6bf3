//! Helpers shared by the end-to-end tests.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The `medkg` binary under test.
pub fn medkg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_medkg"))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// shared/ (data and models): `MEDKG_SHARED`, else `../shared`.
pub fn shared() -> PathBuf {
    std::env::var_os("MEDKG_SHARED").map(PathBuf::from).unwrap_or_else(|| repo().join("../shared"))
}

/// The first `n` records of the PubMed sample, as a plain JSONL file in `dir`.
pub fn pubmed_slice(dir: &Path, n: usize) -> (PathBuf, Vec<Value>) {
    use std::io::BufRead;
    let file = std::fs::File::open(shared().join("data/pubmed_sample.jsonl.gz"))
        .expect("../shared/data/pubmed_sample.jsonl.gz (set MEDKG_SHARED)");
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
    let lines: Vec<String> = reader.lines().take(n).map(|l| l.unwrap()).collect();
    let path = dir.join(format!("pubmed-{n}.jsonl"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (path, lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect())
}
