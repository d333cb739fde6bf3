//! medkg as a long-lived Kafka service, against a real Kafka-protocol broker
//! (tansu on loopback, started by scripts/test.sh; `MEDKG_KAFKA_BROKERS`
//! says where): crash recovery with exactly-once results, committed offsets
//! at the end of every partition, and the dead-letter topic.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{brokers, committed, create_topic, ends, reader, topic};
use common::{medkg, pubmed_slice, repo};
use rdkafka::config::ClientConfig;
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use serde_json::Value;

fn engine(topic: &str, group: &str, data: &Path) -> Child {
    engine_with(&repo().join("config/pipelines/lexical.yaml"), topic, group, data)
}

fn engine_with(pipeline: &Path, topic: &str, group: &str, data: &Path) -> Child {
    medkg()
        .args(["run", "--pipeline"])
        .arg(pipeline)
        .arg("--source")
        .arg(format!("kafka:{topic}"))
        .args(["--brokers", &brokers(), "--group", group])
        .args(["--kafka-option", "session.timeout.ms=2000", "--kafka-option", "heartbeat.interval.ms=200"])
        .arg("--data-dir")
        .arg(data)
        .args(["-w", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stats(data: &Path) -> Option<(u64, u64)> {
    let output = medkg().args(["stats", "--json", "--data-dir"]).arg(data).output().ok()?;
    let v: Value = serde_json::from_slice(&output.stdout).ok()?;
    Some((v["docs"].as_u64()?, v["chunks"].as_u64()?))
}

fn wait_for(data: &Path, want: (u64, u64), limit: Duration) {
    let deadline = Instant::now() + limit;
    while stats(data) != Some(want) {
        assert!(Instant::now() < deadline, "index at {:?}, expected {want:?}", stats(data));
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn terminate(mut child: Child) -> String {
    // SIGTERM: drain, commit, exit 0.
    unsafe_kill(child.id(), 15);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            assert!(status.success(), "engine exit {status}: {}", String::from_utf8_lossy(&output.stderr));
            return String::from_utf8_lossy(&output.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "the engine did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unsafe_kill(pid: u32, signal: i32) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}

fn produce_file(topic: &str, file: &Path) {
    let output = medkg().args(["produce", "--brokers", &brokers(), "--topic", topic]).arg(file).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn kafka_crashes_lose_nothing_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = pubmed_slice(dir.path(), 5000);
    // What an uninterrupted file run of the same records indexes.
    let clean = dir.path().join("clean");
    let output = medkg()
        .args(["run", "--pipeline"])
        .arg(repo().join("config/pipelines/lexical.yaml"))
        .arg("--source")
        .arg(format!("file:{}", file.display()))
        .arg("--data-dir")
        .arg(&clean)
        .output()
        .unwrap();
    assert!(output.status.success());
    let expected = stats(&clean).unwrap();

    let topic = topic("crash");
    create_topic(&topic, 4);
    produce_file(&topic, &file);
    let data = dir.path().join("data");
    let group = format!("{topic}-group");
    // Kill -9 at five moments, restarting each time.
    let mut seed = 0x853C_49E6_748F_EA9Bu64;
    for _ in 0..5 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = engine(&topic, &group, &data);
        std::thread::sleep(Duration::from_millis(500 + seed % 2500));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // Then let it catch up: the index may be complete already (earlier runs
    // indexed durably but died before committing their offsets), so wait for
    // the group's offsets to reach the end of every partition.
    let child = engine(&topic, &group, &data);
    wait_for(&data, expected, Duration::from_secs(180));
    let end = ends(&topic, 4);
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed(&topic, &group, 4) != end {
        assert!(Instant::now() < deadline, "offsets {:?} never reached the ends {end:?}", committed(&topic, &group, 4));
        std::thread::sleep(Duration::from_millis(250));
    }
    // A clean stop keeps everything as it is.
    let summary = terminate(child);
    assert!(summary.lines().last().unwrap_or("").starts_with("{\"docs\":"), "{summary}");
    assert_eq!(stats(&data), Some(expected), "every document's chunks exactly once");
    assert_eq!(committed(&topic, &group, 4), end, "committed offsets at the end of every partition");
}

#[test]
fn malformed_messages_go_to_the_dead_letter_topic_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let topic = topic("bad");
    create_topic(&topic, 2);
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    // Above this pipeline's 100 kB document cap, below the broker's 1 MB message cap.
    let pipeline = dir.path().join("capped.yaml");
    let text = std::fs::read_to_string(repo().join("config/pipelines/lexical.yaml")).unwrap();
    std::fs::write(&pipeline, text.replace("max_doc_bytes: 8388608", "max_doc_bytes: 100000")).unwrap();
    let big = format!("{{\"pmid\": \"4\", \"title\": \"big\", \"abstract\": \"{}\"}}", "word ".repeat(40_000));
    let messages: Vec<(&str, Vec<u8>)> = vec![
        (
            "pmid:1",
            br#"{"pmid": "1", "title": "Aspirin and stroke", "abstract": "Aspirin lowers stroke risk."}"#.to_vec(),
        ),
        ("bad-json", br#"{"pmid": "2", "title": "#.to_vec()),
        ("unknown", br#"{"source": "martian-archive", "colour": "blue"}"#.to_vec()),
        ("utf8", b"{\"pmid\": \"3\", \"title\": \"caf\xe9\"}".to_vec()),
        ("big", big.into_bytes()),
        ("pmid:5", br#"{"pmid": "5", "title": "Statins after infarction", "abstract": "Statins help."}"#.to_vec()),
    ];
    for (key, value) in &messages {
        producer.send(BaseRecord::to(&topic).key(*key).payload(value.as_slice())).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let data = dir.path().join("data");
    let child = engine_with(&pipeline, &topic, &format!("{topic}-group"), &data);
    wait_for(&data, (2, 2), Duration::from_secs(60));
    // Dead letters of the epochs made durable are in their topic.
    let consumer = reader("medkg.dlq.v1", &format!("{topic}-dlq-reader"));
    let mut found = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while found.len() < 4 && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let key = message.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
            if !["bad-json", "unknown", "utf8", "big"].contains(&key.as_str()) {
                continue; // dead letters of other runs
            }
            let headers = message.headers().unwrap();
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            let position = header("source_position").unwrap_or_default();
            if !position.starts_with(&topic) {
                continue;
            }
            found.insert(
                key,
                (
                    header("error_kind").unwrap_or_default(),
                    header("error_class"),
                    message.payload().map(<[u8]>::to_vec),
                ),
            );
        }
    }
    terminate(child);
    assert_eq!(found.len(), 4, "{:?}", found.keys().collect::<Vec<_>>());
    assert_eq!(found["bad-json"].0, "bad_json");
    assert_eq!(found["unknown"].0, "unknown_format");
    assert_eq!(found["utf8"].0, "invalid_utf8");
    assert_eq!(found["big"].0, "too_large");
    assert_eq!(found["utf8"].1.as_deref(), Some("permanent"));
    assert_eq!(found["utf8"].2.as_deref(), Some(&b"{\"pmid\": \"3\", \"title\": \"caf\xe9\"}"[..]), "original bytes");
}

#[test]
fn tombstones_delete_and_a_resent_document_replaces_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let topic = topic("tomb");
    create_topic(&topic, 2);
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let send = |key: &str, value: Option<&str>| {
        let mut record: BaseRecord<'_, str, str> = BaseRecord::to(&topic).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        producer.send(record).unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    send("pmid:1", Some(r#"{"pmid": "1", "title": "Heparin in pregnancy", "abstract": "Heparin is safe."}"#));
    send("pmid:2", Some(r#"{"pmid": "2", "title": "Lithium toxicity", "abstract": "Lithium levels matter."}"#));
    let data = dir.path().join("data");
    let child = engine(&topic, &format!("{topic}-group"), &data);
    wait_for(&data, (2, 2), Duration::from_secs(60));

    // A tombstone deletes the document from the index.
    send("pmid:1", None);
    wait_for(&data, (1, 1), Duration::from_secs(60));
    // Re-sent with new text, a document replaces its chunks (no duplicates).
    send("pmid:2", Some(r#"{"pmid": "2", "title": "Lithium toxicity revisited", "abstract": "Levels and kidneys."}"#));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = medkg()
            .args(["search", "--json", "--mode", "bm25", "-k", "5", "--data-dir"])
            .arg(&data)
            .arg("lithium")
            .output()
            .unwrap();
        let hits: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if hits[0]["title"] == "Lithium toxicity revisited" {
            assert_eq!(hits.as_array().unwrap().len(), 1, "{hits}");
            break;
        }
        assert!(Instant::now() < deadline, "the re-sent document never replaced the old one: {hits}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(stats(&data), Some((1, 1)));
    terminate(child);
}

#[test]
fn tombstones_and_resent_documents_change_the_knowledge_graph() {
    let dir = tempfile::tempdir().unwrap();
    let topic = topic("kg");
    create_topic(&topic, 2);
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let send = |key: &str, value: Option<&str>| {
        let mut record: BaseRecord<'_, str, str> = BaseRecord::to(&topic).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        producer.send(record).unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    for n in 1..=3 {
        let text = format!(
            r#"{{"pmid": "{n}", "title": "Aspirin {n}", "abstract": "Aspirin relieves headache in case {n}."}}"#
        );
        send(&format!("pmid:{n}"), Some(&text));
    }
    let data = dir.path().join("data");
    let child = engine_with(&repo().join("config/pipelines/kg-lexical.yaml"), &topic, &format!("{topic}-group"), &data);
    wait_for(&data, (3, 3), Duration::from_secs(60));
    // pmid:1 is deleted, pmid:2 says something else now.
    send("pmid:1", None);
    send("pmid:2", Some(r#"{"pmid": "2", "title": "Ibuprofen", "abstract": "Ibuprofen relieves migraine."}"#));
    // (2, 2) comes with the tombstone alone; the new pmid:2 shows in a search.
    wait_for(&data, (2, 2), Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = medkg()
            .args(["search", "--json", "--mode", "bm25", "-k", "1", "--data-dir"])
            .arg(&data)
            .arg("ibuprofen")
            .output();
        let hits: Value = serde_json::from_slice(&output.unwrap().stdout).unwrap_or(Value::Null);
        if hits[0]["doc_id"] == "pmid:2" {
            break;
        }
        assert!(Instant::now() < deadline, "the re-sent pmid:2 never reached the index: {hits}");
        std::thread::sleep(Duration::from_millis(100));
    }
    terminate(child);

    let sparql = |query: &str| -> Vec<Value> {
        let output = medkg().args(["sparql", "--json", "--data-dir"]).arg(&data).arg(query).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let v: Value = serde_json::from_slice(&output.stdout).unwrap();
        v["results"]["bindings"].as_array().unwrap().clone()
    };
    let support = |s: &str, o: &str| -> Option<u64> {
        let rows = sparql(&format!(
            "SELECT ?n WHERE {{ ?e biolink:subject <{s}> ; biolink:predicate biolink:treats ; biolink:object <{o}> ; medkg:support ?n }}"
        ));
        rows.first().map(|r| r["n"]["value"].as_str().unwrap().parse().unwrap())
    };
    let (aspirin, headache) = ("http://identifiers.org/drugbank/DB00945", "http://purl.obolibrary.org/obo/HP_0002315");
    assert_eq!(support(aspirin, headache), Some(1), "only pmid:3 still says aspirin relieves headache");
    let ibuprofen = "http://identifiers.org/drugbank/DB01050";
    assert_eq!(support(ibuprofen, "http://purl.obolibrary.org/obo/HP_0002076"), Some(1), "pmid:2's new claim");
    let docs: Vec<String> = sparql("SELECT ?id WHERE { GRAPH ?d { ?d medkg:id ?id } } ORDER BY ?id")
        .iter()
        .map(|r| r["id"]["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(docs, ["pmid:2", "pmid:3"], "the tombstone dropped pmid:1's graph");
}

#[test]
fn consumer_lag_is_measured_while_the_engine_is_behind() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let topic = topic("lag");
    create_topic(&topic, 2);
    let events_topic = format!("{topic}-events");
    create_topic(&events_topic, 1);
    let (file, _) = pubmed_slice(dir.path(), 400);
    produce_file(&topic, &file);
    // The model pipeline keeps the engine behind the topic for a while (about 30 docs/s here).
    let policies = medkg_topology::Policies::builtin();
    let plan = medkg_topology::Plan::from_path(&repo().join("config/pipelines/hybrid.yaml"), &policies).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let options = medkg_dataflow::RunOptions {
        plan,
        source: Default::default(),
        data_dir: dir.path().join("data"),
        workers: 2,
        tenant: "default".into(),
        from_start: false,
        models: Some(common::models()),
        device: None,
        kafka: Some(medkg_dataflow::KafkaSource {
            topic: topic.clone(),
            settings: medkg_connectors::kafka::KafkaSettings {
                brokers: brokers(),
                group: format!("{topic}-group"),
                options: vec![
                    ("session.timeout.ms".into(), "2000".into()),
                    ("heartbeat.interval.ms".into(), "200".into()),
                ],
            },
            stop_after: None,
        }),
        adapter: None,
        stop: Some(stop.clone()),
        cluster: None,
        telemetry: medkg_dataflow::TelemetryOptions {
            metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
            metrics_required: true,
            events: medkg_connectors::events::EventTarget::Kafka(events_topic.clone()),
            ..Default::default()
        },
        ir_ready: None,
        graph: None,
    };
    let progress = Arc::new(medkg_dataflow::Progress::default());
    let engine = {
        let progress = progress.clone();
        std::thread::spawn(move || medkg_dataflow::run(options, progress, |_, _| {}))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    // Lag while the engine is behind, and its first documents durable.
    while Instant::now() < deadline && (seen == 0 || progress.docs.load(Ordering::SeqCst) == 0) {
        seen = seen.max(progress.lag());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The long-lived run serves /metrics while it runs, lag included.
    let addr = progress.metrics_addr.lock().unwrap().expect("metrics are served");
    let (status, metrics) = common::http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name}{{"))).unwrap_or_else(|| panic!("no {name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("medkg_docs_out_total") > 0.0 && value("medkg_docs_in_total") > 0.0, "{metrics}");
    assert!(value("medkg_consumer_lag") >= 0.0);
    for name in ["medkg_active_jobs", "medkg_stage_duration_seconds_bucket", "medkg_job_duration_seconds_bucket"] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    // How old the messages were when read: one observation per message read so far.
    assert!(value("medkg_kafka_record_age_seconds_count") > 0.0, "{metrics}");
    assert!(value("medkg_kafka_record_age_seconds_sum") > 0.0, "{metrics}");
    stop.store(true, Ordering::SeqCst);
    let summary = engine.join().unwrap().unwrap();
    assert!(seen > 0 && seen <= 400, "lag {seen} while {} of 400 docs were done", summary.docs);
    // Stopped early, the run still returns cleanly with what it made durable.
    assert!(summary.docs <= 400, "{summary:?}");
    // Its lifecycle events are on their topic, CloudEvents in structured JSON.
    let consumer = reader(&events_topic, &format!("{events_topic}-reader"));
    let mut types = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && types.len() < 2 {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let event: cloudevents::Event = serde_json::from_slice(message.payload().unwrap()).unwrap();
            use cloudevents::AttributesReader;
            assert_eq!(message.key().map(|k| k.to_vec()), event.subject().map(|s| s.as_bytes().to_vec()));
            assert!(event.source().to_string().starts_with("/medkg/hybrid/"), "{event}");
            types.insert(event.ty().to_string());
        }
    }
    assert!(types.contains("org.medicalkg.orchestration.stage.started"), "{types:?}");
    assert!(types.contains("org.medicalkg.orchestration.stage.completed"), "{types:?}");
}

#[test]
fn the_events_producer_publishes_keyed_json_with_headers() {
    use medkg_connectors::kafka::{KafkaJson, KafkaSettings};
    let topic = topic("events");
    create_topic(&topic, 1);
    let settings = KafkaSettings { brokers: brokers(), group: String::new(), options: Vec::new() };
    let events = KafkaJson::new(&settings, &topic).unwrap();
    let event = br#"{"specversion":"1.0","type":"org.medicalkg.orchestration.stage.completed","subject":"pmid:1"}"#;
    events.send("pmid:1", event, &[("content-type", "application/cloudevents+json")]).unwrap();
    events.flush().unwrap();
    let consumer = reader(&topic, &format!("{topic}-reader"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the event never arrived");
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            assert_eq!(message.key(), Some(&b"pmid:1"[..]));
            assert_eq!(message.payload(), Some(&event[..]));
            let headers = message.headers().unwrap();
            assert_eq!(headers.get(0).key, "content-type");
            break;
        }
    }
}

/// A poison pill on a partition (an entity bomb, 50,000-deep nesting, a
/// 70,000-byte tenant header) between good messages: the engine lives, all
/// good messages become searchable, offsets reach the partition's end.
/// The `tenant_id` header scopes a document's parsing, not only its events:
/// the document is found in that tenant, and its tombstone deletes it.
#[test]
fn poison_pills_are_dead_lettered_and_header_tenants_reach_the_index() {
    use rdkafka::message::{Header, OwnedHeaders};
    let dir = tempfile::tempdir().unwrap();
    let topic = topic("poison");
    create_topic(&topic, 1);
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let send = |key: &str, value: Option<&str>, tenant: Option<&str>| {
        let mut record: BaseRecord<'_, str, str> = BaseRecord::to(&topic).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Some(t) = tenant {
            record = record.headers(OwnedHeaders::new().insert(Header { key: "tenant_id", value: Some(t) }));
        }
        producer.send(record).unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    let mut laughs = String::from("<!DOCTYPE article [<!ENTITY l0 \"lollollollol\">");
    for i in 1..10 {
        laughs.push_str(&format!("<!ENTITY l{i} \"{}\">", format!("&l{};", i - 1).repeat(10)));
    }
    laughs.push_str("]><article><front><article-meta><article-id pub-id-type=\"pmc\">1</article-id></article-meta></front><body><p>&l9;</p></body></article>");
    let deep = format!(
        "<article><front><article-meta><article-id pub-id-type=\"pmc\">2</article-id></article-meta></front><body><p>{}x{}</p></body></article>",
        "<i>".repeat(50_000),
        "</i>".repeat(50_000)
    );
    let long_tenant = "t".repeat(70_000);
    send("pmid:1", Some(r#"{"pmid": "1", "title": "Heparin in pregnancy", "abstract": "Heparin is safe."}"#), None);
    send("bomb", Some(&laughs), None);
    send("deep", Some(&deep), None);
    send(
        "pmid:3",
        Some(r#"{"pmid": "3", "title": "Header tenant", "abstract": "Lithium levels matter."}"#),
        Some(&long_tenant),
    );
    send(
        "pmid:4",
        Some(r#"{"pmid": "4", "title": "Acme lithium", "abstract": "Lithium levels matter."}"#),
        Some("acme"),
    );
    send(
        "pmid:5",
        Some(r#"{"pmid": "5", "title": "Mismatch", "abstract": "Lithium.", "tenant_id": "other"}"#),
        Some("acme"),
    );
    send("pmid:6", Some(r#"{"pmid": "6", "title": "Statins after infarction", "abstract": "Statins help."}"#), None);

    let data = dir.path().join("data");
    let group = format!("{topic}-group");
    let mut child = engine(&topic, &group, &data);
    let deadline = Instant::now() + Duration::from_secs(90);
    while stats(&data) != Some((3, 3)) {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            panic!("the engine exited ({status}): {}", String::from_utf8_lossy(&output.stderr));
        }
        if Instant::now() > deadline {
            let index = stats(&data);
            unsafe_kill(child.id(), 9);
            let output = child.wait_with_output().unwrap();
            panic!("index at {index:?}, expected (3, 3); engine stderr: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let hits = |tenant: &str| {
        let output = medkg()
            .args(["search", "--json", "--mode", "bm25", "-k", "5", "--tenant", tenant, "--data-dir"])
            .arg(&data)
            .arg("lithium heparin statins")
            .output()
            .unwrap();
        let hits: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        hits.as_array().map(|a| a.iter().map(|h| h["doc_id"].as_str().unwrap().to_string()).collect::<Vec<_>>())
    };
    assert_eq!(hits("acme"), Some(vec!["pmid:4".to_string()]), "the header tenant is the document's tenant");
    let mut default = hits("default").unwrap();
    default.sort();
    assert_eq!(default, ["pmid:1", "pmid:6"]);
    // The tombstone, under the same header, deletes it.
    send("pmid:4", None, Some("acme"));
    wait_for(&data, (2, 2), Duration::from_secs(60));
    assert_eq!(hits("acme"), Some(vec![]));
    terminate(child);
    assert_eq!(committed(&topic, &group, 1), ends(&topic, 1), "offsets reached the end");
    let mut kinds: Vec<String> =
        medkg_connectors::DeadLetterSink::read_all(&data).unwrap().into_iter().map(|l| l.error_kind).collect();
    kinds.sort();
    assert_eq!(kinds, ["bad_tenant", "dtd_refused", "tenant_mismatch", "too_deep"]);
}

/// `medkg bench --json -w 2` of `lexical.yaml` from `kafka:topic` with
/// `--records file` into `data`, and `extra` arguments; its report.
fn kafka_bench(topic: &str, file: &Path, data: &Path, extra: &[&str]) -> Value {
    let output = medkg()
        .args(["bench", "--json", "-w", "2", "--brokers", &brokers(), "--pipeline"])
        .arg(repo().join("config/pipelines/lexical.yaml"))
        .arg(format!("--source=kafka:{topic}"))
        .arg("--records")
        .arg(file)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().last().unwrap()).unwrap()
}

/// `medkg bench --source kafka:TOPIC --records FILE`: the records go into
/// the topic, come back through the pipeline until every one is durable,
/// and the same file runs too; the two indexes hold the same documents.
#[test]
fn bench_runs_a_file_and_the_same_records_through_kafka_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let topic = topic("bench");
    create_topic(&topic, 3);
    let (file, records) = pubmed_slice(dir.path(), 300);
    let data = dir.path().join("bench");
    let report = kafka_bench(&topic, &file, &data, &[]);
    assert_eq!(report["kafka_records"], records.len(), "{report}");
    assert_eq!(report["kafka_docs"], report["docs"], "{report}");
    for key in ["e2e_docs_per_sec", "kafka_e2e_docs_per_sec", "kafka_read_docs_per_sec", "kafka_vs_file"] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key} in {report}");
    }
    // The group's forming is part of the run, not of its reading.
    let (group, whole) =
        (report["kafka_group_seconds"].as_f64().unwrap(), report["kafka_e2e_seconds"].as_f64().unwrap());
    assert!(group > 0.0 && group < whole, "{report}");
    assert!(report["kafka_read_docs_per_sec"].as_f64() > report["kafka_e2e_docs_per_sec"].as_f64(), "{report}");
    let from_file = stats(&data).unwrap();
    assert_eq!(stats(&dir.path().join("bench-kafka")), Some(from_file));
    assert_eq!(from_file.0, report["docs"].as_u64().unwrap());

    // Without --records a Kafka bench has nothing to produce: refused, naming the flag.
    let output = medkg()
        .args(["bench", "--brokers", &brokers(), "--pipeline"])
        .arg(repo().join("config/pipelines/lexical.yaml"))
        .arg(format!("--source=kafka:{topic}"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--records"));
}

/// `bench --freshness`: a load produced while marker documents are timed
/// from their producer to a search; every marker is found, and is in the
/// index the bench wrote.
#[test]
fn bench_times_markers_from_producer_to_search_under_a_load() {
    let dir = tempfile::tempdir().unwrap();
    let topic = topic("fresh");
    create_topic(&topic, 2);
    let (file, _) = pubmed_slice(dir.path(), 200);
    let data = dir.path().join("bench");
    let report = kafka_bench(&topic, &file, &data, &["--freshness", "100", "--markers", "5"]);
    assert_eq!(report["freshness_markers"], 5, "{report}");
    assert_eq!(report["freshness_lost"], 0, "{report}");
    let at = |key: &str| report[key].as_f64().unwrap_or_else(|| panic!("{key} in {report}"));
    assert!(at("freshness_p50_ms") > 0.0, "{report}");
    assert!(at("freshness_p50_ms") <= at("freshness_p95_ms") && at("freshness_p95_ms") <= at("freshness_max_ms"));
    assert!(at("freshness_load_records") > 0.0 && at("freshness_docs_per_sec") > 0.0, "{report}");
    // The probe saw the markers arrive: delivery is part of a marker's time, the engine the rest.
    assert!(at("freshness_delivery_seen") >= 1.0, "{report}");
    assert!(at("freshness_delivery_p50_ms") > 0.0 && at("freshness_delivery_p50_ms") <= at("freshness_max_ms"));
    assert!(at("freshness_engine_p50_ms") > 0.0 && at("freshness_engine_p95_ms") <= at("freshness_max_ms"));
    // The warm-up marker and the five timed ones are in the index, with the load.
    let written = dir.path().join("bench-freshness");
    let output = medkg()
        .args(["search", "--json", "--mode", "bm25", "-k", "20", "--data-dir"])
        .arg(&written)
        .arg("freshness marker")
        .output()
        .unwrap();
    let hits: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let markers =
        hits.iter().filter(|h| h["title"].as_str().is_some_and(|t| t.starts_with("Freshness marker"))).count();
    assert_eq!(markers, 6, "{hits:?}");
    assert!(stats(&written).unwrap().0 > 6, "the load was indexed too");

    // A load of nothing, or freshness from a file: refused.
    let refused = |args: &[&str]| {
        let output = medkg()
            .args(["bench", "--brokers", &brokers(), "--records"])
            .arg(&file)
            .arg("--pipeline")
            .arg(repo().join("config/pipelines/lexical.yaml"))
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(refused(&["--freshness", "0", &format!("--source=kafka:{topic}")]).contains("more than 0"));
    let from_file = format!("--source=file:{}", file.display());
    assert!(refused(&["--freshness", "100", &from_file]).contains("kafka:TOPIC"));
}
