//! Operations end to end, through the binary, against a real HTTP server on
//! loopback: resilience policies on the `fetch` stage (retries with the
//! policy's delays, timeouts, the circuit breaker, the rate limit),
//! CloudEvents read back with cloudevents-sdk, `/metrics` scraped mid-run,
//! the job ledger, OpenLineage and JSON logs.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudevents::AttributesReader;
use common::{medkg, pubmed_slice, Reply, TestServer};
use serde_json::Value;

/// Policies with test-sized delays.
const POLICIES: &str = "
policies:
  default:
    timeout: 30s
  retrying:
    retries: { max_retries: 3, backoff: exponential, initial_delay: 150ms, max_delay: 2s }
    timeout: 400ms
  breaker:
    timeout: 2s
    circuit_breaker: { failure_threshold: 3, reset_timeout: 1250ms, half_open_probes: 1 }
    rate_limit: { per_second: 2, burst: 1 }
  polite-api:
    retries: { max_retries: 10, backoff: linear, initial_delay: 1s, max_delay: 10s, jitter: true }
    timeout: 10s
    rate_limit: { per_second: 5, burst: 5 }
";

/// A fetch → parse → chunk → index pipeline under `policy`.
fn pipeline(dir: &Path, policy: &str, max_in_flight: usize) -> PathBuf {
    let config = dir.join("config");
    std::fs::create_dir_all(config.join("pipelines")).unwrap();
    std::fs::write(config.join("resilience.yaml"), POLICIES).unwrap();
    let path = config.join("pipelines").join(format!("{policy}.yaml"));
    std::fs::write(
        &path,
        format!(
            "name: fetched
version: 1
stages:
  - name: fetch
    type: fetch
    policy: {policy}
    config: {{ url_field: url, allow_hosts: [127.0.0.1], max_in_flight: {max_in_flight} }}
  - name: parse
    type: parse
    depends_on: [fetch]
  - name: chunk
    type: chunk
    depends_on: [parse]
  - name: index
    type: index
    depends_on: [chunk]
    config: {{ backends: [bm25], commit_interval: 100ms }}
"
        ),
    )
    .unwrap();
    path
}

/// Input records naming `urls`, with ids.
fn records(dir: &Path, urls: &[(String, String)]) -> PathBuf {
    let path = dir.join("urls.jsonl");
    let lines: Vec<String> =
        urls.iter().map(|(id, url)| serde_json::json!({ "id": id, "url": url }).to_string()).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn events(path: &Path) -> Vec<cloudevents::Event> {
    medkg_connectors::events::read_file(path).unwrap()
}

fn data_of(event: &cloudevents::Event) -> Value {
    match event.data() {
        Some(cloudevents::Data::Json(v)) => v.clone(),
        other => panic!("event data is not JSON: {other:?}"),
    }
}

/// The value of a metric line (`name{labels} value`), by name and a label fragment.
fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn ledger_rows(data: &Path) -> BTreeMap<String, Value> {
    let out = medkg().args(["ledger", "--json", "--limit", "1000", "--data-dir"]).arg(data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    json["rows"].as_array().unwrap().iter().map(|r| (r["doc_id"].as_str().unwrap().to_string(), r.clone())).collect()
}

#[test]
fn fetch_retries_503s_with_the_policy_delays_times_out_slow_calls_and_reports_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (_, docs) = pubmed_slice(dir.path(), 4);
    let bodies: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    let release = Arc::new(AtomicBool::new(false));
    let held = release.clone();
    let server = TestServer::start(move |path, nth| {
        let n: usize = path.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        match path.split('/').nth(1) {
            // 503, 503, then the record.
            Some("flaky") if nth < 2 => Reply::status(503),
            Some("flaky") => Reply::ok(bodies[n].clone()),
            // Answers after the test has scraped /metrics.
            Some("held") => Reply { hold: Some(held.clone()), ..Reply::ok(bodies[n].clone()) },
            // Never in time.
            Some("slow") => Reply { delay: Duration::from_secs(3), ..Reply::ok(bodies[n].clone()) },
            _ => Reply::status(404),
        }
    });
    let id = |n: usize| format!("pmid:{}", docs[n]["pmid"].as_str().unwrap());
    let input = records(
        dir.path(),
        &[
            (id(0), server.url("/flaky/0")),
            (id(1), server.url("/flaky/1")),
            (id(2), server.url("/slow/2")),
            (id(3), server.url("/held/3")),
            ("pmid:missing".into(), server.url("/gone/9")),
        ],
    );
    let data = dir.path().join("data");
    let (events_path, lineage_path) = (dir.path().join("events.jsonl"), dir.path().join("lineage.jsonl"));
    let mut child = medkg()
        .args(["--log-format", "json", "run", "-w", "2", "--metrics-addr", "127.0.0.1:0", "--run-id", "run-ops-1"])
        .arg("--pipeline")
        .arg(pipeline(dir.path(), "retrying", 8))
        .arg(format!("--source=file:{}", input.display()))
        .arg("--data-dir")
        .arg(&data)
        .arg(format!("--events=file:{}", events_path.display()))
        .arg(format!("--lineage=file:{}", lineage_path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // JSON logs: find the metrics address, keep every line.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut logs: Vec<Value> = Vec::new();
    let addr = loop {
        let line = lines_rx.recv_timeout(Duration::from_secs(30)).expect("a log line with the metrics address");
        let log: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        logs.push(log.clone());
        if let Some(addr) = log["addr"].as_str().filter(|_| log["message"].as_str().unwrap_or("").contains("metrics")) {
            break addr.parse::<std::net::SocketAddr>().unwrap();
        }
    };
    // The run waits on /held/3 (and the slow one's retries): scrape it mid-run, once retries happened.
    let deadline = Instant::now() + Duration::from_secs(30);
    let scraped = loop {
        let (status, text) = common::http_get(addr, "/metrics");
        assert_eq!(status, 200);
        if metric(&text, "medkg_stage_retries_total", "stage=\"fetch\"").unwrap_or(0.0) >= 4.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "no retries seen:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    for name in [
        "medkg_job_duration_seconds",
        "medkg_stage_duration_seconds_bucket",
        "medkg_stage_retries_total",
        "medkg_circuit_breaker_state",
        "medkg_rate_limit_wait_seconds",
        "medkg_active_jobs",
        "medkg_docs_in_total",
        "medkg_docs_out_total",
        "medkg_docs_failed_total",
        "medkg_dead_letters_total",
        "medkg_gate_pending",
        "medkg_consumer_lag",
    ] {
        assert!(
            scraped.contains(&format!("# TYPE {}", name.trim_end_matches("_bucket"))),
            "{name} missing:\n{scraped}"
        );
    }
    assert_eq!(metric(&scraped, "medkg_docs_in_total", "pipeline=\"fetched\""), Some(5.0), "{scraped}");
    assert_eq!(metric(&scraped, "medkg_active_jobs", "pipeline=\"fetched\""), Some(1.0), "{scraped}");
    release.store(true, Ordering::SeqCst);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    logs.extend(lines_rx.try_iter().map(|l| serde_json::from_str(&l).unwrap()));
    let summary: Value = serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().last().unwrap()).unwrap();
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(3), Some(2)), "{summary}");

    // 503, 503, 200: two retries, after the policy's 150 ms and 300 ms.
    for n in 0..2 {
        let times: Vec<Instant> = server.requests(&format!("/flaky/{n}")).into_iter().map(|(_, t)| t).collect();
        assert_eq!(times.len(), 3);
        for (gap, delay) in times.windows(2).map(|w| w[1] - w[0]).zip([150, 300]) {
            let delay = Duration::from_millis(delay);
            assert!(gap >= delay && gap < delay + Duration::from_millis(250), "gap {gap:?} for a {delay:?} delay");
        }
    }
    // The slow one: four attempts, each cut at the 400 ms timeout, then dead-lettered as transient.
    assert_eq!(server.requests("/slow/2").len(), 4);

    // Events, read back with cloudevents-sdk.
    let all = events(&events_path);
    for event in &all {
        assert_eq!(event.specversion().to_string(), "1.0");
        assert!(event.ty().starts_with("org.medicalkg.orchestration.stage."), "{}", event.ty());
        assert!(event.source().to_string().starts_with("/medkg/fetched/"));
        assert!(!event.id().is_empty() && event.time().is_some() && event.subject().is_some());
        let data = data_of(event);
        for key in ["run_id", "pipeline", "stage", "doc_id", "tenant_id", "attempt", "duration_ms", "error"] {
            assert!(data.get(key).is_some(), "{key} missing from {data}");
        }
        assert_eq!(data["run_id"], "run-ops-1");
    }
    let of = |ty: &str, subject: &str| -> Vec<Value> {
        all.iter()
            .filter(|e| e.ty().ends_with(ty) && e.subject() == Some(subject))
            .map(data_of)
            .filter(|d| d["stage"] == "fetch")
            .collect()
    };
    let retrying = of("retrying", &id(0));
    assert_eq!(retrying.iter().map(|d| d["attempt"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    assert!(retrying[0]["error"].as_str().unwrap().starts_with("http_503 (transient)"), "{}", retrying[0]);
    assert_eq!(of("completed", &id(0))[0]["attempt"], 3);
    let slow_retries = of("retrying", &id(2));
    assert_eq!(slow_retries.len(), 3);
    assert!(slow_retries.iter().all(|d| d["error"].as_str().unwrap().starts_with("timeout (transient)")));
    let failed = of("failed", &id(2));
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["error"].as_str().unwrap().starts_with("timeout (transient)"), "{}", failed[0]);
    assert!(of("failed", "pmid:missing")[0]["error"].as_str().unwrap().starts_with("http_404 (permanent)"));
    assert!(of("retrying", "pmid:missing").is_empty(), "a 404 is not retried");
    // Every stage of a fetched document reports, in order.
    let stages: Vec<String> = all
        .iter()
        .filter(|e| e.subject() == Some(id(1).as_str()) && e.ty().ends_with("completed"))
        .map(|e| data_of(e)["stage"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stages, ["fetch", "parse", "chunk", "index"]);

    // The ledger: final state and retries per document.
    let rows = ledger_rows(&data);
    for n in [0, 1] {
        let row = &rows[&id(n)];
        assert_eq!((row["status"].as_str(), row["stage"].as_str()), (Some("completed"), Some("index")), "{row}");
        assert_eq!(row["retries"]["fetch"], 2, "{row}");
    }
    assert_eq!(rows[&id(3)]["status"], "completed");
    assert!(rows[&id(3)]["retries"].as_object().unwrap().is_empty());
    let slow = &rows[&id(2)];
    assert_eq!((slow["status"].as_str(), slow["stage"].as_str()), (Some("failed"), Some("fetch")));
    assert_eq!(slow["retries"]["fetch"], 3);
    assert!(slow["last_error"].as_str().unwrap().starts_with("timeout"), "{slow}");
    let out = medkg().args(["ledger", "--status", "failed", "--data-dir"]).arg(&data).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&id(2)) && table.contains("pmid:missing") && !table.contains(&id(0)), "{table}");

    // JSON logs carry the run, pipeline, stage and document of each retry.
    let retry_log = logs
        .iter()
        .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("retrying")) && l["doc_id"] == id(0).as_str())
        .expect("a retry log line");
    assert_eq!((retry_log["run_id"].as_str(), retry_log["pipeline"].as_str()), (Some("run-ops-1"), Some("fetched")));
    assert_eq!(retry_log["stage"], "fetch");

    // OpenLineage: START then COMPLETE, naming input and output.
    let lineage: Vec<Value> =
        std::fs::read_to_string(&lineage_path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lineage.iter().map(|e| e["eventType"].as_str().unwrap()).collect::<Vec<_>>(), ["START", "COMPLETE"]);
    assert_eq!(lineage[0]["run"]["runId"], "run-ops-1");
    assert_eq!(lineage[0]["job"]["name"], "fetched");
    assert!(lineage[0]["inputs"][0]["name"].as_str().unwrap().ends_with("urls.jsonl"));
}

#[test]
fn the_breaker_opens_short_circuits_half_opens_and_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, docs) = pubmed_slice(dir.path(), 1);
    let body = docs[0].to_string();
    let pmid = format!("pmid:{}", docs[0]["pmid"].as_str().unwrap());
    let server = TestServer::start(move |path, _| match path.split('/').nth(1) {
        Some("down") => Reply::status(503),
        Some("ok") => Reply::ok(body.clone()),
        _ => Reply::status(404),
    });
    // Sequential calls, 2 a second: three failures open the breaker at about
    // 1.0 s; calls at 1.5 s and 2.0 s are refused (it stays open 1.25 s);
    // the call at 2.5 s is the half-open probe and succeeds, closing it; the
    // next one reaches the server again.
    let urls: Vec<(String, String)> = ["down", "down", "down", "down", "down", "ok", "down"]
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            (if *kind == "ok" { pmid.clone() } else { format!("d{i}") }, server.url(&format!("/{kind}/{i}")))
        })
        .collect();
    let input = records(dir.path(), &urls);
    let data = dir.path().join("data");
    let events_path = dir.path().join("events.jsonl");
    let out = medkg()
        .args(["run", "--metrics-addr", "off", "--pipeline"])
        .arg(pipeline(dir.path(), "breaker", 1))
        .arg(format!("--source=file:{}", input.display()))
        .arg("--data-dir")
        .arg(&data)
        .arg(format!("--events=file:{}", events_path.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hit: Vec<String> = server.requests("/").into_iter().map(|(p, _)| p).collect();
    assert_eq!(hit, ["/down/0", "/down/1", "/down/2", "/ok/5", "/down/6"], "calls 3 and 4 were short-circuited");
    let failures: BTreeMap<String, String> = events(&events_path)
        .iter()
        .filter(|e| e.ty().ends_with("failed"))
        .map(|e| {
            let d = data_of(e);
            (d["doc_id"].as_str().unwrap().to_string(), d["error"].as_str().unwrap().to_string())
        })
        .collect();
    let kinds: Vec<(&str, &str)> = failures.iter().map(|(d, e)| (d.as_str(), e.split(' ').next().unwrap())).collect();
    assert_eq!(
        kinds,
        [
            ("d0", "http_503"),
            ("d1", "http_503"),
            ("d2", "http_503"),
            ("d3", "circuit_open"),
            ("d4", "circuit_open"),
            ("d6", "http_503")
        ]
    );
    assert!(failures["d3"].contains("(unavailable)"), "{}", failures["d3"]);
    // Short-circuited documents are dead-lettered like any other failure.
    let letters = std::fs::read_to_string(data.join("dead-letter/worker-0.jsonl")).unwrap();
    assert_eq!(letters.lines().filter(|l| l.contains("circuit_open")).count(), 2);
    let ok = &ledger_rows(&data)[&pmid];
    assert_eq!(ok["status"], "completed");
}

#[test]
fn the_polite_api_policy_holds_calls_to_5_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (_, docs) = pubmed_slice(dir.path(), 20);
    let bodies: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    let server = TestServer::start(move |path, _| {
        let n: usize = path.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        Reply::ok(bodies[n].clone())
    });
    let urls: Vec<(String, String)> = (0..20).map(|n| (format!("d{n}"), server.url(&format!("/doc/{n}")))).collect();
    let input = records(dir.path(), &urls);
    let out = medkg()
        .args(["run", "-w", "2", "--metrics-addr", "off", "--pipeline"])
        .arg(pipeline(dir.path(), "polite-api", 16))
        .arg(format!("--source=file:{}", input.display()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let times: Vec<Instant> = server.requests("/doc/").into_iter().map(|(_, t)| t).collect();
    assert_eq!(times.len(), 20);
    // A bucket of 5 at 5 a second, shared by both workers: after the burst,
    // one call every 200 ms.
    let burst = 5;
    let steady = (times.len() - burst) as f64 / (times[times.len() - 1] - times[burst - 1]).as_secs_f64();
    assert!((4.5..=5.3).contains(&steady), "{steady:.2} calls a second after the burst");
    for window in times.windows(11) {
        let span = window[10] - window[0];
        assert!(span >= Duration::from_millis(1150), "11 calls within {span:?}: more than 5 a second + burst");
    }
}

#[test]
fn batch_events_and_lineage_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (source, _) = pubmed_slice(dir.path(), 1500);
    let server = TestServer::start(|path, _| match path {
        "/api/v1/lineage" => Reply::ok("{}"),
        _ => Reply::status(404),
    });
    let events_path = dir.path().join("events.jsonl");
    let out = medkg()
        .args(["run", "--metrics-addr", "off", "--event-granularity", "batch", "--pipeline"])
        .arg(common::repo().join("config/pipelines/lexical.yaml"))
        .arg(format!("--source=file:{}", source.display()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg(format!("--events=file:{}", events_path.display()))
        .arg(format!("--lineage={}", server.url("")))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // One started and one completed per stage and batch; lexical.yaml cuts epochs of 1,024 records.
    let mut per_stage: BTreeMap<(String, String), (usize, u64)> = BTreeMap::new();
    for event in events(&events_path) {
        let data = data_of(&event);
        assert!(data["doc_id"].is_null(), "{data}");
        let epoch = data["epoch"].as_u64().expect("an epoch");
        assert_eq!(event.subject(), Some(format!("epoch:{epoch}").as_str()));
        let step = event.ty().rsplit('.').next().unwrap().to_string();
        let entry = per_stage.entry((data["stage"].as_str().unwrap().to_string(), step)).or_default();
        entry.0 += 1;
        entry.1 += data["docs"].as_u64().unwrap_or(0);
    }
    for stage in ["parse", "chunk", "index"] {
        let (started, _) = per_stage[&(stage.to_string(), "started".to_string())];
        let (completed, docs) = per_stage[&(stage.to_string(), "completed".to_string())];
        assert!(started >= 2 && started == completed, "{stage}: {per_stage:?}");
        assert_eq!(docs, 1500, "{stage}: every document in some batch");
    }
    // OpenLineage over HTTP: START then COMPLETE, POSTed where Marquez expects them.
    let posted: Vec<Value> =
        server.posted("/api/v1/lineage").iter().map(|b| serde_json::from_slice(b).unwrap()).collect();
    assert_eq!(posted.iter().map(|e| e["eventType"].as_str().unwrap()).collect::<Vec<_>>(), ["START", "COMPLETE"]);
    assert_eq!(posted[1]["job"]["name"], "lexical");
    assert!(posted[1]["outputs"][0]["name"].as_str().unwrap().ends_with("data"));
}

#[test]
fn bad_fetch_records_are_dead_lettered_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_, docs) = pubmed_slice(dir.path(), 1);
    let body = docs[0].to_string();
    let pmid = format!("pmid:{}", docs[0]["pmid"].as_str().unwrap());
    let server = TestServer::start(move |_, _| Reply::ok(body.clone()));
    let input = dir.path().join("urls.jsonl");
    let good = serde_json::json!({ "id": pmid, "url": server.url("/doc/0") }).to_string();
    std::fs::write(
        &input,
        format!("{{\"id\": \"x\", \"url\":\n{{\"id\": \"no-url\"}}\n{{\"id\": \"ftp\", \"url\": \"ftp://example.org/a\"}}\n{good}\n"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = medkg()
        .args(["run", "--metrics-addr", "off", "--pipeline"])
        .arg(pipeline(dir.path(), "polite-api", 4))
        .arg(format!("--source=file:{}", input.display()))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(1), Some(3)), "{summary}");
    let letters = std::fs::read_to_string(data.join("dead-letter/worker-0.jsonl")).unwrap();
    for kind in ["bad_json", "missing_url", "bad_url"] {
        assert!(letters.contains(&format!("\"error_kind\":\"{kind}\"")), "{kind} missing: {letters}");
    }
    assert_eq!(ledger_rows(&data)[&pmid]["status"], "completed");
}
