//! The two-phase PDF flow end to end, through the binary: `download` from a
//! real HTTP server on loopback serving ../shared/data/pdf, the gate's join
//! with the IR-ready stream (IR before and after the PDF, from a TEI file and
//! from `medkg pdf-parser` running beside the engine), timeouts, restarts,
//! and what `download` refuses. `cargo test gate` runs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{kafka, medkg, Reply, TestServer};
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

/// `medkg pdf-parser` running beside the engine: the downloaded records of
/// `data` in, IR-ready records to `output` (dir:PATH or kafka:TOPIC).
fn parser_beside(data: &Path, output: &str) -> Child {
    medkg()
        .args(["pdf-parser", "--brokers", &kafka::brokers()])
        .arg(format!("--input=dir:{}", data.join("downloaded").display()))
        .arg(format!("--objects={}", data.join("objects").display()))
        .arg(format!("--output={output}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
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

/// Every dead letter of a data directory, as text.
fn dead_letters(data: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(data.join("dead-letter")) else { return String::new() };
    entries.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect()
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
    let mut parser = parser_beside(&data, &format!("dir:{}", data.join("ir-ready").display()));
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
            prop_assert_eq!(summary["failed"].as_u64(), Some(0), "{}", dead_letters(&data));
            write_ir(false);
            for _ in 0..2 {
                let summary = finish(run(&pipeline, &source, &data).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
                indexed += summary["docs"].as_u64().unwrap();
                prop_assert_eq!(summary["failed"].as_u64(), Some(0), "{}", dead_letters(&data));
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

/// The shipped PDF pipelines, models included, with loopback allowed (in
/// place of their own allowlists, which name the real archives, or beside
/// none: any public host).
#[test]
fn gate_the_shipped_pdf_pipelines_run_end_to_end() {
    for file in ["pdf-two-phase.yaml", "pmc-fulltext.yaml"] {
        let dir = tempfile::tempdir().unwrap();
        let server = pdf_server();
        let config = dir.path().join("config");
        std::fs::create_dir_all(config.join("pipelines")).unwrap();
        std::fs::copy(common::repo().join("config/resilience.yaml"), config.join("resilience.yaml")).unwrap();
        let text = std::fs::read_to_string(common::repo().join("config/pipelines").join(file)).unwrap();
        let text = match text.find("allow_hosts: [") {
            Some(start) => {
                let end = start + text[start..].find(']').unwrap() + 1;
                format!("{}allow_hosts: [127.0.0.1]{}", &text[..start], &text[end..])
            }
            None => {
                assert!(text.contains("config: { url_field: pdf_url"), "{file}: the download stage's config moved");
                text.replacen(
                    "config: { url_field: pdf_url",
                    "config: { allow_hosts: [127.0.0.1], url_field: pdf_url",
                    1,
                )
            }
        };
        let pipeline = config.join("pipelines").join(file);
        std::fs::write(&pipeline, text).unwrap();
        let data = dir.path().join("data");
        let source = records(dir.path(), &[("doi:10.1186/s12984-016-0129-6", server.url("/pdf/1"))]);
        let mut parser = parser_beside(&data, &format!("dir:{}", data.join("ir-ready").display()));
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
        if file == "pmc-fulltext.yaml" {
            // It ends in extract → kg: the article has its graph, and its claims come from the PDF's text.
            let out = medkg()
                .args(["sparql", "--json", "--data-dir"])
                .arg(&data)
                .arg("SELECT ?id (COUNT(?m) AS ?n) WHERE { GRAPH ?d { ?d medkg:id ?id ; medkg:mentions ?m } } GROUP BY ?id")
                .output()
                .unwrap();
            let results: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
            let rows = results["results"]["bindings"].as_array().unwrap();
            assert_eq!(rows.len(), 1, "{results}");
            assert_eq!(rows[0]["id"]["value"], "doi:10.1186/s12984-016-0129-6");
            let mentions: u64 = rows[0]["n"]["value"].as_str().unwrap().parse().unwrap();
            assert!(mentions > 0, "the article mentions concepts: {results}");
        }
    }
}

/// Sends `records` (key, JSON) to `topic` and waits for the broker.
fn send(topic: &str, records: &[(&str, String)]) {
    use medkg_connectors::kafka::{KafkaJson, KafkaSettings};
    let settings = KafkaSettings { brokers: kafka::brokers(), ..Default::default() };
    let producer = KafkaJson::new(&settings, topic).unwrap();
    for (key, json) in records {
        producer.send(key, json.as_bytes(), &[]).unwrap();
    }
    producer.flush().unwrap();
}

/// `record` has every field docs/asyncapi.yaml requires of `message`, and
/// none it does not describe.
fn conforms(record: &Value, message: &str) {
    let text = std::fs::read_to_string(common::repo().join("docs/asyncapi.yaml")).unwrap();
    let spec: Value = serde_saphyr::from_str(&text).unwrap();
    let payload = &spec["components"]["messages"][message]["payload"];
    let fields = record.as_object().unwrap();
    for required in payload["required"].as_array().unwrap() {
        assert!(fields.contains_key(required.as_str().unwrap()), "{message}: no {required} in {record}");
    }
    for name in fields.keys() {
        assert!(payload["properties"].get(name).is_some(), "{message}: {name} is not in docs/asyncapi.yaml");
    }
}

/// Every message of `topic`, read from its start.
fn read_all(topic: &str) -> Vec<Value> {
    use rdkafka::Message;
    let consumer = kafka::reader(topic, &format!("{topic}-check-{}", std::process::id()));
    let mut out = Vec::new();
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            out.push(serde_json::from_slice(message.payload().unwrap_or_default()).unwrap_or(Value::Null));
            idle = Instant::now();
        }
    }
    out
}

/// The whole flow over Kafka, as a deployment runs it: records with PDF
/// URLs on a topic, downloaded records to a topic, `medkg pdf-parser`
/// between two topics, the engine's gates reading the IR-ready topic.
/// An IR that comes before its PDF waits durably (its offset is committed)
/// and is joined after a restart; a malformed IR-ready message is
/// dead-lettered; the IR group's offsets end at the end of the topic.
#[test]
fn gate_over_kafka_downloads_parser_and_ir_ready_topics() {
    let dir = tempfile::tempdir().unwrap();
    let server = pdf_server();
    let data = dir.path().join("data");
    let (input, downloaded, ir) = (kafka::topic("pdf-in"), kafka::topic("pdf-downloaded"), kafka::topic("pdf-ir"));
    for topic in [&input, &downloaded] {
        kafka::create_topic(topic, 1);
    }
    kafka::create_topic(&ir, 2);
    let group = format!("{input}-group");
    let yaml = std::fs::read_to_string(pipeline(dir.path(), "1h"))
        .unwrap()
        .replace("max_bytes: 2000000 }", &format!("max_bytes: 2000000, output: \"kafka:{downloaded}\" }}"));
    let pipeline = dir.path().join("config/pipelines/pdfs-kafka.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    let engine = |workers: &str| {
        medkg()
            .args(["run", "--metrics-addr", "off", "-w", workers, "--pipeline"])
            .arg(&pipeline)
            .arg(format!("--source=kafka:{input}"))
            .arg(format!("--ir-ready=kafka:{ir}"))
            .args(["--brokers", &kafka::brokers(), "--group", &group])
            .args(["--kafka-option", "session.timeout.ms=2000", "--kafka-option", "heartbeat.interval.ms=200"])
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let stop = |child: Child| {
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        finish(child)
    };
    let record =
        |id: &'static str, path: &str| (id, serde_json::json!({ "id": id, "pdf_url": server.url(path) }).to_string());
    send(&input, &[record("doi:a", "/pdf/a"), record("doi:b", "/pdf/b")]);
    // The IR of doi:early comes first, its PDF only after a restart; then a malformed record.
    let tei = std::fs::read_to_string(common::shared().join(TEI)).unwrap();
    let early = serde_json::json!({ "doc_id": "doi:early", "parser": "grobid", "tei": tei }).to_string();
    send(&ir, &[("doi:early", early), ("junk", "{\"doc_id\": 7".into())]);

    // Run 1, two workers (one IR partition each): both PDFs download and
    // wait; the early IR waits for its PDF.
    let ir_ends = kafka::ends(&ir, 2);
    let first = engine("2");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = ledger(&data);
        let waiting = ["doi:a", "doi:b"].iter().all(|d| rows.get(*d).is_some_and(|r| r["status"] == "waiting"))
            // The early IR waits for its PDF, and the ledger says so.
            && rows.get("doi:early").is_some_and(|r| {
                (r["status"].as_str(), r["pdf_ir_ready"].as_bool(), r["pdf_downloaded"].as_bool())
                    == (Some("waiting"), Some(true), Some(false))
            });
        // Both IR-ready messages are durable at the gate (joined, waiting or dead-lettered): committed.
        if waiting && kafka::committed(&ir, &format!("{group}.ir-ready"), 2) == ir_ends {
            break;
        }
        assert!(Instant::now() < deadline, "rows {rows:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A crash: whatever waits is durable, whatever is not is read again.
    // (A graceful stop would do too, but tansu 0.6 sometimes never completes
    // a rejoin of a group all of whose members left.)
    let mut first = first;
    first.kill().unwrap();
    first.wait().unwrap();

    // The downloaded stream, as docs/asyncapi.yaml describes pdf.downloaded.v1.
    let records = read_all(&downloaded);
    assert_eq!(records.len(), 2, "{records:?}");
    records.iter().for_each(|r| conforms(r, "pdfDownloaded"));
    let sha = medkg_operators::pdf::sha256_hex(&pdf_bytes());
    for r in &records {
        assert_eq!((r["sha256"].as_str(), r["tenant_id"].as_str()), (Some(sha.as_str()), Some("default")), "{r}");
        assert_eq!(r["bytes"].as_u64(), Some(pdf_bytes().len() as u64), "{r}");
        assert!(Path::new(r["path"].as_str().unwrap()).exists() && r["url"].as_str().unwrap().contains("/pdf/"));
    }

    // The parser, between the two topics, while the engine is down.
    let out = medkg()
        .args(["pdf-parser", "--once", "--brokers", &kafka::brokers(), "--group", &format!("{group}-parser")])
        .args(["--kafka-option", "session.timeout.ms=2000", "--kafka-option", "heartbeat.interval.ms=200"])
        .arg(format!("--input=kafka:{downloaded}"))
        .arg(format!("--output=kafka:{ir}"))
        .arg(format!("--objects={}", data.join("objects").display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["parsed"].as_u64(), report["failed"].as_u64()), (Some(2), Some(0)), "{report}");
    let published: Vec<Value> =
        read_all(&ir).into_iter().filter(|r| r["parser"] != "grobid" && r.is_object()).collect();
    assert_eq!(published.len(), 2, "{published:?}");
    published.iter().for_each(|r| conforms(r, "irReady"));
    send(&input, &[record("doi:early", "/pdf/early")]);

    // Run 2, one worker (both IR partitions, from where run 1 committed):
    // the waiting PDFs meet their IR, the early IR meets its PDF.
    let mut second = engine("1");
    let deadline = Instant::now() + Duration::from_secs(60);
    while indexed_docs(&data) < 3 {
        if Instant::now() > deadline {
            let _ = second.kill();
            let out = second.wait_with_output().unwrap();
            panic!(
                "indexed {}; ledger {:?}; {}",
                indexed_docs(&data),
                ledger(&data),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(second);
    assert_eq!(search(&data, "electrical stimulation"), ["doi:a", "doi:b", "doi:early"]);
    let rows = ledger(&data);
    for doc in ["doi:a", "doi:b", "doi:early"] {
        assert_eq!(rows[doc]["status"], "completed", "{doc}: {}", rows[doc]);
    }
    assert_eq!(kafka::committed(&ir, &format!("{group}.ir-ready"), 2), kafka::ends(&ir, 2));
    let letters: String = (0..2)
        .map(|w| std::fs::read_to_string(data.join(format!("dead-letter/worker-{w}.jsonl"))).unwrap_or_default())
        .collect();
    assert!(letters.contains("\"error_kind\":\"bad_ir_ready\""), "{letters}");
}

/// Two processes of a timely cluster share the gate: documents are joined
/// wherever their id hashes to, whichever process downloaded them, and the
/// run ends in both processes once every gate of the cluster has settled
/// (a per-process count would wait forever, or stop early). Once with the
/// IR-ready folder (read by worker 0), once with an IR-ready topic of two
/// partitions (one per process).
#[test]
fn gate_in_a_two_process_cluster_settles_and_ends_everywhere() {
    cluster_case(false);
    cluster_case(true);
}

fn cluster_case(over_kafka: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = pdf_server();
    let data = dir.path().join("data");
    let ids: Vec<String> = (0..6).map(|i| format!("doi:c{i}")).collect();
    let docs: Vec<(&str, String)> = ids.iter().map(|id| (id.as_str(), server.url(&format!("/pdf/{id}")))).collect();
    let source = records(dir.path(), &docs);
    let ir_topic = kafka::topic("cluster-ir");
    // The engine reads the IR-ready stream pdf-parser writes.
    let ir_spec = match over_kafka {
        true => {
            kafka::create_topic(&ir_topic, 2);
            format!("kafka:{ir_topic}")
        }
        false => format!("dir:{}", data.join("ir-ready").display()),
    };
    // Half the IR is there before the run, half comes from pdf-parser while it runs.
    let tei = std::fs::read_to_string(common::shared().join(TEI)).unwrap();
    for id in &ids[..3] {
        match over_kafka {
            true => {
                let record = serde_json::json!({ "doc_id": id, "parser": "grobid", "tei": tei }).to_string();
                send(&ir_topic, &[(id.as_str(), record)]);
            }
            false => tei_ready(&data.join("ir-ready"), id),
        }
    }
    let pipeline = pipeline(dir.path(), "2m");
    let mut parser = parser_beside(&data, &ir_spec);
    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let hostfile = dir.path().join("hosts");
    std::fs::write(&hostfile, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
    let mut processes: Vec<Child> = (0..2)
        .map(|p| {
            run(&pipeline, &source, &data)
                .args(["-w", "1", "-n", "2", "--run-id", &ir_topic, "-p", &p.to_string(), "-h"])
                .arg(&hostfile)
                .arg(format!("--ir-ready={ir_spec}"))
                .args(["--brokers", &kafka::brokers(), "--group", &format!("{ir_topic}-group")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    while processes.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        if Instant::now() > deadline {
            let _ = parser.kill();
            let stderr: Vec<String> = processes
                .into_iter()
                .map(|mut c| {
                    let _ = c.kill();
                    String::from_utf8_lossy(&c.wait_with_output().unwrap().stderr).into_owned()
                })
                .collect();
            panic!(
                "the cluster did not end within 90 s (kafka: {over_kafka}); ledger {:?}; {stderr:#?}",
                ledger(&data)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = parser.kill();
    let _ = parser.wait();
    let (mut joined, mut failed) = (0, 0);
    for child in processes {
        let summary = finish(child);
        joined += summary["docs"].as_u64().unwrap();
        failed += summary["failed"].as_u64().unwrap();
    }
    assert_eq!((joined, failed), (6, 0), "kafka: {over_kafka}: {}", dead_letters(&data));
    assert_eq!(indexed_docs(&data), 6);
    let rows = ledger(&data);
    for id in &ids {
        assert_eq!(rows[id.as_str()]["status"], "completed", "{id}: {}", rows[id.as_str()]);
    }
    if over_kafka {
        // Each process committed what it read of its partition.
        assert_eq!(kafka::committed(&ir_topic, &format!("{ir_topic}-group.ir-ready"), 2), kafka::ends(&ir_topic, 2));
    }
}

/// `medkg pdf-parser` on bad and hostile input: a record that is not a
/// downloaded record, one whose PDF is missing, one whose "PDF" is not a
/// PDF, and records that try to make it read what it should not (a path
/// outside the store, `/dev/zero`, a link out of the store, a file that
/// does not hash to its record, one above the size cap). Each gets a
/// failure file with its error (never the file's bytes), the good one is
/// parsed, and it exits 0.
#[test]
fn gate_pdf_parser_fails_bad_records_one_by_one_and_goes_on() {
    use medkg_operators::pdf::{sha256_hex, ObjectStore};
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("downloaded"), dir.path().join("ir-ready"));
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&input).unwrap();
    let store = ObjectStore::new(&objects);
    let (good_sha, good) = store.put(&pdf_bytes()).unwrap();
    let junk_bytes = b"%PDF-1.4 but nothing else";
    let (junk_sha, junk) = store.put(junk_bytes).unwrap();
    // A secret outside the store, linked into it under a valid name.
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "root:$6$hash:secret-line\n").unwrap();
    let secret_sha = sha256_hex(b"root:$6$hash:secret-line\n");
    std::fs::create_dir_all(store.path_of(&secret_sha).parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&secret, store.path_of(&secret_sha)).unwrap();
    // A stored file that does not hash to its name, and one above the cap.
    let swapped_sha = sha256_hex(b"something else");
    std::fs::create_dir_all(store.path_of(&swapped_sha).parent().unwrap()).unwrap();
    std::fs::write(store.path_of(&swapped_sha), pdf_bytes()).unwrap();
    let big_bytes = [b"%PDF-1.4 ".to_vec(), vec![b'x'; 3 << 20]].concat();
    let (big_sha, _) = store.put(&big_bytes).unwrap();
    let record = |doc: &str, sha: &str, path: &Path| {
        serde_json::json!({ "doc_id": doc, "tenant_id": "default", "url": "http://x/p.pdf",
            "sha256": sha, "bytes": 1, "path": path })
        .to_string()
    };
    let missing_sha = sha256_hex(b"never stored");
    std::fs::write(input.join("a.json"), record("doi:good", &good_sha, &good)).unwrap();
    std::fs::write(input.join("b.json"), record("doi:gone", &missing_sha, &dir.path().join("missing.pdf"))).unwrap();
    std::fs::write(input.join("c.json"), record("doi:junk", &junk_sha, &junk)).unwrap();
    std::fs::write(input.join("d.json"), "{\"doc_id\": 7").unwrap();
    std::fs::write(input.join("e.json"), record("doi:shadow", "aa", Path::new("/etc/shadow"))).unwrap();
    std::fs::write(input.join("f.json"), record("doi:zero", &good_sha.replace('a', "b"), Path::new("/dev/zero")))
        .unwrap();
    std::fs::write(input.join("g.json"), record("doi:link", &secret_sha, &secret)).unwrap();
    std::fs::write(input.join("h.json"), record("doi:swapped", &swapped_sha, &good)).unwrap();
    std::fs::write(input.join("i.json"), record("doi:big", &big_sha, &good)).unwrap();
    let out = medkg()
        .args(["pdf-parser", "--once", "--max-pdf-bytes", "2000000"])
        .arg(format!("--input=dir:{}", input.display()))
        .arg(format!("--output=dir:{}", output.display()))
        .arg(format!("--objects={}", objects.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["parsed"].as_u64(), report["failed"].as_u64()), (Some(1), Some(8)), "{report}");
    let ready = medkg_connectors::complete_json_files(&output);
    assert_eq!(ready.len(), 1, "{ready:?}");
    let ready: Value = serde_json::from_slice(&std::fs::read(&ready[0]).unwrap()).unwrap();
    assert_eq!((ready["doc_id"].as_str(), ready["sha256"].as_str()), (Some("doi:good"), Some(good_sha.as_str())));
    let failures: Vec<Value> = std::fs::read_dir(output.join("failed"))
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    let mut kinds: Vec<(String, String)> = failures
        .iter()
        .map(|f| (f["doc_id"].as_str().unwrap_or("-").to_string(), f["error_kind"].as_str().unwrap().to_string()))
        .collect();
    kinds.sort();
    let expected = [
        ("-", "bad_downloaded"),
        ("doi:big", "too_large"),
        ("doi:gone", "pdf_unreadable"),
        ("doi:junk", "bad_pdf"),
        ("doi:link", "path_refused"),
        ("doi:shadow", "bad_downloaded"),
        ("doi:swapped", "sha_mismatch"),
        ("doi:zero", "pdf_unreadable"),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(d, k)| (d.to_string(), k.to_string())).collect();
    assert_eq!(kinds, expected, "{failures:?}");
    for failure in &failures {
        let error = failure["error"].as_str().unwrap();
        assert!(!error.is_empty() && !error.contains("secret-line") && !error.contains("root:"), "{failure}");
    }
}

/// The PDF text extractor runs in a child process per PDF, under a memory
/// and a time limit: an extractor that dies (here: an address space too
/// small to start in, killed by a signal) or hangs (a timeout shorter than
/// any extraction) fails that PDF alone, and `pdf-parser` exits 0.
#[test]
fn gate_pdf_parser_survives_an_extractor_that_crashes_or_hangs() {
    use medkg_operators::pdf::ObjectStore;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("downloaded");
    std::fs::create_dir_all(&input).unwrap();
    let objects = dir.path().join("objects");
    let (sha, path) = ObjectStore::new(&objects).put(&pdf_bytes()).unwrap();
    let record = serde_json::json!({ "doc_id": "doi:10.1186/s12984-016-0129-6", "tenant_id": "default",
        "url": "http://x/p.pdf", "sha256": sha, "bytes": pdf_bytes().len(), "path": path });
    std::fs::write(input.join("a.json"), record.to_string()).unwrap();
    for (limit, kind) in
        [("--extract-timeout=0.000001", "extract_timeout"), ("--extract-memory=20000000", "extract_crashed")]
    {
        let output = dir.path().join(kind);
        let out = medkg()
            .args(["pdf-parser", "--once", limit])
            .arg(format!("--input=dir:{}", input.display()))
            .arg(format!("--output=dir:{}", output.display()))
            .arg(format!("--objects={}", objects.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{limit}: {}", String::from_utf8_lossy(&out.stderr));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((report["parsed"].as_u64(), report["failed"].as_u64()), (Some(0), Some(1)), "{limit}: {report}");
        let failures: Vec<Value> = std::fs::read_dir(output.join("failed"))
            .unwrap()
            .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
            .collect();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0]["error_kind"], kind, "{limit}: {}", failures[0]);
    }
    // Within its limits (the defaults), the same PDF is parsed.
    let output = dir.path().join("ok");
    let out = medkg()
        .args(["pdf-parser", "--once"])
        .arg(format!("--input=dir:{}", input.display()))
        .arg(format!("--output=dir:{}", output.display()))
        .arg(format!("--objects={}", objects.display()))
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["parsed"].as_u64(), Some(1), "{report}");
}
