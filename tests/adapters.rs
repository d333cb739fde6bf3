//! The API adapters end to end through the `medkg` binary, against a
//! loopback fake (hyper) of each public API that serves pages written from
//! the API's documented response shape, built from real PubMed records and
//! a ClinicalTrials.gov study, and misbehaves on cue: 429 with
//! `Retry-After`, bursts of 503, a request that hangs past the timeout, a
//! malformed page, an expired cursor or history, a cursor that repeats, an
//! empty page that claims more. No test touches the internet.
//!
//! For each adapter: every record is indexed once; `kill -9` while paging,
//! then a rerun, ends with the counts of an uninterrupted run and requests
//! no page the checkpoint had made durable; the request rate never passes
//! the policy (nor the API's own limit); `--follow` picks up a record added
//! after the first pass and SIGTERM stops it cleanly. And a PubMed update
//! file's `DeleteCitation` removes documents from every search mode and
//! from the graph.
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{medkg, pubmed_slice, repo, succeeded, Reply, TestServer};
use serde_json::Value;

/// What the fake does to one request, by its number (API requests only).
#[derive(Clone, Debug)]
enum Fault {
    /// This status, with `Retry-After` when given.
    Status(u16, Option<&'static str>),
    /// Answer only after this long (past the policy's timeout).
    Hang(Duration),
    /// This body, with 200.
    Body(String),
}

/// What the fake APIs hold.
#[derive(Default)]
struct World {
    /// ClinicalTrials.gov studies, each with its LastUpdatePostDate.
    studies: Vec<(Value, String)>,
    /// PubMed articles: (PubmedArticle XML, entry date YYYY-MM-DD).
    articles: Vec<(String, String)>,
    /// OpenAlex works, each with its publication date.
    works: Vec<(Value, String)>,
    /// Unpaywall: DOI → its PDF's path on this server (`None`: closed access).
    dois: BTreeMap<String, Option<String>>,
    /// Faults by request number.
    faults: BTreeMap<u32, Fault>,
    /// API requests so far.
    requests: u32,
    /// PubMed searches: WebEnv → the `mindate` it searched from.
    histories: HashMap<String, Option<String>>,
    /// Histories that have expired.
    expired: HashSet<String>,
    /// Every history so far expires at this request.
    expire_at: Option<u32>,
    /// Each page answers after this long (a slow API, to kill a run mid-way).
    delay: Duration,
    /// The server's own address, for the PDF URLs Unpaywall answers.
    host: String,
}

struct Fake {
    world: Arc<Mutex<World>>,
    server: TestServer,
}

impl Fake {
    fn start(world: World) -> Fake {
        let world = Arc::new(Mutex::new(world));
        let state = world.clone();
        let pdf = std::fs::read(common::shared().join("data/pdf/0046d83a-edd6-4631-b57c-755cdcce8b7f.pdf")).unwrap();
        let server = TestServer::start_with_query(move |path, query, _| {
            if path.starts_with("/pdf/") {
                return Reply::ok(pdf.clone());
            }
            let mut world = state.lock().unwrap();
            let n = world.requests;
            world.requests += 1;
            if world.expire_at == Some(n) {
                let all: Vec<String> = world.histories.keys().cloned().collect();
                world.expired.extend(all);
            }
            let delay = world.delay;
            let reply = match world.faults.remove(&n) {
                Some(Fault::Status(status, after)) => {
                    let headers = after.map(|a| vec![("retry-after".to_string(), a.to_string())]).unwrap_or_default();
                    Reply { headers, ..Reply::status(status) }
                }
                Some(Fault::Hang(long)) => Reply { delay: long, ..answer(&mut world, path, query) },
                Some(Fault::Body(body)) => Reply::ok(body),
                None => answer(&mut world, path, query),
            };
            Reply { delay: reply.delay.max(delay), ..reply }
        });
        world.lock().unwrap().host = server.addr.to_string();
        Fake { world, server }
    }

    fn base(&self) -> String {
        self.server.url("")
    }

    /// (page number, arrival) of every page request, by what `page_of` reads from its query.
    fn pages(&self, prefix: &str, page_of: impl Fn(&HashMap<String, String>) -> u64) -> Vec<(u64, Instant)> {
        self.server.requests_with_query(prefix).iter().map(|(_, q, at)| (page_of(&pairs(q)), *at)).collect()
    }

    fn arrivals(&self) -> Vec<Instant> {
        let mut all: Vec<Instant> = self
            .server
            .requests_with_query("/")
            .iter()
            .filter(|(p, _, _)| !p.starts_with("/pdf/"))
            .map(|(_, _, at)| *at)
            .collect();
        all.sort();
        all
    }
}

fn pairs(query: &str) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

fn json(value: Value) -> Reply {
    Reply { headers: vec![("content-type".into(), "application/json".into())], ..Reply::ok(value.to_string()) }
}

/// The fake APIs, as each documents its answers.
fn answer(world: &mut World, path: &str, query: &str) -> Reply {
    let q = pairs(query);
    let number = |key: &str, default: usize| q.get(key).and_then(|v| v.parse().ok()).unwrap_or(default);
    match path {
        // ClinicalTrials.gov v2: pageSize, pageToken, filter.advanced=AREA[LastUpdatePostDate]RANGE[since,MAX].
        "/api/v2/studies" => {
            let size = number("pageSize", 10);
            let since = q
                .get("filter.advanced")
                .and_then(|f| f.split("RANGE[").nth(1))
                .and_then(|r| r.split(',').next())
                .unwrap_or("");
            let page: usize = match q.get("pageToken") {
                None => 0,
                Some(token) => match token.strip_prefix("tok").and_then(|n| n.parse().ok()) {
                    Some(n) => n,
                    None => return Reply::status(400),
                },
            };
            let studies: Vec<&Value> =
                world.studies.iter().filter(|(_, d)| d.as_str() >= since).map(|(s, _)| s).collect();
            let chunk: Vec<&Value> = studies.iter().skip(page * size).take(size).copied().collect();
            let mut body = serde_json::json!({ "studies": chunk });
            if (page + 1) * size < studies.len() {
                body["nextPageToken"] = Value::from(format!("tok{}", page + 1));
            }
            json(body)
        }
        // E-utilities: esearch (usehistory=y, retmode=json), efetch (WebEnv, query_key, retstart, retmax).
        "/eutils/esearch.fcgi" => {
            let since = q.get("mindate").map(|d| d.replace('/', "-"));
            let count = world.articles.iter().filter(|(_, d)| since.as_deref().is_none_or(|s| d.as_str() >= s)).count();
            let webenv = format!("MCID_{}", world.histories.len());
            world.histories.insert(webenv.clone(), since);
            json(serde_json::json!({"header": {"type": "esearch", "version": "0.3"}, "esearchresult": {
                "count": count.to_string(), "retmax": "0", "retstart": "0", "querykey": "1", "webenv": webenv, "idlist": []
            }}))
        }
        "/eutils/efetch.fcgi" => {
            let webenv = q.get("WebEnv").cloned().unwrap_or_default();
            if world.expired.contains(&webenv) || !world.histories.contains_key(&webenv) {
                return Reply::ok("<eFetchResult>\n\t<ERROR>Unable to obtain query #1</ERROR>\n</eFetchResult>");
            }
            let since = world.histories[&webenv].clone();
            let (start, max) = (number("retstart", 0), number("retmax", 20));
            let xml: String = world
                .articles
                .iter()
                .filter(|(_, d)| since.as_deref().is_none_or(|s| d.as_str() >= s))
                .skip(start)
                .take(max)
                .map(|(a, _)| a.as_str())
                .collect();
            Reply::ok(format!(
                "<?xml version=\"1.0\" ?>\n<!DOCTYPE PubmedArticleSet>\n<PubmedArticleSet>\n{xml}</PubmedArticleSet>"
            ))
        }
        // OpenAlex: filter (…,from_publication_date:D), per-page, cursor (* then next_cursor).
        "/works" => {
            let size = number("per-page", 25);
            let since =
                q.get("filter").and_then(|f| f.split("from_publication_date:").nth(1)).unwrap_or("").to_string();
            let page: usize = match q.get("cursor").map(String::as_str) {
                Some("*") | None => 0,
                Some(c) => match c.strip_prefix("c").and_then(|n| n.parse().ok()) {
                    Some(n) => n,
                    None => return Reply::status(400),
                },
            };
            let works: Vec<&Value> =
                world.works.iter().filter(|(_, d)| d.as_str() >= since.as_str()).map(|(w, _)| w).collect();
            let results: Vec<&Value> = works.iter().skip(page * size).take(size).copied().collect();
            // Like OpenAlex, the last page of results still names a cursor, whose page is empty.
            let next = (!results.is_empty()).then(|| format!("c{}", page + 1));
            json(
                serde_json::json!({"meta": {"count": works.len(), "per_page": size, "next_cursor": next}, "results": results}),
            )
        }
        // Unpaywall: /v2/{doi}?email=…
        p if p.starts_with("/v2/") => {
            if q.get("email").is_none_or(|e| e.is_empty()) {
                return Reply::status(422);
            }
            match world.dois.get(&p["/v2/".len()..]) {
                None => Reply::status(404),
                Some(pdf) => {
                    let location = pdf.as_ref().map(|path| {
                        serde_json::json!({ "url_for_pdf": format!("http://{}{path}", world.host), "host_type": "publisher" })
                    });
                    json(
                        serde_json::json!({ "doi": &p["/v2/".len()..], "is_oa": location.is_some(), "title": "An open paper", "best_oa_location": location }),
                    )
                }
            }
        }
        _ => Reply::status(404),
    }
}

// ---------------------------------------------------------------------------
// Records, from real data

/// Today (UTC), as the adapters' passes name it.
fn today() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y-%m-%d"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A ClinicalTrials.gov study whose title carries the word `tag{i}q`.
fn study(i: usize, updated: &str) -> (Value, String) {
    let mut study: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("tests/fixtures/ctgov/NCT04280705.json")).unwrap())
            .unwrap();
    let id = &mut study["protocolSection"]["identificationModule"];
    id["nctId"] = Value::from(format!("NCT{:08}", 90_000_000 + i));
    id["officialTitle"] = Value::from(format!("Adaptive trial ctgovtag{i}q of remdesivir"));
    study["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"] =
        serde_json::json!({ "date": updated, "type": "ACTUAL" });
    (study, updated.to_string())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A PubmedArticle from a PubMed JSONL record.
fn article(record: &Value) -> String {
    format!(
        "<PubmedArticle><MedlineCitation Status=\"MEDLINE\" Owner=\"NLM\"><PMID Version=\"1\">{}</PMID><Article>\
         <Journal><Title>{}</Title></Journal><ArticleTitle>{}</ArticleTitle><Abstract><AbstractText>{}</AbstractText>\
         </Abstract></Article></MedlineCitation></PubmedArticle>\n",
        record["pmid"].as_str().unwrap(),
        escape(record["journal"].as_str().unwrap_or("")),
        escape(record["title"].as_str().unwrap_or("")),
        escape(record["abstract"].as_str().unwrap_or("")),
    )
}

/// An OpenAlex work from a PubMed JSONL record: its abstract as an inverted index.
fn work(i: usize, record: &Value) -> Value {
    let mut index: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let text = format!("{} openalextag{i}q", record["abstract"].as_str().unwrap_or(""));
    for (at, word) in text.split_whitespace().enumerate() {
        index.entry(word.to_string()).or_default().push(at);
    }
    serde_json::json!({
        "id": format!("https://openalex.org/W{}", 4_000_000 + i),
        "doi": format!("https://doi.org/10.5555/oa.{i}"),
        "title": record["title"],
        "display_name": record["title"],
        "publication_year": 2020,
        "ids": { "openalex": format!("https://openalex.org/W{}", 4_000_000 + i), "pmid": format!("https://pubmed.ncbi.nlm.nih.gov/{}", record["pmid"].as_str().unwrap()) },
        "abstract_inverted_index": index,
    })
}

/// Records with an abstract, from the real sample.
fn abstracts(dir: &Path, n: usize) -> Vec<Value> {
    let (_, records) = pubmed_slice(dir, n * 3);
    records.into_iter().filter(|r| r["abstract"].as_str().is_some_and(|a| a.len() > 200)).take(n).collect()
}

// ---------------------------------------------------------------------------
// Running medkg

/// A polite-api policy of the tests': quick retries, a 1 s timeout, 10
/// requests/s with a burst of 2 (each API's own limit may be lower).
fn resilience(dir: &Path) -> PathBuf {
    let path = dir.join("resilience.yaml");
    std::fs::write(
        &path,
        "policies:
  default:
    timeout: 30s
  polite-api:
    retries: { max_retries: 6, backoff: constant, initial_delay: 100ms, max_delay: 2s }
    timeout: 1s
    rate_limit: { per_second: 10, burst: 2 }
",
    )
    .unwrap();
    path
}

fn lexical() -> PathBuf {
    repo().join("config/pipelines/lexical.yaml")
}

fn command(
    dir: &Path,
    pipeline: &Path,
    source: &str,
    fake: &Fake,
    data: &Path,
    extra: &[&str],
) -> std::process::Command {
    // (E-utilities live under a path of their own, as at NCBI.)
    let base = match source.starts_with("pubmed:") {
        true => format!("{}/eutils", fake.base()),
        false => fake.base(),
    };
    let mut command = medkg();
    command
        .args(["run", "--metrics-addr", "off", "--pipeline"])
        .arg(pipeline)
        .arg(format!("--source={source}"))
        .arg(format!("--base-url={base}"))
        .arg("--resilience")
        .arg(resilience(dir))
        .arg("--data-dir")
        .arg(data)
        .args(["--email", "ops@example.org"])
        .args(extra);
    command
}

fn run(dir: &Path, source: &str, fake: &Fake, data: &Path, extra: &[&str]) -> Output {
    command(dir, &lexical(), source, fake, data, extra).output().unwrap()
}

fn docs(data: &Path) -> u64 {
    let out = medkg().args(["stats", "--json", "--data-dir"]).arg(data).output().unwrap();
    serde_json::from_slice::<Value>(&out.stdout).map(|v| v["docs"].as_u64().unwrap_or(0)).unwrap_or(0)
}

/// The ids `query` finds (BM25 unless `mode` says otherwise).
fn found(data: &Path, query: &str, mode: &str) -> Vec<String> {
    let out = succeeded(
        medkg()
            .args(["search", "--json", "--mode", mode, "-k", "20", "--data-dir"])
            .arg(data)
            .arg(query)
            .output()
            .unwrap(),
    );
    let hits: Value = serde_json::from_slice(&out.stdout).unwrap();
    hits.as_array().unwrap().iter().map(|h| h["doc_id"].as_str().unwrap_or_default().to_string()).collect()
}

fn dead_letters(data: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(data.join("dead-letter")) else { return Vec::new() };
    entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|text| text.lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<Value>>())
        .collect()
}

/// The adapter's checkpoint (there is one source per test data directory).
fn checkpoint(data: &Path) -> Option<Value> {
    let entries = std::fs::read_dir(data.join("checkpoints")).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .find_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let began = Instant::now();
    while !done() {
        assert!(began.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No window of the requests passes `rate` a second with a burst of `burst`
/// (50 ms of slack for the arrival of requests sent on time).
fn assert_polite(arrivals: &[Instant], rate: f64, burst: f64) {
    for i in 0..arrivals.len() {
        for j in i + 1..arrivals.len() {
            let span = (arrivals[j] - arrivals[i]).as_secs_f64();
            let allowed = burst + rate * (span + 0.05);
            assert!(
                ((j - i) as f64) <= allowed,
                "{} requests in {span:.3} s: more than {rate}/s with a burst of {burst}",
                j - i + 1
            );
        }
    }
}

fn sigterm(child: &Child) {
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

// ---------------------------------------------------------------------------
// The adapters, each through the same paces

/// One adapter's fake and how to read its requests.
struct Case {
    /// `--source`.
    source: String,
    /// Extra arguments (`--page-size`).
    extra: Vec<String>,
    /// The path its pages are requested at.
    pages_at: &'static str,
    /// The page number a page request asks for.
    page_of: fn(&HashMap<String, String>) -> u64,
    /// The page number the checkpoint's cursor stands at.
    checkpoint_page: fn(&Value) -> u64,
    /// The records, and one to add for `--follow`.
    world: fn(&Path) -> World,
    add: fn(&mut World),
    /// The records in `world`, and a word only the added one has.
    records: u64,
    added_word: &'static str,
    /// The most requests a second, and the burst: the policy's, or the API's own when lower.
    rate: (f64, f64),
}

fn ctgov() -> Case {
    Case {
        source: "ctgov:remdesivir".into(),
        extra: vec!["--page-size=5".into()],
        pages_at: "/api/v2/studies",
        page_of: |q| q.get("pageToken").map_or(0, |t| t[3..].parse().unwrap()),
        checkpoint_page: |c| c["pass"]["cursor"]["token"].as_str().map_or(0, |t| t[3..].parse().unwrap()),
        world: |_| World { studies: (0..23).map(|i| study(i, "2024-03-01")).collect(), ..World::default() },
        add: |w| w.studies.push(study(99, &today())),
        records: 23,
        added_word: "ctgovtag99q",
        // ClinicalTrials.gov asks for about 50 requests a minute, whatever the policy says.
        rate: (50.0 / 60.0, 1.0),
    }
}

fn pubmed() -> Case {
    Case {
        source: "pubmed:asthma".into(),
        extra: vec!["--page-size=5".into()],
        pages_at: "/eutils/efetch.fcgi",
        page_of: |q| q["retstart"].parse::<u64>().unwrap() / 5,
        checkpoint_page: |c| c["pass"]["cursor"]["offset"].as_u64().map_or(0, |o| o / 5),
        world: |dir| World {
            articles: abstracts(dir, 37).iter().map(|r| (article(r), "2024-03-01".to_string())).collect(),
            ..World::default()
        },
        add: |w| {
            let record = serde_json::json!({"pmid": "99999901", "title": "A new asthma trial", "abstract": "Inhaled pubmedtag99q therapy for asthma."});
            w.articles.insert(0, (article(&record), today()));
        },
        records: 37,
        added_word: "pubmedtag99q",
        // E-utilities allow 3 requests a second without an API key, whatever the policy says.
        rate: (3.0, 1.0),
    }
}

fn openalex() -> Case {
    Case {
        source: "openalex:concepts.id:C71924100".into(),
        extra: vec!["--page-size=5".into()],
        pages_at: "/works",
        page_of: |q| match q["cursor"].as_str() {
            "*" => 0,
            c => c[1..].parse().unwrap(),
        },
        checkpoint_page: |c| c["pass"]["cursor"]["token"].as_str().map_or(0, |t| t[1..].parse().unwrap()),
        world: |dir| World {
            works: abstracts(dir, 21).iter().enumerate().map(|(i, r)| (work(i, r), "2020-01-01".to_string())).collect(),
            ..World::default()
        },
        add: |w| {
            let record = serde_json::json!({"pmid": "99999902", "title": "A new work", "abstract": "Fresh findings."});
            w.works.push((work(99, &record), today()));
        },
        records: 21,
        added_word: "openalextag99q",
        // The policy's 10/s with a burst of 2 would pass OpenAlex's 10 a second: one at a time.
        rate: (10.0, 1.0),
    }
}

/// Every record indexed once, politely, through 429 + Retry-After, a burst
/// of 503s and a hang past the timeout.
fn pages_once_through_faults(case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let mut world = (case.world)(dir.path());
    world.faults = BTreeMap::from([
        (1, Fault::Status(429, Some("1"))),
        (2, Fault::Status(503, None)),
        (3, Fault::Status(503, None)),
        (4, Fault::Hang(Duration::from_secs(3))),
    ]);
    let fake = Fake::start(world);
    let data = dir.path().join("data");
    let extra: Vec<&str> = case.extra.iter().map(String::as_str).collect();
    let out = succeeded(run(dir.path(), &case.source, &fake, &data, &extra));
    assert_eq!(docs(&data), case.records, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dead_letters(&data).is_empty(), "{:?}", dead_letters(&data));
    // The request after the 429 waited for its Retry-After.
    let all = fake.arrivals();
    assert!(all[2] - all[1] >= Duration::from_millis(950), "Retry-After: 1 was not honoured: {:?}", all[2] - all[1]);
    assert_polite(&all, case.rate.0, case.rate.1);
    // Every page once, after the faults: no page requested twice once answered.
    let pages = fake.pages(case.pages_at, case.page_of);
    let answered: Vec<u64> = pages.iter().map(|(p, _)| *p).collect();
    let distinct: HashSet<u64> = answered.iter().copied().collect();
    assert_eq!(answered.len() - distinct.len(), 4, "one page four times (the faults), the others once: {answered:?}");
    let checkpoint = checkpoint(&data).unwrap();
    assert!(checkpoint["pass"]["cursor"].is_null(), "the pass is complete: {checkpoint}");
}

/// `kill -9` while paging, then a rerun: the counts of an uninterrupted run,
/// and no page the checkpoint had made durable is requested again.
fn killed_mid_way_resumes_where_it_was_durable(case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let mut world = (case.world)(dir.path());
    world.delay = Duration::from_millis(500);
    let fake = Fake::start(world);
    let data = dir.path().join("data");
    let extra: Vec<&str> = case.extra.iter().map(String::as_str).collect();
    let mut child = command(dir.path(), &lexical(), &case.source, &fake, &data, &extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("two durable pages", Duration::from_secs(60), || {
        checkpoint(&data).is_some_and(|c| (case.checkpoint_page)(&c) >= 2)
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let durable = (case.checkpoint_page)(&checkpoint(&data).unwrap());
    let before = fake.pages(case.pages_at, case.page_of).len();
    fake.world.lock().unwrap().delay = Duration::ZERO;
    succeeded(run(dir.path(), &case.source, &fake, &data, &extra));
    assert_eq!(docs(&data), case.records, "crashed + resumed must equal an uninterrupted run");
    let rerun: Vec<u64> = fake.pages(case.pages_at, case.page_of)[before..].iter().map(|(p, _)| *p).collect();
    assert_eq!(rerun.first(), Some(&durable), "the rerun starts at the first page not durable: {rerun:?}");
    assert!(
        rerun.iter().all(|p| *p >= durable),
        "a durable page was requested again: durable {durable}, rerun {rerun:?}"
    );
    // And no page is missing: the pages of both runs cover the source.
    let all: HashSet<u64> = fake.pages(case.pages_at, case.page_of).iter().map(|(p, _)| *p).collect();
    assert_eq!(all.len() as u64, rerun.iter().max().unwrap() + 1, "{all:?}");
}

/// `--follow` picks up a record added after the first pass; SIGTERM stops it.
fn follows_until_sigterm(case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::start((case.world)(dir.path()));
    let data = dir.path().join("data");
    let mut extra: Vec<&str> = case.extra.iter().map(String::as_str).collect();
    extra.extend(["--follow", "--interval", "1s"]);
    let mut child = command(dir.path(), &lexical(), &case.source, &fake, &data, &extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first pass", Duration::from_secs(60), || docs(&data) == case.records);
    (case.add)(&mut fake.world.lock().unwrap());
    wait_for("the added record", Duration::from_secs(60), || docs(&data) == case.records + 1);
    assert!(!found(&data, case.added_word, "bm25").is_empty(), "the added record is searchable");
    sigterm(&child);
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(began.elapsed() < Duration::from_secs(20), "SIGTERM did not stop a followed source");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    // Polite between passes too.
    assert_polite(&fake.arrivals(), case.rate.0, case.rate.1);
}

#[test]
fn ctgov_pages_once_politely_through_faults() {
    pages_once_through_faults(ctgov());
}

#[test]
fn ctgov_killed_mid_way_resumes_where_it_was_durable() {
    killed_mid_way_resumes_where_it_was_durable(ctgov());
}

#[test]
fn ctgov_follows_until_sigterm() {
    follows_until_sigterm(ctgov());
}

#[test]
fn pubmed_pages_once_politely_through_faults() {
    pages_once_through_faults(pubmed());
}

#[test]
fn pubmed_killed_mid_way_resumes_where_it_was_durable() {
    killed_mid_way_resumes_where_it_was_durable(pubmed());
}

#[test]
fn pubmed_follows_until_sigterm() {
    follows_until_sigterm(pubmed());
}

#[test]
fn openalex_pages_once_politely_through_faults() {
    pages_once_through_faults(openalex());
}

#[test]
fn openalex_killed_mid_way_resumes_where_it_was_durable() {
    killed_mid_way_resumes_where_it_was_durable(openalex());
}

#[test]
fn openalex_follows_until_sigterm() {
    follows_until_sigterm(openalex());
}

// ---------------------------------------------------------------------------
// Bad pages

/// A malformed page is dead-lettered with its URL and reason, and the run
/// stops with a clear error after making the pages before it durable; a
/// rerun resumes at that page. Never a spin: a repeated cursor or an empty
/// page that claims more stops the pass at once.
#[test]
fn bad_pages_are_dead_lettered_and_never_spin() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut world = (ctgov().world)(dir.path());
    world.faults = BTreeMap::from([(2, Fault::Body("{\"studies\": [{\"protocolSection\"".into()))]);
    let fake = Fake::start(world);
    let out = run(dir.path(), "ctgov:remdesivir", &fake, &data, &["--page-size=5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a page the pass cannot go past fails a batch run");
    assert!(stderr.contains("bad_page") && stderr.contains("pageToken=tok2"), "{stderr}");
    assert_eq!(docs(&data), 10, "the two pages before it are indexed");
    let letters = dead_letters(&data);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["error_kind"], "bad_page");
    assert_eq!(letters[0]["stage"], "source");
    assert!(letters[0]["position"].as_str().unwrap().contains("/api/v2/studies?"), "{}", letters[0]);
    assert!(letters[0]["bytes_utf8"].as_str().unwrap().starts_with("{\"studies\""), "the page is kept: {}", letters[0]);
    // The fault is gone: the rerun starts at that page.
    let before = fake.pages("/api/v2/studies", ctgov().page_of).len();
    succeeded(run(dir.path(), "ctgov:remdesivir", &fake, &data, &["--page-size=5"]));
    assert_eq!(docs(&data), 23);
    let rerun: Vec<u64> = fake.pages("/api/v2/studies", ctgov().page_of)[before..].iter().map(|(p, _)| *p).collect();
    assert_eq!(rerun, [2, 3, 4]);

    // An expired page token or cursor: dead-lettered, the pass starts over, everything indexed once.
    for case in [ctgov(), openalex()] {
        let data = dir.path().join("expired").join(&case.source[..5]);
        let mut world = (case.world)(dir.path());
        world.faults = BTreeMap::from([(2, Fault::Status(400, None))]);
        let fake = Fake::start(world);
        succeeded(run(dir.path(), &case.source, &fake, &data, &["--page-size=5"]));
        assert_eq!(docs(&data), case.records);
        let kinds: Vec<Value> = dead_letters(&data).iter().map(|l| l["error_kind"].clone()).collect();
        assert_eq!(kinds, ["cursor_expired"], "{}", case.source);
        let pages: Vec<u64> = fake.pages(case.pages_at, case.page_of).iter().map(|(p, _)| *p).collect();
        let all = case.records.div_ceil(5) + u64::from(case.source.starts_with("openalex"));
        let expected: Vec<u64> = [0, 1, 2].into_iter().chain(0..all).collect();
        assert_eq!(pages, expected, "{}: started over once", case.source);
    }

    // A cursor that repeats, an empty page that claims more, a missing list: stopped at once.
    for (body, kind, adapter) in [
        (
            r#"{"meta": {"next_cursor": "c1"}, "results": [{"id": "https://openalex.org/W1", "title": "t"}]}"#,
            "cursor_repeated",
            "openalex:x",
        ),
        (r#"{"meta": {"next_cursor": "c9"}, "results": []}"#, "empty_page", "openalex:x"),
        (r#"{"studies": [], "nextPageToken": "tok9"}"#, "empty_page", "ctgov:x"),
        (r#"{"meta": {"next_cursor": null}}"#, "missing_field", "openalex:x"),
    ] {
        let data = dir.path().join(kind).join(adapter.replace(':', "_"));
        let case = if adapter.starts_with("ctgov") { ctgov() } else { openalex() };
        let mut world = (case.world)(dir.path());
        world.faults = BTreeMap::from([(1, Fault::Body(body.into()))]);
        let fake = Fake::start(world);
        let began = Instant::now();
        let out = run(dir.path(), adapter, &fake, &data, &["--page-size=5"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(kind), "{kind}: {stderr}");
        assert!(began.elapsed() < Duration::from_secs(30), "{kind}: it took {:?}", began.elapsed());
        assert_eq!(fake.arrivals().len(), 2, "{kind}: no request after the bad page");
        assert_eq!(docs(&data), 5, "{kind}: the page before it is indexed");
        assert_eq!(dead_letters(&data)[0]["error_kind"], kind);
    }
}

/// E-utilities: an expired history (WebEnv) is searched again and paging
/// goes on at the same offset; `tool`, `email` are sent on every call, and
/// a search the API refuses stops the run with its words.
#[test]
fn pubmed_searches_again_when_its_history_expires() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fake = Fake::start((pubmed().world)(dir.path()));
    // The third request (the second efetch) finds the history gone.
    fake.world.lock().unwrap().expire_at = Some(2);
    succeeded(run(dir.path(), "pubmed:asthma", &fake, &data, &["--page-size=5"]));
    assert_eq!(docs(&data), 37);
    let calls = fake.server.requests_with_query("/eutils/");
    let searches = calls.iter().filter(|(p, _, _)| p.ends_with("esearch.fcgi")).count();
    assert_eq!(searches, 2, "searched again once: {calls:?}");
    for (_, query, _) in &calls {
        let q = pairs(query);
        assert_eq!(
            (q.get("tool").map(String::as_str), q.get("email").map(String::as_str)),
            (Some("medkg"), Some("ops@example.org"))
        );
    }
    // A search E-utilities refuses.
    let data = dir.path().join("refused");
    let mut world = (pubmed().world)(dir.path());
    world.faults = BTreeMap::from([(0, Fault::Body(r#"{"esearchresult": {"ERROR": "Invalid query"}}"#.into()))]);
    let fake = Fake::start(world);
    let out = run(dir.path(), "pubmed:((", &fake, &data, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("search_failed") && stderr.contains("Invalid query"), "{stderr}");
}

// ---------------------------------------------------------------------------
// Unpaywall → the PDF gate

fn pdf_pipeline(dir: &Path) -> PathBuf {
    let path = dir.join("unpaywall.yaml");
    std::fs::write(
        &path,
        "name: unpaywall-pdfs
version: 1
stages:
  - name: download
    type: download
    config: { url_field: pdf_url, allow_hosts: [127.0.0.1], max_bytes: 2000000 }
  - name: parse
    type: parse
    depends_on: [download]
    config: { format: ir }
  - name: chunk
    type: chunk
    depends_on: [parse]
    config: { split_by: word, split_length: 200, split_overlap: 20 }
  - name: index
    type: index
    depends_on: [chunk]
    config: { backends: [bm25], commit_interval: 200ms }
gates:
  - name: ir-ready
    after: download
    condition: ir_ready
    timeout: 2m
",
    )
    .unwrap();
    path
}

/// An IR-ready record for `doc_id`, as an external parser (GROBID) writes it.
fn ir_ready(data: &Path, doc_id: &str) {
    let dir = data.join("ir-ready");
    std::fs::create_dir_all(&dir).unwrap();
    let tei = std::fs::read_to_string(common::shared().join("data/pdf/0046d83a-edd6-4631-b57c-755cdcce8b7f.tei.xml"))
        .unwrap();
    let name = format!("{}.json", doc_id.replace(['/', ':'], "_"));
    let record = serde_json::json!({ "doc_id": doc_id, "parser": "grobid", "tei": tei });
    std::fs::write(dir.join(format!(".{name}")), record.to_string()).unwrap();
    std::fs::rename(dir.join(format!(".{name}")), dir.join(name)).unwrap();
}

/// DOIs → Unpaywall → open-access PDF URLs → download → the gate → index.
/// A closed-access DOI and an unknown one are dead-lettered; `--follow`
/// reads the DOIs added to the file.
#[test]
fn unpaywall_dois_go_through_the_pdf_gate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let world = World {
        dois: BTreeMap::from([
            ("10.1186/s12984-016-0129-6".to_string(), Some("/pdf/a.pdf".to_string())),
            ("10.5555/open.2".to_string(), Some("/pdf/b.pdf".to_string())),
            ("10.5555/closed".to_string(), None),
            ("10.5555/later".to_string(), Some("/pdf/c.pdf".to_string())),
        ]),
        ..World::default()
    };
    let fake = Fake::start(world);
    let dois = dir.path().join("dois.txt");
    std::fs::write(
        &dois,
        "# a reading list
https://doi.org/10.1186/s12984-016-0129-6
10.5555/closed
10.5555/unknown
10.5555/open.2
",
    )
    .unwrap();
    for doi in ["doi:10.1186/s12984-016-0129-6", "doi:10.5555/open.2", "doi:10.5555/later"] {
        ir_ready(&data, doi);
    }
    let source = format!("unpaywall:{}", dois.display());
    let mut child =
        command(dir.path(), &pdf_pipeline(dir.path()), &source, &fake, &data, &["--follow", "--interval", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    wait_for("the two open-access PDFs", Duration::from_secs(60), || docs(&data) == 2);
    let mut kinds: Vec<String> =
        dead_letters(&data).iter().map(|l| l["error_kind"].as_str().unwrap().to_string()).collect();
    kinds.sort();
    assert_eq!(kinds, ["http_404", "no_open_access"]);
    let calls = fake.server.requests_with_query("/v2/");
    assert!(
        calls.iter().all(|(_, q, _)| pairs(q)["email"] == "ops@example.org"),
        "Unpaywall asks every caller for an email"
    );
    // A DOI added to the file is read on the next pass.
    std::fs::write(
        &dois,
        std::fs::read_to_string(&dois).unwrap()
            + "10.5555/later
",
    )
    .unwrap();
    wait_for("the added DOI", Duration::from_secs(60), || docs(&data) == 3);
    assert_eq!(fake.server.requests_with_query("/v2/").len(), 5, "each DOI asked once");
    // Unpaywall's 100,000 calls a day, as a rate.
    assert_polite(&fake.arrivals(), 100_000.0 / 86_400.0, 1.0);
    sigterm(&child);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    let found = found(&data, "stroke rehabilitation", "bm25");
    assert!(found.contains(&"doi:10.5555/later".to_string()), "{found:?}");
}

// ---------------------------------------------------------------------------
// PubMed update files

/// A PubMed update file's `DeleteCitation` removes the cited documents from
/// every search mode (BM25, SPLADE, dense, hybrid) and from the graph.
#[test]
fn a_pubmed_update_file_deletes_its_citations_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let records = abstracts(dir.path(), 6);
    let set: String = records.iter().map(article).collect();
    let baseline = dir.path().join("pubmed26n0001.xml");
    std::fs::write(&baseline, format!("<?xml version=\"1.0\"?>\n<PubmedArticleSet>\n{set}</PubmedArticleSet>\n"))
        .unwrap();
    let gone: Vec<&str> = records[..2].iter().map(|r| r["pmid"].as_str().unwrap()).collect();
    let update = dir.path().join("pubmed26n1500.xml");
    let deletes: String = gone.iter().map(|p| format!("<PMID Version=\"1\">{p}</PMID>")).collect();
    std::fs::write(
        &update,
        format!(
            "<PubmedArticleSet>\n{}<DeleteCitation>{deletes}</DeleteCitation>\n</PubmedArticleSet>\n",
            article(&records[5])
        ),
    )
    .unwrap();
    let file_run = |pipeline: &str, file: &Path, data: &Path| {
        succeeded(
            medkg()
                .args(["run", "--metrics-addr", "off", "--pipeline"])
                .arg(repo().join(pipeline))
                .arg(format!("--source=file:{}", file.display()))
                .arg("--data-dir")
                .arg(data)
                .output()
                .unwrap(),
        )
    };
    let title = |r: &Value| r["title"].as_str().unwrap().to_string();
    // Every search mode.
    let data = dir.path().join("hybrid");
    file_run("config/pipelines/hybrid.yaml", &baseline, &data);
    assert_eq!(docs(&data), 6);
    for mode in ["bm25", "splade", "dense", "hybrid"] {
        let hits = found(&data, &title(&records[0]), mode);
        assert!(hits.contains(&format!("pmid:{}", gone[0])), "{mode} finds it before: {hits:?}");
    }
    file_run("config/pipelines/hybrid.yaml", &update, &data);
    assert_eq!(docs(&data), 4);
    for mode in ["bm25", "splade", "dense", "hybrid"] {
        for record in &records {
            let hits = found(&data, &title(record), mode);
            for pmid in &gone {
                assert!(!hits.contains(&format!("pmid:{pmid}")), "{mode} still finds deleted {pmid}: {hits:?}");
            }
        }
        let kept = found(&data, &title(&records[3]), mode);
        assert!(kept.contains(&format!("pmid:{}", records[3]["pmid"].as_str().unwrap())), "{mode}: {kept:?}");
    }
    // The ledger says so.
    let ledger = succeeded(medkg().args(["ledger", "--json", "--data-dir"]).arg(&data).output().unwrap());
    let ledger: Value = serde_json::from_slice(&ledger.stdout).unwrap();
    let deleted: HashSet<String> = ledger["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "deleted")
        .map(|r| r["doc_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deleted, gone.iter().map(|p| format!("pmid:{p}")).collect());
    // And the graph.
    let data = dir.path().join("graph");
    file_run("config/pipelines/kg-lexical.yaml", &baseline, &data);
    let documents = |data: &Path| -> Vec<String> {
        let out = succeeded(
            medkg()
                .args(["sparql", "--json", "--tenant", "default", "--data-dir"])
                .arg(data)
                .arg("SELECT DISTINCT ?d WHERE { GRAPH ?d { ?d a medkg:Document } }")
                .output()
                .unwrap(),
        );
        let results: Value = serde_json::from_slice(&out.stdout).unwrap();
        results["results"]["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["d"]["value"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(documents(&data).len(), 6);
    file_run("config/pipelines/kg-lexical.yaml", &update, &data);
    let left = documents(&data);
    assert_eq!(left.len(), 4, "{left:?}");
    for pmid in &gone {
        assert!(
            !left.iter().any(|d| d.ends_with(&format!("pmid:{pmid}")) || d.ends_with(&format!("pmid%3A{pmid}"))),
            "{pmid} in {left:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The source in the topology

/// The ingest stage's `source:` is the run's source when the command line
/// names none (`config/pipelines/ctgov-follow.yaml`, pointed at the fake),
/// pages spread over two workers, and a bad `source:` is a located
/// validation error.
#[test]
fn the_ingest_stage_names_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::start((ctgov().world)(dir.path()));
    let shipped = std::fs::read_to_string(repo().join("config/pipelines/ctgov-follow.yaml")).unwrap();
    let yaml = shipped
        .replace(
            "query: \"query.cond=long covid\"",
            &format!("query: remdesivir\n        base_url: \"{}\"\n        page_size: 5", fake.base()),
        )
        .replace("follow: true", "follow: false");
    assert_ne!(yaml, shipped);
    let pipeline = dir.path().join("config/pipelines/ctgov.yaml");
    std::fs::create_dir_all(pipeline.parent().unwrap()).unwrap();
    std::fs::write(&pipeline, &yaml).unwrap();
    std::fs::copy(resilience(dir.path()), dir.path().join("config/resilience.yaml")).unwrap();
    let data = dir.path().join("data");
    let out = succeeded(
        medkg()
            .args(["run", "--metrics-addr", "off", "-w", "2", "--pipeline"])
            .arg(&pipeline)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap(),
    );
    assert_eq!(docs(&data), 23, "{}", String::from_utf8_lossy(&out.stderr));
    for i in [0, 11, 22] {
        let hits: HashSet<String> = found(&data, &format!("ctgovtag{i}q"), "bm25").into_iter().collect();
        assert_eq!(hits, HashSet::from([format!("nct:NCT{:08}", 90_000_000 + i)]));
    }
    let summary: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["docs"], 23, "{summary}");

    let bad = yaml.replace("page_size: 5", "page_size: 5\n        since: yesterday");
    std::fs::write(&pipeline, bad).unwrap();
    let out = medkg().arg("validate").arg(&pipeline).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && stderr.contains("since") && stderr.contains("ctgov.yaml:"), "{stderr}");
    // A flag that needs an API source, beside a file source.
    let out = medkg()
        .args(["run", "--follow", "--source", "file:/dev/null", "--pipeline"])
        .arg(repo().join("config/pipelines/lexical.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("need an API source"));
}

/// An API that finds nothing completes its pass: no document, no dead
/// letter, a complete checkpoint.
#[test]
fn empty_results_complete_the_pass() {
    let dir = tempfile::tempdir().unwrap();
    for source in ["ctgov:nothing", "pubmed:nothing", "openalex:nothing"] {
        let fake = Fake::start(World::default());
        let data = dir.path().join(&source[..5]);
        succeeded(run(dir.path(), source, &fake, &data, &[]));
        assert_eq!(docs(&data), 0, "{source}");
        assert!(dead_letters(&data).is_empty(), "{source}: {:?}", dead_letters(&data));
        let checkpoint = checkpoint(&data).unwrap_or_else(|| panic!("{source}: no checkpoint"));
        assert!(checkpoint["pass"]["cursor"].is_null(), "{source}: {checkpoint}");
    }
}

/// Unpaywall killed while it reads the DOI file: the rerun asks for no DOI
/// the checkpoint had made durable, and every open-access PDF is indexed.
#[test]
fn unpaywall_killed_mid_way_resumes_where_it_was_durable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dois: Vec<String> = (0..7).map(|i| format!("10.5555/paper.{i}")).collect();
    let world = World {
        dois: dois.iter().enumerate().map(|(i, d)| (d.clone(), Some(format!("/pdf/{i}.pdf")))).collect(),
        delay: Duration::from_millis(300),
        ..World::default()
    };
    let fake = Fake::start(world);
    let file = dir.path().join("dois.txt");
    std::fs::write(&file, dois.join("\n") + "\n").unwrap();
    for doi in &dois {
        ir_ready(&data, &format!("doi:{doi}"));
    }
    let source = format!("unpaywall:{}", file.display());
    let offset = |c: &Value| c["pass"]["cursor"]["offset"].as_u64().unwrap_or(0);
    let mut child = command(dir.path(), &pdf_pipeline(dir.path()), &source, &fake, &data, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("two durable DOIs", Duration::from_secs(60), || checkpoint(&data).is_some_and(|c| offset(&c) >= 2));
    child.kill().unwrap();
    child.wait().unwrap();
    let durable = offset(&checkpoint(&data).unwrap()) as usize;
    let before = fake.server.requests_with_query("/v2/").len();
    fake.world.lock().unwrap().delay = Duration::ZERO;
    succeeded(command(dir.path(), &pdf_pipeline(dir.path()), &source, &fake, &data, &[]).output().unwrap());
    assert_eq!(docs(&data), 7, "crashed + resumed must equal an uninterrupted run");
    let asked: Vec<String> = fake.server.requests_with_query("/v2/")[before..]
        .iter()
        .map(|(p, _, _)| p["/v2/".len()..].to_string())
        .collect();
    assert_eq!(asked, dois[durable..], "the rerun starts at the first DOI not durable");
}
