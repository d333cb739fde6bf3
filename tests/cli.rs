//! End to end through the `medkg` binary: real PubMed records from
//! ../shared/data streamed through `config/pipelines/lexical.yaml` into
//! tantivy shards on disk, then searched; re-runs, crashes, bad input,
//! tenants, directories and topology errors.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{medkg, pubmed_slice, repo, shared, succeeded};
use serde_json::Value;

fn lexical() -> PathBuf {
    repo().join("config/pipelines/lexical.yaml")
}

/// The JSON object on the last line of stdout.
fn last_json(output: &Output) -> Value {
    let text = String::from_utf8_lossy(&output.stdout);
    let line =
        text.lines().last().unwrap_or_else(|| panic!("no output; stderr: {}", String::from_utf8_lossy(&output.stderr)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

fn run(pipeline: &Path, source: &Path, data: &Path, workers: usize, extra: &[&str]) -> Value {
    let output = succeeded(
        medkg()
            .args(["run", "--pipeline"])
            .arg(pipeline)
            .arg("--source")
            .arg(format!("file:{}", source.display()))
            .arg("--data-dir")
            .arg(data)
            .args(["-w", &workers.to_string()])
            .args(extra)
            .output()
            .unwrap(),
    );
    last_json(&output)
}

fn stats(data: &Path) -> (u64, u64) {
    let v = last_json(&succeeded(medkg().args(["stats", "--json", "--data-dir"]).arg(data).output().unwrap()));
    (v["docs"].as_u64().unwrap(), v["chunks"].as_u64().unwrap())
}

fn search(data: &Path, tenant: &str, k: usize, query: &str) -> Vec<Value> {
    let output = succeeded(
        medkg()
            .args(["search", "--json", "--tenant", tenant, "-k", &k.to_string(), "--data-dir"])
            .arg(data)
            .arg(query)
            .output()
            .unwrap(),
    );
    serde_json::from_slice::<Value>(&output.stdout).unwrap().as_array().unwrap().clone()
}

#[test]
fn two_thousand_pubmed_docs_on_two_workers_are_searchable_by_title() {
    let dir = tempfile::tempdir().unwrap();
    let (source, records) = pubmed_slice(dir.path(), 2000);
    let data = dir.path().join("data");
    let summary = run(&lexical(), &source, &data, 2, &[]);
    assert_eq!(summary["docs"], 2000, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(summary["seconds"].as_f64().unwrap() > 0.0);
    assert!(summary["docs_per_sec"].as_f64().unwrap() > 0.0);
    let (docs, chunks) = stats(&data);
    assert_eq!(docs, 2000);
    assert_eq!(chunks, summary["chunks"].as_u64().unwrap());
    assert!(chunks >= docs);
    // Two shards, one per worker, both written.
    assert!(data.join("shard-0/bm25/meta.json").exists() && data.join("shard-1/bm25/meta.json").exists());

    // 50 documents picked at random (a fixed seed, so a failure reproduces).
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut found = 0;
    let mut tried = Vec::new();
    while tried.len() < 50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let record = &records[(seed % records.len() as u64) as usize];
        let title = record["title"].as_str().unwrap();
        if title.split_whitespace().count() < 3 {
            continue; // "[The pineal body]." is no fair test of ranking
        }
        let want = format!("pmid:{}", record["pmid"].as_str().unwrap());
        let hits = search(&data, "default", 3, title);
        if hits.iter().any(|h| h["doc_id"] == want.as_str()) {
            found += 1;
        } else {
            eprintln!("not in top 3: {want} {title:?} -> {hits:?}");
        }
        tried.push(want);
    }
    assert_eq!(found, 50, "every exact title finds its document in the top 3");

    // Each hit has the documented shape.
    let hit = &search(&data, "default", 1, records[2]["title"].as_str().unwrap())[0];
    for key in ["doc_id", "chunk_id", "score", "title", "text"] {
        assert!(hit.get(key).is_some(), "{key} missing in {hit}");
    }
    assert!(hit["chunk_id"].as_str().unwrap().starts_with(hit["doc_id"].as_str().unwrap()));

    // A second run resumes after the checkpoint: nothing re-read, nothing added.
    let again = run(&lexical(), &source, &data, 2, &[]);
    assert_eq!(again["docs"], 0, "{again}");
    assert_eq!(stats(&data), (docs, chunks));
    // Even forced from the start (and on one worker), upserts leave the counts as they were.
    let forced = run(&lexical(), &source, &data, 1, &["--from-start"]);
    assert_eq!(forced["docs"], 2000, "{forced}");
    assert_eq!(stats(&data), (docs, chunks));
}

#[test]
fn a_run_killed_midway_and_rerun_ends_like_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (source, _) = pubmed_slice(dir.path(), 30_000);
    let clean = dir.path().join("clean");
    run(&lexical(), &source, &clean, 2, &[]);
    let expected = stats(&clean);

    let crashed = dir.path().join("crashed");
    // Small epochs and frequent commits so that a checkpoint appears early.
    let pipeline = dir.path().join("lexical-small-epochs.yaml");
    let text = std::fs::read_to_string(lexical())
        .unwrap()
        .replace("epoch_records: 1024", "epoch_records: 256")
        .replace("commit_interval: auto", "commit_interval: 100ms");
    assert!(text.contains("commit_interval: 100ms"), "lexical.yaml no longer says commit_interval: auto");
    std::fs::write(&pipeline, text).unwrap();
    let mut child = medkg()
        .args(["run", "--pipeline"])
        .arg(&pipeline)
        .arg("--source")
        .arg(format!("file:{}", source.display()))
        .arg("--data-dir")
        .arg(&crashed)
        .args(["-w", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill -9 once some, but not all, of the source is durably committed.
    let checkpoints = crashed.join("checkpoints");
    let deadline = Instant::now() + Duration::from_secs(120);
    let committed = loop {
        assert!(Instant::now() < deadline, "no checkpoint within 120 s");
        assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed midway");
        // Only the renamed file counts: a `.tmp` may be half-way to becoming it.
        let checkpoint = std::fs::read_dir(&checkpoints)
            .ok()
            .and_then(|d| {
                d.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "json"))
            })
            .and_then(|p| std::fs::read_to_string(p).ok());
        if let Some(v) = checkpoint.and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
            if v["committed"].as_u64().unwrap_or(0) > 0 {
                break v["committed"].as_u64().unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(committed < 30_000, "killed after the end ({committed})");

    let resumed = run(&pipeline, &source, &crashed, 2, &[]);
    let reread = resumed["docs"].as_u64().unwrap();
    assert!(reread < 30_000, "the re-run should resume after the checkpoint, but re-read {reread} docs");
    assert_eq!(stats(&crashed), expected, "crashed + resumed must equal an uninterrupted run");
}

#[test]
fn bad_records_are_dead_lettered_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("mixed.jsonl");
    let mut file = std::fs::File::create(&source).unwrap();
    writeln!(
        file,
        r#"{{"pmid": "1", "title": "Aspirin and stroke risk", "abstract": "Aspirin lowers the risk of stroke."}}"#
    )
    .unwrap();
    writeln!(file, r#"{{"pmid": "2", "title": "broken"#).unwrap(); // bad JSON
    file.write_all(b"{\"pmid\": \"3\", \"title\": \"caf\xe9\"}\n").unwrap(); // invalid UTF-8
    writeln!(file, r#"{{"title": "who am I"}}"#).unwrap(); // missing id
    writeln!(file, r#"{{"pmid": "5", "title": "big", "abstract": "{}"}}"#, "word ".repeat(4000)).unwrap(); // above the cap below
    writeln!(
        file,
        r#"{{"pmid": "6", "title": "Statins after myocardial infarction", "abstract": "Statins reduce events."}}"#
    )
    .unwrap();
    drop(file);
    let pipeline = dir.path().join("capped.yaml");
    std::fs::write(
        &pipeline,
        std::fs::read_to_string(lexical()).unwrap().replace("max_doc_bytes: 8388608", "max_doc_bytes: 10000"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let summary = run(&pipeline, &source, &data, 2, &[]);
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(2), Some(4)), "{summary}");
    assert_eq!(stats(&data).0, 2);
    assert_eq!(search(&data, "default", 1, "statins myocardial")[0]["doc_id"], "pmid:6");

    let letters = medkg_connectors::DeadLetterSink::read_all(&data).unwrap();
    let mut kinds: Vec<(u64, String)> = letters.iter().map(|l| (l.ordinal, l.error_kind.clone())).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [(1, "bad_json".to_string()), (2, "invalid_utf8".into()), (3, "missing_id".into()), (4, "too_large".into())]
    );
    for letter in &letters {
        assert_eq!(letter.stage, "parse");
        assert_eq!(letter.error_class, "permanent");
        assert!(letter.position.ends_with(&format!(":{}", letter.ordinal + 1)), "{}", letter.position);
        assert!(!letter.message.is_empty());
    }
    let utf8 = letters.iter().find(|l| l.error_kind == "invalid_utf8").unwrap();
    assert_eq!(utf8.bytes(), b"{\"pmid\": \"3\", \"title\": \"caf\xe9\"}", "the original bytes are kept");
}

#[test]
fn directories_of_jats_ctgov_and_broken_xml() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for entry in std::fs::read_dir(shared().join("data/pmc")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, input.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::copy(repo().join("tests/fixtures/ctgov/NCT04280705.json"), input.join("NCT04280705.json")).unwrap();
    std::fs::copy(repo().join("tests/fixtures/pubmed21n1298-first3.xml"), input.join("pubmed-set.xml")).unwrap();
    std::fs::write(input.join("broken.xml"), "<article><front><article-meta>").unwrap();
    let data = dir.path().join("data");
    let summary = run(&lexical(), &input, &data, 2, &[]);
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(8 + 1 + 3), Some(1)), "{summary}");
    let hits = search(&data, "default", 3, "remdesivir hospitalized adults COVID-19");
    assert_eq!(hits[0]["doc_id"], "nct:NCT04280705");
    let hits = search(
        &data,
        "default",
        3,
        "Dopamine modulates acute responses to cocaine, nicotine and ethanol in Drosophila",
    );
    assert_eq!(hits[0]["doc_id"], "pmid:10704411");
    let letters = medkg_connectors::DeadLetterSink::read_all(&data).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].error_kind, "bad_xml");
    assert!(letters[0].position.ends_with("broken.xml"));
}

#[test]
fn tenants_only_see_their_own_documents() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    std::fs::write(&a, "{\"pmid\": \"11\", \"title\": \"Heparin dosing in obesity\"}\n").unwrap();
    std::fs::write(&b, "{\"pmid\": \"22\", \"title\": \"Heparin induced thrombocytopenia\"}\n{\"pmid\": \"33\", \"title\": \"Heparin for tenant c\", \"tenant_id\": \"c\"}\n").unwrap();
    let data = dir.path().join("data");
    run(&lexical(), &a, &data, 1, &["--tenant", "a"]);
    run(&lexical(), &b, &data, 1, &["--tenant", "b"]);
    let ids = |tenant: &str| {
        search(&data, tenant, 10, "heparin")
            .iter()
            .map(|h| h["doc_id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("a"), ["pmid:11"]);
    assert_eq!(ids("b"), ["pmid:22"]);
    assert_eq!(ids("c"), ["pmid:33"]);
    assert!(ids("default").is_empty());

    // The same PMID in two tenants: two documents. Re-ingesting one tenant's
    // copy (with new text) must neither delete nor change the other's.
    let shared_a = dir.path().join("shared-a.jsonl");
    std::fs::write(&shared_a, "{\"pmid\": \"99\", \"title\": \"Warfarin and vitamin K\"}\n").unwrap();
    run(&lexical(), &shared_a, &data, 1, &["--tenant", "a"]);
    let shared_b = dir.path().join("shared-b.jsonl");
    std::fs::write(&shared_b, "{\"pmid\": \"99\", \"title\": \"Warfarin dosing by genotype\"}\n").unwrap();
    run(&lexical(), &shared_b, &data, 1, &["--tenant", "b"]);
    let title = |tenant: &str| search(&data, tenant, 1, "warfarin")[0]["title"].as_str().unwrap().to_string();
    assert_eq!(title("a"), "Warfarin and vitamin K");
    assert_eq!(title("b"), "Warfarin dosing by genotype");
    std::fs::write(&shared_b, "{\"pmid\": \"99\", \"title\": \"Warfarin dosing by CYP2C9 genotype\"}\n").unwrap();
    run(&lexical(), &shared_b, &data, 1, &["--tenant", "b", "--from-start"]);
    assert_eq!(title("a"), "Warfarin and vitamin K", "tenant b's re-ingest touched tenant a");
    assert_eq!(title("b"), "Warfarin dosing by CYP2C9 genotype");
    assert_eq!(stats(&data).0, 5);
}

#[test]
fn validate_reports_every_error_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: bad\nversion: 1\nstages:\n  - name: parse\n    type: parse\n    depends_on: [chunk]\n  - name: chunk\n    type: chunk\n    depends_on: [parse]\n    policy: nope\n").unwrap();
    let output = medkg().arg("validate").arg(&bad).arg(lexical()).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = bad.display().to_string();
    assert!(stderr.contains(&format!("{file}:10:13: error: stage `chunk`: unknown policy `nope`")), "{stderr}");
    assert!(stderr.contains("dependency cycle"), "{stderr}");
    assert!(stderr.contains(&format!("{file}:")), "{stderr}");

    let all: Vec<PathBuf> =
        std::fs::read_dir(repo().join("config/pipelines")).unwrap().map(|e| e.unwrap().path()).collect();
    let output = medkg().arg("validate").args(&all).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_pipeline_with_settings_this_build_lacks_fails_at_start_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let (source, _) = pubmed_slice(dir.path(), 10);
    let kg = std::fs::read_to_string(repo().join("config/pipelines/kg-lexical.yaml")).unwrap();
    let cases = [
        (kg.replace("backend: oxigraph", "backend: neo4j"), "backend `neo4j`"),
        (kg.replace("model: dictionary", "model: scispacy"), "model `scispacy`"),
        (
            kg.replace("min_confidence: 0.0", "min_confidence: 0.0\n      vocabulary: /nonexistent/concepts.jsonl"),
            "/nonexistent/concepts.jsonl",
        ),
    ];
    for (n, (text, named)) in cases.iter().enumerate() {
        let pipeline = dir.path().join(format!("p{n}.yaml"));
        std::fs::write(&pipeline, text).unwrap();
        let output = medkg()
            .args(["run", "--pipeline"])
            .arg(&pipeline)
            .arg("--source")
            .arg(format!("file:{}", source.display()))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{named}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{named} not named in: {stderr}");
        assert!(!dir.path().join("data/shard-0").exists(), "nothing may run");
    }
}

#[test]
fn two_processes_form_a_timely_cluster_over_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let (source, records) = pubmed_slice(dir.path(), 2000);
    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let hostfile = dir.path().join("hosts");
    std::fs::write(&hostfile, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
    let data = dir.path().join("data");
    // The processes of one run must share its id (the ledger and lineage name one run).
    let refused = medkg()
        .args(["run", "--pipeline"])
        .arg(lexical())
        .arg(format!("--source=file:{}", source.display()))
        .args(["-n", "2", "-p", "0", "-h"])
        .arg(&hostfile)
        .output()
        .unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("--run-id"));
    let processes: Vec<_> = (0..2)
        .map(|p| {
            medkg()
                .args(["run", "--pipeline"])
                .arg(lexical())
                .arg("--source")
                .arg(format!("file:{}", source.display()))
                .arg("--data-dir")
                .arg(&data)
                .args(["-w", "1", "-n", "2", "--run-id", "cluster-run", "-p", &p.to_string(), "-h"])
                .arg(&hostfile)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // A process that dies before the cluster forms leaves the other waiting
    // for it: bound the wait, and kill both on failure.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut processes = processes;
    while processes.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        if Instant::now() > deadline {
            for c in &mut processes {
                let _ = c.kill();
            }
            panic!("the cluster did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut docs = 0;
    for child in processes {
        let output = succeeded(child.wait_with_output().unwrap());
        docs += last_json(&output)["docs"].as_u64().unwrap();
    }
    assert_eq!(docs, 2000, "the two processes together index every document once");
    assert_eq!(stats(&data).0, 2000);
    // Process 1's worker (global index 1) owns shard 1.
    assert!(data.join("shard-0/bm25/meta.json").exists() && data.join("shard-1/bm25/meta.json").exists());
    let title = records[7]["title"].as_str().unwrap();
    let want = format!("pmid:{}", records[7]["pmid"].as_str().unwrap());
    assert!(search(&data, "default", 3, title).iter().any(|h| h["doc_id"] == want.as_str()));
}
