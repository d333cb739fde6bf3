//! The two-phase PDF flow end to end, through the binary: `download` from a
//! real HTTP server on loopback serving ../shared/data/pdf, the gate's join
//! with the IR-ready stream (IR before and after the PDF, from a TEI file and
//! from `medkg pdf-parser` running beside the engine), timeouts, restarts,
//! and what `download` refuses. `cargo test gate` runs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{medkg, Reply, TestServer};
use serde_json::Value;

const PDF: &str = "data/pdf/0046d83a-edd6-4631-b57c-755cdcce8b7f.pdf";
const TEI: &str = "data/pdf/0046d83a-edd6-4631-b57c-755cdcce8b7f.tei.xml";

fn pdf_bytes() -> Vec<u8> {
    std::fs::read(common::shared().join(PDF)).unwrap()
}

/// download → gate → parse (ir) → chunk → index, with test-sized delays.
fn pipeline(dir: &Path, timeout: &str) -> PathBuf {
    let config = dir.join("config");
    std::fs::create_dir_all(config.join("pipelines")).unwrap();
    std::fs::write(
        config.join("resilience.yaml"),
        "policies:\n  default:\n    timeout: 30s\n  fast:\n    retries: { max_retries: 2, backoff: constant, initial_delay: 100ms }\n    timeout: 5s\n",
    )
    .unwrap();
    let path = config.join("pipelines/pdfs.yaml");
    std::fs::write(
        &path,
        format!(
            "name: pdfs
version: 1
stages:
  - name: download
    type: download
    policy: fast
    config: {{ url_field: pdf_url, allow_hosts: [127.0.0.1], max_bytes: 2000000 }}
  - name: parse
    type: parse
    depends_on: [download]
    config: {{ format: ir }}
  - name: chunk
    type: chunk
    depends_on: [parse]
  - name: index
    type: index
    depends_on: [chunk]
    config: {{ backends: [bm25], commit_interval: 100ms }}
gates:
  - name: ir-ready
    after: download
    condition: ir_ready
    timeout: {timeout}
"
        ),
    )
    .unwrap();
    path
}

fn records(dir: &Path, docs: &[(&str, String)]) -> PathBuf {
    let path = dir.join("pdfs.jsonl");
    let lines: Vec<String> =
        docs.iter().map(|(id, url)| serde_json::json!({ "id": id, "pdf_url": url }).to_string()).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// An IR-ready record carrying the shared TEI, as GROBID would publish it.
fn tei_ready(ir_dir: &Path, doc_id: &str) {
    tei_ready_as(ir_dir, doc_id, &format!("{}.json", doc_id.replace(['/', ':'], "_")));
}

/// The same, under a file name of the caller's (a duplicate, say).
fn tei_ready_as(ir_dir: &Path, doc_id: &str, name: &str) {
    std::fs::create_dir_all(ir_dir).unwrap();
    let tei = std::fs::read_to_string(common::shared().join(TEI)).unwrap();
    let record = serde_json::json!({ "doc_id": doc_id, "parser": "grobid", "tei": tei });
    let temp = ir_dir.join(format!(".{name}"));
    std::fs::write(&temp, record.to_string()).unwrap();
    std::fs::rename(temp, ir_dir.join(name)).unwrap();
}

fn run(pipeline: &Path, source: &Path, data: &Path) -> Command {
    let mut command = medkg();
    command
        .args(["run", "--metrics-addr", "off", "--pipeline"])
        .arg(pipeline)
        .arg(format!("--source=file:{}", source.display()))
        .arg("--data-dir")
        .arg(data);
    command
}

fn finish(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap()
}

fn ledger(data: &Path) -> std::collections::BTreeMap<String, Value> {
    let out = medkg().args(["ledger", "--json", "--data-dir"]).arg(data).output().unwrap();
    if !out.status.success() && data.join("ledger.sqlite").exists() {
        eprintln!("medkg ledger: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| (r["doc_id"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

fn indexed_docs(data: &Path) -> u64 {
    let out = medkg().args(["stats", "--json", "--data-dir"]).arg(data).output().unwrap();
    serde_json::from_slice::<Value>(&out.stdout).map(|v| v["docs"].as_u64().unwrap_or(0)).unwrap_or(0)
}

fn search(data: &Path, query: &str) -> Vec<String> {
    let out = medkg().args(["search", "--mode", "bm25", "--json", "--data-dir"]).arg(data).arg(query).output().unwrap();
    let hits: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut docs: Vec<String> = hits.iter().map(|h| h["doc_id"].as_str().unwrap().to_string()).collect();
    docs.sort();
    docs.dedup();
    docs
}

fn pdf_server() -> TestServer {
    let pdf = pdf_bytes();
    TestServer::start(move |path, nth| match path.split('/').nth(1) {
        Some("pdf") => Reply::ok(pdf.clone()),
        // 503 with Retry-After: 1, then the PDF.
        Some("busy") if nth == 0 => Reply { headers: vec![("retry-after".into(), "1".into())], ..Reply::status(503) },
        Some("busy") => Reply::ok(pdf.clone()),
        Some("html") => Reply::ok("<html>not a pdf</html>"),
        Some("big") => Reply::ok([b"%PDF-1.4\n".to_vec(), vec![b' '; 3_000_000]].concat()),
        Some("away") => {
            Reply { headers: vec![("location".into(), "http://10.11.12.13/paper.pdf".into())], ..Reply::status(302) }
        }
        _ => Reply::status(404),
    })
}

#[test]
fn gate_joins_ir_that_comes_before_and_after_the_pdf() {
    let dir = tempfile::tempdir().unwrap();
    let server = pdf_server();
    let data = dir.path().join("data");
    let source = records(dir.path(), &[("doi:before", server.url("/pdf/1")), ("doi:after", server.url("/pdf/2"))]);
    // Before: the TEI is ready before the engine even starts.
    tei_ready(&data.join("ir-ready"), "doi:before");
    // After: medkg pdf-parser turns the downloaded PDF into IR while the engine waits.
    let mut parser = medkg()
        .args(["pdf-parser", "--input"])
        .arg(format!("dir:{}", data.join("downloaded").display()))
        .arg("--output")
        .arg(format!("dir:{}", data.join("ir-ready").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let engine =
        run(&pipeline(dir.path(), "2m"), &source, &data).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let summary = finish(engine);
    let _ = parser.kill();
    let _ = parser.wait();
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(2), Some(0)), "{summary}");
    // Both are searchable: the TEI one and the one medkg extracted itself.
    let hits = search(&data, "electrical stimulation hand opening");
    assert!(hits.contains(&"doi:before".to_string()) && hits.contains(&"doi:after".to_string()), "{hits:?}");
    let rows = ledger(&data);
    for doc in ["doi:before", "doi:after"] {
        let row = &rows[doc];
        assert_eq!(
            (row["status"].as_str(), row["pdf_downloaded"].as_bool(), row["pdf_ir_ready"].as_bool()),
            (Some("completed"), Some(true), Some(true)),
            "{row}"
        );
    }
    // The PDF is stored once, by content.
    let sha = medkg_operators::pdf::sha256_hex(&pdf_bytes());
    assert!(data.join("objects").join(&sha[..2]).join(format!("{sha}.pdf")).exists());
}

#[test]
fn gate_a_missing_ir_holds_back_nothing_and_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = pdf_server();
    let data = dir.path().join("data");
    let source = records(
        dir.path(),
        &[("doi:c", server.url("/pdf/c")), ("doi:never", server.url("/pdf/n")), ("doi:d", server.url("/pdf/d"))],
    );
    tei_ready(&data.join("ir-ready"), "doi:c");
    tei_ready(&data.join("ir-ready"), "doi:d");
    let began = Instant::now();
    let mut engine =
        run(&pipeline(dir.path(), "4s"), &source, &data).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // The other two become searchable while doi:never still waits.
    let mut seen_while_waiting = false;
    while began.elapsed() < Duration::from_secs(20) {
        if engine.try_wait().unwrap().is_some() {
            break;
        }
        if indexed_docs(&data) == 2 {
            seen_while_waiting = engine.try_wait().unwrap().is_none();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen_while_waiting, "the two joined documents were not searchable while the third waited");
    let summary = finish(engine);
    assert!(began.elapsed() >= Duration::from_secs(4), "it waited for the timeout");
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(2), Some(1)), "{summary}");
    let row = &ledger(&data)["doi:never"];
    assert_eq!(row["status"], "gate_timeout", "{row}");
    assert!(row["last_error"].as_str().unwrap().starts_with("gate_timeout"));
    let letters = std::fs::read_to_string(data.join("dead-letter/worker-0.jsonl")).unwrap();
    assert!(letters.contains("\"error_kind\":\"gate_timeout\"") && letters.contains("doi:never"), "{letters}");
}

#[test]
fn gate_waiting_documents_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = pdf_server();
    let data = dir.path().join("data");
    let source = records(dir.path(), &[("doi:later", server.url("/pdf/l"))]);
    let pipeline = pipeline(dir.path(), "1h");
    let engine = run(&pipeline, &source, &data).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait until the document waits at the gate, then stop the engine.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ledger(&data).get("doi:later").is_none_or(|r| r["status"] != "waiting") {
        assert!(Instant::now() < deadline, "never waited");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    Command::new("kill").args(["-TERM", &engine.id().to_string()]).status().unwrap();
    let first = finish(engine);
    assert_eq!(first["docs"].as_u64(), Some(0), "{first}");
    // The IR comes while the engine is down; the next run has nothing new to
    // read from its source, restores the waiting document and joins it.
    tei_ready(&data.join("ir-ready"), "doi:later");
    let second = finish(run(&pipeline, &source, &data).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    assert_eq!((second["docs"].as_u64(), second["failed"].as_u64()), (Some(1), Some(0)), "{second}");
    assert_eq!(search(&data, "electrical stimulation"), ["doi:later"]);
    assert_eq!(ledger(&data)["doi:later"]["status"], "completed");
    // A third run joins nothing twice.
    let third = finish(run(&pipeline, &source, &data).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    assert_eq!(third["docs"].as_u64(), Some(0), "{third}");
    assert_eq!(indexed_docs(&data), 1);
}

#[test]
fn gate_download_refuses_what_it_must_and_honours_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = pdf_server();
    let data = dir.path().join("data");
    let source = records(
        dir.path(),
        &[
            ("doi:elsewhere", "http://192.168.1.1/paper.pdf".to_string()),
            ("doi:redirected", server.url("/away/1")),
            ("doi:big", server.url("/big/1")),
            ("doi:html", server.url("/html/1")),
            ("doi:busy", server.url("/busy/1")),
        ],
    );
    tei_ready(&data.join("ir-ready"), "doi:busy");
    let summary = finish(
        run(&pipeline(dir.path(), "1m"), &source, &data).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
    );
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(1), Some(4)), "{summary}");
    let letters: Vec<Value> = std::fs::read_to_string(data.join("dead-letter/worker-0.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kind_of =
        |doc: &str| letters.iter().find(|l| l["doc_id"] == doc).map(|l| l["error_kind"].as_str().unwrap().to_string());
    assert_eq!(kind_of("doi:elsewhere").as_deref(), Some("host_refused"));
    assert_eq!(kind_of("doi:redirected").as_deref(), Some("redirect_refused"));
    assert_eq!(kind_of("doi:big").as_deref(), Some("too_large"));
    assert_eq!(kind_of("doi:html").as_deref(), Some("not_pdf"));
    // 503 with Retry-After: 1 was retried after a second, not the policy's 100 ms.
    let times: Vec<Instant> = server.requests("/busy/").into_iter().map(|(_, t)| t).collect();
    assert_eq!(times.len(), 2);
    assert!(times[1] - times[0] >= Duration::from_millis(990), "{:?}", times[1] - times[0]);
    assert_eq!(ledger(&data)["doi:busy"]["retries"]["download"], 1);
}

#[test]
fn gate_bad_ir_ready_records_are_dead_lettered_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = pdf_server();
    let data = dir.path().join("data");
    // Elsewhere than the default folder: --ir-ready names it.
    let ir = dir.path().join("parsed");
    std::fs::create_dir_all(&ir).unwrap();
    std::fs::write(ir.join("a-broken.json"), "{not json").unwrap();
    std::fs::write(ir.join("b-empty.json"), r#"{"doc_id": "doi:ok"}"#).unwrap();
    tei_ready(&ir, "doi:ok");
    let source = records(dir.path(), &[("doi:ok", server.url("/pdf/ok"))]);
    let mut engine = run(&pipeline(dir.path(), "1m"), &source, &data);
    engine.arg(format!("--ir-ready=dir:{}", ir.display()));
    let summary = finish(engine.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(1), Some(2)), "{summary}");
    let letters = std::fs::read_to_string(data.join("dead-letter/worker-0.jsonl")).unwrap();
    assert_eq!(letters.matches("\"error_kind\":\"bad_ir_ready\"").count(), 2, "{letters}");
    assert!(letters.contains("{not json"), "the original bytes are kept: {letters}");
    assert_eq!(ledger(&data)["doi:ok"]["status"], "completed");
}

#[test]
fn gate_duplicate_downloads_and_ir_join_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = pdf_server();
    let data = dir.path().join("data");
    tei_ready(&data.join("ir-ready"), "doi:twice");
    tei_ready_as(&data.join("ir-ready"), "doi:twice", "again.json");
    let source = records(dir.path(), &[("doi:twice", server.url("/pdf/1")), ("doi:twice", server.url("/pdf/2"))]);
    // A duplicate left waiting would time out and fail: 5 s bounds the test.
    let summary = finish(
        run(&pipeline(dir.path(), "5s"), &source, &data).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
    );
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(1), Some(0)), "{summary}");
    assert_eq!(indexed_docs(&data), 1);
}

mod interleavings {
    use super::*;
    use proptest::prelude::*;

    /// Per document: its IR is there before the first run (else it comes
    /// while the engine is down, after a SIGTERM), its download record is
    /// duplicated, its IR-ready record is duplicated.
    fn case() -> impl Strategy<Value = Vec<(bool, bool, bool)>> {
        prop::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), 1..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn gate_joins_and_indexes_each_document_exactly_once(docs in case()) {
            let dir = tempfile::tempdir().unwrap();
            let server = pdf_server();
            let data = dir.path().join("data");
            let ir = data.join("ir-ready");
            let ids: Vec<String> = (0..docs.len()).map(|i| format!("doi:p{i}")).collect();
            let mut input: Vec<(&str, String)> = ids.iter().map(|id| (id.as_str(), server.url(&format!("/pdf/{id}")))).collect();
            for (i, (_, dup_download, _)) in docs.iter().enumerate() {
                if *dup_download {
                    input.push((ids[i].as_str(), server.url(&format!("/pdf/{}-again", ids[i]))));
                }
            }
            let source = records(dir.path(), &input);
            let write_ir = |before: bool| {
                for (i, (ir_before, _, dup_ir)) in docs.iter().enumerate() {
                    if *ir_before == before {
                        tei_ready(&ir, &ids[i]);
                        if *dup_ir {
                            tei_ready_as(&ir, &ids[i], &format!("again-{i}.json"));
                        }
                    }
                }
            };
            // Long enough for every wait here; a duplicate left waiting by
            // mistake times out and fails the case instead of hanging it.
            let pipeline = pipeline(dir.path(), "20s");
            write_ir(true);
            let mut indexed = 0;
            let first = run(&pipeline, &source, &data).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            let later: Vec<&String> = ids.iter().zip(&docs).filter(|(_, d)| !d.0).map(|(id, _)| id).collect();
            if !later.is_empty() {
                // Stop the engine once the later ones wait at the gate.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let rows = ledger(&data);
                    if later.iter().all(|id| rows.get(id.as_str()).is_some_and(|r| r["status"] == "waiting")) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "never waited: {rows:?}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap();
            }
            let summary = finish(first);
            indexed += summary["docs"].as_u64().unwrap();
            prop_assert_eq!(summary["failed"].as_u64(), Some(0));
            write_ir(false);
            for _ in 0..2 {
                let summary = finish(run(&pipeline, &source, &data).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
                indexed += summary["docs"].as_u64().unwrap();
                prop_assert_eq!(summary["failed"].as_u64(), Some(0));
            }
            // Joined once each over all runs, and each in the index once.
            prop_assert_eq!(indexed, ids.len() as u64);
            prop_assert_eq!(indexed_docs(&data), ids.len() as u64);
            let rows = ledger(&data);
            for id in &ids {
                prop_assert_eq!(&rows[id.as_str()]["status"], "completed");
            }
        }
    }
}

/// The shipped PDF pipelines, models included, with loopback allowed (their
/// own allowlists name the real archives).
#[test]
fn gate_the_shipped_pdf_pipelines_run_end_to_end() {
    for file in ["pdf-two-phase.yaml", "pmc-fulltext.yaml"] {
        let dir = tempfile::tempdir().unwrap();
        let server = pdf_server();
        let config = dir.path().join("config");
        std::fs::create_dir_all(config.join("pipelines")).unwrap();
        std::fs::copy(common::repo().join("config/resilience.yaml"), config.join("resilience.yaml")).unwrap();
        let text = std::fs::read_to_string(common::repo().join("config/pipelines").join(file)).unwrap();
        let start = text.find("allow_hosts: [").expect("an allowlist");
        let end = start + text[start..].find(']').unwrap() + 1;
        let text = format!("{}allow_hosts: [127.0.0.1]{}", &text[..start], &text[end..]);
        let pipeline = config.join("pipelines").join(file);
        std::fs::write(&pipeline, text).unwrap();
        let data = dir.path().join("data");
        let source = records(dir.path(), &[("doi:10.1186/s12984-016-0129-6", server.url("/pdf/1"))]);
        let mut parser = medkg()
            .args(["pdf-parser", "--input"])
            .arg(format!("dir:{}", data.join("downloaded").display()))
            .arg("--output")
            .arg(format!("dir:{}", data.join("ir-ready").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let engine = run(&pipeline, &source, &data).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let summary = finish(engine);
        let _ = parser.kill();
        let _ = parser.wait();
        assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(1), Some(0)), "{file}: {summary}");
        let out = medkg()
            .args(["search", "--json", "--data-dir"])
            .arg(&data)
            .arg("multi-contact functional electrical stimulation for hand opening")
            .output()
            .unwrap();
        let hits: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(hits[0]["doc_id"], "doi:10.1186/s12984-016-0129-6", "{file}: {hits:?}");
    }
}
