//! Hostile input, end to end through the `medkg` binary: each finding of
//! the hardening review as a regression test. In every case the run exits
//! 0, the hostile record is dead-lettered with a clear kind, and the good
//! records around it are indexed.
//!
//! XML bombs and deep nesting run under a 1 GiB address-space limit, as a
//! long-running deployment would: before the fix they aborted the process
//! (allocation failure, stack overflow).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{medkg, pubmed_slice, repo, succeeded, Reply, TestServer};
use medkg_connectors::DeadLetterSink;
use serde_json::Value;

fn lexical() -> PathBuf {
    repo().join("config/pipelines/lexical.yaml")
}

fn last_json(output: &Output) -> Value {
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().unwrap_or_else(|| {
        panic!("no output ({}); stderr: {}", output.status, String::from_utf8_lossy(&output.stderr))
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

/// `medkg run` of `pipeline` over `source` into `data`, under a 1 GiB
/// address-space limit; it must exit 0.
fn run_limited(pipeline: &Path, source: &Path, data: &Path, extra: &[&str]) -> Value {
    let mut command = medkg();
    command
        .args(["run", "--metrics-addr", "off", "-w", "2", "--pipeline"])
        .arg(pipeline)
        .arg(format!("--source=file:{}", source.display()))
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env("MALLOC_ARENA_MAX", "2");
    limit_memory(&mut command, 1 << 30);
    last_json(&succeeded(command.output().unwrap()))
}

/// Caps the child's address space (RLIMIT_AS) at `bytes`.
fn limit_memory(command: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn docs_in(data: &Path) -> u64 {
    let output = medkg().args(["stats", "--json", "--data-dir"]).arg(data).output().unwrap();
    last_json(&output)["docs"].as_u64().unwrap()
}

fn letter_kinds(data: &Path) -> Vec<String> {
    let mut kinds: Vec<String> = DeadLetterSink::read_all(data).unwrap().into_iter().map(|l| l.error_kind).collect();
    kinds.sort();
    kinds
}

/// A JATS article with `body` in its first section.
fn jats(id: &str, prolog: &str, body: &str) -> String {
    format!(
        "{prolog}<article><front><article-meta><article-id pub-id-type=\"pmc\">{id}</article-id><title-group><article-title>Hostile article</article-title></title-group></article-meta></front><body><sec><title>Intro</title><p>{body}</p></sec></body></article>"
    )
}

/// The "billion laughs": ten levels of ten references each.
fn laughs() -> String {
    let mut dtd = String::from("<!DOCTYPE article [<!ENTITY lol0 \"lollollollollollollollollollol\">");
    for i in 1..10 {
        dtd.push_str(&format!("<!ENTITY lol{i} \"{}\">", format!("&lol{};", i - 1).repeat(10)));
    }
    dtd + "]>"
}

/// Findings 1, 2 and 9: entity bombs, 50,000-deep nesting (inline markup
/// and sections) and oversized ids, next to good records, under 1 GiB; a
/// second run does not read them again.
#[test]
fn xml_bombs_deep_nesting_and_bad_ids_are_dead_lettered_under_a_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    pubmed_slice(&input, 20);
    let deep_inline = format!("{}deep{}", "<i>".repeat(50_000), "</i>".repeat(50_000));
    let deep_sections = format!("{}<p>deep</p>{}", "<sec>".repeat(50_000), "</sec>".repeat(50_000));
    std::fs::write(input.join("bomb.nxml"), jats("PMC1", &laughs(), "&lol9;")).unwrap();
    std::fs::write(input.join("deep-inline.nxml"), jats("PMC2", "", &deep_inline)).unwrap();
    std::fs::write(
        input.join("deep-sections.nxml"),
        jats("PMC3", "", "x").replace("<sec><title>Intro</title><p>x</p></sec>", &deep_sections),
    )
    .unwrap();
    std::fs::write(
        input.join("laughs-set.xml"),
        format!("{}<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>7</PMID><Article><ArticleTitle>&lol9;</ArticleTitle></Article></MedlineCitation></PubmedArticle></PubmedArticleSet>", laughs().replace("article", "PubmedArticleSet")),
    )
    .unwrap();
    std::fs::write(input.join("long-id.nxml"), jats(&"9".repeat(300), "", "A body of text.")).unwrap();
    std::fs::write(
        input.join("tenants.jsonl"),
        format!(
            "{{\"pmid\": \"8\", \"title\": \"Huge tenant\", \"tenant_id\": \"{}\"}}\n{{\"pmid\": \"9\", \"title\": \"Slashed tenant\", \"tenant_id\": \"../etc\"}}\n{{\"pmid\": \"10\", \"title\": \"Aspirin in a fine tenant\", \"tenant_id\": \"acme\"}}\n",
            "t".repeat(70_000)
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let began = Instant::now();
    let summary = run_limited(&lexical(), &input, &data, &[]);
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(21), Some(7)), "{summary}");
    assert_eq!(
        letter_kinds(&data),
        ["bad_id", "bad_tenant", "bad_tenant", "dtd_refused", "dtd_refused", "too_deep", "too_deep"]
    );
    assert_eq!(docs_in(&data), 21);
    let took = began.elapsed();

    // The second run resumes after the hostile records: nothing read again, nothing added.
    let summary = run_limited(&lexical(), &input, &data, &[]);
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(0), Some(0)), "{summary}");
    // A full re-read replaces, never duplicates (the tenant id no longer makes a document invisible).
    let summary = run_limited(&lexical(), &input, &data, &["--from-start"]);
    assert_eq!(summary["failed"].as_u64(), Some(7), "{summary}");
    assert_eq!(docs_in(&data), 21, "a re-read added copies");
    eprintln!("first run took {took:?}");
}

/// Finding 5: a PubMed set of 3,000 empty articles and a CT.gov page of
/// 5,000 non-studies write their payload once and at most 101 letters each,
/// not 3,000 copies of the payload.
#[test]
fn dead_letters_store_a_payload_once_and_are_capped_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let set = format!("<PubmedArticleSet>{}</PubmedArticleSet>", "<PubmedArticle></PubmedArticle>".repeat(3000));
    std::fs::write(input.join("empty-set.xml"), &set).unwrap();
    let page = format!("{{\"studies\": [{}]}}", vec!["0"; 5000].join(","));
    std::fs::write(input.join("page.json"), &page).unwrap();
    let data = dir.path().join("data");
    let summary = run_limited(&lexical(), &input, &data, &[]);
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(0), Some(8000)), "{summary}");
    let letters = DeadLetterSink::read_all(&data).unwrap();
    for (file, size, more) in [("empty-set.xml", set.len(), 2900), ("page.json", page.len(), 4900)] {
        let of: Vec<_> = letters.iter().filter(|l| l.position.ends_with(file)).collect();
        assert_eq!(of.len(), 101, "{file}: 100 letters and one counting the rest");
        let with_bytes: Vec<_> = of.iter().filter(|l| !l.bytes().is_empty()).collect();
        assert_eq!(with_bytes.len(), 1, "{file}: the payload is stored once");
        assert_eq!(with_bytes[0].bytes().len(), size);
        assert!(of.iter().filter(|l| l.bytes().is_empty()).all(|l| l.bytes_at.is_some()));
        let rest = of.iter().find(|l| l.error_kind == "more_failures").expect("a letter counting the rest");
        assert!(rest.message.starts_with(&format!("{more} more")), "{}", rest.message);
    }
    let written: u64 =
        std::fs::read_dir(data.join("dead-letter")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(written < 400_000, "dead letters took {written} bytes for {} bytes of input", set.len() + page.len());
}

/// Finding 10: a symlink loop, a link out of the source tree and a FIFO are
/// skipped and reported, not followed or read; `validate` reports a duration too large to
/// hold instead of panicking; errors are not prefixed twice.
#[test]
fn links_are_not_followed_and_validate_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (input, outside) = (dir.path().join("in"), dir.path().join("outside"));
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    pubmed_slice(&input, 3);
    pubmed_slice(&outside, 5);
    std::os::unix::fs::symlink(".", input.join("loop")).unwrap();
    std::os::unix::fs::symlink(&outside, input.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("pubmed-5.jsonl"), input.join("linked.jsonl")).unwrap();
    // A FIFO would block its reader forever.
    let fifo = std::ffi::CString::new(input.join("pipe.jsonl").into_os_string().into_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let data = dir.path().join("data");
    let summary = run_limited(&lexical(), &input, &data, &[]);
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(3), Some(0)), "{summary}");

    let policies = dir.path().join("resilience.yaml");
    std::fs::write(&policies, "policies:\n  default:\n    timeout: 99999999999999999999999d\n").unwrap();
    let output = medkg().args(["validate", "--resilience"]).arg(&policies).arg(lexical()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a duration"), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("error: error:"), "{stderr}");

    let hosts = dir.path().join("hosts.yaml");
    let text = std::fs::read_to_string(repo().join("config/pipelines/ctgov-api.yaml")).unwrap();
    std::fs::write(
        &hosts,
        text.replace("allow_hosts: [clinicaltrials.gov]", "allow_hosts: [\"*\", \"*.0.0.1\", \"https://x.org\"]"),
    )
    .unwrap();
    let output = medkg().arg("validate").arg(&hosts).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("allow_hosts entry `*`"), "{stderr}");
}

/// A fetch → parse → chunk → index pipeline allowing `hosts`.
fn fetch_pipeline(dir: &Path, name: &str, hosts: &str) -> PathBuf {
    let policies = dir.join("resilience.yaml");
    std::fs::write(
        &policies,
        "policies:\n  default:\n    timeout: 5s\n  retrying:\n    retries: { max_retries: 3, backoff: constant, initial_delay: 100ms, max_delay: 1s }\n    timeout: 5s\n    deadline: 30s\n",
    )
    .unwrap();
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "name: {name}\nversion: 1\nstages:\n  - name: fetch\n    type: fetch\n    policy: retrying\n    config: {{ url_field: url, allow_hosts: {hosts} }}\n  - name: parse\n    type: parse\n    depends_on: [fetch]\n  - name: chunk\n    type: chunk\n    depends_on: [parse]\n  - name: index\n    type: index\n    depends_on: [chunk]\n    config: {{ backends: [bm25], commit_interval: 100ms }}\n"
        ),
    )
    .unwrap();
    path
}

fn fetch_run(pipeline: &Path, records: &[String], data: &Path) -> Value {
    let source = data.with_extension("jsonl");
    let lines: Vec<String> = records
        .iter()
        .enumerate()
        .map(|(i, url)| serde_json::json!({ "id": format!("rec:{i}"), "url": url }).to_string())
        .collect();
    std::fs::write(&source, lines.join("\n") + "\n").unwrap();
    let resilience = format!("--resilience={}", pipeline.parent().unwrap().join("resilience.yaml").display());
    run_limited(pipeline, &source, data, &[resilience.as_str()])
}

/// Finding 3: loopback in every spelling, names that resolve to it (also a
/// *listed* name) and redirects to unlisted addresses reach nothing; the
/// server sees no request from a refused record.
#[test]
fn fetch_reaches_no_internal_address_in_any_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"pmid": "1", "title": "Aspirin and stroke", "abstract": "Aspirin lowers stroke risk."}"#;
    let server = TestServer::start(move |path, _| match path {
        "/good" => Reply::ok(good),
        "/good2" => Reply::ok(r#"{"pmid": "2", "title": "Statins after infarction", "abstract": "Statins help."}"#),
        "/redirect" => Reply {
            status: 302,
            headers: vec![("location".into(), "http://127.0.0.2:1/good".into())],
            ..Reply::default()
        },
        _ => Reply::ok(r#"{"pmid": "666", "title": "Internal secret"}"#),
    });
    let port = server.addr.port();

    // No allowlist: any public host, so nothing on this machine.
    let open = fetch_pipeline(dir.path(), "open", "[]");
    let spellings: Vec<String> = [
        "127.0.0.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[0:0:0:0:0:ffff:127.0.0.1]",
        "[::ffff:0.0.0.0]",
        "[::1]",
        "127.1",
        "2130706433",
        "0x7f.0.0.1",
        "localhost",
    ]
    .iter()
    .map(|host| format!("http://{host}:{port}/secret"))
    .collect();
    let data = dir.path().join("open");
    let summary = fetch_run(&open, &spellings, &data);
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(0), Some(10)), "{summary}");
    assert!(letter_kinds(&data).iter().all(|k| k == "host_refused"), "{:?}", letter_kinds(&data));
    assert!(server.requests("/secret").is_empty(), "a refused record reached the server");

    // A listed *name* does not open the loopback address it resolves to.
    let named = fetch_pipeline(dir.path(), "named", "[localhost]");
    let data = dir.path().join("named");
    let summary = fetch_run(&named, &[format!("http://localhost:{port}/secret")], &data);
    assert_eq!(summary["failed"].as_u64(), Some(1), "{summary}");
    assert_eq!(letter_kinds(&data), ["host_refused"]);
    assert!(server.requests("/secret").is_empty());

    // A listed address does; a redirect to an unlisted one is refused.
    let listed = fetch_pipeline(dir.path(), "listed", "[127.0.0.1]");
    let data = dir.path().join("listed");
    let records = [server.url("/good"), server.url("/redirect"), format!("http://[::ffff:127.0.0.1]:{port}/good2")];
    let summary = fetch_run(&listed, &records, &data);
    assert_eq!((summary["docs"].as_u64(), summary["failed"].as_u64()), (Some(2), Some(1)), "{summary}");
    assert_eq!(letter_kinds(&data), ["redirect_refused"]);
}

/// Finding 7: a server's `Retry-After: 3600` waits the policy's max_delay (1 s), not an hour.
#[test]
fn retry_after_is_capped_by_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"pmid": "1", "title": "Aspirin and stroke", "abstract": "Aspirin lowers stroke risk."}"#;
    let server = TestServer::start(move |_, nth| match nth {
        0 => Reply { status: 429, headers: vec![("retry-after".into(), "3600".into())], ..Reply::default() },
        _ => Reply::ok(good),
    });
    let pipeline = fetch_pipeline(dir.path(), "polite", "[127.0.0.1]");
    let began = Instant::now();
    let summary = fetch_run(&pipeline, &[server.url("/slow")], &dir.path().join("data"));
    assert_eq!(summary["docs"].as_u64(), Some(1), "{summary}");
    let requests = server.requests("/slow");
    assert_eq!(requests.len(), 2);
    let waited = requests[1].1 - requests[0].1;
    assert!(waited < Duration::from_secs(10), "waited {waited:?} for a Retry-After of an hour");
    assert!(began.elapsed() < Duration::from_secs(60));
}

/// Finding 6: hundreds of idle connections to /metrics neither starve the
/// server nor the run: a scrape still answers, and the run ends normally.
#[test]
fn idle_connections_cannot_exhaust_the_metrics_server() {
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let hold = Arc::new(AtomicBool::new(false));
    let held = hold.clone();
    let good = r#"{"pmid": "1", "title": "Aspirin and stroke", "abstract": "Aspirin lowers stroke risk."}"#;
    let server = TestServer::start(move |_, _| Reply { hold: Some(held.clone()), ..Reply::ok(good) });
    let pipeline = fetch_pipeline(dir.path(), "held", "[127.0.0.1]");
    let source = dir.path().join("held.jsonl");
    std::fs::write(&source, serde_json::json!({ "id": "rec:0", "url": server.url("/held") }).to_string() + "\n")
        .unwrap();
    let mut child = medkg()
        .args(["--log-format", "json", "run", "--metrics-addr", "127.0.0.1:0", "--pipeline"])
        .arg(&pipeline)
        .arg(format!("--resilience={}", dir.path().join("resilience.yaml").display()))
        .arg(format!("--source=file:{}", source.display()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Reads every line (so the engine never blocks on a full pipe).
        for line in stderr.lines().map_while(Result::ok) {
            let Ok(log) = serde_json::from_str::<Value>(&line) else { continue };
            if let Some(a) = log["addr"].as_str().filter(|_| log["message"].as_str().unwrap_or("").contains("metrics"))
            {
                let _ = addr_tx.send(a.parse::<std::net::SocketAddr>().unwrap());
            }
        }
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(60)).expect("the metrics address in the logs");
    // 300 connections that never send a request.
    let idle: Vec<std::net::TcpStream> = (0..300).filter_map(|_| std::net::TcpStream::connect(addr).ok()).collect();
    assert!(idle.len() >= 64, "only {} connections", idle.len());
    let fds = std::fs::read_dir(format!("/proc/{}/fd", child.id())).unwrap().count();
    assert!(fds < 250, "the engine holds {fds} file descriptors");
    // A scrape gets through once the idle ones time out (5 s), if not at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scraped = std::panic::catch_unwind(|| common::http_get(addr, "/metrics"));
        if let Ok((200, text)) = scraped {
            assert!(text.contains("medkg_"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "/metrics never answered during the flood");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(idle);
    hold.store(true, Ordering::SeqCst);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["docs"].as_u64(), Some(1), "{summary}");
}
