//! `hybrid.yaml` end to end: real PubMed records through ONNX Runtime
//! (all-MiniLM-L6-v2, SPLADE-tiny) into tantivy (BM25 + SPLADE) and FAISS,
//! then known-item search in every mode; CUDA fail-fast; the bench.

mod common;

use std::path::Path;
use std::process::Output;

use common::{medkg, pubmed_slice, repo};
use medkg_dataflow::{Mode, Retriever};
use serde_json::Value;

fn run_hybrid(source: &Path, data: &Path, extra: &[&str]) -> Output {
    medkg()
        .args(["run", "--pipeline"])
        .arg(repo().join("config/pipelines/hybrid.yaml"))
        .arg("--source")
        .arg(format!("file:{}", source.display()))
        .arg("--data-dir")
        .arg(data)
        .arg("--models")
        .arg(common::models())
        .args(["-w", "2"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn hybrid_pipeline_finds_known_items_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (source, records) = pubmed_slice(dir.path(), 300);
    let data = dir.path().join("data");
    let output = run_hybrid(&source, &data, &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["docs"], 300, "{summary}");
    // Both dense shards were written, with one vector per chunk.
    assert!(data.join("shard-0/dense.faiss").exists() && data.join("shard-1/dense.faiss").exists());

    // 30 documents picked with a fixed seed, titles of three words or more.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut picked = Vec::new();
    while picked.len() < 30 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let r = &records[(seed % records.len() as u64) as usize];
        let title = r["title"].as_str().unwrap().to_string();
        let id = format!("pmid:{}", r["pmid"].as_str().unwrap());
        if title.split_whitespace().count() >= 3 && !picked.iter().any(|(i, _)| *i == id) {
            picked.push((id, title));
        }
    }
    let mut report = Vec::new();
    for mode in [Mode::Bm25, Mode::Dense, Mode::Splade, Mode::Hybrid] {
        let mut retriever = Retriever::open(&data, mode).unwrap();
        let mut found = 0;
        for (id, title) in &picked {
            let hits = retriever.search(title, mode, "default", 3).unwrap();
            assert!(hits.len() <= 3);
            if hits.iter().any(|h| &h.doc_id == id) {
                found += 1;
            } else {
                eprintln!(
                    "{mode:?}: {id} {title:?} not in the top 3: {:?}",
                    hits.iter().map(|h| &h.doc_id).collect::<Vec<_>>()
                );
            }
        }
        report.push(format!("{mode:?} {found}/30"));
        assert_eq!(found, 30, "{mode:?}: known items at rank ≤ 3");
    }
    eprintln!("known-item hits at rank ≤ 3: {}", report.join(", "));

    // Another tenant sees nothing, in any mode.
    for mode in [Mode::Bm25, Mode::Dense, Mode::Splade, Mode::Hybrid] {
        let mut retriever = Retriever::open(&data, mode).unwrap();
        assert!(retriever.search(&picked[0].1, mode, "someone-else", 10).unwrap().is_empty(), "{mode:?}");
    }

    // The CLI: --mode and --json.
    let output = medkg()
        .args(["search", "--json", "--mode", "dense", "-k", "1", "--data-dir"])
        .arg(&data)
        .arg(&picked[1].1)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let hits: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(hits[0]["doc_id"].as_str(), Some(picked[1].0.as_str()));
}

#[test]
fn device_cuda_fails_fast_naming_cuda() {
    let dir = tempfile::tempdir().unwrap();
    let (source, _) = pubmed_slice(dir.path(), 5);
    let data = dir.path().join("data");
    let output = run_hybrid(&source, &data, &["--device", "cuda"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CUDA"), "{stderr}");
    assert!(stderr.contains("does not fall back to the CPU"), "{stderr}");
    assert!(!data.join("shard-0").exists(), "nothing may have run");
}

#[test]
fn bench_reports_models_only_and_end_to_end_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let (source, records) = pubmed_slice(dir.path(), 40);
    let queries = dir.path().join("queries.txt");
    // Ten titles to time, eight of them judged: each names the document it should find.
    let mut lines: Vec<String> = records.iter().take(10).map(|r| r["title"].as_str().unwrap().to_string()).collect();
    for (line, record) in lines.iter_mut().zip(&records).take(8) {
        line.push_str(&format!("\tpmid:{}", record["pmid"].as_str().unwrap()));
    }
    lines[7] = format!("{}\tpmid:no-such-document", records[7]["title"].as_str().unwrap());
    std::fs::write(&queries, lines.join("\n")).unwrap();
    let output = medkg()
        .args(["bench", "--json", "-w", "2", "--pipeline"])
        .arg(repo().join("config/pipelines/hybrid.yaml"))
        .arg("--source")
        .arg(format!("file:{}", source.display()))
        .arg("--queries")
        .arg(&queries)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--models")
        .arg(common::models())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().last().unwrap()).unwrap();
    for key in ["models_only_docs_per_sec", "e2e_docs_per_sec", "ratio", "embed_docs_per_sec", "splade_docs_per_sec"] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key} in {report}");
    }
    assert_eq!(report["docs"], 40);
    assert_eq!(report["search"]["queries"], 10);
    // A title finds its own record first or nearly; the judged query naming no document scores 0.
    assert_eq!(report["search"]["judged"], 8);
    let mrr = report["search"]["mrr_at_k"].as_f64().unwrap();
    assert!(mrr > 0.6 && mrr <= 7.0 / 8.0, "{report}");
    assert!(report["search"]["found_at_k"].as_u64().unwrap() <= 7, "{report}");
    assert!(report["search"]["p95_ms"].as_f64().unwrap() >= report["search"]["p50_ms"].as_f64().unwrap());
}

/// `hybrid-gpu.yaml` (fp16 MiniLM, chunk-pooled fp16 SPLADE, device cuda):
/// refused here, where CUDA is missing; with `--device cpu` the same models
/// run the whole pipeline, and the search finds what it indexed.
#[test]
fn device_cuda_hybrid_gpu_pipeline_refuses_here_and_its_models_run_on_the_cpu() {
    let models = std::env::var("MEDKG_MODELS").expect("MEDKG_MODELS (scripts/test.sh makes the variants)");
    let dir = tempfile::tempdir().unwrap();
    let (source, records) = pubmed_slice(dir.path(), 20);
    let run = |data: &Path, extra: &[&str]| {
        medkg()
            .args(["run", "--metrics-addr", "off", "--pipeline"])
            .arg(repo().join("config/pipelines/hybrid-gpu.yaml"))
            .arg(format!("--source=file:{}", source.display()))
            .arg("--data-dir")
            .arg(data)
            .args(["--models", &models])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = dir.path().join("refused");
    let output = run(&refused, &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CUDA") && stderr.contains("does not fall back to the CPU"), "{stderr}");
    assert!(!refused.join("shard-0").exists(), "nothing may have run");

    let data = dir.path().join("data");
    let output = run(&data, &["--device", "cpu"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let title = records[3]["title"].as_str().unwrap();
    let want = format!("pmid:{}", records[3]["pmid"].as_str().unwrap());
    for mode in ["dense", "splade"] {
        let out =
            medkg().args(["search", "--json", "--mode", mode, "--data-dir"]).arg(&data).arg(title).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let hits: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(hits[0]["doc_id"], want.as_str(), "{mode}: {hits:?}");
    }
}
