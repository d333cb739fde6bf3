//! `medkg pdf-parser`: the PDF-to-IR worker of the two-phase PDF flow, a
//! process of its own (as GROBID or MinerU would be).
//!
//! It reads downloaded records (`{"doc_id","tenant_id","url","sha256","bytes","path"}`)
//! from a folder, extracts each PDF's text and sections into the document
//! IR, and publishes an IR-ready record (`{"doc_id","tenant_id","sha256",
//! "parser","ir"}`) to the output folder as `{sha256}.json`, written to a
//! temp name and renamed so a reader never sees half a file. A PDF it
//! cannot read gets `failed/{sha256}.json` with the error instead, and the
//! gate times its document out. Records already published are skipped, so
//! a restart redoes nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use medkg_operators::index::write_atomically;
use medkg_operators::pdf::{extract, Downloaded, IrReady};

fn dir_of(spec: &str, what: &str) -> anyhow::Result<PathBuf> {
    spec.strip_prefix("dir:").map(PathBuf::from).ok_or_else(|| {
        anyhow!("--{what} `{spec}`: expected dir:PATH (Kafka topics are not supported by pdf-parser yet)")
    })
}

pub fn run(input: &str, output: &str, once: bool) -> anyhow::Result<()> {
    let (input, output) = (dir_of(input, "input")?, dir_of(output, "output")?);
    std::fs::create_dir_all(output.join("failed")).with_context(|| format!("cannot create {}", output.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("cannot install the signal handler")?;
    }
    let (mut parsed, mut failed) = (0u64, 0u64);
    loop {
        let mut records: Vec<PathBuf> = match std::fs::read_dir(&input) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
                .collect(),
            Err(_) => Vec::new(), // not created yet
        };
        records.sort();
        for path in records {
            match parse_one(&path, &output) {
                Ok(true) => parsed += 1,
                Ok(false) => {}
                Err(e) => {
                    failed += 1;
                    tracing::warn!(record = %path.display(), error = %e, "pdf-parser: cannot parse");
                }
            }
        }
        if once || stop.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("{}", serde_json::json!({ "parsed": parsed, "failed": failed }));
    Ok(())
}

/// Parses one downloaded record; `Ok(false)` when it was done before.
fn parse_one(record_path: &Path, output: &Path) -> anyhow::Result<bool> {
    let bytes = std::fs::read(record_path)?;
    let record: Downloaded = serde_json::from_slice(&bytes).context("not a downloaded record")?;
    let name = record.record_name();
    let (done, failed) = (output.join(&name), output.join("failed").join(&name));
    if done.exists() || failed.exists() {
        return Ok(false);
    }
    let pdf = std::fs::read(&record.path).with_context(|| format!("cannot read the PDF {}", record.path))?;
    match extract(&pdf, &record.doc_id, &record.tenant_id) {
        Ok(document) => {
            let ready = IrReady {
                doc_id: record.doc_id.clone(),
                tenant_id: Some(record.tenant_id.clone()),
                sha256: Some(record.sha256.clone()),
                parser: Some(concat!("medkg-pdf-parser/", env!("CARGO_PKG_VERSION")).into()),
                ir: Some(document),
                tei: None,
                pdf_url: None,
            };
            write_atomically(&done, &serde_json::to_vec(&ready)?)?;
            Ok(true)
        }
        Err(error) => {
            let failure = serde_json::json!({ "doc_id": record.doc_id, "sha256": record.sha256, "error": error });
            write_atomically(&failed, &serde_json::to_vec(&failure)?)?;
            Err(anyhow!("{error}"))
        }
    }
}
